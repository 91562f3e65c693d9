//! A player's own videos: upload, list, detail, delete, publish.

use anb_core::db::{IdempotencyKey, UploadAnswer, UploadStart, Video};
use anb_core::domain::{VideoId, VideoStatus, VideoTitle};
use anb_core::storage::VideoKeys;
use anb_core::uploads::{CheckedUpload, Stored, UploadTargets, store_upload};
use poem::web::Data;
use poem_openapi::param::{Header, Path};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::{ApiError, ErrorCode, problems};
use crate::media_check::{CheckError, MediaRejection};
use crate::routes::params::{IdempotencyKeyParam, VideoIdParam};
use crate::routes::{ApiTags, utc};
use crate::security::BearerAuth;
use crate::state::AppState;
use crate::upload::UploadRequest;

/// The caller's videos.
#[derive(Debug)]
pub struct VideosApi;

/// Processing status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum VideoStatusDto {
    Uploaded,
    Processing,
    Processed,
    Failed,
}

impl From<VideoStatus> for VideoStatusDto {
    fn from(status: VideoStatus) -> Self {
        match status {
            VideoStatus::Uploaded => Self::Uploaded,
            VideoStatus::Processing => Self::Processing,
            VideoStatus::Processed => Self::Processed,
            VideoStatus::Failed => Self::Failed,
        }
    }
}

#[derive(Debug, Object)]
pub struct UploadAccepted {
    pub message: String,
    /// Id of the processing job.
    pub task_id: String,
    pub video_id: Uuid,
}

#[derive(Debug, ApiResponse)]
pub enum UploadResponse {
    /// Stored and queued for processing; or, for a retry under the same
    /// `Idempotency-Key`, the first request's answer again (nothing new is
    /// stored).
    #[oai(status = 201)]
    Created(
        Json<UploadAccepted>,
        /// `true` when this is the answer to an earlier request with the
        /// same `Idempotency-Key`.
        #[oai(header = "Idempotent-Replayed")]
        Option<bool>,
    ),
}

problems!(
    /// Upload failures: not an MP4, too large, too short or long, too low a
    /// resolution, a bad title (400); over the player's quota (403,
    /// `upload_quota_exceeded`); the `Idempotency-Key` still in progress (409)
    /// or used with another request (422); too many uploads (429).
    UploadProblems: 400, 401, 403, 409, 415, 422, 429
);

/// A video in the owner's list.
#[derive(Debug, Object)]
pub struct VideoSummary {
    pub video_id: Uuid,
    pub title: String,
    pub status: VideoStatusDto,
    pub uploaded_at: OffsetDateTime,
    #[oai(nullable)]
    pub processed_at: Option<OffsetDateTime>,
    /// Playable URL of the processed video, once processed (expires).
    #[oai(nullable)]
    pub processed_url: Option<String>,
    /// Its thumbnail (a JPEG), once processed (expires).
    #[oai(nullable)]
    pub thumbnail_url: Option<String>,
    /// Encoding progress, 0–100 (poll the list while `status` is
    /// `uploaded` or `processing`).
    pub progress_percent: u8,
    /// Why processing failed, when `status` is `failed`.
    #[oai(nullable)]
    pub failure_reason: Option<String>,
    /// Whether the owner wants it published once processed.
    pub is_public: bool,
    /// Whether it is listed publicly and open for votes (then it cannot be
    /// deleted).
    pub published: bool,
    /// Votes received while published.
    pub votes: i64,
}

#[derive(Debug, ApiResponse)]
pub enum ListResponse {
    /// The caller's videos, newest first.
    #[oai(status = 200)]
    Ok(Json<Vec<VideoSummary>>),
}

problems!(
    /// Listing failures.
    ListProblems: 401
);

/// A video with everything its owner may see.
#[derive(Debug, Object)]
pub struct VideoDetail {
    pub video_id: Uuid,
    pub title: String,
    pub status: VideoStatusDto,
    pub uploaded_at: OffsetDateTime,
    #[oai(nullable)]
    pub processed_at: Option<OffsetDateTime>,
    /// Playable URL of the untouched upload (expires).
    #[oai(nullable)]
    pub original_url: Option<String>,
    /// Playable URL of the processed video, once processed (expires).
    #[oai(nullable)]
    pub processed_url: Option<String>,
    #[oai(nullable)]
    pub thumbnail_url: Option<String>,
    pub votes: i64,
    /// Whether the owner wants it published once processed.
    pub is_public: bool,
    /// Whether it is listed publicly and open for votes.
    pub published: bool,
    #[oai(nullable)]
    pub published_at: Option<OffsetDateTime>,
    /// Why processing failed, when `status` is `failed`.
    #[oai(nullable)]
    pub failure_reason: Option<String>,
    /// Encoding progress, 0–100.
    pub progress_percent: u8,
}

