//! Integrity end to end: checkpoints cover what was accepted, proofs verify offline with the
//! published keys (and with the `atp` binary, no server), tampering with the ledger raises an
//! alert and halts the log, and key rotation keeps old checkpoints verifiable.

use std::time::Duration;

use atp_core::chain::Digest;
use atp_core::checkpoint::{Checkpoint, TlogProof, verify_record};
use atp_core::merkle;
use atp_core::note::Verifier;
use atp_core::record::{self, Record};
use atp_core::role::Roles;
use atp_gateway::Permission;
use atp_nats::integrity::Alert;
use atp_nats::{streams, subjects};
use atp_tests::*;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::Value;

async fn publish_signed(stack: &Stack, n: usize, prefix: &str) {
    let p = partition(TENANT, SOURCE);
    for i in 0..n {
        let ev = stack.sign(stack.event(&format!("{prefix}-{i}")));
        stack.publish(&p, &ev).await;
    }
}

/// Runs `atp verify chain` on the test partition: (exit success, its JSON report).
fn verify_chain_cli(stack: &Stack) -> (bool, Value) {
    let out = std::process::Command::new(atp_binary())
        .args(["verify", "chain", "--tenant", TENANT, "--source", SOURCE])
        .envs(stack.cli_env())
        .output()
        .unwrap();
    (
        out.status.success(),
        serde_json::from_slice(&out.stdout).unwrap(),
    )
}

/// Waits until a checkpoint covers at least `size` records; returns its size.
async fn checkpoint_covering(stack: &Stack, size: u64) -> u64 {
    let p = partition(TENANT, SOURCE);
    eventually(&format!("a checkpoint covering {size} records"), || async {
        let s = stack.checkpoint_size(&p).await;
        (s >= size).then_some(s)
    })
    .await
}

/// The published keys' note verifiers, from the public JWKS.
pub(crate) async fn published_verifiers(api: &Api) -> (Vec<Verifier>, Value) {
    let jwks: Value =
        serde_json::from_str(&api.get_public_text("/api/v1/integrity/keys").await).unwrap();
    let verifiers = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            assert_eq!(k["kty"], "OKP");
            assert_eq!(k["crv"], "Ed25519");
            Verifier::parse(k["noteVerifierKey"].as_str().unwrap()).unwrap()
        })
        .collect();
    (verifiers, jwks)
}

