//! The grid's engine: a PostgreSQL database shared by every node, through a small pool of
//! connections (the sync `postgres` crate; it runs its own small tokio runtime per
//! connection, so it works from plain threads and from a tokio runtime's blocking pool).
//!
//! The schema is the SQLite one in PostgreSQL's words: `BIGINT` integers, `COLLATE "C"` text
//! (so names sort bytewise, as in SQLite), and the rules as plpgsql triggers, so the database
//! itself refuses to rebind, rename or delete a name, or to un-revoke a token. Its version is
//! the one row of `schema_version`; migrations run in one transaction holding an advisory
//! lock, so nodes starting at once migrate one after the other.
//!
//! A connection that broke (PostgreSQL restarted, the network dropped it) is dropped from the
//! pool, and one idle for a while is checked before use, so the catalog carries on when
//! PostgreSQL is back without restarting the process.
//!
//! Every wait is bounded, so a transaction left open elsewhere (a stopped `spawngrid lib gc`
//! holding the lease fence, a client cut off mid-transaction) costs the other clients an error
//! ([`Error::Busy`]), never a hang: each session waits at most [`LOCK_WAIT`] for a lock (as
//! SQLite's busy timeout), runs a statement at most [`STATEMENT_LIMIT`], and is ended by the
//! server when it sits in a transaction idle for [`IDLE_IN_TRANSACTION`] (freeing its locks);
//! a caller waits at most [`POOL_WAIT`] for a free connection; TCP keepalives and a user
//! timeout notice a server gone silent within about a minute.

use super::{steps_from, Engine, Fault, Mode, Row, Session, Value, LOCK_WAIT, NOW};
use crate::{Error, Result};
use bytes::BytesMut;
use postgres::error::SqlState;
use postgres::types::{to_sql_checked, FromSql, IsNull, ToSql, Type};
use postgres::{Client, Config, NoTls, Statement};
use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Schema version 1: names.
const NAMES: &str = r#"
CREATE TABLE names (
    owner   TEXT COLLATE "C" NOT NULL,
    name    TEXT COLLATE "C" NOT NULL,
    score   TEXT COLLATE "C" NOT NULL CHECK (length(score) = 64),
    created BIGINT NOT NULL,
    retired BIGINT,
    PRIMARY KEY (owner, name)
);
CREATE INDEX names_by_score ON names(score);
CREATE FUNCTION names_are_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.owner IS DISTINCT FROM NEW.owner OR OLD.name IS DISTINCT FROM NEW.name
       OR OLD.score IS DISTINCT FROM NEW.score OR OLD.created IS DISTINCT FROM NEW.created
       OR OLD.retired IS NOT NULL OR NEW.retired IS NULL THEN
        RAISE EXCEPTION 'names are immutable';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER names_are_immutable BEFORE UPDATE ON names
    FOR EACH ROW EXECUTE FUNCTION names_are_immutable();
CREATE FUNCTION names_are_permanent() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'names are never unbound';
END $$;
CREATE TRIGGER names_are_permanent BEFORE DELETE ON names
    FOR EACH ROW EXECUTE FUNCTION names_are_permanent();
CREATE TRIGGER names_are_never_truncated BEFORE TRUNCATE ON names
    FOR EACH STATEMENT EXECUTE FUNCTION names_are_permanent();
"#;

/// Schema version 2: users and tokens.
const USERS: &str = r#"
CREATE TABLE users (
    name    TEXT COLLATE "C" PRIMARY KEY,
    hash    TEXT NOT NULL,
    admin   BIGINT NOT NULL DEFAULT 0 CHECK (admin IN (0, 1)),
    created BIGINT NOT NULL
);
CREATE TABLE tokens (
    hash    TEXT COLLATE "C" PRIMARY KEY CHECK (length(hash) = 64),
    "user"  TEXT COLLATE "C" NOT NULL REFERENCES users(name),
    created BIGINT NOT NULL,
    expires BIGINT NOT NULL,
    revoked BIGINT
);
CREATE INDEX tokens_by_user ON tokens("user");
CREATE FUNCTION tokens_revocation_is_final() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.hash IS DISTINCT FROM NEW.hash OR OLD."user" IS DISTINCT FROM NEW."user"
       OR OLD.created IS DISTINCT FROM NEW.created OR OLD.expires IS DISTINCT FROM NEW.expires
       OR OLD.revoked IS NOT NULL OR NEW.revoked IS NULL THEN
        RAISE EXCEPTION 'tokens are only ever revoked';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER tokens_revocation_is_final BEFORE UPDATE ON tokens
    FOR EACH ROW EXECUTE FUNCTION tokens_revocation_is_final();
