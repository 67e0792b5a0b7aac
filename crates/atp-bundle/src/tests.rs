//! A bundle built from real sealed records and signed checkpoints, then tampered with in every
//! way CONTRACT §6 names. Each tampering must fail with its own code, naming the record.

use std::io::{Cursor, Read};

use atp_core::checkpoint::{Checkpoint, origin};
use atp_core::event::ProducerStamp;
use atp_core::merkle::{ProofPlan, leaf_hash, perfect_root, root_of};
use atp_core::names::{PartitionKey, SourceId, TenantId};
use atp_core::note::NoteSigner;
use atp_core::policy::{Classification, PolicyStamp};
use atp_core::privacy::{BucketKey, Place, field_key, seal};
use atp_core::record::{self, Record, SCHEMA_VERSION};
use atp_core::{Digest, chain};
use ed25519_dalek::{Signer, SigningKey};

use super::*;
use crate::verify::{Report, Trust, verify};
use crate::write::{BundleWriter, CheckpointFile, ManifestHeader};

const LOG: &str = "atp.test";

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

/// The subject key the test records seal with.
fn bucket() -> BucketKey {
    BucketKey::new("k-ada", &[5; 32])
}

/// Whether record `i` of `source` seals values: every fourth crm record, from the second.
fn seals(source: &str, i: u64) -> bool {
    source == "crm" && i % 4 == 1
}

/// Record `i`'s data: `{"n": i}`, with a personal e-mail and a sensitive number sealed when
/// [`seals`] says so.
fn data(record_id: &str, source: &str, i: u64) -> serde_json::Value {
    let mut data = serde_json::json!({"n": i});
    if seals(source, i) {
        for (path, cls, value) in [
            (
                "/email",
                Classification::Personal,
                serde_json::json!(format!("ada{i}@example.com")),
            ),
            (
                "/ssn",
                Classification::Sensitive,
                serde_json::json!({"v": [i, "078-05-1120"]}),
            ),
        ] {
            let place = Place {
                tenant: "acme",
                source,
                record_id,
                path,
            };
            let key = field_key(&bucket(), &place);
            let sealed = seal(&key, &place, cls, "k-ada", &value, [i as u8; 24]).unwrap();
            data[&path[1..]] = serde_json::to_value(sealed).unwrap();
        }
    }
    data
}

/// `n` chained records of partition acme/`source`.
fn records(source: &str, n: u64) -> Vec<Vec<u8>> {
    let p = PartitionKey::new(
        TenantId::new("acme").unwrap(),
        SourceId::new(source).unwrap(),
    );
    let mut prev = chain::genesis(&p);
    (0..n)
        .map(|i| {
            let record_id = format!("01JD{source:0>6}{i:016}").to_uppercase();
            let sealed = Record {
                schema_version: SCHEMA_VERSION.to_owned(),
                record_id: record_id.clone(),
                tenant_id: "acme".to_owned(),
                source_id: source.to_owned(),
                chain_index: i,
                prev_hash: prev,
                received_at: "2026-11-23T10:00:00.000000Z".to_owned(),
                committed_at: "2026-11-23T10:00:00.001000Z".to_owned(),
                policy: PolicyStamp::default(),
                producer: ProducerStamp {
                    key_id: None,
                    auth: "gateway".to_owned(),
                },
                event: serde_json::json!({"id": format!("e{i}"), "data": data(&record_id, source, i)}),
            }
            .seal()
            .unwrap();
            prev = sealed.link.chain_hash;
            sealed.bytes
        })
        .collect()
}

/// Signs a checkpoint of the first `size` records of `log`.
fn checkpoint(source: &str, log: &[Vec<u8>], size: usize) -> (String, Digest) {
    let leaves: Vec<Digest> = log[..size].iter().map(|r| leaf_hash(r)).collect();
    let root = root_of(&leaves);
    let p = PartitionKey::new(
        TenantId::new("acme").unwrap(),
        SourceId::new(source).unwrap(),
    );
    let body = Checkpoint {
        origin: origin(LOG, &p),
        size: size as u64,
        root,
    }
    .body();
    (
        NoteSigner::new(LOG, key()).unwrap().sign(&body).unwrap(),
        root,
    )
}

