//! One behaviour suite for the data layer, run against both engines:
//! every test below runs once on a fresh PostgreSQL database
//! (`ANB_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432/postgres`)
//! and once on a fresh SQLite file.

use std::future::Future;
use std::sync::Arc;

use anb_core::db::{
    Database, DbError, FinishedUpload, IdempotencyKey, NewVideo, ProcessedOutputs, QuotaExceeded,
    UploadBegun, UploadQuota, UploadStart, User, Video,
};
use anb_core::domain::{
    CityKey, Email, FailureReason, IllegalTransition, Pagination, SignUp, SignUpForm, UserId,
    VideoId, VideoStatus, VideoTitle,
};
use anb_core::jobs::TranscodeVideo;
use anb_queue::Queue;
use futures::FutureExt;
use tokio::sync::Barrier;

// ---------------------------------------------------------------- harness

mod support {
    use super::*;
    use sqlx::Connection;

    const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

    /// Runs `test` on a new, migrated PostgreSQL database, dropped afterwards.
    pub async fn on_postgres<F, Fut>(test: F)
    where
        F: FnOnce(Database) -> Fut,
        Fut: Future<Output = ()>,
    {
        let admin_url = std::env::var("ANB_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned());
        // A plain connection, without the application pool's statement timeout: creating
        // and dropping databases can take longer than a request may on a busy server.
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "PostgreSQL is not reachable at ANB_TEST_POSTGRES_URL={admin_url} ({error}); \
                     start it or point the variable at a server"
                )
            });
        let name = format!("anb_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create the test database");

        let mut url = url::Url::parse(&admin_url).expect("ANB_TEST_POSTGRES_URL is a URL");
        url.set_path(&name);
        let db = Database::connect(url.as_str())
            .await
            .expect("connect to the test database");
        db.migrate().await.expect("migrate the test database");

        let outcome = std::panic::AssertUnwindSafe(test(db.clone()))
            .catch_unwind()
            .await;
        db.close().await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await
        .expect("drop the test database");
        let _ = admin.close().await;
        if let Err(panic) = outcome {
            std::panic::resume_unwind(panic);
        }
    }

    /// Runs `test` on a new, migrated SQLite file in a temporary directory.
    pub async fn on_sqlite<F, Fut>(test: F)
    where
        F: FnOnce(Database) -> Fut,
        Fut: Future<Output = ()>,
    {
        let dir = tempfile::tempdir().expect("temporary directory");
        // The file does not exist yet: connecting must create it.
        let url = format!("sqlite://{}", dir.path().join("anb.db").display());
        let db = Database::connect(&url)
            .await
            .expect("open the SQLite database");
        db.migrate().await.expect("migrate the SQLite database");
        test(db.clone()).await;
        db.close().await;
    }
}

/// Declares each test function once per engine.
macro_rules! on_both_engines {
    ($($test:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    crate::support::on_postgres(super::$test).await;
                }
            )*
        }
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $test() {
                    crate::support::on_sqlite(super::$test).await;
                }
            )*
        }
    };
}

on_both_engines!(
    rankings_pages_are_kept_for_their_age_and_loaded_once,
    deep_rankings_pages_from_a_snapshot_match_the_offset_pages,
    migrations_can_run_again,
    ping_answers,
    signed_up_user_can_be_found,
    revoked_token_is_refused_and_pruned_once_expired,
    email_is_unique_whatever_its_case,
    stored_emails_are_brought_to_nfc,
    concurrent_duplicate_sign_ups_give_one_user,
    duplicate_sign_up_leaves_the_callers_transaction_usable,
    video_row_commits_or_rolls_back_with_the_callers_transaction,
    video_row_and_its_job_commit_together,
    a_transcode_job_is_unique_per_video,
    video_needs_an_existing_owner,
    owner_lists_own_videos_newest_first,
    public_video_goes_through_processing_and_is_published,
    private_video_is_published_on_request,
    publish_request_before_processing_publishes_when_processed,
    failed_video_keeps_its_reason_and_stays_failed,
    worker_transitions_follow_the_status_machine,
    released_video_waits_uploaded_until_an_attempt_claims_it,
    votes_follow_the_rules,
    concurrent_duplicate_votes_count_once,
    rankings_order_by_votes_then_sign_up,
    rankings_filter_by_normalised_city,
    rankings_paginate_with_global_positions,
    rankings_keep_ties_in_order_across_page_boundaries,
    public_list_paginates_newest_first,
    owner_deletes_unpublished_video,
    deleted_video_is_refused_to_the_worker,
    published_video_cannot_be_deleted,
    removing_a_voted_video_updates_the_rankings,
    concurrent_uploads_under_one_key_become_one_video,
    concurrent_uploads_cannot_both_pass_the_quota,
    an_upload_record_ends_with_its_video_or_its_abandonment,
);

// ---------------------------------------------------------------- uploads

fn upload_start(owner: &User, key: Option<&str>, quota: UploadQuota) -> UploadStart {
    let video_id = VideoId::new();
    UploadStart {
        video_id,
        owner_id: owner.id,
        original_key: format!("videos/{video_id}/original.mp4"),
        original_bytes: 1000,
        idempotency: key.map(|key| IdempotencyKey {
            key: key.to_owned(),
            fingerprint: "same request".to_owned(),
        }),
        quota,
    }
}

fn finished(start: &UploadStart, task_id: &str) -> FinishedUpload {
    FinishedUpload {
        video: NewVideo {
            id: start.video_id,
            owner_id: start.owner_id,
            title: VideoTitle::parse("Mi mejor jugada").unwrap(),
            is_public: false,
            original_key: start.original_key.clone(),
        },
        original_bytes: start.original_bytes,
        task_id: task_id.to_owned(),
        idempotency: start.idempotency.clone().map(|key| {
            (
                key,
                anb_core::db::now() + std::time::Duration::from_secs(3600),
            )
        }),
    }
}