"#;

/// Schema version 3: SSH keys, shares and deleted user names. `keys.rowid` stands for
/// SQLite's implicit rowid: the order keys were added in.
const KEYS_SHARES_DELETED: &str = r#"
CREATE TABLE keys (
    "user"      TEXT COLLATE "C" NOT NULL REFERENCES users(name),
    fingerprint TEXT COLLATE "C" NOT NULL,
    line        TEXT NOT NULL,
    added       BIGINT NOT NULL,
    rowid       BIGINT GENERATED ALWAYS AS IDENTITY,
    PRIMARY KEY ("user", fingerprint)
);
CREATE TABLE shares (
    owner   TEXT COLLATE "C" NOT NULL,
    name    TEXT COLLATE "C" NOT NULL,
    "user"  TEXT COLLATE "C" NOT NULL,
    created BIGINT NOT NULL,
    PRIMARY KEY (owner, name, "user")
);
CREATE INDEX shares_by_user ON shares("user");
CREATE TABLE deleted_users (
    name    TEXT COLLATE "C" PRIMARY KEY,
    deleted BIGINT NOT NULL
);
"#;

/// Schema version 4: envs.
const ENVS: &str = r#"
CREATE TABLE envs (
    id       TEXT COLLATE "C" PRIMARY KEY,
    owner    TEXT COLLATE "C" NOT NULL,
    env      TEXT COLLATE "C" NOT NULL,
    node     TEXT COLLATE "C" NOT NULL,
    name     TEXT COLLATE "C",
    snapshot TEXT COLLATE "C" CHECK (snapshot IS NULL OR length(snapshot) = 64),
    created  BIGINT NOT NULL
);
CREATE INDEX envs_by_owner ON envs(owner);
CREATE INDEX envs_by_node ON envs(node);
"#;

/// Schema version 5: the grid's nodes and leases, and the last lease fence given out.
const GRID: &str = r#"
CREATE TABLE nodes (
    name          TEXT COLLATE "C" PRIMARY KEY,
    address       TEXT NOT NULL,
    ssh_port      BIGINT NOT NULL,
    fingerprint   TEXT NOT NULL,
    capacity_envs BIGINT NOT NULL,
    capacity_mem  BIGINT NOT NULL,
    labels        TEXT NOT NULL,
    registered    BIGINT NOT NULL,
    heartbeat     BIGINT NOT NULL
);
CREATE TABLE leases (
    id      TEXT COLLATE "C" PRIMARY KEY,
    kind    TEXT NOT NULL CHECK (kind IN ('shared', 'exclusive')),
    holder  TEXT NOT NULL,
    taken   BIGINT NOT NULL,
    expires BIGINT NOT NULL,
    fence   BIGINT NOT NULL UNIQUE
);
CREATE TABLE lease_fence (last BIGINT NOT NULL);
INSERT INTO lease_fence (last) VALUES (0);
"#;

/// Schema version 6: gc leases (kind `gc`), and the packs gc condemned, is deleting or deleted.
const GC: &str = r#"
ALTER TABLE leases DROP CONSTRAINT leases_kind_check;
ALTER TABLE leases ADD CONSTRAINT leases_kind_check
    CHECK (kind IN ('shared', 'exclusive', 'gc'));
CREATE TABLE gc_packs (
    pack  TEXT COLLATE "C" PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('condemned', 'sweeping', 'swept')),
    since BIGINT NOT NULL,
    fence BIGINT NOT NULL
);
"#;

