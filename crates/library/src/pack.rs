//! Pack files: many objects in one backend file, with a trailer index that can be rebuilt by
//! scanning the frames, because every frame carries its own header.
//!
//! Objects are stored in *frames*: a frame's stored bytes decode (zstd, or raw) to the plain
//! bytes of its objects, concatenated. Large objects get a frame of their own; small ones are
//! gathered into shared frames so they compress together (see `Frame`). Version 2, written:
//!
//! ```text
//! pack    = "SGPACK02" frame* trailer
//! frame   = encoding:u8 count:varint (score:[32] kind:u8 plain_len:varint)*
//!           stored_len:varint stored:[stored_len]
//! trailer = (score:[32] kind:u8 encoding:u8 offset:u32le stored_len:u32le frame_len:u32le
//!            start:u32le plain_len:u32le)* count:u32le "SGPKEND2"
//! ```
//! `offset` and `stored_len` locate the frame's stored bytes, `frame_len` is the length of its
//! plain bytes, `start` where the object's bytes begin in them. Version 1 (read, never written)
//! has one object per record and no `frame_len`/`start`:
//!
//! ```text
//! pack    = "SGPACK01" record* trailer
//! record  = kind:u8 encoding:u8 score:[32] plain_len:u32le stored_len:u32le stored:[stored_len]
//! trailer = (score:[32] kind:u8 encoding:u8 offset:u32le stored_len:u32le plain_len:u32le)*
//!           count:u32le "SGPKEND1"
//! ```
//! A pack's name is the BLAKE3 score of its whole contents, so a pack can be checked as a unit.

use crate::codec::{push_varint, Reader};
use crate::{Error, Result, Score};

/// A pack format version, told by the pack's first and last eight bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackVersion {
    /// One object per record (read only).
    V1,
    /// Frames of one or more objects (written).
    V2,
}

impl PackVersion {
    const ALL: [PackVersion; 2] = [PackVersion::V1, PackVersion::V2];

    fn magic(self) -> &'static [u8; 8] {
        match self {
            PackVersion::V1 => b"SGPACK01",
            PackVersion::V2 => b"SGPACK02",
        }
    }

    fn end_magic(self) -> &'static [u8; 8] {
        match self {
            PackVersion::V1 => b"SGPKEND1",
            PackVersion::V2 => b"SGPKEND2",
        }
    }

    fn trailer_entry(self) -> usize {
        match self {
            PackVersion::V1 => 32 + 1 + 1 + 4 + 4 + 4,
            PackVersion::V2 => 32 + 1 + 1 + 4 * 5,
        }
    }
}

/// Length of the pack magic.
const MAGIC_LEN: usize = 8;
/// A version-1 record header: kind, encoding, score, plain and stored lengths.
const V1_RECORD_HEADER: usize = 1 + 1 + 32 + 4 + 4;
/// The smallest per-object share of a version-2 frame header (score, kind, a 1-byte length).
const V2_OBJECT_HEADER: usize = 32 + 1 + 1;

/// The kind of a stored object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ObjectKind {
    /// File data: a small file whole, or one chunk of a large file.
    Blob = 1,
    /// The ordered list of a large file's chunks.
    ChunkList = 2,
    /// A directory tree.
    Tree = 3,
    /// A snapshot.
    Snapshot = 4,
}

impl ObjectKind {
    fn from_u8(b: u8) -> Option<ObjectKind> {
        Some(match b {
            1 => ObjectKind::Blob,
            2 => ObjectKind::ChunkList,
            3 => ObjectKind::Tree,
            4 => ObjectKind::Snapshot,
            _ => return None,
        })
    }
}

/// How a frame's bytes are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Encoding {
    /// Stored as is (compression did not pay).
    Raw = 0,
    /// zstd-compressed.
    Zstd = 1,
}

