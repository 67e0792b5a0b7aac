//! ATP's PostgreSQL adapter: migrations, the records and rejections read models, watermarks and
//! the queries behind the HTTP API.
//!
//! Architecture invariant: PostgreSQL holds read models only. Every row here is derived from a
//! ledger or rejected-stream message and can be rebuilt by `atp replay`.

pub mod exports;
pub mod integrity;
pub mod projection;
pub mod query;

use sqlx::postgres::{PgPool, PgPoolOptions};

pub use sqlx;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(
        "database schema is behind this binary: run `atp migrate` (applied {applied}, expected {expected})"
    )]
    SchemaBehind { applied: i64, expected: i64 },
    #[error("ledger message {seq} cannot be projected: {reason}")]
    BadRecord { seq: u64, reason: String },
    #[error("invalid cursor")]
    BadCursor,
    /// Stored integrity data that contradicts itself (a missing tile, a malformed hash).
    #[error("integrity data is inconsistent: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// The database refused the statement (a constraint, a type, a trigger), as opposed to
    /// being unreachable: trying the same rows again will fail the same way.
    pub fn is_refusal(&self) -> bool {
        self.refusal().is_some()
    }

    /// What the database said when it refused the statement.
    pub fn refusal(&self) -> Option<&str> {
        match self {
            Self::Unavailable(sqlx::Error::Database(e)) => Some(e.message()),
            _ => None,
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        Self::Unavailable(e)
    }
}

pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect(url)
        .await?)
}

pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// Refuses to serve on a schema older than this binary's migrations.
pub async fn check_schema(pool: &PgPool) -> Result<(), StoreError> {
    let expected = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let applied: Option<i64> =
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await
            .unwrap_or(None);
    let applied = applied.unwrap_or(0);
    if applied < expected {
        return Err(StoreError::SchemaBehind { applied, expected });
    }
    Ok(())
}