/// Schema version 7: pending invites.
const INVITES: &str = r#"
CREATE TABLE invites (
    owner   TEXT COLLATE "C" NOT NULL,
    name    TEXT COLLATE "C" NOT NULL,
    inviter TEXT COLLATE "C" NOT NULL,
    source  TEXT COLLATE "C" NOT NULL,
    score   TEXT COLLATE "C" NOT NULL CHECK (length(score) = 64),
    created BIGINT NOT NULL,
    PRIMARY KEY (owner, name)
);
"#;

/// Schema version 8: the ports envs expose over HTTPS.
const EXPOSURES: &str = r#"
CREATE TABLE exposures (
    id      TEXT COLLATE "C" PRIMARY KEY,
    env_id  TEXT COLLATE "C" NOT NULL,
    owner   TEXT COLLATE "C" NOT NULL,
    port    BIGINT NOT NULL CHECK (port BETWEEN 1 AND 65535),
    public  BIGINT NOT NULL CHECK (public IN (0, 1)),
    key     TEXT NOT NULL CHECK (length(key) = 64),
    created BIGINT NOT NULL,
    UNIQUE (env_id, port)
);
"#;

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

/// The advisory lock migrations hold ("SPAWNGRD" in ASCII), so two nodes never migrate at once.
const MIGRATION_LOCK: i64 = 0x5350_4157_4e47_5244;

/// The most connections one catalog opens at once; more callers wait for one to be free.
const POOL_SIZE: usize = 8;

/// A connection idle for longer than this is checked (one round trip) before it is used.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// How often a serial transaction runs again after colliding with another.
const SERIAL_ATTEMPTS: usize = 20;

/// The longest one statement runs, its lock waits included (`statement_timeout`): twice
/// [`LOCK_WAIT`], so a statement that waited out a lock still has time to run.
const STATEMENT_LIMIT: Duration = Duration::from_secs(2 * LOCK_WAIT.as_secs());

/// How long a session may sit idle inside a transaction before the server ends it and frees
/// its locks (`idle_in_transaction_session_timeout`). The catalog's transactions run their
/// statements back to back, so only a stopped or cut-off client is idle that long; as long
/// as [`LOCK_WAIT`], so the clients it blocks wait about one lock wait for it.
const IDLE_IN_TRANSACTION: Duration = LOCK_WAIT;

/// How long a caller waits for a free connection while [`POOL_SIZE`] are in use; a
/// connection in use is given back within [`STATEMENT_LIMIT`] of each of its statements.
const POOL_WAIT: Duration = STATEMENT_LIMIT;

/// The pool's size and the waits an engine bounds: [`POOL_SIZE`], [`POOL_WAIT`] and
/// [`STATEMENT_LIMIT`] by default (tests make them small, to reach them quickly).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// The most connections open at once.
    pub(crate) pool_size: usize,
    /// How long a caller waits for a free connection.
    pub(crate) pool_wait: Duration,
    /// The longest one statement runs (`statement_timeout`).
    pub(crate) statement: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            pool_size: POOL_SIZE,
            pool_wait: POOL_WAIT,
            statement: STATEMENT_LIMIT,
        }
    }
}

/// How long unacknowledged data or keepalive probes may go unanswered before the connection
/// is given up as lost (`TCP_USER_TIMEOUT`).
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(60);

/// A catalog in a PostgreSQL database.
pub(crate) struct Postgres {
    config: Config,
    at: String,
    limits: Limits,
    pool: Mutex<Pool>,
    freed: Condvar,
}

/// The pool's connections not in use, and how many are open in all.
struct Pool {
    idle: Vec<Conn>,
    open: usize,
}

