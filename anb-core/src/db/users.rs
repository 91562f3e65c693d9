//! Users: sign-up and look-ups.

use sqlx::error::ErrorKind;
use uuid::Uuid;

use super::error::{on_unique_violation, violated_constraint};
use super::time::{DbTime, now};
use super::{Conn, Credentials, DbError, User};
use crate::domain::{CityKey, Email, SignUp, UserId};

#[derive(sqlx::FromRow)]
struct UserRow {
    id: Uuid,
    email: String,
    first_name: String,
    last_name: String,
    city: String,
    country: String,
    created_at: DbTime,
}

impl From<UserRow> for User {
    fn from(row: UserRow) -> Self {
        Self {
            id: UserId::from_uuid(row.id),
            email: row.email,
            first_name: row.first_name,
            last_name: row.last_name,
            city: row.city,
            country: row.country,
            created_at: row.created_at.into(),
        }
    }
}

#[derive(sqlx::FromRow)]
struct CredentialsRow {
    id: Uuid,
    password_hash: String,
}

impl Conn<'_> {
    pub(crate) async fn create_user(
        &mut self,
        signup: &SignUp,
        password_hash: &str,
    ) -> Result<User, DbError> {
        let user = User {
            id: UserId::new(),
            email: signup.email.as_str().to_owned(),
            first_name: signup.first_name.as_str().to_owned(),
            last_name: signup.last_name.as_str().to_owned(),
            city: signup.city.as_str().to_owned(),
            country: signup.country.as_str().to_owned(),
            created_at: now(),
        };
        let city_key = CityKey::of(&signup.city);
        // DO NOTHING rather than an error keeps the caller's transaction
        // usable on PostgreSQL; a concurrent sign-up with the same address
        // waits for the first to commit and then inserts nothing.
        let inserted = execute!(
            self,
            "INSERT INTO users \
                 (id, email, password_hash, first_name, last_name, city, city_key, country, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (email) DO NOTHING",
            user.id.as_uuid(),
            user.email.as_str(),
            password_hash,
            user.first_name.as_str(),
            user.last_name.as_str(),
            user.city.as_str(),
            city_key.as_str(),
            user.country.as_str(),
            DbTime(user.created_at),
        )
        .map_err(|error| on_unique_violation(error, DbError::DuplicateEmail))?;
        if inserted == 0 {
            return Err(DbError::DuplicateEmail);
        }
        Ok(user)
    }

    pub(crate) async fn find_user(&mut self, id: UserId) -> Result<Option<User>, DbError> {
        let row = fetch!(
            self,
            fetch_optional,
            UserRow,
            "SELECT id, email, first_name, last_name, city, country, created_at FROM users WHERE id = $1",
            id.as_uuid(),
        )?;
        Ok(row.map(User::from))
    }

    pub(crate) async fn find_credentials(
        &mut self,
        email: &Email,
    ) -> Result<Option<Credentials>, DbError> {
        let row = fetch!(
            self,
            fetch_optional,
            CredentialsRow,
            "SELECT id, password_hash FROM users WHERE email = $1",
            email.as_str(),
        )?;
        Ok(row.map(|row| Credentials {
            user_id: UserId::from_uuid(row.id),
            password_hash: row.password_hash,
        }))
    }
}

/// Maps a foreign-key violation (a user id that does not exist) to
/// [`DbError::UserNotFound`].
pub(crate) fn on_missing_user(error: sqlx::Error) -> DbError {
    match violated_constraint(&error) {
        Some(ErrorKind::ForeignKeyViolation) => DbError::UserNotFound,
        _ => DbError::Sqlx(error),
    }
}

/// The data steps SQLite migrations leave for the application because SQL
/// cannot do them there (see `pending_data_steps` in the SQLite migrations).
/// Each runs in one transaction with the removal of its marker, so it runs
/// exactly once.
pub(crate) async fn run_pending_sqlite_steps(pool: &sqlx::SqlitePool) -> Result<(), DbError> {
    let mut tx = pool.begin().await?;
    let pending: Vec<String> = sqlx::query_scalar("SELECT name FROM pending_data_steps")
        .fetch_all(&mut *tx)
        .await?;
    for step in pending {
        match step.as_str() {
            "nfc_emails" => nfc_emails_sqlite(&mut tx).await?,
            other => {
                return Err(DbError::CorruptData(format!(
                    "unknown pending data step {other:?} (a newer release wrote it?)"
                )));
            }
        }
        sqlx::query("DELETE FROM pending_data_steps WHERE name = ?")
            .bind(&step)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// What the PostgreSQL migration `nfc_emails` does in SQL: every stored
/// address to NFC, except where two accounts' addresses differ only in
/// their normalisation (neither is changed; see that migration).
async fn nfc_emails_sqlite(tx: &mut sqlx::SqliteConnection) -> Result<(), DbError> {
    use std::collections::HashMap;
    use unicode_normalization::UnicodeNormalization;
    let rows: Vec<(Uuid, String)> = sqlx::query_as("SELECT id, email FROM users")
        .fetch_all(&mut *tx)
        .await?;
    let mut by_normal_form: HashMap<String, Vec<(Uuid, String)>> = HashMap::new();
    for (id, email) in rows {
        by_normal_form
            .entry(email.nfc().collect())
            .or_default()
            .push((id, email));
    }
    for (normal, accounts) in by_normal_form {
        let [(id, email)] = accounts.as_slice() else {
            continue;
        };
        if *email != normal {
            sqlx::query("UPDATE users SET email = ? WHERE id = ?")
                .bind(&normal)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
    }
    Ok(())
}
