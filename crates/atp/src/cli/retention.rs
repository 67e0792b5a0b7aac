//! `atp retention plan`: what a retention run of the lifecycle role would destroy now, and
//! what legal holds keep, without destroying anything.

use super::{DbArgs, NatsArgs};

#[derive(clap::Subcommand)]
pub(super) enum Action {
    /// Lists every tenant's expired subject keys, by retention policy and bucket.
    Plan {
        #[command(flatten)]
        nats: NatsArgs,
        #[command(flatten)]
        db: DbArgs,
        /// The tenant keys (as `atp serve`): legal holds on subjects are found through them.
        #[arg(long, env = "ATP_TENANT_KEYS_DIR", default_value = atp_runtime::ingest::DEFAULT_TENANT_KEYS_DIR)]
        tenant_keys_dir: std::path::PathBuf,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub(super) async fn run(action: Action) -> anyhow::Result<()> {
    let Action::Plan {
        nats,
        db,
        tenant_keys_dir,
        json,
    } = action;
    let js = nats.jetstream().await?;
    let pool = atp_store::connect(&db.database_url, 2).await?;
    let keys = std::sync::Arc::new(atp_runtime::keyring::FileTenantKeys::new(&tenant_keys_dir));
    let resolver = atp_runtime::clearance::Resolver::new(&js, keys).await?;
    let plan = atp_runtime::lifecycle::plan_retention(&pool, &resolver, chrono::Utc::now()).await?;
    if !json {
        println!(
            "{:<20} {:<20} {:<16} {:<25} {:>8} {:>6}",
            "TENANT", "RETENTION POLICY", "BUCKET", "EXPIRED AT", "DESTROY", "HELD"
        );
    }
    for e in &plan {
        if json {
            let holds: std::collections::BTreeSet<&str> =
                e.held.iter().map(|(_, h)| h.as_str()).collect();
            println!(
                "{}",
                serde_json::json!({
                    "tenantId": e.tenant.as_str(),
                    "retentionPolicyId": e.retention_policy_id,
                    "bucket": e.bucket,
                    "expiredAt": atp_core::record::timestamp(e.expired_at),
                    "keysToDestroy": e.destroy.len(),
                    "keysHeld": e.held.len(),
                    "holds": holds,
                })
            );
        } else {
            println!(
                "{:<20} {:<20} {:<16} {:<25} {:>8} {:>6}",
                e.tenant.as_str(),
                e.retention_policy_id,
                e.bucket,
                atp_core::record::timestamp(e.expired_at),
                e.destroy.len(),
                e.held.len()
            );
        }
    }
    Ok(())
}