impl Postgres {
    /// The engine for the database at `url` (`postgres://USER:PASSWORD@HOST:PORT/DB`,
    /// `postgresql://...`, or `host=... dbname=...` key-value pairs) within `limits`; connects
    /// on first use.
    pub(crate) fn new(url: &str, limits: Limits) -> Result<Postgres> {
        let mut config: Config = url.parse().map_err(|e| Error::Invalid {
            what: "catalog URL",
            value: redact(url),
            rule: format!("{e} (use postgres://USER:PASSWORD@HOST:PORT/DATABASE)"),
        })?;
        config.connect_timeout(Duration::from_secs(10));
        config.keepalives_idle(Duration::from_secs(30));
        config.keepalives_interval(Duration::from_secs(10));
        config.keepalives_retries(3);
        config.tcp_user_timeout(TCP_USER_TIMEOUT);
        let at = describe(&config);
        Ok(Postgres {
            config,
            at,
            limits,
            pool: Mutex::new(Pool {
                idle: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
        })
    }

    fn pool(&self) -> MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection for one caller: an idle one that still works, else a new one (waiting
    /// up to the pool wait while the pool's size are in use).
    fn take(&self) -> Result<Pooled<'_>> {
        let Limits {
            pool_size,
            pool_wait,
            statement,
        } = self.limits;
        let deadline = Instant::now() + pool_wait;
        let mut pool = self.pool();
        loop {
            if let Some(mut conn) = pool.idle.pop() {
                drop(pool);
                if conn.used.elapsed() < IDLE_CHECK
                    || conn.client.is_valid(Duration::from_secs(5)).is_ok()
                {
                    return Ok(Pooled {
                        engine: self,
                        conn: Some(conn),
                    });
                }
                // Broken while idle (PostgreSQL restarted): let it go, try the next.
                pool = self.pool();
                pool.open -= 1;
                continue;
            }
            if pool.open < pool_size {
                pool.open += 1;
                drop(pool);
                return match self.connect() {
                    Ok(client) => Ok(Pooled {
                        engine: self,
                        conn: Some(Conn {
                            client,
                            statements: HashMap::new(),
                            used: Instant::now(),
                            broken: false,
                            collided: false,
                            statement_limit: statement,
                        }),
                    }),
                    Err(e) => {
                        self.pool().open -= 1;
                        self.freed.notify_one();
                        Err(fault(e, statement).into_error("connecting", &self.at))
                    }
                };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Fault::Timeout(format!(
                    "all {pool_size} connections of this process stayed in use for {} s",
                    pool_wait.as_secs()
                ))
                .into_error("waiting for a free connection", &self.at));
            }
            pool = self
                .freed
                .wait_timeout(pool, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// A new connection, its session's waits bounded (see the module documentation).
    fn connect(&self) -> Result<Client, postgres::Error> {
        let mut client = self.config.connect(NoTls)?;
        client.batch_execute(&format!(
            "SET lock_timeout = '{}s'; SET statement_timeout = '{}s'; \
             SET idle_in_transaction_session_timeout = '{}s'",
            LOCK_WAIT.as_secs(),
            self.limits.statement.as_secs(),
            IDLE_IN_TRANSACTION.as_secs()
        ))?;
        Ok(client)
    }

    /// Runs `f` on `conn` in a transaction begun with `begin`: committed if `f` returns
    /// `Ok`, rolled back otherwise.
    fn transaction(
        &self,
        conn: &mut Conn,
        begin: &str,
        f: impl FnOnce(&mut Conn) -> Result<()>,
    ) -> Result<()> {
        let fail = |what| move |e| Fault::into_error(e, what, &self.at);
        conn.batch(begin).map_err(fail("beginning a transaction"))?;
        match f(conn) {
            Ok(()) => conn
                .batch("COMMIT")
                .map_err(fail("committing a transaction")),
            Err(e) => {
                // A connection that cannot roll back is marked broken and not reused.
                let _ = conn.batch("ROLLBACK");
                Err(e)
            }
        }
    }
}

impl Engine for Postgres {
    fn at(&self) -> &str {
        &self.at
    }

    fn migrate(&self) -> Result<()> {
        let mut conn = self.take()?;
        let what = "creating or migrating the schema";
        let fail = |f: Fault| f.into_error(what, &self.at);
        self.transaction(conn.get(), "BEGIN", |conn| {
            conn.execute("SELECT pg_advisory_xact_lock(?1)", &[MIGRATION_LOCK.into()])
                .map_err(fail)?;
            let exists = conn
                .query("SELECT to_regclass('schema_version') IS NOT NULL", &[])
                .map_err(fail)?;
            let version = if exists.first().map(|r| r.int(0)).transpose().map_err(fail)? == Some(1)
            {
                let rows = conn
                    .query("SELECT version FROM schema_version", &[])
                    .map_err(fail)?;
                rows.first().map_or(Ok(0), |r| r.int(0)).map_err(fail)?
            } else {
                conn.batch("CREATE TABLE schema_version (version BIGINT NOT NULL)")
                    .map_err(fail)?;
                0
            };
            let steps = steps_from(version, &STEPS, &self.at)?;
            if steps.is_empty() {
                return Ok(());
            }
            for step in steps {
                conn.batch(step).map_err(fail)?;
            }
            conn.execute("DELETE FROM schema_version", &[])
                .map_err(fail)?;
            conn.execute(
                "INSERT INTO schema_version (version) VALUES (?1)",
                &[crate::SCHEMA_VERSION.into()],
            )
            .map_err(fail)?;
            Ok(())
        })
    }

    fn run(&self, mode: Mode, f: &mut dyn FnMut(&mut dyn Session) -> Result<()>) -> Result<()> {
        let begin = match mode {
            Mode::Plain => return f(self.take()?.get()),
            Mode::Transaction => "BEGIN",
            Mode::Serial => "BEGIN ISOLATION LEVEL SERIALIZABLE",
        };
        let mut attempt = 0;
        loop {
            let mut pooled = self.take()?;
            let conn = pooled.get();
            conn.collided = false;
            match self.transaction(conn, begin, |conn| f(conn)) {
                Err(_) if mode == Mode::Serial && conn.collided && attempt < SERIAL_ATTEMPTS => {
                    attempt += 1;
                    // Back off a little, differently for each caller, before running again.
                    let jitter = u64::from(std::process::id() ^ attempt as u32) % 7;
                    std::thread::sleep(Duration::from_millis(attempt as u64 * 2 + jitter));
                }
                result => return result,
            }
        }
    }
}

impl Drop for Postgres {
    /// Closes the idle connections on a thread of their own: the sync client blocks on its
    /// runtime to close, which panics on a thread that drives async tasks (a node's catalog
    /// may be dropped there at shutdown).
    fn drop(&mut self) {
        let idle = std::mem::take(&mut self.pool().idle);
        let _ = std::thread::spawn(move || drop(idle)).join();
    }
}

/// A connection on loan from the pool; back to the pool when dropped, unless it broke.
struct Pooled<'a> {
    engine: &'a Postgres,
    conn: Option<Conn>,
}

impl Pooled<'_> {
    fn get(&mut self) -> &mut Conn {
        self.conn
            .as_mut()
            .expect("a pooled connection is there until dropped")
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        let mut pool = self.engine.pool();
        match self.conn.take() {
            Some(mut conn) if !conn.broken && !conn.client.is_closed() => {
                conn.used = Instant::now();
                pool.idle.push(conn);
            }
            _ => pool.open -= 1,
        }
        self.engine.freed.notify_one();
    }
}

/// One connection with its prepared statements, and what its last failures were.
struct Conn {
    client: Client,
    /// Statements prepared on this connection, by their text as the catalog wrote it.
    statements: HashMap<String, Statement>,
    /// When it was last given back to the pool.
    used: Instant,
    /// It lost its server: it is not given back to the pool.
    broken: bool,
    /// A statement of the current transaction collided with another transaction's.
    collided: bool,
    /// Its session's `statement_timeout`, for messages.
    statement_limit: Duration,
}

impl Conn {
    /// Notes what `e` says about this connection and classifies it.
    fn fault(&mut self, e: postgres::Error) -> Fault {
        let f = fault(e, self.statement_limit);
        match f {
            Fault::Unavailable(_) => self.broken = true,
            Fault::Conflict(_) => self.collided = true,
            _ => {}
        }
        f
    }

    /// Runs statements with no parameters (DDL, `BEGIN`, `COMMIT`).
    fn batch(&mut self, sql: &str) -> Result<(), Fault> {
        self.client.batch_execute(sql).map_err(|e| self.fault(e))
    }

    /// The prepared statement for `sql` (with `?N` placeholders), prepared once.
    fn statement(&mut self, sql: &str) -> Result<Statement, Fault> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self
            .client
            .prepare(&dialect(sql))
            .map_err(|e| self.fault(e))?;
        self.statements.insert(sql.to_string(), s.clone());
        Ok(s)
    }
}

/// The parameters as the `postgres` crate takes them.
fn params(args: &[Value]) -> Vec<&(dyn ToSql + Sync)> {
    args.iter().map(|a| a as &(dyn ToSql + Sync)).collect()
}

impl Session for Conn {
    fn execute(&mut self, sql: &str, args: &[Value]) -> Result<u64, Fault> {
        let stmt = self.statement(sql)?;
        self.client
            .execute(&stmt, &params(args))
            .map_err(|e| self.fault(e))
    }

