//! Writes a bundle in one pass with bounded memory: the current records part is held in memory
//! (at most [`PART_MAX_BYTES`]) and goes into the archive when full; `proofs.jsonl` is spooled
//! to a file, since a tar header needs the size before the data.
//!
//! `disclosures.jsonl`, when the bundle discloses anything, is spooled the same way.
//!
//! The archive comes out in pieces ([`Finished`]): the records parts (written to the caller's
//! writer as they fill), `proofs.jsonl` and `disclosures.jsonl` (the spool files, each behind
//! its header), and the rest (checkpoints, `SHA256SUMS`, the manifest, its signature and key,
//! the end of the archive). Read in order they are the tar; nothing is copied to assemble it.
//!
//! `signing-key.pem` is the last entry but is listed in `SHA256SUMS` (CONTRACT §6: every file
//! but `manifest.json`, `manifest.sig` and `SHA256SUMS` itself), so the public key is fixed
//! when the bundle is sealed, not when it is signed: its bytes are known before the manifest
//! that hashes them, and [`Sealed::finish`] cannot write a key other than the one listed.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::EncodePublicKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::{Signature, VerifyingKey};

use crate::disclosure::DisclosureLine;
use crate::{
    CheckpointEntry, DISCLOSURES, FileEntry, Hashing, MANIFEST, MANIFEST_SIG, Manifest,
    PART_MAX_BYTES, PART_MAX_RECORDS, PROOFS, ProofLine, SHA256SUMS, SIGNING_KEY, checkpoint_path,
    part_path, sha256_hex,
};

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("bundle I/O: {0}")]
    Io(#[from] io::Error),
    #[error("records must come in record order: {0}")]
    OutOfOrder(String),
    #[error("a disclosure must follow its record, once: {0}")]
    Disclosure(String),
    #[error("manifest: {0}")]
    Manifest(String),
}

/// What the manifest says besides the files: filled in by the exporter.
#[derive(Debug, Clone)]
pub struct ManifestHeader {
    pub export_id: String,
    pub tenant_id: String,
    pub created_at: String,
    pub selection: serde_json::Value,
    pub key_id: String,
    /// The public half of the key that will sign the manifest: written as `signing-key.pem`
    /// and listed in `SHA256SUMS` and the manifest's `files`.
    pub signing_key: VerifyingKey,
}

/// A partition's checkpoint: the manifest entry (its `path` is filled in here) and the note.
#[derive(Debug, Clone)]
pub struct CheckpointFile {
    pub tenant_id: String,
    pub source_id: String,
    pub tree_size: u64,
    pub root_hash: String,
    pub verifier_key: String,
    pub note: String,
}

pub struct BundleWriter<W: Write> {
    /// The records parts; the rest of the archive follows them.
    head: W,
    mtime: u64,
    part: Vec<u8>,
    part_records: u64,
    parts: u32,
    proofs_path: PathBuf,
    /// Taken when the bundle is sealed.
    proofs: Option<Hashing<BufWriter<File>>>,
    /// `disclosures.jsonl` while it grows: created with the first disclosure.
    disclosures_path: PathBuf,
    disclosures: Option<Hashing<BufWriter<File>>>,
    /// The record the last disclosure was for.
    disclosed: Option<(String, u64)>,
    files: Vec<FileEntry>,
    records: u64,
    last: Option<(String, u64)>,
    checkpoints: Vec<CheckpointFile>,
}

impl<W: Write> BundleWriter<W> {
    /// A bundle written to `out`; `spool` is a directory for `proofs.jsonl` (and
    /// `disclosures.jsonl`) while they grow, and `mtime` (seconds) stamps every entry so the
    /// archive is reproducible.
    pub fn new(out: W, spool: &Path, mtime: u64) -> Result<Self, WriteError> {
        let proofs_path = spool.join(PROOFS);
        let proofs = Hashing::new(BufWriter::with_capacity(
            1 << 20,
            File::create(&proofs_path)?,
        ));
        Ok(Self {
            head: out,
            mtime,
            part: Vec::new(),
            part_records: 0,
            parts: 0,
            proofs_path,
            proofs: Some(proofs),
            disclosures_path: spool.join(DISCLOSURES),
            disclosures: None,
            disclosed: None,
            files: Vec::new(),
            records: 0,
            last: None,
            checkpoints: Vec::new(),
        })
    }

