//! The ndb(6) text format of the grid file ([`super::grid`]): [`parse`] turns text into
//! entries of attribute/value pairs. Only `std`, so the fuzz target `ndb` (fuzz/) compiles
//! this file as it is, and `fuzz` is its harness (replayed over `fuzz/corpus/ndb` by the
//! tests).
//!
//! An entry starts on a line that does not begin with white space and goes on over the lines
//! that do; `#` starts a comment; empty lines are ignored; a pair is `attr=value`, `attr=` or
//! `attr` alone; a value with white space or any of `#'"=` is quoted with `"` or `'`, a
//! doubled quote standing for itself.

/// One entry: its attribute/value pairs in order, and the line it starts on.
#[derive(Debug, PartialEq)]
pub struct Entry {
    /// The 1-based line of the entry's first line.
    pub line: usize,
    /// `(attribute, value)` pairs; a pair written without `=` has an empty value.
    pub pairs: Vec<(String, String)>,
}

impl Entry {
    /// The value of the first pair named `attr`.
    pub fn get(&self, attr: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(a, _)| a == attr)
            .map(|(_, v)| v.as_str())
    }
}

/// The entries of `text`, or the 1-based line of the first malformed line and what is wrong.
pub fn parse(text: &str) -> Result<Vec<Entry>, (usize, String)> {
    let mut entries: Vec<Entry> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let pairs = parse_line(raw).map_err(|e| (line, e))?;
        if pairs.is_empty() {
            continue;
        }
        if raw.starts_with([' ', '\t']) {
            match entries.last_mut() {
                Some(entry) => entry.pairs.extend(pairs),
                None => {
                    return Err((
                        line,
                        "a continuation line (it starts with white space) with no entry before it"
                            .into(),
                    ))
                }
            }
        } else {
            entries.push(Entry { line, pairs });
        }
    }
    Ok(entries)
}

/// The pairs of one line (none for an empty or comment line).
fn parse_line(line: &str) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut rest = line;
    loop {
        rest = rest.trim_start_matches([' ', '\t', '\r']);
        if rest.is_empty() || rest.starts_with('#') {
            return Ok(pairs);
        }
        let end = rest
            .find(|c: char| c.is_whitespace() || c == '=' || c == '#')
            .unwrap_or(rest.len());
        let attr = &rest[..end];
        if attr.is_empty() {
            return Err("an attribute name is missing before '='".into());
        }
        if attr.contains(['"', '\'']) {
            return Err(format!("attribute {attr} has a quote in its name"));
        }
        rest = &rest[end..];
        let value = match rest.strip_prefix('=') {
            None => String::new(),
            Some(after) => {
                let (value, after) = parse_value(attr, after)?;
                rest = after;
                value
            }
        };
        if !(rest.is_empty() || rest.starts_with(|c: char| c.is_whitespace() || c == '#')) {
            return Err(format!(
                "{attr}= is followed by {rest:?} without white space between"
            ));
        }
        pairs.push((attr.to_string(), value));
    }
}

/// A value at the start of `s` (quoted or not) and what follows it.
fn parse_value<'a>(attr: &str, s: &'a str) -> Result<(String, &'a str), String> {
    let Some(quote) = s.chars().next().filter(|c| *c == '"' || *c == '\'') else {
        let end = s
            .find(|c: char| c.is_whitespace() || c == '#')
            .unwrap_or(s.len());
        let value = &s[..end];
        if value.contains(['=', '"', '\'']) {
            return Err(format!(
                "the value of {attr} ({value}) has '=' or a quote in it: quote the whole value"
            ));
        }
        return Ok((value.to_string(), &s[end..]));
    };
    let mut value = String::new();
    let mut rest = &s[1..];
    loop {
        let Some(i) = rest.find(quote) else {
            return Err(format!("the value of {attr} has no closing {quote}"));
        };
        value.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        match rest.strip_prefix(quote) {
            Some(after) => {
                value.push(quote);
                rest = after;
            }
            None => return Ok((value, rest)),
        }
    }
}

/// `entries` written back as ndb text, one line per entry, every value quoted with `"`.
#[cfg(any(test, fuzzing))]
fn write(entries: &[Entry]) -> String {
    let mut text = String::new();
    for e in entries {
        let pairs: Vec<String> = e
            .pairs
            .iter()
            .map(|(a, v)| format!("{a}=\"{}\"", v.replace('"', "\"\"")))
            .collect();
        text.push_str(&pairs.join(" "));
        text.push('\n');
    }
    text
}

/// The fuzz harness: any text is parsed or refused without a panic; what is accepted, written
/// back (quoted), parses to the same pairs.
#[cfg(any(test, fuzzing))]
pub fn fuzz(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(entries) = parse(text) else {
        return;
    };
    let again = parse(&write(&entries)).expect("written entries parse");
    let pairs = |es: &[Entry]| es.iter().map(|e| e.pairs.clone()).collect::<Vec<_>>();
    assert_eq!(
        pairs(&again),
        pairs(&entries),
        "entries change when written back"
    );
}

#[cfg(test)]
mod tests {
    /// Every input of the committed corpus passes the harness.
    #[test]
    fn fuzz_corpus_replays() {
        api::fuzzing::replay_corpus("ndb", super::fuzz);
    }
}
