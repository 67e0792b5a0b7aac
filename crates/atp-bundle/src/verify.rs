//! Offline verification of a bundle: everything `openssl` and `sha256sum` check, and then every
//! record against its proof and every proof against a signed checkpoint.
//!
//! The archive is indexed first (headers only), then each file is read from its offset, so a
//! bundle of any size is checked with bounded memory: the records parts and `proofs.jsonl` are
//! walked side by side, line k of one against line k of the other, and `disclosures.jsonl`
//! (when there is one) alongside them: its lines are in record order too, so each is checked
//! against its record when the walk reaches it.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};

use atp_core::checkpoint::{Checkpoint, TlogProof};
use atp_core::names::{PartitionKey, SourceId, TenantId};
use atp_core::note::{self, Verifier};
use atp_core::{Digest, chain, merkle, record};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::pkcs8::DecodePublicKey;
use ed25519_dalek::{Signature, VerifyingKey};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::disclosure::{self, CheckError, DisclosureLine};
use crate::{
    DISCLOSURES, MANIFEST, MANIFEST_SIG, Manifest, PROOFS, ProofLine, SHA256SUMS, SIGNING_KEY,
    checkpoint_path, part_number, part_path, sha256_hex,
};

/// Small files are read whole; these bound what a hostile archive can make us allocate.
const MAX_MANIFEST: u64 = 64 << 20;
const MAX_SMALL: u64 = 64 << 10;
/// A record or proof line longer than this is refused rather than buffered.
const MAX_LINE: usize = 16 << 20;

/// Whom to trust. Empty means self-attested: the bundle is checked against the keys it
/// carries, which proves it is intact and consistent but not who made it.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// Note verifier keys (`name+kid+key`): from `--key`, a JWKS's `noteVerifierKey`, or the
    /// server's keyring.
    pub verifiers: Vec<Verifier>,
    /// Bare public keys (a PEM): trusted under whatever key name a checkpoint is signed with.
    pub keys: Vec<VerifyingKey>,
}

impl Trust {
    pub fn is_anchored(&self) -> bool {
        !self.verifiers.is_empty() || !self.keys.is_empty()
    }

    fn trusts(&self, key: &VerifyingKey) -> bool {
        self.keys.contains(key) || self.verifiers.iter().any(|v| v.public_key() == key)
    }

    /// Verifiers to open `note` with: the named ones, and each bare key under every name the
    /// note's signature lines use.
    fn for_note(&self, note: &str) -> Vec<Verifier> {
        let mut out = self.verifiers.clone();
        if let Ok((_, sigs)) = note::split(note) {
            for key in &self.keys {
                out.extend(
                    sigs.iter()
                        .filter_map(|s| Verifier::new(&s.name, *key).ok()),
                );
            }
        }
        out
    }
}

/// Where a record sits in the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "BundleRecordAt")]
pub struct RecordAt {
    pub record_id: String,
    pub source_id: String,
    pub chain_index: u64,
    /// The records part and the 1-based line in it.
    pub path: String,
    pub line: u64,
    /// The line of `proofs.jsonl` that should prove it.
    pub proof_line: u64,
}

/// One check that failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "BundleFailure")]
pub struct Failure {
    /// A stable code per kind of check: `RECORD_DIGEST`, `FILE_HASH`, `MANIFEST_SIGNATURE`…
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record: Option<RecordAt>,
}

fn fail(code: &'static str, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
        record: None,
    }
}

/// What verification found.
#[derive(Debug, Clone, Default, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "BundleReport")]
pub struct Report {
    pub ok: bool,
    /// The signing keys were checked against keys given from outside the bundle.
    pub anchored: bool,
    pub export_id: Option<String>,
    pub tenant_id: Option<String>,
    /// SHA-256 (hex) of `manifest.json`: what the exporter announced on completion.
    pub manifest_sha256: Option<String>,
    pub key_id: Option<String>,
    /// Records whose every check passed.
    pub records_verified: u64,
    /// Disclosed values proven against the sealed values of their records.
    pub disclosures_verified: u64,
    pub checkpoints_verified: usize,
    pub files_verified: usize,
    pub failures: Vec<Failure>,
}

