//! Tar import/export: metadata round trips, GNU tar interoperability, hostile archives.

mod common;

use common::opts;

use library::export::tar::export_tar;
use library::file;
use library::import::dir::import_dir;
use library::import::tar::{import_layers, import_tar};
use library::import::Imported;
use library::progress::Silent;
use library::{Content, Entry, FileData, Library, LocalBackend, Result, Snapshot};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use tar::{EntryType, Header};

fn open_lib(dir: &std::path::Path) -> Library {
    Library::open_or_init(Arc::new(LocalBackend::open(dir.join("lib")).unwrap())).unwrap()
}

fn import(lib: &Library, bytes: &[u8]) -> Result<Imported> {
    import_tar(lib, bytes, &opts())
}

fn export(lib: &Library, snap: &Snapshot) -> Vec<u8> {
    let mut out = Vec::new();
    export_tar(lib, snap, &mut out, &Silent).unwrap();
    out
}

/// The entry at a '/'-separated path of a snapshot.
fn lookup(lib: &Library, snap: &Snapshot, path: &[u8]) -> Entry {
    let mut entry = snap.root.clone();
    for name in path.split(|&b| b == b'/') {
        let Content::Dir { tree, .. } = entry.content else {
            panic!("not a directory")
        };
        let tree = lib.tree(&tree).unwrap();
        entry = tree
            .get(name)
            .unwrap_or_else(|| panic!("{:?} missing", String::from_utf8_lossy(path)))
            .clone();
    }
    entry
}

/// Deterministic pseudo-random bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Builds archives member by member, with raw (unchecked) names.
struct TarBuf(tar::Builder<Vec<u8>>);

impl TarBuf {
    fn new() -> Self {
        TarBuf(tar::Builder::new(Vec::new()))
    }

    /// Appends a member: `name` is written raw into the header (at most 100 bytes), `pax`
    /// records go in a PAX header before it.
    fn add(&mut self, kind: EntryType, name: &[u8], mode: u32, data: &[u8], pax: &[(&str, &[u8])]) {
        let mut h = Header::new_ustar();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        self.0.append_pax_extensions(pax.iter().copied()).unwrap();
        self.0.append(&h, data).unwrap();
    }

    fn file(&mut self, name: &str, data: &[u8]) {
        self.add(EntryType::Regular, name.as_bytes(), 0o644, data, &[]);
    }

    fn dir(&mut self, name: &str, mode: u32) {
        self.add(EntryType::Directory, name.as_bytes(), mode, b"", &[]);
    }

    fn link(&mut self, kind: EntryType, name: &str, target: &str) {
        let mut h = Header::new_ustar();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(0o777);
        h.set_size(0);
        h.set_cksum();
        self.0.append(&h, &b""[..]).unwrap();
    }

