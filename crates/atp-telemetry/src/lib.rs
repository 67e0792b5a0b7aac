//! How an ATP process reports on itself, shared by the workers (`atp-runtime`), the gateway and
//! the CLI without either linking the other: [`metrics`] (one set of OTel instruments, rendered
//! for `/metrics`), [`telemetry`] (JSON logs, spans over OTLP, trace context on NATS headers),
//! and the test-only [`failpoint`]s at the places `docs/architecture.md` says a crash matters.

pub mod failpoint;
pub mod metrics;
pub mod telemetry;

/// The message a panic carried (`panic!("…")` gives a `&str` or a `String`), for the log line
/// of whoever caught it.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}
