//! One SSH session channel: its setup requests (`pty-req`, `env`), then one of `shell`,
//! `exec` or `subsystem sftp`, run inside the user's env and bridged to the channel until the
//! command ends (exit status, EOF, close) or the client goes away (the command is killed).
//! Each such channel counts against the user's `[exec] max_per_user` (with their API execs)
//! while it lives; one past it gets one line and exit status 1.
//!
//! Requests are answered by the connection's handler ([`super::Conn`]), in order; this task
//! only acts on them. Which env: the login's `ENV` (spawned first for `ENV=NAME+USER`), or,
//! for a bare `USER`, their only env; with several, a shell on a terminal shows a numbered
//! menu to pick from, anything else gets a one-line message saying how to pick (as it does
//! with none). Who runs inside: the env's
//! `/etc/passwd` user of the same name if there is one (so an invited user is themselves),
//! otherwise root.

use super::agent::Agent;
use super::auth::Login;
use super::Steps;
use crate::bridge::{self, Fd};
use crate::Node;
use anyhow::{Context, Result};
use runtime::exec::{Builtin, Identity};
use runtime::tty::Tty;
use runtime::EnvState;
use russh::server::{Handle, Msg};
use russh::{Channel, ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use rustix::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Extended data type of stderr (RFC 4254, 5.2).
const STDERR: u32 = 1;

/// Exit status sent when the command's status is unknown (the env went away).
const LOST: u32 = 255;

/// How long a full input queue may stay full before the command is stopped (while it is full
/// the connection is not read, so nothing else on it moves either).
const STUCK: Duration = Duration::from_secs(60);

/// Whether a client may set environment variable `name` (`env` requests).
pub fn allowed_env(name: &str) -> bool {
    name == "LANG" || name == "TERM" || name == "COLORTERM" || name.starts_with("LC_")
}

/// What the client asked to run.
enum Program {
    Shell,
    Exec(String),
    Sftp,
}

/// A terminal asked for with `pty-req`.
struct PtyRequest {
    term: String,
    rows: u16,
    cols: u16,
}

/// The setup of a channel before it runs something.
struct Setup {
    program: Program,
    pty: Option<PtyRequest>,
    env: Vec<(String, String)>,
    /// The client asked for agent forwarding (and the node allows it).
    agent: bool,
}

/// Serves session channel `channel` of `login` until it ends; `handle` opens the channels of
/// a forwarded agent. `steps` are the connection's, for the debug line once the command runs.
pub async fn run(
    node: Arc<Node>,
    login: Arc<Login>,
    steps: Steps,
    channel: Channel<Msg>,
    handle: Handle,
) {
    let opened = Instant::now();
    let (mut rx, tx) = channel.split();
    let Some(mut setup) = setup(&mut rx).await else {
        return;
    };
    let requested = Instant::now();
    setup.agent &= node.config.ssh.forward_agent;
    // Counted with the user's API execs until the channel ends.
    let _slot = match node.execs.take(&login.user, node.config.exec.max_per_user) {
        Ok(slot) => slot,
        Err(e) => return fail(&tx, &format!("spawngrid: {}", e.message)).await,
    };
    if let Err(msg) = spawned(&node, &login).await {
        return fail(&tx, &msg).await;
    }
    let env = match &login.env {
        Some(env) => env.clone(),
        None => {
            let (n, user) = (node.clone(), login.user.clone());
            let envs = tokio::task::spawn_blocking(move || user_envs(&n, &user))
                .await
                .unwrap_or_else(|e| Err(format!("spawngrid: internal error: {e}")));
            let interactive = setup.pty.is_some() && matches!(setup.program, Program::Shell);
            match envs.map(|envs| pick(&node, &login.user, envs, interactive)) {
                Ok(Pick::One(env)) => env,
                Ok(Pick::Menu(envs)) => match menu(&mut rx, &tx, &envs, &mut setup).await {
                    Some(env) => env,
                    None => return finish(&tx, 1).await,
                },
                Ok(Pick::Refuse(msg)) | Err(msg) => return fail(&tx, &msg).await,
            }
        }
    };
    let picked = Instant::now();
    let (n, user) = (node.clone(), login.user.clone());
    let target = tokio::task::spawn_blocking(move || resolve(&n, &user, &env))
        .await
        .unwrap_or_else(|e| Err(format!("spawngrid: internal error: {e}")));
    let target = match target {
        Ok(t) => t,
        Err(msg) => return fail(&tx, &msg).await,
    };
    let agent = match setup.agent {
        true => match Agent::start(&target.st, target.who.as_ref(), handle) {
            Ok(a) => {
                setup.env.push(("SSH_AUTH_SOCK".into(), a.path()));
                Some(a)
            }
            Err(e) => {
                tracing::warn!(user = %login.user, "ssh agent forwarding: {e:#}");
                let msg = format!("spawngrid: no agent forwarding: {e:#}\r\n");
                let _ = tx.extended_data_bytes(STDERR, msg).await;
                None
            }
        },
        false => None,
    };
    let resolved = Instant::now();
    let started = match launch(&node, target, setup).await {
        Ok(s) => Started { agent, ..s },
        Err(e) => {
            tracing::warn!(user = %login.user, "ssh session: {e:#}");
            return fail(&tx, &format!("spawngrid: {e:#}")).await;
        }
    };
    let ms = |from: Option<Instant>, to: Option<Instant>| match (from, to) {
        (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64() * 1e3,
        _ => f64::NAN,
    };
    let now = Some(Instant::now());
    tracing::debug!(
        user = %login.user,
        kex_ms = ms(Some(steps.accepted), steps.kex),
        auth_ms = ms(steps.kex, steps.login),
        open_ms = ms(steps.login, Some(opened)),
        requests_ms = ms(Some(opened), Some(requested)),
        pick_ms = ms(Some(requested), Some(picked)),
        resolve_ms = ms(Some(picked), Some(resolved)),
        start_ms = ms(Some(resolved), now),
        total_ms = ms(Some(steps.accepted), now),
        "ssh session started"
    );
    bridge_channel(rx, tx, started).await;
}

/// The env a forward of `login` goes to: its `ENV`, or the user's only env; an error is the
/// one line for the client.
pub(super) async fn forward_env(node: &Arc<Node>, login: &Login) -> Result<EnvState, String> {
    spawned(node, login).await?;
    let (n, user, env) = (node.clone(), login.user.clone(), login.env.clone());
    tokio::task::spawn_blocking(move || {
        let env = match env {
            Some(env) => env,
            None => match pick(&n, &user, user_envs(&n, &user)?, false) {
                Pick::One(env) => env,
                Pick::Menu(_) => unreachable!("no menu without a terminal"),
                Pick::Refuse(msg) => return Err(msg),
            },
        };
        find(&n, &user, &env)
    })
    .await
    .unwrap_or_else(|e| Err(format!("spawngrid: internal error: {e}")))
}

/// Waits for the env the login spawns (`ENV=NAME+USER`), if it does; an error is the one
/// line for the client.
async fn spawned(node: &Arc<Node>, login: &Login) -> Result<(), String> {
    match (&login.spawn, &login.env) {
        (Some(spawn), Some(env)) => spawn.wait(node, &login.user, env).await,
        _ => Ok(()),
    }
}

/// Reads requests until one says what to run; `None` if the channel closed first.
async fn setup(rx: &mut ChannelReadHalf) -> Option<Setup> {
    let mut pty = None;
    let mut env = Vec::new();
    let mut agent = false;
    loop {
        let program = match rx.wait().await? {
            ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                ..
            } => {
                pty = Some(PtyRequest {
                    term,
                    rows: clamp(row_height, 24),
                    cols: clamp(col_width, 80),
                });
                continue;
            }
            ChannelMsg::SetEnv {
                variable_name,
                variable_value,
                ..
            } => {
                if allowed_env(&variable_name) && env.len() < 64 {
                    env.push((variable_name, variable_value));
                }
                continue;
            }
            ChannelMsg::AgentForward { .. } => {
                agent = true;
                continue;
            }
            ChannelMsg::RequestShell { .. } => Program::Shell,
            ChannelMsg::Exec { command, .. } => {
                Program::Exec(String::from_utf8_lossy(&command).into_owned())
            }
            ChannelMsg::RequestSubsystem { name, .. } if name == "sftp" => Program::Sftp,
            ChannelMsg::Close | ChannelMsg::Eof => return None,
            _ => continue,
        };
        return Some(Setup {
            program,
            pty,
            env,
            agent,
        });
    }
}

/// A terminal dimension from the client (0 means unknown).
fn clamp(v: u32, default: u16) -> u16 {
    match v {
        0 => default,
        v => v.min(u16::MAX as u32) as u16,
    }
}

/// Finds `user`'s env `env`, who runs inside and their shell (root's from the env's
/// `/etc/passwd` for root, else `/bin/sh`); an error is the one line for the client.
fn resolve(node: &Node, user: &str, env: &str) -> Result<Target, String> {
    let st = find(node, user, env)?;
    // Read once: a user the env has no account for runs as its root, with root's shell.
    let accounts = accounts(&st)?;
    let who = accounts.user(user);
    let shell = match &who {
        Some(id) => id.shell.clone(),
        None => accounts
            .user("root")
            .map_or_else(|| "/bin/sh".to_string(), |root| root.shell),
    };
    Ok(Target { st, who, shell })
}

/// `user`'s running env `env`; an error is the one line for the client.
fn find(node: &Node, user: &str, env: &str) -> Result<EnvState, String> {
    let st = crate::envs::load_own(node, user, env).map_err(|e| match e.kind {
        // On another node of the grid: the line says where.
        crate::error::Kind::Misdirected => format!("spawngrid: {}", e.message),
        _ => format!(
            "spawngrid: you have no env {env} on this node (spawn it with `spawngrid spawn NAME`)"
        ),
    })?;
    if !st.alive() {
        return Err(format!(
            "spawngrid: env {env} is not running: boom it (`spawngrid boom {env}`) and spawn again"
        ));
    }
    Ok(st)
}

/// The accounts of env `st` (its `/etc/passwd` and `/etc/group`); an error is the one line
/// for the client.
pub(super) fn accounts(st: &EnvState) -> Result<runtime::exec::Accounts, String> {
    let env = crate::envs::user_env_name(st, &st.owner);
    runtime::exec::Accounts::read(st).map_err(|e| format!("spawngrid: env {env}: {e:#}"))
}

/// Where a session runs: the env, who inside (root if `None`), and their login shell.
struct Target {
    st: EnvState,
    who: Option<Identity>,
    shell: String,
}

/// The names of `user`'s envs on this node; an error is the one line for the client.
fn user_envs(node: &Node, user: &str) -> Result<Vec<String>, String> {
    let host = node.config.public_host.as_deref().unwrap_or(&node.name);
    let envs = crate::envs::list(node, user, host).map_err(|e| format!("spawngrid: {e}"))?;
    Ok(envs.into_iter().map(|e| e.env).collect())
}

/// How the env of a login without one is found.
enum Pick {
    /// The user's only env.
    One(String),
    /// Several: the user picks one from a menu on their terminal.
    Menu(Vec<String>),
    /// None, or several and no terminal to ask on: the one line for the client.
    Refuse(String),
}

/// Picks among `user`'s `envs` (`interactive`: a shell on a terminal can ask).
fn pick(node: &Node, user: &str, envs: Vec<String>, interactive: bool) -> Pick {
    let host = node.config.public_host.as_deref().unwrap_or(&node.name);
    match envs.len() {
        1 => Pick::One(envs.into_iter().next().expect("one env")),
        0 => Pick::Refuse(
            "spawngrid: you have no env on this node (spawn one with `spawngrid spawn NAME`)"
                .into(),
        ),
        _ if interactive => Pick::Menu(envs),
        n => Pick::Refuse(format!(
            "spawngrid: you have {n} envs on this node ({}): pick one with `ssh -p {} ENV+{user}@{host}`",
            envs.join(", "),
            node.config.ssh_port
        )),
    }
}

/// The env a choice names: its number in the menu (from 1) or its name.
fn chosen(line: &str, envs: &[String]) -> Option<String> {
    let line = line.trim();
    match line.parse::<usize>() {
        Ok(i) if (1..=envs.len()).contains(&i) => Some(envs[i - 1].clone()),
        _ => envs.iter().find(|e| *e == line).cloned(),
    }
}

/// Shows the numbered `envs` on the client's terminal and reads a choice (a number or a
/// name, then Enter), echoing what is typed (the client's terminal is raw); asks again after
/// a wrong one. `None` when the user cancels (^C, ^D) or the channel ends. Window changes
/// meanwhile update the terminal size the session will start with.
async fn menu(
    rx: &mut ChannelReadHalf,
    tx: &ChannelWriteHalf<Msg>,
    envs: &[String],
    setup: &mut Setup,
) -> Option<String> {
    let mut text = String::from("spawngrid: you have several envs on this node:\r\n");
    for (i, e) in envs.iter().enumerate() {
        text.push_str(&format!("  {}) {e}\r\n", i + 1));
    }
    tx.data_bytes(text).await.ok()?;
    let mut line = String::new();
    tx.data_bytes("env (number or name): ").await.ok()?;
    loop {
        let data = match rx.wait().await? {
            ChannelMsg::Data { data } => data,
            ChannelMsg::WindowChange {
                col_width,
                row_height,
                ..
            } => {
                if let Some(p) = &mut setup.pty {
                    (p.rows, p.cols) = (clamp(row_height, p.rows), clamp(col_width, p.cols));
                }
                continue;
            }
            ChannelMsg::Eof | ChannelMsg::Close => return None,
            _ => continue,
        };
        let mut echo = Vec::new();
        for &b in data.iter() {
            match b {
                b'\r' | b'\n' => {
                    tx.data_bytes(echo).await.ok()?;
                    tx.data_bytes("\r\n").await.ok()?;
                    if let Some(env) = chosen(&line, envs) {
                        return Some(env);
                    }
                    let msg = format!("spawngrid: no env {line:?}\r\nenv (number or name): ");
                    tx.data_bytes(msg).await.ok()?;
                    line.clear();
                    echo = Vec::new();
                }
                3 | 4 => {
                    echo.extend_from_slice(b"^C\r\n");
                    tx.data_bytes(echo).await.ok()?;
                    return None;
                }
                0x7f | 8 if line.pop().is_some() => echo.extend_from_slice(b"\x08 \x08"),
                0x20..=0x7e if line.len() < 64 => {
                    line.push(b as char);
                    echo.push(b);
                }
                _ => {}
            }
        }
        tx.data_bytes(echo).await.ok()?;
    }
}

/// Sends `msg` on stderr, exit status 1, and closes.
async fn fail(tx: &ChannelWriteHalf<Msg>, msg: &str) {
    let _ = tx.extended_data_bytes(STDERR, format!("{msg}\r\n")).await;
    finish(tx, 1).await;
}

/// Sends the exit status, EOF and close.
async fn finish(tx: &ChannelWriteHalf<Msg>, code: u32) {
    let _ = tx.exit_status(code).await;
    let _ = tx.eof().await;
    let _ = tx.close().await;
}

/// How a running command is stopped when the client goes away.
enum Stop {
    /// Through the env's init (kills the process group).
    Service(Arc<runtime::service::Started>),
    /// By closing its input: a terminal's master (the session gets SIGHUP), the SFTP
    /// server's stdin (it ends).
    HangUp,
}

/// A command running for a channel.
struct Started {
    /// Where the client's data goes (closed on the client's EOF).
    input: Fd,
    /// Output fds and their extended data type (`None`: stdout).
    outputs: Vec<(Fd, Option<u32>)>,
    /// The terminal's master, for window changes.
    master: Option<Fd>,
    /// The command's exit code.
    wait: JoinHandle<Result<i32>>,
    stop: Stop,
    /// The env counts as in use (never evicted) while this lives.
    _busy: crate::capacity::Session,
    /// The session's forwarded agent, removed before the client hears the end.
    agent: Option<Agent>,
}

/// Starts the setup's program in the target env as its user.
async fn launch(node: &Arc<Node>, target: Target, setup: Setup) -> Result<Started> {
    let Target { st, who, shell } = target;
    let busy = node.activity.session(&st.name);
    let argv: Vec<String> = match setup.program {
        Program::Shell => vec![shell, "-l".into()],
        Program::Exec(cmd) => vec![shell, "-c".into(), cmd],
        Program::Sftp => return launch_sftp(node, st, who, busy).await,
    };
    let mut env = setup.env;
    let node = node.clone();
    match setup.pty {
        Some(pty) => {
            env.retain(|(k, _)| k != "TERM");
            env.push(("TERM".into(), pty.term));
            // The env's init opens the terminal and forks the command: no helper process.
            // An init older than terminal requests refuses; env-enter then does it.
            let started = tokio::task::spawn_blocking(move || {
                let (rt, who, (rows, cols)) = (&node.rt, who.as_ref(), (pty.rows, pty.cols));
                runtime::service::start_tty_as(rt, &st, &argv, &env, who, rows, cols)
                    .map(|(started, master)| (master, Ok(started)))
                    .or_else(|e| {
                        tracing::debug!("a terminal from the env's init: {e:#}; trying env-enter");
                        let tty = Tty::spawn_as(rt, &st, &argv, &env, who, rows, cols)?;
                        let (master, cmd) = tty.into_parts();
                        anyhow::Ok((master, Err(cmd)))
                    })
            })
            .await??;
            let master = bridge::register(started.0).context("registering the terminal")?;
            let wait = match started.1 {
                Ok(started) => exit_code(started)?.1,
                Err(cmd) => tokio::spawn(crate::pty::exited(cmd)?),
            };
            Ok(Started {
                input: master.clone(),
                outputs: vec![(master.clone(), None)],
                master: Some(master),
                // The command's exit is awaited on the init's connection, which the wait
                // task holds: the command is left to its terminal's hang-up.
                wait,
                stop: Stop::HangUp,
                _busy: busy,
                agent: None,
            })
        }
        None => {
            let [(in_r, in_w), (out_r, out_w), (err_r, err_w)] = stdio_pipes()?;
            let started = tokio::task::spawn_blocking(move || {
                let stdio = [in_r.as_fd(), out_w.as_fd(), err_w.as_fd()];
                runtime::service::start_as(&node.rt, &st, &argv, &env, stdio, who.as_ref())
            })
            .await??;
            let (started, wait) = exit_code(started)?;
            Ok(Started {
                input: reg(in_w)?,
                outputs: vec![(reg(out_r)?, None), (reg(err_r)?, Some(STDERR))],
                master: None,
                wait,
                stop: Stop::Service(started),
                _busy: busy,
                agent: None,
            })
        }
    }
}

/// A command started through the env's init, shared, and the task that awaits its exit code
/// (on its connection to the init: no thread waits meanwhile).
fn exit_code(
    started: runtime::service::Started,
) -> Result<(Arc<runtime::service::Started>, JoinHandle<Result<i32>>)> {
    let conn = started
        .as_fd()
        .try_clone_to_owned()
        .context("duplicating the exec connection")?;
    let started = Arc::new(started);
    let s = started.clone();
    let wait = tokio::spawn(async move {
        bridge::readable(conn).await?;
        Ok(s.wait()?)
    });
    Ok((started, wait))
}

fn reg(fd: OwnedFd) -> Result<Fd> {
    bridge::register(fd).context("registering a pipe")
}

/// Three pipes (read end, write end) for a command's stdin, stdout and stderr.
fn stdio_pipes() -> Result<[(OwnedFd, OwnedFd); 3]> {
    let pipe =
        || rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).context("making a pipe");
    Ok([pipe()?, pipe()?, pipe()?])
}