/// Where one object lives inside a pack, as listed in the trailer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PackEntry {
    /// The object's score.
    pub score: Score,
    /// The object's kind.
    pub kind: ObjectKind,
    /// How the frame's stored bytes are encoded.
    pub encoding: Encoding,
    /// Offset of the frame's stored bytes (after its header) in the pack.
    pub offset: u32,
    /// Length of the frame's stored bytes.
    pub stored_len: u32,
    /// Length of the frame's plain bytes (all its objects).
    pub frame_len: u32,
    /// Where the object's bytes start in the frame's plain bytes.
    pub start: u32,
    /// Length of the object's plain bytes.
    pub plain_len: u32,
}

impl PackEntry {
    /// Whether the object is its frame's only content (so its stored bytes are its own).
    pub fn whole_frame(&self) -> bool {
        self.start == 0 && self.plain_len == self.frame_len
    }
}

/// Small objects gathered to be compressed together as one frame.
#[derive(Default)]
pub struct Frame {
    plain: Vec<u8>,
    objects: Vec<(Score, ObjectKind, u32)>,
}

impl Frame {
    /// Appends an object's plain bytes.
    pub fn push(&mut self, score: Score, kind: ObjectKind, plain: &[u8]) {
        self.plain.extend_from_slice(plain);
        self.objects.push((score, kind, plain.len() as u32));
    }

    /// Plain bytes gathered so far.
    pub fn len(&self) -> usize {
        self.plain.len()
    }

    /// Whether no object was pushed.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Compresses the gathered objects as one frame.
    pub fn encode(self, level: i32) -> EncodedFrame {
        let (encoding, stored) = encode_object(&self.plain, level);
        EncodedFrame {
            encoding,
            stored,
            objects: self.objects,
        }
    }
}

/// A frame ready to be appended to a pack: its encoding, stored bytes and objects in order.
pub struct EncodedFrame {
    encoding: Encoding,
    stored: Vec<u8>,
    objects: Vec<(Score, ObjectKind, u32)>,
}

impl EncodedFrame {
    /// A frame holding one object, compressed on its own.
    pub fn single(score: Score, kind: ObjectKind, plain: &[u8], level: i32) -> EncodedFrame {
        let (encoding, stored) = encode_object(plain, level);
        EncodedFrame {
            encoding,
            stored,
            objects: vec![(score, kind, plain.len() as u32)],
        }
    }

    /// A frame holding exactly the object `e` describes, with its stored bytes copied as they
    /// are (`e` must be [`PackEntry::whole_frame`]).
    pub fn copied(e: &PackEntry, stored: &[u8]) -> EncodedFrame {
        debug_assert!(e.whole_frame());
        EncodedFrame {
            encoding: e.encoding,
            stored: stored.to_vec(),
            objects: vec![(e.score, e.kind, e.plain_len)],
        }
    }
}

/// Accumulates frames for one (version 2) pack in memory.
pub struct PackBuilder {
    buf: Vec<u8>,
    entries: Vec<PackEntry>,
}

impl Default for PackBuilder {
    fn default() -> Self {
        PackBuilder {
            buf: PackVersion::V2.magic().to_vec(),
            entries: Vec::new(),
        }
    }
}

impl PackBuilder {
    /// Appends a frame.
    pub fn add(&mut self, f: &EncodedFrame) {
        self.buf.push(f.encoding as u8);
        push_varint(&mut self.buf, f.objects.len() as u64);
        for (score, kind, len) in &f.objects {
            self.buf.extend_from_slice(score.as_bytes());
            self.buf.push(*kind as u8);
            push_varint(&mut self.buf, u64::from(*len));
        }
        push_varint(&mut self.buf, f.stored.len() as u64);
        let offset = self.buf.len() as u32;
        self.buf.extend_from_slice(&f.stored);
        let frame_len = f.objects.iter().map(|o| o.2).sum();
        let mut start = 0;
        for &(score, kind, plain_len) in &f.objects {
            self.entries.push(PackEntry {
                score,
                kind,
                encoding: f.encoding,
                offset,
                stored_len: f.stored.len() as u32,
                frame_len,
                start,
                plain_len,
            });
            start += plain_len;
        }
    }

    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether no object was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Appends the trailer; returns the pack's name (its score), bytes and entries.
    pub fn finish(mut self) -> (Score, Vec<u8>, Vec<PackEntry>) {
        self.buf
            .reserve(self.entries.len() * PackVersion::V2.trailer_entry() + TAIL_LEN);
        for e in &self.entries {
            put_v2_entry(&mut self.buf, e);
        }
        self.buf
            .extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(PackVersion::V2.end_magic());
        (Score::of_large(&self.buf), self.buf, self.entries)
    }
}

