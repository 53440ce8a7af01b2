//! Notices: things the node did to a user's envs that the user did not ask for (an eviction),
//! kept in `DATA/notices/USER.jsonl` (one JSON [`api::Notice`] per line) for a week and shown
//! by `spawngrid status`.

use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// How long a notice is shown, in seconds.
pub const KEEP_SECS: u64 = 7 * 24 * 3600;

fn file(data: &Path, user: &str) -> Result<PathBuf> {
    catalog::check_owner(user)?;
    Ok(data.join("notices").join(format!("{user}.jsonl")))
}

/// Records `message` for `user` now.
pub fn add(data: &Path, user: &str, message: &str) -> Result<()> {
    let path = file(data, user)?;
    let dir = path.parent().expect("notices file has a directory");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let notice = api::Notice {
        at: runtime::state::now(),
        message: message.to_string(),
    };
    let mut line = serde_json::to_vec(&notice)?;
    line.push(b'\n');
    // One write(2) of one line with O_APPEND: concurrent writers never interleave a line.
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(&line))
        .with_context(|| format!("writing {}", path.display()))
}

/// `user`'s notices of the last [`KEEP_SECS`], oldest first (unreadable lines skipped).
pub fn list(data: &Path, user: &str) -> Result<Vec<api::Notice>> {
    let path = file(data, user)?;
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let since = runtime::state::now().saturating_sub(KEEP_SECS);
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<api::Notice>(l).ok())
        .filter(|n| n.at >= since)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_are_per_user_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        add(dir.path(), "alice", "one").unwrap();
        add(dir.path(), "bob", "other").unwrap();
        add(dir.path(), "alice", "two").unwrap();
        let got: Vec<String> = list(dir.path(), "alice")
            .unwrap()
            .into_iter()
            .map(|n| n.message)
            .collect();
        assert_eq!(got, ["one", "two"]);
        assert!(list(dir.path(), "carol").unwrap().is_empty());
        assert!(add(dir.path(), "../x", "no").is_err());
    }
}
