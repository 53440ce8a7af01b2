#!/usr/bin/env bash
# Builds and caches the test root filesystems used by the tests and benchmarks.
#
#   scripts/rootfs.sh base           prints the path of a cached debootstrap --variant=minbase
#                                    bookworm rootfs, plus metadata variety under
#                                    /var/lib/spawngrid-test (setuid, xattrs, file capability,
#                                    FIFO, device nodes, hardlinks, ns mtimes, a newline in a
#                                    name, foreign uid/gid, a deterministic 32 MiB big.bin)
#   scripts/rootfs.sh modified       prints the path of a cached modified copy of base: packages
#                                    installed (make, python3-minimal), /usr/share/doc/* deleted,
#                                    4 KiB overwritten in the middle of big.bin
#   scripts/rootfs.sh changed-bytes  prints the estimated bytes added/modified between the two
#                                    (the `.changed-bytes` manifest next to the modified root)
#   scripts/rootfs.sh debian         prints the path of a cached plain debootstrap
#                                    --variant=minbase bookworm rootfs (no test extras; the
#                                    `base` snapshot of scripts/up.sh, and what `base` is built from)
#   scripts/rootfs.sh busybox        prints the path of a cached tiny root made from the host's
#                                    static busybox (installs busybox-static if needed):
#                                    /bin/busybox, applet symlinks, /etc/passwd, /etc/group, /tmp,
#                                    /root (the fallback of scripts/up.sh when debootstrap fails)
#   scripts/rootfs.sh sshd           prints the path of a cached copy of debian with
#                                    openssh-server and busybox installed (bench/flow.py: the
#                                    same tree is the env's snapshot and the sshd container)
#
# Run as root. Environment: SPAWNGRID_CACHE (default /var/cache/spawngrid),
# SPAWNGRID_MIRROR (default http://deb.debian.org/debian).
#
# Layout: $SPAWNGRID_CACHE/rootfs/bookworm-debian/root      (printed for `debian`)
#         $SPAWNGRID_CACHE/rootfs/busybox/root              (printed for `busybox`)
#         $SPAWNGRID_CACHE/rootfs/bookworm-minbase/root     (printed for `base`)
#         $SPAWNGRID_CACHE/rootfs/bookworm-modified/root    (printed for `modified`)
#         $SPAWNGRID_CACHE/rootfs/bookworm-sshd/root        (printed for `sshd`)
#         $SPAWNGRID_CACHE/rootfs/bookworm-modified/.changed-bytes   (one integer)
#         $SPAWNGRID_CACHE/rootfs/bookworm-modified/.changes.json    (details)
# Each cache entry is built in a temporary directory beside it and renamed into place only when
# complete, so an interrupted build is never used; the next run deletes its leftovers.
# Idempotent; concurrent runs serialise on a lock. Progress goes to stderr, the path to stdout,
# and build tool output to $SPAWNGRID_CACHE/rootfs/build.log.
set -euo pipefail

prog="scripts/rootfs.sh"
here="$(cd "$(dirname "$0")" && pwd)"
cache="${SPAWNGRID_CACHE:-/var/cache/spawngrid}/rootfs"
mirror="${SPAWNGRID_MIRROR:-http://deb.debian.org/debian}"
suite=bookworm
base_dir="$cache/$suite-minbase"
debian_dir="$cache/$suite-debian"
busybox_dir="$cache/busybox"
mod_dir="$cache/$suite-modified"
sshd_dir="$cache/$suite-sshd"
log="$cache/build.log"
extra_packages=(make python3-minimal)

step="start"
tmp=""
mounts=()

say() { echo "$prog: $*" >&2; }

unmount_all() {
  local i m
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
    m="${mounts[$i]}"
    if mountpoint -q "$m" 2>/dev/null; then
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || say "warning: could not unmount $m"
    fi
  done
  mounts=()
}

# Deletes a directory tree that may still have something mounted inside it (an interrupted
# chroot step): unmount first, then remove without ever crossing into another filesystem.
remove_tree() {
  local d="$1" m
  [ -e "$d" ] || return 0
  # deepest mounts first
  while read -r m; do
    [ -n "$m" ] || continue
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done < <(findmnt -rn -o TARGET | awk -v p="$d/" 'index($0, p) == 1' | sort -r)
  rm -rf --one-file-system "$d"
}

