//! Directory import/export round trips on a tree with every kind of entry (runs as root).

mod common;

use common::opts;

use library::export::dir::export_dir;
use library::import::dir::import_dir;
use library::progress::Silent;
use library::{Library, LocalBackend};
use std::sync::Arc;

#[test]
fn directory_round_trip_keeps_all_metadata() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    common::sample_tree(&src);
    let lib =
        Library::open_or_init(Arc::new(LocalBackend::open(t.path().join("lib")).unwrap())).unwrap();
    let imported = import_dir(&lib, &src, &opts()).unwrap();
    let out = t.path().join("out");
    export_dir(&lib, &imported.snapshot, &out, &Silent).unwrap();
    assert_eq!(common::listing(&src, true), common::listing(&out, true));

    // Same tree in, same score out; and the second import stores nothing new.
    let stored = lib.object_count();
    let again = import_dir(&lib, &out, &opts()).unwrap();
    assert_eq!(again.snapshot.root, imported.snapshot.root);
    assert_eq!(
        lib.object_count(),
        stored + 1,
        "only the new snapshot object is stored"
    );
}

#[test]
fn export_refuses_non_empty_destination() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    let lib =
        Library::open_or_init(Arc::new(LocalBackend::open(t.path().join("lib")).unwrap())).unwrap();
    let imported = import_dir(&lib, &src, &opts()).unwrap();
    let err = export_dir(&lib, &imported.snapshot, &src, &Silent).unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
    assert_eq!(std::fs::read(src.join("f")).unwrap(), b"x");
}
