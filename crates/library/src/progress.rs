//! Progress reporting hooks for long operations (import, export, verify, gc).

/// Receives progress from long library operations; the CLI maps it to a progress bar.
pub trait Progress: Send + Sync {
    /// The total amount of work in bytes, once known.
    fn total(&self, _bytes: u64) {}
    /// `n` more bytes of work are done.
    fn bytes(&self, _n: u64) {}
    /// The operation moved to a new phase ("packing", "writing trees", ...).
    fn phase(&self, _msg: &str) {}
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {}