impl Report {
    /// The failure to lead with: the first bad record if any (what an investigator needs),
    /// otherwise the first failure.
    pub fn first(&self) -> Option<&Failure> {
        self.failures
            .iter()
            .find(|f| f.record.is_some())
            .or_else(|| self.failures.first())
    }
}

/// An entry's place in the archive.
#[derive(Debug, Clone, Copy)]
struct Loc {
    offset: u64,
    size: u64,
}

/// Reads the archive `open` gives (called once per file read; each call must return a fresh
/// reader of the whole archive) and checks it against `trust`. I/O errors are errors; anything
/// wrong with the bundle is a [`Failure`] in the report.
pub fn verify<R: Read + Seek>(
    open: impl FnMut() -> io::Result<R>,
    trust: &Trust,
) -> io::Result<Report> {
    let mut v = Verification {
        open,
        trust,
        report: Report {
            anchored: trust.is_anchored(),
            ..Report::default()
        },
        index: BTreeMap::new(),
    };
    v.run()?;
    v.report.ok = v.report.failures.is_empty();
    Ok(v.report)
}

struct Verification<'t, F> {
    open: F,
    trust: &'t Trust,
    report: Report,
    index: BTreeMap<String, Loc>,
}

/// The checkpoint of one partition, opened.
struct OpenCheckpoint {
    note: String,
    size: u64,
    root: Digest,
}

