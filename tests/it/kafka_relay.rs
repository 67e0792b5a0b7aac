//! `atp relay kafka` against a real Kafka-protocol broker (Tansu, `ops/bin/install-tansu`)
//! holding seed 001's `audit.events.log`: trace events of two of the platform's tenants become
//! records of two ATP tenants (two relays sharing the topic), what cannot be mapped becomes
//! `UNMAPPABLE` rejections, and a relay killed with SIGKILL and a broker restarted mid-stream
//! lose and double nothing. (A killed relay comes back under its `--instance-id`: Tansu 0.6.0
//! never expires a dead member's partitions to the others, ADR 0024.)

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use atp_devstack::KafkaBroker;
use atp_tests::*;
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

const TOPIC: &str = "audit.events.log";
const PARTITIONS: u32 = 3;

/// What `atp producer add --generate-key --output DIR` wrote for an ATP tenant's `platform`.
fn onboard(stack: &Stack, tenant: &str, dir: &Path) -> PathBuf {
    let out_dir = dir.join(tenant);
    stack.onboard_producer(
        tenant,
        "platform",
        &format!("https://platform.{tenant}.example"),
        &format!("{tenant}-platform-1"),
        &out_dir,
        &[],
    );
    out_dir
}

struct Platform {
    broker: KafkaBroker,
    kafka: FutureProducer,
}

async fn platform() -> Platform {
    let broker = KafkaBroker::start().await.expect("the Kafka broker starts");
    broker
        .create_topic(TOPIC, PARTITIONS)
        .await
        .expect("the topic is created");
    let kafka: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("message.timeout.ms", "60000")
        .set("acks", "all")
        .create()
        .expect("a Kafka producer");
    Platform { broker, kafka }
}

impl Platform {
    /// A service's trace event for a request of `business` (its `x-tenant-id`, as a header),
    /// keyed by session so that a session's events share a partition.
    async fn trace(&self, business: &str, n: u32) {
        let body = serde_json::json!({
            "service": "transfer",
            "action": "transfer.approve",
            "timestamp": "2026-12-07T10:00:00.000Z",
            "resource": {"type": "transfer", "id": format!("tr_{n}")},
            "status": 200,
            "request": {"method": "POST", "path": format!("/v1/transfers/tr_{n}/approve")},
            "metadata": {"x-user-id": format!("usr_{}", n % 7), "x-session-id": format!("ses_{}", n % 5)},
            "n": n,
        });
        self.send(
            &format!("ses_{}", n % 5),
            Some(business),
            body.to_string().as_bytes(),
        )
        .await;
    }

    async fn send(&self, key: &str, business: Option<&str>, payload: &[u8]) {
        let mut headers = OwnedHeaders::new();
        if let Some(b) = business {
            headers = headers.insert(Header {
                key: "x-tenant-id",
                value: Some(b),
            });
        }
        let record = FutureRecord::to(TOPIC)
            .key(key)
            .payload(payload)
            .headers(headers);
        self.kafka
            .send(record, Duration::from_secs(60))
            .await
            .map_err(|(e, _)| e)
            .expect("the broker takes the trace event");
    }
}

fn spawn_relay(
    stack: &Stack,
    broker: &KafkaBroker,
    producers: &[String],
    instance: &str,
    metrics: Option<u16>,
    log: &Path,
) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new(atp_binary());
    cmd.args(["relay", "kafka", "--brokers", &broker.bootstrap()])
        .args(["--type-prefix", "com.fintech.", "--lag-interval-secs", "1"])
        .args(["--nats-url", &stack.nats.url()]);
    for p in producers {
        cmd.args(["--producer", p]);
    }
    cmd.args(["--instance-id", instance]);
    if let Some(port) = metrics {
        cmd.args(["--metrics-addr", &format!("127.0.0.1:{port}")]);
    }
    cmd.env("ATP_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("atp relay kafka starts")
}

