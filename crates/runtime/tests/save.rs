//! Save: the write layer becomes a snapshot whose export, spawned again, shows exactly the
//! state saved; the env keeps running; the lower is never written.

mod common;
use common::{busybox, Env, TestNode};
use library::{Library, LocalBackend, Score};
use std::path::Path;
use std::sync::Arc;

/// A library in `dir` with the busybox root imported.
fn library_with_base(dir: &Path) -> (Library, Score) {
    let lib =
        Library::open_or_init(Arc::new(LocalBackend::open(dir.join("library")).unwrap())).unwrap();
    let opts = library::import::ImportOptions {
        author: "tester".into(),
        note: "base".into(),
        parent: None,
        progress: &library::progress::Silent,
        allow_devices: false,
    };
    let imported = library::import::dir::import_dir(&lib, &busybox(), &opts).unwrap();
    (lib, imported.score)
}

fn export(lib: &Library, score: Score, dest: &Path) {
    let snap = lib.snapshot(&score).unwrap();
    library::export::dir::export_dir(lib, &snap, dest, &library::progress::Silent).unwrap();
}

#[test]
fn save_boom_respawn_shows_the_saved_state() {
    let node = TestNode::new();
    let (lib, base) = library_with_base(node.path());
    let lower = node.path().join("base");
    export(&lib, base, &lower);

    let mut opts = node.opts("save");
    opts.lower = lower.clone();
    opts.snapshot = Some(base);
    let env = Env::spawn(&node.rt, &opts);
    env.ok(
        "echo data > /root/f && chown 1000:1001 /root/f && chmod 640 /root/f && \
         touch -d '2020-01-02 03:04:05' /root/f && mkdir -p /srv/d && ln -s ../root/f /srv/d/link && \
         rm /etc/group && echo owned-by-root > /tmp/x",
    );
    let imported = runtime::save::save(&node.rt, &env.state.name, &lib)
        .unwrap()
        .imported;
    // The env keeps running and can be saved again.
    assert_eq!(env.ok("cat /root/f"), "data\n");
    // The lower was not written.
    assert!(!lower.join("root/f").exists() && lower.join("etc/group").exists());
    drop(env);

    let lower2 = node.path().join("saved");
    export(&lib, imported.score, &lower2);
    let mut opts = node.opts("saved");
    opts.lower = lower2;
    opts.snapshot = Some(imported.score);
    let env = Env::spawn(&node.rt, &opts);
    let stat = env.ok(
        "stat -c '%a %u %g %s %Y' /root/f; cat /root/f; readlink /srv/d/link; \
                       ls /etc/group 2>&1 | grep -c 'No such'; stat -c '%u %g' /tmp/x",
    );
    assert_eq!(
        stat,
        "640 1000 1001 5 1577934245\ndata\n../root/f\n1\n0 0\n"
    );
}

