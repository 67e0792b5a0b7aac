//! Logs and traces.
//!
//! **Logs** are one JSON object per line on stderr. Span and event fields are flattened into it,
//! with the three names an operator joins on spelled the same everywhere: `traceId`, `tenantId`
//! and `eventId` (written `trace.id`, `tenant.id`, `event.id` at the call sites, the names the
//! spans carry to OpenTelemetry). Fields whose names say they hold a secret or personal data are
//! replaced by `"[redacted]"` whatever the call site passed.
//!
//! **Traces** are OpenTelemetry spans made from `tracing` spans. They are off unless an OTLP
//! endpoint is configured (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
//! OTLP/HTTP protobuf). Per-record spans (`ingest.record`, `project.record`) cost a few
//! microseconds each, so they are only made when traces are on ([`spans_on`]); their parent is
//! the W3C `traceparent` the message carries, and what a role writes next carries the span's own
//! context, so one trace follows a record from the gateway to the read model.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

use atp_core::trace::TraceParent;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::{Map, Value};
use tracing::{Event, Span, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

static SPANS_ON: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported, so per-record spans are worth making.
pub fn spans_on() -> bool {
    SPANS_ON.load(Ordering::Relaxed)
}

/// The crates whose spans become OpenTelemetry spans (libraries' own spans stay out).
const TRACED: [&str; 5] = [
    "atp",
    "atp_runtime",
    "atp_gateway",
    "atp_store",
    "atp_telemetry",
];

/// The OpenTelemetry layer over `provider`, for ATP's own spans at INFO and above. Installing
/// it turns per-record spans on.
pub fn otel_layer<S>(provider: &SdkTracerProvider) -> impl Layer<S> + use<S>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    SPANS_ON.store(true, Ordering::Relaxed);
    let targets = TRACED
        .iter()
        .fold(Targets::new(), |t, c| t.with_target(*c, LevelFilter::INFO));
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("atp"))
        .with_filter(targets)
}

/// Flushes and stops span export when dropped (end of `main`).
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Installs the process's subscriber: JSON logs filtered by `$ATP_LOG` (default `info`), and
/// OTLP span export when an endpoint is configured.
pub fn init() -> Telemetry {
    init_with_default("info")
}

/// As [`init`], logging at `level` (an `EnvFilter` directive) unless `ATP_LOG` says otherwise:
/// one-shot commands log warnings and errors only, their answer being on stdout.
pub fn init_with_default(level: &str) -> Telemetry {
    let filter = EnvFilter::try_from_env("ATP_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let logs = tracing_subscriber::fmt::layer()
        .fmt_fields(JsonFields::new())
        .event_format(JsonLine)
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let configured = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()));
    let (provider, failed) = if configured {
        match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
        {
            Ok(exporter) => {
                let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "atp".into());
                let provider = SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(
                        opentelemetry_sdk::Resource::builder()
                            .with_service_name(service)
                            .build(),
                    )
                    .build();
                (Some(provider), None)
            }
            Err(e) => (None, Some(e.to_string())),
        }
    } else {
        (None, None)
    };
    let otel = provider.as_ref().map(otel_layer);
    tracing_subscriber::registry().with(logs).with(otel).init();
    if let Some(e) = failed {
        tracing::warn!(error = %e, "OTLP span export is configured but cannot start; traces are off");
    }
    Telemetry { provider }
}

/// A consumer span for handling one NATS message: `name`, the `messaging.*` attributes of the
/// semantic conventions for the message's subject, and the extra fields given. Joined to the
/// message's trace with [`follow`] and [`message_context`].
#[macro_export]
macro_rules! consumer_span {
    ($name:literal, $subject:expr $(, $($fields:tt)+)?) => {
        tracing::info_span!(
            $name,
            otel.kind = "consumer",
            messaging.system = "nats",
            messaging.operation.type = "process",
            messaging.destination.name = %$subject
            $(, $($fields)+)?
        )
    };
}
pub use crate::consumer_span;

/// Makes `span` a child of the trace context `headers` carry, if any.
pub fn follow_message(span: &Span, headers: Option<&async_nats::HeaderMap>) {
    if let (Some(parent), state) = message_context(headers) {
        follow(span, &parent, state);
    }
}

/// The valid W3C trace context a NATS message carries: its `traceparent`, and its `tracestate`
/// when that is of a sane size.
pub fn message_context(
    headers: Option<&async_nats::HeaderMap>,
) -> (Option<TraceParent>, Option<&str>) {
    let get = |name: &str| headers.and_then(|h| h.get(name)).map(|v| v.as_str());
    (
        get(atp_nats::headers::TRACEPARENT).and_then(TraceParent::parse),
        get(atp_nats::headers::TRACESTATE).filter(|v| v.len() <= 512),
    )
}

/// Makes `span` a child of the W3C trace context a message or request carried.
pub fn follow(span: &Span, parent: &TraceParent, state: Option<&str>) {
    if !spans_on() {
        return;
    }
    let state = state
        .and_then(|s| s.parse::<TraceState>().ok())
        .unwrap_or_default();
    let cx = SpanContext::new(
        TraceId::from_bytes(parent.trace_id),
        SpanId::from_bytes(parent.parent_id),
        TraceFlags::new(parent.flags),
        true,
        state,
    );
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(cx));
}