    fn query(&mut self, sql: &str, args: &[Value]) -> Result<Vec<Row>, Fault> {
        let stmt = self.statement(sql)?;
        let rows = self
            .client
            .query(&stmt, &params(args))
            .map_err(|e| self.fault(e))?;
        rows.iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| r.try_get(i))
                    .collect::<Result<_, _>>()
                    .map(Row)
                    .map_err(|e| self.fault(e))
            })
            .collect()
    }
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Int(n) if *ty == Type::INT4 => i32::try_from(*n)?.to_sql(ty, out),
            Value::Int(n) => n.to_sql(ty, out),
            Value::Text(s) => s.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

impl<'a> FromSql<'a> for Value {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Value, Box<dyn std::error::Error + Sync + Send>> {
        Ok(if *ty == Type::INT8 {
            Value::Int(i64::from_sql(ty, raw)?)
        } else if *ty == Type::INT4 {
            Value::Int(i32::from_sql(ty, raw)?.into())
        } else if *ty == Type::BOOL {
            Value::Int(bool::from_sql(ty, raw)?.into())
        } else {
            Value::Text(String::from_sql(ty, raw)?)
        })
    }

    fn from_sql_null(_: &Type) -> Result<Value, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Value::Null)
    }

    fn accepts(ty: &Type) -> bool {
        [Type::INT8, Type::INT4, Type::BOOL].contains(ty) || <String as FromSql>::accepts(ty)
    }
}

