//! Users' SSH public keys (schema version 3): `keys(user, fingerprint, line, added)`.
//!
//! A key is stored as the one OpenSSH public key line it was given (`TYPE BASE64 [COMMENT]`,
//! whitespace normalised), keyed by its fingerprint, computed as `ssh-keygen -lf` does:
//! `SHA256:` and the unpadded base64 of the SHA-256 of the key blob. The blob is checked
//! field by field for the key types the SSH gateway accepts: `ssh-ed25519`,
//! `ecdsa-sha2-nistp256`/`384`/`521` and `ssh-rsa`; anything else is refused.

use crate::engine::Mode;
use crate::{Catalog, Error, Result};
use base64::Engine;

/// The longest key line accepted (an 16384-bit RSA key is about 2.8 kB of base64).
const MAX_LINE: usize = 8192;

/// The smallest RSA modulus accepted, in bits (OpenSSH's own minimum).
const MIN_RSA_BITS: usize = 1024;

/// One registered SSH public key of a user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key {
    /// `SHA256:` and the unpadded base64 SHA-256 of the key blob (as `ssh-keygen -lf` prints).
    pub fingerprint: String,
    /// The public key line, `TYPE BASE64 [COMMENT]` (an `authorized_keys` line without options).
    pub line: String,
    /// When it was added, seconds since the epoch.
    pub added: i64,
}

impl Key {
    /// The key's comment (the text after the key, often `user@host`), empty if none.
    pub fn comment(&self) -> &str {
        self.line.splitn(3, ' ').nth(2).unwrap_or("")
    }
}

/// A public key line checked and normalised: its line and fingerprint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedKey {
    /// `TYPE BASE64 [COMMENT]`, single spaces between the fields.
    pub line: String,
    /// `SHA256:...` of the key blob.
    pub fingerprint: String,
}

/// Checks one OpenSSH public key line (`TYPE BASE64 [COMMENT]`, as in a `.pub` file) and
/// computes its fingerprint.
pub fn parse_key(line: &str) -> Result<ParsedKey> {
    let invalid = |rule: String| Error::Invalid {
        what: "SSH public key",
        value: shorten(line),
        rule,
    };
    let line = line.trim();
    if line.is_empty() {
        return Err(invalid("is empty (give one line of a .pub file)".into()));
    }
    if line.len() > MAX_LINE || line.contains(['\n', '\r', '\0']) {
        return Err(invalid(format!(
            "must be one line of at most {MAX_LINE} bytes (give one line of a .pub file)"
        )));
    }
    if line.contains("PRIVATE KEY") {
        return Err(invalid(
            "is a private key: give the public one (the .pub file) and keep this secret".into(),
        ));
    }
    let mut fields = line.split_ascii_whitespace();
    let kind = fields.next().unwrap_or_default();
    let Some(b64) = fields.next() else {
        return Err(invalid(
            "must be `TYPE BASE64 [COMMENT]` (give one line of a .pub file)".into(),
        ));
    };
    let comment = fields.collect::<Vec<_>>().join(" ");
    let blob = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| invalid(format!("the key is not base64 ({e})")))?;
    check_blob(kind, &blob).map_err(invalid)?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &blob);
    let fingerprint = format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest.as_ref())
    );
    let mut line = format!("{kind} {b64}");
    if !comment.is_empty() {
        line.push(' ');
        line.push_str(&comment);
    }
    Ok(ParsedKey { line, fingerprint })
}

/// At most 40 characters of a refused key line, for an error message.
fn shorten(line: &str) -> String {
    let mut s: String = line.trim().chars().take(40).collect();
    if line.trim().chars().count() > 40 {
        s.push_str("...");
    }
    s
}

