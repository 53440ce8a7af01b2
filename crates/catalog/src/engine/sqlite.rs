//! The embedded engine: one SQLite database file in WAL mode (readers never wait for the
//! writer), its schema version in `PRAGMA user_version`, its rules in triggers.
//!
//! The DDL below is the catalog's schema since version 1, step by step, unchanged: existing
//! catalogs open as they are and are migrated in place, in one transaction.

use super::{steps_from, Engine, Fault, Mode, Row, Session, Value, LOCK_WAIT};
use crate::Result;
use rusqlite::types::{FromSql, FromSqlResult, ToSqlOutput, ValueRef};
use rusqlite::{Connection, ToSql};
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Schema version 1: names.
pub(crate) const NAMES: &str = "
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

/// Schema version 2: users and tokens.
pub(crate) const USERS: &str = "
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

/// Schema version 3: SSH keys, shares and deleted user names.
const KEYS_SHARES_DELETED: &str = "
CREATE TABLE keys (
    user        TEXT NOT NULL REFERENCES users(name),
    fingerprint TEXT NOT NULL,
    line        TEXT NOT NULL,
    added       INTEGER NOT NULL,
    PRIMARY KEY (user, fingerprint)
);
CREATE TABLE shares (
    owner   TEXT NOT NULL,
    name    TEXT NOT NULL,
    user    TEXT NOT NULL,
    created INTEGER NOT NULL,
    PRIMARY KEY (owner, name, user)
) WITHOUT ROWID;
CREATE INDEX shares_by_user ON shares(user);
CREATE TABLE deleted_users (
    name    TEXT PRIMARY KEY NOT NULL,
    deleted INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Schema version 4: envs.
const ENVS: &str = "
CREATE TABLE envs (
    id       TEXT PRIMARY KEY NOT NULL,
    owner    TEXT NOT NULL,
    env      TEXT NOT NULL,
    node     TEXT NOT NULL,
    name     TEXT,
    snapshot TEXT CHECK (snapshot IS NULL OR length(snapshot) = 64),
    created  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX envs_by_owner ON envs(owner);
CREATE INDEX envs_by_node ON envs(node);
";

/// Schema version 5: the grid's nodes and leases, and the last lease fence given out.
const GRID: &str = "
CREATE TABLE nodes (
    name          TEXT PRIMARY KEY NOT NULL,
    address       TEXT NOT NULL,
    ssh_port      INTEGER NOT NULL,
    fingerprint   TEXT NOT NULL,
    capacity_envs INTEGER NOT NULL,
    capacity_mem  INTEGER NOT NULL,
    labels        TEXT NOT NULL,
    registered    INTEGER NOT NULL,
    heartbeat     INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE leases (
    id      TEXT PRIMARY KEY NOT NULL,
    kind    TEXT NOT NULL CHECK (kind IN ('shared', 'exclusive')),
    holder  TEXT NOT NULL,
    taken   INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    fence   INTEGER NOT NULL UNIQUE
) WITHOUT ROWID;
CREATE TABLE lease_fence (last INTEGER NOT NULL);
INSERT INTO lease_fence (last) VALUES (0);
";

/// Schema version 6: gc leases (kind `gc`), and the packs gc condemned, is deleting or deleted.
const GC: &str = "
CREATE TABLE leases6 (
    id      TEXT PRIMARY KEY NOT NULL,
    kind    TEXT NOT NULL CHECK (kind IN ('shared', 'exclusive', 'gc')),
    holder  TEXT NOT NULL,
    taken   INTEGER NOT NULL,
    expires INTEGER NOT NULL,
    fence   INTEGER NOT NULL UNIQUE
) WITHOUT ROWID;
INSERT INTO leases6 SELECT id, kind, holder, taken, expires, fence FROM leases;
DROP TABLE leases;
ALTER TABLE leases6 RENAME TO leases;
CREATE TABLE gc_packs (
    pack  TEXT PRIMARY KEY NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('condemned', 'sweeping', 'swept')),
    since INTEGER NOT NULL,
    fence INTEGER NOT NULL
) WITHOUT ROWID;
";

/// Schema version 7: pending invites.
const INVITES: &str = "
CREATE TABLE invites (
    owner   TEXT NOT NULL,
    name    TEXT NOT NULL,
    inviter TEXT NOT NULL,
    source  TEXT NOT NULL,
    score   TEXT NOT NULL CHECK (length(score) = 64),
    created INTEGER NOT NULL,
    PRIMARY KEY (owner, name)
) WITHOUT ROWID;
";

/// Schema version 8: the ports envs expose over HTTPS.
const EXPOSURES: &str = "
CREATE TABLE exposures (
    id      TEXT PRIMARY KEY NOT NULL,
    env_id  TEXT NOT NULL,
    owner   TEXT NOT NULL,
    port    INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
    public  INTEGER NOT NULL CHECK (public IN (0, 1)),
    key     TEXT NOT NULL CHECK (length(key) = 64),
    created INTEGER NOT NULL,
    UNIQUE (env_id, port)
) WITHOUT ROWID;
";

/// Step `v` brings schema version `v` to `v + 1`.
const STEPS: [&str; crate::SCHEMA_VERSION as usize] = [
    NAMES,
    USERS,
    KEYS_SHARES_DELETED,
    ENVS,
    GRID,
    GC,
    INVITES,
    EXPOSURES,
];

/// A catalog in one SQLite file, used through one connection.
pub(crate) struct Sqlite {
    conn: Mutex<Connection>,
    at: String,
}

/// Switches the database to WAL mode. Of several connections switching a new database at the
/// same instant, SQLite fails the losers at once with "database is locked" (waiting could
/// deadlock, so the busy handler is not called): try again until [`LOCK_WAIT`] is spent.
fn wal(conn: &Connection) -> rusqlite::Result<()> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0)) {
            Err(e) if is_busy(&e) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            r => return r.map(drop),
        }
    }
}