    /// Adds record `bytes` (its canonical bytes) and the line proving it. Records must come in
    /// record order: by source, then chain index.
    pub fn push(&mut self, bytes: &[u8], proof: &ProofLine) -> Result<(), WriteError> {
        let line = serde_json::to_vec(proof).map_err(io::Error::from)?;
        self.push_serialized(bytes, &line, &proof.source_id, proof.chain_index)
    }

    /// [`Self::push`] with the proof line already serialized (by [`serde_json::to_vec`] of a
    /// [`ProofLine`]), so callers can prepare lines on several threads.
    pub fn push_serialized(
        &mut self,
        bytes: &[u8],
        proof_line: &[u8],
        source_id: &str,
        chain_index: u64,
    ) -> Result<(), WriteError> {
        let key = (source_id, chain_index);
        if let Some(last) = &self.last
            && (last.0.as_str(), last.1) >= key
        {
            return Err(WriteError::OutOfOrder(format!(
                "{}#{} after {}#{}",
                key.0, key.1, last.0, last.1
            )));
        }
        let full = self.part_records == PART_MAX_RECORDS
            || (!self.part.is_empty() && self.part.len() + bytes.len() + 1 > PART_MAX_BYTES);
        if full {
            self.flush_part()?;
        }
        self.part.extend_from_slice(bytes);
        self.part.push(b'\n');
        self.part_records += 1;
        self.records += 1;
        let proofs = self
            .proofs
            .as_mut()
            .ok_or_else(|| WriteError::Manifest("the bundle is already sealed".into()))?;
        proofs.write_all(proof_line)?;
        proofs.write_all(b"\n")?;
        match &mut self.last {
            Some((source, index)) if source == source_id => *index = chain_index,
            _ => self.last = Some((source_id.to_owned(), chain_index)),
        }
        Ok(())
    }

    /// Adds the disclosed values of the record pushed last (at most one line per record, so
    /// `disclosures.jsonl` follows record order).
    pub fn disclose(&mut self, line: &DisclosureLine) -> Result<(), WriteError> {
        let at = (line.source_id.clone(), line.chain_index);
        if self.last.as_ref() != Some(&at) || self.disclosed.as_ref() == Some(&at) {
            return Err(WriteError::Disclosure(format!(
                "{}#{} is not the record pushed last, or is disclosed already",
                at.0, at.1
            )));
        }
        if line.values.is_empty() {
            return Err(WriteError::Disclosure(format!(
                "{}#{} discloses no value",
                at.0, at.1
            )));
        }
        let bytes = line
            .to_canonical()
            .map_err(|e| WriteError::Disclosure(e.to_string()))?;
        if self.disclosures.is_none() {
            self.disclosures = Some(Hashing::new(BufWriter::with_capacity(
                1 << 20,
                File::create(&self.disclosures_path)?,
            )));
        }
        let out = self
            .disclosures
            .as_mut()
            .ok_or_else(|| WriteError::Manifest("the bundle is already sealed".into()))?;
        out.write_all(&bytes)?;
        out.write_all(b"\n")?;
        self.disclosed = Some(at);
        Ok(())
    }

    /// Adds the checkpoint a partition's proofs are against.
    pub fn add_checkpoint(&mut self, checkpoint: CheckpointFile) {
        self.checkpoints.push(checkpoint);
    }

    fn flush_part(&mut self) -> Result<(), WriteError> {
        let entry = write_entry(
            &mut self.head,
            &part_path(self.parts),
            &self.part,
            self.mtime,
        )?;
        self.files.push(entry);
        self.parts += 1;
        self.part_records = 0;
        // Keep the allocation for the next part.
        self.part.clear();
        Ok(())
    }

