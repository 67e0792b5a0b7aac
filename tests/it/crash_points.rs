//! A crash at each place `docs/architecture.md` says one matters ("Where a crash matters"),
//! made exact by the crash points of `atp_telemetry::failpoint`: the role runs in a child
//! `atp serve` (built with `--features failpoints`) armed by `ATP_FAILPOINTS`, aborts there,
//! and is started again unarmed. Each test then checks that nothing was lost or doubled.
//! (`crash.rs` kills at random moments too; these kill between two particular writes.)

use std::path::Path;

use atp_gateway::Permission;
use atp_telemetry::failpoint;
use atp_tests::*;
use serde_json::{Value, json};

/// Runs `roles` in a child `atp serve` armed to abort at `point`, and waits until it has.
async fn crash_at(stack: &Stack, roles: &str, point: &str, env: &[(&str, &str)], log: &Path) {
    let mut armed = env.to_vec();
    armed.push((failpoint::ENV, point));
    let mut child = stack.spawn_serve(roles, &armed, log);
    let status = eventually(
        &format!("atp serve --roles {roles} to crash at {point}"),
        || {
            let exited = child.try_wait().unwrap();
            async move { exited }
        },
    )
    .await;
    let said = std::fs::read_to_string(log).unwrap_or_default();
    assert!(
        !status.success() && said.contains(&format!("crash point {point} reached")),
        "{roles} did not crash at {point} ({status}): {said}"
    );
}

/// The roles again, unarmed; the caller waits for what it expects and then drops the child.
fn restart(stack: &Stack, roles: &str, env: &[(&str, &str)], log: &Path) -> tokio::process::Child {
    stack.spawn_serve(roles, env, log)
}

/// Publishes `n` signed events with ids `<prefix>-<i>`.
async fn publish_n(stack: &Stack, n: u64, prefix: &str) {
    let p = partition(TENANT, SOURCE);
    for i in 0..n {
        stack
            .publish(&p, &stack.sign(stack.event(&format!("{prefix}-{i}"))))
            .await;
    }
}

/// Waits until the ledger holds `n` records (the child still running), then checks with a
/// marker that no more arrive: the chain verifies with exactly `n + 1`.
async fn ledger_ends_at(stack: &Stack, n: u64, child: &mut tokio::process::Child, log: &Path) {
    let p = partition(TENANT, SOURCE);
    eventually(&format!("{n} records on the ledger"), || {
        assert_running(child, log);
        async { (stack.ledger_len(&p).await >= n).then_some(()) }
    })
    .await;
    stack.publish(&p, &stack.sign(stack.event("marker"))).await;
    eventually("the marker recorded", || async {
        (stack.ledger_len(&p).await > n).then_some(())
    })
    .await;
    assert_eq!(
        stack.verify_chain(&p).await,
        n + 1,
        "every event exactly once"
    );
}

#[tokio::test]
async fn ingest_crashing_after_its_ledger_commit_before_its_hint_loses_and_doubles_nothing() {
    let stack = Stack::start().await;
    const N: u64 = 400;
    publish_n(&stack, N, "e").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("ingest.log");
    crash_at(&stack, "ingest", failpoint::INGEST_BEFORE_HINT, &[], &log).await;
    let p = partition(TENANT, SOURCE);
    assert!(stack.ledger_len(&p).await > 0, "a batch was on the ledger");
    let mut ingest = restart(&stack, "ingest", &[], &log);
    ledger_ends_at(&stack, N, &mut ingest, &log).await;
    assert_eq!(stack.rejected_len(&p).await, 0);
}

