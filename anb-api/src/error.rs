//! The HTTP edge's error: every failure becomes an RFC 9457 problem document
//! (`application/problem+json`) with a stable machine-readable `code`.
//!
//! Client errors say what is wrong in the contract's language; internal
//! errors are logged with their cause and answered with a generic 500.

use poem::http::{HeaderValue, StatusCode, header};
use poem::{IntoResponse, Response};
use poem_openapi::registry::{MetaHeader, MetaMediaType, MetaResponse, MetaResponses, Registry};
use poem_openapi::types::{ToJSON, Type};
use poem_openapi::{Enum, Object};

/// What a 503 asks clients to wait before retrying.
pub const RETRY_AFTER_OUTAGE_SECS: u64 = 5;

/// Media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Stable, machine-readable error codes. Clients branch on these, never on
/// the human-readable texts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "snake_case")]
pub enum ErrorCode {
    /// One or more fields are invalid; see `errors`.
    ValidationFailed,
    /// The request could not be understood (e.g. a broken multipart body).
    MalformedRequest,
    /// The JSON body is empty, not JSON, nested too deeply, or not an object.
    MalformedJson,
    /// The body's `Content-Type` is not the one the operation takes.
    UnsupportedMediaType,
    /// A query parameter is missing or out of range.
    InvalidQuery,
    DuplicateEmail,
    PasswordsDiffer,
    InvalidCredentials,
    /// No bearer token was sent.
    MissingToken,
    /// The bearer token is invalid, expired, or its user no longer exists.
    InvalidToken,
    /// The uploaded file is not an MP4 video.
    InvalidFileType,
    FileTooLarge,
    DurationOutOfRange,
    ResolutionTooLow,
    AlreadyVoted,
    OwnVideo,
    /// A published video cannot be deleted.
    VideoPublished,
    /// Only processed videos can be published.
    VideoNotProcessed,
    NotOwner,
    VideoNotFound,
    /// The media link is unknown, tampered with or expired.
    MediaNotFound,
    NotFound,
    MethodNotAllowed,
    RateLimited,
    /// The request body is larger than the route accepts.
    PayloadTooLarge,
    /// A dependency (database, storage, queue) is unreachable or saturated;
    /// retry after `Retry-After` seconds.
    ServiceUnavailable,
    /// A trusted proxy forwarded the request without a readable client
    /// address in `X-Forwarded-For`.
    InvalidForwardedFor,
    /// The `Idempotency-Key` was used before by the same player with another
    /// request (another file, title or flag): use a new key.
    IdempotencyKeyReused,
    /// An upload with this `Idempotency-Key` is still in progress: retry
    /// after `Retry-After` seconds to get its answer.
    IdempotencyKeyInProgress,
    /// The upload would take the player past their storage quota (bytes or
    /// videos kept): delete videos first.
    UploadQuotaExceeded,
    /// No direct upload of the caller's has this id (never created, another
    /// player's, or ended: completed long ago, refused, or removed).
    UploadNotFound,
    /// The direct upload's file has not been stored yet: send the `PUT`
    /// first, then complete.
    UploadNotReceived,
    /// The direct upload expired before it was completed: start a new one.
    UploadExpired,
    /// The stored file's size is not the one announced: the upload is
    /// refused and its file removed.
    UploadSizeMismatch,
    /// The server is saturated (e.g. every password-hashing slot is busy
    /// and the line is full); retry after `Retry-After` seconds.
    Overloaded,
    /// The client already has as many log-ins and sign-ups in progress as
    /// one client may: let those finish, then retry after `Retry-After`
    /// seconds.
    TooManyInProgress,
    InternalError,
}

