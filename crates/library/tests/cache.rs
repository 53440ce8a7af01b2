//! A library read through the block cache: the exported tree is byte-exact, and a second
//! export, or one from a library reopened over the same cache, costs no ranged read of the
//! backend underneath.

mod common;

use common::opts;
use library::backend::cache::{CacheConfig, CachedBackend, MeteredBackend};
use library::export::dir::export_dir;
use library::import::dir::import_dir;
use library::progress::Silent;
use library::{Library, LocalBackend};
use std::sync::Arc;
use std::time::Duration;

#[test]
fn exports_through_the_cache_are_exact_and_warm_ones_are_free() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    common::sample_tree(&src);
    let mut big = vec![0; 3 << 20];
    blake3::Hasher::new().finalize_xof().fill(&mut big);
    std::fs::write(src.join("big.bin"), &big).unwrap();
    // Imported without the cache, so that it starts cold.
    let snapshot = import_dir(&common::library(t.path()), &src, &opts())
        .unwrap()
        .snapshot;

    let local = Arc::new(LocalBackend::open(t.path().join("lib")).unwrap());
    let metered = Arc::new(MeteredBackend::new(local, Duration::ZERO));
    let open = || {
        let config = CacheConfig::new(t.path().join("cache"), 1 << 30);
        Library::open(Arc::new(
            CachedBackend::open(metered.clone(), &config).unwrap(),
        ))
        .unwrap()
    };
    let export = |lib: &Library, name: &str| {
        let out = t.path().join(name);
        export_dir(lib, &snapshot, &out, &Silent).unwrap();
        assert_eq!(common::listing(&src, true), common::listing(&out, true));
    };
    let lib = open();
    export(&lib, "cold");
    let cold = metered.counts().ranges;
    assert!(cold > 0);
    export(&lib, "again");
    assert_eq!(
        metered.counts().ranges,
        cold,
        "second export: no ranged reads"
    );
    drop(lib);
    let lib = open();
    export(&lib, "reopened");
    assert_eq!(
        metered.counts().ranges,
        cold,
        "reopened: trailers and data cached"
    );
}
