//! Importing a tar stream (plain, gzip or zstd) as a snapshot, keeping every piece of metadata.
//!
//! The stream is framed here rather than by the `tar` crate's entry iterator, whose PAX parser
//! (tar 0.4) splits records on newlines, misreading paths and xattr values that contain one,
//! and which takes a stream ending at a header boundary for a complete archive. Header fields
//! are still decoded by [`tar::Header`].
//!
//! One thread reads the stream and cuts file data into exactly the pieces
//! [`file::store_file`] would (so a file has the same score whether imported from a directory
//! or a tar); rayon hashes, compresses and stores the pieces, with at most [`IN_FLIGHT`] bytes
//! read but not yet stored.

use super::{ImportOptions, Imported};
use crate::build::{Dir, FileSlot, Node};
use crate::pack::ObjectKind;
use crate::progress::Progress;
use crate::tree::{Content, FileData, Meta};
use crate::walk::MAX_DEPTH;
use crate::{file, Error, Library, Result, Score};
use std::collections::{BTreeMap, HashSet};
use std::io::{self, Read};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use tar::{EntryType, Header};

/// A result whose error is the reason an archive is refused, to be prefixed with where.
type Why<T> = std::result::Result<T, String>;
/// A PAX record's key and value.
type PaxRecord<'a> = (&'a [u8], &'a [u8]);

/// Size of a tar block.
const BLOCK: u64 = 512;
/// The most file bytes read from the stream but not yet stored.
pub const IN_FLIGHT: u64 = 256 << 20;
/// The largest PAX or GNU long-name header body accepted.
const MAX_EXTENSION: u64 = 1 << 20;
/// The longest name of one path component.
const NAME_MAX: usize = 255;

/// Imports a tar stream (plain, gzip or zstd, detected by magic bytes) as a new snapshot.
///
/// Paths that are absolute or contain `..`, hardlinks to anything but an earlier
/// non-directory entry, and truncated or corrupt streams are errors, and then no snapshot is
/// committed. Duplicate entries are resolved as GNU tar extracts them (the last one wins) with
/// a warning; entry types the library cannot hold are skipped with a warning.
pub fn import_tar(lib: &Library, reader: impl Read, opts: &ImportOptions) -> Result<Imported> {
    let mut stream = Stream::new(decompressed(reader)?);
    let store = Store::new(lib, opts.progress);
    let mut tree = TarTree::new();
    opts.progress.phase("reading tar");
    rayon::in_place_scope(|scope| tree.read_all(&mut stream, &store, scope))?;
    super::commit(lib, &tree.root, opts, opts.parent, tree.warnings)
}

/// Wraps `reader` in a gzip or zstd decoder if it starts with that format's magic bytes.
///
/// Anything else is passed through unchanged (and read as a plain tar).
pub fn decompressed<'a>(mut reader: impl Read + 'a) -> Result<Box<dyn Read + 'a>> {
    let mut head = [0u8; 4];
    let mut n = 0;
    while n < head.len() {
        match reader.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(stream_err(e)),
        }
    }
    let r = io::Cursor::new(head).take(n as u64).chain(reader);
    Ok(match &head[..n] {
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(r)),
        [0x28, 0xb5, 0x2f, 0xfd] => {
            Box::new(zstd::stream::read::Decoder::new(r).map_err(stream_err)?)
        }
        _ => Box::new(r),
    })
}

fn stream_err(e: io::Error) -> Error {
    Error::BadInput(format!("tar stream: {e}"))
}

/// An error about one entry: `tar entry "PATH": WHAT`, on one line.
fn bad(path: &[u8], what: impl std::fmt::Display) -> Error {
    Error::BadInput(format!("tar entry {}: {what}", shown(path)))
}

fn shown(path: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(path))
}

/// The raw archive: 512-byte blocks, and the body of the member being read.
struct Stream<R> {
    r: R,
    /// Bytes consumed so far.
    pos: u64,
    /// Body bytes of the current member not yet read.
    left: u64,
    /// Padding after the current member's body.
    pad: u64,
}

