//! The Spawngrid catalog: user-visible names bound once, forever, to snapshot scores.
//!
//! A name belongs to an owner (a user name) and is bound to one snapshot [`Score`] the moment
//! it is created; it is never rebound or renamed. An admin may *retire* a name (so gc can
//! reclaim what only it reached): a retired name no longer resolves, and can never be bound
//! again, so a name never means two snapshots. The schema enforces this with triggers, on top
//! of the API: rows are never deleted, the score never changes, a retirement is final.
//!
//! Two engines hold the catalog: one SQLite file in WAL mode (readers never wait for a
//! writer; the embedded default, [`Catalog::open`]; its schema version in `PRAGMA
//! user_version`), or a PostgreSQL database shared by the nodes of a grid
//! ([`Catalog::connect`] with a `postgres://` URL; its version in a `schema_version` table).
//! [`Catalog`] is one struct for both: it holds the rules (what a name, a user, a token, a
//! key, a share, an env may be, and what each failure means), and every query, written once
//! in the SQL both engines speak. Under it, a small engine trait only runs statements,
//! transactions and migrations, and sorts failures (a duplicate key, a lost connection). The
//! seam is there, low, on purpose: a trait over the whole catalog would have each engine
//! implement every method, so every query and every rule would be written twice, in two
//! dialects, and drift apart; here only the DDL differs per engine. One conformance suite
//! checks both engines behave the same.
//!
//! Names and user names follow one rule, checked by [`check_name`] and [`check_owner`]:
//! 1 to 128 bytes, the first an ASCII letter or digit, the rest ASCII letters, digits or
//! `. _ - : @`, and no `..` anywhere. So a name can never be a path (`/`) or walk out of one.
//!
//! Schema version 2 adds users and API tokens ([`users`]); version 3 adds SSH public keys
//! ([`keys`]), names shared with other users ([`shares`]) and the names of deleted users
//! (never reused); version 4 adds the envs nodes run ([`envs`]); version 5 the grid's nodes
//! and leases ([`grid`]); version 6 gc leases and the packs gc condemned ([`gc`]); version 7 pending invites
//! ([`invites`]); version 8 the ports envs expose over HTTPS ([`exposures`]). Opening an older catalog
//! migrates it in place, keeping everything.

use engine::{Fault, Mode, Row, Value};
use library::Score;
use std::path::Path;

#[cfg(test)]
mod conformance;
mod engine;
pub mod envs;
pub mod exposures;
pub mod gc;
pub mod grid;
pub mod invites;
pub mod keys;
pub mod shares;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod users;
pub use envs::EnvRecord;
pub use exposures::Exposure;
pub use gc::{GcPack, GcView, PackState};
pub use grid::{Lease, LeaseKind, Node, NodeInfo};
pub use invites::Invite;
pub use keys::Key;
pub use users::{Token, User};

/// The schema version this code creates and reads: 1 = names, 2 = names + users and tokens,
/// 3 = + SSH keys, shares and deleted users, 4 = + envs, 5 = + the grid's nodes and leases,
/// 6 = + gc leases and the packs gc condemned ([`gc`]), 7 = + pending invites ([`invites`]),
/// 8 = + preview exposures ([`exposures`]).
pub const SCHEMA_VERSION: i64 = 8;

