//! Data access on PostgreSQL or SQLite, chosen at run time from the URL.
//!
//! [`Database`] is a pool; [`Transaction`] an open transaction on it. Every
//! operation exists on both: on a `Database` it runs on its own (a write in
//! its own transaction), on a `Transaction` it joins the caller's, so a caller
//! can commit several steps at once — e.g. a video row and the job that will
//! process it, enqueued through the same transaction, directly or through the
//! outbox when the queue is a broker (the variants are public for that).
//!
//! Both engines run the same SQL: it sticks to what they share (`$n`
//! parameters, `ON CONFLICT`, `RETURNING`, partial indexes), and the schema
//! differs only in column types (see `migrations/`). Uniqueness is decided by
//! the database (`ON CONFLICT DO NOTHING` plus a unique constraint), so
//! concurrent duplicates give a typed conflict and leave the caller's
//! transaction usable.

use std::str::FromStr;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgConnection, PgPool, Postgres, Sqlite, SqliteConnection, SqlitePool};

/// Runs a query returning rows of `$row` (any `FromRow`) on whichever engine
/// `$conn` (a `&mut Conn`) is, binding the arguments in order; `$method` is
/// `fetch_one`, `fetch_optional` or `fetch_all`.
macro_rules! fetch {
    ($conn:expr, $method:ident, $row:ty, $sql:expr $(, $arg:expr)* $(,)?) => {
        match $conn {
            $crate::db::Conn::Postgres(c) => {
                ::sqlx::query_as::<_, $row>($sql)$(.bind($arg))*.$method(&mut **c).await
            }
            $crate::db::Conn::Sqlite(c) => {
                ::sqlx::query_as::<_, $row>($sql)$(.bind($arg))*.$method(&mut **c).await
            }
        }
    };
}

/// Like [`fetch!`] for queries returning a single column of type `$ty`.
macro_rules! fetch_scalar {
    ($conn:expr, $method:ident, $ty:ty, $sql:expr $(, $arg:expr)* $(,)?) => {
        match $conn {
            $crate::db::Conn::Postgres(c) => {
                ::sqlx::query_scalar::<_, $ty>($sql)$(.bind($arg))*.$method(&mut **c).await
            }
            $crate::db::Conn::Sqlite(c) => {
                ::sqlx::query_scalar::<_, $ty>($sql)$(.bind($arg))*.$method(&mut **c).await
            }
        }
    };
}

/// Runs a statement and gives the number of rows it changed.
macro_rules! execute {
    ($conn:expr, $sql:expr $(, $arg:expr)* $(,)?) => {
        match $conn {
            $crate::db::Conn::Postgres(c) => ::sqlx::query($sql)$(.bind($arg))*
                .execute(&mut **c)
                .await
                .map(|done| done.rows_affected()),
            $crate::db::Conn::Sqlite(c) => ::sqlx::query($sql)$(.bind($arg))*
                .execute(&mut **c)
                .await
                .map(|done| done.rows_affected()),
        }
    };
}

mod error;
mod models;
mod rankings;
mod time;
mod tokens;
mod uploads;
mod users;
mod videos;
mod votes;

pub use error::{DbError, QuotaExceeded};
pub use models::{
    Credentials, DeletedVideo, DirectUpload, FinishedUpload, IdempotencyKey, NewVideo, Page,
    PendingUpload, ProcessedOutputs, PublicVideo, RankedPlayer, RankingEntry, StaleUpload,
    UploadAnswer, UploadBegun, UploadQuota, UploadStart, User, Video,
};
pub use time::now;

use ::time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::{CityKey, Email, FailureReason, Pagination, SignUp, UserId, VideoId};

/// The table that records which of this crate's migrations ran. It is not
/// sqlx's default so the queue library's own migrations in the same database
/// keep their own history.
pub const MIGRATIONS_TABLE: &str = "anb_schema_migrations";

/// Which engine a [`Database`] runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Postgres,
    Sqlite,
}

/// Connection-pool settings.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    /// How long to wait for a free connection before failing.
    pub acquire_timeout: Duration,
    /// How long one statement may run: PostgreSQL's `statement_timeout` on
    /// every connection (which also bounds a wait for a lock), SQLite's busy
    /// timeout (how long a write waits for another writer). A statement
    /// stopped by it is an outage to retry ([`DbError::is_unavailable`]), so
    /// a held lock answers a fast 503 instead of piling requests up.
    pub statement_timeout: Duration,
}

