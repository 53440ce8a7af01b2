//! The runtime's typed errors: a caller tells a taken name, a dead env, a missing env and a bad
//! name from any other failure by matching on [`runtime::Error`], not by reading messages.

mod common;
use common::{Env, TestNode};
use runtime::Error;

#[test]
fn callers_tell_failures_apart_by_their_kind() {
    let node = TestNode::new();
    let opts = node.opts("typed");
    let env = Env::spawn(&node.rt, &opts);
    let name = env.state.name.clone();

    let err = runtime::spawn::spawn(&node.rt, &opts).unwrap_err();
    assert!(
        matches!(&err, Error::Exists { name: n } if *n == name),
        "{err:?}"
    );

    // The init dies: the env is still there, but nothing runs in it.
    let init = rustix::process::Pid::from_raw(env.state.init_pid).unwrap();
    rustix::process::kill_process(init, rustix::process::Signal::KILL).unwrap();
    while env.state.alive() {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let argv = ["true".to_string()];
    let err = runtime::exec::command(&node.rt, &env.state, &argv, &[]).unwrap_err();
    assert!(
        matches!(&err, Error::NotRunning { name: n } if *n == name),
        "{err:?}"
    );
    let null = std::fs::File::open("/dev/null").unwrap();
    use rustix::fd::AsFd;
    let stdio = [null.as_fd(), null.as_fd(), null.as_fd()];
    let err = runtime::service::start(&node.rt, &env.state, &argv, &[], stdio).err();
    assert!(matches!(&err, Some(Error::NotRunning { .. })), "{err:?}");

    runtime::boom::boom(&node.rt, &name).unwrap();
    let err = runtime::state::load(&node.rt, &name).unwrap_err();
    assert!(
        matches!(&err, Error::NoSuchEnv { name: n, .. } if *n == name),
        "{err:?}"
    );
    assert!(matches!(
        runtime::check_env_name("a+b+c"),
        Err(Error::BadName { .. })
    ));

    // Anything else is `Failed`, with what was being done: here a state file that is a
    // directory.
    let broken = node.rt.env_dir("broken").unwrap();
    std::fs::create_dir_all(broken.join("state.json")).unwrap();
    let err = runtime::state::load(&node.rt, "broken").unwrap_err();
    assert!(matches!(err, Error::Failed(_)), "{err:?}");
    assert!(format!("{err:#}").contains("reading"), "{err:#}");
    std::fs::remove_dir_all(broken).unwrap();
}
