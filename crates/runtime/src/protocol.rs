//! The wire between the runtime's host side ([`crate::host`]) and the processes it starts
//! inside an env (`inside`): every message either side sends, typed, each with its one
//! encoding ([`Message`]). Neither side spells a message any other way.
//!
//! - **Helpers.** The host re-executes its binary as `BIN` [`INIT`] [`Owner`] or `BIN`
//!   [`ENTER`] `CONFIG`; CONFIG is an [`EnterConfig`] (JSON, one argument).
//! - **Spawn handshake** (env-init's stdout, one report a line; its stdin, a SOCK_SEQPACKET
//!   Unix socket, one message a packet): the helper sends [`InitReport::Userns`]; the host
//!   maps its ids and sends [`Mapped`] (a helper may be made ahead of its spawn and wait after
//!   this); at the spawn the host sends an [`InitConfig`] with the env's exec listener and
//!   its memory and cpu cgroup directories (`O_PATH`) attached, mounts the root and sends
//!   [`Go`] with the root attached (a detached `open_tree` clone); the helper sends
//!   [`InitReport::Pid`] and the init [`InitReport::Ready`], or either [`InitReport::Error`] at
//!   the step that failed.
//! - **Terminal** (env-enter's stdin, a Unix socket): one [`TTY_MASTER`] byte carrying the
//!   master of the terminal it opened inside. Its exit code is the command's, or
//!   [`ENTER_FAILED`].
//! - **Exec service** (the init's SOCK_SEQPACKET socket, one message a packet): the client
//!   sends a [`Request`] with stdin, stdout and stderr attached (or, for a command on a
//!   terminal the init opens, none); the init answers [`Reply::Started`] (carrying the
//!   terminal's master, if any) or [`Reply::Error`], later [`Reply::Exit`]; meanwhile the
//!   client may send [`Control`] (and closing its socket kills the command, like
//!   [`Control::Kill`]).

use crate::identity::Identity;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// First argument of the env-init helper.
pub const INIT: &str = "env-init";

/// The host uid and gid that own an env's user namespace (the env's own uid:
/// [`crate::host::owners`]; its root's gid): env-init's argument, `UID:GID`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The owner uid.
    pub uid: u32,
    /// The owner gid.
    pub gid: u32,
}

impl Message for Owner {
    fn encode(&self) -> Vec<u8> {
        format!("{}:{}", self.uid, self.gid).into_bytes()
    }

    fn decode(bytes: &[u8]) -> Result<Self, Malformed> {
        const WHAT: &str = "env-init owner";
        let (uid, gid) = text(WHAT, bytes)?
            .split_once(':')
            .ok_or_else(|| Malformed::got(WHAT, bytes))?;
        let id = |s: &str| match s.bytes().all(|b| b.is_ascii_digit()) {
            true => s.parse().map_err(|_| Malformed::got(WHAT, bytes)),
            false => Err(Malformed::got(WHAT, bytes)),
        };
        Ok(Owner {
            uid: id(uid)?,
            gid: id(gid)?,
        })
    }
}

/// First argument of the env-enter helper.
pub const ENTER: &str = "env-enter";
/// Exit code of env-enter when it could not start the command (like `env`'s 125).
pub const ENTER_FAILED: u8 = 125;
/// The payload of the message that carries a terminal's master from env-enter.
pub const TTY_MASTER: &[u8] = b"t";

/// A message of the protocol: its encoding, and its decoding, which refuses anything else.
pub trait Message: Sized {
    /// The message's bytes (for a line protocol: without the newline).
    fn encode(&self) -> Vec<u8>;
    /// The message `bytes` encode, or why they do not encode one.
    fn decode(bytes: &[u8]) -> Result<Self, Malformed>;
}

/// Bytes that are not the message expected.
#[derive(Debug, thiserror::Error)]
#[error("malformed {what}: {detail}")]
pub struct Malformed {
    /// The message expected.
    pub what: &'static str,
    /// What was wrong (with what was received, cut short).
    pub detail: String,
}

