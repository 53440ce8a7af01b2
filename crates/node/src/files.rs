//! `spawngrid cp` on the node: tar streams in and out of a user's env, run by `tar` inside the
//! env (root inside, so confined to the env like anything else that runs there).
//!
//! - `GET /api/envs/{env}/files?path=P` ([`get`]): a tar of P with one top-level entry, P's
//!   last component (`tar -cf - -- NAME` in P's directory), streamed as tar writes it.
//! - `PUT /api/envs/{env}/files?path=P` ([`put`]): the body is a tar. If P is a directory,
//!   the archive's entries go into it; otherwise P's parent must be a directory and the
//!   archive's one top-level entry becomes P. Files are owned by root inside (`tar -xo`);
//!   modes and mtimes are kept, directories' too (see [`filter`]).
//!
//! Both stream (no body is held whole) and stop at the node's `max_copy` bytes. The upload is
//! passed through [`filter`] on its way to tar, which refuses absolute names, `..` and names
//! below a symlink of the same archive, whatever tar the env has.

use crate::error::{Error, Kind};
use crate::http::{blocking, env_param, ok, AuthUser};
use crate::{envs, Node};
use axum::body::{Body, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use rustix::fd::{AsFd, OwnedFd};
use std::io::{self, Read};
use std::sync::Arc;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

mod tarfilter;
pub use tarfilter::{clean_name, filter, FilterError, MAX_KEPT, MAX_META};

/// `sh -c` script of a download, with $1 = directory, $2 = name: exit 3 if either is missing.
const TAR_OUT: &str = r#"cd -- "$1" 2>/dev/null || exit 3
[ -e "$2" ] || [ -L "$2" ] || exit 3
exec tar -cf - -- "$2""#;

/// `sh -c` script of an upload's destination check, with $1 = path, $2 = its parent: 0 if
/// the path is a directory, else 10 if the parent is one, 11 if the parent is missing, 12 if
/// the parent is not a directory.
const PROBE: &str = r#"[ -d "$1" ] && exit 0
[ -d "$2" ] && exit 10
[ -e "$2" ] && exit 12
exit 11"#;

/// `sh -c` script of an upload, with $1 = directory: extract stdin there, owned by root.
const TAR_IN: &str = r#"cd -- "$1" && exec tar -xof -"#;

/// Exit code of [`TAR_OUT`] for a missing path.
const MISSING: i32 = 3;

/// How much of tar's stderr is kept for an error message.
const MAX_STDERR: usize = 4096;

/// Splits a path in the env into the directory to run tar in and the entry's name: trailing
/// slashes dropped; `/` is (`/`, `.`); a name without a slash is in `.` (`/root` for tar,
/// which runs there); the empty path is `.` itself. A last component `..` is refused.
pub fn split_path(path: &str) -> Result<(String, String), String> {
    let trimmed = path.trim_end_matches('/');
    let (dir, name) = match trimmed.rsplit_once('/') {
        _ if trimmed.is_empty() && path.starts_with('/') => ("/", "."),
        _ if trimmed.is_empty() => (".", "."),
        Some(("", name)) => ("/", name),
        Some((dir, name)) => (dir, name),
        None => (".", trimmed),
    };
    if name == ".." {
        return Err(format!(
            "path {path:?} ends in ..: name the directory itself"
        ));
    }
    Ok((dir.to_string(), name.to_string()))
}

/// The query's path, split, or 400.
fn query_path(
    query: Result<Query<api::FilesQuery>, QueryRejection>,
) -> Result<(String, String, String), Error> {
    let Query(q) = query.map_err(|e| Error::invalid(format!("bad query: {e}")))?;
    if q.path.contains('\0') {
        return Err(Error::invalid("path must not contain NUL bytes"));
    }
    let (dir, name) = split_path(&q.path).map_err(Error::invalid)?;
    Ok((q.path, dir, name))
}

/// The user's running env, or 404/409.
async fn running_env(
    node: &Arc<Node>,
    user: String,
    env: String,
) -> Result<runtime::EnvState, Error> {
    let node = node.clone();
    blocking(move || {
        let st = envs::load_own(&node, &user, &env)?;
        if !st.alive() {
            return Err(Error::conflict(format!(
                "env {env} is not running: boom it"
            )));
        }
        Ok(st)
    })
    .await
}

/// A command started in an env with pipes: its exit code and stderr come later.
struct Started {
    /// The exit code (from a blocking wait).
    exit: JoinHandle<anyhow::Result<i32>>,
    /// The first [`MAX_STDERR`] bytes of its stdout/stderr, as text.
    stderr: JoinHandle<String>,
}

impl Started {
    /// Starts `argv` in `st` with the given stdin and stdout, and stderr on a pipe of ours.
    async fn start(
        node: &Arc<Node>,
        st: &runtime::EnvState,
        argv: Vec<String>,
        stdin: OwnedFd,
        stdout: Option<OwnedFd>,
    ) -> Result<Started, Error> {
        let (err_r, err_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| Error::internal(&anyhow::anyhow!("making a pipe: {e}")))?;
        let busy = node.activity.session(&st.name);
        let (node, st) = (node.clone(), st.clone());
        let started = blocking(move || {
            let out = stdout.as_ref().map_or(err_w.as_fd(), |o| o.as_fd());
            runtime::service::start(
                &node.rt,
                &st,
                &argv,
                &[],
                [stdin.as_fd(), out, err_w.as_fd()],
            )
            .map_err(|e| Error::internal(&anyhow::Error::new(e).context("starting tar in the env")))
        })
        .await?;
        // The env counts as in use until the copy's tar exits.
        let exit = tokio::task::spawn_blocking(move || {
            let _busy = busy;
            Ok(started.wait()?)
        });
        let mut err = pipe::Receiver::from_owned_fd(err_r)
            .map_err(|e| Error::internal(&anyhow::anyhow!("watching tar's stderr: {e}")))?;
        let stderr = tokio::spawn(async move {
            let (mut kept, mut buf) = (Vec::new(), vec![0u8; 4096]);
            while let Ok(n @ 1..) = err.read(&mut buf).await {
                let room = MAX_STDERR.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            let text = String::from_utf8_lossy(&kept);
            text.split_whitespace().collect::<Vec<_>>().join(" ")
        });
        Ok(Started { exit, stderr })
    }

    /// Waits for the exit code and the message.
    async fn finish(self) -> (i32, String) {
        let code = match self.exit.await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                tracing::warn!("waiting for tar in an env: {e:#}");
                -1
            }
            Err(_) => -1,
        };
        (code, self.stderr.await.unwrap_or_default())
    }
}

