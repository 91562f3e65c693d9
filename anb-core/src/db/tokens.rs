//! Revoked access tokens: a log-out ends one token before it expires.

use time::OffsetDateTime;
use uuid::Uuid;

use super::time::{DbTime, now};
use super::users::on_missing_user;
use super::{Conn, DbError};
use crate::domain::UserId;

impl Conn<'_> {
    pub(crate) async fn token_accepted(
        &mut self,
        user: UserId,
        token_id: Uuid,
    ) -> Result<bool, DbError> {
        // One round trip answers both questions an authenticated request
        // asks: does the user still exist, and is this token still theirs.
        let found = fetch_scalar!(
            self,
            fetch_optional,
            Uuid,
            "SELECT u.id FROM users u WHERE u.id = $1 \
             AND NOT EXISTS (SELECT 1 FROM revoked_tokens r WHERE r.token_id = $2)",
            user.as_uuid(),
            token_id,
        )?;
        Ok(found.is_some())
    }

    pub(crate) async fn revoke_token(
        &mut self,
        user: UserId,
        token_id: Uuid,
        expires_at: OffsetDateTime,
    ) -> Result<(), DbError> {
        // A revocation matters only while its token could still be
        // presented; each log-out clears those that no longer can.
        execute!(
            self,
            "DELETE FROM revoked_tokens WHERE expires_at < $1",
            DbTime(now()),
        )?;
        execute!(
            self,
            "INSERT INTO revoked_tokens (token_id, user_id, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (token_id) DO NOTHING",
            token_id,
            user.as_uuid(),
            DbTime(expires_at),
        )
        .map_err(on_missing_user)?;
        Ok(())
    }
}
