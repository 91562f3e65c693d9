//! Serves local-storage media behind signed, expiring URLs
//! (`/media/{key}?expires=…&sig=…`, made by the storage's URL signer).
//! With S3 storage clients get presigned S3 URLs instead and this route
//! answers 404. Not part of the OpenAPI document: its URLs are opaque.

use std::time::SystemTime;

use anb_core::storage::ObjectKey;
use poem::web::{Data, Path, Query, StaticFileRequest};
use poem::{IntoResponse, Response, handler};
use serde::Deserialize;

use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;

#[derive(Debug, Deserialize)]
pub struct Signature {
    expires: u64,
    sig: String,
}

fn media_not_found() -> ApiError {
    ApiError::not_found(
        ErrorCode::MediaNotFound,
        "El enlace no existe o ha expirado.",
    )
}

/// `GET /media/*key`: the object, with range and conditional requests.
#[handler]
pub async fn media(
    state: Data<&AppState>,
    Path(key): Path<String>,
    signature: Option<Query<Signature>>,
    file_request: StaticFileRequest,
) -> Result<Response, ApiError> {
    let local = state.storage.as_local().ok_or_else(media_not_found)?;
    let Query(signature) = signature.ok_or_else(media_not_found)?;
    let key = ObjectKey::parse(key).map_err(|_| media_not_found())?;
    local
        .verify(&key, signature.expires, &signature.sig, SystemTime::now())
        .map_err(|_| media_not_found())?;
    let path = local.file_path(&key).await.map_err(|_| media_not_found())?;
    let response =
        tokio::task::spawn_blocking(move || file_request.create_response(path, false, false))
            .await
            .map_err(ApiError::internal)?;
    match response {
        Ok(file) => {
            let mut response = file.into_response();
            let headers = response.headers_mut();
            headers.insert(
                poem::http::header::CONTENT_TYPE,
                poem::http::HeaderValue::from_static(key.content_type()),
            );
            headers.insert(
                poem::http::header::CACHE_CONTROL,
                poem::http::HeaderValue::from_static("private, max-age=3600"),
            );
            Ok(response)
        }
        // Precondition failures and unsatisfiable ranges answer as HTTP says.
        Err(e) => Ok(poem::Error::from(e).into_response()),
    }
}
