//! The gateway's host key: an Ed25519 key made on first start and kept in
//! `DATA/ssh/host_ed25519` (OpenSSH format, mode 0600, written atomically), loaded after.
//! Clients remember it in `known_hosts`; its SHA-256 fingerprint is in the startup line.

use anyhow::{Context, Result};
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::LineEnding;
use russh::keys::{HashAlg, PrivateKey};
use std::path::{Path, PathBuf};

/// The host key file under `data`.
pub fn host_key_path(data: &Path) -> PathBuf {
    data.join("ssh/host_ed25519")
}

/// The host key, and whether this call generated it.
pub struct HostKey {
    /// The private key.
    pub key: PrivateKey,
    /// Its fingerprint as `ssh-keygen -lf` prints it (`SHA256:...`).
    pub fingerprint: String,
    /// Whether this start made it.
    pub generated: bool,
}

/// Loads `DATA/ssh/host_ed25519`, generating it first if there is none.
pub fn load_or_create(data: &Path) -> Result<HostKey> {
    let path = host_key_path(data);
    let generated = !path.exists();
    if generated {
        let dir = data.join("ssh");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut seed = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
            .map_err(|_| anyhow::anyhow!("no randomness for the SSH host key"))?;
        let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
        key.set_comment("spawngrid node host key");
        let text = key
            .to_openssh(LineEnding::LF)
            .context("encoding the SSH host key")?;
        crate::tls::write_new(&path, text.as_bytes(), 0o600)?;
    }
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
        generated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generated_once_then_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        assert!(first.generated);
        assert!(
            first.fingerprint.starts_with("SHA256:"),
            "{}",
            first.fingerprint
        );
        let meta = std::fs::metadata(host_key_path(dir.path())).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let again = load_or_create(dir.path()).unwrap();
        assert!(!again.generated);
        assert_eq!(again.fingerprint, first.fingerprint);
        std::fs::write(host_key_path(dir.path()), "garbage").unwrap();
        let err = load_or_create(dir.path()).err().unwrap().to_string();
        assert!(err.contains("delete it"), "{err}");
    }
}
