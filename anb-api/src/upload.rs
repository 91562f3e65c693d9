//! The multipart upload form: documented like a poem-openapi `Multipart`,
//! read as a stream so the file goes to a temporary file chunk by chunk.
//!
//! Everything about the form is bounded while it streams in: the whole body,
//! each field (the file by the upload limit, the text fields by a few
//! kilobytes), the headers of each part, and the field names (only the
//! form's own, each once). The first byte past a bound ends the read.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use poem::{Request, RequestBody};
use poem_openapi::registry::{MetaMediaType, MetaRequest, MetaSchema, MetaSchemaRef, Registry};
use poem_openapi::types::Type;
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions};
use tokio::io::AsyncWriteExt;

use crate::error::{ApiError, ErrorCode};
use crate::routes::params::TitleField;
use crate::settings::UploadLimits;

/// The schema of the form in the document: every field the server reads,
/// with the limits it enforces (those of [`UploadLimits::default`]; a
/// deployment that changes `ANB_UPLOAD_*` changes them), and no other field
/// (the document post-processing in [`crate::openapi_json`] closes it with
/// `additionalProperties: false`).
fn form_schema() -> MetaSchema {
    use std::sync::OnceLock;
    static FILE: OnceLock<String> = OnceLock::new();
    let limits = UploadLimits::default();
    let file = FILE.get_or_init(|| {
        format!(
            "The MP4 video (`video/mp4`): at most {} bytes ({} MB), {}–{} s long, the shorter \
             side of the frame at least {} px. Checked after it is received: a file outside \
             these limits is refused with 400 (`file_too_large`, `invalid_file_type`, \
             `duration_out_of_range`, `resolution_too_low`).",
            limits.max_bytes,
            limits.max_bytes / (1024 * 1024),
            limits.min_duration.as_secs(),
            limits.max_duration.as_secs(),
            limits.min_short_side,
        )
    });
    let title = MetaSchema {
        description: Some(
            "5–100 characters, a letter or number at least; white space and invisible \
             formatting at either end are trimmed.",
        ),
        ..match TitleField::schema_ref() {
            MetaSchemaRef::Inline(schema) => *schema,
            MetaSchemaRef::Reference(_) => unreachable!("text fields are inline"),
        }
    };
    MetaSchema {
        required: vec!["video_file", "title"],
        properties: vec![
            (
                "video_file",
                MetaSchemaRef::Inline(Box::new(MetaSchema {
                    description: Some(file.as_str()),
                    ..MetaSchema::new_with_format("string", "binary")
                })),
            ),
            ("title", MetaSchemaRef::Inline(Box::new(title))),
            (
                "is_public",
                MetaSchemaRef::Inline(Box::new(MetaSchema {
                    description: Some("Publish for voting once processed."),
                    default: Some(true.into()),
                    ..MetaSchema::new("boolean")
                })),
            ),
        ],
        ..MetaSchema::new("object")
    }
}

/// The form's fields; any other name is refused.
const FIELDS: [&str; 3] = ["video_file", "title", "is_public"];
/// Room for the multipart boundaries, part headers and text fields beside
/// the file.
pub const FORM_OVERHEAD: u64 = 64 * 1024;
/// The longest text field (`title` is at most 100 characters).
const MAX_TEXT: u64 = 4096;
/// The most header bytes one part may take before its content starts.
const MAX_PART_HEADERS: u64 = 16 * 1024;

/// The upload request body, not yet read.
pub struct UploadRequest {
    body: poem::Body,
    boundary: String,
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
    /// SHA-256 of the file's bytes.
    pub file_sha256: [u8; 32],
    pub title: Option<String>,
    pub is_public: Option<String>,
}

