//! Packaging one export: fix the snapshot, stream the selection in record order with a proof for
//! every record, and write the bundle.
//!
//! Two stages run side by side: this task reads pages of records and the tiles their proofs need
//! from PostgreSQL, and the subject keys of the values the requester may read; a blocking
//! thread checks each record and proof, builds the proof lines, opens the values to disclose
//! (ADR 0020) and writes the archive. A bounded channel between them keeps memory flat however
//! large the export.
//!
//! Disclosures use the keys alive when the page is read, through a key cache of the attempt's
//! own ([`SubjectKeys::fresh`]): a key destroyed (erasure, retention) before an attempt starts
//! is never used by it, whatever this process cached earlier. A retry after an erasure may so
//! disclose less than an earlier attempt; only the attempt whose bundle is stored last is
//! recorded and announced (ADR 0005, decision 5), so that is harmless.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use atp_bundle::ProofLine;
use atp_bundle::disclosure::{self, DisclosureError};
use atp_bundle::write::{BundleWriter, CheckpointFile, ManifestHeader, Piece, WriteError};
use atp_core::merkle::{self, ProofPlan};
use atp_core::policy::Classification;
use atp_core::privacy::BucketKey;
use atp_core::{Digest, PartitionKey, SourceId, TenantId, record};
use atp_store::exports::{self, ExportRow, ExportSelection, SnapshotPart};
use atp_store::{StoreError, integrity as store};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::Utc;
use ed25519_dalek::VerifyingKey;
use sqlx::PgPool;
use tokio::sync::mpsc;

use crate::keyring::{KeyringError, SubjectKeys};
use crate::signer::CheckpointSigner;

/// Records per page read from PostgreSQL: one query for the rows, one for their tiles.
const PAGE: i64 = 2000;

/// Why packaging stopped.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// Worth another attempt: the database, the disk or the key store hiccupped.
    #[error("{0}")]
    Transient(String),
    /// Another attempt would fail the same way: the export fails with this code.
    #[error("{code}: {detail}")]
    Permanent { code: &'static str, detail: String },
}

fn permanent(code: &'static str, detail: impl Into<String>) -> PackageError {
    PackageError::Permanent {
        code,
        detail: detail.into(),
    }
}

impl From<StoreError> for PackageError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Corrupt(d) => permanent("INTEGRITY_ERROR", d),
            other => Self::Transient(other.to_string()),
        }
    }
}

impl From<std::io::Error> for PackageError {
    fn from(e: std::io::Error) -> Self {
        Self::Transient(format!("spool: {e}"))
    }
}

impl From<WriteError> for PackageError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Io(e) => e.into(),
            other => permanent("EXPORT_FAILED", other.to_string()),
        }
    }
}

impl From<DisclosureError> for PackageError {
    fn from(e: DisclosureError) -> Self {
        // A sealed value its own key does not open: the record or the key store is not what
        // sealed it. Nothing unverified is handed out.
        permanent("INTEGRITY_ERROR", e.to_string())
    }
}

impl From<KeyringError> for PackageError {
    fn from(e: KeyringError) -> Self {
        match e {
            KeyringError::Store(e) => Self::Transient(format!("subject keys: {e}")),
            other => permanent("EXPORT_FAILED", other.to_string()),
        }
    }
}

/// A packaged bundle, on local disk until stored.
#[derive(Debug, Clone)]
pub struct Packaged {
    /// The bundle in pieces ([`atp_bundle::write::Finished`]): the records parts in this file,
    /// then the spooled proofs (and disclosures) behind their headers, then the tail.
    pub head: PathBuf,
    pub pieces: Vec<Piece>,
    /// Where the spooled pieces are: removed with the bundle.
    pub spool: PathBuf,
    pub tail: Vec<u8>,
    pub bytes: u64,
    pub manifest_sha256: String,
    pub record_count: u64,
    /// The subject keys whose values the bundle discloses (an erasure withdraws it).
    pub disclosed_kids: Vec<String>,
}

impl Packaged {
    /// The whole bundle, read in order.
    pub async fn reader(
        &self,
    ) -> std::io::Result<impl tokio::io::AsyncRead + Unpin + Send + use<>> {
        use tokio::io::AsyncReadExt as _;
        let mut out: Box<dyn tokio::io::AsyncRead + Unpin + Send> =
            Box::new(tokio::fs::File::open(&self.head).await?);
        for piece in &self.pieces {
            out = match piece {
                Piece::Bytes(b) => Box::new(out.chain(std::io::Cursor::new(b.clone()))),
                Piece::File { path, .. } => Box::new(out.chain(tokio::fs::File::open(path).await?)),
            };
        }
        Ok(out.chain(std::io::Cursor::new(self.tail.clone())))
    }