impl<R: Read + Seek, F: FnMut() -> io::Result<R>> Verification<'_, F> {
    fn failed(&mut self, f: Failure) {
        self.report.failures.push(f);
    }

    fn section(&mut self, loc: Loc) -> io::Result<io::Take<R>> {
        let mut r = (self.open)()?;
        r.seek(SeekFrom::Start(loc.offset))?;
        Ok(r.take(loc.size))
    }

    /// A small file, whole; `None` (and a failure) if it is missing or too large.
    fn small(&mut self, path: &str, limit: u64) -> io::Result<Option<Vec<u8>>> {
        let Some(loc) = self.index.get(path).copied() else {
            self.failed(fail("MISSING_FILE", format!("{path} is missing")));
            return Ok(None);
        };
        if loc.size > limit {
            self.failed(fail(
                "FILE_TOO_LARGE",
                format!("{path} is {} bytes, more than {limit}", loc.size),
            ));
            return Ok(None);
        }
        let mut buf = Vec::with_capacity(loc.size as usize);
        self.section(loc)?.read_to_end(&mut buf)?;
        Ok(Some(buf))
    }

    fn run(&mut self) -> io::Result<()> {
        if !self.index_archive()? {
            return Ok(());
        }
        let (Some(manifest_bytes), Some(sig), Some(pem)) = (
            self.small(MANIFEST, MAX_MANIFEST)?,
            self.small(MANIFEST_SIG, MAX_SMALL)?,
            self.small(SIGNING_KEY, MAX_SMALL)?,
        ) else {
            return Ok(());
        };
        self.report.manifest_sha256 = Some(sha256_hex(&manifest_bytes));
        let Some(manifest) = self.manifest(&manifest_bytes, &sig, &pem) else {
            return Ok(());
        };
        self.report.export_id = Some(manifest.export_id.clone());
        self.report.tenant_id = Some(manifest.tenant_id.clone());
        self.report.key_id = Some(manifest.key_id.clone());
        let Some(sums) = self.sums(&manifest)? else {
            return Ok(());
        };
        // Listed since CONTRACT §6 was followed to the letter; bundles issued before that
        // leave it out, and nothing else changed, so an unlisted key is still accepted (its
        // signature over the manifest was checked above either way).
        self.check_hash(SIGNING_KEY, &sums, &sha256_hex(&pem));
        let checkpoints = self.checkpoints(&manifest, &sums)?;
        self.records(&manifest, &sums, &checkpoints)?;
        Ok(())
    }

    /// Indexes every entry; refuses anything but regular files at the bundle's paths.
    fn index_archive(&mut self) -> io::Result<bool> {
        let mut archive = tar::Archive::new((self.open)()?);
        let entries = match archive.entries_with_seek() {
            Ok(e) => e,
            Err(e) => {
                self.failed(fail("ARCHIVE", format!("not a tar archive: {e}")));
                return Ok(false);
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    self.failed(fail("ARCHIVE", format!("unreadable tar entry: {e}")));
                    return Ok(false);
                }
            };
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            // A bundle unpacked and packed again with `tar` gains `./` and directory entries.
            let path = raw.strip_prefix("./").unwrap_or(&raw).to_owned();
            if entry.header().entry_type() == tar::EntryType::Directory && layout_dir(&path) {
                continue;
            }
            if entry.header().entry_type() != tar::EntryType::Regular {
                self.failed(fail(
                    "UNEXPECTED_FILE",
                    format!("{path} is not a regular file"),
                ));
                continue;
            }
            if !allowed_path(&path) {
                self.failed(fail(
                    "UNEXPECTED_FILE",
                    format!("{path} is not part of a bundle's layout"),
                ));
                continue;
            }
            let loc = Loc {
                offset: entry.raw_file_position(),
                size: entry.size(),
            };
            if self.index.insert(path.clone(), loc).is_some() {
                self.failed(fail(
                    "DUPLICATE_FILE",
                    format!("{path} appears twice in the archive"),
                ));
            }
        }
        Ok(true)
    }

    /// Checks the signature, the key and the canonical form; `None` when nothing after can be
    /// trusted.
    fn manifest(&mut self, bytes: &[u8], sig: &[u8], pem: &[u8]) -> Option<Manifest> {
        let key = std::str::from_utf8(pem)
            .ok()
            .and_then(|p| VerifyingKey::from_public_key_pem(p).ok());
        let Some(key) = key else {
            self.failed(fail(
                "SIGNING_KEY",
                "signing-key.pem is not an Ed25519 SubjectPublicKeyInfo PEM",
            ));
            return None;
        };
        let signed = Signature::from_slice(sig).is_ok_and(|s| key.verify_strict(bytes, &s).is_ok());
        if !signed {
            self.failed(fail(
                "MANIFEST_SIGNATURE",
                "manifest.sig is not a valid signature over manifest.json by signing-key.pem",
            ));
            return None;
        }
        if self.trust.is_anchored() && !self.trust.trusts(&key) {
            self.failed(fail(
                "MANIFEST_KEY_UNTRUSTED",
                format!(
                    "manifest.json is signed by key {}, which is not among the trusted keys",
                    B64.encode(key.as_bytes())
                ),
            ));
            return None;
        }
        let manifest: Manifest = match serde_json::from_slice(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.failed(fail(
                    "MANIFEST",
                    format!("manifest.json is not a bundle manifest: {e}"),
                ));
                return None;
            }
        };
        if manifest.to_canonical().ok().as_deref() != Some(bytes) {
            self.failed(fail(
                "MANIFEST",
                "manifest.json is not RFC 8785 canonical JSON",
            ));
        }
        // The key's note key ID, if any known verifier (trusted, or named by the manifest's
        // checkpoints) carries the key: it must be the manifest's `keyId`.
        let carried: Vec<Verifier> = manifest
            .checkpoints
            .iter()
            .filter_map(|c| Verifier::parse(&c.verifier_key).ok())
            .collect();
        let named = self
            .trust
            .verifiers
            .iter()
            .chain(&carried)
            .find(|v| v.public_key() == &key)
            .map(|v| format!("{:08x}", v.key_id()));
        if let Some(kid) = named
            && kid != manifest.key_id
        {
            self.failed(fail(
                "MANIFEST",
                format!(
                    "manifest.json names key {} but was signed by key {kid}",
                    manifest.key_id
                ),
            ));
        }
        Some(manifest)
    }

    /// Checks `SHA256SUMS` against the manifest and the archive; returns path → expected hash.
    fn sums(&mut self, manifest: &Manifest) -> io::Result<Option<HashMap<String, String>>> {
        let Some(bytes) = self.small(SHA256SUMS, MAX_MANIFEST)? else {
            return Ok(None);
        };
        if sha256_hex(&bytes) != manifest.sha256sums {
            self.failed(fail(
                "SHA256SUMS",
                "SHA256SUMS does not hash to the manifest's sha256sums",
            ));
        }
        let Ok(text) = std::str::from_utf8(&bytes) else {
            self.failed(fail("SHA256SUMS", "SHA256SUMS is not UTF-8"));
            return Ok(None);
        };
        let mut sums = HashMap::new();
        let mut listed = Vec::new();
        for line in text.lines() {
            let Some((hash, path)) = line.split_once("  ") else {
                self.failed(fail(
                    "SHA256SUMS",
                    format!("not a sha256sum line: {line:?}"),
                ));
                continue;
            };
            if sums.insert(path.to_owned(), hash.to_owned()).is_some() {
                self.failed(fail("SHA256SUMS", format!("{path} is listed twice")));
            }
            listed.push(path.to_owned());
        }
        // `signing-key.pem` may be unlisted: bundles issued before it was listed still verify.
        let unlisted: Vec<String> = self
            .index
            .keys()
            .filter(|p| {
                ![MANIFEST, MANIFEST_SIG, SIGNING_KEY, SHA256SUMS].contains(&p.as_str())
                    && !sums.contains_key(*p)
            })
            .cloned()
            .collect();
        for path in unlisted {
            self.failed(fail(
                "UNLISTED_FILE",
                format!("{path} is in the archive but not in SHA256SUMS"),
            ));
        }
        for path in &listed {
            if !self.index.contains_key(path) {
                self.failed(fail(
                    "MISSING_FILE",
                    format!("{path} is listed in SHA256SUMS but missing"),
                ));
            }
        }
        let from_manifest: Vec<_> = manifest
            .files
            .iter()
            .map(|f| (f.path.as_str(), f.sha256.as_str()))
            .collect();
        let from_sums: Vec<_> = listed
            .iter()
            .map(|p| (p.as_str(), sums[p].as_str()))
            .collect();
        if from_manifest != from_sums {
            self.failed(fail(
                "MANIFEST",
                "the manifest's files differ from SHA256SUMS",
            ));
        }
        for f in &manifest.files {
            if let Some(loc) = self.index.get(&f.path)
                && loc.size != f.bytes
            {
                let msg = format!(
                    "{} is {} bytes; the manifest says {}",
                    f.path, loc.size, f.bytes
                );
                self.failed(fail("FILE_SIZE", msg));
            }
        }
        Ok(Some(sums))
    }

    fn check_hash(&mut self, path: &str, sums: &HashMap<String, String>, actual: &str) {
        match sums.get(path) {
            Some(expected) if expected == actual => self.report.files_verified += 1,
            Some(_) => self.failed(fail(
                "FILE_HASH",
                format!("{path} does not match its SHA256SUMS line"),
            )),
            None => {}
        }
    }

    /// Opens every checkpoint the manifest names, with the trusted keys (or, self-attested,
    /// the keys the manifest names).
    fn checkpoints(
        &mut self,
        manifest: &Manifest,
        sums: &HashMap<String, String>,
    ) -> io::Result<HashMap<String, OpenCheckpoint>> {
        let mut out = HashMap::new();
        let own: Vec<Verifier> = manifest
            .checkpoints
            .iter()
            .filter_map(|c| Verifier::parse(&c.verifier_key).ok())
            .collect();
        for c in &manifest.checkpoints {
            let where_ = format!("checkpoint of {}/{}", c.tenant_id, c.source_id);
            if c.tenant_id != manifest.tenant_id
                || c.path != checkpoint_path(&c.tenant_id, &c.source_id)
            {
                self.failed(fail(
                    "CHECKPOINT",
                    format!("{where_}: wrong tenant or path {}", c.path),
                ));
                continue;
            }
            let Some(bytes) = self.small(&c.path, MAX_SMALL)? else {
                continue;
            };
            self.check_hash(&c.path, sums, &sha256_hex(&bytes));
            let Ok(text) = String::from_utf8(bytes) else {
                self.failed(fail("CHECKPOINT", format!("{where_} is not UTF-8")));
                continue;
            };
            let known = if self.trust.is_anchored() {
                self.trust.for_note(&text)
            } else {
                own.clone()
            };
            let opened = match note::open(&text, &known) {
                Ok(o) if !o.verified.is_empty() => o,
                Ok(_) => {
                    self.failed(fail(
                        "CHECKPOINT_UNTRUSTED",
                        format!("{where_} is signed by no trusted key"),
                    ));
                    continue;
                }
                Err(e) => {
                    self.failed(fail(
                        "CHECKPOINT_SIGNATURE",
                        format!("{where_} does not verify: {e}"),
                    ));
                    continue;
                }
            };
            let body = match Checkpoint::parse(opened.text) {
                Ok(b) => b,
                Err(e) => {
                    self.failed(fail("CHECKPOINT", format!("{where_}: {e}")));
                    continue;
                }
            };
            let suffix = format!("/{}/{}", c.tenant_id, c.source_id);
            if !body.origin.ends_with(&suffix)
                || body.size != c.tree_size
                || B64.encode(body.root.0) != c.root_hash
            {
                self.failed(fail(
                    "CHECKPOINT",
                    format!(
                        "{where_} is for {} at size {}, not what the manifest says (size {})",
                        body.origin, body.size, c.tree_size
                    ),
                ));
                continue;
            }
            self.report.checkpoints_verified += 1;
            out.insert(
                c.source_id.clone(),
                OpenCheckpoint {
                    note: text,
                    size: body.size,
                    root: body.root,
                },
            );
        }
        Ok(out)
    }

    /// Walks the records parts and `proofs.jsonl` side by side.
    fn records(
        &mut self,
        manifest: &Manifest,
        sums: &HashMap<String, String>,
        checkpoints: &HashMap<String, OpenCheckpoint>,
    ) -> io::Result<()> {
        let mut parts: Vec<(u32, String)> = self
            .index
            .keys()
            .filter_map(|p| part_number(p).map(|n| (n, p.clone())))
            .collect();
        parts.sort();
        if let Some((n, _)) = parts.iter().enumerate().find(|(i, (n, _))| *i as u32 != *n) {
            self.failed(fail(
                "MISSING_FILE",
                format!(
                    "{} is missing: parts are numbered from 0",
                    part_path(n as u32)
                ),
            ));
        }
        let Some(proofs_loc) = self.index.get(PROOFS).copied() else {
            self.failed(fail("MISSING_FILE", format!("{PROOFS} is missing")));
            return Ok(());
        };
        let mut proofs = Lines::new(self.section(proofs_loc)?);
        let mut disclosures = match self.index.get(DISCLOSURES).copied() {
            Some(loc) => Some(DisclosureWalk::new(Lines::new(self.section(loc)?))),
            None => None,
        };
        let mut walk = RecordWalk {
            tenant: &manifest.tenant_id,
            checkpoints,
            prev: None,
            stopped: false,
            verified: 0,
        };
        let mut seen: u64 = 0;
        for (_, path) in &parts {
            let loc = self.index[path];
            let mut lines = Lines::new(self.section(loc)?);
            let mut line_no = 0;
            while let Some(record) = lines.next_line()? {
                line_no += 1;
                seen += 1;
                let proof = proofs.next_line()?;
                if walk.stopped {
                    continue;
                }
                match walk.check(record, proof, path, line_no, seen) {
                    Ok(at) => {
                        if let Some(d) = &mut disclosures
                            && let Err(f) = d.visit(record, &at)?
                        {
                            self.failed(*f);
                        }
                    }
                    Err(f) => {
                        walk.stopped = true;
                        self.failed(*f);
                    }
                }
            }
            if let Some(f) = lines.fault(path) {
                self.failed(f);
            }
            let hash = lines.finish()?;
            self.check_hash(path, sums, &hash);
        }
        let mut extra = 0u64;
        let mut orphan = None;
        while let Some(line) = proofs.next_line()? {
            extra += 1;
            if orphan.is_none() {
                orphan = serde_json::from_slice::<ProofLine>(line).ok();
            }
        }
        if extra > 0 && !walk.stopped {
            let record = orphan.map(|p| RecordAt {
                record_id: p.record_id,
                source_id: p.source_id,
                chain_index: p.chain_index,
                path: PROOFS.to_owned(),
                line: seen + 1,
                proof_line: seen + 1,
            });
            let named = record.as_ref().map_or_else(String::new, |r| {
                format!(
                    " (the first is for record {} chain index {})",
                    r.record_id, r.chain_index
                )
            });
            self.failed(Failure {
                code: "PROOF_WITHOUT_RECORD",
                message: format!(
                    "{PROOFS} has {extra} line(s) beyond the {seen} records{named}: a record was removed"
                ),
                record,
            });
        }
        if let Some(f) = proofs.fault(PROOFS) {
            self.failed(f);
        }
        let hash = proofs.finish()?;
        self.check_hash(PROOFS, sums, &hash);
        if let Some(mut d) = disclosures {
            if !walk.stopped
                && let Err(f) = d.rest()?
            {
                self.failed(*f);
            }
            if let Some(f) = d.lines.fault(DISCLOSURES) {
                self.failed(f);
            }
            self.report.disclosures_verified = d.verified;
            let hash = d.lines.finish()?;
            self.check_hash(DISCLOSURES, sums, &hash);
        }
        if seen != manifest.record_count {
            self.failed(fail(
                "RECORD_COUNT",
                format!(
                    "the bundle holds {seen} records; the manifest says {}",
                    manifest.record_count
                ),
            ));
        }
        self.report.records_verified = walk.verified;
        Ok(())
    }
}

