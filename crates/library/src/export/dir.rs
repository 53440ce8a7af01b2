//! Exporting a snapshot to a new directory.
