//! `atp dev`: the whole stack on one machine, in the foreground, for trying ATP out.
//!
//! Starts nats-server and PostgreSQL on free loopback ports (throwaway data), applies streams
//! and migrations, generates the dev credentials (never committed: they live in `.atp/dev/`),
//! registers a dev tenant, source and producer key, runs every role, and writes
//! `.atp/dev.env` (CONTRACT §7). Ctrl-C stops everything and removes the data.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use atp_core::edition::Edition;
use atp_devstack::{NatsOptions, NatsServer, Postgres, PostgresOptions};
use atp_gateway::auth::{Claims, Permission, mint};
use atp_nats::auth::{AuthDir, Identity};
use atp_runtime::Secret;
use atp_runtime::ingest::IngestConfig;
use ed25519_dalek::SigningKey;

use crate::serve::ServeConfig;
use atp_core::role::Roles;

pub const DEV_TENANT: &str = "dev";
pub const DEV_SOURCE: &str = "demo";
pub const DEV_SOURCE_URI: &str = "https://demo.example/app";
pub const DEV_PRODUCER_KEY_ID: &str = "dev-producer-1";
pub const ISSUER: &str = "atp-dev";
pub const AUDIENCE: &str = "atp";
pub const ISSUER_KID: &str = "atp-dev-1";
/// The log name (note key name, checkpoint origin prefix) unless configured otherwise.
pub const LOG_NAME: &str = "atp.localhost";

/// Dev token lifetime: a working day, so a tour started in the morning still works.
const TOKEN_TTL_SECS: u64 = 12 * 3600;

/// A dev-issuer token of the enterprise edition, so the dev stack shows every feature.
pub fn mint_token(
    issuer_key: &SigningKey,
    tenant: &str,
    permission: Permission,
    subject: &str,
    ttl_secs: u64,
) -> anyhow::Result<String> {
    mint_token_in(
        issuer_key,
        tenant,
        permission,
        subject,
        ttl_secs,
        Edition::Enterprise,
    )
}

/// A dev-issuer token of the given edition.
pub fn mint_token_in(
    issuer_key: &SigningKey,
    tenant: &str,
    permission: Permission,
    subject: &str,
    ttl_secs: u64,
    edition: Edition,
) -> anyhow::Result<String> {
    let now = chrono::Utc::now().timestamp().max(0) as u64;
    let claims = Claims {
        iss: ISSUER.to_owned(),
        aud: AUDIENCE.to_owned(),
        sub: subject.to_owned(),
        exp: now + ttl_secs,
        nbf: Some(now),
        iat: Some(now),
        tenant_id: tenant.to_owned(),
        roles: vec![permission],
        edition,
    };
    mint(issuer_key, ISSUER_KID, &claims).map_err(anyhow::Error::msg)
}

pub struct DevPaths {
    pub dir: PathBuf,
}

impl DevPaths {
    pub fn new(root: &Path) -> Self {
        Self {
            dir: root.join(".atp").join("dev"),
        }
    }
    pub fn issuer_key(&self) -> PathBuf {
        self.dir.join("issuer.pem")
    }
    pub fn producer_key(&self) -> PathBuf {
        self.dir.join("producer.pem")
    }
    pub fn checkpoint_keys(&self) -> PathBuf {
        self.dir.join("checkpoint-keys")
    }
    pub fn tenant_keys(&self) -> PathBuf {
        self.dir.join("tenant-keys")
    }
    pub fn env_file(&self) -> PathBuf {
        self.dir
            .parent()
            .map(|p| p.join("dev.env"))
            .unwrap_or_else(|| self.dir.join("dev.env"))
    }
}

/// The gateway's PostgreSQL login in the dev stack and tests (a member of `atp_gateway`).
pub const GATEWAY_LOGIN: &str = "atp_gateway_login";