/// Whether `e` is SQLITE_BUSY (another connection holds the lock).
fn is_busy(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
}

impl Sqlite {
    /// Opens (creating if needed) the database at `path`, in WAL mode.
    pub(crate) fn open(path: &Path) -> Result<Sqlite> {
        let at = path.display().to_string();
        let fail = |what| {
            let at = at.clone();
            move |e: rusqlite::Error| fault(e).into_error(what, &at)
        };
        let conn = Connection::open(path).map_err(fail("opening"))?;
        conn.busy_timeout(LOCK_WAIT).map_err(fail("configuring"))?;
        wal(&conn).map_err(fail("enabling WAL"))?;
        Ok(Sqlite {
            conn: Mutex::new(conn),
            at,
        })
    }

    fn version(conn: &Connection) -> Result<i64, Fault> {
        conn.pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(fault)
    }
}

impl Sqlite {
    /// Runs `f` on the connection inside a transaction begun with `begin`: committed if `f`
    /// returns `Ok`, rolled back otherwise.
    fn transaction(
        &self,
        conn: &mut Connection,
        begin: &str,
        f: impl FnOnce(&mut Connection) -> Result<()>,
    ) -> Result<()> {
        let fail = |what| move |e| fault(e).into_error(what, &self.at);
        conn.execute_batch(begin)
            .map_err(fail("beginning a transaction"))?;
        match f(conn) {
            Ok(()) => conn
                .execute_batch("COMMIT")
                .map_err(fail("committing a transaction")),
            Err(e) => {
                // A failed rollback leaves nothing to do: SQLite rolls back on its own then.
                let _ = conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Engine for Sqlite {
    fn at(&self) -> &str {
        &self.at
    }

    fn migrate(&self) -> Result<()> {
        let mut conn = self.lock();
        let what = "creating or migrating the schema";
        let fail = |f: Fault| f.into_error(what, &self.at);
        // The common case, a current schema, costs one read and no write transaction.
        if Sqlite::version(&conn).map_err(fail)? == crate::SCHEMA_VERSION {
            return Ok(());
        }
        self.transaction(&mut conn, "BEGIN IMMEDIATE", |conn| {
            for step in steps_from(Sqlite::version(conn).map_err(fail)?, &STEPS, &self.at)? {
                conn.execute_batch(step).map_err(|e| fail(fault(e)))?;
            }
            conn.pragma_update(None, "user_version", crate::SCHEMA_VERSION)
                .map_err(|e| fail(fault(e)))
        })
    }

    fn run(&self, mode: Mode, f: &mut dyn FnMut(&mut dyn Session) -> Result<()>) -> Result<()> {
        let mut conn = self.lock();
        let begin = match mode {
            Mode::Plain => return f(&mut Conn(&mut conn)),
            Mode::Transaction => "BEGIN",
            Mode::Serial => "BEGIN IMMEDIATE",
        };
        self.transaction(&mut conn, begin, |conn| f(&mut Conn(conn)))
    }
}

/// A session on the locked connection.
struct Conn<'a>(&'a mut Connection);

impl Session for Conn<'_> {
    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, Fault> {
        let mut stmt = self.0.prepare_cached(sql).map_err(fault)?;
        let n = stmt
            .execute(rusqlite::params_from_iter(args))
            .map_err(fault)?;
        Ok(n as u64)
    }

    fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, Fault> {
        let mut stmt = self.0.prepare_cached(sql).map_err(fault)?;
        let columns = stmt.column_count();
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args), |r| {
                (0..columns)
                    .map(|i| r.get(i))
                    .collect::<rusqlite::Result<_>>()
                    .map(Row)
            })
            .map_err(fault)?;
        rows.collect::<rusqlite::Result<_>>().map_err(fault)
    }
}

