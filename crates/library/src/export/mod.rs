//! Exporters: write a snapshot out as a directory or a tar stream, with all its metadata.

pub mod dir;
pub mod tar;