/// `user.overlay.*` xattrs an env sets on its files (through its overlay, as the env itself
/// can: they are `user.` xattrs of files it owns) are data: the save neither fails on a
/// "redirect" nor drops the parent's directory for an "opaque" mark, and keeps them.
#[test]
fn user_overlay_xattrs_set_by_an_env_are_saved_as_data() {
    let node = TestNode::new();
    let (lib, base) = library_with_base(node.path());
    let lower = node.path().join("base");
    export(&lib, base, &lower);
    let mut opts = node.opts("uxattr");
    opts.lower = lower;
    opts.snapshot = Some(base);
    let env = Env::spawn(&node.rt, &opts);
    env.ok("echo data > /root/f && echo new > /etc/new");
    let root = node.rt.env_dir(&env.state.name).unwrap().join("root");
    let set = |path: &str, name: &str, value: &[u8]| {
        rustix::fs::setxattr(
            root.join(path),
            name,
            value,
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap()
    };
    set("root/f", "user.overlay.redirect", b"/etc");
    set("root/f", "user.overlay.metacopy", b"");
    set("etc", "user.overlay.opaque", b"y");
    let imported = runtime::save::save(&node.rt, &env.state.name, &lib)
        .unwrap()
        .imported;
    let saved = node.path().join("uxattr-export");
    export(&lib, imported.score, &saved);
    assert_eq!(
        std::fs::read_to_string(saved.join("root/f")).unwrap(),
        "data\n"
    );
    // /etc kept the parent's files besides the new one: the mark was not read as opaque.
    assert_eq!(
        std::fs::read_to_string(saved.join("etc/new")).unwrap(),
        "new\n"
    );
    assert!(saved.join("etc/passwd").exists());
    let get = |path: &str, name: &str| {
        let mut buf = [0u8; 64];
        let n = rustix::fs::getxattr(saved.join(path), name, &mut buf).unwrap();
        buf[..n].to_vec()
    };
    assert_eq!(get("root/f", "user.overlay.redirect"), b"/etc");
    assert_eq!(get("etc", "user.overlay.opaque"), b"y");
}

#[test]
fn a_save_keeps_gc_away_until_its_lease_is_dropped() {
    let node = TestNode::new();
    let (lib, base) = library_with_base(node.path());
    let lower = node.path().join("base");
    export(&lib, base, &lower);
    let mut opts = node.opts("refuse");
    opts.lower = lower;
    opts.snapshot = Some(base);
    let env = Env::spawn(&node.rt, &opts);
    let saved = runtime::save::save(&node.rt, &env.state.name, &lib).unwrap();
    // Until the caller has bound a name and dropped the lease, gc cannot start.
    let wait = std::time::Duration::from_millis(300);
    let gc = library::lease::LeaseKind::Exclusive;
    let err = lib
        .lease(gc, wait, &|_| {})
        .err()
        .expect("gc ran during a save");
    assert!(matches!(err, library::Error::Locked(_)), "{err}");
    drop(saved);
    drop(lib.lease(gc, wait, &|_| {}).unwrap());
    // Commands still run (the env is not left frozen).
    assert_eq!(env.ok("echo alive"), "alive\n");
}

#[test]
fn save_while_writing_is_a_point_in_time_capture() {
    let node = TestNode::new();
    let (lib, base) = library_with_base(node.path());
    let lower = node.path().join("base");
    export(&lib, base, &lower);
    let mut opts = node.opts("busy");
    opts.lower = lower;
    opts.snapshot = Some(base);
    let env = Env::spawn(&node.rt, &opts);
    // A writer that replaces a, then b, atomically with the same number each round.
    env.ok(
        "(i=0; while true; do i=$((i+1)); echo $i > /root/t; mv /root/t /root/a; \
         echo $i > /root/t; mv /root/t /root/b; done) >/dev/null 2>&1 &",
    );
    std::thread::sleep(std::time::Duration::from_millis(100));
    let mut saved = Vec::new();
    for _ in 0..3 {
        saved.push(
            runtime::save::save(&node.rt, &env.state.name, &lib)
                .unwrap()
                .imported,
        );
    }
    // The writer was thawed and still runs.
    let a1: u64 = env.ok("cat /root/a").trim().parse().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    let a2: u64 = env.ok("cat /root/a").trim().parse().unwrap();
    assert!(a2 > a1, "writer stopped at {a1}");
    for (n, imp) in saved.iter().enumerate() {
        let dir = node.path().join(format!("busy{n}"));
        export(&lib, imp.score, &dir);
        let read = |f: &str| {
            let text = std::fs::read_to_string(dir.join("root").join(f)).unwrap();
            text.trim()
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("torn {f}: {text:?}"))
        };
        // Frozen between the two renames, b is one behind; never ahead, never torn.
        let (a, b) = (read("a"), read("b"));
        assert!(a == b || a == b + 1, "save {n}: a={a} b={b}");
    }
}

#[test]
fn hostile_content_in_the_upper_is_saved_not_followed() {
    let node = TestNode::new();
    let (lib, base) = library_with_base(node.path());
    let lower = node.path().join("base");
    export(&lib, base, &lower);
    let mut opts = node.opts("hostile");
    opts.lower = lower;
    opts.snapshot = Some(base);
    let env = Env::spawn(&node.rt, &opts);
    // A host path an env symlink names: the save must store the link, never read the target.
    let secret = node.path().join("host-secret");
    std::fs::write(&secret, "host only").unwrap();
    env.ok(&format!(
        "cd /root && ln -s {} l && ln -s ../../../../.. up && mkfifo fifo && \
         touch \"$(printf 'new\\nline')\" && d=deep && for i in $(seq 100); do d=$d/d; done && \
         mkdir -p $d && echo bottom > $d/f && dd if=/dev/zero of=grow bs=1k count=1 2>/dev/null && \
         (while true; do echo more >> grow; done) >/dev/null 2>&1 &",
        secret.display()
    ));
    let imp = runtime::save::save(&node.rt, &env.state.name, &lib)
        .unwrap()
        .imported;
    let dir = node.path().join("hostile-export");
    export(&lib, imp.score, &dir);
    let root = dir.join("root");
    assert_eq!(std::fs::read_link(root.join("l")).unwrap(), secret);
    assert_eq!(
        std::fs::read_link(root.join("up")).unwrap(),
        Path::new("../../../../..")
    );
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::symlink_metadata(root.join("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert!(root.join("new\nline").exists());
    let deep: std::path::PathBuf = std::iter::once("deep")
        .chain(std::iter::repeat_n("d", 100))
        .collect();
    assert_eq!(
        std::fs::read_to_string(root.join(deep).join("f")).unwrap(),
        "bottom\n"
    );
    assert!(std::fs::metadata(root.join("grow")).unwrap().len() >= 1024);
}
