//! `POST /api/envs/{env}/exec`: one command in a user's env, its output collected. No thread
//! waits while it runs (its pipes and its exit are awaited), so logins and other API calls
//! never queue behind execs; a user runs at most `[exec] max_per_user` at once; the command's
//! process group is killed when its timeout is up or when the client goes away (the request's
//! future is dropped).

use crate::error::{Error, Kind};
use crate::http::{blocking, env_param, ok, AuthUser, JsonBody};
use crate::{envs, Node};
use anyhow::Context;
use api::ExecResponse;
use axum::extract::{Path, State};
use axum::response::Response;
use rustix::fd::{AsFd, AsRawFd, RawFd};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::unix::pipe;

/// Output that background processes keep writing after the command exited is read this long.
const LINGER: Duration = Duration::from_millis(100);

/// The `[exec]` table of the node's configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecConfig {
    /// Execs and SSH session channels (shell, exec, sftp) one user may run at once (each
    /// further exec is refused with 429, each further channel with one line).
    pub max_per_user: usize,
    /// How long an exec may run before its command is killed (`30s`, `1h`); default: no limit.
    pub timeout: Option<String>,
}

impl Default for ExecConfig {
    fn default() -> ExecConfig {
        ExecConfig {
            max_per_user: 16,
            timeout: None,
        }
    }
}

impl ExecConfig {
    /// Checks the table (at load).
    pub fn check(&self) -> anyhow::Result<()> {
        if self.max_per_user == 0 {
            anyhow::bail!("[exec] max_per_user must be at least 1");
        }
        self.timeout_duration()?;
        Ok(())
    }

    /// The node's timeout, if any.
    pub fn timeout_duration(&self) -> anyhow::Result<Option<Duration>> {
        let Some(t) = &self.timeout else {
            return Ok(None);
        };
        match human::parse_timeout(t) {
            Ok(d) => Ok(Some(d)),
            Err(e) => anyhow::bail!("[exec] timeout: {e}"),
        }
    }
}

/// Execs and SSH session channels in progress, per user.
#[derive(Default)]
pub struct Slots(Mutex<HashMap<String, usize>>);

/// One exec of a user counted in [`Slots`] until dropped.
pub struct Slot {
    slots: Arc<Slots>,
    user: String,
}

impl Slots {
    /// A slot for one more exec of `user`, or 429 when they run `max` already.
    pub fn take(self: &Arc<Self>, user: &str, max: usize) -> Result<Slot, Error> {
        self.try_take(user, max).ok_or_else(|| {
            Error::new(
                Kind::TooMany,
                format!(
                    "you run {max} execs and SSH sessions at once already (the node's limit): \
                     wait for one to end, or end one"
                ),
            )
        })
    }

    /// A slot for one more of `user`'s, or `None` when they hold `max` already.
    pub fn try_take(self: &Arc<Self>, user: &str, max: usize) -> Option<Slot> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(user.to_string()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            slots: self.clone(),
            user: user.to_string(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = self.slots.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.user);
            }
        }
    }
}

/// The route.
#[utoipa::path(
    post,
    path = api::routes::EXEC,
    operation_id = "exec",
    params(api::openapi::EnvPath),
    summary = "run one command in the env, collect its output and exit code",
    request_body = api::ExecRequest,
    responses(
        (status = 200, body = api::ExecResponse,
            description = "the command ran (whatever its exit code)"),
        (status = 404, description = "the user has no such env"),
        (status = 409, description = "the env is not running"),
        (status = 429, description = "the user runs the node's limit of execs at once already"),
    ),
)]
pub async fn route(
    State(node): State<Arc<Node>>,
    AuthUser(user): AuthUser,
    env: Result<Path<String>, axum::extract::rejection::PathRejection>,
    JsonBody(req): JsonBody<api::ExecRequest>,
) -> Result<Response, Error> {
    let env = env_param(env)?;
    let argv = req.argv;
    if argv.is_empty() || argv[0].is_empty() {
        return Err(Error::invalid("no command: argv must not be empty"));
    }
    if argv.iter().any(|a| a.contains('\0')) {
        return Err(Error::invalid("argv must not contain NUL bytes"));
    }
    let stdin = match &req.stdin {
        Some(text) => {
            Some(api::b64::decode(text).map_err(|e| Error::invalid(format!("stdin: {e}")))?)
        }
        None => None,
    };
    if req.timeout == Some(0) {
        return Err(Error::invalid("timeout must be at least 1 second"));
    }
    let ours = node.config.exec.timeout_duration().ok().flatten();
    let timeout = match (req.timeout.map(Duration::from_secs), ours) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let _slot = node.execs.take(&user, node.config.exec.max_per_user)?;
    let n = node.clone();
    let st = blocking(move || envs::load_own(&n, &user, &env)).await?;
    if !st.alive() {
        return Err(Error::conflict(format!(
            "env {} is not running: boom it",
            st.name
        )));
    }
    let _busy = node.activity.session(&st.name);
    let resp = run(&node.rt, st, argv, stdin, timeout).await?;
    Ok(ok(&resp))
}

