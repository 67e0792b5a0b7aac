//! The producer registry's cache is supervised: a revocation reaches it within the stated
//! bound while NATS is healthy, and still does after the server it watched restarted.

use std::future::Future;
use std::time::Duration;

use atp_nats::registry::{REVOCATION_BOUND, RegistryCache};
use atp_nats::streams;
use atp_tests::*;
use ed25519_dalek::SigningKey;
use futures::TryStreamExt;

/// Polls `cond` until it holds or `bound` passes (then fails, naming `what`); returns how long
/// it took.
async fn within<F, Fut>(bound: Duration, what: &str, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    loop {
        if cond().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < bound, "{what} took longer than {bound:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn revoked(cache: &RegistryCache, key_id: &str) -> Option<bool> {
    let reg = cache.cached(&partition(TENANT, SOURCE))?;
    Some(reg.key(key_id)?.revoked_at.is_some())
}

#[tokio::test]
async fn a_revocation_reaches_the_registry_cache_within_its_bound_even_after_nats_restarts() {
    let mut stack = Stack::start().await;
    let kv = stack
        .js
        .get_key_value(streams::PRODUCERS_BUCKET)
        .await
        .unwrap();
    let cache = RegistryCache::start(kv).await.unwrap();
    within(REVOCATION_BOUND, "the first replay", || async {
        revoked(&cache, KEY_ID) == Some(false)
    })
    .await;

    // A healthy watch: milliseconds; a few seconds allowed for a loaded machine.
    atp::admin::revoke_key(&stack.js, TENANT, SOURCE, KEY_ID)
        .await
        .unwrap();
    let took = within(
        Duration::from_secs(5),
        "a revocation over the watch",
        || async { revoked(&cache, KEY_ID) == Some(true) },
    )
    .await;
    eprintln!("revocation over a healthy watch: {took:?}");

    // The server the watch was reading restarts; a second key is added and revoked after it.
    stack.nats.restart().await.expect("nats-server restarts");
    let second = SigningKey::from_bytes(&[21u8; 32])
        .verifying_key()
        .to_bytes();
    eventually("JetStream answers again", || async {
        let kv = stack
            .js
            .get_key_value(streams::PRODUCERS_BUCKET)
            .await
            .ok()?;
        kv.status().await.ok()
    })
    .await;
    atp::admin::add_producer(
        &stack.js,
        TENANT,
        SOURCE,
        SOURCE_URI,
        Some(("acme-crm-2", second)),
    )
    .await
    .unwrap();
    atp::admin::revoke_key(&stack.js, TENANT, SOURCE, "acme-crm-2")
        .await
        .unwrap();
    let took = within(
        REVOCATION_BOUND,
        "a revocation after the restart",
        || async { revoked(&cache, "acme-crm-2") == Some(true) },
    )
    .await;
    eprintln!("revocation after a nats-server restart: {took:?}");

    // The watch's consumer is deleted under it: whether the client recreates it, the
    // supervisor opens a new watch or the periodic reload repairs the cache, a revocation
    // applies within the bound.
    let stream = stack
        .js
        .get_stream(format!("KV_{}", streams::PRODUCERS_BUCKET))
        .await
        .unwrap();
    let names: Vec<String> = stream.consumer_names().try_collect().await.unwrap();
    assert!(!names.is_empty(), "the cache watches through a consumer");
    for name in names {
        stream.delete_consumer(&name).await.unwrap();
    }
    let third = SigningKey::from_bytes(&[22u8; 32])
        .verifying_key()
        .to_bytes();
    atp::admin::add_producer(
        &stack.js,
        TENANT,
        SOURCE,
        SOURCE_URI,
        Some(("acme-crm-3", third)),
    )
    .await
    .unwrap();
    atp::admin::revoke_key(&stack.js, TENANT, SOURCE, "acme-crm-3")
        .await
        .unwrap();
    let took = within(
        REVOCATION_BOUND,
        "a revocation after the consumer was lost",
        || async { revoked(&cache, "acme-crm-3") == Some(true) },
    )
    .await;
    eprintln!("revocation after the watch's consumer was deleted: {took:?}");
    assert_eq!(
        revoked(&cache, KEY_ID),
        Some(true),
        "the first stays revoked"
    );
}
