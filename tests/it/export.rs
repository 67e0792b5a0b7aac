//! Exports end to end: a selection packaged into a bundle that verifies with `openssl` and
//! `sha256sum` alone, with `atp verify` offline and with the server; resumable downloads;
//! tampering named; tenant isolation, the concurrency cap, signed webhooks with retries; and an
//! exporter killed mid-export that still completes the export exactly once.

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use atp_core::role::Roles;
use atp_gateway::Permission;
use atp_nats::{streams, subjects};
use atp_tests::*;
use hmac::{Hmac, KeyInit, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// Publishes `n` signed events of the test source, every third with action `LOGIN`.
async fn publish_events(stack: &Stack, n: usize, prefix: &str) {
    let p = partition(TENANT, SOURCE);
    for i in 0..n {
        let action = if i % 3 == 0 { "LOGIN" } else { "UPDATE" };
        let ev = atp_core::producer::example_event(
            &format!("{prefix}-{i}"),
            SOURCE_URI,
            chrono::Utc::now(),
            "alice",
            action,
        );
        stack.publish(&p, &stack.sign(ev)).await;
    }
}

async fn wait_covered(stack: &Stack, n: u64) {
    let p = partition(TENANT, SOURCE);
    eventually("records projected and checkpointed", || async {
        (stack.projected_records(TENANT).await as u64 >= n && stack.checkpoint_size(&p).await >= n)
            .then_some(())
    })
    .await;
}

pub(crate) async fn request_export(api: &Api, token: &str, selection: Value) -> String {
    let resp = api
        .post("/api/v1/exports", token)
        .json(&json!({ "selection": selection }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "queued");
    body["exportId"].as_str().unwrap().to_owned()
}

pub(crate) async fn completed(api: &Api, token: &str, id: &str) -> Value {
    eventually(&format!("export {id} completed"), || async {
        let s = api.get_json(&format!("/api/v1/exports/{id}"), token).await;
        assert_ne!(s["status"], "failed", "{s}");
        (s["status"] == "completed").then_some(s)
    })
    .await
}

pub(crate) async fn download(api: &Api, token: &str, id: &str) -> Vec<u8> {
    let resp = api
        .get(&format!("/api/v1/exports/{id}/download"), token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/x-tar");
    resp.bytes().await.unwrap().to_vec()
}

pub(crate) fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?} cannot run ({e}); CONTRACT §6 needs it installed"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every regular file under `dir`.
fn walk_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk_files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[tokio::test]
async fn a_bundle_verifies_with_standard_tools_atp_verify_and_the_server() {
    let stack = Stack::start().await;
    let running = stack.serve(Roles::ALL).await;
    let api = Api::new(&running);
    let auditor = stack.token(TENANT, Permission::Auditor);
    publish_events(&stack, 30, "exp").await;
    wait_covered(&stack, 30).await;

    let id = request_export(&api, &auditor, json!({ "action": "LOGIN" })).await;
    let status = completed(&api, &auditor, &id).await;
    assert_eq!(status["recordCount"], 10, "{status}");
    let tar = download(&api, &auditor, &id).await;
    assert_eq!(tar.len() as u64, status["bytes"].as_u64().unwrap());
    assert_eq!(sha256_hex(&tar), status["bundleSha256"].as_str().unwrap());

    // A broken download resumes where it stopped.
    let resp = api
        .get(&format!("/api/v1/exports/{id}/download"), &auditor)
        .header("range", "bytes=1000-")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        resp.headers()["content-range"],
        format!("bytes 1000-{}/{}", tar.len() - 1, tar.len()).as_str()
    );
    assert_eq!(resp.bytes().await.unwrap().as_ref(), &tar[1000..]);
    let resp = api
        .get(&format!("/api/v1/exports/{id}/download"), &auditor)
        .header("range", format!("bytes={}-", tar.len()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);

    // CONTRACT §6 with standard tools alone.
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle.tar");
    std::fs::write(&bundle, &tar).unwrap();
    let x = dir.path().join("x");
    std::fs::create_dir(&x).unwrap();
    let (ok, _, err) = run(Command::new("tar")
        .arg("-xf")
        .arg(&bundle)
        .arg("-C")
        .arg(&x));
    assert!(ok, "tar -x: {err}");
    let (ok, out, err) = run(Command::new("openssl").current_dir(&x).args([
        "pkeyutl",
        "-verify",
        "-pubin",
        "-inkey",
        "signing-key.pem",
        "-rawin",
        "-in",
        "manifest.json",
        "-sigfile",
        "manifest.sig",
    ]));
    assert!(ok, "openssl refused the manifest signature: {out} {err}");
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(x.join("manifest.json")).unwrap()).unwrap();
    let (ok, out, _) = run(Command::new("sha256sum").current_dir(&x).arg("SHA256SUMS"));
    assert!(ok);
    assert_eq!(
        out.split_whitespace().next().unwrap(),
        manifest["sha256sums"]
    );
    let (ok, out, err) =
        run(Command::new("sha256sum")
            .current_dir(&x)
            .args(["-c", "--strict", "SHA256SUMS"]));
    assert!(ok, "sha256sum -c: {out} {err}");
    // Every file but manifest.json, manifest.sig and SHA256SUMS itself: the key too.
    assert!(out.contains("signing-key.pem: OK"), "{out}");
    assert_eq!(
        out.lines().count(),
        walk_files(&x).len() - 3,
        "SHA256SUMS lists every other file: {out}"
    );
    assert_eq!(manifest["recordCount"], 10);
    assert_eq!(manifest["exportId"], id.as_str());
    assert_eq!(manifest["selection"], json!({ "action": "LOGIN" }));

    // `atp verify`, offline, anchored to the published JWKS.
    let jwks = api.get_public_text("/api/v1/integrity/keys").await;
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, jwks).unwrap();
    let verify = |path: &Path| {
        run(Command::new(atp_binary())
            .arg("verify")
            .arg(path)
            .arg("--key")
            .arg(&jwks_file))
    };
    let (ok, out, err) = verify(&bundle);
    assert!(ok, "atp verify: {out} {err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["recordsVerified"], 10);
    assert_eq!(report["anchored"], true);

    // The server verifies a stored bundle the same way.
    let answer = api
        .post_json(
            "/api/v1/integrity/verify/export",
            &auditor,
            &json!({ "exportId": id }),
        )
        .await;
    assert_eq!(answer["verified"], true, "{answer}");
    assert_eq!(answer["report"]["manifestSha256"], status["manifestSha256"]);

    // Alter one record line, pack the directory again: every check names that record.
    let part = x.join("records/part-00000.jsonl");
    let text = std::fs::read_to_string(&part).unwrap();
    let first_line = text.lines().next().unwrap();
    let victim = serde_json::from_str::<Value>(first_line).unwrap()["recordId"]
        .as_str()
        .unwrap()
        .to_owned();
    std::fs::write(&part, text.replacen("alice", "mallory", 1)).unwrap();
    let (ok, _, _) = run(Command::new("sha256sum")
        .current_dir(&x)
        .args(["-c", "SHA256SUMS"]));
    assert!(!ok, "sha256sum -c notices the altered part");
    let bad = dir.path().join("bad.tar");
    let (ok, _, err) = run(Command::new("tar")
        .arg("-cf")
        .arg(&bad)
        .arg("-C")
        .arg(&x)
        .arg("."));
    assert!(ok, "tar -c: {err}");
    let (ok, _, err) = verify(&bad);
    assert!(!ok);
    assert!(
        err.contains("RECORD_DIGEST") && err.contains(&victim),
        "{err}"
    );
    let answer: Value = api
        .http
        .post(format!("{}/api/v1/integrity/verify/export", api.base))
        .bearer_auth(&auditor)
        .header("content-type", "application/x-tar")
        .body(std::fs::read(&bad).unwrap())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["verified"], false);
    assert_eq!(answer["firstFailure"]["code"], "RECORD_DIGEST");
    assert_eq!(
        answer["firstFailure"]["record"]["recordId"],
        victim.as_str()
    );

    // One completion announced on the bus, with the manifest digest.
    let done = stack
        .read_subject(
            streams::EXPORTS,
            &subjects::export_completed(&atp_core::TenantId::new(TENANT).unwrap()),
        )
        .await;
    assert_eq!(done.len(), 1);
    let event: Value = serde_json::from_slice(&done[0].2).unwrap();
    assert_eq!(event["manifestSha256"], status["manifestSha256"]);
    running.stop().await;
}