    fn device(&mut self, kind: EntryType, name: &str, major: u32, minor: u32) {
        let mut h = Header::new_ustar();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(0o600);
        h.set_size(0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        h.set_cksum();
        self.0.append(&h, &b""[..]).unwrap();
    }

    fn finish(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

/// Capability bytes that include a newline and NULs (PAX parsers that split on '\n' break).
const CAP: [u8; 20] = [
    1, 0, 0, 2, 0x0a, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

fn long_name() -> String {
    format!("deep/{}/file-with-a-long-name", "x".repeat(150))
}

/// An archive with every kind of entry and metadata the library keeps.
fn rich_tar() -> Vec<u8> {
    let mut t = TarBuf::new();
    t.add(
        EntryType::Directory,
        b"./",
        0o750,
        b"",
        &[("mtime", b"1000.5")],
    );
    t.dir("usr/", 0o755);
    t.add(EntryType::Regular, b"usr/bin/su", 0o4755, b"hello", &[]);
    t.dir("tmp/", 0o1777);
    t.link(EntryType::Symlink, "usr/passwd-link", "../etc/passwd");
    t.file("usr/bin/a", b"shared");
    t.link(EntryType::Link, "usr/bin/b", "usr/bin/a");
    t.link(EntryType::Link, "./usr/c", "./usr/bin/a");
    t.device(EntryType::Char, "dev-null", 1, 3);
    t.device(EntryType::Block, "dev-loop", 7, 0);
    t.add(EntryType::Fifo, b"fifo", 0o644, b"", &[]);
    let pax: &[(&str, &[u8])] = &[
        ("mtime", b"1577934245.123456789"),
        ("SCHILY.xattr.user.foo", b"bar"),
        ("uid", b"3000000"),
        ("gid", b"4000000"),
    ];
    t.add(
        EntryType::Regular,
        b"etc/passwd",
        0o644,
        b"root:x:0:0\n",
        pax,
    );
    let cap: &[(&str, &[u8])] = &[("SCHILY.xattr.security.capability", &CAP)];
    t.add(EntryType::Regular, b"usr/bin/ping", 0o755, b"cap", cap);
    let long = long_name();
    t.add(
        EntryType::Regular,
        b"deep/truncated",
        0o644,
        b"long",
        &[("path", long.as_bytes())],
    );
    let mut gnu = Header::new_gnu();
    gnu.set_size(3);
    gnu.set_mode(0o600);
    gnu.set_uid(0);
    gnu.set_gid(0);
    gnu.set_mtime(0);
    t.0.append_data(&mut gnu, format!("gnu/{}", "y".repeat(200)), &b"gnu"[..])
        .unwrap();
    t.add(EntryType::Regular, b"new\nline", 0o644, b"x", &[]);
    let long_nl = format!("nl/{}\nend", "z".repeat(120));
    t.add(
        EntryType::Regular,
        b"nl/cut",
        0o644,
        b"n",
        &[("path", long_nl.as_bytes())],
    );
    t.add(
        EntryType::Regular,
        b"empty",
        0o644,
        b"",
        &[("mtime", b"-1.25")],
    );
    t.file("big.bin", &noise(6_000_000, 7));
    t.finish()
}

#[test]
fn rich_tar_keeps_all_metadata() {
    let t = tempfile::tempdir().unwrap();
    let lib = open_lib(t.path());
    let imp = import(&lib, &rich_tar()).unwrap();
    assert!(imp.warnings.is_empty(), "{:?}", imp.warnings);
    let snap = &imp.snapshot;
    let get = |p: &str| lookup(&lib, snap, p.as_bytes());
    assert_eq!(
        (
            snap.root.meta.mode,
            snap.root.meta.mtime_sec,
            snap.root.meta.mtime_nsec
        ),
        (0o750, 1000, 500_000_000)
    );
    assert_eq!(get("usr/bin/su").meta.mode, 0o4755);
    assert_eq!(get("tmp").meta.mode, 0o1777);
    assert_eq!(
        get("usr/passwd-link").content,
        Content::Symlink(b"../etc/passwd".to_vec())
    );
    let (a, b, c) = (get("usr/bin/a"), get("usr/bin/b"), get("usr/c"));
    assert!(a.link.is_some() && a.link == b.link && a.link == c.link);
    assert_eq!(a.content, b.content);
    assert_eq!(
        get("dev-null").content,
        Content::CharDev(libc::makedev(1, 3))
    );
    assert_eq!(
        get("dev-loop").content,
        Content::BlockDev(libc::makedev(7, 0))
    );
    assert_eq!(get("fifo").content, Content::Fifo);
    let passwd = get("etc/passwd");
    assert_eq!(
        (passwd.meta.mtime_sec, passwd.meta.mtime_nsec),
        (1577934245, 123456789)
    );
    assert_eq!((passwd.meta.uid, passwd.meta.gid), (3_000_000, 4_000_000));
    assert_eq!(
        passwd.meta.xattrs,
        vec![(b"user.foo".to_vec(), b"bar".to_vec())]
    );
    assert_eq!(
        get("usr/bin/ping").meta.xattrs,
        vec![(b"security.capability".to_vec(), CAP.to_vec())]
    );
    let etc = get("etc");
    assert_eq!(
        (etc.meta.mode, etc.meta.uid, etc.meta.mtime_sec),
        (0o755, 0, 0),
        "implicit parent"
    );
    assert!(matches!(
        get(&long_name()).content,
        Content::File { size: 4, .. }
    ));
    assert!(matches!(
        get(&format!("gnu/{}", "y".repeat(200))).content,
        Content::File { size: 3, .. }
    ));
    assert!(matches!(
        get("new\nline").content,
        Content::File { size: 1, .. }
    ));
    assert!(matches!(
        get(&format!("nl/{}\nend", "z".repeat(120))).content,
        Content::File { size: 1, .. }
    ));
    let empty = get("empty");
    assert_eq!(
        (empty.meta.mtime_sec, empty.meta.mtime_nsec),
        (-2, 750_000_000)
    );
    assert_eq!(
        get("empty").content,
        Content::File {
            size: 0,
            data: FileData::Empty
        }
    );

    // The big file is chunked exactly as a directory import would chunk it.
    let big = get("big.bin");
    let expect = file::store_bytes(&lib, &noise(6_000_000, 7)).unwrap();
    assert!(matches!(expect.1, FileData::Chunks(_)));
    assert_eq!(
        big.content,
        Content::File {
            size: expect.0,
            data: expect.1
        }
    );
}

#[test]
fn tar_import_export_import_gives_the_same_tree() {
    let t = tempfile::tempdir().unwrap();
    let lib = open_lib(t.path());
    let first = import(&lib, &rich_tar()).unwrap();
    let exported = export(&lib, &first.snapshot);
    let second = import(&lib, &exported).unwrap();
    assert_eq!(second.snapshot.root, first.snapshot.root);
    assert!(second.warnings.is_empty(), "{:?}", second.warnings);
    // GNU tar reads our export too.
    let out = Command::new("tar")
        .args(["-tvf", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    out.stdin.as_ref().unwrap().write_all(&exported).unwrap();
    let out = out.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn compressed_streams_import_like_plain() {
    let t = tempfile::tempdir().unwrap();
    let lib = open_lib(t.path());
    let plain = rich_tar();
    let root = import(&lib, &plain).unwrap().snapshot.root;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&plain).unwrap();
    let gz = gz.finish().unwrap();
    let zst = zstd::encode_all(&plain[..], 3).unwrap();
    assert_eq!(import(&lib, &gz).unwrap().snapshot.root, root);
    assert_eq!(import(&lib, &zst).unwrap().snapshot.root, root);
}

fn gnu_tar_create(src: &std::path::Path) -> Vec<u8> {
    let out = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--format=posix", "-C"])
        .arg(src)
        .args(["-cf", "-", "."])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn gnu_tar_archive_imports_like_the_directory() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    common::sample_tree(&src);
    let lib = open_lib(t.path());
    let from_tar = import(&lib, &gnu_tar_create(&src)).unwrap();
    assert!(from_tar.warnings.is_empty(), "{:?}", from_tar.warnings);
    let from_dir = import_dir(&lib, &src, &opts()).unwrap();
    assert_eq!(from_tar.snapshot.root, from_dir.snapshot.root);
}

#[test]
fn export_extracts_with_gnu_tar_exactly() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    common::sample_tree(&src);
    let lib = open_lib(t.path());
    let imp = import_dir(&lib, &src, &opts()).unwrap();
    let out = t.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let mut child = Command::new("tar")
        .args([
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "-xpf",
            "-",
            "-C",
        ])
        .arg(&out)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    export_tar(&lib, &imp.snapshot, child.stdin.take().unwrap(), &Silent).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(common::listing(&src, true), common::listing(&out, true));
}

#[test]
fn duplicates_last_wins_with_a_warning() {
    let t = tempfile::tempdir().unwrap();
    let lib = open_lib(t.path());
    let mut tb = TarBuf::new();
    tb.file("a", b"one");
    tb.file("./a", b"two");
    tb.file("d/x", b"child");
    tb.file("d", b"file now");
    tb.file("s/f", b"1");
    tb.dir("s", 0o700);
    tb.dir("s/", 0o711);
    let imp = import(&lib, &tb.finish()).unwrap();
    let get = |p: &str| lookup(&lib, &imp.snapshot, p.as_bytes());
    let Content::File { data, .. } = get("a").content else {
        panic!()
    };
    let mut bytes = Vec::new();
    file::write_file(&lib, &data, &mut bytes, "a").unwrap();
    assert_eq!(bytes, b"two");
    assert!(matches!(get("d").content, Content::File { size: 8, .. }));
    assert_eq!(get("s").meta.mode, 0o711);
    assert!(matches!(get("s/f").content, Content::File { .. }));
    let w = imp.warnings.join("\n");
    assert_eq!(imp.warnings.len(), 3, "{w}");
    assert!(w.contains("\"./a\": appears more than once"), "{w}");
    assert!(w.contains("\"d\": replaces a non-empty directory"), "{w}");
    assert!(w.contains("\"s/\": appears more than once"), "{w}");
}

/// The paths of a snapshot's tree, with `/` after directories, sorted.
fn paths(lib: &Library, snap: &Snapshot) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![(String::new(), snap.root.clone())];
    while let Some((at, entry)) = todo.pop() {
        let Content::Dir { tree, .. } = entry.content else {
            continue;
        };
        for e in lib.tree(&tree).unwrap().entries {
            let path = format!("{at}{}", String::from_utf8_lossy(&e.name));
            if matches!(e.content, Content::Dir { .. }) {
                out.push(format!("{path}/"));
                todo.push((format!("{path}/"), e));
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn layers_apply_whiteouts_and_opaque_dirs_as_overlayfs() {
    let t = tempfile::tempdir().unwrap();
    let lib = open_lib(t.path());
    let mut lower = TarBuf::new();
    for f in [
        "etc/a",
        "etc/b",
        "top",
        "opt/keep",
        "opt/d/old",
        "opt/d/deep/x",
        "f",
    ] {
        lower.file(f, b"lower");
    }
    let mut upper = TarBuf::new();
    upper.file(".wh.top", b""); // a whiteout at the root
    upper.file("etc/.wh.a", b"");
    upper.file("opt/d/early", b"upper"); // made by this layer before its opaque marker
    upper.file("opt/d/.wh..wh..opq", b"");
    upper.file("opt/d/deep/y", b"upper"); // a lower directory's name, reused after the marker
    upper.file("etc/b", b"upper"); // replaces: no warning
    upper.file("f/now-a-dir", b"upper"); // a lower file replaced by a directory: no warning
    upper.file("new", b"1");
    upper.file("new", b"2"); // twice in one layer: warned
    let layers = [lower.finish(), upper.finish()].map(|b| {
        Ok((
            "layer".to_string(),
            Box::new(std::io::Cursor::new(b)) as Box<dyn std::io::Read>,
        ))
    });
    let imp = import_layers(&lib, layers, &opts()).unwrap();
    assert_eq!(
        paths(&lib, &imp.snapshot),
        [
            "etc/",
            "etc/b",
            "f/",
            "f/now-a-dir",
            "new",
            "opt/",
            "opt/d/",
            "opt/d/deep/",
            "opt/d/deep/y",
            "opt/d/early",
            "opt/keep"
        ]
    );
    let Content::File { data, .. } = lookup(&lib, &imp.snapshot, b"etc/b").content else {
        panic!()
    };
    let mut bytes = Vec::new();
    file::write_file(&lib, &data, &mut bytes, "etc/b").unwrap();
    assert_eq!(bytes, b"upper");
    assert_eq!(imp.warnings.len(), 1, "{:?}", imp.warnings);
    assert!(imp.warnings[0].contains("\"new\": appears more than once"));
    // A damaged layer is named in the one-line error.
    let bad = [Ok((
        "image layer 2 (x)".to_string(),
        Box::new(&b"not a tar at all, not even close"[..]) as Box<dyn std::io::Read>,
    ))];
    let err = import_layers(&lib, bad, &opts()).unwrap_err().to_string();
    assert!(err.starts_with("image layer 2 (x): "), "{err}");
}

#[test]
fn libarchive_xattrs_and_unknown_types() {
    let t = tempfile::tempdir().unwrap();
    let lib = open_lib(t.path());
    let mut tb = TarBuf::new();
    let pax: &[(&str, &[u8])] = &[("LIBARCHIVE.xattr.user.a%3Db", b"AQIKAw==")];
    tb.add(EntryType::Regular, b"f", 0o644, b"x", pax);
    tb.add(EntryType::new(b'V'), b"label", 0o644, b"", &[]);
    let imp = import(&lib, &tb.finish()).unwrap();
    let f = lookup(&lib, &imp.snapshot, b"f");
    assert_eq!(
        f.meta.xattrs,
        vec![(b"user.a=b".to_vec(), vec![1, 2, 10, 3])]
    );
    assert_eq!(imp.warnings.len(), 1);
    assert!(
        imp.warnings[0].contains("\"label\": skipped"),
        "{:?}",
        imp.warnings
    );
}

/// Asserts that importing `bytes` fails with a message containing `expect`.
fn refused(bytes: &[u8], expect: &str) {
    let t = tempfile::tempdir().unwrap();
    let lib = open_lib(t.path());
    let err = import(&lib, bytes)
        .err()
        .unwrap_or_else(|| panic!("accepted; expected {expect:?}"));
    let msg = err.to_string();
    assert!(msg.contains(expect), "{msg:?} does not contain {expect:?}");
    assert!(!msg.contains('\n'), "{msg:?}");
}

fn tar_with(f: impl FnOnce(&mut TarBuf)) -> Vec<u8> {
    let mut tb = TarBuf::new();
    tb.file("ok", b"fine");
    f(&mut tb);
    tb.finish()
}

#[test]
fn hostile_paths_are_refused() {
    refused(
        &tar_with(|t| t.file("../etc/passwd", b"x")),
        "tar entry \"../etc/passwd\": path leaves the archive root",
    );
    refused(&tar_with(|t| t.file("a/../../x", b"x")), "'..'");
    refused(
        &tar_with(|t| t.file("/abs", b"x")),
        "tar entry \"/abs\": absolute path",
    );
    refused(
        &tar_with(|t| t.link(EntryType::Link, "h", "../x")),
        "hard link target \"../x\": path leaves",
    );
    refused(
        &tar_with(|t| t.link(EntryType::Link, "h", "/ok")),
        "hard link target \"/ok\": absolute",
    );
    refused(
        &tar_with(|t| t.link(EntryType::Link, "h", "missing")),
        "hard link target \"missing\" is not an earlier non-directory entry",
    );
    refused(
        &tar_with(|t| {
            t.dir("d/", 0o755);
            t.link(EntryType::Link, "h", "d")
        }),
        "is not an earlier non-directory entry",
    );
    refused(
        &tar_with(|t| {
            t.link(EntryType::Link, "h", "later");
            t.file("later", b"x")
        }),
        "\"later\" is not an earlier",
    );
    let long = format!("d/{}", "n".repeat(256));
    refused(
        &tar_with(|t| {
            t.add(
                EntryType::Regular,
                b"cut",
                0o644,
                b"x",
                &[("path", long.as_bytes())],
            )
        }),
        "256 bytes long",
    );
    refused(
        &tar_with(|t| t.file(".", b"x")),
        "the archive root must be a directory",
    );
}

#[test]
fn damaged_streams_are_refused() {
    let good = tar_with(|t| t.file("big", &noise(100_000, 3)));
    // Cut in the middle of the file body, at the end of an entry (no end marker), and in the
    // middle of a header.
    refused(&good[..good.len() / 2], "truncated");
    refused(&good[..512 + 512], "truncated");
    refused(&good[..512 + 512 + 100], "truncated");
    refused(&noise(10_000, 1), "not a tar archive");
    refused(b"", "truncated");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&good).unwrap();
    let gz = gz.finish().unwrap();
    let mut corrupt = gz.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid..mid + 64].iter_mut().for_each(|b| *b ^= 0x5a);
    refused(&corrupt, "tar stream");
    refused(&gz[..gz.len() - 4], "tar stream");
    let zst = zstd::encode_all(&good[..], 3).unwrap();
    refused(&zst[..zst.len() - 10], "tar stream");
}

#[test]
fn many_files_round_trip() {
    let t = tempfile::tempdir().unwrap();
    let lib = open_lib(t.path());
    let mut tb = TarBuf::new();
    for i in 0..3000u64 {
        let len = if i % 500 == 0 {
            3_000_000
        } else {
            (i as usize * 37) % 5000
        };
        tb.file(&format!("d{}/f{i}", i % 17), &noise(len, i + 1));
    }
    let first = import(&lib, &tb.finish()).unwrap();
    assert_eq!(first.snapshot.entries(), 3000 + 17);
    let again = import(&lib, &export(&lib, &first.snapshot)).unwrap();
    assert_eq!(again.snapshot.root, first.snapshot.root);
}