/// The fault a `postgres` error is, on a session whose statements may run `statement_limit`.
fn fault(e: postgres::Error, statement_limit: Duration) -> Fault {
    let detail = match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => {
            let mut s = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                s = format!("{s}: {cause}");
                source = cause.source();
            }
            s
        }
    };
    let lost = e.is_closed()
        || e.code().is_none() && {
            let mut source = std::error::Error::source(&e);
            let mut io = detail.starts_with("timeout");
            while let Some(cause) = source {
                io |= cause.is::<std::io::Error>();
                source = cause.source();
            }
            io
        };
    match e.code() {
        _ if lost => Fault::Unavailable(detail),
        Some(c) if *c == SqlState::UNIQUE_VIOLATION => Fault::Unique(detail),
        Some(c)
            if *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED =>
        {
            Fault::Conflict(detail)
        }
        Some(c) if *c == SqlState::LOCK_NOT_AVAILABLE => Fault::Timeout(format!(
            "{detail} (waited {} s for a lock another transaction holds)",
            LOCK_WAIT.as_secs()
        )),
        Some(c) if *c == SqlState::QUERY_CANCELED => Fault::Timeout(format!(
            "{detail} (a statement may run {} s, its lock waits included)",
            statement_limit.as_secs()
        )),
        Some(c)
            if c.code().starts_with("08")
                || [
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                ]
                .contains(c) =>
        {
            Fault::Unavailable(detail)
        }
        _ => Fault::Other(detail),
    }
}

