//! The runtime's error type: what a caller may want to tell apart (no such env, env not
//! running, env exists, bad name, frozen by a save) as variants of their own, and every other
//! failure (I/O, a refusal of the kernel, a helper that died) as [`Error::Failed`] with its
//! chain of context, which names the step and the path.
//!
//! Host code adds context with [`Context`] (as with `anyhow`'s); code inside an env uses
//! `anyhow`, which `?` turns into [`Error`], keeping a typed error that travelled through
//! `anyhow` typed.

use std::fmt::Display;

/// What a runtime operation failed with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No env of that name on this node (it has no state file).
    #[error("no env {name} on this node (no {})", file.display())]
    NoSuchEnv {
        /// The env's name.
        name: String,
        /// The state file looked for.
        file: std::path::PathBuf,
    },
    /// The env exists but its init is gone: nothing runs in it until it is boomed and
    /// spawned again.
    #[error("env {name} is not running (its init is gone); boom it")]
    NotRunning {
        /// The env's name.
        name: String,
    },
    /// A spawn found an env of that name already.
    #[error("env {name} exists (boom it, or spawn with --as ANOTHER)")]
    Exists {
        /// The env's name.
        name: String,
    },
    /// An env name the runtime refuses.
    #[error("bad env name {name:?}: {rule}")]
    BadName {
        /// The name as given.
        name: String,
        /// The rule it breaks.
        rule: String,
    },
    /// The env stayed frozen by a save in progress for longer than a caller waits.
    #[error("env {name} is frozen by a save in progress for more than {secs} s; try again once it is saved")]
    Frozen {
        /// The env's name.
        name: String,
        /// How long the caller waited, in seconds.
        secs: u64,
    },
    /// Anything else; its message is the chain of what was being done.
    #[error(transparent)]
    Failed(anyhow::Error),
}

/// A runtime result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<anyhow::Error> for Error {
    /// A typed [`Error`] that travelled through `anyhow` comes back typed (without the context
    /// added on the way); anything else becomes [`Error::Failed`].
    fn from(e: anyhow::Error) -> Error {
        match e.downcast_ref::<Error>() {
            None | Some(Error::Failed(_)) => Error::Failed(e),
            Some(_) => e.downcast().expect("just checked"),
        }
    }
}

/// `anyhow::Context` for the runtime's [`Result`]: says what was being done when any error
/// (or a `None`) happened.
pub trait Context<T> {
    /// Adds `what` to the error.
    fn context<C>(self, what: C) -> Result<T>
    where
        C: Display + Send + Sync + 'static;

    /// Adds what `f` returns to the error (only made if there is one).
    fn with_context<C, F>(self, f: F) -> Result<T>
    where
        C: Display + Send + Sync + 'static,
        F: FnOnce() -> C;
}

impl<T, E: Into<anyhow::Error>> Context<T> for std::result::Result<T, E> {
    fn context<C>(self, what: C) -> Result<T>
    where
        C: Display + Send + Sync + 'static,
    {
        self.map_err(|e| e.into().context(what).into())
    }

    fn with_context<C, F>(self, f: F) -> Result<T>
    where
        C: Display + Send + Sync + 'static,
        F: FnOnce() -> C,
    {
        self.map_err(|e| e.into().context(f()).into())
    }
}

impl<T> Context<T> for Option<T> {
    fn context<C>(self, what: C) -> Result<T>
    where
        C: Display + Send + Sync + 'static,
    {
        self.ok_or_else(|| Error::Failed(anyhow::anyhow!("{what}")))
    }

    fn with_context<C, F>(self, f: F) -> Result<T>
    where
        C: Display + Send + Sync + 'static,
        F: FnOnce() -> C,
    {
        self.ok_or_else(|| Error::Failed(anyhow::anyhow!("{}", f())))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::Failed(e.into())
    }
}

impl From<library::Error> for Error {
    fn from(e: library::Error) -> Error {
        Error::Failed(e.into())
    }
}

impl From<rustix::io::Errno> for Error {
    fn from(e: rustix::io::Errno) -> Error {
        Error::Failed(e.into())
    }
}

/// `anyhow::bail!` for functions returning either `anyhow::Result` or the runtime's
/// [`Result`]: returns an [`Error::Failed`] made from a format string.
macro_rules! fail {
    ($($arg:tt)*) => {
        return Err(::anyhow::anyhow!($($arg)*).into())
    };
}
pub(crate) use fail;

#[cfg(test)]
mod tests {
    use super::{Context, Error};

    #[test]
    fn typed_errors_survive_anyhow_and_others_keep_their_chain() {
        let typed = Err::<(), _>(Error::NotRunning { name: "e".into() });
        let back = typed.context("entering env e").unwrap_err();
        assert!(
            matches!(back, Error::NotRunning { ref name } if name == "e"),
            "{back:?}"
        );
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let failed = Err::<(), _>(io).context("opening /x").unwrap_err();
        assert!(matches!(failed, Error::Failed(_)));
        assert_eq!(format!("{failed:#}"), "opening /x: entity not found");
        let again = Err::<(), _>(failed).context("spawning e").unwrap_err();
        assert_eq!(
            format!("{again:#}"),
            "spawning e: opening /x: entity not found"
        );
        let caller = anyhow::Error::from(again).context("node");
        assert_eq!(
            format!("{caller:#}"),
            "node: spawning e: opening /x: entity not found"
        );
        let none = None::<()>.context("no root").unwrap_err();
        assert_eq!(format!("{none:#}"), "no root");
    }
}
