//! Faults: a Garage node stopped under the backend, and an endpoint that never answers.

mod garage;

use library::backend::conformance;
use library::Backend;
use s3::{S3Backend, S3Options};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// One node fault at a time (two nodes down is no quorum at all).
static NODE_FAULTS: Mutex<()> = Mutex::new(());

/// A fault on a Garage node, undone when dropped (also when the test fails).
struct Fault<'a> {
    garage: &'a garage::Garage,
    undo: [&'static str; 2],
    _alone: MutexGuard<'static, ()>,
}

impl<'a> Fault<'a> {
    fn new(
        garage: &'a garage::Garage,
        action: &str,
        undo: &'static str,
        node: &'static str,
    ) -> Self {
        let alone = NODE_FAULTS.lock().unwrap_or_else(|e| e.into_inner());
        garage.script(&[action, node]);
        Fault {
            garage,
            undo: [undo, node],
            _alone: alone,
        }
    }
}

impl Drop for Fault<'_> {
    fn drop(&mut self) {
        self.garage.script(&self.undo);
    }
}

#[test]
fn survives_a_stopped_node() {
    let Some(g) = garage::garage("survives_a_stopped_node") else {
        return;
    };
    let b = g.backend("stopped-node");
    b.put("before", b"written with 3 nodes").unwrap();
    let stopped = Fault::new(&g, "stop-node", "start-node", "3");
    let data = conformance::data("one node down", 5 << 20);
    b.put("during", &data).unwrap();
    assert_eq!(b.get("during").unwrap(), data);
    assert_eq!(b.get("before").unwrap(), b"written with 3 nodes");
    assert_eq!(b.get_range("during", 1000, 10).unwrap(), data[1000..1010]);
    let keys: Vec<String> = b.list("").unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["before", "during"]);
    drop(stopped);
    assert_eq!(b.list("").unwrap().len(), 2);
}

/// A frozen node (no answers, no refused connections) stalls Garage's writes until it is
/// declared down, which takes longer than one request timeout: the retry budget rides it out.
#[test]
fn rides_through_a_silently_partitioned_node() {
    let Some(g) = garage::garage("rides_through_a_silently_partitioned_node") else {
        return;
    };
    let b = g.backend("paused-node");
    let paused = Fault::new(&g, "pause-node", "resume-node", "3");
    let pack = conformance::data("pack", 32 << 20);
    let t = Instant::now();
    b.put("packs/p", &pack).unwrap();
    assert_eq!(b.get("packs/p").unwrap(), pack);
    assert_eq!(
        b.get_range("packs/p", 20 << 20, 100).unwrap(),
        pack[20 << 20..(20 << 20) + 100]
    );
    assert_eq!(
        b.list("packs/").unwrap(),
        vec![("packs/p".to_string(), 32 << 20)]
    );
    println!(
        "32 MiB put, get, range read and list with node 3 frozen: {:?}",
        t.elapsed()
    );
    drop(paused);
}

#[test]
fn gives_up_after_the_retry_budget_with_one_clear_line() {
    // Accepts connections (the kernel does, from the backlog) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let options = S3Options {
        endpoint: Some(endpoint.clone()),
        region: Some("garage".into()),
        access_key_id: Some("GKtest".into()),
        secret_access_key: Some("do-not-print-me".into()),
        request_timeout: Duration::from_secs(1),
        retry_budget: Duration::from_secs(3),
        ..S3Options::default()
    };
    let b = S3Backend::open("s3://spawngrid/lib", &options).unwrap();
    let t = Instant::now();
    let err = b.get("packs/ab/cd").unwrap_err().to_string();
    let took = t.elapsed();
    println!("{err}\n(after {took:?})");
    assert!(!err.contains('\n'), "one line: {err}");
    for part in [
        "reading s3://spawngrid/lib/packs/ab/cd",
        "S3 GET",
        endpoint.as_str(),
        "retry budget 3s",
        "last error: no answer within 1s",
        "raise the retry budget",
    ] {
        assert!(err.contains(part), "{part:?} missing from: {err}");
    }
    assert!(!err.contains("do-not-print-me"));
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[test]
fn missing_keys_are_not_retried() {
    let Some(g) = garage::garage("missing_keys_are_not_retried") else {
        return;
    };
    let b = g.backend("missing");
    let t = Instant::now();
    let err = b.get("nothing/here").unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(!b.exists("nothing/here").unwrap());
}
