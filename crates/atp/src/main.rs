//! `atp`: serve ATP's roles, run the dev stack, apply streams, migrate, register producers, mint
//! dev tokens, replay read models, publish sample events and run benchmarks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use atp::dev;
use atp::serve::{NatsCredentials, Roles, ServeConfig};
use atp_gateway::Role;
use atp_runtime::Secret;
use atp_runtime::ingest::IngestConfig;
use atp_runtime::shard::Shard;
use clap::{Parser, Subcommand};

/// Ingest allocates and frees many small buffers per event (parsing, canonical bytes, headers);
/// glibc malloc showed as ~20% of ingest CPU in profiles, mimalloc roughly halves that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "atp", version, about = "ATP, the Audit Trail Platform")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct NatsArgs {
    /// NATS server URL.
    #[arg(long, env = "ATP_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// NATS credentials: an nkey seed file (`atp nats init-auth`, `atp producer add`) or a
    /// user JWT `.creds` file.
    #[arg(long, env = "ATP_NATS_CREDS")]
    nats_creds: Option<String>,
}

#[derive(clap::Args, Clone)]
struct DbArgs {
    /// PostgreSQL URL (kept out of logs).
    #[arg(long, env = "ATP_DATABASE_URL", hide_env_values = true)]
    database_url: String,
}

// Parsed once per run: the size of its largest variant (`serve`'s settings) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run roles: gateway, ingest, projector, integrity, exporter (all by default).
    Serve {
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
        /// Without the gateway role, serve /metrics and /healthz here.
        #[arg(long, env = "ATP_METRICS_LISTEN")]
        metrics_listen: Option<SocketAddr>,
    },
    /// The whole stack in the foreground, with generated dev credentials in .atp/dev.env.
    Dev {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
    },
    /// Print the HTTP API's OpenAPI document (as served at /api/v1/openapi.json).
    Openapi,
    /// NATS identities and permissions.
    Nats {
        #[command(subcommand)]
        action: NatsAction,
    },
    /// Streams and KV buckets from streams/.
    Streams {
        #[command(subcommand)]
        action: StreamsAction,
    },
    /// Apply database migrations.
    Migrate {
        #[command(flatten)]
        db: DbArgs,
    },
    /// The producer registry.
    Producer {
        #[command(subcommand)]
        action: ProducerAction,
    },
    /// Dev-issuer tokens.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Rebuild a read model from the ledger into a fresh table and swap it in.
    Replay {
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
    },
    /// Dead letters: messages a role gave up on, and their replay once the cause is fixed.
    Dlq {
        #[command(flatten)]
        nats: NatsArgs,
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Sign and publish sample events straight to NATS, as a producer would.
    Publish {
        #[command(flatten)]
        nats: NatsArgs,
        #[arg(long, env = "ATP_DEV_TENANT")]
        tenant: String,
        #[arg(long, env = "ATP_DEV_SOURCE")]
        source: String,
        #[arg(long, env = "ATP_DEV_SOURCE_URI")]
        source_uri: String,
        #[arg(long, env = "ATP_DEV_PRODUCER_KEY")]
        key: PathBuf,
        #[arg(long, env = "ATP_DEV_PRODUCER_KEY_ID")]
        key_id: String,
        #[arg(long, default_value_t = 1)]
        count: u64,
        #[arg(long, default_value = "alice")]
        actor: String,
        #[arg(long, default_value = "UPDATE")]
        action: String,
        /// Publish without a signature (ATP refuses it: SIGNATURE_MISSING).
        #[arg(long)]
        unsigned: bool,
    },
    /// Checkpoint signing keys.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Verify integrity: a partition's whole chain from the ledger, or one record offline.
    /// Verify offline: `atp verify <bundle.tar> [--key …]`, or a partition's chain, or a record.
    #[command(args_conflicts_with_subcommands = true)]
    Verify {
        #[command(subcommand)]
        what: Option<VerifyWhat>,
        /// An export bundle: manifest signature, file hashes, every record and proof, every
        /// checkpoint signature.
        bundle: Option<PathBuf>,
        /// Keys to trust: a note verifier key, a PEM public key file, or a JWKS file (as
        /// GET /api/v1/integrity/keys answers); repeat for several. Without one, the bundle is
        /// checked against the keys it carries (intact, but not anchored).
        #[arg(long = "key")]
        keys: Vec<String>,
    },
    /// Benchmarks against servers this command starts itself.
    Bench {
        #[command(subcommand)]
        which: atp::bench::Which,
    },
}

