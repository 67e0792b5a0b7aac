//! How a role gives up on a message after its bounded attempts: a letter on ATP_DLQ, counted
//! and logged. Replaying letters is `atp_ops::dlq`'s.

use async_nats::jetstream::Context;
use atp_core::deadletter::DeadLetter;
use atp_nats::dlq;

use crate::metrics::{label, metrics};
use crate::{Classify, RoleError};

/// Stores a letter (waiting for JetStream) and says so in the metrics and the log.
pub async fn write(js: &Context, letter: &DeadLetter) -> Result<(), RoleError> {
    let seq = dlq::publish(js, letter)
        .await
        .or_retry("publishing a dead letter")?;
    metrics().dlq_letters.add(
        1,
        &[
            label("role", letter.role.as_str()),
            label("code", letter.code.clone()),
        ],
    );
    tracing::error!(
        role = letter.role.as_str(),
        code = %letter.code,
        stream = %letter.stream,
        stream_seq = letter.stream_seq,
        dlq_seq = seq,
        tenant.id = %letter.tenant_id,
        trace.id = letter.trace_id.as_deref().unwrap_or(""),
        detail = %letter.detail,
        "message dead-lettered"
    );
    Ok(())
}
