//! Accounts: sign-up, login, log-out and the caller's profile.

use anb_core::accounts::AccountError;
use anb_core::domain::{Email, SignUpForm};
use poem::web::Data;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::{ApiError, problems};
use crate::rate_limit::ClientIp;
use crate::routes::json::JsonBody;
use crate::routes::params::{CityField, CountryField, EmailField, NameField};
use crate::routes::{ApiTags, utc};
use crate::security::BearerAuth;
use crate::state::AppState;

/// Sign-up, login and profile.
#[derive(Debug)]
pub struct AuthApi;

/// The sign-up form. Names, city and country need a letter (Unicode
/// category L); white space and invisible formatting at either end are
/// trimmed, what is left must have 2–50 characters and no control
/// characters. Values are stored in Unicode NFC.
#[derive(Debug, Object)]
pub struct SignupRequest {
    /// 2–50 characters, a letter at least.
    pub first_name: NameField,
    /// 2–50 characters, a letter at least.
    pub last_name: NameField,
    /// A valid address, unique regardless of case.
    pub email: EmailField,
    /// 8–128 characters.
    #[oai(write_only, validator(min_length = 8, max_length = 128))]
    pub password1: String,
    /// Must equal `password1`.
    #[oai(write_only, validator(min_length = 8, max_length = 128))]
    pub password2: String,
    /// 2–50 characters, a letter at least.
    pub city: CityField,
    /// 2–50 characters, a letter at least.
    pub country: CountryField,
}

#[derive(Debug, Object)]
pub struct SignupCreated {
    pub message: String,
    pub user_id: Uuid,
}

#[derive(Debug, ApiResponse)]
pub enum SignupResponse {
    /// The account was created.
    #[oai(status = 201)]
    Created(Json<SignupCreated>),
}

problems!(
    /// Sign-up failures.
    SignupProblems: 400, 413, 415, 429, 503
);

#[derive(Debug, Object)]
pub struct LoginRequest {
    /// Any text: an address no account has gets the same 401 as a wrong
    /// password.
    #[oai(validator(max_length = 254))]
    pub email: String,
    /// At most 128 characters.
    #[oai(write_only, validator(max_length = 128))]
    pub password: String,
}

#[derive(Debug, Object)]
pub struct LoginToken {
    /// A JWT (HS256) for `Authorization: Bearer`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the token expires (3600).
    pub expires_in: u64,
}

#[derive(Debug, ApiResponse)]
pub enum LoginResponse {
    /// Logged in.
    #[oai(status = 200)]
    Ok(Json<LoginToken>),
}

problems!(
    /// Login failures (the same 401 for an unknown email and a wrong password).
    LoginProblems: 400, 401, 413, 415, 429, 503
);

/// The caller's profile.
#[derive(Debug, Object)]
pub struct Profile {
    pub user_id: Uuid,
    pub first_name: String,
    pub last_name: String,
    pub email: String,
    pub city: String,
    pub country: String,
    pub created_at: OffsetDateTime,
}

#[derive(Debug, ApiResponse)]
pub enum ProfileResponse {
    #[oai(status = 200)]
    Ok(Json<Profile>),
}

problems!(
    /// Profile failures.
    ProfileProblems: 401
);

#[derive(Debug, Object)]
pub struct LoggedOut {
    pub message: String,
}

#[derive(Debug, ApiResponse)]
pub enum LogoutResponse {
    /// The presented token is revoked: from now on it gets 401 everywhere.
    #[oai(status = 200)]
    Ok(Json<LoggedOut>),
}

problems!(
    /// Log-out failures (an unusable or already revoked token).
    LogoutProblems: 401
);

