//! The multipart upload form: documented like a poem-openapi `Multipart`,
//! read as a stream so the file goes to a temporary file chunk by chunk and
//! the size limit cuts the request off as soon as it is crossed.

use poem::web::Multipart;
use poem::{FromRequest, Request, RequestBody};
use poem_openapi::payload::Payload;
use poem_openapi::registry::{MetaMediaType, MetaRequest, Registry};
use poem_openapi::types::multipart::Upload;
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{ApiError, ErrorCode};

/// The fields of `POST /api/videos/upload`, for the document only.
#[derive(Debug, poem_openapi::Multipart)]
#[allow(dead_code)]
struct UploadFormDoc {
    /// The MP4 video: at most 100 MB, 20–60 s, shorter side ≥ 1080 px.
    video_file: Upload,
    /// 5–100 characters.
    title: String,
    /// Publish for voting once processed (default true).
    is_public: Option<bool>,
}

/// The upload request body, not yet read.
pub struct UploadRequest {
    multipart: Multipart,
    declared_length: Option<u64>,
}

impl std::fmt::Debug for UploadRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadRequest")
            .field("declared_length", &self.declared_length)
            .finish_non_exhaustive()
    }
}

/// A form whose file has been received completely, within the limit.
#[derive(Debug)]
pub struct ReceivedUpload {
    /// The file's bytes, deleted when dropped.
    pub file: tempfile::TempPath,
    pub size: u64,
    pub title: Option<String>,
    pub is_public: Option<String>,
}

impl UploadRequest {
    /// Reads the form. The file is streamed to a temporary file; the first
    /// byte past `max_bytes` ends the read with `file_too_large` (the rest of
    /// the request is never read). A declared `Content-Length` that cannot
    /// fit is refused before anything is read.
    pub async fn receive(mut self, max_bytes: u64) -> Result<ReceivedUpload, ApiError> {
        // Room for the multipart boundaries and the small text fields.
        const FORM_OVERHEAD: u64 = 64 * 1024;
        if self
            .declared_length
            .is_some_and(|length| length > max_bytes.saturating_add(FORM_OVERHEAD))
        {
            return Err(too_large(max_bytes));
        }
        let mut file = None;
        let mut title = None;
        let mut is_public = None;
        while let Some(field) = self.multipart.next_field().await.map_err(malformed)? {
            match field.name() {
                Some("video_file") if file.is_none() => {
                    file = Some(receive_file(field, max_bytes).await?);
                }
                Some("title") if title.is_none() => {
                    title = Some(read_small_text(field, "title").await?);
                }
                Some("is_public") if is_public.is_none() => {
                    is_public = Some(read_small_text(field, "is_public").await?);
                }
                // Unknown or repeated fields are drained and ignored.
                _ => {
                    let mut reader = field.into_async_read();
                    tokio::io::copy(&mut reader, &mut tokio::io::sink())
                        .await
                        .map_err(malformed)?;
                }
            }
        }
        let Some((file, size)) = file else {
            return Err(ApiError::invalid_field("video_file", "es obligatorio"));
        };
        Ok(ReceivedUpload {
            file,
            size,
            title,
            is_public,
        })
    }
}

async fn receive_file(
    field: poem::web::Field,
    max_bytes: u64,
) -> Result<(tempfile::TempPath, u64), ApiError> {
    let temp =
        tokio::task::spawn_blocking(|| tempfile::Builder::new().prefix("anb-upload-").tempfile())
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)?;
    let (std_file, path) = temp.into_parts();
    let mut out = tokio::fs::File::from_std(std_file);
    let mut reader = field.into_async_read();
    let mut buffer = vec![0u8; 256 * 1024];
    let mut size: u64 = 0;
    loop {
        let read = reader.read(&mut buffer).await.map_err(malformed)?;
        if read == 0 {
            break;
        }
        size += read as u64;
        if size > max_bytes {
            // Dropping `path` deletes what was written so far.
            return Err(too_large(max_bytes));
        }
        out.write_all(&buffer[..read])
            .await
            .map_err(ApiError::internal)?;
    }
    out.flush().await.map_err(ApiError::internal)?;
    Ok((path, size))
}

async fn read_small_text(field: poem::web::Field, name: &str) -> Result<String, ApiError> {
    const MAX_TEXT: u64 = 4096;
    let mut text = String::new();
    let read = field
        .into_async_read()
        .take(MAX_TEXT + 1)
        .read_to_string(&mut text)
        .await
        .map_err(|_| ApiError::invalid_field(name, "no es texto UTF-8 válido"))?;
    if read as u64 > MAX_TEXT {
        return Err(ApiError::invalid_field(name, "es demasiado largo"));
    }
    Ok(text)
}

fn too_large(max_bytes: u64) -> ApiError {
    ApiError::bad_request(
        ErrorCode::FileTooLarge,
        format!(
            "El archivo supera el tamaño máximo permitido ({} MB).",
            max_bytes / (1024 * 1024)
        ),
    )
}

fn malformed(error: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(
        ErrorCode::MalformedRequest,
        format!("El formulario multipart no es válido: {error}"),
    )
}

impl<'a> ApiExtractor<'a> for UploadRequest {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];

    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        <UploadFormDoc as Payload>::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: Some("The video and its title, as multipart/form-data"),
            content: vec![MetaMediaType {
                content_type: <UploadFormDoc as Payload>::CONTENT_TYPE,
                schema: <UploadFormDoc as Payload>::schema_ref(),
            }],
            required: true,
        })
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let is_multipart = request
            .content_type()
            .and_then(|ct| ct.split(';').next())
            .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("multipart/form-data"));
        if !is_multipart {
            return Err(ApiError::bad_request(
                ErrorCode::MalformedRequest,
                "Se espera un formulario multipart/form-data con video_file y title.",
            )
            .into());
        }
        let declared_length = request
            .headers()
            .get(poem::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let multipart = <Multipart as FromRequest>::from_request(request, body).await?;
        Ok(Self {
            multipart,
            declared_length,
        })
    }
}