/// A bundle of every other record of two partitions (so chain links are checked only where
/// neighbours are both selected), proofs against checkpoints a little past the last one, and
/// the sealed values of every fourth crm record disclosed.
fn bundle() -> Vec<u8> {
    bundle_disclosing(true)
}

fn bundle_disclosing(disclose: bool) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let mut w = BundleWriter::new(Vec::new(), dir.path(), 1_790_000_000).unwrap();
    let signer = NoteSigner::new(LOG, key()).unwrap();
    for (source, n, size) in [("billing", 9, 12), ("crm", 30, 30)] {
        let log = records(source, n + 3);
        let leaves: Vec<Digest> = log.iter().map(|r| leaf_hash(r)).collect();
        let (note, root) = checkpoint(source, &log, size);
        for (i, bytes) in log.iter().enumerate().take(n as usize) {
            if source == "crm" && i % 3 == 2 {
                continue;
            }
            let (head, link) = record::head(bytes).unwrap();
            let hashes = ProofPlan::inclusion(i as u64, size as u64)
                .unwrap()
                .assemble(|node| {
                    let lo = node.first_leaf() as usize;
                    Some(perfect_root(&leaves[lo..lo + node.leaves() as usize]))
                })
                .unwrap();
            w.push(
                bytes,
                &ProofLine::new(&head, link.digest, size as u64, hashes, &note),
            )
            .unwrap();
            if disclose
                && let Some(line) =
                    crate::disclosure::disclose(bytes, &[bucket()], |_| true).unwrap()
            {
                w.disclose(&line).unwrap();
            }
        }
        w.add_checkpoint(CheckpointFile {
            tenant_id: "acme".into(),
            source_id: source.into(),
            tree_size: size as u64,
            root_hash: B64.encode(root.0),
            verifier_key: signer.verifier().encode(),
            note,
        });
    }
    let sealed = w
        .seal(ManifestHeader {
            export_id: "01JDEXPORT0000000000000000".into(),
            tenant_id: "acme".into(),
            created_at: "2026-11-23T10:00:00.000000Z".into(),
            selection: serde_json::json!({"action": "login"}),
            key_id: format!("{:08x}", signer.verifier().key_id()),
            signing_key: key().verifying_key(),
        })
        .unwrap();
    let sig = key().sign(&sealed.manifest_bytes).to_bytes();
    sealed.finish(&sig).unwrap().into_bytes().unwrap()
}

fn trusted() -> Trust {
    Trust {
        verifiers: vec![NoteSigner::new(LOG, key()).unwrap().verifier().clone()],
        keys: vec![],
    }
}

fn check(tar: &[u8], trust: &Trust) -> Report {
    verify(|| Ok(Cursor::new(tar)), trust).unwrap()
}

/// The archive's files, in order.
fn files(tar: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut a = tar::Archive::new(tar);
    a.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let mut bytes = Vec::new();
            e.read_to_end(&mut bytes).unwrap();
            (path, bytes)
        })
        .collect()
}

fn rebuild(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, bytes) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, path, bytes.as_slice()).unwrap();
    }
    b.into_inner().unwrap()
}

/// Rewrites one file's lines.
fn edit_lines(tar: &[u8], path: &str, f: impl FnOnce(&mut Vec<Vec<u8>>)) -> Vec<u8> {
    let mut all = files(tar);
    let file = all.iter_mut().find(|(p, _)| p == path).unwrap();
    let mut lines: Vec<Vec<u8>> = file.1.split(|b| *b == b'\n').map(<[u8]>::to_vec).collect();
    assert!(lines.pop().unwrap().is_empty());
    f(&mut lines);
    file.1 = lines
        .iter()
        .flat_map(|l| l.iter().chain(b"\n"))
        .copied()
        .collect();
    rebuild(&all)
}

fn first(report: &Report) -> (&'static str, String) {
    assert!(!report.ok, "verification passed a tampered bundle");
    let f = report.first().unwrap();
    (f.code, f.message.clone())
}

