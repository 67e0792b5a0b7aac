//! `atp keys rotate|list`: checkpoint signing keys.

use super::{KeyStoreArgs, NatsArgs};
use atp_runtime::signer::CheckpointSigner;
use serde_json::Map;

#[derive(clap::Subcommand)]
pub(super) enum Action {
    /// Make a new active signing key; old keys stay published so old checkpoints verify.
    Rotate {
        #[command(flatten)]
        store: KeyStoreArgs,
        #[command(flatten)]
        nats: NatsArgs,
    },
    /// Print the key store's keys (public halves) as JSON.
    List {
        #[command(flatten)]
        store: KeyStoreArgs,
    },
}

pub(super) async fn run(action: Action) -> anyhow::Result<()> {
    match action {
        Action::Rotate { store, nats } => {
            let ks = store.open()?;
            let key = ks.rotate(&store.log_name, chrono::Utc::now())?;
            let ring = CheckpointSigner::keyring(&ks).await?;
            // Running integrity workers pick the new key up from the key store themselves;
            // publishing here makes it visible to verifiers at once.
            match nats.jetstream().await {
                Ok(js) => {
                    let kv = atp_nats::signing_keys::bucket(&js).await?;
                    atp_nats::signing_keys::publish(&kv, &ring.all).await?;
                    let mut details = Map::new();
                    details.insert("name".into(), key.name.clone().into());
                    details.insert("notBefore".into(), key.not_before.clone().into());
                    crate::admin::record_action(
                        &js,
                        atp_core::registry::SYSTEM_TENANT,
                        "SIGNING_KEY_ROTATED",
                        ("signing-key", &key.kid),
                        details,
                    )
                    .await?;
                }
                Err(e) => eprintln!(
                    "not published to NATS ({e}): the integrity worker will publish the key, \
                     but this rotation is not on the admin trail"
                ),
            }
            println!("{}", serde_json::to_string_pretty(&key)?);
        }
        Action::List { store } => {
            let ring = CheckpointSigner::keyring(&store.open()?).await?;
            println!("{}", serde_json::to_string_pretty(&ring.all)?);
        }
    }
    Ok(())
}