impl Malformed {
    /// `bytes` are no `what`.
    fn got(what: &'static str, bytes: &[u8]) -> Malformed {
        let shown: String = String::from_utf8_lossy(bytes).chars().take(80).collect();
        Malformed {
            what,
            detail: format!("got {shown:?}"),
        }
    }
}

/// What the env-init helper is told at its spawn (with the fds of [`InitConfig::FDS`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitConfig {
    /// The env's hostname (its name).
    pub hostname: String,
    /// What the env's `/proc` views show: see [`ViewConfig`].
    pub views: ViewConfig,
}

impl InitConfig {
    /// The fds attached, in order: the exec service's listener, the env's memory cgroup
    /// directory (in the v1 `memory` hierarchy, or the v2 one) and its cgroup directory with
    /// its cpu time (v1 `cpuacct`, or the v2 one), both `O_PATH`.
    pub const FDS: usize = 3;
}

/// Where the env's `/proc` views and its cpus come from (`inside::views`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewConfig {
    /// Whether the cgroup directories sent with the config are cgroup v2's (`memory.max`,
    /// `cpu.stat`) or v1's.
    pub cgroup_v2: bool,
    /// The host cpus the env runs on (its cpu limit, rounded up); empty: all of the host's.
    pub cpus: Vec<usize>,
}

/// What the env-enter helper is told.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnterConfig {
    /// Host pid of the env's init.
    pub init_pid: i32,
    /// Its start time (guards against pid reuse).
    pub init_start: u64,
    /// `cgroup.procs` files to join.
    pub procs_files: Vec<PathBuf>,
    /// The command and its arguments.
    pub argv: Vec<String>,
    /// Its environment (besides the defaults, which these override).
    pub env: Vec<(String, String)>,
    /// Its working directory inside the env.
    pub cwd: String,
    /// Run on a new terminal of (rows, cols) whose master is sent over stdin.
    pub tty: Option<(u16, u16)>,
    /// Run as this user of the env instead of root.
    #[serde(default)]
    pub user: Option<Identity>,
    /// Run this built-in server of the helper instead of `argv` (which is then empty).
    #[serde(default)]
    pub builtin: Option<Builtin>,
}

/// The kernel's size of a terminal of [`EnterConfig::tty`]'s `(rows, cols)`.
pub fn winsize(rows: u16, cols: u16) -> rustix::termios::Winsize {
    rustix::termios::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// A server the env-enter helper runs itself, inside the env, on its stdin and stdout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Builtin {
    /// SFTP (`inside::sftp`).
    Sftp,
}

/// What a client asks the init's exec service to run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// The command and its arguments.
    pub argv: Vec<String>,
    /// Environment variables besides the defaults (which these override).
    pub env: Vec<(String, String)>,
    /// Working directory inside the env.
    pub cwd: String,
    /// Run as this user of the env instead of root.
    #[serde(default)]
    pub user: Option<Identity>,
    /// Run on a new terminal of (rows, cols) that the init opens; its master comes back with
    /// [`Reply::Started`], and the request carries no fds.
    #[serde(default)]
    pub tty: Option<(u16, u16)>,
}

/// The JSON messages.
macro_rules! json_message {
    ($type:ty, $what:literal) => {
        impl Message for $type {
            fn encode(&self) -> Vec<u8> {
                serde_json::to_vec(self).expect("plain data serializes")
            }
            fn decode(bytes: &[u8]) -> Result<Self, Malformed> {
                serde_json::from_slice(bytes).map_err(|e| Malformed {
                    what: $what,
                    detail: e.to_string(),
                })
            }
        }
    };
}
json_message!(InitConfig, "env-init config");
json_message!(EnterConfig, "env-enter config");
json_message!(Request, "exec request");

/// What env-init tells the host during a spawn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InitReport {
    /// It is in its new namespaces, waiting for its id maps ([`Mapped`]).
    Userns,
    /// It forked the init, whose host pid this is.
    Pid(i32),
    /// The init finished setting the env up and serves it.
    Ready,
    /// A step failed (the message names it); the spawn is over.
    Error(String),
}

