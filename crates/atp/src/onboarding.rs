//! What `atp producer add --output DIR` writes for a producer, and reading it back: a relay
//! (`atp relay kafka --producer DIR`) or an SDK is configured from the directory as it is.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use atp_producer::{Producer, Signer, Source};

/// The file in an onboarding directory that names everything else in it.
pub const FACTS_FILE: &str = "producer.json";

/// `producer.json`: what a producer's engineer needs to configure an SDK, beside the files it
/// names (relative to the directory).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OnboardingFacts {
    pub tenant: String,
    pub source: String,
    pub source_uri: String,
    /// Where the producer publishes (and the only subject its NATS identity may publish to).
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    pub nats_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats_credentials: Option<String>,
    /// Where the gateway takes this source's webhooks (after its base URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_path: Option<String>,
    /// The file with the source's webhook secret (`whsec_…`), with `--webhook-secret-id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<String>,
}

impl OnboardingFacts {
    pub fn read(dir: &Path) -> anyhow::Result<OnboardingFacts> {
        let path = dir.join(FACTS_FILE);
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
    }

    pub fn write(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let path = dir.join(FACTS_FILE);
        std::fs::write(&path, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

/// A producer as its onboarding directory describes it, ready to sign; `seed` is its NATS
/// identity.
pub struct Onboarded {
    pub facts: OnboardingFacts,
    pub producer: Producer,
    pub seed: PathBuf,
}

/// Reads an onboarding directory that holds a private key and NATS credentials
/// (`atp producer add --generate-key --nats-auth-dir … --output DIR`).
pub fn load(dir: &Path) -> anyhow::Result<Onboarded> {
    let facts = OnboardingFacts::read(dir)?;
    let missing = |what: &str| {
        anyhow::anyhow!(
            "{} names no {what}: create it with `atp producer add --generate-key --nats-auth-dir … --output`",
            dir.join(FACTS_FILE).display()
        )
    };
    let key_id = facts.key_id.clone().ok_or_else(|| missing("key id"))?;
    let key = dir.join(
        facts
            .private_key
            .as_deref()
            .ok_or_else(|| missing("private key"))?,
    );
    let seed = dir.join(
        facts
            .nats_credentials
            .as_deref()
            .ok_or_else(|| missing("NATS credentials"))?,
    );
    let source = Source::new(&facts.tenant, &facts.source, &facts.source_uri)?;
    let producer = Producer::new(source, Signer::read_pem_file(&key, key_id)?);
    Ok(Onboarded {
        facts,
        producer,
        seed,
    })
}