/// The directories of the layout: `records`, `checkpoints`, `checkpoints/<tenant>`.
fn layout_dir(path: &str) -> bool {
    let path = path.trim_end_matches('/');
    matches!(path, "" | "." | "records" | "checkpoints")
        || path
            .strip_prefix("checkpoints/")
            .is_some_and(|t| TenantId::new(t).is_ok())
}

fn allowed_path(path: &str) -> bool {
    if [
        MANIFEST,
        MANIFEST_SIG,
        SIGNING_KEY,
        SHA256SUMS,
        PROOFS,
        DISCLOSURES,
    ]
    .contains(&path)
        || part_number(path).is_some()
    {
        return true;
    }
    let Some(rest) = path
        .strip_prefix("checkpoints/")
        .and_then(|r| r.strip_suffix(".checkpoint"))
    else {
        return false;
    };
    rest.split_once('/')
        .is_some_and(|(t, s)| TenantId::new(t).is_ok() && SourceId::new(s).is_ok())
}

/// Reads `\n`-terminated lines while hashing every byte of the file.
struct Lines<R> {
    inner: BufReader<HashRead<R>>,
    buf: Vec<u8>,
    fault: Option<&'static str>,
}

impl<R: Read> Lines<R> {
    fn new(r: R) -> Self {
        Self {
            inner: BufReader::with_capacity(
                1 << 20,
                HashRead {
                    inner: r,
                    hash: Sha256::new(),
                },
            ),
            buf: Vec::new(),
            fault: None,
        }
    }

