//! ATP's metrics, each named once here, recorded through the OpenTelemetry API and served as
//! Prometheus text (`GET /metrics`).
//!
//! Labels are bounded: reason codes, outcomes, statuses, route templates, projection names.
//! Tenant ids never become labels (one series per tenant would grow without limit).

use std::sync::OnceLock;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram, MeterProvider as _};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use prometheus::{Encoder as _, TextEncoder};

/// Every metric name, as instrumented (Prometheus adds `_total` to counters and unit suffixes).
pub mod names {
    /// Ingress messages handled, by `outcome`: accepted, rejected, duplicate, skipped.
    pub const INGEST_EVENTS: &str = "atp.ingest.events";
    /// Refused submissions by `reason` (the contract's reason codes).
    pub const INGEST_REJECTIONS: &str = "atp.ingest.rejections";
    /// Seconds to commit an ingest batch (its rejections, then its records) to JetStream.
    pub const INGEST_BATCH_SECONDS: &str = "atp.ingest.batch.duration";
    /// Seconds from a record reaching ingress (JetStream's receive time) to its ledger commit
    /// being confirmed: the ingest stage, per record.
    pub const INGEST_LATENCY_SECONDS: &str = "atp.ingest.latency";
    /// Seconds from a record's ledger commit to its row's commit in PostgreSQL, by
    /// `projection`: the projection stage, per row.
    pub const PROJECTOR_LATENCY_SECONDS: &str = "atp.projector.latency";
    /// Export requests waiting for an exporter (`state` = pending) or held by one (`state` =
    /// in_progress). Measured when `/metrics` is scraped.
    pub const EXPORT_QUEUE: &str = "atp.exports.queue";
    /// Ledger appends refused because another writer appended first (the batch is re-read).
    pub const LEDGER_APPEND_CONFLICTS: &str = "atp.ledger.append.conflicts";
    /// Rows written by a projector, by `projection`.
    pub const PROJECTOR_ROWS: &str = "atp.projector.rows";
    /// By `projection`: 0 when caught up with its stream, else seconds since the newest
    /// projected message was committed (grows while a projector is stalled). Measured when
    /// `/metrics` is scraped.
    pub const PROJECTOR_LAG_SECONDS: &str = "atp.projector.lag";
    /// Checkpoints signed and published.
    pub const CHECKPOINTS: &str = "atp.integrity.checkpoints";
    /// Seconds the oldest record a checkpoint covers waited for it, from its ledger commit.
    pub const CHECKPOINT_LAG_SECONDS: &str = "atp.integrity.checkpoint.lag";
    /// Gaps, reorders and broken links found on the ledger, by `kind`.
    pub const INTEGRITY_ALERTS: &str = "atp.integrity.alerts";
    /// Exports finished, by `status`: completed or failed.
    pub const EXPORTS_FINISHED: &str = "atp.exports.finished";
    /// Records packaged into bundles.
    pub const EXPORT_RECORDS: &str = "atp.exports.records";
    /// Completion webhook attempts, by `outcome`: delivered, retry, gave_up.
    pub const WEBHOOK_DELIVERIES: &str = "atp.exports.webhook.deliveries";
    /// Messages dead-lettered after their bounded attempts, by `role` and `code`.
    pub const DLQ_LETTERS: &str = "atp.dlq.letters";
    /// Letters kept on ATP_DLQ (replayed ones included). Measured when `/metrics` is scraped.
    pub const DLQ_DEPTH: &str = "atp.dlq.depth";
    /// Requests refused with 429 because their tenant was over its rate, by `class`: append,
    /// query, export.
    pub const RATE_LIMITED: &str = "atp.gateway.rate_limited";
    /// Seconds since the gateway last fetched its token issuer's JWKS (since start if never);
    /// refreshed every 5 minutes, so more than a few of those means keys are stale and a key
    /// the issuer withdrew is still trusted. Measured when `/metrics` is scraped; absent
    /// without a JWKS URL.
    pub const JWKS_AGE_SECONDS: &str = "atp.gateway.jwks.age";
    /// Fetches of the token issuer's JWKS that failed (the keys fetched before stay trusted).
    pub const JWKS_REFRESH_FAILURES: &str = "atp.gateway.jwks.refresh.failures";
    /// Requests the gateway answered 503 because it had its limit of requests in flight.
    pub const SHED: &str = "atp.gateway.shed";
    /// HTTP requests answered, by `route` (the template) and `status`.
    pub const HTTP_REQUESTS: &str = "atp.http.requests";
    /// Seconds the most-behind ingest shard has not moved while ingress holds messages past it.
    /// Measured when `/metrics` is scraped.
    pub const INGEST_LAG_SECONDS: &str = "atp.ingest.lag";
    pub const INGRESS_FILL: &str = "atp.ingress.fill";
    /// Role (re)starts after a failure, by `role` and `kind` (`retry`: an outage, backed off;
    /// `restart`: a lost race or a failed pipelined commit).
    pub const ROLE_RESTARTS: &str = "atp.role.restarts";
    /// Messages a relay (`atp relay outbox|kafka`) handed to ATP and saw acknowledged, by
    /// `relay` and `outcome`: `event` (signed and sent), `unmappable` (forwarded as received, to
    /// become an `UNMAPPABLE` rejection).
    pub const RELAY_MESSAGES: &str = "atp.relay.messages";
    /// Kafka messages not yet relayed, by `partition` of the relayed topic: the partition's
    /// high watermark less the relay's position. Measured every `--lag-interval`.
    pub const RELAY_KAFKA_LAG: &str = "atp.relay.kafka.lag";
    /// Seconds to answer an HTTP request, by `route`.
    pub const HTTP_SECONDS: &str = "atp.http.request.duration";
}