fn record_id(tar: &[u8], line: usize) -> String {
    let part = &files(tar)[0].1;
    let bytes = part.split(|b| *b == b'\n').nth(line).unwrap();
    record::head(bytes).unwrap().0.record_id.to_string()
}

const PART: &str = "records/part-00000.jsonl";

#[test]
fn an_intact_bundle_verifies_anchored_and_self_attested() {
    let tar = bundle();
    let r = check(&tar, &trusted());
    assert!(r.ok, "{:?}", r.failures);
    assert!(r.anchored);
    assert_eq!(r.records_verified, 9 + 20);
    assert_eq!(r.checkpoints_verified, 2);
    // Records 1, 5, 9, …, 29 of crm, but for 5, 17 and 29 (every third is left out): two
    // values each.
    assert_eq!(r.disclosures_verified, 2 * 5);
    // The part, proofs.jsonl, disclosures.jsonl, the two checkpoints and signing-key.pem.
    assert_eq!(r.files_verified, 6);
    let bare = Trust {
        verifiers: vec![],
        keys: vec![key().verifying_key()],
    };
    assert!(check(&tar, &bare).ok, "a PEM key alone anchors too");
    let own = check(&tar, &Trust::default());
    assert!(own.ok && !own.anchored);
    let names: Vec<String> = files(&tar).into_iter().map(|(p, _)| p).collect();
    assert_eq!(
        names,
        [
            PART,
            PROOFS,
            DISCLOSURES,
            "checkpoints/acme/billing.checkpoint",
            "checkpoints/acme/crm.checkpoint",
            SHA256SUMS,
            MANIFEST,
            MANIFEST_SIG,
            SIGNING_KEY
        ]
    );
}

#[test]
fn the_archive_is_reproducible_and_its_lines_canonical() {
    assert_eq!(bundle(), bundle());
    let all = files(&bundle());
    for (path, bytes) in &all {
        if path.ends_with(".jsonl") {
            for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let v = atp_core::canonical::parse_strict(line).unwrap();
                assert_eq!(
                    atp_core::canonical::to_canonical(&v).unwrap(),
                    line,
                    "{path}"
                );
            }
        }
    }
    let manifest = &all.iter().find(|(p, _)| p == MANIFEST).unwrap().1;
    let m: Manifest = serde_json::from_slice(manifest).unwrap();
    assert_eq!(&m.to_canonical().unwrap(), manifest);
    assert_eq!(m.record_count, 29);
    let sums = &all.iter().find(|(p, _)| p == SHA256SUMS).unwrap().1;
    assert_eq!(sha256_hex(sums), m.sha256sums);
}

