//! The Spawngrid node's HTTPS API: request and response types, route paths, limits and the
//! error body. No IO: the node (`spawngrid-node`) serves these types and the client (the
//! `spawngrid` binary) sends them, so both sides agree by construction.
//!
//! Every body is JSON. Every failure is a non-2xx status with an [`ErrorBody`]
//! (`{"error": "one line"}`). Every route except [`routes::LOGIN`] and [`routes::OPENAPI`]
//! needs `Authorization: Bearer TOKEN` (a token from [`routes::LOGIN`]). Byte streams (exec
//! stdin, stdout, stderr) travel as standard padded base64 (see [`b64`]), so any bytes survive.

use serde::{Deserialize, Serialize};

/// The default port of the HTTPS API.
pub const DEFAULT_PORT: u16 = 16998;

/// The default port of the SSH gateway (named in attach commands).
pub const SSH_PORT: u16 = 16999;

/// The smallest memory limit an env may have (`mem` of a spawn), in bytes: below it the
/// env's init would be killed before it could start.
pub const MIN_MEM: u64 = 16 << 20;

/// The largest request body the node accepts, in bytes; larger ones get 413.
pub const MAX_BODY: usize = 1 << 20;

/// The most bytes of stdout, and of stderr, that one exec returns; the rest is read and
/// dropped, and [`ExecResponse::truncated`] says so.
pub const MAX_EXEC_OUTPUT: usize = 8 << 20;

/// The most bytes one copy (`GET`/`PUT /api/envs/{env}/files`) moves when the node's
/// configuration does not set `max_copy`: 1 GiB.
pub const MAX_COPY: u64 = 1 << 30;

/// The token lifetime when the node's configuration does not set one: 30 days.
pub const DEFAULT_TOKEN_DAYS: u64 = 30;

#[cfg(any(test, fuzzing))]
pub mod fuzzing;

/// Route paths. Templates with `{env}` are for the server's router; the functions fill them.
pub mod routes {
    /// `POST`: [`LoginRequest`](crate::LoginRequest) → [`LoginResponse`](crate::LoginResponse).
    pub const LOGIN: &str = "/api/login";
    /// `POST`: revokes the token the request carries → [`LogoutResponse`](crate::LogoutResponse).
    pub const LOGOUT: &str = "/api/logout";
    /// `GET ?pattern=P`: the user's names → `Vec<`[`ScoreEntry`](crate::ScoreEntry)`>`.
    pub const SCORES: &str = "/api/scores";
    /// `GET ?name=NAME`: a name's ancestry, newest first → `Vec<`[`LogEntry`](crate::LogEntry)`>`.
    pub const LOG: &str = "/api/log";
    /// `POST`: [`SpawnRequest`](crate::SpawnRequest) → [`EnvInfo`](crate::EnvInfo);
    /// `GET`: the user's envs → `Vec<`[`EnvInfo`](crate::EnvInfo)`>`.
    pub const ENVS: &str = "/api/envs";
    /// `DELETE`: boom the env → [`BoomResponse`](crate::BoomResponse).
    pub const ENV: &str = "/api/envs/{env}";
    /// `POST`: [`ExecRequest`](crate::ExecRequest) → [`ExecResponse`](crate::ExecResponse).
    pub const EXEC: &str = "/api/envs/{env}/exec";
    /// `POST`: [`SaveRequest`](crate::SaveRequest) → [`SaveResponse`](crate::SaveResponse).
    pub const SAVE: &str = "/api/envs/{env}/save";
    /// `POST`: save the env once and spawn copies of the save ([`ForkRequest`](crate::ForkRequest)
    /// → [`ForkResponse`](crate::ForkResponse)).
    pub const FORK: &str = "/api/envs/{env}/fork";
    /// `GET`: the OpenAPI document ([`openapi`](crate::openapi)); no token needed.
    pub const OPENAPI: &str = "/api/openapi.json";
    /// `GET`: what the node did to the user's envs unasked → `Vec<`[`Notice`](crate::Notice)`>`.
    pub const NOTICES: &str = "/api/notices";
    /// `GET`: the grid's nodes, up or down, with their load → `Vec<`[`NodeEntry`](crate::NodeEntry)`>`.
    pub const NODES: &str = "/api/nodes";
    /// `GET`: Prometheus metrics (text exposition format); no token needed.
    pub const METRICS: &str = "/metrics";

