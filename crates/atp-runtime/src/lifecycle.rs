//! The lifecycle role (CONTRACT §8): carries out data-subject erasures and expires what is past
//! its retention, destroying subject keys so that sealed values become unreadable everywhere
//! while every chain, checkpoint and proof stays valid (they cover the sealed bytes).
//!
//! An erasure is a small state machine kept in `privacy_requests`, so a crash at any point
//! resumes where it stopped and every step can run twice:
//!
//! 1. `queued`: refuse if a legal hold covers the subject or any record of its keys
//!    (`blocked`, naming the hold); else destroy every key of the subject (`keys_destroyed`).
//! 2. `keys_destroyed`: scrub the read model — every record naming a destroyed key is derived
//!    again from its stored bytes, its values now erased — and forget the subject's rejection
//!    rows (`scrubbed_once`).
//! 3. `scrubbed_once`, once every process's key cache has expired ([`KEY_CACHE_TTL`]): scrub
//!    again, for records projected meanwhile by a process that still held a key (`scrubbed`).
//! 4. `scrubbed`: the erasure attestation on the tenant's admin trail, under an id derived from
//!    the request (a retry makes no second record); the subject's id is forgotten (`done`).
//!
//! An access request is carried out here too, because only a role with the tenant keys can
//! turn a subject's id into its pseudonym, and so into its key ids:
//!
//! 1. `queued`: find the subject's keys (as erasure does), choose the export's id and record
//!    both, then request the export — every record naming one of the keys, their values sealed
//!    under them disclosed — and write its row (`exporting`). The request carries key ids
//!    only, never the subject's id: the export stream and the bundle name no one.
//! 2. `exporting`, once the export has finished ([`store::next_pending`] waits for it): `done`
//!    with the export's record count, or `failed` with its failure; the subject's id is
//!    forgotten either way.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::Context;
use atp_core::TenantId;
use atp_core::policy::Classification;
use atp_core::producer::AdminAction;
use atp_nats::subject_keys;
use atp_store::exports::{self, ExportRequest, ExportStatus};
use atp_store::privacy::{self as store, PrivacyRequest, Step, state};
use atp_store::projection::{Parsed, RecordRow};
use serde_json::{Map, Value};
use sqlx::PgPool;

use crate::clearance::Resolver;
use crate::keyring::{KEY_CACHE_TTL, KeyringError, TenantKeys};
use crate::reader::{Shutdown, pause};
use crate::{Classify, RoleError};
use atp_telemetry::failpoint;

/// Records scrubbed in place per statement: bounds the lock time of one step.
const SCRUB_CHUNK: usize = 5_000;
/// Statements of one scrub run at once.
const SCRUB_PARALLEL: usize = 2;
/// Records derived again in Rust per transaction (they are parsed in memory).
const REDERIVE_CHUNK: usize = 2_000;

/// How the lifecycle role runs.
#[derive(Debug, Clone)]
pub struct LifecycleSettings {
    /// How often it looks for work.
    pub poll: Duration,
    /// How long every process may keep a destroyed key cached: the second scrub waits this.
    pub key_cache_ttl: Duration,
    /// How often retention looks for expired keys.
    pub retention_every: Duration,
}

impl Default for LifecycleSettings {
    fn default() -> Self {
        Self {
            poll: Duration::from_millis(500),
            key_cache_ttl: KEY_CACHE_TTL,
            retention_every: Duration::from_secs(60),
        }
    }
}

pub struct Lifecycle {
    js: Context,
    pool: PgPool,
    resolver: Resolver,
    settings: LifecycleSettings,
    /// Where stored bundles are: one that discloses a destroyed key's values is withdrawn.
    cold: atp_delivery::cold::ColdStore,
}

