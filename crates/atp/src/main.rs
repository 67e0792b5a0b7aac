//! `atp`: serve ATP's roles, run the dev stack, apply streams, migrate, register producers, mint
//! dev tokens, replay read models, publish sample events, verify. The commands are
//! [`atp::cli`]'s modules; this only parses and dispatches.

use std::process::ExitCode;

use clap::Parser as _;

/// Ingest allocates and frees many small buffers per event (parsing, canonical bytes, headers);
/// glibc malloc showed as ~20% of ingest CPU in profiles, mimalloc roughly halves that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exit codes: 0 done (and verified), 1 a check failed (a bundle, chain or record that does
/// not verify; letters that still fail; an export that failed), 2 the command could not run
/// (bad arguments, a file or server it could not reach) — as `diff` and `grep` use them.
const COULD_NOT_RUN: u8 = 2;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = atp::cli::Cli::parse();
    let quiet = if cli.is_service() { "info" } else { "warn" };
    let _telemetry = atp_telemetry::telemetry::init_with_default(quiet);
    match cli.run().await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("atp: {e:#}");
            ExitCode::from(COULD_NOT_RUN)
        }
    }
}
