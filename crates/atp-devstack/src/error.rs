//! The single error type of `atp-devstack`, with messages that say what to do next.

use std::path::PathBuf;

/// Everything that can go wrong while locating, starting or driving a dev-stack server.
///
/// Messages are written for the person running the tests: each one names the
/// file or command involved and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DevstackError {
    /// No usable nats-server binary was found.
    #[error(
        "nats-server not found at {} (nor on PATH): run {install} to install the pinned version, \
         or set ATP_NATS_SERVER to the path of a nats-server >= {required}",
        .path.display()
    )]
    NatsServerNotFound {
        /// The path that was looked at (ATP_NATS_SERVER, or `<repo>/.atp/bin/nats-server`).
        path: PathBuf,
        /// The install script to run.
        install: String,
        /// Minimum supported version.
        required: &'static str,
    },

    /// A nats-server binary was found but is older than the minimum ATP relies on.
    #[error(
        "nats-server at {} is version {found}, but ATP needs >= {required} (older servers, such as \
         Debian's 2.9.x, silently ignore newer stream settings): run {install} to install the pinned \
         version into .atp/bin, or point ATP_NATS_SERVER at a newer binary",
        .path.display()
    )]
    NatsServerTooOld {
        /// The binary that was checked.
        path: PathBuf,
        /// The version it reported.
        found: String,
        /// Minimum supported version.
        required: &'static str,
        /// The install script to run.
        install: String,
    },

    /// A binary's `--version` output could not be obtained or understood.
    #[error("could not determine the version of {} ({detail}): is it a working executable?", .path.display())]
    VersionUnknown {
        /// The binary that was checked.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },

    /// The PostgreSQL server binaries (initdb, postgres, psql) were not found.
    #[error(
        "PostgreSQL server binaries not found ({detail}): install PostgreSQL 15 \
         (Debian/Ubuntu: apt-get install postgresql-15) or set ATP_PG_BIN to the directory \
         that holds initdb, postgres and psql"
    )]
    PostgresNotFound {
        /// Where we looked and what was missing.
        detail: String,
    },

    /// PostgreSQL was found but is older than 15.
    #[error(
        "PostgreSQL in {} is version {found}, but ATP needs >= 15: install postgresql-15 or set \
         ATP_PG_BIN to a newer bin directory",
        .bin_dir.display()
    )]
    PostgresTooOld {
        /// The bin dir that was checked.
        bin_dir: PathBuf,
        /// The version `postgres --version` reported.
        found: String,
    },

    /// Running as root but there is no unprivileged `postgres` user to run PostgreSQL as.
    #[error(
        "running as root, but PostgreSQL refuses to run as root and the unprivileged user \
         `postgres` is not usable ({detail}): create it (useradd --system --user-group postgres) \
         or run the tests as a non-root user"
    )]
    NoPostgresUser {
        /// What failed while looking the user up.
        detail: String,
    },

    /// A database name outside the accepted pattern.
    #[error("invalid database name {name:?}: it must match ^[a-z_][a-z0-9_]{{0,62}}$")]
    InvalidDatabaseName {
        /// The rejected name.
        name: String,
    },

    /// `PostgresOptions::data_dir` points at a non-empty directory that is not a cluster.
    #[error(
        "PostgreSQL data dir {} exists, is not empty and is not a PostgreSQL cluster (no PG_VERSION): \
         choose another PostgresOptions::data_dir or empty it",
        .path.display()
    )]
    DataDirNotEmpty {
        /// The offending directory.
        path: PathBuf,
    },

    /// No Tansu binary (the Kafka-protocol broker of the Kafka relay's tests) was found.
    #[error(
        "tansu not found at {}: run {install} to build the pinned version (once, cached), or set \
         ATP_TANSU to a tansu binary",
        .path.display()
    )]
    KafkaBrokerNotFound {
        /// The path that was looked at.
        path: PathBuf,
        /// The install script to run.
        install: String,
    },

    /// A server process did not become ready.
    #[error("{server} failed to start: {reason}\n--- last lines of {} ---\n{tail}", .log.display())]
    StartFailed {
        /// "nats-server" or "postgres".
        server: &'static str,
        /// Why we gave up (exit status, timeout, ...).
        reason: String,
        /// The server's log file.
        log: PathBuf,
        /// The last lines of that log.
        tail: String,
    },

    /// A helper command (initdb, cp, psql, ...) failed.
    #[error("`{command}` failed ({status}):\n{output}")]
    CommandFailed {
        /// The command line, for copy-pasting.
        command: String,
        /// Exit status, or why it could not be run.
        status: String,
        /// Its stderr and stdout.
        output: String,
    },

    /// A file-system or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl DevstackError {
    /// Wraps an I/O error with a description of what was being attempted.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        DevstackError::Io {
            context: context.into(),
            source,
        }
    }
}
