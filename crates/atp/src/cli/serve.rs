//! `atp serve`: any subset of roles in one process. Every setting is parsed and checked here,
//! before anything connects; [`crate::serve::start`] gets a [`ServeConfig`] that is whole.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use atp_runtime::Secret;
use atp_runtime::ingest::IngestConfig;
use atp_runtime::shard::Shard;

use super::{DbArgs, KeyStoreArgs, NatsArgs};
use crate::dev;
use crate::serve::{IntegritySettings, NatsCredentials, ServeConfig};
use atp_core::role::Roles;

#[derive(clap::Args)]
pub(super) struct Args {
    #[command(flatten)]
    nats: NatsArgs,
    #[command(flatten)]
    db: DbArgs,
    /// A directory of per-role NATS seeds (`atp nats init-auth`): each role connects as
    /// itself, with its own least privilege. Overrides --nats-creds.
    #[arg(long, env = "ATP_NATS_CREDS_DIR")]
    nats_creds_dir: Option<PathBuf>,
    /// The gateway's own PostgreSQL login (a member of `atp_gateway`, under row-level
    /// security). Without it the gateway takes the `atp_gateway` role on over
    /// --database-url.
    #[arg(long, env = "ATP_GATEWAY_DATABASE_URL", hide_env_values = true)]
    gateway_database_url: Option<String>,
    #[arg(long, env = "ATP_ROLES", default_value = "all")]
    roles: String,
    #[arg(long, env = "ATP_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// This process's share of the partitions for ingest and the projector, `k/n`: run n
    /// processes with k = 0..n-1 and each partition has one owner per role.
    #[arg(long, env = "ATP_SHARD", default_value = "0/1")]
    shard: String,
    /// Submissions a second that ingest handles for one tenant (each tenant's lane, ADR
    /// 0017), with a second's worth as burst; past it, the tenant's backlog waits in its own
    /// partitions' budgets. Unset: no limit but the machine's.
    #[arg(long, env = "ATP_INGEST_TENANT_RATE")]
    ingest_tenant_rate: Option<std::num::NonZeroU32>,
    #[arg(long, env = "ATP_TOKEN_ISSUER", default_value = dev::ISSUER)]
    token_issuer: String,
    #[arg(long, env = "ATP_TOKEN_AUDIENCE", default_value = dev::AUDIENCE)]
    token_audience: String,
    /// Trusted token keys, `kid=<base64 Ed25519 public key>`, comma-separated.
    #[arg(long, env = "ATP_TOKEN_KEYS", value_delimiter = ',')]
    token_keys: Vec<String>,
    /// The token issuer's JWKS (RS256, ES256, EdDSA): an https:// URL (fetched at start,
    /// every 5 minutes, and for unknown key ids at most every 30 s) or a file.
    #[arg(long, env = "ATP_TOKEN_JWKS")]
    token_jwks: Option<String>,
    /// Per-tenant rates, per second: `class=n` sets the default of a class (append 1000,
    /// query 100, export 5), `tenant:class=n` one tenant's; comma-separated.
    #[arg(long = "rate-limit", env = "ATP_RATE_LIMITS", value_delimiter = ',')]
    rate_limits: Vec<String>,
    /// The gateway's attestation private key (PKCS#8 PEM).
    #[arg(long, env = "ATP_GATEWAY_KEY")]
    gateway_key: Option<PathBuf>,
    /// The gateway's attestation public key (base64), for ingest workers in other processes.
    #[arg(long, env = "ATP_GATEWAY_PUBLIC_KEY")]
    gateway_public_key: Option<String>,
    #[command(flatten)]
    integrity: Box<IntegrityArgs>,
    #[command(flatten)]
    exports: Box<ExportArgs>,
    #[command(flatten)]
    gateway_limits: Box<GatewayLimitArgs>,
    /// Where the file adapter keeps each tenant's key (ADR 0019): 0600 files created on first
    /// use. Back it up with the ledger and never commit it; losing it makes every sealed
    /// value unreadable.
    #[arg(long, env = "ATP_TENANT_KEYS_DIR", default_value = atp_runtime::ingest::DEFAULT_TENANT_KEYS_DIR)]
    tenant_keys_dir: PathBuf,
    /// How long an erasure waits before scrubbing the read model a second time (ms): at least
    /// how long any process may keep a destroyed subject key cached (60 s).
    #[arg(long, env = "ATP_ERASURE_RESCRUB_MS", default_value_t = 60_000)]
    erasure_rescrub_ms: u64,
    /// How often the lifecycle role looks for subject keys past their retention (ms).
    #[arg(long, env = "ATP_RETENTION_EVERY_MS", default_value_t = 60_000)]
    retention_every_ms: u64,
    /// Without the gateway role, serve /metrics and /healthz here.
    #[arg(long, env = "ATP_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
}

pub(super) async fn run(args: Args) -> anyhow::Result<()> {
    let mut running = crate::serve::start(args.config()?).await?;
    if let Some(addr) = running.gateway_addr {
        tracing::info!(%addr, "gateway listening");
    }
    tokio::select! {
        r = running.wait() => r?,
        _ = shutdown_signal() => tracing::info!("shutting down"),
    }
    running.stop().await;
    Ok(())
}