/// SSH wire-format strings (u32 big-endian length, then bytes) read off a blob.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn next(&mut self, what: &str) -> Result<&'a [u8], String> {
        let short = || format!("the key blob is cut short in its {what}");
        let len: [u8; 4] = self
            .0
            .get(..4)
            .ok_or_else(short)?
            .try_into()
            .unwrap_or([0; 4]);
        let len = u32::from_be_bytes(len) as usize;
        let field = self.0.get(4..4 + len).ok_or_else(short)?;
        self.0 = &self.0[4 + len..];
        Ok(field)
    }

    fn end(&self) -> Result<(), String> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(format!("{} stray bytes after the key", self.0.len()))
        }
    }
}

/// Checks that `blob` is a well-formed public key of type `kind`.
fn check_blob(kind: &str, blob: &[u8]) -> Result<(), String> {
    let mut f = Fields(blob);
    let inner = f.next("type")?;
    if inner != kind.as_bytes() {
        return Err(format!(
            "the line says {kind:?} but the key inside is {:?}",
            String::from_utf8_lossy(inner)
        ));
    }
    match kind {
        "ssh-ed25519" => {
            if f.next("public key")?.len() != 32 {
                return Err("an ed25519 public key is 32 bytes".into());
            }
        }
        "ecdsa-sha2-nistp256" | "ecdsa-sha2-nistp384" | "ecdsa-sha2-nistp521" => {
            let curve = &kind["ecdsa-sha2-".len()..];
            if f.next("curve")? != curve.as_bytes() {
                return Err(format!("the key's curve is not {curve}"));
            }
            let coord = match curve {
                "nistp256" => 32,
                "nistp384" => 48,
                _ => 66,
            };
            let point = f.next("point")?;
            if point.len() != 1 + 2 * coord || point[0] != 4 {
                return Err(format!("not an uncompressed {curve} point"));
            }
        }
        "ssh-rsa" => {
            let e = f.next("exponent")?;
            let n = f.next("modulus")?;
            if e.is_empty() || n.is_empty() || e[0] & 0x80 != 0 || n[0] & 0x80 != 0 {
                return Err("the RSA exponent and modulus must be positive".into());
            }
            let n = &n[n.iter().take_while(|&&b| b == 0).count()..];
            let bits = n
                .first()
                .map_or(0, |b| n.len() * 8 - b.leading_zeros() as usize);
            if bits < MIN_RSA_BITS {
                return Err(format!(
                    "an RSA key of {bits} bits is too small (at least {MIN_RSA_BITS})"
                ));
            }
        }
        other => {
            return Err(format!(
                "key type {other:?} is not accepted (use ssh-ed25519, ecdsa-sha2-nistp256, \
                 ecdsa-sha2-nistp384, ecdsa-sha2-nistp521 or ssh-rsa)"
            ))
        }
    }
    f.end()
}

impl Catalog {
    /// Registers the public key `line` for user `user`. Refuses a malformed key, an unknown
    /// user, and a key the user has already registered.
    pub fn add_key(&self, user: &str, line: &str) -> Result<Key> {
        let parsed = parse_key(line)?;
        if self.user(user)?.is_none() {
            return Err(Error::NoUser { name: user.into() });
        }
        let what = "adding a key";
        self.db(Mode::Plain, |db| {
            let key = Key {
                fingerprint: parsed.fingerprint.clone(),
                line: parsed.line.clone(),
                added: db.now(what)?,
            };
            db.insert(
                what,
                "INSERT INTO keys (\"user\", fingerprint, line, added) VALUES (?1, ?2, ?3, ?4)",
                &[
                    user.into(),
                    (&key.fingerprint).into(),
                    (&key.line).into(),
                    key.added.into(),
                ],
                || Error::KeyExists {
                    user: user.into(),
                    fingerprint: key.fingerprint.clone(),
                },
            )?;
            Ok(key)
        })
    }

    /// User `user`'s keys in the order they were added (empty for an unknown user).
    pub fn keys(&self, user: &str) -> Result<Vec<Key>> {
        self.rows(
            "listing keys",
            "SELECT fingerprint, line, added FROM keys WHERE \"user\" = ?1 ORDER BY added, rowid",
            &[user.into()],
            |r| {
                Ok(Key {
                    fingerprint: r.text(0)?,
                    line: r.text(1)?,
                    added: r.int(2)?,
                })
            },
        )
    }

