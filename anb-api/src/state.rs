//! What every request handler shares: settings, connections and limiters.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use anb_core::auth::{LineLimits, Passwords, TokenKeys};
use anb_core::config::Settings;
use anb_core::db::{Database, DbError};
use anb_core::domain::UserId;
use anb_core::storage::{ObjectKey, Storage, StorageError};
use anb_queue::{Queue, QueueError};
use metrics_exporter_prometheus::PrometheusHandle;
use time::OffsetDateTime;

use crate::error::ApiError;
use crate::media_check::MediaChecker;
use crate::observability::prometheus_handle;
use crate::rate_limit::RateLimiters;
use crate::security::{AuthUser, invalid_token};
use crate::settings::ApiSettings;

/// Lifetime of the media URLs handed to clients.
pub const MEDIA_URL_TTL: Duration = Duration::from_secs(3600);

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("opening the database: {0}")]
    Database(#[from] DbError),
    #[error("opening the storage: {0}")]
    Storage(#[from] StorageError),
    #[error("opening the queue: {0}")]
    Queue(#[from] QueueError),
}

/// The application state, cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState(Arc<AppStateInner>);

#[derive(Debug)]
pub struct AppStateInner {
    pub settings: Settings,
    pub api: ApiSettings,
    pub db: Database,
    pub storage: Storage,
    pub queue: Queue,
    /// How a job reaches `queue` from the transaction of the row it is about.
    pub delivery: JobDelivery,
    pub tokens: TokenKeys,
    /// Password hashing, one at a time per CPU, with a bounded waiting line.
    pub passwords: Passwords,
    pub limiters: RateLimiters,
    /// Upload content checks, bounded in number and time.
    pub media_checks: MediaChecker,
    pub metrics: PrometheusHandle,
    /// Ranking pages, each kept for `api.rankings_cache`.
    pub rankings: Rankings,
}

use anb_core::rankings::Rankings;
/// How uploads' jobs reach the queue (defined with the upload use case).
pub use anb_core::uploads::JobDelivery;

impl Deref for AppState {
    type Target = AppStateInner;

    fn deref(&self) -> &AppStateInner {
        &self.0
    }
}

impl AppState {
    /// Opens the database, storage and queue the settings name. When the
    /// queue URL is the database URL the queue shares the database's pool, so
    /// uploads enqueue their job in the transaction that records the video;
    /// otherwise they write it into the outbox (created here if missing) in
    /// that transaction. Sets up the queue's and the outbox's tables, but does
    /// not apply the application's migrations: see [`AppState::migrate`].
    pub async fn connect(settings: Settings, api: ApiSettings) -> Result<Self, StartupError> {
        let db = Database::connect_with(settings.database_url.as_str(), &settings.pool).await?;
        let storage = Storage::from_url(
            &settings.storage_url,
            settings.s3_path_style,
            settings.jwt_secret.expose(),
        )
        .await?;
        let shares = settings.queue_in_database();
        let (queue, delivery) = match (&db, shares) {
            (Database::Postgres(pool), true) => (
                Queue::from_postgres_pool(pool.clone()).await?,
                JobDelivery::SameDatabase,
            ),
            (Database::Sqlite(pool), true) => (
                Queue::from_sqlite_pool(pool.clone()).await?,
                JobDelivery::SameDatabase,
            ),
            (_, false) => (
                Queue::connect(&settings.queue_url).await?,
                JobDelivery::Outbox(db.outbox().await?),
            ),
        };
        Ok(Self::new(settings, api, db, storage, queue, delivery))
    }

    /// Assembles the state from already opened connections.
    /// [`JobDelivery::SameDatabase`] is right only if `queue` runs on `db`'s
    /// own database; otherwise pass `db`'s outbox ([`Database::outbox`]), whose
    /// relay publishes to the queue at `settings.queue_url`.
    pub fn new(
        settings: Settings,
        api: ApiSettings,
        db: Database,
        storage: Storage,
        queue: Queue,
        delivery: JobDelivery,
    ) -> Self {
        Self(Arc::new(AppStateInner {
            tokens: TokenKeys::new(&settings.jwt_secret),
            passwords: Passwords::per_cpu(LineLimits {
                queue: api.password_hash_queue,
                per_client: api.password_hash_queue_per_client,
            }),
            limiters: RateLimiters::new(&api.rate_limits, api.uploads.rate_per_user),
            media_checks: MediaChecker::default(),
            metrics: prometheus_handle(),
            rankings: Rankings::new(db.clone(), api.rankings_cache),
            settings,
            api,
            db,
            storage,
            queue,
            delivery,
        }))
    }

    /// Applies the database migrations (the queue and the outbox set up
    /// their own tables when the state connects).
    pub async fn migrate(&self) -> Result<(), DbError> {
        self.db.migrate().await
    }

    /// Checks a bearer token, that its user still exists (tokens of deleted
    /// users stop working at once) and that it was not revoked by a log-out.
    pub async fn authenticate(&self, token: &str) -> Result<AuthUser, ApiError> {
        let claims = self.tokens.verify(token).map_err(|_| invalid_token())?;
        let user_id: UserId = claims.sub.parse().map_err(|_| invalid_token())?;
        let token_id = claims.token_id().ok_or_else(invalid_token)?;
        let expires_at = OffsetDateTime::from_unix_timestamp(
            i64::try_from(claims.exp).map_err(|_| invalid_token())?,
        )
        .map_err(|_| invalid_token())?;
        if self
            .db
            .token_accepted(user_id, token_id)
            .await
            .map_err(ApiError::from)?
        {
            Ok(AuthUser {
                user_id,
                token_id,
                expires_at,
            })
        } else {
            Err(invalid_token())
        }
    }

    /// A playable URL for a stored object (presigned S3 or signed local),
    /// or `None` if the key is absent or the URL cannot be made (logged).
    pub async fn media_url(&self, key: Option<&str>) -> Option<String> {
        let key = ObjectKey::parse(key?.to_owned())
            .inspect_err(|e| tracing::error!(error = %e, "stored object key is invalid"))
            .ok()?;
        self.storage
            .url(&key, MEDIA_URL_TTL)
            .await
            .inspect_err(|e| tracing::error!(error = %e, key = %key, "media URL could not be made"))
            .ok()
    }
}