impl Default for PoolSettings {
    /// A request waits at most 3 s for a connection and a statement runs at
    /// most 5 s: during an outage the caller answers "unavailable, retry"
    /// quickly instead of stacking up waits.
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_secs(3),
            statement_timeout: Duration::from_secs(5),
        }
    }
}

/// A connection pool to the platform's database.
#[derive(Debug, Clone)]
pub enum Database {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// An open transaction. Dropping it without [`commit`](Self::commit) rolls
/// it back.
#[derive(Debug)]
pub enum Transaction {
    Postgres(sqlx::Transaction<'static, Postgres>),
    Sqlite(sqlx::Transaction<'static, Sqlite>),
}

/// A borrowed connection of either engine: what every operation runs on.
pub(crate) enum Conn<'c> {
    Postgres(&'c mut PgConnection),
    Sqlite(&'c mut SqliteConnection),
}

/// A connection checked out of the pool.
enum Pooled {
    Postgres(PoolConnection<Postgres>),
    Sqlite(PoolConnection<Sqlite>),
}

impl Pooled {
    fn conn(&mut self) -> Conn<'_> {
        match self {
            Self::Postgres(c) => Conn::Postgres(c),
            Self::Sqlite(c) => Conn::Sqlite(c),
        }
    }
}

impl Database {
    /// Connects with default pool settings to `postgres://…` or
    /// `sqlite://path` (the SQLite file is created if missing).
    pub async fn connect(url: &str) -> Result<Self, DbError> {
        Self::connect_with(url, &PoolSettings::default()).await
    }

    /// Connects with the given pool settings.
    pub async fn connect_with(url: &str, settings: &PoolSettings) -> Result<Self, DbError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            // Sent in the start-up packet: every connection of the pool has
            // it from its first statement, with no extra round trip.
            let options = PgConnectOptions::from_str(url)?.options([(
                "statement_timeout",
                format!("{}ms", settings.statement_timeout.as_millis()),
            )]);
            let pool = PgPoolOptions::new()
                .max_connections(settings.max_connections)
                .acquire_timeout(settings.acquire_timeout)
                .connect_with(options)
                .await?;
            Ok(Self::Postgres(pool))
        } else if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                // WAL lets readers run while one connection writes; NORMAL
                // sync is durable under WAL except for the last commits on
                // power loss, the usual trade-off for a single host.
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                .busy_timeout(settings.statement_timeout);
            let pool = SqlitePoolOptions::new()
                .max_connections(settings.max_connections)
                .acquire_timeout(settings.acquire_timeout)
                .connect_with(options)
                .await?;
            Ok(Self::Sqlite(pool))
        } else {
            // Never echo the URL: it may hold a password.
            let scheme = url
                .split_once(':')
                .map_or("", |(scheme, _)| scheme)
                .to_owned();
            Err(DbError::UnsupportedUrl { scheme })
        }
    }

    pub fn engine(&self) -> Engine {
        match self {
            Self::Postgres(_) => Engine::Postgres,
            Self::Sqlite(_) => Engine::Sqlite,
        }
    }

    /// Applies this crate's pending migrations for the engine. Tables that
    /// other libraries keep in the same database are left alone.
    pub async fn migrate(&self) -> Result<(), DbError> {
        fn configured(mut migrator: sqlx::migrate::Migrator) -> sqlx::migrate::Migrator {
            migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
            migrator.set_ignore_missing(true);
            migrator
        }
        match self {
            Self::Postgres(pool) => {
                // Migrations wait for each other's lock and may rebuild
                // large tables: the per-statement limit of requests does
                // not apply to them.
                let mut conn = pool.acquire().await?;
                sqlx::query("SET statement_timeout = 0")
                    .execute(&mut *conn)
                    .await?;
                let migrated = configured(sqlx::migrate!("../migrations/postgres"))
                    .run(&mut *conn)
                    .await;
                // Back to the connection's start-up value before it returns
                // to the pool.
                sqlx::query("RESET statement_timeout")
                    .execute(&mut *conn)
                    .await?;
                migrated?
            }
            Self::Sqlite(pool) => {
                configured(sqlx::migrate!("../migrations/sqlite"))
                    .run(pool)
                    .await?;
                users::run_pending_sqlite_steps(pool).await?;
            }
        }
        Ok(())
    }

    /// Checks that the database answers (for readiness probes).
    pub async fn ping(&self) -> Result<(), DbError> {
        let mut pooled = self.acquire().await?;
        fetch_scalar!(&mut pooled.conn(), fetch_one, i32, "SELECT 1")?;
        Ok(())
    }