#[derive(Debug, ApiResponse)]
pub enum DetailResponse {
    #[oai(status = 200)]
    Ok(Json<VideoDetail>),
}

problems!(
    /// Detail failures.
    DetailProblems: 401, 403, 404
);

#[derive(Debug, Object)]
pub struct VideoDeleted {
    pub message: String,
    pub video_id: Uuid,
}

#[derive(Debug, ApiResponse)]
pub enum DeleteResponse {
    #[oai(status = 200)]
    Ok(Json<VideoDeleted>),
}

problems!(
    /// Deletion failures (a published video cannot be deleted: 400).
    DeleteProblems: 400, 401, 403, 404
);

problems!(
    /// Publication failures (a failed video cannot be published: 400).
    PublishProblems: 400, 401, 403, 404
);

/// A malformed id names no video: 404, like an unknown one.
pub(crate) fn parse_video_id(param: &VideoIdParam) -> Result<VideoId, ApiError> {
    param.0.ok_or_else(ApiError::video_not_found)
}

#[OpenApi(tag = "ApiTags::Videos")]
impl VideosApi {
    /// Upload a video (multipart: `video_file`, `title`, optional
    /// `is_public`). Send an `Idempotency-Key` to make retries safe: a retry
    /// with the same key and the same form gets the first answer again.
    #[oai(
        path = "/api/videos/upload",
        method = "post",
        operation_id = "uploadVideo"
    )]
    async fn upload(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        /// A key of the client's choosing (e.g. a UUID), the same on every
        /// retry of one upload. Its answer is kept for 24 hours by default.
        #[oai(name = "Idempotency-Key")]
        _idempotency_key: Header<Option<IdempotencyKeyParam>>,
        request: &poem::Request,
        form: UploadRequest,
    ) -> Result<UploadResponse, UploadProblems> {
        // Read from the raw header lines: the parameter above documents it,
        // but skips a value that is not text instead of refusing it.
        let key = IdempotencyKeyParam::from_headers(request.headers())?;
        Ok(upload_video(&state, auth, key.map(|key| key.0), form).await?)
    }

    /// The caller's videos, newest first.
    #[oai(path = "/api/videos", method = "get", operation_id = "listMyVideos")]
    async fn list(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
    ) -> Result<ListResponse, ListProblems> {
        let videos = state
            .db
            .list_user_videos(auth.user_id())
            .await
            .map_err(ApiError::from)?;
        let mut items = Vec::with_capacity(videos.len());
        for video in videos {
            items.push(VideoSummary {
                video_id: video.id.as_uuid(),
                processed_url: state.media_url(video.processed_key.as_deref()).await,
                thumbnail_url: state.media_url(video.thumbnail_key.as_deref()).await,
                published: video.is_published(),
                title: video.title,
                status: video.status.into(),
                uploaded_at: utc(video.uploaded_at),
                processed_at: video.processed_at.map(utc),
                progress_percent: video.progress_percent,
                failure_reason: video.failure_reason,
                is_public: video.is_public,
                votes: video.votes,
            });
        }
        Ok(ListResponse::Ok(Json(items)))
    }

    /// One of the caller's videos.
    #[oai(
        path = "/api/videos/:video_id",
        method = "get",
        operation_id = "getMyVideo"
    )]
    async fn get(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        video_id: Path<VideoIdParam>,
    ) -> Result<DetailResponse, DetailProblems> {
        let id = parse_video_id(&video_id)?;
        let video = state
            .db
            .find_video(id)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(ApiError::video_not_found)?;
        if video.owner_id != auth.user_id() {
            return Err(ApiError::from(anb_core::db::DbError::NotVideoOwner).into());
        }
        Ok(DetailResponse::Ok(Json(detail(&state, video).await)))
    }

    /// Delete one of the caller's videos (not while published).
    #[oai(
        path = "/api/videos/:video_id",
        method = "delete",
        operation_id = "deleteMyVideo"
    )]
    async fn delete(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        video_id: Path<VideoIdParam>,
    ) -> Result<DeleteResponse, DeleteProblems> {
        let id = parse_video_id(&video_id)?;
        anb_core::videos::delete_video(&state.db, &state.storage, &state.queue, auth.user_id(), id)
            .await
            .map_err(ApiError::from)?;
        Ok(DeleteResponse::Ok(Json(VideoDeleted {
            message: "El video ha sido eliminado exitosamente.".into(),
            video_id: id.as_uuid(),
        })))
    }

    /// Publish one of the caller's videos for voting (now if processed,
    /// otherwise as soon as it is).
    #[oai(
        path = "/api/videos/:video_id/publish",
        method = "post",
        operation_id = "publishMyVideo"
    )]
    async fn publish(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        video_id: Path<VideoIdParam>,
    ) -> Result<DetailResponse, PublishProblems> {
        let id = parse_video_id(&video_id)?;
        let video = anb_core::videos::publish(&state.db, auth.user_id(), id)
            .await
            .map_err(ApiError::from)?;
        Ok(DetailResponse::Ok(Json(detail(&state, video).await)))
    }
}

