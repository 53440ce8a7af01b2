//! The env's load, for its `/proc/loadavg` (and `procs_running`/`procs_blocked` of its
//! `/proc/stat`): the kernel's numbers, counted over the env's tasks only.
//!
//! The init sees exactly the env's processes in its `/proc` (the env's pid namespace), so
//! every refresh it reads their states ([`Tasks::scan`]): running (`R`), blocked
//! (uninterruptible, `D`) and all threads. Every [`LOAD_FREQ`] the running and blocked
//! ones are folded into the 1, 5 and 15 minute averages with the kernel's exponential decay
//! ([`Load::sample`]), as `kernel/sched/loadavg.c` does for the host. Counting tasks rather
//! than deriving a load from the cgroup's cpu time keeps the kernel's meaning: three busy
//! loops in an env limited to one cpu make a load of 3, not 1 (cpu time cannot exceed the
//! env's cpus), and tasks waiting for the disk count as they do on the host. The init's own
//! thread, which is running while it scans, is not counted as running.

use std::time::{Duration, Instant};

/// How often the averages take a sample (the kernel's `LOAD_FREQ`, 5 s).
pub const LOAD_FREQ: Duration = Duration::from_secs(5);

/// The env's tasks by state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tasks {
    /// Running or runnable (`R`).
    pub running: u64,
    /// In uninterruptible sleep (`D`).
    pub blocked: u64,
    /// Every thread.
    pub total: u64,
}

impl Tasks {
    /// The tasks of this process's pid namespace (the env's), as its `/proc` lists them; ones
    /// that exit during the scan are skipped.
    pub fn scan() -> Tasks {
        let mut tasks = Tasks::default();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return tasks;
        };
        let me = std::process::id().to_string();
        for name in entries.flatten().map(|e| e.file_name()) {
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let Some((state, threads)) = stat(&format!("/proc/{pid}/stat")) else {
                continue;
            };
            if threads <= 1 {
                tasks.count(if pid == me { 'S' } else { state });
                continue;
            }
            let Ok(threads) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                continue;
            };
            for tid in threads.flatten().map(|e| e.file_name()) {
                let tid = tid.to_string_lossy();
                if let Some((state, _)) = stat(&format!("/proc/{pid}/task/{tid}/stat")) {
                    tasks.count(state);
                }
            }
        }
        tasks
    }

    fn count(&mut self, state: char) {
        self.total += 1;
        match state {
            'R' => self.running += 1,
            'D' => self.blocked += 1,
            _ => {}
        }
    }
}

/// The state and thread count (fields 3 and 20) of a `stat` file of `/proc`.
fn stat(path: &str) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    // The command name (field 2) may contain spaces and parentheses: skip to its last ')'.
    let mut fields = text[text.rfind(')')? + 2..].split(' ');
    let state = fields.next()?.chars().next()?;
    Some((state, fields.nth(16)?.parse().ok()?))
}

/// The env's 1, 5 and 15 minute load averages.
#[derive(Debug)]
pub struct Load {
    averages: [f64; 3],
    /// When the next sample is due.
    next: Instant,
}

/// The decay of each average per [`LOAD_FREQ`]: e^(-5 s / 1, 5 and 15 min).
fn decay() -> [f64; 3] {
    [60.0, 300.0, 900.0].map(|window: f64| (-LOAD_FREQ.as_secs_f64() / window).exp())
}

impl Load {
    /// No load yet; the first sample is due one [`LOAD_FREQ`] from `now`.
    pub fn new(now: Instant) -> Load {
        Load {
            averages: [0.0; 3],
            next: now + LOAD_FREQ,
        }
    }

    /// Folds `tasks` into the averages once for every [`LOAD_FREQ`] passed by `now`.
    pub fn sample(&mut self, tasks: &Tasks, now: Instant) {
        let active = (tasks.running + tasks.blocked) as f64;
        while self.next <= now {
            for (avg, e) in self.averages.iter_mut().zip(decay()) {
                *avg = *avg * e + active * (1.0 - e);
            }
            self.next += LOAD_FREQ;
        }
    }

    /// The `/proc/loadavg` line: the averages, running/total tasks and `last_pid` (the last
    /// pid used in the env's pid namespace, from the kernel's own line).
    pub fn text(&self, tasks: &Tasks, last_pid: &str) -> String {
        let [one, five, fifteen] = self.averages;
        format!(
            "{one:.2} {five:.2} {fifteen:.2} {}/{} {last_pid}\n",
            tasks.running, tasks.total
        )
    }
}

/// The last field (the last pid) of a `/proc/loadavg` line.
pub fn last_pid(loadavg: &str) -> &str {
    loadavg.split_whitespace().last().unwrap_or("0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_decay_like_the_kernels() {
        let t0 = Instant::now();
        let mut load = Load::new(t0);
        let two = Tasks {
            running: 1,
            blocked: 1,
            total: 7,
        };
        load.sample(&two, t0);
        assert_eq!(load.text(&two, "42"), "0.00 0.00 0.00 1/7 42\n");
        // One minute of two active tasks: the 1-minute average reaches 2 (1 - 1/e) ≈ 1.26.
        load.sample(&two, t0 + Duration::from_secs(60));
        assert_eq!(load.text(&two, "42"), "1.26 0.36 0.13 1/7 42\n");
        assert_eq!(last_pid("0.00 0.01 0.05 1/80 1234\n"), "1234");
    }

    #[test]
    fn stat_fields_after_the_command_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stat");
        let line = "12 (a) b (c)) R 1 12 12 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 3 0 99 0";
        std::fs::write(&path, line).unwrap();
        assert_eq!(stat(path.to_str().unwrap()), Some(('R', 3)));
    }
}
