//! The library's error type: every variant reads as one line naming what failed.

use crate::Score;
use std::path::PathBuf;

/// Everything that can go wrong in the library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation on a named file or object failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done ("reading", "writing pack", ...).
        what: &'static str,
        /// The file or key involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An object is referenced but not stored anywhere in the library.
    #[error("object {0} is missing from the library (run `spawngrid lib verify`)")]
    Missing(Score),
    /// Stored bytes do not match their score, or do not decode.
    #[error("corrupt {what}: {detail} (run `spawngrid lib verify`)")]
    Corrupt {
        /// What is corrupt ("object 1234…", "pack abcd…").
        what: String,
        /// What is wrong with it.
        detail: String,
    },
    /// Input given by a user is not acceptable (hostile tar, bad path, ...).
    #[error("{0}")]
    BadInput(String),
    /// Another process holds a lock this operation needs.
    #[error("{0}")]
    Locked(String),
    /// The coordinator (a grid's catalog) failed or refused.
    #[error("{0}")]
    Coordination(String),
}

impl Error {
    /// Shorthand for an [`Error::Io`].
    pub fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            what,
            path: path.into(),
            source,
        }
    }

    /// Whether this is a backend's report that a key does not exist: an [`Error::Io`] whose
    /// source has kind [`std::io::ErrorKind::NotFound`] (every backend reports missing keys so).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }

    /// A copy of this error, for errors that are shared (a file job's slot) and reported to
    /// more than one caller.
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::Io { what, path, source } => Error::Io {
                what,
                path: path.clone(),
                // The OS error itself when there is one (callers look for ENOSPC), else its
                // kind and words.
                source: source.raw_os_error().map_or_else(
                    || std::io::Error::new(source.kind(), source.to_string()),
                    std::io::Error::from_raw_os_error,
                ),
            },
            Error::Missing(s) => Error::Missing(*s),
            Error::Corrupt { what, detail } => Error::corrupt(what.clone(), detail.clone()),
            Error::BadInput(m) => Error::BadInput(m.clone()),
            Error::Locked(m) => Error::Locked(m.clone()),
            Error::Coordination(m) => Error::Coordination(m.clone()),
        }
    }

    /// Shorthand for an [`Error::Corrupt`].
    pub fn corrupt(what: impl Into<String>, detail: impl Into<String>) -> Error {
        Error::Corrupt {
            what: what.into(),
            detail: detail.into(),
        }
    }
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    /// A duplicated I/O error keeps its OS error (the node tells a full disk by ENOSPC).
    #[test]
    fn a_duplicate_keeps_the_os_error() {
        let e = Error::io(
            "writing",
            "packs/x",
            std::io::Error::from_raw_os_error(libc::ENOSPC),
        );
        let Error::Io { source, .. } = e.duplicate() else {
            panic!("not an I/O error");
        };
        assert_eq!(source.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(e.to_string(), e.duplicate().to_string());
    }
}
