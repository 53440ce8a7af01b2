//! The Spawngrid catalog: user-visible names bound once, forever, to snapshot scores.
//!
//! A name belongs to an owner (a user name) and is bound to one snapshot [`Score`] the moment
//! it is created; it is never rebound or renamed. An admin may *retire* a name (so gc can
//! reclaim what only it reached): a retired name no longer resolves, and can never be bound
//! again, so a name never means two snapshots. The schema enforces this with triggers, on top
//! of the API: rows are never deleted, the score never changes, a retirement is final. The embedded catalog is one
//! SQLite database in WAL mode, so readers never wait for a writer; its schema version is kept
//! in `PRAGMA user_version`.
//!
//! Names and user names follow one rule, checked by [`check_name`] and [`check_owner`]:
//! 1 to 128 bytes, the first an ASCII letter or digit, the rest ASCII letters, digits or
//! `. _ - : @`, and no `..` anywhere. So a name can never be a path (`/`) or walk out of one.
//!
//! Schema version 2 adds users and API tokens ([`users`]); version 3 adds SSH public keys
//! ([`keys`]), names shared with other users ([`shares`]) and the names of deleted users
//! (never reused); version 4 adds the envs nodes run ([`envs`]). Opening an older catalog
//! migrates it in place, keeping everything.

use library::Score;
use rusqlite::{params, Connection, ErrorCode, OptionalExtension};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub mod envs;
pub mod keys;
pub mod shares;
pub mod users;
pub use envs::EnvRecord;
pub use keys::Key;
pub use users::{Token, User};

/// The schema version this code creates and reads: 1 = names, 2 = names + users and tokens,
/// 3 = + SSH keys, shares and deleted users, 4 = + envs.
pub const SCHEMA_VERSION: i64 = 4;

/// What schema version 3 adds to version 2.
const SCHEMA_V3: [&str; 3] = [
    keys::SCHEMA_KEYS,
    shares::SCHEMA_SHARES,
    users::SCHEMA_DELETED,
];

/// The longest name or user name, in bytes.
pub const MAX_NAME: usize = 128;

/// Punctuation allowed in names after the first character.
const NAME_PUNCT: &[u8] = b"._-:@";

const SCHEMA: &str = "
CREATE TABLE names (
    owner   TEXT NOT NULL,
    name    TEXT NOT NULL,
    score   TEXT NOT NULL CHECK (length(score) = 64),
    created INTEGER NOT NULL,
    retired INTEGER,
    PRIMARY KEY (owner, name)
) WITHOUT ROWID;
CREATE INDEX names_by_score ON names(score);
CREATE TRIGGER names_are_immutable BEFORE UPDATE ON names
    WHEN OLD.owner IS NOT NEW.owner OR OLD.name IS NOT NEW.name OR OLD.score IS NOT NEW.score
      OR OLD.created IS NOT NEW.created OR OLD.retired IS NOT NULL OR NEW.retired IS NULL
    BEGIN SELECT RAISE(ABORT, 'names are immutable'); END;
CREATE TRIGGER names_are_permanent BEFORE DELETE ON names
    BEGIN SELECT RAISE(ABORT, 'names are never unbound'); END;
";

/// Everything that can go wrong in the catalog; each message is one line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The owner already has this name (bound to whatever it was bound to first).
    #[error("name {name} is already bound (names are immutable; choose another)")]
    AlreadyBound {
        /// The owner of the name.
        owner: String,
        /// The name.
        name: String,
    },
    /// The owner has no such name.
    #[error("user {owner} has no name {name} (list names with `spawngrid scores`)")]
    NotFound {
        /// The owner looked in.
        owner: String,
        /// The name looked for.
        name: String,
    },
    /// A name or user name breaks the naming rule.
    #[error("invalid {what} {value:?}: {rule}")]
    Invalid {
        /// "name" or "user name".
        what: &'static str,
        /// The rejected value.
        value: String,
        /// The rule it breaks.
        rule: String,
    },
    /// The database failed.
    #[error("{what} in catalog {path}: {source}")]
    Sqlite {
        /// What was being done.
        what: &'static str,
        /// The database file.
        path: String,
        /// The underlying error.
        #[source]
        source: rusqlite::Error,
    },
    /// A user of that name exists already.
    #[error("user {name} exists already")]
    UserExists {
        /// The user name.
        name: String,
    },
    /// No user of that name.
    #[error("no user {name} (add one with `spawngrid user add`)")]
    NoUser {
        /// The user name.
        name: String,
    },
    /// The user was deleted; user names, like names, are never reused.
    #[error("user {name} was deleted and user names are never reused (choose another)")]
    UserDeleted {
        /// The user name.
        name: String,
    },
    /// The user has registered that key already.
    #[error("user {user} has key {fingerprint} already")]
    KeyExists {
        /// The user name.
        user: String,
        /// The key's fingerprint.
        fingerprint: String,
    },
    /// Hashing or random numbers failed.
    #[error("{0}")]
    Crypto(String),
    /// The database holds something this code cannot use.
    #[error("catalog {path}: {detail}")]
    Corrupt {
        /// The database file.
        path: String,
        /// What is wrong.
        detail: String,
    },
}