/// Starts the built-in SFTP server (`runtime::sftp`) inside the env as its user, through the
/// env-enter helper, on pipes.
async fn launch_sftp(
    node: &Arc<Node>,
    st: EnvState,
    who: Option<Identity>,
    busy: crate::capacity::Session,
) -> Result<Started> {
    let [(in_r, in_w), (out_r, out_w), (err_r, err_w)] = stdio_pipes()?;
    let node = node.clone();
    let mut child = tokio::task::spawn_blocking(move || {
        runtime::exec::builtin_command(&node.rt, &st, Builtin::Sftp, who.as_ref())?
            .stdin(in_r)
            .stdout(out_w)
            .stderr(err_w)
            .spawn()
            .context("starting env-enter")
    })
    .await??;
    let pid = child.id();
    Ok(Started {
        input: reg(in_w)?,
        outputs: vec![(reg(out_r)?, None), (reg(err_r)?, Some(STDERR))],
        master: None,
        wait: tokio::spawn(crate::pty::exited_with(pid, move || {
            let status = child.wait().context("waiting for env-enter")?;
            Ok(status.code().unwrap_or(LOST as i32))
        })?),
        stop: Stop::HangUp,
        _busy: busy,
        agent: None,
    })
}

/// How a channel's bridging ended.
enum End {
    /// The command exited (its exit code, or why it is unknown).
    Exited(Result<Result<i32>, tokio::task::JoinError>),
    /// The client closed the channel or the connection.
    ClientGone,
    /// The command left a full input queue unread for [`STUCK`].
    Stuck,
}

