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
use std::collections::HashSet;
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::path::{Component, PathBuf};
use std::sync::Arc;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

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

/// Why [`filter`] stopped.
#[derive(Debug)]
pub enum FilterError {
    /// The archive is malformed or has an entry that may not be extracted (one line).
    Refused(String),
    /// Writing to tar failed (it exited early; its own message says why).
    Output(io::Error),
}

/// An entry's name made safe to extract: `.` components dropped; `None` for an absolute name
/// or one with `..`.
pub fn clean_name(name: &std::path::Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in name.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Copies a tar archive from `input` to `output` entry by entry, as a fresh GNU archive:
///
/// - names are checked ([`clean_name`]), and an entry below a symlink that the archive made
///   is refused, so nothing lands outside the destination directory;
/// - with `rename`, the archive must have one top-level entry, which is renamed to it;
///   without, an entry naming the destination itself (`.`) is skipped;
/// - regular files, directories, symlinks, hard links (to names checked the same way) and
///   FIFOs pass; device nodes and other types are refused; owners become root;
/// - directories are repeated at the end, innermost first, so that tars which set a
///   directory's mtime when they create it (busybox) end with the archive's mtimes too.
///
/// The first refused entry ends the copy with [`FilterError::Refused`] before anything of it
/// is written, and without the end-of-archive blocks, so tar fails rather than finish.
pub fn filter(
    input: impl Read,
    output: impl Write,
    rename: Option<&str>,
) -> Result<(), FilterError> {
    let refused = |m: String| FilterError::Refused(m);
    let malformed = |e: io::Error| refused(format!("malformed tar archive: {e}"));
    let mut archive = tar::Archive::new(input);
    let mut out = tar::Builder::new(output);
    let mut top: Option<OsString> = None;
    let mut symlinks: HashSet<PathBuf> = HashSet::new();
    let mut dirs: Vec<(PathBuf, u32, u64)> = Vec::new();
    // Maps a name of the archive to where it is extracted, checking it.
    let mut place = |raw: &std::path::Path, symlinks: &HashSet<PathBuf>| {
        let unsafe_name = || {
            refused(format!(
                "unsafe entry {raw:?} in the archive (absolute, with .., or below a symlink): nothing more was extracted"
            ))
        };
        let rel = clean_name(raw).ok_or_else(unsafe_name)?;
        let mapped = match rename {
            None => rel,
            Some(new) => {
                let mut parts = rel.iter();
                let first = parts.next().map(OsString::from).unwrap_or_default();
                match &top {
                    None => top = Some(first),
                    Some(t) if *t == first => {}
                    Some(_) => {
                        return Err(refused(
                            "the archive has more than one top-level entry: copy into an existing directory instead"
                                .into(),
                        ))
                    }
                }
                std::iter::once(std::ffi::OsStr::new(new))
                    .chain(parts)
                    .collect()
            }
        };
        if mapped.ancestors().skip(1).any(|a| symlinks.contains(a)) {
            return Err(unsafe_name());
        }
        Ok(mapped)
    };
    // Raw: long names and PAX records are read here, bounded, not whole by the tar crate.
    let mut meta = Meta::default();
    let mut kept = 0usize;
    for entry in archive.entries().map_err(malformed)?.raw(true) {
        let mut entry = entry.map_err(malformed)?;
        if meta.take(&mut entry)? {
            continue;
        }
        let (raw, link) = meta.names(&entry).map_err(malformed)?;
        let path = place(&raw, &symlinks)?;
        if path.as_os_str().is_empty() {
            continue;
        }
        let h = entry.header();
        let (mode, mtime) = (
            h.mode().map_err(malformed)? & 0o7777,
            h.mtime().map_err(malformed)?,
        );
        let kind = h.entry_type();
        let mut header = tar::Header::new_gnu();
        header.set_mode(mode);
        header.set_mtime(mtime);
        header.set_uid(0);
        header.set_gid(0);
        header.set_size(0);
        let written = match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(entry.size());
                out.append_data(&mut header, &path, &mut entry)
            }
            tar::EntryType::Directory => {
                header.set_entry_type(tar::EntryType::Directory);
                keep(&mut kept, &path)?;
                dirs.push((path.clone(), mode, mtime));
                out.append_data(&mut header, &path, io::empty())
            }
            tar::EntryType::Fifo => {
                header.set_entry_type(tar::EntryType::Fifo);
                out.append_data(&mut header, &path, io::empty())
            }
            tar::EntryType::Symlink => {
                let target = link.unwrap_or_default();
                keep(&mut kept, &path)?;
                symlinks.insert(path.clone());
                header.set_entry_type(tar::EntryType::Symlink);
                out.append_link(&mut header, &path, target)
            }
            tar::EntryType::Link => {
                let target = place(&link.unwrap_or_default(), &symlinks)?;
                header.set_entry_type(tar::EntryType::Link);
                out.append_link(&mut header, &path, target)
            }
            other => {
                return Err(refused(format!(
                    "entry {raw:?} of the archive is a {other:?}, which cp cannot copy (only files, directories, symlinks, hard links and FIFOs)"
                )))
            }
        };
        // An entry's data that cannot be read is the archive's fault, not tar's.
        written.map_err(|e| match e.kind() {
            io::ErrorKind::BrokenPipe => FilterError::Output(e),
            _ => malformed(e),
        })?;
    }
    for (path, mode, mtime) in dirs.iter().rev() {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(*mode);
        header.set_mtime(*mtime);
        header.set_size(0);
        out.append_data(&mut header, path, io::empty())
            .map_err(FilterError::Output)?;
    }
    out.finish().map_err(FilterError::Output)
}