    /// The next line without its newline; `None` at the end (or after a fault).
    fn next_line(&mut self) -> io::Result<Option<&[u8]>> {
        if self.fault.is_some() {
            return Ok(None);
        }
        self.buf.clear();
        let n = (&mut self.inner)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut self.buf)?;
        if n == 0 {
            return Ok(None);
        }
        if self.buf.last() != Some(&b'\n') {
            self.fault = Some(if n > MAX_LINE {
                "has a line longer than 16 MiB"
            } else {
                "does not end with a newline"
            });
            return Ok(None);
        }
        self.buf.pop();
        Ok(Some(&self.buf))
    }

    fn fault(&self, path: &str) -> Option<Failure> {
        self.fault
            .map(|f| fail("MALFORMED_FILE", format!("{path} {f}")))
    }

    /// Reads what is left and returns the SHA-256 of the whole file.
    fn finish(mut self) -> io::Result<String> {
        io::copy(&mut self.inner, &mut io::sink())?;
        Ok(hex::encode(self.inner.into_inner().hash.finalize()))
    }
}

struct HashRead<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for HashRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// The per-record checks, in record order.
struct RecordWalk<'a> {
    tenant: &'a str,
    checkpoints: &'a HashMap<String, OpenCheckpoint>,
    /// Source, chain index and chain hash of the previous record.
    prev: Option<(String, u64, Digest)>,
    /// After the first bad record the rest are only hashed: one misplaced line would
    /// otherwise report every line after it.
    stopped: bool,
    verified: u64,
}

