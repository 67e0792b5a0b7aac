//! The integration-test harness: a real nats-server and a real PostgreSQL per test, on free
//! loopback ports, stopped when the [`Stack`] drops; ATP started through the same entry point as
//! `atp serve`; and oracles that read the ledger back and re-verify every chain.

// Test support: a panic with a message is exactly how a failed step should be reported.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::Context;
use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use atp::serve::{NatsCredentials, Running, ServeConfig};
use atp_core::chain::ChainVerifier;
use atp_core::reason::RejectionEnvelope;
use atp_core::record::{self, Record};
pub use atp_core::role::Roles;
use atp_core::{PartitionKey, SourceId, TenantId};
use atp_devstack::{NatsCluster, NatsOptions, NatsServer, Postgres, PostgresOptions};
use atp_gateway::Permission;
use atp_nats::auth::{AuthDir, Identity};
use atp_nats::headers::IngressHeaders;
use atp_nats::{streams, subjects};
use atp_runtime::Secret;
use atp_runtime::ingest::IngestConfig;
use ed25519_dalek::SigningKey;
use futures::StreamExt;
use serde_json::{Map, Value};
use sqlx::PgPool;

mod refusals;
pub use refusals::*;

pub const TENANT: &str = "acme";
pub const SOURCE: &str = "crm";
pub const SOURCE_URI: &str = "https://crm.acme.example/core";
pub const KEY_ID: &str = "acme-crm-1";

/// How long a test waits for a condition before failing. Generous: CI machines are slow and
/// shared; a passing run returns as soon as the condition holds.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The NATS side of a stack: one server, or a JetStream cluster on loopback.
pub enum Nats {
    One(Box<NatsServer>),
    Cluster(NatsCluster),
}

impl Nats {
    /// The client URL (every node's, comma-separated, for a cluster).
    pub fn url(&self) -> String {
        match self {
            Nats::One(n) => n.url(),
            Nats::Cluster(c) => c.urls(),
        }
    }

    /// Stops and starts the single server on the same ports and store.
    pub async fn restart(&mut self) -> Result<(), atp_devstack::DevstackError> {
        match self {
            Nats::One(n) => n.restart().await,
            Nats::Cluster(_) => panic!("restart a cluster node through cluster()"),
        }
    }

    pub fn cluster(&mut self) -> &mut NatsCluster {
        match self {
            Nats::Cluster(c) => c,
            Nats::One(_) => panic!("this stack runs one nats-server"),
        }
    }
}

pub struct Stack {
    pub nats: Nats,
    pub pg: Postgres,
    pub js: Context,
    pub database_url: String,
    /// The gateway's login: a member of `atp_gateway`, under row-level security.
    pub gateway_database_url: String,
    pub pool: PgPool,
    pub issuer: SigningKey,
    pub producer: SigningKey,
    /// The checkpoint key store of this stack's integrity role.
    pub keys_dir: tempfile::TempDir,
    /// Where the exporter assembles bundles.
    pub spool: tempfile::TempDir,
    /// The NATS identities of a single-server stack: every role connects as itself, tests as
    /// admin. A cluster stack runs without NATS authentication.
    pub auth: Option<(AuthDir, tempfile::TempDir)>,
    /// Set by tests that provoke the server's permission checks; every other test fails if
    /// anything it ran was refused by them (see the `Drop` below).
    violations_expected: std::sync::atomic::AtomicBool,
}

