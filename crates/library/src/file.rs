//! File data in and out: small files as one blob, large files split by FastCDC into chunks
//! listed by a chunk-list object.

use crate::codec::{Reader, Writer};
use crate::pack::ObjectKind;
use crate::tree::FileData;
use crate::{Error, Library, Result, Score};
use rayon::iter::{ParallelBridge, ParallelIterator};
use std::io::{Read, Write};

const CHUNKS_MAGIC: &[u8; 4] = b"SGC1";

/// Encodes a chunk list: the chunks' scores and lengths, in file order.
pub fn encode_chunks(chunks: &[(Score, u32)]) -> Vec<u8> {
    let mut w = Writer::with_magic(CHUNKS_MAGIC);
    w.varint(chunks.len() as u64);
    for (s, len) in chunks {
        w.score(s);
        w.varint(u64::from(*len));
    }
    w.buf
}

/// Decodes a chunk list.
pub fn decode_chunks(data: &[u8]) -> Result<Vec<(Score, u32)>> {
    let mut r = Reader::with_magic(data, CHUNKS_MAGIC, "chunk list")?;
    let n = r.varint()?;
    let mut out = Vec::with_capacity(n.min(1 << 20) as usize);
    for _ in 0..n {
        out.push((r.score()?, r.u32()?));
    }
    r.finish()?;
    Ok(out)
}

/// Stores up to `limit` bytes read from `r` as file data; returns the bytes stored and where.
///
/// Reading stops at `limit` even if the source grows while it is read, so a file that is
/// appended to forever cannot stall a save. A large file is cut on one thread while rayon's
/// pool hashes and compresses its chunks in parallel (one chunk in flight per pool thread), so
/// one big file does not leave the other cores idle at the end of an import.
pub fn store_file(
    lib: &Library,
    r: impl Read + Send,
    limit: u64,
    path: &str,
) -> Result<(u64, FileData)> {
    let cfg = lib.config();
    let mut r = r.take(limit);
    let io = |e| Error::io("reading", path, e);
    if limit <= u64::from(cfg.chunk_threshold) {
        let mut buf = Vec::with_capacity(limit as usize);
        r.read_to_end(&mut buf).map_err(io)?;
        return store_bytes(lib, &buf);
    }
    let cdc = fastcdc::v2020::StreamCDC::new(r, cfg.chunk_min, cfg.chunk_avg, cfg.chunk_max);
    let mut pieces = cdc
        .enumerate()
        .par_bridge()
        .map(|(i, c)| {
            let c = c.map_err(|e| match e {
                fastcdc::v2020::Error::IoError(e) => io(e),
                other => Error::io("chunking", path, std::io::Error::other(other.to_string())),
            })?;
            Ok((i, lib.put(ObjectKind::Blob, &c.data)?, c.data.len() as u32))
        })
        .collect::<Result<Vec<_>>>()?;
    pieces.sort_unstable_by_key(|p| p.0);
    let chunks: Vec<(Score, u32)> = pieces.into_iter().map(|(_, s, len)| (s, len)).collect();
    let total = chunks.iter().map(|c| u64::from(c.1)).sum();
    Ok(match chunks.len() {
        0 => (0, FileData::Empty),
        1 => (total, FileData::Blob(chunks[0].0)),
        _ => (
            total,
            FileData::Chunks(lib.put(ObjectKind::ChunkList, &encode_chunks(&chunks))?),
        ),
    })
}

/// Stores an in-memory file's bytes; small files whole, large ones chunked.
pub fn store_bytes(lib: &Library, data: &[u8]) -> Result<(u64, FileData)> {
    let len = data.len() as u64;
    if data.is_empty() {
        return Ok((0, FileData::Empty));
    }
    if len > u64::from(lib.config().chunk_threshold) {
        return store_file(lib, data, len, "memory");
    }
    Ok((len, FileData::Blob(lib.put(ObjectKind::Blob, data)?)))
}

/// The scores of the blobs that hold a file's bytes, in order.
pub fn blobs(lib: &Library, data: &FileData) -> Result<Vec<(Score, u32)>> {
    match data {
        FileData::Empty => Ok(Vec::new()),
        FileData::Blob(s) => Ok(vec![(*s, 0)]),
        FileData::Chunks(s) => decode_chunks(&lib.get_kind(s, ObjectKind::ChunkList)?),
    }
}

/// Writes a file's bytes to `w`, verifying every object on the way; returns the bytes written.
pub fn write_file(lib: &Library, data: &FileData, mut w: impl Write, path: &str) -> Result<u64> {
    let mut n = 0;
    for (s, _) in blobs(lib, data)? {
        let b = lib.get_kind(&s, ObjectKind::Blob)?;
        w.write_all(&b).map_err(|e| Error::io("writing", path, e))?;
        n += b.len() as u64;
    }
    Ok(n)
}