impl RecordWalk<'_> {
    fn check(
        &mut self,
        bytes: &[u8],
        proof: Option<&[u8]>,
        path: &str,
        line: u64,
        proof_line: u64,
    ) -> Result<RecordAt, Box<Failure>> {
        let (head, link) = record::head(bytes).map_err(|e| {
            Box::new(fail(
                "RECORD_MALFORMED",
                format!("{path} line {line} is not a record: {e}"),
            ))
        })?;
        let at = RecordAt {
            record_id: head.record_id.to_string(),
            source_id: head.source_id.to_string(),
            chain_index: head.chain_index,
            path: path.to_owned(),
            line,
            proof_line,
        };
        let bad = |code, message: String| {
            Box::new(Failure {
                code,
                message: format!(
                    "record {} ({}/{} chain index {}, {path} line {line}): {message}",
                    at.record_id, head.tenant_id, at.source_id, at.chain_index
                ),
                record: Some(at.clone()),
            })
        };
        if head.tenant_id != self.tenant {
            return Err(bad(
                "RECORD_TENANT",
                format!("belongs to tenant {}, not the bundle's", head.tenant_id),
            ));
        }
        if let Some((source, index, _)) = &self.prev
            && (source.as_str(), *index) >= (at.source_id.as_str(), at.chain_index)
        {
            return Err(bad(
                "RECORD_ORDER",
                format!("comes after {source} chain index {index}: records are out of order"),
            ));
        }
        let Some(proof) = proof else {
            return Err(bad(
                "RECORD_WITHOUT_PROOF",
                format!("{PROOFS} ends before line {proof_line}: a record was added"),
            ));
        };
        let proof: ProofLine = serde_json::from_slice(proof).map_err(|e| {
            bad(
                "PROOF_MALFORMED",
                format!("{PROOFS} line {proof_line} is not a proof: {e}"),
            )
        })?;
        if (
            proof.record_id.as_str(),
            proof.source_id.as_str(),
            proof.chain_index,
        ) != (at.record_id.as_str(), at.source_id.as_str(), at.chain_index)
            || proof.tenant_id != head.tenant_id
        {
            return Err(bad(
                "RECORD_NOT_PROVEN",
                format!(
                    "{PROOFS} line {proof_line} proves record {} ({} chain index {}) instead: a record was added, removed or moved",
                    proof.record_id, proof.source_id, proof.chain_index
                ),
            ));
        }
        if proof.digest != link.digest {
            return Err(bad(
                "RECORD_DIGEST",
                format!(
                    "its bytes hash to {}, but its proof is for {}: the record was altered",
                    link.digest, proof.digest
                ),
            ));
        }
        let Some(cp) = self.checkpoints.get(at.source_id.as_str()) else {
            return Err(bad(
                "CHECKPOINT_MISSING",
                "no verified checkpoint for its partition".to_owned(),
            ));
        };
        let tlog = TlogProof::parse(&proof.tlog_proof)
            .map_err(|e| bad("PROOF_MALFORMED", format!("tlogProof: {e}")))?;
        let hashes: Option<Vec<Digest>> = proof
            .inclusion_proof
            .iter()
            .map(|h| {
                B64.decode(h)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .map(Digest)
            })
            .collect();
        let consistent = hashes.as_ref() == Some(&tlog.hashes)
            && tlog.index == at.chain_index
            && proof.tree_size == cp.size
            && tlog.checkpoint == cp.note;
        if !consistent {
            return Err(bad(
                "PROOF_MISMATCH",
                "its inclusionProof, tlogProof and the bundle's checkpoint disagree".to_owned(),
            ));
        }
        merkle::verify_inclusion(
            at.chain_index,
            cp.size,
            &merkle::leaf_hash(bytes),
            &tlog.hashes,
            &cp.root,
        )
        .map_err(|e| {
            bad(
                "INCLUSION_PROOF",
                format!("its inclusion proof does not lead to the checkpoint's root: {e}"),
            )
        })?;
        let expected_prev = match &self.prev {
            Some((source, index, chain_hash))
                if *source == at.source_id && index + 1 == at.chain_index =>
            {
                Some(*chain_hash)
            }
            _ if at.chain_index == 0 => TenantId::new(head.tenant_id.as_ref())
                .ok()
                .zip(SourceId::new(head.source_id.as_ref()).ok())
                .map(|(t, s)| chain::genesis(&PartitionKey::new(t, s))),
            _ => None,
        };
        if expected_prev.is_some_and(|p| p != head.prev_hash) {
            return Err(bad(
                "CHAIN_LINK",
                "its prevHash is not the chain hash of the record before it".to_owned(),
            ));
        }
        self.prev = Some((at.source_id.clone(), at.chain_index, link.chain_hash));
        self.verified += 1;
        Ok(at)
    }
}