/// Reading a `Stream` reads the current member's body; the end of the stream inside it is an
/// error.
impl<R: Read> Read for Stream<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        if want == 0 {
            return Ok(0);
        }
        let n = self.r.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the archive is truncated (it ends in the middle, at byte {})",
                    self.pos
                ),
            ));
        }
        self.pos += n as u64;
        self.left -= n as u64;
        Ok(n)
    }
}

impl<R: Read> Stream<R> {
    fn new(r: R) -> Self {
        Stream {
            r,
            pos: 0,
            left: 0,
            pad: 0,
        }
    }

    /// Makes the next `size` bytes (plus padding to a block) the current body.
    fn start_body(&mut self, size: u64) {
        self.left = size;
        self.pad = (BLOCK - size % BLOCK) % BLOCK;
    }

    /// Skips what is left of the current body and its padding.
    fn skip_body(&mut self) -> io::Result<()> {
        io::copy(self, &mut io::sink())?;
        self.left = std::mem::take(&mut self.pad);
        io::copy(self, &mut io::sink())?;
        Ok(())
    }

    /// Reads one raw block after the current body.
    fn block(&mut self) -> Result<[u8; BLOCK as usize]> {
        self.skip_body().map_err(stream_err)?;
        let mut b = [0u8; BLOCK as usize];
        self.start_body(BLOCK);
        self.read_exact(&mut b).map_err(stream_err)?;
        Ok(b)
    }

    /// Reads the next header; `None` at the end-of-archive marker (a zero block).
    fn header(&mut self) -> Result<Option<Header>> {
        let at = self.pos;
        let b = self.block()?;
        if b.iter().all(|&x| x == 0) {
            return Ok(None);
        }
        let h = Header::from_byte_slice(&b).clone();
        if !checksum_ok(&h) {
            return Err(Error::BadInput(format!(
                "tar stream: not a tar archive, or corrupt (bad header checksum at byte {at})"
            )));
        }
        Ok(Some(h))
    }

    /// Reads the body of an extension header (PAX, GNU long name).
    fn extension(&mut self, h: &Header) -> Result<Vec<u8>> {
        let size = h.entry_size().map_err(stream_err)?;
        if size > MAX_EXTENSION {
            return Err(Error::BadInput(format!(
                "tar stream: extension header of {size} bytes at byte {} is too large",
                self.pos
            )));
        }
        self.start_body(size);
        let mut body = Vec::with_capacity(size as usize);
        self.read_to_end(&mut body).map_err(stream_err)?;
        Ok(body)
    }

    /// Reads the rest of the underlying stream after the archive's end, so that a
    /// decompressor checks its trailer.
    fn finish(&mut self) -> Result<()> {
        io::copy(&mut self.r, &mut io::sink()).map_err(stream_err)?;
        Ok(())
    }
}

/// Whether a header's checksum field matches (as an unsigned or, historically, signed sum).
fn checksum_ok(h: &Header) -> bool {
    let Ok(want) = h.cksum() else { return false };
    let field = 148..156;
    let bytes = h.as_bytes().iter().enumerate();
    let (mut unsigned, mut signed) = (0u32, 0i32);
    for (i, &b) in bytes {
        let b = if field.contains(&i) { b' ' } else { b };
        unsigned += u32::from(b);
        signed += i32::from(b as i8);
    }
    unsigned == want || i64::from(signed) == i64::from(want)
}

/// Values from PAX and GNU extension headers that apply to the next member.
#[derive(Default)]
struct Extensions {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<(i64, u32)>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    sparse: bool,
    /// Whether any extension header was read.
    seen: bool,
}

impl Extensions {
    /// Applies the records of a PAX extended header.
    fn pax(&mut self, mut data: &[u8]) -> Why<()> {
        while !data.is_empty() && data.iter().any(|&b| b != 0) {
            let ((key, value), rest) = pax_record(data)?;
            self.record(key, value)?;
            data = rest;
        }
        Ok(())
    }