    /// Opens a transaction. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`): a transaction that reads first and writes later
    /// could otherwise fail with "database is locked" without waiting.
    pub async fn begin(&self) -> Result<Transaction, DbError> {
        Ok(match self {
            Self::Postgres(pool) => Transaction::Postgres(pool.begin().await?),
            Self::Sqlite(pool) => Transaction::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
        })
    }

    /// The transactional outbox in this database, its table (`anb_queue_outbox`) created
    /// if missing: for a queue that lives elsewhere (SQS, Redis), jobs are written there in
    /// the caller's transaction ([`Transaction::enqueue_via_outbox`]) and a relay publishes
    /// them ([`anb_queue::Outbox::relay`]).
    pub async fn outbox(&self) -> Result<anb_queue::Outbox, anb_queue::QueueError> {
        match self {
            Self::Postgres(pool) => anb_queue::Outbox::setup(pool.clone()).await,
            Self::Sqlite(pool) => anb_queue::Outbox::setup(pool.clone()).await,
        }
    }

    /// Closes every connection of the pool.
    pub async fn close(&self) {
        match self {
            Self::Postgres(pool) => pool.close().await,
            Self::Sqlite(pool) => pool.close().await,
        }
    }

    async fn acquire(&self) -> Result<Pooled, DbError> {
        Ok(match self {
            Self::Postgres(pool) => Pooled::Postgres(pool.acquire().await?),
            Self::Sqlite(pool) => Pooled::Sqlite(pool.acquire().await?),
        })
    }
}

impl Transaction {
    pub async fn commit(self) -> Result<(), DbError> {
        match self {
            Self::Postgres(tx) => tx.commit().await?,
            Self::Sqlite(tx) => tx.commit().await?,
        }
        Ok(())
    }

    pub async fn rollback(self) -> Result<(), DbError> {
        match self {
            Self::Postgres(tx) => tx.rollback().await?,
            Self::Sqlite(tx) => tx.rollback().await?,
        }
        Ok(())
    }

    pub fn engine(&self) -> Engine {
        match self {
            Self::Postgres(_) => Engine::Postgres,
            Self::Sqlite(_) => Engine::Sqlite,
        }
    }

    /// Enqueues `job` inside this transaction: it commits or rolls back with
    /// the rows written here. The queue must live in this same database
    /// (a PostgreSQL or SQLite queue); for other queues use
    /// [`enqueue_via_outbox`](Self::enqueue_via_outbox).
    pub async fn enqueue<J: anb_queue::Job>(
        &mut self,
        queue: &anb_queue::Queue,
        job: &J,
    ) -> Result<anb_queue::JobId, anb_queue::QueueError> {
        match self {
            Self::Postgres(tx) => queue.enqueue_tx(&mut **tx, job).await,
            Self::Sqlite(tx) => queue.enqueue_tx(&mut **tx, job).await,
        }
    }

    /// Like [`enqueue`](Self::enqueue), unless a job of the same name holds
    /// `unique`'s key: then nothing is enqueued and the holder's id comes
    /// back, marked as a duplicate.
    pub async fn enqueue_unique<J: anb_queue::Job>(
        &mut self,
        queue: &anb_queue::Queue,
        job: &J,
        unique: anb_queue::Unique,
    ) -> Result<anb_queue::Enqueued, anb_queue::QueueError> {
        match self {
            Self::Postgres(tx) => queue.enqueue_unique_tx(&mut **tx, job, unique).await,
            Self::Sqlite(tx) => queue.enqueue_unique_tx(&mut **tx, job, unique).await,
        }
    }

    /// Writes `job` into the outbox of this database inside this transaction,
    /// for a queue that lives elsewhere (SQS, Redis): it commits or rolls back
    /// with the rows written here, and the outbox's relay publishes it once
    /// committed, however long the queue is unreachable. Returns the outbox
    /// entry's id.
    pub async fn enqueue_via_outbox<J: anb_queue::Job>(
        &mut self,
        outbox: &anb_queue::Outbox,
        job: &J,
    ) -> Result<i64, anb_queue::QueueError> {
        match self {
            Self::Postgres(tx) => outbox.enqueue_tx(&mut **tx, job).await,
            Self::Sqlite(tx) => outbox.enqueue_tx(&mut **tx, job).await,
        }
    }

    fn conn(&mut self) -> Conn<'_> {
        match self {
            Self::Postgres(tx) => Conn::Postgres(tx),
            Self::Sqlite(tx) => Conn::Sqlite(tx),
        }
    }
}

