//! The one error type of the data layer.
//!
//! Outcomes a user can cause (a taken e-mail, a second vote, someone else's
//! video…) are their own variants so the API maps each to its status code;
//! everything else is an [`DbError::Sqlx`] the API reports as an internal error.

use sqlx::error::ErrorKind;

use crate::domain::{IllegalTransition, VideoStatus};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Another user already signed up with this e-mail address.
    #[error("a user with this e-mail address already exists")]
    DuplicateEmail,
    /// The user already voted for this video.
    #[error("this user has already voted for this video")]
    AlreadyVoted,
    /// Players may not vote for their own videos.
    #[error("players cannot vote for their own videos")]
    OwnVideo,
    /// No such user.
    #[error("no such user")]
    UserNotFound,
    /// No such video (never existed, deleted, or — for votes — not published).
    #[error("no such video")]
    VideoNotFound,
    /// The video belongs to another user.
    #[error("the video belongs to another user")]
    NotVideoOwner,
    /// Published videos cannot be deleted.
    #[error("a published video cannot be deleted")]
    VideoPublished,
    /// A failed video can never be published.
    #[error("a video in status `{status}` cannot be published")]
    NotPublishable { status: VideoStatus },
    /// The player's `Idempotency-Key` was used before with another request.
    #[error("this idempotency key was used with another request")]
    IdempotencyKeyReused,
    /// An upload under this player's `Idempotency-Key` is still in progress.
    #[error("an upload with this idempotency key is in progress")]
    IdempotencyKeyInProgress,
    /// The upload's record in progress is gone: the clean-up gave it up.
    #[error("the upload was abandoned before it could be recorded")]
    UploadAbandoned,
    /// The upload would take the player past their quota.
    #[error("upload quota exceeded: {0}")]
    QuotaExceeded(QuotaExceeded),
    /// The video's status does not allow the requested change.
    #[error(transparent)]
    IllegalTransition(#[from] IllegalTransition),
    /// The URL names no supported engine.
    #[error("unsupported database URL scheme `{scheme}`: expected postgres:// or sqlite://")]
    UnsupportedUrl { scheme: String },
    /// A stored value that the domain rejects (edited by hand, or a bug).
    #[error("stored data is invalid: {0}")]
    CorruptData(String),
    /// Applying the schema migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database failed or is unreachable.
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    /// A load this call shared with others (one query for many waiting requests) failed
    /// with the database unavailable; the text is that failure's.
    #[error("database unavailable: {0}")]
    Unavailable(String),
}

/// Which limit of an [`UploadQuota`](super::UploadQuota) an upload would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum QuotaExceeded {
    /// Stored bytes: `used` already, `max` allowed, `wanted` more asked for.
    #[error("{used} bytes stored, {wanted} more would pass the {max}-byte quota")]
    Bytes { used: u64, wanted: u64, max: u64 },
    /// Videos kept: `count` already, `max` allowed.
    #[error("{count} videos kept, the quota is {max}")]
    Videos { count: u64, max: u32 },
}

impl DbError {
    /// Whether this is a refusal the caller caused, as opposed to a failure
    /// of the database itself.
    pub fn is_client_error(&self) -> bool {
        !matches!(
            self,
            Self::UnsupportedUrl { .. }
                | Self::CorruptData(_)
                | Self::Migrate(_)
                | Self::Sqlx(_)
                | Self::Unavailable(_)
        )
    }
}

impl DbError {
    /// Whether the database is out of reach, out of connections or too slow
    /// to answer — an outage to retry later, not a bug: no free connection
    /// in time, a closed pool, a broken connection (or one cut while it was
    /// being set up, which reads as a protocol error), the server saying it
    /// cannot serve (connection exceptions, shutting down, too many
    /// clients), or a statement stopped by the pool's statement timeout
    /// (PostgreSQL's `statement_timeout`, SQLite's busy timeout while
    /// another writer holds the lock).
    pub fn is_unavailable(&self) -> bool {
        let error = match self {
            Self::Sqlx(error) => error,
            Self::Unavailable(_) => return true,
            _ => return false,
        };
        match error {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db_error) => {
                if db_error
                    .try_downcast_ref::<sqlx::sqlite::SqliteError>()
                    .is_some()
                {
                    // The code is SQLite's extended result code: its low
                    // byte is the primary code, 5 (busy) or 6 (locked) for
                    // every variant of "another connection holds the lock".
                    return db_error
                        .code()
                        .and_then(|code| code.parse::<i32>().ok())
                        .is_some_and(|code| matches!(code & 0xff, 5 | 6));
                }
                db_error.code().is_some_and(|code| {
                    // SQLSTATE class 08 (connection exception), 57P0x
                    // (operator intervention: shutdown, cannot connect now),
                    // 57014 (query cancelled: the statement timeout), 53300
                    // (too many connections).
                    code.starts_with("08")
                        || code.starts_with("57P0")
                        || code == "57014"
                        || code == "53300"
                })
            }
            _ => false,
        }
    }
}

/// The kind of constraint a failed statement violated, if any.
pub(crate) fn violated_constraint(error: &sqlx::Error) -> Option<ErrorKind> {
    error.as_database_error().map(|db_error| db_error.kind())
}

/// Maps a unique-constraint violation to `conflict`, leaving other errors as
/// they are.
pub(crate) fn on_unique_violation(error: sqlx::Error, conflict: DbError) -> DbError {
    match violated_constraint(&error) {
        Some(ErrorKind::UniqueViolation) => conflict,
        _ => DbError::Sqlx(error),
    }
}