impl ErrorCode {
    /// The code as it appears in the JSON body.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ValidationFailed => "validation_failed",
            Self::MalformedRequest => "malformed_request",
            Self::MalformedJson => "malformed_json",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::InvalidQuery => "invalid_query",
            Self::DuplicateEmail => "duplicate_email",
            Self::PasswordsDiffer => "passwords_differ",
            Self::InvalidCredentials => "invalid_credentials",
            Self::MissingToken => "missing_token",
            Self::InvalidToken => "invalid_token",
            Self::InvalidFileType => "invalid_file_type",
            Self::FileTooLarge => "file_too_large",
            Self::DurationOutOfRange => "duration_out_of_range",
            Self::ResolutionTooLow => "resolution_too_low",
            Self::AlreadyVoted => "already_voted",
            Self::OwnVideo => "own_video",
            Self::VideoPublished => "video_published",
            Self::VideoNotProcessed => "video_not_processed",
            Self::NotOwner => "not_owner",
            Self::VideoNotFound => "video_not_found",
            Self::MediaNotFound => "media_not_found",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::RateLimited => "rate_limited",
            Self::PayloadTooLarge => "payload_too_large",
            Self::ServiceUnavailable => "service_unavailable",
            Self::InvalidForwardedFor => "invalid_forwarded_for",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::IdempotencyKeyInProgress => "idempotency_key_in_progress",
            Self::UploadQuotaExceeded => "upload_quota_exceeded",
            Self::UploadNotFound => "upload_not_found",
            Self::UploadNotReceived => "upload_not_received",
            Self::UploadExpired => "upload_expired",
            Self::UploadSizeMismatch => "upload_size_mismatch",
            Self::Overloaded => "overloaded",
            Self::TooManyInProgress => "too_many_in_progress",
            Self::InternalError => "internal_error",
        }
    }
}

/// One invalid field of a validation error.
#[derive(Debug, Clone, PartialEq, Eq, Object)]
pub struct FieldError {
    /// The field's name as sent by the client.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// An RFC 9457 problem document.
#[derive(Debug, Clone, Object)]
pub struct Problem {
    /// A URI naming the kind of problem; one per `code`.
    #[oai(rename = "type")]
    pub problem_type: String,
    /// Short summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong with this request, for people.
    pub detail: String,
    /// Stable machine-readable code, for programs.
    pub code: ErrorCode,
    /// Per-field messages (validation errors only; otherwise empty).
    pub errors: Vec<FieldError>,
}

/// Every way a request can fail at the HTTP edge.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: one or more fields are invalid (`code` is `validation_failed`
    /// or, when that is all that is wrong, `passwords_differ`).
    #[error("validation failed: {errors:?}")]
    Validation {
        code: ErrorCode,
        errors: Vec<FieldError>,
    },
    /// 400 with a specific code (duplicate email, already voted…).
    #[error("{code:?}: {detail}")]
    BadRequest { code: ErrorCode, detail: String },
    /// 401: no usable credentials.
    #[error("{code:?}: {detail}")]
    Unauthorized { code: ErrorCode, detail: String },
    /// 403: authenticated but not allowed.
    #[error("{code:?}: {detail}")]
    Forbidden { code: ErrorCode, detail: String },
    /// 404.
    #[error("{code:?}: {detail}")]
    NotFound { code: ErrorCode, detail: String },
    /// 409: the request conflicts with one in progress; retry after this
    /// many seconds.
    #[error("{code:?}: {detail}")]
    Conflict {
        code: ErrorCode,
        detail: String,
        retry_after_secs: u64,
    },
    /// 410: the resource existed and is gone for good.
    #[error("{code:?}: {detail}")]
    Gone { code: ErrorCode, detail: String },
    /// 422: understood, but cannot be done as asked.
    #[error("{code:?}: {detail}")]
    Unprocessable { code: ErrorCode, detail: String },
    /// 405.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 413: the body is over the route's limit (checked while it streams).
    #[error("request body over {limit_bytes} bytes")]
    PayloadTooLarge { limit_bytes: u64 },
    /// 415: the body is not of the media type the operation takes.
    #[error("unsupported media type (expected {expected})")]
    UnsupportedMediaType { expected: &'static str },
    /// 429: rate limited; retry after this many seconds.
    #[error("rate limited for {retry_after_secs}s")]
    TooManyRequests { retry_after_secs: u64 },
    /// 429: the client has as many requests of this kind in progress as it
    /// may (password hashing); retry after this many seconds.
    #[error("too many in progress; retry in {retry_after_secs}s")]
    TooManyInProgress { retry_after_secs: u64 },
    /// 503: a dependency is down or saturated; retry after this many seconds.
    /// The cause is logged, never shown.
    #[error("unavailable: {cause}")]
    Unavailable {
        retry_after_secs: u64,
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
    /// 503: too busy to take this request now; retry after this many
    /// seconds. Answered at once instead of queueing without bound.
    #[error("overloaded; retry in {retry_after_secs}s")]
    Overloaded { retry_after_secs: u64 },
    /// 500: a bug. Logged, never shown.
    #[error("internal error: {0}")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    pub fn bad_request(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            detail: detail.into(),
        }
    }

