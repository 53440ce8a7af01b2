//! Boom and failed spawns leave nothing: no mounts, cgroups, processes or files; and envs
//! outlive the process that spawned them.

mod common;
use common::{assert_gone, unique, Env, TestNode};

#[test]
fn boom_leaves_nothing_and_is_idempotent() {
    let node = TestNode::new();
    let env = Env::spawn(&node.rt, &node.opts("boom"));
    env.ok("sleep 100 >/dev/null 2>&1 & echo x > /root/f");
    let (name, pid) = (env.state.name.clone(), env.state.init_pid);
    runtime::boom::boom(&node.rt, &name).unwrap();
    // Booming the env's own busy-ness away must have killed the backgrounded sleep too.
    assert_gone(&node, &name, pid);
    runtime::boom::boom(&node.rt, &name).unwrap();
    drop(env);
}

#[test]
fn failed_spawn_at_every_step_leaves_nothing() {
    let node = TestNode::new();
    for step in runtime::spawn::STEPS {
        let mut opts = node.opts("fail");
        opts.fail_after = Some(step.to_string());
        let err = runtime::spawn::spawn(&node.rt, &opts).unwrap_err();
        assert!(
            format!("{err:#}").contains("injected failure"),
            "{step}: {err:#}"
        );
        assert_gone(&node, &opts.name, 0);
    }
    // A failure inside the new namespaces (the init cannot mount /dev over a regular file)
    // is reported and cleaned up the same way.
    let lower = node.path().join("bad-lower");
    let cp = std::process::Command::new("cp")
        .arg("-a")
        .arg(common::busybox())
        .arg(&lower)
        .status();
    assert!(cp.unwrap().success());
    std::fs::write(lower.join("dev"), "not a directory").unwrap();
    let mut opts = node.opts("badinit");
    opts.lower = lower;
    let err = runtime::spawn::spawn(&node.rt, &opts).unwrap_err();
    assert!(format!("{err:#}").contains("env-init"), "{err:#}");
    assert_gone(&node, &opts.name, 0);
    // A lower that does not exist fails cleanly too.
    let mut opts = node.opts("nolower");
    opts.lower = node.path().join("missing");
    assert!(runtime::spawn::spawn(&node.rt, &opts).is_err());
    assert_gone(&node, &opts.name, 0);
}

#[test]
fn env_outlives_a_killed_spawner_and_is_readopted() {
    let node = TestNode::new();
    let name = unique("adopt");
    // The spawner is a separate process (a copy of this test binary running only the child
    // test below), killed with SIGKILL after it has spawned.
    let exe = std::env::current_exe().unwrap();
    let mut child = std::process::Command::new(exe)
        .args(["--exact", "spawner_child", "--nocapture", "--ignored"])
        .env("SG_ADOPT_DATA", &node.rt.data)
        .env("SG_ADOPT_NAME", &name)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let state_file = node.rt.env_dir(&name).unwrap().join("state.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if let Ok(st) = runtime::state::load(&node.rt, &name) {
            if st.alive() {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no env at {}",
            state_file.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let listed = runtime::state::list(&node.rt).unwrap();
    let st = listed.iter().find(|e| e.name == name).expect("env listed");
    assert!(st.alive());
    let env = Env {
        rt: &node.rt,
        state: st.clone(),
    };
    assert_eq!(env.ok("echo still here"), "still here\n");
}

/// The spawning process of `env_outlives_a_killed_spawner_and_is_readopted`.
#[test]
#[ignore = "run by env_outlives_a_killed_spawner_and_is_readopted"]
fn spawner_child() {
    let (Ok(data), Ok(name)) = (
        std::env::var("SG_ADOPT_DATA"),
        std::env::var("SG_ADOPT_NAME"),
    ) else {
        return;
    };
    let rt = runtime::Runtime::new(data, env!("CARGO_BIN_EXE_spawngrid-env-helper")).unwrap();
    let opts = runtime::SpawnOptions::new(&name, "tester", &common::busybox());
    runtime::spawn::spawn(&rt, &opts).unwrap();
    std::thread::sleep(std::time::Duration::from_secs(60));
}