    /// `POST`: [`InviteRequest`](crate::InviteRequest) →
    /// [`InviteResponse`](crate::InviteResponse).
    pub const INVITE: &str = "/api/invite";
    /// `GET`: the caller's pending invites → `Vec<`[`PendingInvite`](crate::PendingInvite)`>`.
    pub const INVITES: &str = "/api/invites";
    /// `DELETE`: refuse the pending invite to your new name `{name}` →
    /// [`PendingInvite`](crate::PendingInvite) (nothing is kept).
    pub const PENDING: &str = "/api/invites/{name}";
    /// `POST`: accept the pending invite to your new name `{name}` →
    /// [`InviteResponse`](crate::InviteResponse).
    pub const ACCEPT: &str = "/api/invites/{name}/accept";
    /// `POST`: [`ShareRequest`](crate::ShareRequest) → [`ShareResponse`](crate::ShareResponse).
    pub const SHARE: &str = "/api/share";
    /// `POST`: [`ShareRequest`](crate::ShareRequest) → [`ShareResponse`](crate::ShareResponse).
    pub const UNSHARE: &str = "/api/unshare";
    /// `DELETE` (admins): delete the user → [`UserResponse`](crate::UserResponse).
    pub const USER: &str = "/api/users/{user}";
    /// `POST`: [`PasswordRequest`](crate::PasswordRequest) →
    /// [`UserResponse`](crate::UserResponse) (yourself, or anyone for admins).
    pub const PASSWORD: &str = "/api/users/{user}/password";
    /// `GET`: the user's SSH keys → `Vec<`[`KeyEntry`](crate::KeyEntry)`>`;
    /// `POST`: [`KeyRequest`](crate::KeyRequest) → [`KeyEntry`](crate::KeyEntry).
    pub const KEYS: &str = "/api/users/{user}/keys";
    /// `DELETE`: remove the keys whose fingerprint or comment is `{key}` →
    /// [`UserResponse`](crate::UserResponse).
    pub const KEY: &str = "/api/users/{user}/keys/{key}";

    /// The path of user `user` ([`USER`] filled in, percent-encoded).
    pub fn user(user: &str) -> String {
        USER.replace("{user}", &super::percent_encode(user))
    }

    /// The password path of user `user` ([`PASSWORD`] filled in, percent-encoded).
    pub fn password(user: &str) -> String {
        PASSWORD.replace("{user}", &super::percent_encode(user))
    }

    /// The keys path of user `user` ([`KEYS`] filled in, percent-encoded).
    pub fn keys(user: &str) -> String {
        KEYS.replace("{user}", &super::percent_encode(user))
    }

    /// The path of user `user`'s key `key` ([`KEY`] filled in, percent-encoded).
    pub fn key(user: &str, key: &str) -> String {
        KEY.replace("{user}", &super::percent_encode(user))
            .replace("{key}", &super::percent_encode(key))
    }

    /// `GET` with a WebSocket upgrade, query [`CpuQuery`](crate::CpuQuery): an interactive
    /// terminal session in the env (binary frames: terminal bytes both ways; text frames:
    /// [`CpuMessage`](crate::CpuMessage)).
    pub const CPU: &str = "/api/envs/{env}/cpu";
    /// `GET ?path=P`: a tar stream of P in the env; `PUT ?path=P` with a tar body: extract it
    /// into the env → [`FilesResponse`](crate::FilesResponse).
    pub const FILES: &str = "/api/envs/{env}/files";
    /// `GET`: the env's exposed ports → `[Exposure]`; `POST` [`ExposeRequest`](crate::ExposeRequest)
    /// → [`ExposeResponse`](crate::ExposeResponse); `DELETE ?port=P` or `?id=ID` (query
    /// [`UnexposeQuery`](crate::UnexposeQuery)) → [`Exposure`](crate::Exposure), the one ended.
    pub const EXPOSURES: &str = "/api/envs/{env}/exposures";
    /// Any method, any path below: the request goes to the exposed port inside the env, with
    /// this prefix stripped (`/preview/ID/x` arrives as `/x`).
    pub const PREVIEW: &str = "/preview/{id}";

    /// The exposures path of env `env` ([`EXPOSURES`] filled in, percent-encoded).
    pub fn exposures(env: &str) -> String {
        EXPOSURES.replace("{env}", &super::percent_encode(env))
    }

    /// The cpu path of env `env` with its query ([`CPU`] filled in, percent-encoded).
    pub fn cpu(env: &str, q: &crate::CpuQuery) -> String {
        let mut query = Vec::new();
        if let Some(r) = q.rows {
            query.push(format!("rows={r}"));
        }
        if let Some(c) = q.cols {
            query.push(format!("cols={c}"));
        }
        if let Some(c) = &q.cmd {
            query.push(format!("cmd={}", super::percent_encode(c)));
        }
        let path = CPU.replace("{env}", &super::percent_encode(env));
        match query.is_empty() {
            true => path,
            false => format!("{path}?{}", query.join("&")),
        }
    }

    /// The files path of env `env` for `path` ([`FILES`] filled in, percent-encoded).
    pub fn files(env: &str, path: &str) -> String {
        format!(
            "{}?path={}",
            FILES.replace("{env}", &super::percent_encode(env)),
            super::percent_encode(path)
        )
    }

    /// The path of env `env` ([`ENV`] filled in, percent-encoded).
    pub fn env(env: &str) -> String {
        ENV.replace("{env}", &super::percent_encode(env))
    }

    /// The exec path of env `env` ([`EXEC`] filled in, percent-encoded).
    pub fn exec(env: &str) -> String {
        EXEC.replace("{env}", &super::percent_encode(env))
    }

    /// [`PENDING`] for the invite to `name`.
    pub fn pending(name: &str) -> String {
        PENDING.replace("{name}", &super::percent_encode(name))
    }