pub async fn run(root: &Path, listen: SocketAddr) -> anyhow::Result<()> {
    let paths = DevPaths::new(root);
    std::fs::create_dir_all(&paths.dir)?;
    let issuer = crate::keys::load_or_create(&paths.issuer_key())?;
    let producer = crate::keys::load_or_create(&paths.producer_key())?;
    let checkpoint_keys = atp_runtime::signer::FileKeyStore::open_or_init(
        &paths.checkpoint_keys(),
        LOG_NAME,
        chrono::Utc::now(),
    )?;
    let note_verifier_key = atp_runtime::signer::CheckpointSigner::keyring(&checkpoint_keys)
        .await?
        .active
        .verifier_key;

    // Every NATS identity is generated here on first start and kept in .atp/dev/nats: ATP's
    // roles, admin, the system user and the dev producer.
    let auth = AuthDir::init(&paths.dir.join("nats"))?;
    let dev_partition = atp_core::PartitionKey::parse(&format!("{DEV_TENANT}:{DEV_SOURCE}"))?;
    let producer_identity = Identity::Producer(dev_partition.clone());
    if !auth.seed_path(&producer_identity).exists() {
        auth.add_producer(&dev_partition, None)?;
    }
    let admin_seed = auth.seed_path(&Identity::Admin).display().to_string();

    eprintln!("starting nats-server and PostgreSQL…");
    let mut nats = NatsServer::start(NatsOptions {
        include: Some(auth.conf_path()),
        ..Default::default()
    })
    .await
    .context("starting nats-server")?;
    let mut pg = Postgres::start(PostgresOptions {
        durable: true,
        ..Default::default()
    })
    .await
    .context("starting PostgreSQL")?;
    let database_url = pg.create_database("atp").await?;

    let client = atp_nats::connect(&nats.url(), "atp-dev", Some(&admin_seed)).await?;
    let js = async_nats::jetstream::new(client);
    crate::admin::prepare(&js, &database_url, 1).await?;
    // The gateway reads as a login of its own, under row-level security.
    let gateway_database_url = {
        let pool = atp_store::connect(&database_url, 1).await?;
        atp_store::ensure_gateway_login(&pool, GATEWAY_LOGIN).await?;
        pool.close().await;
        pg.url_as(GATEWAY_LOGIN, "atp")
    };
    crate::admin::add_producer(&js, DEV_TENANT, DEV_SOURCE, DEV_SOURCE_URI, None).await?;
    let kv = js
        .get_key_value(atp_nats::streams::PRODUCERS_BUCKET)
        .await?;
    let has_key = atp_nats::registry::get(&kv, &dev_partition)
        .await?
        .is_some_and(|r| r.key(DEV_PRODUCER_KEY_ID).is_some());
    if !has_key {
        crate::admin::add_producer(
            &js,
            DEV_TENANT,
            DEV_SOURCE,
            DEV_SOURCE_URI,
            Some((DEV_PRODUCER_KEY_ID, producer.verifying_key().to_bytes())),
        )
        .await?;
    }

    let mut running = crate::serve::start(ServeConfig {
        nats_url: nats.url(),
        nats_credentials: crate::serve::NatsCredentials::PerRole(auth.dir().to_owned()),
        database_url: Secret::new(database_url.clone()),
        gateway_database_url: Some(Secret::new(gateway_database_url)),
        listen,
        roles: Roles::ALL,
        shard: atp_runtime::shard::Shard::ALL,
        ingest: IngestConfig::default(),
        tenant_keys: std::sync::Arc::new(atp_runtime::keyring::FileTenantKeys::new(
            &paths.tenant_keys(),
        )),
        lifecycle: Default::default(),
        issuer: ISSUER.to_owned(),
        audience: AUDIENCE.to_owned(),
        token_keys: vec![(ISSUER_KID.to_owned(), issuer.verifying_key().to_bytes())],
        token_jwks: None,
        rate_limits: Default::default(),
        attestation_key: None,
        integrity: crate::serve::IntegritySettings {
            keys_dir: paths.checkpoint_keys(),
            log_name: LOG_NAME.to_owned(),
            policy: Default::default(),
        },
        exports: atp_runtime::export::ExportSettings {
            spool_dir: paths.dir.join("exports"),
            webhook: atp_delivery::webhook::WebhookPolicy {
                allow_private: true,
                ..Default::default()
            },
            ..Default::default()
        },
        export_limits: Default::default(),
        gateway_limits: Default::default(),
        metrics_listen: None,
    })
    .await?;
    let addr = running.gateway_addr.context("the gateway did not start")?;

    let token = |role, sub: &str| mint_token(&issuer, DEV_TENANT, role, sub, TOKEN_TTL_SECS);
    let env = [
        ("ATP_URL", format!("http://{addr}")),
        ("NATS_URL", nats.url()),
        ("DATABASE_URL", database_url.clone()),
        // The same two under the names `atp`'s own flags read, so CLI commands just work.
        ("ATP_NATS_URL", nats.url()),
        ("ATP_DATABASE_URL", database_url),
        ("ATP_DEV_TENANT", DEV_TENANT.to_owned()),
        ("ATP_DEV_SOURCE", DEV_SOURCE.to_owned()),
        ("ATP_DEV_SOURCE_URI", DEV_SOURCE_URI.to_owned()),
        (
            "ATP_DEV_TOKEN_PRODUCER",
            token(Permission::Producer, "dev-producer")?,
        ),
        (
            "ATP_DEV_TOKEN_AUDITOR",
            token(Permission::Auditor, "dev-auditor")?,
        ),
        (
            "ATP_DEV_TOKEN_ADMIN",
            token(Permission::Admin, "dev-admin")?,
        ),
        (
            "ATP_DEV_TOKEN_PRIVACY",
            token(Permission::Privacy, "dev-privacy")?,
        ),
        // What a direct producer of the dev source connects with: it may publish only to
        // atp.ingress.<tenant>.<source>.
        (
            "ATP_DEV_NATS_CREDS",
            auth.seed_path(&producer_identity).display().to_string(),
        ),
        // The CLI's own identity (streams, replays, dead letters) and where `atp producer add`
        // registers NATS identities.
        ("ATP_NATS_CREDS", admin_seed.clone()),
        ("ATP_NATS_AUTH_DIR", auth.dir().display().to_string()),
        ("ATP_DEV_PRODUCER_KEY_ID", DEV_PRODUCER_KEY_ID.to_owned()),
        (
            "ATP_DEV_PRODUCER_KEY",
            paths.producer_key().display().to_string(),
        ),
        (
            "ATP_DEV_ISSUER_KEY",
            paths.issuer_key().display().to_string(),
        ),
        ("ATP_NOTE_VERIFIER_KEY", note_verifier_key),
        (
            "ATP_TENANT_KEYS_DIR",
            paths.tenant_keys().display().to_string(),
        ),
        (
            "ATP_CHECKPOINT_KEYS_DIR",
            paths.checkpoint_keys().display().to_string(),
        ),
    ];
    let text: String = env
        .iter()
        .map(|(k, v)| format!("{k}={}\n", shell_quote(v)))
        .collect();
    write_private_file(&paths.env_file(), &text)?;
    eprintln!(
        "\nATP is up at http://{addr}  (NATS {}, PostgreSQL on port {})",
        nats.url(),
        pg.port()
    );
    eprintln!(
        "credentials: {}  — `source` it in another shell; Ctrl-C stops everything.\n",
        paths.env_file().display()
    );

    tokio::select! {
        r = running.wait() => { r?; }
        _ = tokio::signal::ctrl_c() => { eprintln!("stopping…"); }
    }
    running.stop().await;
    let _ = std::fs::remove_file(paths.env_file());
    nats.stop().await;
    pg.stop().await;
    Ok(())
}

fn shell_quote(v: &str) -> String {
    if !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:@=+".contains(&b))
    {
        v.to_owned()
    } else {
        format!("'{}'", v.replace('\'', "'\\''"))
    }
}

fn write_private_file(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}