/// The longest name or user name, in bytes.
pub use library::names::MAX_NAME;

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
    #[error("{what} in catalog {at}: {detail}")]
    Db {
        /// What was being done.
        what: &'static str,
        /// The database: its file, or its URL without the password.
        at: String,
        /// What the database said.
        detail: String,
    },
    /// The database cannot be reached (refused, lost, shut down): worth trying again later.
    #[error("catalog {at} unavailable: {detail}; check that PostgreSQL is running and reachable")]
    Unavailable {
        /// The database's URL without the password.
        at: String,
        /// Why it cannot be reached.
        detail: String,
    },
    /// A wait ran out: another client held a lock this needed for longer than the catalog
    /// waits for a lock (30 s, on both engines), or every connection stayed busy.
    #[error(
        "{what} in catalog {at} timed out: {detail}; another client holds what this needs \
         (a transaction left open, such as a stopped `spawngrid lib gc`): try again shortly"
    )]
    Busy {
        /// What was being done.
        what: &'static str,
        /// The database: its file, or its URL without the password.
        at: String,
        /// What ran out.
        detail: String,
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
    /// The user has a pending invite to that name already.
    #[error("{owner} has a pending invite to a name {name} already: invite with --as ANOTHER")]
    InviteExists {
        /// The user invited.
        owner: String,
        /// The name.
        name: String,
    },
    /// The env's id is recorded for another node (both spawned it at once; the other first).
    #[error(
        "env {id} runs on node {node} already (spawned there at the same time): boom it \
         there, or choose another name with --as"
    )]
    EnvElsewhere {
        /// The env's id (`ENV+USER`).
        id: String,
        /// The node it is recorded for.
        node: String,
    },
    /// Another live node holds this node name: two hosts were given one name.
    #[error(
        "node name {name} is held by a live node at {address} (certificate {fingerprint}, \
         heard from {silent} s ago): give this node another name in its configuration, or \
         stop that node and start this one once it has been silent for {live_within} s"
    )]
    NodeNameHeld {
        /// The node name.
        name: String,
        /// The address the live node registered.
        address: String,
        /// Its certificate's fingerprint.
        fingerprint: String,
        /// Seconds since it was last heard from.
        silent: i64,
        /// How long a node is taken for live after its last heartbeat, in seconds.
        live_within: i64,
    },
    /// A conflicting lease is live.
    #[error("a {kind} lease is held by {holders}; try again when it is released or expires")]
    LeaseHeld {
        /// The kind of lease asked for.
        kind: &'static str,
        /// Who holds the conflicting leases.
        holders: String,
    },
    /// A write's lease is no longer live (it expired: its node was frozen or cut off from the
    /// catalog for longer than the lease lasts); nothing was bound.
    #[error("the lease {id} of this write expired or was released before its name was bound; nothing was bound: save or import again")]
    LeaseLost {
        /// The lease's id.
        id: String,
    },
    /// gc deleted (or is deleting) a pack this write stored; nothing was bound.
    #[error("gc deleted pack {pack}, which this write stored, while the write ran; nothing was bound: save or import again")]
    PackSwept {
        /// The pack's name.
        pack: String,
    },
    /// Hashing or random numbers failed.
    #[error("{0}")]
    Crypto(String),
    /// The database holds something this code cannot use.
    #[error("catalog {path}: {detail}")]
    Corrupt {
        /// The database: its file, or its URL without the password.
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
    let rule = library::names::rule_broken(value);
    match rule {
        None => Ok(()),
        Some(rule) => Err(Error::Invalid {
            what,
            value: value.to_string(),
            rule,
        }),
    }
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

/// The names catalog: (owner, name) → score, bound once, forever; and the users, tokens,
/// keys, shares and envs beside them. The rules live here, once; the database behind is an
/// SQLite file ([`Catalog::open`]) or a PostgreSQL database ([`Catalog::connect`]).
pub struct Catalog {
    engine: Box<dyn engine::Engine>,
}

impl Catalog {
    /// Opens (creating if needed) the SQLite catalog database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Catalog> {
        Catalog::with(Box::new(engine::sqlite::Sqlite::open(path.as_ref())?))
    }

    /// Opens the catalog at `url`: `sqlite:PATH` (a file, created if needed), or a PostgreSQL
    /// database as `postgres://USER:PASSWORD@HOST:PORT/DATABASE` (or `postgresql://`, or
    /// `host=/run/postgresql dbname=DATABASE ...` key-value pairs). Creates or migrates the
    /// schema either way.
    pub fn connect(url: &str) -> Result<Catalog> {
        if let Some(path) = url.strip_prefix("sqlite:") {
            return Catalog::open(path);
        }
        if url.starts_with("postgres://")
            || url.starts_with("postgresql://")
            || url.contains("host=")
        {
            let limits = engine::postgres::Limits::default();
            return Catalog::with(Box::new(engine::postgres::Postgres::new(url, limits)?));
        }
        Err(Error::Invalid {
            what: "catalog URL",
            value: engine::postgres::redact(url),
            rule: "must be sqlite:PATH or postgres://USER:PASSWORD@HOST:PORT/DATABASE".into(),
        })
    }

    fn with(engine: Box<dyn engine::Engine>) -> Result<Catalog> {
        engine.migrate()?;
        Ok(Catalog { engine })
    }

    /// Runs `f` on one connection as `mode` says, returning what it returns. `f` may run
    /// more than once (see [`engine::Engine::run`]).
    fn db<T>(&self, mode: Mode, mut f: impl FnMut(&mut Db<'_>) -> Result<T>) -> Result<T> {
        let mut out = None;
        let at = self.engine.at();
        self.engine.run(mode, &mut |s| {
            out = Some(f(&mut Db { s, at })?);
            Ok(())
        })?;
        Ok(out.expect("Engine::run returns Ok only after its closure did"))
    }

    /// Runs one statement on its own; returns how many rows it changed.
    fn execute(&self, what: &'static str, sql: &str, args: &[Value]) -> Result<u64> {
        self.db(Mode::Plain, |db| db.execute(what, sql, args))
    }

    /// Runs one query on its own; returns its rows, each made into a `T` by `f`.
    fn rows<T>(
        &self,
        what: &'static str,
        sql: &str,
        args: &[Value],
        mut f: impl FnMut(&Row) -> Result<T, Fault>,
    ) -> Result<Vec<T>> {
        self.db(Mode::Plain, |db| db.rows(what, sql, args, &mut f))
    }

    /// The first row of a query, made into a `T` by `f`, if there is one.
    fn row<T>(
        &self,
        what: &'static str,
        sql: &str,
        args: &[Value],
        f: impl FnMut(&Row) -> Result<T, Fault>,
    ) -> Result<Option<T>> {
        Ok(self.rows(what, sql, args, f)?.into_iter().next())
    }

    /// Binds `name` of `owner` to `score`, forever. Fails with [`Error::AlreadyBound`] if the
    /// owner already has that name, whatever it is bound to.
    pub fn bind(&self, owner: &str, name: &str, score: Score) -> Result<()> {
        check_owner(owner)?;
        check_name(name)?;
        self.db(Mode::Plain, |db| {
            db.insert_name("binding a name", owner, name, score)
        })
    }

    /// Retires `name` of `owner`: it stops resolving and is never bound again. Returns the
    /// score it was bound to. Only what no other name reaches becomes garbage for gc.
    pub fn retire(&self, owner: &str, name: &str) -> Result<Score> {
        let score = self.resolve(owner, name)?;
        let n = self.execute(
            "retiring a name",
            "UPDATE names SET retired = unixepoch() WHERE owner = ?1 AND name = ?2 AND retired IS NULL",
            &[owner.into(), name.into()],
        )?;
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
        self.row(
            "resolving a name",
            "SELECT score FROM names WHERE owner = ?1 AND name = ?2 AND retired IS NULL",
            &[owner.into(), name.into()],
            |r| score_at(r, 0),
        )?
        .ok_or_else(|| Error::NotFound {
            owner: owner.into(),
            name: name.into(),
        })
    }

    /// Bound names, sorted by owner then name: all owners' or one owner's, and only those
    /// matching `pattern` if given (see [`pattern_matches`]: a glob if it has `*` or `?`, else a
    /// substring of the name).
    pub fn list(&self, owner: Option<&str>, pattern: Option<&str>) -> Result<Vec<Record>> {
        let rows = self.records(
            "SELECT owner, name, score, created FROM names \
             WHERE (CAST(?1 AS TEXT) IS NULL OR owner = ?1) AND retired IS NULL \
             ORDER BY owner, name",
            &[owner.into()],
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
        let rows = self.records(
            "SELECT owner, name, score, created FROM names \
             WHERE score = ?1 AND retired IS NULL ORDER BY owner, name",
            &[score.to_hex().into()],
        )?;
        Ok(rows.into_iter().map(|r| (r.owner, r.name)).collect())
    }

    /// The names a query selects as `owner, name, score, created`.
    fn records(&self, sql: &str, args: &[Value]) -> Result<Vec<Record>> {
        self.rows("listing names", sql, args, |r| {
            Ok(Record {
                owner: r.text(0)?,
                name: r.text(1)?,
                score: score_at(r, 2)?,
                created: r.int(3)?,
            })
        })
    }
}

/// Column `i` of `r` as a score.
fn score_at(r: &Row, i: usize) -> Result<Score, Fault> {
    r.text(i)?
        .parse()
        .map_err(|e| Fault::Corrupt(format!("a stored score: {e}")))
}

/// The statements of one [`Catalog::db`] call, on one connection; failures become
/// [`Error`]s naming what was being done.
struct Db<'a> {
    s: &'a mut dyn engine::Session,
    at: &'a str,
}

impl Db<'_> {
    /// Runs one statement; returns how many rows it changed.
    fn execute(&mut self, what: &'static str, sql: &str, args: &[Value]) -> Result<u64> {
        self.s
            .execute(sql, args)
            .map_err(|f| f.into_error(what, self.at))
    }

    /// Runs one `INSERT`; a row with the same key is the error `exists` makes.
    fn insert(
        &mut self,
        what: &'static str,
        sql: &str,
        args: &[Value],
        exists: impl FnOnce() -> Error,
    ) -> Result<()> {
        match self.s.execute(sql, args) {
            Ok(_) => Ok(()),
            Err(Fault::Unique(_)) => Err(exists()),
            Err(f) => Err(f.into_error(what, self.at)),
        }
    }

    /// Inserts the name row binding `name` of `owner` to `score` (now).
    fn insert_name(
        &mut self,
        what: &'static str,
        owner: &str,
        name: &str,
        score: Score,
    ) -> Result<()> {
        self.insert(
            what,
            "INSERT INTO names (owner, name, score, created) VALUES (?1, ?2, ?3, unixepoch())",
            &[owner.into(), name.into(), score.to_hex().into()],
            || Error::AlreadyBound {
                owner: owner.into(),
                name: name.into(),
            },
        )
    }

    /// The database's clock, seconds since the epoch ([`engine::NOW`]): every stamp the
    /// catalog writes, and every comparison with one, uses it, so hosts whose clocks disagree
    /// still agree on what expired and who is silent.
    fn now(&mut self, what: &'static str) -> Result<i64> {
        let sql = format!("SELECT {}", engine::NOW);
        let now = self.rows(what, &sql, &[], |r| r.int(0))?.pop();
        now.ok_or_else(|| Fault::Corrupt("the clock read no row".into()).into_error(what, self.at))
    }

    /// Runs one query; returns its rows, each made into a `T` by `f`.
    fn rows<T>(
        &mut self,
        what: &'static str,
        sql: &str,
        args: &[Value],
        f: impl FnMut(&Row) -> Result<T, Fault>,
    ) -> Result<Vec<T>> {
        self.s
            .query(sql, args)
            .and_then(|rows| rows.iter().map(f).collect())
            .map_err(|f| f.into_error(what, self.at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matching() {
        assert!(glob(b"*", b""));
        assert!(glob(b"a*b*c", b"aXbYbc"));
        assert!(!glob(b"a*b", b"aXbY"));
        assert!(glob(b"??", b"ab") && !glob(b"??", b"abc"));
    }
}