async fn record_ids(api: &Api, token: &str) -> Vec<String> {
    let page: Value = api
        .get_json("/api/v1/audit/records?limit=1000", token)
        .await;
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["recordId"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn proofs_checkpoints_and_verification_hold_end_to_end() {
    let stack = Stack::start().await;
    let running = stack.serve(Roles::ALL).await;
    let api = Api::new(&running);
    let auditor = stack.token(TENANT, Permission::Auditor);
    let p = partition(TENANT, SOURCE);
    publish_signed(&stack, 300, "e").await;
    let size = checkpoint_covering(&stack, 300).await;
    assert_eq!(size, 300, "nothing beyond what was accepted");
    eventually("all records projected", || async {
        (stack.projected_records(TENANT).await == 300).then_some(())
    })
    .await;

    // The checkpoint is on ATP_CHECKPOINTS and opens with the published key.
    let (known, jwks) = published_verifiers(&api).await;
    assert_eq!(known.len(), 1);
    assert!(jwks["keys"][0]["notAfter"].is_null());
    let notes = stack
        .read_subject(streams::CHECKPOINTS, &subjects::checkpoint(&p))
        .await;
    let last = String::from_utf8(notes.last().unwrap().2.clone()).unwrap();
    let cp = Checkpoint::open(&last, &known).unwrap();
    assert_eq!(cp.origin, format!("{LOG_NAME}/{TENANT}/{SOURCE}"));
    assert_eq!(cp.size, 300);

    // A proof for every 37th record verifies offline against that checkpoint.
    let ids = record_ids(&api, &auditor).await;
    assert_eq!(ids.len(), 300);
    let mut saved = None;
    for id in ids.iter().step_by(37) {
        let resp = api
            .get(&format!("/api/v1/audit/records/{id}/proof"), &auditor)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let proof: Value = resp.json().await.unwrap();
        let bytes = serde_json::to_vec(&proof["record"]).unwrap();
        let bytes =
            atp_core::canonical::to_canonical(&atp_core::canonical::parse_strict(&bytes).unwrap())
                .unwrap();
        assert_eq!(
            Digest::of(&bytes).to_string(),
            proof["digest"].as_str().unwrap()
        );
        let tlog = TlogProof::parse(proof["tlogProof"].as_str().unwrap()).unwrap();
        let index = proof["leafIndex"].as_u64().unwrap();
        let ok = verify_record(&bytes, &p, index, &tlog, &known, Some(LOG_NAME)).unwrap();
        assert_eq!(ok.checkpoint.size, proof["treeSize"].as_u64().unwrap());
        let hashes: Vec<String> = tlog.hashes.iter().map(|h| B64.encode(h.0)).collect();
        assert_eq!(proof["inclusionProof"], serde_json::json!(hashes));
        saved = Some((proof, bytes));
    }

    // The text form is the C2SP tlog-proof alone.
    let resp = api
        .get(&format!("/api/v1/audit/records/{}/proof", ids[0]), &auditor)
        .header("accept", "text/plain")
        .send()
        .await
        .unwrap();
    let text = resp.text().await.unwrap();
    assert!(text.starts_with("c2sp.org/tlog-proof@v1\nindex "), "{text}");
    TlogProof::parse(&text).unwrap();

    // `atp verify record` checks the saved proof with no server; a changed record fails.
    let (proof, bytes) = saved.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let proof_path = dir.path().join("proof.json");
    std::fs::write(&proof_path, serde_json::to_vec(&proof).unwrap()).unwrap();
    let record_path = dir.path().join("record.json");
    std::fs::write(&record_path, &bytes).unwrap();
    let vkey = known[0].encode();
    let run = |record: &std::path::Path| {
        std::process::Command::new(atp_binary())
            .args(["verify", "record"])
            .arg(record)
            .arg("--proof")
            .arg(&proof_path)
            .args(["--key", &vkey])
            .output()
            .unwrap()
    };
    let out = run(&record_path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let altered = String::from_utf8(bytes.clone())
        .unwrap()
        .replacen("\"alice\"", "\"mallory\"", 1);
    assert_ne!(altered.as_bytes(), bytes.as_slice());
    std::fs::write(&record_path, altered).unwrap();
    let out = run(&record_path);
    assert!(!out.status.success(), "an altered record must not verify");

    // Consistency from an early size to the checkpoint.
    let c: Value = api
        .get_json(
            &format!("/api/v1/integrity/consistency/{TENANT}/{SOURCE}?from=7"),
            &auditor,
        )
        .await;
    let hashes: Vec<Digest> = c["consistencyProof"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| Digest(B64.decode(h.as_str().unwrap()).unwrap().try_into().unwrap()))
        .collect();
    let from_root = Digest(
        B64.decode(c["fromRoot"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap(),
    );
    let to_cp = Checkpoint::open(c["toCheckpoint"].as_str().unwrap(), &known).unwrap();
    merkle::verify_consistency(7, 300, &from_root, &to_cp.root, &hashes).unwrap();

    // Server-side verification of one record and of the whole range.
    let v: Value = api
        .post_json(
            "/api/v1/integrity/verify/record",
            &auditor,
            &serde_json::json!({ "recordId": ids[5] }),
        )
        .await;
    assert_eq!(v["verified"], true, "{v}");
    let range: Value = api
        .post_json(
            "/api/v1/integrity/verify/range",
            &auditor,
            &serde_json::json!({ "sourceId": SOURCE }),
        )
        .await;
    assert_eq!(range["verified"], true, "{range}");
    assert_eq!(range["checked"], 300);

    // `atp verify chain` re-walks the ledger and every checkpoint.
    let (ok, report) = verify_chain_cli(&stack);
    assert!(ok, "{report}");
    assert_eq!(report["records"], 300);
    assert!(report["checkpointsVerified"].as_u64().unwrap() >= 1);

    // Another tenant's checkpoints are not this token's to read.
    let other = api
        .get("/api/v1/integrity/checkpoints/globex/crm", &auditor)
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::FORBIDDEN);

    // A read-model row altered behind ATP's back: the proof is withheld, the range fails there.
    let target: i64 = 42;
    sqlx::query("UPDATE records SET record = convert_to(replace(convert_from(record, 'UTF8'), 'alice', 'eve'), 'UTF8') WHERE tenant_id = $1 AND chain_index = $2")
        .bind(TENANT)
        .bind(target)
        .execute(&stack.pool)
        .await
        .unwrap();
    let (id42,): (String,) =
        sqlx::query_as("SELECT record_id FROM records WHERE tenant_id = $1 AND chain_index = $2")
            .bind(TENANT)
            .bind(target)
            .fetch_one(&stack.pool)
            .await
            .unwrap();
    let resp = api
        .get(&format!("/api/v1/audit/records/{id42}/proof"), &auditor)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "INTEGRITY_ERROR");
    let range: Value = api
        .post_json(
            "/api/v1/integrity/verify/range",
            &auditor,
            &serde_json::json!({ "sourceId": SOURCE }),
        )
        .await;
    assert_eq!(range["verified"], false);
    assert_eq!(range["firstFailure"]["chainIndex"], target);
    running.stop().await;
}

#[tokio::test]
async fn the_record_count_triggers_a_checkpoint_without_waiting_for_the_timer() {
    let stack = Stack::start().await;
    let mut cfg = stack.serve_config(Roles::ALL);
    cfg.integrity.policy = atp_runtime::integrity::CheckpointPolicy {
        every_records: 100,
        every: Duration::from_secs(3600),
    };
    let running = atp::serve::start(cfg).await.unwrap();
    publish_signed(&stack, 250, "c").await;
    // 250 records must bring at least one checkpoint long before the hour is up. How many
    // depends on batch boundaries (a first checkpoint at 160 leaves 90 waiting, under the
    // count), so only the first is awaited.
    let size = checkpoint_covering(&stack, 100).await;
    assert!(size >= 100);
    let sizes: Vec<i64> =
        sqlx::query_scalar("SELECT tree_size FROM checkpoints ORDER BY tree_size")
            .fetch_all(&stack.pool)
            .await
            .unwrap();
    assert!(
        sizes.iter().all(|s| *s >= 100),
        "no checkpoint before 100 records waited: {sizes:?}"
    );
    running.stop().await;
}

/// Publishes a well-formed record straight onto the ledger, as someone with write access to
/// the stream could: it continues the chain's index but not its hashes.
async fn forge_record(stack: &Stack, after: &Record) {
    let p = partition(TENANT, SOURCE);
    let mut forged = after.clone();
    forged.chain_index += 1;
    forged.record_id = ulid::Ulid::generate().to_string();
    forged.prev_hash = Digest::of(b"not the chain hash");
    let sealed = forged.seal().unwrap();
    stack
        .js
        .publish(subjects::ledger(&p), sealed.bytes.into())
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_broken_ledger_raises_an_alert_halts_the_log_and_fails_verify_chain() {
    let stack = Stack::start().await;
    let p = partition(TENANT, SOURCE);
    let mut alerts = stack
        .js
        .client()
        .subscribe(subjects::alert_integrity(&p))
        .await
        .unwrap();
    let running = stack.serve(Roles::ALL).await;
    publish_signed(&stack, 5, "a").await;
    checkpoint_covering(&stack, 5).await;
    let ledger = stack.ledger(&p).await;
    forge_record(&stack, ledger.last().unwrap()).await;

    let msg = tokio::time::timeout(PATIENCE, alerts.next())
        .await
        .expect("an alert within the patience")
        .unwrap();
    let alert: Alert = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(alert.kind, "CHAIN_BROKEN");
    assert_eq!(alert.chain_index, 5);
    assert_eq!(
        (alert.tenant_id.as_str(), alert.source_id.as_str()),
        (TENANT, SOURCE)
    );
    // The alert is also kept on ATP_ALERTS.
    let kept = stack
        .read_subject(streams::ALERTS, &subjects::alert_integrity(&p))
        .await;
    assert_eq!(kept.len(), 1);
    let halted: Option<i64> = eventually("the log halted", || async {
        sqlx::query_scalar::<_, Option<i64>>(
            "SELECT halted_at_index FROM merkle_logs WHERE tenant_id = $1 AND source_id = $2",
        )
        .bind(TENANT)
        .bind(SOURCE)
        .fetch_one(&stack.pool)
        .await
        .unwrap()
        .map(Some)
    })
    .await;
    assert_eq!(halted, Some(5));

    // Later records are not covered by any checkpoint: no signature over what is unverified.
    publish_signed(&stack, 3, "b").await;
    eventually("ingest appended past the forged record", || async {
        (stack.ledger_len(&p).await >= 9).then_some(())
    })
    .await;
    assert_eq!(stack.checkpoint_size(&p).await, 5);

    let (ok, report) = verify_chain_cli(&stack);
    assert!(!ok);
    assert_eq!(report["records"], 5);
    assert!(
        report["problems"][0]
            .as_str()
            .unwrap()
            .starts_with("CHAIN_BROKEN"),
        "{report}"
    );
    running.stop().await;
}

#[tokio::test]
async fn rotation_signs_new_checkpoints_with_the_new_key_and_old_ones_still_verify() {
    let stack = Stack::start().await;
    let p = partition(TENANT, SOURCE);
    let running = stack.serve(Roles::ALL).await;
    let auditor = stack.token(TENANT, Permission::Auditor);
    publish_signed(&stack, 20, "r1").await;
    let old_size = checkpoint_covering(&stack, 20).await;
    let old = atp_store::integrity::checkpoint(&stack.pool, &p, Some(old_size))
        .await
        .unwrap()
        .unwrap();

    let store = atp_runtime::signer::FileKeyStore::open_or_init(
        stack.keys_dir.path(),
        LOG_NAME,
        chrono::Utc::now(),
    )
    .unwrap();
    let new_key = store.rotate(LOG_NAME, chrono::Utc::now()).unwrap();
    assert_ne!(new_key.kid, old.key_id);

    // The running worker notices the rotation (another process rewrote its key store).
    publish_signed(&stack, 10, "r2").await;
    let rotated_size = checkpoint_covering(&stack, 30).await;
    let rotated = atp_store::integrity::checkpoint(&stack.pool, &p, Some(rotated_size))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rotated.key_id, new_key.kid);

    // The integrity role restarts too: it resumes its logs from PostgreSQL.
    running.stop().await;
    let running = stack.serve(Roles::ALL).await;
    let api = Api::new(&running);
    publish_signed(&stack, 10, "r3").await;
    let new_size = checkpoint_covering(&stack, 40).await;
    let new = atp_store::integrity::checkpoint(&stack.pool, &p, Some(new_size))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(new.key_id, new_key.kid);

    let (known, jwks) = published_verifiers(&api).await;
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{jwks}");
    let retired = keys
        .iter()
        .find(|k| k["kid"] == old.key_id.as_str())
        .unwrap();
    assert!(
        retired["notAfter"].is_string(),
        "the old key's window is closed"
    );
    assert!(Checkpoint::open(&old.note, &known).is_ok());
    assert!(Checkpoint::open(&new.note, &known).is_ok());
    let old_only: Vec<Verifier> = known
        .iter()
        .filter(|v| format!("{:08x}", v.key_id()) == old.key_id)
        .cloned()
        .collect();
    assert!(Checkpoint::open(&old.note, &old_only).is_ok());
    assert!(Checkpoint::open(&new.note, &old_only).is_err());

    // A proof against the old checkpoint still verifies with the old key alone.
    let ids = record_ids(&api, &auditor).await;
    let (first,): (String,) =
        sqlx::query_as("SELECT record_id FROM records WHERE tenant_id = $1 AND chain_index = 3")
            .bind(TENANT)
            .fetch_one(&stack.pool)
            .await
            .unwrap();
    assert!(ids.contains(&first));
    let proof: Value = api
        .get_json(
            &format!("/api/v1/audit/records/{first}/proof?treeSize={old_size}"),
            &auditor,
        )
        .await;
    let tlog = TlogProof::parse(proof["tlogProof"].as_str().unwrap()).unwrap();
    let bytes = atp_core::canonical::to_canonical(&proof["record"]).unwrap();
    verify_record(&bytes, &p, 3, &tlog, &old_only, Some(LOG_NAME)).unwrap();
    let (head, _) = record::head(&bytes).unwrap();
    assert_eq!(head.chain_index, 3);

    // The whole history, both keys, re-walks cleanly after the restart.
    let (ok, report) = verify_chain_cli(&stack);
    assert!(ok, "{report}");
    assert_eq!(report["records"], 40);
    running.stop().await;
}