#[test]
fn an_altered_record_is_named() {
    let tar = bundle();
    let victim = record_id(&tar, 4);
    let bad = edit_lines(&tar, PART, |l| {
        let text = String::from_utf8(l[4].clone()).unwrap();
        l[4] = text.replace(r#""n":4"#, r#""n":5"#).into_bytes();
    });
    let r = check(&bad, &trusted());
    let (code, msg) = first(&r);
    assert_eq!(code, "RECORD_DIGEST");
    assert!(msg.contains(&victim) && msg.contains("line 5"), "{msg}");
    assert!(r.failures.iter().any(|f| f.code == "FILE_HASH"));
}

#[test]
fn a_removed_record_is_named() {
    let tar = bundle();
    let after = record_id(&tar, 3);
    let r = check(&edit_lines(&tar, PART, |l| drop(l.remove(2))), &trusted());
    let (code, msg) = first(&r);
    assert_eq!(code, "RECORD_NOT_PROVEN");
    assert!(msg.contains(&after), "{msg}");
    let last = record_id(&tar, 28);
    let r = check(&edit_lines(&tar, PART, |l| drop(l.pop())), &trusted());
    let (code, msg) = first(&r);
    assert_eq!(code, "PROOF_WITHOUT_RECORD");
    assert!(msg.contains(&last), "{msg}");
}

#[test]
fn an_added_record_is_named() {
    let tar = bundle();
    let copied = record_id(&tar, 1);
    let r = check(
        &edit_lines(&tar, PART, |l| {
            let c = l[1].clone();
            l.insert(3, c);
        }),
        &trusted(),
    );
    let (code, msg) = first(&r);
    assert_eq!(code, "RECORD_ORDER");
    assert!(msg.contains(&copied), "{msg}");
    // A forged record at the end has no proof line at all.
    let forged = records("zeta", 1).remove(0);
    let r = check(&edit_lines(&tar, PART, |l| l.push(forged)), &trusted());
    let (code, msg) = first(&r);
    assert_eq!(code, "RECORD_WITHOUT_PROOF");
    assert!(msg.contains("zeta"), "{msg}");
}

#[test]
fn reordered_records_are_named() {
    let tar = bundle();
    let moved = record_id(&tar, 6);
    let r = check(&edit_lines(&tar, PART, |l| l.swap(5, 6)), &trusted());
    let (code, msg) = first(&r);
    assert_eq!(code, "RECORD_NOT_PROVEN");
    assert!(msg.contains(&moved) && msg.contains("line 6"), "{msg}");
}

#[test]
fn an_altered_proof_fails_its_record() {
    let tar = bundle();
    let victim = record_id(&tar, 2);
    let flip = |l: &mut Vec<Vec<u8>>| {
        let mut p: ProofLine = serde_json::from_slice(&l[2]).unwrap();
        let mut h = B64.decode(&p.inclusion_proof[0]).unwrap();
        h[0] ^= 1;
        let old = p.inclusion_proof[0].clone();
        p.inclusion_proof[0] = B64.encode(&h);
        p.tlog_proof = p.tlog_proof.replace(&old, &p.inclusion_proof[0]);
        l[2] = serde_json::to_vec(&p).unwrap();
    };
    let r = check(&edit_lines(&tar, PROOFS, flip), &trusted());
    let (code, msg) = first(&r);
    assert_eq!(code, "INCLUSION_PROOF");
    assert!(msg.contains(&victim), "{msg}");
    // Changing one copy of the path but not the other is caught before any hashing.
    let half = |l: &mut Vec<Vec<u8>>| {
        let mut p: ProofLine = serde_json::from_slice(&l[2]).unwrap();
        p.inclusion_proof.reverse();
        l[2] = serde_json::to_vec(&p).unwrap();
    };
    assert_eq!(
        first(&check(&edit_lines(&tar, PROOFS, half), &trusted())).0,
        "PROOF_MISMATCH"
    );
}

#[test]
fn a_swapped_checkpoint_is_refused() {
    let tar = bundle();
    // Another genuine, validly signed checkpoint of the same log, at another size.
    let (other, _) = checkpoint("billing", &records("billing", 12), 11);
    let mut all = files(&tar);
    all.iter_mut()
        .find(|(p, _)| p == "checkpoints/acme/billing.checkpoint")
        .unwrap()
        .1 = other.into_bytes();
    let r = check(&rebuild(&all), &trusted());
    let codes: Vec<_> = r.failures.iter().map(|f| f.code).collect();
    assert!(codes.contains(&"CHECKPOINT"), "{codes:?}");
    assert!(codes.contains(&"FILE_HASH"), "{codes:?}");
    let (code, msg) = first(&r);
    assert_eq!(code, "CHECKPOINT_MISSING");
    assert!(msg.contains("billing chain index 0"), "{msg}");
}

#[test]
fn a_manifest_resigned_with_a_foreign_key_is_refused() {
    let tar = bundle();
    let mallory = SigningKey::from_bytes(&[9; 32]);
    let mut all = files(&tar);
    let manifest_bytes = {
        let m = &mut all.iter_mut().find(|(p, _)| p == MANIFEST).unwrap().1;
        let mut manifest: Manifest = serde_json::from_slice(m).unwrap();
        manifest.selection = serde_json::json!({"action": "anything"});
        *m = manifest.to_canonical().unwrap();
        m.clone()
    };
    all.iter_mut().find(|(p, _)| p == MANIFEST_SIG).unwrap().1 =
        mallory.sign(&manifest_bytes).to_bytes().to_vec();
    all.iter_mut().find(|(p, _)| p == SIGNING_KEY).unwrap().1 = {
        use ed25519_dalek::pkcs8::EncodePublicKey;
        mallory
            .verifying_key()
            .to_public_key_pem(Default::default())
            .unwrap()
            .into_bytes()
    };
    let forged = rebuild(&all);
    let (code, _) = first(&check(&forged, &trusted()));
    assert_eq!(code, "MANIFEST_KEY_UNTRUSTED");
    // Leaving the original signature in place fails the signature itself.
    let mut all = files(&tar);
    all.iter_mut().find(|(p, _)| p == MANIFEST).unwrap().1 = manifest_bytes;
    assert_eq!(
        first(&check(&rebuild(&all), &trusted())).0,
        "MANIFEST_SIGNATURE"
    );
}

#[test]
fn strays_and_garbage_are_refused() {
    let tar = bundle();
    let mut all = files(&tar);
    all.push(("notes.txt".into(), b"hi".to_vec()));
    let r = check(&rebuild(&all), &trusted());
    assert_eq!(first(&r).0, "UNEXPECTED_FILE");
    assert_eq!(first(&check(b"not a tar at all", &trusted())).0, "ARCHIVE");
    let mut all = files(&tar);
    all.retain(|(p, _)| p != PROOFS);
    assert!(!check(&rebuild(&all), &trusted()).ok);
}

/// CONTRACT §6 with the standard tools, on the bundle unpacked by `tar`: `SHA256SUMS` lists
/// every file but the manifest, its signature and itself (the key included), and coreutils'
/// `sha256sum -c` passes.
#[test]
fn sha256sum_checks_every_file_but_the_manifest_its_signature_and_itself() {
    use std::process::Command;
    let run = |cmd: &mut Command| {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("{cmd:?} cannot run ({e}); CONTRACT §6 needs it installed"));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let tar = dir.path().join("bundle.tar");
    std::fs::write(&tar, bundle()).unwrap();
    let x = dir.path().join("x");
    std::fs::create_dir(&x).unwrap();
    let (ok, _, err) = run(Command::new("tar").arg("-xf").arg(&tar).arg("-C").arg(&x));
    assert!(ok, "tar -x: {err}");

    let sums = std::fs::read_to_string(x.join(SHA256SUMS)).unwrap();
    let mut listed: Vec<&str> = sums
        .lines()
        .map(|l| l.split_once("  ").unwrap().1)
        .collect();
    listed.sort_unstable();
    let mut expected: Vec<String> = files(&bundle())
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| ![MANIFEST, MANIFEST_SIG, SHA256SUMS].contains(&p.as_str()))
        .collect();
    expected.sort_unstable();
    assert_eq!(listed, expected);
    assert!(listed.contains(&SIGNING_KEY));

    let (ok, out, err) = run(Command::new("sha256sum")
        .current_dir(&x)
        .args(["-c", "--strict", SHA256SUMS]));
    assert!(ok, "sha256sum -c: {out} {err}");
    assert!(out.contains("signing-key.pem: OK"), "{out}");
    // The manifest's files are the same list, in the same order.
    let m: Manifest = serde_json::from_slice(&std::fs::read(x.join(MANIFEST)).unwrap()).unwrap();
    let from_manifest: Vec<String> = m
        .files
        .iter()
        .map(|f| format!("{}  {}\n", f.sha256, f.path))
        .collect();
    assert_eq!(from_manifest.concat(), sums);
}

