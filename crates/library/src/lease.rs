//! Leases: shared for writers, exclusive for gc, stored as backend files.
