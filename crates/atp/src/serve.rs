//! `atp serve`: any subset of roles in one process, all of them by default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use atp_core::role::{Role, Roles};
use atp_gateway::{
    AuthConfig, Bus, BusParts, ExportLimits, ExportsApi, ExportsParts, GatewayState, Waiters,
};
use atp_nats::registry::RegistryCache;
use atp_nats::streams;
use atp_runtime::export::ExportSettings;
use atp_runtime::ingest::{BatchStats, Ingest, IngestConfig};
use atp_runtime::integrity::{CheckpointPolicy, IntegrityStats};
use atp_runtime::shard::Shard;
use atp_runtime::signer::FileKeyStore;
use atp_runtime::{RoleError, Secret};
use ed25519_dalek::SigningKey;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How often the token issuer's JWKS is fetched again, so rotated and withdrawn keys take
/// effect without a restart.
const JWKS_REFRESH: std::time::Duration = std::time::Duration::from_secs(300);
/// The least time between fetches triggered by tokens naming unknown keys.
const JWKS_REFETCH_MIN: std::time::Duration = std::time::Duration::from_secs(30);

/// Everything `serve` needs, validated before anything starts.
pub struct ServeConfig {
    pub nats_url: String,
    pub nats_credentials: NatsCredentials,
    pub database_url: Secret,
    /// The gateway's own login, a member of `atp_gateway` under row-level security. Without
    /// it the gateway connects with `database_url` and takes the `atp_gateway` role on.
    pub gateway_database_url: Option<Secret>,
    pub listen: SocketAddr,
    pub roles: Roles,
    /// This process's share of the partitions, for ingest and the projector (`k/n`).
    pub shard: Shard,
    pub ingest: IngestConfig,
    /// The key-management port holding each tenant's key (ADR 0019), shared by the roles that
    /// seal or open personal values.
    pub tenant_keys: Arc<dyn atp_runtime::keyring::TenantKeys>,
    /// The lifecycle role's settings (data-subject requests, retention).
    pub lifecycle: atp_runtime::lifecycle::LifecycleSettings,
    pub issuer: String,
    pub audience: String,
    /// Trusted token keys: (kid, raw Ed25519 public key).
    pub token_keys: Vec<(String, [u8; 32])>,
    /// The token issuer's JWKS (RS256, ES256, EdDSA keys): an `https://` URL, fetched at start,
    /// every 5 minutes and when a token names an unknown key (at most every 30 s); or a file.
    pub token_jwks: Option<String>,
    /// Per-tenant rates of appends, queries and export requests.
    pub rate_limits: atp_gateway::RateLimits,
    /// The gateway's attestation key. When the gateway and ingest run in one process and none
    /// is given, a fresh one is made for the process's life.
    pub attestation_key: Option<SigningKey>,
    pub integrity: IntegritySettings,
    pub exports: ExportSettings,
    /// The gateway's per-tenant caps on concurrent exports.
    pub export_limits: ExportLimits,
    /// The gateway's caps: connections, requests in flight, body size, verification pool.
    pub gateway_limits: atp_gateway::GatewayLimits,
    /// Where a process without the gateway role serves `/metrics` and `/healthz` (the gateway
    /// serves them on its own listener).
    pub metrics_listen: Option<SocketAddr>,
}

/// What the roles of a `serve` connect to NATS with.
#[derive(Debug, Clone, Default)]
pub enum NatsCredentials {
    /// No credentials: a server without authentication (a bare test server).
    #[default]
    None,
    /// One credentials file for every role of the process.
    One(String),
    /// A directory with one seed file per role (`gateway.nk`, `ingest.nk`, ...): each role
    /// connects on its own, with its own least privilege (`atp nats init-auth`).
    PerRole(PathBuf),
}

/// The integrity role's settings.
#[derive(Debug, Clone)]
pub struct IntegritySettings {
    /// The file key store of checkpoint signing keys (created on first start).
    pub keys_dir: PathBuf,
    /// The note key name of a first key, also the log origin prefix: checkpoints of partition
    /// `T:S` have origin `<name>/T/S`.
    pub log_name: String,
    pub policy: CheckpointPolicy,
}