/// [`NOW`] in PostgreSQL's words: the server's clock, in whole seconds (`now()`: when the
/// transaction began, so one instant for all of a transaction's statements).
const SERVER_NOW: &str = "CAST(floor(extract(epoch FROM now())) AS BIGINT)";

/// `sql` in the shared dialect as PostgreSQL takes it: SQLite's `?N` placeholders spelled
/// `$N`, and [`NOW`] as [`SERVER_NOW`] (outside quotes).
fn dialect(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quote: Option<char> = None;
    let mut rest = sql;
    while let Some(c) = rest.chars().next() {
        let after = &rest[c.len_utf8()..];
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == '?' && after.starts_with(|d: char| d.is_ascii_digit()) => {
                out.push('$');
                rest = after;
                continue;
            }
            None if rest.starts_with(NOW) => {
                out.push_str(SERVER_NOW);
                rest = &rest[NOW.len()..];
                continue;
            }
            None => {}
        }
        out.push(c);
        rest = after;
    }
    out
}

/// The database `config` names, as `postgres://USER@HOST:PORT/DB`: never the password.
fn describe(config: &Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                postgres::config::Host::Tcp(name) => name.clone(),
                postgres::config::Host::Unix(path) => path.display().to_string(),
            };
            match config.get_ports().get(i).or(config.get_ports().first()) {
                Some(port) => format!("{host}:{port}"),
                None => host,
            }
        })
        .collect();
    let user = config
        .get_user()
        .map(|u| format!("{u}@"))
        .unwrap_or_default();
    format!(
        "postgres://{user}{}/{}",
        hosts.join(","),
        config.get_dbname().unwrap_or_default()
    )
}

/// `url` with any password replaced by `***`, for a message about a URL that did not parse.
pub(crate) fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((auth, host)) => {
                let user = auth.split(':').next().unwrap_or_default();
                format!("{scheme}://{user}:***@{host}")
            }
            None => url.to_string(),
        },
        None if url.contains("password") => "<connection string with a password>".to_string(),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dialect_has_dollar_placeholders_and_the_servers_clock_outside_quotes() {
        assert_eq!(
            dialect("SELECT \"user\" FROM t WHERE a = ?1 AND b = '?2' OR c=?12"),
            "SELECT \"user\" FROM t WHERE a = $1 AND b = '?2' OR c=$12"
        );
        assert_eq!(dialect("a ? b"), "a ? b");
        assert_eq!(
            dialect("SET t = unixepoch() + ?1 WHERE x = 'unixepoch()'"),
            format!("SET t = {SERVER_NOW} + $1 WHERE x = 'unixepoch()'")
        );
    }

    #[test]
    fn descriptions_never_show_the_password() {
        let pg = Postgres::new(
            "postgres://sg:s3cret@db.example:5433/cat",
            Limits::default(),
        )
        .unwrap();
        assert_eq!(pg.at(), "postgres://sg@db.example:5433/cat");
        let pg = Postgres::new(
            "host=/run/postgresql user=sg password=s3cret dbname=cat",
            Limits::default(),
        )
        .unwrap();
        assert_eq!(pg.at(), "postgres://sg@/run/postgresql/cat");
        let err = Postgres::new("postgres://sg:s3cret@db:notaport/cat", Limits::default())
            .err()
            .unwrap()
            .to_string();
        assert!(!err.contains("s3cret") && err.contains("***"), "{err}");
    }

    /// Nothing listens on port 1: the catalog is unavailable, and says so without the password.
    #[test]
    fn an_unreachable_server_is_unavailable() {
        let err = crate::Catalog::connect("postgres://sg:s3cret@127.0.0.1:1/cat")
            .err()
            .unwrap();
        assert!(matches!(err, Error::Unavailable { .. }), "{err}");
        let message = err.to_string();
        assert!(message.starts_with("catalog postgres://sg@127.0.0.1:1/cat unavailable: "));
        assert!(
            message.contains("check that PostgreSQL is running"),
            "{message}"
        );
        assert!(!message.contains("s3cret"), "{message}");
    }
}
