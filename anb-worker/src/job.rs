//! The transcode job (SPEC §5): what the worker does with each upload the API enqueues.
//!
//! The video row is the source of truth: a job for a video that was deleted, or that is already
//! processed with its output present, is acknowledged without work, so redelivery is harmless.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anb_core::db::{Database, DbError, ProcessedOutputs};
use anb_core::domain::{FailureReason, VideoId, VideoStatus};
use anb_core::jobs::{PurgeDeletedVideos, TranscodeVideo};
use anb_core::storage::{ObjectKey, Storage, StorageError, VideoKeys};
use anb_queue::{CancelReason, JobContext, JobError};
use tokio::sync::watch;
use tracing::Instrument;

use crate::{TranscodeError, TranscodeOptions, check_size, transcode};

/// How often a running transcode checks that its video still exists, where the queue does
/// not cancel it on deletion ([`WorkerConfig::deletion_poll`]).
pub const DELETION_POLL: Duration = Duration::from_secs(3);

/// Everything a transcode job needs; cheap to clone into each job.
#[derive(Debug, Clone)]
pub struct TranscodeJobs {
    db: Database,
    storage: Storage,
    options: Arc<TranscodeOptions>,
    deletion_poll: Option<Duration>,
}

/// How a job ended, for the log and for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The showcase video and thumbnail were written and the video marked processed.
    Processed,
    /// The upload breaks the rules; the video was marked failed with this reason.
    Rejected(String),
    /// Nothing to do: the video is gone, already processed or already failed.
    Skipped(&'static str),
    /// The video was deleted while it was being processed; its outputs were removed.
    DeletedMidway,
    /// The video was processed but its stored output had gone: it was encoded again and the
    /// outputs written back, its status (and publication) untouched.
    Repaired,
}

impl Outcome {
    /// The outcome's name in metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Processed => "processed",
            Self::Rejected(_) => "rejected",
            Self::Skipped(_) => "skipped",
            Self::DeletedMidway => "deleted",
            Self::Repaired => "repaired",
        }
    }
}

impl TranscodeJobs {
    pub fn new(db: Database, storage: Storage, options: TranscodeOptions) -> Self {
        Self {
            db,
            storage,
            options: Arc::new(options),
            deletion_poll: Some(DELETION_POLL),
        }
    }

    /// How often a running transcode checks that its video still exists; `None` when
    /// deletions cancel it through the queue ([`WorkerConfig::deletion_poll`]).
    pub fn deletion_poll(mut self, every: Option<Duration>) -> Self {
        self.deletion_poll = every;
        self
    }

