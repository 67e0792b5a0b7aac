//! `atp dlq list|show|replay`: the operator's view of dead letters, across tenants.

use anyhow::Context as _;
use async_nats::jetstream::Context;
use atp_core::deadletter::DeadRole;
use atp_nats::dlq::{self, Filter};
use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// Which letters: by tenant, role and time of death (`--from` inclusive, `--to` exclusive).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Select {
    #[arg(long)]
    pub tenant: Option<String>,
    /// projector or exporter.
    #[arg(long)]
    pub role: Option<String>,
    /// RFC 3339.
    #[arg(long)]
    pub from: Option<DateTime<Utc>>,
    /// RFC 3339.
    #[arg(long)]
    pub to: Option<DateTime<Utc>>,
}

impl Select {
    pub fn filter(&self) -> anyhow::Result<Filter> {
        if let Some(t) = &self.tenant {
            atp_core::TenantId::new(t).context("--tenant")?;
        }
        Ok(Filter {
            tenant: self.tenant.clone(),
            role: self
                .role
                .as_deref()
                .map(|r| DeadRole::parse(r).context("--role is projector or exporter"))
                .transpose()?,
            from: self.from,
            to: self.to,
            limit: 0,
        })
    }
}

/// One JSON object per letter on stdout: `{seq, letter, replay}`.
pub async fn list(js: &Context, select: &Select) -> anyhow::Result<()> {
    for entry in dlq::list(js, &select.filter()?).await? {
        println!("{}", serde_json::to_string(&entry)?);
    }
    Ok(())
}

/// A letter, and the message it names as its stream keeps it (headers and payload).
pub async fn show(js: &Context, seq: u64) -> anyhow::Result<()> {
    let entry = dlq::get(js, seq).await?;
    let (payload, headers) = dlq::original(js, &entry.letter).await?;
    let headers: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .flat_map(|h| h.iter())
        .map(|(k, v)| {
            (
                k.to_string(),
                v.iter().map(|v| v.as_str().to_owned()).collect(),
            )
        })
        .collect();
    let message = match serde_json::from_slice::<serde_json::Value>(&payload) {
        Ok(v) => serde_json::json!({"headers": headers, "json": v}),
        Err(_) => {
            serde_json::json!({"headers": headers, "text": String::from_utf8_lossy(&payload)})
        }
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "seq": entry.seq,
            "letter": entry.letter,
            "replay": entry.replay,
            "intact": entry.letter.matches(&payload),
            "message": message,
        }))?
    );
    Ok(())
}

/// Replays the letters selected (or the ones named by `seqs`); one JSON line per letter.
/// Returns whether every one is handled.
pub async fn replay(
    js: &Context,
    pool: &PgPool,
    select: &Select,
    seqs: &[u64],
    dry_run: bool,
) -> anyhow::Result<bool> {
    let entries = if seqs.is_empty() {
        dlq::list(js, &select.filter()?).await?
    } else {
        let mut v = Vec::new();
        for s in seqs {
            v.push(dlq::get(js, *s).await?);
        }
        v
    };
    let by = crate::admin::operator();
    let mut all_handled = true;
    for entry in &entries {
        let r = atp_ops::dlq::replay(js, pool, entry, &by, dry_run).await?;
        all_handled &= r.outcome != atp_ops::dlq::Outcome::Failed;
        println!("{}", serde_json::to_string(&r)?);
    }
    Ok(all_handled)
}