impl Stack {
    /// This test provokes permission violations on purpose.
    pub fn expect_violations(&self) {
        self.violations_expected
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Least privilege is checked by every test: a role that needs more than its NATS identity
/// allows shows up as a permission violation in the server's log, and fails the test that
/// ran it.
impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking()
            || self
                .violations_expected
                .load(std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let Nats::One(n) = &self.nats else { return };
        let log = std::fs::read_to_string(n.log_path()).unwrap_or_default();
        let refused: Vec<&str> = log.lines().filter(|l| l.contains("Violation")).collect();
        assert!(
            refused.is_empty(),
            "the server refused what a role did:\n{}",
            refused.join("\n")
        );
    }
}

/// The log name tests run under: checkpoints have origin `atp.test/<tenant>/<source>`.
pub const LOG_NAME: &str = "atp.test";

/// The roles of a comma-separated list, as `atp serve --roles` reads it.
pub fn roles(list: &str) -> Roles {
    Roles::parse(list).expect("a list of roles")
}

/// Only the ingest role, as the scenarios about ingest alone run it.
pub fn ingest_only() -> Roles {
    roles("ingest")
}

pub fn partition(tenant: &str, source: &str) -> PartitionKey {
    PartitionKey::new(
        TenantId::new(tenant).unwrap(),
        SourceId::new(source).unwrap(),
    )
}

impl Stack {
    /// Fresh servers, streams and schema, and tenant `acme` with source `crm` and one key.
    pub async fn start() -> Stack {
        let dir = tempfile::tempdir().expect("NATS auth dir");
        let auth = AuthDir::init(dir.path()).expect("NATS identities");
        let nats = NatsServer::start(NatsOptions {
            include: Some(auth.conf_path()),
            ..Default::default()
        })
        .await
        .expect("nats-server starts");
        Self::start_on(Nats::One(Box::new(nats)), 1, Some((auth, dir))).await
    }

    /// The same, on a JetStream cluster of `nodes` servers with every stream replicated on all.
    pub async fn start_cluster(nodes: usize) -> Stack {
        let cluster = NatsCluster::start(nodes)
            .await
            .expect("the nats-server cluster starts");
        Self::start_on(Nats::Cluster(cluster), nodes, None).await
    }

    async fn start_on(
        nats: Nats,
        replicas: usize,
        auth: Option<(AuthDir, tempfile::TempDir)>,
    ) -> Stack {
        let pg = Postgres::start(PostgresOptions::default())
            .await
            .expect("PostgreSQL starts");
        let database_url = pg.create_database("atp").await.expect("database created");
        let admin = auth
            .as_ref()
            .map(|(a, _)| a.seed_path(&Identity::Admin).display().to_string());
        let client = atp_nats::connect(&nats.url(), "atp-test", admin.as_deref())
            .await
            .expect("connect to nats");
        let js = async_nats::jetstream::new(client);
        // A new cluster elects its JetStream meta leader a moment after its nodes are up.
        eventually("streams applied and migrations run", || {
            let (js, database_url) = (js.clone(), database_url.clone());
            async move {
                atp::admin::prepare(&js, &database_url, replicas)
                    .await
                    .map_err(|e| tracing::debug!(error = %e, "not yet"))
                    .ok()
            }
        })
        .await;
        let pool = atp_store::connect(&database_url, 4).await.expect("pool");
        atp_store::ensure_gateway_login(&pool, atp::dev::GATEWAY_LOGIN)
            .await
            .expect("the gateway's login role");
        let gateway_database_url = pg.url_as(atp::dev::GATEWAY_LOGIN, "atp");
        let producer = SigningKey::from_bytes(&[11u8; 32]);
        atp::admin::add_producer(
            &js,
            TENANT,
            SOURCE,
            SOURCE_URI,
            Some((KEY_ID, producer.verifying_key().to_bytes())),
        )
        .await
        .expect("producer registered");
        Stack {
            nats,
            pg,
            js,
            database_url,
            gateway_database_url,
            pool,
            issuer: SigningKey::from_bytes(&[12u8; 32]),
            producer,
            keys_dir: tempfile::tempdir().expect("key store dir"),
            spool: tempfile::tempdir().expect("export spool dir"),
            auth,
            violations_expected: Default::default(),
        }
    }

    /// The environment that points `atp` at this stack's servers, as admin.
    pub fn cli_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![
            ("ATP_NATS_URL", self.nats.url()),
            ("ATP_DATABASE_URL", self.database_url.clone()),
        ];
        if let Some((auth, _)) = &self.auth {
            env.push((
                "ATP_NATS_CREDS",
                auth.seed_path(&Identity::Admin).display().to_string(),
            ));
            env.push(("ATP_NATS_AUTH_DIR", auth.dir().display().to_string()));
        }
        env
    }

