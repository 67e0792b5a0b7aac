//! nats-server itself refuses what an identity may not do: a producer outside its partition, a
//! stranger, a withdrawn producer, a worker outside its role (CONTRACT §1, ADR 0008).

use std::path::Path;

use async_nats::{Client, ConnectErrorKind, ConnectOptions, Event};
use atp_core::role::Role;
use atp_core::role::Roles;
use atp_nats::auth::Identity;
use atp_nats::{streams, subjects};
use atp_tests::{Nats, PATIENCE, SOURCE, Stack, TENANT, eventually, partition};
use futures::StreamExt as _;
use serde_json::Value;
use tokio::sync::mpsc;

/// Connects with a seed file as a client outside ATP would, reporting what the server says.
async fn connect_as(
    url: &str,
    seed_file: &Path,
) -> Result<(Client, mpsc::UnboundedReceiver<String>), async_nats::ConnectError> {
    let (seed, inbox) = atp_nats::auth::read_seed(seed_file).unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let mut opts = ConnectOptions::with_nkey(seed).event_callback(move |e: Event| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(e.to_string());
        }
    });
    if let Some(prefix) = inbox {
        opts = opts.custom_inbox_prefix(prefix);
    }
    Ok((opts.connect(url).await?, rx))
}

/// Waits for the server to say something containing `what`.
async fn told(events: &mut mpsc::UnboundedReceiver<String>, what: &str) -> String {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(e)) if e.contains(what) => return e,
            Ok(Some(_)) => {}
            _ => panic!("the server never said {what:?}"),
        }
    }
}

fn server_log(stack: &Stack) -> String {
    match &stack.nats {
        Nats::One(n) => std::fs::read_to_string(n.log_path()).unwrap(),
        Nats::Cluster(_) => unreachable!("these stacks run one server"),
    }
}

async fn ingress_messages(stack: &Stack) -> u64 {
    let mut stream = stack.js.get_stream(streams::INGRESS).await.unwrap();
    stream.info().await.unwrap().state.messages
}

