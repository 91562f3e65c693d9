//! Uploads: the record of each upload in progress, the per-player quota,
//! and the answers kept for retries under an `Idempotency-Key`.
//!
//! An upload is recorded as in progress ([`begin_upload`]) before its
//! original is stored, and the record goes in the transaction that records
//! the video ([`finish_upload`]). Both lock the player's row first (on
//! PostgreSQL; SQLite's `BEGIN IMMEDIATE` serialises every writer), so for
//! one player they happen one at a time: the quota counts what is stored and
//! in progress without a race, and two requests under one key cannot both
//! become videos — the second either finds the first's answer or its record
//! in progress.
//!
//! [`begin_upload`]: super::Database::begin_upload
//! [`finish_upload`]: super::Transaction::finish_upload

use time::OffsetDateTime;
use uuid::Uuid;

use sqlx::error::ErrorKind;

use super::error::{QuotaExceeded, violated_constraint};
use super::time::{DbTime, now};
use super::users::on_missing_user;
use super::{
    Conn, DbError, DirectUpload, FinishedUpload, PendingUpload, StaleUpload, UploadAnswer,
    UploadBegun, UploadStart, Video,
};
use crate::domain::{UserId, VideoId, VideoTitle};

#[derive(sqlx::FromRow)]
struct AnswerRow {
    fingerprint: String,
    video_id: Uuid,
    task_id: String,
}

#[derive(sqlx::FromRow)]
struct PendingRow {
    video_id: Uuid,
    owner_id: Uuid,
    original_key: String,
    original_bytes: i64,
    title: String,
    is_public: bool,
    expires_at: DbTime,
}

#[derive(sqlx::FromRow)]
struct StaleRow {
    video_id: Uuid,
    original_key: String,
}

