//! The investigator's command line against a live gateway: `atp records`, `atp rejections`,
//! `atp export`, and what `atp verify` exits with — 0 verified, 1 a check failed, 2 could not
//! run.

use std::path::Path;
use std::process::{Command, Output};

use atp_core::role::Roles;
use atp_gateway::Permission;
use atp_tests::*;
use serde_json::Value;

/// Runs `atp` with the gateway's URL and `token`: (exit code, stdout, stderr). Awaited, not
/// blocking: the gateway it asks runs on this test's runtime.
async fn atp(base: &str, token: &str, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(atp_binary())
        .args(args)
        .env("ATP_URL", base)
        .env("ATP_TOKEN", token)
        .env_remove("ATP_LOG")
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    outcome(out)
}

fn outcome(out: Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn an_investigator_lists_fetches_proves_and_exports_from_the_command_line() {
    let stack = Stack::start().await;
    let running = stack.serve(Roles::ALL).await;
    let api = Api::new(&running);
    let p = partition(TENANT, SOURCE);
    for i in 0..5 {
        stack
            .publish(&p, &stack.sign(stack.event(&format!("cli-{i}"))))
            .await;
    }
    stack.publish(&p, &stack.event("cli-unsigned")).await;
    eventually("records checkpointed", || async {
        (stack.checkpoint_size(&p).await == 5).then_some(())
    })
    .await;
    eventually("the rejection projected", || async {
        (!stack.rejections(&p).await.is_empty()).then_some(())
    })
    .await;
    let auditor = stack.token(TENANT, Permission::Auditor);
    let base = api.base.clone();
    let page = api.get_json("/api/v1/audit/records", &auditor).await;
    let ids: Vec<String> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["recordId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 5);

    // Every page, two at a time, in the API's order; one page alone says there is more.
    let (code, out, err) = atp(
        &base,
        &auditor,
        &[
            "records", "list", "--all", "--limit", "2", "--format", "ids",
        ],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), ids);
    let (code, out, err) = atp(
        &base,
        &auditor,
        &["records", "list", "--limit", "2", "--format", "ids"],
    )
    .await;
    assert_eq!((code, out.lines().count()), (0, 2));
    assert!(err.contains("--all"), "{err}");
    let (_, out, _) = atp(&base, &auditor, &["records", "list", "--format", "ndjson"]).await;
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    assert_eq!(lines[0]["recordId"], ids[0].as_str());
    let (_, out, _) = atp(&base, &auditor, &["records", "list", "--format", "json"]).await;
    let all: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(all.len(), 5);
    let (_, table, _) = atp(&base, &auditor, &["records", "list"]).await;
    assert!(
        table.contains("recordId") && table.contains(&ids[4]),
        "{table}"
    );

    // One record, and its proof, which `atp verify record` checks with no server.
    let (code, out, err) = atp(&base, &auditor, &["records", "get", &ids[0]]).await;
    assert_eq!(code, 0, "{err}");
    let record: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(record["recordId"], ids[0].as_str());
    let (code, proof, err) = atp(&base, &auditor, &["records", "proof", &ids[0]]).await;
    assert_eq!(code, 0, "{err}");
    let dir = tempfile::tempdir().unwrap();
    let proof_path = dir.path().join("proof.json");
    std::fs::write(&proof_path, &proof).unwrap();
    let jwks = api.get_public_text("/api/v1/integrity/keys").await;
    let keys: Value = serde_json::from_str(&jwks).unwrap();
    let vkey = keys["keys"][0]["noteVerifierKey"]
        .as_str()
        .unwrap()
        .to_owned();
    let proof_arg = proof_path.to_str().unwrap();
    let verify_record = ["verify", "record", proof_arg, "--proof", proof_arg];
    let (code, _, err) = atp(
        &base,
        &auditor,
        &[&verify_record[..], &["--key", vkey.as_str()]].concat(),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let (_, text, _) = atp(&base, &auditor, &["records", "proof", &ids[0], "--text"]).await;
    assert!(text.starts_with("c2sp.org/tlog-proof@v1\n"), "{text}");

    // What could not run exits 2, with the problem's code; a placeholder pasted as it is never
    // leaves the machine.
    let (code, _, err) = atp(
        &base,
        &auditor,
        &["records", "get", "01JDNOSUCHRECORD0000000000"],
    )
    .await;
    assert_eq!(code, 2);
    assert!(err.contains("404 NOT_FOUND"), "{err}");
    let (code, _, err) = atp(&base, &auditor, &["records", "get", "<recordId>"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("is not an id"), "{err}");
    let (code, _, err) = atp(&base, "", &["records", "list"]).await;
    assert_eq!(code, 2);
    assert!(err.contains("ATP_TOKEN"), "{err}");
    let (code, _, _) = atp("http://127.0.0.1:9", &auditor, &["records", "list"]).await;
    assert_eq!(code, 2, "a gateway that does not answer");

    // A producer sees what was refused, and why.
    let producer = stack.token(TENANT, Permission::Producer);
    let (code, out, err) = atp(
        &base,
        &producer,
        &["rejections", "list", "--format", "ndjson"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let refused: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(refused["reason"], "SIGNATURE_MISSING");
    assert_eq!(refused["eventId"], "cli-unsigned");

    // An export followed to the end, downloaded and checked against its announced digest.
    let bundle = dir.path().join("bundle.tar");
    let bundle_arg = bundle.to_str().unwrap();
    let (code, _, err) = atp(
        &base,
        &auditor,
        &["export", "create", "--source", SOURCE, "-o", bundle_arg],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("5 records"), "{err}");
    // Unanchored is not verified, unless asked for; anchored to the published keys it is.
    let (code, _, err) = atp(&base, &auditor, &["verify", bundle_arg]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("NOT ANCHORED"), "{err}");
    let (code, _, err) = atp(
        &base,
        &auditor,
        &["verify", bundle_arg, "--allow-unanchored"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let jwks_path = dir.path().join("keys.json");
    std::fs::write(&jwks_path, &jwks).unwrap();
    let (code, _, err) = atp(
        &base,
        &auditor,
        &["verify", bundle_arg, "--key", jwks_path.to_str().unwrap()],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    // A file that is not a bundle could not be checked at all.
    let (code, _, _) = atp(
        &base,
        &auditor,
        &["verify", proof_arg, "--allow-unanchored"],
    )
    .await;
    assert_ne!(code, 0);

    running.stop().await;
}

/// `atp verify chain` vouches only for a partition that has records: an unknown or empty one
/// is a failed check (exit 1), never a pass.
#[tokio::test]
async fn verify_chain_fails_on_a_partition_with_no_records() {
    let stack = Stack::start().await;
    let running = stack.serve(Roles::ALL).await;
    let out = Command::new(atp_binary())
        .args([
            "verify",
            "chain",
            "--tenant",
            TENANT,
            "--source",
            "no-such-source",
        ])
        .envs(stack.cli_env())
        .output()
        .unwrap();
    let (code, out, err) = outcome(out);
    assert_eq!(code, 1, "{out} {err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(report["records"], 0);
    assert!(
        report["problems"][0]
            .as_str()
            .unwrap()
            .contains("no record"),
        "{report}"
    );
    running.stop().await;
}

/// Completions and man pages come from the same clap tree as the commands.
#[test]
fn completions_and_man_pages_are_generated_from_the_commands() {
    let out = Command::new(atp_binary())
        .args(["completions", "bash"])
        .output()
        .unwrap();
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(script.contains("records") && script.contains("--allow-unanchored"));
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(atp_binary())
        .args(["man", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let page = std::fs::read_to_string(dir.path().join("atp.1")).unwrap();
    assert!(page.contains(".TH atp"), "{page}");
    assert!(Path::new(&dir.path().join("atp-records.1")).exists());
}