/// A bundle issued before `signing-key.pem` was listed in `SHA256SUMS`, exactly as that writer
/// produced it (it is `bundle()` from commit 6678cce): it still verifies.
#[test]
fn a_bundle_issued_before_the_key_was_listed_still_verifies() {
    let tar = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/issued-before-signing-key-listed.tar"
    ))
    .unwrap();
    let sums = &files(&tar)
        .into_iter()
        .find(|(p, _)| p == SHA256SUMS)
        .unwrap()
        .1;
    assert!(
        !String::from_utf8_lossy(sums).contains(SIGNING_KEY),
        "the fixture must be of the old form"
    );
    let r = check(&tar, &trusted());
    assert!(r.ok, "{:?}", r.failures);
    assert_eq!(r.records_verified, 9 + 20);
    assert_eq!(r.files_verified, 4);
}

/// Once listed, the key file is held to its line: the same key in other bytes (CRLF line ends
/// verify the signature just as well) fails `FILE_HASH` and the manifest's size.
#[test]
fn a_listed_signing_key_is_held_to_its_hash() {
    let tar = bundle();
    let mut all = files(&tar);
    let pem = &mut all.iter_mut().find(|(p, _)| p == SIGNING_KEY).unwrap().1;
    *pem = String::from_utf8(pem.clone())
        .unwrap()
        .replace('\n', "\r\n")
        .into_bytes();
    let r = check(&rebuild(&all), &trusted());
    let codes: Vec<_> = r
        .failures
        .iter()
        .map(|f| (f.code, f.message.as_str()))
        .collect();
    assert_eq!(
        codes,
        [
            (
                "FILE_SIZE",
                "signing-key.pem is 116 bytes; the manifest says 113"
            ),
            (
                "FILE_HASH",
                "signing-key.pem does not match its SHA256SUMS line"
            )
        ]
    );
}