/// A byte count as the engines store it (`BIGINT`).
fn stored_bytes(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

impl Conn<'_> {
    /// Locks the player's row until the end of the transaction (PostgreSQL;
    /// on SQLite the transaction already holds the write lock).
    /// [`DbError::UserNotFound`] when there is no such player.
    async fn lock_player(&mut self, owner: UserId) -> Result<(), DbError> {
        let found = match self {
            Conn::Postgres(c) => {
                sqlx::query_scalar::<_, Uuid>("SELECT id FROM users WHERE id = $1 FOR UPDATE")
                    .bind(owner.as_uuid())
                    .fetch_optional(&mut **c)
                    .await?
            }
            Conn::Sqlite(c) => {
                sqlx::query_scalar::<_, Uuid>("SELECT id FROM users WHERE id = $1")
                    .bind(owner.as_uuid())
                    .fetch_optional(&mut **c)
                    .await?
            }
        };
        found.map(drop).ok_or(DbError::UserNotFound)
    }

    pub(crate) async fn begin_upload(
        &mut self,
        upload: &UploadStart,
    ) -> Result<UploadBegun, DbError> {
        self.begin_any_upload(upload, None).await
    }

    pub(crate) async fn begin_direct_upload(
        &mut self,
        upload: &UploadStart,
        direct: &DirectUpload,
    ) -> Result<UploadBegun, DbError> {
        self.begin_any_upload(upload, Some(direct)).await
    }

    /// Both kinds of upload go through the same checks (key, quota) under
    /// the same lock; a direct one also keeps what it announced.
    async fn begin_any_upload(
        &mut self,
        upload: &UploadStart,
        direct: Option<&DirectUpload>,
    ) -> Result<UploadBegun, DbError> {
        let owner = upload.owner_id;
        self.lock_player(owner).await?;
        let at = now();
        if let Some(idempotency) = &upload.idempotency {
            execute!(
                self,
                "DELETE FROM upload_answers WHERE owner_id = $1 AND expires_at <= $2",
                owner.as_uuid(),
                DbTime(at),
            )?;
            let answer = fetch!(
                self,
                fetch_optional,
                AnswerRow,
                "SELECT fingerprint, video_id, task_id FROM upload_answers \
                 WHERE owner_id = $1 AND idempotency_key = $2",
                owner.as_uuid(),
                idempotency.key.as_str(),
            )?;
            if let Some(answer) = answer {
                if answer.fingerprint != idempotency.fingerprint {
                    return Err(DbError::IdempotencyKeyReused);
                }
                return Ok(UploadBegun::Replay(UploadAnswer {
                    video_id: VideoId::from_uuid(answer.video_id),
                    task_id: answer.task_id,
                }));
            }
            let in_progress = fetch_scalar!(
                self,
                fetch_optional,
                String,
                "SELECT fingerprint FROM uploads_in_progress \
                 WHERE owner_id = $1 AND idempotency_key = $2",
                owner.as_uuid(),
                idempotency.key.as_str(),
            )?;
            match in_progress {
                Some(fingerprint) if fingerprint != idempotency.fingerprint => {
                    return Err(DbError::IdempotencyKeyReused);
                }
                Some(_) => return Err(DbError::IdempotencyKeyInProgress),
                None => {}
            }
        }
        self.check_quota(upload).await?;
        let (key, fingerprint) = upload
            .idempotency
            .as_ref()
            .map(|i| (i.key.as_str(), i.fingerprint.as_str()))
            .unzip();
        execute!(
            self,
            "INSERT INTO uploads_in_progress \
                 (video_id, owner_id, original_key, original_bytes, idempotency_key, fingerprint, \
                  started_at, title, is_public, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            upload.video_id.as_uuid(),
            owner.as_uuid(),
            upload.original_key.as_str(),
            stored_bytes(upload.original_bytes),
            key,
            fingerprint,
            DbTime(at),
            direct.map(|d| d.title.as_str()),
            direct.map(|d| d.is_public),
            direct.map(|d| DbTime(d.expires_at)),
        )
        .map_err(|error| match violated_constraint(&error) {
            // Only if the lock above did not hold (it always should).
            Some(ErrorKind::UniqueViolation) => DbError::IdempotencyKeyInProgress,
            _ => on_missing_user(error),
        })?;
        Ok(UploadBegun::Started)
    }

    /// Refuses the upload if it would take its player past the quota,
    /// counting live videos and uploads in progress.
    async fn check_quota(&mut self, upload: &UploadStart) -> Result<(), DbError> {
        let quota = upload.quota;
        if quota.max_bytes.is_none() && quota.max_videos.is_none() {
            return Ok(());
        }
        let (count, bytes) = fetch!(
            self,
            fetch_one,
            (i64, i64),
            "SELECT COUNT(*), CAST(COALESCE(SUM(original_bytes), 0) AS BIGINT) FROM ( \
                 SELECT original_bytes FROM videos WHERE owner_id = $1 AND deleted_at IS NULL \
                 UNION ALL \
                 SELECT original_bytes FROM uploads_in_progress WHERE owner_id = $1 \
             ) AS kept",
            upload.owner_id.as_uuid(),
        )?;
        let count = u64::try_from(count).unwrap_or_default();
        let used = u64::try_from(bytes).unwrap_or_default();
        if let Some(max) = quota.max_videos
            && count >= u64::from(max)
        {
            return Err(DbError::QuotaExceeded(QuotaExceeded::Videos { count, max }));
        }
        if let Some(max) = quota.max_bytes
            && used.saturating_add(upload.original_bytes) > max
        {
            return Err(DbError::QuotaExceeded(QuotaExceeded::Bytes {
                used,
                wanted: upload.original_bytes,
                max,
            }));
        }
        Ok(())
    }

    pub(crate) async fn finish_upload(
        &mut self,
        upload: &FinishedUpload,
    ) -> Result<Video, DbError> {
        let video = &upload.video;
        self.lock_player(video.owner_id).await?;
        let ended = execute!(
            self,
            "DELETE FROM uploads_in_progress WHERE video_id = $1",
            video.id.as_uuid(),
        )?;
        if ended == 0 {
            return Err(DbError::UploadAbandoned);
        }
        let recorded = self.insert_video(video).await?;
        execute!(
            self,
            "UPDATE videos SET original_bytes = $2 WHERE id = $1",
            video.id.as_uuid(),
            stored_bytes(upload.original_bytes),
        )?;
        if let Some((idempotency, keep_until)) = &upload.idempotency {
            execute!(
                self,
                "INSERT INTO upload_answers \
                     (owner_id, idempotency_key, fingerprint, video_id, task_id, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
                video.owner_id.as_uuid(),
                idempotency.key.as_str(),
                idempotency.fingerprint.as_str(),
                video.id.as_uuid(),
                upload.task_id.as_str(),
                DbTime(*keep_until),
            )
            .map_err(on_missing_user)?;
        }
        Ok(recorded)
    }

    pub(crate) async fn abandon_upload(&mut self, video: VideoId) -> Result<bool, DbError> {
        let removed = execute!(
            self,
            "DELETE FROM uploads_in_progress WHERE video_id = $1",
            video.as_uuid(),
        )?;
        Ok(removed == 1)
    }

    pub(crate) async fn pending_upload(
        &mut self,
        video: VideoId,
    ) -> Result<Option<PendingUpload>, DbError> {
        let row = fetch!(
            self,
            fetch_optional,
            PendingRow,
            "SELECT video_id, owner_id, original_key, original_bytes, title, is_public, expires_at \
             FROM uploads_in_progress \
             WHERE video_id = $1 AND expires_at IS NOT NULL \
               AND title IS NOT NULL AND is_public IS NOT NULL",
            video.as_uuid(),
        )?;
        row.map(|row| {
            let video_id = VideoId::from_uuid(row.video_id);
            Ok(PendingUpload {
                video_id,
                owner_id: UserId::from_uuid(row.owner_id),
                original_key: row.original_key,
                original_bytes: u64::try_from(row.original_bytes).unwrap_or_default(),
                title: VideoTitle::parse(&row.title)
                    .map_err(|e| DbError::CorruptData(format!("upload title: {e}")))?,
                is_public: row.is_public,
                expires_at: row.expires_at.into(),
                idempotency: PendingUpload::answer_key(video_id),
            })
        })
        .transpose()
    }

    pub(crate) async fn upload_answer(
        &mut self,
        owner: UserId,
        key: &str,
    ) -> Result<Option<UploadAnswer>, DbError> {
        let answer = fetch!(
            self,
            fetch_optional,
            AnswerRow,
            "SELECT fingerprint, video_id, task_id FROM upload_answers \
             WHERE owner_id = $1 AND idempotency_key = $2 AND expires_at > $3",
            owner.as_uuid(),
            key,
            DbTime(now()),
        )?;
        Ok(answer.map(|answer| UploadAnswer {
            video_id: VideoId::from_uuid(answer.video_id),
            task_id: answer.task_id,
        }))
    }

    pub(crate) async fn stale_uploads(
        &mut self,
        started_before: OffsetDateTime,
        limit: u32,
    ) -> Result<Vec<StaleUpload>, DbError> {
        let rows = fetch!(
            self,
            fetch_all,
            StaleRow,
            // A multipart upload is stale a grace period after it started; a
            // direct one a grace period after its expiry (the client stores
            // its original any time before that).
            "SELECT video_id, original_key FROM uploads_in_progress \
             WHERE (expires_at IS NULL AND started_at < $1) OR expires_at < $1 \
             ORDER BY started_at, video_id LIMIT $2",
            DbTime(started_before),
            i64::from(limit),
        )?;
        Ok(rows
            .into_iter()
            .map(|row| StaleUpload {
                video_id: VideoId::from_uuid(row.video_id),
                original_key: row.original_key,
            })
            .collect())
    }

    pub(crate) async fn video_folder_in_use(&mut self, video: VideoId) -> Result<bool, DbError> {
        let used = fetch_scalar!(
            self,
            fetch_one,
            bool,
            "SELECT EXISTS (SELECT 1 FROM videos WHERE id = $1) \
                 OR EXISTS (SELECT 1 FROM uploads_in_progress WHERE video_id = $1)",
            video.as_uuid(),
        )?;
        Ok(used)
    }

    pub(crate) async fn prune_upload_answers(&mut self) -> Result<u64, DbError> {
        Ok(execute!(
            self,
            "DELETE FROM upload_answers WHERE expires_at <= $1",
            DbTime(now()),
        )?)
    }
}
