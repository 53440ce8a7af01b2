//! The naming rule shared by snapshot names, user names and env names.
//!
//! 1 to [`MAX_NAME`] bytes, the first an ASCII letter or digit, the rest ASCII letters,
//! digits or `. _ - : @`, and no `..` anywhere. So a name can never be a path (`/`) or walk
//! out of one. The catalog binds names under this rule and the runtime names envs with it;
//! it lives here, below both, so neither has to depend on the other.

/// The longest name, in bytes.
pub const MAX_NAME: usize = 128;

/// Punctuation allowed in names after the first character.
const NAME_PUNCT: &[u8] = b"._-:@";

/// The rule `name` breaks, as a phrase for an error message, or `None` if it is a good name.
pub fn rule_broken(name: &str) -> Option<String> {
    let b = name.as_bytes();
    let allowed = |c: &u8| c.is_ascii_alphanumeric() || NAME_PUNCT.contains(c);
    if b.is_empty() || b.len() > MAX_NAME {
        return Some(format!(
            "must be 1 to {MAX_NAME} bytes long (is {})",
            b.len()
        ));
    }
    if !b[0].is_ascii_alphanumeric() {
        return Some("must start with an ASCII letter or digit".into());
    }
    if let Some(c) = b.iter().find(|c| !allowed(c)) {
        return Some(format!(
            "character {:?} is not allowed (use ASCII letters, digits and . _ - : @)",
            char::from(*c)
        ));
    }
    b.windows(2)
        .any(|w| w == b"..")
        .then(|| "must not contain '..'".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_and_bad_names() {
        for good in ["a", "ubuntu-24.04", "x_y:z@w", "9", &"b".repeat(128)] {
            assert_eq!(rule_broken(good), None, "{good}");
        }
        let long = "a".repeat(129);
        for bad in ["", "a/b", "..", "x..y", "-x", ".x", "é", "a+b", &long] {
            assert!(rule_broken(bad).is_some(), "{bad:?}");
        }
        assert!(rule_broken("a/b").unwrap().contains("'/'"));
        assert!(rule_broken(&long).unwrap().contains("128"));
    }
}
