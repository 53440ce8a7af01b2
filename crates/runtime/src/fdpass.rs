//! Unix sockets as both sides of the runtime use them: passing open files between processes
//! (`SCM_RIGHTS`) with a payload, and addresses for socket paths of any length.

use anyhow::{bail, Context, Result};
use rustix::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketAddrUnix,
};
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::path::Path;

/// Most fds one message carries.
const MAX_FDS: usize = 3;

/// Sends `payload` (non-empty) and `fds` (at most 3) as one message on `sock`.
pub fn send(sock: impl AsFd, payload: &[u8], fds: &[BorrowedFd<'_>]) -> Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        bail!("too many fds to send");
    }
    rustix::net::sendmsg(
        sock,
        &[IoSlice::new(payload)],
        &mut control,
        SendFlags::NOSIGNAL,
    )
    .context("sending over a Unix socket")?;
    Ok(())
}

/// Receives one message into `buf`: its length (0 = the peer closed) and the fds it carried.
pub fn recv(sock: impl AsFd, buf: &mut [u8]) -> Result<(usize, Vec<OwnedFd>)> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(
        sock,
        &mut [IoSliceMut::new(buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .context("receiving over a Unix socket")?;
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = m {
            fds.extend(received);
        }
    }
    Ok((msg.bytes, fds))
}

/// A socket address for `path` that fits `sun_path` (108 bytes) however long the data dir:
/// `/proc/self/fd/N/exec.sock` through an `O_PATH` fd of its directory, kept open meanwhile.
pub fn address(path: &Path) -> Result<(OwnedFd, SocketAddrUnix)> {
    let dir = path.parent().context("exec socket path has no directory")?;
    let file = path
        .file_name()
        .context("exec socket path has no file name")?;
    let fd = rustix::fs::open(
        dir,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .with_context(|| format!("opening {}", dir.display()))?;
    let short = Path::new("/proc/self/fd")
        .join(fd.as_raw_fd().to_string())
        .join(file);
    Ok((fd, SocketAddrUnix::new(&short)?))
}
