//! `atp replay`: rebuild a read model from the ledger into a fresh table and swap it in.

use super::{DbArgs, NatsArgs};
use atp_runtime::replay::ReplayOptions;
use serde_json::Map;

#[derive(clap::Args)]
pub(super) struct Args {
    #[command(flatten)]
    nats: NatsArgs,
    #[command(flatten)]
    db: DbArgs,
    #[arg(long, default_value = "records")]
    projection: String,
    #[arg(long)]
    tenant: Option<String>,
    /// First ledger sequence (inclusive).
    #[arg(long)]
    from: Option<u64>,
    /// Last ledger sequence (inclusive).
    #[arg(long)]
    to: Option<u64>,
    /// The tenant keys (as `atp serve`): sealed values are opened again for the rebuilt rows.
    #[arg(long, env = "ATP_TENANT_KEYS_DIR", default_value = atp_runtime::ingest::DEFAULT_TENANT_KEYS_DIR)]
    tenant_keys_dir: std::path::PathBuf,
}

pub(super) async fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.projection == "records",
        "only the records projection can be replayed so far"
    );
    let opts = ReplayOptions {
        tenant: args.tenant.map(atp_core::TenantId::new).transpose()?,
        from_seq: args.from,
        to_seq: args.to,
    };
    let js = args.nats.jetstream().await?;
    let pool = atp_store::connect(&args.db.database_url, 4).await?;
    let keys = std::sync::Arc::new(atp_runtime::keyring::FileTenantKeys::new(
        &args.tenant_keys_dir,
    ));
    let report = atp_runtime::replay::replay_records(&js, &pool, keys, &opts).await?;
    println!("replayed {} records and swapped them in", report.rows);
    let mut details = Map::new();
    details.insert("rows".into(), report.rows.into());
    if let Some(t) = &opts.tenant {
        details.insert("tenantId".into(), t.as_str().into());
    }
    for (k, v) in [("fromSeq", opts.from_seq), ("toSeq", opts.to_seq)] {
        if let Some(v) = v {
            details.insert(k.into(), v.into());
        }
    }
    crate::admin::record_action(
        &js,
        atp_core::registry::SYSTEM_TENANT,
        "PROJECTION_REPLAYED",
        ("projection", &args.projection),
        details,
    )
    .await
}