/// The env's init's connection for one command: readable when its exit is reported. Dropped
/// before the exit was read (the client went away, the timeout), it kills the command.
struct Command {
    conn: AsyncFd<Conn>,
    exited: AtomicBool,
}

/// [`runtime::service::Started`] as tokio wants it.
struct Conn(runtime::service::Started);

impl AsRawFd for Conn {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl Command {
    fn new(started: runtime::service::Started) -> std::io::Result<Command> {
        Ok(Command {
            // SAFETY: the AsyncFd owns the connection, so its fd stays open and the same
            // until dropped.
            conn: unsafe { AsyncFd::register_with_interest(Conn(started), Interest::READABLE) }?,
            exited: AtomicBool::new(false),
        })
    }

    /// Waits for the exit code (the connection is readable, so reading it does not block).
    async fn exit(&self) -> anyhow::Result<i32> {
        let _ready = self.conn.readable().await?;
        let code = self.conn.get_ref().0.wait();
        self.exited.store(true, Ordering::Relaxed);
        Ok(code?)
    }

    /// Kills the command's process group.
    fn kill(&self) {
        if let Err(e) = self.conn.get_ref().0.kill() {
            tracing::warn!("killing an exec's command: {e:#}");
        }
    }
}

impl Drop for Command {
    fn drop(&mut self) {
        if !self.exited.load(Ordering::Relaxed) {
            tracing::info!("exec ended before its command: killing the command");
            self.kill();
        }
    }
}

/// Output read so far: stdout, stderr, whether either was cut.
#[derive(Default)]
struct Output {
    bufs: [Vec<u8>; 2],
    truncated: bool,
}

impl Output {
    fn keep(&mut self, i: usize, data: &[u8]) {
        let room = api::MAX_EXEC_OUTPUT.saturating_sub(self.bufs[i].len());
        if data.len() > room {
            self.truncated = true;
        }
        self.bufs[i].extend_from_slice(&data[..data.len().min(room)]);
    }
}

/// Runs `argv` in the env through its init and collects stdout and stderr (each up to
/// [`api::MAX_EXEC_OUTPUT`] bytes; more is read and dropped) and the exit code; past
/// `timeout`, the command is killed and the answer says so.
pub async fn run(
    rt: &runtime::Runtime,
    st: runtime::EnvState,
    argv: Vec<String>,
    stdin: Option<Vec<u8>>,
    timeout: Option<Duration>,
) -> Result<ExecResponse, Error> {
    let pipe = || rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC);
    let (out_r, out_w) = pipe().context("making a pipe")?;
    let (err_r, err_w) = pipe().context("making a pipe")?;
    let (in_r, in_w) = match &stdin {
        Some(_) => {
            let (r, w) = pipe().context("making a pipe")?;
            (Some(r), Some(w))
        }
        None => (None, None),
    };
    let (rt2, env) = (rt.clone(), st.clone());
    // Starting is quick (a message to the env's init); the fds ours to write end here.
    let started = blocking(move || {
        let null = std::fs::File::open("/dev/null").context("opening /dev/null")?;
        let in_fd = in_r.as_ref().map_or(null.as_fd(), |r| r.as_fd());
        let stdio = [in_fd, out_w.as_fd(), err_w.as_fd()];
        runtime::service::start(&rt2, &env, &argv, &[], stdio).map_err(|e| {
            Error::internal(&anyhow::Error::new(e).context(format!("running {:?}", argv[0])))
        })
    })
    .await?;
    let cmd = Command::new(started).context("watching the command")?;
    let feeder = match (in_w, stdin) {
        (Some(w), Some(bytes)) => {
            let mut w = pipe::Sender::from_owned_fd(w).context("feeding stdin")?;
            Some(tokio::spawn(async move {
                let _ = w.write_all(&bytes).await;
            }))
        }
        _ => None,
    };
    let mut streams = [
        Some(pipe::Receiver::from_owned_fd(out_r).context("reading stdout")?),
        Some(pipe::Receiver::from_owned_fd(err_r).context("reading stderr")?),
    ];
    let mut got = Output::default();
    let mut code = None;
    let mut hint = None;
    let within = match timeout {
        Some(t) => tokio::time::timeout(t, collect(&cmd, &mut streams, &mut got, &mut code))
            .await
            .ok(),
        None => Some(collect(&cmd, &mut streams, &mut got, &mut code).await),
    };
    let finished = match within {
        Some(r) => r,
        None => {
            cmd.kill();
            let secs = timeout.map_or(0, |t| t.as_secs());
            hint = Some(format!(
                "the command ran past its timeout of {secs} s and was killed (its process group)"
            ));
            collect(&cmd, &mut streams, &mut got, &mut code).await
        }
    };
    if let Some(f) = feeder {
        f.abort();
    }
    let code = finished.context("waiting for the command")?;
    if code != 0 && hint.is_none() {
        hint = envs::full_write_layer(rt, &st);
    }
    let [stdout, stderr] = got.bufs;
    Ok(ExecResponse {
        exit_code: code,
        stdout: api::b64::encode(&stdout),
        stderr: api::b64::encode(&stderr),
        truncated: got.truncated,
        hint,
    })
}

