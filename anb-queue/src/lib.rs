#![doc = include_str!("../README.md")]

/// Errors raised by the queue library.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The queue URL names no backend this build supports.
    #[error("unsupported queue URL scheme in {0:?}")]
    UnsupportedUrl(String),
}
