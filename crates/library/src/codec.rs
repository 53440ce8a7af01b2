//! Byte-level helpers for the library's canonical binary encodings (LEB128 varints, byte strings).

use crate::{Error, Result, Score};

/// Appends canonical encodings to a byte vector.
#[derive(Default)]
pub(crate) struct Writer {
    pub(crate) buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn with_magic(magic: &[u8; 4]) -> Writer {
        Writer {
            buf: magic.to_vec(),
        }
    }

    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }

    pub(crate) fn varint(&mut self, v: u64) {
        push_varint(&mut self.buf, v);
    }

    pub(crate) fn zigzag(&mut self, v: i64) {
        self.varint(((v << 1) ^ (v >> 63)) as u64);
    }

    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.varint(b.len() as u64);
        self.buf.extend_from_slice(b);
    }

    pub(crate) fn score(&mut self, s: &Score) {
        self.buf.extend_from_slice(s.as_bytes());
    }
}

/// Appends `v` to `buf` as a canonical LEB128 varint.
pub(crate) fn push_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Reads canonical encodings, rejecting anything non-canonical or truncated.
pub(crate) struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader over `data` that must start with `magic`; `what` names the object in errors.
    pub(crate) fn with_magic(data: &'a [u8], magic: &[u8; 4], what: &'static str) -> Result<Self> {
        if data.len() < 4 || &data[..4] != magic {
            return Err(Error::corrupt(what, "bad magic"));
        }
        Ok(Reader { data, pos: 4, what })
    }

    /// A reader over `data` starting at byte `pos` (no magic).
    pub(crate) fn at(data: &'a [u8], pos: usize, what: &'static str) -> Self {
        Reader { data, pos, what }
    }

    /// The current position.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// Skips `n` bytes, which must exist.
    pub(crate) fn skip(&mut self, n: usize) -> Result<()> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        self.pos = end.ok_or_else(|| self.err("truncated"))?;
        Ok(())
    }

    pub(crate) fn err(&self, detail: &str) -> Error {
        Error::corrupt(self.what, format!("{detail} at byte {}", self.pos))
    }

    /// Bytes left to read.
    pub(crate) fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    pub(crate) fn done(&self) -> bool {
        self.pos == self.data.len()
    }

    pub(crate) fn finish(&self) -> Result<()> {
        if self.done() {
            Ok(())
        } else {
            Err(self.err("trailing bytes"))
        }
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        let b = *self
            .data
            .get(self.pos)
            .ok_or_else(|| self.err("truncated"))?;
        self.pos += 1;
        Ok(b)
    }

    pub(crate) fn varint(&mut self) -> Result<u64> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            if shift == 63 && b > 1 {
                return Err(self.err("varint overflow"));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                if b == 0 && shift > 0 {
                    return Err(self.err("non-canonical varint"));
                }
                return Ok(v);
            }
        }
        Err(self.err("varint too long"))
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        u32::try_from(self.varint()?).map_err(|_| self.err("value out of range"))
    }

    pub(crate) fn zigzag(&mut self) -> Result<i64> {
        let v = self.varint()?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    pub(crate) fn bytes(&mut self) -> Result<&'a [u8]> {
        let len = usize::try_from(self.varint()?).map_err(|_| self.err("length out of range"))?;
        let end = self.pos.checked_add(len).filter(|&e| e <= self.data.len());
        let end = end.ok_or_else(|| self.err("truncated"))?;
        let b = &self.data[self.pos..end];
        self.pos = end;
        Ok(b)
    }

    pub(crate) fn score(&mut self) -> Result<Score> {
        let end = self.pos + 32;
        if end > self.data.len() {
            return Err(self.err("truncated"));
        }
        let mut s = [0u8; 32];
        s.copy_from_slice(&self.data[self.pos..end]);
        self.pos = end;
        Ok(Score(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_and_reject_padding() {
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut w = Writer::with_magic(b"TEST");
            w.varint(v);
            w.zigzag(-(v as i64 >> 1));
            let mut r = Reader::with_magic(&w.buf, b"TEST", "test").unwrap();
            assert_eq!(r.varint().unwrap(), v);
            assert_eq!(r.zigzag().unwrap(), -(v as i64 >> 1));
            r.finish().unwrap();
        }
        let padded = [b'T', b'E', b'S', b'T', 0x81, 0x00];
        let mut r = Reader::with_magic(&padded, b"TEST", "test").unwrap();
        assert!(r.varint().is_err());
    }
}
