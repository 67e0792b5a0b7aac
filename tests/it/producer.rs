//! The Rust SDK (`atp-producer`) against the live stack, as a producer's engineer uses it: its
//! own NATS identity, its own key, events built from plain fields or a `cloudevents-sdk` event,
//! read back from the ledger and their signatures re-verified from the stored records.

use std::time::Duration;

use atp_core::event::{Channel, Submission};
use atp_core::reason::Reason;
use atp_gateway::Permission;
use atp_nats::streams;
use atp_producer::{
    AuditEvent, HttpPublisher, NatsPublisher, Outcome, Producer, PublishError, Retry, Sequencer,
    Signer, Source,
};
use atp_tests::*;
use cloudevents::EventBuilder as _;
use ed25519_dalek::SigningKey;

fn producer(stack: &Stack, sequencer: Option<Sequencer>) -> Producer {
    let source = Source::new(TENANT, SOURCE, SOURCE_URI).unwrap();
    let p = Producer::new(source, Signer::new(stack.producer.clone(), KEY_ID));
    match sequencer {
        Some(s) => p.with_sequencer(s),
        None => p,
    }
}

fn contact_updated(n: u32) -> AuditEvent {
    AuditEvent::new("com.acme.contact.updated")
        .actor(format!("user-{n}"), "user")
        .action("UPDATE")
        .resource("Contact", format!("c-{n}"))
        .outcome("success")
        .attribute("field", "email")
}

#[tokio::test]
async fn the_rust_sdk_publishes_over_nats_as_its_own_identity_and_every_record_reverifies() {
    let stack = Stack::start().await;
    let _running = stack.serve(ingest_only()).await;
    let (auth, _) = stack.auth.as_ref().unwrap();
    let p = partition(TENANT, SOURCE);
    let (_, seed) = atp::admin::add_nats_producer(&stack.nats.url(), auth, &p, None)
        .await
        .unwrap();
    let seq_dir = tempfile::tempdir().unwrap();
    let producer = producer(
        &stack,
        Some(Sequencer::file(seq_dir.path().join("crm.seq")).unwrap()),
    );
    let nats = NatsPublisher::connect(&stack.nats.url(), &seed, producer.source())
        .await
        .expect("the producer connects with the seed file ATP wrote")
        .retry(Retry {
            attempts: 3,
            ..Retry::default()
        });

    // Three from plain fields, one from a cloudevents-sdk event, published two at a time.
    let mut events: Vec<_> = (0..3)
        .map(|n| producer.sign(contact_updated(n)).unwrap())
        .collect();
    let ce = cloudevents::EventBuilderV10::new()
        .id("ce-1")
        .source(SOURCE_URI)
        .ty("com.acme.note.created")
        .time(chrono::Utc::now())
        .data(
            "application/json",
            serde_json::json!({
                "actor": {"id": "user-9", "type": "user"}, "action": "CREATE",
                "resource": {"type": "Note", "id": "n-1"}, "attributes": {}
            }),
        )
        .build()
        .unwrap();
    events.push(producer.sign_cloudevent(&ce).unwrap());
    let receipts = nats.publish_all(events.clone(), 2).await;
    let mut seqs: Vec<u64> = receipts
        .into_iter()
        .map(|r| r.expect("acknowledged").ingress_seq)
        .collect();
    // A retry of an acknowledged event is the same submission: no second record.
    seqs.push(nats.publish(&events[0]).await.unwrap().ingress_seq);
    let distinct: std::collections::BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(distinct.len(), 5, "five submissions reached ATP: {seqs:?}");

    let records = eventually("four records", || async {
        let r = stack.ledger(&p).await;
        (r.len() >= 4).then_some(r)
    })
    .await;
    assert_eq!(stack.verify_chain(&p).await, 4, "the repeat made no record");
    let ids: Vec<&str> = records
        .iter()
        .map(|r| r.event["id"].as_str().unwrap())
        .collect();
    let mut want: Vec<&str> = events.iter().map(|e| e.id()).collect();
    want.sort();
    let mut got = ids.clone();
    got.sort();
    assert_eq!(got, want);
    // The SDK numbered them 1..=4, signed, and the records keep it.
    let mut seqs: Vec<u64> = records
        .iter()
        .map(|r| r.event["sequence"].as_str().unwrap().parse().unwrap())
        .collect();
    seqs.sort();
    assert_eq!(seqs, vec![1, 2, 3, 4]);

    // Each stored event re-verifies against the registered producer key, as received.
    let kv = stack
        .js
        .get_key_value(streams::PRODUCERS_BUCKET)
        .await
        .unwrap();
    let reg = atp_nats::registry::get(&kv, &p).await.unwrap().unwrap();
    for r in &records {
        let body = serde_json::to_vec(&r.event).unwrap();
        let sub = Submission {
            body: &body,
            content_type: Some("application/cloudevents+json"),
            ce_headers: Vec::new(),
            repeated: Vec::new(),
            unmappable: None,
            channel: Channel::Nats,
        };
        atp_core::event::admit(&p, &sub, Some(&reg)).expect("the stored signature verifies");
        assert_eq!(r.producer.key_id.as_deref(), Some(KEY_ID));
    }

    // An event numbered below what ATP recorded is durable, then refused, never recorded.
    let stale = producer.sign(contact_updated(7).sequence(2)).unwrap();
    nats.publish(&stale).await.unwrap();
    let rejections = eventually("the stale event's rejection", || async {
        let r = stack.rejections(&p).await;
        (!r.is_empty()).then_some(r)
    })
    .await;
    assert_eq!(rejections[0].reason, Reason::SequenceRegression);
    assert_eq!(stack.verify_chain(&p).await, 4);
}

