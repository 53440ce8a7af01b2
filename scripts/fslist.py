#!/usr/bin/env python3
# fslist.py: prints a canonical, complete listing of a directory tree so two trees can be
# compared with `diff` (e.g. a rootfs and its spawngrid import/export round trip).
#
#   python3 scripts/fslist.py [--no-root-mtime] [--exclude PATTERN]... [--no-hash] ROOT
#
# One line per entry, sorted by the raw bytes of its path relative to ROOT (the root is "."),
# fields separated by tabs:
#   PATH  type=file|dir|symlink|fifo|char|block|socket  mode=04755  uid=0  gid=0
#         [size=N (regular files)]  mtime=NS  [link=TARGET]  [rdev=MAJ:MIN (devices)]
#         [xattrs=name=HEX,name=HEX (sorted)]  [sha256=HEX (regular files)]
#         [hardlink=FIRSTPATH (files whose inode appears more than once in the listing)]
# Paths and link targets are escaped: \\ \n \t, and \xNN for every other byte outside
# printable ASCII, so names with newlines or invalid UTF-8 stay on one line.
# Symlinks are never followed (lstat, O_NOFOLLOW, listxattr without following).
# --exclude takes an fnmatch pattern matched against the relative path (no leading "./");
# an excluded directory is skipped with its contents. Can be given several times.
# --no-root-mtime leaves out the root directory's mtime (e.g. an export's destination directory
# or a mount point, whose mtime the tool being tested may not control).
# Exits 0 once the listing is printed (an unreadable entry gets an `error=` field); exits 2 with
# one line on stderr if ROOT itself cannot be read.
import argparse
import fnmatch
import hashlib
import os
import stat
import sys
from concurrent.futures import ThreadPoolExecutor

_SAFE = set(range(0x20, 0x7F)) - {ord("\\")}


def esc(b: bytes) -> bytes:
    if all(c in _SAFE for c in b):
        return b
    out = bytearray()
    for c in b:
        if c in _SAFE:
            out.append(c)
        elif c == 0x5C:
            out += b"\\\\"
        elif c == 0x0A:
            out += b"\\n"
        elif c == 0x09:
            out += b"\\t"
        else:
            out += b"\\x%02x" % c
    return bytes(out)


def ftype(m: int) -> str:
    if stat.S_ISREG(m):
        return "file"
    if stat.S_ISDIR(m):
        return "dir"
    if stat.S_ISLNK(m):
        return "symlink"
    if stat.S_ISFIFO(m):
        return "fifo"
    if stat.S_ISCHR(m):
        return "char"
    if stat.S_ISBLK(m):
        return "block"
    if stat.S_ISSOCK(m):
        return "socket"
    return "unknown"


def sha256_file(path: bytes) -> str:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, flags | os.O_NOATIME)
    except PermissionError:
        fd = os.open(path, flags)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "rb", buffering=0) as f:
            fd = -1
            buf = bytearray(1 << 20)
            view = memoryview(buf)
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                h.update(view[:n])
    finally:
        if fd >= 0:
            os.close(fd)
    return h.hexdigest()


def xattrs(path: bytes) -> str:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ""
    parts = []
    for n in sorted(names):
        try:
            v = os.getxattr(path, n, follow_symlinks=False)
        except OSError as e:
            parts.append(f"{n}=<{e.strerror}>")
            continue
        parts.append(f"{n}={v.hex()}")
    return ",".join(parts)


