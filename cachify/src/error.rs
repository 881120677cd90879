//! The one error type of cachify.

use std::fmt;

/// Everything that can go wrong in cachify.
///
/// Cache reads and writes never surface these to the caller of a `#[cached]`
/// function (the cache path fails open and logs instead); locks and the
/// explicit APIs (`_reset`, `_is_locked`, `_release`, [`crate::lock()`]) do.
///
/// ```
/// use cachify::Error;
///
/// let error = Error::Locked { key: "cachify:lock:nightly".into() };
/// assert_eq!(error.to_string(), "lock `cachify:lock:nightly` is held elsewhere");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The lock is held by someone else (and `wait` ran out, if one was set).
    #[error("lock `{key}` is held elsewhere")]
    Locked {
        /// The full backend key of the lock.
        key: String,
    },
    /// A release or extension found that the lock is no longer ours: its
    /// lease ran out, or it was deleted or overwritten from outside.
    #[error("the lock is no longer held by this owner (its lease expired or it was taken over)")]
    NotOwner,
    /// The backend (Redis) failed or timed out.
    #[error("cache backend error: {0}")]
    Backend(#[from] BackendError),
    /// A value could not be encoded or decoded.
    #[error("codec error: {0}")]
    Codec(#[from] CodecError),
    /// [`crate::init`] was called after a client was already in force.
    #[error(
        "cachify is already initialised: `cachify::init` was called twice, or cachify was used \
         before `init` and fell back to the in-memory client"
    )]
    AlreadyInitialized,
    /// Invalid configuration, such as a malformed Redis URL.
    #[error("invalid cachify configuration: {0}")]
    Config(String),
    /// Every slot of the pool is taken (and `wait` ran out, if one was set).
    #[error("pool `{key}` is full")]
    PoolFull {
        /// The full backend key of the pool.
        key: String,
    },
}

/// A failure reported by the backend. Opaque so the Redis client can change
/// without breaking users; its `Display` never contains a password.
#[derive(Debug)]
pub struct BackendError {
    message: String,
    timed_out: bool,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl BackendError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            timed_out: false,
            source: None,
        }
    }

    /// Puts `context` in front of the message, keeping the rest.
    pub(crate) fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    pub(crate) fn timed_out(limit: std::time::Duration) -> Self {
        Self {
            message: format!("no answer within {limit:?}"),
            timed_out: true,
            source: None,
        }
    }

    /// True when the failure was a timeout rather than an error reply.
    pub fn is_timeout(&self) -> bool {
        self.timed_out
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for BackendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|source| source as &(dyn std::error::Error + 'static))
    }
}

impl From<redis::RedisError> for BackendError {
    fn from(error: redis::RedisError) -> Self {
        // redis-rs error texts name the command and the server's reply, never
        // the connection's credentials.
        Self {
            message: error.to_string(),
            timed_out: error.is_timeout(),
            source: Some(Box::new(error)),
        }
    }
}

impl From<redis::RedisError> for Error {
    fn from(error: redis::RedisError) -> Self {
        Error::Backend(error.into())
    }
}

/// A value that could not be encoded or decoded with the client's codec.
#[derive(Debug)]
pub struct CodecError {
    message: String,
}

impl CodecError {
    pub(crate) fn new(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
        }
    }
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CodecError {}