pub async fn run(
    js: Context,
    pool: PgPool,
    tenant_keys: Arc<dyn TenantKeys>,
    settings: LifecycleSettings,
    cold: atp_delivery::cold::ColdStore,
    mut shutdown: Shutdown,
) -> Result<(), RoleError> {
    let resolver = Resolver::new(&js, tenant_keys).await?;
    let role = Lifecycle {
        js,
        pool,
        resolver,
        settings,
        cold,
    };
    let mut retention_due = tokio::time::Instant::now();
    loop {
        if tokio::time::Instant::now() >= retention_due {
            if let Err(e) = role.retention().await {
                tracing::warn!(error = %e, "retention run failed; retrying");
            }
            retention_due = tokio::time::Instant::now() + role.settings.retention_every;
        }
        match role.work().await {
            // Work done: look again at once.
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "lifecycle step failed; retrying"),
        }
        if !pause(&mut shutdown, role.settings.poll).await {
            return Ok(());
        }
    }
}

/// Keys whose values' retention has run out, of one tenant, policy and bucket: what a
/// retention run destroys, and what legal holds keep.
#[derive(Debug, Clone)]
pub struct Expiry {
    pub tenant: TenantId,
    pub retention_policy_id: String,
    pub bucket: String,
    /// When the last value the keys seal expired.
    pub expired_at: chrono::DateTime<chrono::Utc>,
    pub destroy: Vec<String>,
    /// Keys kept, each with the hold that keeps it.
    pub held: Vec<(String, String)>,
}