#[tokio::test]
async fn the_rust_sdk_over_http_answers_the_record_a_repeat_and_a_typed_rejection() {
    let stack = Stack::start().await;
    let running = stack.serve(Roles::ALL).await;
    let api = Api::new(&running);
    let http = HttpPublisher::new(&api.base, stack.token(TENANT, Permission::Producer))
        .unwrap()
        .wait(Duration::from_secs(20));
    let producer = producer(&stack, None);

    let event = producer.sign(contact_updated(1)).unwrap();
    let Outcome::Recorded(first) = http.append(&event).await.unwrap() else {
        panic!("no record within the wait");
    };
    assert_eq!(first.chain_index, 0);
    assert!(!first.repeat);
    assert!(first.digest.starts_with("sha256:"));
    let Outcome::Recorded(again) = http.append(&event).await.unwrap() else {
        panic!("a repeat answers its record");
    };
    assert!(again.repeat);
    assert_eq!(again.record_id, first.record_id);

    // Signed with a key ATP does not have under this key id: a typed rejection.
    let forger = Producer::new(
        Source::new(TENANT, SOURCE, SOURCE_URI).unwrap(),
        Signer::new(SigningKey::from_bytes(&[99; 32]), KEY_ID),
    );
    let forged = forger.sign(contact_updated(2)).unwrap();
    match http.append(&forged).await {
        Err(PublishError::Rejected { reason, detail }) => {
            assert_eq!(reason, Reason::SignatureInvalid, "{detail}");
        }
        other => panic!("a forged event answered {other:?}"),
    }
    // A token for another tenant's role is the gateway's refusal, not the event's.
    let auditor = HttpPublisher::new(&api.base, stack.token(TENANT, Permission::Auditor))
        .unwrap()
        .retry(Retry::never());
    match auditor
        .append(&producer.sign(contact_updated(3)).unwrap())
        .await
    {
        Err(PublishError::Refused { status, .. }) => assert_eq!(status, 403),
        other => panic!("an auditor's append answered {other:?}"),
    }
    // A source the producer does not own is refused before anything is sent.
    assert!(Source::new("Not A Tenant", SOURCE, SOURCE_URI).is_err());
}