/// The error for tar failing in env `env` with `code` and `stderr`.
fn tar_failed(env: &str, code: i32, stderr: &str) -> Error {
    match code {
        127 => Error::conflict(format!(
            "env {env} has no tar (cp runs tar inside the env): install it there"
        )),
        _ => Error::conflict(format!(
            "tar in env {env} failed (exit {code}): {}",
            if stderr.is_empty() {
                "no message"
            } else {
                stderr
            }
        )),
    }
}

/// `GET /api/envs/{env}/files?path=P`: a tar of P, streamed.
#[utoipa::path(
    get,
    path = api::routes::FILES,
    operation_id = "copy_out",
    params(api::openapi::EnvPath, api::FilesQuery),
    summary = "a tar stream of a file or directory in the env",
    description = "The archive holds one top-level entry, the path's last component (directories \
        recursively; modes and mtimes kept; symlinks as symlinks). It is streamed as tar inside \
        the env writes it; a failure after the first bytes (tar failing, or more than the node's \
        max_copy bytes) ends the stream early, without the tar end blocks.",
    responses(
        (status = 200, body = api::openapi::Tar, content_type = "application/x-tar",
            description = "the archive"),
        (status = 404, description = "no such env, or no such file or directory in it"),
        (status = 409, description = "the env is not running, or has no tar"),
    ),
)]
pub async fn get(
    State(node): State<Arc<Node>>,
    AuthUser(user): AuthUser,
    env: Result<Path<String>, PathRejection>,
    query: Result<Query<api::FilesQuery>, QueryRejection>,
) -> Result<Response, Error> {
    let env = env_param(env)?;
    let (path, dir, name) = query_path(query)?;
    let st = running_env(&node, user, env.clone()).await?;
    let pipe = || {
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| Error::internal(&anyhow::anyhow!("making a pipe: {e}")))
    };
    let (out_r, out_w) = pipe()?;
    let null = rustix::fs::open(
        "/dev/null",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| Error::internal(&anyhow::anyhow!("opening /dev/null: {e}")))?;
    let argv = ["sh", "-c", TAR_OUT, "sh", &dir, &name].map(String::from);
    let started = Started::start(&node, &st, argv.to_vec(), null, Some(out_w)).await?;
    let mut out = pipe::Receiver::from_owned_fd(out_r)
        .map_err(|e| Error::internal(&anyhow::anyhow!("reading tar's output: {e}")))?;
    let mut first = vec![0u8; 64 << 10];
    let n = out.read(&mut first).await.unwrap_or(0);
    if n == 0 {
        let (code, stderr) = started.finish().await;
        return Err(match code {
            MISSING => Error::not_found(format!("no such file or directory in env {env}: {path}")),
            _ => tar_failed(&env, code, &stderr),
        });
    }
    first.truncate(n);
    tracing::info!(env = %st.name, path = %path, "copying out");
    let stream = Download {
        out,
        first: Some(Bytes::from(first)),
        sent: n as u64,
        limit: node.config.max_copy_bytes(),
        started: Some(started),
        env: st.name.clone(),
    };
    let body = Body::from_stream(futures_util::stream::unfold(stream, Download::next));
    Ok(([(header::CONTENT_TYPE, "application/x-tar")], body).into_response())
}