/// A running `serve`: its roles' tasks and the handle to stop them.
pub struct Running {
    pub gateway_addr: Option<SocketAddr>,
    /// The metrics listener of a process without the gateway role.
    pub metrics_addr: Option<SocketAddr>,
    pub ingest_totals: Option<Arc<std::sync::Mutex<BatchStats>>>,
    pub integrity_stats: Option<Arc<IntegrityStats>>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<(&'static str, Result<(), RoleError>)>,
}

impl Running {
    /// Waits for the first role to stop (it should not unless asked) and reports it.
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        match self.tasks.join_next().await {
            None => Ok(()),
            Some(Ok((name, Ok(())))) => {
                tracing::info!(role = name, "role stopped");
                Ok(())
            }
            Some(Ok((name, Err(e)))) => bail!("role {name} failed: {e}"),
            Some(Err(e)) => bail!("a role panicked: {e}"),
        }
    }

    /// Asks every role to stop at its next batch boundary and waits for them.
    pub async fn stop(mut self) {
        self.shutdown.send_replace(true);
        while let Some(r) = self.tasks.join_next().await {
            if let Ok((name, Err(e))) = r {
                tracing::warn!(role = name, error = %e, "role stopped with an error");
            }
        }
    }
}

/// The JetStream contexts of a process's roles: one shared connection, or one per role when
/// each role has its own identity.
struct Connections {
    shared: Option<async_nats::jetstream::Context>,
    url: String,
    credentials: NatsCredentials,
}

impl Connections {
    async fn open(url: &str, credentials: &NatsCredentials) -> anyhow::Result<Connections> {
        let shared = match credentials {
            NatsCredentials::None => Some(atp_nats::connect(url, "atp-serve", None).await?),
            NatsCredentials::One(path) => {
                Some(atp_nats::connect(url, "atp-serve", Some(path)).await?)
            }
            NatsCredentials::PerRole(_) => None,
        };
        let shared = shared.map(async_nats::jetstream::new);
        if let Some(js) = &shared {
            streams::check(js).await?;
        }
        Ok(Connections {
            shared,
            url: url.to_owned(),
            credentials: credentials.clone(),
        })
    }

    async fn role(&self, role: Role) -> anyhow::Result<async_nats::jetstream::Context> {
        if let Some(js) = &self.shared {
            return Ok(js.clone());
        }
        let NatsCredentials::PerRole(dir) = &self.credentials else {
            bail!("no NATS connection");
        };
        let path = dir.join(format!("{}.nk", role.as_str()));
        let path = path.to_str().context("credentials path is not UTF-8")?;
        let client = atp_nats::connect(&self.url, &format!("atp-{}", role.as_str()), Some(path))
            .await
            .with_context(|| format!("connecting the {} role", role.as_str()))?;
        let js = async_nats::jetstream::new(client);
        streams::check(&js).await?;
        Ok(js)
    }
}

/// Starts the configured roles. Everything that can be wrong with the configuration is found
/// before the first connection ([`Prepared`]); then each role is one function that connects as
/// itself and spawns its task into [`Running`], which joins every task it holds.
pub async fn start(cfg: ServeConfig) -> anyhow::Result<Running> {
    let prepared = Prepared::check(&cfg)?;
    let connections = Connections::open(&cfg.nats_url, &cfg.nats_credentials).await?;
    // Ingest uses the read model too: for duplicates older than its in-memory window.
    let pool = if needs_database(cfg.roles) {
        let pool = atp_store::connect(cfg.database_url.expose(), 16)
            .await
            .context("connecting to PostgreSQL")?;
        atp_store::check_schema(&pool).await?;
        Some(pool)
    } else {
        None
    };
    let (shutdown, _) = watch::channel(false);
    let mut running = Running {
        gateway_addr: None,
        metrics_addr: None,
        ingest_totals: None,
        integrity_stats: None,
        shutdown,
        tasks: JoinSet::new(),
    };
    let started = Started {
        cfg: &cfg,
        connections: &connections,
        pool: pool.as_ref(),
    };
    if cfg.roles.has(Role::Ingest) {
        started.ingest(&mut running, &prepared).await?;
    }
    if cfg.roles.has(Role::Projector) {
        started.projector(&mut running).await?;
    }
    if cfg.roles.has(Role::Lifecycle) {
        started.lifecycle(&mut running).await?;
    }
    if let (true, Some(signer)) = (cfg.roles.has(Role::Integrity), &prepared.signer) {
        started.integrity(&mut running, signer.clone()).await?;
    }
    if let (true, Some(signer)) = (cfg.roles.has(Role::Exporter), &prepared.signer) {
        started.exporter(&mut running, signer.clone()).await?;
    }
    if let Some(gateway) = prepared.gateway {
        started.gateway(&mut running, gateway).await?;
    } else if let Some(addr) = cfg.metrics_listen {
        started.metrics(&mut running, addr).await?;
    }
    Ok(running)
}