/// The longest GNU long name or link, or PAX header, an upload may have.
pub const MAX_META: u64 = 64 << 10;

/// Bytes of directory and symlink names an upload's [`filter`] keeps (to repeat directories
/// at the end, and to refuse entries below symlinks).
pub const MAX_KEPT: usize = 16 << 20;

/// Counts `path` (and some overhead) against [`MAX_KEPT`].
fn keep(kept: &mut usize, path: &std::path::Path) -> Result<(), FilterError> {
    *kept += path.as_os_str().len() + 64;
    if *kept > MAX_KEPT {
        return Err(FilterError::Refused(format!(
            "the archive has more directories and symlinks than cp keeps track of ({} MiB of \
             names): copy it in parts",
            MAX_KEPT >> 20
        )));
    }
    Ok(())
}

/// A GNU long name or link, or PAX path and linkpath, waiting for the entry they describe.
#[derive(Default)]
struct Meta {
    name: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
}

impl Meta {
    /// Takes in `entry` if it describes the next one (true), after checking its size
    /// against [`MAX_META`]; refuses entry kinds a raw reading cannot follow.
    fn take(&mut self, entry: &mut tar::Entry<'_, impl Read>) -> Result<bool, FilterError> {
        use tar::EntryType as T;
        let kind = entry.header().entry_type();
        if kind == T::GNUSparse {
            return Err(FilterError::Refused(
                "the archive has a GNU sparse entry, which cp cannot copy: archive without \
                 --sparse"
                    .into(),
            ));
        }
        if !matches!(
            kind,
            T::GNULongName | T::GNULongLink | T::XHeader | T::XGlobalHeader
        ) {
            return Ok(false);
        }
        if entry.size() > MAX_META {
            return Err(FilterError::Refused(format!(
                "the archive has a {kind:?} header of {} bytes, over cp's limit of {} KiB: \
                 nothing more was extracted",
                entry.size(),
                MAX_META >> 10
            )));
        }
        let mut data = Vec::new();
        entry
            .read_to_end(&mut data)
            .map_err(|e| FilterError::Refused(format!("malformed tar archive: {e}")))?;
        let trimmed = |mut d: Vec<u8>| {
            while d.last() == Some(&0) {
                d.pop();
            }
            d
        };
        match kind {
            T::GNULongName => self.name = Some(trimmed(data)),
            T::GNULongLink => self.link = Some(trimmed(data)),
            T::XHeader => {
                for ext in tar::PaxExtensions::new(&data) {
                    let ext = ext.map_err(|e| {
                        FilterError::Refused(format!("malformed PAX header in the archive: {e}"))
                    })?;
                    match ext.key_bytes() {
                        b"path" => self.name = Some(ext.value_bytes().to_vec()),
                        b"linkpath" => self.link = Some(ext.value_bytes().to_vec()),
                        b"size" => {
                            return Err(FilterError::Refused(
                                "the archive has a PAX size record, which cp does not take: \
                                 archive with a GNU or ustar tar"
                                    .into(),
                            ))
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        Ok(true)
    }

    /// The entry's name and link target, as the records before it said, else its header.
    fn names(
        &mut self,
        entry: &tar::Entry<'_, impl Read>,
    ) -> io::Result<(PathBuf, Option<PathBuf>)> {
        use std::os::unix::ffi::OsStringExt;
        let bytes = |b: Vec<u8>| PathBuf::from(OsString::from_vec(b));
        let name = match self.name.take() {
            Some(n) => bytes(n),
            None => entry.path()?.into_owned(),
        };
        let link = match self.link.take() {
            Some(l) => Some(bytes(l)),
            None => entry.link_name()?.map(|l| l.into_owned()),
        };
        Ok((name, link))
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

    #[test]
    fn names_are_cleaned() {
        let c = |p: &str| clean_name(std::path::Path::new(p));
        assert_eq!(c("./a/./b").unwrap(), PathBuf::from("a/b"));
        assert_eq!(c(".").unwrap(), PathBuf::new());
        assert!(c("/etc/passwd").is_none());
        assert!(c("a/../../b").is_none());
    }

    /// An archive of (name, kind, data or link target).
    fn archive(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(0o640);
            h.set_mtime(1_000_000_000);
            // Raw names: the builder would refuse `..` and absolute ones.
            let raw = &mut h.as_old_mut().name;
            raw[..name.len()].copy_from_slice(name.as_bytes());
            match kind {
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    h.set_link_name(data).unwrap();
                    h.set_size(0);
                    h.set_cksum();
                    b.append(&h, io::empty()).unwrap();
                }
                _ => {
                    h.set_size(data.len() as u64);
                    h.set_cksum();
                    b.append(&h, data.as_bytes()).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    /// The names, kinds and data of a filtered archive.
    fn listing(bytes: &[u8]) -> Vec<(String, tar::EntryType, String)> {
        let mut a = tar::Archive::new(bytes);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let mut data = String::new();
                e.read_to_string(&mut data).unwrap();
                let link = e.link_name().unwrap().map(|l| l.display().to_string());
                (
                    e.path().unwrap().display().to_string(),
                    e.header().entry_type(),
                    link.unwrap_or(data),
                )
            })
            .collect()
    }

    use tar::EntryType::{Directory as D, Link as H, Regular as F, Symlink as L};

    #[test]
    fn safe_archives_pass_and_directories_come_again_at_the_end() {
        let input = archive(&[
            (".", D, ""),
            ("./d", D, ""),
            ("./d/f", F, "data"),
            ("./d/l", L, "/etc"),
            ("./d/h", H, "./d/f"),
        ]);
        let mut out = Vec::new();
        filter(&input[..], &mut out, None).unwrap();
        let names: Vec<_> = listing(&out)
            .into_iter()
            .map(|(n, k, d)| format!("{n} {k:?} {d}"))
            .collect();
        assert_eq!(
            names,
            [
                "d Directory ",
                "d/f Regular data",
                "d/l Symlink /etc",
                "d/h Link d/f",
                "d Directory "
            ]
        );
    }

    #[test]
    fn the_top_entry_is_renamed() {
        let input = archive(&[("a", D, ""), ("a/f", F, "x"), ("a/h", H, "a/f")]);
        let mut out = Vec::new();
        filter(&input[..], &mut out, Some("b")).unwrap();
        let names: Vec<_> = listing(&out).into_iter().map(|e| e.0).collect();
        assert_eq!(names, ["b", "b/f", "b/h", "b"]);
        let h = listing(&out).into_iter().find(|e| e.0 == "b/h").unwrap();
        assert_eq!(h.2, "b/f");
        let two = archive(&[("a", F, "1"), ("b", F, "2")]);
        let err = filter(&two[..], io::sink(), Some("c")).unwrap_err();
        assert!(matches!(err, FilterError::Refused(m) if m.contains("more than one")));
    }

    #[test]
    fn hostile_archives_are_refused_before_the_bad_entry() {
        for bad in [
            vec![("ok", F, "1"), ("../escape", F, "x")],
            vec![("/etc/passwd", F, "x")],
            vec![("a/../../x", F, "x")],
            vec![("l", L, "/etc"), ("l/passwd", F, "x")],
            vec![("d", D, ""), ("d/l", L, ".."), ("d/l/x", F, "x")],
            vec![("h", H, "/etc/shadow")],
            vec![("h", H, "../x")],
            vec![("dev", tar::EntryType::Char, "")],
        ] {
            let input = archive(&bad);
            let mut out = Vec::new();
            let err = filter(&input[..], &mut out, None).unwrap_err();
            assert!(matches!(err, FilterError::Refused(_)), "{bad:?}");
            // What was written holds only the entries before the bad one, and no end
            // blocks: a tar reading it fails.
            let written = listing(&out);
            assert!(written.len() < bad.len(), "{bad:?}: {written:?}");
            assert!(written.iter().all(|(n, _, _)| !n.contains("..")));
        }
        let err = filter(&b"not a tar archive at all"[..], io::sink(), None).unwrap_err();
        assert!(matches!(err, FilterError::Refused(m) if m.starts_with("malformed")));
    }

    /// A GNU long-name header announcing `size` bytes of name.
    fn long_name_header(size: u64) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::GNULongName);
        h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        h.set_size(size);
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    #[test]
    fn long_names_are_followed_and_bounded() {
        let name = "d/".to_string() + &"n".repeat(300);
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(F);
        h.set_size(1);
        h.set_mode(0o644);
        b.append_data(&mut h, &name, &b"x"[..]).unwrap();
        let mut out = Vec::new();
        filter(&b.into_inner().unwrap()[..], &mut out, None).unwrap();
        assert_eq!(listing(&out), [(name, F, "x".to_string())]);
        // A bomb: a long name bigger than the limit is refused from its header alone (the
        // reader holds only that header).
        let bomb = long_name_header(300 << 20);
        let err = filter(&bomb[..], io::sink(), None).unwrap_err();
        assert!(
            matches!(&err, FilterError::Refused(m) if m.contains("over cp's limit of 64 KiB")),
            "{err:?}"
        );
        let mut kept = 0;
        let long = PathBuf::from("k".repeat(4000));
        let refused = (0..MAX_KEPT / 4000 + 1).find_map(|_| keep(&mut kept, &long).err());
        assert!(
            matches!(&refused, Some(FilterError::Refused(m)) if m.contains("copy it in parts")),
            "{refused:?}"
        );
    }
}
