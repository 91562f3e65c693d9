//! Credentials: argon2id password hashes and HS256 access tokens (SPEC §4).
//!
//! Hashing is CPU- and memory-heavy on purpose; async callers should run
//! [`hash_password`] and [`verify_password`] on a blocking thread.

use std::time::{SystemTime, UNIX_EPOCH};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::JwtSecret;

/// Why a credential operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The stored hash is not a PHC string argon2 understands.
    #[error("stored password hash is malformed: {0}")]
    MalformedHash(String),
    /// Hashing itself failed (e.g. parameters rejected).
    #[error("password hashing failed: {0}")]
    Hashing(String),
    /// The token could not be created.
    #[error("token could not be signed: {0}")]
    Signing(#[source] jsonwebtoken::errors::Error),
    /// The token is missing a claim, expired, signed with another key or
    /// algorithm, or meant for another issuer or audience.
    #[error("access token rejected: {0}")]
    InvalidToken(String),
}

/// Hashes `password` with argon2id (OWASP parameters: 19 MiB, 2 passes) and a
/// random salt, as a PHC string that records the algorithm and parameters.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    let salt_bytes: [u8; 16] = rand::random();
    let salt =
        SaltString::encode_b64(&salt_bytes).map_err(|e| AuthError::Hashing(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| AuthError::Hashing(e.to_string()))
}

/// Checks `password` against a PHC hash made by [`hash_password`].
pub fn verify_password(password: &str, phc_hash: &str) -> Result<bool, AuthError> {
    let parsed =
        PasswordHash::new(phc_hash).map_err(|e| AuthError::MalformedHash(e.to_string()))?;
    match Argon2::default().verify_password(password.as_bytes(), &parsed) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::Password) => Ok(false),
        Err(e) => Err(AuthError::Hashing(e.to_string())),
    }
}

/// A hash of no one's password, to verify against when the account does not
/// exist so that a login for an unknown email costs the same time as a wrong
/// password (no account enumeration by timing).
pub fn decoy_password_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        hash_password("decoy password, never valid").expect("argon2 defaults are valid")
    })
}

/// The claims every access token carries; all are required and checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    pub iss: String,
    pub aud: String,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Expires at, seconds since the Unix epoch.
    pub exp: u64,
}

/// A freshly issued token and its lifetime in seconds.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub token: String,
    pub expires_in: u64,
}

/// Issues and verifies HS256 access tokens for one issuer and audience.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKeys(<redacted>)")
    }
}

impl TokenKeys {
    /// The `iss` claim of our tokens.
    pub const ISSUER: &'static str = "anb-rising-stars";
    /// The `aud` claim of our tokens.
    pub const AUDIENCE: &'static str = "anb-api";
    /// Token lifetime (the contract's `expires_in`).
    pub const LIFETIME_SECS: u64 = 3600;
    /// Clock skew tolerated between API instances.
    const LEEWAY_SECS: u64 = 30;

    pub fn new(secret: &JwtSecret) -> Self {
        // Pinned to HS256: a token claiming any other algorithm (including
        // `none`) is rejected before its signature is looked at.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        validation.set_issuer(&[Self::ISSUER]);
        validation.set_audience(&[Self::AUDIENCE]);
        validation.leeway = Self::LEEWAY_SECS;
        // Only an empty secret is refused, and a `JwtSecret` has at least 32 bytes.
        let non_empty = "a JwtSecret is never empty";
        Self {
            encoding: EncodingKey::from_secret(secret.expose()).expect(non_empty),
            decoding: DecodingKey::from_secret(secret.expose()).expect(non_empty),
            validation,
        }
    }

    /// Issues a token for `subject` (a user id), valid from now.
    pub fn issue(&self, subject: &str) -> Result<AccessToken, AuthError> {
        self.issue_at(subject, unix_now())
    }