impl ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Int(n) => ToSqlOutput::Borrowed(ValueRef::Integer(*n)),
            Value::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        })
    }
}

impl FromSql for Value {
    fn column_result(v: ValueRef<'_>) -> FromSqlResult<Value> {
        match v {
            ValueRef::Null => Ok(Value::Null),
            ValueRef::Integer(n) => Ok(Value::Int(n)),
            ValueRef::Text(_) => v.as_str().map(|s| Value::Text(s.to_string())),
            _ => Err(rusqlite::types::FromSqlError::InvalidType),
        }
    }
}

/// The fault an SQLite error is.
fn fault(e: rusqlite::Error) -> Fault {
    use rusqlite::ffi;
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                || f.extended_code == ffi::SQLITE_CONSTRAINT_UNIQUE =>
        {
            Fault::Unique(e.to_string())
        }
        _ if is_busy(&e) => Fault::Timeout(format!(
            "{e} (another connection held the catalog's write lock for {} s)",
            LOCK_WAIT.as_secs()
        )),
        _ => Fault::Other(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{users, Catalog, Error, SCHEMA_VERSION};
    use library::Score;
    use rusqlite::params;

    fn score(n: u8) -> Score {
        Score::of(&[n])
    }

    fn user_version(path: &Path) -> i64 {
        let conn = Connection::open(path).unwrap();
        conn.pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap()
    }

    /// Processes that create the same new catalog at the same instant all open it (one makes
    /// the schema; the others wait for its lock instead of failing).
    #[test]
    fn many_openers_of_a_new_catalog_all_succeed() {
        for round in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("catalog.db");
            let start = std::sync::Arc::new(std::sync::Barrier::new(8));
            let openers: Vec<_> = (0..8)
                .map(|_| {
                    let (path, start) = (path.clone(), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        Catalog::open(&path).map(|_| ())
                    })
                })
                .collect();
            for o in openers {
                if let Err(e) = o.join().unwrap() {
                    panic!("round {round}: {e}");
                }
            }
            assert_eq!(user_version(&path), SCHEMA_VERSION);
        }
    }

    /// A version 1 catalog (names only) opens as the current version with its names kept.
    #[test]
    fn version_1_migrates_keeping_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(NAMES).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute(
                "INSERT INTO names (owner, name, score, created) VALUES ('alice', 'old', ?1, 5)",
                params![score(9).to_hex()],
            )
            .unwrap();
        }
        let cat = Catalog::open(&path).unwrap();
        assert_eq!(cat.resolve("alice", "old").unwrap(), score(9));
        assert_eq!(user_version(&path), SCHEMA_VERSION);
        cat.add_user("alice", "pw", false).unwrap();
        drop(cat);
        // Reopening a migrated catalog changes nothing.
        let cat = Catalog::open(&path).unwrap();
        assert!(cat.check_password("alice", "pw").unwrap());
        assert!(cat.bind("alice", "old", score(1)).is_err());
        drop(cat);
        // A newer schema is refused.
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
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
            conn.execute_batch(NAMES).unwrap();
            conn.execute_batch(USERS).unwrap();
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
        assert_eq!(user_version(&path), SCHEMA_VERSION);
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

    /// `Catalog::open` and `sqlite:PATH` are the same file.
    #[test]
    fn sqlite_urls_open_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.db");
        Catalog::open(&path)
            .unwrap()
            .bind("alice", "kept", score(7))
            .unwrap();
        let cat = Catalog::connect(&format!("sqlite:{}", path.display())).unwrap();
        assert_eq!(cat.resolve("alice", "kept").unwrap(), score(7));
        assert_eq!(user_version(&path), SCHEMA_VERSION);
        let err = Catalog::connect("mysql://u:hunter2@h/db").err().unwrap();
        assert!(matches!(err, Error::Invalid { .. }), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