/// What retention would destroy now: every live key whose bucket ended more than its policy's
/// duration ago (under the tenant's current policy), less what legal holds cover.
pub async fn plan_retention(
    pool: &PgPool,
    resolver: &Resolver,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<Expiry>, RoleError> {
    let groups = store::ended_key_groups(pool)
        .await
        .or_retry("reading the subject keys")?;
    let mut out = Vec::new();
    let mut subject_holds: std::collections::HashMap<String, Vec<(String, String)>> =
        Default::default();
    for g in groups {
        let Ok(tenant) = TenantId::new(&g.tenant_id) else {
            continue;
        };
        let policy = resolver
            .policies()
            .current(&tenant)
            .await
            .or_retry("reading the tenant's policy")?;
        let Some(duration) = policy.duration(&g.retention_policy_id) else {
            // A policy the tenant no longer defines: kept (never destroy on a guess).
            tracing::warn!(tenant = %tenant, retention_policy = %g.retention_policy_id, "keys under a retention policy the tenant no longer defines are kept");
            continue;
        };
        let expired_at = g.bucket_end + chrono::Duration::from_std(duration).unwrap_or_default();
        if expired_at > now {
            continue;
        }
        let mut held = store::held_keys(pool, tenant.as_str(), &g.kids)
            .await
            .or_retry("reading legal holds")?;
        if !subject_holds.contains_key(tenant.as_str()) {
            let kept = held_subject_keys(pool, resolver, &tenant).await?;
            subject_holds.insert(tenant.to_string(), kept);
        }
        if let Some(kept) = subject_holds.get(tenant.as_str()) {
            held.extend(kept.iter().filter(|(k, _)| g.kids.contains(k)).cloned());
        }
        let destroy = g
            .kids
            .iter()
            .filter(|k| !held.iter().any(|(h, _)| h == *k))
            .cloned()
            .collect();
        out.push(Expiry {
            tenant,
            retention_policy_id: g.retention_policy_id,
            bucket: g.bucket,
            expired_at,
            destroy,
            held,
        });
    }
    Ok(out)
}

/// The keys of every subject an active hold names, with the hold.
async fn held_subject_keys(
    pool: &PgPool,
    resolver: &Resolver,
    tenant: &TenantId,
) -> Result<Vec<(String, String)>, RoleError> {
    let mut out = Vec::new();
    let holds = store::holds(pool, tenant.as_str(), false)
        .await
        .or_retry("reading legal holds")?;
    for h in holds {
        let Some(subject) = &h.subject_id else {
            continue;
        };
        let keys = resolver.keys();
        let Ok(pseudonym) = keys.pseudonym(tenant, subject, false).await else {
            continue;
        };
        for (_, kid) in subject_keys::names_of_subject(keys.store(), tenant, &pseudonym)
            .await
            .or_retry("listing a held subject's keys")?
        {
            out.push((kid, h.hold_id.clone()));
        }
    }
    Ok(out)
}

impl Lifecycle {
    /// One retention run: destroy what expired, scrub, attest; then attest what a crash left
    /// unattested, and scrub again what was destroyed within two key-cache lifetimes.
    async fn retention(&self) -> Result<(), RoleError> {
        let now = chrono::Utc::now();
        for e in plan_retention(&self.pool, &self.resolver, now).await? {
            if e.destroy.is_empty() {
                continue;
            }
            let keys = self.resolver.keys();
            for kid in &e.destroy {
                destroy_key(keys, &e.tenant, kid).await?;
            }
            store::keys_destroyed(&self.pool, e.tenant.as_str(), &e.destroy, "retention")
                .await
                .or_retry("recording destroyed keys")?;
            keys.forget();
            tracing::info!(tenant = %e.tenant, retention_policy = %e.retention_policy_id, bucket = %e.bucket, keys = e.destroy.len(), held = e.held.len(), "retention expired subject keys");
        }
        for g in store::unattested_expiries(&self.pool)
            .await
            .or_retry("reading unattested expiries")?
        {
            let Ok(tenant) = TenantId::new(&g.tenant_id) else {
                continue;
            };
            let records = self.scrub_keys(&tenant, &g.kids).await?;
            self.attest_expiry(&tenant, &g, records).await?;
        }
        let since =
            now - chrono::Duration::from_std(self.settings.key_cache_ttl * 2).unwrap_or_default();
        for (tenant, kids) in store::destroyed_since(&self.pool, since)
            .await
            .or_retry("reading recently destroyed keys")?
        {
            if let Ok(tenant) = TenantId::new(&tenant) {
                self.scrub_keys(&tenant, &kids).await?;
            }
        }
        Ok(())
    }

    async fn attest_expiry(
        &self,
        tenant: &TenantId,
        g: &store::KeyGroup,
        records: i64,
    ) -> Result<(), RoleError> {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(g.kids.join(",").as_bytes());
        let id = format!(
            "retention-{}-{}-{}",
            g.retention_policy_id,
            g.bucket,
            hex::encode(&digest[..8])
        );
        let mut attributes = Map::new();
        let shown: Vec<&str> = g.kids.iter().take(100).map(String::as_str).collect();
        for (k, v) in [
            (
                "retentionPolicyId",
                Value::from(g.retention_policy_id.clone()),
            ),
            ("bucket", Value::from(g.bucket.clone())),
            (
                "bucketEnd",
                Value::from(atp_core::record::timestamp(g.bucket_end)),
            ),
            ("keysDestroyed", Value::from(g.kids.len())),
            ("recordsAffected", Value::from(records)),
            ("keyIds", Value::from(shown.join(","))),
            ("keyIdsSha256", Value::from(hex::encode(digest))),
        ] {
            attributes.insert(k.to_owned(), v);
        }
        let action = AdminAction {
            actor: "lifecycle:retention",
            action: "RETENTION_EXPIRED",
            resource_type: "retention-policy",
            resource_id: &g.retention_policy_id,
            attributes,
        };
        atp_nats::admin_trail::record_as(&self.js, tenant, &id, &action)
            .await
            .or_retry("recording the deletion attestation")?;
        store::expiries_attested(&self.pool, tenant.as_str(), &g.kids, &id)
            .await
            .or_retry("recording the attestation")?;
        Ok(())
    }

    /// One step of the oldest pending request. True if there was one.
    async fn work(&self) -> Result<bool, RoleError> {
        let Some(r) = store::next_pending(&self.pool)
            .await
            .or_retry("reading pending privacy requests")?
        else {
            return Ok(false);
        };
        match (r.kind.as_str(), r.state.as_str()) {
            ("erasure", state::QUEUED) => self.destroy_keys(&r).await?,
            ("erasure", state::KEYS_DESTROYED) => {
                self.scrub(&r).await?;
                store::advance(
                    &self.pool,
                    &r,
                    &Step {
                        state: state::SCRUBBED_ONCE,
                        scrub_again_at: Some(
                            chrono::Utc::now()
                                + chrono::Duration::from_std(self.settings.key_cache_ttl)
                                    .unwrap_or_default(),
                        ),
                        ..Step::default()
                    },
                )
                .await
                .or_retry("recording the first scrub")?;
            }
            ("erasure", state::SCRUBBED_ONCE) => {
                let n = self.scrub(&r).await?;
                store::advance(
                    &self.pool,
                    &r,
                    &Step {
                        state: state::SCRUBBED,
                        records_affected: Some(r.records_affected.max(n)),
                        ..Step::default()
                    },
                )
                .await
                .or_retry("recording the second scrub")?;
            }
            ("erasure", state::SCRUBBED) => self.attest(&r).await?,
            ("access", state::QUEUED) => self.request_export(&r).await?,
            ("access", state::EXPORTING) => self.finish_access(&r).await?,
            (kind, st) => {
                tracing::error!(request = %r.request_id, kind, state = st, "a privacy request in a state no step handles");
                store::advance(
                    &self.pool,
                    &r,
                    &Step {
                        state: state::FAILED,
                        detail: Some("no step handles this request"),
                        ..Step::default()
                    },
                )
                .await
                .or_retry("failing a request")?;
            }
        }
        Ok(true)
    }

    fn tenant(r: &PrivacyRequest) -> Result<TenantId, RoleError> {
        TenantId::new(&r.tenant_id).map_err(|e| RoleError::fatal("a request's tenant", e))
    }

    /// Every key name of the request's subject, `(entry, kid)`: none if the tenant has no key
    /// (nothing of it was ever sealed).
    async fn names_of(
        &self,
        tenant: &TenantId,
        r: &PrivacyRequest,
    ) -> Result<Vec<(String, String)>, RoleError> {
        let subject = r.subject_id.clone().unwrap_or_default();
        let keys = self.resolver.keys();
        match keys.pseudonym(tenant, &subject, false).await {
            Ok(pseudonym) => subject_keys::names_of_subject(keys.store(), tenant, &pseudonym)
                .await
                .or_retry("listing the subject's keys"),
            Err(KeyringError::TenantKey { .. }) => Ok(Vec::new()),
            Err(e) => Err(e).or_retry("the subject's pseudonym"),
        }
    }

    /// An access request, step 1: the subject's keys, then its export.
    async fn request_export(&self, r: &PrivacyRequest) -> Result<(), RoleError> {
        let tenant = Self::tenant(r)?;
        // A retry after the export id was recorded requests the same export with the same keys
        // (its message id deduplicates the request; its row is written once).
        let (export_id, kids) = match &r.export_id {
            Some(id) => (id.clone(), r.key_ids.clone()),
            None => {
                let mut kids: Vec<String> = self
                    .names_of(&tenant, r)
                    .await?
                    .into_iter()
                    .map(|(_, kid)| kid)
                    .collect();
                kids.sort();
                kids.dedup();
                let id = ulid::Ulid::generate().to_string();
                store::advance(
                    &self.pool,
                    r,
                    &Step {
                        state: state::QUEUED,
                        key_ids: Some(&kids),
                        export_id: Some(&id),
                        ..Step::default()
                    },
                )
                .await
                .or_retry("recording the access request's export")?;
                (id, kids)
            }
        };
        let req = ExportRequest {
            export_id: export_id.clone(),
            tenant_id: r.tenant_id.clone(),
            requested_by: r.requested_by.clone(),
            requested_at: chrono::Utc::now(),
            selection: Default::default(),
            format: "tar".to_owned(),
            // Standard: the tenant's completion webhook hears nothing of access requests.
            edition: Default::default(),
            // The subject's own values, whatever their classification.
            readable: Some(Classification::ALL.to_vec()),
            subject_keys: Some(kids.clone()),
        };
        let payload = serde_json::to_vec(&req).or_retry("an export request")?;
        atp_nats::exports::publish(
            &self.js,
            atp_nats::exports::ExportEvent::Requested,
            &tenant,
            &export_id,
            payload,
            None,
        )
        .await
        .or_retry("requesting the access export")?;
        // The exporter writes the row too when it takes the request; whichever is first wins.
        exports::record_request(&self.pool, &req)
            .await
            .or_retry("recording the access export")?;
        tracing::info!(tenant = %tenant, request = %r.request_id, export = %export_id, keys = kids.len(), "access export requested");
        store::advance(
            &self.pool,
            r,
            &Step {
                state: state::EXPORTING,
                ..Step::default()
            },
        )
        .await
        .or_retry("recording the requested export")
    }

    /// An access request, step 2: its export has finished.
    async fn finish_access(&self, r: &PrivacyRequest) -> Result<(), RoleError> {
        let export_id = r.export_id.clone().unwrap_or_default();
        let row = exports::get(&self.pool, &r.tenant_id, &export_id)
            .await
            .or_retry("reading the access export")?;
        let (to, detail, records) = match &row {
            Some(e) if e.status == ExportStatus::Completed => (state::DONE, None, e.record_count),
            Some(e) => (
                state::FAILED,
                Some(format!(
                    "export {export_id} failed: {}: {}",
                    e.failure_code.as_deref().unwrap_or("?"),
                    e.failure_detail.as_deref().unwrap_or("")
                )),
                None,
            ),
            None => (
                state::FAILED,
                Some(format!("export {export_id} is not recorded")),
                None,
            ),
        };
        store::advance(
            &self.pool,
            r,
            &Step {
                state: to,
                records_affected: records,
                detail: detail.as_deref(),
                forget_subject: true,
                ..Step::default()
            },
        )
        .await
        .or_retry("recording the finished access request")?;
        tracing::info!(tenant = %r.tenant_id, request = %r.request_id, export = %export_id, state = to, "access request finished");
        Ok(())
    }

    /// Step 1: holds, then the keys.
    async fn destroy_keys(&self, r: &PrivacyRequest) -> Result<(), RoleError> {
        let tenant = Self::tenant(r)?;
        let subject = r.subject_id.clone().unwrap_or_default();
        let block = |hold: &str| format!("legal hold {hold} covers this subject's data");
        if let Some(hold) = store::holds_on_subject(&self.pool, tenant.as_str(), &subject)
            .await
            .or_retry("reading legal holds")?
            .first()
        {
            return self.blocked(r, &block(hold)).await;
        }
        let keys = self.resolver.keys();
        let names = self.names_of(&tenant, r).await?;
        let mut kids: Vec<String> = r.key_ids.clone();
        kids.extend(names.iter().map(|(_, kid)| kid.clone()));
        kids.sort();
        kids.dedup();
        if !kids.is_empty()
            && let Some((_, hold)) = store::held_keys(&self.pool, tenant.as_str(), &kids)
                .await
                .or_retry("reading legal holds")?
                .first()
        {
            return self.blocked(r, &block(hold)).await;
        }
        // Recorded before anything is destroyed: a crash after this still knows every key.
        store::advance(
            &self.pool,
            r,
            &Step {
                state: state::QUEUED,
                key_ids: Some(&kids),
                ..Step::default()
            },
        )
        .await
        .or_retry("recording the subject's keys")?;
        for (entry, kid) in &names {
            subject_keys::destroy(keys.store(), &tenant, entry, kid)
                .await
                .or_retry("destroying a subject key")?;
            failpoint::crash_point(failpoint::ERASURE_MID_KEYS);
        }
        store::keys_destroyed(&self.pool, tenant.as_str(), &kids, "erasure")
            .await
            .or_retry("recording destroyed keys")?;
        keys.forget();
        tracing::info!(tenant = %tenant, request = %r.request_id, keys = kids.len(), "subject keys destroyed");
        store::advance(
            &self.pool,
            r,
            &Step {
                state: state::KEYS_DESTROYED,
                ..Step::default()
            },
        )
        .await
        .or_retry("recording the destroyed keys")
    }

    async fn blocked(&self, r: &PrivacyRequest, why: &str) -> Result<(), RoleError> {
        tracing::info!(tenant = %r.tenant_id, request = %r.request_id, why, "erasure blocked");
        store::advance(
            &self.pool,
            r,
            &Step {
                state: state::BLOCKED,
                detail: Some(why),
                ..Step::default()
            },
        )
        .await
        .or_retry("recording a blocked request")
    }

    /// The read model without the destroyed keys' clear values, and without the subject's
    /// rejections. Returns how many records name the keys.
    async fn scrub(&self, r: &PrivacyRequest) -> Result<i64, RoleError> {
        let tenant = Self::tenant(r)?;
        let affected = self.scrub_keys(&tenant, &r.key_ids).await?;
        if let Some(subject) = &r.subject_id {
            let policy = self
                .resolver
                .policies()
                .current(&tenant)
                .await
                .or_retry("reading the tenant's policy")?;
            let path = atp_core::policy::split(&policy.subject).unwrap_or_default();
            store::forget_rejections_of(&self.pool, tenant.as_str(), &path, subject)
                .await
                .or_retry("forgetting the subject's rejections")?;
        }
        Ok(affected)
    }

    /// Every record naming one of `kids` without the destroyed keys: its clear values give way
    /// to erased markers. Scrubbed in place in SQL where every key the record names is
    /// destroyed (an erasure: the subject's keys are all destroyed at once); derived again from
    /// its stored bytes otherwise (an expiry of one of several retention policies, or a row
    /// projected before migration 0010). Returns how many records name the keys.
    async fn scrub_keys(&self, tenant: &TenantId, kids: &[String]) -> Result<i64, RoleError> {
        if kids.is_empty() {
            return Ok(0);
        }
        self.withdraw_bundles(tenant, kids).await?;
        self.resolver.keys().forget();
        let plan = store::scrub_plan(&self.pool, tenant.as_str(), kids)
            .await
            .or_retry("finding the keys' records")?;
        // Chunks on parallel connections: a scrub's rows are disjoint, and one statement keeps
        // only one of the database's cores busy.
        for round in plan.in_place.chunks(SCRUB_CHUNK * SCRUB_PARALLEL) {
            let mut scrubs = Vec::with_capacity(SCRUB_PARALLEL);
            for ids in round.chunks(SCRUB_CHUNK) {
                scrubs.push(store::scrub_in_place(
                    &self.pool,
                    tenant.as_str(),
                    kids,
                    ids,
                ));
            }
            for done in futures::future::join_all(scrubs).await {
                done.or_retry("scrubbing the keys' records")?;
            }
        }
        for ids in plan.rederive.chunks(REDERIVE_CHUNK) {
            let stored = store::records_by_id(&self.pool, tenant.as_str(), ids)
                .await
                .or_retry("reading records to derive again")?;
            let mut parsed = Vec::with_capacity(stored.len());
            for s in &stored {
                let seq = u64::try_from(s.ledger_seq).unwrap_or_default();
                parsed.push(Parsed::parse(&s.record, seq).or_retry("reading a record again")?);
            }
            let clearance = self.resolver.for_parsed(parsed.iter()).await?;
            let mut rows = Vec::with_capacity(stored.len());
            for (p, s) in parsed.into_iter().zip(&stored) {
                let ingress_seq = s.ingress_seq.and_then(|i| u64::try_from(i).ok());
                let row = RecordRow::from_parsed(p, &s.record, ingress_seq, &clearance)
                    .or_retry("deriving a record's row again")?;
                rows.push(row);
            }
            store::replace_rows(&self.pool, &rows)
                .await
                .or_retry("scrubbing the keys' records")?;
        }
        Ok(plan.named)
    }

    /// Deletes every stored bundle that discloses a value sealed under one of `kids`: what a
    /// bundle disclosed of an erased subject (or expired values) is a clear copy ATP holds.
    async fn withdraw_bundles(&self, tenant: &TenantId, kids: &[String]) -> Result<(), RoleError> {
        for (export_id, object_key) in store::bundles_disclosing(&self.pool, tenant.as_str(), kids)
            .await
            .or_retry("finding bundles that disclose the keys")?
        {
            self.cold
                .delete(&object_key)
                .await
                .or_retry("deleting a bundle that discloses destroyed keys")?;
            store::bundle_withdrawn(&self.pool, &export_id)
                .await
                .or_retry("recording a withdrawn bundle")?;
            tracing::info!(tenant = %tenant, export = %export_id, "bundle withdrawn: it disclosed values whose keys are destroyed");
        }
        Ok(())
    }

    /// Step 4: the attestation, then done.
    async fn attest(&self, r: &PrivacyRequest) -> Result<(), RoleError> {
        let tenant = Self::tenant(r)?;
        let mut attributes = Map::new();
        for (k, v) in [
            ("requestId", Value::from(r.request_id.clone())),
            ("subjectHash", Value::from(r.subject_hash.clone())),
            ("subjectSalt", Value::from(r.subject_salt.clone())),
            ("keyIds", Value::from(r.key_ids.join(","))),
            ("keysDestroyed", Value::from(r.key_ids.len())),
            ("recordsAffected", Value::from(r.records_affected)),
            ("requestedBy", Value::from(r.requested_by.clone())),
        ] {
            attributes.insert(k.to_owned(), v);
        }
        let actor = format!("lifecycle:{}", r.requested_by);
        let action = AdminAction {
            actor: &actor,
            action: "SUBJECT_ERASED",
            resource_type: "data-subject",
            resource_id: &r.subject_hash,
            attributes,
        };
        let id = format!("erasure-{}", r.request_id);
        atp_nats::admin_trail::record_as(&self.js, &tenant, &id, &action)
            .await
            .or_retry("recording the erasure attestation")?;
        store::advance(
            &self.pool,
            r,
            &Step {
                state: state::DONE,
                attestation_event_id: Some(&id),
                forget_subject: true,
                ..Step::default()
            },
        )
        .await
        .or_retry("recording the finished erasure")?;
        tracing::info!(tenant = %tenant, request = %r.request_id, records = r.records_affected, "erasure done");
        Ok(())
    }
}

/// Destroys key `kid` of `tenant`, and the name that points to it if it still does.
async fn destroy_key(
    keys: &crate::keyring::SubjectKeys,
    tenant: &TenantId,
    kid: &str,
) -> Result<(), RoleError> {
    let Some(entry) = subject_keys::wrapped(keys.store(), tenant, kid)
        .await
        .or_retry("reading a subject key")?
    else {
        return Ok(());
    };
    let name = subject_keys::KeyName {
        tenant: tenant.clone(),
        pseudonym: entry.pseudonym.clone(),
        retention_policy_id: entry.retention_policy_id.clone(),
        bucket: entry.bucket.clone(),
    };
    let points_here = subject_keys::kid_of(keys.store(), &name)
        .await
        .or_retry("reading a key's name")?
        .is_some_and(|k| k == kid);
    if points_here {
        subject_keys::destroy(keys.store(), tenant, &name.key(), kid).await
    } else {
        subject_keys::destroy_key_only(keys.store(), tenant, kid).await
    }
    .or_retry("destroying a subject key")
}