impl ReceivedUpload {
    /// A digest of everything the form held, as sent (file, title, flag):
    /// what tells a retry of this request from another one under the same
    /// `Idempotency-Key`.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut digest = Sha256::new();
        digest.update(self.file_sha256);
        for text in [&self.title, &self.is_public] {
            match text {
                // Length-prefixed, so no two forms give the same input.
                Some(text) => {
                    digest.update([1]);
                    digest.update((text.len() as u64).to_be_bytes());
                    digest.update(text.as_bytes());
                }
                None => digest.update([0]),
            }
        }
        digest
            .finalize()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }
}

impl UploadRequest {
    /// Reads the form. The file is streamed to a temporary file; the first
    /// byte past `max_bytes` ends the read with `file_too_large` (the rest of
    /// the request is never read). A declared `Content-Length` that cannot
    /// fit is refused before anything is read; a body without one (chunked)
    /// is cut off at the same bound.
    pub async fn receive(self, max_bytes: u64) -> Result<ReceivedUpload, ApiError> {
        let whole_limit = max_bytes.saturating_add(FORM_OVERHEAD);
        if self
            .declared_length
            .is_some_and(|length| length > whole_limit)
        {
            return Err(too_large(max_bytes));
        }
        let constraints = multer::Constraints::new()
            .allowed_fields(FIELDS.to_vec())
            .size_limit(
                multer::SizeLimit::new()
                    .whole_stream(whole_limit)
                    .per_field(MAX_TEXT)
                    .for_field("video_file", max_bytes),
            );
        let headers = PartHeaders::default();
        let stream = HeaderBound {
            inner: Box::pin(self.body.into_bytes_stream()),
            scan: FramingScan::new(&self.boundary),
            headers: headers.clone(),
        };
        let mut multipart = multer::Multipart::with_constraints(stream, self.boundary, constraints);
        let mut file = None;
        let mut title = None;
        let mut is_public = None;
        while let Some(field) = multipart
            .next_field()
            .await
            .map_err(|e| form_error(e, &headers, max_bytes))?
        {
            let name = field.name().unwrap_or_default().to_owned();
            let slot_taken = match name.as_str() {
                "video_file" => file.is_some(),
                "title" => title.is_some(),
                _ => is_public.is_some(),
            };
            if slot_taken {
                return Err(ApiError::invalid_field(&name, "se envió más de una vez"));
            }
            match name.as_str() {
                "video_file" => {
                    file = Some(receive_file(field, max_bytes, &headers).await?);
                }
                "title" => title = Some(read_text(field, "title", &headers, max_bytes).await?),
                _ => {
                    is_public = Some(read_text(field, "is_public", &headers, max_bytes).await?);
                }
            }
        }
        let Some((file, size, file_sha256)) = file else {
            return Err(ApiError::invalid_field("video_file", "es obligatorio"));
        };
        Ok(ReceivedUpload {
            file,
            size,
            file_sha256,
            title,
            is_public,
        })
    }
}

/// Watches the multipart framing as it streams past the parser, so a part
/// whose headers never end is refused after [`MAX_PART_HEADERS`] instead of
/// being buffered up to the whole limit. (The parser itself reads ahead
/// whatever has arrived, so it cannot be bounded from outside; the framing
/// can.)
#[derive(Debug, Clone, Default)]
struct PartHeaders(Arc<AtomicBool>);

impl PartHeaders {
    fn exceeded(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Where the scan of the framing is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// In a part's content (or the preamble), looking for a delimiter.
    Content,
    /// Just after a delimiter: a closing one (`--`) or a part's headers.
    Delimiter,
    /// In a part's headers, `len` bytes so far.
    Headers { len: u64 },
    /// After the closing delimiter.
    Epilogue,
}

/// The scanner: `\r\n--boundary` delimiters, then headers up to `\r\n\r\n`.
#[derive(Debug)]
struct FramingScan {
    delimiter: Vec<u8>,
    state: Framing,
    /// The tail of the last chunk a pattern may continue from.
    carry: Vec<u8>,
}

impl FramingScan {
    fn new(boundary: &str) -> Self {
        Self {
            delimiter: format!("\r\n--{boundary}").into_bytes(),
            state: Framing::Content,
            // The first delimiter may open the body, with no line break before.
            carry: b"\r\n".to_vec(),
        }
    }

