//! Diff-apply: a parent snapshot plus an overlayfs upper directory makes the child snapshot.
