//! Direct uploads: the client stores the file itself, then the API checks
//! what was stored and records the video.
//!
//! 1. `POST /api/videos/uploads` announces the title, flag and exact size.
//!    The same rate and quota as the multipart upload apply here, and the
//!    upload is recorded as in progress (so the clean-up never takes its
//!    object for an orphan) with an expiry. The answer is a `PUT` to send
//!    the file to: with S3, a presigned URL of the bucket with the server's
//!    key and the size and type signed in; with local storage, a signed path
//!    of this API ([`put_content`]). A client uses the one flow either way.
//! 2. The client sends the file there.
//! 3. `POST /api/videos/uploads/{upload_id}/complete`: the API reads the
//!    stored object's size (it must be the one announced) and checks its
//!    container by ranged reads (MP4, duration, resolution), then records
//!    the video and its job in the transaction the multipart upload uses. A
//!    refused file is removed with its upload; a second completion answers
//!    the first one's video.

use std::collections::BTreeMap;
use std::time::SystemTime;

use anb_core::db::{DirectUpload, PendingUpload, UploadStart};
use anb_core::domain::{VideoId, VideoTitle};
use anb_core::storage::{ObjectKey, StorageError, VideoKeys};
use anb_core::uploads::{
    UploadTargets, begin_direct_upload, complete_direct_upload, discard_upload,
};
use poem::web::{Data, Query};
use poem::{Body, Request, Response, handler};
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use serde::Deserialize;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::{ApiError, ErrorCode, problems};
use crate::media_check::CheckError;
use crate::routes::json::JsonBody;
use crate::routes::params::{TitleField, VideoIdParam};
use crate::routes::videos::{UploadResponse, accepted, rejection};
use crate::routes::{ApiTags, utc};
use crate::security::BearerAuth;
use crate::state::AppState;

/// The media type of every original (the key's extension is `.mp4`).
const VIDEO_MP4: &str = "video/mp4";

/// Direct uploads.
#[derive(Debug)]
pub struct DirectUploadsApi;

/// A direct upload to create.
#[derive(Debug, Object)]
pub struct NewDirectUpload {
    /// 5–100 characters, a letter or number at least; white space and
    /// invisible formatting at either end are trimmed.
    pub title: TitleField,
    /// Publish for voting once processed (default `true`).
    pub is_public: Option<bool>,
    /// The file's exact size in bytes (at most the upload limit, 100 MB by
    /// default). The `PUT` must send exactly this many bytes.
    #[oai(validator(minimum(value = "1")))]
    pub size_bytes: u64,
}

/// Where and how to send the file.
#[derive(Debug, Object)]
pub struct DirectUploadCreated {
    /// The upload's id; the video's too, once completed.
    pub upload_id: Uuid,
    /// Always `PUT`.
    pub method: String,
    /// Where to send the file: a presigned URL of the bucket, or a path of
    /// this API (local storage). Opaque: use it as given, with no
    /// `Authorization` header.
    pub url: String,
    /// Headers to send with the `PUT`, exactly as given. The body's length
    /// must be `size_bytes` (it is signed in; browsers set
    /// `Content-Length` themselves).
    pub headers: BTreeMap<String, String>,
    /// When `url` stops accepting the file. The upload can be completed
    /// until as long again after that, then it is removed.
    pub expires_at: OffsetDateTime,
    /// Where to `POST` (no body) once the `PUT` succeeded.
    pub complete_url: String,
}

#[derive(Debug, ApiResponse)]
pub enum DirectUploadResponse {
    /// Recorded as in progress: send the file, then complete.
    #[oai(status = 201)]
    Created(Json<DirectUploadCreated>),
}

problems!(
    /// Creation failures: a bad title or size (400, `validation_failed`,
    /// `file_too_large`); over the player's quota (403,
    /// `upload_quota_exceeded`); too many uploads (429).
    DirectUploadProblems: 400, 401, 403, 413, 415, 429
);