    /// Removes the spooled pieces.
    pub fn remove(&self) {
        let _ = std::fs::remove_file(&self.head);
        let _ = std::fs::remove_dir_all(&self.spool);
    }
}

/// What the packager needs besides the job.
pub struct Packager<S> {
    pub pool: PgPool,
    pub signer: Arc<S>,
    pub spool: PathBuf,
    /// How long to wait for checkpoints and the read model to cover what was logged when the
    /// export started.
    pub coverage_wait: Duration,
    pub max_records_per_second: Option<u32>,
    /// The subject keys that open sealed values for disclosure; `None` discloses nothing.
    pub keys: Option<SubjectKeys>,
}

/// What flows from the reading stage to the writing thread.
enum Item {
    /// The partition whose records follow, and the checkpoint their proofs are against.
    Partition(Arc<PartitionProof>),
    Record {
        bytes: Vec<u8>,
        digest: Vec<u8>,
        hashes: Vec<Digest>,
        /// The live keys of the values of this record the requester may see disclosed.
        keys: Vec<BucketKey>,
    },
    /// The partition's checkpoint file, once at least one of its records was written.
    Checkpoint(CheckpointFile),
}

struct PartitionProof {
    partition: PartitionKey,
    size: u64,
    root: Digest,
    note: String,
}

impl<S: CheckpointSigner> Packager<S> {
    /// Packages `row`'s export into `<spool>/<exportId>.tar`, counting records in `done`. On
    /// failure nothing is left in the spool.
    pub async fn package(
        &self,
        row: &ExportRow,
        done: &AtomicU64,
    ) -> Result<Packaged, PackageError> {
        let result = self.package_into_spool(row, done).await;
        if result.is_err() {
            let _ = std::fs::remove_dir_all(self.spool.join(&row.export_id));
            let _ = std::fs::remove_file(self.spool.join(format!("{}.tar", row.export_id)));
        }
        result
    }

