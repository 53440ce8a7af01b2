//! Exporting a snapshot as a PAX tar stream that GNU tar and [`crate::import::tar`] read back
//! exactly: nanosecond mtimes, xattrs, long names, large ids, hardlinks, devices and FIFOs.
//!
//! The archive starts with a `./` entry for the root, then walks the snapshot depth-first in
//! canonical order, each directory before its children. The second and later members of a
//! hardlink group are written as links to the first. File bodies are streamed one stored
//! blob at a time, or, with a [`FileSource`] that has a file (checked as the directory
//! exporter checks it), copied from there.

use crate::export::dir::{self, FileSource};
use crate::pack::ObjectKind;
use crate::progress::Progress;
use crate::tree::{Content, Entry, FileData, Meta};
use crate::{file, Error, Library, Result, Score, Snapshot};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use tar::{EntryType, Header};

/// Largest value of an 8-byte ustar number field (uid, gid).
const USTAR_ID_MAX: u64 = 0o7_777_777;
/// Largest value of a 12-byte ustar number field (size, mtime).
const USTAR_NUM_MAX: u64 = 0o77_777_777_777;

/// Writes `snap` to `w` as a PAX tar archive (uncompressed).
pub fn export_tar(
    lib: &Library,
    snap: &Snapshot,
    w: impl Write,
    progress: &dyn Progress,
) -> Result<()> {
    export_tar_from(lib, snap, w, progress, None).map(|_| ())
}

/// Like [`export_tar`], taking file contents from `source` where it has them; returns how many
/// file bytes came from there. The archive is the same byte for byte either way.
pub fn export_tar_from(
    lib: &Library,
    snap: &Snapshot,
    w: impl Write,
    progress: &dyn Progress,
    source: Option<&dyn FileSource>,
) -> Result<u64> {
    progress.total(snap.bytes());
    let mut out = TarWriter {
        lib,
        progress,
        source,
        from_source: 0,
        tar: tar::Builder::new(w),
        first_of_group: HashMap::new(),
    };
    out.entry(b"./", &snap.root)?;
    out.dir(&snap.tree(), b"./")?;
    let from_source = out.from_source;
    let mut w = out
        .tar
        .into_inner()
        .map_err(|e| write_err("end of archive", e))?;
    w.flush().map_err(|e| write_err("end of archive", e))?;
    Ok(from_source)
}

fn write_err(path: &str, e: io::Error) -> Error {
    Error::io("writing tar entry", path, e)
}

/// PAX records for one member.
type Pax = Vec<(String, Vec<u8>)>;

struct TarWriter<'a, W: Write> {
    lib: &'a Library,
    progress: &'a dyn Progress,
    source: Option<&'a dyn FileSource>,
    /// File bytes copied from `source`.
    from_source: u64,
    tar: tar::Builder<W>,
    /// Archive path of the first member written of each hardlink group.
    first_of_group: HashMap<[u8; 16], Vec<u8>>,
}