/// [`run`] without a timeout, from a thread that may block (in the node's runtime): for
/// short commands the node runs itself.
pub fn run_blocking(
    rt: &runtime::Runtime,
    st: &runtime::EnvState,
    argv: &[String],
    stdin: Option<Vec<u8>>,
) -> Result<ExecResponse, Error> {
    tokio::runtime::Handle::current().block_on(run(rt, st.clone(), argv.to_vec(), stdin, None))
}

/// Reads both streams until both end, or until the command has exited and [`LINGER`] passed
/// (something in the background holds them open); the exit code lands in `code`. Cancel-safe:
/// what was read stays in `got`.
async fn collect(
    cmd: &Command,
    streams: &mut [Option<pipe::Receiver>; 2],
    got: &mut Output,
    code: &mut Option<i32>,
) -> anyhow::Result<i32> {
    let (mut a, mut b) = (vec![0u8; 64 << 10], vec![0u8; 64 << 10]);
    let linger = tokio::time::sleep(Duration::from_secs(1 << 30));
    tokio::pin!(linger);
    if code.is_some() {
        linger.as_mut().reset(tokio::time::Instant::now() + LINGER);
    }
    loop {
        if let (Some(c), [None, None]) = (*code, &*streams) {
            return Ok(c);
        }
        let [out, err] = streams;
        tokio::select! {
            r = read(out, &mut a) => match r {
                Some(n) => got.keep(0, &a[..n]),
                None => *out = None,
            },
            r = read(err, &mut b) => match r {
                Some(n) => got.keep(1, &b[..n]),
                None => *err = None,
            },
            c = cmd.exit(), if code.is_none() => {
                *code = Some(c?);
                linger.as_mut().reset(tokio::time::Instant::now() + LINGER);
            }
            _ = &mut linger, if code.is_some() => return Ok(code.unwrap_or(-1)),
        }
    }
}

/// Bytes read from `stream` into `buf` (None at its end or on an error); never completes for
/// an ended stream.
async fn read(stream: &mut Option<pipe::Receiver>, buf: &mut [u8]) -> Option<usize> {
    match stream {
        Some(s) => match s.read(buf).await {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(n),
        },
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_count_per_user_and_free_on_drop() {
        let slots = Arc::new(Slots::default());
        let a = slots.take("alice", 2).unwrap();
        let _b = slots.take("alice", 2).unwrap();
        let e = slots.take("alice", 2).err().unwrap();
        assert_eq!(e.kind, Kind::TooMany);
        assert!(e.message.contains("2 execs") && !e.message.contains('\n'));
        let _c = slots.take("bob", 2).unwrap();
        drop(a);
        let _d = slots.take("alice", 2).unwrap();
    }

    #[test]
    fn timeouts_parse() {
        let mut c = ExecConfig::default();
        assert_eq!(c.timeout_duration().unwrap(), None);
        c.timeout = Some("90s".into());
        assert_eq!(c.timeout_duration().unwrap(), Some(Duration::from_secs(90)));
        c.timeout = Some("0s".into());
        assert!(c.check().is_err());
        c.timeout = None;
        c.max_per_user = 0;
        assert!(c.check().is_err());
    }
}
