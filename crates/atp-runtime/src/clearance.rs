//! What the projector (and a replay) needs to read a batch of records as their readers will:
//! the subject keys that open their sealed values and the policy versions that classified
//! them, fetched before the batch's rows are built (the row builder is pure).

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::jetstream::{Context, Message};
use atp_core::TenantId;
use atp_core::policy::PolicyDocument;
use atp_core::privacy::BucketKey;
use atp_nats::policy::PolicyCache;
use atp_store::projection::Clearance;
use serde::Deserialize;

use crate::keyring::{SubjectKeys, TenantKeys};
use crate::{Classify, RoleError};

/// Fetches, per batch, what a [`BatchClearance`] holds.
#[derive(Clone)]
pub struct Resolver {
    policies: PolicyCache,
    keys: SubjectKeys,
}

impl Resolver {
    pub fn keys(&self) -> &SubjectKeys {
        &self.keys
    }

    pub fn policies(&self) -> &PolicyCache {
        &self.policies
    }
}

impl Resolver {
    pub async fn new(js: &Context, tenant_keys: Arc<dyn TenantKeys>) -> Result<Self, RoleError> {
        let policies = PolicyCache::new(
            atp_nats::policy::bucket(js)
                .await
                .or_fatal("opening the policy bucket")?,
        );
        let keys = SubjectKeys::new(
            atp_nats::subject_keys::bucket(js)
                .await
                .or_fatal("opening the subject-key bucket")?,
            tenant_keys,
        );
        Ok(Self { policies, keys })
    }

    /// Everything the ledger messages of `batch` refer to. A key store or policy bucket that
    /// does not answer fails the batch (retried); a key that is gone reads as erased.
    pub async fn prepare(&self, batch: &[Message]) -> Result<BatchClearance, RoleError> {
        let mut payloads: Vec<&[u8]> = Vec::with_capacity(batch.len());
        for m in batch {
            payloads.push(&m.payload);
        }
        self.prepare_records(&payloads).await
    }

    /// [`Resolver::prepare`] for record bytes however they were read.
    pub async fn prepare_records(&self, records: &[&[u8]]) -> Result<BatchClearance, RoleError> {
        let mut out = BatchClearance::default();
        for &payload in records {
            let Ok(head) = serde_json::from_slice::<Head<'_>>(payload) else {
                continue;
            };
            let Ok(tenant) = TenantId::new(head.tenant_id) else {
                continue;
            };
            let version = head.policy.policy_version;
            if version > 1
                && !out.policies.contains_key(&(tenant.to_string(), version))
                && let Some(doc) = self
                    .policies
                    .version(&tenant, version)
                    .await
                    .or_retry("reading a policy version")?
            {
                out.policies.insert((tenant.to_string(), version), doc);
            }
            // Only records that seal something name key ids.
            if !contains(payload, b"\"kid\":") {
                continue;
            }
            let Ok(opened) = atp_core::record::open(payload, false) else {
                continue;
            };
            let Some(data) = opened
                .record
                .event
                .as_object()
                .and_then(atp_core::privacy::data_of)
            else {
                continue;
            };
            for (_, sealed) in atp_core::privacy::sealed_values(&data) {
                let slot = (tenant.to_string(), sealed.kid.clone());
                if out.keys.contains_key(&slot) {
                    continue;
                }
                let key = match self.keys.by_kid(&tenant, &sealed.kid).await {
                    Ok(k) => k,
                    Err(crate::keyring::KeyringError::Store(e)) => {
                        return Err(e).or_retry("reading a subject key");
                    }
                    Err(e) => {
                        // A wrapped key the tenant key cannot open: the value reads as erased
                        // here, and the operator hears of it.
                        tracing::error!(tenant = %tenant, kid = %sealed.kid, error = %e, "a subject key does not open");
                        None
                    }
                };
                out.keys.insert(slot, key);
            }
        }
        Ok(out)
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The few fields of a record the clearance needs, read without the rest.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Head<'a> {
    #[serde(borrow)]
    tenant_id: &'a str,
    policy: PolicyHead,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PolicyHead {
    policy_version: u32,
}

/// Keys and policy versions for one batch.
#[derive(Default)]
pub struct BatchClearance {
    keys: HashMap<(String, String), Option<BucketKey>>,
    policies: HashMap<(String, u32), Arc<PolicyDocument>>,
}

impl Clearance for BatchClearance {
    fn key(&self, tenant: &str, kid: &str) -> Option<BucketKey> {
        self.keys
            .get(&(tenant.to_owned(), kid.to_owned()))
            .cloned()
            .flatten()
    }

    fn policy(&self, tenant: &str, version: u32) -> Option<Arc<PolicyDocument>> {
        self.policies.get(&(tenant.to_owned(), version)).cloned()
    }
}