    /// Ends the records and proofs and writes everything after them but the signature:
    /// `proofs.jsonl`'s header, the checkpoints, `SHA256SUMS` and `manifest.json`. The manifest
    /// bytes are then signed by the caller.
    pub fn seal(mut self, header: ManifestHeader) -> Result<Sealed<W>, WriteError> {
        if !self.part.is_empty() {
            self.flush_part()?;
        }
        self.head.flush()?;
        let (proofs, sha256, bytes) = self
            .proofs
            .take()
            .ok_or_else(|| WriteError::Manifest("the bundle is already sealed".into()))?
            .finish();
        proofs
            .into_inner()
            .map_err(io::IntoInnerError::into_error)?;
        self.files.push(FileEntry {
            path: PROOFS.to_owned(),
            sha256,
            bytes,
        });
        let mut pieces = vec![
            Piece::Bytes(entry_header(PROOFS, bytes, self.mtime)?.to_vec()),
            Piece::File {
                path: self.proofs_path.clone(),
                len: bytes,
            },
        ];
        let mut tail = PADDING[..padding(bytes)].to_vec();
        // `disclosures.jsonl` comes right after the proofs, and only if anything is disclosed:
        // a bundle that discloses nothing is laid out exactly as before disclosures existed.
        if let Some(disclosures) = self.disclosures.take() {
            let (file, sha256, len) = disclosures.finish();
            file.into_inner().map_err(io::IntoInnerError::into_error)?;
            self.files.push(FileEntry {
                path: DISCLOSURES.to_owned(),
                sha256,
                bytes: len,
            });
            tail.extend_from_slice(&entry_header(DISCLOSURES, len, self.mtime)?);
            pieces.push(Piece::Bytes(std::mem::take(&mut tail)));
            pieces.push(Piece::File {
                path: self.disclosures_path.clone(),
                len,
            });
            tail = PADDING[..padding(len)].to_vec();
        }

        let mut checkpoints = std::mem::take(&mut self.checkpoints);
        checkpoints.sort_by(|a, b| a.source_id.cmp(&b.source_id));
        let mut entries = Vec::with_capacity(checkpoints.len());
        for c in checkpoints {
            let path = checkpoint_path(&c.tenant_id, &c.source_id);
            let file = write_entry(&mut tail, &path, c.note.as_bytes(), self.mtime)?;
            self.files.push(file);
            entries.push(CheckpointEntry {
                tenant_id: c.tenant_id,
                source_id: c.source_id,
                path,
                tree_size: c.tree_size,
                root_hash: c.root_hash,
                verifier_key: c.verifier_key,
            });
        }

        // The key goes into the archive last (after the signature it verifies), but its hash is
        // listed now, with the others: `sha256sum -c SHA256SUMS` then covers every file but
        // the manifest, its signature and the sums themselves.
        let signing_key = header
            .signing_key
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| WriteError::Manifest(e.to_string()))?
            .into_bytes();
        self.files.push(FileEntry {
            path: SIGNING_KEY.to_owned(),
            sha256: sha256_hex(&signing_key),
            bytes: signing_key.len() as u64,
        });
        let sums: String = self
            .files
            .iter()
            .map(|f| format!("{}  {}\n", f.sha256, f.path))
            .collect();
        let sums_entry = write_entry(&mut tail, SHA256SUMS, sums.as_bytes(), self.mtime)?;
        let manifest = Manifest {
            export_id: header.export_id,
            tenant_id: header.tenant_id,
            created_at: header.created_at,
            selection: header.selection,
            record_count: self.records,
            files: std::mem::take(&mut self.files),
            sha256sums: sums_entry.sha256,
            key_id: header.key_id,
            checkpoints: entries,
        };
        let manifest_bytes = manifest
            .to_canonical()
            .map_err(|e| WriteError::Manifest(e.to_string()))?;
        write_entry(&mut tail, MANIFEST, &manifest_bytes, self.mtime)?;
        Ok(Sealed {
            finished: Finished {
                head: self.head,
                pieces,
                tail,
            },
            mtime: self.mtime,
            signing_key: (header.signing_key, signing_key),
            manifest,
            manifest_bytes,
        })
    }
}

/// A bundle waiting for its manifest signature.
pub struct Sealed<W: Write> {
    finished: Finished<W>,
    mtime: u64,
    /// The manifest's signing key and `signing-key.pem`, as hashed into `SHA256SUMS`.
    signing_key: (VerifyingKey, Vec<u8>),
    pub manifest: Manifest,
    pub manifest_bytes: Vec<u8>,
}

