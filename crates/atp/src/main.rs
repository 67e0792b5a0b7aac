//! `atp`: serve ATP's roles, run the dev stack, apply streams, migrate, register producers, mint
//! dev tokens, replay read models, publish sample events, verify. The commands are
//! [`atp::cli`]'s modules; this only parses and dispatches.

use std::process::ExitCode;

use clap::Parser as _;

/// Ingest allocates and frees many small buffers per event (parsing, canonical bytes, headers);
/// glibc malloc showed as ~20% of ingest CPU in profiles, mimalloc roughly halves that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let _telemetry = atp_telemetry::telemetry::init();
    atp::cli::Cli::parse().run().await
}