/// The instruments. Created once, on first use, with the Prometheus exporter behind them.
pub struct Metrics {
    registry: prometheus::Registry,
    _provider: SdkMeterProvider,
    pub ingest_events: Counter<u64>,
    pub ingest_rejections: Counter<u64>,
    pub ingest_batch_seconds: Histogram<f64>,
    pub ingest_latency_seconds: Histogram<f64>,
    pub projector_latency_seconds: Histogram<f64>,
    pub export_queue: Gauge<u64>,
    pub ledger_conflicts: Counter<u64>,
    pub projector_rows: Counter<u64>,
    pub projector_lag_seconds: Gauge<f64>,
    pub checkpoints: Counter<u64>,
    pub checkpoint_lag_seconds: Histogram<f64>,
    pub integrity_alerts: Counter<u64>,
    pub exports_finished: Counter<u64>,
    pub export_records: Counter<u64>,
    pub webhook_deliveries: Counter<u64>,
    pub dlq_letters: Counter<u64>,
    pub dlq_depth: Gauge<u64>,
    pub rate_limited: Counter<u64>,
    pub jwks_age_seconds: Gauge<f64>,
    pub jwks_refresh_failures: Counter<u64>,
    pub shed: Counter<u64>,
    pub http_requests: Counter<u64>,
    pub http_seconds: Histogram<f64>,
    pub role_restarts: Counter<u64>,
    pub ingest_lag_seconds: Gauge<f64>,
    pub ingress_fill: Gauge<f64>,
    pub relay_messages: Counter<u64>,
    pub relay_kafka_lag: Gauge<u64>,
}

/// Latency buckets in seconds, from 1 ms to 30 s.
const SECONDS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

static METRICS: OnceLock<Metrics> = OnceLock::new();

/// The process's instruments.
pub fn metrics() -> &'static Metrics {
    METRICS.get_or_init(Metrics::new)
}

/// Everything recorded so far, in the Prometheus text format.
pub fn render() -> String {
    let m = metrics();
    let mut out = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&m.registry.gather(), &mut out) {
        tracing::warn!(error = %e, "encoding metrics failed");
    }
    String::from_utf8(out).unwrap_or_default()
}

/// Seconds from `from` to `to` for a latency histogram, never negative (the two times may come
/// from different hosts' clocks).
pub fn seconds_between(
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
) -> f64 {
    (to - from)
        .num_microseconds()
        .map_or(0.0, |us| us.max(0) as f64 / 1e6)
}

/// A label.
pub fn label(key: &'static str, value: impl Into<opentelemetry::Value>) -> KeyValue {
    KeyValue::new(key, value)
}

