//! nats-server itself refuses what an identity may not do: a producer outside its partition, a
//! stranger, a withdrawn producer, a worker outside its role (CONTRACT §1, ADR 0008).

use std::path::Path;

use async_nats::{Client, ConnectErrorKind, ConnectOptions, Event};
use atp::serve::Roles;
use atp_nats::auth::{Identity, Worker};
use atp_nats::{streams, subjects};
use atp_tests::{Nats, PATIENCE, SOURCE, Stack, TENANT, eventually, partition};
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

    // It reads nothing: not the ledger, not other clients' inboxes.
    for subject in ["atp.ledger.>", "atp.ingress.>", "_INBOX.>"] {
        let _ = client.subscribe(subject).await;
        client.flush().await.unwrap();
        let refusal = told(&mut events, "Permissions Violation for Subscription").await;
        assert!(refusal.contains(subject), "{refusal}");
    }
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
    for w in Worker::ALL {
        let seed = auth.seed_path(&Identity::Worker(w));
        let (client, mut events) = connect_as(&stack.nats.url(), &seed).await.unwrap();
        if w != Worker::Ingest {
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
        // Only ingest reads what producers sent; only the exporter and the gateway read bundles.
        let mut unread = vec!["OBJ_ATP_EXPORT_BUNDLES"];
        if w != Worker::Ingest {
            unread.push(streams::INGRESS);
        }
        for stream in unread {
            if stream == "OBJ_ATP_EXPORT_BUNDLES" && matches!(w, Worker::Gateway | Worker::Exporter)
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
