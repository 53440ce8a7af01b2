//! The storage conformance suite: what the library relies on from every [`Backend`].
//!
//! Each check takes a `&dyn Backend` and panics (with a message naming the backend) when the
//! backend falls short; [`run_all`] runs them all. The checks write only below the key prefix
//! `conformance/<check>/`, so they can share one backend, but they expect that prefix to start
//! out empty (S3 tests use a fresh key prefix per run). Built for the library's own tests and,
//! with the `conformance` feature, for backends in other crates.

use super::Backend;
use crate::Result;
use std::io::Read;

const ROOT: &str = "conformance";

/// Runs every check in this module against `b`.
pub fn run_all(b: &dyn Backend) {
    round_trip(b);
    ranges(b);
    missing(b);
    list(b);
    nested(b);
    delete(b);
    overwrite(b);
    concurrent(b);
}

/// `n` bytes of deterministic pseudo-random data (the BLAKE3 output stream of `seed`).
pub fn data(seed: &str, n: usize) -> Vec<u8> {
    let mut out = vec![0u8; n];
    blake3::Hasher::new()
        .update(seed.as_bytes())
        .finalize_xof()
        .read_exact(&mut out)
        .expect("the XOF stream is unbounded");
    out
}

fn key(check: &str, rest: &str) -> String {
    format!("{ROOT}/{check}/{rest}")
}

fn ok<T>(b: &dyn Backend, what: &str, r: Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{}: {what} failed: {e}", b.describe()))
}

fn assert_not_found<T: std::fmt::Debug>(b: &dyn Backend, what: &str, r: Result<T>) {
    match r {
        Err(e) => assert!(
            e.is_not_found(),
            "{}: {what}: expected a not-found error, got: {e}",
            b.describe()
        ),
        Ok(v) => panic!(
            "{}: {what}: expected a not-found error, got {v:?}",
            b.describe()
        ),
    }
}

/// Put then get is byte-exact for an empty object, one byte and 8 MiB, and the key exists;
/// the same through `put_bytes`.
pub fn round_trip(b: &dyn Backend) {
    for (name, bytes) in [
        ("empty", Vec::new()),
        ("one", vec![0x5a]),
        ("big", data("round trip", 8 << 20)),
    ] {
        let k = key("round-trip", name);
        ok(b, &format!("put {k}"), b.put(&k, &bytes));
        let back = ok(b, &format!("get {k}"), b.get(&k));
        assert!(
            back == bytes,
            "{}: get {k} returned {} bytes that differ from the {} put",
            b.describe(),
            back.len(),
            bytes.len()
        );
        assert!(ok(b, &format!("exists {k}"), b.exists(&k)));
        let given = key("round-trip", &format!("{name}-given"));
        ok(
            b,
            &format!("put_bytes {given}"),
            b.put_bytes(&given, bytes.clone().into()),
        );
        let back = ok(b, &format!("get {given}"), b.get(&given));
        assert!(
            back == bytes,
            "{}: get {given} after put_bytes returned {} bytes that differ from the {} given",
            b.describe(),
            back.len(),
            bytes.len()
        );
    }
}

/// Ranged reads at the start, middle and end are exact; ranges past the end are errors.
pub fn ranges(b: &dyn Backend) {
    let k = key("ranges", "object");
    let bytes = data("ranges", 100_000);
    ok(b, "put", b.put(&k, &bytes));
    let size = bytes.len() as u64;
    for (offset, len) in [
        (0u64, 1usize),
        (0, 4096),
        (41_234, 777),
        (size - 10, 10),
        (0, 100_000),
    ] {
        let got = ok(
            b,
            &format!("get_range {k} {offset}+{len}"),
            b.get_range(&k, offset, len),
        );
        let want = &bytes[offset as usize..offset as usize + len];
        assert!(
            got == want,
            "{}: get_range {k} {offset}+{len} returned wrong bytes ({} bytes)",
            b.describe(),
            got.len()
        );
    }
    for (offset, len) in [(size - 10, 11usize), (size, 1), (size + 1000, 10)] {
        let r = b.get_range(&k, offset, len);
        assert!(
            r.is_err(),
            "{}: get_range {k} {offset}+{len} past the end ({size} bytes) must fail, returned {} bytes",
            b.describe(),
            r.map(|v| v.len()).unwrap_or_default()
        );
    }
}

/// A missing key: get and get_range fail with a not-found error, exists is false, list empty.
pub fn missing(b: &dyn Backend) {
    let k = key("missing", "never-written");
    assert_not_found(b, "get of a missing key", b.get(&k));
    assert_not_found(b, "get_range of a missing key", b.get_range(&k, 0, 1));
    assert!(!ok(b, "exists", b.exists(&k)));
    assert_eq!(ok(b, "list", b.list(&k)), Vec::new());
}

