//! Diff-apply of overlayfs upper directories: real overlay mounts and hand-made uppers with
//! whiteouts, opaque directories, hostile symlinks, hardlinks and FIFOs (runs as root).

mod common;

use common::{library, opts, sh};

use library::export::dir::export_dir;
use library::import::dir::import_dir;
use library::overlay::{apply_upper, IdShift};
use library::progress::Silent;
use std::path::Path;

/// Changes made through a real overlay mount show up exactly in the child snapshot.
#[test]
fn child_snapshot_equals_the_merged_view() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path();
    common::sample_tree(&p.join("src"));
    let lib = library(p);
    let parent = import_dir(&lib, &p.join("src"), &opts()).unwrap();
    export_dir(&lib, &parent.snapshot, &p.join("lower"), &Silent).unwrap();
    sh(&format!(
        r#"cd '{p}' && mkdir upper work merged
        mount -t overlay overlay -o lowerdir=lower,upperdir=upper,workdir=work,redirect_dir=off,metacopy=off merged
        trap 'umount merged' EXIT
        cd merged
        rm etc/passwd && rm -r deep/a && rm fifo
        rm -r 'odd dir' && mkdir 'odd dir' && echo new > 'odd dir/inside'
        echo appended >> usr/bin/a
        printf 'edit' | dd of=big.bin bs=1 seek=3000000 conv=notrunc 2>/dev/null
        mkdir -p var/new && echo hi > var/new/file && ln var/new/file var/new/file2
        ln -s /etc/shadow var/new/evil && mkfifo var/new/pipe
        chmod 700 usr && chown 7:7 usr/bin/su && touch -d @1600000000.5 usr/bin
        setfattr -n user.added -v yes var/new/file
        cd .. && cp -a merged expected
        "#,
        p = p.display()
    ));
    let child = apply_upper(&lib, parent.score, &p.join("upper"), &opts(), None).unwrap();
    assert_eq!(child.snapshot.parent, Some(parent.score));
    export_dir(&lib, &child.snapshot, &p.join("out"), &Silent).unwrap();
    assert_eq!(
        common::listing(&p.join("expected"), false),
        common::listing(&p.join("out"), false)
    );

    // The parent is untouched.
    export_dir(&lib, &parent.snapshot, &p.join("parent-again"), &Silent).unwrap();
    assert_eq!(
        common::listing(&p.join("src"), true),
        common::listing(&p.join("parent-again"), true)
    );
}

/// A hand-made upper: whiteouts, an opaque dir, symlinks out of the tree, a FIFO and a device
/// swapped in; nothing outside the upper is read and the FIFO is not opened.
#[test]
fn hand_made_upper_is_applied_without_following_anything() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path();
    sh(&format!(
        r#"cd '{p}' && mkdir -p src/a/b src/keep src/gone && echo 1 > src/a/b/f && echo 2 > src/keep/k && echo 3 > src/gone/g
        echo secret > outside
        mkdir -p upper/a upper/gone && mknod upper/keep c 0 0
        setfattr -n trusted.overlay.opaque -v y upper/a
        echo new > upper/a/only && ln -s '{p}/outside' upper/a/escape && ln -s ../../.. upper/a/up
        mkfifo upper/a/fifo && ln upper/a/only upper/a/only2
        setfattr -n trusted.overlay.opaque -v y upper/gone
        "#,
        p = p.display()
    ));
    let lib = library(p);
    let parent = import_dir(&lib, &p.join("src"), &opts()).unwrap();
    let child = apply_upper(&lib, parent.score, &p.join("upper"), &opts(), None).unwrap();
    export_dir(&lib, &child.snapshot, &p.join("out"), &Silent).unwrap();
    let out = p.join("out");
    assert!(!out.join("keep").exists(), "whiteout removes the name");
    assert!(
        !out.join("a/b").exists(),
        "opaque dir hides the lower contents"
    );
    assert_eq!(std::fs::read(out.join("a/only")).unwrap(), b"new\n");
    assert_eq!(
        std::fs::read_link(out.join("a/escape")).unwrap(),
        p.join("outside")
    );
    assert_eq!(
        std::fs::read_link(out.join("a/up")).unwrap(),
        Path::new("../../..")
    );
    assert_eq!(std::fs::read_dir(out.join("gone")).unwrap().count(), 0);
    use std::os::unix::fs::MetadataExt;
    let (m1, m2) = (
        std::fs::metadata(out.join("a/only")).unwrap(),
        std::fs::metadata(out.join("a/only2")).unwrap(),
    );
    assert_eq!(m1.ino(), m2.ino(), "hardlink pair restored as one inode");
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::symlink_metadata(out.join("a/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    // The overlay bookkeeping xattr is not stored.
    assert!(common::xattrs(&out.join("a")).is_empty());
}

#[test]
fn overlay_redirects_are_refused_and_ids_are_shifted_back() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path();
    sh(&format!(
        r#"cd '{p}' && mkdir -p src upper/d && echo x > src/f && echo y > upper/d/g
        chown 100000:100000 upper upper/d && chown 101000:101005 upper/d/g"#,
        p = p.display()
    ));
    let lib = library(p);
    let parent = import_dir(&lib, &p.join("src"), &opts()).unwrap();
    let shift = IdShift {
        host_uid: 100000,
        host_gid: 100000,
        count: 65536,
    };
    let child = apply_upper(&lib, parent.score, &p.join("upper"), &opts(), Some(shift)).unwrap();
    export_dir(&lib, &child.snapshot, &p.join("out"), &Silent).unwrap();
    use std::os::unix::fs::MetadataExt;
    let g = std::fs::metadata(p.join("out/d/g")).unwrap();
    assert_eq!((g.uid(), g.gid()), (1000, 1005));

    sh(&format!("cd '{}' && chown 5:5 upper/d/g", p.display()));
    let err = apply_upper(&lib, parent.score, &p.join("upper"), &opts(), Some(shift)).unwrap_err();
    assert!(
        err.to_string()
            .contains("outside the environment's id range"),
        "{err}"
    );

    sh(&format!(
        "cd '{}' && setfattr -n trusted.overlay.redirect -v /x upper/d",
        p.display()
    ));
    let err = apply_upper(&lib, parent.score, &p.join("upper"), &opts(), None).unwrap_err();
    assert!(err.to_string().contains("redirect"), "{err}");
}