on_exit() {
  local rc=$?
  unmount_all
  if [ -n "$tmp" ] && [ -e "$tmp" ]; then remove_tree "$tmp" || true; fi
  if [ "$rc" -ne 0 ]; then
    echo "$prog: failed while $step (exit $rc); see $log" >&2
  fi
  exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

need() { # need COMMAND PACKAGE
  command -v "$1" >/dev/null 2>&1 && return 0
  step="installing $2 (for $1)"
  say "installing $2"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >>"$log" 2>&1 ||
    { DEBIAN_FRONTEND=noninteractive apt-get update -qq >>"$log" 2>&1 &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >>"$log" 2>&1; }
}

new_tmp() { # new_tmp NAME -> sets $tmp
  tmp="$(mktemp -d "$cache/.tmp-$1.XXXXXX")"
  chmod 755 "$tmp"
}

commit_tmp() { # commit_tmp DEST
  sync -f "$tmp" 2>/dev/null || true
  mv -T "$tmp" "$1"
  tmp=""
}

# --- base -----------------------------------------------------------------------------------

add_variety() { # add_variety ROOT: metadata the library must round-trip
  local r="$1" t="$1/var/lib/spawngrid-test"
  mkdir -p "$t"
  # a deterministic 32 MiB pseudo-random file, so "edit in the middle" has a big file
  python3 - "$t/big.bin" <<'EOF'
import hashlib, sys
with open(sys.argv[1], "wb") as f:
    f.write(hashlib.shake_256(b"spawngrid-test big.bin v1").digest(32 << 20))
EOF
  touch -d '2020-01-02 03:04:05' "$t/big.bin"
  # setuid / setgid: minbase ships setuid binaries (su, mount, passwd); also make our own
  cp "$r/usr/bin/true" "$t/setuid-true" && chmod 4755 "$t/setuid-true"
  cp "$r/usr/bin/true" "$t/setgid-true" && chmod 2755 "$t/setgid-true"
  mkdir -p "$t/setgid-dir" "$t/sticky-dir" && chmod 2775 "$t/setgid-dir" && chmod 1777 "$t/sticky-dir"
  # user xattrs (one plain, one with binary value)
  echo "file with a user xattr" >"$t/xattr.txt"
  setfattr -n user.spawngrid -v test "$t/xattr.txt"
  setfattr -n user.binary -v 0x00ff10fe "$t/xattr.txt"
  # a file capability on a copy of a binary
  cp "$r/usr/bin/true" "$t/cap-true"
  if command -v setcap >/dev/null 2>&1; then
    setcap cap_net_raw+ep "$t/cap-true"
  else # VFS_CAP_REVISION_2 | EFFECTIVE, permitted = CAP_NET_RAW (13)
    setfattr -n security.capability -v 0x0100000200200000000000000000000000000000 "$t/cap-true"
  fi
  # a POSIX ACL if the tools are there (stored as system.posix_acl_access)
  echo "file with an ACL" >"$t/acl.txt"
  if command -v setfacl >/dev/null 2>&1; then setfacl -m u:1234:r "$t/acl.txt"; fi
  # special files
  mkfifo "$t/fifo"
  mkdir -p "$t/dev"
  mknod -m 666 "$t/dev/null" c 1 3
  mknod -m 660 "$t/dev/loop0" b 7 0
  # hardlinks (a pair, and a triple with one link in another directory)
  echo "hardlinked pair" >"$t/hardlink-a"
  ln "$t/hardlink-a" "$t/hardlink-b"
  mkdir -p "$t/sub"
  echo "hardlinked triple" >"$t/triple-1"
  ln "$t/triple-1" "$t/triple-2"
  ln "$t/triple-1" "$t/sub/triple-3"
  # nanosecond mtimes
  echo "mtime with nanoseconds" >"$t/mtime-ns"
  touch -m -d '2021-03-04 05:06:07.123456789 UTC' "$t/mtime-ns"
  # odd names
  echo "newline in name" >"$t/name"$'\n'"with-newline"
  echo "spaces and unicode" >"$t/space name é ✓"
  # symlinks: relative, absolute, dangling
  ln -s ../../../usr/bin/true "$t/link-relative"
  ln -s /etc/os-release "$t/link-absolute"
  ln -s /does/not/exist "$t/link-dangling"
  # foreign owner, empty file, empty dir, sparse file
  echo "owned by 1234:5678" >"$t/foreign-owner"
  chown 1234:5678 "$t/foreign-owner"
  : >"$t/empty"
  mkdir -p "$t/empty-dir"
  truncate -s 4M "$t/sparse" && printf 'end' | dd of="$t/sparse" bs=1 seek=$((4 * 1024 * 1024)) conv=notrunc status=none
  chmod 0640 "$t/mtime-ns"
  touch -m -d '2021-03-04 05:06:07.987654321 UTC' "$t"
}

# --- debian: a plain debootstrap, the starting point of base ------------------------------

build_debian() {
  [ -d "$debian_dir/root" ] && return 0
  need debootstrap debootstrap
  step="creating $cache"
  mkdir -p "$cache"
  new_tmp "$suite-debian"
  step="running debootstrap --variant=minbase $suite from $mirror"
  say "debootstrap --variant=minbase $suite from $mirror (a few minutes; log in $log)"
  debootstrap --variant=minbase "$suite" "$tmp/root" "$mirror" >>"$log" 2>&1
  step="cleaning the apt cache in debian"
  rm -rf --one-file-system "$tmp/root/var/cache/apt/archives/"*.deb
  step="committing debian"
  commit_tmp "$debian_dir"
  say "debian ready: $debian_dir/root"
}

build_base() {
  [ -d "$base_dir/root" ] && return 0
  build_debian
  need setfattr attr
  need python3 python3
  new_tmp "$suite-minbase"
  step="copying debian (cp -a)"
  say "copying the plain debootstrap"
  cp -a "$debian_dir/root" "$tmp/root"
  step="adding metadata variety to base"
  say "adding metadata variety under /var/lib/spawngrid-test"
  add_variety "$tmp/root"
  step="committing base"
  commit_tmp "$base_dir"
  say "base ready: $base_dir/root"
}

# --- busybox: a tiny root from the host's static busybox ------------------------------------

is_static() { # is_static FILE: true if FILE is an executable with no dynamic loader
  local out
  [ -x "$1" ] || return 1
  out="$(LC_ALL=C ldd "$1" 2>&1 || true)" # ldd exits 1 for a static binary
  grep -q -e 'not a dynamic executable' -e 'statically linked' <<<"$out"
}

build_busybox() {
  [ -d "$busybox_dir/root" ] && return 0
  local bb="" c
  for c in /bin/busybox /usr/bin/busybox; do
    if is_static "$c"; then bb="$c"; break; fi
  done
  if [ -z "$bb" ]; then
    step="installing busybox-static"
    say "installing busybox-static"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >>"$log" 2>&1 ||
      { DEBIAN_FRONTEND=noninteractive apt-get update -qq >>"$log" 2>&1 &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >>"$log" 2>&1; }
    bb=/bin/busybox
    is_static "$bb" || { step="checking $bb"; say "$bb is not statically linked"; return 1; }
  fi
  step="creating $cache"
  mkdir -p "$cache"
  new_tmp busybox
  local r="$tmp/root" a
  step="building the busybox root from $bb"
  say "building a busybox root from $bb"
  mkdir -p "$r/bin" "$r/sbin" "$r/usr/bin" "$r/usr/sbin" "$r/etc" "$r/tmp" "$r/root"
  chmod 755 "$r" "$r/bin" "$r/sbin" "$r/usr" "$r/usr/bin" "$r/usr/sbin" "$r/etc"
  chmod 1777 "$r/tmp"
  chmod 700 "$r/root"
  install -m 0755 "$bb" "$r/bin/busybox"
  # every applet at its usual place, as a symlink to /bin/busybox
  while read -r a; do
    [ -n "$a" ] || continue
    a="${a#/}"
    [ "$a" = bin/busybox ] && continue
    mkdir -p "$r/$(dirname "$a")"
    [ -e "$r/$a" ] || [ -L "$r/$a" ] || ln -s /bin/busybox "$r/$a"
  done < <("$r/bin/busybox" --list-full 2>/dev/null || "$r/bin/busybox" --list | sed 's|^|bin/|')
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$r/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$r/etc/group"
  chmod 644 "$r/etc/passwd" "$r/etc/group"
  step="committing busybox"
  commit_tmp "$busybox_dir"
  say "busybox ready: $busybox_dir/root"
}

# --- modified -------------------------------------------------------------------------------

chroot_mounts() { # chroot_mounts ROOT
  local r="$1"
  mount -t proc proc "$r/proc"
  mounts+=("$r/proc")
  mount --bind /dev "$r/dev"
  mounts+=("$r/dev")
  mount -t sysfs sysfs "$r/sys"
  mounts+=("$r/sys")
}

chroot_install() { # chroot_install ROOT PACKAGE...: apt-get install inside ROOT, no daemons
  local r="$1"
  shift
  say "installing $* inside the copy (apt-get in chroot)"
  [ -s "$r/etc/resolv.conf" ] || cp /etc/resolv.conf "$r/etc/resolv.conf"
  printf '#!/bin/sh\nexit 101\n' >"$r/usr/sbin/policy-rc.d" && chmod 755 "$r/usr/sbin/policy-rc.d"
  chroot_mounts "$r"
  local apt=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive LC_ALL=C
    chroot "$r" apt-get -q -o Dpkg::Options::=--force-unsafe-io -o APT::Sandbox::User=root)
  "${apt[@]}" update >>"$log" 2>&1
  "${apt[@]}" install -y --no-install-recommends "$@" >>"$log" 2>&1
  "${apt[@]}" clean >>"$log" 2>&1
  unmount_all
  rm -f "$r/usr/sbin/policy-rc.d"
  rm -rf --one-file-system "$r/var/lib/apt/lists/"* "$r/var/cache/apt/"*.bin
  mkdir -p "$r/var/lib/apt/lists/partial"
}

