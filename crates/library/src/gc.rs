//! Garbage collection: delete what no name and no in-progress write can reach.