/// The catalog's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One bound name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The user the name belongs to.
    pub owner: String,
    /// The name.
    pub name: String,
    /// The snapshot it is bound to.
    pub score: Score,
    /// When it was bound, seconds since the epoch.
    pub created: i64,
}

/// Checks a snapshot name against the naming rule (see the crate documentation).
pub fn check_name(name: &str) -> Result<()> {
    check("name", name)
}

/// Checks a user name; user names follow the same rule as names.
pub fn check_owner(owner: &str) -> Result<()> {
    check("user name", owner)
}

fn check(what: &'static str, value: &str) -> Result<()> {
    let rule = name_rule_broken(value.as_bytes());
    match rule {
        None => Ok(()),
        Some(rule) => Err(Error::Invalid {
            what,
            value: value.to_string(),
            rule,
        }),
    }
}

/// The rule `b` breaks, if any.
fn name_rule_broken(b: &[u8]) -> Option<String> {
    let allowed = |c: &u8| c.is_ascii_alphanumeric() || NAME_PUNCT.contains(c);
    if b.is_empty() || b.len() > MAX_NAME {
        return Some(format!(
            "must be 1 to {MAX_NAME} bytes long (is {})",
            b.len()
        ));
    }
    if !b[0].is_ascii_alphanumeric() {
        return Some("must start with an ASCII letter or digit".into());
    }
    if let Some(c) = b.iter().find(|c| !allowed(c)) {
        return Some(format!(
            "character {:?} is not allowed (use ASCII letters, digits and . _ - : @)",
            char::from(*c)
        ));
    }
    b.windows(2)
        .any(|w| w == b"..")
        .then(|| "must not contain '..'".into())
}

/// Whether `name` matches a list pattern: a glob (`*` any run, `?` one character) when the
/// pattern has a wildcard, else a substring.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    if pattern.contains(['*', '?']) {
        glob(pattern.as_bytes(), name.as_bytes())
    } else {
        name.contains(pattern)
    }
}