impl<W: Write> TarWriter<'_, W> {
    /// Writes the entries of a tree, whose directory's archive path is `prefix` (ending in '/').
    fn dir(&mut self, tree: &Score, prefix: &[u8]) -> Result<()> {
        for e in self.lib.tree(tree)?.entries {
            let mut path = [prefix, &e.name].concat();
            if let Content::Dir { tree, .. } = &e.content {
                path.push(b'/');
                self.entry(&path, &e)?;
                self.dir(tree, &path)?;
            } else {
                self.entry(&path, &e)?;
            }
        }
        Ok(())
    }

    /// Writes one member (preceded by its PAX header, if it needs one).
    fn entry(&mut self, path: &[u8], e: &Entry) -> Result<()> {
        let shown = String::from_utf8_lossy(path).into_owned();
        let mut pax = Pax::new();
        let mut h = Header::new_ustar();
        put_name(&mut h.as_old_mut().name, "path", path, &mut pax);
        put_meta(&mut h, &e.meta, &mut pax)?;
        let first = self.first_member(path, e);
        let (kind, size) = match (&first, &e.content) {
            (Some(first), _) => {
                put_name(&mut h.as_old_mut().linkname, "linkpath", first, &mut pax);
                (EntryType::Link, 0)
            }
            (None, Content::File { size, .. }) => (EntryType::Regular, *size),
            (None, Content::Dir { .. }) => (EntryType::Directory, 0),
            (None, Content::Symlink(t)) => {
                put_name(&mut h.as_old_mut().linkname, "linkpath", t, &mut pax);
                (EntryType::Symlink, 0)
            }
            (None, Content::CharDev(rdev)) => {
                put_dev(&mut h, *rdev);
                (EntryType::Char, 0)
            }
            (None, Content::BlockDev(rdev)) => {
                put_dev(&mut h, *rdev);
                (EntryType::Block, 0)
            }
            (None, Content::Fifo) => (EntryType::Fifo, 0),
        };
        h.set_entry_type(kind);
        put_number(size, USTAR_NUM_MAX, "size", &mut pax);
        h.set_size(size);
        let records = pax.iter().map(|(k, v)| (k.as_str(), v.as_slice()));
        self.tar
            .append_pax_extensions(records)
            .map_err(|e| write_err(&shown, e))?;
        h.set_cksum();
        match (&first, &e.content) {
            (None, Content::File { data, size }) => self.body(&h, data, *size, &shown),
            _ => self
                .tar
                .append(&h, io::empty())
                .map_err(|e| write_err(&shown, e)),
        }
    }

    /// For a later member of a hardlink group, the first member's path.
    fn first_member(&mut self, path: &[u8], e: &Entry) -> Option<Vec<u8>> {
        let tag = e.link?;
        if let Some(first) = self.first_of_group.get(&tag) {
            return Some(first.clone());
        }
        self.first_of_group.insert(tag, path.to_vec());
        None
    }

    /// Appends a regular file's header and its bytes, copied from the source or streamed from
    /// the library.
    fn body(&mut self, h: &Header, data: &FileData, size: u64, shown: &str) -> Result<()> {
        if let Some(src) = self.source {
            if let Some(file) = dir::from_source(self.lib, src, data, size, shown)? {
                let mut body = Exact {
                    r: (&file).take(size),
                    left: size,
                    progress: self.progress,
                };
                self.tar
                    .append(h, &mut body)
                    .map_err(|e| write_err(shown, e))?;
                self.from_source += size;
                return Ok(());
            }
        }
        let mut body = Body {
            lib: self.lib,
            progress: self.progress,
            blobs: file::blobs(self.lib, data)?.into_iter(),
            buf: Vec::new(),
            at: 0,
            left: size,
            error: None,
        };
        let written = self.tar.append(h, &mut body);
        match (written, body.error) {
            (Ok(()), _) => Ok(()),
            (Err(_), Some(e)) => Err(e),
            (Err(e), None) => Err(write_err(shown, e)),
        }
    }
}

/// Sets mode, owner and mtime, adding PAX records for what ustar cannot hold, and xattrs.
fn put_meta(h: &mut Header, m: &Meta, pax: &mut Pax) -> Result<()> {
    h.set_mode(m.mode);
    h.set_uid(u64::from(m.uid));
    h.set_gid(u64::from(m.gid));
    put_number(u64::from(m.uid), USTAR_ID_MAX, "uid", pax);
    put_number(u64::from(m.gid), USTAR_ID_MAX, "gid", pax);
    let sec = u64::try_from(m.mtime_sec).unwrap_or(0).min(USTAR_NUM_MAX);
    h.set_mtime(sec);
    if m.mtime_nsec != 0 || i64::try_from(sec) != Ok(m.mtime_sec) {
        pax.push((
            "mtime".into(),
            pax_time(m.mtime_sec, m.mtime_nsec).into_bytes(),
        ));
    }
    for (k, v) in &m.xattrs {
        let name = std::str::from_utf8(k).map_err(|_| {
            Error::BadInput(format!(
                "xattr name {:?} is not UTF-8 and cannot be written to a PAX tar",
                String::from_utf8_lossy(k)
            ))
        })?;
        pax.push((format!("SCHILY.xattr.{name}"), v.clone()));
    }
    Ok(())
}