impl Args {
    /// Every setting, parsed and checked; reads the key files named, touches no server.
    fn config(self) -> anyhow::Result<ServeConfig> {
        let (exports, export_limits) = (*self.exports).settings()?;
        let mut token_keys = Vec::new();
        for entry in self.token_keys.iter().filter(|e| !e.is_empty()) {
            let (kid, b64) = entry
                .split_once('=')
                .context("ATP_TOKEN_KEYS entries are kid=<base64 key>")?;
            token_keys.push((kid.to_owned(), crate::keys::parse_public(b64)?));
        }
        let gateway_key = self
            .gateway_public_key
            .map(|pk| -> anyhow::Result<_> {
                let bytes = crate::keys::parse_public(&pk)?;
                ed25519_dalek::VerifyingKey::from_bytes(&bytes).context("bad gateway public key")
            })
            .transpose()?;
        Ok(ServeConfig {
            nats_url: self.nats.nats_url,
            nats_credentials: match (self.nats_creds_dir, self.nats.nats_creds) {
                (Some(dir), _) => NatsCredentials::PerRole(dir),
                (None, Some(file)) => NatsCredentials::One(file),
                (None, None) => NatsCredentials::None,
            },
            database_url: Secret::new(self.db.database_url),
            gateway_database_url: self.gateway_database_url.map(Secret::new),
            listen: self.listen,
            roles: Roles::parse(&self.roles)?,
            shard: Shard::parse(&self.shard).context("--shard is k/n with k < n")?,
            ingest: IngestConfig {
                tenant_rate: self.ingest_tenant_rate,
                gateway_key,
                ..IngestConfig::default()
            },
            tenant_keys: std::sync::Arc::new(atp_runtime::keyring::FileTenantKeys::new(
                &self.tenant_keys_dir,
            )),
            lifecycle: atp_runtime::lifecycle::LifecycleSettings {
                key_cache_ttl: Duration::from_millis(self.erasure_rescrub_ms),
                retention_every: Duration::from_millis(self.retention_every_ms.max(1)),
                ..Default::default()
            },
            issuer: self.token_issuer,
            audience: self.token_audience,
            token_keys,
            token_jwks: self.token_jwks.filter(|s| !s.trim().is_empty()),
            rate_limits: atp_gateway::RateLimits::default()
                .with(&self.rate_limits)
                .map_err(anyhow::Error::msg)?,
            attestation_key: self
                .gateway_key
                .map(|p| crate::keys::read_private(&p))
                .transpose()?,
            integrity: self.integrity.settings(),
            exports,
            export_limits,
            gateway_limits: self.gateway_limits.limits()?,
            metrics_listen: self.metrics_listen,
        })
    }
}

#[derive(clap::Args, Clone)]
struct IntegrityArgs {
    #[command(flatten)]
    store: KeyStoreArgs,
    /// Issue a partition's checkpoint once this many records wait for one...
    #[arg(long, env = "ATP_CHECKPOINT_EVERY_RECORDS", default_value_t = 1000)]
    checkpoint_every_records: u64,
    /// ...or once the oldest waiting record is this old (milliseconds).
    #[arg(long, env = "ATP_CHECKPOINT_EVERY_MS", default_value_t = 1000)]
    checkpoint_every_ms: u64,
}

impl IntegrityArgs {
    fn settings(self) -> IntegritySettings {
        IntegritySettings {
            keys_dir: self.store.keys_dir,
            log_name: self.store.log_name,
            policy: atp_runtime::integrity::CheckpointPolicy {
                every_records: self.checkpoint_every_records.max(1),
                every: Duration::from_millis(self.checkpoint_every_ms.max(1)),
            },
        }
    }
}

#[derive(clap::Args, Clone)]
struct ExportArgs {
    /// Where the exporter assembles bundles before storing them.
    #[arg(long, env = "ATP_EXPORT_SPOOL", default_value = ".atp/exports")]
    export_spool: PathBuf,
    /// Where bundles are kept: `nats` (JetStream Object Store), `s3://bucket/prefix` (settings
    /// from the AWS_* environment) or `file:///dir`.
    #[arg(long, env = "ATP_COLD_STORE", default_value = "nats")]
    cold_store: String,
    /// Exports one exporter packages at once.
    #[arg(long, env = "ATP_EXPORT_CONCURRENCY", default_value_t = 1)]
    export_concurrency: usize,
    /// Records per second one export may package; 0 for no limit.
    #[arg(long, env = "ATP_EXPORT_MAX_RATE", default_value_t = 0)]
    export_max_rate: u32,
    /// Seconds an exporter may go silent before its export is given to another.
    #[arg(long, env = "ATP_EXPORT_ACK_WAIT_SECS", default_value_t = 30)]
    export_ack_wait_secs: u64,
    /// Exports a tenant may have queued or running at once.
    #[arg(long, env = "ATP_EXPORT_TENANT_LIMIT", default_value_t = 2)]
    export_tenant_limit: i64,
    /// Per-tenant overrides of that limit: `tenant=n`, comma-separated.
    #[arg(long, env = "ATP_EXPORT_TENANT_LIMITS", value_delimiter = ',')]
    export_tenant_limits: Vec<String>,
    /// Let webhooks target http:// and private or loopback addresses (development only).
    #[arg(long, env = "ATP_WEBHOOK_ALLOW_PRIVATE")]
    webhook_allow_private: bool,
}