    pub fn unauthorized(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self::Unauthorized {
            code,
            detail: detail.into(),
        }
    }

    pub fn forbidden(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self::Forbidden {
            code,
            detail: detail.into(),
        }
    }

    pub fn not_found(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self::NotFound {
            code,
            detail: detail.into(),
        }
    }

    /// A dependency that is down or saturated: 503 with `Retry-After`.
    pub fn unavailable(cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Unavailable {
            retry_after_secs: RETRY_AFTER_OUTAGE_SECS,
            cause: cause.into(),
        }
    }

    /// Wraps an unexpected error; its text is logged, not sent.
    pub fn internal(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Internal(error.into())
    }

    /// The video that does not exist (or whose id is malformed).
    pub fn video_not_found() -> Self {
        Self::not_found(ErrorCode::VideoNotFound, "El video no existe.")
    }

    /// A single invalid field.
    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        Self::Validation {
            code: ErrorCode::ValidationFailed,
            errors: vec![FieldError::new(field, message)],
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Validation { .. } | Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::Gone { .. } => StatusCode::GONE,
            Self::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::TooManyRequests { .. } | Self::TooManyInProgress { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The problem document sent to the client.
    pub fn problem(&self) -> Problem {
        let (code, detail, errors) = match self {
            Self::Validation { code, errors } => (
                *code,
                "Los datos enviados no son válidos.".to_owned(),
                errors.clone(),
            ),
            Self::BadRequest { code, detail }
            | Self::Unauthorized { code, detail }
            | Self::Forbidden { code, detail }
            | Self::NotFound { code, detail }
            | Self::Conflict { code, detail, .. }
            | Self::Gone { code, detail }
            | Self::Unprocessable { code, detail } => (*code, detail.clone(), Vec::new()),
            Self::MethodNotAllowed => (
                ErrorCode::MethodNotAllowed,
                "Método no permitido para este recurso.".to_owned(),
                Vec::new(),
            ),
            Self::UnsupportedMediaType { expected } => (
                ErrorCode::UnsupportedMediaType,
                format!("El cuerpo de la solicitud debe enviarse como {expected}."),
                Vec::new(),
            ),
            Self::TooManyRequests { retry_after_secs } => (
                ErrorCode::RateLimited,
                format!("Demasiadas solicitudes. Intenta de nuevo en {retry_after_secs} s."),
                Vec::new(),
            ),
            Self::TooManyInProgress { retry_after_secs } => (
                ErrorCode::TooManyInProgress,
                format!(
                    "Ya hay demasiados inicios de sesión o registros en curso desde tu conexión. \
                     Espera a que terminen e intenta de nuevo en {retry_after_secs} s."
                ),
                Vec::new(),
            ),
            Self::PayloadTooLarge { limit_bytes } => (
                ErrorCode::PayloadTooLarge,
                format!(
                    "El cuerpo de la solicitud supera el máximo de {} KiB.",
                    limit_bytes / 1024
                ),
                Vec::new(),
            ),
            Self::Unavailable { .. } => (
                ErrorCode::ServiceUnavailable,
                "El servicio no está disponible en este momento. Intenta de nuevo en unos segundos."
                    .to_owned(),
                Vec::new(),
            ),
            Self::Overloaded { retry_after_secs } => (
                ErrorCode::Overloaded,
                format!("El servidor está ocupado. Intenta de nuevo en {retry_after_secs} s."),
                Vec::new(),
            ),
            Self::Internal(_) => (
                ErrorCode::InternalError,
                "Error interno del servidor.".to_owned(),
                Vec::new(),
            ),
        };
        let status = self.status();
        Problem {
            problem_type: format!("tag:anb-rising-stars,2026:problem:{}", code.as_str()),
            title: title(status).to_owned(),
            status: status.as_u16(),
            detail,
            code,
            errors,
        }
    }
}

/// The problem document's `title`: the status, in the contract's language.
fn title(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "Solicitud no válida",
        401 => "No autenticado",
        403 => "Acceso denegado",
        404 => "No encontrado",
        405 => "Método no permitido",
        409 => "Conflicto",
        410 => "Ya no disponible",
        413 => "Contenido demasiado grande",
        415 => "Tipo de contenido no admitido",
        422 => "Solicitud no procesable",
        429 => "Demasiadas solicitudes",
        503 => "Servicio no disponible",
        _ => "Error interno del servidor",
    }
}

impl poem::error::ResponseError for ApiError {
    fn status(&self) -> StatusCode {
        ApiError::status(self)
    }

