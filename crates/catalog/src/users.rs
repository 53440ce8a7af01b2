//! Users and API tokens (schema version 2).
//!
//! `users(name, hash, admin, created)`: `hash` is an Argon2id PHC string (the crate's default
//! parameters: 19 MiB, 2 passes, 1 lane), so a stolen catalog does not give passwords away.
//! `tokens(hash, user, created, expires, revoked)`: a token is 32 random bytes shown once
//! (`sg_` + 64 hex digits); only its BLAKE3 hash is stored, so a stolen catalog does not give
//! sessions away either. A token works until it expires or is revoked (revocation is final:
//! triggers refuse to un-revoke or re-point a token).
//!
//! Deleting a user (schema version 3) removes their account, tokens, keys and the shares
//! made to them; their names stay bound to them (names are forever), still
//! reachable by the users they shared them with, and spawnable by nobody else. The user name
//! goes into `deleted_users` and is never given to a new account: whoever got it would
//! otherwise inherit the old owner's names.

use crate::{unix_now, Catalog, Error, Result};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rusqlite::{params, OptionalExtension};

/// The tables of schema version 2 (added to version 1's `names`).
pub(crate) const SCHEMA_V2: &str = "
CREATE TABLE users (
    name    TEXT PRIMARY KEY NOT NULL,
    hash    TEXT NOT NULL,
    admin   INTEGER NOT NULL DEFAULT 0 CHECK (admin IN (0, 1)),
    created INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE tokens (
    hash    TEXT PRIMARY KEY NOT NULL CHECK (length(hash) = 64),
    user    TEXT NOT NULL REFERENCES users(name),
    created INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    revoked INTEGER
) WITHOUT ROWID;
CREATE INDEX tokens_by_user ON tokens(user);
CREATE TRIGGER tokens_revocation_is_final BEFORE UPDATE ON tokens
    WHEN OLD.hash IS NOT NEW.hash OR OLD.user IS NOT NEW.user OR OLD.created IS NOT NEW.created
      OR OLD.expires IS NOT NEW.expires OR OLD.revoked IS NOT NULL OR NEW.revoked IS NULL
    BEGIN SELECT RAISE(ABORT, 'tokens are only ever revoked'); END;
";

/// The table of schema version 3 remembering deleted user names.
pub(crate) const SCHEMA_DELETED: &str = "
CREATE TABLE deleted_users (
    name    TEXT PRIMARY KEY NOT NULL,
    deleted INTEGER NOT NULL
) WITHOUT ROWID;
";

/// The prefix of every token (so one is recognisable in a leaked file or a log).
pub const TOKEN_PREFIX: &str = "sg_";

/// One user account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// The user name (the same rule as names: [`crate::check_owner`]).
    pub name: String,
    /// Whether the user may manage users and import for others.
    pub admin: bool,
    /// When the account was made, seconds since the epoch.
    pub created: i64,
}

/// A token just issued: the secret (shown once, never stored) and when it stops working.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// The bearer token.
    pub secret: String,
    /// Expiry, seconds since the epoch.
    pub expires: i64,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("secret", &"<hidden>")
            .field("expires", &self.expires)
            .finish()
    }
}

/// `n` bytes from the kernel's random source.
fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut buf = [0u8; N];
    let mut filled = 0;
    while filled < N {
        match rustix::rand::getrandom(&mut buf[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                return Err(Error::Crypto(format!("reading random bytes: {e}")));
            }
        }
    }
    Ok(buf)
}

/// An Argon2id PHC hash of `password` with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String> {
    let salt = SaltString::encode_b64(&random_bytes::<16>()?)
        .map_err(|e| Error::Crypto(format!("encoding a salt: {e}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Crypto(format!("hashing a password: {e}")))
}

/// Whether `password` matches the PHC string `hash`.
fn password_matches(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

/// A hash of a password nobody has, checked when the user does not exist so that a login for
/// an unknown user takes as long as one for a known user (no user enumeration by timing).
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        hash_password("spawngrid decoy password").unwrap_or_else(|_| {
            // Not a valid hash: verification fails fast, which only costs the timing guard.
            String::new()
        })
    })
}