/// Whether any of the roles reads or writes PostgreSQL (the exporter opens its own).
fn needs_database(roles: Roles) -> bool {
    [
        Role::Gateway,
        Role::Projector,
        Role::Lifecycle,
        Role::Ingest,
        Role::Integrity,
    ]
    .into_iter()
    .any(|r| roles.has(r))
}

/// What `start` settles from the configuration alone (and the local files it names), before
/// it connects to anything: a misconfigured role fails here, with nothing started.
struct Prepared {
    /// The gateway's attestation key, also trusted by an ingest in the same process.
    attestation: Option<SigningKey>,
    /// One key store for the roles that sign: checkpoints and export manifests.
    signer: Option<Arc<FileKeyStore>>,
    gateway: Option<PreparedGateway>,
}

struct PreparedGateway {
    attestation: SigningKey,
    auth: AuthConfig,
    /// The issuer's JWKS is a URL, fetched at start and again every [`JWKS_REFRESH`].
    fetch_jwks: bool,
}

impl Prepared {
    fn check(cfg: &ServeConfig) -> anyhow::Result<Prepared> {
        atp_telemetry::failpoint::check_env().map_err(anyhow::Error::msg)?;
        let roles = cfg.roles;
        let attestation = match (
            &cfg.attestation_key,
            roles.has(Role::Gateway) && roles.has(Role::Ingest),
        ) {
            (Some(k), _) => Some(k.clone()),
            (None, true) => Some(crate::keys::generate()),
            (None, false) if roles.has(Role::Gateway) => bail!(
                "the gateway needs an attestation key (ATP_GATEWAY_KEY) when ingest runs elsewhere"
            ),
            (None, false) => None,
        };
        let signer = if roles.has(Role::Integrity) || roles.has(Role::Exporter) {
            let s = &cfg.integrity;
            Some(Arc::new(
                FileKeyStore::open_or_init(&s.keys_dir, &s.log_name, chrono::Utc::now())
                    .context("opening the checkpoint key store")?,
            ))
        } else {
            None
        };
        let gateway = match (&attestation, roles.has(Role::Gateway)) {
            (Some(key), true) => {
                let (auth, fetch_jwks) = token_trust(cfg)?;
                Some(PreparedGateway {
                    attestation: key.clone(),
                    auth,
                    fetch_jwks,
                })
            }
            _ => None,
        };
        Ok(Prepared {
            attestation,
            signer,
            gateway,
        })
    }
}

/// The token keys the gateway trusts: configured Ed25519 keys, and the issuer's JWKS from a
/// file (read now) or a URL (fetched once connected; says so in its second value).
fn token_trust(cfg: &ServeConfig) -> anyhow::Result<(AuthConfig, bool)> {
    let mut auth = AuthConfig::new(&cfg.issuer, &cfg.audience);
    for (kid, k) in &cfg.token_keys {
        auth = auth.with_ed25519_key(kid, k);
    }
    match cfg.token_jwks.as_deref() {
        Some(url) if url.starts_with("https://") || url.starts_with("http://") => Ok((
            auth.with_jwks_url(url, JWKS_REFETCH_MIN)
                .context("ATP_TOKEN_JWKS")?,
            true,
        )),
        Some(path) => {
            let doc = std::fs::read_to_string(path)
                .with_context(|| format!("reading the token JWKS {path}"))?;
            let auth = auth
                .with_jwks(&doc)
                .map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
            Ok((auth, false))
        }
        None => Ok((auth, false)),
    }
}

