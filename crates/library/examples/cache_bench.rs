//! Benchmark of the block cache: export of a pack-backed snapshot over a backend with a fixed
//! latency per request, without the cache, through a cold cache (several block sizes) and
//! through a warm one reopened from disk. Prints a table and one JSON line.
//!
//! `cargo run --release -p spawngrid-library --example cache_bench -- [MB] [LATENCY_MS] [DIR]`
//! (defaults: 200 MB, 2 ms, the system temp directory). See `bench/README.md`.

use library::backend::cache::{CacheConfig, CachedBackend, MeteredBackend};
use library::export::dir::export_dir;
use library::import::{dir::import_dir, ImportOptions};
use library::progress::Silent;
use library::{Backend, Library, LocalBackend, Snapshot};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Writes `mb` MB of files: half small (1–64 KiB), half 8 large ones; bytes compress ~2:1.
fn make_tree(root: &Path, mb: usize) {
    let mut xof = blake3::Hasher::new().update(b"cache bench").finalize_xof();
    let mut fill = |len: usize| {
        let mut v = vec![0u8; len];
        xof.fill(&mut v);
        v.iter_mut().step_by(2).for_each(|b| *b &= 0x0f);
        v
    };
    let half = mb << 19;
    let (mut written, mut n) = (0, 0);
    while written < half {
        let dir = root.join(format!("small/{:03}", n / 100));
        std::fs::create_dir_all(&dir).unwrap();
        let len = 1024 + (n * 7919) % (63 << 10);
        std::fs::write(dir.join(format!("{n}")), fill(len)).unwrap();
        (written, n) = (written + len, n + 1);
    }
    std::fs::create_dir_all(root.join("large")).unwrap();
    for i in 0..8 {
        std::fs::write(root.join(format!("large/{i}")), fill(half / 8)).unwrap();
    }
}

/// One measured export: seconds to open the library, seconds to export, requests, bytes.
fn run(backend: Arc<dyn Backend>, snap: &Snapshot, out: &Path) -> (f64, f64) {
    let t0 = Instant::now();
    let lib = Library::open(backend).unwrap();
    let open = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    export_dir(&lib, snap, out, &Silent).unwrap();
    let export = t1.elapsed().as_secs_f64();
    std::fs::remove_dir_all(out).unwrap();
    (open, export)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mb: usize = args.get(1).map_or(200, |a| a.parse().unwrap());
    let latency = Duration::from_millis(args.get(2).map_or(2, |a| a.parse().unwrap()));
    let base = args.get(3).map_or(std::env::temp_dir(), Into::into);
    let t = tempfile::tempdir_in(base).unwrap();
    make_tree(&t.path().join("src"), mb);
    let local: Arc<dyn Backend> = Arc::new(LocalBackend::open(t.path().join("lib")).unwrap());
    let opts = ImportOptions {
        author: "bench".into(),
        note: "bench".into(),
        parent: None,
        progress: &Silent,
        allow_devices: false,
    };
    let lib = Library::open_or_init(local.clone()).unwrap();
    let snap = import_dir(&lib, &t.path().join("src"), &opts)
        .unwrap()
        .snapshot;
    let packed = lib.stored_bytes();
    drop(lib);
    let out = t.path().join("out");
    let mut rows = Vec::new();
    let mut measure = |name: String, cache: Option<&CacheConfig>| {
        let metered = Arc::new(MeteredBackend::new(local.clone(), latency));
        let backend: Arc<dyn Backend> = match cache {
            Some(c) => Arc::new(CachedBackend::open(metered.clone(), c).unwrap()),
            None => metered.clone(),
        };
        let (open, export) = run(backend, &snap, &out);
        let c = metered.counts();
        let mbps = mb as f64 / export;
        println!(
            "{name:<22} {open:>7.3} {export:>8.2} {mbps:>8.1} {:>8} {:>10.1}",
            c.ranges,
            c.range_bytes as f64 / 1e6
        );
        rows.push(format!(
            r#"{{"case":"{name}","open_s":{open:.3},"export_s":{export:.3},"mb_per_s":{mbps:.1},"ranges":{},"range_mb":{:.1}}}"#,
            c.ranges,
            c.range_bytes as f64 / 1e6
        ));
    };
    println!(
        "{mb} MB tree, {:.0} MB of packs, {} ms per request",
        packed as f64 / 1e6,
        latency.as_millis()
    );
    println!("case                      open s  export s     MB/s requests   fetch MB");
    measure("no cache".into(), None);
    for block in [128u64 << 10, 256 << 10, 1 << 20] {
        let mut config = CacheConfig::new(t.path().join(format!("cache-{block}")), 4 << 30);
        config.block_size = block;
        measure(format!("cold, {} KiB blocks", block >> 10), Some(&config));
        if block == 256 << 10 {
            measure("warm (reopened), 256 KiB".into(), Some(&config));
        }
    }
    println!("[{}]", rows.join(","));
}