problems!(
    /// Completion failures: the stored file's size is not the announced one
    /// (400, `upload_size_mismatch`) or it is not an acceptable video (400,
    /// `invalid_file_type`, `duration_out_of_range`, `resolution_too_low`) —
    /// then the upload is ended and its file removed; no such upload of the
    /// caller's (404, `upload_not_found`); nothing stored yet (409,
    /// `upload_not_received`: send the file, then complete); expired (410,
    /// `upload_expired`).
    CompleteProblems: 400, 401, 404, 409, 410
);

fn upload_not_found() -> ApiError {
    ApiError::not_found(ErrorCode::UploadNotFound, "La subida no existe.")
}

/// The path of the `PUT` of a direct upload with local storage.
fn content_path(id: VideoId) -> String {
    format!("/api/videos/uploads/{id}/content")
}

/// What a local `PUT` URL signs: its own namespace, so it never doubles as
/// a media link (those sign object keys under `videos/`).
fn put_subject(id: VideoId) -> ObjectKey {
    ObjectKey::parse(format!("direct-uploads/{id}")).expect("a valid key")
}

fn unix_seconds(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[OpenApi(tag = "ApiTags::Videos")]
impl DirectUploadsApi {
    /// Start a direct upload: announce the title and the file's exact size,
    /// get where to `PUT` the file (the bucket itself, or this API with
    /// local storage), then call `complete`. The same rate and quota as
    /// `uploadVideo` apply, counted from now.
    #[oai(
        path = "/api/videos/uploads",
        method = "post",
        operation_id = "createDirectUpload"
    )]
    async fn create(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        body: JsonBody<NewDirectUpload>,
    ) -> Result<DirectUploadResponse, DirectUploadProblems> {
        Ok(create_upload(&state, auth, body.0).await?)
    }

    /// Complete a direct upload once its file is stored: the file is checked
    /// where it lies (size, MP4, duration, resolution), then the video is
    /// recorded and queued for processing, with the same answer as
    /// `uploadVideo`. Calling it again gives the same answer.
    #[oai(
        path = "/api/videos/uploads/:upload_id/complete",
        method = "post",
        operation_id = "completeDirectUpload"
    )]
    async fn complete(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
        upload_id: Path<VideoIdParam>,
    ) -> Result<UploadResponse, CompleteProblems> {
        let id = upload_id.0.0.ok_or_else(upload_not_found)?;
        Ok(complete_upload(&state, auth, id).await?)
    }
}

