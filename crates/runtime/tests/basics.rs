//! Spawn, exec, identity inside, and the first latency figure.

mod common;
use common::{Env, TestNode};

#[test]
fn spawn_exec_echo_and_exit_codes() {
    let node = TestNode::new();
    let env = Env::spawn(&node.rt, &node.opts("echo"));
    let out = env.run(&["echo", "hi"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hi\n",
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(env.sh("exit 7").status.code(), Some(7));
    let out = env.sh("echo out; echo err >&2");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
}