    async fn package_into_spool(
        &self,
        row: &ExportRow,
        done: &AtomicU64,
    ) -> Result<Packaged, PackageError> {
        let tenant = TenantId::new(&row.tenant_id)
            .map_err(|e| permanent("INVALID_SELECTION", e.to_string()))?;
        let selection = row
            .selection()
            .map_err(|e| permanent("INVALID_SELECTION", e.to_string()))?;
        // Disclosed: sealed values of a classification the requester reads (for an access
        // export, of the subject's keys alone), opened with keys alive now.
        let readable = row.readable();
        let keys = self
            .keys
            .as_ref()
            .filter(|_| readable.iter().any(|c| c.is_encrypted()))
            .map(SubjectKeys::fresh);
        let (parts, created_at) = match (&row.snapshot, row.created_at) {
            (Some(s), Some(at)) => (
                serde_json::from_value(s.clone())
                    .map_err(|e| permanent("EXPORT_FAILED", format!("stored snapshot: {e}")))?,
                at,
            ),
            _ => {
                let parts = self.snapshot(&tenant, &selection).await?;
                let mut total = 0;
                for part in &parts {
                    let p = partition(&tenant, &part.source_id)?;
                    total +=
                        exports::count_selected(&self.pool, &p, &selection, part.tree_size).await?;
                }
                exports::fix_snapshot(&self.pool, &row.export_id, &parts, Utc::now(), total).await?
            }
        };
        let keyring = self
            .signer
            .keyring()
            .await
            .map_err(|e| PackageError::Transient(format!("key store: {e}")))?;
        let active = keyring.active.clone();
        let public = B64
            .decode(&active.public_key)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .and_then(|b| VerifyingKey::from_bytes(&b).ok())
            .ok_or_else(|| permanent("EXPORT_FAILED", "the active signing key is malformed"))?;

        let spool = self.spool.join(&row.export_id);
        let tar_path = self.spool.join(format!("{}.tar", row.export_id));
        if spool.exists() {
            std::fs::remove_dir_all(&spool)?;
        }
        std::fs::create_dir_all(&spool)?;
        // An access export says so in its signed selection: which subject keys chose its
        // records (random ids: they name no one).
        let mut manifest_selection = row.selection.clone();
        if let (Some(kids), Some(m)) = (&row.subject_keys, manifest_selection.as_object_mut()) {
            m.insert("subjectKeys".to_owned(), serde_json::json!(kids));
        }
        let header = ManifestHeader {
            export_id: row.export_id.clone(),
            tenant_id: row.tenant_id.clone(),
            created_at: record::timestamp(created_at),
            selection: manifest_selection,
            key_id: active.kid.clone(),
            signing_key: public,
        };
        let (tx, rx) = mpsc::channel::<Vec<Item>>(4);
        let writer = {
            let (tar_path, spool) = (tar_path.clone(), spool.clone());
            let mtime = u64::try_from(created_at.timestamp()).unwrap_or(0);
            tokio::task::spawn_blocking(move || {
                write_bundle(rx, &tar_path, &spool, mtime, header, &readable)
            })
        };
        let reading = Reading {
            tenant: &tenant,
            selection: &selection,
            keys,
        };
        let read = self
            .read_selection(&reading, &parts, &keyring, tx, done)
            .await;
        let written = writer
            .await
            .map_err(|e| PackageError::Transient(format!("bundle writer: {e}")))?;
        // A reading error explains a writer that stopped early; report it first.
        read?;
        let (sealed, disclosed_kids) = written?;
        // A key destroyed while this attempt packaged (an erasure, an expiry): the bundle would
        // disclose what is erased. Packaged again, the next attempt cannot read that key.
        if let Some(keys) = &self.keys {
            for kid in &disclosed_kids {
                let alive = atp_nats::subject_keys::wrapped(keys.store(), &tenant, kid)
                    .await
                    .map_err(|e| PackageError::Transient(format!("a subject key: {e}")))?;
                if alive.is_none() {
                    return Err(PackageError::Transient(format!(
                        "subject key {kid} was destroyed while the bundle was packaged; packaging again"
                    )));
                }
            }
        }
        let manifest_sha256 = atp_bundle::sha256_hex(&sealed.manifest_bytes);
        let record_count = sealed.manifest.record_count;
        let signature = self
            .signer
            .sign(&active.kid, &sealed.manifest_bytes)
            .await
            .map_err(|e| PackageError::Transient(format!("signing the manifest: {e}")))?;
        let finished = tokio::task::spawn_blocking(move || {
            let finished = sealed.finish(&signature)?;
            let rest_len = finished.rest_len();
            let head = finished
                .head
                .into_inner()
                .map_err(std::io::IntoInnerError::into_error)?;
            head.sync_all()?;
            let head_len = head.metadata()?.len();
            Ok::<_, PackageError>((head_len + rest_len, finished.pieces, finished.tail))
        })
        .await
        .map_err(|e| PackageError::Transient(format!("bundle writer: {e}")))??;
        let (bytes, pieces, tail) = finished;
        Ok(Packaged {
            head: tar_path,
            pieces,
            spool,
            bytes,
            tail,
            manifest_sha256,
            record_count,
            disclosed_kids: disclosed_kids.into_iter().collect(),
        })
    }