    /// How this stack's roles connect to NATS: each as itself when the stack has identities.
    pub fn nats_credentials(&self) -> NatsCredentials {
        match &self.auth {
            Some((auth, _)) => NatsCredentials::PerRole(auth.dir().to_owned()),
            None => NatsCredentials::None,
        }
    }

    /// Where this stack's tenant keys are (ADR 0019): beside its checkpoint keys.
    pub fn tenant_keys_dir(&self) -> std::path::PathBuf {
        self.keys_dir.path().join("tenant-keys")
    }

    /// The tenant-key port of this stack's roles.
    pub fn tenant_keys(&self) -> std::sync::Arc<dyn atp_runtime::keyring::TenantKeys> {
        std::sync::Arc::new(atp_runtime::keyring::FileTenantKeys::new(
            &self.tenant_keys_dir(),
        ))
    }

    pub fn serve_config(&self, roles: Roles) -> ServeConfig {
        ServeConfig {
            nats_url: self.nats.url(),
            nats_credentials: self.nats_credentials(),
            database_url: Secret::new(self.database_url.clone()),
            gateway_database_url: Some(Secret::new(self.gateway_database_url.clone())),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            roles,
            shard: atp_runtime::shard::Shard::ALL,
            ingest: IngestConfig::default(),
            tenant_keys: self.tenant_keys(),
            // Every test process's key caches hold nothing an erasure scrubs twice for; the
            // second scrub need not wait the production 60 s.
            lifecycle: atp_runtime::lifecycle::LifecycleSettings {
                poll: Duration::from_millis(50),
                key_cache_ttl: Duration::from_millis(200),
                retention_every: Duration::from_millis(100),
            },
            issuer: atp::dev::ISSUER.to_owned(),
            audience: atp::dev::AUDIENCE.to_owned(),
            token_keys: vec![(
                atp::dev::ISSUER_KID.to_owned(),
                self.issuer.verifying_key().to_bytes(),
            )],
            token_jwks: None,
            rate_limits: Default::default(),
            attestation_key: None,
            integrity: atp::serve::IntegritySettings {
                keys_dir: self.keys_dir.path().to_owned(),
                log_name: LOG_NAME.to_owned(),
                // Faster than the 1 s default so tests wait less; the count trigger is tested
                // on its own.
                policy: atp_runtime::integrity::CheckpointPolicy {
                    every_records: 1000,
                    every: Duration::from_millis(200),
                },
            },
            exports: atp_runtime::export::ExportSettings {
                spool_dir: self.spool.path().to_owned(),
                cold_store: None,
                concurrency: 1,
                ack_wait: Duration::from_secs(10),
                coverage_wait: Duration::from_secs(10),
                max_attempts: 5,
                max_records_per_second: None,
                // Loopback receivers, and retries quick enough for a test to watch.
                webhook: atp_delivery::webhook::WebhookPolicy {
                    base: Duration::from_millis(50),
                    poll: Duration::from_millis(50),
                    allow_private: true,
                    ..Default::default()
                },
            },
            export_limits: Default::default(),
            gateway_limits: Default::default(),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        }
    }

    pub async fn serve(&self, roles: Roles) -> Running {
        atp::serve::start(self.serve_config(roles))
            .await
            .expect("atp serve starts")
    }

