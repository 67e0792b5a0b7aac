//! ATP's own admin actions as audit events, sent through its ingest path like any producer's
//! (ADR 0010): each tenant's actions on its `atp-admin` source, platform-wide ones on tenant
//! `atp`. They become records, chained, checkpointed and queryable like any other.

use crate::headers::IngressHeaders;
use async_nats::jetstream::Context;
use async_nats::jetstream::kv::Store;
use atp_core::producer::AdminAction;
use atp_core::registry::{SYSTEM_SOURCE, SourceRegistration};
use atp_core::{PartitionKey, SourceId, TenantId};

use crate::registry::{self, RegistryError};
use crate::subjects;

#[derive(Debug, thiserror::Error)]
pub enum TrailError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("the admin trail cannot be written: {0}")]
    Publish(String),
}

/// The tenant's admin-trail partition.
pub fn partition(tenant: &TenantId) -> Result<PartitionKey, TrailError> {
    let source = SourceId::new(SYSTEM_SOURCE).map_err(|e| TrailError::Publish(e.to_string()))?;
    Ok(PartitionKey::new(tenant.clone(), source))
}

/// Registers the tenant's admin-trail source if it is not yet (admin identity only).
pub async fn ensure_source(kv: &Store, tenant: &TenantId) -> Result<(), TrailError> {
    if registry::get(kv, &partition(tenant)?).await?.is_none() {
        let reg = SourceRegistration::system(tenant.clone())
            .map_err(|e| TrailError::Publish(e.to_string()))?;
        registry::put(kv, &reg).await?;
    }
    Ok(())
}

/// Records one admin action for `tenant` and waits for JetStream to hold it. Returns the
/// event id.
pub async fn record(
    js: &Context,
    tenant: &TenantId,
    action: &AdminAction<'_>,
) -> Result<String, TrailError> {
    record_as(js, tenant, &ulid::Ulid::generate().to_string(), action).await
}

/// [`record`] under an id the caller chose: a retry of the same action with the same id and
/// content makes no second record (ingest answers it as a duplicate).
pub async fn record_as(
    js: &Context,
    tenant: &TenantId,
    id: &str,
    action: &AdminAction<'_>,
) -> Result<String, TrailError> {
    let id = id.to_owned();
    let event = atp_core::producer::admin_event(&id, chrono::Utc::now(), action);
    let body = serde_json::to_vec(&event).map_err(|e| TrailError::Publish(e.to_string()))?;
    let p = partition(tenant)?;
    let mut h = IngressHeaders::structured();
    h.msg_id(&format!("{p}:{id}"))
        .map_err(|e| TrailError::Publish(e.to_string()))?;
    js.publish_with_headers(subjects::ingress(&p), h.into_map(), body.into())
        .await
        .map_err(|e| TrailError::Publish(e.to_string()))?
        .await
        .map_err(|e| TrailError::Publish(e.to_string()))?;
    tracing::info!(tenant = %tenant, action = action.action, event_id = %id, "admin action recorded");
    Ok(id)
}
