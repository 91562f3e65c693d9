//! A backend from outside `anb-queue`, built on its public API only, that runs the whole
//! conformance kit against itself: jobs in a `Mutex` of one process, a `watch` channel to
//! wake idle workers. Copy it as the skeleton of your own backend; every operation of the
//! `Backend` contract is here, each in a few lines.
//!
//! It keeps one clock, milliseconds since the Unix epoch (as the SQLite backend does), for
//! run times, lease deadlines, unique periods and the time a job died.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anb_queue::{
    BackendKind, DeadJob, Enqueued, JobId, JobInfo, JobState, Queue, QueueError, QueueStats,
    backend::{Backend, ClaimRequest, ClaimedJob, Lease, NewJob, WorkSignal},
};
use anb_queue_testkit::{Capabilities, Fixture};
use async_trait::async_trait;
use tokio::sync::watch;

/// The last error of a job whose lease ran out.
const LEASE_EXPIRED: &str = "lease expired: the worker stopped renewing it (crashed or stalled)";

/// Milliseconds since the Unix epoch: the backend's clock.
fn now_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// `duration` from `now`, in the backend's clock (saturating: a delay of years is fine).
fn after(now: i64, duration: Duration) -> i64 {
    now.saturating_add(i64::try_from(duration.as_millis()).unwrap_or(i64::MAX))
}

/// Where a stored job is. A waiting job is `Ready` whether due now or delayed (`run_at`
/// tells them apart); a finished job is not stored at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Ready,
    Running,
    Dead,
}

/// The hold of one claim on a running job.
#[derive(Debug)]
struct Held {
    owner: String,
    token: String,
    until_ms: i64,
}

/// A stored job.
#[derive(Debug)]
struct StoredJob {
    name: String,
    payload: String,
    stage: Stage,
    /// Attempts started, the running one included.
    attempts: u32,
    max_attempts: u32,
    run_at_ms: i64,
    enqueued_at_ms: i64,
    /// `Some` exactly while `stage` is `Running`.
    held: Option<Held>,
    last_error: Option<String>,
    progress: Option<u8>,
    dead_at_ms: Option<i64>,
    /// The key it holds while unfinished, freed when it completes or dies.
    unique_key: Option<String>,
}

/// Everything the backend stores, behind one lock: each operation is atomic.
#[derive(Debug, Default)]
struct State {
    next_id: u64,
    next_claim: u64,
    /// By id, which is also the order of enqueueing.
    jobs: BTreeMap<u64, StoredJob>,
    /// Keys held while unfinished: (job name, key) -> the holder.
    unfinished_keys: HashMap<(String, String), u64>,
    /// Keys held for a period: (job name, key) -> the holder and the end of the period.
    period_keys: HashMap<(String, String), (u64, i64)>,
}

impl State {
    fn insert(&mut self, job: &NewJob, now: i64, unique_key: Option<String>) -> u64 {
        self.next_id += 1;
        let stored = StoredJob {
            name: job.name.to_owned(),
            payload: job.payload.clone(),
            stage: Stage::Ready,
            attempts: 0,
            max_attempts: job.max_attempts,
            run_at_ms: after(now, job.delay),
            enqueued_at_ms: now,
            held: None,
            last_error: None,
            progress: None,
            dead_at_ms: None,
            unique_key,
        };
        self.jobs.insert(self.next_id, stored);
        self.next_id
    }

    /// The running job this claim (owner and token) still holds. Every lease operation goes
    /// through here, so a stale claim finds nothing and its operation is a no-op.
    fn held_by(&mut self, owner: &str, lease: &Lease) -> Option<(u64, &mut StoredJob)> {
        let id: u64 = lease.id.as_str().parse().ok()?;
        let job = self.jobs.get_mut(&id)?;
        let held = job.held.as_ref()?;
        (held.owner == owner && held.token == lease.token).then_some((id, job))
    }

    /// Frees the unfinished key of job `id`, if it holds one.
    fn free_key(&mut self, id: u64) {
        let Some(job) = self.jobs.get_mut(&id) else {
            return;
        };
        if let Some(key) = job.unique_key.take() {
            self.unfinished_keys.remove(&(job.name.clone(), key));
        }
    }

    /// Makes the job this claim holds wait again until `run_at_ms`; `give_back` returns
    /// its attempt. Returns the job, or `None` for a stale claim.
    fn put_back(
        &mut self,
        owner: &str,
        lease: &Lease,
        run_at_ms: i64,
        give_back: bool,
    ) -> Option<&mut StoredJob> {
        let (_, job) = self.held_by(owner, lease)?;
        job.stage = Stage::Ready;
        job.held = None;
        job.run_at_ms = run_at_ms;
        if give_back {
            job.attempts = job.attempts.saturating_sub(1);
        }
        Some(job)
    }