    fn record(&mut self, key: &[u8], v: &[u8]) -> Why<()> {
        let text = || std::str::from_utf8(v).map_err(|_| "value is not UTF-8".to_string());
        let number = || text()?.parse::<u64>().map_err(|e| format!("{e}"));
        let set = !v.is_empty();
        match key {
            b"path" => self.path = set.then(|| v.to_vec()),
            b"linkpath" => self.link = set.then(|| v.to_vec()),
            b"size" => self.size = set.then(number).transpose()?,
            b"uid" => self.uid = set.then(number).transpose()?,
            b"gid" => self.gid = set.then(number).transpose()?,
            b"mtime" => self.mtime = set.then(|| pax_time(text()?)).transpose()?,
            _ => self.other(key, v)?,
        }
        Ok(())
    }

    fn other(&mut self, key: &[u8], v: &[u8]) -> Why<()> {
        if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
            self.xattrs.insert(name.to_vec(), v.to_vec());
        } else if let Some(name) = key.strip_prefix(b"LIBARCHIVE.xattr.") {
            let value = base64(v).ok_or("bad base64 in LIBARCHIVE.xattr value")?;
            self.xattrs.entry(percent_decode(name)).or_insert(value);
        } else if key.starts_with(b"GNU.sparse.") {
            self.sparse = true;
        }
        Ok(())
    }
}

/// Splits the first `LEN KEY=VALUE\n` record off PAX data; LEN counts the whole record.
fn pax_record(data: &[u8]) -> Why<(PaxRecord<'_>, &[u8])> {
    let bad = || "malformed record".to_string();
    let sp = data.iter().position(|&b| b == b' ').ok_or_else(bad)?;
    let len: usize = std::str::from_utf8(&data[..sp])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    if len <= sp + 1 || len > data.len() || data[len - 1] != b'\n' {
        return Err(bad());
    }
    let rec = &data[sp + 1..len - 1];
    let eq = rec.iter().position(|&b| b == b'=').ok_or_else(bad)?;
    Ok(((&rec[..eq], &rec[eq + 1..]), &data[len..]))
}

/// Parses a PAX time, `[-]SECONDS[.FRACTION]`, into seconds and nanoseconds.
fn pax_time(s: &str) -> Why<(i64, u32)> {
    let bad = || format!("bad time {s:?}");
    let (neg, s) = s.strip_prefix('-').map_or((false, s), |r| (true, r));
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let sec: i64 = int.parse().map_err(|_| bad())?;
    let nsec: u32 = format!("{:0<9}", &frac[..frac.len().min(9)])
        .parse()
        .map_err(|_| bad())?;
    Ok(match (neg, nsec) {
        (false, _) => (sec, nsec),
        (true, 0) => (-sec, 0),
        (true, _) => (-sec - 1, 1_000_000_000 - nsec),
    })
}

/// Decodes standard base64 (padding optional); `None` if it is not base64.
fn base64(v: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(v.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in v.strip_suffix(b"==").or(v.strip_suffix(b"=")).unwrap_or(v) {
        let d = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6 | u32::from(d)) & 0xffff;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// Decodes `%XX` escapes (libarchive's encoding of xattr names in PAX keys).
fn percent_decode(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        let hex = v
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit));
        match (
            v[i],
            hex.and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()),
        ) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// One archive member with its extension headers applied; its body is the stream's current
/// body.
struct Member {
    kind: EntryType,
    path: Vec<u8>,
    link: Vec<u8>,
    size: u64,
    meta: Meta,
    rdev: u64,
    sparse: bool,
}

/// Reads the next member (after any extension headers); `None` at the end of the archive.
fn next_member<R: Read>(s: &mut Stream<R>) -> Result<Option<Member>> {
    let mut ext = Extensions::default();
    loop {
        let Some(h) = s.header()? else {
            if ext.seen {
                return Err(Error::BadInput(
                    "tar stream: extension header at the end of the archive".into(),
                ));
            }
            return Ok(None);
        };
        let pos = s.pos;
        let kind = h.entry_type();
        ext.seen |=
            kind.is_pax_local_extensions() || kind.is_gnu_longname() || kind.is_gnu_longlink();
        match kind {
            EntryType::XHeader => ext.pax(&s.extension(&h)?).map_err(|why| {
                Error::BadInput(format!("tar stream: PAX header before byte {pos}: {why}"))
            })?,
            EntryType::XGlobalHeader => {
                s.extension(&h)?;
            }
            EntryType::GNULongName => ext.path = Some(until_nul(s.extension(&h)?)),
            EntryType::GNULongLink => ext.link = Some(until_nul(s.extension(&h)?)),
            _ => return member(s, &h, ext).map(Some),
        }
    }
}

