//! A backend from outside `anb-queue`, on its public API only, that runs the whole conformance
//! kit against itself: jobs behind one `Mutex` in this process, and a `watch` channel that
//! wakes idle workers. Copy it as the skeleton of your own backend: every operation of the
//! `Backend` contract is here, in a few lines each.
//!
//! One clock serves everything, milliseconds since the Unix epoch (as in the SQLite backend):
//! run times, lease deadlines, unique periods and when a job died.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anb_queue::{
    BackendKind, Cancelled, DeadJob, Enqueued, JobId, JobInfo, JobState, Queue, QueueError,
    QueueStats,
    backend::{Backend, ClaimRequest, ClaimedJob, Lease, NewJob, Renewal, WorkSignal},
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

/// `duration` after the time `at` (saturating: a delay of centuries is still a delay).
fn after(at: i64, duration: Duration) -> i64 {
    at.saturating_add(i64::try_from(duration.as_millis()).unwrap_or(i64::MAX))
}

/// The time from `from` to `to`, zero if `to` is not later.
fn span(from: i64, to: i64) -> Duration {
    Duration::from_millis(u64::try_from(to - from).unwrap_or(0))
}

/// Ids are numbers in enqueue order, printed; text that is not one names no job here.
fn job_id(number: u64) -> JobId {
    JobId::new(number.to_string())
}

fn number(id: &JobId) -> Option<u64> {
    id.as_str().parse().ok()
}

fn enqueued(id: u64, duplicate: bool) -> Enqueued {
    let id = job_id(id);
    Enqueued { id, duplicate }
}

/// Where a stored job is (times in the backend's clock). A finished job is not stored.
#[derive(Debug)]
enum Stage {
    /// Waiting for its run time: due once it has passed, delayed before.
    Waiting,
    /// Leased to one claim, `owner` and `token`, until the time `until`.
    Running {
        owner: String,
        token: String,
        until: i64,
    },
    /// In the dead letters since the time `at`.
    Dead { at: i64 },
}

#[derive(Debug)]
struct StoredJob {
    name: String,
    payload: String,
    stage: Stage,
    /// Attempts started, a running one included.
    attempts: u32,
    max_attempts: u32,
    run_at: i64,
    enqueued_at: i64,
    last_error: Option<String>,
    progress: Option<u8>,
    /// The key it holds while unfinished; completing or dead-lettering it frees the key.
    unique_key: Option<String>,
    /// Cancelled while it ran: the heartbeat tells its worker, and a claim that finds it
    /// again hands it out flagged so the worker removes it.
    cancel_requested: bool,
}

impl StoredJob {
    fn state(&self, now: i64) -> JobState {
        match self.stage {
            Stage::Waiting if self.run_at > now => JobState::Delayed,
            Stage::Waiting => JobState::Ready,
            Stage::Running { .. } => JobState::Running,
            Stage::Dead { .. } => JobState::Dead,
        }
    }
}

/// Everything the backend stores, behind one lock, so each operation is atomic.
#[derive(Debug, Default)]
struct State {
    last_id: u64,
    last_claim: u64,
    jobs: BTreeMap<u64, StoredJob>,
    /// Unique keys by (job name, key, held for a period): the holder, and when a period
    /// ends. The two scopes never meet, as in the SQL backends.
    keys: HashMap<(String, String, bool), (u64, Option<i64>)>,
}

impl State {
    fn insert(&mut self, job: &NewJob, now: i64, unique_key: Option<String>) -> u64 {
        self.last_id += 1;
        let stored = StoredJob {
            name: job.name.to_owned(),
            payload: job.payload.clone(),
            stage: Stage::Waiting,
            attempts: 0,
            max_attempts: job.max_attempts,
            run_at: after(now, job.delay),
            enqueued_at: now,
            last_error: None,
            progress: None,
            unique_key,
            cancel_requested: false,
        };
        self.jobs.insert(self.last_id, stored);
        self.last_id
    }

    /// The job that this claim still holds. Every lease operation goes through here, so for
    /// a stale claim (its lease ran out and the job was recovered or claimed again) it finds
    /// nothing and is a no-op.
    fn held(&mut self, owner: &str, lease: &Lease) -> Option<(u64, &mut StoredJob)> {
        let id = number(&lease.id)?;
        let job = self.jobs.get_mut(&id)?;
        let holds = matches!(&job.stage, Stage::Running { owner: o, token: t, .. }
            if o == owner && *t == lease.token);
        holds.then_some((id, job))
    }

    /// Extends this claim's lease to the time `to`. `None` for a stale claim.
    fn renew(&mut self, owner: &str, lease: &Lease, to: i64) -> Option<&mut StoredJob> {
        let (_, job) = self.held(owner, lease)?;
        if let Stage::Running { until, .. } = &mut job.stage {
            *until = to;
        }
        Some(job)
    }