/// The host's word to env-init that its ids are mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapped;

/// The host's go-ahead to env-init, with the env's root attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Go;

/// The init's answers to an exec request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// The command runs.
    Started,
    /// It could not be started (why).
    Error(String),
    /// It ended with this code (128 + N if killed by signal N).
    Exit(i32),
}

/// What a client may tell the init about its running command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// SIGKILL its process group.
    Kill,
    /// Send this signal (1–64) to its process group.
    Signal(i32),
}

/// `bytes` as text, or malformed `what`.
fn text<'a>(what: &'static str, bytes: &'a [u8]) -> Result<&'a str, Malformed> {
    std::str::from_utf8(bytes).map_err(|_| Malformed::got(what, bytes))
}

/// A number after `prefix` in `s` that `ok` accepts.
fn number(s: &str, prefix: &str, ok: impl Fn(i32) -> bool) -> Option<i32> {
    let digits = s.strip_prefix(prefix)?;
    let n: i32 = digits.parse().ok()?;
    (digits.bytes().all(|b| b.is_ascii_digit()) && ok(n)).then_some(n)
}

/// One line of text (a message of a line protocol carries no newline).
fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

impl Message for InitReport {
    fn encode(&self) -> Vec<u8> {
        match self {
            InitReport::Userns => "userns".into(),
            InitReport::Pid(pid) => format!("pid {pid}"),
            InitReport::Ready => "ready".into(),
            InitReport::Error(e) => format!("error {}", one_line(e)),
        }
        .into_bytes()
    }

    fn decode(bytes: &[u8]) -> Result<Self, Malformed> {
        const WHAT: &str = "report from env-init";
        let s = text(WHAT, bytes)?;
        match s {
            "userns" => Ok(InitReport::Userns),
            "ready" => Ok(InitReport::Ready),
            _ => match (s.strip_prefix("error "), number(s, "pid ", |p| p > 0)) {
                (Some(e), _) => Ok(InitReport::Error(e.into())),
                (None, Some(pid)) => Ok(InitReport::Pid(pid)),
                _ => Err(Malformed::got(WHAT, bytes)),
            },
        }
    }
}

/// A [`Message`] that is one fixed word (a unit struct).
macro_rules! word_message {
    ($type:ident, $word:literal, $what:literal) => {
        impl Message for $type {
            fn encode(&self) -> Vec<u8> {
                $word.to_vec()
            }
            fn decode(bytes: &[u8]) -> Result<Self, Malformed> {
                match bytes {
                    $word => Ok($type),
                    _ => Err(Malformed::got($what, bytes)),
                }
            }
        }
    };
}
word_message!(Mapped, b"mapped", "word from the spawner");
word_message!(Go, b"go", "go-ahead from the spawner");

impl Message for Reply {
    fn encode(&self) -> Vec<u8> {
        match self {
            Reply::Started => "started".into(),
            Reply::Error(e) => format!("error {e}"),
            Reply::Exit(code) => format!("exit {code}"),
        }
        .into_bytes()
    }

    fn decode(bytes: &[u8]) -> Result<Self, Malformed> {
        const WHAT: &str = "reply from the env's init";
        let s = text(WHAT, bytes)?;
        if s == "started" {
            return Ok(Reply::Started);
        }
        match (s.strip_prefix("error "), number(s, "exit ", |c| c >= 0)) {
            (Some(e), _) => Ok(Reply::Error(e.into())),
            (None, Some(code)) => Ok(Reply::Exit(code)),
            _ => Err(Malformed::got(WHAT, bytes)),
        }
    }
}

impl Message for Control {
    fn encode(&self) -> Vec<u8> {
        match self {
            Control::Kill => "kill".into(),
            Control::Signal(sig) => format!("signal {sig}"),
        }
        .into_bytes()
    }