#[test]
fn a_signature_by_another_key_than_the_sealed_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sealed = BundleWriter::new(Vec::new(), dir.path(), 0)
        .unwrap()
        .seal(ManifestHeader {
            export_id: "01JDEXPORT0000000000000000".into(),
            tenant_id: "acme".into(),
            created_at: "2026-11-23T10:00:00.000000Z".into(),
            selection: serde_json::json!({}),
            key_id: "00000000".into(),
            signing_key: key().verifying_key(),
        })
        .unwrap();
    let other = SigningKey::from_bytes(&[9; 32])
        .sign(&sealed.manifest_bytes)
        .to_bytes();
    assert!(matches!(
        sealed.finish(&other),
        Err(crate::write::WriteError::Manifest(_))
    ));
}

/// Rewrites one line of `disclosures.jsonl` (as a parsed line) and leaves it canonical, as a
/// forger would: only `atp verify`'s check of the value against the record can notice.
fn edit_disclosure(tar: &[u8], line: usize, f: impl FnOnce(&mut DisclosureLine)) -> Vec<u8> {
    edit_lines(tar, DISCLOSURES, |l| {
        let mut d = crate::disclosure::parse(&l[line]).unwrap();
        f(&mut d);
        l[line] = d.to_canonical().unwrap();
    })
}

use crate::disclosure::DisclosureLine;

/// The record a disclosure line names, as the bundle holds it.
fn disclosed_record(tar: &[u8], line: usize) -> String {
    let d = files(tar)
        .into_iter()
        .find(|(p, _)| p == DISCLOSURES)
        .unwrap()
        .1;
    let first = d.split(|b| *b == b'\n').nth(line).unwrap();
    crate::disclosure::parse(first).unwrap().record_id
}

#[test]
fn disclosures_are_in_record_order_and_open_their_values() {
    let tar = bundle();
    let d = &files(&tar)
        .into_iter()
        .find(|(p, _)| p == DISCLOSURES)
        .unwrap()
        .1;
    let lines: Vec<DisclosureLine> = d
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| crate::disclosure::parse(l).unwrap())
        .collect();
    let at: Vec<(String, u64)> = lines
        .iter()
        .map(|l| (l.source_id.clone(), l.chain_index))
        .collect();
    let crm = |i| ("crm".to_owned(), i);
    assert_eq!(at, [crm(1), crm(9), crm(13), crm(21), crm(25)]);
    let v = &lines[1].values;
    assert_eq!(v[0].path, "/email");
    assert_eq!(v[0].value, serde_json::json!("ada9@example.com"));
    assert_eq!(v[1].path, "/ssn");
    assert_eq!(v[1].value, serde_json::json!({"v": [9, "078-05-1120"]}));
    // The records themselves hold ciphertext only.
    let part = String::from_utf8(files(&tar)[0].1.clone()).unwrap();
    assert!(!part.contains("ada9@example.com") && !part.contains("078-05-1120"));
}