    /// Makes the job this claim holds wait again until `run_at`, giving its attempt back if
    /// `give_back` (a release or a snooze, not a retry). `None` for a stale claim.
    fn put_back(
        &mut self,
        owner: &str,
        lease: &Lease,
        run_at: i64,
        give_back: bool,
    ) -> Option<&mut StoredJob> {
        let (_, job) = self.held(owner, lease)?;
        job.stage = Stage::Waiting;
        job.run_at = run_at;
        if give_back {
            job.attempts -= 1; // a running job has started one
        }
        Some(job)
    }

    /// Frees the unfinished key of job `id`, if it holds one.
    fn free_key(&mut self, id: u64) {
        if let Some(job) = self.jobs.get_mut(&id)
            && let Some(key) = job.unique_key.take()
        {
            self.keys.remove(&(job.name.clone(), key, false));
        }
    }

    /// Moves job `id` to the dead letters with `error`, freeing its key.
    fn kill(&mut self, id: u64, error: &str, now: i64) {
        self.free_key(id);
        if let Some(job) = self.jobs.get_mut(&id) {
            job.stage = Stage::Dead { at: now };
            job.last_error = Some(error.to_owned());
        }
    }

    /// Dead jobs, newest first (by when they died, then by id), as operators page them.
    fn dead_newest_first(&self) -> Vec<DeadJob> {
        let dead = self.jobs.iter().filter_map(|(&id, job)| match job.stage {
            Stage::Dead { at } => Some(DeadJob {
                id: job_id(id),
                name: job.name.clone(),
                payload: job.payload.clone(),
                attempts: job.attempts,
                last_error: job.last_error.clone(),
                dead_at_ms: at,
            }),
            _ => None,
        });
        let mut dead: Vec<DeadJob> = dead.collect();
        dead.sort_by_key(|job| std::cmp::Reverse((job.dead_at_ms, number(&job.id))));
        dead
    }
}

/// An in-memory backend. Clones share their jobs, so every `Queue` made from one reaches
/// the same queue.
#[derive(Debug, Clone, Default)]
struct MemoryBackend {
    state: Arc<Mutex<State>>,
    /// Bumped whenever a job starts waiting (due now or later): idle workers claim again,
    /// or work out anew how long to sleep until the next one is due.
    wake: watch::Sender<u64>,
}

impl MemoryBackend {
    fn state(&self) -> MutexGuard<'_, State> {
        // No operation leaves the state half-written if it panics: go on with it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes idle workers (fine with the state locked: it only marks the signal changed).
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

    fn supports_unique(&self) -> bool {
        true
    }

    async fn enqueue(&self, jobs: &[NewJob]) -> Result<Vec<JobId>, QueueError> {
        // A plain enqueue would store a unique job without enforcing its key.
        if let Some(job) = jobs.iter().find(|job| job.unique.is_some()) {
            return Err(QueueError::UniqueKeyNotEnforced { job: job.name });
        }
        let now = now_ms();
        let mut state = self.state();
        let ids = jobs.iter().map(|job| job_id(state.insert(job, now, None)));
        let ids = ids.collect();
        self.wake();
        Ok(ids)
    }

    async fn enqueue_unique(&self, job: &NewJob) -> Result<Enqueued, QueueError> {
        let now = now_ms();
        let mut state = self.state();
        let Some(unique) = &job.unique else {
            let id = state.insert(job, now, None);
            self.wake();
            return Ok(enqueued(id, false));
        };
        let slot = (
            job.name.to_owned(),
            unique.key.clone(),
            unique.period.is_some(),
        );
        if let Some(&(holder, until)) = state.keys.get(&slot)
            && until.is_none_or(|until| until > now)
        {
            return Ok(enqueued(holder, true));
        }
        // A key held while unfinished goes with its job, which frees it when it finishes.
        let unfinished = unique.period.is_none().then(|| unique.key.clone());
        let id = state.insert(job, now, unfinished);
        let until = unique.period.map(|period| after(now, period));
        state.keys.insert(slot, (id, until));
        self.wake();
        Ok(enqueued(id, false))
    }

