//! What every request handler shares: settings, connections and limiters.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use anb_core::auth::{Passwords, TokenKeys};
use anb_core::config::Settings;
use anb_core::db::{Database, DbError};
use anb_core::domain::UserId;
use anb_core::storage::{ObjectKey, Storage, StorageError};
use anb_queue::{Queue, QueueError};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::error::ApiError;
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
    /// Whether the queue lives in the application's database, so a job can
    /// be enqueued in the same transaction as the row it is about.
    pub queue_shares_database: bool,
    pub tokens: TokenKeys,
    /// Password hashing, one at a time per CPU.
    pub passwords: Passwords,
    pub limiters: RateLimiters,
    pub metrics: PrometheusHandle,
}

impl Deref for AppState {
    type Target = AppStateInner;

    fn deref(&self) -> &AppStateInner {
        &self.0
    }
}

impl AppState {
    /// Opens the database, storage and queue the settings name. When the
    /// queue URL is the database URL the queue shares the database's pool, so
    /// uploads enqueue their job in the transaction that records the video.
    /// Does not apply migrations: see [`AppState::migrate`].
    pub async fn connect(settings: Settings, api: ApiSettings) -> Result<Self, StartupError> {
        let db = Database::connect(settings.database_url.as_str()).await?;
        let storage = Storage::from_url(
            &settings.storage_url,
            settings.s3_path_style,
            settings.jwt_secret.expose(),
        )
        .await?;
        let shares = settings.queue_url == settings.database_url.as_str();
        let queue = match (&db, shares) {
            (Database::Postgres(pool), true) => Queue::from_postgres_pool(pool.clone()).await?,
            (Database::Sqlite(pool), true) => Queue::from_sqlite_pool(pool.clone()).await?,
            (_, false) => Queue::connect(&settings.queue_url).await?,
        };
        Ok(Self::new(settings, api, db, storage, queue, shares))
    }

    /// Assembles the state from already opened connections.
    /// `queue_shares_database` must be true only if `queue` runs on `db`'s
    /// own database.
    pub fn new(
        settings: Settings,
        api: ApiSettings,
        db: Database,
        storage: Storage,
        queue: Queue,
        queue_shares_database: bool,
    ) -> Self {
        Self(Arc::new(AppStateInner {
            tokens: TokenKeys::new(&settings.jwt_secret),
            passwords: Passwords::per_cpu(),
            limiters: RateLimiters::new(&api.rate_limits),
            metrics: prometheus_handle(),
            settings,
            api,
            db,
            storage,
            queue,
            queue_shares_database,
        }))
    }

    /// Applies the database migrations (the queue sets up its own tables
    /// when it connects).
    pub async fn migrate(&self) -> Result<(), DbError> {
        self.db.migrate().await
    }

    /// Checks a bearer token and that its user still exists (tokens of
    /// deleted users stop working at once).
    pub async fn authenticate(&self, token: &str) -> Result<AuthUser, ApiError> {
        let claims = self.tokens.verify(token).map_err(|_| invalid_token())?;
        let user_id: UserId = claims.sub.parse().map_err(|_| invalid_token())?;
        match self
            .db
            .find_user(user_id)
            .await
            .map_err(ApiError::internal)?
        {
            Some(_) => Ok(AuthUser { user_id }),
            None => Err(invalid_token()),
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
