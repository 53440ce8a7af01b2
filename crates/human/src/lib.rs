//! Sizes and ages as people read and write them. One spelling everywhere — messages, tables,
//! configuration files, command-line flags — so what Spawngrid prints, it also reads back:
//! sizes are bytes or a number with `K`, `M`, `G` or `T` (powers of 1024), ages the largest
//! whole unit of `s`, `m`, `h`, `d`, durations what [`humantime`] reads (`90s`, `1h30m`).

use std::fmt;
use std::time::Duration;

/// A size or duration that does not parse; its message says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ParseError {}

/// The units of a size, each 1024 times the one before.
const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];

/// Parses a size: bytes, or a number with K, M, G or T (powers of 1024; a trailing B is ok,
/// and so are decimals: `1.5G`).
pub fn parse_size(s: &str) -> Result<u64, ParseError> {
    let bad = || ParseError(format!("bad size {s:?} (write e.g. 500M or 10G)"));
    let t = s.trim().trim_end_matches(['B', 'b']);
    let (num, mul) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let exp = UNITS[1..]
                .iter()
                .position(|u| u.eq_ignore_ascii_case(&c.to_string()))
                .ok_or_else(bad)?
                + 1;
            (&t[..i], 1u64 << (10 * exp))
        }
        _ => (t, 1),
    };
    let n: f64 = num
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n >= 0.0)
        .ok_or_else(bad)?;
    Ok((n * mul as f64) as u64)
}

/// A size as [`parse_size`] reads it: `512M`, `1.5G`, `100B` (one decimal when not whole).
pub fn size(bytes: u64) -> String {
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < UNITS.len() {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 || (v * 10.0).round() % 10.0 == 0.0 {
        format!("{}{}", v.round(), UNITS[i])
    } else {
        format!("{v:.1}{}", UNITS[i])
    }
}

/// An age or a time left, in its largest whole unit: `42s`, `5m`, `3h`, `12d`.
pub fn age(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Parses a duration (`90s`, `15m`, `2h`, `1h30m`, `7d`); a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, ParseError> {
    let t = s.trim();
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(t).map_err(|e| {
        ParseError(format!(
            "bad duration {s:?}: {e} (write e.g. 90s, 30m, 2h or 1h30m)"
        ))
    })
}

/// Parses a timeout or a lifetime: a duration (as [`parse_duration`]) of at least a second.
pub fn parse_timeout(s: &str) -> Result<Duration, ParseError> {
    let d = parse_duration(s)?;
    if d.as_secs() == 0 {
        return Err(ParseError(format!("{s:?} is too short: at least 1s")));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1.5k"), Ok(1536));
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("2GB"), Ok(2 << 30));
        for bad in ["-1M", "x", "5Q", ""] {
            let e = parse_size(bad).unwrap_err().to_string();
            assert!(e.starts_with("bad size"), "{e}");
        }
    }

    #[test]
    fn sizes_print_as_they_parse() {
        let printed = [
            0,
            512,
            1536,
            512 << 20,
            1536 << 20,
            (1 << 20) + 1,
            3 << 40,
            u64::MAX,
        ];
        assert_eq!(
            printed.map(size),
            [
                "0B",
                "512B",
                "1.5K",
                "512M",
                "1.5G",
                "1M",
                "3T",
                "16777216T"
            ]
            .map(String::from)
        );
        for b in [512u64, 1536, 512 << 20, 1536 << 20, 3 << 40] {
            assert_eq!(parse_size(&size(b)), Ok(b));
        }
    }

    #[test]
    fn ages_take_their_largest_whole_unit() {
        assert_eq!(
            [0, 59, 61, 3599, 7200, 86_399, 90_000].map(age),
            ["0s", "59s", "1m", "59m", "2h", "23h", "1d"].map(String::from)
        );
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        let e = parse_duration("soon").unwrap_err().to_string();
        assert!(e.starts_with("bad duration \"soon\""), "{e}");
        assert_eq!(parse_timeout("2m"), Ok(Duration::from_secs(120)));
        for short in ["0", "0s", "500ms"] {
            let e = parse_timeout(short).unwrap_err().to_string();
            assert!(e.ends_with("is too short: at least 1s"), "{e}");
        }
    }
}
