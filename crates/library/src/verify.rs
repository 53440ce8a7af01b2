//! Verify: re-hash every stored object and name the snapshots that are damaged.
