//! Fuzzes `atp verify <bundle.tar>` (`atp_bundle::verify::verify`) with arbitrary archives.
//!
//! Each input is verified twice: as it is, and re-signed: its `manifest.json` (if any) signed
//! again with the seeds' log key, as a key-holding insider could. Without the second run the
//! fuzzer could never get past the manifest signature into SHA256SUMS, checkpoints, records and
//! proofs. Either way the verifier must answer with a report, never panic, and never call a
//! bundle good that it did not read.
#![no_main]

use std::io::{Cursor, Read};

use atp_bundle::verify::{Trust, verify};
use atp_bundle::{MANIFEST, MANIFEST_SIG, SIGNING_KEY};
use atp_fuzz::log_key;
use ed25519_dalek::Signer as _;
use ed25519_dalek::pkcs8::EncodePublicKey as _;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use libfuzzer_sys::fuzz_target;

fn check(archive: &[u8]) {
    // An `Err` (a read past the end a hostile header points to) is an error the CLI reports,
    // not a verdict; only a report must be consistent.
    if let Ok(report) = verify(|| Ok(Cursor::new(archive)), &Trust::default()) {
        assert_eq!(report.ok, report.failures.is_empty());
    }
}

/// The archive with `manifest.sig` and `signing-key.pem` replaced by the log key's, or `None`
/// when it is not a readable tar holding a manifest.
fn resigned(archive: &[u8]) -> Option<Vec<u8>> {
    let key = log_key();
    let pem = key.verifying_key().to_public_key_pem(LineEnding::LF).ok()?;
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut tar = tar::Archive::new(archive);
    for entry in tar.entries().ok()? {
        let mut entry = entry.ok()?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).ok()?;
        files.push((path, bytes));
    }
    let manifest = files.iter().find(|(p, _)| p == MANIFEST)?.1.clone();
    let sig = key.sign(&manifest).to_bytes().to_vec();
    files.retain(|(p, _)| p != MANIFEST_SIG && p != SIGNING_KEY);
    files.push((MANIFEST_SIG.to_owned(), sig));
    files.push((SIGNING_KEY.to_owned(), pem.into_bytes()));
    let mut out = tar::Builder::new(Vec::new());
    for (path, bytes) in &files {
        let mut header = tar::Header::new_ustar();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        // Paths a ustar header cannot hold are left out, as `tar` would refuse them.
        if header.set_path(path).is_err() {
            continue;
        }
        header.set_cksum();
        out.append(&header, bytes.as_slice()).ok()?;
    }
    out.into_inner().ok()
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if let Some(archive) = resigned(data) {
        check(&archive);
    }
});
