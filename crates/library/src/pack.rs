//! Pack files: many objects in one backend file, with a trailer index that can be rebuilt by
//! scanning the records, because every record carries its own header.
//!
//! ```text
//! pack    = "SGPACK01" record* trailer
//! record  = kind:u8 encoding:u8 score:[32] plain_len:u32le stored_len:u32le stored:[stored_len]
//! trailer = (score:[32] kind:u8 encoding:u8 offset:u32le stored_len:u32le plain_len:u32le)*
//!           count:u32le "SGPKEND1"
//! ```
//! A pack's name is the BLAKE3 score of its whole contents, so a pack can be checked as a unit.

use crate::{Error, Result, Score};

const MAGIC: &[u8; 8] = b"SGPACK01";
const END_MAGIC: &[u8; 8] = b"SGPKEND1";
const RECORD_HEADER: usize = 1 + 1 + 32 + 4 + 4;
const TRAILER_ENTRY: usize = 32 + 1 + 1 + 4 + 4 + 4;

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

/// How an object's bytes are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Encoding {
    /// Stored as is (compression did not pay).
    Raw = 0,
    /// zstd-compressed.
    Zstd = 1,
}

/// Where one object lives inside a pack, as listed in the trailer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackEntry {
    /// The object's score.
    pub score: Score,
    /// The object's kind.
    pub kind: ObjectKind,
    /// How the stored bytes are encoded.
    pub encoding: Encoding,
    /// Offset of the stored bytes (after the record header) in the pack.
    pub offset: u32,
    /// Length of the stored bytes.
    pub stored_len: u32,
    /// Length of the plain bytes.
    pub plain_len: u32,
}

/// Accumulates records for one pack in memory.
pub struct PackBuilder {
    buf: Vec<u8>,
    entries: Vec<PackEntry>,
}

impl Default for PackBuilder {
    fn default() -> Self {
        PackBuilder {
            buf: MAGIC.to_vec(),
            entries: Vec::new(),
        }
    }
}

impl PackBuilder {
    /// Appends an already-encoded object.
    pub fn add(
        &mut self,
        score: Score,
        kind: ObjectKind,
        encoding: Encoding,
        plain_len: u32,
        stored: &[u8],
    ) {
        self.buf.push(kind as u8);
        self.buf.push(encoding as u8);
        self.buf.extend_from_slice(score.as_bytes());
        self.buf.extend_from_slice(&plain_len.to_le_bytes());
        self.buf
            .extend_from_slice(&(stored.len() as u32).to_le_bytes());
        let offset = self.buf.len() as u32;
        self.buf.extend_from_slice(stored);
        self.entries.push(PackEntry {
            score,
            kind,
            encoding,
            offset,
            stored_len: stored.len() as u32,
            plain_len,
        });
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
        for e in &self.entries {
            self.buf.extend_from_slice(e.score.as_bytes());
            self.buf.push(e.kind as u8);
            self.buf.push(e.encoding as u8);
            self.buf.extend_from_slice(&e.offset.to_le_bytes());
            self.buf.extend_from_slice(&e.stored_len.to_le_bytes());
            self.buf.extend_from_slice(&e.plain_len.to_le_bytes());
        }
        self.buf
            .extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(END_MAGIC);
        (Score::of(&self.buf), self.buf, self.entries)
    }
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().expect("4 bytes"))
}

/// Length of the fixed tail (count + end magic) that locates the trailer.
pub const TAIL_LEN: usize = 12;

/// Given a pack's size and its last [`TAIL_LEN`] bytes, the offset and length of its trailer.
pub fn trailer_span(pack_len: u64, tail: &[u8]) -> Option<(u64, usize)> {
    if tail.len() != TAIL_LEN || &tail[4..] != END_MAGIC {
        return None;
    }
    let len = le32(tail) as usize * TRAILER_ENTRY;
    let start = pack_len.checked_sub((len + TAIL_LEN) as u64)?;
    (start >= MAGIC.len() as u64).then_some((start, len))
}