/// `atp producer add --generate-key --output DIR`: a directory with everything the producer
/// needs, keys that openssl reads, a NATS seed the SDK connects with, and a first record.
#[tokio::test]
async fn onboarding_writes_everything_a_producer_needs_and_the_sdk_publishes_with_it() {
    use std::os::unix::fs::PermissionsExt as _;
    let stack = Stack::start().await;
    let _running = stack.serve(ingest_only()).await;
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("creds");
    stack.onboard_producer(
        "globex",
        "billing",
        "https://billing.globex.example",
        "billing-1",
        &out_dir,
        &[],
    );
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&out_dir), 0o700);
    assert_eq!(mode(&out_dir.join("producer.pem")), 0o600);
    assert_eq!(mode(&out_dir.join("nats.nk")), 0o600);
    let facts: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("producer.json")).unwrap()).unwrap();
    assert_eq!(facts["subject"], "atp.ingress.globex.billing");
    assert_eq!(facts["keyId"], "billing-1");
    assert_eq!(facts["natsCredentials"], "nats.nk");

    // openssl reads the private key and derives the public key ATP wrote beside it.
    let derived = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(out_dir.join("producer.pem"))
        .output()
        .expect("openssl runs (this test needs it installed)");
    assert!(derived.status.success());
    assert_eq!(
        String::from_utf8(derived.stdout).unwrap(),
        std::fs::read_to_string(out_dir.join("producer.pub.pem")).unwrap()
    );

    // The SDK, configured from producer.json alone, publishes a record.
    let text = |k: &str| facts[k].as_str().unwrap().to_owned();
    let source = Source::new(&text("tenant"), &text("source"), &text("sourceUri")).unwrap();
    let signer = Signer::read_pem_file(&out_dir.join(text("privateKey")), text("keyId")).unwrap();
    let producer = Producer::new(source, signer);
    let nats = NatsPublisher::connect(
        &text("natsUrl"),
        &out_dir.join(text("natsCredentials")),
        producer.source(),
    )
    .await
    .expect("the producer connects with its own seed");
    let event = producer.sign(contact_updated(1)).unwrap();
    nats.publish(&event).await.unwrap();
    let p = partition("globex", "billing");
    let records = eventually("the first record", || async {
        let r = stack.ledger(&p).await;
        (!r.is_empty()).then_some(r)
    })
    .await;
    assert_eq!(records[0].event["id"], event.id());
    assert_eq!(records[0].producer.key_id.as_deref(), Some("billing-1"));
}

/// The Python SDK (`sdk/python`): `ATP_SDK_PYTHON` (what `ops/bin/test` installs with
/// `ops/bin/install-sdk-python`; then a failure is a failure), else `None` after saying why the
/// test is skipped.
fn sdk_python() -> Option<String> {
    if let Ok(python) = std::env::var("ATP_SDK_PYTHON") {
        return Some(python);
    }
    eprintln!(
        "skipped: ATP_SDK_PYTHON is not set; ops/bin/test installs the Python SDK \
         (ops/bin/install-sdk-python) and sets it"
    );
    None
}

/// The SDK's own tests (the cross-language vectors included), then the SDK against the live
/// stack: over NATS as the producer's identity and over HTTP, every stored event re-verified in
/// Python with the keys the gateway publishes.
#[tokio::test]
async fn the_python_sdk_passes_its_tests_and_publishes_records_that_reverify() {
    let Some(python) = sdk_python() else { return };
    let sdk = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/python");
    let unit = std::process::Command::new(&python)
        .args(["-m", "unittest", "discover", "-s", "tests"])
        .current_dir(&sdk)
        .output()
        .expect("the SDK's python runs");
    assert!(
        unit.status.success(),
        "the Python SDK's tests: {}",
        String::from_utf8_lossy(&unit.stderr)
    );

    let mut live = tokio::process::Command::new(&python);
    live.arg(sdk.join("tests/live.py"));
    run_live_sdk(live).await;
}

