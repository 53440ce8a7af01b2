//! Moving bytes between a command's file descriptors (a terminal's master, pipes) and an
//! async stream (an SSH channel, a WebSocket) without blocking a thread: the fds are made
//! non-blocking and driven by tokio's `AsyncFd`.

use bytes::Bytes;
use rustix::fd::OwnedFd;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

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
/// for `LINGER`.
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

/// Most client input held for a command that is not reading it; beyond this the channel
/// stops being read (which holds up the whole connection, so not for long: see
/// [`Input::drained`]).
pub const MAX_QUEUED: usize = 16 << 20;

/// Client input on its way to a command's stdin (or terminal): queued so that reading the
/// channel never waits for the command, up to [`MAX_QUEUED`] bytes.
pub struct Input {
    tx: Option<mpsc::UnboundedSender<Bytes>>,
    queued: Arc<AtomicUsize>,
    drained: Arc<Notify>,
}

impl Input {
    /// Starts the task writing to `dst`; it ends when the input is closed and written.
    pub fn start(dst: Fd) -> (Input, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let drained = Arc::new(Notify::new());
        let task = tokio::spawn(feed(dst, rx, queued.clone(), drained.clone()));
        let input = Input {
            tx: Some(tx),
            queued,
            drained,
        };
        (input, task)
    }

    /// Queues `data` (dropped after [`Input::close`]).
    pub fn send(&self, data: Bytes) {
        let n = data.len();
        if let Some(tx) = &self.tx {
            if tx.send(data).is_ok() {
                self.queued.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    /// End of input: the command's stdin is closed once the queue is written.
    pub fn close(&mut self) {
        self.tx = None;
    }

    /// Whether [`MAX_QUEUED`] bytes wait already.
    pub fn full(&self) -> bool {
        self.queued.load(Ordering::Relaxed) >= MAX_QUEUED
    }

    /// Completes when some queued input has been written (or dropped).
    pub async fn drained(&self) {
        self.drained.notified().await
    }
}

/// Writes what arrives on `input` to `dst` until `input` ends (the client sent EOF or went
/// away; `dst` is then closed, if this held its last reference). Once `dst` refuses more (the
/// command closed its stdin), the rest is read and dropped, so the queue still drains.
async fn feed(
    dst: Fd,
    mut input: mpsc::UnboundedReceiver<Bytes>,
    queued: Arc<AtomicUsize>,
    drained: Arc<Notify>,
) {
    let mut open = true;
    while let Some(data) = input.recv().await {
        if open && write_all(&dst, &data).await.is_err() {
            open = false;
        }
        queued.fetch_sub(data.len(), Ordering::Relaxed);
        drained.notify_one();
    }
}
