//! Writes a bundle in one pass with bounded memory: the current records part is held in memory
//! (at most [`PART_MAX_BYTES`]) and goes into the archive when full; `proofs.jsonl` is spooled
//! to a file beside the archive and copied in at the end, since a tar header needs the size.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use ed25519_dalek::pkcs8::EncodePublicKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;

use crate::{
    CheckpointEntry, FileEntry, Hashing, MANIFEST, MANIFEST_SIG, Manifest, PART_MAX_BYTES,
    PART_MAX_RECORDS, PROOFS, ProofLine, SHA256SUMS, SIGNING_KEY, checkpoint_path, part_path,
    sha256_hex,
};

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("bundle I/O: {0}")]
    Io(#[from] io::Error),
    #[error("records must come in record order: {0}")]
    OutOfOrder(String),
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
    tar: tar::Builder<W>,
    mtime: u64,
    part: Vec<u8>,
    part_records: u64,
    parts: u32,
    proofs_path: PathBuf,
    /// Taken when the bundle is sealed.
    proofs: Option<Hashing<BufWriter<File>>>,
    files: Vec<FileEntry>,
    records: u64,
    last: Option<(String, u64)>,
    checkpoints: Vec<CheckpointFile>,
}

impl<W: Write> BundleWriter<W> {
    /// A bundle written to `out`; `spool` is a directory for `proofs.jsonl` while it grows,
    /// and `mtime` (seconds) stamps every entry so the archive is reproducible.
    pub fn new(out: W, spool: &Path, mtime: u64) -> Result<Self, WriteError> {
        let proofs_path = spool.join(PROOFS);
        let proofs = Hashing::new(BufWriter::with_capacity(
            1 << 20,
            File::create(&proofs_path)?,
        ));
        Ok(Self {
            tar: tar::Builder::new(out),
            mtime,
            part: Vec::new(),
            part_records: 0,
            parts: 0,
            proofs_path,
            proofs: Some(proofs),
            files: Vec::new(),
            records: 0,
            last: None,
            checkpoints: Vec::new(),
        })
    }

    pub fn records(&self) -> u64 {
        self.records
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

    /// Adds the checkpoint a partition's proofs are against.
    pub fn add_checkpoint(&mut self, checkpoint: CheckpointFile) {
        self.checkpoints.push(checkpoint);
    }

    fn header(&self, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(self.mtime);
        h.set_uid(0);
        h.set_gid(0);
        h
    }

    fn append(&mut self, path: &str, bytes: &[u8]) -> Result<FileEntry, WriteError> {
        let mut h = self.header(bytes.len() as u64);
        self.tar.append_data(&mut h, path, bytes)?;
        Ok(FileEntry {
            path: path.to_owned(),
            sha256: sha256_hex(bytes),
            bytes: bytes.len() as u64,
        })
    }

    fn flush_part(&mut self) -> Result<(), WriteError> {
        let part = std::mem::take(&mut self.part);
        let entry = self.append(&part_path(self.parts), &part)?;
        self.files.push(entry);
        self.parts += 1;
        self.part_records = 0;
        // Keep the allocation for the next part.
        self.part = part;
        self.part.clear();
        Ok(())
    }

    /// Writes everything but the signature: the last part, `proofs.jsonl`, the checkpoints,
    /// `SHA256SUMS` and `manifest.json`. The manifest bytes are then signed by the caller.
    pub fn seal(mut self, header: ManifestHeader) -> Result<Sealed<W>, WriteError> {
        if !self.part.is_empty() {
            self.flush_part()?;
        }
        let (proofs, sha256, bytes) = self
            .proofs
            .take()
            .ok_or_else(|| WriteError::Manifest("the bundle is already sealed".into()))?
            .finish();
        proofs
            .into_inner()
            .map_err(io::IntoInnerError::into_error)?;
        let mut h = self.header(bytes);
        self.tar
            .append_data(&mut h, PROOFS, File::open(&self.proofs_path)?)?;
        self.files.push(FileEntry {
            path: PROOFS.to_owned(),
            sha256,
            bytes,
        });

        let mut checkpoints = std::mem::take(&mut self.checkpoints);
        checkpoints.sort_by(|a, b| a.source_id.cmp(&b.source_id));
        let mut entries = Vec::with_capacity(checkpoints.len());
        for c in checkpoints {
            let path = checkpoint_path(&c.tenant_id, &c.source_id);
            let file = self.append(&path, c.note.as_bytes())?;
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

        let sums: String = self
            .files
            .iter()
            .map(|f| format!("{}  {}\n", f.sha256, f.path))
            .collect();
        let sums_entry = self.append(SHA256SUMS, sums.as_bytes())?;
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
        self.append(MANIFEST, &manifest_bytes)?;
        Ok(Sealed {
            writer: self,
            manifest,
            manifest_bytes,
        })
    }
}

/// A bundle waiting for its manifest signature.
pub struct Sealed<W: Write> {
    writer: BundleWriter<W>,
    pub manifest: Manifest,
    pub manifest_bytes: Vec<u8>,
}

impl<W: Write> Sealed<W> {
    /// Adds `manifest.sig` (the raw signature over the manifest bytes) and `signing-key.pem`,
    /// ends the archive and hands back its writer.
    pub fn finish(mut self, signature: &[u8; 64], key: &VerifyingKey) -> Result<W, WriteError> {
        let pem = key
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| WriteError::Manifest(e.to_string()))?;
        self.writer.append(MANIFEST_SIG, signature)?;
        self.writer.append(SIGNING_KEY, pem.as_bytes())?;
        let out = self.writer.tar.into_inner()?;
        std::fs::remove_file(&self.writer.proofs_path)?;
        Ok(out)
    }
}