/// Parses trailer entries (without the fixed tail).
pub fn parse_trailer(data: &[u8], pack_len: u64) -> Option<Vec<PackEntry>> {
    if !data.len().is_multiple_of(TRAILER_ENTRY) {
        return None;
    }
    data.chunks_exact(TRAILER_ENTRY)
        .map(|c| {
            let mut s = [0u8; 32];
            s.copy_from_slice(&c[..32]);
            let e = PackEntry {
                score: Score(s),
                kind: ObjectKind::from_u8(c[32])?,
                encoding: encoding_from_u8(c[33])?,
                offset: le32(&c[34..]),
                stored_len: le32(&c[38..]),
                plain_len: le32(&c[42..]),
            };
            (u64::from(e.offset) + u64::from(e.stored_len) <= pack_len).then_some(e)
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

/// Rebuilds a pack's entry list by walking its records, ignoring the trailer.
///
/// Stops at the first malformed record and reports it; the records before it are returned.
pub fn scan(data: &[u8]) -> (Vec<PackEntry>, Option<String>) {
    let mut out = Vec::new();
    if data.len() < MAGIC.len() || &data[..MAGIC.len()] != MAGIC {
        return (out, Some("bad pack magic".into()));
    }
    let trailer_start = trailer_span(
        data.len() as u64,
        &data[data.len().saturating_sub(TAIL_LEN)..],
    )
    .map(|(s, _)| s as usize)
    .unwrap_or(data.len());
    let mut pos = MAGIC.len();
    while pos < trailer_start {
        let h = match data.get(pos..pos + RECORD_HEADER) {
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
        let offset = pos + RECORD_HEADER;
        if offset + stored_len as usize > trailer_start {
            return (out, Some(format!("truncated record at byte {pos}")));
        }
        out.push(PackEntry {
            score: Score(s),
            kind,
            encoding,
            offset: offset as u32,
            stored_len,
            plain_len,
        });
        pos = offset + stored_len as usize;
    }
    (out, None)
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

/// Decodes stored bytes and checks them against the entry's score.
pub fn decode_object(e: &PackEntry, stored: &[u8]) -> Result<Vec<u8>> {
    let bad = |d: String| Error::corrupt(format!("object {}", e.score), d);
    let plain = match e.encoding {
        Encoding::Raw => stored.to_vec(),
        Encoding::Zstd => {
            decompress(stored, e.plain_len as usize).map_err(|err| bad(format!("zstd: {err}")))?
        }
    };
    if plain.len() != e.plain_len as usize || Score::of(&plain) != e.score {
        return Err(bad("contents do not match the score".into()));
    }
    Ok(plain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add_blob(b: &mut PackBuilder, plain: &[u8]) {
        let (enc, stored) = encode_object(plain, 3);
        b.add(
            Score::of(plain),
            ObjectKind::Blob,
            enc,
            plain.len() as u32,
            &stored,
        );
    }

    #[test]
    fn trailer_and_scan_agree() {
        let mut b = PackBuilder::default();
        for i in 0..10u32 {
            let plain = vec![i as u8; 1000 * i as usize + 1];
            add_blob(&mut b, &plain);
        }
        let (name, data, entries) = b.finish();
        assert_eq!(name, Score::of(&data));
        let (s, l) = trailer_span(data.len() as u64, &data[data.len() - TAIL_LEN..]).unwrap();
        let from_trailer =
            parse_trailer(&data[s as usize..s as usize + l], data.len() as u64).unwrap();
        let (scanned, err) = scan(&data);
        assert!(err.is_none());
        assert_eq!(from_trailer, entries);
        assert_eq!(scanned, entries);
        for e in &entries {
            let stored = &data[e.offset as usize..(e.offset + e.stored_len) as usize];
            decode_object(e, stored).unwrap();
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
}