def main() -> int:
    ap = argparse.ArgumentParser(description="canonical listing of a directory tree")
    ap.add_argument("root")
    ap.add_argument("--exclude", action="append", default=[], metavar="PATTERN",
                    help="fnmatch pattern on the relative path; may repeat")
    ap.add_argument("--no-root-mtime", action="store_true", help="omit the root's mtime")
    ap.add_argument("--no-hash", action="store_true", help="skip sha256 of file contents")
    ap.add_argument("-j", "--jobs", type=int, default=min(8, (os.cpu_count() or 2) * 2),
                    help="threads hashing file contents")
    a = ap.parse_args()

    root = os.fsencode(a.root.rstrip("/") or "/")
    pats = [os.fsencode(p) for p in a.exclude]

    def excluded(rel: bytes) -> bool:
        return any(fnmatch.fnmatchcase(rel, p) for p in pats)

    # walk (never following symlinks); entries: (rel, abs, stat_result)
    entries = []
    errors = {}
    try:
        st = os.lstat(root)
    except OSError as e:
        print(f"fslist.py: cannot list {a.root}: {e.strerror}", file=sys.stderr)
        return 2
    entries.append((b".", root, st))
    stack = [(b"", root)] if stat.S_ISDIR(st.st_mode) else []
    while stack:
        rel, absd = stack.pop()
        try:
            it = os.scandir(absd)
        except OSError as e:
            errors[rel or b"."] = e.strerror
            continue
        with it:
            for de in it:
                r = rel + b"/" + de.name if rel else de.name
                if pats and excluded(r):
                    continue
                try:
                    s = de.stat(follow_symlinks=False)
                except OSError as e:
                    errors[r] = e.strerror
                    continue
                entries.append((r, de.path, s))
                if stat.S_ISDIR(s.st_mode):
                    stack.append((r, de.path))
    entries.sort(key=lambda e: b"" if e[0] == b"." else e[0])

    # hardlink groups: inodes (non-directories) seen more than once in the listing
    first = {}
    count = {}
    for rel, _, s in entries:
        if not stat.S_ISDIR(s.st_mode) and s.st_nlink > 1:
            k = (s.st_dev, s.st_ino)
            count[k] = count.get(k, 0) + 1
            first.setdefault(k, rel)

    # content hashes, in parallel (hashlib releases the GIL on large buffers)
    hashes = {}
    if not a.no_hash:
        todo = []
        seen = {}
        for rel, p, s in entries:
            if stat.S_ISREG(s.st_mode):
                k = (s.st_dev, s.st_ino)
                if k in seen:
                    continue
                seen[k] = True
                todo.append((k, p))

        def job(item):
            k, p = item
            try:
                return k, sha256_file(p)
            except OSError as e:
                return k, "<" + (e.strerror or "error") + ">"

        with ThreadPoolExecutor(max_workers=max(1, a.jobs)) as ex:
            for k, h in ex.map(job, todo, chunksize=64):
                hashes[k] = h

    out = sys.stdout.buffer
    lines = []
    for rel, p, s in entries:
        m = s.st_mode
        f = [esc(rel), ("type=" + ftype(m)).encode(), b"mode=0%o" % stat.S_IMODE(m),
             b"uid=%d" % s.st_uid, b"gid=%d" % s.st_gid]
        if stat.S_ISREG(m):
            f.append(b"size=%d" % s.st_size)
        if not (rel == b"." and a.no_root_mtime):
            f.append(b"mtime=%d" % s.st_mtime_ns)
        if stat.S_ISLNK(m):
            try:
                f.append(b"link=" + esc(os.readlink(p)))
            except OSError as e:
                f.append(b"link=<" + (e.strerror or "error").encode() + b">")
        if stat.S_ISCHR(m) or stat.S_ISBLK(m):
            f.append(b"rdev=%d:%d" % (os.major(s.st_rdev), os.minor(s.st_rdev)))
        x = xattrs(p)
        if x:
            f.append(b"xattrs=" + esc(os.fsencode(x)))
        k = (s.st_dev, s.st_ino)
        if stat.S_ISREG(m) and not a.no_hash:
            f.append(b"sha256=" + hashes[k].encode())
        if count.get(k, 0) > 1:
            f.append(b"hardlink=" + esc(first[k]))
        if rel in errors:
            f.append(b"error=" + errors[rel].encode())
        lines.append(b"\t".join(f))
    listed = {x[0] for x in entries}
    for rel, e in sorted(errors.items()):
        if rel not in listed:
            lines.append(esc(rel) + b"\terror=" + (e or "error").encode())
    out.write(b"\n".join(lines) + b"\n")
    out.flush()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:
        sys.exit(0)
    except KeyboardInterrupt:
        sys.exit(130)