    async fn claim(&self, request: ClaimRequest<'_>) -> Result<Vec<ClaimedJob>, QueueError> {
        let now = now_ms();
        let mut state = self.state();
        let mut due: Vec<(i64, u64)> = state
            .jobs
            .iter()
            .filter(|(_, job)| job.state(now) == JobState::Ready)
            .filter(|(_, job)| request.names.contains(&job.name.as_str()))
            .map(|(&id, job)| (job.run_at, id))
            .collect();
        due.sort_unstable(); // oldest first: by run time, then in enqueue order
        // A fresh token per claim: what fences this claim's lease operations from any other's.
        state.last_claim += 1;
        let token = format!("claim-{}", state.last_claim);
        let mut claimed = Vec::new();
        for (_, id) in due.into_iter().take(request.max) {
            let job = state.jobs.get_mut(&id).expect("a due job is stored");
            job.attempts += 1;
            job.stage = Stage::Running {
                owner: request.owner.to_owned(),
                token: token.clone(),
                until: after(now, request.lease),
            };
            claimed.push(ClaimedJob {
                id: job_id(id),
                name: job.name.clone(),
                payload: job.payload.clone(),
                attempt: job.attempts,
                max_attempts: job.max_attempts,
                enqueued_at_ms: job.enqueued_at,
                token: token.clone(),
                cancel_requested: job.cancel_requested,
            });
        }
        Ok(claimed)
    }