    /// [`ACCEPT`] for the invite to `name`.
    pub fn accept(name: &str) -> String {
        ACCEPT.replace("{name}", &super::percent_encode(name))
    }

    /// The save path of env `env` ([`SAVE`] filled in, percent-encoded).
    pub fn save(env: &str) -> String {
        SAVE.replace("{env}", &super::percent_encode(env))
    }

    /// The fork path of env `env` ([`FORK`] filled in, percent-encoded).
    pub fn fork(env: &str) -> String {
        FORK.replace("{env}", &super::percent_encode(env))
    }

    /// The log path of name `name` (`NAME` or `OWNER/NAME`), percent-encoded.
    pub fn log(name: &str) -> String {
        format!("{LOG}?name={}", super::percent_encode(name))
    }

    /// The scores path with an optional pattern, percent-encoded.
    pub fn scores(pattern: Option<&str>) -> String {
        match pattern {
            None => SCORES.to_string(),
            Some(p) => format!("{SCORES}?pattern={}", super::percent_encode(p)),
        }
    }
}

/// Percent-encodes everything but ASCII letters, digits and `-._~` (RFC 3986 unreserved).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// How a node's TLS certificate fingerprint is shown and pinned: the SHA-256 digest of the
/// certificate (DER) as 32 uppercase hex pairs joined by `:` (as `openssl x509 -fingerprint
/// -sha256` prints it, after its `SHA256 Fingerprint=`).
pub fn format_fingerprint(sha256: &[u8]) -> String {
    sha256
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The body of every error response: one line saying what failed and what to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The message.
    pub error: String,
}

/// `POST /api/login`: a user name and password.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// The user name.
    pub user: String,
    /// The password (never logged).
    pub password: String,
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// The answer to a login: a bearer token for every other route.
#[derive(Clone, Serialize, Deserialize)]
pub struct LoginResponse {
    /// The user logged in.
    pub user: String,
    /// The bearer token (64 hex digits after `sg_`); the node keeps only its hash.
    pub token: String,
    /// When the token stops working, seconds since the Unix epoch.
    pub expires: u64,
}

/// The answer to a logout: whose token no longer works.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LogoutResponse {
    /// The user the revoked token belonged to.
    pub user: String,
}

impl std::fmt::Debug for LoginResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginResponse")
            .field("user", &self.user)
            .field("token", &"<hidden>")
            .field("expires", &self.expires)
            .finish()
    }
}

/// `GET /api/scores` query: an optional pattern (a glob with `*`/`?`, else a substring).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoresQuery {
    /// The pattern names must match.
    pub pattern: Option<String>,
}

/// `GET /api/log` query: the name (`NAME`, or `OWNER/NAME` shared with the user).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    /// The name whose ancestry is asked for.
    pub name: String,
}

/// One snapshot of a name's ancestry (the name's own first, then each parent).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// The snapshot's score, 64 lowercase hex digits.
    pub score: String,
    /// The names the user may spawn that are bound to it, as the user spawns them (`NAME`,
    /// `OWNER/NAME`).
    pub names: Vec<String>,
    /// Who made it.
    pub author: String,
    /// When it was made, seconds since the Unix epoch.
    pub created: u64,
    /// Its note (`saved from env ENV+USER`, `imported from PATH`).
    pub note: String,
    /// Logical bytes of its files.
    pub bytes: u64,
}

/// One name the user may spawn.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScoreEntry {
    /// The name.
    pub name: String,
    /// Its owner (the user, until shares exist).
    pub owner: String,
    /// The snapshot's score, 64 lowercase hex digits.
    pub score: String,
    /// When the name was bound, seconds since the Unix epoch.
    pub created: u64,
    /// Logical bytes of the snapshot's files, when the node could read it.
    pub size: Option<u64>,
}

/// `POST /api/envs`: spawn an env from one of the user's names.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpawnRequest {
    /// The name to spawn from.
    pub name: String,
    /// A 1 GiB disk-backed write layer instead of the 100 MiB RAM-backed one.
    #[serde(default)]
    pub disk: bool,
    /// The env's name, when not the name spawned from (so one name can back several envs).
    #[serde(rename = "as", default, skip_serializing_if = "Option::is_none")]
    pub as_env: Option<String>,
    /// Memory limit in bytes (default: the node's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem: Option<u64>,
    /// The env's network (default: loopback only).
    #[serde(default)]
    pub net: Net,
    /// Let the node place the env on the grid (absent: spawn on the node asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub place: Option<Placement>,
    /// Seconds the env may live; then the node ends it as `on_expire` says (absent: no
    /// deadline but the node's idle timeout, if it has one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
    /// What ends the env when its ttl or the node's idle timeout is up (absent: the node's
    /// `on_expire`, by default boom).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_expire: Option<Expire>,
}

/// What the node does to an env whose time is up.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expire {
    /// Boom it.
    #[default]
    Boom,
    /// Save it as `ENV@TIME` (a new name of its owner), then boom it.
    Save,
}