/// `span`'s own context as a `traceparent` for what is sent on its behalf, when traces are on.
pub fn traceparent_of(span: &Span) -> Option<TraceParent> {
    if !spans_on() {
        return None;
    }
    let cx = span.context();
    let otel = cx.span();
    let sc = otel.span_context();
    sc.is_valid().then(|| TraceParent {
        trace_id: sc.trace_id().to_bytes(),
        parent_id: sc.span_id().to_bytes(),
        flags: sc.trace_flags().to_u8(),
    })
}

/// Field names that never reach a log line with their value: credentials, and the fields a
/// record's personal data travels in.
const REDACTED: [&str; 9] = [
    "authorization",
    "token",
    "secret",
    "password",
    "key",
    "credentials",
    "data",
    "subject_data",
    "body",
];

fn redacted(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    REDACTED
        .iter()
        .any(|r| last.eq_ignore_ascii_case(r) || last.ends_with(&format!("_{r}")))
}

/// The JSON log name of a field: the join keys in camelCase, the rest as written.
fn log_name(name: &str) -> &str {
    match name {
        "trace.id" | "trace_id" => "traceId",
        "tenant.id" | "tenant" => "tenantId",
        "event.id" | "event_id" => "eventId",
        other => other,
    }
}

fn put(obj: &mut Map<String, Value>, name: &str, value: Value) {
    if name.starts_with("otel.") {
        return;
    }
    let value = if redacted(name) {
        Value::String("[redacted]".into())
    } else {
        value
    };
    obj.insert(log_name(name).to_owned(), value);
}

/// One JSON object per event: time, level, target, the enclosing spans' fields (outermost
/// first, so the innermost wins), the event's fields, and the innermost span's name.
struct JsonLine;

impl<S, N> FormatEvent<S, N> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut obj = Map::new();
        obj.insert(
            "timestamp".into(),
            Value::String(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        );
        obj.insert(
            "level".into(),
            Value::String(event.metadata().level().to_string()),
        );
        obj.insert(
            "target".into(),
            Value::String(event.metadata().target().to_owned()),
        );
        if let Some(scope) = ctx.event_scope() {
            let mut innermost = None;
            for span in scope.from_root() {
                let ext = span.extensions();
                if let Some(fields) = ext.get::<FormattedFields<N>>()
                    && let Ok(Value::Object(map)) = serde_json::from_str::<Value>(fields)
                {
                    for (k, v) in map {
                        put(&mut obj, &k, v);
                    }
                }
                innermost = Some(span.name());
            }
            if let Some(name) = innermost {
                obj.insert("span".into(), Value::String(name.to_owned()));
            }
        }
        let mut visitor = Fields(&mut obj);
        event.record(&mut visitor);
        let line = serde_json::to_string(&obj).map_err(|_| fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

struct Fields<'a>(&'a mut Map<String, Value>);

impl tracing::field::Visit for Fields<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        put(self.0, field.name(), Value::String(value.to_owned()));
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        put(self.0, field.name(), Value::from(value));
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        put(self.0, field.name(), Value::from(value));
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        put(self.0, field.name(), Value::from(value));
    }
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        put(self.0, field.name(), Value::from(value));
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        put(self.0, field.name(), Value::String(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::ErrorKind::Other)?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(f: impl FnOnce()) -> Vec<Value> {
        let buf = Buffer::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .fmt_fields(JsonFields::new())
                .event_format(JsonLine)
                .with_writer(move || out.clone()),
        );
        tracing::subscriber::with_default(subscriber, f);
        let bytes = buf.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn log_lines_carry_the_join_keys_from_spans_and_events() {
        let out = lines(|| {
            let span = tracing::info_span!("ingest.record", trace.id = "4bf9", tenant.id = "acme");
            let _g = span.enter();
            tracing::warn!(event.id = "e-1", reason = "SCHEMA_INVALID", "rejected");
        });
        assert_eq!(out.len(), 1, "{out:?}");
        let l = &out[0];
        assert_eq!(l["traceId"], "4bf9");
        assert_eq!(l["tenantId"], "acme");
        assert_eq!(l["eventId"], "e-1");
        assert_eq!(l["reason"], "SCHEMA_INVALID");
        assert_eq!(l["message"], "rejected");
        assert_eq!(l["level"], "WARN");
        assert_eq!(l["span"], "ingest.record");
    }

    #[test]
    fn secrets_and_personal_fields_are_redacted_by_name() {
        let out = lines(|| {
            let span = tracing::info_span!("http", authorization = "Bearer eyJ.secret");
            let _g = span.enter();
            tracing::info!(
                webhook_secret = "s3cr3t",
                data = "{\"email\":\"a@b.c\"}",
                tenant.id = "acme",
                "stored"
            );
        });
        let text = out[0].to_string();
        for leaked in ["eyJ.secret", "s3cr3t", "a@b.c"] {
            assert!(!text.contains(leaked), "{leaked} in {text}");
        }
        assert_eq!(out[0]["authorization"], "[redacted]");
        assert_eq!(out[0]["webhook_secret"], "[redacted]");
        assert_eq!(out[0]["tenantId"], "acme");
    }
}
