//! The gateway's host key: made on first start, of the type the node's `[ssh] host_key` names
//! (ECDSA P-256 by default, in `DATA/ssh/host_ecdsa`; Ed25519 in `DATA/ssh/host_ed25519`),
//! in OpenSSH format, mode 0600, written atomically; loaded after. A node that has a key keeps
//! it whatever the setting says (clients remember it in `known_hosts`); its SHA-256
//! fingerprint is in the startup line.
//!
//! Why ECDSA P-256 by default: the OpenSSH client verifies Ed25519 signatures with its own
//! reference code but P-256 ones with OpenSSL, about 1 ms less of its CPU per new connection
//! (bench/login.py).

use anyhow::{Context, Result};
use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, EcdsaCurve, HashAlg, PrivateKey};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The type of host key a node makes on its first start (`[ssh] host_key`).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HostKeyType {
    /// ECDSA on NIST P-256 (`ecdsa-sha2-nistp256`).
    #[default]
    Ecdsa,
    /// Ed25519 (`ssh-ed25519`): every node's key before ECDSA became the default.
    Ed25519,
}

impl HostKeyType {
    /// Every type, the one first made by older nodes first.
    const ALL: [HostKeyType; 2] = [HostKeyType::Ed25519, HostKeyType::Ecdsa];

    fn file_name(self) -> &'static str {
        match self {
            HostKeyType::Ecdsa => "host_ecdsa",
            HostKeyType::Ed25519 => "host_ed25519",
        }
    }

    fn algorithm(self) -> Algorithm {
        match self {
            HostKeyType::Ecdsa => Algorithm::Ecdsa {
                curve: EcdsaCurve::NistP256,
            },
            HostKeyType::Ed25519 => Algorithm::Ed25519,
        }
    }
}

/// The file of a host key of type `kind` under `data`.
pub fn host_key_path(data: &Path, kind: HostKeyType) -> PathBuf {
    data.join("ssh").join(kind.file_name())
}

/// The host key, and whether this call generated it.
pub struct HostKey {
    /// The private key.
    pub key: PrivateKey,
    /// Its fingerprint as `ssh-keygen -lf` prints it (`SHA256:...`).
    pub fingerprint: String,
    /// The file it is kept in.
    pub path: PathBuf,
    /// Whether this start made it.
    pub generated: bool,
}

/// Loads the node's host key from `data`, or makes one of type `kind` if there is none.
pub fn load_or_create(data: &Path, kind: HostKeyType) -> Result<HostKey> {
    // A key of another type is kept: clients' known_hosts name it.
    let existing = HostKeyType::ALL
        .into_iter()
        .map(|t| host_key_path(data, t))
        .find(|p| p.exists());
    let generated = existing.is_none();
    let path = match existing {
        Some(path) => path,
        None => create(data, kind)?,
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading SSH host key {}", path.display()))?;
    let key = PrivateKey::from_openssh(text.trim_end()).with_context(|| {
        format!(
            "parsing SSH host key {} (delete it to make a new one)",
            path.display()
        )
    })?;
    let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
    Ok(HostKey {
        key,
        fingerprint,
        path,
        generated,
    })
}

/// Makes a host key of type `kind` in its file under `data`; its path.
fn create(data: &Path, kind: HostKeyType) -> Result<PathBuf> {
    let dir = data.join("ssh");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut key = PrivateKey::random(&mut russh::keys::key::safe_rng(), kind.algorithm())
        .context("making the SSH host key")?;
    key.set_comment("spawngrid node host key");
    let text = key
        .to_openssh(LineEnding::LF)
        .context("encoding the SSH host key")?;
    let path = host_key_path(data, kind);
    crate::tls::write_new(&path, text.as_bytes(), 0o600)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generated_once_then_loaded() {
        for kind in HostKeyType::ALL {
            let dir = tempfile::tempdir().unwrap();
            let first = load_or_create(dir.path(), kind).unwrap();
            assert!(first.generated);
            assert_eq!(first.key.algorithm(), kind.algorithm());
            assert_eq!(first.path, host_key_path(dir.path(), kind));
            assert!(
                first.fingerprint.starts_with("SHA256:"),
                "{}",
                first.fingerprint
            );
            let meta = std::fs::metadata(&first.path).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
            let again = load_or_create(dir.path(), kind).unwrap();
            assert!(!again.generated);
            assert_eq!(again.fingerprint, first.fingerprint);
            std::fs::write(&first.path, "garbage").unwrap();
            let err = load_or_create(dir.path(), kind).err().unwrap().to_string();
            assert!(err.contains("delete it"), "{err}");
        }
    }

    #[test]
    fn an_existing_key_of_another_type_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let old = load_or_create(dir.path(), HostKeyType::Ed25519).unwrap();
        let now = load_or_create(dir.path(), HostKeyType::Ecdsa).unwrap();
        assert!(!now.generated);
        assert_eq!(now.fingerprint, old.fingerprint);
        assert_eq!(now.key.algorithm(), Algorithm::Ed25519);
        assert!(!host_key_path(dir.path(), HostKeyType::Ecdsa).exists());
    }
}