/// Why an env's time runs out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExpiryCause {
    /// Its ttl (a fixed deadline).
    Ttl,
    /// The node's idle timeout (the deadline moves with each session in the env).
    Idle,
}

/// When and how the node will end an env if nothing changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expiry {
    /// The deadline, seconds since the Unix epoch (an idle deadline while a session runs is
    /// its end plus the timeout at the earliest: shown as if it ended now).
    pub at: u64,
    /// What sets it: the ttl, or the idle timeout (whichever comes first).
    pub cause: ExpiryCause,
    /// What happens then.
    pub then: Expire,
}

/// Where on the grid a spawn goes: with nothing set, the up node with the most room.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// This node, by name (it must be up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// This node if it has room, else the node sharing most labels with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub near: Option<String>,
    /// Only nodes with every one of these labels (`key=value`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
}

/// One node of the grid (a row of `GET /api/nodes`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    /// Its name (the grid file's `sys`).
    pub name: String,
    /// Its HTTPS address, `host:port`.
    pub address: String,
    /// The port of its SSH gateway.
    pub ssh_port: u16,
    /// Its TLS certificate's SHA-256 fingerprint ([`format_fingerprint`]).
    pub fingerprint: String,
    /// How many envs it runs at most.
    pub capacity_envs: u32,
    /// How much memory its envs may reserve in all, in bytes.
    pub capacity_mem: u64,
    /// Its labels (`key=value`).
    pub labels: Vec<String>,
    /// Whether it was heard from in the last 30 s.
    pub up: bool,
    /// Seconds since it was last heard from.
    pub silent: u64,
    /// Envs it runs (every user's).
    pub envs: u32,
    /// Envs it can still admit.
    pub room_envs: u32,
    /// Memory it can still reserve, in bytes (each env counted at the default size).
    pub room_mem: u64,
}

/// An env's network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Net {
    /// Loopback only.
    #[default]
    None,
    /// Its own address, outbound access through the node (NAT).
    Nat,
}

/// How to get a shell in an env.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attach {
    /// `ssh -p 16999 ENV+USER@HOST`.
    pub ssh: String,
    /// `spawngrid cpu ENV` (the client adds `-h`/`-u` when they are not the defaults).
    pub cpu: String,
}

/// Something the node did to one of the user's envs that the user did not ask for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// When, in seconds since the Unix epoch.
    pub at: u64,
    /// What happened (one line).
    pub message: String,
}

/// One of the user's envs (the answer to a spawn, and a row of `GET /api/envs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvInfo {
    /// The env's name as the user knows it.
    pub env: String,
    /// The node the env runs on.
    pub node: String,
    /// The name it was spawned from, when the node recorded it.
    pub from: Option<String>,
    /// The snapshot's score it was spawned from.
    pub snapshot: Option<String>,
    /// Whether its init is alive (a dead env can only be boomed).
    pub running: bool,
    /// Whether the write layer is disk-backed.
    pub disk: bool,
    /// When it was spawned, seconds since the Unix epoch.
    pub created: u64,
    /// Seconds since it was spawned.
    pub age: u64,
    /// Memory charged to its cgroup, in bytes, when readable.
    pub memory: Option<u64>,
    /// Bytes used in its write layer, when readable.
    pub write_used: Option<u64>,
    /// Size of its write layer in bytes.
    pub write_size: u64,
    /// How to attach.
    pub attach: Attach,
    /// Whether its node is up (an env of a down node shows what the catalog knows of it).
    #[serde(default = "yes")]
    pub node_up: bool,
    /// When the node will end it (ttl or idle timeout), if ever.
    #[serde(default)]
    pub expiry: Option<Expiry>,
    /// Its ports served at preview URLs.
    #[serde(default)]
    pub exposures: Vec<Exposure>,
}

/// `true`, the default of fields that older nodes did not send.
fn yes() -> bool {
    true
}

/// `POST /api/envs/{env}/exec`: run one command and collect its output.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    /// The command and its arguments (looked up along the env's `PATH`).
    pub argv: Vec<String>,
    /// Bytes for the command's stdin, base64; none: stdin is `/dev/null`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Seconds the command may run before the node kills it (its process group); the node's
    /// own `[exec] timeout`, if shorter, wins. None: the node's timeout, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
}

/// The result of an exec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecResponse {
    /// The command's exit code; 128 + N if signal N killed it; 127 if it could not run.
    pub exit_code: i32,
    /// Its stdout, base64 (at most [`MAX_EXEC_OUTPUT`] bytes).
    pub stdout: String,
    /// Its stderr, base64 (at most [`MAX_EXEC_OUTPUT`] bytes).
    pub stderr: String,
    /// Whether stdout or stderr was longer than [`MAX_EXEC_OUTPUT`] and cut.
    #[serde(default)]
    pub truncated: bool,
    /// The node's word on a failure it can explain: the env's write layer is full, and how to
    /// get a bigger one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// `POST /api/envs/{env}/save`: store the env's state under a new name.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaveRequest {
    /// The new name (bound once, forever).
    pub name: String,
}

