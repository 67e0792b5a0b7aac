//! Export completion webhooks: `POST <url>` with the completion event as the body, signed
//! with the tenant's secret, retried with exponential backoff and jitter.
//!
//! `ATP-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`. The timestamp
//! is inside the signed content, so a receiver that refuses signatures older than a few minutes
//! cannot be fed a replayed delivery.

use std::time::Duration;

use async_nats::jetstream::kv::Store;
use atp_core::TenantId;
use atp_store::exports::{self, Delivery, ExportRow};
use chrono::Utc;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use sqlx::PgPool;

use crate::Shutdown;

pub const SIGNATURE_HEADER: &str = "ATP-Signature";
/// The export id: the same for every attempt, so receivers can deduplicate.
pub const DELIVERY_HEADER: &str = "ATP-Webhook-Id";
pub const EVENT_HEADER: &str = "ATP-Event";

#[derive(Debug, Clone)]
pub struct WebhookPolicy {
    pub max_attempts: i32,
    /// The first retry waits about this long; each next one twice as long, up to `cap`.
    pub base: Duration,
    pub cap: Duration,
    pub timeout: Duration,
    /// How often due deliveries are looked for.
    pub poll: Duration,
    /// Allow `http://` and private or loopback addresses (development and tests only).
    pub allow_private: bool,
}

impl Default for WebhookPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            base: Duration::from_secs(1),
            cap: Duration::from_secs(300),
            timeout: Duration::from_secs(10),
            poll: Duration::from_millis(500),
            allow_private: false,
        }
    }
}

/// The `v1` signature: hex HMAC-SHA256 over `"<timestamp>." + body`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    // HMAC takes keys of any length, so this never fails; an empty MAC would never verify.
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// The `ATP-Signature` header value.
pub fn signature_header(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    format!("t={timestamp},v1={}", sign(secret, timestamp, body))
}

/// How long to wait before attempt `attempt + 1` (`attempt` ≥ 1 failed so far): half the
/// exponential step plus a random share of the other half, so receivers recovering from an
/// outage are not hit by every sender at once.
pub fn backoff(policy: &WebhookPolicy, attempt: u32, jitter: f64) -> Duration {
    let step = policy
        .base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(policy.cap);
    step / 2 + step.mul_f64(jitter.clamp(0.0, 1.0) / 2.0)
}

/// Whether `url` may receive deliveries under `policy`: https to a public host, unless private
/// targets are allowed.
pub fn check_url(url: &str, policy: &WebhookPolicy) -> Result<(), String> {
    let u = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if policy.allow_private {
        return match u.scheme() {
            "http" | "https" => Ok(()),
            s => Err(format!("scheme {s} is not http(s)")),
        };
    }
    if u.scheme() != "https" {
        return Err("webhooks must use https".to_owned());
    }
    let private = match u.host() {
        Some(url::Host::Ipv4(ip)) => {
            ip.is_private() || ip.is_loopback() || ip.is_link_local() || ip.is_unspecified()
        }
        Some(url::Host::Ipv6(ip)) => ip.is_loopback() || ip.is_unspecified(),
        Some(url::Host::Domain(d)) => d == "localhost" || d.ends_with(".localhost"),
        None => true,
    };
    if private {
        return Err("webhooks must not target private or loopback addresses".to_owned());
    }
    Ok(())
}

/// Delivers due webhooks until shutdown.
pub async fn run(pool: PgPool, hooks: Store, policy: WebhookPolicy, mut shutdown: Shutdown) {
    let client = match reqwest::Client::builder()
        .timeout(policy.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
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
    if let Err(e) = check_url(&hook.url, policy) {
        return Delivery::GaveUp { error: e };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_cover_timestamp_and_body() {
        // RFC 4231 test case 2 gives HMAC-SHA256("Jefe", "what do ya want for nothing?").
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let a = sign(b"k", 1_790_000_000, b"{}");
        assert_ne!(a, sign(b"k", 1_790_000_001, b"{}"), "timestamp is signed");
        assert_ne!(a, sign(b"k", 1_790_000_000, b"{ }"), "body is signed");
        assert_ne!(a, sign(b"k2", 1_790_000_000, b"{}"), "secret is used");
        assert_eq!(
            signature_header(b"k", 5, b"x"),
            format!("t=5,v1={}", sign(b"k", 5, b"x"))
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let p = WebhookPolicy::default();
        assert_eq!(backoff(&p, 1, 0.0), Duration::from_millis(500));
        assert_eq!(backoff(&p, 1, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(&p, 4, 0.0), Duration::from_secs(4));
        assert_eq!(backoff(&p, 30, 1.0), p.cap);
        let mid = backoff(&p, 3, 0.5);
        assert!(mid > Duration::from_secs(2) && mid < Duration::from_secs(4));
    }

    #[test]
    fn only_public_https_targets_unless_allowed() {
        let strict = WebhookPolicy::default();
        assert!(check_url("https://hooks.example.com/atp", &strict).is_ok());
        for bad in [
            "http://hooks.example.com/",
            "https://127.0.0.1/",
            "https://10.1.2.3/",
            "https://169.254.169.254/latest",
            "https://localhost:8443/",
            "ftp://x/",
        ] {
            assert!(check_url(bad, &strict).is_err(), "{bad}");
        }
        let dev = WebhookPolicy {
            allow_private: true,
            ..strict
        };
        assert!(check_url("http://127.0.0.1:9999/hook", &dev).is_ok());
        assert!(check_url("ftp://x/", &dev).is_err());
    }
}
