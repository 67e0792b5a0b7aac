//! The exporter role: packages export requests into signed bundles (CONTRACT §6), stores them in
//! the cold store, announces completion and delivers completion webhooks.
//!
//! A request is a message on `atp.export.requested.<tenant>`, taken from the durable work
//! consumer and left unacknowledged while its bundle is packaged (with progress acks to keep it).
//! If the exporter dies, the request is redelivered and packaging starts over from the snapshot
//! fixed by the first attempt, which makes the same bytes; the completion is published with the
//! export id as message id, so an export completes once however often it is attempted.
//!
//! The role runs on its own runtime thread and database pool ([`spawn`]) so packaging never
//! occupies the threads or connections that answer queries.
//!
//! With the tenant keys it discloses, beside the records, the sealed values its requester may
//! read (ADR 0020): the request carries what the requester reads in clear, and an access
//! request's export the subject's key ids ([`package`]).

pub mod package;
pub mod webhook;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, Context};
use atp_core::TenantId;
use atp_core::deadletter::{DeadLetter, DeadRole, Letter};
use atp_core::edition::Feature;
use atp_store::exports::{self, Completed, ExportRequest, ExportRow, Outcome};
use futures::StreamExt;
use serde_json::{Value, json};
use sqlx::PgPool;
use tracing::Instrument;

use crate::keyring::{SubjectKeys, TenantKeys};
use crate::signer::CheckpointSigner;
use crate::{Classify, RoleError, Shutdown};
use atp_delivery::cold::ColdStore;
use atp_delivery::object_key;
use atp_delivery::webhook::WebhookPolicy;
use atp_telemetry::failpoint;
use package::{PackageError, Packager};

#[derive(Debug, Clone)]
pub struct ExportSettings {
    /// Where bundles are assembled before they go to the cold store.
    pub spool_dir: PathBuf,
    /// `None`/`nats`: JetStream's Object Store; else `s3://bucket/prefix` or `file:///dir`.
    pub cold_store: Option<String>,
    /// Exports packaged at once by this exporter.
    pub concurrency: usize,
    /// How long a request stays with an exporter that stopped reporting progress.
    pub ack_wait: Duration,
    pub coverage_wait: Duration,
    /// Attempts before an export is failed for good.
    pub max_attempts: u64,
    /// Paces packaging so exports leave the database to queries.
    pub max_records_per_second: Option<u32>,
    pub webhook: WebhookPolicy,
}

impl Default for ExportSettings {
    fn default() -> Self {
        Self {
            spool_dir: std::env::temp_dir().join("atp-exports"),
            cold_store: None,
            concurrency: 1,
            ack_wait: Duration::from_secs(30),
            coverage_wait: Duration::from_secs(30),
            max_attempts: 5,
            max_records_per_second: None,
            webhook: WebhookPolicy::default(),
        }
    }
}

/// What `atp.export.completed.<tenant>` and the webhook carry about a finished export.
pub fn completion(row: &ExportRow) -> Value {
    let mut v = json!({
        "type": "export.completed",
        "exportId": row.export_id,
        "tenantId": row.tenant_id,
        "status": row.status,
        "finishedAt": row.finished_at.map(atp_core::record::timestamp),
    });
    if row.status == atp_store::exports::ExportStatus::Completed {
        v["recordCount"] = json!(row.record_count);
        v["bytes"] = json!(row.bytes);
        v["manifestSha256"] = json!(row.manifest_sha256);
        v["bundleSha256"] = json!(row.bundle_sha256);
        v["download"] = json!(format!("/api/v1/exports/{}/download", row.export_id));
    } else {
        v["failure"] = json!({ "code": row.failure_code, "detail": row.failure_detail });
    }
    v
}

/// Runs the exporter on a runtime thread of its own with its own small database pool, and
/// returns when it stops. Without `tenant_keys` no bundle discloses anything.
pub async fn spawn<S: CheckpointSigner>(
    js: Context,
    database_url: crate::Secret,
    signer: Arc<S>,
    tenant_keys: Option<Arc<dyn TenantKeys>>,
    settings: ExportSettings,
    shutdown: Shutdown,
) -> Result<(), RoleError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("atp-exporter".to_owned())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("atp-exporter")
                .enable_all()
                .build();
            let result = match runtime {
                Ok(rt) => rt.block_on(async move {
                    let pool = atp_store::connect(database_url.expose(), 3)
                        .await
                        .or_fatal("exporter database")?;
                    run(js, pool, signer, tenant_keys, settings, shutdown).await
                }),
                Err(e) => Err(RoleError::fatal("exporter runtime", e)),
            };
            let _ = tx.send(result);
        })
        .or_fatal("exporter thread")?;
    let result = rx
        .await
        .unwrap_or_else(|e| Err(RoleError::fatal("the exporter thread died", e)));
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    result
}