impl<W: Write> Sealed<W> {
    /// Adds `manifest.sig` (the raw signature over the manifest bytes, by the key the header
    /// named) and `signing-key.pem`, and ends the archive.
    /// A signature by any other key is refused: the bundle would carry a key its own
    /// `SHA256SUMS` vouches for that cannot verify its manifest (a KMS that rotated between
    /// sealing and signing, say).
    pub fn finish(mut self, signature: &[u8; 64]) -> Result<Finished<W>, WriteError> {
        let (key, pem) = &self.signing_key;
        key.verify_strict(&self.manifest_bytes, &Signature::from_bytes(signature))
            .map_err(|_| {
                WriteError::Manifest(
                    "the signature is not by the signing key the bundle was sealed with".into(),
                )
            })?;
        let tail = &mut self.finished.tail;
        write_entry(tail, MANIFEST_SIG, signature, self.mtime)?;
        write_entry(tail, SIGNING_KEY, pem, self.mtime)?;
        // The end of an archive: two zero blocks.
        tail.extend_from_slice(&[0u8; 2 * BLOCK]);
        Ok(self.finished)
    }
}

/// What follows the head of a finished bundle, in order, before its tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Bytes(Vec<u8>),
    /// A spooled file (`proofs.jsonl`, `disclosures.jsonl`) of `len` bytes; the caller removes
    /// it once the bundle is stored.
    File {
        path: PathBuf,
        len: u64,
    },
}

impl Piece {
    pub fn len(&self) -> u64 {
        match self {
            Piece::Bytes(b) => b.len() as u64,
            Piece::File { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A finished bundle: `head`, then each of `pieces`, then `tail`.
pub struct Finished<W> {
    /// The writer the records parts went to.
    pub head: W,
    /// `proofs.jsonl` behind its header, then (if any) `disclosures.jsonl` behind its own.
    pub pieces: Vec<Piece>,
    /// Padding after the last spooled file, then every later entry and the end of the archive.
    pub tail: Vec<u8>,
}

impl<W> Finished<W> {
    /// The bytes after the head, in order.
    pub fn rest(&self) -> io::Result<impl Read + use<W>> {
        let mut out: Box<dyn Read + Send> = Box::new(io::empty());
        for piece in &self.pieces {
            out = match piece {
                Piece::Bytes(b) => Box::new(out.chain(io::Cursor::new(b.clone()))),
                Piece::File { path, .. } => Box::new(out.chain(File::open(path)?)),
            };
        }
        Ok(out.chain(io::Cursor::new(self.tail.clone())))
    }

    /// The size of everything after the head.
    pub fn rest_len(&self) -> u64 {
        self.pieces.iter().map(Piece::len).sum::<u64>() + self.tail.len() as u64
    }

    /// The spooled files, to remove once the bundle is stored.
    pub fn spooled(&self) -> impl Iterator<Item = &Path> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::File { path, .. } => Some(path.as_path()),
            Piece::Bytes(_) => None,
        })
    }
}

impl Finished<Vec<u8>> {
    /// The whole archive in memory (small bundles and tests).
    pub fn into_bytes(self) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(self.head.len() + self.rest_len() as usize);
        self.rest()?.read_to_end(&mut out)?;
        for path in self.spooled() {
            std::fs::remove_file(path)?;
        }
        let mut all = self.head;
        all.append(&mut out);
        Ok(all)
    }
}

const BLOCK: usize = 512;
const PADDING: [u8; BLOCK] = [0; BLOCK];

/// Zero bytes that fill the last block of `len` bytes of data.
fn padding(len: u64) -> usize {
    (BLOCK - (len % BLOCK as u64) as usize) % BLOCK
}

/// A ustar header: regular file, mode 0644, owner 0, the given mtime. Paths over 100 bytes are
/// split into ustar's prefix and name at a `/`.
fn entry_header(path: &str, size: u64, mtime: u64) -> io::Result<[u8; BLOCK]> {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_path(path)?;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(mtime);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    Ok(*h.as_bytes())
}

/// Writes one entry (header, data, padding) and returns its manifest entry.
fn write_entry(
    out: &mut impl Write,
    path: &str,
    bytes: &[u8],
    mtime: u64,
) -> io::Result<FileEntry> {
    out.write_all(&entry_header(path, bytes.len() as u64, mtime)?)?;
    out.write_all(bytes)?;
    out.write_all(&PADDING[..padding(bytes.len() as u64)])?;
    Ok(FileEntry {
        path: path.to_owned(),
        sha256: sha256_hex(bytes),
        bytes: bytes.len() as u64,
    })
}