    /// Issues a token as if the clock read `issued_at` (seconds since the epoch).
    pub fn issue_at(&self, subject: &str, issued_at: u64) -> Result<AccessToken, AuthError> {
        let claims = Claims {
            sub: subject.to_owned(),
            iss: Self::ISSUER.to_owned(),
            aud: Self::AUDIENCE.to_owned(),
            iat: issued_at,
            exp: issued_at + Self::LIFETIME_SECS,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(AuthError::Signing)?;
        Ok(AccessToken {
            token,
            expires_in: Self::LIFETIME_SECS,
        })
    }

    /// Verifies signature, algorithm, issuer, audience and expiry, and that
    /// the token was not issued in the future; returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| AuthError::InvalidToken(e.to_string()))?;
        let claims = data.claims;
        if claims.iat > unix_now() + Self::LEEWAY_SECS {
            return Err(AuthError::InvalidToken("issued in the future".into()));
        }
        if claims.sub.is_empty() {
            return Err(AuthError::InvalidToken("empty subject".into()));
        }
        Ok(claims)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;

    fn keys_for(secret: &str) -> TokenKeys {
        TokenKeys::new(&JwtSecret::parse("ANB_JWT_SECRET", secret).unwrap())
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn password_hash_is_argon2id_and_verifies_only_the_same_password() {
        let hash = hash_password("correct horse battery").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(!hash.contains("correct horse"));
        assert!(verify_password("correct horse battery", &hash).unwrap());
        assert!(!verify_password("correct horse battery!", &hash).unwrap());
        assert_ne!(
            hash,
            hash_password("correct horse battery").unwrap(),
            "salted"
        );
        assert!(matches!(
            verify_password("x", "not a hash"),
            Err(AuthError::MalformedHash(_))
        ));
        assert!(!verify_password("anything", decoy_password_hash()).unwrap());
    }

    #[test]
    fn issued_token_verifies_with_all_claims() {
        let keys = keys_for(SECRET);
        let issued = keys.issue("user-1").unwrap();
        assert_eq!(issued.expires_in, 3600);
        let claims = keys.verify(&issued.token).unwrap();
        assert_eq!(claims.sub, "user-1");
        assert_eq!(claims.iss, TokenKeys::ISSUER);
        assert_eq!(claims.aud, TokenKeys::AUDIENCE);
        assert_eq!(claims.exp - claims.iat, 3600);
    }

    #[test]
    fn expired_foreign_or_tampered_tokens_are_rejected() {
        let keys = keys_for(SECRET);
        let expired = keys.issue_at("u", unix_now() - 2 * 3600).unwrap().token;
        assert!(keys.verify(&expired).is_err());
        let future = keys.issue_at("u", unix_now() + 3600).unwrap().token;
        assert!(keys.verify(&future).is_err());

        let other = keys_for(&"z".repeat(32)).issue("u").unwrap().token;
        assert!(keys.verify(&other).is_err());

        let mut tampered = keys.issue("u").unwrap().token;
        tampered.pop();
        assert!(keys.verify(&tampered).is_err());
    }

    fn sign(header: Header, claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(
            &header,
            claims,
            &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn wrong_issuer_audience_algorithm_or_missing_claims_are_rejected() {
        let keys = keys_for(SECRET);
        let now = unix_now();
        let good = serde_json::json!({"sub":"u","iss":TokenKeys::ISSUER,"aud":TokenKeys::AUDIENCE,"iat":now,"exp":now+60});
        assert!(
            keys.verify(&sign(Header::new(Algorithm::HS256), &good))
                .is_ok()
        );
        for (field, value) in [("iss", "someone-else"), ("aud", "another-api")] {
            let mut claims = good.clone();
            claims[field] = value.into();
            assert!(
                keys.verify(&sign(Header::new(Algorithm::HS256), &claims))
                    .is_err(),
                "{field}"
            );
        }
        for field in ["sub", "iss", "aud", "iat", "exp"] {
            let mut claims = good.clone();
            claims.as_object_mut().unwrap().remove(field);
            assert!(
                keys.verify(&sign(Header::new(Algorithm::HS256), &claims))
                    .is_err(),
                "{field}"
            );
        }
        // Same secret, another HMAC algorithm: refused because HS256 is pinned.
        assert!(
            keys.verify(&sign(Header::new(Algorithm::HS512), &good))
                .is_err()
        );
        // An unsigned token.
        let unsigned = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(good.to_string())
        );
        assert!(keys.verify(&unsigned).is_err());
    }
}