    /// The partitions to export and the tree size of each: the newest checkpoint once it covers
    /// everything logged when the export started and the read model holds all of it, or after
    /// `coverage_wait` the newest checkpoint the read model fully holds.
    async fn snapshot(
        &self,
        tenant: &TenantId,
        selection: &ExportSelection,
    ) -> Result<Vec<SnapshotPart>, PackageError> {
        let logs = exports::partitions(
            &self.pool,
            tenant.as_str(),
            selection.filters.source_id.as_deref(),
        )
        .await?;
        let deadline = Instant::now() + self.coverage_wait;
        let mut out = Vec::with_capacity(logs.len());
        for log in logs {
            let p = partition(tenant, &log.source_id)?;
            let target = log.tree_size as u64;
            let size = loop {
                let latest = store::checkpoint(&self.pool, &p, None)
                    .await?
                    .map_or(0, |c| c.size());
                let projected = exports::projected_below(&self.pool, &p, latest).await?;
                if latest >= target && projected == latest {
                    break latest;
                }
                if Instant::now() >= deadline {
                    break exports::checkpoint_at_most(&self.pool, &p, projected)
                        .await?
                        .map_or(0, |c| c.size());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            if size > 0 {
                out.push(SnapshotPart {
                    source_id: log.source_id,
                    tree_size: size,
                });
            }
        }
        Ok(out)
    }

    async fn read_selection(
        &self,
        reading: &Reading<'_>,
        parts: &[SnapshotPart],
        keyring: &crate::signer::Keyring,
        tx: mpsc::Sender<Vec<Item>>,
        done: &AtomicU64,
    ) -> Result<(), PackageError> {
        let (tenant, selection) = (reading.tenant, reading.selection);
        let started = Instant::now();
        let closed = || PackageError::Transient("the bundle writer stopped".to_owned());
        for part in parts {
            let p = partition(tenant, &part.source_id)?;
            let cp = store::checkpoint(&self.pool, &p, Some(part.tree_size))
                .await?
                .ok_or_else(|| {
                    permanent(
                        "CHECKPOINT_MISSING",
                        format!("no checkpoint of {p} at size {}", part.tree_size),
                    )
                })?;
            let verifier_key = keyring
                .all
                .iter()
                .find(|k| k.kid == cp.key_id)
                .map(|k| k.verifier_key.clone())
                .ok_or_else(|| {
                    permanent(
                        "EXPORT_FAILED",
                        format!("checkpoint key {} is not in the key store", cp.key_id),
                    )
                })?;
            let proof = Arc::new(PartitionProof {
                partition: p.clone(),
                size: cp.size(),
                root: cp.root()?,
                note: cp.note.clone(),
            });
            tx.send(vec![Item::Partition(proof.clone())])
                .await
                .map_err(|_| closed())?;
            let fetch = |from: u64| {
                exports::selected(&self.pool, &p, selection, from, part.tree_size, PAGE)
            };
            let mut any = false;
            let mut rows = fetch(0).await?;
            while let Some(last) = rows.last() {
                any = true;
                let next = last.chain_index as u64 + 1;
                let plans = rows
                    .iter()
                    .map(|r| ProofPlan::inclusion(r.chain_index as u64, part.tree_size))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| permanent("INTEGRITY_ERROR", e.to_string()))?;
                // The next page is read while this one's proofs are assembled.
                let prove = async {
                    let mut conn = self.pool.acquire().await.map_err(StoreError::from)?;
                    store::prove_all(&mut conn, &p, &plans).await
                };
                let (hashes, upcoming) = tokio::join!(prove, fetch(next));
                let hashes = hashes?;
                let page_keys = reading.page_keys(&rows).await?;
                let n = rows.len() as u64;
                let batch = std::mem::take(&mut rows)
                    .into_iter()
                    .zip(hashes)
                    .map(|(r, hashes)| Item::Record {
                        keys: r
                            .kids
                            .0
                            .iter()
                            .filter_map(|kid| page_keys.get(kid).cloned().flatten())
                            .collect(),
                        bytes: r.record,
                        digest: r.digest,
                        hashes,
                    })
                    .collect();
                tx.send(batch).await.map_err(|_| closed())?;
                rows = upcoming?;
                let total = done.fetch_add(n, Ordering::Relaxed) + n;
                if let Some(rate) = self.max_records_per_second {
                    let due = Duration::from_secs_f64(total as f64 / f64::from(rate.max(1)));
                    if let Some(ahead) = due.checked_sub(started.elapsed()) {
                        tokio::time::sleep(ahead).await;
                    }
                }
            }
            if any {
                tx.send(vec![Item::Checkpoint(CheckpointFile {
                    tenant_id: p.tenant.to_string(),
                    source_id: p.source.to_string(),
                    tree_size: proof.size,
                    root_hash: B64.encode(proof.root.0),
                    verifier_key,
                    note: proof.note.clone(),
                })])
                .await
                .map_err(|_| closed())?;
            }
        }
        Ok(())
    }
}

/// What one attempt reads: the tenant's records its selection holds and, when it discloses
/// anything, the subject keys to disclose with.
struct Reading<'a> {
    tenant: &'a TenantId,
    selection: &'a ExportSelection,
    /// A key cache of the attempt's own; `None` when nothing is disclosed.
    keys: Option<SubjectKeys>,
}