#[test]
fn a_tampered_disclosed_value_is_named() {
    let tar = bundle();
    let victim = disclosed_record(&tar, 2);
    let bad = edit_disclosure(&tar, 2, |d| {
        d.values[0].value = serde_json::json!("mallory@example.com");
    });
    let r = check(&bad, &trusted());
    let (code, msg) = first(&r);
    assert_eq!(code, "DISCLOSURE_MISMATCH");
    assert!(
        msg.contains(&victim) && msg.contains("/email") && msg.contains("not the one sealed"),
        "{msg}"
    );
    // The records and their proofs are fine; only the disclosures file's size and hash fail
    // besides.
    assert_eq!(r.records_verified, 29);
    let codes: Vec<_> = r.failures.iter().map(|f| f.code).collect();
    assert_eq!(codes, ["FILE_SIZE", "DISCLOSURE_MISMATCH", "FILE_HASH"]);
}

#[test]
fn a_wrong_key_or_a_key_for_another_path_opens_nothing() {
    let tar = bundle();
    // Another key altogether.
    let wrong = edit_disclosure(&tar, 0, |d| {
        d.values[0].field_key = B64.encode([1u8; 32]);
    });
    let (code, msg) = first(&check(&wrong, &trusted()));
    assert_eq!(code, "DISCLOSURE_MISMATCH");
    assert!(msg.contains("does not open the value at /email"), "{msg}");
    // The record's own key for its other value, or the same path's key of another record:
    // a field key opens exactly one value.
    let swapped = edit_disclosure(&tar, 0, |d| {
        let ssn_key = d.values[1].field_key.clone();
        d.values[0].field_key = ssn_key;
    });
    let (code, msg) = first(&check(&swapped, &trusted()));
    assert_eq!(code, "DISCLOSURE_MISMATCH");
    assert!(msg.contains("/email"), "{msg}");
    let other_key = {
        let d = &files(&tar)
            .into_iter()
            .find(|(p, _)| p == DISCLOSURES)
            .unwrap()
            .1;
        let second = d.split(|b| *b == b'\n').nth(1).unwrap();
        crate::disclosure::parse(second).unwrap().values[0]
            .field_key
            .clone()
    };
    let moved = edit_disclosure(&tar, 0, |d| d.values[0].field_key = other_key);
    assert_eq!(first(&check(&moved, &trusted())).0, "DISCLOSURE_MISMATCH");
    // A value disclosed at a path the record does not seal.
    let nowhere = edit_disclosure(&tar, 0, |d| d.values[1].path = "/zz".to_owned());
    let (code, msg) = first(&check(&nowhere, &trusted()));
    assert_eq!(code, "DISCLOSURE_MISMATCH");
    assert!(msg.contains("no sealed value at /zz"), "{msg}");
}

#[test]
fn a_disclosure_without_its_record_is_named() {
    let tar = bundle();
    // Pointed at a record the bundle leaves out (crm 5: every third is not selected).
    let absent = edit_disclosure(&tar, 1, |d| {
        d.chain_index = 5;
        d.record_id = "01JD000CRM0000000000000005".to_owned();
    });
    let (code, msg) = first(&check(&absent, &trusted()));
    assert_eq!(code, "DISCLOSURE_WITHOUT_RECORD");
    assert!(msg.contains("01JD000CRM0000000000000005"), "{msg}");
    // A line past the last record.
    let extra = edit_lines(&tar, DISCLOSURES, |l| {
        let mut d = crate::disclosure::parse(&l[4]).unwrap();
        d.chain_index = 99;
        l.push(d.to_canonical().unwrap());
    });
    assert_eq!(
        first(&check(&extra, &trusted())).0,
        "DISCLOSURE_WITHOUT_RECORD"
    );
    // Two lines swapped: the later one comes first, so the earlier one is left behind.
    let swapped = edit_lines(&tar, DISCLOSURES, |l| l.swap(0, 1));
    assert_eq!(
        first(&check(&swapped, &trusted())).0,
        "DISCLOSURE_WITHOUT_RECORD"
    );
    // A line naming another record id at the right place.
    let renamed = edit_disclosure(&tar, 0, |d| {
        d.record_id = "01JDFORGED0000000000000000".into()
    });
    assert_eq!(first(&check(&renamed, &trusted())).0, "DISCLOSURE_MISMATCH");
}

