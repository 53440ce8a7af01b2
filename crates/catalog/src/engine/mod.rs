//! The database engines under the catalog: what the catalog needs of SQLite and PostgreSQL.
//!
//! An [`Engine`] runs statements written once, in the SQL both engines speak, with `?1`, `?2`,
//! ... placeholders and values of the small [`Value`] type; runs a closure in a transaction;
//! creates and migrates its own schema (the DDL differs per engine, the tables do not); and
//! sorts its failures into a few [`Fault`]s the catalog gives meaning to (a unique-key
//! violation is a name already bound, a user or key that exists; a lost connection is an
//! unavailable catalog).
//!
//! The shared SQL reads the time only from the database, as [`NOW`]: stamps written and the
//! comparisons with them (a lease's expiry, a node's heartbeat, a token's) use one clock, the
//! database server's, never the clocks of the hosts the catalog's clients run on.

use crate::{Error, Result};
use std::time::Duration;

pub(crate) mod postgres;
pub(crate) mod sqlite;

/// How long a statement waits for a lock another connection holds before it fails with
/// [`Error::Busy`], on both engines: SQLite's busy timeout, PostgreSQL's `lock_timeout`.
pub(crate) const LOCK_WAIT: Duration = Duration::from_secs(30);

/// The database's clock in the shared SQL: whole seconds since the epoch, now. SQLite's
/// built-in (the file's one host's clock); the PostgreSQL engine spells it in its own words
/// (the server's clock).
pub(crate) const NOW: &str = "unixepoch()";

/// One SQL value, as a parameter or a column: both engines store only text and integers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Value {
    /// NULL.
    Null,
    /// An integer (`INTEGER` in SQLite, `BIGINT` in PostgreSQL; booleans are 0 and 1).
    Int(i64),
    /// Text.
    Text(String),
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Text(s.to_string())
    }
}

impl From<&String> for Value {
    fn from(s: &String) -> Value {
        Value::Text(s.clone())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Text(s)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Value {
        Value::Int(i)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Int(b.into())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(Value::Null, Into::into)
    }
}

/// One result row.
#[derive(Debug)]
pub(crate) struct Row(pub(crate) Vec<Value>);

impl Row {
    fn get(&self, i: usize) -> Result<&Value, Fault> {
        self.0
            .get(i)
            .ok_or_else(|| Fault::Corrupt(format!("a result row has no column {i}")))
    }

    /// Column `i` as text, which may be NULL.
    pub(crate) fn opt_text(&self, i: usize) -> Result<Option<String>, Fault> {
        match self.get(i)? {
            Value::Null => Ok(None),
            Value::Text(s) => Ok(Some(s.clone())),
            Value::Int(n) => Err(Fault::Corrupt(format!("column {i} is {n}, not text"))),
        }
    }

    /// Column `i` as text.
    pub(crate) fn text(&self, i: usize) -> Result<String, Fault> {
        self.opt_text(i)?
            .ok_or_else(|| Fault::Corrupt(format!("column {i} is NULL, not text")))
    }

    /// Column `i` as an integer.
    pub(crate) fn int(&self, i: usize) -> Result<i64, Fault> {
        match self.get(i)? {
            Value::Int(n) => Ok(*n),
            v => Err(Fault::Corrupt(format!(
                "column {i} is {v:?}, not an integer"
            ))),
        }
    }
}

/// A failure of the database, as an engine classifies it; the catalog adds what it was doing
/// ([`Fault::into_error`]) or gives it a meaning (a unique violation on a bind is
/// [`Error::AlreadyBound`]).
#[derive(Debug)]
pub(crate) enum Fault {
    /// A row with the same primary or unique key exists.
    Unique(String),
    /// The database cannot be reached (refused, lost, shut down).
    Unavailable(String),
    /// Two transactions collided; running the transaction again may succeed.
    Conflict(String),
    /// A wait ran out: for a lock another connection holds, for a statement, for a free
    /// connection.
    Timeout(String),
    /// The database holds something the catalog cannot use.
    Corrupt(String),
    /// Anything else.
    Other(String),
}

impl Fault {
    /// The catalog error for this fault while doing `what` in the catalog at `at`.
    pub(crate) fn into_error(self, what: &'static str, at: &str) -> Error {
        match self {
            Fault::Unavailable(detail) => Error::Unavailable {
                at: at.to_string(),
                detail,
            },
            Fault::Corrupt(detail) => Error::Corrupt {
                path: at.to_string(),
                detail,
            },
            Fault::Timeout(detail) => Error::Busy {
                what,
                at: at.to_string(),
                detail,
            },
            Fault::Unique(detail) | Fault::Conflict(detail) | Fault::Other(detail) => Error::Db {
                what,
                at: at.to_string(),
                detail,
            },
        }
    }
}

/// One connection's statements, inside a transaction or not.
pub(crate) trait Session {
    /// Runs one statement; returns how many rows it changed.
    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, Fault>;
    /// Runs one query; returns its rows.
    fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, Fault>;
}

/// How [`Engine::run`] runs its closure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Each statement on its own (autocommit).
    Plain,
    /// In one transaction: committed if the closure returns `Ok`, rolled back otherwise.
    Transaction,
    /// In one transaction isolated from every other as if they ran one after the other
    /// (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: `SERIALIZABLE`, run again on a collision).
    Serial,
}

/// A database engine holding the catalog's tables.
pub(crate) trait Engine: Send + Sync {
    /// Where the catalog is, for messages: the file, or the URL without its password.
    fn at(&self) -> &str;
    /// Creates the schema in an empty database, or migrates an older one to
    /// [`crate::SCHEMA_VERSION`]; refuses a newer one.
    fn migrate(&self) -> Result<()>;
    /// Runs `f` on one connection, as `mode` says. `f` may be called more than once (a
    /// serial transaction that collided runs again), so it must not keep effects outside the
    /// database from an earlier call.
    fn run(&self, mode: Mode, f: &mut dyn FnMut(&mut dyn Session) -> Result<()>) -> Result<()>;
}

/// The migration steps to run on a catalog at schema `version`, from `steps` where step `v`
/// brings version `v` to `v + 1`: all of them for a new catalog, none for a current one.
/// Refuses a version newer than this code knows.
pub(crate) fn steps_from<'a>(
    version: i64,
    steps: &'a [&'a str],
    at: &str,
) -> Result<&'a [&'a str]> {
    match usize::try_from(version) {
        Ok(v) if v <= steps.len() => Ok(&steps[v..]),
        _ => Err(Error::Corrupt {
            path: at.to_string(),
            detail: format!(
                "schema version {version} is newer than this spawngrid reads ({}); \
                 upgrade spawngrid",
                steps.len()
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_steps() {
        let steps = ["a", "b", "c"];
        assert_eq!(steps_from(0, &steps, "x").unwrap(), ["a", "b", "c"]);
        assert_eq!(steps_from(2, &steps, "x").unwrap(), ["c"]);
        assert!(steps_from(3, &steps, "x").unwrap().is_empty());
        let err = steps_from(4, &steps, "x").unwrap_err().to_string();
        assert!(err.contains("newer"), "{err}");
        assert!(steps_from(-1, &steps, "x").is_err());
    }
}
