//! Starts a local dev stack (nats-server + PostgreSQL) and keeps it up until Ctrl-C.
//!
//! `cargo run -p atp-devstack --example devstack` prints the URLs and start-up times;
//! pass `--once` to stop right after start-up (used to measure start-up times) and
//! `--throwaway` for a non-durable PostgreSQL (the settings tests use).

use std::time::Instant;

use atp_devstack::{DevstackError, NatsOptions, NatsServer, Postgres, PostgresOptions};

#[tokio::main]
async fn main() -> Result<(), DevstackError> {
    let once = std::env::args().any(|a| a == "--once");
    let durable = !std::env::args().any(|a| a == "--throwaway");

    let t = Instant::now();
    let nats = NatsServer::start(NatsOptions::default()).await?;
    println!(
        "nats     {}  (started in {:?}, pid {:?})",
        nats.url(),
        t.elapsed(),
        nats.pid()
    );

    let t = Instant::now();
    let pg = Postgres::start(PostgresOptions {
        durable,
        ..PostgresOptions::default()
    })
    .await?;
    println!(
        "postgres {}  (started in {:?}, pid {:?})",
        pg.admin_url(),
        t.elapsed(),
        pg.pid()
    );
    println!(
        "logs     {}  {}",
        nats.log_path().display(),
        pg.log_path().display()
    );

    if !once {
        println!("Ctrl-C to stop");
        if let Err(e) = tokio::signal::ctrl_c().await {
            eprintln!("waiting for Ctrl-C failed: {e}");
        }
    }
    Ok(())
}
