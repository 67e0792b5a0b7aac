//! `atp streams apply|check`: the streams and KV buckets of `streams/`.

use super::NatsArgs;

#[derive(clap::Subcommand)]
pub(super) enum Action {
    /// Create or update every stream and bucket; report drift.
    Apply {
        #[command(flatten)]
        nats: NatsArgs,
        #[arg(long, default_value_t = 1)]
        replicas: usize,
    },
    /// Check every stream is present and not drifted.
    Check {
        #[command(flatten)]
        nats: NatsArgs,
    },
}

pub(super) async fn run(action: Action) -> anyhow::Result<()> {
    match action {
        Action::Apply { nats, replicas } => {
            let js = nats.jetstream().await?;
            for (name, applied) in atp_nats::streams::apply(&js, replicas).await? {
                println!("{name}: {applied:?}");
            }
        }
        Action::Check { nats } => {
            atp_nats::streams::check(&nats.jetstream().await?).await?;
            println!("streams present and not drifted");
        }
    }
    Ok(())
}