/// Listing by prefix: string prefixes, exact sizes, sorted, nothing outside the prefix.
pub fn list(b: &dyn Backend) {
    let base = key("list", "");
    let entries = [
        ("a/1", 3usize),
        ("a/2", 0),
        ("ab", 10),
        ("b/x/y", 7),
        ("c", 1),
    ];
    for (name, n) in entries {
        ok(b, "put", b.put(&format!("{base}{name}"), &data(name, n)));
    }
    let listed = |prefix: &str| {
        ok(
            b,
            &format!("list {base}{prefix}"),
            b.list(&format!("{base}{prefix}")),
        )
        .into_iter()
        .map(|(k, n)| (k.strip_prefix(&base).unwrap_or(&k).to_string(), n))
        .collect::<Vec<_>>()
    };
    let want = |names: &[&str]| {
        names
            .iter()
            .map(|name| {
                let n = entries.iter().find(|e| e.0 == *name).expect("known").1;
                (name.to_string(), n as u64)
            })
            .collect::<Vec<_>>()
    };
    let d = b.describe();
    assert_eq!(
        listed(""),
        want(&["a/1", "a/2", "ab", "b/x/y", "c"]),
        "{d}: list all"
    );
    assert_eq!(listed("a"), want(&["a/1", "a/2", "ab"]), "{d}: list a");
    assert_eq!(listed("a/"), want(&["a/1", "a/2"]), "{d}: list a/");
    assert_eq!(listed("b/"), want(&["b/x/y"]), "{d}: list b/");
    assert_eq!(listed("b/x/y"), want(&["b/x/y"]), "{d}: list b/x/y");
    assert_eq!(listed("zz"), want(&[]), "{d}: list zz");
}

/// Deeply nested keys round-trip and are listed under every ancestor.
pub fn nested(b: &dyn Backend) {
    let k = key("nested", "p/q/r/s/t/u/v/w");
    let bytes = data(&k, 1234);
    ok(b, "put", b.put(&k, &bytes));
    assert_eq!(ok(b, "get", b.get(&k)), bytes);
    for prefix in [
        key("nested", ""),
        key("nested", "p/q/"),
        key("nested", "p/q/r/s/t/u/v/"),
    ] {
        assert_eq!(
            ok(b, "list", b.list(&prefix)),
            vec![(k.clone(), 1234)],
            "{}: list {prefix}",
            b.describe()
        );
    }
}

/// Delete removes a key; deleting it again, or a key never written, is not an error.
pub fn delete(b: &dyn Backend) {
    let k = key("delete", "object");
    ok(b, "put", b.put(&k, b"bye"));
    assert!(ok(b, "exists", b.exists(&k)));
    ok(b, "delete", b.delete(&k));
    assert!(!ok(b, "exists after delete", b.exists(&k)));
    assert_not_found(b, "get after delete", b.get(&k));
    ok(b, "second delete", b.delete(&k));
    ok(
        b,
        "delete of a key never written",
        b.delete(&key("delete", "never")),
    );
    assert_eq!(ok(b, "list", b.list(&key("delete", ""))), Vec::new());
}

/// Putting the same content twice under a key (what a retried pack upload does) is fine.
pub fn overwrite(b: &dyn Backend) {
    let k = key("overwrite", "object");
    let bytes = data("overwrite", 70_000);
    ok(b, "first put", b.put(&k, &bytes));
    ok(b, "second put", b.put(&k, &bytes));
    assert_eq!(ok(b, "get", b.get(&k)), bytes);
    assert_eq!(ok(b, "list", b.list(&k)), vec![(k.clone(), 70_000)]);
}

/// 16 threads put, get and range-read their own keys and one shared key at once.
pub fn concurrent(b: &dyn Backend) {
    let shared = key("concurrent", "shared");
    let shared_bytes = data("shared", 300_000);
    ok(b, "put shared", b.put(&shared, &shared_bytes));
    std::thread::scope(|s| {
        for t in 0..16 {
            let (shared, shared_bytes) = (&shared, &shared_bytes);
            s.spawn(move || {
                let k = key("concurrent", &format!("t{t:02}"));
                let bytes = data(&k, 50_000 + t * 10_000);
                ok(b, "put", b.put(&k, &bytes));
                assert_eq!(ok(b, "get", b.get(&k)), bytes);
                assert!(ok(b, "get shared", b.get(shared)) == *shared_bytes);
                let at = t * 1000;
                assert_eq!(
                    ok(b, "get_range shared", b.get_range(shared, at as u64, 5000)),
                    shared_bytes[at..at + 5000]
                );
            });
        }
    });
    assert_eq!(ok(b, "list", b.list(&key("concurrent", "t"))).len(), 16);
}

#[cfg(test)]
mod tests {
    use crate::LocalBackend;

    #[test]
    fn local_backend_conforms() {
        let t = tempfile::tempdir().unwrap();
        super::run_all(&LocalBackend::open(t.path()).unwrap());
    }

    #[test]
    fn invalid_keys_are_refused() {
        for k in ["", "/a", "a/", "a//b", "a/./b", "../a", "a/.."] {
            assert!(super::super::check_key(k).is_err(), "{k:?}");
        }
        super::super::check_key("packs/ab/cd").unwrap();
    }
}