/// `disclosures.jsonl`, read alongside the records: each line is checked against its record
/// when the walk reaches it. Lines are in record order, so a line naming a record before the
/// current one names a record the bundle does not hold (or holds elsewhere).
struct DisclosureWalk<R> {
    lines: Lines<R>,
    /// The 1-based number of the line in `next`.
    line_no: u64,
    /// The next line not yet matched to a record, parsed.
    next: Option<Result<DisclosureLine, CheckError>>,
    /// After the first failure the rest is only hashed.
    stopped: bool,
    verified: u64,
}

impl<R: Read> DisclosureWalk<R> {
    fn new(lines: Lines<R>) -> Self {
        Self {
            lines,
            line_no: 0,
            next: None,
            stopped: false,
            verified: 0,
        }
    }

    /// The next unmatched line, read if need be; `None` at the end.
    fn peek(&mut self) -> io::Result<Option<&Result<DisclosureLine, CheckError>>> {
        if self.next.is_none()
            && let Some(line) = self.lines.next_line()?
        {
            self.line_no += 1;
            self.next = Some(disclosure::parse(line));
        }
        Ok(self.next.as_ref())
    }

    fn failure(
        &mut self,
        code: &'static str,
        message: String,
        record: Option<RecordAt>,
    ) -> Box<Failure> {
        self.stopped = true;
        Box::new(Failure {
            code,
            message: format!("{DISCLOSURES} line {}: {message}", self.line_no),
            record,
        })
    }