fn until_nul(mut v: Vec<u8>) -> Vec<u8> {
    if let Some(i) = v.iter().position(|&b| b == 0) {
        v.truncate(i);
    }
    v
}

/// Builds a member from its header and extensions and makes its body current.
fn member<R: Read>(s: &mut Stream<R>, h: &Header, mut ext: Extensions) -> Result<Member> {
    let path = ext
        .path
        .take()
        .unwrap_or_else(|| h.path_bytes().into_owned());
    let meta = member_meta(h, &mut ext, &path)?;
    let kind = h.entry_type();
    let rdev = match kind {
        EntryType::Char | EntryType::Block => device(h).map_err(|e| field(&path, "device", e))?,
        _ => 0,
    };
    if kind == EntryType::GNUSparse {
        skip_sparse_map(s, h)?;
    }
    let size = ext.size.map_or_else(|| h.entry_size(), Ok);
    s.start_body(size.map_err(|e| field(&path, "size", e))?);
    let link = ext.link.take();
    Ok(Member {
        kind,
        link: link.unwrap_or_else(|| h.link_name_bytes().unwrap_or_default().into_owned()),
        path,
        size: s.left,
        meta,
        rdev,
        sparse: ext.sparse || kind == EntryType::GNUSparse,
    })
}

fn field(path: &[u8], what: &str, e: io::Error) -> Error {
    bad(path, format!("bad {what} field: {e}"))
}

/// A member's metadata: header fields, overridden by PAX records.
fn member_meta(h: &Header, ext: &mut Extensions, path: &[u8]) -> Result<Meta> {
    let id = |what, pax: Option<u64>, header: io::Result<u64>| {
        let v = pax.map_or(header, Ok).map_err(|e| field(path, what, e))?;
        u32::try_from(v).map_err(|_| bad(path, format!("{what} {v} out of range")))
    };
    let (mtime_sec, mtime_nsec) = match ext.mtime {
        Some(t) => t,
        None => {
            let t = h.mtime().map_err(|e| field(path, "mtime", e))?;
            let t = i64::try_from(t).map_err(|_| bad(path, "mtime out of range"))?;
            (t, 0)
        }
    };
    Ok(Meta {
        mode: h.mode().map_err(|e| field(path, "mode", e))? & 0o7777,
        uid: id("uid", ext.uid, h.uid())?,
        gid: id("gid", ext.gid, h.gid())?,
        mtime_sec,
        mtime_nsec,
        xattrs: checked_xattrs(path, std::mem::take(&mut ext.xattrs))?,
    })
}

fn device(h: &Header) -> io::Result<u64> {
    let major = h.device_major()?.unwrap_or(0);
    let minor = h.device_minor()?.unwrap_or(0);
    Ok(libc::makedev(major, minor))
}

fn checked_xattrs(path: &[u8], x: BTreeMap<Vec<u8>, Vec<u8>>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    if let Some(k) = x.keys().find(|k| k.is_empty() || k.contains(&0)) {
        return Err(bad(path, format!("invalid xattr name {}", shown(k))));
    }
    Ok(x.into_iter().collect())
}

/// Skips the extension blocks of an old GNU sparse member's map.
fn skip_sparse_map<R: Read>(s: &mut Stream<R>, h: &Header) -> Result<()> {
    let mut more = h.as_gnu().is_some_and(|g| g.is_extended());
    while more {
        more = s.block()?[504] != 0;
    }
    Ok(())
}

