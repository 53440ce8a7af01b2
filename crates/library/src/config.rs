//! The library's config file: format version and the parameters fixed at creation.

use serde::{Deserialize, Serialize};

/// The format name written into every library's config.
pub const FORMAT: &str = "spawngrid-library";
/// The on-disk format version this code writes (it reads every version up to this one).
///
/// Version 2 packs objects in frames (see [`crate::pack`]); a version-1 library is upgraded in
/// place, by rewriting its config, before the first version-2 pack is written into it.
pub const VERSION: u32 = 2;

/// Parameters fixed when a library is created (changing them would defeat deduplication).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Config {
    /// Always [`FORMAT`].
    pub format: String,
    /// Format version; a library with a newer version is refused.
    pub version: u32,
    /// Files larger than this are split by content-defined chunking.
    pub chunk_threshold: u32,
    /// FastCDC minimum chunk size.
    pub chunk_min: u32,
    /// FastCDC average chunk size.
    pub chunk_avg: u32,
    /// FastCDC maximum chunk size.
    pub chunk_max: u32,
    /// A pack is written out once it holds this many bytes.
    pub pack_target: u32,
    /// zstd level for objects.
    pub zstd_level: i32,
    /// Objects smaller than this are gathered into shared frames of about this many plain
    /// bytes, compressed together; 0 stores every object in a frame of its own. Does not change
    /// any score, so it is not fixed at creation (a version-1 config gets the default).
    #[serde(default = "default_frame_target")]
    pub frame_target: u32,
}

/// The most any size in a [`Config`] may be: a pack is written once it holds `pack_target`
/// bytes, so it may hold up to that plus one object or frame, and a pack's offsets are `u32`.
pub const MAX_SIZE: u32 = 1 << 30;

impl Config {
    /// Refuses sizes a pack's `u32` offsets cannot reach (each at most [`MAX_SIZE`]), or
    /// chunk sizes out of order.
    pub fn check(&self) -> std::result::Result<(), String> {
        let sizes = [
            ("chunk_threshold", self.chunk_threshold),
            ("chunk_max", self.chunk_max),
            ("pack_target", self.pack_target),
            ("frame_target", self.frame_target),
        ];
        if let Some((name, n)) = sizes.iter().find(|(_, n)| *n > MAX_SIZE) {
            return Err(format!("{name} is {n} bytes; at most {MAX_SIZE} (1 GiB)"));
        }
        if !(self.chunk_min <= self.chunk_avg && self.chunk_avg <= self.chunk_max) {
            return Err("chunk sizes must be chunk_min <= chunk_avg <= chunk_max".into());
        }
        Ok(())
    }
}

fn default_frame_target() -> u32 {
    128 << 10
}

impl Default for Config {
    /// The defaults, chosen by measurement (see `docs/architecture.md`, "Chunking").
    fn default() -> Self {
        Config {
            format: FORMAT.into(),
            version: VERSION,
            chunk_threshold: 512 << 10,
            chunk_min: 128 << 10,
            chunk_avg: 512 << 10,
            chunk_max: 2 << 20,
            pack_target: 32 << 20,
            zstd_level: 1,
            frame_target: default_frame_target(),
        }
    }
}
