//! The `atp` command line: the clap tree and one module per command, each with its arguments
//! and a `run(args)`. `main` only parses and dispatches; the work is in the library's modules
//! (`serve`, `admin`, `verify`, `dlq`, `dev`, `keys`), which the tests call directly.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod dev;
mod dlq;
mod export;
mod keys;
mod migrate;
mod nats;
mod openapi;
mod producer;
mod publish;
mod records;
mod relay;
mod replay;
mod retention;
mod serve;
mod streams;
mod token;
mod verify;

#[derive(Parser)]
#[command(name = "atp", version, about = "ATP, the Audit Trail Platform")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size of its largest variant (`serve`'s settings) costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run roles: gateway, ingest, projector, integrity, exporter, lifecycle (all by default).
    Serve(serve::Args),
    /// The whole stack in the foreground, with generated dev credentials in .atp/dev.env.
    Dev(dev::Args),
    /// Print the HTTP API's OpenAPI document (as served at /api/v1/openapi.json).
    Openapi,
    /// NATS identities and permissions.
    Nats {
        #[command(subcommand)]
        action: nats::Action,
    },
    /// Streams and KV buckets from streams/.
    Streams {
        #[command(subcommand)]
        action: streams::Action,
    },
    /// Apply database migrations.
    Migrate(migrate::Args),
    /// The producer registry.
    Producer {
        #[command(subcommand)]
        action: producer::Action,
    },
    /// Dev-issuer tokens.
    Token {
        #[command(subcommand)]
        action: token::Action,
    },
    /// Rebuild a read model from the ledger into a fresh table and swap it in.
    Replay(replay::Args),
    /// Retention (CONTRACT §8): what the lifecycle role would expire now.
    Retention {
        #[command(subcommand)]
        action: retention::Action,
    },
    /// Dead letters: messages a role gave up on, and their replay once the cause is fixed.
    Dlq(dlq::Args),
    /// Sign and publish sample events straight to NATS, as a producer would.
    Publish(publish::Args),
    /// Relays from a producer's systems to ATP: `atp relay outbox` (a PostgreSQL outbox table),
    /// `atp relay kafka` (trace events on a Kafka topic).
    Relay {
        #[command(subcommand)]
        action: relay::Action,
    },
    /// Checkpoint signing keys.
    Keys {
        #[command(subcommand)]
        action: keys::Action,
    },
    /// Verify offline: `atp verify <bundle.tar> [--key …]`, or a partition's chain from the
    /// ledger, or one record with its proof.
    #[command(args_conflicts_with_subcommands = true)]
    Verify(verify::Args),
    /// Search records and fetch them with their proofs, through the gateway (ATP_URL,
    /// ATP_TOKEN).
    Records {
        #[command(subcommand)]
        action: records::Records,
    },
    /// Submissions ATP refused, through the gateway (ATP_URL, ATP_TOKEN).
    Rejections {
        #[command(subcommand)]
        action: records::Rejections,
    },
    /// Signed export bundles, through the gateway (ATP_URL, ATP_TOKEN).
    Export {
        #[command(subcommand)]
        action: export::Export,
    },
    /// Print a shell completion script, e.g. `atp completions bash > /etc/bash_completion.d/atp`.
    Completions { shell: clap_complete::Shell },
    /// Write man pages (atp.1 and one per command) into a directory.
    Man {
        /// Where to write them (created if missing).
        #[arg(long, default_value = "man")]
        dir: PathBuf,
    },
}