/// Appends `e` as a version-2 trailer entry (54 bytes: score, kind, encoding, then offset,
/// stored, frame, start and plain lengths as u32le); the pack index file uses it too.
pub(crate) fn put_v2_entry(out: &mut Vec<u8>, e: &PackEntry) {
    out.extend_from_slice(e.score.as_bytes());
    out.push(e.kind as u8);
    out.push(e.encoding as u8);
    for v in [e.offset, e.stored_len, e.frame_len, e.start, e.plain_len] {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().expect("4 bytes"))
}

/// Length of the fixed tail (count + end magic) that locates the trailer.
pub const TAIL_LEN: usize = 12;

/// Where a pack's trailer is, and the pack's version.
#[derive(Clone, Copy, Debug)]
pub struct TrailerSpan {
    /// Offset of the first trailer entry.
    pub start: u64,
    /// Length of the entries (without the tail).
    pub len: usize,
    /// The pack's format version.
    pub version: PackVersion,
}

/// Given a pack's size and its last [`TAIL_LEN`] bytes, where its trailer is.
pub fn trailer_span(pack_len: u64, tail: &[u8]) -> Option<TrailerSpan> {
    if tail.len() != TAIL_LEN {
        return None;
    }
    let version = PackVersion::ALL
        .into_iter()
        .find(|v| &tail[4..] == v.end_magic())?;
    let len = le32(tail) as usize * version.trailer_entry();
    let start = pack_len.checked_sub((len + TAIL_LEN) as u64)?;
    (start >= MAGIC_LEN as u64).then_some(TrailerSpan {
        start,
        len,
        version,
    })
}

/// Parses trailer entries (without the fixed tail) of a pack of `pack_len` bytes.
pub fn parse_trailer(data: &[u8], pack_len: u64, version: PackVersion) -> Option<Vec<PackEntry>> {
    let size = version.trailer_entry();
    if !data.len().is_multiple_of(size) {
        return None;
    }
    data.chunks_exact(size)
        .map(|c| {
            let mut s = [0u8; 32];
            s.copy_from_slice(&c[..32]);
            let (kind, encoding) = (ObjectKind::from_u8(c[32])?, encoding_from_u8(c[33])?);
            let (offset, stored_len) = (le32(&c[34..]), le32(&c[38..]));
            let (frame_len, start, plain_len) = match version {
                PackVersion::V1 => (le32(&c[42..]), 0, le32(&c[42..])),
                PackVersion::V2 => (le32(&c[42..]), le32(&c[46..]), le32(&c[50..])),
            };
            let e = PackEntry {
                score: Score(s),
                kind,
                encoding,
                offset,
                stored_len,
                frame_len,
                start,
                plain_len,
            };
            let in_pack = u64::from(offset) + u64::from(stored_len) <= pack_len;
            let in_frame = u64::from(start) + u64::from(plain_len) <= u64::from(frame_len);
            (in_pack && in_frame).then_some(e)
        })
        .collect()
}

fn encoding_from_u8(b: u8) -> Option<Encoding> {
    match b {
        0 => Some(Encoding::Raw),
        1 => Some(Encoding::Zstd),
        _ => None,
    }
}

