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

use crate::engine::{Mode, Row};
use crate::{Catalog, Db, Error, Result};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

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
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N]> {
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

/// A user from a row of `name, admin, created`.
fn user_of(r: &Row) -> Result<User, crate::engine::Fault> {
    Ok(User {
        name: r.text(0)?,
        admin: r.int(1)? != 0,
        created: r.int(2)?,
    })
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
        self.db(Mode::Plain, |db| {
            db.insert(
                "adding a user",
                "INSERT INTO users (name, hash, admin, created) VALUES (?1, ?2, ?3, unixepoch())",
                &[name.into(), (&hash).into(), admin.into()],
                || Error::UserExists { name: name.into() },
            )
        })
    }

    /// Sets user `name`'s password and revokes every token of theirs.
    pub fn set_password(&self, name: &str, password: &str) -> Result<()> {
        check_password(password)?;
        let hash = hash_password(password)?;
        self.db(Mode::Transaction, |db| {
            let n = db.execute(
                "changing a password",
                "UPDATE users SET hash = ?2 WHERE name = ?1",
                &[name.into(), (&hash).into()],
            )?;
            if n == 0 {
                return Err(Error::NoUser { name: name.into() });
            }
            db.execute(
                "revoking tokens",
                "UPDATE tokens SET revoked = unixepoch() WHERE \"user\" = ?1 AND revoked IS NULL",
                &[name.into()],
            )?;
            Ok(())
        })
    }

    /// Whether user name `name` belonged to a deleted user.
    fn user_deleted(&self, name: &str) -> Result<bool> {
        let found = self.row(
            "reading a user",
            "SELECT deleted FROM deleted_users WHERE name = ?1",
            &[name.into()],
            |r| r.int(0),
        )?;
        Ok(found.is_some())
    }

    /// Deletes user `name`: their account, tokens, keys and the shares made to them go, and
    /// the name is never reused. Their names stay bound (see the module
    /// documentation). Whether they still have envs is for the caller to check.
    pub fn delete_user(&self, name: &str) -> Result<()> {
        let what = "deleting a user";
        self.db(Mode::Transaction, |db| {
            // Tokens and keys refer to the account, so they go first.
            for sql in [
                "DELETE FROM tokens WHERE \"user\" = ?1",
                "DELETE FROM keys WHERE \"user\" = ?1",
                "DELETE FROM shares WHERE \"user\" = ?1",
                "DELETE FROM invites WHERE owner = ?1 OR inviter = ?1",
            ] {
                db.execute(what, sql, &[name.into()])?;
            }
            let n = db.execute(what, "DELETE FROM users WHERE name = ?1", &[name.into()])?;
            if n == 0 {
                return Err(Error::NoUser { name: name.into() });
            }
            db.execute(
                what,
                "INSERT INTO deleted_users (name, deleted) VALUES (?1, unixepoch())",
                &[name.into()],
            )?;
            Ok(())
        })
    }

    /// User `name`, if there is one.
    pub fn user(&self, name: &str) -> Result<Option<User>> {
        self.row(
            "reading a user",
            "SELECT name, admin, created FROM users WHERE name = ?1",
            &[name.into()],
            user_of,
        )
    }

    /// Every user, sorted by name.
    pub fn users(&self) -> Result<Vec<User>> {
        self.rows(
            "listing users",
            "SELECT name, admin, created FROM users ORDER BY name",
            &[],
            user_of,
        )
    }

    /// Whether `password` is user `name`'s. An unknown user is `false`, after the same work
    /// as a known one. Deliberately slow (Argon2id): call it off any async executor.
    pub fn check_password(&self, name: &str, password: &str) -> Result<bool> {
        Ok(self.verified_hash(name, password)?.is_some())
    }

    /// User `name`'s stored password hash if `password` matches it; `None` for a wrong
    /// password or an unknown user (after the same work as a known one).
    fn verified_hash(&self, name: &str, password: &str) -> Result<Option<String>> {
        let stored = self.row(
            "reading a user",
            "SELECT hash FROM users WHERE name = ?1",
            &[name.into()],
            |r| r.text(0),
        )?;
        Ok(match stored {
            Some(hash) => password_matches(password, &hash).then_some(hash),
            None => {
                password_matches(password, decoy_hash());
                None
            }
        })
    }

    /// Logs user `name` in: a token valid for `ttl_secs` seconds if `password` is theirs,
    /// `None` for a wrong password or an unknown user. The token is stored only while the
    /// hash the password was checked against is still the user's, so a login racing a
    /// password change ([`Catalog::set_password`], which revokes the user's tokens) either
    /// ends before the change (which then revokes its token) or fails as a wrong password;
    /// it never keeps a token the change missed. Deliberately slow (Argon2id): call it off
    /// any async executor.
    pub fn login(&self, name: &str, password: &str, ttl_secs: u64) -> Result<Option<Token>> {
        let Some(hash) = self.verified_hash(name, password)? else {
            return Ok(None);
        };
        self.db(Mode::Transaction, |db| {
            // Locks the user's row, as a password change does, until the token is stored: a
            // change that committed first left another hash, so no row matches (PostgreSQL
            // checks the row again once the change's lock is gone); one that comes after
            // sees the token and revokes it.
            let n = db.execute(
                "logging in",
                "UPDATE users SET hash = hash WHERE name = ?1 AND hash = ?2",
                &[name.into(), (&hash).into()],
            )?;
            if n == 0 {
                return Ok(None);
            }
            store_token(db, name, ttl_secs).map(Some)
        })
    }

    /// Issues a token for user `name` valid for `ttl_secs` seconds, with no password (an
    /// admin's doing; a user logs in with [`Catalog::login`]).
    pub fn issue_token(&self, name: &str, ttl_secs: u64) -> Result<Token> {
        if self.user(name)?.is_none() {
            return Err(Error::NoUser { name: name.into() });
        }
        self.db(Mode::Plain, |db| store_token(db, name, ttl_secs))
    }

    /// The user a token belongs to, if it is one of ours, unexpired and not revoked.
    pub fn token_user(&self, secret: &str) -> Result<Option<String>> {
        if !secret.starts_with(TOKEN_PREFIX) {
            return Ok(None);
        }
        self.row(
            "checking a token",
            "SELECT \"user\" FROM tokens WHERE hash = ?1 AND revoked IS NULL \
             AND expires > unixepoch()",
            &[token_hash(secret).into()],
            |r| r.text(0),
        )
    }

    /// Revokes a token (for good). Returns whether it was a live token.
    pub fn revoke_token(&self, secret: &str) -> Result<bool> {
        let n = self.execute(
            "revoking a token",
            "UPDATE tokens SET revoked = unixepoch() WHERE hash = ?1 AND revoked IS NULL",
            &[token_hash(secret).into()],
        )?;
        Ok(n > 0)
    }
}

/// Stores a new token for user `name` valid for `ttl_secs` seconds, and returns it.
fn store_token(db: &mut Db<'_>, name: &str, ttl_secs: u64) -> Result<Token> {
    let secret = format!("{TOKEN_PREFIX}{}", hex::encode(random_bytes::<32>()?));
    let now = db.now("storing a token")?;
    let expires = now.saturating_add(i64::try_from(ttl_secs).unwrap_or(i64::MAX));
    db.execute(
        "storing a token",
        "INSERT INTO tokens (hash, \"user\", created, expires) VALUES (?1, ?2, ?3, ?4)",
        &[
            token_hash(&secret).into(),
            name.into(),
            now.into(),
            expires.into(),
        ],
    )?;
    Ok(Token { secret, expires })
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