impl Cli {
    /// Runs the command. A command whose check fails (a bundle that does not verify, letters
    /// that still fail, an export that failed) exits 1 after printing its report; a command
    /// that could not run (bad input, a server that does not answer) returns the error, which
    /// `main` prints and exits 2 with, as `diff` and `grep` do.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let done = ExitCode::SUCCESS;
        match self.command {
            Command::Serve(args) => serve::run(args).await.map(|()| done),
            Command::Dev(args) => dev::run(args).await.map(|()| done),
            Command::Openapi => openapi::run().map(|()| done),
            Command::Nats { action } => nats::run(action).await.map(|()| done),
            Command::Streams { action } => streams::run(action).await.map(|()| done),
            Command::Migrate(args) => migrate::run(args).await.map(|()| done),
            Command::Producer { action } => producer::run(action).await.map(|()| done),
            Command::Token { action } => token::run(action).map(|()| done),
            Command::Replay(args) => replay::run(args).await.map(|()| done),
            Command::Retention { action } => retention::run(action).await.map(|()| done),
            Command::Dlq(args) => dlq::run(args).await,
            Command::Publish(args) => publish::run(args).await.map(|()| done),
            Command::Relay { action } => relay::run(action).await.map(|()| done),
            Command::Keys { action } => keys::run(action).await.map(|()| done),
            Command::Verify(args) => verify::run(args).await,
            Command::Records { action } => records::run_records(action).await,
            Command::Rejections { action } => records::run_rejections(action).await,
            Command::Export { action } => export::run(action).await,
            Command::Completions { shell } => {
                let mut cmd = <Cli as clap::CommandFactory>::command();
                clap_complete::generate(shell, &mut cmd, "atp", &mut std::io::stdout());
                Ok(done)
            }
            Command::Man { dir } => {
                std::fs::create_dir_all(&dir)?;
                clap_mangen::generate_to(<Cli as clap::CommandFactory>::command(), &dir)?;
                eprintln!("man pages written to {}", dir.display());
                Ok(done)
            }
        }
    }

    /// Whether the command runs until stopped (a service, whose INFO lines are its story) or
    /// once (whose answer is on stdout, and whose logs are only warnings and errors).
    pub fn is_service(&self) -> bool {
        matches!(
            self.command,
            Command::Serve(_) | Command::Dev(_) | Command::Relay { .. }
        )
    }
}

/// Where the gateway is. The caller's bearer token comes from `ATP_TOKEN` only, never an
/// argument, so that it stays out of shell history and process lists (`atp token mint` makes
/// a dev one).
#[derive(clap::Args, Clone)]
struct ApiArgs {
    /// The gateway's base URL.
    #[arg(long, env = "ATP_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
}

impl ApiArgs {
    fn client(&self) -> anyhow::Result<crate::api::ApiClient> {
        Ok(crate::api::ApiClient::new(&self.url, &bearer_token()?)?)
    }
}

/// The caller's bearer token for the gateway, from `ATP_TOKEN`.
fn bearer_token() -> anyhow::Result<String> {
    std::env::var("ATP_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| anyhow::anyhow!("set ATP_TOKEN to a bearer token for the gateway"))
}

/// Where NATS is and who ATP is there.
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

impl NatsArgs {
    async fn client(&self) -> anyhow::Result<async_nats::Client> {
        Ok(atp_nats::connect(&self.nats_url, "atp-cli", self.nats_creds.as_deref()).await?)
    }

    async fn jetstream(&self) -> anyhow::Result<async_nats::jetstream::Context> {
        Ok(async_nats::jetstream::new(self.client().await?))
    }
}

#[derive(clap::Args, Clone)]
struct DbArgs {
    /// PostgreSQL URL (kept out of logs).
    #[arg(long, env = "ATP_DATABASE_URL", hide_env_values = true)]
    database_url: String,
}

/// Which source of which tenant.
#[derive(clap::Args, Clone)]
struct SourceArgs {
    #[arg(long)]
    tenant: String,
    #[arg(long)]
    source: String,
}

impl SourceArgs {
    fn partition(&self) -> anyhow::Result<atp_core::PartitionKey> {
        crate::admin::partition(&self.tenant, &self.source)
    }
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
    #[arg(long, env = "ATP_LOG_NAME", default_value = crate::dev::LOG_NAME)]
    log_name: String,
}

impl KeyStoreArgs {
    fn open(&self) -> anyhow::Result<atp_runtime::signer::FileKeyStore> {
        Ok(atp_runtime::signer::FileKeyStore::open_or_init(
            &self.keys_dir,
            &self.log_name,
            chrono::Utc::now(),
        )?)
    }
}
