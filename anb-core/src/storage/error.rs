use std::error::Error;
use std::io;

/// Everything a storage operation can fail with.
///
/// The variants are what callers branch on: a missing object, an upload over
/// its limit, a key that could never be valid, a client body that broke off,
/// a signed URL that must be refused, and the store itself failing.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// No object is stored under this key.
    #[error("no object is stored under {key}")]
    NotFound { key: String },

    /// The upload body is longer than the limit it was given. The stream was
    /// cut off at the first byte over the limit and nothing was kept.
    #[error("the upload is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },

    /// The key is not a well-formed relative object key (see
    /// [`ObjectKey`](super::ObjectKey)).
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey { key: String, reason: &'static str },

    /// Reading the body being uploaded failed (typically the client went away).
    /// Nothing was kept.
    #[error("reading the upload body failed: {0}")]
    Body(#[source] io::Error),

    /// A signed media URL whose expiry time has passed.
    #[error("the signed URL has expired")]
    UrlExpired,

    /// A signed media URL whose signature does not match its key and expiry.
    #[error("the signed URL's signature is invalid")]
    UrlSignatureInvalid,

    /// The store failed or could not be reached.
    #[error("storage {operation} failed: {source}")]
    Backend {
        operation: &'static str,
        #[source]
        source: Box<dyn Error + Send + Sync>,
    },
}

impl StorageError {
    pub(crate) fn backend(
        operation: &'static str,
        source: impl Into<Box<dyn Error + Send + Sync>>,
    ) -> Self {
        Self::Backend {
            operation,
            source: source.into(),
        }
    }

    /// Maps a filesystem error, turning "no such file" into [`Self::NotFound`].
    pub(crate) fn from_io(operation: &'static str, key: &str, err: io::Error) -> Self {
        if is_missing(&err) {
            Self::NotFound {
                key: key.to_owned(),
            }
        } else {
            Self::backend(operation, err)
        }
    }
}

/// Whether a filesystem error means "nothing there": the file is absent, or
/// a path component is a file (a key below an existing object, which S3
/// would simply not have either).
pub(crate) fn is_missing(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}
