//! ATP's PostgreSQL adapter: migrations, the records and rejections read models, watermarks and
//! the queries behind the HTTP API.
//!
//! Architecture invariant: PostgreSQL holds read models only. Every row here is derived from a
//! ledger or rejected-stream message and can be rebuilt by `atp replay`.

pub mod exports;
pub mod integrity;
pub mod privacy;
pub mod projection;
pub mod query;

use sqlx::postgres::{PgPool, PgPoolOptions};

pub use sqlx;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A database error that is not the data's fault (see [`DbFailure::Outage`]): retry.
    #[error("database unavailable (SQLSTATE {code}): {0}", code = sqlstate_or_none(.0))]
    Unavailable(#[source] sqlx::Error),
    /// The database refused the data itself (see [`DbFailure::Refusal`]): the same rows will be
    /// refused again.
    #[error("the database refused the data (SQLSTATE {code}): {0}", code = sqlstate_or_none(.0))]
    Refused(#[source] sqlx::Error),
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
    /// Stored data that contradicts itself (a missing tile, a malformed hash, a row that does
    /// not decode).
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    #[error("refusing an unsafe database configuration: {0}")]
    Unsafe(String),
}

/// What a failed database statement says about the rows it wrote: the one place ATP decides
/// between "this row is bad" (dead-letter it, go on) and "the database is unwell" (retry the
/// same batch, with backoff, for as long as it takes).
///
/// The rule is by SQLSTATE class, and it is deliberately narrow. Only class 22 (data
/// exception: a value too long, out of range, not valid for its type) and class 23 (integrity
/// constraint violation: not null, check, foreign key, unique, exclusion) describe the data:
/// sending the same rows again gets the same answer. Everything else — disk full (53100), a
/// read-only standby (25006), deadlock (40P01), serialization (40001), statement timeout or
/// cancel (57014), admin shutdown (57P01), too many connections (53300), a trigger's plain
/// `RAISE` (P0001), a code this version does not know, I/O, TLS, pool timeouts, a closed
/// pool — is an outage: the rows are fine and will go in once the database is. Getting this
/// wrong the other way round is the expensive mistake: a healthy record dead-lettered during
/// a disk-full incident vanishes from queries and exports until someone replays it, whereas
/// a refusal misread as an outage only shows up as lag and a WARN naming the SQLSTATE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbFailure {
    /// The database refused the data: trying the same rows again fails the same way.
    Refusal,
    /// The database (or the way to it) failed: not the rows' fault; retry.
    Outage,
}

impl DbFailure {
    /// The class of a five-character SQLSTATE.
    pub fn of_sqlstate(code: &str) -> Self {
        match code.get(..2) {
            Some("22" | "23") => Self::Refusal,
            _ => Self::Outage,
        }
    }

    /// The class of an error sqlx returned: a refusal only when the server answered with a
    /// class 22 or 23 SQLSTATE.
    pub fn of(e: &sqlx::Error) -> Self {
        match e {
            sqlx::Error::Database(d) => d.code().map_or(Self::Outage, |c| Self::of_sqlstate(&c)),
            _ => Self::Outage,
        }
    }
}

/// The SQLSTATE the server answered with, if it answered.
fn sqlstate_of(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(d) => d.code().map(|c| c.into_owned()),
        _ => None,
    }
}

fn sqlstate_or_none(e: &sqlx::Error) -> String {
    sqlstate_of(e).unwrap_or_else(|| "none".to_owned())
}

impl StoreError {
    /// The database refused the data (SQLSTATE class 22 or 23), as opposed to being unwell or
    /// unreachable: trying the same rows again will fail the same way. See [`DbFailure`].
    pub fn is_refusal(&self) -> bool {
        matches!(self, Self::Refused(_))
    }

    /// What the database said when it refused the data.
    pub fn refusal(&self) -> Option<&str> {
        match self {
            Self::Refused(sqlx::Error::Database(e)) => Some(e.message()),
            _ => None,
        }
    }

    /// The SQLSTATE of a database error, for logs and letters.
    pub fn sqlstate(&self) -> Option<String> {
        match self {
            Self::Unavailable(e) | Self::Refused(e) => sqlstate_of(e),
            _ => None,
        }
    }
}

impl From<sqlx::Error> for StoreError {
    /// Every sqlx error becomes a `StoreError` here, so this is where it is classified.
    fn from(e: sqlx::Error) -> Self {
        // A row that does not decode (a digest of the wrong length) is not the database's
        // outage but stored data that is not what ATP wrote.
        if let sqlx::Error::ColumnDecode { .. } = e {
            return Self::Corrupt(e.to_string());
        }
        match DbFailure::of(&e) {
            DbFailure::Refusal => Self::Refused(e),
            DbFailure::Outage => Self::Unavailable(e),
        }
    }
}

pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect(url)
        .await?)
}

/// The role the gateway reads as: row-level security shows it one tenant's rows, the one its
/// transaction names with [`tenant_tx`], and none outside such a transaction.
pub const GATEWAY_ROLE: &str = "atp_gateway";

tokio::task_local! {
    /// The tenant whose request this task serves, for the gateway's pool.
    static TENANT: String;
}

/// Runs `f` on behalf of `tenant`: every connection the gateway's pool hands out while `f`
/// runs sees that tenant's rows, and only those.
pub async fn as_tenant<F: std::future::Future>(tenant: &str, f: F) -> F::Output {
    TENANT.scope(tenant.to_owned(), f).await
}