#[OpenApi(tag = "ApiTags::Auth")]
impl AuthApi {
    /// Create a player account.
    ///
    /// Like log-in, sign-up hashes the password on a bounded number of
    /// slots: one client address may have at most
    /// `ANB_PASSWORD_HASH_QUEUE_PER_CLIENT` (default 2) log-ins and sign-ups
    /// in progress, beyond which it gets 429 `too_many_in_progress`; when the
    /// line for the slots is full, 503 `overloaded`. Both come with
    /// `Retry-After`.
    #[oai(path = "/api/auth/signup", method = "post", operation_id = "signup")]
    async fn signup(
        &self,
        state: Data<&AppState>,
        client: Data<&ClientIp>,
        body: JsonBody<SignupRequest>,
    ) -> Result<SignupResponse, SignupProblems> {
        state.limiters.signup_per_ip.check(&client.0.0)?;
        let form = SignUpForm {
            first_name: body.0.first_name.0,
            last_name: body.0.last_name.0,
            email: body.0.email.0,
            password1: body.0.password1,
            password2: body.0.password2,
            city: body.0.city.0,
            country: body.0.country.0,
        };
        let user = anb_core::accounts::sign_up(&state.db, &state.passwords, client.0.0, &form)
            .await
            .map_err(ApiError::from)?;
        Ok(SignupResponse::Created(Json(SignupCreated {
            message: "Usuario creado exitosamente.".into(),
            user_id: user.id.as_uuid(),
        })))
    }

    /// Exchange email and password for an access token.
    ///
    /// One client address may have at most
    /// `ANB_PASSWORD_HASH_QUEUE_PER_CLIENT` (default 2) log-ins and sign-ups
    /// in progress, beyond which it gets 429 `too_many_in_progress` at once;
    /// when the line for the hashing slots is full (all clients together),
    /// 503 `overloaded`. Both come with `Retry-After`. Free slots go to the
    /// waiting clients in turn.
    #[oai(path = "/api/auth/login", method = "post", operation_id = "login")]
    async fn login(
        &self,
        state: Data<&AppState>,
        client: Data<&ClientIp>,
        body: JsonBody<LoginRequest>,
    ) -> Result<LoginResponse, LoginProblems> {
        state.limiters.login_per_ip.check(&client.0.0)?;
        // A malformed address cannot belong to anyone: same answer as a
        // wrong password, after the same amount of work.
        let email = Email::parse(&body.0.email).ok();
        // Failures count per (account, client): an edge concern, kept here.
        let failures = &state.limiters.login_failures;
        if let Some(email) = &email {
            failures.check(email.as_str(), client.0.0)?;
        }
        let outcome = anb_core::accounts::log_in(
            &state.db,
            &state.passwords,
            &state.tokens,
            client.0.0,
            email.as_ref(),
            body.0.password,
        )
        .await;
        if let Some(email) = &email {
            match &outcome {
                Ok(_) => failures.succeeded(email.as_str(), client.0.0),
                Err(AccountError::InvalidCredentials) => {
                    failures.failed(email.as_str(), client.0.0)
                }
                Err(_) => {}
            }
        }
        let token = outcome.map_err(ApiError::from)?;
        Ok(LoginResponse::Ok(Json(LoginToken {
            access_token: token.token,
            token_type: "Bearer".into(),
            expires_in: token.expires_in,
        })))
    }

    /// End the session: revoke the presented token until it would expire.
    /// The caller's other tokens keep working.
    #[oai(path = "/api/auth/logout", method = "post", operation_id = "logout")]
    async fn logout(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
    ) -> Result<LogoutResponse, LogoutProblems> {
        anb_core::accounts::log_out(
            &state.db,
            auth.0.user_id,
            auth.0.token_id,
            auth.0.expires_at,
        )
        .await
        .map_err(ApiError::from)?;
        Ok(LogoutResponse::Ok(Json(LoggedOut {
            message: "Sesión cerrada exitosamente.".into(),
        })))
    }

    /// The caller's profile.
    #[oai(path = "/api/auth/me", method = "get", operation_id = "me")]
    async fn me(
        &self,
        state: Data<&AppState>,
        auth: BearerAuth,
    ) -> Result<ProfileResponse, ProfileProblems> {
        let user = state
            .db
            .find_user(auth.user_id())
            .await
            .map_err(ApiError::from)?
            .ok_or_else(crate::security::invalid_token)?;
        Ok(ProfileResponse::Ok(Json(Profile {
            user_id: user.id.as_uuid(),
            first_name: user.first_name,
            last_name: user.last_name,
            email: user.email,
            city: user.city,
            country: user.country,
            created_at: utc(user.created_at),
        })))
    }
}
