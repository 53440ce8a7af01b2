//! An env's `/proc` shows its limits end to end (issue 11): spawned through the node with
//! `--mem` and `--cpus` from the Debian root, procps' `free` (the host's, copied in) shows its
//! memory limit and the memory it uses, coreutils' `nproc`, glibc's `getconf
//! _NPROCESSORS_ONLN` (what `os.cpu_count()` asks), `/proc/cpuinfo` and `/proc/stat` its cpus;
//! `/proc/uptime` counts from its start and `/proc/loadavg` its own tasks.

use crate::common;

use common::site::*;
use std::process::Command;

/// The host file that `path` resolves to (a library's versioned name).
fn real(path: &str) -> String {
    std::fs::canonicalize(path)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string()
}

/// Writes host file `from` to `to` in env `env` (mode 755), through `exec --stdin`.
fn put(user: &User, env: &str, from: &str, to: &str) {
    let b64 = Command::new("base64").args(["-w0", from]).output().unwrap();
    let script = format!("base64 -d > {to} && chmod 755 {to}");
    let out = user.sg(
        "exec",
        &["--stdin", env, "--", "sh", "-c", &script],
        Some(&text(&b64.stdout)),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// Puts the host's procps `free` (and its library) into env `env` (the Debian root has no
/// procps).
fn with_free(user: &User, env: &str) {
    put(user, env, "/usr/bin/free", "/usr/local/bin/free");
    let lib = real("/lib/x86_64-linux-gnu/libproc2.so.0");
    put(user, env, &lib, "/usr/lib/x86_64-linux-gnu/libproc2.so.0");
}

/// `free -b`'s `Mem:` line in env `env`: (total, used).
fn free(user: &User, env: &str) -> (u64, u64) {
    let (code, out, err) = user.exec(env, "/usr/local/bin/free -b");
    assert_eq!(code, 0, "free: {err}");
    let mem = out
        .lines()
        .find(|l| l.starts_with("Mem:"))
        .unwrap_or_else(|| panic!("free said {out}"));
    let f: Vec<u64> = mem
        .split_whitespace()
        .skip(1)
        .map(|n| n.parse().unwrap())
        .collect();
    (f[0], f[1])
}

#[test]
fn free_and_nproc_show_the_envs_limits() {
    let site = Site::new("views");
    let owner = who("alice");
    let base = common::base().to_str().unwrap();
    let data = site.data_str();
    site.admin(
        &[
            "lib", "--data", data, "--owner", &owner, "import", "deb", base,
        ],
        None,
    );
    site.start("127.0.0.1:0");
    let alice = site.user("alice");
    alice.login();
    alice.ok("spawn", &["deb", "--mem", "200M", "--cpus", "1"]);
    with_free(&alice, "deb");

    let (total, used) = free(&alice, "deb");
    assert_eq!(total, 200 << 20);
    assert_eq!(alice.exec("deb", "nproc").1.trim(), "1");
    let (_, processors, _) = alice.exec("deb", "grep -c ^processor /proc/cpuinfo");
    assert_eq!(processors.trim(), "1");
    let (_, stat_cpus, _) = alice.exec("deb", "grep -c '^cpu[0-9]' /proc/stat");
    assert_eq!(stat_cpus.trim(), "1");
    assert_eq!(alice.exec("deb", "getconf _NPROCESSORS_ONLN").1.trim(), "1");
    let first = |text: &str, n: usize| text.split_whitespace().nth(n).unwrap().to_string();
    let host_uptime: f64 = first(&std::fs::read_to_string("/proc/uptime").unwrap(), 0)
        .parse()
        .unwrap();
    let uptime: f64 = first(&alice.exec("deb", "cat /proc/uptime").1, 0)
        .parse()
        .unwrap();
    assert!(
        uptime < 120.0 && uptime < host_uptime,
        "the env is up {uptime} s, the host {host_uptime} s"
    );
    let tasks = |loadavg: &str| -> u64 {
        let field = first(loadavg, 3);
        field.split_once('/').unwrap().1.parse().unwrap()
    };
    let env_tasks = tasks(&alice.exec("deb", "cat /proc/loadavg").1);
    let host_tasks = tasks(&std::fs::read_to_string("/proc/loadavg").unwrap());
    assert!(
        env_tasks <= 10 && env_tasks < host_tasks,
        "the env's loadavg counts {env_tasks} tasks (the host {host_tasks})"
    );
    // 64 MiB in a tmpfs of the env: `free` sees it within the view's refresh.
    let (code, _, err) = alice.exec("deb", "head -c 64M /dev/zero > /dev/shm/fill");
    assert_eq!(code, 0, "{err}");
    eventually("free to count the 64 MiB", || {
        free(&alice, "deb").1 >= used + (60 << 20)
    });

    // Without limits: the node's default memory, every cpu of the host.
    alice.ok("spawn", &["deb", "--as", "plain"]);
    with_free(&alice, "plain");
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(alice.exec("plain", "nproc").1.trim(), cpus.to_string());
    let online = alice.exec("plain", "getconf _NPROCESSORS_ONLN").1;
    assert_eq!(online.trim(), cpus.to_string());
    assert_eq!(free(&alice, "plain").0, 512 << 20);
    // More cpus than the node has (or a number past any quota): one line, nothing spawned.
    for too_many in [format!("{}", cpus + 1), "3.6e306".to_string()] {
        let err = alice.refused("spawn", &["deb", "--as", "big", "--cpus", &too_many]);
        assert!(
            err.contains(&format!(
                "is not possible on this node: give from 0.01 to {cpus} cpus"
            )),
            "{err}"
        );
    }
    assert!(!alice.env_names().contains(&"big".to_string()));

    alice.ok("boom", &["deb"]);
    alice.ok("boom", &["plain"]);
    let envs = site.data().join("envs");
    assert!(
        !mounted_under(&envs),
        "mounts left under {}",
        envs.display()
    );
}