build_modified() {
  [ -d "$mod_dir/root" ] && return 0
  build_base
  need python3 python3
  new_tmp "$suite-modified"
  step="copying base (cp -a)"
  say "copying base"
  cp -a "$base_dir/root" "$tmp/root"
  local r="$tmp/root"

  step="installing ${extra_packages[*]} in the modified copy"
  chroot_install "$r" "${extra_packages[@]}"

  step="deleting files in the modified copy"
  say "deleting /usr/share/doc/*"
  rm -rf --one-file-system "$r/usr/share/doc/"*

  step="editing big.bin in the middle"
  say "overwriting 4 KiB in the middle of /var/lib/spawngrid-test/big.bin"
  head -c 4096 /dev/zero | tr '\0' 'M' |
    dd of="$r/var/lib/spawngrid-test/big.bin" bs=4096 count=1 iflag=fullblock \
      seek=$((16 * 1024 * 1024 + 1234)) oflag=seek_bytes conv=notrunc status=none
  echo "added by the modified copy" >"$r/etc/spawngrid-modified"

  step="computing the changed-bytes manifest"
  python3 - "$base_dir/root" "$r" "$tmp" <<'EOF'
import json, os, stat, sys

def walk(root):
    out = {}
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(root, rel) if rel else root) as it:
            for e in it:
                p = os.path.join(rel, e.name) if rel else e.name
                st = e.stat(follow_symlinks=False)
                out[p] = st
                if stat.S_ISDIR(st.st_mode):
                    stack.append(p)
    return out

