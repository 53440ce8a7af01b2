//! Exporting a snapshot as a tar stream (PAX: xattrs, nanosecond times, long names).