/// The ids of a partition's records, each once, or a panic naming the one seen twice.
async fn record_ids(stack: &Stack, p: &atp_core::PartitionKey) -> BTreeSet<String> {
    let records = stack.ledger(p).await;
    let ids: BTreeSet<String> = records
        .iter()
        .map(|r| r.event["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), records.len(), "an event recorded twice in {p}");
    ids
}

#[tokio::test]
async fn trace_events_become_records_of_their_tenants_and_what_cannot_be_mapped_a_rejection() {
    let stack = Stack::start().await;
    let _running = stack.serve(ingest_only()).await;
    let platform = platform().await;
    let dir = tempfile::tempdir().unwrap();
    let acme = onboard(&stack, "acme", dir.path());
    let globex = onboard(&stack, "globex", dir.path());
    for n in 0..60 {
        platform.trace("biz_acme", n).await;
    }
    for n in 0..40 {
        platform.trace("biz_globex", n).await;
    }
    // Three messages no tenant's producer can sign: not JSON (its tenant's own rejection), no
    // tenant at all, and a tenant this relay has no producer for (both the first producer's).
    platform.send("k", Some("biz_acme"), b"\x00not json").await;
    platform
        .send("k", None, br#"{"service":"fx","action":"rate.read"}"#)
        .await;
    platform
        .send(
            "k",
            Some("biz_initech"),
            br#"{"service":"fx","action":"rate.read"}"#,
        )
        .await;

    let metrics_port = atp_devstack::free_port().unwrap();
    let logs = tempfile::tempdir().unwrap();
    let producers = [
        format!("biz_acme={}", acme.display()),
        format!("biz_globex={}", globex.display()),
    ];
    // Two relays in one consumer group share the topic's partitions; one serves metrics.
    let relays = [
        spawn_relay(
            &stack,
            &platform.broker,
            &producers,
            "relay-1",
            Some(metrics_port),
            &logs.path().join("relay-1.log"),
        ),
        spawn_relay(
            &stack,
            &platform.broker,
            &producers,
            "relay-2",
            None,
            &logs.path().join("relay-2.log"),
        ),
    ];
    let (pa, pg) = (
        partition("acme", "platform"),
        partition("globex", "platform"),
    );
    eventually("every trace event recorded", || async {
        (stack.ledger_len(&pa).await == 60 && stack.ledger_len(&pg).await == 40).then_some(())
    })
    .await;
    assert_eq!(stack.verify_chain(&pa).await, 60);
    assert_eq!(stack.verify_chain(&pg).await, 40);
    assert_eq!(record_ids(&stack, &pa).await.len(), 60);
    assert!(stack.rejections(&pg).await.is_empty());

    // A record as mapped: the tenant's producer key signed it, the context is in `data`.
    let records = stack.ledger(&pg).await;
    let r = &records[0];
    assert!(
        r.event["id"]
            .as_str()
            .unwrap()
            .starts_with("kafka:audit.events.log/")
    );
    assert_eq!(r.event["type"], "com.fintech.transfer.transfer.approve");
    assert_eq!(r.producer.key_id.as_deref(), Some("globex-platform-1"));
    let data = &r.event["data"];
    assert_eq!(data["action"], "transfer.approve");
    assert!(data["actor"]["id"].as_str().unwrap().starts_with("usr_"));
    assert!(
        data["attributes"]["sessionId"]
            .as_str()
            .unwrap()
            .starts_with("ses_")
    );
    assert_eq!(data["outcome"], "success");

    let rejections = eventually("three UNMAPPABLE rejections", || async {
        let r = stack.rejections(&pa).await;
        (r.len() >= 3).then_some(r)
    })
    .await;
    assert_eq!(rejections.len(), 3, "{rejections:?}");
    assert!(
        rejections
            .iter()
            .all(|r| r.reason == atp_core::Reason::Unmappable),
        "{rejections:?}"
    );
    let details: Vec<&str> = rejections.iter().map(|r| r.detail.as_str()).collect();
    assert!(
        details.iter().any(|d| d.contains("not JSON")),
        "{details:?}"
    );
    assert!(
        details.iter().any(|d| d.contains("no x-tenant-id")),
        "{details:?}"
    );
    assert!(
        details
            .iter()
            .any(|d| d.contains("\"biz_initech\" has no ATP producer"))
    );

    // Lag, measured every second for the partitions relay-1 holds, comes down to nothing.
    let url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let text = eventually("the lag reported as 0 on every partition", || async {
        let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
        let lags: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("atp_relay_kafka_lag{"))
            .collect();
        (!lags.is_empty() && lags.iter().all(|l| l.ends_with(" 0"))).then_some(text)
    })
    .await;
    // Both relays held partitions: each logged its lag over at least one.
    for name in ["relay-1", "relay-2"] {
        let log = logs.path().join(format!("{name}.log"));
        eventually(&format!("{name} holding partitions"), || async {
            let text = std::fs::read_to_string(&log).ok()?;
            text.lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .any(|l| l["message"] == "Kafka relay lag" && l["partitions"].as_u64() > Some(0))
                .then_some(())
        })
        .await;
    }
    // What relay-1 handed over is counted (the two relays split the 103 messages).
    assert!(
        text.lines()
            .any(|l| l.starts_with("atp_relay_messages_total{") && l.contains("relay=\"kafka\"")),
        "{text}"
    );
    drop(relays);
}

#[tokio::test]
async fn a_relay_killed_mid_stream_and_a_broker_restart_lose_and_double_nothing() {
    let stack = Stack::start().await;
    let _running = stack.serve(ingest_only()).await;
    let mut platform = platform().await;
    let dir = tempfile::tempdir().unwrap();
    let acme = onboard(&stack, "acme", dir.path());
    let producers = [format!("biz_acme={}", acme.display())];
    let logs = tempfile::tempdir().unwrap();
    let p = partition("acme", "platform");
    for n in 0..300 {
        platform.trace("biz_acme", n).await;
    }
    let mut a = spawn_relay(
        &stack,
        &platform.broker,
        &producers,
        "relay-1",
        None,
        &logs.path().join("a.log"),
    );
    eventually("the relay under way", || async {
        (stack.ledger_len(&p).await >= 100).then_some(())
    })
    .await;
    // SIGKILL mid-stream: what it read and sent but did not commit is read again when it comes
    // back (under its name, so it takes its partitions back at once), and ATP answers it as
    // the records it already is.
    a.start_kill().unwrap();
    a.wait().await.unwrap();
    // The broker restarts while the platform writes on, and the relay comes back during it.
    for n in 300..350 {
        platform.trace("biz_acme", n).await;
    }
    platform
        .broker
        .restart()
        .await
        .expect("the broker restarts");
    let mut b = spawn_relay(
        &stack,
        &platform.broker,
        &producers,
        "relay-1",
        None,
        &logs.path().join("b.log"),
    );
    for n in 350..400 {
        platform.trace("biz_acme", n).await;
    }
    eventually("every trace event recorded", || async {
        (stack.ledger_len(&p).await >= 400).then_some(())
    })
    .await;
    assert_eq!(stack.verify_chain(&p).await, 400, "no trace event twice");
    let ids = record_ids(&stack, &p).await;
    let ns: BTreeSet<u64> = stack
        .ledger(&p)
        .await
        .iter()
        .map(|r| {
            r.event["data"]["attributes"]["n"]
                .as_u64()
                .expect("the trace event's n")
        })
        .collect();
    assert_eq!(
        ns,
        (0..400).collect::<BTreeSet<u64>>(),
        "every trace event once"
    );
    assert_eq!(ids.len(), 400);
    assert!(stack.rejections(&p).await.is_empty());
    b.start_kill().unwrap();
}