/// Runs an SDK's live script against a fresh stack (everything it needs in its environment)
/// and checks what it reports: 203 numbered events acknowledged over NATS as the producer's own
/// identity (200 of them in one batch, 64 in flight) and a repeat, one over HTTP recorded and
/// its repeat answered with the same record, every stored event re-verified by the SDK with
/// the keys the gateway publishes, numbered 1 to 204 in chain order, nothing refused, and no
/// repeat recorded twice.
async fn run_live_sdk(mut live: tokio::process::Command) {
    let stack = Stack::start().await;
    let running = stack.serve(Roles::ALL).await;
    let api = Api::new(&running);
    let (auth, _) = stack.auth.as_ref().unwrap();
    let p = partition(TENANT, SOURCE);
    let (_, seed) = atp::admin::add_nats_producer(&stack.nats.url(), auth, &p, None)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("producer.pem");
    atp::keys::write_private(&pem, &stack.producer).unwrap();
    let out = live
        .env("ATP_NATS_URL", stack.nats.url())
        .env("ATP_SEED", &seed)
        .env("ATP_TENANT", TENANT)
        .env("ATP_SOURCE", SOURCE)
        .env("ATP_SOURCE_URI", SOURCE_URI)
        .env("ATP_KEY_PEM", &pem)
        .env("ATP_KEY_ID", KEY_ID)
        .env("ATP_GATEWAY", &api.base)
        .env(
            "ATP_TOKEN_PRODUCER",
            stack.token(TENANT, Permission::Producer),
        )
        .env(
            "ATP_TOKEN_AUDITOR",
            stack.token(TENANT, Permission::Auditor),
        )
        .output()
        .await
        .expect("the live script runs");
    assert!(
        out.status.success(),
        "the live script: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // 3 + 200 over NATS, a repeat acknowledged as a new submission, 1 over HTTP.
    assert_eq!(summary["acked"].as_array().unwrap().len(), 204, "{summary}");
    assert_eq!(summary["verified"], summary["sent"], "{summary}");
    assert_eq!(summary["sent"].as_array().unwrap().len(), 204);
    assert_eq!(summary["httpFirstIndex"], 203);
    assert_eq!(summary["httpRepeat"], true);
    let in_order: Vec<u64> = (1..=204).collect();
    assert_eq!(summary["sequences"], serde_json::json!(in_order));
    assert!(
        stack.rejections(&p).await.is_empty(),
        "nothing refused: numbered events arrived in order"
    );
    assert_eq!(stack.verify_chain(&p).await, 204, "no repeat made a record");
}

/// The TypeScript SDK (`sdk/typescript`, built by `ops/bin/install-sdk-typescript`, which
/// `ops/bin/test` runs and names in `ATP_SDK_TYPESCRIPT`): its own tests (the cross-language
/// vectors included), then the same live run as the Python SDK's.
#[tokio::test]
async fn the_typescript_sdk_passes_its_tests_and_publishes_records_that_reverify() {
    let Ok(sdk) = std::env::var("ATP_SDK_TYPESCRIPT") else {
        eprintln!(
            "skipped: ATP_SDK_TYPESCRIPT is not set; ops/bin/test installs and builds the \
             TypeScript SDK (ops/bin/install-sdk-typescript) and sets it"
        );
        return;
    };
    let sdk = std::path::PathBuf::from(sdk);
    let unit = std::process::Command::new("node")
        .args(["--test", "dist/test/"])
        .current_dir(&sdk)
        .output()
        .expect("node runs");
    assert!(
        unit.status.success(),
        "the TypeScript SDK's tests: {}",
        String::from_utf8_lossy(&unit.stdout)
    );
    let mut live = tokio::process::Command::new("node");
    live.arg(sdk.join("dist/live/live.js"));
    run_live_sdk(live).await;
}
