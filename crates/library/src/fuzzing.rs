//! Harnesses for the fuzz targets in `fuzz/` (cargo-fuzz, `scripts/fuzz.sh`): each takes
//! arbitrary bytes, runs a parser on them and panics only if a property the library relies on
//! breaks. A panic, an abort or a hang in one of them is a bug. The library's tests replay the
//! committed corpora (`fuzz/corpus/*`) through the same functions, so what the fuzzer once
//! found stays fixed.
//!
//! Compiled with the `fuzzing` feature (and for the library's own tests).

use crate::import::tar::{import_layers, import_tar};
use crate::import::ImportOptions;
use crate::pack::{decode_object, parse_trailer, scan, trailer_span, TAIL_LEN};
use crate::progress::Silent;
use crate::{Library, LocalBackend, Snapshot, Tree};
use std::io::Read;
use std::sync::{Arc, OnceLock};

/// A harness: runs a parser on arbitrary bytes, panicking only on a broken property.
pub type Harness = fn(&[u8]);

/// The fuzz targets, by name (the `fuzz/fuzz_targets/NAME.rs` and `fuzz/corpus/NAME`).
pub const TARGETS: [(&str, Harness); 5] = [
    ("tar_import", tar_import),
    ("layers", layers),
    ("tree_decode", tree_decode),
    ("snapshot_decode", snapshot_decode),
    ("pack_parse", pack_parse),
];

/// One library per process, in a temporary directory (removed at exit by the OS's tmp policy;
/// fuzzing writes what the imports store).
fn library() -> &'static Library {
    static LIB: OnceLock<(tempfile::TempDir, Library)> = OnceLock::new();
    &LIB.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let backend = LocalBackend::open(dir.path().join("lib")).expect("a local backend");
        let lib = Library::open_or_init(Arc::new(backend)).expect("a library");
        (dir, lib)
    })
    .1
}

fn opts() -> ImportOptions<'static> {
    ImportOptions {
        author: "fuzz".into(),
        note: String::new(),
        parent: None,
        progress: &Silent,
        allow_devices: false,
    }
}

/// A tar stream (any compression) imported: refused with an error, or a snapshot whose
/// trees can all be read back.
pub fn tar_import(data: &[u8]) {
    if let Ok(imp) = import_tar(library(), data, &opts()) {
        readable(&imp.snapshot);
    }
}

