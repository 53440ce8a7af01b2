//! Faults: a Garage node stopped under the backend, an endpoint that never answers, and a link
//! that damages or delays what the backend sends.

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

/// A TCP proxy in front of an S3 endpoint: what clients send goes through `upstream` (which
/// may damage or delay it), answers come back unchanged.
struct Proxy {
    addr: std::net::SocketAddr,
}

impl Proxy {
    fn start(endpoint: &str, upstream: fn(std::net::TcpStream, std::net::TcpStream)) -> Proxy {
        let server_addr = endpoint
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = std::net::TcpStream::connect(&server_addr) else {
                    continue;
                };
                let (client2, server2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || upstream(client, server));
                std::thread::spawn(move || pass(server2, client2));
            }
        });
        Proxy { addr }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// What [`damage`] damages.
const MARK: &[u8] = b"DAMAGE-ME";

/// Copies `from` to `to`, flipping the last byte of each `MARK` (it has no repeated prefix,
/// so counting matched bytes finds every occurrence, also across reads).
fn damage(mut from: std::net::TcpStream, mut to: std::net::TcpStream) {
    use std::io::{Read, Write};
    let (mut buf, mut matched) = (vec![0u8; 64 << 10], 0);
    while let Ok(n @ 1..) = from.read(&mut buf) {
        for b in &mut buf[..n] {
            matched = if *b == MARK[matched] {
                matched + 1
            } else {
                usize::from(*b == MARK[0])
            };
            if matched == MARK.len() {
                *b ^= 1;
                matched = 0;
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// Copies `from` to `to` unchanged.
fn pass(mut from: std::net::TcpStream, mut to: std::net::TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// Bodies are not signed, but the store checks each PUT's CRC-64: a body damaged on the way
/// is refused in one line and not stored, while an intact one through the same proxy is.
#[test]
fn a_body_damaged_in_transit_is_refused() {
    let Some(g) = garage::garage("a_body_damaged_in_transit_is_refused") else {
        return;
    };
    let proxy = Proxy::start(&g.options().endpoint.unwrap(), damage);
    let options = S3Options {
        endpoint: Some(proxy.url()),
        retry_budget: Duration::from_secs(2),
        ..g.options()
    };
    let url = g.url("damaged");
    let through = S3Backend::open(&url, &options).unwrap();
    let intact = conformance::data("intact", 1 << 20);
    through.put("packs/intact", &intact).unwrap();
    let mut data = conformance::data("damaged", 1 << 20);
    data[300_000..300_000 + MARK.len()].copy_from_slice(MARK);
    let err = through.put("packs/damaged", &data).unwrap_err().to_string();
    println!("{err}");
    assert!(!err.contains('\n'), "one line: {err}");
    assert!(
        err.contains("writing") && err.contains("packs/damaged"),
        "{err}"
    );
    let direct = S3Backend::open(&url, &g.options()).unwrap();
    assert!(!direct.exists("packs/damaged").unwrap());
    assert_eq!(direct.get("packs/intact").unwrap(), intact);
}

/// The delay [`slow`] adds to every request.
const SLOW_LINK: Duration = Duration::from_millis(400);

/// Copies `from` to `to`, each read [`SLOW_LINK`] late (a request comes in one read).
fn slow(mut from: std::net::TcpStream, mut to: std::net::TcpStream) {
    use std::io::{Read, Write};
    let mut buf = vec![0u8; 64 << 10];
    while let Ok(n @ 1..) = from.read(&mut buf) {
        std::thread::sleep(SLOW_LINK);
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// A listing of three pages (S3 pages hold 1000 keys) over a link that delays every request
/// by 0.4 s takes longer than the request timeout of one second, and lists every key:
/// the timeout is per page. (Timed as one request, it could never complete.)
#[test]
fn a_listing_longer_than_the_request_timeout_completes() {
    let Some(g) = garage::garage("a_listing_longer_than_the_request_timeout_completes") else {
        return;
    };
    // Timed pages: not while another test stalls a node.
    let _healthy = NODE_FAULTS.lock().unwrap_or_else(|e| e.into_inner());
    let url = g.url("long-listing");
    let direct = S3Backend::open(&url, &g.options()).unwrap();
    let keys: Vec<String> = (0..2500).map(|i| format!("leases/k{i:05}")).collect();
    std::thread::scope(|s| {
        for part in keys.chunks(keys.len().div_ceil(8)) {
            let direct = &direct;
            s.spawn(move || {
                part.iter()
                    .for_each(|k| direct.put(k, k.as_bytes()).unwrap())
            });
        }
    });
    direct.put("packs/other", b"not listed").unwrap();
    let proxy = Proxy::start(&g.options().endpoint.unwrap(), slow);
    let options = S3Options {
        endpoint: Some(proxy.url()),
        request_timeout: Duration::from_secs(1),
        retry_budget: Duration::from_secs(1),
        ..g.options()
    };
    let through = S3Backend::open(&url, &options).unwrap();
    let t = Instant::now();
    let listed = through.list("leases/k").unwrap();
    let took = t.elapsed();
    println!(
        "{} keys listed in {took:?} through a slow link",
        listed.len()
    );
    assert!(took > options.request_timeout, "{took:?}");
    let expected: Vec<(String, u64)> = keys.iter().map(|k| (k.clone(), k.len() as u64)).collect();
    assert_eq!(listed, expected);
    assert_eq!(through.list("leases/k0249").unwrap().len(), 10);
}