    async fn complete(&self, owner: &str, leases: &[Lease]) -> Result<(), QueueError> {
        let mut state = self.state();
        for lease in leases {
            if let Some((id, _)) = state.held(owner, lease) {
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
        let run_at = after(now_ms(), delay);
        if let Some(job) = self.state().put_back(owner, lease, run_at, false) {
            job.last_error = Some(error.to_owned());
            self.wake();
        }
        Ok(())
    }

    async fn dead_letter(&self, owner: &str, lease: &Lease, error: &str) -> Result<(), QueueError> {
        let mut state = self.state();
        if let Some((id, _)) = state.held(owner, lease) {
            state.kill(id, error, now_ms());
        }
        Ok(())
    }

    async fn release(&self, owner: &str, leases: &[Lease]) -> Result<(), QueueError> {
        let now = now_ms();
        let mut state = self.state();
        for lease in leases {
            if state.put_back(owner, lease, now, true).is_some() {
                self.wake();
            }
        }
        Ok(())
    }

    async fn snooze(&self, owner: &str, lease: &Lease, delay: Duration) -> Result<(), QueueError> {
        let run_at = after(now_ms(), delay);
        let snoozed = self.state().put_back(owner, lease, run_at, true).is_some();
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
        Ok(self.renew(owner, leases, lease).await?.lost)
    }

    async fn renew(
        &self,
        owner: &str,
        leases: &[Lease],
        lease: Duration,
    ) -> Result<Renewal, QueueError> {
        let to = after(now_ms(), lease);
        let mut state = self.state();
        let mut renewal = Renewal::default();
        for held in leases {
            match state.renew(owner, held, to) {
                None => renewal.lost.push(held.clone()),
                Some(job) if job.cancel_requested => renewal.cancelled.push(held.clone()),
                Some(_) => {}
            }
        }
        Ok(renewal)
    }

    fn supports_cancel(&self) -> bool {
        true
    }

    async fn cancel(&self, id: &JobId) -> Result<Cancelled, QueueError> {
        let mut state = self.state();
        let Some(id) = number(id) else {
            return Ok(Cancelled::NotFound);
        };
        let Some(job) = state.jobs.get_mut(&id) else {
            return Ok(Cancelled::NotFound);
        };
        match job.stage {
            Stage::Dead { .. } => Ok(Cancelled::NotFound),
            Stage::Running { .. } => {
                job.cancel_requested = true;
                Ok(Cancelled::Requested)
            }
            Stage::Waiting => {
                state.free_key(id);
                state.jobs.remove(&id);
                Ok(Cancelled::Removed)
            }
        }
    }

    async fn unique_holder(&self, name: &str, key: &str) -> Result<Option<JobId>, QueueError> {
        let state = self.state();
        let holder = [false, true]
            .into_iter()
            .find_map(|period| state.keys.get(&(name.to_owned(), key.to_owned(), period)));
        Ok(holder.map(|&(id, _)| job_id(id)))
    }

    async fn progress(
        &self,
        owner: &str,
        lease: &Lease,
        percent: u8,
        duration: Duration,
    ) -> Result<(), QueueError> {
        let to = after(now_ms(), duration);
        if let Some(job) = self.state().renew(owner, lease, to) {
            job.progress = Some(percent.min(100));
        }
        Ok(())
    }

    async fn recover_expired(&self) -> Result<u64, QueueError> {
        let now = now_ms();
        let mut state = self.state();
        let expired: Vec<u64> = state
            .jobs
            .iter()
            .filter(|(_, job)| matches!(job.stage, Stage::Running { until, .. } if until < now))
            .map(|(&id, _)| id)
            .collect();
        for &id in &expired {
            let job = state.jobs.get_mut(&id).expect("an expired job is stored");
            if job.attempts >= job.max_attempts {
                // Its last attempt: a job that kills its worker must not loop forever.
                state.kill(id, LEASE_EXPIRED, now);
            } else {
                job.stage = Stage::Waiting;
                job.run_at = now;
                job.last_error = Some(LEASE_EXPIRED.to_owned());
            }
        }
        if !expired.is_empty() {
            self.wake();
        }
        Ok(expired.len() as u64)
    }

    async fn next_due_in(&self, names: &[&'static str]) -> Result<Option<Duration>, QueueError> {
        let now = now_ms();
        let state = self.state();
        let waiting = state.jobs.values().filter(|job| {
            matches!(job.stage, Stage::Waiting) && names.contains(&job.name.as_str())
        });
        let next = waiting.map(|job| job.run_at).min();
        Ok(next.map(|run_at| span(now, run_at)))
    }

    async fn subscribe(&self) -> Result<WorkSignal, QueueError> {
        Ok(self.wake.subscribe())
    }

    fn idle_poll_interval(&self) -> Duration {
        // Every change that makes work wakes the workers: polling only backs that up.
        Duration::from_secs(1)
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let now = now_ms();
        let mut stats = QueueStats::default();
        let mut oldest_due = now;
        for job in self.state().jobs.values() {
            match job.state(now) {
                JobState::Ready => {
                    stats.ready += 1;
                    oldest_due = oldest_due.min(job.run_at);
                }
                JobState::Delayed => stats.delayed += 1,
                JobState::Running => stats.in_flight += 1,
                JobState::Dead => stats.dead += 1,
            }
        }
        stats.oldest_ready_age = span(oldest_due, now);
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
        let dead = self.state().dead_newest_first();
        // A page starts past the job `after`; a cursor that is no dead job starts none.
        let start = match after.map(|after| dead.iter().position(|job| job.id == *after)) {
            None => 0,
            Some(Some(position)) => position + 1,
            Some(None) => return Ok(Vec::new()),
        };
        Ok(dead.into_iter().skip(start).take(limit).collect())
    }

    async fn job(&self, id: &JobId) -> Result<Option<JobInfo>, QueueError> {
        let state = self.state();
        let Some(job) = number(id).and_then(|number| state.jobs.get(&number)) else {
            return Ok(None);
        };
        Ok(Some(JobInfo {
            id: id.clone(),
            name: job.name.clone(),
            state: job.state(now_ms()),
            attempts: job.attempts,
            max_attempts: job.max_attempts,
            last_error: job.last_error.clone(),
            progress: job.progress,
            priority: anb_queue::Priority::HIGHEST,
        }))
    }

    async fn requeue_dead(&self, ids: &[JobId]) -> Result<u64, QueueError> {
        let now = now_ms();
        let mut state = self.state();
        let mut requeued = 0;
        for id in ids.iter().filter_map(number) {
            if let Some(job) = state.jobs.get_mut(&id)
                && let Stage::Dead { .. } = job.stage
            {
                // Due now, attempts from zero, last error kept. It died without its key,
                // and runs without one.
                job.stage = Stage::Waiting;
                job.attempts = 0;
                job.run_at = now;
                job.cancel_requested = false;
                requeued += 1;
            }
        }
        if requeued > 0 {
            self.wake();
        }
        Ok(requeued)
    }

    async fn prune_dead(&self, older_than: Duration) -> Result<u64, QueueError> {
        let now = now_ms();
        let cutoff = now.saturating_sub(after(0, older_than));
        let mut state = self.state();
        // Period keys whose period is over hold nothing: sweep them on the way.
        let expired = |until: Option<i64>| until.is_some_and(|until| until <= now);
        state.keys.retain(|_, (_, until)| !expired(*until));
        let before = state.jobs.len();
        let old = |job: &StoredJob| matches!(job.stage, Stage::Dead { at } if at < cutoff);
        state.jobs.retain(|_, job| !old(job));
        Ok((before - state.jobs.len()) as u64)
    }
}

/// One fresh, empty in-memory queue per case.
struct MemoryFixture(MemoryBackend);

impl Fixture for MemoryFixture {
    async fn fresh() -> Self {
        Self(MemoryBackend::default())
    }

    async fn queue(&self) -> Queue {
        Queue::with_backend(self.0.clone())
    }

    fn capabilities(&self) -> Capabilities {
        // Its claims take the oldest due job whatever its priority, and it keeps no rate
        // limit counter (a worker refuses a rate limit on it).
        Capabilities::full()
            .priorities(false)
            .global_rate_limit(false)
    }

    // `child_env` stays `None`: the jobs live in this process, so no worker in another
    // process can reach them, and the killed-worker case has nothing to check.
}

anb_queue_testkit::conformance_suite!(memory, MemoryFixture);