/// The stored form of a token: BLAKE3 of its text, 64 hex digits.
fn token_hash(secret: &str) -> String {
    library::Score::of(secret.as_bytes()).to_hex()
}

impl Catalog {
    /// Adds user `name` with `password` (hashed with Argon2id). Fails if the user exists.
    pub fn add_user(&self, name: &str, password: &str, admin: bool) -> Result<()> {
        crate::check_owner(name)?;
        check_password(password)?;
        let hash = hash_password(password)?;
        if self.user_deleted(name)? {
            return Err(Error::UserDeleted { name: name.into() });
        }
        let result = self.conn().execute(
            "INSERT INTO users (name, hash, admin, created) VALUES (?1, ?2, ?3, ?4)",
            params![name, hash, admin, unix_now()],
        );
        match result {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
            {
                Err(Error::UserExists { name: name.into() })
            }
            Err(e) => Err(self.sql("adding a user")(e)),
        }
    }

    /// Sets user `name`'s password and revokes every token of theirs.
    pub fn set_password(&self, name: &str, password: &str) -> Result<()> {
        check_password(password)?;
        let hash = hash_password(password)?;
        let mut conn = self.conn();
        let tx = conn
            .transaction()
            .map_err(self.sql("changing a password"))?;
        let n = tx
            .execute(
                "UPDATE users SET hash = ?2 WHERE name = ?1",
                params![name, hash],
            )
            .map_err(self.sql("changing a password"))?;
        if n == 0 {
            return Err(Error::NoUser { name: name.into() });
        }
        tx.execute(
            "UPDATE tokens SET revoked = ?2 WHERE user = ?1 AND revoked IS NULL",
            params![name, unix_now()],
        )
        .map_err(self.sql("revoking tokens"))?;
        tx.commit().map_err(self.sql("changing a password"))
    }

    /// Whether user name `name` belonged to a deleted user.
    fn user_deleted(&self, name: &str) -> Result<bool> {
        let found: Option<i64> = self
            .conn()
            .query_row(
                "SELECT deleted FROM deleted_users WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sql("reading a user"))?;
        Ok(found.is_some())
    }

    /// Deletes user `name`: their account, tokens, keys and the shares made to them go, and
    /// the name is never reused. Their names stay bound (see the module
    /// documentation). Whether they still have envs is for the caller to check.
    pub fn delete_user(&self, name: &str) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(self.sql("deleting a user"))?;
        // Tokens and keys refer to the account, so they go first.
        for sql in [
            "DELETE FROM tokens WHERE user = ?1",
            "DELETE FROM keys WHERE user = ?1",
            "DELETE FROM shares WHERE user = ?1",
        ] {
            tx.execute(sql, params![name])
                .map_err(self.sql("deleting a user"))?;
        }
        let n = tx
            .execute("DELETE FROM users WHERE name = ?1", params![name])
            .map_err(self.sql("deleting a user"))?;
        if n == 0 {
            return Err(Error::NoUser { name: name.into() });
        }
        tx.execute(
            "INSERT INTO deleted_users (name, deleted) VALUES (?1, ?2)",
            params![name, unix_now()],
        )
        .map_err(self.sql("deleting a user"))?;
        tx.commit().map_err(self.sql("deleting a user"))
    }

