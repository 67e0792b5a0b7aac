//! `atp producer add|revoke-nats|revoke`: the producer registry, and each change on the admin
//! trail.

use std::path::PathBuf;

use super::{NatsArgs, SourceArgs};
use atp_nats::auth::AuthDir;
use serde_json::{Map, Value};

#[derive(clap::Subcommand)]
pub(super) enum Action {
    /// Register a source (and optionally a key for it).
    Add {
        #[command(flatten)]
        nats: NatsArgs,
        #[command(flatten)]
        at: SourceArgs,
        #[arg(long)]
        source_uri: String,
        #[arg(long, requires = "public_key")]
        key_id: Option<String>,
        /// Raw Ed25519 public key, base64.
        #[arg(long, requires = "key_id")]
        public_key: Option<String>,
        /// Also make the source a NATS identity in this auth directory (`atp nats init-auth`):
        /// a new nkey user that may publish only to its own ingress subject, applied to the
        /// running servers by a reload.
        #[arg(long, env = "ATP_NATS_AUTH_DIR")]
        nats_auth_dir: Option<PathBuf>,
        /// Where to write the new NATS user's seed (mode 0600); default: in the auth directory.
        #[arg(long, requires = "nats_auth_dir")]
        nats_creds_out: Option<PathBuf>,
    },
    /// Withdraw a source's NATS identities: the servers close their connections on reload.
    RevokeNats {
        #[command(flatten)]
        nats: NatsArgs,
        #[command(flatten)]
        at: SourceArgs,
        #[arg(long, env = "ATP_NATS_AUTH_DIR")]
        nats_auth_dir: PathBuf,
    },
    /// Revoke a producer key: later events signed with it are KEY_REVOKED.
    Revoke {
        #[command(flatten)]
        nats: NatsArgs,
        #[command(flatten)]
        at: SourceArgs,
        #[arg(long)]
        key_id: String,
    },
}

pub(super) async fn run(action: Action) -> anyhow::Result<()> {
    match action {
        Action::Add {
            nats,
            at,
            source_uri,
            key_id,
            public_key,
            nats_auth_dir,
            nats_creds_out,
        } => {
            let p = at.partition()?;
            let js = nats.jetstream().await?;
            let key = match (key_id.as_deref(), public_key) {
                (Some(id), Some(pk)) => Some((id, crate::keys::parse_public(&pk)?)),
                _ => None,
            };
            let reg =
                crate::admin::add_producer(&js, &at.tenant, &at.source, &source_uri, key).await?;
            println!("{}", serde_json::to_string_pretty(&reg)?);
            let mut details = Map::new();
            details.insert("sourceUri".into(), source_uri.into());
            if let Some(id) = key_id {
                details.insert("keyId".into(), id.into());
            }
            if let Some(dir) = nats_auth_dir {
                let auth = AuthDir::open(&dir)?;
                let (user, seed) = crate::admin::add_nats_producer(
                    &nats.nats_url,
                    &auth,
                    &p,
                    nats_creds_out.as_deref(),
                )
                .await?;
                details.insert("natsUser".into(), user.into());
                eprintln!(
                    "NATS credentials for {}/{}: {} (applied to the running servers)",
                    at.tenant,
                    at.source,
                    seed.display()
                );
            }
            crate::admin::record_producer_action(&js, &p, "PRODUCER_REGISTERED", details).await
        }
        Action::RevokeNats {
            nats,
            at,
            nats_auth_dir,
        } => {
            let p = at.partition()?;
            let auth = AuthDir::open(&nats_auth_dir)?;
            let n = auth.remove_producer(&p)?;
            crate::admin::reload_nats(&nats.nats_url, &auth).await?;
            println!("withdrew {n} NATS identities of {p}");
            let details = Map::from_iter([("identities".to_owned(), Value::from(n))]);
            let js = nats.jetstream().await?;
            crate::admin::record_producer_action(
                &js,
                &p,
                "PRODUCER_NATS_IDENTITY_WITHDRAWN",
                details,
            )
            .await
        }
        Action::Revoke { nats, at, key_id } => {
            let p = at.partition()?;
            let js = nats.jetstream().await?;
            crate::admin::revoke_key(&js, &at.tenant, &at.source, &key_id).await?;
            println!("revoked {key_id}");
            let details = Map::from_iter([("keyId".to_owned(), Value::from(key_id))]);
            crate::admin::record_producer_action(&js, &p, "PRODUCER_KEY_REVOKED", details).await
        }
    }
}