/// A download's body in flight.
struct Download {
    out: pipe::Receiver,
    first: Option<Bytes>,
    sent: u64,
    limit: u64,
    /// Taken once the output ends.
    started: Option<Started>,
    env: String,
}

impl Download {
    /// The next piece of the archive; an error ends the body early (the client sees a cut
    /// stream), which is all HTTP/1.1 can say once the status is sent.
    async fn next(mut self) -> Option<(io::Result<Bytes>, Download)> {
        if let Some(b) = self.first.take() {
            return Some((Ok(b), self));
        }
        // Ended (finished, or failed and said so).
        self.started.as_ref()?;
        let mut buf = vec![0u8; 64 << 10];
        match self.out.read(&mut buf).await {
            Ok(0) => {
                let (code, stderr) = self.started.take()?.finish().await;
                if code == 0 {
                    return None;
                }
                tracing::warn!(env = %self.env, code, "copy out: tar failed: {stderr}");
                Some((Err(io::Error::other("tar failed in the env")), self))
            }
            Ok(n) => {
                self.sent += n as u64;
                if self.sent > self.limit {
                    tracing::warn!(env = %self.env, limit = self.limit, "copy out: over max_copy");
                    self.started = None;
                    return Some((Err(io::Error::other("over the node's max_copy")), self));
                }
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), self))
            }
            Err(e) => {
                self.started = None;
                Some((Err(e), self))
            }
        }
    }
}

