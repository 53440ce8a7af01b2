//! The node's error: what kind of failure, and one line naming what failed and what to do.
//!
//! The service code (envs, snapshots, users, invites, files) returns it and knows nothing of
//! the protocols; HTTP maps the [`Kind`] to a status in one place ([`crate::http`]) and the
//! SSH gateway shows the line as text ([`crate::ssh`]).

/// What kind of failure an [`Error`] is: the distinctions a client acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The request is malformed or invalid.
    Invalid,
    /// No valid token, or wrong credentials.
    Unauthorized,
    /// Authenticated, but not allowed.
    Forbidden,
    /// No such thing (also for other users' things, so existence does not leak).
    NotFound,
    /// The request conflicts with the current state.
    Conflict,
    /// The thing lives on another node of the grid (the message names it).
    Misdirected,
    /// More data than the node accepts.
    TooLarge,
    /// Understood, but the content cannot be used.
    Unprocessable,
    /// Too many attempts: wait.
    TooMany,
    /// It was there and is no more (an expired link).
    Gone,
    /// What the request was sent on to (a server inside an env) did not answer.
    BadGateway,
    /// The node (or the grid) has no room now, or a store is unreachable: try again later.
    Unavailable,
    /// An internal failure.
    Internal,
}

/// A failure: its kind and a one-line message naming what failed and what to do.
#[derive(Debug)]
pub struct Error {
    /// What kind of failure.
    pub kind: Kind,
    /// The message (one line).
    pub message: String,
}

impl Error {
    /// An error of `kind` with `message` (newlines folded into spaces).
    pub fn new(kind: Kind, message: impl Into<String>) -> Error {
        let message: String = message.into();
        Error {
            kind,
            message: message.split_whitespace().collect::<Vec<_>>().join(" "),
        }
    }

    /// The request is malformed or invalid.
    pub fn invalid(message: impl Into<String>) -> Error {
        Error::new(Kind::Invalid, message)
    }

    /// No valid token, or wrong credentials.
    pub fn unauthorized(message: impl Into<String>) -> Error {
        Error::new(Kind::Unauthorized, message)
    }

    /// No such thing.
    pub fn not_found(message: impl Into<String>) -> Error {
        Error::new(Kind::NotFound, message)
    }

    /// The request conflicts with the current state.
    pub fn conflict(message: impl Into<String>) -> Error {
        Error::new(Kind::Conflict, message)
    }

    /// An internal failure: its whole context chain on one line.
    pub fn internal(e: &anyhow::Error) -> Error {
        Error::new(Kind::Internal, chain(e))
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// An error's context chain joined with `: `, leaving out a cause the message before it
/// already ends with (errors that print their source, as the library's I/O errors do).
pub fn chain(e: &anyhow::Error) -> String {
    let mut out: Vec<String> = Vec::new();
    for cause in e.chain().map(|c| c.to_string()) {
        if !out.last().is_some_and(|last| last.ends_with(&cause)) {
            out.push(cause);
        }
    }
    out.join(": ")
}

/// When `e` failed for lack of space (ENOSPC somewhere in its chain): a [`Kind::Unavailable`]
/// error saying that `what` stored nothing, and what to do.
pub fn disk_full(e: &anyhow::Error, what: &str) -> Option<Error> {
    let full = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.raw_os_error() == Some(libc::ENOSPC))
    });
    full.then(|| {
        Error::new(
            Kind::Unavailable,
            format!(
                "the library's disk is full ({}): {what}; free space there (`spawngrid lib \
                 gc` reclaims unbound data, or give it a bigger disk) and try again",
                chain(e)
            ),
        )
    })
}

impl From<catalog::Error> for Error {
    fn from(e: catalog::Error) -> Error {
        let kind = match &e {
            catalog::Error::NotFound { .. } | catalog::Error::NoUser { .. } => Kind::NotFound,
            catalog::Error::AlreadyBound { .. } | catalog::Error::UserExists { .. } => {
                Kind::Conflict
            }
            catalog::Error::Invalid { .. } => Kind::Invalid,
            catalog::Error::Unavailable { .. } | catalog::Error::Busy { .. } => Kind::Unavailable,
            catalog::Error::LeaseHeld { .. }
            | catalog::Error::InviteExists { .. }
            | catalog::Error::EnvElsewhere { .. } => Kind::Conflict,
            _ => Kind::Internal,
        };
        Error::new(kind, e.to_string())
    }
}

impl From<runtime::Error> for Error {
    /// An env that is missing is 404, one that cannot do what was asked (not running, frozen
    /// by a save, already there) 409, a refused name 400; anything else is internal.
    fn from(e: runtime::Error) -> Error {
        let kind = match &e {
            runtime::Error::NoSuchEnv { .. } => Kind::NotFound,
            runtime::Error::NotRunning { .. }
            | runtime::Error::Exists { .. }
            | runtime::Error::Frozen { .. } => Kind::Conflict,
            runtime::Error::BadName { .. } => Kind::Invalid,
            _ => return Error::internal(&e.into()),
        };
        Error::new(kind, e.to_string())
    }
}

impl From<anyhow::Error> for Error {
    fn from(e: anyhow::Error) -> Error {
        match e.downcast::<catalog::Error>() {
            Ok(c) => c.into(),
            Err(e) => Error::internal(&e),
        }
    }
}