#[tokio::test]
async fn ingest_crashing_between_a_partitions_rejections_and_records_loses_and_doubles_nothing() {
    let stack = Stack::start().await;
    let p = partition(TENANT, SOURCE);
    const N: u64 = 300;
    let mut bad = 0;
    for i in 0..N {
        let event = stack.event(&format!("e-{i}"));
        // Every fifth unsigned: SIGNATURE_MISSING, in the same batches as the good ones.
        if i % 5 == 0 {
            bad += 1;
            stack.publish(&p, &event).await;
        } else {
            stack.publish(&p, &stack.sign(event)).await;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("ingest.log");
    let point = failpoint::INGEST_BETWEEN_REJECTIONS_AND_RECORDS;
    crash_at(&stack, "ingest", point, &[], &log).await;
    assert!(stack.rejected_len(&p).await > 0, "rejections committed");
    assert_eq!(stack.ledger_len(&p).await, 0, "their batch's records not");
    let mut ingest = restart(&stack, "ingest", &[], &log);
    ledger_ends_at(&stack, N - bad, &mut ingest, &log).await;
    assert_eq!(
        stack.rejected_len(&p).await as u64,
        bad,
        "one rejection each"
    );
}

#[tokio::test]
async fn ingest_crashing_as_a_tenants_lane_opens_loses_and_doubles_nothing() {
    let stack = Stack::start().await;
    const N: u64 = 200;
    publish_n(&stack, N, "e").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("ingest.log");
    crash_at(
        &stack,
        "ingest",
        failpoint::INGEST_LANE_HINT_STORED,
        &[],
        &log,
    )
    .await;
    let mut ingest = restart(&stack, "ingest", &[], &log);
    ledger_ends_at(&stack, N, &mut ingest, &log).await;
}

/// Records on the ledger from an ingest in this process, for the roles after it.
async fn on_the_ledger(stack: &Stack, n: u64) -> atp::serve::Running {
    let ingest = stack.serve(ingest_only()).await;
    publish_n(stack, n, "e").await;
    let p = partition(TENANT, SOURCE);
    eventually("the ledger written", || async {
        (stack.ledger_len(&p).await >= n).then_some(())
    })
    .await;
    ingest
}

/// Rows of the partition in the read model, and how many distinct chain positions they hold.
async fn rows(stack: &Stack) -> (i64, i64) {
    sqlx::query_as(
        "SELECT count(*), count(DISTINCT chain_index) FROM records \
         WHERE tenant_id = $1 AND source_id = $2",
    )
    .bind(TENANT)
    .bind(SOURCE)
    .fetch_one(&stack.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn the_projector_crashing_before_its_commit_loses_and_doubles_nothing() {
    let stack = Stack::start().await;
    const N: u64 = 500;
    let ingest = on_the_ledger(&stack, N).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("projector.log");
    crash_at(
        &stack,
        "projector",
        failpoint::PROJECTOR_BEFORE_COMMIT,
        &[],
        &log,
    )
    .await;
    assert_eq!(
        rows(&stack).await.0,
        0,
        "the uncommitted batch left nothing"
    );
    let mut projector = restart(&stack, "projector", &[], &log);
    eventually("every record projected", || {
        assert_running(&mut projector, &log);
        async { (stack.projected_records(TENANT).await >= N as i64).then_some(()) }
    })
    .await;
    assert_eq!(
        rows(&stack).await,
        (N as i64, N as i64),
        "one row per record"
    );
    ingest.stop().await;
}

#[tokio::test]
async fn the_projector_crashing_after_a_dead_letter_before_its_commit_letters_it_once() {
    let stack = Stack::start().await;
    // The database refuses one record as data.
    stack.refuse_poison().await;
    let ingest = stack.serve(ingest_only()).await;
    let p = partition(TENANT, SOURCE);
    for id in ["good-1", "poison", "good-2"] {
        stack.publish(&p, &stack.sign(stack.event(id))).await;
    }
    eventually("the ledger written", || async {
        (stack.ledger_len(&p).await >= 3).then_some(())
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("projector.log");
    let point = failpoint::PROJECTOR_AFTER_DEAD_LETTER;
    crash_at(&stack, "projector", point, &[], &log).await;
    let mut projector = restart(&stack, "projector", &[], &log);
    eventually("both good records projected", || {
        assert_running(&mut projector, &log);
        async { (stack.projected_records(TENANT).await >= 2).then_some(()) }
    })
    .await;
    assert_eq!(rows(&stack).await, (2, 2), "the good records once each");
    let letters = atp_nats::dlq::list(&stack.js, &atp_nats::dlq::Filter::default())
        .await
        .unwrap();
    assert_eq!(letters.len(), 1, "one letter for the poison: {letters:?}");
    ingest.stop().await;
}

/// The checkpoints published for the partition on ATP_CHECKPOINTS, and how many distinct sizes
/// they have: a checkpoint issued again after a crash must not be stored twice.
async fn published_checkpoints(stack: &Stack) -> (usize, usize) {
    let p = partition(TENANT, SOURCE);
    let published = stack
        .read_subject(
            atp_nats::streams::CHECKPOINTS,
            &atp_nats::subjects::checkpoint(&p),
        )
        .await;
    let sizes: std::collections::HashSet<_> = published
        .iter()
        .map(|(_, _, note)| {
            String::from_utf8_lossy(note)
                .lines()
                .nth(1)
                .map(str::to_owned)
        })
        .collect();
    (published.len(), sizes.len())
}

async fn integrity_crash(point: &str) {
    let stack = Stack::start().await;
    const N: u64 = 300;
    let ingest = on_the_ledger(&stack, N).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("integrity.log");
    let env = [("ATP_CHECKPOINT_EVERY_MS", "100")];
    crash_at(&stack, "integrity", point, &env, &log).await;
    let mut integrity = restart(&stack, "integrity", &env, &log);
    let p = partition(TENANT, SOURCE);
    eventually("a checkpoint of the whole log", || {
        assert_running(&mut integrity, &log);
        async { (stack.checkpoint_size(&p).await >= N).then_some(()) }
    })
    .await;
    let (published, sizes) = published_checkpoints(&stack).await;
    assert_eq!(published, sizes, "no checkpoint published twice");
    assert_eq!(stack.verify_chain(&p).await, N, "the log verifies");
    ingest.stop().await;
}

#[tokio::test]
async fn integrity_crashing_after_its_tiles_before_publishing_the_checkpoint_signs_it_on_restart() {
    integrity_crash(failpoint::INTEGRITY_BEFORE_PUBLISH).await;
}

#[tokio::test]
async fn integrity_crashing_after_publishing_before_storing_the_checkpoint_issues_it_once() {
    integrity_crash(failpoint::INTEGRITY_BEFORE_STORE).await;
}

/// Publishes `n` events and waits until they are projected and checkpointed: ready to export.
async fn covered(stack: &Stack, n: u64) {
    publish_n(stack, n, "e").await;
    let p = partition(TENANT, SOURCE);
    eventually("records projected and checkpointed", || async {
        (stack.projected_records(TENANT).await as u64 >= n && stack.checkpoint_size(&p).await >= n)
            .then_some(())
    })
    .await;
}

async fn exporter_crash(point: &str) {
    let stack = Stack::start().await;
    const N: u64 = 120;
    let running = stack
        .serve(roles("gateway,ingest,projector,integrity"))
        .await;
    covered(&stack, N).await;
    let api = Api::new(&running);
    let auditor = stack.token(TENANT, Permission::Auditor);
    let queued = api
        .post_json(
            "/api/v1/exports",
            &auditor,
            &json!({ "selection": { "sourceId": SOURCE } }),
        )
        .await;
    let id = queued["exportId"].as_str().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("exporter.log");
    let env = [("ATP_EXPORT_ACK_WAIT_SECS", "3")];
    crash_at(&stack, "exporter", point, &env, &log).await;
    let mut exporter = restart(&stack, "exporter", &env, &log);
    let done: Value = eventually(&format!("export {id} completed"), || {
        assert_running(&mut exporter, &log);
        let api = &api;
        let (auditor, id) = (&auditor, &id);
        async move {
            let s = api
                .get_json(&format!("/api/v1/exports/{id}"), auditor)
                .await;
            (s["status"] == "completed").then_some(s)
        }
    })
    .await;
    assert_eq!(done["recordCount"], json!(N), "{done}");
    let announced = |id: String| {
        let stack = &stack;
        async move {
            let subject =
                atp_nats::subjects::export_completed(&atp_core::TenantId::new(TENANT).unwrap());
            let all = stack
                .read_subject(atp_nats::streams::EXPORTS, &subject)
                .await;
            all.iter()
                .filter(|(_, _, body)| {
                    serde_json::from_slice::<Value>(body).unwrap()["exportId"] == id.as_str()
                })
                .count()
        }
    };
    eventually("the export announced", || async {
        (announced(id.clone()).await >= 1).then_some(())
    })
    .await;
    // A second export through the same exporter, announced after the first was settled.
    let second = api
        .post_json(
            "/api/v1/exports",
            &auditor,
            &json!({ "selection": { "sourceId": SOURCE } }),
        )
        .await;
    let second = second["exportId"].as_str().unwrap().to_owned();
    eventually("the second export announced", || {
        assert_running(&mut exporter, &log);
        let second = second.clone();
        let announced = &announced;
        async move { (announced(second).await >= 1).then_some(()) }
    })
    .await;
    assert_eq!(announced(id.clone()).await, 1, "the first announced once");
    running.stop().await;
}

#[tokio::test]
async fn the_exporter_crashing_after_storing_a_bundle_before_its_row_completes_it_on_redelivery() {
    exporter_crash(failpoint::EXPORTER_BEFORE_ROW).await;
}

#[tokio::test]
async fn the_exporter_crashing_after_its_row_before_the_ack_announces_once() {
    exporter_crash(failpoint::EXPORTER_BEFORE_ACK).await;
}

#[tokio::test]
async fn the_exporter_crashing_before_storing_a_bundle_packages_it_again_on_redelivery() {
    exporter_crash(failpoint::EXPORTER_BEFORE_STORE).await;
}

/// The partition's rows in the read model, every column that replay writes.
async fn all_rows(stack: &Stack) -> Vec<(i64, Vec<u8>, Vec<u8>, i64)> {
    sqlx::query_as(
        "SELECT chain_index, digest, record, ledger_seq FROM records \
         WHERE tenant_id = $1 AND source_id = $2 ORDER BY chain_index",
    )
    .bind(TENANT)
    .bind(SOURCE)
    .fetch_all(&stack.pool)
    .await
    .unwrap()
}

/// `atp replay` in its own process, armed to crash at `point` or not: did it succeed, and what
/// it said on stderr.
fn atp_replay(stack: &Stack, point: Option<&str>) -> (bool, String) {
    let out = std::process::Command::new(atp_binary())
        .arg("replay")
        .envs(stack.cli_env())
        .envs(point.map(|p| (failpoint::ENV, p)))
        .env("ATP_LOG", "warn")
        .output()
        .expect("atp runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn replay_crashing_before_its_swap_leaves_the_live_read_model_and_runs_again() {
    let stack = Stack::start().await;
    const N: u64 = 150;
    let running = stack.serve(roles("ingest,projector")).await;
    publish_n(&stack, N, "e").await;
    eventually("everything projected", || async {
        (stack.projected_records(TENANT).await >= N as i64).then_some(())
    })
    .await;
    running.stop().await;
    let before = all_rows(&stack).await;
    assert_eq!(before.len() as u64, N);

    let (ok, said) = atp_replay(&stack, Some(failpoint::REPLAY_BEFORE_SWAP));
    assert!(
        !ok && said.contains("crash point replay-before-swap reached"),
        "replay did not crash before its swap: {said}"
    );
    assert_eq!(
        all_rows(&stack).await,
        before,
        "the live read model is untouched"
    );
    let (ok, said) = atp_replay(&stack, None);
    assert!(ok, "the replay after the crash: {said}");
    assert_eq!(all_rows(&stack).await, before, "the same rows, rebuilt");
}

#[tokio::test]
async fn the_gateway_crashing_after_publishing_an_export_request_before_its_row_loses_nothing() {
    let stack = Stack::start().await;
    const N: u64 = 60;
    let running = stack.serve(roles("ingest,projector,integrity")).await;
    covered(&stack, N).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("gateway.log");
    let port = atp_devstack::free_port().unwrap();
    let listen = format!("127.0.0.1:{port}");
    let key = dir.path().join("attestation.pem");
    atp::keys::write_private(&key, &atp::keys::generate()).unwrap();
    let env = [
        ("ATP_LISTEN", listen.as_str()),
        ("ATP_GATEWAY_KEY", key.to_str().unwrap()),
        (
            "ATP_TOKEN_KEYS",
            &format!(
                "{}={}",
                atp::dev::ISSUER_KID,
                atp::keys::public_b64(&stack.issuer)
            ),
        ),
    ];
    let mut armed = env.to_vec();
    armed.push((failpoint::ENV, failpoint::GATEWAY_BEFORE_EXPORT_ROW));
    let mut gateway = stack.spawn_serve("gateway", &armed, &log);
    let base = format!("http://{listen}");
    let http = reqwest::Client::new();
    let auditor = stack.token(TENANT, Permission::Auditor);
    let request = || {
        http.post(format!("{base}/api/v1/exports"))
            .bearer_auth(&auditor)
            .json(&json!({ "selection": { "sourceId": SOURCE } }))
            .send()
    };
    // The request is published, then the gateway dies before answering.
    eventually("the gateway up and crashed by an export request", || {
        let exited = gateway.try_wait().unwrap();
        let request = &request;
        async move {
            if exited.is_some() {
                return Some(());
            }
            let _ = request().await;
            None
        }
    })
    .await;
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        said.contains("crash point gateway-before-export-row reached"),
        "{said}"
    );
    // The exporter takes the request from the queue and writes its row itself.
    let exporter = stack.serve(roles("exporter")).await;
    let mut gateway = restart(&stack, "gateway", &env, &log);
    let done = eventually("the orphaned request exported", || {
        assert_running(&mut gateway, &log);
        let (http, base, auditor) = (&http, &base, &auditor);
        async move {
            let list: Value = http
                .get(format!("{base}/api/v1/exports"))
                .bearer_auth(auditor)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let first = list["items"].as_array()?.first()?.clone();
            (first["status"] == "completed").then_some(first)
        }
    })
    .await;
    assert_eq!(done["recordCount"], json!(N), "{done}");
    exporter.stop().await;
    running.stop().await;
}

#[tokio::test]
async fn an_erasure_crashing_between_its_keys_resumes_to_completion() {
    use crate::privacy::{ada_and_bob, ask, request_reaches, set_crm_policy};
    let stack = Stack::start().await;
    set_crm_policy(&stack).await;
    let running = stack
        .serve(roles("gateway,ingest,projector,integrity"))
        .await;
    let api = Api::new(&running);
    ada_and_bob(&stack).await;
    let privacy = stack.token(TENANT, Permission::Privacy);
    let asked: Value = ask(&api, &privacy, "erasure", "u-ada").await;
    let id = asked["requestId"].as_str().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("lifecycle.log");
    let env = [("ATP_ERASURE_RESCRUB_MS", "200")];
    // Ada has two keys (one per retention policy): the crash comes after the first.
    crash_at(&stack, "lifecycle", failpoint::ERASURE_MID_KEYS, &env, &log).await;
    let mid = api
        .get_json(&format!("/api/v1/privacy/requests/{id}"), &privacy)
        .await;
    assert_eq!(mid["state"], "queued", "{mid}");
    assert_eq!(
        mid["keyIds"].as_array().map(Vec::len),
        Some(2),
        "every key id recorded before the first went: {mid}"
    );
    let mut lifecycle = restart(&stack, "lifecycle", &env, &log);
    let done = eventually("the erasure resumed and done", || {
        assert_running(&mut lifecycle, &log);
        let api = &api;
        let (privacy, id) = (&privacy, &id);
        async move {
            let r = api
                .get_json(&format!("/api/v1/privacy/requests/{id}"), privacy)
                .await;
            (r["state"] == "done").then_some(r)
        }
    })
    .await;
    assert_eq!(done["recordsAffected"], 2, "{done}");
    let _ = request_reaches(&api, &privacy, &id, "done").await;
    let page = api
        .get_json("/api/v1/audit/records?actorId=u-bob", &privacy)
        .await;
    assert_eq!(
        page["items"][0]["data"]["attributes"]["email"],
        "bob@example.com"
    );
    let keys = atp_nats::subject_keys::bucket(&stack.js).await.unwrap();
    let tenant = atp_core::TenantId::new(TENANT).unwrap();
    for kid in done["keyIds"].as_array().into_iter().flatten() {
        assert!(
            atp_nats::subject_keys::wrapped(&keys, &tenant, kid.as_str().unwrap())
                .await
                .unwrap()
                .is_none()
        );
    }
    // Exactly one attestation, though the step before it ran twice.
    let trail = eventually("the attestation projected", || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM records WHERE tenant_id = $1 AND source_id = 'atp-admin' \
             AND event_type = 'dev.atp.admin.v1' AND event_id LIKE 'erasure-%'",
        )
        .bind(TENANT)
        .fetch_one(&stack.pool)
        .await
        .unwrap();
        (n >= 1).then_some(n)
    })
    .await;
    assert_eq!(trail, 1);
    drop(lifecycle);
    running.stop().await;
}