    /// User `name`, if there is one.
    pub fn user(&self, name: &str) -> Result<Option<User>> {
        self.conn()
            .query_row(
                "SELECT name, admin, created FROM users WHERE name = ?1",
                params![name],
                |r| {
                    Ok(User {
                        name: r.get(0)?,
                        admin: r.get(1)?,
                        created: r.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(self.sql("reading a user"))
    }

    /// Every user, sorted by name.
    pub fn users(&self) -> Result<Vec<User>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached("SELECT name, admin, created FROM users ORDER BY name")
            .map_err(self.sql("listing users"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(User {
                    name: r.get(0)?,
                    admin: r.get(1)?,
                    created: r.get(2)?,
                })
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(self.sql("listing users"));
        rows
    }

    /// Whether `password` is user `name`'s. An unknown user is `false`, after the same work
    /// as a known one. Deliberately slow (Argon2id): call it off any async executor.
    pub fn check_password(&self, name: &str, password: &str) -> Result<bool> {
        let stored: Option<String> = self
            .conn()
            .query_row(
                "SELECT hash FROM users WHERE name = ?1",
                params![name],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sql("reading a user"))?;
        Ok(match stored {
            Some(hash) => password_matches(password, &hash),
            None => {
                password_matches(password, decoy_hash());
                false
            }
        })
    }

    /// Issues a token for user `name` valid for `ttl_secs` seconds.
    pub fn issue_token(&self, name: &str, ttl_secs: u64) -> Result<Token> {
        if self.user(name)?.is_none() {
            return Err(Error::NoUser { name: name.into() });
        }
        let secret = format!("{TOKEN_PREFIX}{}", hex::encode(random_bytes::<32>()?));
        let now = unix_now();
        let expires = now.saturating_add(i64::try_from(ttl_secs).unwrap_or(i64::MAX));
        self.conn()
            .execute(
                "INSERT INTO tokens (hash, user, created, expires) VALUES (?1, ?2, ?3, ?4)",
                params![token_hash(&secret), name, now, expires],
            )
            .map_err(self.sql("storing a token"))?;
        Ok(Token { secret, expires })
    }

    /// The user a token belongs to, if it is one of ours, unexpired and not revoked.
    pub fn token_user(&self, secret: &str) -> Result<Option<String>> {
        if !secret.starts_with(TOKEN_PREFIX) {
            return Ok(None);
        }
        self.conn()
            .query_row(
                "SELECT user FROM tokens WHERE hash = ?1 AND revoked IS NULL AND expires > ?2",
                params![token_hash(secret), unix_now()],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sql("checking a token"))
    }

    /// Revokes a token (for good). Returns whether it was a live token.
    pub fn revoke_token(&self, secret: &str) -> Result<bool> {
        let n = self
            .conn()
            .execute(
                "UPDATE tokens SET revoked = ?2 WHERE hash = ?1 AND revoked IS NULL",
                params![token_hash(secret), unix_now()],
            )
            .map_err(self.sql("revoking a token"))?;
        Ok(n > 0)
    }
}

/// Passwords: 1 to 1024 bytes (Argon2 takes any bytes; the bound keeps hashing cheap to refuse).
fn check_password(password: &str) -> Result<()> {
    if password.is_empty() || password.len() > 1024 {
        return Err(Error::Invalid {
            what: "password",
            value: "<hidden>".into(),
            rule: "must be 1 to 1024 bytes long".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::open;

    #[test]
    fn passwords_are_hashed_and_checked() {
        let (_d, cat) = open();
        cat.add_user("alice", "correct horse", false).unwrap();
        cat.add_user("root", "x", true).unwrap();
        assert!(cat.check_password("alice", "correct horse").unwrap());
        assert!(!cat.check_password("alice", "correct horsE").unwrap());
        assert!(!cat.check_password("nobody", "correct horse").unwrap());
        let stored: String = cat
            .conn()
            .query_row("SELECT hash FROM users WHERE name='alice'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert!(stored.starts_with("$argon2id$"), "{stored}");
        assert!(!stored.contains("correct"));
        let users = cat.users().unwrap();
        assert_eq!(
            users
                .iter()
                .map(|u| (u.name.as_str(), u.admin))
                .collect::<Vec<_>>(),
            [("alice", false), ("root", true)]
        );
        assert!(matches!(
            cat.add_user("alice", "y", false),
            Err(Error::UserExists { .. })
        ));
        assert!(cat.add_user("../x", "y", false).is_err());
        assert!(cat.add_user("carol", "", false).is_err());
    }

    #[test]
    fn tokens_are_stored_hashed_expire_and_revoke() {
        let (_d, cat) = open();
        cat.add_user("alice", "pw", false).unwrap();
        let t = cat.issue_token("alice", 3600).unwrap();
        assert!(t.secret.starts_with("sg_") && t.secret.len() == 67);
        assert!(!format!("{t:?}").contains(&t.secret));
        assert_eq!(cat.token_user(&t.secret).unwrap().as_deref(), Some("alice"));
        let stored: String = cat
            .conn()
            .query_row("SELECT hash FROM tokens", [], |r| r.get(0))
            .unwrap();
        assert!(!stored.contains(&t.secret[3..]));
        assert_eq!(cat.token_user("sg_bogus").unwrap(), None);
        assert_eq!(cat.token_user("").unwrap(), None);
        // Expired: a zero lifetime is already over.
        let expired = cat.issue_token("alice", 0).unwrap();
        assert_eq!(cat.token_user(&expired.secret).unwrap(), None);
        assert!(cat.revoke_token(&t.secret).unwrap());
        assert!(!cat.revoke_token(&t.secret).unwrap());
        assert_eq!(cat.token_user(&t.secret).unwrap(), None);
        assert!(cat
            .conn()
            .execute("UPDATE tokens SET revoked = NULL", [])
            .is_err());
        assert!(matches!(
            cat.issue_token("nobody", 60),
            Err(Error::NoUser { .. })
        ));
    }

    #[test]
    fn deleting_a_user_revokes_everything_and_keeps_names() {
        let (_d, cat) = open();
        for u in ["alice", "bob"] {
            cat.add_user(u, "pw", false).unwrap();
        }
        let t = cat.issue_token("bob", 3600).unwrap();
        let key =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKgvJ8tXcc5DiRDMOx3vRVLF2vnNIiE9ftKmVCn1yxXm b";
        cat.add_key("bob", key).unwrap();
        cat.bind("bob", "work", crate::tests::score(1)).unwrap();
        cat.bind("alice", "base", crate::tests::score(2)).unwrap();
        cat.share("alice", "base", "bob").unwrap();
        cat.share("bob", "work", "alice").unwrap();
        cat.delete_user("bob").unwrap();
        assert_eq!(cat.user("bob").unwrap(), None);
        assert_eq!(cat.token_user(&t.secret).unwrap(), None);
        assert!(!cat.check_password("bob", "pw").unwrap());
        assert!(cat.keys("bob").unwrap().is_empty());
        assert!(cat.shared_with("alice", "base").unwrap().is_empty());
        // bob's names stay his, and alice keeps what he shared with her.
        assert_eq!(
            cat.resolve_for("alice", "bob/work").unwrap(),
            crate::tests::score(1)
        );
        let err = cat.add_user("bob", "pw", false).unwrap_err();
        assert!(matches!(err, Error::UserDeleted { .. }), "{err}");
        assert!(matches!(cat.delete_user("bob"), Err(Error::NoUser { .. })));
        assert!(cat.issue_token("bob", 60).is_err());
    }

    #[test]
    fn a_new_password_revokes_tokens() {
        let (_d, cat) = open();
        cat.add_user("alice", "old", false).unwrap();
        let t = cat.issue_token("alice", 3600).unwrap();
        cat.set_password("alice", "new").unwrap();
        assert_eq!(cat.token_user(&t.secret).unwrap(), None);
        assert!(cat.check_password("alice", "new").unwrap());
        assert!(!cat.check_password("alice", "old").unwrap());
        assert!(matches!(
            cat.set_password("bob", "x"),
            Err(Error::NoUser { .. })
        ));
    }
}
