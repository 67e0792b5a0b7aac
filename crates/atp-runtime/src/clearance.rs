//! What the projector (and a replay) needs to read a batch of records as their readers will:
//! the subject keys that open their sealed values and the policy versions that classified
//! them, fetched before the batch's rows are built (the row builder is pure).

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::jetstream::Context;
use atp_core::TenantId;
use atp_core::policy::PolicyDocument;
use atp_core::privacy::BucketKey;
use atp_nats::policy::PolicyCache;
use atp_store::projection::{Clearance, Parsed};

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

    /// What the records `parsed` name: the policy versions that classified them and the keys
    /// of their sealed values. A key store or policy bucket that does not answer fails the
    /// batch (retried); a key that is gone reads as erased.
    pub async fn for_parsed<'a>(
        &self,
        parsed: impl Iterator<Item = &'a Parsed>,
    ) -> Result<BatchClearance, RoleError> {
        let mut out = BatchClearance::default();
        for record in parsed {
            let Ok(tenant) = TenantId::new(record.tenant()) else {
                continue;
            };
            let version = record.policy_version();
            let policies = out.policies.entry(tenant.to_string()).or_default();
            if version > 1
                && !policies.contains_key(&version)
                && let Some(doc) = self
                    .policies
                    .version(&tenant, version)
                    .await
                    .or_retry("reading a policy version")?
            {
                policies.insert(version, doc);
            }
            let keys = out.keys.entry(tenant.to_string()).or_default();
            for kid in record.kids() {
                if keys.contains_key(kid) {
                    continue;
                }
                let key = match self.keys.by_kid(&tenant, kid).await {
                    Ok(k) => k,
                    Err(crate::keyring::KeyringError::Store(e)) => {
                        return Err(e).or_retry("reading a subject key");
                    }
                    Err(e) => {
                        // A wrapped key the tenant key cannot open: the value reads as erased
                        // here, and the operator hears of it.
                        tracing::error!(tenant = %tenant, kid = %kid, error = %e, "a subject key does not open");
                        None
                    }
                };
                keys.insert(kid.to_owned(), key);
            }
        }
        Ok(out)
    }
}

/// Keys and policy versions for one batch, by tenant.
#[derive(Default)]
pub struct BatchClearance {
    keys: HashMap<String, HashMap<String, Option<BucketKey>>>,
    policies: HashMap<String, HashMap<u32, Arc<PolicyDocument>>>,
}

impl Clearance for BatchClearance {
    fn key(&self, tenant: &str, kid: &str) -> Option<BucketKey> {
        self.keys.get(tenant)?.get(kid).cloned().flatten()
    }

    fn policy(&self, tenant: &str, version: u32) -> Option<Arc<PolicyDocument>> {
        self.policies.get(tenant)?.get(&version).cloned()
    }
}
