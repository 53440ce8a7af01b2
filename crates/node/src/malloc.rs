//! The node's memory allocator settings: how many glibc malloc arenas its threads share.
//!
//! glibc gives a thread that finds the arenas busy a new one, up to 8 per CPU. A node's
//! threads are many (tokio's blocking pool runs every save, exec and login on one) and each
//! arena keeps what its threads freed for its own later allocations, so resident memory grew
//! with how many arenas the node ever made and the largest transient allocations each one
//! saw (a save lists every pack), not with what the node holds (docs/architecture.md, "Node
//! memory"). One arena per CPU keeps the freed memory in a few places to be reused.

/// The most arenas the node's allocations may use: one per CPU (at least 2).
pub fn arena_limit() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().max(2))
}

/// Caps the process's malloc arenas at [`arena_limit`]; arenas already made stay, so this is
/// called before the node starts its threads.
pub fn cap_arenas() {
    let limit = i32::try_from(arena_limit()).unwrap_or(i32::MAX);
    // SAFETY: mallopt only sets a parameter of the allocator; any value is accepted.
    if unsafe { libc::mallopt(libc::M_ARENA_MAX, limit) } != 1 {
        tracing::warn!("capping malloc arenas at {limit} failed; memory may grow with threads");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// How many heaps (arenas) glibc's allocator has (`<heap nr=` entries of malloc_info).
    fn arenas() -> usize {
        let mut buf: *mut libc::c_char = std::ptr::null_mut();
        let mut len: libc::size_t = 0;
        // SAFETY: open_memstream allocates `buf`, filled by malloc_info and fclose; read
        // once, then freed.
        let xml = unsafe {
            let f = libc::open_memstream(&mut buf, &mut len);
            assert!(!f.is_null(), "open_memstream");
            assert_eq!(libc::malloc_info(0, f), 0, "malloc_info");
            libc::fclose(f);
            let xml = std::slice::from_raw_parts(buf.cast::<u8>(), len).to_vec();
            libc::free(buf.cast());
            xml
        };
        String::from_utf8_lossy(&xml).matches("<heap nr=").count()
    }

    /// Run in a process of its own by [`threads_share_at_most_the_capped_arenas`] (arenas
    /// made before a cap stay): caps the arenas when `SPAWNGRID_ARENA_CHILD` is `capped`, then
    /// 32 threads allocate at once, and it prints how many arenas there are.
    #[test]
    #[ignore = "run by threads_share_at_most_the_capped_arenas in a fresh process"]
    fn arenas_child() {
        let Some(mode) = std::env::var_os("SPAWNGRID_ARENA_CHILD") else {
            return;
        };
        if mode == "capped" {
            cap_arenas();
        }
        let start = std::sync::Barrier::new(32);
        std::thread::scope(|s| {
            for _ in 0..32 {
                s.spawn(|| {
                    start.wait();
                    let held: Vec<Vec<u8>> = (0..64).map(|i| vec![1; 1024 + i]).collect();
                    start.wait();
                    drop(held);
                });
            }
        });
        println!("ARENAS {}", arenas());
    }

    /// How many arenas a fresh process has after 32 threads allocated at once (`mode`: see
    /// [`arenas_child`]).
    fn arenas_after_threads(mode: &str) -> usize {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "malloc::tests::arenas_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SPAWNGRID_ARENA_CHILD", mode)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        // After libtest's "test NAME ... " on the same line.
        let n = text
            .split("ARENAS ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok());
        match (out.status.success(), n) {
            (true, Some(n)) => n,
            _ => panic!("{text}{}", String::from_utf8_lossy(&out.stderr)),
        }
    }

    /// The cap holds: 32 threads allocating at once in a fresh process make no more arenas
    /// than [`arena_limit`], where glibc alone makes more (up to 8 per CPU).
    #[test]
    fn threads_share_at_most_the_capped_arenas() {
        let limit = arena_limit();
        let uncapped = arenas_after_threads("uncapped");
        assert!(uncapped > limit, "glibc alone made {uncapped} arenas");
        let capped = arenas_after_threads("capped");
        assert!(capped <= limit, "{capped} arenas, more than {limit}");
    }
}