    fn as_response(&self) -> Response {
        match self {
            // The only place internals go: the log, inside the request's span.
            Self::Internal(source) => {
                tracing::error!(error = %source, debug = ?source, "internal error");
            }
            Self::Unavailable { cause, .. } => {
                tracing::warn!(error = %cause, "dependency unavailable");
            }
            _ => {}
        }
        let body = self.problem().to_json_string();
        let mut response = Response::builder()
            .status(self.status())
            .content_type(PROBLEM_JSON)
            .body(body);
        if let Self::TooManyRequests { retry_after_secs }
        | Self::TooManyInProgress { retry_after_secs }
        | Self::Conflict {
            retry_after_secs, ..
        }
        | Self::Overloaded { retry_after_secs }
        | Self::Unavailable {
            retry_after_secs, ..
        } = self
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        if matches!(self, Self::Unauthorized { .. }) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        poem::error::ResponseError::as_response(&self)
    }
}

impl From<anb_core::db::DbError> for ApiError {
    fn from(error: anb_core::db::DbError) -> Self {
        use anb_core::db::DbError;
        match error {
            DbError::DuplicateEmail => Self::bad_request(
                ErrorCode::DuplicateEmail,
                "Ya existe un usuario registrado con este correo electrónico.",
            ),
            DbError::AlreadyVoted => {
                Self::bad_request(ErrorCode::AlreadyVoted, "Ya has votado por este video.")
            }
            DbError::OwnVideo => {
                Self::bad_request(ErrorCode::OwnVideo, "No puedes votar por tu propio video.")
            }
            DbError::VideoNotFound => Self::video_not_found(),
            DbError::NotVideoOwner => Self::forbidden(
                ErrorCode::NotOwner,
                "No tienes permiso para acceder a este video.",
            ),
            DbError::VideoPublished => Self::bad_request(
                ErrorCode::VideoPublished,
                "El video está publicado para votación y no puede eliminarse.",
            ),
            DbError::NotPublishable { .. } => Self::bad_request(
                ErrorCode::VideoNotProcessed,
                "Un video cuyo procesamiento falló no puede publicarse.",
            ),
            DbError::IdempotencyKeyReused => Self::Unprocessable {
                code: ErrorCode::IdempotencyKeyReused,
                detail: "La clave de idempotencia ya se usó con otra solicitud distinta \
                         (otro archivo, título o visibilidad). Usa una clave nueva."
                    .into(),
            },
            DbError::IdempotencyKeyInProgress => Self::Conflict {
                code: ErrorCode::IdempotencyKeyInProgress,
                detail: "Una subida con esta clave de idempotencia aún está en curso. \
                         Intenta de nuevo en unos segundos para obtener su respuesta."
                    .into(),
                retry_after_secs: 2,
            },
            DbError::QuotaExceeded(exceeded) => Self::forbidden(
                ErrorCode::UploadQuotaExceeded,
                match exceeded {
                    anb_core::db::QuotaExceeded::Bytes { used, max, .. } => format!(
                        "Has alcanzado tu cuota de almacenamiento: usas {} MB de {} MB. \
                         Elimina videos para subir otros.",
                        used / (1024 * 1024),
                        max / (1024 * 1024)
                    ),
                    anb_core::db::QuotaExceeded::Videos { max, .. } => format!(
                        "Has alcanzado el máximo de {max} videos. Elimina videos para subir otros."
                    ),
                },
            ),
            // The clean-up gave the upload up while it was being recorded:
            // nothing was kept, the client may send it again.
            DbError::UploadAbandoned => Self::unavailable(error),
            // The caller's account vanished between authentication and now.
            DbError::UserNotFound => crate::security::invalid_token(),
            outage if outage.is_unavailable() => Self::unavailable(outage),
            other => Self::internal(other),
        }
    }
}

impl From<anb_core::auth::AuthError> for ApiError {
    fn from(error: anb_core::auth::AuthError) -> Self {
        match error {
            // A hash takes tens of milliseconds: the line is shorter by then.
            anb_core::auth::AuthError::Busy => Self::Overloaded {
                retry_after_secs: 1,
            },
            // The client's own hashes are done within a hash time or two.
            anb_core::auth::AuthError::ClientBusy => Self::TooManyInProgress {
                retry_after_secs: 1,
            },
            other => Self::internal(other),
        }
    }
}

impl From<anb_core::storage::StorageError> for ApiError {
    /// The store failing or out of reach is an outage (503); anything else
    /// reaching the edge is a bug.
    fn from(error: anb_core::storage::StorageError) -> Self {
        use anb_core::storage::StorageError;
        match error {
            StorageError::Backend { .. } => Self::unavailable(error),
            other => Self::internal(other),
        }
    }
}

impl From<anb_queue::QueueError> for ApiError {
    /// The queue's store failing or out of reach is an outage (503); a job
    /// the queue cannot take is a bug.
    fn from(error: anb_queue::QueueError) -> Self {
        use anb_queue::QueueError;
        match error {
            QueueError::Redis(_) | QueueError::Sqs { .. } | QueueError::Timeout { .. } => {
                Self::unavailable(error)
            }
            outage if outage.is_unreachable() => Self::unavailable(outage),
            other => Self::internal(other),
        }
    }
}

impl From<anb_core::uploads::UploadError> for ApiError {
    fn from(error: anb_core::uploads::UploadError) -> Self {
        use anb_core::uploads::UploadError;
        match error {
            UploadError::Db(error) => error.into(),
            UploadError::Storage(error) => error.into(),
            UploadError::Queue(error) => error.into(),
        }
    }
}

impl From<anb_core::accounts::AccountError> for ApiError {
    fn from(error: anb_core::accounts::AccountError) -> Self {
        use anb_core::accounts::AccountError;
        match error {
            AccountError::Invalid(errors) => errors.into_vec().into(),
            AccountError::InvalidCredentials => {
                Self::unauthorized(ErrorCode::InvalidCredentials, "Credenciales inválidas.")
            }
            AccountError::Auth(error) => error.into(),
            AccountError::Db(error) => error.into(),
        }
    }
}

impl From<Vec<anb_core::domain::FieldError>> for ApiError {
    fn from(errors: Vec<anb_core::domain::FieldError>) -> Self {
        let only_passwords_differ = errors
            .iter()
            .all(|e| e.problem == anb_core::domain::InvalidValue::PasswordsDiffer);
        Self::Validation {
            code: if only_passwords_differ {
                ErrorCode::PasswordsDiffer
            } else {
                ErrorCode::ValidationFailed
            },
            errors: errors
                .into_iter()
                .map(|e| FieldError::new(e.field, e.problem.to_string()))
                .collect(),
        }
    }
}

/// Turns any error that reached the edge into a problem response: ours as
/// they are, the framework's (unparsable request, unknown route, missing
/// token…) into the matching Spanish problem, anything else into a logged
/// 500. This is the one place where the framework's errors are translated;
/// their English texts never reach a client.
pub fn problem_response(error: poem::Error) -> Response {
    framework_error(error).into_response()
}

/// [`problem_response`] for a request to `path`: a 405 also says, in
/// `Allow`, which methods the resource does answer (RFC 9110 §15.5.6).
pub fn problem_response_at(path: &str, error: poem::Error) -> Response {
    let mut response = problem_response(error);
    if response.status() == StatusCode::METHOD_NOT_ALLOWED
        && let Some(allowed) = crate::routes::allowed_methods(path)
    {
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allowed));
    }
    response
}

