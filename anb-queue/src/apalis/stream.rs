//! The task stream apalis polls: claiming in the background, waiting for work, and
//! closing a worker's session (its stop releases what it claimed and did not start).

use super::*;

/// Where a backend is in its life as a worker's task source.
pub(super) enum State {
    /// Not yet polled by a worker (or only used as a sink).
    Idle,
    /// Subscribing to wake-ups and starting the background tasks.
    Starting(BoxFuture<'static, Result<Session, QueueError>>),
    /// Claiming and handing out jobs.
    Running(Session),
    /// Giving back what was not run and stopping the background tasks (in a task of its
    /// own, so that dropping the worker then cancels no query half-way).
    Closing(JoinHandle<Result<(), QueueError>>),
    /// Done: yields no more jobs.
    Closed,
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Idle => "Idle",
            State::Starting(_) => "Starting",
            State::Running(_) => "Running",
            State::Closing(_) => "Closing",
            State::Closed => "Closed",
        })
    }
}

/// A running worker's claim loop and background tasks.
pub(super) struct Session {
    pub(super) signal: WorkSignal,
    pub(super) fetch: Fetch,
    pub(super) background: CancellationToken,
    pub(super) handles: Vec<JoinHandle<()>>,
}

/// The claim loop's step. Queries run in tasks of their own: a worker dropped mid-claim must
/// not cancel a query half-way (sqlx may then lose the connection, and a SQLite queue has
/// only one).
pub(super) enum Fetch {
    /// Nothing in progress: claim next.
    Idle,
    Claiming(JoinHandle<Result<Vec<ClaimedJob>, QueueError>>),
    /// Nothing was due: wait for a wake-up, the next due job or the poll interval.
    Waiting(BoxFuture<'static, ()>),
}

/// What the worker, its middleware and its background tasks share.
pub(super) struct Shared {
    pub(super) runtime: Arc<LeaseRuntime>,
    pub(super) polls: Arc<PollCounter>,
    pub(super) shutdown_grace: Duration,
}

/// Starts a worker's session: the wake-up subscription and the background tasks.
pub(super) async fn start(
    shared: Arc<Shared>,
    worker: WorkerContext,
    queue: Queue,
) -> Result<Session, QueueError> {
    let runtime = &shared.runtime;
    let signal = runtime.backend.subscribe().await?;
    let background = CancellationToken::new();
    let mut handles = runtime.spawn_background(queue, Maintenance::default(), background.clone());
    handles.push(tokio::spawn(watch_stop(
        shared.clone(),
        worker,
        background.clone(),
    )));
    tracing::info!(owner = %runtime.owner, "apalis worker started on anb-queue");
    Ok(Session {
        signal,
        fetch: Fetch::Idle,
        background,
        handles,
    })
}

/// Claims up to `max` jobs and holds them (so the heartbeat renews them). A claim that ends
/// after its session closed (a long poll outliving the worker) gives its jobs back.
pub(super) async fn claim(
    shared: Arc<Shared>,
    name: &'static str,
    max: usize,
) -> Result<Vec<ClaimedJob>, QueueError> {
    let runtime = &shared.runtime;
    let names = [name];
    let claimed = runtime
        .backend
        .claim(ClaimRequest {
            names: &names,
            max,
            owner: &runtime.owner,
            lease: runtime.lease,
        })
        .await?;
    shared.polls.claimed(claimed.len());
    let claimed = runtime.discard_cancelled(claimed).await;
    if runtime.hold(&claimed) {
        return Ok(claimed);
    }
    let leases: Vec<Lease> = claimed.iter().map(ClaimedJob::lease).collect();
    if !leases.is_empty()
        && let Err(error) = runtime.backend.release(&runtime.owner, &leases).await
    {
        tracing::warn!(%error, "releasing jobs claimed during shutdown failed; their leases will expire");
    }
    Ok(Vec::new())
}

/// Waits until new work may be due: a wake-up from the engine, the next delayed job, or the
/// backend's poll interval.
pub(super) async fn wait_for_work(shared: Arc<Shared>, name: &'static str, mut signal: WorkSignal) {
    let backend = shared.runtime.backend.clone();
    let poll_interval = backend.idle_poll_interval();
    shared.polls.checked_due();
    let next_due = tokio::spawn(async move { backend.next_due_in(&[name]).await });
    let wait = idle_wait(next_due.await.unwrap_or(Ok(None)), poll_interval);
    tokio::select! {
        changed = signal.changed() => {
            if changed.is_err() {
                // The wake-up source is gone; fall back to polling.
                tokio::time::sleep(wait).await;
            }
        }
        () = tokio::time::sleep(wait) => {}
    }
}

/// Ends a session: waits briefly for a claim in progress, records outstanding completions,
/// releases every job still held (claimed but never run) without counting the attempt, and
/// stops the background tasks.
pub(super) async fn close(
    shared: Arc<Shared>,
    session: Session,
    side_tasks: Vec<JoinHandle<()>>,
) -> Result<(), QueueError> {
    let Session {
        fetch,
        background,
        handles,
        ..
    } = session;
    let stop_background = background.drop_guard();
    let runtime = &shared.runtime;
    runtime.begin_shutdown();
    if let Fetch::Claiming(claim) = fetch {
        // A quick claim may finish, and its jobs are released below; a long poll is left to
        // finish on its own, and gives back what it receives.
        let _ = tokio::time::timeout(Duration::from_secs(1), claim).await;
    }
    for side_task in side_tasks {
        let _ = side_task.await;
    }
    runtime.flush_completions().await;
    let outcome = runtime.release_unfinished().await;
    drop(stop_background);
    for handle in handles {
        let _ = handle.await;
    }
    tracing::info!(owner = %runtime.owner, released = outcome.as_ref().copied().unwrap_or(0), "apalis worker on anb-queue stopped");
    outcome.map(drop)
}

/// apalis signals a stop only through its worker context's state: looks at it often, and
/// once the worker is stopping runs the shutdown rules of the lease runtime (notice now,
/// cancel near the end of the grace, abort at its end).
pub(super) async fn watch_stop(
    shared: Arc<Shared>,
    worker: WorkerContext,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(Duration::from_millis(100));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                if worker.is_shutting_down() {
                    break;
                }
            }
            () = stop.cancelled() => return,
        }
    }
    shared.runtime.begin_shutdown();
    tokio::select! {
        () = shutdown_schedule(&shared.runtime, shared.shutdown_grace) => {}
        () = stop.cancelled() => {}
    }
}

