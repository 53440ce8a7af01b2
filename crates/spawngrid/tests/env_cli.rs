//! `spawngrid env` end to end through the binary (as root): a name spawned over its snapfs
//! mount, exec with exit codes, ls from a fresh process, save, boom, spawn of the saved name.

use crate::common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};

fn sg(data: &Path, args: &[&str]) -> Output {
    Command::new(common::bin())
        .arg("--json")
        .args(&args[..1])
        .arg("--data")
        .arg(data)
        .args(&args[1..])
        .output()
        .unwrap()
}

fn ok(data: &Path, args: &[&str]) -> String {
    let out = sg(data, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Booms the envs and unmounts the snapshot mounts of a data directory on a private tmpfs.
struct Data(tempfile::TempDir);

impl Drop for Data {
    fn drop(&mut self) {
        common::clean_envs(&self.0.path().join("data"));
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

/// A data directory on a fresh tmpfs of `size`.
fn scratch(size: &str) -> (Data, std::path::PathBuf) {
    let tmp = Data(
        tempfile::Builder::new()
            .prefix("sg-envcli-")
            .tempdir_in("/tmp")
            .unwrap(),
    );
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(tmp.0.path())
        .status();
    assert!(st.unwrap().success());
    let data = tmp.0.path().join("data");
    (tmp, data)
}

/// Kills the server of every snapshot mount of `data` (`kill -9`) and waits until each
/// keeper has started a new one.
fn kill_mount_servers(data: &Path) {
    let record = |p: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    let mut killed = 0;
    for e in std::fs::read_dir(data.join("mounts")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let before = record(&p);
        let st = Command::new("kill")
            .args(["-9", &before["server"].to_string()])
            .status();
        assert!(st.unwrap().success());
        while record(&p)["restarts"] == before["restarts"] {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        killed += 1;
    }
    assert!(killed > 0, "no snapshot mount in {}", data.display());
}

/// Work inside a Debian env: a user added, files with odd modes, owners, times, a hardlink,
/// a symlink, a FIFO, a deleted file, 3 MiB of random bytes.
const WORK: &str = "set -e
useradd -m -s /bin/bash carol
mkdir -p /srv/w && cd /srv/w
printf 'hello\\n' > file && chown carol:carol file && chmod 4751 file
ln file hard && ln -s /etc/hostname link && mkfifo fifo
touch -h -d '2001-02-03 04:05:06.123456789' file link
head -c 3145728 /dev/urandom > big
rm /etc/motd
su carol -c 'echo mine > ~/note'";

/// What must survive a save and respawn, as seen from inside (directory sizes are the
/// filesystem's own business).
const LISTING: &str = "find /srv/w /home/carol -printf '%p %y %m %U %G %s %T@ %l\\n' | awk '$2 == \"d\" { $6 = \"-\" } 1' | sort
sha256sum /srv/w/file /srv/w/big /home/carol/note
[ /srv/w/file -ef /srv/w/hard ] && echo hardlinked
grep carol /etc/passwd /etc/shadow /etc/group | cut -d: -f1-2,4-
test -e /etc/motd || echo motd-gone
whoami; hostname";

#[test]
fn debian_env_work_save_respawn_is_exact() {
    let (_tmp, data) = scratch("1g");
    ok(
        &data,
        &["lib", "import", "deb", common::base().to_str().unwrap()],
    );
    ok(&data, &["env", "spawn", "deb", "--as", "work"]);
    let run =
        |env: &str, script: &str| ok(&data, &["env", "exec", env, "--", "bash", "-c", script]);
    run("work", WORK);
    let before = run("work", LISTING);
    assert!(
        before.contains("hardlinked") && before.contains("motd-gone"),
        "{before}"
    );
    assert!(before.contains("/srv/w/file f 4751"), "{before}");
    // The snapshot's mount server dies; its keeper replaces it and the env carries on,
    // reading files of the lower layer it had not looked at before.
    kill_mount_servers(&data);
    assert_eq!(run("work", LISTING), before);
    let pkgs = run("work", "dpkg-query -W | wc -l; md5sum /usr/bin/* | wc -l");
    assert!(
        pkgs.lines().all(|l| l.trim().parse::<u32>().unwrap() > 50),
        "{pkgs}"
    );
    ok(&data, &["env", "save", "work", "deb-work"]);
    // The env keeps running after a save.
    assert_eq!(run("work", "cat /home/carol/note"), "mine\n");
    ok(&data, &["env", "boom", "work"]);
    ok(&data, &["env", "spawn", "deb-work", "--as", "work"]);
    assert_eq!(run("work", LISTING), before);
    // The original name is unchanged.
    ok(&data, &["env", "spawn", "deb", "--as", "orig"]);
    assert_eq!(
        run(
            "orig",
            "test -e /srv/w; echo $?; test -e /etc/motd; echo $?; id carol 2>&1 | tail -c 14"
        ),
        "1\n0\n no such user\n"
    );
}

#[test]
fn spawn_exec_ls_save_boom_through_the_cli() {
    let (_tmp, data) = scratch("512m");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/rootfs.sh");
    let root = Command::new(script).arg("busybox").output().unwrap();
    let root = String::from_utf8(root.stdout).unwrap();
    ok(&data, &["lib", "import", "bb", root.trim()]);

    ok(&data, &["env", "spawn", "bb", "--as", "cli"]);
    let out = sg(
        &data,
        &[
            "env",
            "exec",
            "cli",
            "--",
            "sh",
            "-c",
            "echo hi; echo err >&2; exit 3",
        ],
    );
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    ok(
        &data,
        &[
            "env",
            "exec",
            "cli",
            "--",
            "sh",
            "-c",
            "echo saved > /root/file",
        ],
    );

    // cpu through pipes: a shell on a terminal inside, end of input is end of the shell.
    let cpu = Command::new(env!("CARGO_BIN_EXE_spawngrid"))
        .args(["env", "--data", data.to_str().unwrap(), "cpu", "cli"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    cpu.stdin
        .as_ref()
        .unwrap()
        .write_all(b"tty; stty size; exit 4\n")
        .unwrap();
    let out = cpu.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{text}");
    assert!(
        text.contains("/dev/pts/0") && text.contains("24 80"),
        "{text}"
    );
    // cpu on a real terminal: prompt, size, resize, ^C, exit code, the terminal restored.
    let data_arg = data.to_str().unwrap();
    common::terminal_session(
        None,
        &[common::bin(), "env", "--data", data_arg, "cpu", "cli"],
    );

    let ls: serde_json::Value = serde_json::from_str(&ok(&data, &["env", "ls"])).unwrap();
    assert_eq!(ls[0]["env"], "cli");
    assert_eq!(ls[0]["running"], true);

    ok(&data, &["env", "save", "cli", "bb2"]);
    ok(&data, &["env", "boom", "cli"]);
    ok(&data, &["env", "boom", "cli"]);
    ok(&data, &["env", "spawn", "bb2", "--as", "cli2"]);
    assert_eq!(
        ok(&data, &["env", "exec", "cli2", "--", "cat", "/root/file"]),
        "saved\n"
    );
    ok(&data, &["env", "boom", "cli2"]);
    assert_eq!(ok(&data, &["env", "ls"]).trim(), "[]");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mountinfo.contains(data.join("envs").to_str().unwrap()),
        "{mountinfo}"
    );
}

/// The busybox root built by scripts/rootfs.sh.
fn busybox() -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/rootfs.sh");
    let root = Command::new(script).arg("busybox").output().unwrap();
    String::from_utf8(root.stdout).unwrap().trim().to_string()
}

/// Mount points under `dir`.
fn mounts_under(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = dir.to_str().unwrap();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(dir))
        .map(str::to_string)
        .collect()
}

/// A data directory whose parent the env's ids cannot traverse (another user's, mode 0700, as
/// a home directory or `mktemp -d`) spawns; its failed spawn leaves nothing mounted; the data
/// directory and the catalog (password hashes) are root's alone.
#[test]
fn private_parent_spawns_and_a_failed_spawn_leaves_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let (tmp, data) = scratch("256m");
    let parent = tmp.0.path();
    ok(&data, &["lib", "import", "bb", &busybox()]);
    let st = Command::new("chown")
        .arg("65534:65534")
        .arg(parent)
        .status();
    assert!(st.unwrap().success());
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700)).unwrap();

    // Fails after mounting the snapshot (the env name is refused): nothing is left.
    let out = sg(&data, &["env", "spawn", "bb", "--as", "bad,name"]);
    assert!(!out.status.success());
    assert_eq!(mounts_under(&data), Vec::<String>::new());

    ok(&data, &["env", "spawn", "bb", "--as", "home"]);
    assert_eq!(
        ok(&data, &["env", "exec", "home", "--", "hostname"]),
        "home\n"
    );
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        (mode(&data), mode(&data.join("catalog.db"))),
        (0o700, 0o600)
    );
    ok(&data, &["env", "boom", "home"]);
}