/// A PAX time: seconds and a 9-digit fraction, `-` before negative times.
fn pax_time(sec: i64, nsec: u32) -> String {
    match (sec < 0, nsec) {
        (false, _) => format!("{sec}.{nsec:09}"),
        (true, 0) => format!("{sec}"),
        (true, _) => format!("-{}.{:09}", -(sec + 1), 1_000_000_000 - nsec),
    }
}

/// Adds a PAX record for a number too large for its ustar field.
fn put_number(v: u64, max: u64, key: &str, pax: &mut Pax) {
    if v > max {
        pax.push((key.into(), v.to_string().into_bytes()));
    }
}

/// Fills a 100-byte name field; a longer name is cut there and given in full by PAX.
fn put_name(field: &mut [u8; 100], key: &str, name: &[u8], pax: &mut Pax) {
    let n = name.len().min(field.len());
    field[..n].copy_from_slice(&name[..n]);
    if name.len() > field.len() {
        pax.push((key.into(), name.to_vec()));
    }
}

/// Sets a device node's major and minor numbers.
fn put_dev(h: &mut Header, rdev: u64) {
    let ustar = h.as_ustar_mut().expect("a ustar header");
    ustar.set_device_major(libc::major(rdev));
    ustar.set_device_minor(libc::minor(rdev));
}

/// A source's copy of a file, which must hold exactly the entry's size (it could shrink while
/// being read: an error then, never a short member).
struct Exact<'a, R: Read> {
    r: R,
    left: u64,
    progress: &'a dyn Progress,
}

impl<R: Read> Read for Exact<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.r.read(out)?;
        if n == 0 && self.left > 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the cached copy shrank while being read; export again",
            ));
        }
        self.left -= n as u64;
        self.progress.bytes(n as u64);
        Ok(n)
    }
}

/// A file's bytes read blob by blob from the library, checked against the entry's size.
struct Body<'a> {
    lib: &'a Library,
    progress: &'a dyn Progress,
    blobs: std::vec::IntoIter<(Score, u32)>,
    buf: Vec<u8>,
    at: usize,
    left: u64,
    /// The library error that stopped reading, if one did.
    error: Option<Error>,
}

impl Body<'_> {
    /// Loads the next blob into `buf`; false when there are no more.
    fn next_blob(&mut self) -> io::Result<bool> {
        let Some((score, _)) = self.blobs.next() else {
            return Ok(false);
        };
        let blob = self.lib.get_kind(&score, ObjectKind::Blob);
        self.buf = blob.map_err(|e| {
            let shown = io::Error::other(e.to_string());
            self.error = Some(e);
            shown
        })?;
        self.at = 0;
        let len = self.buf.len() as u64;
        self.left = self.left.checked_sub(len).ok_or_else(|| self.mismatch())?;
        self.progress.bytes(len);
        Ok(true)
    }

    fn mismatch(&mut self) -> io::Error {
        let e = Error::corrupt("file data", "stored length differs from the entry's size");
        let shown = io::Error::other(e.to_string());
        self.error = Some(e);
        shown
    }
}

impl Read for Body<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.at == self.buf.len() {
            if !self.next_blob()? {
                return if self.left == 0 {
                    Ok(0)
                } else {
                    Err(self.mismatch())
                };
            }
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_times_and_names() {
        assert_eq!(pax_time(1, 5), "1.000000005");
        assert_eq!(pax_time(-2, 750_000_000), "-1.250000000");
        assert_eq!(pax_time(-3, 0), "-3");
        let mut pax = Pax::new();
        let mut field = [0u8; 100];
        put_name(&mut field, "path", &[b'a'; 100], &mut pax);
        assert!(pax.is_empty());
        put_name(&mut field, "path", &[b'b'; 101], &mut pax);
        assert_eq!(pax, vec![("path".to_string(), vec![b'b'; 101])]);
        assert_eq!(field, [b'b'; 100]);
    }
}
