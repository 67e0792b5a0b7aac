//! The export lifecycle on the bus: requests and completions on ATP_EXPORTS, the exporter's
//! work consumer, and the per-tenant webhook settings in `ATP_EXPORT_WEBHOOKS`.

use std::time::Duration;

use crate::headers::Headers;
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer, pull};
use async_nats::jetstream::kv::Store;
use async_nats::jetstream::{Context, object_store::ObjectStore};
use atp_core::TenantId;
use atp_core::edition::{Edition, EditionError, Feature};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use crate::streams::{EXPORT_BUNDLES, EXPORT_WEBHOOKS_BUCKET, EXPORTS};
use crate::subjects;

/// The exporter's durable work consumer on `atp.export.requested.*`.
pub const EXPORTER_CONSUMER: &str = "atp-exporter";

#[derive(Debug, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct ExportBusError {
    what: String,
    reason: String,
}

fn err(what: impl Into<String>) -> impl FnOnce(String) -> ExportBusError {
    let what = what.into();
    move |reason| ExportBusError { what, reason }
}

/// The two events of an export's life on ATP_EXPORTS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportEvent {
    /// `atp.export.requested.<tenant>`: what to package.
    Requested,
    /// `atp.export.completed.<tenant>`: a finished export, completed or failed.
    Completed,
}

/// Publishes an export event and waits until it is stored. The message id is
/// `<requested|completed>:<exportId>`, so a retried request, or an export finished by more
/// than one attempt, is stored once. `traceparent` joins the exporter's work to the caller's
/// trace.
pub async fn publish(
    js: &Context,
    event: ExportEvent,
    tenant: &TenantId,
    export_id: &str,
    body: Vec<u8>,
    traceparent: Option<&str>,
) -> Result<(), ExportBusError> {
    let (subject, msg_id) = match event {
        ExportEvent::Requested => (
            subjects::export_requested(tenant),
            format!("requested:{export_id}"),
        ),
        ExportEvent::Completed => (
            subjects::export_completed(tenant),
            format!("completed:{export_id}"),
        ),
    };
    let mut headers = Headers::new();
    headers
        .text(crate::headers::MSG_ID, &msg_id)
        .map_err(|e| err(msg_id.clone())(e.to_string()))?
        .fixed(crate::headers::CONTENT_TYPE, "application/json");
    if let Some(t) = traceparent {
        headers
            .text(crate::headers::TRACEPARENT, t)
            .map_err(|e| err(msg_id.clone())(e.to_string()))?;
    }
    let ack = js
        .publish_with_headers(subject, headers.into_map(), body.into())
        .await
        .map_err(|e| err(msg_id.clone())(e.to_string()))?;
    ack.await.map_err(|e| err(msg_id)(e.to_string()))?;
    Ok(())
}

/// The exporter's work consumer, created if missing. Messages stay unacknowledged while a
/// bundle is packaged (the exporter reports progress to extend `ack_wait`), so an exporter that
/// dies mid-export leaves its request to be redelivered to another (or to itself, restarted).
pub async fn work_consumer(
    js: &Context,
    ack_wait: Duration,
    max_in_flight: i64,
) -> Result<PullConsumer, ExportBusError> {
    let stream = js
        .get_stream(EXPORTS)
        .await
        .map_err(|e| err(EXPORTS)(e.to_string()))?;
    stream
        .get_or_create_consumer(
            EXPORTER_CONSUMER,
            pull::Config {
                durable_name: Some(EXPORTER_CONSUMER.to_owned()),
                description: Some("Export packaging: one bundle per request".to_owned()),
                filter_subject: subjects::all(subjects::EXPORT_REQUESTED),
                ack_policy: AckPolicy::Explicit,
                ack_wait,
                max_ack_pending: max_in_flight,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| err(EXPORTER_CONSUMER)(e.to_string()))
}

/// Export requests waiting for an exporter and held by one: the work consumer's pending and
/// ack-pending counts (`None` before any exporter created the consumer).
pub async fn queue(js: &Context) -> Result<Option<(u64, u64)>, ExportBusError> {
    let stream = js
        .get_stream(EXPORTS)
        .await
        .map_err(|e| err(EXPORTS)(e.to_string()))?;
    let Ok(mut consumer) = stream.get_consumer::<pull::Config>(EXPORTER_CONSUMER).await else {
        return Ok(None);
    };
    let info = consumer
        .info()
        .await
        .map_err(|e| err(EXPORTER_CONSUMER)(e.to_string()))?;
    Ok(Some((info.num_pending, info.num_ack_pending as u64)))
}

pub async fn bundles(js: &Context) -> Result<ObjectStore, ExportBusError> {
    js.get_object_store(EXPORT_BUNDLES)
        .await
        .map_err(|e| err(EXPORT_BUNDLES)(e.to_string()))
}

/// A tenant's completion webhook.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    pub url: String,
    /// The HMAC-SHA256 key, standard base64. Never logged (see the `Debug` impl).
    pub secret: String,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl Webhook {
    pub fn secret_bytes(&self) -> Option<Vec<u8>> {
        B64.decode(&self.secret).ok()
    }
}

pub async fn webhooks(js: &Context) -> Result<Store, ExportBusError> {
    js.get_key_value(EXPORT_WEBHOOKS_BUCKET)
        .await
        .map_err(|e| err(EXPORT_WEBHOOKS_BUCKET)(e.to_string()))
}

pub async fn webhook_of(kv: &Store, tenant: &TenantId) -> Result<Option<Webhook>, ExportBusError> {
    let Some(bytes) = kv
        .get(tenant.as_str())
        .await
        .map_err(|e| err(format!("webhook of {tenant}"))(e.to_string()))?
    else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| err(format!("webhook of {tenant}"))(e.to_string()))
}

/// Why a webhook could not be set.
#[derive(Debug, thiserror::Error)]
pub enum SetWebhookError {
    #[error(transparent)]
    Edition(#[from] EditionError),
    #[error(transparent)]
    Bus(#[from] ExportBusError),
}

/// Sets (or with `None` removes) the tenant's completion webhook. Setting one needs an edition
/// with export webhooks, checked here whoever the caller (ADR 0011); removing one never does.
pub async fn set_webhook(
    kv: &Store,
    tenant: &TenantId,
    edition: Edition,
    hook: Option<&Webhook>,
) -> Result<(), SetWebhookError> {
    let what = format!("webhook of {tenant}");
    match hook {
        Some(h) => {
            edition.require(Feature::ExportWebhooks)?;
            let bytes = serde_json::to_vec(h).map_err(|e| err(what.clone())(e.to_string()))?;
            kv.put(tenant.as_str(), bytes.into())
                .await
                .map_err(|e| err(what)(e.to_string()))?;
        }
        None => kv
            .delete(tenant.as_str())
            .await
            .map_err(|e| err(what)(e.to_string()))?,
    }
    Ok(())
}