/// Splits an entry path into components: `.` and empty components dropped, and anything
/// that could leave the archive root refused (the reason is returned).
fn split_path(raw: &[u8]) -> Why<Vec<Vec<u8>>> {
    if raw.first() == Some(&b'/') {
        return Err("absolute path (entries must be relative to the archive root)".into());
    }
    if raw.contains(&0) {
        return Err("path contains a NUL byte".into());
    }
    let comps: Vec<Vec<u8>> = raw
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(<[u8]>::to_vec)
        .collect();
    if comps.iter().any(|c| c == b"..") {
        return Err("path leaves the archive root (it has a '..' component)".into());
    }
    if let Some(c) = comps.iter().find(|c| c.len() > NAME_MAX) {
        return Err(format!(
            "a path component is {} bytes long (the limit is {NAME_MAX})",
            c.len()
        ));
    }
    if comps.len() > MAX_DEPTH {
        return Err(format!("path is nested deeper than {MAX_DEPTH} levels"));
    }
    Ok(comps)
}

/// A byte budget: how much file data may be read but not yet stored.
struct Budget {
    used: Mutex<u64>,
    freed: Condvar,
}

impl Budget {
    /// Takes `n` bytes, waiting while other pieces hold too much (one piece always fits).
    fn acquire(&self, n: u64) {
        let mut used = self.used.lock().expect("budget lock");
        while *used > 0 && *used + n > IN_FLIGHT {
            if rayon::current_thread_index().is_some() {
                // On a pool thread (a caller inside rayon): help run the jobs that free bytes.
                drop(used);
                if rayon::yield_now() != Some(rayon::Yield::Executed) {
                    std::thread::yield_now();
                }
                used = self.used.lock().expect("budget lock");
            } else {
                used = self.freed.wait(used).expect("budget lock");
            }
        }
        *used += n;
    }

    fn release(&self, n: u64) {
        *self.used.lock().expect("budget lock") -= n;
        self.freed.notify_all();
    }
}

/// What storing jobs share.
struct Store<'a> {
    lib: &'a Library,
    progress: &'a dyn Progress,
    budget: Budget,
}

/// A file whose pieces (a whole small file, or FastCDC chunks) are being stored; whoever
/// finishes last fills the slot.
struct Pieces {
    slot: FileSlot,
    stored: Mutex<Vec<Option<(Score, u32)>>>,
    error: Mutex<Option<Error>>,
    /// Unfinished jobs, plus one while the reader is still adding pieces.
    pending: AtomicUsize,
}

impl Pieces {
    fn new() -> Arc<Pieces> {
        Arc::new(Pieces {
            slot: Arc::new(OnceLock::new()),
            stored: Mutex::default(),
            error: Mutex::default(),
            pending: AtomicUsize::new(1),
        })
    }

    /// Registers a new piece; returns its index.
    fn add(&self) -> usize {
        self.pending.fetch_add(1, Ordering::AcqRel);
        let mut stored = self.stored.lock().expect("pieces lock");
        stored.push(None);
        stored.len() - 1
    }

    fn stored(&self, i: usize, result: Result<Score>, len: u32) {
        match result {
            Ok(s) => self.stored.lock().expect("pieces lock")[i] = Some((s, len)),
            Err(e) => {
                self.error.lock().expect("pieces lock").get_or_insert(e);
            }
        }
    }

    /// Drops one hold; the last one stores the chunk list if needed and fills the slot.
    fn release(&self, lib: &Library) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            let _ = self.slot.set(self.finish(lib));
        }
    }

    fn finish(&self, lib: &Library) -> Result<(u64, FileData)> {
        if let Some(e) = self.error.lock().expect("pieces lock").take() {
            return Err(e);
        }
        let stored = std::mem::take(&mut *self.stored.lock().expect("pieces lock"));
        let chunks: Vec<(Score, u32)> = stored.into_iter().map(|c| c.expect("stored")).collect();
        let total = chunks.iter().map(|c| u64::from(c.1)).sum();
        Ok(match chunks.as_slice() {
            [] => (0, FileData::Empty),
            [(s, _)] => (total, FileData::Blob(*s)),
            _ => {
                let list = lib.put(ObjectKind::ChunkList, &file::encode_chunks(&chunks))?;
                (total, FileData::Chunks(list))
            }
        })
    }
}

