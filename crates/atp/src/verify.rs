//! `atp verify`: re-walk a partition's chain from the ledger, or check one record with no
//! server at all.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use async_nats::jetstream::Context;
use atp_core::checkpoint::{Checkpoint, TlogProof, verify_record};
use atp_core::names::PartitionKey;
use atp_core::note::Verifier;
use atp_core::walk::ChainWalk;
use atp_core::{Digest, canonical, record};
use atp_nats::{integrity, signing_keys, streams, subjects};
use serde::Serialize;

/// What `atp verify chain` found.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChainReport {
    pub ok: bool,
    pub tenant_id: String,
    pub source_id: String,
    /// Records walked and verified, in chain order from index 0.
    pub records: u64,
    pub chain_hash: String,
    pub root: String,
    pub checkpoints_verified: u64,
    pub trusted_keys: Vec<String>,
    /// Everything wrong, each naming the chain index or checkpoint size concerned.
    pub problems: Vec<String>,
}

fn verifiers(keys: &[String]) -> anyhow::Result<Vec<Verifier>> {
    keys.iter()
        .map(|k| Verifier::parse(k).with_context(|| format!("bad verifier key {k:?}")))
        .collect()
}

/// Walks every record of `p` on ATP_LEDGER and checks every checkpoint on ATP_CHECKPOINTS:
/// its signature by a trusted key, its origin, and that its root is the root of the walked log
/// at its size.
pub async fn chain(js: &Context, p: &PartitionKey, keys: &[String]) -> anyhow::Result<ChainReport> {
    let known = if keys.is_empty() {
        let kv = signing_keys::bucket(js).await?;
        signing_keys::list(&kv)
            .await?
            .iter()
            .map(|k| k.verifier())
            .collect::<Result<Vec<_>, _>>()
            .context("a published signing key is inconsistent")?
    } else {
        verifiers(keys)?
    };
    let mut problems = Vec::new();
    let suffix = format!("/{}/{}", p.tenant, p.source);
    let mut by_size: BTreeMap<u64, Digest> = BTreeMap::new();
    for n in integrity::checkpoints(js, p).await? {
        match Checkpoint::open(&n, &known) {
            Ok(cp) if !cp.origin.ends_with(&suffix) => problems.push(format!(
                "checkpoint of size {} has origin {:?}, not this partition's log",
                cp.size, cp.origin
            )),
            Ok(cp) => {
                if by_size
                    .insert(cp.size, cp.root)
                    .is_some_and(|r| r != cp.root)
                {
                    problems.push(format!("two checkpoints of size {} disagree", cp.size));
                }
            }
            Err(e) => problems.push(format!("a checkpoint does not verify: {e}")),
        }
    }

    let mut walk = ChainWalk::new(p.clone());
    let mut verified = 0u64;
    let mut finding = None;
    let read = integrity::for_each_message(js, streams::LEDGER, subjects::ledger(p), |m| {
        if let Err(f) = walk.push(&m.payload) {
            finding = Some(f);
            return Err("stopped at the first broken record".to_owned());
        }
        if let Some(root) = by_size.get(&walk.size()) {
            if *root == walk.root() {
                verified += 1;
            } else {
                problems.push(format!(
                    "checkpoint of size {} has a root the ledger's records do not give",
                    walk.size()
                ));
            }
        }
        Ok(())
    })
    .await;
    if let Some(f) = finding {
        problems.push(format!("{}: {f}", f.code()));
    } else {
        read?;
    }
    for size in by_size.keys().filter(|s| **s > walk.size()) {
        problems.push(format!(
            "a checkpoint commits to {size} records but the ledger holds only {} that verify",
            walk.size()
        ));
    }
    // Nothing to vouch for is not a chain that verifies: a mistyped tenant or source, or a
    // ledger emptied under the checkpoints, must not pass.
    if walk.size() == 0 && problems.is_empty() {
        problems.push(format!(
            "the ledger holds no record of {p}: an unknown or empty partition verifies nothing"
        ));
    }
    Ok(ChainReport {
        ok: problems.is_empty(),
        tenant_id: p.tenant.to_string(),
        source_id: p.source.to_string(),
        records: walk.size(),
        chain_hash: walk.chain_hash().to_string(),
        root: walk.root().to_string(),
        checkpoints_verified: verified,
        trusted_keys: known.iter().map(Verifier::encode).collect(),
        problems,
    })
}

/// What `atp verify record` found.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordReport {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chain_index: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tree_size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    pub signed_by: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Reads a record file: canonical record bytes (one trailing newline allowed), or any JSON
/// form of a record (a proof answer's `record` member), reduced to its canonical bytes.
fn record_bytes(text: &[u8]) -> anyhow::Result<Vec<u8>> {
    let value = canonical::parse_strict(text).context("the record file is not I-JSON")?;
    let value = match value.get("record") {
        Some(inner) if value.get("inclusionProof").is_some() => inner.clone(),
        _ => value,
    };
    Ok(canonical::to_canonical(&value)?)
}