/// Whole-string glob match with `*` and `?`, by backtracking to the last `*`.
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, si));
                pi += 1;
            }
            Some(&c) if c == b'?' || c == s[si] => {
                pi += 1;
                si += 1;
            }
            _ => match star {
                Some((sp, ss)) => {
                    pi = sp + 1;
                    si = ss + 1;
                    star = Some((sp, ss + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// The names catalog: (owner, name) → score, bound once, forever.
pub struct Catalog {
    conn: Mutex<Connection>,
    path: String,
}

impl Catalog {
    /// Opens (creating if needed) the catalog database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Catalog> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let sql = |what| {
            let shown = shown.clone();
            move |source| Error::Sqlite {
                what,
                path: shown,
                source,
            }
        };
        let conn = Connection::open(path).map_err(sql("opening"))?;
        conn.busy_timeout(Duration::from_secs(30))
            .map_err(sql("configuring"))?;
        conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0))
            .map_err(sql("enabling WAL"))?;
        let cat = Catalog {
            conn: Mutex::new(conn),
            path: shown,
        };
        cat.migrate()?;
        Ok(cat)
    }

    fn sql(&self, what: &'static str) -> impl FnOnce(rusqlite::Error) -> Error + '_ {
        move |source| Error::Sqlite {
            what,
            path: self.path.clone(),
            source,
        }
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates the schema in a new database, migrates an older one in place (version 1 → 2
    /// adds the users and tokens tables, 2 → 3 the keys, shares and deleted users tables,
    /// 3 → 4 the envs table);
    /// refuses a database from a newer spawngrid.
    fn migrate(&self) -> Result<()> {
        let mut conn = self.conn();
        // The common case, a current schema, costs one read and no write transaction.
        let current: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(self.sql("reading the schema version"))?;
        if current == SCHEMA_VERSION {
            return Ok(());
        }
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(self.sql("opening the schema"))?;
        let version: i64 = tx
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(self.sql("reading the schema version"))?;
        match version {
            0..SCHEMA_VERSION => {
                // Each step brings version v to v + 1; a new catalog takes them all.
                let steps: [&[&str]; 4] = [
                    &[SCHEMA],
                    &[users::SCHEMA_V2],
                    &SCHEMA_V3,
                    &[envs::SCHEMA_ENVS],
                ];
                for step in &steps[version as usize..] {
                    for sql in *step {
                        tx.execute_batch(sql)
                            .map_err(self.sql("creating or migrating the schema"))?;
                    }
                }
                tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                    .map_err(self.sql("setting the schema version"))?;
            }
            SCHEMA_VERSION => {}
            v => {
                return Err(Error::Corrupt {
                    path: self.path.clone(),
                    detail: format!(
                        "schema version {v} is newer than this spawngrid reads \
                         ({SCHEMA_VERSION}); upgrade spawngrid"
                    ),
                })
            }
        }
        tx.commit().map_err(self.sql("creating the schema"))
    }

    /// Binds `name` of `owner` to `score`, forever. Fails with [`Error::AlreadyBound`] if the
    /// owner already has that name, whatever it is bound to.
    pub fn bind(&self, owner: &str, name: &str, score: Score) -> Result<()> {
        check_owner(owner)?;
        check_name(name)?;
        let result = self.conn().execute(
            "INSERT INTO names (owner, name, score, created) VALUES (?1, ?2, ?3, ?4)",
            params![owner, name, score.to_hex(), unix_now()],
        );
        match result {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == ErrorCode::ConstraintViolation
                    && e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
            {
                Err(Error::AlreadyBound {
                    owner: owner.into(),
                    name: name.into(),
                })
            }
            Err(e) => Err(self.sql("binding a name")(e)),
        }
    }

    /// Retires `name` of `owner`: it stops resolving and is never bound again. Returns the
    /// score it was bound to. Only what no other name reaches becomes garbage for gc.
    pub fn retire(&self, owner: &str, name: &str) -> Result<Score> {
        let score = self.resolve(owner, name)?;
        let n = self
            .conn()
            .execute(
                "UPDATE names SET retired = ?3 WHERE owner = ?1 AND name = ?2 AND retired IS NULL",
                params![owner, name, unix_now()],
            )
            .map_err(self.sql("retiring a name"))?;
        if n == 0 {
            return Err(Error::NotFound {
                owner: owner.into(),
                name: name.into(),
            });
        }
        Ok(score)
    }

    /// The score `name` of `owner` is bound to.
    pub fn resolve(&self, owner: &str, name: &str) -> Result<Score> {
        let hex: Option<String> = self
            .conn()
            .query_row(
                "SELECT score FROM names WHERE owner = ?1 AND name = ?2 AND retired IS NULL",
                params![owner, name],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sql("resolving a name"))?;
        match hex {
            Some(h) => self.parse_score(&h),
            None => Err(Error::NotFound {
                owner: owner.into(),
                name: name.into(),
            }),
        }
    }

    /// Bound names, sorted by owner then name: all owners' or one owner's, and only those
    /// matching `pattern` if given (see [`pattern_matches`]: a glob if it has `*` or `?`, else a
    /// substring of the name).
    pub fn list(&self, owner: Option<&str>, pattern: Option<&str>) -> Result<Vec<Record>> {
        let rows = self.query(
            "SELECT owner, name, score, created FROM names \
             WHERE (?1 IS NULL OR owner = ?1) AND retired IS NULL ORDER BY owner, name",
            params![owner],
        )?;
        Ok(rows
            .into_iter()
            .filter(|r| pattern.is_none_or(|p| pattern_matches(p, &r.name)))
            .collect())
    }

    /// Every bound name with its score: the roots that gc keeps and verify checks.
    pub fn all_scores(&self) -> Result<Vec<(String, String, Score)>> {
        Ok(self
            .list(None, None)?
            .into_iter()
            .map(|r| (r.owner, r.name, r.score))
            .collect())
    }

    /// The (owner, name) pairs bound to `score`, sorted.
    pub fn names_of(&self, score: &Score) -> Result<Vec<(String, String)>> {
        let rows = self.query(
            "SELECT owner, name, score, created FROM names \
             WHERE score = ?1 AND retired IS NULL ORDER BY owner, name",
            params![score.to_hex()],
        )?;
        Ok(rows.into_iter().map(|r| (r.owner, r.name)).collect())
    }

    fn query(&self, sql: &str, args: impl rusqlite::Params) -> Result<Vec<Record>> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare_cached(sql)
            .map_err(self.sql("listing names"))?;
        let raw = stmt
            .query_map(args, |r| {
                Ok((r.get(0)?, r.get(1)?, r.get::<_, String>(2)?, r.get(3)?))
            })
            .and_then(|rows| rows.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(self.sql("listing names"))?;
        raw.into_iter()
            .map(|(owner, name, hex, created)| {
                Ok(Record {
                    owner,
                    name,
                    score: self.parse_score(&hex)?,
                    created,
                })
            })
            .collect()
    }

    fn parse_score(&self, hex: &str) -> Result<Score> {
        hex.parse().map_err(|e| Error::Corrupt {
            path: self.path.clone(),
            detail: format!("{e}"),
        })
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fresh catalog in a temporary directory (shared with the users tests).
    pub(crate) fn open() -> (tempfile::TempDir, Catalog) {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(dir.path().join("catalog.db")).unwrap();
        (dir, cat)
    }

    /// A made-up score, distinct for each `n`.
    pub(crate) fn score(n: u8) -> Score {
        Score::of(&[n])
    }

    #[test]
    fn bind_and_resolve() {
        let (_d, cat) = open();
        cat.bind("alice", "base", score(1)).unwrap();
        cat.bind("bob", "base", score(2)).unwrap();
        assert_eq!(cat.resolve("alice", "base").unwrap(), score(1));
        assert_eq!(cat.resolve("bob", "base").unwrap(), score(2));
        let err = cat.resolve("alice", "nope").unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }));
        assert!(err.to_string().contains("nope"));
        assert_eq!(
            cat.names_of(&score(1)).unwrap(),
            vec![("alice".to_string(), "base".to_string())]
        );
    }

    #[test]
    fn rebinding_is_refused_and_changes_nothing() {
        let (_d, cat) = open();
        cat.bind("alice", "web", score(1)).unwrap();
        for s in [score(1), score(2)] {
            let err = cat.bind("alice", "web", s).unwrap_err();
            assert!(matches!(err, Error::AlreadyBound { .. }));
            assert_eq!(
                err.to_string(),
                "name web is already bound (names are immutable; choose another)"
            );
        }
        assert_eq!(cat.resolve("alice", "web").unwrap(), score(1));
    }

    #[test]
    fn schema_refuses_updates_and_deletes() {
        let (_d, cat) = open();
        cat.bind("alice", "web", score(1)).unwrap();
        let conn = cat.conn();
        assert!(conn.execute("UPDATE names SET score = 'x'", []).is_err());
        assert!(conn.execute("DELETE FROM names", []).is_err());
        assert!(conn.execute("UPDATE names SET retired = NULL", []).is_err());
    }

    #[test]
    fn retired_names_stop_resolving_and_are_never_rebound() {
        let (_d, cat) = open();
        cat.bind("alice", "web", score(1)).unwrap();
        cat.bind("alice", "db", score(2)).unwrap();
        assert_eq!(cat.retire("alice", "web").unwrap(), score(1));
        assert!(matches!(
            cat.resolve("alice", "web"),
            Err(Error::NotFound { .. })
        ));
        assert!(matches!(
            cat.retire("alice", "web"),
            Err(Error::NotFound { .. })
        ));
        assert!(matches!(
            cat.bind("alice", "web", score(3)),
            Err(Error::AlreadyBound { .. })
        ));
        let roots: Vec<_> = cat.all_scores().unwrap().into_iter().map(|r| r.1).collect();
        assert_eq!(roots, vec!["db".to_string()]);
        assert!(cat.names_of(&score(1)).unwrap().is_empty());
        let conn = cat.conn();
        assert!(conn
            .execute("UPDATE names SET retired = 5 WHERE name = 'web'", [])
            .is_err());
    }

    #[test]
    fn invalid_names_are_refused() {
        let long = "a".repeat(129);
        let bad = [
            "a/b", "..", "../x", "x..y", "", "a\nb", "a\u{1}", "a+b", "-x", ".x", "é", &long,
        ];
        let (_d, cat) = open();
        for name in bad {
            let err = check_name(name).unwrap_err();
            assert!(err.to_string().starts_with("invalid name"), "{err}");
            assert!(cat.bind("alice", name, score(1)).is_err(), "{name:?}");
            assert!(check_owner(name).is_err(), "{name:?}");
        }
        assert!(check_name("a/b").unwrap_err().to_string().contains("'/'"));
        assert!(check_name("x..y").unwrap_err().to_string().contains(".."));
        assert!(check_name(&long).unwrap_err().to_string().contains("128"));
        for good in [
            "a",
            "ubuntu-24.04",
            "x_y:z@w",
            "9",
            &"b".repeat(128),
            "a.b.c",
        ] {
            check_name(good).unwrap();
        }
        assert!(cat.bind("bad/owner", "x", score(1)).is_err());
        assert!(cat.list(None, None).unwrap().is_empty());
    }

    #[test]
    fn list_with_patterns() {
        let (_d, cat) = open();
        for (o, n) in [("alice", "web-1"), ("alice", "web-2"), ("alice", "db")] {
            cat.bind(o, n, score(1)).unwrap();
        }
        cat.bind("bob", "web-3", score(3)).unwrap();
        let names = |owner, pat| -> Vec<String> {
            let recs = cat.list(owner, pat).unwrap();
            recs.into_iter().map(|r| r.name).collect()
        };
        assert_eq!(names(Some("alice"), None), ["db", "web-1", "web-2"]);
        assert_eq!(names(None, Some("web")), ["web-1", "web-2", "web-3"]);
        assert_eq!(names(None, Some("web-?")), ["web-1", "web-2", "web-3"]);
        assert_eq!(names(Some("alice"), Some("*2")), ["web-2"]);
        assert_eq!(names(None, Some("w*b*")), ["web-1", "web-2", "web-3"]);
        assert!(names(None, Some("web")).len() == 3 && names(None, Some("?")).is_empty());
        let rec = &cat.list(Some("bob"), None).unwrap()[0];
        assert_eq!((rec.score, rec.owner.as_str()), (score(3), "bob"));
        assert!(rec.created > 1_600_000_000);
        assert_eq!(cat.all_scores().unwrap().len(), 4);
    }

    #[test]
    fn glob_matching() {
        assert!(glob(b"*", b""));
        assert!(glob(b"a*b*c", b"aXbYbc"));
        assert!(!glob(b"a*b", b"aXbY"));
        assert!(glob(b"??", b"ab") && !glob(b"??", b"abc"));
    }

    /// A version 1 catalog (names only) opens as the current version with its names kept.
    #[test]
    fn version_1_migrates_keeping_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO names (owner, name, score, created) VALUES ('alice', 'old', ?1, 5)",
                params![score(9).to_hex()],
            )
            .unwrap();
        }
        let cat = Catalog::open(&path).unwrap();
        assert_eq!(cat.resolve("alice", "old").unwrap(), score(9));
        let version: i64 = cat
            .conn()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        cat.add_user("alice", "pw", false).unwrap();
        drop(cat);
        // Reopening a migrated catalog changes nothing.
        let cat = Catalog::open(&path).unwrap();
        assert!(cat.check_password("alice", "pw").unwrap());
        assert!(cat.bind("alice", "old", score(1)).is_err());
        // A newer schema is refused.
        cat.conn()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(cat);
        let err = Catalog::open(&path).err().unwrap().to_string();
        assert!(err.contains("newer"), "{err}");
    }

    /// A version 2 catalog (names, users, tokens) opens as the current version with
    /// everything kept.
    #[test]
    fn version_2_migrates_to_current_keeping_users_and_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            conn.execute_batch(users::SCHEMA_V2).unwrap();
            conn.pragma_update(None, "user_version", 2).unwrap();
            conn.execute(
                "INSERT INTO names (owner, name, score, created) VALUES ('alice', 'old', ?1, 5)",
                params![score(9).to_hex()],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO users (name, hash, admin, created) VALUES ('alice', ?1, 1, 5)",
                params![users::hash_password("pw").unwrap()],
            )
            .unwrap();
        }
        let cat = Catalog::open(&path).unwrap();
        let version: i64 = cat
            .conn()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        assert_eq!(cat.resolve("alice", "old").unwrap(), score(9));
        assert!(cat.check_password("alice", "pw").unwrap());
        assert!(cat.user("alice").unwrap().unwrap().admin);
        cat.add_user("bob", "pw", false).unwrap();
        cat.share("alice", "old", "bob").unwrap();
        assert_eq!(cat.resolve_for("bob", "alice/old").unwrap(), score(9));
        drop(cat);
        let cat = Catalog::open(&path).unwrap();
        assert_eq!(cat.resolve_for("bob", "alice/old").unwrap(), score(9));
        assert!(cat.keys("alice").unwrap().is_empty());
        assert!(cat.envs_on(None).unwrap().is_empty());
    }

    #[test]
    fn names_persist_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        Catalog::open(&path)
            .unwrap()
            .bind("alice", "kept", score(7))
            .unwrap();
        let cat = Catalog::open(&path).unwrap();
        assert_eq!(cat.resolve("alice", "kept").unwrap(), score(7));
        assert!(cat.bind("alice", "kept", score(8)).is_err());
        let version: i64 = cat
            .conn()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }
}