/// Points a connection at the current task's tenant; outside [`as_tenant`], at none ('', which
/// matches no row).
async fn bind_tenant(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    let tenant = TENANT.try_with(Clone::clone).unwrap_or_default();
    sqlx::query("SELECT set_config('atp.tenant', $1, false)")
        .bind(tenant)
        .execute(conn)
        .await?;
    Ok(())
}

/// A transaction that sees `tenant`'s rows only, when its role is subject to row-level
/// security (the gateway's). Dropping it rolls back; commit what it writes.
pub async fn tenant_tx(
    pool: &PgPool,
    tenant: &str,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT set_config('atp.tenant', $1, true)")
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// The gateway's pool, on which row-level security confines every statement to one tenant.
///
/// Each connection is pointed at the tenant of the task that takes it from the pool (see
/// [`as_tenant`]) before it runs anything, so no handler can forget to, and a task serving no
/// tenant sees no rows. With a URL of its own (a login role that is a member of
/// [`GATEWAY_ROLE`]) the pool connects as that; otherwise it connects with `url` and takes on
/// [`GATEWAY_ROLE`] on every connection. Either way it refuses a role that could read past
/// row-level security: a superuser, one with BYPASSRLS, or a table owner.
///
/// `statement_timeout` bounds every statement the pool runs: the gateway passes its shortest
/// route budget, so PostgreSQL never works on an answer the route has given up on.
pub async fn connect_gateway(
    url: &str,
    own_url: Option<&str>,
    max_connections: u32,
    statement_timeout: std::time::Duration,
) -> Result<PgPool, StoreError> {
    let take_role = own_url.is_none();
    let set_timeout = format!(
        "SET statement_timeout = {}",
        statement_timeout.as_millis().max(1)
    );
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(std::time::Duration::from_secs(10))
        // Binding the tenant (below) is already a round trip that fails on a dead connection,
        // which the pool then closes and replaces; a ping before it would be a second one.
        .test_before_acquire(false)
        .after_connect(move |conn, _| {
            let set_timeout = set_timeout.clone();
            Box::pin(async move {
                if take_role {
                    sqlx::query("SET ROLE atp_gateway")
                        .execute(&mut *conn)
                        .await?;
                }
                // Milliseconds; a number this process formatted, not input.
                sqlx::query(sqlx::AssertSqlSafe(set_timeout))
                    .execute(&mut *conn)
                    .await?;
                bind_tenant(conn).await
            })
        })
        .before_acquire(|conn, _| {
            Box::pin(async move {
                bind_tenant(conn).await?;
                Ok(true)
            })
        })
        .connect(own_url.unwrap_or(url))
        .await?;
    let bypasses: bool = sqlx::query_scalar(
        "SELECT r.rolsuper OR r.rolbypassrls OR EXISTS ( \
             SELECT 1 FROM pg_tables t WHERE t.schemaname = 'public' AND t.tableowner = current_user) \
         FROM pg_roles r WHERE r.rolname = current_user",
    )
    .fetch_one(&pool)
    .await?;
    if bypasses {
        return Err(StoreError::Unsafe(
            "the gateway's database role can read past row-level security (a superuser, BYPASSRLS, or a table owner)"
                .to_owned(),
        ));
    }
    Ok(pool)
}

/// Creates (or keeps) a login role in [`GATEWAY_ROLE`] without a password, for stacks whose
/// PostgreSQL trusts loopback connections (the dev stack, tests).
pub async fn ensure_gateway_login(pool: &PgPool, name: &str) -> Result<(), StoreError> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
            .bind(name)
            .fetch_one(pool)
            .await?;
    if !exists {
        let ident = name.replace('"', "\"\"");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE ROLE \"{ident}\" LOGIN NOSUPERUSER NOBYPASSRLS IN ROLE {GATEWAY_ROLE}"
        )))
        .execute(pool)
        .await?;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_data_exceptions_and_constraint_violations_are_refusals() {
        for code in [
            "22001", // string data right truncation
            "22003", // numeric value out of range
            "22021", // character not in repertoire (a NUL)
            "22P02", // invalid text representation
            "23502", // not null violation
            "23503", // foreign key violation
            "23505", // unique violation
            "23514", // check violation
        ] {
            assert_eq!(DbFailure::of_sqlstate(code), DbFailure::Refusal, "{code}");
        }
        for code in [
            "53100", // disk full
            "53200", // out of memory
            "53300", // too many connections
            "25006", // read-only SQL transaction (a standby, default_transaction_read_only)
            "40001", // serialization failure
            "40P01", // deadlock detected
            "57014", // query canceled (statement timeout)
            "57P01", // admin shutdown
            "08006", // connection failure
            "42P01", // undefined table (a migration not applied yet)
            "P0001", // a trigger's plain RAISE EXCEPTION
            "XX000", // internal error
            "ZZ999", // a class this version does not know
            "2",     // malformed
            "",
        ] {
            assert_eq!(DbFailure::of_sqlstate(code), DbFailure::Outage, "{code}");
        }
    }

    #[test]
    fn errors_without_an_answer_from_the_server_are_outages() {
        for e in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
            sqlx::Error::Protocol("unexpected message".to_owned()),
        ] {
            assert_eq!(DbFailure::of(&e), DbFailure::Outage, "{e}");
            let e = StoreError::from(e);
            assert!(!e.is_refusal(), "{e}");
            assert!(e.to_string().contains("SQLSTATE none"), "{e}");
        }
    }
}
