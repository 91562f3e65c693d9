//! What the data layer stores and returns.

use time::OffsetDateTime;

use crate::domain::{Pagination, UserId, VideoId, VideoStatus, VideoTitle};

/// A registered user, without the password hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    /// Lower-cased.
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub city: String,
    pub country: String,
    pub created_at: OffsetDateTime,
}

/// What login needs: the user's id and password hash.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user_id: UserId,
    /// A PHC string (argon2id).
    pub password_hash: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

/// A video about to be recorded, after its original reached storage.
#[derive(Debug, Clone)]
pub struct NewVideo {
    /// Chosen by the caller before the upload, so the storage key can hold it.
    pub id: VideoId,
    pub owner_id: UserId,
    pub title: VideoTitle,
    /// Publish as soon as processing succeeds.
    pub is_public: bool,
    /// Storage key of the untouched upload.
    pub original_key: String,
}

/// A video as its owner (and the worker) sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Video {
    pub id: VideoId,
    pub owner_id: UserId,
    pub title: String,
    pub status: VideoStatus,
    /// Set exactly when `status` is `failed`.
    pub failure_reason: Option<String>,
    /// 0–100, advanced by the worker while encoding.
    pub progress_percent: u8,
    /// Whether the owner wants it published (now, or once processed).
    pub is_public: bool,
    pub uploaded_at: OffsetDateTime,
    pub processed_at: Option<OffsetDateTime>,
    /// Set once the video is open for voting.
    pub published_at: Option<OffsetDateTime>,
    pub original_key: String,
    pub processed_key: Option<String>,
    pub thumbnail_key: Option<String>,
    pub votes: i64,
}

impl Video {
    /// Whether the video is listed publicly and open for votes.
    pub fn is_published(&self) -> bool {
        self.published_at.is_some()
    }
}

/// What processing produced, recorded when a video becomes `processed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessedOutputs {
    pub processed_key: String,
    pub thumbnail_key: String,
}

/// A published video in the public list, with its player.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicVideo {
    pub id: VideoId,
    pub title: String,
    pub player_id: UserId,
    pub player_first_name: String,
    pub player_last_name: String,
    pub player_city: String,
    pub published_at: OffsetDateTime,
    pub processed_key: Option<String>,
    pub thumbnail_key: Option<String>,
    pub votes: i64,
}

/// One page of a list, with the size of the whole list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub pagination: Pagination,
    /// How many items all pages hold together.
    pub total: u64,
}

/// A player's place in the order of the rankings, without the names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RankedPlayer {
    pub player_id: UserId,
    pub votes: i64,
}

/// A player's place in the rankings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankingEntry {
    /// 1-based, counted over the whole (filtered) ranking, not the page.
    pub position: u64,
    pub player_id: UserId,
    pub first_name: String,
    pub last_name: String,
    /// As the player wrote it.
    pub city: String,
    pub votes: i64,
}

/// A video taken out of service: its row is kept (hidden from every list and
/// refused to the worker) until its stored objects are removed and
/// [`purge_video`](super::Database::purge_video) drops it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletedVideo {
    pub id: VideoId,
    pub original_key: String,
    pub processed_key: Option<String>,
    pub thumbnail_key: Option<String>,
}

impl DeletedVideo {
    /// Every storage key that may hold an object of this video.
    pub fn storage_keys(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.original_key.as_str())
            .chain(self.processed_key.as_deref())
            .chain(self.thumbnail_key.as_deref())
    }
}

/// What a client's `Idempotency-Key` ties an upload to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// The key as the client sent it.
    pub key: String,
    /// A digest of everything the request held (file, title, flag): a retry
    /// carries the same; another request under the same key does not.
    pub fingerprint: String,
}

/// Limits on what one player may keep stored; `None` is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UploadQuota {
    /// Bytes of originals of live videos plus uploads in progress.
    pub max_bytes: Option<u64>,
    /// Live videos plus uploads in progress.
    pub max_videos: Option<u32>,
}

/// An upload whose file passed its checks, about to be stored.
#[derive(Debug, Clone)]
pub struct UploadStart {
    pub video_id: VideoId,
    pub owner_id: UserId,
    pub original_key: String,
    pub original_bytes: u64,
    pub idempotency: Option<IdempotencyKey>,
    pub quota: UploadQuota,
}

/// The answer an upload got, kept for retries under its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadAnswer {
    pub video_id: VideoId,
    /// Id of the processing job.
    pub task_id: String,
}

/// How [`begin_upload`](super::Database::begin_upload) went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadBegun {
    /// Recorded as in progress: store the original, then
    /// [`finish_upload`](super::Transaction::finish_upload).
    Started,
    /// The same request was already answered under this key: give the
    /// answer again and store nothing.
    Replay(UploadAnswer),
}

/// An upload whose original is stored, to record with its job.
#[derive(Debug, Clone)]
pub struct FinishedUpload {
    pub video: NewVideo,
    pub original_bytes: u64,
    /// Id of the job enqueued in the same transaction.
    pub task_id: String,
    /// The client's key, if any, and until when its answer is kept.
    pub idempotency: Option<(IdempotencyKey, OffsetDateTime)>,
}

/// What a direct upload announced when it was created, kept with its record
/// in progress until the client completes it: the client stores the
/// original itself, so the video row is written only at completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectUpload {
    pub title: VideoTitle,
    pub is_public: bool,
    /// After this the upload can no longer be completed; the clean-up
    /// removes it (and whatever was stored) once its grace period has passed
    /// too.
    pub expires_at: OffsetDateTime,
}

/// A direct upload in progress, as recorded at its creation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingUpload {
    pub video_id: VideoId,
    pub owner_id: UserId,
    pub original_key: String,
    /// The size the client announced (and the presigned request fixed).
    pub original_bytes: u64,
    pub title: VideoTitle,
    pub is_public: bool,
    pub expires_at: OffsetDateTime,
    /// The key its answer is kept under (see [`PendingUpload::answer_key`]).
    pub idempotency: IdempotencyKey,
}

impl PendingUpload {
    /// The key a direct upload's answer is kept under, so a second
    /// completion gives the first one's answer. It holds a space, which no
    /// client's `Idempotency-Key` may (those are visible ASCII), so the two
    /// never meet.
    pub fn answer_key(video_id: VideoId) -> IdempotencyKey {
        IdempotencyKey {
            key: format!("direct upload {video_id}"),
            fingerprint: "direct".to_owned(),
        }
    }
}

/// An upload in progress for longer than it should be (its process died or
/// its commit failed): its original, if stored, has no video row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleUpload {
    pub video_id: VideoId,
    pub original_key: String,
}
