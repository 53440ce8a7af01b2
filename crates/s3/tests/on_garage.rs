//! The S3 backend against the Garage test cluster: the storage conformance suite, a library
//! imported and exported through it, calls from inside a tokio runtime, and throughput.

#[path = "../../library/tests/common/mod.rs"]
mod common;
mod garage;

use library::backend::conformance;
use library::export::dir::export_dir;
use library::import::dir::import_dir;
use library::progress::Silent;
use library::{Backend, Library};
use std::sync::Arc;
use std::time::Instant;

#[test]
fn s3_backend_conforms() {
    let Some(g) = garage::garage("s3_backend_conforms") else {
        return;
    };
    conformance::run_all(&g.backend("conformance"));
}

#[test]
fn library_round_trip_on_s3() {
    let Some(g) = garage::garage("library_round_trip_on_s3") else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    common::sample_tree(&src);
    // Over 32 MiB in all, so the import writes more than one pack.
    std::fs::write(src.join("large.bin"), conformance::data("large", 40 << 20)).unwrap();
    let url = g.url("library");
    let lib =
        Library::open_or_init(Arc::new(s3::S3Backend::open(&url, &g.options()).unwrap())).unwrap();
    let imported = import_dir(&lib, &src, &common::opts()).unwrap();
    assert!(
        lib.backend().list("packs/").unwrap().len() > 1,
        "several packs"
    );
    drop(lib);

    // A second backend (as another node would) sees the same library.
    let lib = Library::open(Arc::new(s3::S3Backend::open(&url, &g.options()).unwrap())).unwrap();
    let out = t.path().join("out");
    export_dir(&lib, &imported.snapshot, &out, &Silent).unwrap();
    assert_eq!(common::listing(&src, true), common::listing(&out, true));
    let roots = [("sample".to_string(), imported.score)];
    let report = library::verify::verify(&lib, &roots, &Silent).unwrap();
    assert!(report.is_clean(), "{report}");
}

#[test]
fn works_from_inside_a_tokio_runtime() {
    let Some(g) = garage::garage("works_from_inside_a_tokio_runtime") else {
        return;
    };
    let b = Arc::new(g.backend("in-runtime"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    rt.block_on(async {
        // From the blocking pool, as the node calls the library.
        let b2 = b.clone();
        tokio::task::spawn_blocking(move || {
            b2.put("k/blocking", b"from spawn_blocking").unwrap();
            assert_eq!(b2.get("k/blocking").unwrap(), b"from spawn_blocking");
        })
        .await
        .unwrap();
        // Straight from an async task (blocks that worker, but must not panic).
        b.put("k/task", b"from a task").unwrap();
        assert_eq!(b.list("k/").unwrap().len(), 2);
        // The last reference dropped on a runtime thread must not panic either.
        let b3 = Arc::into_inner(b).expect("the only reference");
        tokio::spawn(async move { drop(b3) }).await.unwrap();
    });
}

#[test]
fn throughput() {
    let Some(g) = garage::garage("throughput") else {
        return;
    };
    let b = g.backend("throughput");
    let pack = conformance::data("pack", 32 << 20);
    let n = 4;
    let mb = (n * pack.len()) as f64 / 1e6;
    let t = Instant::now();
    for i in 0..n {
        b.put(&format!("packs/{i}"), &pack).unwrap();
    }
    let put = mb / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for i in 0..n {
        assert_eq!(b.get(&format!("packs/{i}")).unwrap().len(), pack.len());
    }
    let get = mb / t.elapsed().as_secs_f64();
    let t = Instant::now();
    let ranges = 200;
    for i in 0..ranges {
        b.get_range("packs/0", i * 100_000, 4096).unwrap();
    }
    let range_ms = t.elapsed().as_secs_f64() * 1000.0 / ranges as f64;
    println!("garage on loopback, 32 MiB objects one at a time: put {put:.0} MB/s, get {get:.0} MB/s; 4 KiB range read {range_ms:.2} ms");
}