BLOCK = 4096

def differing_bytes(a, b):
    """Bytes in 4 KiB-aligned blocks of b that differ from the same blocks of a."""
    n = 0
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if not y:
                return n
            if x == y:
                continue
            for i in range(0, len(y), BLOCK):
                yb = y[i:i + BLOCK]
                if x[i:i + BLOCK] != yb:
                    n += len(yb)

base, mod, outdir = sys.argv[1:4]
b, m = walk(base), walk(mod)
added = modified = 0
added_bytes = modified_bytes = modified_whole = deleted_bytes = 0
seen = set()
for p, st in m.items():
    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) in seen:
        continue
    seen.add((st.st_dev, st.st_ino))
    o = b.get(p)
    if o is None or not stat.S_ISREG(o.st_mode):
        added += 1
        added_bytes += st.st_size
        continue
    d = differing_bytes(os.path.join(base, p), os.path.join(mod, p))
    if d or o.st_size != st.st_size or o.st_mtime_ns != st.st_mtime_ns:
        modified += 1
        modified_bytes += d
        modified_whole += st.st_size
deleted = [p for p in b if p not in m]
deleted_bytes = sum(b[p].st_size for p in deleted if stat.S_ISREG(b[p].st_mode))
changed = added_bytes + modified_bytes
info = {
    "changed_bytes": changed,
    "added_files": added, "added_bytes": added_bytes,
    "modified_files": modified, "modified_bytes": modified_bytes,
    "modified_bytes_whole_files": modified_whole,
    "deleted_entries": len(deleted), "deleted_bytes": deleted_bytes,
    "note": "changed_bytes = added_bytes (regular files new in modified, hardlinks once) + "
            "modified_bytes (the 4 KiB-aligned blocks that differ in files present in both). "
            "A chunking store also rewrites the chunks around each edit and new metadata, "
            "so expect its growth somewhat above changed_bytes; deletions cost nothing.",
    "big_bin_edit": {"path": "var/lib/spawngrid-test/big.bin", "offset": 16 * 1024 * 1024 + 1234, "length": 4096},
}
with open(os.path.join(outdir, ".changed-bytes"), "w") as f:
    f.write(f"{changed}\n")