/// Rebuilds a pack's entry list by walking its records or frames, ignoring the trailer.
///
/// Stops at the first malformed record or frame and reports it; the entries before it are
/// returned.
pub fn scan(data: &[u8]) -> (Vec<PackEntry>, Option<String>) {
    let version = data
        .get(..MAGIC_LEN)
        .and_then(|m| PackVersion::ALL.into_iter().find(|v| m == v.magic()));
    let Some(version) = version else {
        return (Vec::new(), Some("bad pack magic".into()));
    };
    let trailer_start = trailer_span(
        data.len() as u64,
        &data[data.len().saturating_sub(TAIL_LEN)..],
    )
    .map(|t| t.start as usize)
    .unwrap_or(data.len());
    let body = &data[..trailer_start];
    match version {
        PackVersion::V1 => scan_v1(body),
        PackVersion::V2 => scan_v2(body),
    }
}

fn scan_v1(body: &[u8]) -> (Vec<PackEntry>, Option<String>) {
    let mut out = Vec::new();
    let mut pos = MAGIC_LEN;
    while pos < body.len() {
        let h = match body.get(pos..pos + V1_RECORD_HEADER) {
            Some(h) => h,
            None => return (out, Some(format!("truncated record header at byte {pos}"))),
        };
        let (Some(kind), Some(encoding)) = (ObjectKind::from_u8(h[0]), encoding_from_u8(h[1]))
        else {
            return (out, Some(format!("bad record header at byte {pos}")));
        };
        let mut s = [0u8; 32];
        s.copy_from_slice(&h[2..34]);
        let plain_len = le32(&h[34..]);
        let stored_len = le32(&h[38..]);
        let offset = pos + V1_RECORD_HEADER;
        if offset + stored_len as usize > body.len() {
            return (out, Some(format!("truncated record at byte {pos}")));
        }
        out.push(PackEntry {
            score: Score(s),
            kind,
            encoding,
            offset: offset as u32,
            stored_len,
            frame_len: plain_len,
            start: 0,
            plain_len,
        });
        pos = offset + stored_len as usize;
    }
    (out, None)
}

fn scan_v2(body: &[u8]) -> (Vec<PackEntry>, Option<String>) {
    let mut out = Vec::new();
    let mut r = Reader::at(body, MAGIC_LEN, "pack frame");
    while !r.done() {
        let pos = r.pos();
        match scan_frame(&mut r) {
            Ok(entries) => out.extend(entries),
            Err(_) => return (out, Some(format!("bad or truncated frame at byte {pos}"))),
        }
    }
    (out, None)
}

/// Reads one version-2 frame header and skips its stored bytes.
fn scan_frame(r: &mut Reader) -> Result<Vec<PackEntry>> {
    let encoding = encoding_from_u8(r.u8()?).ok_or_else(|| r.err("bad encoding"))?;
    let count = r.varint()?;
    if count == 0 || count > (r.remaining() / V2_OBJECT_HEADER) as u64 {
        return Err(r.err("bad object count"));
    }
    let mut objects = Vec::with_capacity(count as usize);
    let mut frame_len = 0u32;
    for _ in 0..count {
        let score = r.score()?;
        let kind = ObjectKind::from_u8(r.u8()?).ok_or_else(|| r.err("bad kind"))?;
        let len = r.u32()?;
        objects.push((score, kind, frame_len, len));
        frame_len = frame_len
            .checked_add(len)
            .ok_or_else(|| r.err("frame too long"))?;
    }
    let stored_len = r.u32()?;
    let offset = u32::try_from(r.pos()).map_err(|_| r.err("pack too long"))?;
    r.skip(stored_len as usize)?;
    Ok(objects
        .into_iter()
        .map(|(score, kind, start, plain_len)| PackEntry {
            score,
            kind,
            encoding,
            offset,
            stored_len,
            frame_len,
            start,
            plain_len,
        })
        .collect())
}

thread_local! {
    /// One zstd compression context per thread and level: creating one costs more than
    /// compressing a small file.
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
    /// One zstd decompression context per thread.
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

fn compress(plain: &[u8], level: i32) -> Option<Vec<u8>> {
    COMPRESSOR.with_borrow_mut(|slot| {
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level).ok()?));
        }
        slot.as_mut()?.1.compress(plain).ok()
    })
}

