//! [`NatsPublisher`]: events straight to ATP's ingress stream, acknowledged by JetStream.

use std::path::Path;

use async_nats::jetstream;

use crate::{PublishError, Retry, SignedEvent, Source};

/// How long an event waits for its acknowledgement from when it was sent (JetStream's own
/// default request timeout).
const ACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What JetStream's acknowledgement says: the event is durable in ATP's ingress stream, and
/// ATP will make it a record or a rejection (`GET /api/v1/audit/rejections` says why).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub idempotency_key: String,
    /// Its position in the ingress stream.
    pub ingress_seq: u64,
}

/// Publishes signed events to `atp.ingress.<tenant>.<source>` and waits for JetStream's
/// acknowledgement, retrying what was not acknowledged.
#[derive(Debug, Clone)]
pub struct NatsPublisher {
    js: jetstream::Context,
    subject: String,
    retry: Retry,
}

impl NatsPublisher {
    /// Connects to `url` as the producer whose NATS seed file `atp producer add` wrote (the
    /// seed alone, or ATP's annotated form).
    pub async fn connect(
        url: &str,
        seed_file: &Path,
        source: &Source,
    ) -> Result<NatsPublisher, PublishError> {
        let (seed, inbox) = atp_nats::auth::read_seed(seed_file)
            .map_err(|e| PublishError::Config(e.to_string()))?;
        let mut options = async_nats::ConnectOptions::with_nkey(seed).name("atp-producer");
        if let Some(prefix) = inbox {
            options = options.custom_inbox_prefix(prefix);
        }
        let client = options
            .connect(url)
            .await
            .map_err(|e| PublishError::Unavailable(format!("connecting to {url}: {e}")))?;
        Ok(NatsPublisher::with_client(client, source))
    }

    /// Publishes over a client the caller connected.
    pub fn with_client(client: async_nats::Client, source: &Source) -> NatsPublisher {
        NatsPublisher {
            js: jetstream::new(client),
            subject: atp_nats::subjects::ingress(source.partition()),
            retry: Retry::default(),
        }
    }

    pub fn retry(mut self, retry: Retry) -> NatsPublisher {
        self.retry = retry;
        self
    }

    /// Publishes one event and waits for its acknowledgement, retrying (with backoff and
    /// jitter) until it comes or the attempts run out.
    pub async fn publish(&self, event: &SignedEvent) -> Result<Receipt, PublishError> {
        let mut last = String::new();
        for attempt in 0..self.retry.attempts.max(1) {
            if attempt > 0 {
                tokio::time::sleep(self.retry.backoff(attempt)).await;
            }
            match self.try_once(event).await {
                Ok(ingress_seq) => {
                    return Ok(Receipt {
                        idempotency_key: event.idempotency_key().to_owned(),
                        ingress_seq,
                    });
                }
                Err(Attempt::Final(e)) => return Err(e),
                Err(Attempt::Again(why)) => {
                    tracing::debug!(id = event.id(), attempt, %why, "not acknowledged; retrying");
                    last = why;
                }
            }
        }
        Err(PublishError::Unavailable(format!(
            "not acknowledged after {} attempts: {last}",
            self.retry.attempts.max(1)
        )))
    }

    /// Publishes `events` with up to `in_flight` waiting for their acknowledgement at once,
    /// and answers each in order. Memory stays bounded by `in_flight`, however many events
    /// the iterator yields.
    ///
    /// Events are sent in the iterator's order on one connection, so numbered events
    /// (`sequence`) reach ATP in their order. An event whose acknowledgement fails is sent
    /// again ([`NatsPublisher::publish`]) after those behind it: if one of those was recorded
    /// meanwhile, ATP refuses the late one as `SEQUENCE_REGRESSION`, a rejection you can see,
    /// never a silent loss.
    pub async fn publish_all<I>(
        &self,
        events: I,
        in_flight: usize,
    ) -> Vec<Result<Receipt, PublishError>>
    where
        I: IntoIterator<Item = SignedEvent>,
    {
        let mut results = Vec::new();
        let mut pending = std::collections::VecDeque::new();
        for event in events {
            if pending.len() >= in_flight.max(1)
                && let Some((e, ack, deadline)) = pending.pop_front()
            {
                results.push(self.settle(e, ack, deadline).await);
            }
            let ack = self.send(&event).await;
            pending.push_back((event, ack, tokio::time::Instant::now() + ACK_TIMEOUT));
        }
        while let Some((e, ack, deadline)) = pending.pop_front() {
            results.push(self.settle(e, ack, deadline).await);
        }
        results
    }