impl<'a> Store<'a> {
    fn new(lib: &'a Library, progress: &'a dyn Progress) -> Self {
        Store {
            lib,
            progress,
            budget: Budget {
                used: Mutex::new(0),
                freed: Condvar::new(),
            },
        }
    }

    /// Reads a file's `size` bytes from `body`, cut as [`file::store_file`] cuts them, and
    /// queues their storing; returns the slot the result will be in.
    fn file<'s>(
        &'s self,
        scope: &rayon::Scope<'s>,
        body: &mut impl Read,
        size: u64,
    ) -> io::Result<FileSlot> {
        let cfg = self.lib.config();
        let pieces = Pieces::new();
        if size <= u64::from(cfg.chunk_threshold) {
            let mut buf = Vec::with_capacity(size as usize);
            body.read_to_end(&mut buf)?;
            self.piece(scope, &pieces, buf);
        } else {
            let cdc =
                fastcdc::v2020::StreamCDC::new(body, cfg.chunk_min, cfg.chunk_avg, cfg.chunk_max);
            for chunk in cdc {
                let chunk = chunk.map_err(|e| match e {
                    fastcdc::v2020::Error::IoError(e) => e,
                    other => io::Error::other(other.to_string()),
                })?;
                self.piece(scope, &pieces, chunk.data);
            }
        }
        let slot = pieces.slot.clone();
        pieces.release(self.lib);
        Ok(slot)
    }

    /// Stores one piece on the pool once the budget allows.
    fn piece<'s>(&'s self, scope: &rayon::Scope<'s>, pieces: &Arc<Pieces>, data: Vec<u8>) {
        let len = data.len() as u64;
        self.budget.acquire(len);
        let i = pieces.add();
        let pieces = pieces.clone();
        scope.spawn(move |_| {
            let result = self.lib.put(ObjectKind::Blob, &data);
            drop(data);
            self.budget.release(len);
            self.progress.bytes(len);
            pieces.stored(i, result, len as u32);
            pieces.release(self.lib);
        });
    }
}

/// The tree being built from the archive, with what is needed to resolve hardlinks and
/// duplicates.
struct TarTree {
    root: Dir,
    /// Directories that had an entry of their own (not just implied by their children).
    explicit: HashSet<Vec<u8>>,
    groups: u64,
    warnings: Vec<String>,
}

/// A directory implied by a path below it, or an archive without a root entry.
fn implicit_dir() -> Dir {
    Dir::new(Meta {
        mode: 0o755,
        ..Meta::default()
    })
}

impl TarTree {
    fn new() -> TarTree {
        TarTree {
            root: implicit_dir(),
            explicit: HashSet::new(),
            groups: 0,
            warnings: Vec::new(),
        }
    }