    /// The queue handler: maps the outcome to the queue's retry rules. Failures of storage or the
    /// database are retried; on the last attempt the video is marked failed before the job is
    /// dead-lettered, so the player sees a reason instead of a video stuck in `processing`.
    pub async fn handle(&self, job: TranscodeVideo, ctx: JobContext) -> Result<(), JobError> {
        let span =
            tracing::info_span!("transcode", video_id = %job.video_id, attempt = ctx.attempt());
        async {
            match self.process(&job, Some(&ctx)).await {
                Ok(outcome) => {
                    tracing::info!(?outcome, "transcode job done");
                    crate::observability::job_done(outcome.label());
                    Ok(())
                }
                Err(error) => {
                    tracing::warn!(%error, "transcode attempt failed");
                    crate::observability::job_done(
                        if matches!(error, ProcessError::ShuttingDown) {
                            "interrupted"
                        } else {
                            "retry"
                        },
                    );
                    // A shutdown or a lost lease is never the video's failure: the queue
                    // releases the job (its attempt given back) or another worker holds it.
                    let interrupted = matches!(
                        ctx.cancel_reason(),
                        Some(CancelReason::Shutdown | CancelReason::LeaseLost)
                    );
                    if ctx.cancel_reason() == Some(CancelReason::Shutdown) {
                        self.release_video(job.video_id).await;
                    }
                    if ctx.is_last_attempt() && !interrupted {
                        let reason = FailureReason::new(format!(
                            "processing failed after {} attempts",
                            ctx.attempt()
                        ));
                        if let Err(mark) = self.db.mark_failed(job.video_id, &reason).await {
                            tracing::warn!(error = %mark, "could not mark the video failed");
                        }
                    }
                    Err(JobError::retryable(error))
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Runs one job. `ctx` (absent in tests that drive this directly) receives progress and
    /// lease renewals and signals shutdown.
    pub async fn process(
        &self,
        job: &TranscodeVideo,
        ctx: Option<&JobContext>,
    ) -> Result<Outcome, ProcessError> {
        let id = job.video_id;
        let keys = VideoKeys::new(id.into());
        let Some(video) = self.db.find_video(id).await? else {
            return Ok(Outcome::Skipped("the video was deleted"));
        };
        // A processed video whose output has gone (lost or removed from storage) is encoded
        // again in place: it stays `processed` and published, as its row already names the
        // outputs' keys; only the objects are written back.
        let repair = match video.status {
            VideoStatus::Processed => {
                if self.storage.exists(&keys.processed()).await? {
                    return Ok(Outcome::Skipped("already processed"));
                }
                tracing::warn!("processed video without its output: encoding it again");
                true
            }
            VideoStatus::Failed => return Ok(Outcome::Skipped("already failed")),
            VideoStatus::Uploaded | VideoStatus::Processing => false,
        };
        if !repair {
            match self.db.start_processing(id).await {
                Ok(_) => {}
                Err(DbError::VideoNotFound) => {
                    return Ok(Outcome::Skipped("the video was deleted"));
                }
                Err(DbError::IllegalTransition(_)) => {
                    return Ok(Outcome::Skipped("the video left processing"));
                }
                Err(other) => return Err(other.into()),
            }
        }

        let work = tempfile::Builder::new().prefix(WORK_DIR_PREFIX).tempdir()?;
        let input = work.path().join("original");
        let output = work.path().join("processed.mp4");
        let thumbnail = work.path().join("thumbnail.jpg");
        let original = ObjectKey::parse(job.original_key.as_str())?;
        // A HEAD request spares downloading an original the limits refuse (they may have been
        // lowered since the upload, or the object did not come through the API).
        let size = match self.storage.size(&original).await {
            Ok(size) => size,
            Err(StorageError::NotFound { .. }) if self.db.find_video(id).await?.is_none() => {
                return Ok(Outcome::Skipped("the video was deleted"));
            }
            Err(error) => return Err(error.into()),
        };
        if let Err(rejection) = check_size(size, &self.options.limits) {
            return self.reject(id, &rejection.into()).await;
        }
        match self.storage.download_to_file(&original, &input).await {
            Ok(_) => {}
            Err(StorageError::NotFound { .. }) if self.db.find_video(id).await?.is_none() => {
                return Ok(Outcome::Skipped("the video was deleted"));
            }
            Err(error) => return Err(error.into()),
        }

        match self
            .encode(id, &input, &output, &thumbnail, ctx, !repair)
            .await?
        {
            Ok(_report) => {}
            Err(TranscodeError::Cancelled) => {
                return if self.db.find_video(id).await?.is_none() {
                    Ok(Outcome::DeletedMidway)
                } else {
                    Err(ProcessError::ShuttingDown)
                };
            }
            Err(error) if error.is_permanent() => return self.reject(id, &error).await,
            Err(error) => return Err(ProcessError::Transcode(error)),
        }

        self.storage.upload_file(&keys.processed(), &output).await?;
        self.storage
            .upload_file(&keys.thumbnail(), &thumbnail)
            .await?;
        if repair {
            if self.db.find_video(id).await?.is_none() {
                self.storage.delete(&keys.processed()).await?;
                self.storage.delete(&keys.thumbnail()).await?;
                return Ok(Outcome::DeletedMidway);
            }
            return Ok(Outcome::Repaired);
        }
        let outputs = ProcessedOutputs {
            processed_key: keys.processed().as_str().to_owned(),
            thumbnail_key: keys.thumbnail().as_str().to_owned(),
        };
        match self.db.mark_processed(id, &outputs).await {
            Ok(_) => Ok(Outcome::Processed),
            Err(DbError::VideoNotFound) => {
                // Deleted while the outputs were being written: take them away again so
                // nothing outlives the video.
                self.storage.delete(&keys.processed()).await?;
                self.storage.delete(&keys.thumbnail()).await?;
                Ok(Outcome::DeletedMidway)
            }
            Err(other) => Err(other.into()),
        }
    }

    /// Returns a video whose job the queue is about to give back (the worker shutting down) to
    /// `uploaded` with progress 0: no attempt runs until another worker claims the job, and that
    /// attempt marks it `processing` again from 0. Called before the handler returns, while the
    /// job is still held, so it cannot undo the claim of the next attempt. A lost lease is left
    /// alone: another worker may already hold the job and have claimed the video.
    async fn release_video(&self, id: VideoId) {
        match self.db.release_processing(id).await {
            Ok(_) => tracing::info!("job given back: the video waits in `uploaded`"),
            // Deleted, never claimed, or a processed video being repaired: nothing to give back.
            Err(DbError::VideoNotFound | DbError::IllegalTransition(_)) => {}
            Err(error) => tracing::warn!(%error, "could not return the video to `uploaded`"),
        }
    }

    /// Marks the video failed with the reason the upload was refused.
    async fn reject(&self, id: VideoId, error: &TranscodeError) -> Result<Outcome, ProcessError> {
        let reason = FailureReason::new(error.to_string());
        match self.db.mark_failed(id, &reason).await {
            Ok(_) => Ok(Outcome::Rejected(reason.to_string())),
            Err(DbError::VideoNotFound) => Ok(Outcome::DeletedMidway),
            // A processed video being repaired stays processed: it was accepted once, and
            // rules changed since do not take it back.
            Err(DbError::IllegalTransition(_)) => {
                tracing::warn!(%reason, "the original no longer passes the rules; output not repaired");
                Ok(Outcome::Skipped("the original no longer passes the rules"))
            }
            Err(other) => Err(other.into()),
        }
    }

    /// Runs the CPU-bound transcode on a blocking thread while this task records progress,
    /// renews the lease and watches for deletion or shutdown, raising the cancel flag for either.
    async fn encode(
        &self,
        id: VideoId,
        input: &Path,
        output: &Path,
        thumbnail: &Path,
        ctx: Option<&JobContext>,
        record_progress: bool,
    ) -> Result<Result<crate::TranscodeReport, TranscodeError>, ProcessError> {
        let cancel = Arc::new(AtomicBool::new(false));
        let (progress_tx, mut progress_rx) = watch::channel(0u8);
        let span = tracing::Span::current();
        let running = crate::observability::EncodeRunning::start();
        let encoding = tokio::task::spawn_blocking({
            let (input, output, thumbnail) =
                (input.to_owned(), output.to_owned(), thumbnail.to_owned());
            let options = Arc::clone(&self.options);
            let cancel = Arc::clone(&cancel);
            move || {
                let _entered = span.enter();
                let _running = running;
                let result = transcode(
                    &input,
                    &output,
                    Some(&thumbnail),
                    &options,
                    |percent| {
                        progress_tx.send_if_modified(|last| {
                            let changed = percent != *last;
                            *last = percent;
                            changed
                        });
                    },
                    &cancel,
                );
                if let Ok(report) = &result {
                    crate::observability::encode_finished(report);
                }
                result
            }
        });
        tokio::pin!(encoding);

        let mut poll =
            tokio::time::interval(self.deletion_poll.unwrap_or(Duration::from_secs(24 * 3600)));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is at once; the video was just found.
        poll.tick().await;
        let mut recorded = 0u8;
        loop {
            tokio::select! {
                finished = &mut encoding => {
                    return finished.map_err(|join| ProcessError::Panicked(join.to_string()));
                }
                changed = progress_rx.changed() => {
                    if changed.is_err() { continue; }
                    let percent = *progress_rx.borrow_and_update();
                    // Every 5 % is plenty for a progress bar and spares the database.
                    if record_progress && (percent >= recorded.saturating_add(5) || percent == 100) {
                        recorded = percent;
                        if let Err(error) = self.db.update_progress(id, percent).await {
                            tracing::debug!(%error, "progress not recorded");
                        }
                        if let Some(ctx) = ctx && let Err(error) = ctx.report_progress(percent).await {
                            tracing::debug!(%error, "progress not reported to the queue");
                        }
                    }
                }
                _ = poll.tick(), if self.deletion_poll.is_some() => {
                    if matches!(self.db.find_video(id).await, Ok(None)) {
                        tracing::info!("video deleted while processing: cancelling");
                        cancel.store(true, Ordering::Relaxed);
                    }
                }
                // The queue fires this near the end of a shutdown's grace period (not when shutdown
                // begins, so a running encode gets the whole grace), on a lost lease, or on timeout.
                () = async { match ctx { Some(ctx) => ctx.cancelled().await, None => std::future::pending().await } } => {
                    cancel.store(true, Ordering::Relaxed);
                }
            }
        }
    }
}

/// A failure that retrying may fix.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("database: {0}")]
    Database(#[from] DbError),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("work directory: {0}")]
    WorkDir(#[from] std::io::Error),
    #[error("transcoding: {0}")]
    Transcode(TranscodeError),
    #[error("the transcode thread panicked: {0}")]
    Panicked(String),
    #[error("the worker is shutting down; the job will run again")]
    ShuttingDown,
}

/// How the worker process runs jobs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Jobs transcoded at once. One per two cores: x264 already uses every core it is given.
    pub concurrency: usize,
    /// How long in-flight jobs may run on after a shutdown signal before they are released.
    pub shutdown_grace: Duration,
    pub transcode: TranscodeOptions,
    /// How often the objects and rows of deleted videos left behind are removed
    /// ([`crate::purge`]): once per interval across all workers on a queue with unique keys,
    /// once per interval in each worker on SQS; `None` turns it off.
    pub purge_interval: Option<Duration>,
    /// How often videos whose job was dead-lettered without a handler to say so are marked
    /// failed ([`crate::reconcile`]); `None` turns it off.
    pub reconcile_interval: Option<Duration>,
    /// How long a claimed job stays leased without a heartbeat (renewed every third of it):
    /// a killed worker's job runs again elsewhere about this long after.
    pub lease: Duration,
    /// How often a running transcode checks that its video still exists, to stop when the
    /// player deletes it. `None` where the API cancels the job through the queue on
    /// deletion instead (the queue is the database: see
    /// [`anb_core::config::Settings::queue_in_database`]); the handler then stops when the
    /// queue fires its cancellation, at the next lease renewal (a third of `lease`).
    pub deletion_poll: Option<Duration>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            concurrency: (cores / 2).max(1),
            shutdown_grace: Duration::from_secs(30),
            transcode: TranscodeOptions::default(),
            purge_interval: Some(Duration::from_secs(300)),
            reconcile_interval: Some(Duration::from_secs(60)),
            lease: Duration::from_secs(30),
            deletion_poll: Some(DELETION_POLL),
        }
    }
}

/// Why the worker could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("database: {0}")]
    Database(#[from] DbError),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("queue: {0}")]
    Queue(#[from] anb_queue::QueueError),
}

/// Connects to the database, storage and queue the settings name.
pub async fn connect(
    settings: &anb_core::config::Settings,
) -> Result<(Database, Storage, anb_queue::Queue), WorkerError> {
    let db = Database::connect_with(settings.database_url.as_str(), &settings.pool).await?;
    let storage = Storage::from_url(
        &settings.storage_url,
        settings.s3_path_style,
        settings.jwt_secret.expose(),
    )
    .await?;
    let queue = anb_queue::Queue::connect(&settings.queue_url).await?;
    Ok((db, storage, queue))
}

/// The name every transcode's folder of temporary files starts with.
const WORK_DIR_PREFIX: &str = "anb-transcode-";

/// Removes the transcode folders in `parent` that no running job can still use: a folder
/// is deleted when its job ends, but not when its worker is killed (SIGKILL, out of memory,
/// power), and each holds a copy of an original and a partial output. A job runs at most its
/// wall-time budget, so a folder untouched for longer than `older_than` is left over.
/// Returns how many were removed.
pub fn remove_stale_work_dirs(parent: &Path, older_than: Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let is_ours = entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.starts_with(WORK_DIR_PREFIX));
        let stale = entry
            .metadata()
            .ok()
            .filter(|meta| meta.is_dir())
            .and_then(|meta| meta.modified().ok())
            .and_then(|modified| modified.elapsed().ok())
            .is_some_and(|age| age > older_than);
        if is_ours && stale {
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => removed += 1,
                Err(error) => {
                    tracing::warn!(%error, folder = %entry.path().display(), "cannot remove a left-over transcode folder");
                }
            }
        }
    }
    removed
}

