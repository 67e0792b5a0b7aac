//! Rebuilding the records read model from the ledger (`atp replay --projection records`).
//!
//! The ledger is read into a fresh table while the live one keeps answering queries; the
//! rebuilt rows are then swapped in with one transaction (see `atp_store::projection::Swap`).

use async_nats::jetstream::{Context, Message};
use atp_core::TenantId;
use atp_nats::{streams, subjects};
use atp_store::projection::{self, Swap, Target};
use atp_telemetry::failpoint;
use sqlx::PgPool;
use std::sync::Arc;
use tokio::sync::watch;

use crate::projector::{Projection as _, Records, rows};
use crate::reader::{BatchHandler, ReadSpec, read_stream};
use crate::{Classify, RoleError};

#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    pub tenant: Option<TenantId>,
    /// Ledger stream sequences, inclusive.
    pub from_seq: Option<u64>,
    pub to_seq: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayReport {
    pub rows: u64,
}

struct Rebuild {
    pool: PgPool,
    resolver: crate::clearance::Resolver,
    rows: u64,
    /// Last ledger sequence to rebuild: a batch may run past it.
    to_seq: u64,
}

impl BatchHandler for Rebuild {
    async fn handle(&mut self, batch: &Arc<[Message]>) -> Result<(), RoleError> {
        let mut cx = Records::prepare(&self.resolver, batch, &|_| true).await?;
        let (mut rows, _) = rows::<Records>(batch, &mut cx)?;
        rows.retain(|r| u64::try_from(r.ledger_seq).is_ok_and(|s| s <= self.to_seq));
        let mut conn = self
            .pool
            .acquire()
            .await
            .or_retry("connecting to the database")?;
        let n = projection::insert_records(&mut conn, Target::Rebuild, &rows)
            .await
            .or_retry("inserting rebuilt rows")?;
        self.rows += n;
        Ok(())
    }
}

pub async fn replay_records(
    js: &Context,
    pool: &PgPool,
    tenant_keys: Arc<dyn crate::keyring::TenantKeys>,
    opts: &ReplayOptions,
) -> Result<ReplayReport, RoleError> {
    let resolver = crate::clearance::Resolver::new(js, tenant_keys).await?;
    projection::begin_rebuild(pool)
        .await
        .or_fatal("beginning the rebuild")?;
    let filter = match &opts.tenant {
        Some(t) => subjects::tenant_all(subjects::LEDGER, t),
        None => subjects::all(subjects::LEDGER),
    };
    let (_tx, shutdown) = watch::channel(false);
    let mut rebuild = Rebuild {
        pool: pool.clone(),
        resolver,
        rows: 0,
        to_seq: opts.to_seq.unwrap_or(u64::MAX),
    };
    read_stream(
        js,
        ReadSpec {
            stream: streams::LEDGER.to_owned(),
            filter_subjects: vec![filter],
            start_seq: opts.from_seq.unwrap_or(1),
            batch_max: crate::projector::BATCH_MAX,
            stop_after: opts.to_seq,
            stop_at_end: true,
            tail_subject: None,
            headers_only: false,
        },
        shutdown,
        &mut rebuild,
    )
    .await?;
    let swap = if opts.tenant.is_none() && opts.from_seq.is_none() && opts.to_seq.is_none() {
        Swap::All
    } else {
        let lo = opts
            .from_seq
            .map_or(0, |v| i64::try_from(v).unwrap_or(i64::MAX));
        let hi = opts
            .to_seq
            .map_or(i64::MAX, |v| i64::try_from(v).unwrap_or(i64::MAX));
        Swap::Scoped {
            tenant_id: opts.tenant.as_ref().map(|t| t.to_string()),
            ledger_seq: Some((lo, hi)),
        }
    };
    failpoint::crash_point(failpoint::REPLAY_BEFORE_SWAP);
    projection::finish_rebuild(pool, swap)
        .await
        .or_fatal("finishing the rebuild")?;
    Ok(ReplayReport { rows: rebuild.rows })
}
