//! Who is logging in: the SSH user name is `ENV+USER`, `ENV=NAME+USER` (spawn first, see
//! [`super::spawn`]) or `USER` (see
//! [`super::session`] for the env picker), checked by password against the catalog with the
//! node's login backoff ([`crate::auth::Backoff`]), per user and per client address, or by
//! one of the user's registered public keys (`spawngrid user key`), matched by fingerprint.

use super::spawn::SpawnAtLogin;
use crate::Node;
use std::net::IpAddr;
use std::sync::Arc;

/// A parsed SSH login name.
#[derive(Clone, Debug)]
pub struct Login {
    /// The Spawngrid user.
    pub user: String,
    /// Their env to enter, if named.
    pub env: Option<String>,
    /// `ENV=NAME+USER`: the env is spawned from NAME first unless it exists.
    pub spawn: Option<SpawnAtLogin>,
}

impl Login {
    /// Parses `ENV+USER`, `ENV=NAME+USER` (NAME may be `OWNER/NAME`) or `USER`; `None` if a
    /// part is not a possible name.
    pub fn parse(login: &str) -> Option<Login> {
        let (env, user) = match login.split_once('+') {
            Some((env, user)) => (Some(env), user),
            None => (None, login),
        };
        let (env, from) = match env.map(|e| e.split_once('=')) {
            Some(Some((env, from))) => (Some(env), Some(from)),
            Some(None) => (env, None),
            None => (None, None),
        };
        catalog::check_owner(user).ok()?;
        if let Some(e) = env {
            catalog::check_name(e).ok()?;
        }
        if let Some(from) = from {
            crate::snapshots::check_address(user, from).ok()?;
        }
        Some(Login {
            user: user.to_string(),
            env: env.map(str::to_string),
            spawn: from.map(SpawnAtLogin::new),
        })
    }
}

/// The longest password checked (longer ones are refused unread, like the HTTPS login).
const MAX_PASSWORD: usize = 1024;

/// The backoff table's key for a client address (a space cannot be in a user name).
/// Checks `password` for `login`; on success the parsed login. Failures count against the
/// user and the client's address; while either is locked, nothing is checked. Passwords are
/// never logged.
pub async fn password(
    node: &Arc<Node>,
    peer: Option<IpAddr>,
    login: &str,
    password: &str,
) -> Option<Login> {
    let Some(parsed) = Login::parse(login) else {
        tracing::warn!("ssh login refused: invalid user name");
        return None;
    };
    let user = parsed.user.clone();
    let attempt = crate::auth::Attempt::new(&user, peer);
    if node.backoff.attempt_locked(&attempt).is_some() {
        tracing::warn!(user = %user, ?peer, "ssh login refused: locked after failed attempts");
        return None;
    }
    if password.len() > MAX_PASSWORD {
        tracing::warn!(user = %user, ?peer, "ssh login refused: oversized password");
        return None;
    }
    let n = node.clone();
    let (u, p) = (user.clone(), password.to_string());
    let ok = tokio::task::spawn_blocking(move || n.cat.check_password(&u, &p))
        .await
        .ok()
        .and_then(|r| {
            r.map_err(|e| tracing::error!(user = %user, "checking a password: {e:#}"))
                .ok()
        })
        .unwrap_or(false);
    if ok {
        node.backoff.attempt_succeeded(&attempt);
        tracing::info!(user = %user, ?peer, "ssh login (password)");
        Some(parsed)
    } else {
        let lock = node.backoff.attempt_failed(&attempt);
        tracing::warn!(user = %user, ?peer, lock_secs = lock.as_secs(), "ssh login failed");
        None
    }
}

/// A public key's SHA-256 fingerprint as the catalog keeps it (`SHA256:...`).
pub fn fingerprint(key: &russh::keys::PublicKey) -> String {
    key.fingerprint(russh::keys::HashAlg::Sha256).to_string()
}

/// Whether the key of `fingerprint` is one of `login`'s user's registered keys; the parsed
/// login if so. Key refusals are not counted by the backoff: clients offer every key they
/// hold in turn.
pub async fn key(node: &Arc<Node>, login: &str, fingerprint: &str) -> Option<Login> {
    let parsed = Login::parse(login)?;
    let n = node.clone();
    let user = parsed.user.clone();
    let keys = tokio::task::spawn_blocking(move || n.cat.keys(&user))
        .await
        .ok()?
        .map_err(|e| tracing::error!(user = %parsed.user, "reading keys: {e:#}"))
        .ok()?;
    keys.iter()
        .any(|k| k.fingerprint == fingerprint)
        .then_some(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logins_name_a_user_and_maybe_an_env() {
        let l = Login::parse("base+alice").unwrap();
        assert_eq!((l.user.as_str(), l.env.as_deref()), ("alice", Some("base")));
        assert!(l.spawn.is_none());
        let l = Login::parse("alice").unwrap();
        assert_eq!((l.user.as_str(), l.env), ("alice", None));
        let l = Login::parse("work=bob/base+alice").unwrap();
        assert_eq!((l.user.as_str(), l.env.as_deref()), ("alice", Some("work")));
        assert_eq!(l.spawn.map(|s| s.name).as_deref(), Some("bob/base"));
        for bad in [
            "",
            "+alice",
            "base+",
            "../x+alice",
            "base+a/b",
            "=base+alice",
            "work=+alice",
            "work=a/b/c+alice",
            "work=../x+alice",
        ] {
            assert!(Login::parse(bad).is_none(), "{bad}");
        }
    }
}
