//! [`HttpPublisher`]: events through ATP's gateway (`POST /api/v1/audit/append`), for
//! producers that cannot reach NATS.

use std::time::Duration;

use atp_core::Reason;
use serde_json::Value;

use crate::{PublishError, Retry, SignedEvent};

/// The gateway's answer to an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It is a record (`repeat`: it was one already, from an earlier send of this id).
    Recorded(Recorded),
    /// Durable in ATP's ingress stream, not yet a record: no wait was asked, or it ran out.
    Accepted {
        idempotency_key: String,
        ingress_seq: Option<u64>,
    },
}

/// Where the event sits in its chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub record_id: String,
    pub chain_index: u64,
    /// `sha256:<hex>` of the record's bytes.
    pub digest: String,
    pub repeat: bool,
}

/// Sends signed events to ATP's gateway with a bearer token (role `producer`).
#[derive(Debug, Clone)]
pub struct HttpPublisher {
    client: reqwest::Client,
    append: String,
    token: String,
    wait: Option<Duration>,
    retry: Retry,
}

impl HttpPublisher {
    /// `base` is the gateway's address (`https://atp.example.com`); `token` a JWT that ATP
    /// trusts for the producer's tenant.
    pub fn new(base: &str, token: impl Into<String>) -> Result<HttpPublisher, PublishError> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| PublishError::Config(e.to_string()))?;
        Ok(HttpPublisher {
            client,
            append: format!("{}/api/v1/audit/append", base.trim_end_matches('/')),
            token: token.into(),
            wait: None,
            retry: Retry::default(),
        })
    }

    /// Waits up to `wait` (the gateway honours at most 30 s) for the record or the
    /// rejection, so that [`HttpPublisher::append`] answers [`Outcome::Recorded`] or
    /// [`PublishError::Rejected`] instead of [`Outcome::Accepted`].
    pub fn wait(mut self, wait: Duration) -> HttpPublisher {
        self.wait = Some(wait);
        self
    }

    pub fn retry(mut self, retry: Retry) -> HttpPublisher {
        self.retry = retry;
        self
    }

    /// Sends one event. Rate limits (429, after `Retry-After`), an unavailable gateway (502,
    /// 503, 504) and network failures are retried; a refusal is answered at once.
    pub async fn append(&self, event: &SignedEvent) -> Result<Outcome, PublishError> {
        let mut last = String::new();
        for attempt in 0..self.retry.attempts.max(1) {
            let mut req = self
                .client
                .post(&self.append)
                .bearer_auth(&self.token)
                .header("content-type", "application/cloudevents+json")
                .body(event.body().to_vec());
            if let Some(w) = self.wait {
                req = req.header("prefer", format!("wait={}", w.as_secs().max(1)));
            }
            let retry_after = match req.send().await {
                Err(e) => {
                    last = e.to_string();
                    None
                }
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let retry_after = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    // A body that is not JSON (a proxy's error page) reads as none.
                    let body: Value = match resp.bytes().await {
                        Ok(b) => serde_json::from_slice(&b).unwrap_or(Value::Null),
                        Err(_) => Value::Null,
                    };
                    match status {
                        200 | 201 => return recorded(&body, status == 200),
                        202 => {
                            return Ok(Outcome::Accepted {
                                idempotency_key: text(&body, "idempotencyKey")
                                    .unwrap_or_else(|| event.idempotency_key().to_owned()),
                                ingress_seq: body.get("ingressSeq").and_then(Value::as_u64),
                            });
                        }
                        429 | 502 | 503 | 504 => {
                            last =
                                format!("{status}: {}", text(&body, "detail").unwrap_or_default());
                            retry_after
                        }
                        _ => return Err(refusal(status, &body)),
                    }
                }
            };
            if attempt + 1 < self.retry.attempts {
                let wait = retry_after
                    .map(|d| d.min(self.retry.max.max(Duration::from_secs(1))))
                    .unwrap_or_else(|| self.retry.backoff(attempt + 1));
                tokio::time::sleep(wait).await;
            }
        }
        Err(PublishError::Unavailable(format!(
            "not accepted after {} attempts: {last}",
            self.retry.attempts.max(1)
        )))
    }
}

fn text(body: &Value, name: &str) -> Option<String> {
    body.get(name).and_then(Value::as_str).map(str::to_owned)
}

fn recorded(body: &Value, repeat: bool) -> Result<Outcome, PublishError> {
    let bad = || PublishError::Protocol(format!("a record answer without its fields: {body}"));
    Ok(Outcome::Recorded(Recorded {
        record_id: text(body, "recordId").ok_or_else(bad)?,
        chain_index: body
            .get("chainIndex")
            .and_then(Value::as_u64)
            .ok_or_else(bad)?,
        digest: text(body, "digest").ok_or_else(bad)?,
        repeat,
    }))
}

/// A Problem+JSON answer: the event's rejection when its `code` is a reason code (CONTRACT
/// §2), else the gateway's refusal of the request.
fn refusal(status: u16, body: &Value) -> PublishError {
    let code = text(body, "code").unwrap_or_default();
    let detail = text(body, "detail").unwrap_or_default();
    match Reason::ALL.into_iter().find(|r| r.code() == code) {
        Some(reason) => PublishError::Rejected { reason, detail },
        None => PublishError::Refused {
            status,
            code,
            detail,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_problem_with_a_reason_code_is_the_events_rejection() {
        let e = refusal(
            400,
            &json!({"code": "SIGNATURE_INVALID", "detail": "the signature does not verify"}),
        );
        assert!(matches!(
            e,
            PublishError::Rejected { reason: Reason::SignatureInvalid, ref detail } if detail.contains("verify")
        ));
        for reason in Reason::ALL {
            let e = refusal(400, &json!({"code": reason.code()}));
            assert!(matches!(e, PublishError::Rejected { reason: r, .. } if r == reason));
        }
        let e = refusal(
            403,
            &json!({"code": "FORBIDDEN", "detail": "no producer role"}),
        );
        assert!(
            matches!(e, PublishError::Refused { status: 403, ref code, .. } if code == "FORBIDDEN")
        );
    }

    #[test]
    fn a_record_answer_is_read_whole_or_not_at_all() {
        let ok = recorded(
            &json!({"recordId": "01J", "chainIndex": 3, "digest": "sha256:ab"}),
            true,
        )
        .unwrap();
        assert_eq!(
            ok,
            Outcome::Recorded(Recorded {
                record_id: "01J".to_owned(),
                chain_index: 3,
                digest: "sha256:ab".to_owned(),
                repeat: true,
            })
        );
        assert!(matches!(
            recorded(&json!({"recordId": "01J"}), false),
            Err(PublishError::Protocol(_))
        ));
    }
}