/// Declares each operation once and gives it to both [`Transaction`] (joins
/// the caller's transaction) and [`Database`] (`read`: on a pooled
/// connection; `write`: in a transaction of its own; `statement`: a write that
/// is one statement on PostgreSQL, atomic by itself, so it runs there on a
/// pooled connection without `BEGIN`/`COMMIT` round trips, and in a transaction
/// of its own on SQLite, where it takes several).
macro_rules! operations {
    ($(
        $(#[$doc:meta])*
        $kind:ident fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty;
    )*) => {
        impl Transaction {
            $(
                $(#[$doc])*
                pub async fn $name(&mut self, $($arg: $ty),*) -> Result<$ret, DbError> {
                    self.conn().$name($($arg),*).await
                }
            )*
        }

        impl Database {
            $(
                $(#[$doc])*
                pub async fn $name(&self, $($arg: $ty),*) -> Result<$ret, DbError> {
                    operations!(@run $kind self, $name($($arg),*))
                }
            )*
        }
    };
    (@run read $db:ident, $name:ident($($arg:ident),*)) => {{
        let mut pooled = $db.acquire().await?;
        pooled.conn().$name($($arg),*).await
    }};
    (@run write $db:ident, $name:ident($($arg:ident),*)) => {{
        let mut tx = $db.begin().await?;
        let result = tx.conn().$name($($arg),*).await?;
        tx.commit().await?;
        Ok(result)
    }};
    (@run statement $db:ident, $name:ident($($arg:ident),*)) => {{
        match $db {
            Database::Postgres(_) => operations!(@run read $db, $name($($arg),*)),
            Database::Sqlite(_) => operations!(@run write $db, $name($($arg),*)),
        }
    }};
}

operations! {
    // ---- users ----

    /// Registers a user with an already hashed password.
    /// [`DbError::DuplicateEmail`] when the address is taken (also when two
    /// sign-ups race: exactly one wins).
    write fn create_user(signup: &SignUp, password_hash: &str) -> User;

    /// The user, if registered.
    read fn find_user(id: UserId) -> Option<User>;

    /// The id and password hash for a login attempt, if the address is registered.
    read fn find_credentials(email: &Email) -> Option<Credentials>;

    // ---- access tokens ----

    /// Whether a token of `user` with id `token_id` may still be used: the
    /// user exists and the token was not revoked.
    read fn token_accepted(user: UserId, token_id: Uuid) -> bool;

    /// Revokes one token of `user` until `expires_at` (when it would stop
    /// working anyway); revocations already past their expiry are pruned.
    /// Revoking a revoked token changes nothing.
    write fn revoke_token(user: UserId, token_id: Uuid, expires_at: OffsetDateTime) -> ();

    // ---- videos (owner) ----

    /// Records an uploaded video in status `uploaded`.
    /// [`DbError::UserNotFound`] when the owner does not exist.
    write fn insert_video(video: &NewVideo) -> Video;

    /// The video, unless unknown or deleted.
    read fn find_video(id: VideoId) -> Option<Video>;

    /// The owner's videos, newest upload first.
    read fn list_user_videos(owner: UserId) -> Vec<Video>;

    /// Publishes the owner's video: now if processed, else as soon as it is.
    /// Publishing a published video changes nothing. Errors:
    /// [`DbError::VideoNotFound`], [`DbError::NotVideoOwner`],
    /// [`DbError::NotPublishable`] (failed).
    write fn publish_video(owner: UserId, id: VideoId) -> Video;

    /// Takes the owner's unpublished video out of service: it disappears
    /// from every list, its votes are removed (and the ranking adjusted), and
    /// the worker is refused further updates. The row stays until
    /// [`purge_video`](Self::purge_video), so the caller can remove the stored
    /// objects first. Errors: [`DbError::VideoNotFound`],
    /// [`DbError::NotVideoOwner`], [`DbError::VideoPublished`].
    write fn delete_video(owner: UserId, id: VideoId) -> DeletedVideo;

    /// Takes any live video out of service, published or not (moderation):
    /// like [`delete_video`](Self::delete_video) without the owner's limits;
    /// a published video's votes and publication leave its player's ranking.
    /// [`DbError::VideoNotFound`] when there is no such live video.
    write fn remove_video(id: VideoId) -> DeletedVideo;

    /// Deleted videos whose rows still wait for [`purge_video`](Self::purge_video),
    /// oldest deletion first (for a clean-up task).
    read fn videos_awaiting_purge(limit: u32) -> Vec<DeletedVideo>;

    /// Drops the row of a deleted video once its objects are gone. `false`
    /// when there was no such deleted video.
    write fn purge_video(id: VideoId) -> bool;

    // ---- videos (worker) ----

    /// Claims the video for processing (`uploaded`/`processing` →
    /// `processing`, progress back to 0). A final status gives
    /// [`DbError::IllegalTransition`]; a deleted video [`DbError::VideoNotFound`].
    write fn start_processing(id: VideoId) -> Video;

    /// Gives a video back to the queue's waiting state (`processing` → `uploaded`, progress back
    /// to 0) when its job is released unfinished without counting the attempt (the worker
    /// shutting down): it shows `processing` again only when the next attempt claims it.
    /// Errors: [`DbError::IllegalTransition`] from any other status, [`DbError::VideoNotFound`]
    /// for a deleted video.
    write fn release_processing(id: VideoId) -> Video;

    /// Records encoding progress (capped at 100) of a video being processed.
    write fn update_progress(id: VideoId, percent: u8) -> ();

    /// `processing` → `processed` with its outputs; publishes it when the
    /// owner asked for it.
    write fn mark_processed(id: VideoId, outputs: &ProcessedOutputs) -> Video;

    /// `uploaded`/`processing` → `failed` with the reason.
    write fn mark_failed(id: VideoId, reason: &FailureReason) -> Video;

    // ---- uploads ----

    /// Records an upload whose file passed its checks as in progress, before
    /// its original is stored — unless its `Idempotency-Key` was already
    /// answered for the same request ([`UploadBegun::Replay`]: store nothing).
    /// Errors: [`DbError::IdempotencyKeyReused`] (the key went with another
    /// request), [`DbError::IdempotencyKeyInProgress`],
    /// [`DbError::QuotaExceeded`], [`DbError::UserNotFound`].
    write fn begin_upload(upload: &UploadStart) -> UploadBegun;

    /// Records a direct upload as in progress when it is created, with what
    /// it announced, before the client stores its original: the same checks
    /// and errors as [`begin_upload`](Self::begin_upload) (its key is
    /// [`PendingUpload::answer_key`]).
    write fn begin_direct_upload(upload: &UploadStart, direct: &DirectUpload) -> UploadBegun;

    /// The direct upload in progress under this id, if any (none once it
    /// was completed or removed). Callers check its owner.
    read fn pending_upload(video: VideoId) -> Option<PendingUpload>;

    /// The answer kept under the player's key, while it is kept.
    read fn upload_answer(owner: UserId, key: &str) -> Option<UploadAnswer>;

    /// Records the video of an upload in progress (and the answer under its
    /// key) and ends the upload's record; in the transaction that enqueues
    /// its job. [`DbError::UploadAbandoned`] when the record is gone (the
    /// clean-up gave the upload up: its original is being removed).
    write fn finish_upload(upload: &FinishedUpload) -> Video;

    /// Ends the record of an upload that will not become a video (its
    /// original was removed, or is about to be). `false` when there was none.
    write fn abandon_upload(video: VideoId) -> bool;

    /// Uploads in progress since before `started_before` (direct ones:
    /// expired before it), oldest first.
    read fn stale_uploads(started_before: OffsetDateTime, limit: u32) -> Vec<StaleUpload>;

    /// Whether anything names the video: a row (live or deleted) or an upload
    /// in progress.
    read fn video_folder_in_use(video: VideoId) -> bool;

    /// Drops the `Idempotency-Key` answers past their expiry; gives how many.
    write fn prune_upload_answers() -> u64;

    // ---- public ----

    /// Published videos, newest publication first, with their players.
    read fn list_public_videos(page: Pagination) -> Page<PublicVideo>;

    /// Records a vote. Errors: [`DbError::VideoNotFound`] (unknown, deleted or
    /// unpublished), [`DbError::OwnVideo`], [`DbError::AlreadyVoted`] (also
    /// when two votes race: exactly one counts), [`DbError::UserNotFound`].
    statement fn cast_vote(voter: UserId, video: VideoId) -> ();

    /// The videos the user voted for, latest vote first.
    read fn voted_video_ids(voter: UserId) -> Vec<VideoId>;

    /// Players by votes on their published videos (most first; ties go to the
    /// earlier sign-up), optionally only those of one city.
    read fn rankings(city: Option<&CityKey>, page: Pagination) -> Vec<RankingEntry>;

    /// The whole order of the rankings (as [`Self::rankings`] pages it), without names:
    /// what a snapshot for deep pages holds.
    read fn ranked_players(city: Option<&CityKey>) -> Vec<RankedPlayer>;

    /// The entries of `players`, numbered from `first_position`, with their names read
    /// now; a player no longer registered is left out.
    read fn ranking_entries(players: &[RankedPlayer], first_position: u64) -> Vec<RankingEntry>;
}