/// Image layers: the input cut in two at its first byte's value (a lower and an upper layer),
/// applied with whiteouts and opaque directories.
pub fn layers(data: &[u8]) {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let (lower, upper) = rest.split_at((cut as usize * 512).min(rest.len()));
    let layer = |b| Ok(("layer".to_string(), Box::new(b) as Box<dyn Read + '_>));
    if let Ok(imp) = import_layers(library(), [layer(lower), layer(upper)], &opts()) {
        readable(&imp.snapshot);
    }
}

/// A tree object decoded: if accepted, it encodes to bytes that decode to the same tree.
pub fn tree_decode(data: &[u8]) {
    if let Ok(tree) = Tree::decode(data) {
        let again = Tree::decode(&tree.encode()).expect("an encoded tree decodes");
        assert_eq!(again, tree, "a tree changes through encode and decode");
    }
}

/// A snapshot object decoded: if accepted, it encodes to bytes that decode to the same one.
pub fn snapshot_decode(data: &[u8]) {
    if let Ok(snap) = Snapshot::decode(data) {
        let again = Snapshot::decode(&snap.encode()).expect("an encoded snapshot decodes");
        assert_eq!(again, snap, "a snapshot changes through encode and decode");
    }
}

/// A pack: scanned, its trailer parsed, each object its entries point at decoded (or
/// refused) without reading outside the pack.
pub fn pack_parse(data: &[u8]) {
    let (mut entries, _why) = scan(data);
    let len = data.len() as u64;
    if let Some(tail) = data.len().checked_sub(TAIL_LEN).map(|at| &data[at..]) {
        if let Some(span) = trailer_span(len, tail) {
            let at = span.start as usize;
            if let Some(body) = data.get(at..at + span.len) {
                entries.extend(parse_trailer(body, len, span.version).unwrap_or_default());
            }
        }
    }
    for e in entries {
        let start = e.offset as usize;
        if let Some(stored) = data.get(start..start + e.stored_len as usize) {
            let _ = decode_object(&e, stored);
        }
    }
}

/// Reads every tree of `snap` back from the library.
fn readable(snap: &Snapshot) {
    let lib = library();
    let mut todo = vec![snap.root.clone()];
    while let Some(entry) = todo.pop() {
        if let crate::Content::Dir { tree, .. } = entry.content {
            let tree = lib.tree(&tree).expect("a stored tree reads back");
            todo.extend(tree.entries);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h
    }

    /// A small tar: a directory, files (the first with a PAX xattr), a symlink, a hardlink.
    fn seed_tar(names: &[&str]) -> Vec<u8> {
        use tar::EntryType::{Directory, Link, Regular, Symlink};
        let mut b = tar::Builder::new(Vec::new());
        b.append_data(&mut header(Directory, 0o755, 0), "d/", &b""[..])
            .unwrap();
        for (i, name) in names.iter().enumerate() {
            if i == 0 {
                b.append_pax_extensions([("SCHILY.xattr.user.k", &b"v"[..])])
                    .unwrap();
            }
            let data = &b"0123456789"[..=i];
            b.append_data(&mut header(Regular, 0o644, data.len() as u64), name, data)
                .unwrap();
        }
        b.append_link(&mut header(Symlink, 0o777, 0), "d/link", names[0])
            .unwrap();
        b.append_link(&mut header(Link, 0o644, 0), "d/hard", names[0])
            .unwrap();
        b.into_inner().unwrap()
    }

    /// The seed corpora, made from today's formats, each pass their target's harness; with
    /// `SPAWNGRID_WRITE_CORPORA=1` they are also written to fuzz/corpus (after a format change:
    /// `SPAWNGRID_WRITE_CORPORA=1 cargo test -p spawngrid-library --lib seed_corpora`).
    #[test]
    fn seed_corpora_pass_their_harnesses() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
        let write = std::env::var_os("SPAWNGRID_WRITE_CORPORA").is_some();
        let put = |target: &str, name: &str, bytes: &[u8]| {
            let (_, harness) = super::TARGETS
                .iter()
                .find(|(t, _)| *t == target)
                .expect("a fuzz target");
            harness(bytes);
            if write {
                std::fs::write(root.join(target).join(name), bytes).unwrap();
            }
        };
        let lower = seed_tar(&["d/a", "d/b", "top"]);
        let upper = seed_tar(&["d/.wh.a", "d/.wh..wh..opq", ".wh.top"]);
        put("tar_import", "small.tar", &lower);
        let imp = import_tar(library(), &lower[..], &opts()).unwrap();
        let mut layered = vec![(lower.len() / 512) as u8];
        layered.extend_from_slice(&lower);
        layered.extend_from_slice(&upper);
        put("layers", "whiteouts", &layered);
        put("snapshot_decode", "small", &imp.snapshot.encode());
        let crate::Content::Dir { tree, .. } = &imp.snapshot.root.content else {
            panic!("a snapshot's root is a directory")
        };
        put(
            "tree_decode",
            "small",
            &library().tree(tree).unwrap().encode(),
        );
        let packs = library().backend().list("packs/").unwrap();
        let pack = library().backend().get(&packs[0].0).unwrap();
        put("pack_parse", "small", &pack);
    }

    /// Every input in the committed corpora still passes its harness.
    #[test]
    fn fuzz_corpora_replay() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
        let mut inputs = 0;
        for (name, harness) in super::TARGETS {
            let dir = root.join(name);
            let files =
                std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()));
            for f in files {
                let path = f.unwrap().path();
                harness(&std::fs::read(&path).unwrap());
                inputs += 1;
            }
        }
        assert!(inputs > 0, "no corpus under {}", root.display());
    }
}