/// `PUT /api/envs/{env}/files?path=P`: extracts the body (a tar) into the env.
#[utoipa::path(
    put,
    path = api::routes::FILES,
    operation_id = "copy_in",
    params(api::openapi::EnvPath, api::FilesQuery),
    summary = "extract a tar stream into the env",
    description = "If path is a directory, the archive's entries are extracted into it. Otherwise \
        path's parent must be a directory and the archive must hold one top-level entry, which \
        becomes path. Entries are checked as they stream: an absolute name, a .. component, or a \
        name below a symlink of the archive ends the copy (400) and nothing more is extracted. \
        Files are owned by root inside; modes and mtimes are kept (directories' too). At most the \
        node's max_copy bytes (default 1 GiB). Send Expect: 100-continue to hear about a bad env \
        or destination before sending the body.",
    request_body(content = api::openapi::Tar, content_type = "application/x-tar"),
    responses(
        (status = 200, description = "extracted", body = api::FilesResponse),
        (status = 400, description = "a bad query, a malformed archive, or an unsafe entry \
            (absolute, .., below a symlink)"),
        (status = 404, description = "no such env, or no such destination directory"),
        (status = 409, description = "the env is not running or has no tar, the destination's \
            parent is not a directory, or tar inside failed (its message)"),
        (status = 413, description = "the archive is over the node's max_copy bytes"),
    ),
)]
pub async fn put(
    State(node): State<Arc<Node>>,
    AuthUser(user): AuthUser,
    env: Result<Path<String>, PathRejection>,
    query: Result<Query<api::FilesQuery>, QueryRejection>,
    body: Body,
) -> Result<Response, Error> {
    let env = env_param(env)?;
    let (path, parent, name) = query_path(query)?;
    let st = running_env(&node, user, env.clone()).await?;
    // Where the archive goes, decided before the body is read (so a client that sent
    // `Expect: 100-continue` hears of a bad destination before sending anything).
    let argv = ["sh", "-c", PROBE, "sh", &path, &parent].map(String::from);
    let probe = crate::exec::run(&node.rt, st.clone(), argv.to_vec(), None, None).await?;
    let (dir, rename) = match probe.exit_code {
        0 => (path.clone(), None),
        10 if path.ends_with('/') => {
            return Err(Error::not_found(format!(
                "no such directory in env {env}: {path}"
            )))
        }
        10 => (parent, Some(name)),
        11 => {
            return Err(Error::not_found(format!(
                "no such directory in env {env}: {parent}"
            )))
        }
        12 => {
            return Err(Error::conflict(format!(
                "not a directory in env {env}: {parent}"
            )))
        }
        code => return Err(tar_failed(&env, code, "checking the destination failed")),
    };
    let (in_r, in_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| Error::internal(&anyhow::anyhow!("making a pipe: {e}")))?;
    let argv = ["sh", "-c", TAR_IN, "sh", &dir].map(String::from);
    let started = Started::start(&node, &st, argv.to_vec(), in_r, None).await?;
    tracing::info!(env = %st.name, path = %path, "copying in");
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, String>>(8);
    let filtered = tokio::task::spawn_blocking(move || {
        let reader = ChannelReader {
            rx,
            buf: Bytes::new(),
        };
        filter(reader, std::fs::File::from(in_w), rename.as_deref())
    });
    let limit = node.config.max_copy_bytes();
    let (mut received, mut refused, mut draining) = (0u64, None, false);
    let mut body = body;
    let pause = node.config.connections.body();
    loop {
        let Ok(next) = tokio::time::timeout(pause, body.frame()).await else {
            refused = Some(Error::invalid(format!(
                "the upload paused for more than {} s (the node's body_timeout)",
                pause.as_secs()
            )));
            break;
        };
        let Some(frame) = next else { break };
        let data = match frame {
            Ok(f) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
            Err(e) => {
                refused = Some(Error::invalid(format!("the upload broke off: {e}")));
                break;
            }
        };
        received += data.len() as u64;
        if received > limit {
            refused = Some(Error::new(
                Kind::TooLarge,
                format!("the archive is over the node's copy limit of {limit} bytes (max_copy)"),
            ));
            break;
        }
        // Once the filter or tar stopped early, the rest is read and dropped (up to the limit):
        // a client still sending would otherwise see its connection reset, not the answer.
        if !draining && tx.send(Ok(data)).await.is_err() {
            draining = true;
        }
    }
    if refused.is_some() {
        // The filter must fail (not end the archive cleanly) so tar keeps nothing more.
        let _ = tx.send(Err("the upload was refused".into())).await;
    }
    drop(tx);
    let filtered = filtered
        .await
        .map_err(|e| Error::internal(&anyhow::anyhow!("the archive filter failed: {e}")))?;
    let (code, stderr) = started.finish().await;
    if let Some(e) = refused {
        return Err(e);
    }
    match filtered {
        Err(FilterError::Refused(m)) => return Err(Error::invalid(m)),
        _ if code != 0 => return Err(tar_failed(&env, code, &stderr)),
        Err(FilterError::Output(e)) => {
            return Err(Error::internal(&anyhow::anyhow!(
                "tar in env {env} stopped reading the archive: {e}"
            )))
        }
        Ok(()) => {}
    }
    Ok(ok(&api::FilesResponse {
        env,
        path,
        bytes: received,
    }))
}

/// A `Read` over the body pieces the async side sends; an `Err` piece fails the read.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Result<Bytes, String>>,
    buf: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.buf.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(b)) => self.buf = b,
                Some(Err(e)) => return Err(io::Error::other(e)),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf[..n]);
        self.buf = self.buf.slice(n..);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_directory_and_name() {
        let s = |p: &str| split_path(p).map(|(d, n)| format!("{d}|{n}"));
        assert_eq!(s("/etc/passwd").unwrap(), "/etc|passwd");
        assert_eq!(s("/etc/").unwrap(), "/|etc");
        assert_eq!(s("/").unwrap(), "/|.");
        assert_eq!(s("//").unwrap(), "/|.");
        assert_eq!(s("").unwrap(), ".|.");
        assert_eq!(s("file").unwrap(), ".|file");
        assert_eq!(s("a/b/").unwrap(), "a|b");
        assert_eq!(s("/a/.").unwrap(), "/a|.");
        assert!(s("/a/..").is_err() && s("..").is_err());
    }
}