fn decompress(stored: &[u8], plain_len: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with_borrow_mut(|slot| {
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new()?);
        }
        slot.as_mut()
            .expect("just set")
            .decompress(stored, plain_len)
    })
}

/// Objects at least this large are first probed: their start is compressed on its own.
const PROBE_FROM: usize = 128 << 10;
/// How much of a large object the probe compresses.
const PROBE_LEN: usize = 16 << 10;

/// Whether compressing `plain` is worth trying: small objects always are; for large ones the
/// first [`PROBE_LEN`] bytes must shrink by at least 1/32 (already-compressed data such as
/// `.gz` files or media never does, and compressing it whole would cost the full time).
fn worth_compressing(plain: &[u8], level: i32) -> bool {
    if plain.len() < PROBE_FROM {
        return plain.len() >= 64;
    }
    compress(&plain[..PROBE_LEN], level).is_some_and(|z| z.len() < PROBE_LEN - PROBE_LEN / 32)
}

/// Compresses `plain` for storage, keeping it raw when compression saves under 1/32.
pub fn encode_object(plain: &[u8], level: i32) -> (Encoding, Vec<u8>) {
    if worth_compressing(plain, level) {
        if let Some(z) = compress(plain, level) {
            if z.len() < plain.len() - plain.len() / 32 {
                return (Encoding::Zstd, z);
            }
        }
    }
    (Encoding::Raw, plain.to_vec())
}

/// Decodes a frame's stored bytes to its plain bytes (all its objects, not yet checked).
pub fn decode_frame(e: &PackEntry, stored: &[u8]) -> Result<Vec<u8>> {
    let bad = |d: String| Error::corrupt(format!("object {}", e.score), d);
    let plain = match e.encoding {
        Encoding::Raw => stored.to_vec(),
        Encoding::Zstd => {
            decompress(stored, e.frame_len as usize).map_err(|err| bad(format!("zstd: {err}")))?
        }
    };
    if plain.len() != e.frame_len as usize {
        return Err(bad("frame length does not match its header".into()));
    }
    Ok(plain)
}

/// The object `e` cut from its frame's plain bytes, checked against its score.
pub fn object_from_frame(e: &PackEntry, frame: &[u8]) -> Result<Vec<u8>> {
    let (start, end) = (e.start as usize, e.start as usize + e.plain_len as usize);
    match frame.get(start..end) {
        Some(plain) if Score::of(plain) == e.score => Ok(plain.to_vec()),
        _ => Err(Error::corrupt(
            format!("object {}", e.score),
            "contents do not match the score",
        )),
    }
}