impl Metrics {
    fn new() -> Self {
        let registry = prometheus::Registry::new();
        let provider = match opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_target_info()
            .scope_info_enabled(false)
            .build()
        {
            Ok(exporter) => SdkMeterProvider::builder().with_reader(exporter).build(),
            Err(e) => {
                tracing::error!(error = %e, "the Prometheus exporter cannot start; metrics are not served");
                SdkMeterProvider::builder().build()
            }
        };
        let meter = provider.meter("atp");
        let counter = |name: &'static str, help: &'static str| {
            meter.u64_counter(name).with_description(help).build()
        };
        let seconds = |name: &'static str, help: &'static str| {
            meter
                .f64_histogram(name)
                .with_unit("s")
                .with_description(help)
                .with_boundaries(SECONDS.to_vec())
                .build()
        };
        Self {
            ingest_events: counter(names::INGEST_EVENTS, "Ingress messages handled, by outcome"),
            ingest_rejections: counter(
                names::INGEST_REJECTIONS,
                "Refused submissions, by reason code",
            ),
            ingest_batch_seconds: seconds(
                names::INGEST_BATCH_SECONDS,
                "Time to commit an ingest batch to JetStream",
            ),
            ingest_latency_seconds: seconds(
                names::INGEST_LATENCY_SECONDS,
                "Time from ingress to the ledger commit, per record",
            ),
            projector_latency_seconds: seconds(
                names::PROJECTOR_LATENCY_SECONDS,
                "Time from the ledger commit to the read model's commit, per row",
            ),
            export_queue: meter
                .u64_gauge(names::EXPORT_QUEUE)
                .with_description("Export requests pending or in progress")
                .build(),
            ledger_conflicts: counter(
                names::LEDGER_APPEND_CONFLICTS,
                "Ledger appends refused because another writer appended first",
            ),
            projector_rows: counter(names::PROJECTOR_ROWS, "Rows written, by projection"),
            projector_lag_seconds: meter
                .f64_gauge(names::PROJECTOR_LAG_SECONDS)
                .with_unit("s")
                .with_description("How long unprojected messages may have waited, by projection")
                .build(),
            checkpoints: counter(names::CHECKPOINTS, "Checkpoints signed and published"),
            checkpoint_lag_seconds: seconds(
                names::CHECKPOINT_LAG_SECONDS,
                "Wait of the oldest record a checkpoint covers, from its ledger commit",
            ),
            integrity_alerts: counter(
                names::INTEGRITY_ALERTS,
                "Gaps, reorders and broken links found on the ledger, by kind",
            ),
            exports_finished: counter(names::EXPORTS_FINISHED, "Exports finished, by status"),
            export_records: counter(names::EXPORT_RECORDS, "Records packaged into bundles"),
            webhook_deliveries: counter(
                names::WEBHOOK_DELIVERIES,
                "Export webhook attempts, by outcome",
            ),
            dlq_letters: counter(
                names::DLQ_LETTERS,
                "Messages dead-lettered after their bounded attempts, by role and code",
            ),
            dlq_depth: meter
                .u64_gauge(names::DLQ_DEPTH)
                .with_description("Letters kept on ATP_DLQ")
                .build(),
            rate_limited: counter(
                names::RATE_LIMITED,
                "Requests refused because their tenant was over its rate, by class",
            ),
            jwks_age_seconds: meter
                .f64_gauge(names::JWKS_AGE_SECONDS)
                .with_unit("s")
                .with_description("Seconds since the token issuer's JWKS was last fetched")
                .build(),
            jwks_refresh_failures: counter(
                names::JWKS_REFRESH_FAILURES,
                "Failed fetches of the token issuer's JWKS",
            ),
            shed: counter(
                names::SHED,
                "Requests answered 503 because the gateway had its limit in flight",
            ),
            http_requests: counter(names::HTTP_REQUESTS, "HTTP requests, by route and status"),
            http_seconds: seconds(names::HTTP_SECONDS, "Time to answer, by route"),
            role_restarts: counter(
                names::ROLE_RESTARTS,
                "Roles restarted from their durable position after a failure, by role and kind",
            ),
            ingest_lag_seconds: meter
                .f64_gauge(names::INGEST_LAG_SECONDS)
                .with_unit("s")
                .with_description(
                    "Age of the oldest submission ingest has not handled yet (0 when none waits)",
                )
                .build(),
            ingress_fill: meter
                .f64_gauge(names::INGRESS_FILL)
                .with_unit("1")
                .with_description(
                    "How near ATP_INGRESS is to refusing publishes: the larger of its bytes over its byte limit and its fullest partition's waiting messages over the per-partition limit",
                )
                .build(),
            relay_messages: counter(
                names::RELAY_MESSAGES,
                "Messages a relay handed to ATP and saw acknowledged, by relay and outcome",
            ),
            relay_kafka_lag: meter
                .u64_gauge(names::RELAY_KAFKA_LAG)
                .with_description("Kafka messages not yet relayed, by partition")
                .build(),
            registry,
            _provider: provider,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Records one sample in every instrument and returns the metric family names served.
    fn every_family() -> BTreeSet<String> {
        let m = metrics();
        for c in [
            &m.ingest_events,
            &m.ingest_rejections,
            &m.ledger_conflicts,
            &m.projector_rows,
            &m.checkpoints,
            &m.integrity_alerts,
            &m.exports_finished,
            &m.export_records,
            &m.webhook_deliveries,
            &m.dlq_letters,
            &m.rate_limited,
            &m.jwks_refresh_failures,
            &m.shed,
            &m.http_requests,
            &m.role_restarts,
        ] {
            c.add(0, &[]);
        }
        m.dlq_depth.record(0, &[]);
        m.export_queue.record(0, &[]);
        for h in [
            &m.ingest_batch_seconds,
            &m.ingest_latency_seconds,
            &m.projector_latency_seconds,
            &m.checkpoint_lag_seconds,
            &m.http_seconds,
        ] {
            h.record(0.0, &[]);
        }
        m.projector_lag_seconds.record(0.0, &[]);
        m.ingest_lag_seconds.record(0.0, &[]);
        m.ingress_fill.record(0.0, &[]);
        m.jwks_age_seconds.record(0.0, &[]);
        render()
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .map(str::to_owned)
            .collect()
    }

    /// How many `atp_…` series `text` names, failing on any no instrument produces.
    fn check_names(file: &str, text: &str, families: &BTreeSet<String>) -> usize {
        let mut named = 0;
        for token in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if !token.starts_with("atp_") {
                continue;
            }
            named += 1;
            let family = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| token.strip_suffix(s))
                .unwrap_or(token);
            assert!(
                families.contains(family),
                "{file} names {token}, which no instrument produces: {families:?}"
            );
        }
        named
    }

