//! The local end of an interactive terminal session, shared by `spawngrid cpu` (over a node's
//! WebSocket) and `spawngrid env cpu` (on this node's env directly): raw mode restored on
//! every way out, the window size and its changes (SIGWINCH), and stdin forwarded — with ^D
//! after its end when it is not a terminal, so a shell reading a pipe sees end of input.

use rustix::termios::{self, OptionalActions, Termios};
use std::io::Read;

/// Stdin's terminal in raw mode; its settings are restored when this is dropped (on errors
/// and panics too).
pub struct RawMode(Termios);

impl RawMode {
    /// Puts stdin's terminal in raw mode; `None` if stdin is not a terminal.
    pub fn enter() -> Option<RawMode> {
        let saved = termios::tcgetattr(rustix::stdio::stdin()).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        termios::tcsetattr(rustix::stdio::stdin(), OptionalActions::Now, &raw).ok()?;
        Some(RawMode(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(rustix::stdio::stdin(), OptionalActions::Now, &self.0);
    }
}

/// How often end of input (^D) is sent again after stdin (not a terminal) ended.
pub const EOF_REPEAT: std::time::Duration = std::time::Duration::from_millis(200);

/// Whether stdin is a terminal (then the session is interactive).
pub fn interactive() -> bool {
    termios::isatty(rustix::stdio::stdin())
}

/// Stdin's terminal size as (rows, columns); 24 x 80 when it is not a terminal.
pub fn size() -> (u16, u16) {
    termios::tcgetwinsize(rustix::stdio::stdin())
        .map(|w| (w.ws_row, w.ws_col))
        .unwrap_or((24, 80))
}

/// Calls `on_change` with stdin's terminal size after every window size change, from a thread
/// of its own. SIGWINCH is blocked in the calling thread, so call this before starting other
/// threads (they inherit the mask; a signal delivered to one that does not block it is lost),
/// and after starting child processes that should see SIGWINCH themselves.
pub fn watch_size(mut on_change: impl FnMut(u16, u16) + Send + 'static) {
    // SAFETY: sigset_t is plain data initialised by sigemptyset; pthread_sigmask only reads it.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGWINCH);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    std::thread::spawn(move || loop {
        let mut sig = 0;
        // SAFETY: `set` is an initialised sigset_t; sigwait writes the signal number to `sig`.
        if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
            let (rows, cols) = size();
            on_change(rows, cols);
        }
    });
}

/// Reads stdin on a thread of its own and gives each piece to `sink`, until stdin ends or
/// `sink` fails. After the end of a stdin that is not a terminal, gives `sink` a ^D (end of
/// input to whatever reads the remote terminal) every [`EOF_REPEAT`] until `sink` fails (the
/// session is over): one ^D is not enough, as it ends only the current reader's input (a
/// command reading stdin, before the shell), and one that arrives before a line-editing shell
/// switched its terminal to raw mode is turned into a NUL by the terminal.
pub fn forward_input(
    interactive: bool,
    mut sink: impl FnMut(&[u8]) -> std::io::Result<()> + Send + 'static,
) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = [0u8; 16 << 10];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if sink(&buf[..n]).is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        while !interactive && sink(b"\x04").is_ok() {
            std::thread::sleep(EOF_REPEAT);
        }
    });
}
