//! The server behaviour ATP's no-fork guarantee rests on: one atomic batch across partitions,
//! each partition's first message expecting its last sequence; any stale expectation rejects
//! the whole batch and stores nothing.

use async_nats::HeaderMap;
use atp_nats::{Append, AppendError, Outgoing, append_atomic, streams};
use atp_tests::*;

fn msgs(n: usize) -> Vec<Outgoing> {
    (0..n)
        .map(|i| Outgoing {
            headers: HeaderMap::new(),
            payload: format!("m{i}").into(),
        })
        .collect()
}

fn append(subject: &str, expected_last: u64, n: usize) -> Append {
    Append {
        subject: subject.to_owned(),
        expected_last,
        msgs: msgs(n),
    }
}

#[tokio::test]
async fn a_stale_expectation_on_any_subject_rejects_the_whole_batch() {
    let stack = Stack::start().await;
    let (a, b) = ("atp.ledger.acme.a", "atp.ledger.acme.b");
    let stored = || async {
        let mut s = stack.js.get_stream(streams::LEDGER).await.unwrap();
        s.info().await.unwrap().state.messages
    };

    let tails = append_atomic(&stack.js, vec![append(a, 0, 2), append(b, 0, 3)])
        .await
        .unwrap();
    assert_eq!(
        tails,
        [2, 5],
        "each subject's new tail is the sequence of its last message"
    );
    let tails = append_atomic(&stack.js, vec![append(a, 2, 1), append(b, 5, 1)])
        .await
        .unwrap();
    assert_eq!(tails, [6, 7]);

    // b's expectation is stale (another writer appended): nothing of the batch is stored.
    let err = append_atomic(&stack.js, vec![append(a, 6, 3), append(b, 5, 1)])
        .await
        .unwrap_err();
    assert!(matches!(err, AppendError::WrongLastSequence), "{err}");
    assert_eq!(stored().await, 7);
    let err = append_atomic(&stack.js, vec![append(a, 2, 1)])
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppendError::WrongLastSequence),
        "a single message is checked too: {err}"
    );
    assert_eq!(stored().await, 7);

    // Empty appends are skipped and keep their tail.
    let tails = append_atomic(&stack.js, vec![append(a, 6, 0), append(b, 7, 2)])
        .await
        .unwrap();
    assert_eq!(tails, [6, 9]);
    let over = append_atomic(&stack.js, vec![append(a, 6, 1001)])
        .await
        .unwrap_err();
    assert!(matches!(over, AppendError::TooMany(1001)));
}
