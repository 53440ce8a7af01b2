//! Diff: added, removed and changed paths between two snapshots.
//!
//! Subtrees with equal scores are skipped without being read, so the cost follows the size of
//! the difference, not of the snapshots.

use crate::tree::{Content, Entry};
use crate::{Library, Result, Score, Snapshot};
use std::cmp::Ordering;

/// How a path differs between two snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// Only in the second snapshot.
    Added,
    /// Only in the first snapshot.
    Removed,
    /// In both, with different content, type or metadata.
    Changed,
}

impl Change {
    /// The one-character mark used in listings: `+`, `-` or `M`.
    pub fn mark(self) -> char {
        match self {
            Change::Added => '+',
            Change::Removed => '-',
            Change::Changed => 'M',
        }
    }
}

/// Lists every path that differs between `a` and `b`, in canonical order.
///
/// Paths are absolute within the snapshot (`/etc/passwd`) as raw bytes. A directory whose own
/// metadata changed is listed as changed; an added or removed directory is listed with
/// everything below it.
pub fn diff(lib: &Library, a: &Snapshot, b: &Snapshot) -> Result<Vec<(Change, Vec<u8>)>> {
    let mut out = Vec::new();
    if a.root.meta != b.root.meta {
        out.push((Change::Changed, b"/".to_vec()));
    }
    diff_trees(lib, &a.tree(), &b.tree(), &mut Vec::new(), &mut out)?;
    Ok(out)
}

fn diff_trees(
    lib: &Library,
    a: &Score,
    b: &Score,
    path: &mut Vec<u8>,
    out: &mut Vec<(Change, Vec<u8>)>,
) -> Result<()> {
    if a == b {
        return Ok(());
    }
    let (ta, tb) = (lib.tree(a)?, lib.tree(b)?);
    let (mut ia, mut ib) = (ta.entries.iter().peekable(), tb.entries.iter().peekable());
    loop {
        let order = match (ia.peek(), ib.peek()) {
            (None, None) => return Ok(()),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(x), Some(y)) => x.name.cmp(&y.name),
        };
        let len = path.len();
        match order {
            Ordering::Less => {
                let e = ia.next().expect("peeked");
                whole(lib, e, Change::Removed, path, out)?;
            }
            Ordering::Greater => {
                let e = ib.next().expect("peeked");
                whole(lib, e, Change::Added, path, out)?;
            }
            Ordering::Equal => {
                let (x, y) = (ia.next().expect("peeked"), ib.next().expect("peeked"));
                push(path, &x.name);
                match (&x.content, &y.content) {
                    (Content::Dir { tree: tx, .. }, Content::Dir { tree: ty, .. }) => {
                        if x.meta != y.meta {
                            out.push((Change::Changed, path.clone()));
                        }
                        diff_trees(lib, tx, ty, path, out)?;
                    }
                    _ if x != y => {
                        if x.content.file_type_bits() == y.content.file_type_bits() {
                            out.push((Change::Changed, path.clone()));
                        } else {
                            path.truncate(len);
                            whole(lib, x, Change::Removed, path, out)?;
                            whole(lib, y, Change::Added, path, out)?;
                        }
                    }
                    _ => {}
                }
            }
        }
        path.truncate(len);
    }
}

fn push(path: &mut Vec<u8>, name: &[u8]) {
    path.push(b'/');
    path.extend_from_slice(name);
}

/// Lists `e` and, for a directory, everything below it, all as `change`.
fn whole(
    lib: &Library,
    e: &Entry,
    change: Change,
    path: &mut Vec<u8>,
    out: &mut Vec<(Change, Vec<u8>)>,
) -> Result<()> {
    let len = path.len();
    push(path, &e.name);
    out.push((change, path.clone()));
    if let Content::Dir { tree, .. } = &e.content {
        for child in lib.tree(tree)?.entries {
            whole(lib, &child, change, path, out)?;
        }
    }
    path.truncate(len);
    Ok(())
}