    /// The line claims a record the walk has passed: it is not in the bundle at this place.
    fn without_record(&mut self, line: &DisclosureLine) -> Box<Failure> {
        let at = RecordAt {
            record_id: line.record_id.clone(),
            source_id: line.source_id.clone(),
            chain_index: line.chain_index,
            path: DISCLOSURES.to_owned(),
            line: self.line_no,
            proof_line: 0,
        };
        self.failure(
            "DISCLOSURE_WITHOUT_RECORD",
            format!(
                "discloses values of record {} ({} chain index {}), which the bundle does not hold there",
                line.record_id, line.source_id, line.chain_index
            ),
            Some(at),
        )
    }

    /// Checks the lines up to record `at` (whose bytes are `bytes`); `Ok(Err)` is a failure
    /// of the bundle, `Err` an I/O error.
    fn visit(&mut self, bytes: &[u8], at: &RecordAt) -> io::Result<Result<(), Box<Failure>>> {
        if self.stopped {
            return Ok(Ok(()));
        }
        let key = (at.source_id.as_str(), at.chain_index);
        let line = match self.peek()? {
            None => return Ok(Ok(())),
            Some(Err(e)) => {
                let message = e.to_string();
                return Ok(Err(self.failure("DISCLOSURE_MALFORMED", message, None)));
            }
            Some(Ok(line)) => line.clone(),
        };
        match (line.source_id.as_str(), line.chain_index).cmp(&key) {
            std::cmp::Ordering::Greater => Ok(Ok(())),
            std::cmp::Ordering::Less => Ok(Err(self.without_record(&line))),
            std::cmp::Ordering::Equal => {
                self.next = None;
                let named = |m: String| {
                    format!(
                        "record {} ({} chain index {}, {} line {}): {m}",
                        at.record_id, at.source_id, at.chain_index, at.path, at.line
                    )
                };
                match disclosure::check(&line, bytes) {
                    Ok(n) => {
                        self.verified += n as u64;
                        Ok(Ok(()))
                    }
                    Err(CheckError::Malformed(m)) => Ok(Err(self.failure(
                        "DISCLOSURE_MALFORMED",
                        named(m),
                        Some(at.clone()),
                    ))),
                    Err(CheckError::Mismatch(m)) => Ok(Err(self.failure(
                        "DISCLOSURE_MISMATCH",
                        named(m),
                        Some(at.clone()),
                    ))),
                }
            }
        }
    }

    /// After the last record: any line left names a record the bundle does not hold.
    fn rest(&mut self) -> io::Result<Result<(), Box<Failure>>> {
        if self.stopped {
            return Ok(Ok(()));
        }
        match self.peek()? {
            None => Ok(Ok(())),
            Some(Err(e)) => {
                let message = e.to_string();
                Ok(Err(self.failure("DISCLOSURE_MALFORMED", message, None)))
            }
            Some(Ok(line)) => {
                let line = line.clone();
                Ok(Err(self.without_record(&line)))
            }
        }
    }
}