/// The servers a `start` has connected to, from which each role is started.
struct Started<'a> {
    cfg: &'a ServeConfig,
    connections: &'a Connections,
    pool: Option<&'a sqlx::PgPool>,
}

impl Started<'_> {
    fn pool(&self, role: &str) -> anyhow::Result<sqlx::PgPool> {
        self.pool
            .cloned()
            .with_context(|| format!("the {role} role needs PostgreSQL"))
    }

    async fn ingest(&self, running: &mut Running, prepared: &Prepared) -> anyhow::Result<()> {
        let mut cfg = self.cfg.ingest.clone();
        cfg.shard = self.cfg.shard;
        if cfg.dedupe_db.is_none() {
            cfg.dedupe_db = self.pool.cloned();
        }
        if cfg.gateway_key.is_none() {
            cfg.gateway_key = prepared.attestation.as_ref().map(|k| k.verifying_key());
        }
        cfg.tenant_keys = self.cfg.tenant_keys.clone();
        let js = self.connections.role(Role::Ingest).await?;
        let ingest = Ingest::new(js, cfg).await?;
        running.ingest_totals = Some(ingest.totals.clone());
        let sd = running.shutdown.subscribe();
        running
            .tasks
            .spawn(async move { ("ingest", ingest.run(sd).await) });
        Ok(())
    }

    async fn lifecycle(&self, running: &mut Running) -> anyhow::Result<()> {
        let js = self.connections.role(Role::Lifecycle).await?;
        let pool = self.pool("lifecycle")?;
        let (keys, settings) = (self.cfg.tenant_keys.clone(), self.cfg.lifecycle.clone());
        let cold = atp_delivery::cold::ColdStore::open(&js, self.cfg.exports.cold_store.as_deref())
            .await
            .context("opening the cold store")?;
        let sd = running.shutdown.subscribe();
        running.tasks.spawn(async move {
            (
                "lifecycle",
                atp_runtime::lifecycle::run(js, pool, keys, settings, cold, sd).await,
            )
        });
        Ok(())
    }

    async fn projector(&self, running: &mut Running) -> anyhow::Result<()> {
        let js = self.connections.role(Role::Projector).await?;
        let (pool, shard) = (self.pool("projector")?, self.cfg.shard);
        let keys = self.cfg.tenant_keys.clone();
        let sd = running.shutdown.subscribe();
        running.tasks.spawn(async move {
            (
                "projector",
                atp_runtime::projector::run(js, pool, shard, keys, sd).await,
            )
        });
        Ok(())
    }

    async fn integrity(
        &self,
        running: &mut Running,
        signer: Arc<FileKeyStore>,
    ) -> anyhow::Result<()> {
        let pool = self.pool("integrity")?;
        let policy = self.cfg.integrity.policy;
        let stats = Arc::new(IntegrityStats::default());
        running.integrity_stats = Some(stats.clone());
        let js = self.connections.role(Role::Integrity).await?;
        let sd = running.shutdown.subscribe();
        running.tasks.spawn(async move {
            (
                "integrity",
                atp_runtime::integrity::run(js, pool, signer, policy, stats, sd).await,
            )
        });
        Ok(())
    }

    async fn exporter(
        &self,
        running: &mut Running,
        signer: Arc<FileKeyStore>,
    ) -> anyhow::Result<()> {
        let js = self.connections.role(Role::Exporter).await?;
        let (url, settings) = (self.cfg.database_url.clone(), self.cfg.exports.clone());
        let keys = Some(self.cfg.tenant_keys.clone());
        let sd = running.shutdown.subscribe();
        running.tasks.spawn(async move {
            (
                "exporter",
                atp_runtime::export::spawn(js, url, signer, keys, settings, sd).await,
            )
        });
        Ok(())
    }

    async fn gateway(
        &self,
        running: &mut Running,
        prepared: PreparedGateway,
    ) -> anyhow::Result<()> {
        let cfg = self.cfg;
        let js = self.connections.role(Role::Gateway).await?;
        let pool = self.pool("gateway")?;
        let auth = Arc::new(prepared.auth);
        if prepared.fetch_jwks {
            // An issuer that is down at start-up is retried: on the timer, and when a token
            // names a key the gateway does not know yet.
            if let Err(e) = auth.refresh().await {
                tracing::error!(error = %e, "the token issuer's JWKS cannot be fetched yet");
            }
            let (auth, mut sd) = (auth.clone(), running.shutdown.subscribe());
            running.tasks.spawn(async move {
                while atp_runtime::reader::pause(&mut sd, JWKS_REFRESH).await {
                    if let Err(e) = auth.refresh().await {
                        tracing::warn!(error = %e, "refreshing the token issuer's JWKS failed");
                    }
                }
                ("jwks-refresh", Ok(()))
            });
        }
        let producers = js.get_key_value(streams::PRODUCERS_BUCKET).await?;
        let registry = RegistryCache::start(producers.clone()).await?;
        let limits = Arc::new(atp_gateway::Limiter::new(cfg.rate_limits.clone()));
        {
            let (limits, mut sd) = (limits.clone(), running.shutdown.subscribe());
            running.tasks.spawn(async move {
                while atp_runtime::reader::pause(&mut sd, atp_gateway::limits::PRUNE_EVERY).await {
                    limits.prune();
                }
                ("rate-limit-prune", Ok(()))
            });
        }
        let state = GatewayState {
            limits,
            auth,
            bus: Bus::new(BusParts {
                js: js.clone(),
                registry,
                producers,
                signing_keys: atp_nats::signing_keys::bucket(&js).await?,
                attestation_key: Arc::new(prepared.attestation),
                freshness: Default::default(),
                policies: atp_nats::policy::PolicyCache::new(atp_nats::policy::bucket(&js).await?),
            }),
            waiters: Waiters::start(&pool).await?,
            db: atp_store::connect_gateway(
                cfg.database_url.expose(),
                cfg.gateway_database_url.as_ref().map(Secret::expose),
                16,
                atp_gateway::deadline::STATEMENT_TIMEOUT,
            )
            .await
            .context("connecting the gateway to PostgreSQL")?,
            ops_db: pool,
            exports: ExportsApi::new(ExportsParts {
                cold: atp_delivery::cold::ColdStore::open(&js, cfg.exports.cold_store.as_deref())
                    .await?,
                webhooks: atp_nats::exports::webhooks(&js).await?,
                limits: Arc::new(cfg.export_limits.clone()),
                webhook_policy: cfg.exports.webhook.clone(),
                scratch: cfg.exports.spool_dir.clone(),
            }),
            capacity: atp_gateway::Capacity::new(cfg.gateway_limits.clone()),
        };
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .with_context(|| format!("binding {}", cfg.listen))?;
        running.gateway_addr = Some(listener.local_addr()?);
        let mut sd = running.shutdown.subscribe();
        let app = atp_gateway::router(state);
        let limits = cfg.gateway_limits.clone();
        running.tasks.spawn(async move {
            let served = atp_gateway::server::serve(listener, app, &limits, async move {
                let _ = sd.wait_for(|stop| *stop).await;
            })
            .await;
            (
                "gateway",
                served.map_err(|e| RoleError::fatal("serving the gateway", e)),
            )
        });
        Ok(())
    }

    /// `/metrics` and `/healthz` for a process without the gateway (which serves them itself).
    async fn metrics(&self, running: &mut Running, addr: SocketAddr) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr} for metrics"))?;
        running.metrics_addr = Some(listener.local_addr()?);
        let app = axum::Router::new()
            .route(
                "/metrics",
                axum::routing::get(|| async { atp_telemetry::metrics::render() }),
            )
            .route("/healthz", axum::routing::get(|| async { "ok" }));
        let mut sd = running.shutdown.subscribe();
        running.tasks.spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = sd.wait_for(|stop| *stop).await;
                })
                .await;
            (
                "metrics",
                served.map_err(|e| RoleError::fatal("serving /metrics", e)),
            )
        });
        Ok(())
    }
}