async fn create_upload(
    state: &AppState,
    auth: BearerAuth,
    body: NewDirectUpload,
) -> Result<DirectUploadResponse, ApiError> {
    let owner = auth.user_id();
    // The same per-player rules as the multipart upload, checked before the
    // client spends a byte.
    state.limiters.upload_per_user.check(&owner.to_string())?;
    let title = VideoTitle::parse(&body.title.0)
        .map_err(|problem| ApiError::invalid_field("title", problem.to_string()))?;
    let max_bytes = state.api.upload.max_bytes;
    if body.size_bytes > max_bytes {
        return Err(crate::upload::too_large(max_bytes));
    }
    let ttl = state.api.uploads.presign_ttl;
    let video_id = VideoId::new();
    let key = VideoKeys::new(video_id.as_uuid()).original();
    let url_expires = SystemTime::now() + ttl;
    let start = UploadStart {
        video_id,
        owner_id: owner,
        original_key: key.as_str().to_owned(),
        original_bytes: body.size_bytes,
        idempotency: Some(PendingUpload::answer_key(video_id)),
        quota: state.api.uploads.quota,
    };
    let direct = DirectUpload {
        title,
        is_public: body.is_public.unwrap_or(true),
        // A PUT begun just before the URL's expiry still has time to
        // finish and be completed.
        expires_at: anb_core::db::now() + ttl + ttl,
    };
    // Recorded before the URL exists: an object stored under it is always
    // named by this record or, once completed, by the video.
    begin_direct_upload(&state.db, &start, &direct).await?;
    let (url, headers): (String, BTreeMap<String, String>) =
        match state.storage.presign_put(&key, body.size_bytes, ttl).await {
            Ok(Some(presigned)) => (
                presigned.url,
                presigned
                    .headers
                    .into_iter()
                    // The client's HTTP stack sets these from the body and the URL.
                    .filter(|(name, _)| {
                        !name.eq_ignore_ascii_case("content-length")
                            && !name.eq_ignore_ascii_case("host")
                    })
                    .collect(),
            ),
            Ok(None) => {
                let local = state.storage.as_local().ok_or_else(|| {
                    ApiError::internal("storage without presigned uploads is not local")
                })?;
                let expires = unix_seconds(url_expires);
                let sig = local.signer().signature(&put_subject(video_id), expires);
                (
                    format!("{}?expires={expires}&sig={sig}", content_path(video_id)),
                    BTreeMap::from([("content-type".to_owned(), VIDEO_MP4.to_owned())]),
                )
            }
            Err(error) => {
                if let Err(error) = state.db.abandon_upload(video_id).await {
                    tracing::warn!(%error, "record of an unsigned upload left for the clean-up");
                }
                return Err(error.into());
            }
        };
    Ok(DirectUploadResponse::Created(Json(DirectUploadCreated {
        upload_id: video_id.as_uuid(),
        method: "PUT".to_owned(),
        url,
        headers,
        expires_at: utc(OffsetDateTime::from(url_expires)),
        complete_url: format!("/api/videos/uploads/{video_id}/complete"),
    })))
}

fn targets(state: &AppState) -> UploadTargets<'_> {
    UploadTargets {
        db: &state.db,
        storage: &state.storage,
        queue: &state.queue,
        delivery: &state.delivery,
    }
}

async fn complete_upload(
    state: &AppState,
    auth: BearerAuth,
    id: VideoId,
) -> Result<UploadResponse, ApiError> {
    let owner = auth.user_id();
    let pending = match state.db.pending_upload(id).await? {
        Some(pending) if pending.owner_id == owner => pending,
        // Another player's upload is no upload of the caller's.
        Some(_) => return Err(upload_not_found()),
        None => {
            let key = PendingUpload::answer_key(id);
            return match state.db.upload_answer(owner, &key.key).await? {
                Some(answer) => Ok(accepted(answer, true)),
                None => Err(upload_not_found()),
            };
        }
    };
    let to = targets(state);
    if pending.expires_at <= anb_core::db::now() {
        discard_upload(to, &pending).await;
        return Err(ApiError::Gone {
            code: ErrorCode::UploadExpired,
            detail: "La subida expiró antes de completarse. Inicia una nueva.".into(),
        });
    }
    let key = ObjectKey::parse(pending.original_key.clone()).map_err(ApiError::internal)?;
    let size = match state.storage.size(&key).await {
        Ok(size) => size,
        Err(StorageError::NotFound { .. }) => {
            return Err(ApiError::Conflict {
                code: ErrorCode::UploadNotReceived,
                detail: "El archivo de esta subida aún no se ha recibido. Envíalo con la \
                         solicitud PUT indicada y luego completa la subida."
                    .into(),
                retry_after_secs: 1,
            });
        }
        Err(other) => return Err(other.into()),
    };
    if size != pending.original_bytes {
        discard_upload(to, &pending).await;
        return Err(size_mismatch(size, pending.original_bytes));
    }
    let checked = state
        .media_checks
        .check_stored(state.storage.clone(), key, size, state.api.upload.clone())
        .await;
    match checked {
        Ok(_) => {}
        Err(CheckError::Rejected(refused)) => {
            discard_upload(to, &pending).await;
            return Err(rejection(refused));
        }
        // Nothing is wrong with the file: the client may complete again.
        Err(CheckError::Busy) => return Err(ApiError::unavailable(CheckError::Busy)),
    }
    let answer = complete_direct_upload(to, &pending, state.api.uploads.idempotency_ttl).await?;
    Ok(accepted(answer, false))
}