/// The exporter: takes requests, packages, stores, announces; delivers webhooks alongside.
pub async fn run<S: CheckpointSigner>(
    js: Context,
    pool: PgPool,
    signer: Arc<S>,
    tenant_keys: Option<Arc<dyn TenantKeys>>,
    settings: ExportSettings,
    mut shutdown: Shutdown,
) -> Result<(), RoleError> {
    let cold = ColdStore::open(&js, settings.cold_store.as_deref())
        .await
        .or_fatal("opening the cold store")?;
    let keys = match tenant_keys {
        Some(port) => Some(SubjectKeys::new(
            atp_nats::subject_keys::bucket(&js)
                .await
                .or_fatal("opening the subject-key bucket")?,
            port,
        )),
        None => None,
    };
    let hooks = atp_nats::exports::webhooks(&js)
        .await
        .or_fatal("opening the webhooks bucket")?;
    std::fs::create_dir_all(&settings.spool_dir).or_fatal("creating the spool directory")?;
    let consumer = atp_nats::exports::work_consumer(
        &js,
        settings.ack_wait,
        i64::try_from(settings.concurrency.max(1)).unwrap_or(1),
    )
    .await
    .or_fatal("opening the export work consumer")?;
    tracing::info!(cold_store = %cold.describe(), "exporter ready");
    let deliveries = tokio::spawn(webhook::run(
        pool.clone(),
        hooks.clone(),
        settings.webhook.clone(),
        shutdown.clone(),
    ));
    let worker = Exporter {
        js: js.clone(),
        cold,
        hooks,
        packager: Arc::new(Packager {
            pool: pool.clone(),
            signer,
            spool: settings.spool_dir.clone(),
            coverage_wait: settings.coverage_wait,
            max_records_per_second: settings.max_records_per_second,
            keys,
        }),
        pool,
        settings: settings.clone(),
    };
    let messages = consumer
        .stream()
        .max_messages_per_batch(settings.concurrency.max(1))
        .heartbeat(Duration::from_secs(5))
        .messages()
        .await
        .or_fatal("reading export requests")?;
    let work = messages.for_each_concurrent(settings.concurrency.max(1), |m| {
        let worker = &worker;
        async move {
            match m {
                Ok(m) => worker.handle(m).await,
                Err(e) => {
                    tracing::warn!(error = %e, "export request stream hiccup");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    tokio::select! {
        () = work => {}
        _ = shutdown.wait_for(|stop| *stop) => {}
    }
    deliveries.abort();
    Ok(())
}

struct Exporter<S> {
    js: Context,
    pool: PgPool,
    cold: ColdStore,
    hooks: async_nats::jetstream::kv::Store,
    packager: Arc<Packager<S>>,
    settings: ExportSettings,
}

impl<S: CheckpointSigner> Exporter<S> {
    async fn handle(&self, msg: jetstream::Message) {
        let req: ExportRequest = match serde_json::from_slice(&msg.payload) {
            Ok(r) => r,
            Err(e) => {
                // Only the gateway publishes here; a malformed request has no export to fail.
                // It is dead-lettered, then terminated; until the letter is stored it stays.
                let letter = self.letter(&msg, "MALFORMED_REQUEST", e.to_string());
                match crate::dead_letter::write(&self.js, &letter).await {
                    Ok(()) => {
                        let _ = msg.ack_with(AckKind::Term).await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "dead-lettering a malformed export request failed; will retry");
                        let _ = msg
                            .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                            .await;
                    }
                }
                return;
            }
        };
        let id = req.export_id.clone();
        let span = crate::telemetry::consumer_span!(
            "export.package",
            msg.subject,
            tenant.id = %req.tenant_id,
            export.id = %id,
        );
        crate::telemetry::follow_message(&span, msg.headers.as_ref());
        match self.attempt(&msg, &req).instrument(span).await {
            Ok(()) => {
                if let Err(e) = msg.double_ack().await {
                    tracing::warn!(export = %id, error = %e, "acknowledging a finished export failed; it will be seen again and re-announced");
                }
            }
            Err(e) => {
                let tries = msg.info().map_or(1, |i| i.delivered.max(1)) as u32;
                let delay = Duration::from_secs(u64::from(tries.min(30)));
                tracing::warn!(export = %id, error = %e, retry_in = ?delay, "export attempt failed; will retry");
                let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
            }
        }
    }

    /// A dead letter for an export request message.
    fn letter(&self, msg: &jetstream::Message, code: &str, detail: String) -> DeadLetter {
        let info = msg.info().ok();
        DeadLetter::new(
            DeadRole::Exporter,
            code,
            detail,
            info.as_ref()
                .map_or(1, |i| u32::try_from(i.delivered).unwrap_or(u32::MAX)),
            Letter {
                stream: atp_nats::streams::EXPORTS,
                stream_seq: info.as_ref().map_or(0, |i| i.stream_sequence),
                subject: &msg.subject,
                tenant_id: msg.subject.rsplit('.').next().unwrap_or("_"),
                payload: &msg.payload,
                traceparent: msg
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(atp_nats::headers::TRACEPARENT))
                    .map(|v| v.as_str()),
            },
            chrono::Utc::now(),
        )
    }

    /// One attempt; `Err` means try again later.
    async fn attempt(&self, msg: &jetstream::Message, req: &ExportRequest) -> Result<(), String> {
        let id = &req.export_id;
        exports::record_request(&self.pool, req)
            .await
            .map_err(|e| e.to_string())?;
        let row = exports::start(&self.pool, id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("export {id} vanished"))?;
        if row.is_finished() {
            // Finished by an earlier attempt that died before acknowledging: announce again
            // (deduplicated by message id) and be done.
            return self.announce(&row).await;
        }
        // Tries are counted by the row (`start` adds one), not by JetStream's deliveries: a
        // delivery that failed before `start` answered failed on the database, not on the
        // export, and an outage longer than a few naks must not fail healthy exports (nor
        // dead-letter them) the moment the database is back. The naks still back off.
        let attempts = u64::try_from(row.attempts).unwrap_or(0);
        if attempts > self.settings.max_attempts {
            let detail = format!("gave up after {} attempts", self.settings.max_attempts);
            let letter = self.letter(
                msg,
                atp_core::deadletter::EXPORT_ATTEMPTS_EXHAUSTED,
                detail.clone(),
            );
            crate::dead_letter::write(&self.js, &letter)
                .await
                .map_err(|e| e.to_string())?;
            let outcome = Outcome::Failed {
                code: atp_core::deadletter::EXPORT_ATTEMPTS_EXHAUSTED.to_owned(),
                detail,
            };
            return self.finish(&row, outcome).await;
        }
        tracing::info!(export = %id, tenant = %row.tenant_id, attempt = attempts, "packaging export");
        let done = AtomicU64::new(0);
        let packaging = self.packager.package(&row, &done);
        tokio::pin!(packaging);
        let mut tick = tokio::time::interval(self.settings.ack_wait / 3);
        tick.tick().await;
        let packaged = loop {
            tokio::select! {
                r = &mut packaging => break r,
                _ = tick.tick() => {
                    let _ = msg.ack_with(AckKind::Progress).await;
                    let n = done.load(Ordering::Relaxed);
                    if let Err(e) = exports::progress(&self.pool, id, n).await {
                        tracing::debug!(export = %id, error = %e, "progress not recorded");
                    }
                }
            }
        };
        let outcome = match packaged {
            Ok(p) => {
                let key = object_key(&row.tenant_id, id);
                failpoint::crash_point(failpoint::EXPORTER_BEFORE_STORE);
                let stored = match p.reader().await {
                    Ok(reader) => self.cold.put(&key, reader).await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                p.remove();
                let (bytes, bundle_sha256) = stored?;
                if bytes != p.bytes {
                    return Err(format!("stored {bytes} of the bundle's {} bytes", p.bytes));
                }
                Outcome::Completed(Completed {
                    object_key: key,
                    bytes,
                    bundle_sha256,
                    manifest_sha256: p.manifest_sha256,
                    record_count: p.record_count,
                    disclosed_kids: p.disclosed_kids,
                })
            }
            Err(PackageError::Permanent { code, detail }) => {
                tracing::error!(export = %id, code, %detail, "export failed");
                Outcome::Failed {
                    code: code.to_owned(),
                    detail,
                }
            }
            Err(PackageError::Transient(e)) => return Err(e),
        };
        if matches!(outcome, Outcome::Completed(_)) {
            failpoint::crash_point(failpoint::EXPORTER_BEFORE_ROW);
        }
        self.finish(&row, outcome).await
    }

    async fn finish(&self, row: &ExportRow, outcome: Outcome) -> Result<(), String> {
        let tenant = TenantId::new(&row.tenant_id).map_err(|e| e.to_string())?;
        // The use-case's own edition check: a webhook only for an export requested under an
        // edition that has them, whatever the tenant's setting says.
        let webhook = row.edition().allows(Feature::ExportWebhooks)
            && atp_nats::exports::webhook_of(&self.hooks, &tenant)
                .await
                .map_err(|e| e.to_string())?
                .is_some();
        exports::finish(&self.pool, &row.export_id, &outcome, webhook)
            .await
            .map_err(|e| e.to_string())?;
        let m = crate::metrics::metrics();
        match &outcome {
            Outcome::Completed(c) => {
                m.exports_finished
                    .add(1, &[crate::metrics::label("status", "completed")]);
                m.export_records.add(c.record_count, &[]);
            }
            Outcome::Failed { .. } => m
                .exports_finished
                .add(1, &[crate::metrics::label("status", "failed")]),
        }
        let row = exports::get(&self.pool, &row.tenant_id, &row.export_id)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("export {} vanished", row.export_id))?;
        failpoint::crash_point(failpoint::EXPORTER_BEFORE_ACK);
        self.announce(&row).await
    }

    async fn announce(&self, row: &ExportRow) -> Result<(), String> {
        let tenant = TenantId::new(&row.tenant_id).map_err(|e| e.to_string())?;
        let body = serde_json::to_vec(&completion(row)).map_err(|e| e.to_string())?;
        atp_nats::exports::publish(
            &self.js,
            atp_nats::exports::ExportEvent::Completed,
            &tenant,
            &row.export_id,
            body,
            None,
        )
        .await
        .map_err(|e| e.to_string())?;
        tracing::info!(export = %row.export_id, status = %row.status, records = ?row.record_count, "export finished");
        Ok(())
    }
}
