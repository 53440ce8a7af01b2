//! Statistics: logical bytes, stored bytes, dedup ratio, objects, packs.
