//! Tar framing: blocks, headers, PAX and GNU extensions, and the members they describe.

use super::{bad, shown, stream_err, PaxRecord, Why, BLOCK, MAX_EXTENSION, NAME_MAX};
use crate::tree::Meta;
use crate::walk::MAX_DEPTH;
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::io::{self, Read};
use tar::{EntryType, Header};

/// The raw archive: 512-byte blocks, and the body of the member being read.
pub(super) struct Stream<R> {
    pub(super) r: R,
    /// Bytes consumed so far.
    pub(super) pos: u64,
    /// Body bytes of the current member not yet read.
    pub(super) left: u64,
    /// Padding after the current member's body.
    pub(super) pad: u64,
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
    pub(super) fn new(r: R) -> Self {
        Stream {
            r,
            pos: 0,
            left: 0,
            pad: 0,
        }
    }

    /// Makes the next `size` bytes (plus padding to a block) the current body.
    pub(super) fn start_body(&mut self, size: u64) {
        self.left = size;
        self.pad = (BLOCK - size % BLOCK) % BLOCK;
    }

    /// Skips what is left of the current body and its padding.
    pub(super) fn skip_body(&mut self) -> io::Result<()> {
        io::copy(self, &mut io::sink())?;
        self.left = std::mem::take(&mut self.pad);
        io::copy(self, &mut io::sink())?;
        Ok(())
    }

    /// Reads one raw block after the current body.
    pub(super) fn block(&mut self) -> Result<[u8; BLOCK as usize]> {
        self.skip_body().map_err(stream_err)?;
        let mut b = [0u8; BLOCK as usize];
        self.start_body(BLOCK);
        self.read_exact(&mut b).map_err(stream_err)?;
        Ok(b)
    }

    /// Reads the next header; `None` at the end-of-archive marker (a zero block).
    pub(super) fn header(&mut self) -> Result<Option<Header>> {
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
    pub(super) fn extension(&mut self, h: &Header) -> Result<Vec<u8>> {
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
    pub(super) fn finish(&mut self) -> Result<()> {
        io::copy(&mut self.r, &mut io::sink()).map_err(stream_err)?;
        Ok(())
    }
}

/// Whether a header's checksum field matches (as an unsigned or, historically, signed sum).
pub(super) fn checksum_ok(h: &Header) -> bool {
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
pub(super) struct Extensions {
    pub(super) path: Option<Vec<u8>>,
    pub(super) link: Option<Vec<u8>>,
    pub(super) size: Option<u64>,
    pub(super) uid: Option<u64>,
    pub(super) gid: Option<u64>,
    pub(super) mtime: Option<(i64, u32)>,
    pub(super) xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    pub(super) sparse: bool,
    /// Whether any extension header was read.
    pub(super) seen: bool,
}

impl Extensions {
    /// Applies the records of a PAX extended header.
    pub(super) fn pax(&mut self, mut data: &[u8]) -> Why<()> {
        while !data.is_empty() && data.iter().any(|&b| b != 0) {
            let ((key, value), rest) = pax_record(data)?;
            self.record(key, value)?;
            data = rest;
        }
        Ok(())
    }

    pub(super) fn record(&mut self, key: &[u8], v: &[u8]) -> Why<()> {
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

    pub(super) fn other(&mut self, key: &[u8], v: &[u8]) -> Why<()> {
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
pub(super) fn pax_record(data: &[u8]) -> Why<(PaxRecord<'_>, &[u8])> {
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
pub(super) fn pax_time(s: &str) -> Why<(i64, u32)> {
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

/// Standard base64 with padding optional, as libarchive writes xattr values.
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// Decodes standard base64 (padding optional); `None` if it is not base64.
pub(super) fn base64(v: &[u8]) -> Option<Vec<u8>> {
    base64::Engine::decode(&BASE64, v).ok()
}

/// Decodes `%XX` escapes (libarchive's encoding of xattr names in PAX keys); others stay.
pub(super) fn percent_decode(v: &[u8]) -> Vec<u8> {
    percent_encoding::percent_decode(v).collect()
}

/// One archive member with its extension headers applied; its body is the stream's current
/// body.
pub(super) struct Member {
    pub(super) kind: EntryType,
    pub(super) path: Vec<u8>,
    pub(super) link: Vec<u8>,
    pub(super) size: u64,
    pub(super) meta: Meta,
    pub(super) rdev: u64,
    pub(super) sparse: bool,
}

/// Reads the next member (after any extension headers); `None` at the end of the archive.
pub(super) fn next_member<R: Read>(s: &mut Stream<R>) -> Result<Option<Member>> {
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

pub(super) fn until_nul(mut v: Vec<u8>) -> Vec<u8> {
    if let Some(i) = v.iter().position(|&b| b == 0) {
        v.truncate(i);
    }
    v
}

/// Builds a member from its header and extensions and makes its body current.
pub(super) fn member<R: Read>(
    s: &mut Stream<R>,
    h: &Header,
    mut ext: Extensions,
) -> Result<Member> {
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

pub(super) fn field(path: &[u8], what: &str, e: io::Error) -> Error {
    bad(path, format!("bad {what} field: {e}"))
}

/// A member's metadata: header fields, overridden by PAX records.
pub(super) fn member_meta(h: &Header, ext: &mut Extensions, path: &[u8]) -> Result<Meta> {
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

pub(super) fn device(h: &Header) -> io::Result<u64> {
    let major = h.device_major()?.unwrap_or(0);
    let minor = h.device_minor()?.unwrap_or(0);
    Ok(libc::makedev(major, minor))
}

pub(super) fn checked_xattrs(
    path: &[u8],
    x: BTreeMap<Vec<u8>, Vec<u8>>,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    if let Some(k) = x.keys().find(|k| k.is_empty() || k.contains(&0)) {
        return Err(bad(path, format!("invalid xattr name {}", shown(k))));
    }
    Ok(x.into_iter().collect())
}

/// Skips the extension blocks of an old GNU sparse member's map.
pub(super) fn skip_sparse_map<R: Read>(s: &mut Stream<R>, h: &Header) -> Result<()> {
    let mut more = h.as_gnu().is_some_and(|g| g.is_extended());
    while more {
        more = s.block()?[504] != 0;
    }
    Ok(())
}

/// Splits an entry path into components: `.` and empty components dropped, and anything
/// that could leave the archive root refused (the reason is returned).
pub(super) fn split_path(raw: &[u8]) -> Why<Vec<Vec<u8>>> {
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
}
