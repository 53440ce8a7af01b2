//! Faults: a Garage node stopped under the backend, and an endpoint that never answers.

mod garage;

use library::Backend;
use s3::{S3Backend, S3Options};
use std::time::{Duration, Instant};

/// A stopped Garage node, started again when dropped (also when the test fails).
struct StoppedNode<'a>(&'a garage::Garage, &'static str);

impl<'a> StoppedNode<'a> {
    fn stop(g: &'a garage::Garage, node: &'static str) -> StoppedNode<'a> {
        g.script(&["stop-node", node]);
        StoppedNode(g, node)
    }
}

impl Drop for StoppedNode<'_> {
    fn drop(&mut self) {
        self.0.script(&["start-node", self.1]);
    }
}

#[test]
fn survives_a_stopped_node() {
    let Some(g) = garage::garage("survives_a_stopped_node") else {
        return;
    };
    let b = g.backend("stopped-node");
    b.put("before", b"written with 3 nodes").unwrap();
    let stopped = StoppedNode::stop(&g, "3");
    let data = library::backend::conformance::data("one node down", 5 << 20);
    b.put("during", &data).unwrap();
    assert_eq!(b.get("during").unwrap(), data);
    assert_eq!(b.get("before").unwrap(), b"written with 3 nodes");
    assert_eq!(b.get_range("during", 1000, 10).unwrap(), data[1000..1010]);
    let keys: Vec<String> = b.list("").unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, ["before", "during"]);
    drop(stopped);
    assert_eq!(b.list("").unwrap().len(), 2);
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
