//! The built-in SFTP server: SFTP version 3 (what OpenSSH's `sftp` and `scp` speak) on stdin
//! and stdout, for the SSH gateway's `sftp` subsystem. The `env-enter` helper runs it
//! ([`crate::protocol::Builtin::Sftp`]) after it has joined the env's namespaces and become the
//! session's user, so every path is resolved by the kernel inside the env, as that user: `..`
//! stops at the env's `/`, a symlink to `/` is the env's `/`, and permissions are the env's.
//!
//! The protocol (packets, attributes) is the `russh-sftp` crate's; this module maps each
//! request onto one system call. One client per process, so the calls are plain blocking ones.

use russh_sftp::protocol::{
    Attrs, Data, File, FileAttributes, Handle, Name, OpenFlags, Status, StatusCode, Version,
};
use russh_sftp::server::StatusReply;
use std::collections::HashMap;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// The most bytes one read answers (OpenSSH asks for 32 KiB; its limit is 256 KiB).
const MAX_READ: u32 = 256 << 10;

/// The most names one `readdir` answer carries.
const DIR_BATCH: usize = 128;

/// Serves one SFTP client on stdin and stdout until it closes stdin; the exit code.
pub fn serve() -> u8 {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("spawngrid sftp: starting: {e}");
            return 1;
        }
    };
    rt.block_on(async {
        let stream = match stdio() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("spawngrid sftp: {e}");
                return 1;
            }
        };
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let stream = Stdio {
            stream,
            _done: done_tx,
        };
        russh_sftp::server::run(stream, Server::default()).await;
        // The server's task drops the stream (and so the sender) when the client is gone.
        let _ = done.await;
        0
    })
}

/// Stdin and stdout as one non-blocking stream.
fn stdio() -> std::io::Result<
    tokio::io::Join<tokio::net::unix::pipe::Receiver, tokio::net::unix::pipe::Sender>,
> {
    use rustix::fd::AsFd;
    let input = rustix::stdio::stdin().as_fd().try_clone_to_owned()?;
    let output = rustix::stdio::stdout().as_fd().try_clone_to_owned()?;
    Ok(tokio::io::join(
        tokio::net::unix::pipe::Receiver::from_owned_fd(input)?,
        tokio::net::unix::pipe::Sender::from_owned_fd(output)?,
    ))
}