    /// Forwards a message of the producer's own system that could not be mapped onto an event
    /// (a relay's input: not JSON, no tenant, ...), as received, so that ATP keeps it as an
    /// `UNMAPPABLE` rejection saying `why` rather than it being dropped. `message_id` names it
    /// in the producer's system (Kafka coordinates, a row id): sent again within the ingress
    /// stream's duplicate window, it is not kept twice.
    pub async fn publish_unmappable(
        &self,
        message: &[u8],
        why: &str,
        message_id: &str,
    ) -> Result<Receipt, PublishError> {
        let mut headers = atp_nats::headers::IngressHeaders::structured();
        let why: String = why
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(atp_core::event::MAX_UNMAPPABLE_DETAIL / 4)
            .collect();
        let msg_id = format!("unmappable:{message_id}");
        headers
            .unmappable(&why)
            .and_then(|h| h.msg_id(&msg_id))
            .map_err(|e| PublishError::Config(e.to_string()))?;
        let headers = headers.into_map();
        let mut last = String::new();
        for attempt in 0..self.retry.attempts.max(1) {
            if attempt > 0 {
                tokio::time::sleep(self.retry.backoff(attempt)).await;
            }
            let sent = self
                .js
                .publish_with_headers(
                    self.subject.clone(),
                    headers.clone(),
                    message.to_vec().into(),
                )
                .await;
            match sent {
                Ok(ack) => match ack.await {
                    Ok(ack) => {
                        return Ok(Receipt {
                            idempotency_key: msg_id,
                            ingress_seq: ack.sequence,
                        });
                    }
                    Err(e) => last = e.to_string(),
                },
                Err(e) => last = e.to_string(),
            }
        }
        Err(PublishError::Unavailable(format!(
            "not acknowledged after {} attempts: {last}",
            self.retry.attempts.max(1)
        )))
    }

    /// Hands `event` to the client (in call order); its acknowledgement comes later.
    async fn send(
        &self,
        event: &SignedEvent,
    ) -> Result<jetstream::context::PublishAckFuture, jetstream::context::PublishError> {
        let headers = atp_nats::headers::IngressHeaders::structured().into_map();
        self.js
            .publish_with_headers(self.subject.clone(), headers, event.body().to_vec().into())
            .await
    }

    /// The acknowledgement of a sent event, or the event sent again until it comes.
    ///
    /// The wait is bounded from when the event was sent (`deadline`), not from when its turn to
    /// be settled comes: after an outage, every lost acknowledgement of a window runs out
    /// together, rather than one after the other.
    async fn settle(
        &self,
        event: SignedEvent,
        ack: Result<jetstream::context::PublishAckFuture, jetstream::context::PublishError>,
        deadline: tokio::time::Instant,
    ) -> Result<Receipt, PublishError> {
        let acked = match ack {
            Ok(ack) => match tokio::time::timeout_at(deadline, ack.into_future()).await {
                Ok(acked) => acked.map_err(|e| e.to_string()),
                Err(_) => Err("no acknowledgement within 5 s of sending".to_owned()),
            },
            Err(e) => Err(e.to_string()),
        };
        match acked {
            Ok(ack) => Ok(Receipt {
                idempotency_key: event.idempotency_key().to_owned(),
                ingress_seq: ack.sequence,
            }),
            Err(e) => {
                tracing::debug!(id = event.id(), error = %e, "not acknowledged; sending it again");
                self.publish(&event).await
            }
        }
    }

    async fn try_once(&self, event: &SignedEvent) -> Result<u64, Attempt> {
        use async_nats::jetstream::context::PublishErrorKind as K;
        let headers = atp_nats::headers::IngressHeaders::structured().into_map();
        let sent = self
            .js
            .publish_with_headers(self.subject.clone(), headers, event.body().to_vec().into())
            .await;
        let ack = match sent {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match ack {
            Ok(ack) => Ok(ack.sequence),
            Err(e) => match e.kind() {
                K::MaxPayloadExceeded => Err(Attempt::Final(PublishError::TooLarge(e.to_string()))),
                _ => Err(Attempt::Again(e.to_string())),
            },
        }
    }
}

enum Attempt {
    Again(String),
    Final(PublishError),
}