/// Reads a proof file: the C2SP tlog-proof text, or the JSON proof answer (its `tlogProof`).
fn proof_of(text: &str) -> anyhow::Result<(TlogProof, Option<Digest>)> {
    if text.starts_with(atp_core::checkpoint::TLOG_PROOF_HEADER) {
        return Ok((TlogProof::parse(text)?, None));
    }
    let v: serde_json::Value =
        serde_json::from_str(text).context("the proof file is neither a tlog-proof nor JSON")?;
    let tlog = v["tlogProof"]
        .as_str()
        .context("the proof answer has no tlogProof")?;
    let digest = v["digest"].as_str().map(str::parse).transpose()?;
    Ok((TlogProof::parse(tlog)?, digest))
}

/// Checks a record against its proof and checkpoint with the given verifier keys, offline.
pub fn record_offline(
    record: &Path,
    proof: &Path,
    keys: &[String],
) -> anyhow::Result<RecordReport> {
    let known = verifiers(keys)?;
    let bytes = record_bytes(
        &std::fs::read(record).with_context(|| format!("reading {}", record.display()))?,
    )?;
    let proof_text =
        std::fs::read_to_string(proof).with_context(|| format!("reading {}", proof.display()))?;
    let (proof, claimed_digest) = proof_of(&proof_text)?;
    let (head, link) = record::head(&bytes).context("not a record")?;
    let mut report = RecordReport {
        ok: false,
        record_id: Some(head.record_id.to_string()),
        tenant_id: Some(head.tenant_id.to_string()),
        source_id: Some(head.source_id.to_string()),
        chain_index: Some(head.chain_index),
        digest: Some(link.digest.to_string()),
        tree_size: None,
        root: None,
        signed_by: vec![],
        error: None,
    };
    if let Some(d) = claimed_digest.filter(|d| *d != link.digest) {
        report.error = Some(format!(
            "the record's digest is {}, the proof says {d}",
            link.digest
        ));
        return Ok(report);
    }
    let p = PartitionKey::from_ids(&head.tenant_id, &head.source_id)?;
    match verify_record(&bytes, &p, head.chain_index, &proof, &known, None) {
        Ok(v) => {
            report.ok = true;
            report.tree_size = Some(v.checkpoint.size);
            report.root = Some(v.checkpoint.root.to_string());
            report.signed_by = v
                .signed_by
                .iter()
                .map(|(name, id)| format!("{name}+{id:08x}"))
                .collect();
        }
        Err(e) => report.error = Some(e.to_string()),
    }
    Ok(report)
}

/// `atp verify <bundle.tar>`: the whole bundle, offline, against the keys given.
pub fn bundle(path: &Path, keys: &[String]) -> anyhow::Result<atp_bundle::verify::Report> {
    let trust = trust_from(keys)?;
    std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(atp_bundle::verify::verify(
        || std::fs::File::open(path),
        &trust,
    )?)
}

/// Reads `--key` values: a note verifier key, or a file holding one, a PEM public key, or a
/// JWKS (each key's `noteVerifierKey`, else its `x`).
pub fn trust_from(keys: &[String]) -> anyhow::Result<atp_bundle::verify::Trust> {
    use base64::Engine as _;
    use ed25519_dalek::pkcs8::DecodePublicKey;
    let mut trust = atp_bundle::verify::Trust::default();
    for k in keys {
        let text = match std::fs::read_to_string(k) {
            Ok(t) => t,
            Err(_) => k.clone(),
        };
        let text = text.trim();
        if text.contains("BEGIN PUBLIC KEY") {
            trust.keys.push(
                ed25519_dalek::VerifyingKey::from_public_key_pem(text)
                    .with_context(|| format!("{k}: not an Ed25519 public key PEM"))?,
            );
        } else if text.starts_with('{') {
            let jwks: serde_json::Value =
                serde_json::from_str(text).with_context(|| format!("{k}: not JSON"))?;
            let entries = jwks["keys"]
                .as_array()
                .with_context(|| format!("{k}: a JWKS has a \"keys\" array"))?;
            for e in entries {
                if let Some(v) = e["noteVerifierKey"].as_str() {
                    trust.verifiers.push(
                        Verifier::parse(v).with_context(|| format!("{k}: bad noteVerifierKey"))?,
                    );
                } else if let Some(x) = e["x"].as_str() {
                    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(x)
                        .ok()
                        .and_then(|b| <[u8; 32]>::try_from(b).ok())
                        .with_context(|| format!("{k}: a JWK's x is not an Ed25519 key"))?;
                    trust.keys.push(
                        ed25519_dalek::VerifyingKey::from_bytes(&raw)
                            .with_context(|| format!("{k}: bad key"))?,
                    );
                }
            }
        } else {
            trust
                .verifiers
                .push(Verifier::parse(text).with_context(|| format!("bad verifier key {k:?}"))?);
        }
    }
    Ok(trust)
}