impl Reading<'_> {
    /// The keys a page's disclosures may use: every key its records name (for an access
    /// export, only the subject's), as the key store holds them now; `None` for a key that is
    /// destroyed.
    async fn page_keys(
        &self,
        rows: &[exports::PackagedRecord],
    ) -> Result<HashMap<String, Option<BucketKey>>, PackageError> {
        let mut out = HashMap::new();
        let Some(keys) = &self.keys else {
            return Ok(out);
        };
        for kid in rows.iter().flat_map(|r| r.kids.0.iter()) {
            let wanted = self
                .selection
                .subject_keys
                .as_ref()
                .is_none_or(|subject| subject.contains(kid));
            if !wanted || out.contains_key(kid) {
                continue;
            }
            out.insert(kid.clone(), keys.by_kid(self.tenant, kid).await?);
        }
        Ok(out)
    }
}

fn partition(tenant: &TenantId, source: &str) -> Result<PartitionKey, PackageError> {
    let source = SourceId::new(source).map_err(|e| permanent("INTEGRITY_ERROR", e.to_string()))?;
    Ok(PartitionKey::new(tenant.clone(), source))
}

type Sealed = atp_bundle::write::Sealed<BufWriter<File>>;

/// The writing thread: every record is checked ([`prepare`]) before it goes in, and every value
/// it discloses is opened with its key first.
fn write_bundle(
    mut rx: mpsc::Receiver<Vec<Item>>,
    tar_path: &Path,
    spool: &Path,
    mtime: u64,
    header: ManifestHeader,
    readable: &[Classification],
) -> Result<(Sealed, std::collections::BTreeSet<String>), PackageError> {
    let out = BufWriter::with_capacity(1 << 20, File::create(tar_path)?);
    let mut w = BundleWriter::new(out, spool, mtime)?;
    let mut current: Option<Arc<PartitionProof>> = None;
    let may_read = disclosure::readable_by(readable);
    let mut disclosed = std::collections::BTreeSet::new();
    while let Some(batch) = rx.blocking_recv() {
        for item in batch {
            match item {
                Item::Partition(p) => current = Some(p),
                Item::Checkpoint(c) => w.add_checkpoint(c),
                Item::Record {
                    bytes,
                    digest,
                    hashes,
                    keys,
                } => {
                    let cp = current.as_ref().ok_or_else(|| {
                        permanent("EXPORT_FAILED", "a record before its partition")
                    })?;
                    let (line, index) = prepare(&bytes, &digest, hashes, cp)?;
                    w.push_serialized(&bytes, &line, cp.partition.source.as_str(), index)?;
                    if keys.is_empty() {
                        continue;
                    }
                    if let Some(line) = disclosure::disclose(&bytes, &keys, &may_read)? {
                        w.disclose(&line)?;
                        disclosed.extend(keys.iter().map(|k| k.kid.clone()));
                    }
                }
            }
        }
    }
    let sealed = w.seal(header)?;
    Ok((sealed, disclosed))
}

/// Checks one record against its stored digest, its partition and its proof against the signed
/// root, so a bundle that would not verify is never handed out; returns its proof line and its
/// chain index.
fn prepare(
    bytes: &[u8],
    digest: &[u8],
    hashes: Vec<Digest>,
    cp: &PartitionProof,
) -> Result<(Vec<u8>, u64), PackageError> {
    let (head, link) =
        record::head(bytes).map_err(|e| permanent("INTEGRITY_ERROR", e.to_string()))?;
    let named = || {
        format!(
            "record {} ({} #{})",
            head.record_id, cp.partition, head.chain_index
        )
    };
    let in_place = link.digest.0.as_slice() == digest
        && head.tenant_id == cp.partition.tenant.as_str()
        && head.source_id == cp.partition.source.as_str();
    if !in_place {
        return Err(permanent(
            "INTEGRITY_ERROR",
            format!("{} does not match its stored digest or partition", named()),
        ));
    }
    merkle::verify_inclusion(
        head.chain_index,
        cp.size,
        &merkle::leaf_hash(bytes),
        &hashes,
        &cp.root,
    )
    .map_err(|e| {
        permanent(
            "INTEGRITY_ERROR",
            format!("{}: its proof does not reach the signed root: {e}", named()),
        )
    })?;
    let index = head.chain_index;
    let line = serde_json::to_vec(&ProofLine::new(
        &head,
        link.digest,
        cp.size,
        hashes,
        &cp.note,
    ))
    .map_err(|e| permanent("EXPORT_FAILED", e.to_string()))?;
    drop(head);
    Ok((line, index))
}
