//! Delivering export completion webhooks: due deliveries polled from PostgreSQL, each `POST`ed
//! with its signature ([`atp_delivery::webhook`]), retried with backoff and jitter until it
//! succeeds or runs out of attempts.

use async_nats::jetstream::kv::Store;
use atp_core::TenantId;
use atp_delivery::outbound::{self, TargetError};
use atp_delivery::webhook::{
    DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, WebhookPolicy, backoff, signature_header,
};
use atp_store::exports::{self, Delivery, ExportRow};
use chrono::Utc;
use sqlx::PgPool;

use crate::Shutdown;

/// Delivers due webhooks until shutdown.
pub async fn run(pool: PgPool, hooks: Store, policy: WebhookPolicy, mut shutdown: Shutdown) {
    let client = match outbound::client(policy.timeout, policy.allow_private) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "no HTTP client for export webhooks; deliveries stay pending");
            return;
        }
    };
    loop {
        match exports::webhooks_due(&pool, 32).await {
            Ok(due) => {
                for row in due {
                    let outcome = deliver(&client, &hooks, &policy, &row).await;
                    let kind = match &outcome {
                        Delivery::Delivered => "delivered",
                        Delivery::Retry { .. } => "retry",
                        Delivery::GaveUp { .. } => "gave_up",
                    };
                    crate::metrics::metrics()
                        .webhook_deliveries
                        .add(1, &[crate::metrics::label("outcome", kind)]);
                    if let Err(e) =
                        exports::webhook_attempted(&pool, &row.export_id, &outcome).await
                    {
                        tracing::warn!(error = %e, export = %row.export_id, "recording a webhook attempt failed");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "reading due webhooks failed; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(policy.poll) => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            return;
        }
    }
}

async fn deliver(
    client: &reqwest::Client,
    hooks: &Store,
    policy: &WebhookPolicy,
    row: &ExportRow,
) -> Delivery {
    let attempt = u32::try_from(row.webhook_attempts + 1).unwrap_or(u32::MAX);
    let retry_or_give_up = |error: String| {
        if row.webhook_attempts + 1 >= policy.max_attempts {
            Delivery::GaveUp { error }
        } else {
            let wait = backoff(policy, attempt, rand::random::<f64>());
            Delivery::Retry {
                at: Utc::now() + chrono::Duration::from_std(wait).unwrap_or_default(),
                error,
            }
        }
    };
    let hook = match TenantId::new(&row.tenant_id) {
        Ok(t) => atp_nats::exports::webhook_of(hooks, &t).await,
        Err(e) => {
            return Delivery::GaveUp {
                error: e.to_string(),
            };
        }
    };
    let hook = match hook {
        Ok(Some(h)) => h,
        Ok(None) => {
            return Delivery::GaveUp {
                error: "the tenant's webhook was removed".to_owned(),
            };
        }
        Err(e) => return retry_or_give_up(e.to_string()),
    };
    match atp_delivery::webhook::vet_url(&hook.url, policy).await {
        Ok(()) => {}
        // A lookup that fails may work next time; anything else is the target itself.
        Err(e @ TargetError::Unresolvable { .. }) => return retry_or_give_up(e.to_string()),
        Err(e) => {
            return Delivery::GaveUp {
                error: e.to_string(),
            };
        }
    }
    let Some(secret) = hook.secret_bytes() else {
        return Delivery::GaveUp {
            error: "the webhook secret is malformed".to_owned(),
        };
    };
    let body = match serde_json::to_vec(&super::completion(row)) {
        Ok(b) => b,
        Err(e) => {
            return Delivery::GaveUp {
                error: e.to_string(),
            };
        }
    };
    let t = Utc::now().timestamp();
    let sent = client
        .post(&hook.url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(SIGNATURE_HEADER, signature_header(&secret, t, &body))
        .header(DELIVERY_HEADER, &row.export_id)
        .header(EVENT_HEADER, "export.completed")
        .body(body)
        .send()
        .await;
    match sent {
        Ok(resp) if resp.status().is_success() => Delivery::Delivered,
        Ok(resp) => retry_or_give_up(format!("the receiver answered {}", resp.status())),
        Err(e) => retry_or_give_up(format!("delivery failed: {}", e.without_url())),
    }
}
