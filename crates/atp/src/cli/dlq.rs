//! `atp dlq list|show|replay`: dead letters, and their replay once the cause is fixed.

use std::process::ExitCode;

use super::{DbArgs, NatsArgs};
use crate::dlq::Select;

#[derive(clap::Args)]
pub(super) struct Args {
    #[command(flatten)]
    nats: NatsArgs,
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand)]
enum Action {
    /// One JSON line per letter, oldest first.
    List {
        #[command(flatten)]
        select: Select,
    },
    /// A letter and the message it names.
    Show { seq: u64 },
    /// Handle the letters again (idempotent; each replay is recorded beside its letter).
    /// Exits 1 if any still fails.
    Replay {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        select: Select,
        /// Only these letters (ATP_DLQ sequences); repeatable.
        #[arg(long = "seq")]
        seqs: Vec<u64>,
        /// Check each would succeed; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

pub(super) async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let js = args.nats.jetstream().await?;
    match args.action {
        Action::List { select } => crate::dlq::list(&js, &select).await?,
        Action::Show { seq } => crate::dlq::show(&js, seq).await?,
        Action::Replay {
            db,
            select,
            seqs,
            dry_run,
        } => {
            let pool = atp_store::connect(&db.database_url, 2).await?;
            if !crate::dlq::replay(&js, &pool, &select, &seqs, dry_run).await? {
                eprintln!("some letters still cannot be handled");
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