/// Decodes the stored bytes of `e`'s frame and returns the object, checked against its score.
pub fn decode_object(e: &PackEntry, stored: &[u8]) -> Result<Vec<u8>> {
    let frame = decode_frame(e, stored)?;
    if !e.whole_frame() {
        return object_from_frame(e, &frame);
    }
    if Score::of(&frame) != e.score {
        return Err(Error::corrupt(
            format!("object {}", e.score),
            "contents do not match the score",
        ));
    }
    Ok(frame)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn add_blob(b: &mut PackBuilder, plain: &[u8]) {
        b.add(&EncodedFrame::single(
            Score::of(plain),
            ObjectKind::Blob,
            plain,
            3,
        ));
    }

    fn trailer(data: &[u8]) -> Vec<PackEntry> {
        let t = trailer_span(data.len() as u64, &data[data.len() - TAIL_LEN..]).unwrap();
        let body = &data[t.start as usize..t.start as usize + t.len];
        parse_trailer(body, data.len() as u64, t.version).unwrap()
    }

    /// A version-1 pack as the first format wrote it (for compatibility tests).
    pub(crate) fn v1_pack(objects: &[(ObjectKind, &[u8])]) -> (Score, Vec<u8>) {
        let mut buf = PackVersion::V1.magic().to_vec();
        let mut tail = Vec::new();
        for (kind, plain) in objects {
            let (enc, stored) = encode_object(plain, 3);
            let score = Score::of(plain);
            buf.extend_from_slice(&[*kind as u8, enc as u8]);
            buf.extend_from_slice(score.as_bytes());
            buf.extend_from_slice(&(plain.len() as u32).to_le_bytes());
            buf.extend_from_slice(&(stored.len() as u32).to_le_bytes());
            let offset = buf.len() as u32;
            buf.extend_from_slice(&stored);
            tail.extend_from_slice(score.as_bytes());
            tail.extend_from_slice(&[*kind as u8, enc as u8]);
            for v in [offset, stored.len() as u32, plain.len() as u32] {
                tail.extend_from_slice(&v.to_le_bytes());
            }
        }
        buf.extend_from_slice(&tail);
        buf.extend_from_slice(&(objects.len() as u32).to_le_bytes());
        buf.extend_from_slice(PackVersion::V1.end_magic());
        (Score::of(&buf), buf)
    }

    #[test]
    fn trailer_and_scan_agree() {
        let mut b = PackBuilder::default();
        for i in 0..10u32 {
            let plain = vec![i as u8; 1000 * i as usize + 1];
            add_blob(&mut b, &plain);
        }
        let mut group = Frame::default();
        for i in 0..5u8 {
            let plain = format!("small text object {i} ").repeat(i as usize + 3);
            group.push(
                Score::of(plain.as_bytes()),
                ObjectKind::Tree,
                plain.as_bytes(),
            );
        }
        b.add(&group.encode(3));
        let (name, data, entries) = b.finish();
        assert_eq!(name, Score::of(&data));
        assert_eq!(entries.len(), 15);
        let (scanned, err) = scan(&data);
        assert!(err.is_none());
        assert_eq!(trailer(&data), entries);
        assert_eq!(scanned, entries);
        for e in &entries {
            let stored = &data[e.offset as usize..(e.offset + e.stored_len) as usize];
            let plain = decode_object(e, stored).unwrap();
            assert_eq!(Score::of(&plain), e.score);
        }
        let grouped: Vec<_> = entries.iter().filter(|e| !e.whole_frame()).collect();
        assert_eq!(grouped.len(), 5);
        assert!(grouped.iter().all(|e| e.encoding == Encoding::Zstd));
    }

    #[test]
    fn version_1_packs_are_read() {
        let objects: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 500 * (i as usize + 1)]).collect();
        let list: Vec<(ObjectKind, &[u8])> =
            objects.iter().map(|o| (ObjectKind::Blob, &o[..])).collect();
        let (_, data) = v1_pack(&list);
        let (scanned, err) = scan(&data);
        assert!(err.is_none());
        assert_eq!(trailer(&data), scanned);
        for (e, plain) in scanned.iter().zip(&objects) {
            assert!(e.whole_frame());
            let stored = &data[e.offset as usize..(e.offset + e.stored_len) as usize];
            assert_eq!(&decode_object(e, stored).unwrap(), plain);
        }
    }

    #[test]
    fn flipped_byte_is_detected() {
        let mut b = PackBuilder::default();
        let plain = b"hello hello hello hello hello hello hello hello hello hello hello".to_vec();
        add_blob(&mut b, &plain);
        let (_, mut data, entries) = b.finish();
        let e = entries[0];
        data[e.offset as usize + 3] ^= 0x40;
        let stored = &data[e.offset as usize..(e.offset + e.stored_len) as usize];
        assert!(decode_object(&e, stored).is_err());
    }

    #[test]
    fn truncated_frame_stops_the_scan() {
        let mut b = PackBuilder::default();
        add_blob(&mut b, &[7u8; 3000]);
        add_blob(&mut b, &[9u8; 3000]);
        let (_, data, entries) = b.finish();
        let cut = entries[1].offset as usize + 2;
        let (scanned, err) = scan(&data[..cut]);
        assert_eq!(scanned, entries[..1]);
        assert!(err.unwrap().contains("frame"));
    }
}