    /// Removes user `user`'s keys whose fingerprint or comment is `which`. Returns whether
    /// any was removed.
    pub fn remove_key(&self, user: &str, which: &str) -> Result<bool> {
        let doomed: Vec<String> = self
            .keys(user)?
            .into_iter()
            .filter(|k| k.fingerprint == which || (!which.is_empty() && k.comment() == which))
            .map(|k| k.fingerprint)
            .collect();
        for fp in &doomed {
            self.execute(
                "removing a key",
                "DELETE FROM keys WHERE \"user\" = ?1 AND fingerprint = ?2",
                &[user.into(), fp.into()],
            )?;
        }
        Ok(!doomed.is_empty())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::process::Command;

    /// A fresh key pair made by ssh-keygen: the `.pub` line and `ssh-keygen -lf`'s fingerprint.
    pub(crate) fn keygen(kind: &str, bits: Option<&str>, comment: &str) -> (String, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        let mut cmd = Command::new("ssh-keygen");
        cmd.args(["-q", "-N", "", "-t", kind, "-C", comment, "-f"])
            .arg(&path);
        if let Some(b) = bits {
            cmd.args(["-b", b]);
        }
        assert!(cmd.status().unwrap().success());
        let line = std::fs::read_to_string(path.with_extension("pub")).unwrap();
        let out = Command::new("ssh-keygen")
            .arg("-lf")
            .arg(path.with_extension("pub"))
            .output()
            .unwrap();
        assert!(out.status.success());
        // "256 SHA256:xxxx comment (ED25519)"
        let text = String::from_utf8(out.stdout).unwrap();
        (line, text.split(' ').nth(1).unwrap().to_string())
    }

    #[test]
    fn fingerprints_match_ssh_keygen() {
        for (kind, bits) in [
            ("ed25519", None),
            ("ecdsa", Some("256")),
            ("ecdsa", Some("384")),
            ("ecdsa", Some("521")),
            ("rsa", Some("2048")),
        ] {
            let (line, fp) = keygen(kind, bits, "me@host");
            let parsed = parse_key(&line).unwrap();
            assert_eq!(parsed.fingerprint, fp, "{kind} {bits:?}");
            assert_eq!(parsed.line, line.trim());
        }
    }

    #[test]
    fn garbage_is_refused() {
        let (line, _) = keygen("ed25519", None, "c");
        let b64 = line.split(' ').nth(1).unwrap();
        let (rsa, _) = keygen("rsa", Some("1024"), "c");
        let cases = [
            (String::new(), "empty"),
            ("ssh-ed25519".to_string(), "TYPE BASE64"),
            (format!("ssh-ed25519 {b64}\nssh-ed25519 {b64}"), "one line"),
            (format!("ssh-ed25519 {}", &b64[..21]), "base64"),
            (format!("ssh-rsa {b64}"), "says \"ssh-rsa\""),
            (format!("ssh-dss {b64}"), "says"),
            ("ssh-dss AAAAB3NzaC1kc3M=".to_string(), "not accepted"),
            ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5".to_string(), "cut short"),
            (
                "-----BEGIN OPENSSH PRIVATE KEY-----".to_string(),
                "private key",
            ),
        ];
        for (bad, why) in cases {
            let err = parse_key(&bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid SSH public key"), "{err}");
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        // 1024 bits is OpenSSH's floor, so such a key is fine; stray bytes are not.
        parse_key(&rsa).unwrap();
        let mut blob = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        blob.push(0);
        let padded = base64::engine::general_purpose::STANDARD.encode(&blob);
        let err = parse_key(&format!("ssh-ed25519 {padded}")).unwrap_err();
        assert!(err.to_string().contains("stray"), "{err}");
    }
}
