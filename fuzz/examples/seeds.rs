//! Writes the seed corpora under `fuzz/seeds/` (checked in; run again only when a format
//! changes): `cargo run --example seeds` from `fuzz/`.
//!
//! Seeds are real inputs signed with the fixed keys of `atp_fuzz`, so the fuzzer starts from
//! events that admit, notes that verify and a bundle that verifies, and mutates from there
//! instead of first having to guess a valid signature (which it never would).

use std::error::Error;
use std::fs;
use std::path::Path;

use atp_bundle::ProofLine;
use atp_bundle::write::{BundleWriter, CheckpointFile, ManifestHeader};
use atp_core::checkpoint::{Checkpoint, TlogProof, origin};
use atp_core::dsse::{self, SignedFields};
use atp_core::event::ProducerStamp;
use atp_core::merkle::{ProofPlan, leaf_hash, perfect_root, root_of};
use atp_core::names::PartitionKey;
use atp_core::note::NoteSigner;
use atp_core::policy::PolicyStamp;
use atp_core::producer::{example_event, sign_structured};
use atp_core::record::{self, Record, SCHEMA_VERSION};
use atp_core::{Digest, chain};
use atp_fuzz::{AdmissionInput, LOG_NAME, SOURCE_URI, flags, log_key, partition, producer_key};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{TimeZone, Utc};
use ed25519_dalek::Signer as _;

type Res<T> = Result<T, Box<dyn Error>>;

fn main() -> Res<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    admission(&root.join("admission"))?;
    json(&root.join("json"))?;
    let (log, notes) = checkpoints(&root.join("checkpoint"))?;
    bundle(&root.join("bundle"), &log, &notes)?;
    Ok(())
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Res<()> {
    fs::create_dir_all(dir)?;
    fs::write(dir.join(name), bytes)?;
    Ok(())
}

fn admission(dir: &Path) -> Res<()> {
    let time = Utc
        .with_ymd_and_hms(2026, 11, 23, 10, 0, 0)
        .single()
        .ok_or("time")?;
    let mut event = example_event("e1", SOURCE_URI, time, "alice", "UPDATE");
    event.insert("sequence".into(), "17".into());
    event.insert("tenantid".into(), "acme".into());
    sign_structured(&mut event, &producer_key(), atp_fuzz::PRODUCER_KEY_ID)?;
    let structured = |flags, headers: Vec<(&str, &str)>, body: Vec<u8>| {
        AdmissionInput {
            flags,
            headers: headers
                .into_iter()
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
                .collect(),
            body,
        }
        .encode()
    };
    let body = serde_json::to_vec(&event)?;
    let ct = ("content-type", "application/cloudevents+json");
    write(
        dir,
        "structured-signed",
        &structured(0, vec![ct], body.clone()),
    )?;
    let unsigned = serde_json::to_vec(&example_event("g1", SOURCE_URI, time, "bob", "READ"))?;
    write(
        dir,
        "structured-gateway",
        &structured(flags::GATEWAY, vec![], unsigned),
    )?;

    let data = br#"{"actor":{"id":"bob","type":"user"},"action":"LOGIN","resource":{"type":"Session","id":"s1"}}"#;
    let material = dsse::verification_material(&SignedFields {
        id: Some("b1"),
        source: Some(SOURCE_URI),
        specversion: Some("1.0"),
        ty: Some("com.example.login"),
        datacontenttype: Some("application/json"),
        time: Some(time),
        data,
        ..Default::default()
    });
    let sig = dsse::sign(&material, &producer_key(), atp_fuzz::PRODUCER_KEY_ID);
    let binary = vec![
        ("ce-specversion", "1.0"),
        ("CE-ID", "b1"),
        ("ce-source", SOURCE_URI),
        ("Ce-Type", "com.example.login"),
        ("ce-time", "2026-11-23T10:00:00Z"),
        ("ce-dssematerial", sig.as_str()),
        ("Content-Type", "application/json"),
    ];
    write(dir, "binary-signed", &structured(0, binary, data.to_vec()))?;
    Ok(())
}

fn json(dir: &Path) -> Res<()> {
    // The RFC 8785 vectors the core is tested against (tests/vectors/rfc8785, provenance there).
    let vectors = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/vectors/rfc8785/input");
    for entry in fs::read_dir(vectors)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        write(dir, &format!("rfc8785-{name}"), &fs::read(entry.path())?)?;
    }
    write(
        dir,
        "numbers",
        br#"[0,-0,1e3,1E-7,0.1,9007199254740991,-9007199254740991,1.7976931348623157e308,5e-324]"#,
    )?;
    write(
        dir,
        "strings",
        br#"{"\u00e9":"\ud83d\ude00","\\u0000":"\t\"\/","":[{}]}"#,
    )?;
    Ok(())
}

