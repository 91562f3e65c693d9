//! The account use cases: sign-up, log-in and log-out.
//!
//! Each validates, hashes or checks and records through the domain, the
//! password slots and the database, and answers a typed outcome; the API only
//! parses the request and maps the outcome (and its own per-client limits).

use std::net::IpAddr;

use time::OffsetDateTime;
use uuid::Uuid;

use crate::auth::{AccessToken, AuthError, Passwords, TokenKeys};
use crate::db::{Database, DbError, User};
use crate::domain::{Email, FieldErrors, SignUp, SignUpForm, UserId};

/// Why a use case of this module failed.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// The sign-up form broke the field rules (every field at fault).
    #[error("invalid sign-up form")]
    Invalid(FieldErrors),
    /// No account has this address and password (an unknown address and a
    /// wrong password give the same).
    #[error("invalid credentials")]
    InvalidCredentials,
    /// Hashing or signing failed or is saturated ([`AuthError::Busy`], or
    /// [`AuthError::ClientBusy`] for a client holding its share of the line).
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The database refused or failed (e.g. [`DbError::DuplicateEmail`]).
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Registers a player: the form is validated, the password hashed on one of
/// the bounded slots in `client`'s turn (the address the request came
/// from), the account recorded (the address unique regardless of case and
/// Unicode form).
pub async fn sign_up(
    db: &Database,
    passwords: &Passwords,
    client: IpAddr,
    form: &SignUpForm,
) -> Result<User, AccountError> {
    let signup = SignUp::parse(form).map_err(AccountError::Invalid)?;
    let hash = passwords
        .hash(client, signup.password.expose_secret().to_owned())
        .await?;
    Ok(db.create_user(&signup, &hash).await?)
}

/// Exchanges an address and password for an access token, the password
/// checked in `client`'s turn (the address the request came from).
/// [`AccountError::InvalidCredentials`] for an unknown address — checked
/// against a decoy hash so it costs what a wrong password costs — or a wrong
/// password; `email` is `None` for an address that does not parse, which
/// cannot belong to anyone.
pub async fn log_in(
    db: &Database,
    passwords: &Passwords,
    tokens: &TokenKeys,
    client: IpAddr,
    email: Option<&Email>,
    password: String,
) -> Result<AccessToken, AccountError> {
    let credentials = match email {
        Some(email) => db.find_credentials(email).await?,
        None => None,
    };
    let (user_id, hash) = credentials.map(|c| (c.user_id, c.password_hash)).unzip();
    let matches = passwords.verify(client, password, hash).await?;
    let Some(user_id) = user_id.filter(|_| matches) else {
        return Err(AccountError::InvalidCredentials);
    };
    Ok(tokens.issue(&user_id.to_string())?)
}

/// Revokes the presented token (`token_id` of `user`) until it would expire
/// anyway; the user's other tokens keep working.
pub async fn log_out(
    db: &Database,
    user: UserId,
    token_id: Uuid,
    expires_at: OffsetDateTime,
) -> Result<(), AccountError> {
    Ok(db.revoke_token(user, token_id, expires_at).await?)
}
