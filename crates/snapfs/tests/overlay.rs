//! The mount as an overlayfs lower layer with a 100 MiB tmpfs upper: real work in a chroot.

mod common;

use common::*;

/// Builds a small .deb with a maintainer script (so dpkg runs the whole install path).
fn build_deb(dir: &std::path::Path) -> std::path::PathBuf {
    let d = dir.display();
    sh(&format!(
        r#"mkdir -p '{d}/pkg/DEBIAN' '{d}/pkg/usr/bin'
        printf 'Package: sg-hello\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@example.com>\nDescription: spawngrid test package\n' > '{d}/pkg/DEBIAN/control'
        printf '#!/bin/sh\nset -e\necho installed > /var/lib/sg-hello.postinst\n' > '{d}/pkg/DEBIAN/postinst'
        printf '#!/bin/sh\necho hello from sg-hello\n' > '{d}/pkg/usr/bin/sg-hello'
        chmod 755 '{d}/pkg/DEBIAN/postinst' '{d}/pkg/usr/bin/sg-hello'
        dpkg-deb --root-owner-group -b '{d}/pkg' '{d}/sg-hello.deb' >/dev/null"#
    ));
    dir.join("sg-hello.deb")
}

#[test]
fn overlay_on_tmpfs_upper_runs_dpkg_in_a_chroot() {
    let Some((_, tmp, data)) = base_library() else {
        return;
    };
    let lower = Mounted::new(&data, "base", &tmp.path().join("lower"), &[]);
    let deb = build_deb(tmp.path());
    let overlay = Overlay::new(&lower.dir, tmp.path());
    let merged = &overlay.merged;
    sh(&format!(
        "cp '{}' '{}/tmp/'",
        deb.display(),
        merged.display()
    ));
    let out = sh(&format!(
        r#"unshare -m -p -f chroot '{}' /bin/sh -ec '
        mount -t proc proc /proc
        dpkg -i /tmp/sg-hello.deb
        sg-hello
        cat /var/lib/sg-hello.postinst
        dpkg -s sg-hello | grep "^Status"
        echo data > /etc/new-file && rm /etc/hostname && chmod 600 /etc/passwd
        if command -v cc >/dev/null; then
          printf "int main(void){{return 42;}}\n" > /tmp/t.c && cc -o /tmp/t /tmp/t.c && (/tmp/t; echo "compiled, exit $?")
        else
          echo "no C compiler in snapshot"
        fi
        umount /proc'"#,
        merged.display()
    ));
    assert!(out.contains("hello from sg-hello"), "{out}");
    assert!(
        out.contains("installed") && out.contains("install ok installed"),
        "{out}"
    );
    if out.contains("no C compiler") {
        eprintln!("compile step skipped: the minbase snapshot has no C compiler");
    } else {
        assert!(out.contains("compiled, exit 42"), "{out}");
    }
    // The writes went to the upper; the lower mount (and so the snapshot) is unchanged.
    let upper = &overlay.upper;
    assert!(upper.join("usr/bin/sg-hello").exists());
    assert!(upper.join("etc/new-file").exists());
    assert!(lower.dir.join("etc/hostname").exists());
    assert!(!lower.dir.join("usr/bin/sg-hello").exists());
}