/// Signs checkpoints of a three-record log of `acme/crm`; returns the log and the notes.
fn checkpoints(dir: &Path) -> Res<(Vec<Vec<u8>>, Vec<String>)> {
    let p = partition().ok_or("partition")?;
    let log = records(&p, 3)?;
    let signer = NoteSigner::new(LOG_NAME, log_key())?;
    let leaves: Vec<Digest> = log.iter().map(|r| leaf_hash(r)).collect();
    let mut notes = Vec::new();
    for size in 1..=log.len() {
        let body = Checkpoint {
            origin: origin(LOG_NAME, &p),
            size: size as u64,
            root: root_of(&leaves[..size]),
        }
        .body();
        notes.push(signer.sign(&body)?);
    }
    let last = notes.last().ok_or("no notes")?;
    write(dir, "note", last.as_bytes())?;
    write(dir, "verifier-key", signer.verifier().encode().as_bytes())?;
    let proof = TlogProof {
        extra: Some(b"x".to_vec()),
        index: 1,
        hashes: inclusion(&leaves, 1, log.len())?,
        checkpoint: last.clone(),
    };
    write(dir, "tlog-proof", proof.to_text().as_bytes())?;
    Ok((log, notes))
}

fn inclusion(leaves: &[Digest], index: usize, size: usize) -> Res<Vec<Digest>> {
    Ok(
        ProofPlan::inclusion(index as u64, size as u64)?.assemble(|node| {
            let lo = node.first_leaf() as usize;
            Some(perfect_root(&leaves[lo..lo + node.leaves() as usize]))
        })?,
    )
}

fn records(p: &PartitionKey, n: u64) -> Res<Vec<Vec<u8>>> {
    let mut prev = chain::genesis(p);
    let mut out = Vec::new();
    for i in 0..n {
        let sealed = Record {
            schema_version: SCHEMA_VERSION.to_owned(),
            record_id: format!("01JDFUZZ{i:018}"),
            tenant_id: p.tenant.to_string(),
            source_id: p.source.to_string(),
            chain_index: i,
            prev_hash: prev,
            received_at: "2026-11-23T10:00:00.000000Z".to_owned(),
            committed_at: "2026-11-23T10:00:00.001000Z".to_owned(),
            policy: PolicyStamp::default(),
            producer: ProducerStamp {
                key_id: None,
                auth: "token:svc".to_owned(),
            },
            event: serde_json::json!({"id": format!("e{i}"), "data": {"n": i}}),
        }
        .seal()?;
        prev = sealed.link.chain_hash;
        out.push(sealed.bytes);
    }
    Ok(out)
}

/// A bundle of the whole log, as the exporter writes it, signed with the log key.
fn bundle(dir: &Path, log: &[Vec<u8>], notes: &[String]) -> Res<()> {
    let spool = tempfile::tempdir()?;
    let mut w = BundleWriter::new(Vec::new(), spool.path(), 1_790_000_000)?;
    let signer = NoteSigner::new(LOG_NAME, log_key())?;
    let leaves: Vec<Digest> = log.iter().map(|r| leaf_hash(r)).collect();
    let size = log.len();
    let note = notes.last().ok_or("no notes")?;
    for (i, bytes) in log.iter().enumerate() {
        let (head, link) = record::head(bytes)?;
        let hashes = inclusion(&leaves, i, size)?;
        w.push(
            bytes,
            &ProofLine::new(&head, link.digest, size as u64, hashes, note),
        )?;
    }
    let p = partition().ok_or("partition")?;
    w.add_checkpoint(CheckpointFile {
        tenant_id: p.tenant.to_string(),
        source_id: p.source.to_string(),
        tree_size: size as u64,
        root_hash: B64.encode(root_of(&leaves).0),
        verifier_key: signer.verifier().encode(),
        note: note.clone(),
    });
    let sealed = w.seal(ManifestHeader {
        export_id: "01JDFUZZEXPORT000000000000".into(),
        tenant_id: p.tenant.to_string(),
        created_at: "2026-11-23T10:00:00.000000Z".into(),
        selection: serde_json::json!({}),
        key_id: format!("{:08x}", signer.verifier().key_id()),
        signing_key: log_key().verifying_key(),
    })?;
    let sig = log_key().sign(&sealed.manifest_bytes).to_bytes();
    let tar = sealed.finish(&sig)?.into_bytes()?;
    // It must verify, or the seed starts the fuzzer off in the wrong place.
    let report = atp_bundle::verify::verify(
        || Ok(std::io::Cursor::new(tar.as_slice())),
        &atp_bundle::verify::Trust::default(),
    )?;
    if !report.ok {
        return Err(format!("the seed bundle does not verify: {:?}", report.failures).into());
    }
    write(dir, "bundle.tar", &tar)?;
    Ok(())
}