/// The result of a save.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SaveResponse {
    /// The env saved (it keeps running).
    pub env: String,
    /// The new name.
    pub name: String,
    /// The new snapshot's score.
    pub score: String,
    /// How long the save took.
    pub seconds: f64,
    /// Things in the write layer that could not be saved exactly.
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// The most copies one fork makes.
pub const MAX_FORK: u32 = 64;

/// `POST /api/envs/{env}/fork`: save the env once, then spawn `count` copies of that save.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForkRequest {
    /// How many copies (1 to [`MAX_FORK`]).
    pub count: u32,
    /// The new name the save is bound to, and the copies' prefix: they are `PREFIX-1` …
    /// `PREFIX-N` (default: `ENV-YYYYMMDDTHHMMSS`, the time of the fork in UTC).
    #[serde(rename = "as", default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// The result of a fork: the one save and the copies spawned from it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForkResponse {
    /// The save (its `name` is the copies' prefix).
    pub save: SaveResponse,
    /// The copies, in order (`PREFIX-1` first).
    pub envs: Vec<EnvInfo>,
    /// How long the whole fork took.
    pub seconds: f64,
}

/// `POST /api/envs/{env}/exposures`: serve a port of the env at a preview URL on the node.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExposeRequest {
    /// The port inside the env (its own network namespace: `127.0.0.1` is the env's).
    pub port: u16,
    /// Anyone with the URL gets in (default: the owner's token, or a signed link).
    #[serde(default)]
    pub public: bool,
    /// How long the signed link in the answer works, in seconds (default
    /// [`DEFAULT_LINK_TTL`]).
    #[serde(default)]
    pub ttl: Option<u64>,
    /// Give the exposure a new signing key first: every link and browser cookie given out
    /// before stops working.
    #[serde(default)]
    pub rotate: bool,
}

/// How long a signed preview link works when [`ExposeRequest::ttl`] is not given: 1 hour.
pub const DEFAULT_LINK_TTL: u64 = 3600;

/// A port of an env served at a preview URL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exposure {
    /// Its id: the path of its URL (`/preview/ID/`).
    pub id: String,
    /// The env's name.
    pub env: String,
    /// The port inside the env.
    pub port: u16,
    /// Whether anyone with the URL gets in.
    pub public: bool,
    /// Its URL (the owner's token, a signed link's cookie, or `public`, let a request in).
    pub url: String,
    /// When it was made, seconds since the Unix epoch.
    pub created: u64,
}

/// The answer to an expose: the exposure, and a signed link to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExposeResponse {
    /// The exposure.
    pub exposure: Exposure,
    /// The URL with a signature: whoever opens it before `link_expires` gets in, and their
    /// browser gets a cookie for the exposure (valid while the exposure and its key last).
    pub link: String,
    /// When the link stops working, seconds since the Unix epoch.
    pub link_expires: u64,
}

/// `DELETE /api/envs/{env}/exposures`: which exposure to end (one of the two).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnexposeQuery {
    /// The port exposed.
    pub port: Option<u16>,
    /// The exposure's id.
    pub id: Option<String>,
}

/// The result of a boom.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoomResponse {
    /// The env destroyed.
    pub env: String,
}

/// `POST /api/invite`: give user `user` a copy of a name with them added to its system.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InviteRequest {
    /// The user invited.
    pub user: String,
    /// The name (yours, or `OWNER/NAME` shared with you) to copy.
    pub name: String,
    /// The invited user's new name (default: the name without any `OWNER/`).
    #[serde(rename = "as", default, skip_serializing_if = "Option::is_none")]
    pub as_name: Option<String>,
}

/// The result of an invite: the invited user's new name and their account inside it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InviteResponse {
    /// The user invited (the new name's owner).
    pub user: String,
    /// Their new name.
    pub name: String,
    /// Its snapshot's score.
    pub score: String,
    /// Their uid inside.
    pub uid: u32,
    /// Their primary gid inside.
    pub gid: u32,
    /// The administrative groups they were added to (of sys, adm, sudo, wheel).
    pub groups: Vec<String>,
    /// Whether the name's `/etc/passwd` had them already (then only groups and home are added).
    pub existed: bool,
    /// How long the invite took.
    pub seconds: f64,
    /// Whether the invite waits for the user to accept it (`spawngrid invite accept NAME`):
    /// then nothing is made yet (`score` is empty, `uid`, `gid` 0, `groups` empty).
    #[serde(default)]
    pub pending: bool,
}

/// An invite waiting for its user to accept or refuse it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingInvite {
    /// The new name it offers (yours once accepted).
    pub name: String,
    /// Who invited you.
    pub inviter: String,
    /// Their name copied, as they addressed it.
    pub from: String,
    /// When they invited you, seconds since the Unix epoch.
    pub created: u64,
}

/// `POST /api/share` and `/api/unshare`: one of your names and another user.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareRequest {
    /// Your name.
    pub name: String,
    /// The user to share it with (or stop sharing it with).
    pub user: String,
}

/// The result of a share or unshare.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareResponse {
    /// The name.
    pub name: String,
    /// The other user.
    pub user: String,
    /// How they address it: `OWNER/NAME`.
    pub address: String,
    /// Whether anything changed (false: it was shared, or unshared, already).
    pub changed: bool,
}

