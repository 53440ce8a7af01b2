//! Progress bars on a terminal (stderr) for long library operations; silent otherwise.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use library::progress::Progress;
use std::io::IsTerminal;

/// A byte-counting progress bar that draws only when stderr is a terminal.
pub struct Bar {
    bar: ProgressBar,
}

impl Bar {
    /// A bar labelled `what` ("importing", "exporting"...).
    pub fn new(what: &str, json: bool) -> Bar {
        let target = if std::io::stderr().is_terminal() && !json {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(None, target);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} {msg} {bytes} ({binary_bytes_per_sec}) {wide_bar} {eta}",
            )
            .expect("valid template"),
        );
        bar.set_prefix(what.to_string());
        Bar { bar }
    }
}

impl Progress for Bar {
    fn total(&self, bytes: u64) {
        self.bar.set_length(bytes);
    }
    fn bytes(&self, n: u64) {
        self.bar.inc(n);
    }
    fn phase(&self, msg: &str) {
        self.bar.set_message(msg.to_string());
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}