    /// Scans the next chunk; `false` once a part's headers are too long.
    fn feed(&mut self, chunk: &[u8]) -> bool {
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(chunk);
        let mut pos = 0;
        loop {
            let rest = &buf[pos..];
            match self.state {
                Framing::Content => match memchr::memmem::find(rest, &self.delimiter) {
                    Some(at) => {
                        pos += at + self.delimiter.len();
                        self.state = Framing::Delimiter;
                    }
                    None => {
                        let keep = rest.len().min(self.delimiter.len() - 1);
                        self.carry = rest[rest.len() - keep..].to_vec();
                        return true;
                    }
                },
                Framing::Delimiter => {
                    if rest.len() < 2 {
                        self.carry = rest.to_vec();
                        return true;
                    }
                    self.state = if rest.starts_with(b"--") {
                        Framing::Epilogue
                    } else {
                        Framing::Headers { len: 0 }
                    };
                }
                Framing::Headers { len } => match memchr::memmem::find(rest, b"\r\n\r\n") {
                    Some(at) => {
                        if len + at as u64 > MAX_PART_HEADERS {
                            return false;
                        }
                        pos += at + 4;
                        self.state = Framing::Content;
                    }
                    None => {
                        let keep = rest.len().min(3);
                        let len = len + (rest.len() - keep) as u64;
                        if len > MAX_PART_HEADERS {
                            return false;
                        }
                        self.state = Framing::Headers { len };
                        self.carry = rest[rest.len() - keep..].to_vec();
                        return true;
                    }
                },
                Framing::Epilogue => return true,
            }
        }
    }
}

/// The body stream, failing once a part's headers take too much.
struct HeaderBound<S> {
    inner: S,
    scan: FramingScan,
    headers: PartHeaders,
}

impl<S> Stream for HeaderBound<S>
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Unpin,
{
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.headers.exceeded() {
            return Poll::Ready(Some(Err(std::io::Error::other("part headers too large"))));
        }
        let next = Pin::new(&mut self.inner).poll_next(cx);
        if let Poll::Ready(Some(Ok(chunk))) = &next
            && !self.scan.feed(chunk)
        {
            self.headers.0.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(std::io::Error::other("part headers too large"))));
        }
        next
    }
}

async fn receive_file(
    mut field: multer::Field<'static>,
    max_bytes: u64,
    headers: &PartHeaders,
) -> Result<(tempfile::TempPath, u64, [u8; 32]), ApiError> {
    use sha2::{Digest, Sha256};
    let temp =
        tokio::task::spawn_blocking(|| tempfile::Builder::new().prefix("anb-upload-").tempfile())
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)?;
    let (std_file, path) = temp.into_parts();
    let mut out = tokio::fs::File::from_std(std_file);
    let mut size: u64 = 0;
    let mut digest = Sha256::new();
    // Dropping `path` on an early return deletes what was written so far.
    while let Some(chunk) = field
        .chunk()
        .await
        .map_err(|e| form_error(e, headers, max_bytes))?
    {
        size += chunk.len() as u64;
        if size > max_bytes {
            return Err(too_large(max_bytes));
        }
        digest.update(&chunk);
        out.write_all(&chunk).await.map_err(ApiError::internal)?;
    }
    out.flush().await.map_err(ApiError::internal)?;
    Ok((path, size, digest.finalize().into()))
}

async fn read_text(
    field: multer::Field<'static>,
    name: &str,
    headers: &PartHeaders,
    max_bytes: u64,
) -> Result<String, ApiError> {
    let bytes = field.bytes().await.map_err(|e| match e {
        multer::Error::FieldSizeExceeded { .. } => {
            ApiError::invalid_field(name, "es demasiado largo")
        }
        other => form_error(other, headers, max_bytes),
    })?;
    String::from_utf8(bytes.to_vec())
        .map_err(|_| ApiError::invalid_field(name, "no es texto UTF-8 válido"))
}