    fn read_all<'s, R: Read>(
        &mut self,
        s: &mut Stream<R>,
        store: &'s Store<'s>,
        scope: &rayon::Scope<'s>,
    ) -> Result<()> {
        while let Some(m) = next_member(s)? {
            let comps = split_path(&m.path).map_err(|why| bad(&m.path, why))?;
            if let Some(node) = self.node(&m, s, store, scope)? {
                self.place(&m.path, &comps, node)?;
            }
        }
        s.finish()
    }

    fn warn(&mut self, line: String) {
        tracing::info!("{line}");
        self.warnings.push(line);
    }

    /// Turns a member into a node; `None` for members that are skipped.
    fn node<'s, R: Read>(
        &mut self,
        m: &Member,
        s: &mut Stream<R>,
        store: &'s Store<'s>,
        scope: &rayon::Scope<'s>,
    ) -> Result<Option<Node>> {
        let leaf = |content| Some(Node::leaf(m.meta.clone(), content));
        Ok(match m.kind {
            EntryType::Directory => Some(Node::Dir(Dir::new(m.meta.clone()))),
            EntryType::Regular if m.path.ends_with(b"/") => {
                Some(Node::Dir(Dir::new(m.meta.clone())))
            }
            EntryType::Regular | EntryType::Continuous if !m.sparse => {
                self.file(m, s, store, scope)?
            }
            EntryType::Symlink => leaf(Content::Symlink(m.link.clone())),
            EntryType::Link => Some(self.hardlink(m)?),
            EntryType::Char => leaf(Content::CharDev(m.rdev)),
            EntryType::Block => leaf(Content::BlockDev(m.rdev)),
            EntryType::Fifo => leaf(Content::Fifo),
            kind => {
                let what = if m.sparse {
                    "sparse file".to_string()
                } else {
                    type_name(kind)
                };
                self.warn(format!(
                    "tar entry {}: skipped ({what} is not supported)",
                    shown(&m.path)
                ));
                None
            }
        })
    }

    fn file<'s, R: Read>(
        &mut self,
        m: &Member,
        s: &mut Stream<R>,
        store: &'s Store<'s>,
        scope: &rayon::Scope<'s>,
    ) -> Result<Option<Node>> {
        let meta = m.meta.clone();
        if m.size == 0 {
            let content = Content::File {
                size: 0,
                data: FileData::Empty,
            };
            return Ok(Some(Node::leaf(meta, content)));
        }
        let slot = store.file(scope, s, m.size).map_err(|e| bad(&m.path, e))?;
        Ok(Some(Node::File {
            meta,
            slot,
            group: None,
        }))
    }

    /// A new name for an earlier non-directory member, in its hardlink group.
    fn hardlink(&mut self, m: &Member) -> Result<Node> {
        let target = split_path(&m.link).map_err(|why| {
            bad(
                &m.path,
                format!("hard link target {}: {why}", shown(&m.link)),
            )
        })?;
        let next = self.groups;
        let missing = || {
            let t = shown(&m.link);
            bad(
                &m.path,
                format!("hard link target {t} is not an earlier non-directory entry"),
            )
        };
        let (group, node) = match find(&mut self.root, &target).ok_or_else(missing)? {
            Node::File { meta, slot, group } => {
                let g = *group.get_or_insert(next);
                (
                    g,
                    Node::File {
                        meta: meta.clone(),
                        slot: slot.clone(),
                        group: Some(g),
                    },
                )
            }
            Node::Leaf { entry, group } => {
                let g = *group.get_or_insert(next);
                (
                    g,
                    Node::Leaf {
                        entry: entry.clone(),
                        group: Some(g),
                    },
                )
            }
            Node::Dir(_) | Node::Stored(_) => return Err(missing()),
        };
        if group == next {
            self.groups += 1;
        }
        Ok(node)
    }

    /// Puts a node at its path, creating missing parents and resolving duplicates.
    fn place(&mut self, path: &[u8], comps: &[Vec<u8>], node: Node) -> Result<()> {
        let Some((name, dirs)) = comps.split_last() else {
            return match node {
                Node::Dir(d) => {
                    self.root.meta = d.meta;
                    Ok(())
                }
                _ => Err(bad(path, "the archive root must be a directory")),
            };
        };
        let mut lines = Vec::new();
        let dir = parent(&mut self.root, dirs, path, &mut lines);
        let key = comps.join(&b'/');
        let first_dir = matches!(node, Node::Dir(_)) && self.explicit.insert(key);
        match (dir.children.get_mut(name), node) {
            (None, node) => {
                dir.children.insert(name.clone(), node);
            }
            (Some(Node::Dir(old)), Node::Dir(new)) => {
                old.meta = new.meta;
                if !first_dir {
                    lines.push(duplicate(path));
                }
            }
            (Some(old), node) => {
                lines.push(match old {
                    Node::Dir(d) if !d.children.is_empty() && !matches!(node, Node::Dir(_)) => {
                        format!(
                            "tar entry {}: replaces a non-empty directory (the last entry wins)",
                            shown(path)
                        )
                    }
                    _ => duplicate(path),
                });
                *old = node;
            }
        }
        lines.into_iter().for_each(|l| self.warn(l));
        Ok(())
    }
}

fn duplicate(path: &[u8]) -> String {
    format!(
        "tar entry {}: appears more than once (the last one wins)",
        shown(path)
    )
}