#[derive(Subcommand)]
enum DlqAction {
    /// One JSON line per letter, oldest first.
    List {
        #[command(flatten)]
        select: atp::dlq::Select,
    },
    /// A letter and the message it names.
    Show { seq: u64 },
    /// Handle the letters again (idempotent; each replay is recorded beside its letter).
    /// Exits 1 if any still fails.
    Replay {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        select: atp::dlq::Select,
        /// Only these letters (ATP_DLQ sequences); repeatable.
        #[arg(long = "seq")]
        seqs: Vec<u64>,
        /// Check each would succeed; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Where checkpoint signing keys live and what they are called.
#[derive(clap::Args, Clone)]
struct KeyStoreArgs {
    /// The file key store (private keys, mode 0600; created on first start).
    #[arg(
        long,
        env = "ATP_CHECKPOINT_KEYS_DIR",
        default_value = ".atp/keys/checkpoint"
    )]
    keys_dir: PathBuf,
    /// The log's name: note key name and origin prefix (`<name>/<tenant>/<source>`).
    #[arg(long, env = "ATP_LOG_NAME", default_value = dev::LOG_NAME)]
    log_name: String,
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
    fn settings(self) -> atp::serve::IntegritySettings {
        atp::serve::IntegritySettings {
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
            webhook: atp_runtime::export::WebhookPolicy {
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

#[derive(Subcommand)]
enum KeysAction {
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

#[derive(Subcommand)]
enum VerifyWhat {
    /// Re-walk a partition from the ledger: every link, every leaf, every checkpoint signature.
    Chain {
        #[command(flatten)]
        nats: NatsArgs,
        #[command(flatten)]
        at: SourceArgs,
        /// Note verifier keys to trust (default: every key published in ATP_SIGNING_KEYS).
        #[arg(long = "key")]
        keys: Vec<String>,
    },
    /// Check a record, its inclusion proof and its checkpoint with no server.
    Record {
        /// The record: its canonical bytes, or a proof answer that embeds it.
        record: PathBuf,
        /// The proof answer of GET /api/v1/audit/records/{id}/proof (JSON) or its tlog-proof text.
        #[arg(long)]
        proof: PathBuf,
        /// The note verifier key of the log (`<name>+<id>+<key>`); repeat for several.
        #[arg(long = "key", required = true)]
        keys: Vec<String>,
    },
}

#[derive(Subcommand)]
enum NatsAction {
    /// Create an auth directory: nkey users for ATP's roles, admin and the system account, and
    /// `auth.conf` for the server's configuration to include.
    InitAuth {
        #[arg(long, env = "ATP_NATS_AUTH_DIR")]
        dir: PathBuf,
    },
    /// Ask every server to reload its configuration (after editing an included file).
    Reload {
        #[command(flatten)]
        nats: NatsArgs,
        #[arg(long, env = "ATP_NATS_AUTH_DIR")]
        nats_auth_dir: PathBuf,
    },
    /// Set what one tenant's direct producers may use of the NATS servers (enforced by
    /// nats-server on the tenant's account), and apply it by a reload. Unset values keep the
    /// defaults: 64 connections, 256 subscriptions, 1 MiB messages.
    TenantLimits {
        #[command(flatten)]
        nats: NatsArgs,
        #[arg(long, env = "ATP_NATS_AUTH_DIR")]
        nats_auth_dir: PathBuf,
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        max_connections: Option<u32>,
        #[arg(long)]
        max_subscriptions: Option<u32>,
        #[arg(long)]
        max_payload: Option<u32>,
    },
}

#[derive(Subcommand)]
enum StreamsAction {
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

/// Which source of which tenant.
#[derive(clap::Args, Clone)]
struct SourceArgs {
    #[arg(long)]
    tenant: String,
    #[arg(long)]
    source: String,
}

#[derive(Subcommand)]
enum ProducerAction {
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

#[derive(Subcommand)]
enum TokenAction {
    /// Print a dev-issuer token (dev stack only).
    Mint {
        #[arg(long)]
        tenant: String,
        #[arg(long, value_parser = parse_role)]
        role: Role,
        #[arg(long, default_value = "dev-user")]
        subject: String,
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
        /// The tenant's edition: standard or enterprise.
        #[arg(long, default_value = "enterprise", value_parser = parse_edition)]
        edition: atp_core::edition::Edition,
        #[arg(
            long,
            env = "ATP_DEV_ISSUER_KEY",
            default_value = ".atp/dev/issuer.pem"
        )]
        issuer_key: PathBuf,
    },
}

fn parse_edition(s: &str) -> Result<atp_core::edition::Edition, String> {
    atp_core::edition::Edition::parse(s)
        .ok_or_else(|| format!("unknown edition {s:?}: standard or enterprise"))
}

fn parse_role(s: &str) -> Result<Role, String> {
    match s {
        "producer" => Ok(Role::Producer),
        "auditor" => Ok(Role::Auditor),
        "admin" => Ok(Role::Admin),
        other => Err(format!(
            "unknown role {other:?}: producer, auditor or admin"
        )),
    }
}

async fn jetstream(n: &NatsArgs) -> anyhow::Result<async_nats::jetstream::Context> {
    let client = atp_nats::connect(&n.nats_url, "atp-cli", n.nats_creds.as_deref()).await?;
    Ok(async_nats::jetstream::new(client))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = atp_runtime::telemetry::init();
    match Cli::parse().command {
        Command::Serve {
            nats,
            nats_creds_dir,
            gateway_database_url,
            db,
            roles,
            listen,
            shard,
            ingest_tenant_rate,
            token_issuer,
            token_audience,
            token_keys,
            token_jwks,
            rate_limits,
            gateway_key,
            gateway_public_key,
            integrity,
            exports,
            gateway_limits,
            metrics_listen,
        } => {
            let (exports, export_limits) = (*exports).settings()?;
            let gateway_limits = gateway_limits.limits()?;
            let mut keys = Vec::new();
            for entry in token_keys.iter().filter(|e| !e.is_empty()) {
                let (kid, b64) = entry
                    .split_once('=')
                    .context("ATP_TOKEN_KEYS entries are kid=<base64 key>")?;
                keys.push((kid.to_owned(), atp::keys::parse_public(b64)?));
            }
            let mut ingest = IngestConfig {
                tenant_rate: ingest_tenant_rate,
                ..IngestConfig::default()
            };
            if let Some(pk) = gateway_public_key {
                let bytes = atp::keys::parse_public(&pk)?;
                ingest.gateway_key = Some(
                    ed25519_dalek::VerifyingKey::from_bytes(&bytes)
                        .context("bad gateway public key")?,
                );
            }
            let attestation_key = gateway_key
                .map(|p| atp::keys::read_private(&p))
                .transpose()?;
            let mut running = atp::serve::start(ServeConfig {
                nats_url: nats.nats_url,
                nats_credentials: match (nats_creds_dir, nats.nats_creds) {
                    (Some(dir), _) => NatsCredentials::PerRole(dir),
                    (None, Some(file)) => NatsCredentials::One(file),
                    (None, None) => NatsCredentials::None,
                },
                database_url: Secret::new(db.database_url),
                gateway_database_url: gateway_database_url.map(Secret::new),
                listen,
                roles: Roles::parse(&roles)?,
                shard: Shard::parse(&shard).context("--shard is k/n with k < n")?,
                ingest,
                issuer: token_issuer,
                audience: token_audience,
                token_keys: keys,
                token_jwks: token_jwks.filter(|s| !s.trim().is_empty()),
                rate_limits: atp_gateway::RateLimits::default()
                    .with(&rate_limits)
                    .map_err(anyhow::Error::msg)?,
                attestation_key,
                integrity: integrity.settings(),
                exports,
                export_limits,
                gateway_limits,
                metrics_listen,
            })
            .await?;
            if let Some(addr) = running.gateway_addr {
                tracing::info!(%addr, "gateway listening");
            }
            tokio::select! {
                r = running.wait() => r?,
                _ = shutdown_signal() => tracing::info!("shutting down"),
            }
            running.stop().await;
        }
        Command::Dev { listen } => {
            let root = std::env::current_dir()?;
            dev::run(&root, listen).await?;
        }
        Command::Streams {
            action: StreamsAction::Apply { nats, replicas },
        } => {
            let js = jetstream(&nats).await?;
            for (name, applied) in atp_nats::streams::apply(&js, replicas).await? {
                println!("{name}: {applied:?}");
            }
        }
        Command::Streams {
            action: StreamsAction::Check { nats },
        } => {
            atp_nats::streams::check(&jetstream(&nats).await?).await?;
            println!("streams present and not drifted");
        }
        Command::Migrate { db } => {
            let pool = atp_store::connect(&db.database_url, 2).await?;
            atp_store::migrate(&pool).await?;
            println!("migrations applied");
        }
        Command::Producer {
            action:
                ProducerAction::Add {
                    nats,
                    at: SourceArgs { tenant, source },
                    source_uri,
                    key_id,
                    public_key,
                    nats_auth_dir,
                    nats_creds_out,
                },
        } => {
            let js = jetstream(&nats).await?;
            let key = match (key_id.as_deref(), public_key) {
                (Some(id), Some(pk)) => Some((id, atp::keys::parse_public(&pk)?)),
                _ => None,
            };
            let reg = atp::admin::add_producer(&js, &tenant, &source, &source_uri, key).await?;
            println!("{}", serde_json::to_string_pretty(&reg)?);
            let mut details = serde_json::Map::new();
            details.insert("sourceUri".into(), source_uri.into());
            if let Some(id) = &key_id {
                details.insert("keyId".into(), id.clone().into());
            }
            let p = atp::admin::partition(&tenant, &source)?;
            if let Some(dir) = nats_auth_dir {
                let auth = atp_nats::auth::AuthDir::open(&dir)?;
                let (user, seed) = atp::admin::add_nats_producer(
                    &nats.nats_url,
                    &auth,
                    &p,
                    nats_creds_out.as_deref(),
                )
                .await?;
                details.insert("natsUser".into(), user.into());
                eprintln!(
                    "NATS credentials for {tenant}/{source}: {} (applied to the running servers)",
                    seed.display()
                );
            }
            atp::admin::record_producer_action(&js, &p, "PRODUCER_REGISTERED", details).await?;
        }
        Command::Producer {
            action:
                ProducerAction::RevokeNats {
                    nats,
                    at: SourceArgs { tenant, source },
                    nats_auth_dir,
                },
        } => {
            let auth = atp_nats::auth::AuthDir::open(&nats_auth_dir)?;
            let p = atp::admin::partition(&tenant, &source)?;
            let n = auth.remove_producer(&p)?;
            atp::admin::reload_nats(&nats.nats_url, &auth).await?;
            println!("withdrew {n} NATS identities of {p}");
            let mut details = serde_json::Map::new();
            details.insert("identities".into(), n.into());
            let js = jetstream(&nats).await?;
            atp::admin::record_producer_action(
                &js,
                &p,
                "PRODUCER_NATS_IDENTITY_WITHDRAWN",
                details,
            )
            .await?;
        }
        Command::Openapi => {
            println!("{}", serde_json::to_string_pretty(&atp_gateway::openapi())?);
        }
        Command::Nats {
            action: NatsAction::InitAuth { dir },
        } => {
            let auth = atp_nats::auth::AuthDir::init(&dir)?;
            println!(
                "include \"{}\" in the nats-server configuration",
                std::fs::canonicalize(auth.conf_path())?.display()
            );
        }
        Command::Nats {
            action:
                NatsAction::Reload {
                    nats,
                    nats_auth_dir,
                },
        } => {
            let auth = atp_nats::auth::AuthDir::open(&nats_auth_dir)?;
            let servers = atp::admin::reload_nats(&nats.nats_url, &auth).await?;
            println!("reloaded {} servers", servers.len());
        }
        Command::Nats {
            action:
                NatsAction::TenantLimits {
                    nats,
                    nats_auth_dir,
                    tenant,
                    max_connections,
                    max_subscriptions,
                    max_payload,
                },
        } => {
            let tenant = atp_core::TenantId::new(tenant)?;
            let auth = atp_nats::auth::AuthDir::open(&nats_auth_dir)?;
            let mut limits = auth
                .tenant_limits()?
                .get(tenant.as_str())
                .copied()
                .unwrap_or_default();
            limits.max_connections = max_connections.unwrap_or(limits.max_connections);
            limits.max_subscriptions = max_subscriptions.unwrap_or(limits.max_subscriptions);
            limits.max_payload = max_payload.unwrap_or(limits.max_payload);
            auth.set_tenant_limits(&tenant, limits)?;
            let servers = atp::admin::reload_nats(&nats.nats_url, &auth).await?;
            println!(
                "{tenant}: {} connections, {} subscriptions, {} bytes per message; reloaded {} servers",
                limits.max_connections,
                limits.max_subscriptions,
                limits.max_payload,
                servers.len()
            );
        }
        Command::Producer {
            action:
                ProducerAction::Revoke {
                    nats,
                    at: SourceArgs { tenant, source },
                    key_id,
                },
        } => {
            let js = jetstream(&nats).await?;
            atp::admin::revoke_key(&js, &tenant, &source, &key_id).await?;
            println!("revoked {key_id}");
            let mut details = serde_json::Map::new();
            details.insert("keyId".into(), key_id.into());
            let p = atp::admin::partition(&tenant, &source)?;
            atp::admin::record_producer_action(&js, &p, "PRODUCER_KEY_REVOKED", details).await?;
        }
        Command::Token {
            action:
                TokenAction::Mint {
                    tenant,
                    role,
                    subject,
                    ttl_secs,
                    issuer_key,
                    edition,
                },
        } => {
            let t = atp_core::TenantId::new(&tenant)?;
            // The dev issuer mints what the gateway would accept: ATP's own tenant for auditors only.
            atp_gateway::auth::reserved_tenant_roles(&t, &[role]).map_err(anyhow::Error::msg)?;
            let key = atp::keys::read_private(&issuer_key)
                .context("the dev issuer key is made by `atp dev` (ATP_DEV_ISSUER_KEY)")?;
            println!(
                "{}",
                dev::mint_token_in(&key, &tenant, role, &subject, ttl_secs, edition)?
            );
        }
        Command::Replay {
            nats,
            db,
            projection,
            tenant,
            from,
            to,
        } => {
            anyhow::ensure!(
                projection == "records",
                "only the records projection can be replayed so far"
            );
            let js = jetstream(&nats).await?;
            let pool = atp_store::connect(&db.database_url, 4).await?;
            let opts = atp_runtime::replay::ReplayOptions {
                tenant: tenant.map(atp_core::TenantId::new).transpose()?,
                from_seq: from,
                to_seq: to,
            };
            let report = atp_runtime::replay::replay_records(&js, &pool, &opts).await?;
            println!("replayed {} records and swapped them in", report.rows);
            let mut details = serde_json::Map::new();
            details.insert("rows".into(), report.rows.into());
            if let Some(t) = &opts.tenant {
                details.insert("tenantId".into(), t.as_str().into());
            }
            for (k, v) in [("fromSeq", opts.from_seq), ("toSeq", opts.to_seq)] {
                if let Some(v) = v {
                    details.insert(k.into(), v.into());
                }
            }
            atp::admin::record_action(
                &js,
                atp_core::registry::SYSTEM_TENANT,
                "PROJECTION_REPLAYED",
                ("projection", &projection),
                details,
            )
            .await?;
        }
        Command::Dlq { nats, action } => {
            let js = jetstream(&nats).await?;
            match action {
                DlqAction::List { select } => atp::dlq::list(&js, &select).await?,
                DlqAction::Show { seq } => atp::dlq::show(&js, seq).await?,
                DlqAction::Replay {
                    db,
                    select,
                    seqs,
                    dry_run,
                } => {
                    let pool = atp_store::connect(&db.database_url, 2).await?;
                    let handled = atp::dlq::replay(&js, &pool, &select, &seqs, dry_run).await?;
                    anyhow::ensure!(handled, "some letters still cannot be handled");
                }
            }
        }
        Command::Publish {
            nats,
            tenant,
            source,
            source_uri,
            key,
            key_id,
            count,
            actor,
            action,
            unsigned,
        } => {
            let js = jetstream(&nats).await?;
            let key = atp::keys::read_private(&key)?;
            let p = atp_core::PartitionKey::new(
                atp_core::TenantId::new(tenant)?,
                atp_core::SourceId::new(source)?,
            );
            for _ in 0..count {
                let id = ulid::Ulid::generate().to_string();
                let mut ev = atp_core::producer::example_event(
                    &id,
                    &source_uri,
                    chrono::Utc::now(),
                    &actor,
                    &action,
                );
                if !unsigned {
                    atp_core::producer::sign_structured(&mut ev, &key, &key_id)?;
                }
                // No Nats-Msg-Id: ATP recognises repeats by (tenant, source, id) (ADR 0013).
                let mut h = atp_nats::headers::Headers::new();
                h.fixed(
                    atp_nats::headers::CONTENT_TYPE,
                    "application/cloudevents+json",
                );
                let h = h.into_map();
                let ack = js
                    .publish_with_headers(
                        atp_nats::subjects::ingress(&p),
                        h,
                        serde_json::to_vec(&ev)?.into(),
                    )
                    .await?
                    .await?;
                println!("published {id} (ingress seq {})", ack.sequence);
            }
        }
        Command::Keys {
            action: KeysAction::Rotate { store, nats },
        } => {
            let ks = atp_runtime::signer::FileKeyStore::open_or_init(
                &store.keys_dir,
                &store.log_name,
                chrono::Utc::now(),
            )?;
            let key = ks.rotate(&store.log_name, chrono::Utc::now())?;
            let ring = atp_runtime::signer::CheckpointSigner::keyring(&ks).await?;
            // Running integrity workers pick the new key up from the key store themselves;
            // publishing here makes it visible to verifiers at once.
            match jetstream(&nats).await {
                Ok(js) => {
                    let kv = atp_nats::signing_keys::bucket(&js).await?;
                    atp_nats::signing_keys::publish(&kv, &ring.all).await?;
                    let mut details = serde_json::Map::new();
                    details.insert("name".into(), key.name.clone().into());
                    details.insert("notBefore".into(), key.not_before.clone().into());
                    atp::admin::record_action(
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
        Command::Keys {
            action: KeysAction::List { store },
        } => {
            let ks = atp_runtime::signer::FileKeyStore::open_or_init(
                &store.keys_dir,
                &store.log_name,
                chrono::Utc::now(),
            )?;
            let ring = atp_runtime::signer::CheckpointSigner::keyring(&ks).await?;
            println!("{}", serde_json::to_string_pretty(&ring.all)?);
        }
        Command::Verify {
            what: None,
            bundle: Some(bundle),
            keys,
        } => {
            let report = atp::verify::bundle(&bundle, &keys)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            match report.first() {
                None if report.anchored => eprintln!(
                    "OK: {} records and {} checkpoints verified; signed by a trusted key",
                    report.records_verified, report.checkpoints_verified
                ),
                None => eprintln!(
                    "OK (not anchored): {} records and {} checkpoints are intact and consistent, \
                     but no --key was given; compare signing-key.pem with GET /api/v1/integrity/keys",
                    report.records_verified, report.checkpoints_verified
                ),
                Some(f) => {
                    eprintln!("FAILED [{}]: {}", f.code, f.message);
                    std::process::exit(1);
                }
            }
        }
        Command::Verify {
            what: None,
            bundle: None,
            ..
        } => {
            anyhow::bail!("give a bundle (atp verify <bundle.tar>) or a subcommand (chain, record)")
        }
        Command::Verify {
            what:
                Some(VerifyWhat::Chain {
                    nats,
                    at: SourceArgs { tenant, source },
                    keys,
                }),
            ..
        } => {
            let js = jetstream(&nats).await?;
            let p = atp_core::PartitionKey::new(
                atp_core::TenantId::new(tenant)?,
                atp_core::SourceId::new(source)?,
            );
            let report = atp::verify::chain(&js, &p, &keys).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            if !report.ok {
                std::process::exit(1);
            }
        }
        Command::Verify {
            what:
                Some(VerifyWhat::Record {
                    record,
                    proof,
                    keys,
                }),
            ..
        } => {
            let report = atp::verify::record_offline(&record, &proof, &keys)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            if !report.ok {
                std::process::exit(1);
            }
        }
        Command::Bench { which } => atp::bench::run(which).await?,
    }
    Ok(())
}

async fn shutdown_signal() {
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