    fn decode(bytes: &[u8]) -> Result<Self, Malformed> {
        const WHAT: &str = "control message";
        match text(WHAT, bytes)? {
            "kill" => Ok(Control::Kill),
            s => number(s, "signal ", |n| (1..=64).contains(&n))
                .map(Control::Signal)
                .ok_or_else(|| Malformed::got(WHAT, bytes)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `m` decodes from its own encoding to itself.
    fn round_trip<M: Message + PartialEq + std::fmt::Debug>(m: M) {
        let bytes = m.encode();
        assert!(!bytes.contains(&b'\n'), "{m:?} encodes a newline");
        assert_eq!(M::decode(&bytes).unwrap(), m);
    }

    #[test]
    fn every_message_round_trips() {
        let user = Identity {
            name: "bob".into(),
            uid: 1001,
            gid: 1001,
            groups: vec![1001, 27],
            home: "/home/bob".into(),
            shell: "/bin/sh".into(),
        };
        round_trip(InitConfig {
            hostname: "e".into(),
            views: ViewConfig {
                cgroup_v2: false,
                cpus: vec![1, 2],
            },
        });
        round_trip(EnterConfig {
            init_pid: 42,
            init_start: 7,
            procs_files: vec!["/sys/fs/cgroup/pids/x/cgroup.procs".into()],
            argv: vec!["sh".into(), "-c".into(), "echo \"hi\"\n".into()],
            env: vec![("A".into(), "b=c".into())],
            cwd: "/root".into(),
            tty: Some((24, 80)),
            user: Some(user.clone()),
            builtin: Some(Builtin::Sftp),
        });
        round_trip(Request {
            argv: vec!["true".into()],
            env: Vec::new(),
            cwd: "/".into(),
            user: Some(user),
            tty: Some((24, 80)),
        });
        for m in [
            InitReport::Userns,
            InitReport::Pid(1234),
            InitReport::Ready,
            InitReport::Error("mounting /proc: Operation not permitted".into()),
        ] {
            round_trip(m);
        }
        round_trip(Go);
        round_trip(Mapped);
        round_trip(Owner {
            uid: 200_000,
            gid: 100_000,
        });
        for m in [
            Reply::Started,
            Reply::Error("fork: out of memory".into()),
            Reply::Exit(0),
            Reply::Exit(137),
        ] {
            round_trip(m);
        }
        round_trip(Control::Kill);
        round_trip(Control::Signal(1));
        round_trip(Control::Signal(64));
    }

    #[test]
    fn malformed_messages_are_refused() {
        fn refused<M: Message + std::fmt::Debug>(bad: &[&[u8]]) {
            for b in bad {
                let got = M::decode(b);
                assert!(
                    got.is_err(),
                    "{:?} decoded to {got:?}",
                    String::from_utf8_lossy(b)
                );
            }
        }
        refused::<InitReport>(&[
            b"", b"user", b"pid", b"pid x", b"pid 0", b"pid -3", b"pid +3", b"pid 1 2", b"ready ",
            b"Ready", b"\xff",
        ]);
        refused::<Go>(&[b"", b"go ", b"stop", b"\xff"]);
        refused::<Mapped>(&[b"", b"mapped ", b"go", b"\xff"]);
        refused::<Owner>(&[b"", b"1", b"1:", b":1", b"1:2:3", b"-1:2", b"+1:2", b"1:x"]);
        refused::<Reply>(&[
            b"", b"start", b"exit", b"exit -1", b"exit 1x", b"err x", b"\xff",
        ]);
        refused::<Control>(&[
            b"",
            b"kill 9",
            b"signal",
            b"signal 0",
            b"signal 65",
            b"signal -9",
            b"signal x",
            b"signal +2",
            b"\xff",
        ]);
        refused::<InitConfig>(&[
            b"",
            b"{}",
            b"{\"hostname\":1,\"views\":{\"cgroup_v2\":false,\"cpus\":[]}}",
        ]);
        refused::<EnterConfig>(&[b"[]", b"{\"init_pid\":1}"]);
        refused::<Request>(&[b"null", b"{\"argv\":\"sh\",\"env\":[],\"cwd\":\"/\"}"]);
        let err = Control::decode(b"signal 99").unwrap_err();
        assert_eq!(
            err.to_string(),
            "malformed control message: got \"signal 99\""
        );
    }
}
