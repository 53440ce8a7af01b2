//! `spawngrid env exec`'s stdio: the command in the env gets pipes, never the caller's own
//! stdin, stdout and stderr (the admin's terminal, often), which a process it leaves behind
//! would keep: one that read the admin's next typed line. The caller's stdin is copied into
//! the command's by a thread; its stdout and stderr are copied out until the command exits,
//! then what it wrote before exiting is drained and the pipes dropped, so a process left
//! behind holding them keeps `exec` from returning no more than it can read the terminal.

use anyhow::{Context, Result};
use rustix::event::{PollFd, PollFlags};
use rustix::fd::{AsFd, OwnedFd};
use rustix::pipe::PipeFlags;
use std::io::Write;

/// The most bytes drained from each pipe after the command exited (a process it left behind
/// may keep writing).
const DRAIN_MAX: usize = 1 << 20;

/// One output stream: the pipe's read end and where its bytes go; `None` once closed.
struct Out {
    pipe: Option<OwnedFd>,
    to: Box<dyn Write>,
}

impl Out {
    /// Copies what one read returns; closes the stream on end of file or a failed write (our
    /// stdout closed: the command then gets EPIPE, as it would writing there itself).
    fn pump(&mut self, buf: &mut [u8]) -> Option<usize> {
        let pipe = self.pipe.as_ref()?;
        let n = match rustix::io::read(pipe, &mut *buf) {
            Ok(0) | Err(_) => 0,
            Ok(n) => n,
        };
        if n == 0
            || self
                .to
                .write_all(&buf[..n])
                .and_then(|()| self.to.flush())
                .is_err()
        {
            self.pipe = None;
            return None;
        }
        Some(n)
    }
}

/// Runs `argv` in env `st` through its init with stdio relayed through pipes; returns its
/// exit code (128 + N for signal N).
pub fn exec(rt: &runtime::Runtime, st: &runtime::EnvState, argv: &[String]) -> Result<i32> {
    let pipe = || rustix::pipe::pipe_with(PipeFlags::CLOEXEC).context("making a pipe");
    let ((in_r, in_w), (out_r, out_w), (err_r, err_w)) = (pipe()?, pipe()?, pipe()?);
    let stdio = [in_r.as_fd(), out_w.as_fd(), err_w.as_fd()];
    let started = runtime::service::start(rt, st, argv, &[], stdio)?;
    drop((in_r, out_w, err_w));
    // Ends with our stdin, or when the command's stdin is closed (a failed write); a blocked
    // read of a terminal ends with this process.
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::fs::File::from(in_w));
    });
    let mut outs = [
        Out {
            pipe: Some(out_r),
            to: Box::new(std::io::stdout()),
        },
        Out {
            pipe: Some(err_r),
            to: Box::new(std::io::stderr()),
        },
    ];
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let mut fds = vec![PollFd::new(&started, PollFlags::IN)];
        let open: Vec<usize> = (0..outs.len())
            .filter(|i| outs[*i].pipe.is_some())
            .collect();
        for i in &open {
            fds.push(PollFd::new(outs[*i].pipe.as_ref().unwrap(), PollFlags::IN));
        }
        match rustix::event::poll(&mut fds, None) {
            Err(rustix::io::Errno::INTR) => continue,
            r => r.context("waiting for the command")?,
        };
        let ready: Vec<bool> = fds.iter().map(|f| !f.revents().is_empty()).collect();
        if ready[0] {
            break;
        }
        for (k, i) in open.iter().enumerate() {
            if ready[k + 1] {
                outs[*i].pump(&mut buf);
            }
        }
    }
    let code = started.wait()?;
    for out in &mut outs {
        drain(out, &mut buf);
    }
    Ok(code)
}

/// Copies what is in `out`'s pipe now (at most [`DRAIN_MAX`] bytes), without waiting for more.
fn drain(out: &mut Out, buf: &mut [u8]) {
    let Some(pipe) = &out.pipe else { return };
    if rustix::io::ioctl_fionbio(pipe, true).is_err() {
        return;
    }
    let mut total = 0;
    while total < DRAIN_MAX {
        match out.pump(buf) {
            Some(n) => total += n,
            None => break,
        }
    }
}
