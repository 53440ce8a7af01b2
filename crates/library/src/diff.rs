//! Diff: added, removed and changed paths between two snapshots.