/// The number of an SSH signal name (RFC 4254 names, plus any Linux signal by name).
fn signal_number(sig: &russh::Sig) -> Option<i32> {
    use russh::Sig;
    Some(match sig {
        Sig::ABRT => libc::SIGABRT,
        Sig::ALRM => libc::SIGALRM,
        Sig::FPE => libc::SIGFPE,
        Sig::HUP => libc::SIGHUP,
        Sig::ILL => libc::SIGILL,
        Sig::INT => libc::SIGINT,
        Sig::KILL => libc::SIGKILL,
        Sig::PIPE => libc::SIGPIPE,
        Sig::QUIT => libc::SIGQUIT,
        Sig::SEGV => libc::SIGSEGV,
        Sig::TERM => libc::SIGTERM,
        Sig::USR1 => libc::SIGUSR1,
        Sig::Custom(name) => match name.as_str() {
            "USR2" => libc::SIGUSR2,
            "CONT" => libc::SIGCONT,
            "STOP" => libc::SIGSTOP,
            "TSTP" => libc::SIGTSTP,
            "WINCH" => libc::SIGWINCH,
            _ => return None,
        },
    })
}

/// Delivers a client's `signal` request: to the terminal's foreground process group, or to
/// the command's process group through the env's init.
fn deliver(sig: &russh::Sig, master: Option<&Fd>, stop: &Stop) {
    let Some(n) = signal_number(sig) else {
        tracing::debug!(?sig, "ignoring an unknown signal");
        return;
    };
    let sent = match (master, stop) {
        (Some(m), _) => rustix::termios::tcgetpgrp(m.get_ref())
            .map_err(anyhow::Error::from)
            .and_then(|pg| {
                // SAFETY: kill(2) on plain integers; the group is the terminal's, in the env.
                match unsafe { libc::kill(-pg.as_raw_nonzero().get(), n) } {
                    0 => Ok(()),
                    _ => Err(std::io::Error::last_os_error().into()),
                }
            }),
        (None, Stop::Service(s)) => s.signal(n).map_err(Into::into),
        (None, Stop::HangUp) => Ok(()),
    };
    if let Err(e) = sent {
        tracing::debug!(?sig, "delivering a signal: {e:#}");
    }
}