/// The directory at `dirs` below `root`, created as needed; non-directories in the way are
/// replaced (with a warning line).
fn parent<'d>(
    root: &'d mut Dir,
    dirs: &[Vec<u8>],
    path: &[u8],
    lines: &mut Vec<String>,
) -> &'d mut Dir {
    let mut dir = root;
    for c in dirs {
        let node = dir
            .children
            .entry(c.clone())
            .or_insert_with(|| Node::Dir(implicit_dir()));
        if !matches!(node, Node::Dir(_)) {
            let what = format!(
                "replaces the non-directory {} on its path with a directory",
                shown(c)
            );
            lines.push(format!("tar entry {}: {what}", shown(path)));
            *node = Node::Dir(implicit_dir());
        }
        let Node::Dir(d) = node else {
            unreachable!("just made a directory")
        };
        dir = d;
    }
    dir
}

/// The node at `comps` below `root`, if every parent is a directory.
fn find<'d>(root: &'d mut Dir, comps: &[Vec<u8>]) -> Option<&'d mut Node> {
    let (last, dirs) = comps.split_last()?;
    let mut dir = root;
    for c in dirs {
        match dir.children.get_mut(c)? {
            Node::Dir(d) => dir = d,
            _ => return None,
        }
    }
    dir.children.get_mut(last)
}

fn type_name(kind: EntryType) -> String {
    format!("entry type {:?}", kind.as_byte() as char)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_are_length_delimited() {
        let data = b"18 path=a\nb\0c.txt\n12 uid=3000\n";
        let ((k, v), rest) = pax_record(data).unwrap();
        assert_eq!((k, v), (&b"path"[..], &b"a\nb\0c.txt"[..]));
        assert_eq!(pax_record(rest).unwrap().0, (&b"uid"[..], &b"3000"[..]));
        assert!(pax_record(b"99 path=x\n").is_err());
        assert!(pax_record(b"9 pathx\n").is_err());
    }

    #[test]
    fn pax_times() {
        assert_eq!(pax_time("10"), Ok((10, 0)));
        assert_eq!(pax_time("1.5"), Ok((1, 500_000_000)));
        assert_eq!(pax_time("1.1234567891"), Ok((1, 123_456_789)));
        assert_eq!(pax_time("-1.25"), Ok((-2, 750_000_000)));
        assert_eq!(pax_time("-3"), Ok((-3, 0)));
        assert!(pax_time("x").is_err() && pax_time(".5").is_err() && pax_time("1.-5").is_err());
    }

    #[test]
    fn libarchive_encodings() {
        assert_eq!(base64(b"AQIKAw=="), Some(vec![1, 2, 10, 3]));
        assert_eq!(base64(b"aGVsbG8"), Some(b"hello".to_vec()));
        assert_eq!(base64(b"!!"), None);
        assert_eq!(percent_decode(b"user.a%3Db%zz%4"), b"user.a=b%zz%4");
    }

    #[test]
    fn paths_are_normalized_or_refused() {
        let ok = |p: &[u8]| split_path(p).unwrap();
        assert_eq!(
            ok(b"./a//b/./c/"),
            vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
        assert!(ok(b"./").is_empty());
        assert!(split_path(b"a/../b").is_err());
        assert!(split_path(b"/a").is_err());
        assert!(split_path(&[b'x'; 256]).is_err());
        assert!(split_path(&b"a/".repeat(MAX_DEPTH + 1)).is_err());
    }

    #[test]
    fn budget_lets_one_piece_through_and_wakes_waiters() {
        let budget = Budget {
            used: Mutex::new(0),
            freed: Condvar::new(),
        };
        budget.acquire(IN_FLIGHT + 1);
        std::thread::scope(|s| {
            let waiter = s.spawn(|| budget.acquire(1));
            std::thread::sleep(std::time::Duration::from_millis(50));
            assert!(!waiter.is_finished());
            budget.release(IN_FLIGHT + 1);
            waiter.join().unwrap();
        });
        assert_eq!(*budget.used.lock().unwrap(), 1);
    }
}
