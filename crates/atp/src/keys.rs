//! Ed25519 key files: PKCS#8 PEM private keys written 0600, public keys as raw base64.

use std::path::Path;

use anyhow::Context as _;
use base64::Engine as _;
use ed25519_dalek::SigningKey;

pub use atp_runtime::signer::generate;

/// Writes a private key as PKCS#8 PEM, readable by its owner only.
pub fn write_private(path: &Path, key: &SigningKey) -> anyhow::Result<()> {
    Ok(atp_runtime::signer::write_private(path, key)?)
}

pub fn read_private(path: &Path) -> anyhow::Result<SigningKey> {
    Ok(atp_runtime::signer::read_private(path)?)
}

/// Loads the key at `path`, creating it first if it does not exist.
pub fn load_or_create(path: &Path) -> anyhow::Result<SigningKey> {
    if path.exists() {
        read_private(path)
    } else {
        let k = generate();
        write_private(path, &k)?;
        Ok(k)
    }
}

pub fn public_b64(key: &SigningKey) -> String {
    base64::engine::general_purpose::STANDARD.encode(key.verifying_key().to_bytes())
}

/// Parses a raw 32-byte Ed25519 public key given in base64.
pub fn parse_public(b64: &str) -> anyhow::Result<[u8; 32]> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .context("the public key is not base64")?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("an Ed25519 public key is 32 bytes"))
}