/// Moves data both ways until the command ends or the client goes away.
async fn bridge_channel(mut rx: ChannelReadHalf, tx: ChannelWriteHalf<Msg>, started: Started) {
    let Started {
        input,
        outputs,
        master,
        wait,
        stop,
        _busy,
        agent,
    } = started;
    let (exited_tx, exited) = watch::channel(false);
    let pumps: Vec<JoinHandle<()>> = outputs
        .into_iter()
        .map(|(fd, ext)| tokio::spawn(bridge::pump(fd, tx.make_writer_ext(ext), exited.clone())))
        .collect();
    let stop_pumps: Vec<_> = pumps.iter().map(|p| p.abort_handle()).collect();
    let (mut input, feeder) = bridge::Input::start(input);
    let ended = async move {
        let code = wait.await;
        let _ = exited_tx.send(true);
        for p in pumps {
            let _ = p.await;
        }
        code
    };
    tokio::pin!(ended);
    let end = loop {
        tokio::select! {
            code = &mut ended => break End::Exited(code),
            msg = rx.wait(), if !input.full() => match msg {
                Some(ChannelMsg::Data { data }) => input.send(data),
                // A terminal has no end of input of its own: the shell reads ^D for that.
                Some(ChannelMsg::Eof) if master.is_none() => input.close(),
                Some(ChannelMsg::WindowChange { col_width, row_height, .. }) => {
                    if let Some(m) = &master {
                        let _ = runtime::tty::resize(m.get_ref(), clamp(row_height, 24), clamp(col_width, 80));
                    }
                }
                Some(ChannelMsg::Signal { signal }) => deliver(&signal, master.as_ref(), &stop),
                Some(ChannelMsg::Close) | None => break End::ClientGone,
                Some(_) => {}
            },
            moved = tokio::time::timeout(STUCK, input.drained()), if input.full() => {
                if moved.is_err() {
                    break End::Stuck;
                }
            }
        }
    };
    let code = match end {
        End::Exited(code) => {
            feeder.abort();
            match code {
                Ok(Ok(c)) => c.clamp(0, 255) as u32,
                Ok(Err(e)) => {
                    let msg = format!("spawngrid: {e:#}\r\n");
                    let _ = tx.extended_data_bytes(STDERR, msg).await;
                    LOST
                }
                Err(_) => LOST,
            }
        }
        End::ClientGone | End::Stuck => {
            // Stop the command, then reap it. For a terminal, the last reference to its master
            // goes with the tasks, which hangs it up. Dropping the channel's reader frees the
            // connection if it was held up by a full queue.
            drop((rx, input));
            feeder.abort();
            stop_pumps.iter().for_each(|p| p.abort());
            drop(master);
            if let Stop::Service(s) = &stop {
                let _ = s.kill();
            }
            let _ = ended.await;
            if matches!(end, End::ClientGone) {
                return;
            }
            let msg = format!(
                "spawngrid: the command left {} MiB of input unread for {} s: stopped\r\n",
                bridge::MAX_QUEUED >> 20,
                STUCK.as_secs()
            );
            let _ = tx.extended_data_bytes(STDERR, msg).await;
            LOST
        }
    };
    drop(agent);
    finish(&tx, code).await;
    drop(stop);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_harmless_variables_are_taken() {
        for ok in ["LANG", "LC_ALL", "LC_CTYPE", "TERM", "COLORTERM"] {
            assert!(allowed_env(ok), "{ok}");
        }
        for bad in ["PATH", "LD_PRELOAD", "HOME", "BASH_ENV", "lang", ""] {
            assert!(!allowed_env(bad), "{bad}");
        }
    }

    #[test]
    fn terminal_sizes_default_and_saturate() {
        assert_eq!(
            (clamp(0, 24), clamp(50, 24), clamp(1 << 20, 80)),
            (24, 50, u16::MAX)
        );
    }
}