    /// Moves job `id` to the dead letters with `error`, freeing its key.
    fn kill(&mut self, id: u64, error: &str, now: i64) {
        self.free_key(id);
        if let Some(job) = self.jobs.get_mut(&id) {
            job.stage = Stage::Dead;
            job.held = None;
            job.dead_at_ms = Some(now);
            job.last_error = Some(error.to_owned());
        }
    }

    /// Dead jobs, newest first (by when they died, then by id).
    fn dead_newest_first(&self) -> Vec<(u64, &StoredJob)> {
        let mut dead: Vec<_> = self
            .jobs
            .iter()
            .filter(|(_, job)| job.stage == Stage::Dead)
            .map(|(id, job)| (*id, job))
            .collect();
        dead.sort_by_key(|(id, job)| std::cmp::Reverse((job.dead_at_ms, *id)));
        dead
    }
}

fn dead_job(id: u64, job: &StoredJob) -> DeadJob {
    DeadJob {
        id: JobId::new(id.to_string()),
        name: job.name.clone(),
        payload: job.payload.clone(),
        attempts: job.attempts,
        last_error: job.last_error.clone(),
        dead_at_ms: job.dead_at_ms.unwrap_or_default(),
    }
}

/// An in-memory backend. Clones share the same jobs, so every `Queue` made from one reaches
/// them all.
#[derive(Debug, Clone)]
struct MemoryBackend {
    state: Arc<Mutex<State>>,
    /// Bumped whenever a job starts waiting, so idle workers claim again (or recompute how
    /// long to sleep until a delayed one is due).
    wake: Arc<watch::Sender<u64>>,
}