/// What a webhook receiver was sent: headers and body of each delivery.
type Deliveries = Arc<Mutex<Vec<(axum::http::HeaderMap, Vec<u8>)>>>;

/// A loopback webhook receiver that fails its first `failures` deliveries.
async fn receiver(failures: usize) -> (String, Deliveries) {
    let seen: Deliveries = Arc::default();
    let log = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let log = log.clone();
                async move {
                    let mut l = log.lock().unwrap();
                    l.push((headers, body.to_vec()));
                    if l.len() <= failures {
                        axum::http::StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        axum::http::StatusCode::NO_CONTENT
                    }
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

/// With the default policy (the harness allows loopback receivers; a deployment does not),
/// a webhook aimed inside the deployment is refused when set: literals of every non-public
/// kind, IPv4 hidden in IPv6, names that resolve inward, and names that do not resolve.
#[tokio::test]
async fn webhooks_aimed_inward_are_refused() {
    let stack = Stack::start().await;
    let mut cfg = stack.serve_config(roles("gateway,ingest,projector,integrity"));
    cfg.exports.webhook = atp_delivery::webhook::WebhookPolicy::default();
    assert!(
        !cfg.exports.webhook.allow_private,
        "refusing is the default"
    );
    let running = atp::serve::start(cfg).await.unwrap();
    let api = Api::new(&running);
    let admin = stack.token(TENANT, Permission::Admin);
    for url in [
        "http://hooks.example.com/",
        "https://127.0.0.1/",
        "https://10.0.0.7/",
        "https://169.254.169.254/latest/meta-data",
        "https://100.64.1.1/",
        "https://[::1]/",
        "https://[fd00::1]/",
        "https://[fe80::1]/",
        "https://[::ffff:10.0.0.1]/",
        "https://[64:ff9b::a9fe:a9fe]/",
        "https://[2002:a00:1::1]/",
        "https://localhost/",
        "https://hooks.invalid/",
    ] {
        let resp = api
            .http
            .put(format!("{}/api/v1/exports/webhook", api.base))
            .bearer_auth(&admin)
            .json(&json!({ "url": url }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{url}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["code"], "INVALID_WEBHOOK", "{url}: {body}");
    }
    let none = api.get_json("/api/v1/exports/webhook", &admin).await;
    assert_eq!(none["configured"], false, "nothing was set: {none}");
    running.stop().await;
}

#[tokio::test]
async fn exports_are_tenant_scoped_capped_and_announced_by_signed_webhooks() {
    let stack = Stack::start().await;
    let mut cfg = stack.serve_config(roles("gateway,ingest,projector,integrity"));
    cfg.export_limits.concurrent = 1;
    let running = atp::serve::start(cfg).await.unwrap();
    let api = Api::new(&running);
    let auditor = stack.token(TENANT, Permission::Auditor);
    let admin = stack.token(TENANT, Permission::Admin);
    publish_events(&stack, 6, "cap").await;
    wait_covered(&stack, 6).await;

    // Only readers export, only their own tenant.
    let producer = stack.token(TENANT, Permission::Producer);
    let resp = api
        .post("/api/v1/exports", &producer)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = api
        .post("/api/v1/exports", &auditor)
        .json(&json!({ "tenantId": "globex", "selection": {} }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let problem: Value = resp.json().await.unwrap();
    assert_eq!(problem["code"], "CROSS_TENANT");
    let resp = api
        .post("/api/v1/exports", &auditor)
        .json(&json!({ "selection": { "tenant": "globex" } }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::BAD_REQUEST,
        "unknown selection fields are refused"
    );

    // With no exporter running the first export stays queued, so the cap of 1 bites.
    let id = request_export(&api, &auditor, json!({})).await;
    let resp = api
        .post("/api/v1/exports", &auditor)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(resp.headers()["x-ratelimit-limit"], "1");
    let globex = stack.token("globex", Permission::Auditor);
    let resp = api
        .post("/api/v1/exports", &globex)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::ACCEPTED,
        "another tenant has its own cap"
    );
    for path in [
        format!("/api/v1/exports/{id}"),
        format!("/api/v1/exports/{id}/download"),
    ] {
        let resp = api.get(&path, &globex).send().await.unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::NOT_FOUND,
            "{path} is invisible to globex"
        );
    }
    let resp = api
        .get(&format!("/api/v1/exports/{id}/download"), &auditor)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CONFLICT, "not ready yet");
    let mine = api.get_json("/api/v1/exports", &auditor).await;
    let ids: Vec<&str> = mine["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["exportId"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [id.as_str()],
        "the list holds the tenant's exports only"
    );
    assert_eq!(mine["items"][0]["status"], "queued");

    // A webhook that fails twice, then accepts.
    let (url, seen) = receiver(2).await;
    let resp = api
        .http
        .put(format!("{}/api/v1/exports/webhook", api.base))
        .bearer_auth(&auditor)
        .json(&json!({ "url": url }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN, "admins set webhooks");
    let set: Value = api
        .http
        .put(format!("{}/api/v1/exports/webhook", api.base))
        .bearer_auth(&admin)
        .json(&json!({ "url": url }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        set["secret"].as_str().unwrap(),
    )
    .unwrap();
    let got = api.get_json("/api/v1/exports/webhook", &admin).await;
    assert_eq!(got["url"], url.as_str());
    assert!(got.get("secret").is_none(), "the secret is shown once");

    // Now an exporter: the queued export completes and the webhook is delivered on try 3.
    let exporter = stack.serve(Roles::parse("exporter").unwrap()).await;
    completed(&api, &auditor, &id).await;
    let status = eventually("the webhook delivered", || async {
        let s = api
            .get_json(&format!("/api/v1/exports/{id}"), &auditor)
            .await;
        (s["webhook"]["status"] == "delivered").then_some(s)
    })
    .await;
    assert_eq!(status["webhook"]["attempts"], 3, "{status}");
    let deliveries = seen.lock().unwrap().clone();
    assert_eq!(deliveries.len(), 3);
    for (headers, body) in &deliveries {
        let sig = headers["atp-signature"].to_str().unwrap();
        let (t, v1) = sig.split_once(",v1=").unwrap();
        let t = t.strip_prefix("t=").unwrap();
        assert!((chrono::Utc::now().timestamp() - t.parse::<i64>().unwrap()).abs() < 120);
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&secret).unwrap();
        mac.update(format!("{t}.").as_bytes());
        mac.update(body);
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            v1,
            "signature checks out"
        );
        let mut other = <Hmac<Sha256> as KeyInit>::new_from_slice(&secret).unwrap();
        other.update(format!("{}.", t.parse::<i64>().unwrap() + 1).as_bytes());
        other.update(body);
        assert_ne!(
            hex::encode(other.finalize().into_bytes()),
            v1,
            "the timestamp is signed"
        );
        assert_eq!(headers["atp-webhook-id"], id.as_str());
        let event: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(event["exportId"], id.as_str());
        assert_eq!(event["status"], "completed");
        assert_eq!(event["manifestSha256"], status["manifestSha256"]);
    }
    exporter.stop().await;
    running.stop().await;
}

#[tokio::test]
async fn an_exporter_killed_mid_export_resumes_and_completes_once() {
    let stack = Stack::start().await;
    let running = stack
        .serve(roles("gateway,ingest,projector,integrity"))
        .await;
    let api = Api::new(&running);
    let auditor = stack.token(TENANT, Permission::Auditor);
    const N: u64 = 400;
    publish_events(&stack, N as usize, "kill").await;
    wait_covered(&stack, N).await;
    let id = request_export(&api, &auditor, json!({})).await;

    let logs = tempfile::tempdir().unwrap();
    let spawn = |rate: &str| {
        stack.spawn_serve(
            "exporter",
            &[
                ("ATP_EXPORT_ACK_WAIT_SECS", "3"),
                ("ATP_EXPORT_MAX_RATE", rate),
                ("ATP_LOG", "info"),
            ],
            &logs.path().join(format!("exporter-{rate}.log")),
        )
    };
    // Paced to 100 records/s, the export takes about four seconds: kill it once it reports
    // progress.
    let mut exporter = spawn("100");
    eventually("the export under way", || async {
        let s = api
            .get_json(&format!("/api/v1/exports/{id}"), &auditor)
            .await;
        (s["status"] == "running" && s["progress"]["recordsDone"].as_u64() > Some(0)).then_some(())
    })
    .await;
    exporter.start_kill().unwrap(); // SIGKILL
    exporter.wait().await.unwrap();
    let s = api
        .get_json(&format!("/api/v1/exports/{id}"), &auditor)
        .await;
    assert_eq!(s["status"], "running", "killed mid-export: {s}");

    let mut exporter = spawn("0");
    let status = completed(&api, &auditor, &id).await;
    assert_eq!(status["recordCount"], N);
    assert!(status["attempts"].as_i64().unwrap() >= 2, "{status}");
    let tar = download(&api, &auditor, &id).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.tar");
    std::fs::write(&path, &tar).unwrap();
    let report = atp_bundle::verify::verify(
        || std::fs::File::open(&path),
        &atp_bundle::verify::Trust::default(),
    )
    .unwrap();
    assert!(report.ok, "{:?}", report.failures);
    assert_eq!(report.records_verified, N);
    // Completed once, however many attempts.
    let done = stack
        .read_subject(
            streams::EXPORTS,
            &subjects::export_completed(&atp_core::TenantId::new(TENANT).unwrap()),
        )
        .await;
    assert_eq!(done.len(), 1);
    exporter.start_kill().unwrap();
    running.stop().await;
}

#[tokio::test]
async fn a_database_outage_longer_than_the_attempts_fails_no_export() {
    let stack = Stack::start().await;
    let running = stack.serve(Roles::ALL).await;
    let api = Api::new(&running);
    let auditor = stack.token(TENANT, Permission::Auditor);
    publish_events(&stack, 3, "outage").await;
    wait_covered(&stack, 3).await;
    // The outage: the exporter cannot mark an export started (a full disk, SQLSTATE 53100).
    // The gateway's admission (an INSERT) still works. Each refusal takes a number from a
    // sequence, which the failed statement's rollback does not give back.
    sqlx::raw_sql(
        "CREATE SEQUENCE export_outage_tries; \
         CREATE FUNCTION export_disk_full() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN PERFORM nextval('export_outage_tries'); \
         RAISE EXCEPTION 'could not extend file: No space left on device' \
         USING ERRCODE = 'disk_full'; END $$; \
         CREATE TRIGGER export_disk_full BEFORE UPDATE ON exports FOR EACH ROW \
         EXECUTE FUNCTION export_disk_full();",
    )
    .execute(&stack.pool)
    .await
    .unwrap();
    let id = request_export(&api, &auditor, json!({})).await;
    // More deliveries than the exporter's attempts (the harness's `max_attempts`, 5), each
    // failing on the database: counted by deliveries, the export would be given up on.
    eventually(
        "the exporter failing on the outage more often than its attempts",
        || async {
            let tries: i64 = sqlx::query_scalar(
                "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM export_outage_tries",
            )
            .fetch_one(&stack.pool)
            .await
            .unwrap();
            (tries > 5).then_some(())
        },
    )
    .await;
    sqlx::raw_sql("DROP TRIGGER export_disk_full ON exports")
        .execute(&stack.pool)
        .await
        .unwrap();
    let status = completed(&api, &auditor, &id).await;
    assert_eq!(status["recordCount"], 3, "{status}");
    assert_eq!(
        status["attempts"], 1,
        "only the try that reached the export counts"
    );
    let letters = atp_nats::dlq::list(&stack.js, &atp_nats::dlq::Filter::default())
        .await
        .unwrap();
    assert!(letters.is_empty(), "nothing dead-lettered");
    running.stop().await;
}