fn size_mismatch(received: u64, announced: u64) -> ApiError {
    ApiError::bad_request(
        ErrorCode::UploadSizeMismatch,
        format!(
            "El archivo recibido mide {received} bytes, pero se anunciaron {announced}. \
             La subida se canceló: inicia una nueva con el tamaño exacto."
        ),
    )
}

/// A local `PUT` whose length is not the announced one (the upload stays:
/// the client may send the right file).
fn length_refused(announced: u64) -> ApiError {
    ApiError::bad_request(
        ErrorCode::UploadSizeMismatch,
        format!("El cuerpo debe medir exactamente {announced} bytes, los anunciados."),
    )
}

#[derive(Debug, Deserialize)]
pub struct PutSignature {
    expires: u64,
    sig: String,
}

/// `PUT /api/videos/uploads/{upload_id}/content?expires=…&sig=…`: with local
/// storage, where a direct upload's file goes (what a presigned URL is on
/// S3). The signed query is the authority, as on S3; the body must be
/// `video/mp4` of exactly the announced size, and is written as it streams
/// in, never past that size. Not in the OpenAPI document: its URLs are
/// opaque, handed out by `createDirectUpload`.
#[handler]
pub async fn put_content(
    state: Data<&AppState>,
    poem::web::Path(upload_id): poem::web::Path<String>,
    signature: Option<Query<PutSignature>>,
    request: &Request,
    body: Body,
) -> Result<Response, ApiError> {
    let local = state.storage.as_local().ok_or_else(upload_not_found)?;
    let id: VideoId = upload_id.parse().map_err(|_| upload_not_found())?;
    let Query(signature) = signature.ok_or_else(upload_not_found)?;
    local
        .verify(
            &put_subject(id),
            signature.expires,
            &signature.sig,
            SystemTime::now(),
        )
        .map_err(|_| upload_not_found())?;
    let pending = state
        .db
        .pending_upload(id)
        .await?
        .ok_or_else(upload_not_found)?;
    let essence = request
        .content_type()
        .and_then(|ct| ct.split(';').next())
        .map(str::trim);
    if !essence.is_some_and(|ct| ct.eq_ignore_ascii_case(VIDEO_MP4)) {
        return Err(ApiError::UnsupportedMediaType {
            expected: VIDEO_MP4,
        });
    }
    let declared: Option<u64> = request
        .headers()
        .get(poem::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    // As on S3, where the length is signed: the announced size or nothing.
    if declared != Some(pending.original_bytes) {
        return Err(length_refused(pending.original_bytes));
    }
    let key = ObjectKey::parse(pending.original_key.clone()).map_err(ApiError::internal)?;
    let reader = tokio_util::io::StreamReader::new(body.into_bytes_stream());
    match state
        .storage
        .upload(&key, reader, pending.original_bytes)
        .await
    {
        Ok(written) if written == pending.original_bytes => {}
        Ok(_) => {
            state.storage.delete(&key).await?;
            return Err(length_refused(pending.original_bytes));
        }
        Err(StorageError::TooLarge { .. }) => return Err(length_refused(pending.original_bytes)),
        Err(StorageError::Body(_)) => {
            return Err(ApiError::bad_request(
                ErrorCode::MalformedRequest,
                "La lectura del cuerpo falló.",
            ));
        }
        Err(other) => return Err(other.into()),
    }
    Ok(Response::builder()
        .status(poem::http::StatusCode::OK)
        .finish())
}

/// Whether `path` is the local `PUT` of a direct upload (for its body limit).
pub fn is_content_path(path: &str) -> bool {
    path.strip_prefix("/api/videos/uploads/")
        .and_then(|rest| rest.strip_suffix("/content"))
        .is_some_and(|id| !id.is_empty() && !id.contains('/'))
}
