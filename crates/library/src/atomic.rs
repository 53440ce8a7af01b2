//! Small files replaced whole (state, records, keys, pins): the bytes go to a temporary file
//! in the same directory, which is renamed over the old one (tempfile's `persist`), so a
//! reader sees the old content or the new, never a part, and a failure leaves no temporary
//! file behind. Packs and cache blocks have their own write paths (`backend`), with their
//! own directory syncs.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Replaces `path` with `bytes` (mode 0600), without syncing: for state that a crash may
/// lose but must never leave half-written.
pub fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write(path, bytes, 0o600, false)
}

/// Replaces `path` with `bytes` with `mode`, synced to disk before the rename: for what must
/// survive a crash once written (keys, certificates, pins).
pub fn replace_synced(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    write(path, bytes, mode, true)
}

fn write(path: &Path, bytes: &[u8], mode: u32, sync: bool) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let named = |what: &str, e: std::io::Error| {
        std::io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp")
        .permissions(std::fs::Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(|e| named("creating a temporary file for", e))?;
    tmp.write_all(bytes)
        .and_then(|()| match sync {
            true => tmp.as_file().sync_all(),
            false => Ok(()),
        })
        .map_err(|e| named("writing", e))?;
    tmp.persist(path)
        .map(drop)
        .map_err(|e| named("renaming into", e.error))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn replaces_whole_with_its_mode_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        replace(&path, b"old").unwrap();
        replace_synced(&path, b"new content", 0o644).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new content");
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o644);
        replace(&path, b"x").unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "only the file itself: {names:?}");
        let missing = dir.path().join("no/such/dir/f");
        let err = replace(&missing, b"x").unwrap_err();
        assert!(err.to_string().contains("no/such/dir/f"), "{err}");
    }
}
