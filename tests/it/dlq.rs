//! Dead letters: a message the projector cannot take is tried a bounded number of times, then
//! dead-lettered with its diagnosis while the projector moves on; after the fix, a replay
//! (CLI or admin API) handles it, once. A database that is unwell is not a message the
//! projector cannot take: its records wait, as lag, and none is dead-lettered.

use std::process::Command;

use atp_core::role::Roles;
use atp_gateway::Permission;
use atp_tests::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// Runs `atp dlq …`; (success, stdout lines as JSON, stderr).
fn atp_dlq(stack: &Stack, args: &[&str]) -> (bool, Vec<Value>, String) {
    let out = Command::new(atp_binary())
        .arg("dlq")
        .args(args)
        .envs(stack.cli_env())
        .env("ATP_LOG", "warn")
        .output()
        .expect("atp runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    (
        out.status.success(),
        stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn letters(stack: &Stack) -> Vec<atp_nats::dlq::Entry> {
    atp_nats::dlq::list(&stack.js, &atp_nats::dlq::Filter::default())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_refused_row_is_dead_lettered_and_replayed_once_after_the_fix() {
    let stack = Stack::start().await;
    // The "bug": the database refuses one record as data (a check violation, SQLSTATE class
    // 23, as a constraint added by hand would).
    stack.refuse_poison().await;
    let running = stack.serve(Roles::ALL).await;
    let p = partition(TENANT, SOURCE);
    for id in ["good-1", "poison", "good-2"] {
        stack.publish(&p, &stack.sign(stack.event(id))).await;
    }
    // The projector gives up on the poison after its attempts and projects the rest.
    let dead = eventually("the poison dead-lettered, the rest projected", || async {
        let l = letters(&stack).await;
        (l.len() == 1 && stack.projected_records(TENANT).await == 2).then_some(l)
    })
    .await;
    let d = &dead[0].letter;
    assert_eq!(d.role, atp_core::deadletter::DeadRole::Projector);
    assert_eq!(d.code, "PROJECTION_REFUSED");
    assert!(d.detail.contains("record poison refused"), "{}", d.detail);
    assert!(d.detail.contains("SQLSTATE 23514"), "{}", d.detail);
    assert_eq!(d.attempts, atp_runtime::projector::MAX_ATTEMPTS);
    assert_eq!(d.stream, atp_nats::streams::LEDGER);
    assert_eq!(d.tenant_id, TENANT);
    assert_eq!(d.subject, atp_nats::subjects::ledger(&p));
    assert_eq!(d.schema_version.as_deref(), Some("1"));
    assert_eq!(d.payload_sha256.len(), 64);
    assert_eq!(d.trace_id, None, "published without a traceparent");
    // Past it, the projector goes on.
    stack.publish(&p, &stack.sign(stack.event("good-3"))).await;
    eventually("projection continues past the letter", || async {
        (stack.projected_records(TENANT).await == 3).then_some(())
    })
    .await;

    // The tenant's admin sees it; another tenant's admin does not; an auditor may not look.
    let api = Api::new(&running);
    let admin = stack.token(TENANT, Permission::Admin);
    let listed = api.get_json("/api/v1/admin/dlq", &admin).await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["items"][0]["letter"]["code"], "PROJECTION_REFUSED");
    let seq = dead[0].seq;
    let other = stack.token("globex", Permission::Admin);
    let theirs = api.get_json("/api/v1/admin/dlq", &other).await;
    assert_eq!(theirs["items"], json!([]));
    let resp = api
        .get(&format!("/api/v1/admin/dlq/{seq}"), &other)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = api
        .get(
            "/api/v1/admin/dlq",
            &stack.token(TENANT, Permission::Auditor),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);

    // Before the fix, a dry run says it still fails, and writes nothing.
    let dry = api
        .post_json(
            "/api/v1/admin/dlq/replay",
            &admin,
            &json!({"seqs": [seq], "dryRun": true}),
        )
        .await;
    assert_eq!(dry["results"][0]["outcome"], "failed", "{dry}");
    assert!(letters(&stack).await[0].replay.is_none());

    // The fix; then the operator's dry run, replay, and a second replay.
    sqlx::raw_sql("DROP TRIGGER refuse_poison ON records")
        .execute(&stack.pool)
        .await
        .unwrap();
    let (ok, out, err) = atp_dlq(&stack, &["replay", "--tenant", TENANT, "--dry-run"]);
    assert!(ok, "{err}");
    assert_eq!(out[0]["outcome"], "wouldReplay", "{out:?}");
    assert_eq!(stack.projected_records(TENANT).await, 3);
    let (ok, out, err) = atp_dlq(&stack, &["replay", "--tenant", TENANT]);
    assert!(ok, "{err}");
    assert_eq!(out[0]["outcome"], "replayed", "{out:?}");
    assert_eq!(stack.projected_records(TENANT).await, 4);
    let (ok, out, _) = atp_dlq(&stack, &["replay", "--seq", &seq.to_string()]);
    assert!(ok);
    assert_eq!(out[0]["outcome"], "alreadyReplayed", "{out:?}");
    assert_eq!(stack.projected_records(TENANT).await, 4);
    let (ok, listed, _) = atp_dlq(&stack, &["list", "--role", "projector"]);
    assert!(ok);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["replay"]["outcome"], "replayed");
    assert!(
        listed[0]["replay"]["by"]
            .as_str()
            .unwrap()
            .starts_with("operator:"),
        "{listed:?}"
    );
    let shown = Command::new(atp_binary())
        .args(["dlq", "show", &seq.to_string()])
        .envs(stack.cli_env())
        .output()
        .unwrap();
    assert!(shown.status.success());
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["intact"], true);
    assert_eq!(shown["message"]["json"]["event"]["id"], "poison", "{shown}");
    let metrics = api.get_public_text("/metrics").await;
    assert!(
        metrics.contains("atp_dlq_letters_total{code=\"PROJECTION_REFUSED\",role=\"projector\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("atp_dlq_depth 1"), "{metrics}");
    running.stop().await;
}

#[tokio::test]
async fn unreadable_messages_are_dead_lettered_never_dropped() {
    let stack = Stack::start().await;
    let running = stack.serve(Roles::ALL).await;
    // A ledger message that is no record (only ATP writes there; this stands for a bug).
    let junk = partition(TENANT, "junk");
    stack
        .js
        .publish(atp_nats::subjects::ledger(&junk), "not a record".into())
        .await
        .unwrap()
        .await
        .unwrap();
    // An export request that is no request.
    let tenant = atp_core::TenantId::new(TENANT).unwrap();
    stack
        .js
        .publish(
            atp_nats::subjects::export_requested(&tenant),
            "{\"exportId\": 7}".into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let dead = eventually("both dead-lettered", || async {
        let l = letters(&stack).await;
        (l.len() == 2).then_some(l)
    })
    .await;
    let code_of = |role: &str| {
        dead.iter()
            .find(|e| e.letter.role.as_str() == role)
            .map(|e| (e.letter.code.clone(), e.letter.payload_bytes))
    };
    assert_eq!(
        code_of("projector"),
        Some(("UNPROJECTABLE".to_owned(), "not a record".len() as u64))
    );
    assert_eq!(
        code_of("exporter"),
        Some(("MALFORMED_REQUEST".to_owned(), 15))
    );
    // A malformed request cannot be replayed: the replay says so and the CLI exits 1.
    let (ok, out, _) = atp_dlq(&stack, &["replay", "--role", "exporter"]);
    assert!(!ok);
    assert_eq!(out[0]["outcome"], "failed");
    assert!(
        out[0]["detail"]
            .as_str()
            .unwrap()
            .contains("MALFORMED_REQUEST"),
        "{out:?}"
    );
    running.stop().await;
}

#[tokio::test]
async fn a_database_refusing_writes_for_a_while_delays_records_and_dead_letters_none() {
    let stack = Stack::start().await;
    let running = stack.serve(Roles::ALL).await;
    let api = Api::new(&running);
    let p = partition(TENANT, SOURCE);
    // One record first, so the projection has a watermark and its lag a starting point.
    stack.publish(&p, &stack.sign(stack.event("before"))).await;
    eventually("the first record projected", || async {
        (stack.projected_records(TENANT).await == 1).then_some(())
    })
    .await;

    // The outage: every insert into `records` fails as on a full disk (SQLSTATE 53100, not a
    // refusal of the data). Each failure takes a number from a sequence, which the failed
    // transaction's rollback does not give back: the count of tries the projector made.
    sqlx::raw_sql(
        "CREATE SEQUENCE outage_tries; \
         CREATE FUNCTION disk_full() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN PERFORM nextval('outage_tries'); \
         RAISE EXCEPTION 'could not extend file: No space left on device' \
         USING ERRCODE = 'disk_full'; END $$; \
         CREATE TRIGGER disk_full BEFORE INSERT ON records FOR EACH ROW \
         EXECUTE FUNCTION disk_full();",
    )
    .execute(&stack.pool)
    .await
    .unwrap();
    const N: i64 = 5;
    for i in 0..N {
        stack
            .publish(&p, &stack.sign(stack.event(&format!("during-{i}"))))
            .await;
    }
    let tries = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM outage_tries",
        )
        .fetch_one(&stack.pool)
        .await
        .unwrap()
    };
    // More tries than a refused row gets before it is dead-lettered: had the outage been taken
    // for a refusal, the rows would be going to the dead-letter queue by now.
    let attempts = i64::from(atp_runtime::projector::MAX_ATTEMPTS);
    eventually(
        "the projector failing on the outage, again and again",
        || async { (tries().await > attempts).then_some(()) },
    )
    .await;
    // The outage shows as lag, growing while it lasts.
    let lag = || async {
        let text = api.get_public_text("/metrics").await;
        crate::metrics::sample(&text, "atp_projector_lag_seconds{projection=\"records\"}")
    };
    let first = eventually("the records projection lagging", || async {
        lag().await.filter(|l| *l > 0.0)
    })
    .await;
    eventually("the lag growing", || async {
        lag().await.filter(|l| *l > first).map(|_| ())
    })
    .await;
    assert_eq!(stack.projected_records(TENANT).await, 1);
    assert!(letters(&stack).await.is_empty(), "nothing dead-lettered");

    // The disk is freed: every record goes in, none was dead-lettered, the lag is gone.
    sqlx::raw_sql("DROP TRIGGER disk_full ON records")
        .execute(&stack.pool)
        .await
        .unwrap();
    eventually("every record projected after the outage", || async {
        (stack.projected_records(TENANT).await == N + 1).then_some(())
    })
    .await;
    assert!(letters(&stack).await.is_empty(), "nothing dead-lettered");
    eventually("the lag back to zero", || async {
        (lag().await == Some(0.0)).then_some(())
    })
    .await;
    let metrics = api.get_public_text("/metrics").await;
    assert!(!metrics.contains("atp_dlq_letters_total{"), "{metrics}");
    running.stop().await;
}
