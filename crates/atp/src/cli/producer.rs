//! `atp producer add|revoke-nats|revoke`: the producer registry, and each change on the admin
//! trail.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

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
        /// The producer key's id (with `--public-key`, `--public-key-pem` or
        /// `--generate-key`).
        #[arg(long)]
        key_id: Option<String>,
        /// Raw Ed25519 public key, base64.
        #[arg(long, requires = "key_id", conflicts_with_all = ["public_key_pem", "generate_key"])]
        public_key: Option<String>,
        /// An Ed25519 public key in PEM (SubjectPublicKeyInfo), as `openssl pkey -pubout`
        /// writes it.
        #[arg(long, requires = "key_id", conflicts_with = "generate_key")]
        public_key_pem: Option<PathBuf>,
        /// Make a new key pair for the producer and register its public half: written to
        /// `--output` as `producer.pem` (PKCS#8, 0600) and `producer.pub.pem`.
        #[arg(long, requires_all = ["key_id", "output"])]
        generate_key: bool,
        /// Also give the source a webhook secret with this id, for
        /// `POST /api/v1/ingest/webhooks/{sourceId}?tenant=…` signed with Standard Webhooks
        /// `v1` (HMAC): written to `--output` as `webhook.secret` (`whsec_…`, 0600), shown
        /// nowhere else. (Webhooks signed `v1a` verify with the source's producer keys.)
        #[arg(long, requires = "output")]
        webhook_secret_id: Option<String>,
        /// A directory (made 0700) that gets everything the producer needs:
        /// `producer.json` (tenant, source, source URI, subject, key id, NATS URL and file
        /// names), the key pair with `--generate-key`, and the NATS seed (`nats.nk`) with
        /// `--nats-auth-dir`.
        #[arg(long, conflicts_with = "nats_creds_out")]
        output: Option<PathBuf>,
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
            public_key_pem,
            generate_key,
            output,
            nats_auth_dir,
            nats_creds_out,
            webhook_secret_id,
        } => {
            let p = at.partition()?;
            let js = nats.jetstream().await?;
            if let Some(dir) = &output {
                create_private_dir(dir)?;
            }
            let public = match (public_key, public_key_pem, generate_key, &output) {
                (Some(b64), _, _, _) => Some(crate::keys::parse_public(&b64)?),
                (_, Some(pem), _, _) => Some(crate::keys::read_public_pem(&pem)?),
                (_, _, true, Some(dir)) => {
                    let key = crate::keys::generate();
                    crate::keys::write_private(&dir.join("producer.pem"), &key)?;
                    crate::keys::write_public_pem(&dir.join("producer.pub.pem"), &key)?;
                    Some(key.verifying_key().to_bytes())
                }
                _ => None,
            };
            let key = match (key_id.as_deref(), public) {
                (Some(id), Some(pk)) => Some((id, pk)),
                (None, None) => None,
                (Some(_), None) => anyhow::bail!(
                    "--key-id needs the key: --public-key, --public-key-pem or --generate-key"
                ),
                (None, Some(_)) => anyhow::bail!("a producer key needs its --key-id"),
            };
            let mut reg =
                crate::admin::add_producer(&js, &at.tenant, &at.source, &source_uri, key).await?;
            let webhook = match (&webhook_secret_id, &output) {
                (Some(id), Some(dir)) => {
                    let secret =
                        crate::admin::add_webhook_secret(&js, &at.tenant, &at.source, id).await?;
                    write_secret(&dir.join("webhook.secret"), &secret.to_whsec())?;
                    Some(id.clone())
                }
                _ => None,
            };
            // The registration as printed names its webhook secrets, never their values.
            let mut secret_ids: Vec<String> = reg.webhook_secrets.drain(..).map(|s| s.id).collect();
            if let Some(id) = webhook.as_ref().filter(|id| !secret_ids.contains(id)) {
                secret_ids.push(id.clone());
            }
            let mut shown = serde_json::to_value(&reg)?;
            shown["webhookSecretIds"] = secret_ids.into();
            println!("{}", serde_json::to_string_pretty(&shown)?);
            let mut details = Map::new();
            if let Some(id) = &webhook {
                details.insert("webhookSecretId".into(), id.clone().into());
            }
            details.insert("sourceUri".into(), source_uri.into());
            if let Some(id) = &key_id {
                details.insert("keyId".into(), id.clone().into());
            }
            if let Some(dir) = nats_auth_dir {
                let auth = AuthDir::open(&dir)?;
                let seed_out = output
                    .as_ref()
                    .map(|d| d.join("nats.nk"))
                    .or(nats_creds_out);
                let (user, seed) =
                    crate::admin::add_nats_producer(&nats.nats_url, &auth, &p, seed_out.as_deref())
                        .await?;
                details.insert("natsUser".into(), user.into());
                eprintln!(
                    "NATS credentials for {}/{}: {} (applied to the running servers)",
                    at.tenant,
                    at.source,
                    seed.display()
                );
            }
            if let Some(dir) = &output {
                let facts = crate::onboarding::OnboardingFacts {
                    tenant: at.tenant.clone(),
                    source: at.source.clone(),
                    source_uri: reg.source_uri.clone(),
                    subject: atp_nats::subjects::ingress(&p),
                    key_id: key.map(|(id, _)| id.to_owned()),
                    private_key: generate_key.then(|| "producer.pem".to_owned()),
                    public_key: generate_key.then(|| "producer.pub.pem".to_owned()),
                    nats_url: nats.nats_url.clone(),
                    nats_credentials: details
                        .contains_key("natsUser")
                        .then(|| "nats.nk".to_owned()),
                    webhook_path: Some(format!(
                        "/api/v1/ingest/webhooks/{}?tenant={}",
                        at.source, at.tenant
                    )),
                    webhook_secret: webhook.as_ref().map(|_| "webhook.secret".to_owned()),
                };
                facts.write(dir)?;
                eprintln!("everything the producer needs is in {}", dir.display());
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

/// A secret in a file only its owner may read.
fn write_secret(path: &Path, secret: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(secret.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// A directory only its owner may read: it will hold a private key and a NATS seed.
fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {}", dir.display()))
}