/// Eight requests under one key at once, each finishing if it began: one
/// video; the others were told the key is in progress or got its answer.
async fn concurrent_uploads_under_one_key_become_one_video(db: Database) {
    const RACERS: usize = 8;
    let owner = sign_up(&db, "keys@example.com", "Ana", "Cali").await;
    let start = Arc::new(Barrier::new(RACERS));
    let racers: Vec<_> = (0..RACERS)
        .map(|i| {
            let (db, start, owner) = (db.clone(), start.clone(), owner.clone());
            tokio::spawn(async move {
                let upload = upload_start(&owner, Some("one-key"), UploadQuota::default());
                start.wait().await;
                match db.begin_upload(&upload).await? {
                    UploadBegun::Started => {
                        db.finish_upload(&finished(&upload, &i.to_string())).await?;
                        Ok::<_, DbError>(Some(upload.video_id))
                    }
                    UploadBegun::Replay(_) => Ok(None),
                }
            })
        })
        .collect();
    let mut videos = Vec::new();
    for racer in racers {
        match racer.await.unwrap() {
            Ok(Some(video)) => videos.push(video),
            Ok(None) | Err(DbError::IdempotencyKeyInProgress) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(videos.len(), 1, "{videos:?}");
    assert_eq!(db.list_user_videos(owner.id).await.unwrap().len(), 1);
    // Afterwards the key answers with that video.
    let retry = upload_start(&owner, Some("one-key"), UploadQuota::default());
    match db.begin_upload(&retry).await.unwrap() {
        UploadBegun::Replay(answer) => assert_eq!(answer.video_id, videos[0]),
        other => panic!("{other:?}"),
    }
    // Another request under it is refused.
    let mut other = upload_start(&owner, Some("one-key"), UploadQuota::default());
    other.idempotency.as_mut().unwrap().fingerprint = "another request".into();
    assert!(matches!(
        db.begin_upload(&other).await,
        Err(DbError::IdempotencyKeyReused)
    ));
}

/// Eight uploads at once with room for three: three begin, the rest are
/// over the quota, counting the uploads in progress.
async fn concurrent_uploads_cannot_both_pass_the_quota(db: Database) {
    const RACERS: usize = 8;
    let owner = sign_up(&db, "quota@example.com", "Ana", "Cali").await;
    let quota = UploadQuota {
        max_bytes: Some(3000),
        max_videos: Some(5),
    };
    let start = Arc::new(Barrier::new(RACERS));
    let racers: Vec<_> = (0..RACERS)
        .map(|_| {
            let (db, start, owner) = (db.clone(), start.clone(), owner.clone());
            tokio::spawn(async move {
                let upload = upload_start(&owner, None, quota);
                start.wait().await;
                db.begin_upload(&upload).await
            })
        })
        .collect();
    let mut begun = 0;
    for racer in racers {
        match racer.await.unwrap() {
            Ok(UploadBegun::Started) => begun += 1,
            Err(DbError::QuotaExceeded(QuotaExceeded::Bytes { max: 3000, .. })) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(begun, 3);
    // And by count.
    let counted = sign_up(&db, "count@example.com", "Ana", "Cali").await;
    let by_count = UploadQuota {
        max_bytes: None,
        max_videos: Some(1),
    };
    let first = upload_start(&counted, None, by_count);
    db.begin_upload(&first).await.unwrap();
    db.finish_upload(&finished(&first, "1")).await.unwrap();
    assert!(matches!(
        db.begin_upload(&upload_start(&counted, None, by_count))
            .await,
        Err(DbError::QuotaExceeded(QuotaExceeded::Videos {
            count: 1,
            max: 1
        }))
    ));
}

async fn an_upload_record_ends_with_its_video_or_its_abandonment(db: Database) {
    let owner = sign_up(&db, "records@example.com", "Ana", "Cali").await;
    let kept = upload_start(&owner, None, UploadQuota::default());
    let dropped = upload_start(&owner, None, UploadQuota::default());
    for upload in [&kept, &dropped] {
        db.begin_upload(upload).await.unwrap();
        assert!(db.video_folder_in_use(upload.video_id).await.unwrap());
    }
    let far_future = anb_core::db::now() + std::time::Duration::from_secs(60);
    assert_eq!(db.stale_uploads(far_future, 10).await.unwrap().len(), 2);
    db.finish_upload(&finished(&kept, "1")).await.unwrap();
    assert!(db.abandon_upload(dropped.video_id).await.unwrap());
    assert!(db.stale_uploads(far_future, 10).await.unwrap().is_empty());
    assert!(
        db.video_folder_in_use(kept.video_id).await.unwrap(),
        "the video row"
    );
    assert!(!db.video_folder_in_use(dropped.video_id).await.unwrap());
    // An abandoned upload cannot be recorded any more.
    assert!(matches!(
        db.finish_upload(&finished(&dropped, "2")).await,
        Err(DbError::UploadAbandoned)
    ));
    assert_eq!(db.list_user_videos(owner.id).await.unwrap().len(), 1);
}

// ---------------------------------------------------------------- helpers

async fn sign_up(db: &Database, email: &str, first_name: &str, city: &str) -> User {
    db.create_user(&signup_form(email, first_name, city), "$argon2id$v=19$stub")
        .await
        .expect("sign up")
}

fn signup_form(email: &str, first_name: &str, city: &str) -> SignUp {
    SignUp::parse(&SignUpForm {
        first_name: first_name.into(),
        last_name: "Tester".into(),
        email: email.into(),
        password1: "a long password".into(),
        password2: "a long password".into(),
        city: city.into(),
        country: "Colombia".into(),
    })
    .expect("valid sign-up")
}

async fn upload(db: &Database, owner: &User, title: &str, is_public: bool) -> Video {
    let id = VideoId::new();
    db.insert_video(&NewVideo {
        id,
        owner_id: owner.id,
        title: VideoTitle::parse(title).unwrap(),
        is_public,
        original_key: format!("originals/{id}.mp4"),
    })
    .await
    .expect("insert video")
}

fn outputs(id: VideoId) -> ProcessedOutputs {
    ProcessedOutputs {
        processed_key: format!("processed/{id}.mp4"),
        thumbnail_key: format!("thumbnails/{id}.jpg"),
    }
}

async fn process(db: &Database, video: &Video) -> Video {
    db.start_processing(video.id)
        .await
        .expect("start processing");
    db.mark_processed(video.id, &outputs(video.id))
        .await
        .expect("mark processed")
}

/// A processed, published video of `owner`.
async fn published_video(db: &Database, owner: &User, title: &str) -> Video {
    let video = upload(db, owner, title, true).await;
    let video = process(db, &video).await;
    assert!(video.is_published());
    video
}

async fn vote(db: &Database, voter: &User, video: &Video) {
    db.cast_vote(voter.id, video.id).await.expect("vote");
}

/// `count` fresh voters, each voting once for `video`.
async fn votes_from_new_users(db: &Database, video: &Video, count: usize) {
    for _ in 0..count {
        let voter = sign_up(
            db,
            &format!("fan-{}@example.com", UserId::new()),
            "Fan",
            "Cali",
        )
        .await;
        vote(db, &voter, video).await;
    }
}

fn names(entries: &[anb_core::db::RankingEntry]) -> Vec<&str> {
    entries
        .iter()
        .map(|entry| entry.first_name.as_str())
        .collect()
}

fn page(page: i64, limit: i64) -> Pagination {
    Pagination::new(Some(page), Some(limit)).unwrap()
}

// ---------------------------------------------------------------- schema

async fn migrations_can_run_again(db: Database) {
    db.migrate()
        .await
        .expect("a second migration run is a no-op");
    let user = sign_up(&db, "ana@example.com", "Ana", "Bogotá").await;
    db.migrate().await.expect("and keeps the data");
    assert!(db.find_user(user.id).await.unwrap().is_some());
}

async fn ping_answers(db: Database) {
    db.ping().await.expect("ping");
}

// ---------------------------------------------------------------- users

async fn signed_up_user_can_be_found(db: Database) {
    let user = sign_up(&db, "Ana.Gomez@Example.com", "Ana", "Bogotá").await;
    assert_eq!(user.email, "ana.gomez@example.com");

    let found = db.find_user(user.id).await.unwrap().expect("user by id");
    assert_eq!(found, user);

    let login_email = Email::parse("ANA.GOMEZ@example.COM").unwrap();
    let credentials = db
        .find_credentials(&login_email)
        .await
        .unwrap()
        .expect("credentials");
    assert_eq!(credentials.user_id, user.id);
    assert_eq!(credentials.password_hash, "$argon2id$v=19$stub");

    let unknown = Email::parse("nobody@example.com").unwrap();
    assert!(db.find_credentials(&unknown).await.unwrap().is_none());
    assert!(db.find_user(UserId::new()).await.unwrap().is_none());
}

async fn revoked_tokens_count(db: &Database) -> i64 {
    let sql = "SELECT COUNT(*) FROM revoked_tokens";
    match db {
        Database::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
        Database::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
    }
}

async fn revoked_token_is_refused_and_pruned_once_expired(db: Database) {
    let user = sign_up(&db, "ana@example.com", "Ana", "Bogotá").await;
    let (kept, revoked, stale) = (
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4(),
        uuid::Uuid::new_v4(),
    );
    assert!(db.token_accepted(user.id, kept).await.unwrap());
    assert!(db.token_accepted(user.id, revoked).await.unwrap());
    // Unknown user: refused whatever the token.
    assert!(!db.token_accepted(UserId::new(), kept).await.unwrap());

    let in_an_hour = anb_core::db::now() + time::Duration::hours(1);
    let an_hour_ago = anb_core::db::now() - time::Duration::hours(1);
    db.revoke_token(user.id, stale, an_hour_ago).await.unwrap();
    assert_eq!(revoked_tokens_count(&db).await, 1);

    db.revoke_token(user.id, revoked, in_an_hour).await.unwrap();
    db.revoke_token(user.id, revoked, in_an_hour).await.unwrap();
    assert!(!db.token_accepted(user.id, revoked).await.unwrap());
    assert!(db.token_accepted(user.id, kept).await.unwrap());
    // The stale revocation went with the next log-out; the live one stays once.
    assert_eq!(revoked_tokens_count(&db).await, 1);

    assert!(matches!(
        db.revoke_token(UserId::new(), kept, in_an_hour).await,
        Err(DbError::UserNotFound)
    ));
}

async fn email_is_unique_whatever_its_case(db: Database) {
    sign_up(&db, "ana@example.com", "Ana", "Bogotá").await;
    let again = db
        .create_user(&signup_form("ANA@Example.com", "Other", "Cali"), "hash")
        .await;
    assert!(matches!(again, Err(DbError::DuplicateEmail)), "{again:?}");
}

/// Puts `email` into a user's row as it was before addresses were normalised.
async fn store_email(db: &Database, user: &User, email: &str) {
    match db {
        Database::Postgres(pool) => {
            sqlx::query("UPDATE users SET email = $1 WHERE id = $2")
                .bind(email)
                .bind(user.id.as_uuid())
                .execute(pool)
                .await
                .unwrap();
        }
        Database::Sqlite(pool) => {
            sqlx::query("UPDATE users SET email = $1 WHERE id = $2")
                .bind(email)
                .bind(user.id.as_uuid())
                .execute(pool)
                .await
                .unwrap();
        }
    }
}

/// Runs the `nfc_emails` migration step again over the current rows.
async fn run_nfc_emails_step(db: &Database) {
    match db {
        Database::Postgres(pool) => {
            sqlx::raw_sql(include_str!(
                "../../migrations/postgres/20261202000100_nfc_emails.sql"
            ))
            .execute(pool)
            .await
            .unwrap();
        }
        Database::Sqlite(pool) => {
            sqlx::query("INSERT INTO pending_data_steps (name) VALUES ('nfc_emails')")
                .execute(pool)
                .await
                .unwrap();
            db.migrate().await.unwrap();
        }
    }
}

async fn stored_emails_are_brought_to_nfc(db: Database) {
    let jose = sign_up(&db, "jose@example.com", "José", "Cali").await;
    let zoe = sign_up(&db, "zo\u{e9}@example.com", "Zoé", "Cali").await;
    let zoe_again = sign_up(&db, "zoe@example.com", "Zoe", "Cali").await;
    // Rows written before addresses were normalised: one decomposed
    // address, and one that differs from another account's only by that.
    store_email(&db, &jose, "jose\u{301}@example.com").await;
    store_email(&db, &zoe_again, "zoe\u{301}@example.com").await;

    run_nfc_emails_step(&db).await;

    let email_of = async |user: &User| db.find_user(user.id).await.unwrap().unwrap().email;
    assert_eq!(email_of(&jose).await, "jos\u{e9}@example.com");
    let login = Email::parse("JOSE\u{301}@example.com").unwrap();
    let found = db.find_credentials(&login).await.unwrap().expect("found");
    assert_eq!(found.user_id, jose.id);
    // Two accounts for one address: neither is changed, nothing is lost.
    assert_eq!(email_of(&zoe).await, "zo\u{e9}@example.com");
    assert_eq!(email_of(&zoe_again).await, "zoe\u{301}@example.com");
    // The step ran once: the SQLite marker is gone, migrating again is a no-op.
    db.migrate().await.unwrap();
}

async fn concurrent_duplicate_sign_ups_give_one_user(db: Database) {
    const RACERS: usize = 8;
    let start = Arc::new(Barrier::new(RACERS));
    let racers: Vec<_> = (0..RACERS)
        .map(|i| {
            let (db, start) = (db.clone(), start.clone());
            tokio::spawn(async move {
                let form = signup_form("race@example.com", &format!("Racer{i}"), "Cali");
                start.wait().await;
                db.create_user(&form, "hash").await
            })
        })
        .collect();
    let mut created = 0;
    for racer in racers {
        match racer.await.unwrap() {
            Ok(_) => created += 1,
            Err(DbError::DuplicateEmail) => {}
            Err(other) => panic!("a duplicate sign-up must be DuplicateEmail, got {other:?}"),
        }
    }
    assert_eq!(created, 1);
}

async fn duplicate_sign_up_leaves_the_callers_transaction_usable(db: Database) {
    sign_up(&db, "ana@example.com", "Ana", "Bogotá").await;
    let mut tx = db.begin().await.unwrap();
    let duplicate = tx
        .create_user(&signup_form("ana@example.com", "Ana", "Cali"), "hash")
        .await;
    assert!(
        matches!(duplicate, Err(DbError::DuplicateEmail)),
        "{duplicate:?}"
    );
    let other = tx
        .create_user(&signup_form("beto@example.com", "Beto", "Cali"), "hash")
        .await
        .expect("the transaction still works");
    tx.commit().await.unwrap();
    assert!(db.find_user(other.id).await.unwrap().is_some());
}

// ---------------------------------------------------------------- videos

async fn video_row_commits_or_rolls_back_with_the_callers_transaction(db: Database) {
    let owner = sign_up(&db, "ana@example.com", "Ana", "Bogotá").await;
    let new_video = |id| NewVideo {
        id,
        owner_id: owner.id,
        title: VideoTitle::parse("Crossover drill").unwrap(),
        is_public: true,
        original_key: format!("originals/{id}.mp4"),
    };

    let rolled_back = VideoId::new();
    let mut tx = db.begin().await.unwrap();
    tx.insert_video(&new_video(rolled_back)).await.unwrap();
    assert!(
        tx.find_video(rolled_back).await.unwrap().is_some(),
        "visible inside"
    );
    tx.rollback().await.unwrap();
    assert!(db.find_video(rolled_back).await.unwrap().is_none());

    let dropped = VideoId::new();
    let mut tx = db.begin().await.unwrap();
    tx.insert_video(&new_video(dropped)).await.unwrap();
    drop(tx);
    assert!(
        db.find_video(dropped).await.unwrap().is_none(),
        "a dropped transaction rolls back"
    );

    let committed = VideoId::new();
    let mut tx = db.begin().await.unwrap();
    let inserted = tx.insert_video(&new_video(committed)).await.unwrap();
    tx.commit().await.unwrap();
    let found = db
        .find_video(committed)
        .await
        .unwrap()
        .expect("committed video");
    assert_eq!(found, inserted);
    assert_eq!(found.status, VideoStatus::Uploaded);
    assert_eq!(found.owner_id, owner.id);
    assert_eq!(found.title, "Crossover drill");
    assert_eq!(found.original_key, format!("originals/{committed}.mp4"));
    assert_eq!((found.progress_percent, found.votes), (0, 0));
    assert!(found.is_public && !found.is_published());
    assert_eq!(found.uploaded_at.offset(), time::UtcOffset::UTC);
    assert!(found.processed_at.is_none() && found.processed_key.is_none());
}

async fn video_row_and_its_job_commit_together(db: Database) {
    // The queue keeps its tables in the same database, beside ours.
    let queue = match &db {
        Database::Postgres(pool) => Queue::from_postgres_pool(pool.clone()).await,
        Database::Sqlite(pool) => Queue::from_sqlite_pool(pool.clone()).await,
    }
    .expect("set up the queue in the same database");
    db.migrate()
        .await
        .expect("our migrations ignore the queue's tables");
    let owner = sign_up(&db, "ana@example.com", "Ana", "Bogotá").await;

    let upload_in_tx = |id: VideoId| NewVideo {
        id,
        owner_id: owner.id,
        title: VideoTitle::parse("Atomic upload").unwrap(),
        is_public: true,
        original_key: format!("originals/{id}.mp4"),
    };
    let job_for = |video: &Video| TranscodeVideo {
        video_id: video.id,
        original_key: video.original_key.clone(),
    };

    let abandoned = VideoId::new();
    let mut tx = db.begin().await.unwrap();
    let video = tx.insert_video(&upload_in_tx(abandoned)).await.unwrap();
    tx.enqueue(&queue, &job_for(&video)).await.unwrap();
    tx.rollback().await.unwrap();
    assert!(db.find_video(abandoned).await.unwrap().is_none());
    assert_eq!(
        queue.stats().await.unwrap().ready,
        0,
        "the job rolled back with the row"
    );

    let kept = VideoId::new();
    let mut tx = db.begin().await.unwrap();
    let video = tx.insert_video(&upload_in_tx(kept)).await.unwrap();
    tx.enqueue(&queue, &job_for(&video)).await.unwrap();
    tx.commit().await.unwrap();
    assert!(db.find_video(kept).await.unwrap().is_some());
    assert_eq!(
        queue.stats().await.unwrap().ready,
        1,
        "the job committed with the row"
    );
}

/// A second transcode enqueue for a video whose job is waiting (a retried
/// commit, a repeated request) names the waiting job and stores nothing, so
/// the video is encoded once; another video gets its own job.
async fn a_transcode_job_is_unique_per_video(db: Database) {
    let queue = match &db {
        Database::Postgres(pool) => Queue::from_postgres_pool(pool.clone()).await,
        Database::Sqlite(pool) => Queue::from_sqlite_pool(pool.clone()).await,
    }
    .expect("set up the queue in the same database");
    let owner = sign_up(&db, "ana@example.com", "Ana", "Bogotá").await;
    let video = upload(&db, &owner, "Encoded once", true).await;
    let job = TranscodeVideo {
        video_id: video.id,
        original_key: video.original_key.clone(),
    };
    let mut ids = Vec::new();
    for _ in 0..2 {
        let mut tx = db.begin().await.unwrap();
        ids.push(tx.enqueue_unique(&queue, &job, job.unique()).await.unwrap());
        tx.commit().await.unwrap();
    }
    assert!(!ids[0].duplicate && ids[1].duplicate, "{ids:?}");
    assert_eq!(ids[0].id, ids[1].id);
    assert_eq!(
        queue.stats().await.unwrap().ready,
        1,
        "one job for the video"
    );

    let other = upload(&db, &owner, "Another video", true).await;
    let other_job = TranscodeVideo {
        video_id: other.id,
        original_key: other.original_key.clone(),
    };
    let mut tx = db.begin().await.unwrap();
    let enqueued = tx
        .enqueue_unique(&queue, &other_job, other_job.unique())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert!(!enqueued.duplicate);
    assert_eq!(queue.stats().await.unwrap().ready, 2);
}

async fn video_needs_an_existing_owner(db: Database) {
    let id = VideoId::new();
    let result = db
        .insert_video(&NewVideo {
            id,
            owner_id: UserId::new(),
            title: VideoTitle::parse("Nobody's video").unwrap(),
            is_public: true,
            original_key: "originals/x.mp4".into(),
        })
        .await;
    assert!(matches!(result, Err(DbError::UserNotFound)), "{result:?}");
}

async fn owner_lists_own_videos_newest_first(db: Database) {
    let ana = sign_up(&db, "ana@example.com", "Ana", "Bogotá").await;
    let beto = sign_up(&db, "beto@example.com", "Beto", "Cali").await;
    let first = upload(&db, &ana, "First upload", true).await;
    upload(&db, &beto, "Someone else's", true).await;
    let second = upload(&db, &ana, "Second upload", false).await;

    let listed: Vec<VideoId> = db
        .list_user_videos(ana.id)
        .await
        .unwrap()
        .iter()
        .map(|v| v.id)
        .collect();
    assert_eq!(listed, [second.id, first.id]);
    assert!(db.list_user_videos(UserId::new()).await.unwrap().is_empty());
}

async fn public_video_goes_through_processing_and_is_published(db: Database) {
    let owner = sign_up(&db, "ana@example.com", "Ana", "Bogotá").await;
    let video = upload(&db, &owner, "Three pointers", true).await;

    let processing = db.start_processing(video.id).await.unwrap();
    assert_eq!(processing.status, VideoStatus::Processing);
    db.update_progress(video.id, 40).await.unwrap();
    assert_eq!(
        db.find_video(video.id)
            .await
            .unwrap()
            .unwrap()
            .progress_percent,
        40
    );
    db.update_progress(video.id, 250).await.unwrap();
    assert_eq!(
        db.find_video(video.id)
            .await
            .unwrap()
            .unwrap()
            .progress_percent,
        100,
        "capped"
    );

    let processed = db
        .mark_processed(video.id, &outputs(video.id))
        .await
        .unwrap();
    assert_eq!(processed.status, VideoStatus::Processed);
    assert_eq!(processed.progress_percent, 100);
    assert_eq!(
        processed.processed_key,
        Some(format!("processed/{}.mp4", video.id))
    );
    assert_eq!(
        processed.thumbnail_key,
        Some(format!("thumbnails/{}.jpg", video.id))
    );
    let processed_at = processed.processed_at.expect("processed_at");
    assert!(processed_at >= processed.uploaded_at);
    assert_eq!(
        processed.published_at,
        Some(processed_at),
        "public videos publish on processing"
    );
    assert_eq!(db.find_video(video.id).await.unwrap().unwrap(), processed);

    // The player now appears in the rankings, with no votes yet.
    let ranking = db.rankings(None, Pagination::first()).await.unwrap();
    assert_eq!(names(&ranking), ["Ana"]);
    assert_eq!(ranking[0].votes, 0);
}

async fn private_video_is_published_on_request(db: Database) {
    let owner = sign_up(&db, "ana@example.com", "Ana", "Bogotá").await;
    let other = sign_up(&db, "beto@example.com", "Beto", "Cali").await;
    let video = upload(&db, &owner, "Private dunk", false).await;
    let processed = process(&db, &video).await;
    assert!(!processed.is_published());
    assert!(
        db.rankings(None, Pagination::first())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        db.list_public_videos(Pagination::first())
            .await
            .unwrap()
            .total,
        0
    );

    let refused = db.publish_video(other.id, video.id).await;
    assert!(
        matches!(refused, Err(DbError::NotVideoOwner)),
        "{refused:?}"
    );
    let unknown = db.publish_video(owner.id, VideoId::new()).await;
    assert!(
        matches!(unknown, Err(DbError::VideoNotFound)),
        "{unknown:?}"
    );

    let published = db.publish_video(owner.id, video.id).await.unwrap();
    assert!(published.is_published() && published.is_public);
    let again = db.publish_video(owner.id, video.id).await.unwrap();
    assert_eq!(again, published, "publishing twice changes nothing");

    assert_eq!(
        db.list_public_videos(Pagination::first())
            .await
            .unwrap()
            .total,
        1
    );
    let ranking = db.rankings(None, Pagination::first()).await.unwrap();
    assert_eq!(names(&ranking), ["Ana"]);
    vote(&db, &other, &published).await;
    assert_eq!(
        db.rankings(None, Pagination::first()).await.unwrap()[0].votes,
        1
    );
}

async fn publish_request_before_processing_publishes_when_processed(db: Database) {
    let owner = sign_up(&db, "ana@example.com", "Ana", "Bogotá").await;
    let video = upload(&db, &owner, "Private layup", false).await;
    let requested = db.publish_video(owner.id, video.id).await.unwrap();
    assert!(
        requested.is_public && !requested.is_published(),
        "not processed yet"
    );
    let processed = process(&db, &video).await;
    assert!(processed.is_published());
    let ranking = db.rankings(None, Pagination::first()).await.unwrap();
    assert_eq!(names(&ranking), ["Ana"]);
}

async fn failed_video_keeps_its_reason_and_stays_failed(db: Database) {
    let owner = sign_up(&db, "ana@example.com", "Ana", "Bogotá").await;
    let video = upload(&db, &owner, "Too short clip", true).await;
    db.start_processing(video.id).await.unwrap();
    let failed = db
        .mark_failed(
            video.id,
            &FailureReason::new("the video lasts 12 s; 20–60 s are accepted"),
        )
        .await
        .unwrap();
    assert_eq!(failed.status, VideoStatus::Failed);
    assert_eq!(
        failed.failure_reason.as_deref(),
        Some("the video lasts 12 s; 20–60 s are accepted")
    );
    assert!(!failed.is_published());

    let late = db.mark_processed(video.id, &outputs(video.id)).await;
    assert!(
        matches!(
            late,
            Err(DbError::IllegalTransition(IllegalTransition {
                from: VideoStatus::Failed,
                to: VideoStatus::Processed
            }))
        ),
        "{late:?}"
    );
    let publish = db.publish_video(owner.id, video.id).await;
    assert!(
        matches!(
            publish,
            Err(DbError::NotPublishable {
                status: VideoStatus::Failed
            })
        ),
        "{publish:?}"
    );
    assert!(
        db.rankings(None, Pagination::first())
            .await
            .unwrap()
            .is_empty()
    );
}

async fn released_video_waits_uploaded_until_an_attempt_claims_it(db: Database) {
    let owner = sign_up(&db, "ana@example.com", "Ana", "Bogotá").await;
    let video = upload(&db, &owner, "Free throws", false).await;

    // Nothing to give back before an attempt claims it.
    assert!(matches!(
        db.release_processing(video.id).await,
        Err(DbError::IllegalTransition(IllegalTransition {
            from: VideoStatus::Uploaded,
            to: VideoStatus::Uploaded
        }))
    ));
    db.start_processing(video.id).await.unwrap();
    db.update_progress(video.id, 65).await.unwrap();
    let released = db.release_processing(video.id).await.unwrap();
    assert_eq!(
        (released.status, released.progress_percent),
        (VideoStatus::Uploaded, 0)
    );
    // No attempt runs, so no progress is recorded, and the owner's rules are those of a
    // waiting upload: publishing is a request for later.
    assert!(matches!(
        db.update_progress(video.id, 70).await,
        Err(DbError::IllegalTransition(_))
    ));
    let requested = db.publish_video(owner.id, video.id).await.unwrap();
    assert!(requested.is_public && !requested.is_published());
    assert_eq!(
        db.list_public_videos(Pagination::first())
            .await
            .unwrap()
            .total,
        0
    );
    assert!(
        db.rankings(None, Pagination::first())
            .await
            .unwrap()
            .is_empty()
    );

    // The next attempt claims it and finishes: published, counted in the rankings once.
    let claimed = db.start_processing(video.id).await.unwrap();
    assert_eq!(
        (claimed.status, claimed.progress_percent),
        (VideoStatus::Processing, 0)
    );
    let processed = db
        .mark_processed(video.id, &outputs(video.id))
        .await
        .unwrap();
    assert!(processed.is_published());
    let ranking = db.rankings(None, Pagination::first()).await.unwrap();
    assert_eq!(names(&ranking), ["Ana"]);
    assert_eq!(
        db.list_public_videos(Pagination::first())
            .await
            .unwrap()
            .total,
        1
    );
    // Final states are never given back.
    assert!(matches!(
        db.release_processing(video.id).await,
        Err(DbError::IllegalTransition(IllegalTransition {
            from: VideoStatus::Processed,
            to: VideoStatus::Uploaded
        }))
    ));

    // A released video can be deleted like any waiting upload; then the worker is refused.
    let other = upload(&db, &owner, "Layups drill", false).await;
    db.start_processing(other.id).await.unwrap();
    db.release_processing(other.id).await.unwrap();
    db.delete_video(owner.id, other.id).await.unwrap();
    assert!(matches!(
        db.release_processing(other.id).await,
        Err(DbError::VideoNotFound)
    ));
    assert!(matches!(
        db.start_processing(other.id).await,
        Err(DbError::VideoNotFound)
    ));
}

async fn worker_transitions_follow_the_status_machine(db: Database) {
    let owner = sign_up(&db, "ana@example.com", "Ana", "Bogotá").await;
    let video = upload(&db, &owner, "Free throws", true).await;

    // Not processing yet: no progress, no result.
    assert!(matches!(
        db.update_progress(video.id, 10).await,
        Err(DbError::IllegalTransition(_))
    ));
    let early = db.mark_processed(video.id, &outputs(video.id)).await;
    assert!(
        matches!(
            early,
            Err(DbError::IllegalTransition(IllegalTransition {
                from: VideoStatus::Uploaded,
                to: VideoStatus::Processed
            }))
        ),
        "{early:?}"
    );

    // A redelivered job claims a video again, restarting its progress.
    db.start_processing(video.id).await.unwrap();
    db.update_progress(video.id, 70).await.unwrap();
    let reclaimed = db.start_processing(video.id).await.unwrap();
    assert_eq!(
        (reclaimed.status, reclaimed.progress_percent),
        (VideoStatus::Processing, 0)
    );

    db.mark_processed(video.id, &outputs(video.id))
        .await
        .unwrap();
    // Processed is final: a late duplicate job is told so and can acknowledge.
    let again = db.start_processing(video.id).await;
    assert!(
        matches!(
            again,
            Err(DbError::IllegalTransition(IllegalTransition {
                from: VideoStatus::Processed,
                to: VideoStatus::Processing
            }))
        ),
        "{again:?}"
    );
    assert!(matches!(
        db.mark_failed(video.id, &FailureReason::new("late")).await,
        Err(DbError::IllegalTransition(_))
    ));
    assert!(matches!(
        db.start_processing(VideoId::new()).await,
        Err(DbError::VideoNotFound)
    ));

    // A video that never started can fail directly (e.g. its job dead-lettered).
    let stuck = upload(&db, &owner, "Never started", true).await;
    let failed = db
        .mark_failed(stuck.id, &FailureReason::new("storage unreachable"))
        .await
        .unwrap();
    assert_eq!(failed.status, VideoStatus::Failed);
}

// ---------------------------------------------------------------- votes

async fn votes_follow_the_rules(db: Database) {
    let ana = sign_up(&db, "ana@example.com", "Ana", "Bogotá").await;
    let fan = sign_up(&db, "fan@example.com", "Fan", "Cali").await;
    let unpublished = upload(&db, &ana, "Not yet processed", true).await;
    let published = published_video(&db, &ana, "Step-back jumper").await;

    let not_votable = db.cast_vote(fan.id, unpublished.id).await;
    assert!(
        matches!(not_votable, Err(DbError::VideoNotFound)),
        "{not_votable:?}"
    );
    let unknown = db.cast_vote(fan.id, VideoId::new()).await;
    assert!(
        matches!(unknown, Err(DbError::VideoNotFound)),
        "{unknown:?}"
    );
    let own = db.cast_vote(ana.id, published.id).await;
    assert!(matches!(own, Err(DbError::OwnVideo)), "{own:?}");

    db.cast_vote(fan.id, published.id)
        .await
        .expect("first vote");
    let twice = db.cast_vote(fan.id, published.id).await;
    assert!(matches!(twice, Err(DbError::AlreadyVoted)), "{twice:?}");

    assert_eq!(db.find_video(published.id).await.unwrap().unwrap().votes, 1);
    assert_eq!(db.voted_video_ids(fan.id).await.unwrap(), [published.id]);
    assert!(db.voted_video_ids(ana.id).await.unwrap().is_empty());
    let ranking = db.rankings(None, Pagination::first()).await.unwrap();
    assert_eq!((ranking[0].player_id, ranking[0].votes), (ana.id, 1));
}

async fn concurrent_duplicate_votes_count_once(db: Database) {
    const RACERS: usize = 8;
    let ana = sign_up(&db, "ana@example.com", "Ana", "Bogotá").await;
    let fan = sign_up(&db, "fan@example.com", "Fan", "Cali").await;
    let video = published_video(&db, &ana, "Behind the back").await;

    let start = Arc::new(Barrier::new(RACERS));
    let racers: Vec<_> = (0..RACERS)
        .map(|_| {
            let (db, start) = (db.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                db.cast_vote(fan.id, video.id).await
            })
        })
        .collect();
    let mut counted = 0;
    for racer in racers {
        match racer.await.unwrap() {
            Ok(()) => counted += 1,
            Err(DbError::AlreadyVoted) => {}
            Err(other) => panic!("a duplicate vote must be AlreadyVoted, got {other:?}"),
        }
    }
    assert_eq!(counted, 1);
    assert_eq!(db.find_video(video.id).await.unwrap().unwrap().votes, 1);
    assert_eq!(
        db.rankings(None, Pagination::first()).await.unwrap()[0].votes,
        1
    );
}

// ---------------------------------------------------------------- rankings

async fn rankings_order_by_votes_then_sign_up(db: Database) {
    // Signed up in this order: ties go to the earlier sign-up.
    let ana = sign_up(&db, "ana@example.com", "Ana", "Bogotá").await;
    let beto = sign_up(&db, "beto@example.com", "Beto", "Cali").await;
    let carla = sign_up(&db, "carla@example.com", "Carla", "Medellín").await;
    let dario = sign_up(&db, "dario@example.com", "Dario", "Cali").await;
    let _no_videos = sign_up(&db, "eva@example.com", "Eva", "Cali").await;

    let beto_video = published_video(&db, &beto, "Beto's handles").await;
    let ana_video = published_video(&db, &ana, "Ana's fadeaway").await;
    let carla_first = published_video(&db, &carla, "Carla one").await;
    let carla_second = published_video(&db, &carla, "Carla two").await;
    published_video(&db, &dario, "Dario's block").await;
    upload(&db, &_no_videos, "Unprocessed video", true).await;

    votes_from_new_users(&db, &beto_video, 2).await;
    votes_from_new_users(&db, &ana_video, 2).await;
    // Votes over several videos add up per player.
    votes_from_new_users(&db, &carla_first, 2).await;
    votes_from_new_users(&db, &carla_second, 1).await;

    let ranking = db.rankings(None, Pagination::first()).await.unwrap();
    assert_eq!(names(&ranking), ["Carla", "Ana", "Beto", "Dario"]);
    let votes: Vec<i64> = ranking.iter().map(|entry| entry.votes).collect();
    assert_eq!(votes, [3, 2, 2, 0]);
    let positions: Vec<u64> = ranking.iter().map(|entry| entry.position).collect();
    assert_eq!(positions, [1, 2, 3, 4]);
    assert_eq!(ranking[0].city, "Medellín");
    assert_eq!(ranking[0].last_name, "Tester");
    assert_eq!(ranking[1].player_id, ana.id);
}

async fn rankings_filter_by_normalised_city(db: Database) {
    let ana = sign_up(&db, "ana@example.com", "Ana", "Bogotá").await;
    let beto = sign_up(&db, "beto@example.com", "Beto", "BOGOTA").await;
    let carla = sign_up(&db, "carla@example.com", "Carla", "Medellín").await;
    let ana_video = published_video(&db, &ana, "Ana in Bogotá").await;
    let beto_video = published_video(&db, &beto, "Beto in Bogota").await;
    let carla_video = published_video(&db, &carla, "Carla in Medellín").await;
    votes_from_new_users(&db, &beto_video, 2).await;
    votes_from_new_users(&db, &ana_video, 1).await;
    votes_from_new_users(&db, &carla_video, 5).await;

    for spelling in ["bogota", "Bogotá", "  BOGOTÁ "] {
        let city = CityKey::from_filter(spelling).unwrap();
        let ranking = db.rankings(Some(&city), Pagination::first()).await.unwrap();
        assert_eq!(names(&ranking), ["Beto", "Ana"], "{spelling}");
        let positions: Vec<u64> = ranking.iter().map(|entry| entry.position).collect();
        assert_eq!(positions, [1, 2], "positions count within the city");
        assert_eq!(ranking[0].city, "BOGOTA", "the city as the player wrote it");
    }
    let medellin = CityKey::from_filter("medellin").unwrap();
    assert_eq!(
        names(
            &db.rankings(Some(&medellin), Pagination::first())
                .await
                .unwrap()
        ),
        ["Carla"]
    );
    let nowhere = CityKey::from_filter("Barranquilla").unwrap();
    assert!(
        db.rankings(Some(&nowhere), Pagination::first())
            .await
            .unwrap()
            .is_empty()
    );
}

async fn rankings_paginate_with_global_positions(db: Database) {
    let mut players = Vec::new();
    for (i, name) in ["Ana", "Beto", "Carla", "Dario", "Eva"]
        .into_iter()
        .enumerate()
    {
        let player = sign_up(
            &db,
            &format!("{}@example.com", name.to_lowercase()),
            name,
            "Cali",
        )
        .await;
        let video = published_video(&db, &player, &format!("{name}'s video")).await;
        // Ana gets 5 votes, Beto 4, … Eva 1.
        votes_from_new_users(&db, &video, 5 - i).await;
        players.push(player);
    }

    let second = db.rankings(None, page(2, 2)).await.unwrap();
    assert_eq!(names(&second), ["Carla", "Dario"]);
    assert_eq!(
        second.iter().map(|e| e.position).collect::<Vec<_>>(),
        [3, 4]
    );
    let third = db.rankings(None, page(3, 2)).await.unwrap();
    assert_eq!(names(&third), ["Eva"]);
    assert_eq!(third[0].position, 5);
    assert!(db.rankings(None, page(4, 2)).await.unwrap().is_empty());
    let all = db.rankings(None, page(1, 100)).await.unwrap();
    assert_eq!(all.len(), 5);
}

async fn rankings_keep_ties_in_order_across_page_boundaries(db: Database) {
    // Signed up in this order, with these votes and cities. Hugo's only
    // published video is taken down, so his row stays in the aggregate with
    // no published video: he must not rank, nor take a place on any page.
    let players = [
        ("Ana", 2, "Bogotá"),
        ("Hugo", 0, "Bogotá"),
        ("Beto", 1, "bogota"),
        ("Carla", 2, "Cali"),
        ("Dario", 1, "BOGOTÁ"),
        ("Eva", 2, "Cali"),
        ("Fabio", 0, "Bogotá"),
        ("Gina", 1, "Bogota"),
    ];
    for (name, votes, city) in players {
        let player = sign_up(
            &db,
            &format!("{}@example.com", name.to_lowercase()),
            name,
            city,
        )
        .await;
        let video = published_video(&db, &player, &format!("{name}'s video")).await;
        votes_from_new_users(&db, &video, votes).await;
        if name == "Hugo" {
            db.remove_video(video.id).await.unwrap();
        }
    }

    // Most votes first; ties (three players on 2 votes, three on 1) in
    // sign-up order, and each tie runs over a page boundary at 2 a page.
    let expected = ["Ana", "Carla", "Eva", "Beto", "Dario", "Gina", "Fabio"];
    let mut pages = Vec::new();
    for number in 1..=5 {
        let entries = db.rankings(None, page(number, 2)).await.unwrap();
        let positions: Vec<u64> = entries.iter().map(|e| e.position).collect();
        let first = 2 * u64::try_from(number).unwrap() - 1;
        assert_eq!(
            positions,
            (first..).take(entries.len()).collect::<Vec<_>>(),
            "page {number}"
        );
        pages.push(names(&entries).join(","));
    }
    assert_eq!(pages, ["Ana,Carla", "Eva,Beto", "Dario,Gina", "Fabio", ""]);
    let whole = db.rankings(None, page(1, 100)).await.unwrap();
    assert_eq!(names(&whole), expected);
    let votes: Vec<i64> = whole.iter().map(|e| e.votes).collect();
    assert_eq!(votes, [2, 2, 2, 1, 1, 1, 0]);

    // The same within a city, whatever the spelling of the filter: Ana,
    // then the three on 1 vote, then Fabio, with positions counted in the
    // city.
    let city = CityKey::from_filter("bogotá").unwrap();
    let mut city_pages = Vec::new();
    for number in 1..=4 {
        let entries = db.rankings(Some(&city), page(number, 2)).await.unwrap();
        for entry in &entries {
            assert_ne!(entry.city, "Cali", "{}", entry.first_name);
        }
        let positions: Vec<u64> = entries.iter().map(|e| e.position).collect();
        city_pages.push((names(&entries).join(","), positions));
    }
    assert_eq!(
        city_pages,
        [
            ("Ana,Beto".to_owned(), vec![1, 2]),
            ("Dario,Gina".to_owned(), vec![3, 4]),
            ("Fabio".to_owned(), vec![5]),
            (String::new(), vec![]),
        ]
    );
}

// ---------------------------------------------------------------- public list

async fn public_list_paginates_newest_first(db: Database) {
    let ana = sign_up(&db, "ana@example.com", "Ana", "Bogotá").await;
    let fan = sign_up(&db, "fan@example.com", "Fan", "Cali").await;
    let mut published = Vec::new();
    for i in 0..5 {
        published.push(published_video(&db, &ana, &format!("Video number {i}")).await);
    }
    upload(&db, &ana, "Still uploading", true).await;
    let private = upload(&db, &ana, "Private video", false).await;
    process(&db, &private).await;
    vote(&db, &fan, &published[4]).await;

    let first = db.list_public_videos(page(1, 2)).await.unwrap();
    assert_eq!(first.total, 5);
    assert_eq!(first.pagination, page(1, 2));
    let ids: Vec<VideoId> = first.items.iter().map(|v| v.id).collect();
    assert_eq!(
        ids,
        [published[4].id, published[3].id],
        "newest publication first"
    );
    let newest = &first.items[0];
    assert_eq!(newest.title, "Video number 4");
    assert_eq!(newest.player_id, ana.id);
    assert_eq!(
        (
            newest.player_first_name.as_str(),
            newest.player_city.as_str()
        ),
        ("Ana", "Bogotá")
    );
    assert_eq!(newest.votes, 1);
    assert_eq!(newest.processed_key, published[4].processed_key);
    assert_eq!(Some(newest.published_at), published[4].published_at);

    let last = db.list_public_videos(page(3, 2)).await.unwrap();
    assert_eq!(
        last.items.iter().map(|v| v.id).collect::<Vec<_>>(),
        [published[0].id]
    );
    assert!(
        db.list_public_videos(page(4, 2))
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

// ---------------------------------------------------------------- deletion

async fn owner_deletes_unpublished_video(db: Database) {
    let ana = sign_up(&db, "ana@example.com", "Ana", "Bogotá").await;
    let beto = sign_up(&db, "beto@example.com", "Beto", "Cali").await;
    let video = upload(&db, &ana, "To be deleted", true).await;
    let kept = upload(&db, &ana, "To be kept", true).await;

    let not_owner = db.delete_video(beto.id, video.id).await;
    assert!(
        matches!(not_owner, Err(DbError::NotVideoOwner)),
        "{not_owner:?}"
    );

    let deleted = db.delete_video(ana.id, video.id).await.unwrap();
    assert_eq!(deleted.id, video.id);
    assert_eq!(
        deleted.storage_keys().collect::<Vec<_>>(),
        [video.original_key.as_str()]
    );
    assert!(db.find_video(video.id).await.unwrap().is_none());
    assert_eq!(
        db.list_user_videos(ana.id)
            .await
            .unwrap()
            .iter()
            .map(|v| v.id)
            .collect::<Vec<_>>(),
        [kept.id]
    );
    let twice = db.delete_video(ana.id, video.id).await;
    assert!(matches!(twice, Err(DbError::VideoNotFound)), "{twice:?}");

    // The row waits for its objects to be removed, then goes.
    assert_eq!(db.videos_awaiting_purge(10).await.unwrap(), [deleted]);
    assert!(db.purge_video(video.id).await.unwrap());
    assert!(!db.purge_video(video.id).await.unwrap());
    assert!(
        !db.purge_video(kept.id).await.unwrap(),
        "live videos are never purged"
    );
    assert!(db.videos_awaiting_purge(10).await.unwrap().is_empty());
}

async fn deleted_video_is_refused_to_the_worker(db: Database) {
    let ana = sign_up(&db, "ana@example.com", "Ana", "Bogotá").await;
    let video = upload(&db, &ana, "Deleted mid-job", true).await;
    db.start_processing(video.id).await.unwrap();
    db.delete_video(ana.id, video.id).await.unwrap();

    assert!(matches!(
        db.update_progress(video.id, 50).await,
        Err(DbError::VideoNotFound)
    ));
    let finished = db.mark_processed(video.id, &outputs(video.id)).await;
    assert!(
        matches!(finished, Err(DbError::VideoNotFound)),
        "{finished:?}"
    );
    let failed = db
        .mark_failed(video.id, &FailureReason::new("stopped"))
        .await;
    assert!(matches!(failed, Err(DbError::VideoNotFound)), "{failed:?}");
    assert!(
        db.find_video(video.id).await.unwrap().is_none(),
        "not resurrected"
    );
    assert!(
        db.rankings(None, Pagination::first())
            .await
            .unwrap()
            .is_empty()
    );
}

async fn published_video_cannot_be_deleted(db: Database) {
    let ana = sign_up(&db, "ana@example.com", "Ana", "Bogotá").await;
    let video = published_video(&db, &ana, "Showcase entry").await;
    let refused = db.delete_video(ana.id, video.id).await;
    assert!(
        matches!(refused, Err(DbError::VideoPublished)),
        "{refused:?}"
    );
    assert!(db.find_video(video.id).await.unwrap().is_some());
}

async fn removing_a_voted_video_updates_the_rankings(db: Database) {
    let ana = sign_up(&db, "ana@example.com", "Ana", "Bogotá").await;
    let beto = sign_up(&db, "beto@example.com", "Beto", "Cali").await;
    let fan = sign_up(&db, "fan@example.com", "Fan", "Cali").await;
    let ana_first = published_video(&db, &ana, "Ana first").await;
    let ana_second = published_video(&db, &ana, "Ana second").await;
    let beto_video = published_video(&db, &beto, "Beto only").await;
    vote(&db, &fan, &ana_first).await;
    votes_from_new_users(&db, &ana_first, 2).await;
    votes_from_new_users(&db, &ana_second, 1).await;
    votes_from_new_users(&db, &beto_video, 2).await;
    assert_eq!(
        names(&db.rankings(None, Pagination::first()).await.unwrap()),
        ["Ana", "Beto"]
    );

    // Moderation takes down Ana's most voted video: its 3 votes go.
    let removed = db.remove_video(ana_first.id).await.unwrap();
    assert_eq!(removed.id, ana_first.id);
    let ranking = db.rankings(None, Pagination::first()).await.unwrap();
    assert_eq!(names(&ranking), ["Beto", "Ana"]);
    assert_eq!(ranking[1].votes, 1);
    assert!(db.voted_video_ids(fan.id).await.unwrap().is_empty());
    assert_eq!(
        db.list_public_videos(Pagination::first())
            .await
            .unwrap()
            .total,
        2
    );

    // Without published videos a player leaves the rankings.
    db.remove_video(ana_second.id).await.unwrap();
    assert_eq!(
        names(&db.rankings(None, Pagination::first()).await.unwrap()),
        ["Beto"]
    );
    let gone = db.remove_video(ana_second.id).await;
    assert!(matches!(gone, Err(DbError::VideoNotFound)), "{gone:?}");
}

/// The rankings cache: a page is read once for all who ask within its age, a
/// vote shows once the age has passed, and an age of zero reads every time.
async fn rankings_pages_are_kept_for_their_age_and_loaded_once(db: Database) {
    use anb_core::rankings::Rankings;

    let owner = sign_up(&db, "ana@example.com", "Ana", "Bogotá").await;
    let video = published_video(&db, &owner, "Best dunk").await;
    let max_age = std::time::Duration::from_millis(1000);
    let rankings = Rankings::new(db.clone(), max_age);

    // Twenty readers at once share one load.
    let pages =
        futures::future::join_all((0..20).map(|_| rankings.page(None, Pagination::first()))).await;
    let first = pages[0].as_ref().unwrap().clone();
    assert_eq!(first[0].votes, 0);
    for page in &pages {
        assert!(Arc::ptr_eq(page.as_ref().unwrap(), &first), "loaded twice");
    }

    // A vote is not seen while the page is kept (the next read is well within
    // its age), and is seen once the age has passed.
    votes_from_new_users(&db, &video, 1).await;
    let voted_at = std::time::Instant::now();
    let kept = rankings.page(None, Pagination::first()).await.unwrap();
    if voted_at.elapsed() < max_age / 2 {
        assert!(Arc::ptr_eq(&kept, &first));
    }
    tokio::time::sleep(max_age + std::time::Duration::from_millis(50)).await;
    let fresh = rankings.page(None, Pagination::first()).await.unwrap();
    assert_eq!(fresh[0].votes, 1);
    // Another page or city is its own entry.
    let bogota = CityKey::from_filter("bogota").unwrap();
    let in_city = rankings
        .page(Some(&bogota), Pagination::first())
        .await
        .unwrap();
    assert_eq!(in_city[0].votes, 1);

    // Off: every read asks the database.
    let uncached = Rankings::new(db.clone(), std::time::Duration::ZERO);
    let once = uncached.page(None, Pagination::first()).await.unwrap();
    let twice = uncached.page(None, Pagination::first()).await.unwrap();
    assert!(!Arc::ptr_eq(&once, &twice));
    assert_eq!(once, twice);
}

/// Deep pages are cut from a snapshot of the order: the same entries, positions
/// and votes as the offset query gives, overall and in a city, up to the end.
async fn deep_rankings_pages_from_a_snapshot_match_the_offset_pages(db: Database) {
    use anb_core::rankings::Rankings;

    let cities = ["Bogotá", "Cali", "Medellín"];
    let mut videos = Vec::new();
    for n in 0..24 {
        let owner = sign_up(&db, &format!("p{n}@example.com"), "Ana", cities[n % 3]).await;
        videos.push(published_video(&db, &owner, "Best dunk").await);
    }
    // Votes for some, ties among the rest (broken by sign-up order).
    for (index, video) in videos.iter().enumerate().step_by(5) {
        votes_from_new_users(&db, video, index % 3 + 1).await;
    }
    let rankings = Rankings::new(db.clone(), std::time::Duration::from_secs(1)).snapshot_from(4);
    let cali = CityKey::from_filter("cali").unwrap();
    for city in [None, Some(&cali)] {
        let mut seen = 0;
        for number in 1..=6 {
            let page = page(number, 5);
            let from_snapshot = rankings.page(city, page).await.unwrap();
            let by_offset = db.rankings(city, page).await.unwrap();
            assert_eq!(
                &*from_snapshot,
                by_offset.as_slice(),
                "page {number} of {city:?}"
            );
            seen += by_offset.len();
        }
        assert_eq!(seen, if city.is_some() { 8 } else { 24 });
    }
}

/// A vote that meets a deletion committed after it began is refused and leaves
/// nothing behind: no vote row, no count. On PostgreSQL the vote is one statement
/// whose steps see one snapshot; its counter step waits for the deletion's row lock
/// and then finds the video deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_vote_racing_a_deletion_leaves_nothing_on_postgres() {
    support::on_postgres(|db| async move {
        let Database::Postgres(pool) = &db else {
            unreachable!()
        };
        let ana = sign_up(&db, "ana@example.com", "Ana", "Bogotá").await;
        let fan = sign_up(&db, "fan@example.com", "Fan", "Cali").await;
        let video = published_video(&db, &ana, "Behind the back").await;

        // The deletion holds the video's row while the vote starts.
        let mut deletion = pool.begin().await.unwrap();
        sqlx::query("UPDATE videos SET deleted_at = now() WHERE id = $1")
            .bind(video.id.as_uuid())
            .execute(&mut *deletion)
            .await
            .unwrap();
        let vote = tokio::spawn({
            let db = db.clone();
            async move { db.cast_vote(fan.id, video.id).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        deletion.commit().await.unwrap();

        let refused = vote.await.unwrap();
        assert!(
            matches!(refused, Err(DbError::VideoNotFound)),
            "{refused:?}"
        );
        let (rows, count): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM votes WHERE video_id = $1), \
                    (SELECT vote_count FROM videos WHERE id = $1)",
        )
        .bind(video.id.as_uuid())
        .fetch_one(pool)
        .await
        .unwrap();
        assert_eq!((rows, count), (0, 0));
    })
    .await;
}