#[tokio::test]
async fn a_producer_added_to_the_running_server_publishes_only_into_its_own_partition() {
    let stack = Stack::start().await;
    stack.expect_violations();
    let (auth, _) = stack.auth.as_ref().unwrap();
    let Nats::One(server) = &stack.nats else {
        unreachable!()
    };
    let pid = server.pid();
    let own = partition(TENANT, SOURCE);

    // Registered after the server started, applied by a reload, not a restart.
    let (_, seed) = atp::admin::add_nats_producer(&stack.nats.url(), auth, &own, None)
        .await
        .unwrap();
    let Nats::One(server) = &stack.nats else {
        unreachable!()
    };
    assert_eq!(server.pid(), pid, "the server was restarted");
    let (client, mut events) = connect_as(&stack.nats.url(), &seed)
        .await
        .expect("the new producer connects");

    // Its own partition takes its events, acknowledged through its private inbox.
    let body = serde_json::to_vec(&stack.sign(stack.event("nats-own-1"))).unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let ack = js
        .publish(subjects::ingress(&own), body.clone().into())
        .await
        .unwrap()
        .await
        .expect("the producer's own partition acknowledges");
    assert_eq!(ack.stream, streams::INGRESS);
    assert_eq!(ingress_messages(&stack).await, 1);

    // Another tenant's subject is refused by the server, and nothing reaches the stream.
    let foreign = partition("globex", SOURCE);
    client
        .publish(subjects::ingress(&foreign), body.clone().into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let refusal = told(&mut events, "Permissions Violation for Publish").await;
    assert!(refusal.contains("atp.ingress.globex.crm"), "{refusal}");
    // Another source of its own tenant too: credentials are per partition.
    client
        .publish(
            subjects::ingress(&partition(TENANT, "billing")),
            body.into(),
        )
        .await
        .unwrap();
    client.flush().await.unwrap();
    let refusal = told(&mut events, "Permissions Violation for Publish").await;
    assert!(refusal.contains("atp.ingress.acme.billing"), "{refusal}");
    assert_eq!(ingress_messages(&stack).await, 1);

    // It reads nothing of ATP's: not the ledger, not the ingress.
    for subject in ["atp.ledger.>", "atp.ingress.>"] {
        let _ = client.subscribe(subject).await;
        client.flush().await.unwrap();
        let refusal = told(&mut events, "Permissions Violation for Subscription").await;
        assert!(refusal.contains(subject), "{refusal}");
    }
    // Its inboxes are in its tenant's own account (ADR 0014): a subscription to every inbox
    // sees the answers to its own requests, never another account's. ATP's admin publishes
    // first; the first answer the producer's subscription sees is still its own.
    let mut inboxes = client.subscribe("_INBOX.>").await.unwrap();
    client.flush().await.unwrap();
    let admins = stack
        .publish(&own, &stack.sign(stack.event("nats-own-2")))
        .await;
    let body = serde_json::to_vec(&stack.sign(stack.event("nats-own-3"))).unwrap();
    let mine = js
        .publish(subjects::ingress(&own), body.into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(mine.sequence > admins);
    let first = tokio::time::timeout(PATIENCE, inboxes.next())
        .await
        .unwrap()
        .unwrap();
    let ack: Value = serde_json::from_slice(&first.payload).unwrap();
    assert_eq!(ack["seq"], mine.sequence, "only its own answers: {ack}");
    let log = server_log(&stack);
    assert!(log.contains("Publish Violation") && log.contains("Subscription Violation"));
}

#[tokio::test]
async fn strangers_and_withdrawn_producers_cannot_connect() {
    let stack = Stack::start().await;
    let (auth, _) = stack.auth.as_ref().unwrap();
    let url = stack.nats.url();

    let err = async_nats::connect(&url).await.unwrap_err();
    assert_eq!(err.kind(), ConnectErrorKind::AuthorizationViolation);
    let stranger = nkeys::KeyPair::new_user().seed().unwrap();
    let err = ConnectOptions::with_nkey(stranger)
        .connect(&url)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ConnectErrorKind::AuthorizationViolation);

    // A producer whose identity is withdrawn is cut off at the reload, and stays out.
    let own = partition(TENANT, SOURCE);
    let (_, seed) = atp::admin::add_nats_producer(&url, auth, &own, None)
        .await
        .unwrap();
    let (_client, mut events) = connect_as(&url, &seed).await.unwrap();
    assert_eq!(auth.remove_producer(&own).unwrap(), 1);
    atp::admin::reload_nats(&url, auth).await.unwrap();
    told(&mut events, "disconnected").await;
    let err = connect_as(&url, &seed).await.unwrap_err();
    assert_eq!(err.kind(), ConnectErrorKind::AuthorizationViolation);
}

#[tokio::test]
async fn each_role_connects_as_itself_with_no_more_than_it_needs() {
    let stack = Stack::start().await;
    let (auth, _) = stack.auth.as_ref().unwrap();
    let p = partition(TENANT, SOURCE);

    // The whole pipeline runs with every role on its own identity, and the server refuses none
    // of what it does.
    let running = stack.serve(Roles::ALL).await;
    stack.publish(&p, &stack.sign(stack.event("roles-1"))).await;
    eventually("the record is projected and checkpointed", || async {
        (stack.projected_records(TENANT).await == 1 && stack.checkpoint_size(&p).await == 1)
            .then_some(())
    })
    .await;
    let log = server_log(&stack);
    assert!(!log.contains("Violation"), "{log}");

    // Only ingest may write the ledger; no worker may delete a stream.
    stack.expect_violations();
    for w in Role::ALL {
        let seed = auth.seed_path(&Identity::Role(w));
        let (client, mut events) = connect_as(&stack.nats.url(), &seed).await.unwrap();
        if w != Role::Ingest {
            client
                .publish(subjects::ledger(&p), "forged".into())
                .await
                .unwrap();
            client.flush().await.unwrap();
            let refusal = told(&mut events, "Permissions Violation for Publish").await;
            assert!(refusal.contains("atp.ledger.acme.crm"), "{w:?}: {refusal}");
        }
        client
            .publish("$JS.API.STREAM.DELETE.ATP_LEDGER", "".into())
            .await
            .unwrap();
        client.flush().await.unwrap();
        told(&mut events, "Permissions Violation for Publish").await;
        // Only ingest reads what producers sent; only the exporter, the gateway and the
        // lifecycle role (which withdraws bundles disclosing erased values) read bundles.
        let mut unread = vec!["OBJ_ATP_EXPORT_BUNDLES"];
        if w != Role::Ingest {
            unread.push(streams::INGRESS);
        }
        for stream in unread {
            if stream == "OBJ_ATP_EXPORT_BUNDLES"
                && matches!(w, Role::Gateway | Role::Exporter | Role::Lifecycle)
            {
                continue;
            }
            client
                .publish(format!("$JS.API.CONSUMER.CREATE.{stream}"), "{}".into())
                .await
                .unwrap();
            client.flush().await.unwrap();
            let refusal = told(&mut events, "Permissions Violation for Publish").await;
            assert!(refusal.contains(stream), "{w:?}: {refusal}");
        }
    }
    assert_eq!(stack.ledger_len(&p).await, 1);
    running.stop().await;
}

/// The official Python client, as a producer's engineer would use it: `ATP_NATS_PY` (what
/// `ops/bin/test` installs; then a failure is a failure), else `python3` if it has `nats`, else
/// `None` after saying why the test is skipped.
fn nats_py() -> Option<String> {
    if let Ok(python) = std::env::var("ATP_NATS_PY") {
        return Some(python);
    }
    let found = std::process::Command::new("python3")
        .args(["-c", "import nats, nkeys"])
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some("python3".to_owned());
    }
    eprintln!(
        "skipped: ATP_NATS_PY is not set and there is no python3 with nats-py on PATH; \
         ops/bin/test installs one (ops/bin/install-nats-py) and sets the variable"
    );
    None
}