    #[test]
    fn every_metric_the_alert_rules_and_the_dashboard_name_exists() {
        let families = every_family();
        assert_eq!(
            families.len(),
            26,
            "one family per instrument: {families:?}"
        );
        let rules = include_str!("../../../ops/prometheus/alerts.yml");
        assert!(check_names("alerts.yml", rules, &families) >= 8);
        let dashboard = include_str!("../../../ops/grafana/atp-overview.json");
        assert!(check_names("atp-overview.json", dashboard, &families) >= 19);
    }

    /// GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces to `-`.
    fn anchor(heading: &str) -> String {
        heading
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect()
    }

    #[test]
    fn every_alert_links_a_runbook_section_that_exists() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let rules = include_str!("../../../ops/prometheus/alerts.yml");
        let mut links = 0;
        for line in rules.lines() {
            let Some(link) = line.trim().strip_prefix("runbook: ") else {
                continue;
            };
            links += 1;
            let (file, section) = link
                .split_once('#')
                .map_or((link, None), |(f, s)| (f, Some(s)));
            let text = std::fs::read_to_string(root.join(file))
                .unwrap_or_else(|e| panic!("{link}: {file} cannot be read: {e}"));
            if let Some(section) = section {
                assert!(
                    text.lines()
                        .filter_map(|l| l.strip_prefix("## "))
                        .any(|h| anchor(h) == section),
                    "{link}: no section #{section} in {file}"
                );
            }
        }
        assert_eq!(
            links,
            rules.matches("- alert: ").count(),
            "every alert links a runbook"
        );
    }

    #[test]
    fn recorded_values_show_in_the_prometheus_text() {
        let m = metrics();
        m.ingest_rejections
            .add(2, &[label("reason", "SIGNATURE_INVALID")]);
        m.http_seconds.record(0.003, &[label("route", "/healthz")]);
        let text = render();
        assert!(
            text.contains("atp_ingest_rejections_total{reason=\"SIGNATURE_INVALID\"} 2"),
            "{text}"
        );
        assert!(
            text.contains(
                "atp_http_request_duration_seconds_bucket{route=\"/healthz\",le=\"0.005\"} 1"
            ),
            "{text}"
        );
    }
}
