//! ATP's process skeleton and its worker roles.
//!
//! One skeleton ([`reader`]) reads a stream in order from a position the role derives from its
//! own durable output, hands batches to the role, and retries a batch until its effect is
//! durable. Roles ([`ingest`], [`projector`]) are their batch handlers; [`replay`] reuses the
//! projector's row building to rebuild read models.

pub mod clearance;
pub mod dead_letter;
pub mod export;
pub mod ingest;
pub mod integrity;
pub mod keyring;
pub mod lifecycle;
pub mod projector;
pub mod reader;
pub mod replay;
pub mod secret;
pub mod shard;
pub mod signer;

use std::borrow::Cow;

pub use reader::Shutdown;
pub use secret::Secret;
// The roles report through the telemetry crate, which the gateway shares without linking them.
use atp_telemetry::{metrics, panic_message, telemetry};

/// A role's failure: how the skeleton treats it ([`Handling`]), what the role was doing, and
/// the error underneath, kept as the [`std::error::Error::source`] (and, as async-nats does,
/// named in the message too, since log lines print the message alone).
///
/// Built in one line at the failing call: `.map_err(|e| RoleError::retry("reading the hint",
/// e))`, or `.or_retry("reading the hint")` through [`Classify`]; [`RoleError::new`] for a
/// failure with nothing underneath (a consumer that ended, a lane that stopped).
#[derive(Debug)]
pub struct RoleError {
    handling: Handling,
    what: Cow<'static, str>,
    source: Option<BoxError>,
}

/// Any error a role fails on, kept whole as a [`RoleError`]'s source.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What the skeleton does about a failed batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handling {
    /// Transient (NATS or PostgreSQL hiccup, an append conflict): retry the same batch.
    Retry,
    /// Work the reader has already moved past turned out not to be durable (a pipelined commit
    /// failed): restart the role from the position derived from its durable output.
    Restart,
    /// The role cannot go on (misconfiguration, lost stream): stop and report.
    Fatal,
}

impl Handling {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Retry => "retry",
            Self::Restart => "restart",
            Self::Fatal => "fatal",
        }
    }
}

impl std::fmt::Display for Handling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl RoleError {
    /// A failure with nothing underneath it: `what` says it all.
    pub fn new(handling: Handling, what: impl Into<Cow<'static, str>>) -> Self {
        Self {
            handling,
            what: what.into(),
            source: None,
        }
    }

    /// `source` made the role fail while doing `what`.
    pub fn caused(
        handling: Handling,
        what: impl Into<Cow<'static, str>>,
        source: impl Into<BoxError>,
    ) -> Self {
        Self {
            handling,
            what: what.into(),
            source: Some(source.into()),
        }
    }

    /// [`Handling::Retry`]: `source` failed while doing `what`; the same batch again.
    pub fn retry(what: impl Into<Cow<'static, str>>, source: impl Into<BoxError>) -> Self {
        Self::caused(Handling::Retry, what, source)
    }

    /// [`Handling::Restart`]: `source` failed while doing `what`; the role restarts from its
    /// durable position.
    pub fn restart(what: impl Into<Cow<'static, str>>, source: impl Into<BoxError>) -> Self {
        Self::caused(Handling::Restart, what, source)
    }

    /// [`Handling::Fatal`]: `source` failed while doing `what`; the role stops.
    pub fn fatal(what: impl Into<Cow<'static, str>>, source: impl Into<BoxError>) -> Self {
        Self::caused(Handling::Fatal, what, source)
    }

    pub fn handling(&self) -> Handling {
        self.handling
    }

    /// What the role was doing.
    pub fn what(&self) -> &str {
        &self.what
    }
}

impl std::fmt::Display for RoleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.handling, self.what)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RoleError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Classifies a failed call where it fails: `stream.info().await.or_retry("reading the
/// stream")?`. For a `what` that has to be formatted, `map_err` with [`RoleError::retry`] and
/// friends formats it only when the call fails.
pub trait Classify<T> {
    fn or_retry(self, what: &'static str) -> Result<T, RoleError>;
    fn or_restart(self, what: &'static str) -> Result<T, RoleError>;
    fn or_fatal(self, what: &'static str) -> Result<T, RoleError>;
}

impl<T, E: Into<BoxError>> Classify<T> for Result<T, E> {
    fn or_retry(self, what: &'static str) -> Result<T, RoleError> {
        self.map_err(|e| RoleError::retry(what, e))
    }

    fn or_restart(self, what: &'static str) -> Result<T, RoleError> {
        self.map_err(|e| RoleError::restart(what, e))
    }

    fn or_fatal(self, what: &'static str) -> Result<T, RoleError> {
        self.map_err(|e| RoleError::fatal(what, e))
    }
}

/// Converts a JetStream timestamp to chrono.
pub(crate) fn to_chrono(t: time::OffsetDateTime) -> chrono::DateTime<chrono::Utc> {
    let nanos = t.unix_timestamp_nanos();
    chrono::DateTime::from_timestamp_nanos(i64::try_from(nanos).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn a_role_error_names_what_failed_and_keeps_the_error_underneath() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e: Result<(), _> = Err(io);
        let e = e.or_retry("reading the ingest resume hint").unwrap_err();
        assert_eq!(e.handling(), Handling::Retry);
        assert_eq!(e.what(), "reading the ingest resume hint");
        assert_eq!(
            e.to_string(),
            "retry: reading the ingest resume hint: refused"
        );
        let source = e.source().unwrap();
        let io = source.downcast_ref::<std::io::Error>().unwrap();
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);

        let e = RoleError::fatal(
            format!("ledger tail of {} at {}", "acme.crm", 7),
            "bad json",
        );
        assert_eq!(e.handling(), Handling::Fatal);
        assert_eq!(
            e.to_string(),
            "fatal: ledger tail of acme.crm at 7: bad json"
        );
    }

    #[test]
    fn a_role_error_with_nothing_underneath_is_its_context_alone() {
        let e = RoleError::new(Handling::Restart, "NATS reconnected");
        assert_eq!(e.to_string(), "restart: NATS reconnected");
        assert!(e.source().is_none());
    }
}
