//! Moving bytes between a command's file descriptors (a terminal's master, pipes) and an SSH
//! channel, without blocking a thread: the fds are made non-blocking and driven by tokio's
//! `AsyncFd`.

use bytes::Bytes;
use rustix::fd::OwnedFd;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

/// How long output is still read after the command exited while none comes (a background
/// process holding the pipe or terminal open must not keep the session forever).
const LINGER: Duration = Duration::from_millis(200);

/// A non-blocking fd registered with tokio.
pub type Fd = Arc<AsyncFd<OwnedFd>>;

/// Makes `fd` non-blocking and registers it.
pub fn register(fd: OwnedFd) -> io::Result<Fd> {
    rustix::io::ioctl_fionbio(&fd, true)?;
    // SAFETY: the AsyncFd owns the OwnedFd, so the fd stays open and the same until dropped.
    Ok(Arc::new(unsafe { AsyncFd::register(fd) }?))
}

/// Waits until `fd` is readable: for a pidfd, the process has exited; for the exec service's
/// connection, the exit code is there. No thread waits meanwhile.
pub async fn readable(fd: OwnedFd) -> io::Result<()> {
    // SAFETY: the AsyncFd owns the OwnedFd, so the fd stays open and the same until dropped.
    let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
    let _ready = fd.readable().await?;
    Ok(())
}

/// Reads what is there (waiting until something is); 0 at end of file, and also for EIO,
/// which is how a terminal's master says its last slave fd was closed.
async fn read_some(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut ready = fd.readable().await?;
        match ready.try_io(|f| rustix::io::read(f.get_ref(), &mut *buf).map_err(io::Error::from)) {
            Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
            Ok(r) => return r,
            Err(_would_block) => continue,
        }
    }
}

/// Writes all of `data`.
async fn write_all(fd: &AsyncFd<OwnedFd>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let mut ready = fd.writable().await?;
        match ready.try_io(|f| rustix::io::write(f.get_ref(), data).map_err(io::Error::from)) {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}

/// Copies `src` to `out` until end of file, or until `exited` turns true and no output came
/// for [`LINGER`].
pub async fn pump(src: Fd, mut out: impl AsyncWrite + Unpin, mut exited: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 32 << 10];
    loop {
        let n = if *exited.borrow() {
            match tokio::time::timeout(LINGER, read_some(&src, &mut buf)).await {
                Ok(r) => r,
                Err(_) => break,
            }
        } else {
            tokio::select! {
                r = read_some(&src, &mut buf) => r,
                _ = exited.changed() => continue,
            }
        };
        match n {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if out.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = out.flush().await;
}

/// Writes what arrives on `input` to `dst` until `input` ends (the client sent EOF or went
/// away; `dst` is then closed, if this held its last reference) or `dst` refuses more.
pub async fn feed(dst: Fd, mut input: mpsc::UnboundedReceiver<Bytes>) {
    while let Some(data) = input.recv().await {
        if write_all(&dst, &data).await.is_err() {
            break;
        }
    }
}
