//! Test-only crash points, one at each place `docs/architecture.md` says a crash matters.
//!
//! Built with the `failpoints` feature (`ops/bin/test` builds the `atp` the crash tests run that
//! way), a process whose `ATP_FAILPOINTS` names a point — `name`, or `name@n` for its n-th
//! hit — aborts there: no destructors, no flushes, no graceful stop, as with SIGKILL. A test
//! thereby crashes ATP exactly between two writes instead of at a random moment. Without the
//! feature (every release build) [`crash_point`] is an empty inline function, and a process
//! started with `ATP_FAILPOINTS` set refuses to run ([`check_env`]) rather than silently
//! ignoring the test's request.

/// Whether this build has crash points: callers skip any work done only to decide whether a
/// point is reached.
pub const ENABLED: bool = cfg!(feature = "failpoints");

/// The variable that arms a crash point.
pub const ENV: &str = "ATP_FAILPOINTS";

/// Every crash point, in the order of `docs/architecture.md`'s "Where a crash matters".
pub const POINTS: [&str; 13] = [
    INGEST_BETWEEN_REJECTIONS_AND_RECORDS,
    INGEST_BEFORE_HINT,
    INGEST_LANE_HINT_STORED,
    PROJECTOR_BEFORE_COMMIT,
    REPLAY_BEFORE_SWAP,
    INTEGRITY_BEFORE_PUBLISH,
    INTEGRITY_BEFORE_STORE,
    EXPORTER_BEFORE_STORE,
    EXPORTER_BEFORE_ROW,
    EXPORTER_BEFORE_ACK,
    GATEWAY_BEFORE_EXPORT_ROW,
    PROJECTOR_AFTER_DEAD_LETTER,
    ERASURE_MID_KEYS,
];

/// Ingest, one partition's rejections committed, its records not yet.
pub const INGEST_BETWEEN_REJECTIONS_AND_RECORDS: &str = "ingest-between-rejections-and-records";
/// Ingest, a batch on the ledger, the resume hint not yet stored.
pub const INGEST_BEFORE_HINT: &str = "ingest-before-hint";
/// Ingest, a new tenant lane's hint stored, the rest lane not yet told to leave the tenant.
pub const INGEST_LANE_HINT_STORED: &str = "ingest-lane-hint-stored";
/// Projector, a batch's rows inserted in its transaction, not yet committed.
pub const PROJECTOR_BEFORE_COMMIT: &str = "projector-before-commit";
/// Replay (`atp replay`), the read model rebuilt beside the live one, not yet swapped in.
pub const REPLAY_BEFORE_SWAP: &str = "replay-before-swap";
/// Integrity, tiles committed, the checkpoint not yet published.
pub const INTEGRITY_BEFORE_PUBLISH: &str = "integrity-before-publish";
/// Integrity, the checkpoint published, not yet stored.
pub const INTEGRITY_BEFORE_STORE: &str = "integrity-before-store";
/// Exporter, a bundle packaged from its snapshot, not yet stored.
pub const EXPORTER_BEFORE_STORE: &str = "exporter-before-store";
/// Exporter, the bundle stored, the row not yet marked completed.
pub const EXPORTER_BEFORE_ROW: &str = "exporter-before-row";
/// Exporter, the row completed, the announcement and the ack not yet sent.
pub const EXPORTER_BEFORE_ACK: &str = "exporter-before-ack";
/// Gateway, an export request published to the exporter, its row not yet written.
pub const GATEWAY_BEFORE_EXPORT_ROW: &str = "gateway-before-export-row";
/// Projector, a message dead-lettered, its batch not yet committed.
pub const PROJECTOR_AFTER_DEAD_LETTER: &str = "projector-after-dead-letter";
/// Lifecycle, an erasure's first subject key destroyed, the others not yet.
pub const ERASURE_MID_KEYS: &str = "erasure-mid-keys";

/// A crash point reached. Aborts the process when [`ENV`] arms this point for this hit (with
/// the `failpoints` feature); otherwise does nothing.
#[cfg(feature = "failpoints")]
pub fn crash_point(name: &'static str) {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static ARMED: OnceLock<Option<(Armed, AtomicU64)>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| {
        let value = std::env::var(ENV).ok()?;
        Some((Armed::parse(&value).ok()?, AtomicU64::new(0)))
    });
    if let Some((armed, hits)) = armed
        && armed.point == name
        && hits.fetch_add(1, Ordering::Relaxed) + 1 == armed.hit
    {
        eprintln!("crash point {name} reached (hit {}): aborting", armed.hit);
        std::process::abort();
    }
}

/// A crash point reached: nothing happens in a build without the `failpoints` feature.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn crash_point(_name: &'static str) {}

/// Refuses an [`ENV`] this build cannot honour: set without the feature, malformed, or naming
/// no crash point. Called once at start-up.
pub fn check_env() -> Result<(), String> {
    let Ok(value) = std::env::var(ENV) else {
        return Ok(());
    };
    if !ENABLED {
        return Err(format!(
            "{ENV} is set but this atp was built without crash points \
             (cargo build --bin atp --features failpoints)"
        ));
    }
    Armed::parse(&value).map(|_| ())
}

/// The point [`ENV`] arms, and on which hit.
#[derive(Debug, PartialEq, Eq)]
struct Armed {
    point: &'static str,
    hit: u64,
}

impl Armed {
    fn parse(value: &str) -> Result<Armed, String> {
        let (name, hit) = match value.split_once('@') {
            Some((name, n)) => (
                name,
                n.parse().map_err(|_| format!("{ENV}: bad hit {n:?}"))?,
            ),
            None => (value, 1),
        };
        let point = POINTS
            .iter()
            .find(|p| **p == name)
            .ok_or_else(|| format!("{ENV}: no crash point {name:?}: one of {POINTS:?}"))?;
        if hit == 0 {
            return Err(format!("{ENV}: hits count from 1"));
        }
        Ok(Armed { point, hit })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_point_is_armed_by_name_for_its_first_hit_or_the_hit_given() {
        assert_eq!(
            Armed::parse(INGEST_BEFORE_HINT),
            Ok(Armed {
                point: INGEST_BEFORE_HINT,
                hit: 1
            })
        );
        assert_eq!(
            Armed::parse("exporter-before-row@3"),
            Ok(Armed {
                point: EXPORTER_BEFORE_ROW,
                hit: 3
            })
        );
        for bad in [
            "",
            "nowhere",
            "ingest-before-hint@0",
            "ingest-before-hint@x",
        ] {
            assert!(Armed::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