/// `POST /api/users/{user}/password`: a new password.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PasswordRequest {
    /// The new password (never logged).
    pub password: String,
    /// The current password: required to change your own (a stolen token is not enough).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
}

impl std::fmt::Debug for PasswordRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordRequest").finish_non_exhaustive()
    }
}

/// The user a user-management call acted on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserResponse {
    /// The user.
    pub user: String,
}

/// `POST /api/users/{user}/keys`: one OpenSSH public key line (`TYPE BASE64 [COMMENT]`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRequest {
    /// The line, as in a `.pub` file.
    pub line: String,
}

/// One SSH public key of a user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEntry {
    /// `SHA256:...`, as `ssh-keygen -lf` prints it.
    pub fingerprint: String,
    /// The public key line.
    pub line: String,
    /// When it was added, seconds since the Unix epoch.
    pub added: u64,
}

/// `GET /api/envs/{env}/cpu` query: the terminal and the command of a session.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuQuery {
    /// Terminal rows (default 24).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u16>,
    /// Terminal columns (default 80).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cols: Option<u16>,
    /// The command: a JSON array of strings (default: root's login shell in the env).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<String>,
}

/// A control message of a cpu session, sent as a WebSocket text frame (JSON):
/// `{"resize":[rows,cols]}` client → node; `{"exit":code}` node → client just before the node
/// closes; `{"error":"one line"}` node → client when the session could not start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuMessage {
    /// The client's terminal is now rows x cols.
    Resize([u16; 2]),
    /// The command exited with this code (128 + N for signal N).
    Exit(i32),
    /// The session failed (one line).
    Error(String),
}

/// `GET` and `PUT /api/envs/{env}/files` query.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesQuery {
    /// A path in the env (relative paths are relative to `/root`).
    pub path: String,
}

/// The result of a copy into an env.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilesResponse {
    /// The env.
    pub env: String,
    /// Where the archive's entry went (the destination, or inside it).
    pub path: String,
    /// Bytes of archive received.
    pub bytes: u64,
}

/// Standard padded base64, how byte streams travel in this API.
pub mod b64 {
    use base64::Engine;

    /// Encodes bytes.
    pub fn encode(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    /// Decodes text; the error says what was wrong.
    pub fn decode(text: &str) -> Result<Vec<u8>, String> {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| format!("bad base64: {e}"))
    }
}

