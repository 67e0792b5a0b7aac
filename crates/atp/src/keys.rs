//! Ed25519 key files: PKCS#8 v1 PEM private keys written 0600 (see
//! [`atp_core::keys::encode_private_key`] for why v1), public keys as raw base64.

use std::path::Path;

use anyhow::Context as _;
use base64::Engine as _;
use ed25519_dalek::SigningKey;

pub use atp_runtime::signer::generate;

/// Writes a private key as PKCS#8 v1 PEM, readable by its owner only.
pub fn write_private(path: &Path, key: &SigningKey) -> anyhow::Result<()> {
    Ok(atp_runtime::signer::write_private(path, key)?)
}

/// Reads a PKCS#8 PEM private key, v1 or v2 (what ATP wrote before).
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

/// Reads an Ed25519 public key from a SubjectPublicKeyInfo PEM (`openssl pkey -pubout`).
pub fn read_public_pem(path: &Path) -> anyhow::Result<[u8; 32]> {
    use ed25519_dalek::pkcs8::DecodePublicKey as _;
    let pem =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let key = ed25519_dalek::VerifyingKey::from_public_key_pem(&pem)
        .map_err(|e| anyhow::anyhow!("{} is not an Ed25519 public key PEM: {e}", path.display()))?;
    Ok(key.to_bytes())
}

/// Writes `key`'s public half as a SubjectPublicKeyInfo PEM, as `openssl pkey -pubout` does.
pub fn write_public_pem(path: &Path, key: &SigningKey) -> anyhow::Result<()> {
    use ed25519_dalek::pkcs8::EncodePublicKey as _;
    let pem = key
        .verifying_key()
        .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("encoding a public key: {e}"))?;
    std::fs::write(path, pem).with_context(|| format!("writing {}", path.display()))
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

#[cfg(test)]
mod tests {
    //! The private keys `atp dev` writes, loaded by the tools operators and producers reach for
    //! rather than by our own reader: OpenSSL 3.0 (Debian 12's `openssl pkey`) and Python's
    //! `cryptography`. Both refuse PKCS#8 v2 Ed25519 keys, which is what ATP wrote before.

    use std::path::PathBuf;
    use std::process::Command;

    use ed25519_dalek::pkcs8::EncodePublicKey as _;
    use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;

    use super::*;
    use crate::dev::DevPaths;

    /// Every private key file `atp dev` writes (issuer, producer, checkpoint key), written the
    /// way it writes them, with the public key ATP derives for each.
    async fn dev_keys(root: &Path) -> Vec<(PathBuf, ed25519_dalek::VerifyingKey)> {
        let paths = DevPaths::new(root);
        std::fs::create_dir_all(&paths.dir).unwrap();
        let issuer = load_or_create(&paths.issuer_key()).unwrap();
        let producer = load_or_create(&paths.producer_key()).unwrap();
        let store = atp_runtime::signer::FileKeyStore::open_or_init(
            &paths.checkpoint_keys(),
            "atp.test",
            chrono::Utc::now(),
        )
        .unwrap();
        let active = atp_runtime::signer::CheckpointSigner::keyring(&store)
            .await
            .unwrap()
            .active;
        let checkpoint =
            ed25519_dalek::VerifyingKey::from_bytes(&parse_public(&active.public_key).unwrap())
                .unwrap();
        vec![
            (paths.issuer_key(), issuer.verifying_key()),
            (paths.producer_key(), producer.verifying_key()),
            (
                paths.checkpoint_keys().join(format!("{}.pem", active.kid)),
                checkpoint,
            ),
        ]
    }

    fn run(cmd: &mut Command) -> (bool, String, String) {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("{cmd:?} cannot run ({e}); this test needs it installed"));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    #[tokio::test]
    async fn openssl_loads_the_private_keys_atp_dev_writes() {
        let dir = tempfile::tempdir().unwrap();
        for (path, public) in dev_keys(dir.path()).await {
            let pem = std::fs::read_to_string(&path).unwrap();
            // PKCS#8 v1: PrivateKeyInfo, version 0, the seed and nothing else (48 bytes).
            let body: String = pem
                .strip_prefix("-----BEGIN PRIVATE KEY-----\n")
                .and_then(|p| p.strip_suffix("-----END PRIVATE KEY-----\n"))
                .unwrap_or_else(|| panic!("{} is not a PRIVATE KEY PEM: {pem}", path.display()))
                .split_whitespace()
                .collect();
            let der = base64::engine::general_purpose::STANDARD
                .decode(body)
                .unwrap();
            assert_eq!(der.len(), 48, "{}", path.display());
            assert_eq!(der[..5], [0x30, 0x2e, 0x02, 0x01, 0x00], "version 0");

            let (ok, out, err) = run(Command::new("openssl")
                .args(["pkey", "-noout", "-in"])
                .arg(&path));
            assert!(ok, "openssl pkey refused {}: {out} {err}", path.display());
            let (ok, out, err) = run(Command::new("openssl")
                .args(["pkey", "-pubout", "-in"])
                .arg(&path));
            assert!(ok, "openssl pkey -pubout {}: {err}", path.display());
            assert_eq!(
                out,
                public.to_public_key_pem(LineEnding::LF).unwrap(),
                "openssl derives another public key from {}",
                path.display()
            );
        }
    }

    /// Python's `cryptography`: the pinned one `ops/bin/test` installs (`ATP_PYTHON_CRYPTOGRAPHY`,
    /// then a failure is a failure), else `python3` if it has the module, else skipped saying so.
    #[tokio::test]
    async fn python_cryptography_loads_the_private_keys_atp_dev_writes() {
        let python = match std::env::var("ATP_PYTHON_CRYPTOGRAPHY") {
            Ok(python) => python,
            Err(_) => {
                let found = Command::new("python3")
                    .args(["-c", "import cryptography"])
                    .output()
                    .is_ok_and(|o| o.status.success());
                if !found {
                    eprintln!(
                        "skipped: ATP_PYTHON_CRYPTOGRAPHY is not set and there is no python3 with the \
                         `cryptography` module on PATH; ops/bin/test installs one \
                         (ops/bin/install-pycryptography) and sets the variable"
                    );
                    return;
                }
                "python3".to_owned()
            }
        };
        const SCRIPT: &str = "\
import sys
from cryptography.hazmat.primitives.serialization import load_pem_private_key, Encoding, PublicFormat
key = load_pem_private_key(open(sys.argv[1], 'rb').read(), password=None)
print(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex())
";
        let dir = tempfile::tempdir().unwrap();
        for (path, public) in dev_keys(dir.path()).await {
            let (ok, out, err) = run(Command::new(&python).args(["-c", SCRIPT]).arg(&path));
            assert!(ok, "cryptography refused {}: {err}", path.display());
            assert_eq!(
                out.trim(),
                hex_of(public.as_bytes()),
                "cryptography derives another public key from {}",
                path.display()
            );
        }
    }

    fn hex_of(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Key files ATP wrote before (PKCS#8 v2, the public key embedded) still load.
    #[test]
    #[allow(clippy::disallowed_methods)] // Writes the old form on purpose.
    fn v2_key_files_written_before_still_load() {
        use ed25519_dalek::pkcs8::EncodePrivateKey as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.pem");
        let key = generate();
        std::fs::write(&path, key.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes()).unwrap();
        assert_eq!(read_private(&path).unwrap(), key);
        assert_eq!(load_or_create(&path).unwrap(), key);
    }
}