/// The answer to a form the parser refused.
fn form_error(error: multer::Error, headers: &PartHeaders, max_bytes: u64) -> ApiError {
    match error {
        _ if headers.exceeded() => ApiError::bad_request(
            ErrorCode::MalformedRequest,
            "Las cabeceras de una parte del formulario son demasiado grandes.",
        ),
        multer::Error::StreamSizeExceeded { .. } => too_large(max_bytes),
        multer::Error::FieldSizeExceeded { field_name, .. } => match field_name.as_deref() {
            Some("video_file") => too_large(max_bytes),
            Some(name) => ApiError::invalid_field(name, "es demasiado largo"),
            None => malformed("campo sin nombre"),
        },
        multer::Error::UnknownField { field_name } => ApiError::invalid_field(
            field_name.as_deref().unwrap_or("(sin nombre)"),
            "no es un campo del formulario (se admiten video_file, title e is_public)",
        ),
        multer::Error::StreamReadFailed(_) => malformed("la lectura del cuerpo falló"),
        _ => malformed("el cuerpo no sigue el formato multipart/form-data"),
    }
}

/// The upload's answer to a file (or form) over the limit.
pub(crate) fn too_large(max_bytes: u64) -> ApiError {
    ApiError::bad_request(
        ErrorCode::FileTooLarge,
        format!(
            "El archivo supera el tamaño máximo permitido ({} MB).",
            max_bytes / (1024 * 1024)
        ),
    )
}

fn malformed(reason: &str) -> ApiError {
    ApiError::bad_request(
        ErrorCode::MalformedRequest,
        format!("El formulario multipart no es válido: {reason}."),
    )
}

impl<'a> ApiExtractor<'a> for UploadRequest {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];

    type ParamType = ();
    type ParamRawType = ();

    fn register(_registry: &mut Registry) {}

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: Some(
                "The video and its title, as multipart/form-data: only these fields, each at \
                 most once; text fields at most 4 KiB, part headers at most 16 KiB.",
            ),
            content: vec![MetaMediaType {
                content_type: "multipart/form-data",
                schema: MetaSchemaRef::Inline(Box::new(form_schema())),
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
        let boundary = request
            .content_type()
            .and_then(|ct| multer::parse_boundary(ct).ok())
            .ok_or_else(|| malformed("falta el parámetro boundary del Content-Type"))?;
        Ok(Self {
            body: body.take()?,
            boundary,
            declared_length,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_in_chunks(body: &[u8], chunk: usize) -> bool {
        let mut scan = FramingScan::new("b0undary");
        body.chunks(chunk).all(|c| scan.feed(c))
    }

    #[test]
    fn part_headers_are_bounded_wherever_the_chunks_split() {
        let part = |headers: &str, content: &[u8]| {
            [
                b"--b0undary\r\n".as_slice(),
                headers.as_bytes(),
                b"\r\n\r\n",
                content,
                b"\r\n",
            ]
            .concat()
        };
        let name = "Content-Disposition: form-data; name=\"title\"";
        // Large content, with header-like bytes in it, is not headers.
        let fine = [
            part(name, b"short"),
            part(name, &b"x\r\n".repeat(100_000)),
            b"--b0undary--\r\n".to_vec(),
            vec![b'e'; 50_000],
        ]
        .concat();
        let huge = [
            part(name, b"short"),
            part(
                &format!("{name}; filename=\"{}\"", "n".repeat(20_000)),
                b"x",
            ),
            b"--b0undary--\r\n".to_vec(),
        ]
        .concat();
        for chunk in [1, 3, 7, 1000, 1 << 20] {
            assert!(scan_in_chunks(&fine, chunk), "chunks of {chunk}");
            assert!(!scan_in_chunks(&huge, chunk), "chunks of {chunk}");
        }
    }
}