/// The [`ApiError`] a framework error stands for.
fn framework_error(error: poem::Error) -> ApiError {
    use poem_openapi::error::{
        AuthorizationError, ContentTypeError, ParseMultipartError, ParseParamError, ParsePathError,
        ParseRequestPayloadError,
    };
    let error = match error.downcast::<ApiError>() {
        Ok(ours) => return ours,
        Err(error) => error,
    };
    if let Some(param) = error.downcast_ref::<ParseParamError>() {
        // The reason is the framework's English: the rule of the parameter
        // goes out instead.
        return ApiError::Validation {
            code: if crate::routes::params::is_header(param.name) {
                ErrorCode::ValidationFailed
            } else {
                ErrorCode::InvalidQuery
            },
            errors: vec![FieldError::new(
                param.name,
                crate::routes::params::rule_of(param.name),
            )],
        };
    }
    if error.is::<ParsePathError>() {
        // A path that does not parse names nothing that exists.
        return ApiError::not_found(ErrorCode::NotFound, "Recurso no encontrado.");
    }
    if error.is::<ContentTypeError>() {
        return ApiError::UnsupportedMediaType {
            expected: "multipart/form-data",
        };
    }
    if error.is::<ParseMultipartError>() || error.is::<ParseRequestPayloadError>() {
        return ApiError::bad_request(
            ErrorCode::MalformedRequest,
            "El cuerpo de la solicitud no tiene el formato que espera esta operación.",
        );
    }
    if error.is::<AuthorizationError>() {
        return missing_token();
    }
    let status = error.status();
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::bad_request(
            ErrorCode::FileTooLarge,
            "La solicitud supera el tamaño máximo permitido.",
        ),
        StatusCode::UNAUTHORIZED => missing_token(),
        StatusCode::NOT_FOUND => ApiError::not_found(ErrorCode::NotFound, "Recurso no encontrado."),
        StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType {
            expected: "application/json",
        },
        _ if status.is_client_error() => {
            // Logged in English for operators; the client gets a Spanish text.
            tracing::debug!(%error, %status, "request refused by the framework");
            ApiError::bad_request(ErrorCode::MalformedRequest, "La solicitud no es válida.")
        }
        _ => ApiError::internal(error.to_string()),
    }
}