/// The gateway's caps (defaults and their derivations: `atp_gateway::GatewayLimits`).
#[derive(clap::Args, Clone)]
struct GatewayLimitArgs {
    /// Connections served at once; more wait in the listen backlog. Keep it below the open-file
    /// limit (`ulimit -n`) less ~40.
    #[arg(long, env = "ATP_GATEWAY_MAX_CONNECTIONS", default_value_t = atp_gateway::GatewayLimits::default().max_connections)]
    gateway_max_connections: usize,
    /// Requests in flight at once; past it, 503 UNAVAILABLE with Retry-After.
    #[arg(long, env = "ATP_GATEWAY_MAX_IN_FLIGHT", default_value_t = atp_gateway::GatewayLimits::default().max_in_flight)]
    gateway_max_in_flight: usize,
    /// Seconds a client has to send a request head, and the idle timeout of kept-alive
    /// connections.
    #[arg(long, env = "ATP_GATEWAY_HEADER_TIMEOUT_SECS", default_value_t = atp_gateway::GatewayLimits::default().header_read_timeout.as_secs())]
    gateway_header_timeout_secs: u64,
    /// Largest request body, in bytes.
    #[arg(long, env = "ATP_GATEWAY_MAX_BODY", default_value_t = atp_gateway::MAX_BODY)]
    gateway_max_body: usize,
    /// Range and bundle verifications running at once, gateway-wide.
    #[arg(long, env = "ATP_VERIFY_CONCURRENCY", default_value_t = atp_gateway::GatewayLimits::default().verify_concurrency)]
    verify_concurrency: usize,
    /// Verifications one tenant may run at once.
    #[arg(long, env = "ATP_VERIFY_TENANT_LIMIT", default_value_t = atp_gateway::GatewayLimits::default().verify_per_tenant)]
    verify_tenant_limit: usize,
}

impl GatewayLimitArgs {
    fn limits(&self) -> anyhow::Result<atp_gateway::GatewayLimits> {
        let positive = [
            ("ATP_GATEWAY_MAX_CONNECTIONS", self.gateway_max_connections),
            ("ATP_GATEWAY_MAX_IN_FLIGHT", self.gateway_max_in_flight),
            ("ATP_GATEWAY_MAX_BODY", self.gateway_max_body),
            ("ATP_VERIFY_CONCURRENCY", self.verify_concurrency),
            ("ATP_VERIFY_TENANT_LIMIT", self.verify_tenant_limit),
        ];
        for (name, v) in positive {
            anyhow::ensure!(v > 0, "{name} must be at least 1");
        }
        anyhow::ensure!(
            self.gateway_header_timeout_secs > 0,
            "ATP_GATEWAY_HEADER_TIMEOUT_SECS must be at least 1"
        );
        Ok(atp_gateway::GatewayLimits {
            max_connections: self.gateway_max_connections,
            max_in_flight: self.gateway_max_in_flight,
            header_read_timeout: Duration::from_secs(self.gateway_header_timeout_secs),
            max_body: self.gateway_max_body,
            verify_concurrency: self.verify_concurrency,
            verify_per_tenant: self.verify_tenant_limit,
        })
    }
}

impl ExportArgs {
    fn settings(
        self,
    ) -> anyhow::Result<(
        atp_runtime::export::ExportSettings,
        atp_gateway::ExportLimits,
    )> {
        let mut per_tenant = std::collections::HashMap::new();
        for entry in self.export_tenant_limits.iter().filter(|e| !e.is_empty()) {
            let (t, n) = entry
                .split_once('=')
                .context("ATP_EXPORT_TENANT_LIMITS entries are tenant=n")?;
            per_tenant.insert(
                t.to_owned(),
                n.parse().context("a tenant limit is a number")?,
            );
        }
        let settings = atp_runtime::export::ExportSettings {
            spool_dir: self.export_spool,
            cold_store: Some(self.cold_store),
            concurrency: self.export_concurrency.max(1),
            ack_wait: Duration::from_secs(self.export_ack_wait_secs.max(3)),
            max_records_per_second: (self.export_max_rate > 0).then_some(self.export_max_rate),
            webhook: atp_delivery::webhook::WebhookPolicy {
                allow_private: self.webhook_allow_private,
                ..Default::default()
            },
            ..Default::default()
        };
        let limits = atp_gateway::ExportLimits {
            concurrent: self.export_tenant_limit,
            per_tenant,
        };
        Ok((settings, limits))
    }
}

pub(super) async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