/// Connects with the seed file as written, publishes one event with JetStream (printing the
/// acknowledged sequence), then opens connections until the server refuses one and prints how
/// many it took and the server's words.
const NATS_PY_PRODUCER: &str = r#"
import asyncio, json, sys
import nats
async def main():
    url, seed, subject, body = sys.argv[1], sys.argv[2], sys.argv[3], open(sys.argv[4], "rb").read()
    nc = await nats.connect(url, nkeys_seed=seed)
    ack = await nc.jetstream().publish(subject, body, timeout=10)
    opened, refusal = [nc], None
    while refusal is None and len(opened) < 100:
        try:
            opened.append(await nats.connect(url, nkeys_seed=seed, allow_reconnect=False,
                                             max_reconnect_attempts=0, connect_timeout=5))
        except Exception as e:
            refusal = str(e)
    print(json.dumps({"seq": ack.seq, "stream": ack.stream, "connections": len(opened),
                      "refusal": refusal}))
    for c in opened:
        await c.close()
asyncio.run(main())
"#;

#[tokio::test]
async fn nats_py_connects_with_the_seed_as_written_and_a_tenant_fills_only_its_own_connections() {
    let Some(python) = nats_py() else { return };
    let stack = Stack::start().await;
    // The refused connections are logged as errors by the server, on purpose.
    stack.expect_violations();
    let (auth, dir) = stack.auth.as_ref().unwrap();
    let url = stack.nats.url();
    let own = partition(TENANT, SOURCE);
    let (_, seed) = atp::admin::add_nats_producer(&url, auth, &own, None)
        .await
        .unwrap();
    let other = partition("globex", SOURCE);
    let (_, other_seed) = atp::admin::add_nats_producer(&url, auth, &other, None)
        .await
        .unwrap();
    auth.set_tenant_limits(
        &own.tenant,
        atp_nats::auth::TenantLimits {
            max_connections: 3,
            ..Default::default()
        },
    )
    .unwrap();
    atp::admin::reload_nats(&url, auth).await.unwrap();

    // The tenant at its limit: the other tenant's producer connects and publishes as usual.
    let body = dir.path().join("event.json");
    std::fs::write(
        &body,
        serde_json::to_vec(&stack.sign(stack.event("py-1"))).unwrap(),
    )
    .unwrap();
    let (held, _) = connect_as(&url, &seed).await.unwrap();
    held.flush().await.unwrap();
    let out = tokio::process::Command::new(&python)
        .args(["-c", NATS_PY_PRODUCER, &url])
        .arg(&seed)
        .arg(subjects::ingress(&own))
        .arg(&body)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "nats-py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["stream"], streams::INGRESS, "{report}");
    assert!(report["seq"].as_u64().unwrap() >= 1, "{report}");
    // One connection held here, two by nats-py: the fourth is refused by the server.
    assert_eq!(report["connections"], 2, "{report}");
    let refusal = report["refusal"].as_str().unwrap_or_default();
    assert!(
        refusal.contains("maximum account active connections exceeded"),
        "{report}"
    );
    let (other_client, _) = connect_as(&url, &other_seed)
        .await
        .expect("another tenant's producer is not held back");
    other_client.flush().await.unwrap();
    drop(held);
}