/// Consumes transcode jobs from the queue until `shutdown` completes, then drains: running
/// jobs get `shutdown_grace` to finish, the rest are released for another worker. Beside the
/// jobs, removes what deleted videos left behind every `purge_interval` (a periodic
/// [`PurgeDeletedVideos`] job, run once per interval whatever the number of workers; on a
/// queue without unique keys, SQS, a loop in each worker) and marks failed the videos of
/// dead-lettered jobs every `reconcile_interval`.
pub async fn run(
    db: Database,
    storage: Storage,
    queue: anb_queue::Queue,
    config: WorkerConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), WorkerError> {
    let (stop_purge, purge_stopped) = watch::channel(false);
    // One pass per interval across the workers needs a key per tick; SQS has none.
    let (periodic_purge, purge_loop) = match config.purge_interval {
        Some(interval) if queue.supports_unique_jobs() => (Some(interval), None),
        Some(interval) => {
            tracing::info!(
                queue = ?queue.kind(),
                "the queue has no unique keys: each worker purges deleted videos on its own"
            );
            (None, Some(interval))
        }
        None => (None, None),
    };
    let purge = purge_loop.map(|interval| {
        tokio::spawn(crate::purge::run_periodically(
            db.clone(),
            storage.clone(),
            interval,
            async move {
                let mut stopped = purge_stopped;
                let _ = stopped.wait_for(|stop| *stop).await;
            },
        ))
    });
    let reconcile = config.reconcile_interval.map(|interval| {
        let mut stopped = stop_purge.subscribe();
        tokio::spawn(crate::reconcile::run_periodically(
            db.clone(),
            queue.clone(),
            interval,
            async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            },
        ))
    });
    // Twice the longest job's budget: a folder that old belongs to no running job, even one
    // of another worker on this host.
    let longest_job = config
        .transcode
        .bounds
        .wall_time_budget(config.transcode.limits.max_duration);
    let left_over = remove_stale_work_dirs(&std::env::temp_dir(), longest_job * 2);
    if left_over > 0 {
        tracing::info!(
            folders = left_over,
            "removed transcode folders a killed worker left"
        );
    }
    let jobs = TranscodeJobs::new(db.clone(), storage.clone(), config.transcode)
        .deletion_poll(config.deletion_poll);
    tracing::info!(concurrency = config.concurrency, queue = ?queue.kind(), "worker started");
    // Purge passes are jobs only where the queue has unique keys (not SQS, whose receive
    // also cannot keep them in a queue of their own).
    let purge_jobs = queue.supports_unique_jobs();
    let mut worker = anb_queue::Worker::new(queue)
        .name("anb-worker")
        .concurrency(config.concurrency)
        .shutdown_grace(config.shutdown_grace)
        .lease(config.lease)
        .handle(move |job: TranscodeVideo, ctx: JobContext| {
            let jobs = jobs.clone();
            async move { jobs.handle(job, ctx).await }
        });
    if purge_jobs {
        // Whatever this worker's own interval, it runs the passes other workers enqueue, in
        // their own queue: a pass never waits behind the transcodes.
        worker = worker.queue(anb_core::jobs::MAINTENANCE_QUEUE, 1).handle(
            move |_job: PurgeDeletedVideos, _ctx: JobContext| {
                let (db, storage) = (db.clone(), storage.clone());
                async move { crate::purge::handle(&db, &storage).await }
            },
        );
    }
    if let Some(interval) = periodic_purge {
        worker = worker.periodic(crate::purge::periodic_job(interval));
    }
    let consumed = worker.run_until(shutdown).await;
    stop_purge.send_replace(true);
    for (task, name) in [(purge, "purge"), (reconcile, "reconcile")] {
        if let Some(task) = task
            && let Err(error) = task.await
        {
            tracing::warn!(%error, task = name, "a background task failed");
        }
    }
    consumed?;
    tracing::info!("worker stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    fn folder_aged(parent: &Path, name: &str, age: Duration) -> std::path::PathBuf {
        let folder = parent.join(name);
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join("original"), b"bytes of an upload").unwrap();
        // Last, since adding the file moved the folder's time.
        std::fs::File::open(&folder)
            .unwrap()
            .set_modified(SystemTime::now() - age)
            .unwrap();
        folder
    }

    #[test]
    fn only_transcode_folders_older_than_any_job_are_removed() {
        let parent = tempfile::tempdir().unwrap();
        let hour = Duration::from_secs(3600);
        let left_over = folder_aged(parent.path(), "anb-transcode-left", 2 * hour);
        let running = folder_aged(parent.path(), "anb-transcode-running", Duration::ZERO);
        let not_ours = folder_aged(parent.path(), "another-program", 2 * hour);
        assert_eq!(remove_stale_work_dirs(parent.path(), hour), 1);
        assert!(!left_over.exists(), "the killed worker's folder is gone");
        assert!(running.exists(), "a running job keeps its folder");
        assert!(not_ours.exists(), "other programs' folders are left alone");
        assert_eq!(
            remove_stale_work_dirs(&parent.path().join("missing"), hour),
            0
        );
    }
}
