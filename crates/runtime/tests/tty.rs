//! Interactive sessions: a shell on a terminal inside the env, resize, ^C, exit status.

mod common;
use common::{Env, TestNode};
use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Waits until the collected output contains `want`.
fn wait_for(out: &Mutex<Vec<u8>>, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&out.lock().unwrap()).contains(want) {
        assert!(
            Instant::now() < deadline,
            "no {want:?} in {:?}",
            String::from_utf8_lossy(&out.lock().unwrap())
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn shell_on_a_terminal_with_resize_interrupt_and_exit_code() {
    let node = TestNode::new();
    let env = Env::spawn(&node.rt, &node.opts("tty"));
    let mut tty =
        runtime::tty::Tty::spawn(&node.rt, &env.state, &["sh".to_string()], &[], 24, 80).unwrap();
    let mut input = std::fs::File::from(tty.master.try_clone().unwrap());
    let mut output = std::fs::File::from(tty.master.try_clone().unwrap());
    let out = Arc::new(Mutex::new(Vec::new()));
    let sink = out.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        // Ends with EIO once the shell and everything holding the slave are gone.
        while let Ok(n @ 1..) = output.read(&mut buf) {
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    input.write_all(b"stty size; tty\n").unwrap();
    wait_for(&out, "24 80");
    wait_for(&out, "/dev/pts/0");
    tty.resize(40, 100).unwrap();
    input.write_all(b"stty size\n").unwrap();
    wait_for(&out, "40 100");
    // ^C reaches the foreground job through the line discipline.
    let start = Instant::now();
    input.write_all(b"sleep 100\n").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    input.write_all(b"\x03").unwrap();
    input.write_all(b"exit 5\n").unwrap();
    assert_eq!(tty.wait().unwrap(), 5);
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "^C did not interrupt sleep"
    );
    drop(input);
    drop(tty);
    reader.join().unwrap();
}
