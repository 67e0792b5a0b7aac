//! Real servers for the ATP dev stack and integration tests: `nats-server` with JetStream and
//! PostgreSQL, each on free loopback ports, stopped and cleaned up on drop.
//!
//! No Docker, no mocks, no downloads at run time. The nats-server binary comes from
//! `ops/bin/install-nats-server` (pinned, checksum-verified, into `<repo>/.atp/bin`) or from
//! `ATP_NATS_SERVER`; PostgreSQL comes from the system packages (`/usr/lib/postgresql/15/bin`,
//! `ATP_PG_BIN`, or `pg_config --bindir`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), atp_devstack::DevstackError> {
//! use atp_devstack::{NatsOptions, NatsServer, Postgres, PostgresOptions};
//! let nats = NatsServer::start(NatsOptions::default()).await?;
//! let pg = Postgres::start(PostgresOptions::default()).await?;
//! let store_url = pg.create_database("atp_store").await?;
//! println!("{} {}", nats.url(), store_url);
//! # Ok(()) }
//! ```
//!
//! If the owning process dies without running `Drop` (SIGKILL, abort), a small `sh` watchdog
//! per server notices the closed pipe, stops the server and deletes its temp dir.

mod error;
mod kafka;
mod nats;
mod postgres;
mod process;

pub use error::DevstackError;
pub use kafka::{KafkaBroker, tansu_binary};
pub use nats::{MIN_NATS_SERVER_VERSION, NatsCluster, NatsOptions, NatsServer, nats_server_binary};
pub use postgres::{MIN_POSTGRES_MAJOR, Postgres, PostgresOptions, SUPERUSER};
pub use process::free_port;
