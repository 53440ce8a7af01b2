//! Scores: the BLAKE3-256 hashes that name every object in the library.

use std::fmt;
use std::str::FromStr;

/// The BLAKE3-256 hash of an object's plain (uncompressed) bytes; its name in the library.
///
/// Printed and parsed as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Score(pub [u8; 32]);

impl Score {
    /// The score of `data`.
    pub fn of(data: &[u8]) -> Score {
        Score(*blake3::hash(data).as_bytes())
    }

    /// The score of a large `data` (a whole pack), hashed on rayon's pool: the same value as
    /// [`Score::of`], sooner when cores are free.
    pub fn of_large(data: &[u8]) -> Score {
        Score(
            *blake3::Hasher::new()
                .update_rayon(data)
                .finalize()
                .as_bytes(),
        )
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64-digit lowercase hex form.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// A short prefix for humans (12 hex digits).
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl fmt::Display for Score {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Score {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Score({})", self.short())
    }
}

/// Error for a string that is not 64 hex digits.
#[derive(Debug, thiserror::Error)]
#[error("not a score (want 64 lowercase hex digits): {0:?}")]
pub struct ParseScoreError(pub String);

impl FromStr for Score {
    type Err = ParseScoreError;
    fn from_str(s: &str) -> Result<Score, ParseScoreError> {
        let mut out = [0u8; 32];
        if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(ParseScoreError(s.to_string()));
        }
        hex::decode_to_slice(s, &mut out).map_err(|_| ParseScoreError(s.to_string()))?;
        Ok(Score(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let s = Score::of(b"venti");
        assert_eq!(s.to_hex().parse::<Score>().unwrap(), s);
        assert!("ABC".parse::<Score>().is_err());
        assert!(s.to_hex().to_uppercase().parse::<Score>().is_err());
    }
}