async fn detail(state: &AppState, video: Video) -> VideoDetail {
    VideoDetail {
        video_id: video.id.as_uuid(),
        original_url: state.media_url(Some(&video.original_key)).await,
        processed_url: state.media_url(video.processed_key.as_deref()).await,
        thumbnail_url: state.media_url(video.thumbnail_key.as_deref()).await,
        published: video.is_published(),
        title: video.title,
        status: video.status.into(),
        uploaded_at: utc(video.uploaded_at),
        processed_at: video.processed_at.map(utc),
        votes: video.votes,
        is_public: video.is_public,
        published_at: video.published_at.map(utc),
        failure_reason: video.failure_reason,
        progress_percent: video.progress_percent,
    }
}

/// Parse, check, call [`store_upload`], map: the form is received within its
/// bounds, its fields and file checked, then the use case records, stores
/// and commits (see there for what a failure leaves).
async fn upload_video(
    state: &AppState,
    auth: BearerAuth,
    idempotency_key: Option<String>,
    form: UploadRequest,
) -> Result<UploadResponse, ApiError> {
    let owner = auth.user_id();
    state.limiters.upload_per_user.check(&owner.to_string())?;
    let limits = state.api.upload.clone();
    let received = form.receive(limits.max_bytes).await?;
    let title = VideoTitle::parse(received.title.as_deref().unwrap_or(""))
        .map_err(|problem| ApiError::invalid_field("title", problem.to_string()))?;
    let is_public = match received.is_public.as_deref() {
        None | Some("true") => true,
        Some("false") => false,
        Some(_) => {
            return Err(ApiError::invalid_field(
                "is_public",
                "debe ser true o false",
            ));
        }
    };
    state
        .media_checks
        .check(received.file.to_path_buf(), limits)
        .await
        .map_err(|error| match error {
            CheckError::Rejected(refused) => rejection(refused),
            CheckError::Busy => ApiError::unavailable(CheckError::Busy),
        })?;

    let video_id = VideoId::new();
    let start = UploadStart {
        video_id,
        owner_id: owner,
        original_key: VideoKeys::new(video_id.as_uuid())
            .original()
            .as_str()
            .to_owned(),
        original_bytes: received.size,
        idempotency: idempotency_key.map(|key| IdempotencyKey {
            key,
            fingerprint: received.fingerprint(),
        }),
        quota: state.api.uploads.quota,
    };
    let targets = UploadTargets {
        db: &state.db,
        storage: &state.storage,
        queue: &state.queue,
        delivery: &state.delivery,
    };
    let upload = CheckedUpload {
        start,
        file: &received.file,
        title,
        is_public,
        answer_ttl: state.api.uploads.idempotency_ttl,
    };
    Ok(match store_upload(targets, upload).await? {
        Stored::Created(answer) => accepted(answer, false),
        Stored::Replayed(answer) => accepted(answer, true),
    })
}

pub(crate) fn accepted(answer: UploadAnswer, replayed: bool) -> UploadResponse {
    UploadResponse::Created(
        Json(UploadAccepted {
            message: "Video subido correctamente. Procesamiento en curso.".into(),
            task_id: answer.task_id,
            video_id: answer.video_id.as_uuid(),
        }),
        replayed.then_some(true),
    )
}

pub(crate) fn rejection(rejection: MediaRejection) -> ApiError {
    match rejection {
        MediaRejection::NotMp4(_) | MediaRejection::NoVideoTrack => ApiError::bad_request(
            ErrorCode::InvalidFileType,
            "El archivo no es un video MP4 válido.",
        ),
        MediaRejection::Duration { actual, min, max } => ApiError::bad_request(
            ErrorCode::DurationOutOfRange,
            format!(
                "El video dura {:.1} s; debe durar entre {} y {} s.",
                actual.as_secs_f64(),
                min.as_secs(),
                max.as_secs()
            ),
        ),
        MediaRejection::Resolution {
            width,
            height,
            min_short_side,
        } => ApiError::bad_request(
            ErrorCode::ResolutionTooLow,
            format!(
                "La resolución {width}x{height} es insuficiente: el lado menor debe medir al menos {min_short_side} px."
            ),
        ),
    }
}
