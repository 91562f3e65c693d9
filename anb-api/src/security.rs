//! Bearer-JWT authentication: the OpenAPI security scheme and its checker.

use anb_core::domain::UserId;
use poem::Request;
use poem_openapi::SecurityScheme;
use poem_openapi::auth::Bearer;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;

/// The authenticated caller, taken only from a verified, unrevoked access
/// token whose user still exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthUser {
    pub user_id: UserId,
    /// The presented token's id (`jti`), which a log-out revokes.
    pub token_id: Uuid,
    /// When the presented token expires.
    pub expires_at: OffsetDateTime,
}

/// `Authorization: Bearer <jwt>` from `POST /api/auth/login`.
#[derive(Debug, SecurityScheme)]
#[oai(ty = "bearer", bearer_format = "JWT", checker = "authenticate")]
pub struct BearerAuth(pub AuthUser);

impl BearerAuth {
    pub fn user_id(&self) -> UserId {
        self.0.user_id
    }
}

async fn authenticate(req: &Request, bearer: Bearer) -> poem::Result<AuthUser> {
    let state = req
        .data::<AppState>()
        .ok_or_else(|| ApiError::internal("application state missing from the request"))?;
    Ok(state.authenticate(&bearer.token).await?)
}

/// The answer for any unusable token: the same whatever the reason, so a
/// client learns nothing about why.
pub fn invalid_token() -> ApiError {
    ApiError::unauthorized(
        ErrorCode::InvalidToken,
        "El token de acceso no es válido o ha expirado.",
    )
}
