//! Streams as data: `apply` is idempotent and reports drift; services refuse drifted streams.

use atp_core::role::Roles;
use atp_nats::streams::{self, Applied};
use atp_tests::*;

#[tokio::test]
async fn apply_is_idempotent_and_serve_refuses_a_drifted_stream() {
    let stack = Stack::start().await;
    // The harness applied once already: a second apply changes nothing.
    let again = streams::apply(&stack.js, 1).await.unwrap();
    assert!(
        again.iter().all(|(_, a)| *a == Applied::Unchanged),
        "{again:?}"
    );

    // Someone loosens the ledger's protection by hand.
    let mut ledger = stack.js.get_stream(streams::LEDGER).await.unwrap();
    let mut config = ledger.info().await.unwrap().config.clone();
    config.allow_direct = false;
    config.max_messages_per_subject = 5;
    stack.js.update_stream(config).await.unwrap();

    let refused = atp::serve::start(stack.serve_config(Roles::ALL))
        .await
        .err()
        .expect("serve refuses to start");
    let msg = refused.to_string();
    assert!(
        msg.contains("ATP_LEDGER") && msg.contains("drifted") && msg.contains("atp streams apply"),
        "{msg}"
    );

    let fixed = streams::apply(&stack.js, 1).await.unwrap();
    let ledger_fix = fixed.iter().find(|(n, _)| n == streams::LEDGER).unwrap();
    assert!(
        matches!(&ledger_fix.1, Applied::Updated(fields) if fields.len() == 2),
        "{fixed:?}"
    );
    let running = stack.serve(Roles::ALL).await;
    running.stop().await;
}
