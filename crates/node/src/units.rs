//! Sizes as people write them in configuration files and on command lines.

use anyhow::{bail, Context, Result};

/// Parses a size: bytes, or a number with K, M, G or T (powers of 1024; a trailing B is ok).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim().trim_end_matches(['B', 'b']);
    let (num, mul) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let exp = match c.to_ascii_uppercase() {
                'K' => 1,
                'M' => 2,
                'G' => 3,
                'T' => 4,
                _ => bail!("bad size {s:?} (want e.g. 500M or 10G)"),
            };
            (&t[..i], 1u64 << (10 * exp))
        }
        _ => (t, 1),
    };
    let n: f64 = num
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n >= 0.0)
        .with_context(|| format!("bad size {s:?} (want e.g. 500M or 10G)"))?;
    Ok((n * mul as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("1.5k").unwrap(), 1536);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert_eq!(parse_size("2GB").unwrap(), 2 << 30);
        assert!(parse_size("-1M").is_err() && parse_size("x").is_err());
    }
}