#[test]
fn a_malformed_disclosure_line_is_refused() {
    let tar = bundle();
    let spaced = edit_lines(&tar, DISCLOSURES, |l| {
        let v: serde_json::Value = serde_json::from_slice(&l[0]).unwrap();
        l[0] = serde_json::to_vec_pretty(&v)
            .unwrap()
            .into_iter()
            .filter(|b| *b != b'\n')
            .collect();
    });
    // Not canonical: refused before it is matched to a record, so no record is named.
    let r = check(&spaced, &trusted());
    let f = r
        .failures
        .iter()
        .find(|f| f.code == "DISCLOSURE_MALFORMED")
        .unwrap_or_else(|| panic!("{:?}", r.failures));
    assert!(f.message.contains("canonical"), "{}", f.message);
    let unsorted = edit_disclosure(&tar, 0, |d| d.values.swap(0, 1));
    let (code, msg) = first(&check(&unsorted, &trusted()));
    assert_eq!(code, "DISCLOSURE_MALFORMED");
    assert!(msg.contains("sorted"), "{msg}");
    let short = edit_disclosure(&tar, 0, |d| d.values[0].field_key = "AAAA".into());
    assert_eq!(first(&check(&short, &trusted())).0, "DISCLOSURE_MALFORMED");
}

#[test]
fn a_bundle_that_discloses_nothing_has_no_disclosures_file() {
    let tar = bundle_disclosing(false);
    let names: Vec<String> = files(&tar).into_iter().map(|(p, _)| p).collect();
    assert!(!names.iter().any(|n| n == DISCLOSURES), "{names:?}");
    let r = check(&tar, &trusted());
    assert!(r.ok, "{:?}", r.failures);
    assert_eq!(r.disclosures_verified, 0);
    assert_eq!(r.files_verified, 5);
    // Removing the disclosures of a bundle that listed them is noticed (it is signed).
    let mut all = files(&bundle());
    all.retain(|(p, _)| p != DISCLOSURES);
    let codes: Vec<_> = check(&rebuild(&all), &trusted())
        .failures
        .iter()
        .map(|f| f.code)
        .collect();
    assert_eq!(codes, ["MISSING_FILE"]);
}

#[test]
fn the_writer_takes_a_disclosure_only_for_the_record_just_pushed() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = BundleWriter::new(Vec::new(), dir.path(), 0).unwrap();
    let log = records("crm", 3);
    let line = crate::disclosure::disclose(&log[1], &[bucket()], |_| true)
        .unwrap()
        .unwrap();
    assert!(w.disclose(&line).is_err(), "before its record");
    let (note, _) = checkpoint("crm", &log, 3);
    let (head, link) = record::head(&log[1]).unwrap();
    w.push(
        &log[1],
        &ProofLine::new(&head, link.digest, 3, vec![], &note),
    )
    .unwrap();
    w.disclose(&line).unwrap();
    assert!(w.disclose(&line).is_err(), "twice");
    // Nothing is disclosed of a value whose class the reader may not read, or whose key is
    // not given.
    let personal_only =
        crate::disclosure::disclose(&log[1], &[bucket()], |s| s.cls == Classification::Personal)
            .unwrap()
            .unwrap();
    assert_eq!(personal_only.values.len(), 1);
    assert_eq!(personal_only.values[0].path, "/email");
    assert!(
        crate::disclosure::disclose(&log[1], &[], |_| true)
            .unwrap()
            .is_none()
    );
    assert!(
        crate::disclosure::disclose(&log[0], &[bucket()], |_| true)
            .unwrap()
            .is_none()
    );
}