impl MemoryBackend {
    fn new() -> Self {
        Self {
            state: Arc::default(),
            wake: Arc::new(watch::channel(0).0),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while the lock was held leaves nothing half-written that matters here.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn wake(&self) {
        self.wake
            .send_modify(|count| *count = count.wrapping_add(1));
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Other("memory")
    }

    async fn enqueue(&self, jobs: &[NewJob]) -> Result<Vec<JobId>, QueueError> {
        // A plain enqueue would store a unique job without enforcing its key.
        if let Some(job) = jobs.iter().find(|job| job.unique.is_some()) {
            return Err(QueueError::UniqueKeyNotEnforced { job: job.name });
        }
        let now = now_ms();
        let mut state = self.state();
        let ids = jobs.iter().map(|job| state.insert(job, now, None));
        let ids = ids.map(|id| JobId::new(id.to_string())).collect();
        drop(state);
        self.wake();
        Ok(ids)
    }

    async fn enqueue_unique(&self, job: &NewJob) -> Result<Enqueued, QueueError> {
        let Some(unique) = &job.unique else {
            let id = self.enqueue(std::slice::from_ref(job)).await?.remove(0);
            return Ok(Enqueued {
                id,
                duplicate: false,
            });
        };
        let now = now_ms();
        let slot = (job.name.to_owned(), unique.key.clone());
        let mut state = self.state();
        let (id, duplicate) = match unique.period {
            None => match state.unfinished_keys.get(&slot) {
                Some(&holder) => (holder, true),
                None => {
                    let id = state.insert(job, now, Some(unique.key.clone()));
                    state.unfinished_keys.insert(slot, id);
                    (id, false)
                }
            },
            Some(period) => match state.period_keys.get(&slot) {
                Some(&(holder, until)) if until > now => (holder, true),
                _ => {
                    let id = state.insert(job, now, None);
                    state.period_keys.insert(slot, (id, after(now, period)));
                    (id, false)
                }
            },
        };
        drop(state);
        if !duplicate {
            self.wake();
        }
        let id = JobId::new(id.to_string());
        Ok(Enqueued { id, duplicate })
    }

    async fn claim(&self, request: ClaimRequest<'_>) -> Result<Vec<ClaimedJob>, QueueError> {
        let now = now_ms();
        let mut state = self.state();
        let mut due: Vec<(i64, u64)> = state
            .jobs
            .iter()
            .filter(|(_, job)| job.stage == Stage::Ready && job.run_at_ms <= now)
            .filter(|(_, job)| request.names.contains(&job.name.as_str()))
            .map(|(id, job)| (job.run_at_ms, *id))
            .collect();
        due.sort_unstable(); // oldest first: by run time, then by enqueue order
        state.next_claim += 1;
        let token = format!("claim-{}", state.next_claim);
        let mut claimed = Vec::new();
        for (_, id) in due.into_iter().take(request.max) {
            let job = state.jobs.get_mut(&id).expect("a due job is stored");
            job.stage = Stage::Running;
            job.attempts += 1;
            job.held = Some(Held {
                owner: request.owner.to_owned(),
                token: token.clone(),
                until_ms: after(now, request.lease),
            });
            claimed.push(ClaimedJob {
                id: JobId::new(id.to_string()),
                name: job.name.clone(),
                payload: job.payload.clone(),
                attempt: job.attempts,
                max_attempts: job.max_attempts,
                enqueued_at_ms: job.enqueued_at_ms,
                token: token.clone(),
            });
        }
        Ok(claimed)
    }

    async fn complete(&self, owner: &str, leases: &[Lease]) -> Result<(), QueueError> {
        let mut state = self.state();
        for lease in leases {
            if let Some((id, _)) = state.held_by(owner, lease) {
                state.free_key(id);
                state.jobs.remove(&id);
            }
        }
        Ok(())
    }

    async fn retry(
        &self,
        owner: &str,
        lease: &Lease,
        delay: Duration,
        error: &str,
    ) -> Result<(), QueueError> {
        let mut state = self.state();
        let retried = state.put_back(owner, lease, after(now_ms(), delay), false);
        let retried = retried.map(|job| job.last_error = Some(error.to_owned()));
        drop(state);
        if retried.is_some() {
            self.wake();
        }
        Ok(())
    }

    async fn dead_letter(&self, owner: &str, lease: &Lease, error: &str) -> Result<(), QueueError> {
        let mut state = self.state();
        if let Some((id, _)) = state.held_by(owner, lease) {
            state.kill(id, error, now_ms());
        }
        Ok(())
    }

    async fn release(&self, owner: &str, leases: &[Lease]) -> Result<(), QueueError> {
        let now = now_ms();
        let mut state = self.state();
        let mut released = false;
        for lease in leases {
            released |= state.put_back(owner, lease, now, true).is_some();
        }
        drop(state);
        if released {
            self.wake();
        }
        Ok(())
    }

    async fn snooze(&self, owner: &str, lease: &Lease, delay: Duration) -> Result<(), QueueError> {
        let run_at_ms = after(now_ms(), delay);
        let snoozed = self
            .state()
            .put_back(owner, lease, run_at_ms, true)
            .is_some();
        if snoozed {
            self.wake();
        }
        Ok(())
    }

    async fn extend(
        &self,
        owner: &str,
        leases: &[Lease],
        lease: Duration,
    ) -> Result<Vec<Lease>, QueueError> {
        let until_ms = after(now_ms(), lease);
        let mut state = self.state();
        let mut lost = Vec::new();
        for held in leases {
            match state.held_by(owner, held) {
                Some((_, job)) => job.held.as_mut().expect("held").until_ms = until_ms,
                None => lost.push(held.clone()),
            }
        }
        Ok(lost)
    }

    async fn progress(
        &self,
        owner: &str,
        lease: &Lease,
        percent: u8,
        duration: Duration,
    ) -> Result<(), QueueError> {
        let until_ms = after(now_ms(), duration);
        if let Some((_, job)) = self.state().held_by(owner, lease) {
            job.progress = Some(percent.min(100));
            job.held.as_mut().expect("held").until_ms = until_ms;
        }
        Ok(())
    }

    async fn recover_expired(&self) -> Result<u64, QueueError> {
        let now = now_ms();
        let mut state = self.state();
        let expired: Vec<u64> = state
            .jobs
            .iter()
            .filter(|(_, job)| job.held.as_ref().is_some_and(|held| held.until_ms < now))
            .map(|(id, _)| *id)
            .collect();
        for &id in &expired {
            let job = state.jobs.get_mut(&id).expect("an expired job is stored");
            if job.attempts >= job.max_attempts {
                // Its last attempt: a job that kills its worker must not loop forever.
                state.kill(id, LEASE_EXPIRED, now);
            } else {
                job.stage = Stage::Ready;
                job.held = None;
                job.run_at_ms = now;
                job.last_error = Some(LEASE_EXPIRED.to_owned());
            }
        }
        drop(state);
        if !expired.is_empty() {
            self.wake();
        }
        Ok(expired.len() as u64)
    }

    async fn next_due_in(&self, names: &[&'static str]) -> Result<Option<Duration>, QueueError> {
        let now = now_ms();
        let next = self
            .state()
            .jobs
            .values()
            .filter(|job| job.stage == Stage::Ready && names.contains(&job.name.as_str()))
            .map(|job| job.run_at_ms)
            .min();
        let wait = |run_at: i64| u64::try_from(run_at.saturating_sub(now)).unwrap_or(0);
        Ok(next.map(|run_at| Duration::from_millis(wait(run_at))))
    }

    async fn subscribe(&self) -> Result<WorkSignal, QueueError> {
        Ok(self.wake.subscribe())
    }

    fn idle_poll_interval(&self) -> Duration {
        // Every change that makes work wakes the workers; polling only backs that up.
        Duration::from_secs(1)
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let now = now_ms();
        let mut stats = QueueStats::default();
        let mut oldest_due = None::<i64>;
        for job in self.state().jobs.values() {
            match job.stage {
                Stage::Ready if job.run_at_ms <= now => {
                    stats.ready += 1;
                    oldest_due = Some(oldest_due.map_or(job.run_at_ms, |t| t.min(job.run_at_ms)));
                }
                Stage::Ready => stats.delayed += 1,
                Stage::Running => stats.in_flight += 1,
                Stage::Dead => stats.dead += 1,
            }
        }
        let age = oldest_due.map_or(0, |run_at| u64::try_from(now - run_at).unwrap_or(0));
        stats.oldest_ready_age = Duration::from_millis(age);
        Ok(stats)
    }

    async fn dead_jobs(&self, limit: usize) -> Result<Vec<DeadJob>, QueueError> {
        self.dead_jobs_after(None, limit).await
    }

    async fn dead_jobs_after(
        &self,
        after: Option<&JobId>,
        limit: usize,
    ) -> Result<Vec<DeadJob>, QueueError> {
        let state = self.state();
        let dead = state.dead_newest_first();
        // Past the page's last job; a cursor that is not a dead job starts no page.
        let start = match after {
            None => 0,
            Some(cursor) => match dead
                .iter()
                .position(|(id, _)| id.to_string() == cursor.as_str())
            {
                Some(position) => position + 1,
                None => return Ok(Vec::new()),
            },
        };
        let page = dead.iter().skip(start).take(limit);
        Ok(page.map(|(id, job)| dead_job(*id, job)).collect())
    }

    async fn job(&self, id: &JobId) -> Result<Option<JobInfo>, QueueError> {
        let Ok(number) = id.as_str().parse::<u64>() else {
            return Ok(None);
        };
        let now = now_ms();
        let state = self.state();
        let Some(job) = state.jobs.get(&number) else {
            return Ok(None);
        };
        let state = match job.stage {
            Stage::Ready if job.run_at_ms > now => JobState::Delayed,
            Stage::Ready => JobState::Ready,
            Stage::Running => JobState::Running,
            Stage::Dead => JobState::Dead,
        };
        Ok(Some(JobInfo {
            id: id.clone(),
            name: job.name.clone(),
            state,
            attempts: job.attempts,
            max_attempts: job.max_attempts,
            last_error: job.last_error.clone(),
            progress: job.progress,
        }))
    }

    async fn requeue_dead(&self, ids: &[JobId]) -> Result<u64, QueueError> {
        let now = now_ms();
        let mut state = self.state();
        let mut requeued = 0;
        for id in ids.iter().filter_map(|id| id.as_str().parse::<u64>().ok()) {
            // Due now, attempts from zero, last error kept; it died without its key.
            if let Some(job) = state
                .jobs
                .get_mut(&id)
                .filter(|job| job.stage == Stage::Dead)
            {
                job.stage = Stage::Ready;
                job.attempts = 0;
                job.run_at_ms = now;
                job.dead_at_ms = None;
                requeued += 1;
            }
        }
        drop(state);
        if requeued > 0 {
            self.wake();
        }
        Ok(requeued)
    }

    async fn prune_dead(&self, older_than: Duration) -> Result<u64, QueueError> {
        let now = now_ms();
        let cutoff = now.saturating_sub(i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX));
        let mut state = self.state();
        // Period keys whose period is over hold nothing: sweep them on the way.
        state.period_keys.retain(|_, (_, until)| *until > now);
        let before = state.jobs.len();
        state.jobs.retain(|_, job| {
            job.stage != Stage::Dead || job.dead_at_ms.is_some_and(|at| at >= cutoff)
        });
        Ok((before - state.jobs.len()) as u64)
    }
}

/// One fresh in-memory queue per case.
struct MemoryFixture {
    backend: MemoryBackend,
}

impl Fixture for MemoryFixture {
    async fn fresh() -> Self {
        Self {
            backend: MemoryBackend::new(),
        }
    }

    async fn queue(&self) -> Queue {
        Queue::with_backend(self.backend.clone())
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::full()
    }

    // `child_env` stays `None`: the jobs live in this process, so the killed-worker case
    // has no other process to reach them from.
}

anb_queue_testkit::conformance_suite!(memory, MemoryFixture);