fn missing_token() -> ApiError {
    ApiError::unauthorized(
        ErrorCode::MissingToken,
        "Se requiere un token de acceso (Authorization: Bearer <token>).",
    )
}

/// The OpenAPI description of a problem response for `status`.
pub fn problem_meta_response(status: u16) -> MetaResponse {
    let description = match status {
        400 => "Invalid request (see `code` and `errors`)",
        401 => "Missing, invalid or expired bearer token, or bad credentials",
        403 => "The caller does not own the resource, or is over a quota",
        409 => "Conflicts with a request still in progress; retry after `Retry-After` seconds",
        410 => "Gone for good (e.g. an upload that expired): start again",
        422 => "Understood but not doable as asked (see `code`)",
        404 => "Not found (a malformed id is not found too)",
        413 => "The request body is larger than the operation accepts (64 KiB of JSON)",
        429 => {
            "Rate limited (`rate_limited`) or, on log-in and sign-up, too many of the client's \
             in progress (`too_many_in_progress`); retry after `Retry-After` seconds"
        }
        500 => "Internal error",
        415 => "The body is not of the media type the operation takes",
        503 => "Unavailable or saturated; retry after `Retry-After` seconds",
        _ => "Error",
    };
    let headers = if status == 409 || status == 429 || status == 503 {
        vec![MetaHeader {
            name: "Retry-After".to_owned(),
            description: Some("Seconds to wait before retrying".to_owned()),
            required: true,
            deprecated: false,
            schema: u64::schema_ref(),
        }]
    } else {
        Vec::new()
    };
    MetaResponse {
        description,
        status: Some(status),
        status_range: None,
        content: vec![MetaMediaType {
            content_type: PROBLEM_JSON,
            schema: Problem::schema_ref(),
        }],
        headers,
    }
}

