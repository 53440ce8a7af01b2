//! Shared test helpers: small libraries with snapshots built from generated data.

use crate::build::{Dir, Node};
use crate::file::{store_bytes, write_file};
use crate::tree::{Content, Entry, Meta};
use crate::{Config, Library, LocalBackend, Score, Snapshot};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A library with small chunks (so tests see many), small shared frames (objects under
/// 8 KiB share them, larger ones have their own) and one pack per commit.
pub(crate) fn library() -> (tempfile::TempDir, Library) {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        chunk_threshold: 16 << 10,
        chunk_min: 2 << 10,
        chunk_avg: 4 << 10,
        chunk_max: 8 << 10,
        pack_target: 4 << 20,
        frame_target: 8 << 10,
        ..Config::default()
    };
    let backend = Arc::new(LocalBackend::open(dir.path()).unwrap());
    let lib = Library::init(backend, config).unwrap();
    (dir, lib)
}

/// The same library opened afresh, as another process would.
pub(crate) fn reopen(dir: &Path) -> Library {
    Library::open(Arc::new(LocalBackend::open(dir).unwrap())).unwrap()
}

/// Incompressible bytes determined by `seed`.
pub(crate) fn bytes(seed: &str, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    blake3::Hasher::new()
        .update(seed.as_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

/// The files of sample `seed`: `n` files of its own (the first one chunked) and one
/// file every sample shares.
pub(crate) fn files(seed: u32, n: usize) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    out.insert("common/shared".into(), bytes("shared", 20 << 10));
    for i in 0..n {
        let len = if i == 0 { 40 << 10 } else { 3000 * (i + 1) };
        out.insert(format!("own/f{i}"), bytes(&format!("{seed}/{i}"), len));
    }
    out
}

fn meta(mode: u32) -> Meta {
    Meta {
        mode,
        ..Meta::default()
    }
}

/// Stores the files and trees of sample `seed`; returns its root entry (not yet durable).
pub(crate) fn tree(lib: &Library, seed: u32, n: usize) -> Entry {
    let mut root = Dir::new(meta(0o755));
    for (path, data) in files(seed, n) {
        let (dir, name) = path.split_once('/').unwrap();
        let sub = root
            .children
            .entry(dir.as_bytes().to_vec())
            .or_insert_with(|| Node::Dir(Dir::new(meta(0o755))));
        let Node::Dir(sub) = sub else { unreachable!() };
        let (size, data) = store_bytes(lib, &data).unwrap();
        let entry = Entry {
            name: name.as_bytes().to_vec(),
            meta: meta(0o644),
            content: Content::File { size, data },
            link: None,
        };
        sub.children
            .insert(entry.name.clone(), Node::Leaf { entry, group: None });
    }
    root.store(lib).unwrap()
}

/// Commits a snapshot of `root` (from [`tree`] of sample `seed`) with `parent`.
pub(crate) fn commit(lib: &Library, root: Entry, seed: u32, parent: Option<Score>) -> Score {
    let snap = Snapshot {
        root,
        parent,
        author: "test".into(),
        time_ns: i64::from(seed),
        note: format!("sample {seed}"),
    };
    lib.commit(&snap).unwrap()
}

/// Stores sample `seed` as a snapshot with `parent` (in packs of its own); returns its score.
pub(crate) fn snapshot_with(lib: &Library, seed: u32, n: usize, parent: Option<Score>) -> Score {
    commit(lib, tree(lib, seed, n), seed, parent)
}

/// Stores sample `seed` as a snapshot without a parent.
pub(crate) fn snapshot(lib: &Library, seed: u32, n: usize) -> Score {
    snapshot_with(lib, seed, n, None)
}

/// Stores several samples so that their objects share one pack (all but the last
/// snapshot object, which its commit writes alone).
pub(crate) fn snapshots_in_one_pack(lib: &Library, seeds: &[u32], n: usize) -> Vec<Score> {
    let roots: Vec<Entry> = seeds.iter().map(|s| tree(lib, *s, n)).collect();
    roots
        .into_iter()
        .zip(seeds)
        .map(|(r, s)| commit(lib, r, *s, None))
        .collect()
}

/// Every file of a snapshot, read back through the library.
pub(crate) fn read_files(lib: &Library, score: &Score) -> crate::Result<BTreeMap<String, Vec<u8>>> {
    let snap = lib.snapshot(score)?;
    let mut out = BTreeMap::new();
    read_dir(lib, &snap.tree(), "", &mut out)?;
    Ok(out)
}

fn read_dir(
    lib: &Library,
    tree: &Score,
    at: &str,
    out: &mut BTreeMap<String, Vec<u8>>,
) -> crate::Result<()> {
    for e in lib.tree(tree)?.entries {
        let path = format!("{at}{}", String::from_utf8_lossy(&e.name));
        match e.content {
            Content::Dir { tree, .. } => read_dir(lib, &tree, &format!("{path}/"), out)?,
            Content::File { data, .. } => {
                let mut buf = Vec::new();
                write_file(lib, &data, &mut buf, &path)?;
                out.insert(path, buf);
            }
            _ => {}
        }
    }
    Ok(())
}

/// Asserts that snapshot `score` holds exactly the files of sample `seed`.
pub(crate) fn check(lib: &Library, score: &Score, seed: u32, n: usize) {
    assert_eq!(
        read_files(lib, score).unwrap(),
        files(seed, n),
        "sample {seed}"
    );
}

/// The file holding the pack that the index reads `score` from.
pub(crate) fn pack_file(dir: &Path, lib: &Library, score: &Score) -> PathBuf {
    let loc = lib.locate(score).expect("object is stored");
    dir.join(crate::store::pack_key(&loc.pack))
}

/// Flips one bit in the stored bytes of `score`: in the middle of its own bytes when its frame
/// is stored raw, else in the middle of its (compressed) frame, which damages the whole frame.
pub(crate) fn damage(dir: &Path, lib: &Library, score: &Score) {
    let e = lib.locate(score).unwrap().entry;
    let path = pack_file(dir, lib, score);
    let mut data = std::fs::read(&path).unwrap();
    let at = match e.encoding {
        crate::pack::Encoding::Raw => e.offset + e.start + e.plain_len / 2,
        crate::pack::Encoding::Zstd => e.offset + e.stored_len / 2,
    };
    data[at as usize] ^= 0x10;
    std::fs::write(&path, data).unwrap();
}

/// The score of a blob holding file `i` of sample `seed` (unchunked files only).
pub(crate) fn blob_of(seed: u32, n: usize, i: usize) -> Score {
    Score::of(&files(seed, n)[&format!("own/f{i}")])
}

/// Stores another copy of `blob` in a pack of its own; returns that pack's name.
pub(crate) fn second_copy(lib: &Library, blob: &Score) -> Score {
    use crate::pack::{EncodedFrame, ObjectKind, PackBuilder};
    let plain = lib.get(blob).unwrap().1;
    let mut b = PackBuilder::default();
    b.add(&EncodedFrame::single(*blob, ObjectKind::Blob, &plain, 3));
    let (name, data, _) = b.finish();
    lib.backend()
        .put(&crate::store::pack_key(&name), &data)
        .unwrap();
    name
}