impl<J: Job> Backend for ApalisBackend<J> {
    type Task = Task<J>;
    type Error = QueueError;

    fn poll_ready(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        loop {
            match &mut self.state {
                State::Idle => {
                    let shared = self.shared_for(worker);
                    self.state =
                        State::Starting(start(shared, worker.clone(), self.queue.clone()).boxed());
                }
                State::Starting(starting) => match starting.poll_unpin(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(session)) => self.state = State::Running(session),
                    Poll::Ready(Err(error)) => {
                        self.state = State::Closed;
                        return Poll::Ready(Err(error));
                    }
                },
                State::Running(_) | State::Closing(_) | State::Closed => {
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        match Backend::poll_ready(self, cx, worker) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(error)) => return Poll::Ready(Some(Err(error))),
            Poll::Ready(Ok(())) => {}
        }
        let Some(shared) = self.shared.clone() else {
            return Poll::Ready(None);
        };
        self.side_tasks.retain(|task| !task.is_finished());
        loop {
            if let Some(job) = self.buffer.pop_front() {
                if let Some(task) = self.task_of(&shared, job) {
                    return Poll::Ready(Some(Ok(task)));
                }
                continue;
            }
            let State::Running(session) = &mut self.state else {
                return Poll::Ready(None);
            };
            match &mut session.fetch {
                Fetch::Idle => {
                    // Mark the signal seen before claiming: a wake-up during the claim is not lost.
                    session.signal.borrow_and_update();
                    session.fetch = Fetch::Claiming(tokio::spawn(claim(
                        shared.clone(),
                        J::NAME,
                        self.config.batch_size,
                    )));
                }
                Fetch::Claiming(claiming) => match claiming.poll_unpin(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(Ok(claimed))) if claimed.is_empty() => {
                        session.fetch = Fetch::Waiting(
                            wait_for_work(shared.clone(), J::NAME, session.signal.clone()).boxed(),
                        );
                    }
                    Poll::Ready(Ok(Ok(claimed))) => {
                        self.buffer.extend(claimed);
                        session.fetch = Fetch::Idle;
                    }
                    Poll::Ready(Ok(Err(error))) => {
                        // A database or broker blip must not end the apalis worker.
                        tracing::warn!(%error, "claiming jobs failed; retrying in 1 s");
                        session.fetch =
                            Fetch::Waiting(tokio::time::sleep(Duration::from_secs(1)).boxed());
                    }
                    Poll::Ready(Err(error)) => {
                        tracing::error!(%error, "the claim task failed; retrying in 1 s");
                        session.fetch =
                            Fetch::Waiting(tokio::time::sleep(Duration::from_secs(1)).boxed());
                    }
                },
                Fetch::Waiting(waiting) => match waiting.poll_unpin(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(()) => session.fetch = Fetch::Idle,
                },
            }
        }
    }

    fn poll_close(
        &mut self,
        cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        loop {
            match std::mem::replace(&mut self.state, State::Closed) {
                State::Idle | State::Closed => return Poll::Ready(Ok(())),
                State::Starting(mut starting) => match starting.poll_unpin(cx) {
                    Poll::Pending => {
                        self.state = State::Starting(starting);
                        return Poll::Pending;
                    }
                    Poll::Ready(Ok(session)) => self.state = State::Running(session),
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                },
                State::Running(session) => {
                    let Some(shared) = self.shared.clone() else {
                        return Poll::Ready(Ok(()));
                    };
                    // Buffered jobs are held: `close` releases them.
                    self.buffer.clear();
                    let side_tasks = std::mem::take(&mut self.side_tasks);
                    self.state = State::Closing(tokio::spawn(close(shared, session, side_tasks)));
                }
                State::Closing(mut closing) => match closing.poll_unpin(cx) {
                    Poll::Pending => {
                        self.state = State::Closing(closing);
                        return Poll::Pending;
                    }
                    Poll::Ready(Ok(outcome)) => return Poll::Ready(outcome),
                    Poll::Ready(Err(error)) => {
                        tracing::error!(%error, "closing the apalis worker's session failed");
                        return Poll::Ready(Ok(()));
                    }
                },
            }
        }
    }
}

impl<J> Drop for ApalisBackend<J> {
    /// A worker dropped without closing (its future cancelled, a monitor's shutdown timeout)
    /// releases the jobs it still holds, in the background, so they need not wait for their
    /// leases to run out. Without a Tokio runtime left to run that, the leases run out.
    fn drop(&mut self) {
        let state = std::mem::replace(&mut self.state, State::Closed);
        let (State::Running(session), Some(shared)) = (state, self.shared.clone()) else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let side_tasks = std::mem::take(&mut self.side_tasks);
                runtime.spawn(async move {
                    let _ = close(shared, session, side_tasks).await;
                });
            }
            Err(_) => session.background.cancel(),
        }
    }
}