    /// `atp serve --roles <roles>` as a child process against this stack (its servers, its
    /// checkpoint key store, log name and export spool), with `env` on top, stderr appended to
    /// `log`; SIGKILLed when dropped.
    pub fn spawn_serve(
        &self,
        roles: &str,
        env: &[(&str, &str)],
        log: &std::path::Path,
    ) -> tokio::process::Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let creds_dir = self.auth.as_ref().map(|(a, _)| a.dir().to_owned());
        tokio::process::Command::new(atp_binary())
            .args(["serve", "--roles", roles])
            .envs(self.cli_env())
            .envs(creds_dir.map(|d| ("ATP_NATS_CREDS_DIR", d)))
            .env("ATP_GATEWAY_DATABASE_URL", &self.gateway_database_url)
            .env("ATP_CHECKPOINT_KEYS_DIR", self.keys_dir.path())
            .env("ATP_TENANT_KEYS_DIR", self.tenant_keys_dir())
            .env("ATP_LOG_NAME", LOG_NAME)
            .env("ATP_EXPORT_SPOOL", self.spool.path())
            .env("ATP_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .expect("atp serve starts")
    }

    /// The "bug" of the dead-letter tests: the database refuses, as data (a check violation,
    /// SQLSTATE class 23, as a constraint added by hand would), the record whose event id is
    /// `poison`. `DROP TRIGGER refuse_poison ON records` is the fix.
    pub async fn refuse_poison(&self) {
        sqlx::raw_sql(
            "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN RAISE EXCEPTION 'record % refused', NEW.event_id \
             USING ERRCODE = 'check_violation'; END $$; \
             CREATE TRIGGER refuse_poison BEFORE INSERT ON records FOR EACH ROW \
             WHEN (NEW.event_id = 'poison') EXECUTE FUNCTION refuse_poison();",
        )
        .execute(&self.pool)
        .await
        .unwrap();
    }

    /// A token of the enterprise edition (every feature).
    pub fn token(&self, tenant: &str, permission: Permission) -> String {
        self.token_in(tenant, permission, atp_core::edition::Edition::Enterprise)
    }

    pub fn token_in(
        &self,
        tenant: &str,
        permission: Permission,
        edition: atp_core::edition::Edition,
    ) -> String {
        atp::dev::mint_token_in(
            &self.issuer,
            tenant,
            permission,
            &format!("{tenant}-{permission:?}").to_lowercase(),
            3600,
            edition,
        )
        .unwrap()
    }

    /// A producer token for `tenant` whose `sub` is `subject`.
    pub fn token_as(&self, tenant: &str, subject: &str) -> String {
        atp::dev::mint_token_in(
            &self.issuer,
            tenant,
            Permission::Producer,
            subject,
            3600,
            atp_core::edition::Edition::Enterprise,
        )
        .unwrap()
    }

    /// Registers another tenant's `crm` source at `uri`, with this stack's producer key under
    /// `key_id`.
    pub async fn register_tenant(&self, tenant: &str, uri: &str, key_id: &str) {
        atp::admin::add_producer(
            &self.js,
            tenant,
            SOURCE,
            uri,
            Some((key_id, self.producer.verifying_key().to_bytes())),
        )
        .await
        .expect("producer registered");
    }

