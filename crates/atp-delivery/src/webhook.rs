//! The rules of export completion webhooks: `POST <url>` with the completion event as the body,
//! signed with the tenant's secret, retried with exponential backoff and jitter, only to
//! targets whose every address is public. The gateway vets a target when it is registered; the
//! exporter's delivery loop (`atp_runtime::export::webhook`) vets it again and sends.
//!
//! `ATP-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`. The timestamp
//! is inside the signed content, so a receiver that refuses signatures older than a few minutes
//! cannot be fed a replayed delivery.

use std::net::IpAddr;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::outbound::{self, TargetError};

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
    /// Allow `http://` and targets that are not public addresses (development and tests only;
    /// off by default, set only by configuration, never read from the environment here).
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

/// Whether `url` may receive deliveries under `policy`, judged from the URL alone: https, and
/// no literal address or `localhost` name that is not public, unless private targets are
/// allowed. Names are judged by [`vet_url`], which resolves them.
pub fn check_url(url: &str, policy: &WebhookPolicy) -> Result<(), TargetError> {
    let u = url::Url::parse(url).map_err(|e| TargetError::NotAUrl(e.to_string()))?;
    if policy.allow_private {
        return match u.scheme() {
            "http" | "https" => Ok(()),
            s => Err(TargetError::Scheme(s.to_owned())),
        };
    }
    if u.scheme() != "https" {
        return Err(TargetError::Scheme(u.scheme().to_owned()));
    }
    let literal = match u.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
        Some(url::Host::Domain(d)) => {
            if d == "localhost" || d.ends_with(".localhost") {
                return Err(TargetError::NotPublic {
                    host: d.to_owned(),
                    addr: IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
                });
            }
            return Ok(());
        }
        None => return Err(TargetError::NoHost),
    };
    if !outbound::is_global(literal) {
        return Err(TargetError::NotPublic {
            host: literal.to_string(),
            addr: literal,
        });
    }
    Ok(())
}

/// [`check_url`], then the host resolved: refused when any of its addresses is not public.
/// Used when a webhook is set (so the tenant learns at once) and before each delivery; the
/// delivery's own connection is vetted again by the client's resolver, which is what pins it.
pub async fn vet_url(url: &str, policy: &WebhookPolicy) -> Result<(), TargetError> {
    check_url(url, policy)?;
    if policy.allow_private {
        return Ok(());
    }
    let u = url::Url::parse(url).map_err(|e| TargetError::NotAUrl(e.to_string()))?;
    if let Some(url::Host::Domain(d)) = u.host() {
        outbound::resolve_public(d, u.port_or_known_default().unwrap_or(443)).await?;
    }
    Ok(())
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
            "https://[::1]/",
            "https://[fd00::1]/",
            "https://[fe80::1]/",
            "https://[::ffff:10.0.0.1]/",
            "https://100.64.0.1/",
            "https://0x7f.1/",
            "ftp://x/",
        ] {
            assert!(check_url(bad, &strict).is_err(), "{bad}");
        }
        assert!(check_url("https://[2606:4700:4700::1111]/", &strict).is_ok());
        let dev = WebhookPolicy {
            allow_private: true,
            ..strict
        };
        assert!(check_url("http://127.0.0.1:9999/hook", &dev).is_ok());
        assert!(check_url("ftp://x/", &dev).is_err());
    }

    #[tokio::test]
    async fn names_are_resolved_before_they_are_trusted() {
        let strict = WebhookPolicy::default();
        // `.invalid` never resolves (RFC 6761): not refused as inward, but not accepted either
        // (a delivery retries it; setting it is refused).
        let err = vet_url("https://hooks.invalid/atp", &strict)
            .await
            .unwrap_err();
        assert!(matches!(err, TargetError::Unresolvable { .. }), "{err}");
        // Literals are judged without a lookup.
        let err = vet_url("https://[::ffff:169.254.169.254]/", &strict)
            .await
            .unwrap_err();
        assert!(matches!(err, TargetError::NotPublic { .. }), "{err}");
        // The escape hatch skips resolution (loopback receivers in tests and `atp dev`).
        let dev = WebhookPolicy {
            allow_private: true,
            ..strict
        };
        assert!(vet_url("http://hooks.invalid/atp", &dev).await.is_ok());
    }
}