/// The OpenAPI 3.1 document of this API (hand-written: `openapi.json` in this crate).
pub fn openapi() -> &'static str {
    include_str!("../openapi.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_fill_templates() {
        assert_eq!(routes::env("web"), "/api/envs/web");
        assert_eq!(routes::exec("web"), "/api/envs/web/exec");
        assert_eq!(routes::save("a.b"), "/api/envs/a.b/save");
        assert_eq!(routes::env("../x+y"), "/api/envs/..%2Fx%2By");
        assert_eq!(
            routes::scores(Some("web-*?x y")),
            "/api/scores?pattern=web-%2A%3Fx%20y"
        );
        assert_eq!(routes::scores(None), "/api/scores");
        assert_eq!(
            routes::files("web", "/a b/c"),
            "/api/envs/web/files?path=%2Fa%20b%2Fc"
        );
        assert_eq!(
            routes::cpu("web", &CpuQuery::default()),
            "/api/envs/web/cpu"
        );
        let q = CpuQuery {
            rows: Some(30),
            cols: Some(100),
            cmd: Some(r#"["ls"]"#.into()),
        };
        assert_eq!(
            routes::cpu("web", &q),
            "/api/envs/web/cpu?rows=30&cols=100&cmd=%5B%22ls%22%5D"
        );
        let m: CpuMessage = serde_json::from_str(r#"{"resize":[24,80]}"#).unwrap();
        assert_eq!(m, CpuMessage::Resize([24, 80]));
        assert_eq!(
            serde_json::to_string(&CpuMessage::Exit(7)).unwrap(),
            r#"{"exit":7}"#
        );
        assert_eq!(
            routes::key("a", "SHA256:x/y+z"),
            "/api/users/a/keys/SHA256%3Ax%2Fy%2Bz"
        );
        assert_eq!(routes::password("a@b"), "/api/users/a%40b/password");
    }

    #[test]
    fn fingerprints_are_colon_hex() {
        assert_eq!(format_fingerprint(&[0xab, 0x01, 0xff]), "AB:01:FF");
    }

    #[test]
    fn spawn_request_uses_as_and_defaults() {
        let r: SpawnRequest = serde_json::from_str(r#"{"name":"base","as":"w"}"#).unwrap();
        assert_eq!(
            (r.name.as_str(), r.as_env.as_deref(), r.disk),
            ("base", Some("w"), false)
        );
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(
            text,
            r#"{"name":"base","disk":false,"as":"w","net":"none"}"#
        );
        assert!(serde_json::from_str::<SpawnRequest>(r#"{"name":"b","bogus":1}"#).is_err());
        let r: SpawnRequest =
            serde_json::from_str(r#"{"name":"b","place":{"labels":["rack=r1"]}}"#).unwrap();
        assert_eq!(r.place.unwrap().labels, ["rack=r1"]);
    }

    #[test]
    fn secrets_are_not_in_debug_output() {
        let l = LoginRequest {
            user: "alice".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{l:?}").contains("hunter2"));
        let r = LoginResponse {
            user: "alice".into(),
            token: "sg_secret".into(),
            expires: 1,
        };
        assert!(!format!("{r:?}").contains("secret"));
    }

    #[test]
    fn base64_round_trips_any_bytes() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(b64::decode(&b64::encode(&bytes)).unwrap(), bytes);
        assert!(b64::decode("not base64!")
            .unwrap_err()
            .starts_with("bad base64"));
    }

    /// The document parses, names every route with its methods, and every schema it names
    /// has the fields the types serialize.
    #[test]
    fn openapi_describes_every_route() {
        let doc: serde_json::Value = serde_json::from_str(openapi()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().unwrap();
        let want = [
            (routes::LOGIN, &["post"][..]),
            (routes::LOGOUT, &["post"]),
            (routes::SCORES, &["get"]),
            (routes::LOG, &["get"]),
            (routes::ENVS, &["get", "post"]),
            (routes::ENV, &["delete"]),
            (routes::EXEC, &["post"]),
            (routes::SAVE, &["post"]),
            (routes::FORK, &["post"]),
            (routes::OPENAPI, &["get"]),
            (routes::CPU, &["get"]),
            (routes::FILES, &["get", "put"]),
            (routes::EXPOSURES, &["get", "post", "delete"]),
            ("/preview/{id}/", &["get"]),
            (routes::INVITE, &["post"]),
            (routes::INVITES, &["get"]),
            (routes::PENDING, &["delete"]),
            (routes::ACCEPT, &["post"]),
            (routes::SHARE, &["post"]),
            (routes::UNSHARE, &["post"]),
            (routes::USER, &["delete"]),
            (routes::PASSWORD, &["post"]),
            (routes::KEYS, &["get", "post"]),
            (routes::KEY, &["delete"]),
            (routes::NOTICES, &["get"]),
            (routes::NODES, &["get"]),
            (routes::METRICS, &["get"]),
        ];
        assert_eq!(paths.len(), want.len());
        for (path, methods) in want {
            let item = paths.get(path).unwrap_or_else(|| panic!("{path} missing"));
            for m in methods {
                assert!(item.get(*m).is_some(), "{m} {path} missing");
            }
        }
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let check = |name: &str, value: serde_json::Value| {
            let props = schemas[name]["properties"].as_object().unwrap();
            for key in value.as_object().unwrap().keys() {
                assert!(props.contains_key(key), "{name}.{key} not in the document");
            }
            for req in schemas[name]["required"].as_array().into_iter().flatten() {
                assert!(value.get(req.as_str().unwrap()).is_some(), "{name}.{req}");
            }
        };
        check(
            "LogoutResponse",
            serde_json::to_value(LogoutResponse { user: "u".into() }).unwrap(),
        );
        check(
            "Notice",
            serde_json::to_value(Notice {
                at: 1,
                message: "m".into(),
            })
            .unwrap(),
        );
        let attach = Attach {
            ssh: "s".into(),
            cpu: "c".into(),
        };
        let exposure = Exposure {
            id: "i".into(),
            env: "e".into(),
            port: 1,
            public: false,
            url: "u".into(),
            created: 2,
        };
        let info = EnvInfo {
            env: "e".into(),
            node: "n".into(),
            from: Some("f".into()),
            snapshot: Some("s".into()),
            running: true,
            disk: false,
            created: 1,
            age: 2,
            memory: Some(3),
            write_used: Some(4),
            write_size: 5,
            attach: attach.clone(),
            node_up: false,
            expiry: Some(Expiry {
                at: 6,
                cause: ExpiryCause::Idle,
                then: Expire::Boom,
            }),
            exposures: vec![exposure.clone()],
        };
        let v = |x: &dyn erased::Ser| x.value();
        check("Error", v(&ErrorBody { error: "x".into() }));
        check(
            "LoginRequest",
            v(&LoginRequest {
                user: "u".into(),
                password: "p".into(),
            }),
        );
        check(
            "LoginResponse",
            v(&LoginResponse {
                user: "u".into(),
                token: "t".into(),
                expires: 1,
            }),
        );
        check(
            "ScoreEntry",
            v(&ScoreEntry {
                name: "n".into(),
                owner: "o".into(),
                score: "s".into(),
                created: 1,
                size: Some(2),
            }),
        );
        check(
            "SpawnRequest",
            v(&SpawnRequest {
                name: "n".into(),
                disk: true,
                as_env: Some("a".into()),
                mem: Some(1),
                net: Net::Nat,
                place: Some(Placement::default()),
                ttl: Some(60),
                on_expire: Some(Expire::Save),
            }),
        );
        let placement = Placement {
            node: Some("n".into()),
            near: Some("m".into()),
            labels: vec!["k=v".into()],
        };
        check("Placement", v(&placement));
        check(
            "NodeEntry",
            v(&NodeEntry {
                name: "n".into(),
                address: "h:1".into(),
                ssh_port: 2,
                fingerprint: "AB".into(),
                capacity_envs: 3,
                capacity_mem: 4,
                labels: vec!["k=v".into()],
                up: true,
                silent: 5,
                envs: 6,
                room_envs: 7,
                room_mem: 8,
            }),
        );
        check("Attach", v(&attach));
        check("EnvInfo", v(&info));
        check(
            "ForkRequest",
            v(&ForkRequest {
                count: 2,
                prefix: Some("p".into()),
            }),
        );
        check("Expiry", v(&info.expiry.unwrap()));
        check(
            "ExecRequest",
            v(&ExecRequest {
                argv: vec!["a".into()],
                stdin: Some("".into()),
                timeout: Some(1),
            }),
        );
        check(
            "ExecResponse",
            v(&ExecResponse {
                exit_code: 0,
                stdout: "".into(),
                stderr: "".into(),
                truncated: false,
                hint: Some("h".into()),
            }),
        );
        check("SaveRequest", v(&SaveRequest { name: "n".into() }));
        check(
            "LogEntry",
            v(&LogEntry {
                score: "s".into(),
                names: vec!["n".into()],
                author: "a".into(),
                created: 1,
                note: "x".into(),
                bytes: 2,
            }),
        );
        let save = SaveResponse {
            env: "e".into(),
            name: "n".into(),
            score: "s".into(),
            seconds: 1.0,
            warnings: vec![],
        };
        check("SaveResponse", v(&save));
        check(
            "ForkResponse",
            v(&ForkResponse {
                save,
                envs: vec![info.clone()],
                seconds: 2.0,
            }),
        );
        check("BoomResponse", v(&BoomResponse { env: "e".into() }));
        check("Exposure", v(&exposure));
        check(
            "ExposeRequest",
            v(&ExposeRequest {
                port: 1,
                public: true,
                ttl: Some(2),
                rotate: true,
            }),
        );
        check(
            "ExposeResponse",
            v(&ExposeResponse {
                exposure,
                link: "l".into(),
                link_expires: 3,
            }),
        );
        check(
            "UnexposeQuery",
            v(&UnexposeQuery {
                port: Some(1),
                id: Some("i".into()),
            }),
        );
        check(
            "CpuQuery",
            v(&CpuQuery {
                rows: Some(1),
                cols: Some(2),
                cmd: Some("[]".into()),
            }),
        );
        check("FilesQuery", v(&FilesQuery { path: "/p".into() }));
        check(
            "FilesResponse",
            v(&FilesResponse {
                env: "e".into(),
                path: "/p".into(),
                bytes: 1,
            }),
        );
        for m in [
            CpuMessage::Resize([1, 2]),
            CpuMessage::Exit(3),
            CpuMessage::Error("e".into()),
        ] {
            let value = v(&m);
            let key = value.as_object().unwrap().keys().next().unwrap().clone();
            let variants = doc["components"]["schemas"]["CpuMessage"]["oneOf"]
                .as_array()
                .unwrap();
            assert!(
                variants.iter().any(|s| s["properties"].get(&key).is_some()),
                "CpuMessage.{key} not in the document"
            );
        }
        check(
            "InviteRequest",
            v(&InviteRequest {
                user: "u".into(),
                name: "n".into(),
                as_name: Some("a".into()),
            }),
        );
        check(
            "InviteResponse",
            v(&InviteResponse {
                user: "u".into(),
                name: "n".into(),
                score: "s".into(),
                uid: 1000,
                gid: 1000,
                groups: vec!["adm".into()],
                existed: false,
                seconds: 1.0,
                pending: false,
            }),
        );
        check(
            "PendingInvite",
            v(&PendingInvite {
                name: "n".into(),
                inviter: "i".into(),
                from: "f".into(),
                created: 1,
            }),
        );
        check(
            "ShareRequest",
            v(&ShareRequest {
                name: "n".into(),
                user: "u".into(),
            }),
        );
        check(
            "ShareResponse",
            v(&ShareResponse {
                name: "n".into(),
                user: "u".into(),
                address: "o/n".into(),
                changed: true,
            }),
        );
        check(
            "PasswordRequest",
            v(&PasswordRequest {
                password: "p".into(),
                current: Some("c".into()),
            }),
        );
        check("UserResponse", v(&UserResponse { user: "u".into() }));
        check("KeyRequest", v(&KeyRequest { line: "l".into() }));
        check(
            "KeyEntry",
            v(&KeyEntry {
                fingerprint: "f".into(),
                line: "l".into(),
                added: 1,
            }),
        );
    }

    /// Serializes any of the API types to a JSON value (for the document check above).
    mod erased {
        pub trait Ser {
            fn value(&self) -> serde_json::Value;
        }
        impl<T: serde::Serialize> Ser for T {
            fn value(&self) -> serde_json::Value {
                serde_json::to_value(self).unwrap()
            }
        }
    }
}