/// The stream handed to the server, which tells [`serve`] when the server drops it.
struct Stdio<S> {
    stream: S,
    _done: tokio::sync::oneshot::Sender<()>,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Stdio<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Stdio<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// An open handle.
enum Open {
    File(fs::File),
    /// A directory's remaining entries.
    Dir(Vec<File>),
}

/// One client's handles.
#[derive(Default)]
struct Server {
    handles: HashMap<String, Open>,
    next: u64,
}

/// A failed request's status: the error's kind as an SFTP code and its text.
fn fail(e: std::io::Error) -> StatusReply {
    let code = match e.kind() {
        ErrorKind::NotFound => StatusCode::NoSuchFile,
        ErrorKind::PermissionDenied => StatusCode::PermissionDenied,
        _ => StatusCode::Failure,
    };
    code.with_message(e.to_string())
}

/// Success.
fn ok(id: u32) -> Result<Status, StatusReply> {
    Ok(Status {
        id,
        status_code: StatusCode::Ok,
        error_message: "Ok".into(),
        language_tag: "en-US".into(),
    })
}

/// A file's attributes as SFTP has them (mode with its type bits, ids, times in seconds).
fn attrs(m: &fs::Metadata) -> FileAttributes {
    FileAttributes {
        size: Some(m.size()),
        uid: Some(m.uid()),
        gid: Some(m.gid()),
        permissions: Some(m.mode()),
        atime: Some(m.atime() as u32),
        mtime: Some(m.mtime() as u32),
        ..Default::default()
    }
}

/// A directory entry as `readdir` answers it; its `ls -l` line marks symlinks with `l`
/// (`russh-sftp` knows only `d` and `-`).
fn listed(name: String, m: &fs::Metadata) -> File {
    let mut f = File::new(name, attrs(m));
    if m.file_type().is_symlink() {
        f.longname.replace_range(..1, "l");
    }
    f
}

/// What a `setstat` or `fsetstat` changes: a path's file, or an open handle's.
#[derive(Clone, Copy)]
enum Target<'a> {
    Path(&'a Path),
    File(&'a fs::File),
}

/// Applies the attributes a client set: size, owner, mode, times.
fn set_attrs(t: Target<'_>, a: &FileAttributes) -> std::io::Result<()> {
    use std::os::unix::fs::{chown, fchown};
    if let Some(size) = a.size {
        match t {
            Target::Path(p) => fs::OpenOptions::new().write(true).open(p)?.set_len(size)?,
            Target::File(f) => f.set_len(size)?,
        }
    }
    if a.uid.is_some() || a.gid.is_some() {
        match t {
            Target::Path(p) => chown(p, a.uid, a.gid)?,
            Target::File(f) => fchown(f, a.uid, a.gid)?,
        }
    }
    if let Some(mode) = a.permissions {
        let mode = fs::Permissions::from_mode(mode & 0o7777);
        match t {
            Target::Path(p) => fs::set_permissions(p, mode)?,
            Target::File(f) => f.set_permissions(mode)?,
        }
    }
    if let (Some(atime), Some(mtime)) = (a.atime, a.mtime) {
        let at = |s: u32| rustix::fs::Timespec {
            tv_sec: s.into(),
            tv_nsec: 0,
        };
        let times = rustix::fs::Timestamps {
            last_access: at(atime),
            last_modification: at(mtime),
        };
        match t {
            Target::Path(p) => {
                rustix::fs::utimensat(rustix::fs::CWD, p, &times, rustix::fs::AtFlags::empty())?
            }
            Target::File(f) => rustix::fs::futimens(f, &times)?,
        }
    }
    Ok(())
}

/// `path` made absolute (against the working directory) without `.` and `..`, for a path
/// that does not exist (yet).
fn lexical(path: &Path) -> PathBuf {
    let mut out = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    for c in path.components() {
        match c {
            Component::RootDir => out = PathBuf::from("/"),
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

impl Server {
    fn insert(&mut self, open: Open) -> String {
        self.next += 1;
        let h = self.next.to_string();
        self.handles.insert(h.clone(), open);
        h
    }

    fn file(&mut self, handle: &str) -> Result<&mut fs::File, StatusReply> {
        match self.handles.get_mut(handle) {
            Some(Open::File(f)) => Ok(f),
            _ => Err(StatusCode::Failure.with_message("no such file handle")),
        }
    }
}

impl russh_sftp::server::Handler for Server {
    type Error = StatusReply;

    fn unimplemented(&self) -> StatusReply {
        StatusCode::OpUnsupported.into()
    }

    async fn init(
        &mut self,
        _version: u32,
        _extensions: HashMap<String, String>,
    ) -> Result<Version, StatusReply> {
        Ok(Version::new())
    }

    async fn open(
        &mut self,
        id: u32,
        filename: String,
        pflags: OpenFlags,
        a: FileAttributes,
    ) -> Result<Handle, StatusReply> {
        let mut options = fs::OpenOptions::from(pflags);
        options.mode(a.permissions.map_or(0o666, |p| p & 0o7777));
        let f = options.open(&filename).map_err(fail)?;
        Ok(Handle {
            id,
            handle: self.insert(Open::File(f)),
        })
    }

    async fn close(&mut self, id: u32, handle: String) -> Result<Status, StatusReply> {
        match self.handles.remove(&handle) {
            Some(_) => ok(id),
            None => Err(StatusCode::Failure.with_message("no such handle")),
        }
    }

    async fn read(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        len: u32,
    ) -> Result<Data, StatusReply> {
        let f = self.file(&handle)?;
        let mut data = vec![0; len.min(MAX_READ) as usize];
        let mut got = 0;
        while got < data.len() {
            match f.read_at(&mut data[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(fail(e)),
            }
        }
        data.truncate(got);
        if data.is_empty() && len > 0 {
            return Err(StatusCode::Eof.into());
        }
        Ok(Data { id, data })
    }

    async fn write(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<Status, StatusReply> {
        self.file(&handle)?
            .write_all_at(&data, offset)
            .map_err(fail)?;
        ok(id)
    }

    async fn lstat(&mut self, id: u32, path: String) -> Result<Attrs, StatusReply> {
        let m = fs::symlink_metadata(path).map_err(fail)?;
        Ok(Attrs {
            id,
            attrs: attrs(&m),
        })
    }

    async fn stat(&mut self, id: u32, path: String) -> Result<Attrs, StatusReply> {
        let m = fs::metadata(path).map_err(fail)?;
        Ok(Attrs {
            id,
            attrs: attrs(&m),
        })
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Result<Attrs, StatusReply> {
        let m = self.file(&handle)?.metadata().map_err(fail)?;
        Ok(Attrs {
            id,
            attrs: attrs(&m),
        })
    }

    async fn setstat(
        &mut self,
        id: u32,
        path: String,
        a: FileAttributes,
    ) -> Result<Status, StatusReply> {
        set_attrs(Target::Path(Path::new(&path)), &a).map_err(fail)?;
        ok(id)
    }

    async fn fsetstat(
        &mut self,
        id: u32,
        handle: String,
        a: FileAttributes,
    ) -> Result<Status, StatusReply> {
        set_attrs(Target::File(self.file(&handle)?), &a).map_err(fail)?;
        ok(id)
    }

    async fn opendir(&mut self, id: u32, path: String) -> Result<Handle, StatusReply> {
        let mut files = Vec::new();
        for name in [".", ".."] {
            let m = fs::symlink_metadata(Path::new(&path).join(name)).map_err(fail)?;
            files.push(listed(name.into(), &m));
        }
        for entry in fs::read_dir(&path).map_err(fail)? {
            let entry = entry.map_err(fail)?;
            // An entry removed meanwhile is left out.
            if let Ok(m) = entry.metadata() {
                files.push(listed(entry.file_name().to_string_lossy().into(), &m));
            }
        }
        files.reverse();
        Ok(Handle {
            id,
            handle: self.insert(Open::Dir(files)),
        })
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Result<Name, StatusReply> {
        let Some(Open::Dir(left)) = self.handles.get_mut(&handle) else {
            return Err(StatusCode::Failure.with_message("no such directory handle"));
        };
        if left.is_empty() {
            return Err(StatusCode::Eof.into());
        }
        let files = left.split_off(left.len().saturating_sub(DIR_BATCH));
        Ok(Name {
            id,
            files: files.into_iter().rev().collect(),
        })
    }

    async fn remove(&mut self, id: u32, filename: String) -> Result<Status, StatusReply> {
        fs::remove_file(filename).map_err(fail)?;
        ok(id)
    }

    async fn mkdir(
        &mut self,
        id: u32,
        path: String,
        a: FileAttributes,
    ) -> Result<Status, StatusReply> {
        fs::DirBuilder::new()
            .mode(a.permissions.map_or(0o777, |p| p & 0o7777))
            .create(path)
            .map_err(fail)?;
        ok(id)
    }

    async fn rmdir(&mut self, id: u32, path: String) -> Result<Status, StatusReply> {
        fs::remove_dir(path).map_err(fail)?;
        ok(id)
    }

    async fn realpath(&mut self, id: u32, path: String) -> Result<Name, StatusReply> {
        let path = if path.is_empty() { "." } else { &path };
        let real = fs::canonicalize(path).unwrap_or_else(|_| lexical(Path::new(path)));
        Ok(Name {
            id,
            files: vec![File::dummy(real.to_string_lossy())],
        })
    }

    async fn rename(
        &mut self,
        id: u32,
        oldpath: String,
        newpath: String,
    ) -> Result<Status, StatusReply> {
        fs::rename(oldpath, newpath).map_err(fail)?;
        ok(id)
    }

    async fn readlink(&mut self, id: u32, path: String) -> Result<Name, StatusReply> {
        let target = fs::read_link(path).map_err(fail)?;
        Ok(Name {
            id,
            files: vec![File::dummy(target.to_string_lossy())],
        })
    }

    /// OpenSSH's client (and server) send the symlink's target first and the new link's path
    /// second, the reverse of the draft's field names (which `russh-sftp` follows).
    async fn symlink(
        &mut self,
        id: u32,
        target: String,
        link: String,
    ) -> Result<Status, StatusReply> {
        std::os::unix::fs::symlink(target, link).map_err(fail)?;
        ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_do_not_exist_are_made_absolute_and_clean() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(lexical(Path::new("/a/../b/./c")), PathBuf::from("/b/c"));
        assert_eq!(lexical(Path::new("/../../x")), PathBuf::from("/x"));
        assert_eq!(lexical(Path::new("new")), cwd.join("new"));
    }

    #[test]
    fn attributes_are_set_by_path_and_by_handle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(&path, b"0123456789").unwrap();
        let a = FileAttributes {
            size: Some(4),
            permissions: Some(0o100640),
            atime: Some(1_000_000),
            mtime: Some(2_000_000),
            ..Default::default()
        };
        set_attrs(Target::Path(&path), &a).unwrap();
        let m = fs::metadata(&path).unwrap();
        assert_eq!(
            (m.len(), m.mode() & 0o7777, m.atime(), m.mtime()),
            (4, 0o640, 1_000_000, 2_000_000)
        );
        let f = fs::File::open(&path).unwrap();
        let a = FileAttributes {
            permissions: Some(0o600),
            atime: Some(3),
            mtime: Some(4),
            ..Default::default()
        };
        set_attrs(Target::File(&f), &a).unwrap();
        let m = fs::metadata(&path).unwrap();
        assert_eq!((m.mode() & 0o7777, m.atime(), m.mtime()), (0o600, 3, 4));
    }

    #[test]
    fn io_errors_map_to_sftp_codes() {
        let e = |k| fail(std::io::Error::from(k)).status_code;
        assert_eq!(e(ErrorKind::NotFound), StatusCode::NoSuchFile);
        assert_eq!(e(ErrorKind::PermissionDenied), StatusCode::PermissionDenied);
        assert_eq!(e(ErrorKind::InvalidInput), StatusCode::Failure);
    }
}