/// Declares the error side of an operation: which problem statuses it
/// documents (500 and 503 are always added). Handlers return
/// `Result<SuccessResponse, ThisType>` and convert [`ApiError`] with `?`
/// inside an inner function or `.map_err(Into::into)`.
macro_rules! problems {
    ($(#[$doc:meta])* $name:ident: $($status:literal),* $(,)?) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name(pub $crate::error::ApiError);

        impl From<$crate::error::ApiError> for $name {
            fn from(error: $crate::error::ApiError) -> Self {
                Self(error)
            }
        }

        impl From<$name> for poem::Error {
            fn from(error: $name) -> Self {
                poem::Error::from(error.0)
            }
        }

        impl poem_openapi::ApiResponse for $name {
            fn meta() -> poem_openapi::registry::MetaResponses {
                $crate::error::problem_meta_responses(&[$($status),*])
            }

            fn register(registry: &mut poem_openapi::registry::Registry) {
                $crate::error::register_problem(registry);
            }
        }
    };
}
pub(crate) use problems;

/// Problem responses for the given statuses plus those any operation can
/// answer: 400 (e.g. a trusted proxy that names no client address), 500 and
/// 503 (saturated or a dependency down).
pub fn problem_meta_responses(statuses: &[u16]) -> MetaResponses {
    let mut statuses: Vec<u16> = statuses.iter().copied().chain([400, 500, 503]).collect();
    statuses.sort_unstable();
    statuses.dedup();
    let responses = statuses.into_iter().map(problem_meta_response).collect();
    MetaResponses { responses }
}

/// Registers the problem schema in the document.
pub fn register_problem(registry: &mut Registry) {
    <Problem as Type>::register(registry);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn internal_errors_do_not_leak_their_cause() {
        let response = ApiError::internal("password=hunter2 at db host 10.0.0.5").into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(response.content_type(), Some(PROBLEM_JSON));
        let body = response.into_body().into_string().await.unwrap();
        assert!(
            !body.contains("hunter2") && !body.contains("10.0.0.5"),
            "{body}"
        );
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["code"], "internal_error");
        assert_eq!(json["status"], 500);
    }

    #[test]
    fn codes_serialize_as_their_static_names() {
        for code in [
            ErrorCode::DuplicateEmail,
            ErrorCode::AlreadyVoted,
            ErrorCode::InternalError,
        ] {
            assert_eq!(code.to_json(), Some(serde_json::Value::from(code.as_str())));
        }
    }

    #[tokio::test]
    async fn rate_limited_answer_carries_retry_after() {
        let response = ApiError::TooManyRequests {
            retry_after_secs: 7,
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "7");
    }
}