with open(os.path.join(outdir, ".changes.json"), "w") as f:
    json.dump(info, f, indent=2)
    f.write("\n")
print(f"changed: {added} files added ({added_bytes} B), {modified} modified ({modified_bytes} B in "
      f"differing blocks of {modified_whole} B), "
      f"{len(deleted)} entries deleted ({deleted_bytes} B)", file=sys.stderr)
EOF

  step="committing the modified copy"
  commit_tmp "$mod_dir"
  say "modified ready: $mod_dir/root"
}

# --- sshd: debian with an SSH server, for bench/flow.py's container peer -------------------

build_sshd() {
  [ -d "$sshd_dir/root" ] && return 0
  build_debian
  new_tmp "$suite-sshd"
  step="copying debian (cp -a)"
  say "copying the plain debootstrap"
  cp -a "$debian_dir/root" "$tmp/root"
  step="installing openssh-server and busybox in the sshd copy"
  chroot_install "$tmp/root" openssh-server busybox
  # Host keys are per machine: the bench makes its own; none is kept in the cache.
  rm -f "$tmp/root/etc/ssh/ssh_host_"*
  step="committing sshd"
  commit_tmp "$sshd_dir"
  say "sshd ready: $sshd_dir/root"
}

# --- main -----------------------------------------------------------------------------------

what="${1:-}"
case "$what" in
  base | modified | changed-bytes | debian | busybox | sshd) ;;
  *) echo "usage: $prog base|modified|changed-bytes|debian|busybox|sshd" >&2; trap - EXIT; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { step="checking for root"; echo "$prog: run as root (debootstrap, chroot, mknod, security.* xattrs)" >&2; trap - EXIT; exit 1; }

step="taking the lock $cache/.lock"
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
# leftovers of interrupted builds (unmounting anything still mounted inside them)
for d in "$cache"/.tmp-*; do
  [ -e "$d" ] || continue
  say "removing leftover $d"
  remove_tree "$d"
done

case "$what" in
  base) build_base; echo "$base_dir/root" ;;
  modified) build_modified; echo "$mod_dir/root" ;;
  changed-bytes) build_modified; cat "$mod_dir/.changed-bytes" ;;
  debian) build_debian; echo "$debian_dir/root" ;;
  busybox) build_busybox; echo "$busybox_dir/root" ;;
  sshd) build_sshd; echo "$sshd_dir/root" ;;
esac
step="done"
