//! The client's files in `~/.config/spawngrid/` (or `$XDG_CONFIG_HOME/spawngrid/`):
//! `known_nodes`, the pinned certificate fingerprint of each node (`HOST:PORT FINGERPRINT`
//! lines, like ssh's known_hosts), and `tokens.json`, a token per node and user (mode 0600)
//! with when it was issued: a node's most recently logged-in user is the client's default
//! user there ([`Tokens::last_user`]).

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// The client's configuration directory (created 0700 when first written to).
pub fn config_dir() -> Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("spawngrid"));
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".config/spawngrid")),
        None => bail!("neither HOME nor XDG_CONFIG_HOME is set: cannot find ~/.config/spawngrid"),
    }
}

/// Writes `path` whole and synced, with `mode`, making its directory (0700) if needed.
fn write_private(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    library::atomic::replace_synced(path, bytes, mode)
        .with_context(|| format!("writing {}", path.display()))
}

/// The pinned certificate fingerprints.
pub struct KnownNodes {
    path: PathBuf,
    pins: BTreeMap<String, String>,
}

impl KnownNodes {
    /// Reads `known_nodes` (missing: no pins).
    pub fn load() -> Result<KnownNodes> {
        let path = config_dir()?.join("known_nodes");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let mut pins = BTreeMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some((host, fp)) = line.split_once(char::is_whitespace) {
                pins.insert(host.to_string(), fp.trim().to_string());
            }
        }
        Ok(KnownNodes { path, pins })
    }

    /// The file's path (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The fingerprint pinned for `host` (HOST:PORT).
    pub fn get(&self, host: &str) -> Option<&str> {
        self.pins.get(host).map(|s| s.as_str())
    }

    /// Pins `fingerprint` for `host` and writes the file.
    pub fn pin(&mut self, host: &str, fingerprint: &str) -> Result<()> {
        self.pins.insert(host.to_string(), fingerprint.to_string());
        let mut text = String::from(
            "# spawngrid: pinned TLS certificate fingerprints (SHA-256), one node a line\n",
        );
        for (h, fp) in &self.pins {
            text.push_str(&format!("{h} {fp}\n"));
        }
        write_private(&self.path, text.as_bytes(), 0o644)
    }
}

/// A stored token.
#[derive(Clone, Serialize, Deserialize)]
pub struct StoredToken {
    /// The bearer token.
    pub token: String,
    /// Expiry, seconds since the epoch.
    pub expires: u64,
    /// When `login` stored it, seconds since the epoch (0 in files older than this field).
    #[serde(default)]
    pub issued: u64,
}

/// Tokens by node (HOST:PORT) then user.
#[derive(Default, Serialize, Deserialize)]
pub struct Tokens {
    #[serde(flatten)]
    nodes: BTreeMap<String, BTreeMap<String, StoredToken>>,
}

fn tokens_path() -> Result<PathBuf> {
    Ok(config_dir()?.join("tokens.json"))
}

impl Tokens {
    /// Reads `tokens.json` (missing: none).
    pub fn load() -> Result<Tokens> {
        let path = tokens_path()?;
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!("parsing {} (delete it and log in again)", path.display())
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Tokens::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// The token of `user` on `host`.
    pub fn get(&self, host: &str, user: &str) -> Option<&StoredToken> {
        self.nodes.get(host)?.get(user)
    }

    /// The user who logged in to `host` last (the newest stored token there; none when
    /// several tokens predate `issued`).
    pub fn last_user(&self, host: &str) -> Option<&str> {
        let users = self.nodes.get(host)?;
        let (user, newest) = users.iter().max_by_key(|(_, t)| t.issued)?;
        // Tokens stored before `issued` existed do not say which came last.
        (newest.issued > 0 || users.len() == 1).then_some(user.as_str())
    }

    /// Stores a token and writes the file (mode 0600).
    pub fn set(&mut self, host: &str, user: &str, token: StoredToken) -> Result<()> {
        self.nodes
            .entry(host.to_string())
            .or_default()
            .insert(user.to_string(), token);
        self.save()
    }

    /// Forgets the token of `user` on `host` and writes the file; whether there was one.
    pub fn remove(&mut self, host: &str, user: &str) -> Result<bool> {
        let Some(users) = self.nodes.get_mut(host) else {
            return Ok(false);
        };
        let had = users.remove(user).is_some();
        if users.is_empty() {
            self.nodes.remove(host);
        }
        self.save()?;
        Ok(had)
    }

    fn save(&self) -> Result<()> {
        let path = tokens_path()?;
        write_private(&path, &serde_json::to_vec_pretty(self)?, 0o600)
    }
}