    /// `atp producer add --generate-key --output out_dir` (and `extra` arguments) for
    /// `tenant`'s `source`: the directory a producer's engineer is handed (producer.json, the
    /// key pair, the NATS seed).
    pub fn onboard_producer(
        &self,
        tenant: &str,
        source: &str,
        uri: &str,
        key_id: &str,
        out_dir: &std::path::Path,
        extra: &[&str],
    ) {
        let out = std::process::Command::new(atp_binary())
            .args(["producer", "add", "--tenant", tenant, "--source", source])
            .args(["--source-uri", uri, "--key-id", key_id, "--generate-key"])
            .args(extra)
            .arg("--output")
            .arg(out_dir)
            .envs(self.cli_env())
            .env("ATP_LOG", "warn")
            .output()
            .expect("atp runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn event(&self, id: &str) -> Map<String, Value> {
        atp_core::producer::example_event(id, SOURCE_URI, chrono::Utc::now(), "alice", "UPDATE")
    }

    pub fn sign(&self, mut event: Map<String, Value>) -> Map<String, Value> {
        atp_core::producer::sign_structured(&mut event, &self.producer, KEY_ID).unwrap();
        event
    }

    /// Publishes raw bytes to a partition's ingress subject, as a direct producer; returns the
    /// ingress sequence.
    pub async fn publish_raw(&self, p: &PartitionKey, body: Vec<u8>, msg_id: Option<&str>) -> u64 {
        let mut h = IngressHeaders::structured();
        if let Some(id) = msg_id {
            h.msg_id(id).unwrap();
        }
        self.publish_with(p, h, body).await
    }

    /// Publishes a CloudEvent's bytes to a partition's ingress subject with `h`; returns the
    /// ingress sequence.
    async fn publish_with(&self, p: &PartitionKey, h: IngressHeaders, body: Vec<u8>) -> u64 {
        self.js
            .publish_with_headers(subjects::ingress(p), h.into_map(), body.into())
            .await
            .unwrap()
            .await
            .unwrap()
            .sequence
    }

    /// Publishes an event to a partition's ingress subject with a W3C `traceparent`, as a
    /// traced direct producer; returns the ingress sequence.
    pub async fn publish_traced(
        &self,
        p: &PartitionKey,
        event: &Map<String, Value>,
        traceparent: &str,
    ) -> u64 {
        let mut h = IngressHeaders::structured();
        h.traceparent(traceparent).unwrap();
        self.publish_with(p, h, serde_json::to_vec(event).unwrap())
            .await
    }

    /// Publishes until JetStream acknowledges, as a producer retries through an outage: the
    /// same message id every time (so a retry of a stored message is not stored twice), 2 s per
    /// try. Returns how long it took; panics after `PATIENCE`.
    pub async fn publish_until_acked(
        &self,
        p: &PartitionKey,
        msg_id: &str,
        body: &[u8],
    ) -> Duration {
        let started = std::time::Instant::now();
        loop {
            let mut h = IngressHeaders::structured();
            h.msg_id(msg_id).unwrap();
            let sent = self
                .js
                .publish_with_headers(subjects::ingress(p), h.into_map(), body.to_vec().into())
                .await;
            if let Ok(ack) = sent
                && let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), ack).await
            {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < PATIENCE,
                "{p} {msg_id} never acknowledged"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn publish(&self, p: &PartitionKey, event: &Map<String, Value>) -> u64 {
        let id = event
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        self.publish_raw(
            p,
            serde_json::to_vec(event).unwrap(),
            Some(&format!("{p}:{id}")),
        )
        .await
    }

    /// Every message on a subject of a stream, in order: (stream seq, headers, payload).
    pub async fn read_subject(
        &self,
        stream: &str,
        subject: &str,
    ) -> Vec<(u64, Option<HeaderMap>, Vec<u8>)> {
        let s = self.js.get_stream(stream).await.unwrap();
        let mut consumer = s
            .create_consumer(OrderedConfig {
                filter_subject: subject.to_owned(),
                deliver_policy: DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .unwrap();
        let total = consumer.info().await.unwrap().num_pending;
        let mut out = Vec::new();
        if total == 0 {
            return out;
        }
        let mut msgs = consumer.messages().await.unwrap();
        while let Some(m) = tokio::time::timeout(PATIENCE, msgs.next())
            .await
            .expect("reading a subject")
            .map(|m| m.unwrap())
        {
            let info = m.info().unwrap();
            out.push((info.stream_sequence, m.headers.clone(), m.payload.to_vec()));
            if info.pending == 0 {
                break;
            }
        }
        out
    }

    /// The partition's records from the ledger.
    pub async fn ledger(&self, p: &PartitionKey) -> Vec<Record> {
        self.read_subject(streams::LEDGER, &subjects::ledger(p))
            .await
            .into_iter()
            .map(|(_, _, bytes)| {
                record::open(&bytes, true)
                    .expect("ledger bytes are canonical records")
                    .record
            })
            .collect()
    }

    /// Re-walks a partition's chain from the ledger: every index present once, in order, every
    /// link intact, no event id twice. Returns the number of records.
    pub async fn verify_chain(&self, p: &PartitionKey) -> u64 {
        let msgs = self
            .read_subject(streams::LEDGER, &subjects::ledger(p))
            .await;
        let mut v = ChainVerifier::new(p);
        let mut ids = HashSet::new();
        for (seq, _, bytes) in &msgs {
            let opened = record::open(bytes, true).expect("canonical record");
            v.push(
                opened.record.chain_index,
                opened.record.prev_hash,
                opened.link.digest,
            )
            .unwrap_or_else(|e| panic!("chain of {p} broken at ledger seq {seq}: {e}"));
            let id = opened.record.event["id"].as_str().unwrap().to_owned();
            assert!(ids.insert(id.clone()), "event {id} recorded twice in {p}");
        }
        v.len()
    }

    pub async fn rejections(&self, p: &PartitionKey) -> Vec<RejectionEnvelope> {
        self.read_subject(streams::REJECTED, &subjects::rejected(p))
            .await
            .into_iter()
            .map(|(_, _, b)| serde_json::from_slice(&b).expect("rejection envelope"))
            .collect()
    }

    pub async fn ledger_len(&self, p: &PartitionKey) -> u64 {
        self.ledger_last_index(p).await.map_or(0, |i| i + 1)
    }

    async fn ledger_last_index(&self, p: &PartitionKey) -> Option<u64> {
        let s = self.js.get_stream(streams::LEDGER).await.unwrap();
        let m = s
            .direct_get_last_for_subject(subjects::ledger(p))
            .await
            .ok()?;
        Some(record::open(&m.payload, false).unwrap().record.chain_index)
    }

    pub async fn rejected_len(&self, p: &PartitionKey) -> usize {
        self.rejections(p).await.len()
    }

    /// The size of the newest stored checkpoint of a partition (0 if none).
    pub async fn checkpoint_size(&self, p: &PartitionKey) -> u64 {
        atp_store::integrity::checkpoint(&self.pool, p, None)
            .await
            .unwrap()
            .map_or(0, |c| c.size())
    }

    /// The tenant's projected records from its producers; ATP's own admin trail (recorded
    /// asynchronously by admin actions, such as a dead-letter replay) is not counted.
    pub async fn projected_records(&self, tenant: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM records WHERE tenant_id = $1 AND source_id <> $2")
            .bind(tenant)
            .bind(atp_core::registry::SYSTEM_SOURCE)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

/// The gateway of a running stack, over HTTP.
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(running: &Running) -> Self {
        Self {
            base: format!("http://{}", running.gateway_addr.unwrap()),
            http: reqwest::Client::new(),
        }
    }
    pub fn post(&self, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .header("content-type", "application/json")
    }
    pub fn get(&self, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.http
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
    }
    /// The body of an unauthenticated GET (`/metrics`, the public JWKS), whatever the status.
    pub async fn get_public_text(&self, path: &str) -> String {
        self.http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
    /// GET answering JSON, whatever the status.
    pub async fn get_json(&self, path: &str, token: &str) -> Value {
        self.get(path, token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
    /// POST of a JSON body answering JSON, whatever the status.
    pub async fn post_json(&self, path: &str, token: &str, body: &Value) -> Value {
        self.post(path, token)
            .json(body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// Panics, with its log, if a child started by [`Stack::spawn_serve`] has exited.
pub fn assert_running(child: &mut tokio::process::Child, log: &std::path::Path) {
    if let Ok(Some(status)) = child.try_wait() {
        panic!(
            "atp serve exited ({status}): {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
}

/// Polls `cond` until it returns `Some` or `PATIENCE` passes; panics naming `what` on timeout.
/// Polling a condition with a deadline is the synchronisation; the short pause only spaces
/// the checks.
pub async fn eventually<T, F, Fut>(what: &str, mut cond: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(v) = cond().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The `atp` binary next to this test binary (built by `cargo build --bin atp`).
pub fn atp_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let bin = dir.join("atp");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --bin atp` first (ops/bin/test does)",
        bin.display()
    );
    bin
}
