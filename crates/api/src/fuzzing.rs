//! The harness of the fuzz target `api_json` (fuzz/, `scripts/fuzz.sh`): the JSON bodies the
//! node takes, decoded from arbitrary bytes. Compiled for tests and under `cfg(fuzzing)`
//! (cargo-fuzz); the tests replay the committed corpus `fuzz/corpus/api_json`.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A body decoded as `T`: refused or accepted without a panic; what is accepted encodes to
/// JSON that decodes to the same value.
fn round_trip<T: DeserializeOwned + Serialize>(json: &[u8]) -> Option<T> {
    let t: T = serde_json::from_slice(json).ok()?;
    let value = serde_json::to_value(&t).expect("a decoded body encodes");
    let again: T = serde_json::from_value(value.clone()).expect("an encoded body decodes");
    assert_eq!(
        serde_json::to_value(&again).expect("encodes"),
        value,
        "a body changes through encode and decode"
    );
    Some(t)
}

/// The harness: the first byte picks the request type, the rest is its body. An exec's stdin
/// is decoded from base64 as the node does.
pub fn fuzz(data: &[u8]) {
    use crate::*;
    let Some((&pick, json)) = data.split_first() else {
        return;
    };
    match pick % 10 {
        0 => drop(round_trip::<LoginRequest>(json)),
        1 => drop(round_trip::<SpawnRequest>(json)),
        2 => {
            if let Some(stdin) = round_trip::<ExecRequest>(json).and_then(|r| r.stdin) {
                let _ = b64::decode(&stdin);
            }
        }
        3 => drop(round_trip::<SaveRequest>(json)),
        4 => drop(round_trip::<ForkRequest>(json)),
        5 => drop(round_trip::<ExposeRequest>(json)),
        6 => drop(round_trip::<InviteRequest>(json)),
        7 => drop(round_trip::<ShareRequest>(json)),
        8 => drop(round_trip::<PasswordRequest>(json)),
        _ => drop(round_trip::<KeyRequest>(json)),
    }
}

/// Runs `harness` on every input of the committed corpus `fuzz/corpus/TARGET`, so the crates'
/// tests keep a fixed crash fixed on stable; panics if the corpus is missing or empty.
pub fn replay_corpus(target: &str, harness: impl Fn(&[u8])) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let files = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut n = 0;
    for f in files {
        let path = f.unwrap().path();
        harness(&std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())));
        n += 1;
    }
    assert!(n > 0, "no corpus in {}", dir.display());
}

#[cfg(test)]
mod tests {
    /// Every input of the committed corpus passes the harness.
    #[test]
    fn fuzz_corpus_replays() {
        super::replay_corpus("api_json", super::fuzz);
    }
}