/// Device nodes are dropped at import (named in the report) unless `--allow-devices`; kept
/// ones open nothing: the snapshot's mount and the env's root are nodev.
#[test]
fn device_nodes_are_dropped_at_import_unless_allowed() {
    let (_tmp, data) = scratch("256m");
    let root = data.parent().unwrap().join("devroot");
    let st = Command::new("cp")
        .arg("-a")
        .arg(busybox())
        .arg(&root)
        .status();
    assert!(st.unwrap().success());
    let st = Command::new("mknod")
        .args(["-m", "666"])
        .arg(root.join("zero"))
        .args(["c", "1", "5"])
        .status();
    assert!(st.unwrap().success());

    let report: serde_json::Value = serde_json::from_str(&ok(
        &data,
        &["lib", "import", "nodev", root.to_str().unwrap()],
    ))
    .unwrap();
    let warnings = report["warnings"].to_string();
    assert!(
        warnings.contains("dropped character device") && warnings.contains("zero (1:5)"),
        "{warnings}"
    );
    ok(&data, &["env", "spawn", "nodev", "--as", "nodev"]);
    let out = sg(&data, &["env", "exec", "nodev", "--", "ls", "/zero"]);
    assert!(!out.status.success());

    let args = [
        "lib",
        "import",
        "dev",
        root.to_str().unwrap(),
        "--allow-devices",
    ];
    let report: serde_json::Value = serde_json::from_str(&ok(&data, &args)).unwrap();
    assert_eq!(report["warnings"], serde_json::json!([]));
    ok(&data, &["env", "spawn", "dev", "--as", "dev"]);
    let script = "stat -c '%t:%T' /zero; head -c 4 /zero | od -An -tx1";
    let out = sg(&data, &["env", "exec", "dev", "--", "sh", "-c", script]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(stdout.lines().next(), Some("1:5"), "{stdout}{stderr}");
    assert!(stderr.contains("Permission denied"), "{stdout}{stderr}");
    // Even host root cannot open it through the snapshot's mount.
    let mounted = mounts_under(&data.join("mounts"));
    assert!(!mounted.is_empty());
    for m in mounted {
        let err = std::fs::File::open(Path::new(&m).join("zero")).err();
        if Path::new(&m).join("zero").exists() {
            assert_eq!(
                err.map(|e| e.kind()),
                Some(std::io::ErrorKind::PermissionDenied)
            );
        }
    }
}

/// `env exec` on the admin's terminal: a process the command leaves behind (its own session,
/// so the command's end does not kill it) cannot read what the admin types next.
#[test]
fn a_process_left_behind_by_exec_cannot_read_the_admins_terminal() {
    use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
    let (_tmp, data) = scratch("256m");
    ok(&data, &["lib", "import", "bb", &busybox()]);
    ok(&data, &["env", "spawn", "bb", "--as", "tty"]);
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
    grantpt(&master).unwrap();
    unlockpt(&master).unwrap();
    let name = ptsname(&master, Vec::new()).unwrap();
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(name.to_str().unwrap())
        .unwrap();
    let daemon = "exec 3<&0; setsid sh -c 'read l <&3; echo \"got:$l\" > /stolen' & exit 0";
    let st = Command::new(common::bin())
        .args(["env", "--data", data.to_str().unwrap(), "exec", "tty", "--"])
        .args(["sh", "-c", daemon])
        .stdin(slave.try_clone().unwrap())
        .stdout(slave.try_clone().unwrap())
        .stderr(slave)
        .status()
        .unwrap();
    assert!(st.success());
    // The admin types a line at the shell prompt that follows.
    rustix::io::write(&master, b"secret\n").unwrap();
    let mut stolen = String::new();
    for _ in 0..2000 {
        let out = sg(&data, &["env", "exec", "tty", "--", "cat", "/stolen"]);
        if out.status.success() {
            stolen = String::from_utf8(out.stdout).unwrap();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(stolen, "got:\n");
}

/// On a store whose catalog is PostgreSQL (a grid's), `env save` binds under its lease: a
/// save stopped just before its bind (`SPAWNGRID_FAULT_STOP=before-bind`, as a frozen process
/// or a long catalog outage leaves it) until its lease expired fails in one line and binds
/// nothing; the next save works. (It used to bind regardless: a name on objects gc may have
/// deleted meanwhile.)
#[cfg(feature = "faults")]
#[test]
fn env_save_on_a_grid_store_binds_nothing_once_its_lease_expired() {
    let Some(schema) = catalog::testing::Schema::new("envsave_lease") else {
        return;
    };
    let (_tmp, data) = scratch("512m");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("store.toml"),
        format!("catalog = \"{}\"\nlease_secs = 1\n", schema.url()),
    )
    .unwrap();
    ok(&data, &["lib", "import", "bb", &busybox()]);
    ok(&data, &["env", "spawn", "bb", "--as", "w"]);
    ok(
        &data,
        &["env", "exec", "w", "--", "sh", "-c", "echo v1 > /root/f"],
    );
    let save = Command::new(common::bin())
        .args(["env", "--data", data.to_str().unwrap(), "save", "w", "late"])
        .env("SPAWNGRID_FAULT_STOP", "before-bind")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stat = format!("/proc/{}/stat", save.id());
    let waited = std::time::Instant::now();
    while !std::fs::read_to_string(&stat)
        .unwrap()
        .rsplit_once(") ")
        .is_some_and(|(_, rest)| rest.starts_with('T'))
    {
        // Not a speed check: a save that never stops would leave this waiting forever.
        assert!(
            waited.elapsed() < std::time::Duration::from_secs(120),
            "never stopped"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(std::time::Duration::from_secs(3));
    let pid = rustix::process::Pid::from_raw(save.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
    let out = save.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(!out.status.success(), "the late save bound: {err}");
    assert!(
        last.contains("lease") && last.contains("nothing was bound"),
        "{err}"
    );
    let log = sg(&data, &["lib", "log", "late"]);
    assert!(!log.status.success(), "late is bound");
    ok(&data, &["env", "save", "w", "after"]);
    ok(&data, &["env", "spawn", "after", "--as", "w2"]);
    assert_eq!(
        ok(&data, &["env", "exec", "w2", "--", "cat", "/root/f"]),
        "v1\n"
    );
}
