//! Periodic jobs: a job enqueued at every tick of a schedule, once per tick however many
//! workers run it.
//!
//! Every worker that registers a [`PeriodicJob`] runs a small scheduler beside its claim loop.
//! At each tick it enqueues the job with a unique key naming the job and the tick
//! (`periodic:<name>:<tick in Unix ms>`), held for a period (twice the gap to the next tick,
//! at least a minute): the first worker to reach the tick enqueues it, the others find the key
//! held. The job then runs like any other, on whichever worker claims it. Ticks are computed
//! from the wall clock the same way in every process (intervals are aligned to the Unix epoch,
//! cron expressions evaluated in one time zone), so workers agree on them without talking to
//! each other; their clocks need only agree within the key's hold.

use std::{
    fmt,
    str::FromStr,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use futures::{FutureExt, future::BoxFuture};
use tokio_util::sync::CancellationToken;

use crate::{
    error::QueueError,
    job::Job,
    queue::Queue,
    unique::{Enqueued, Unique},
};

/// When a periodic job comes due: a fixed interval aligned to the Unix epoch, or a cron
/// expression in a time zone.
///
/// ```
/// use std::time::Duration;
/// use anb_queue::Schedule;
///
/// // At 00:00, 00:05, 00:10… UTC, in every process alike.
/// let every_five_minutes = Schedule::every(Duration::from_secs(300));
/// // At 03:30 in Madrid, summer time or not.
/// let nightly = Schedule::cron("30 3 * * *")?.in_timezone("Europe/Madrid")?;
/// // Six fields: the first is the second (every 10 s).
/// let often = Schedule::cron("*/10 * * * * *")?;
/// # let _ = (every_five_minutes, nightly, often);
/// # Ok::<(), anb_queue::ScheduleError>(())
/// ```
#[derive(Clone)]
pub struct Schedule {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    /// Ticks at every multiple of this many milliseconds since the Unix epoch.
    Every { millis: u64 },
    /// Ticks when the expression matches the wall clock of `zone`.
    Cron {
        cron: Box<croner::Cron>,
        expression: String,
        zone: jiff::tz::TimeZone,
        zone_name: String,
    },
}

/// Why a schedule could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// The cron expression does not parse.
    #[error("invalid cron expression {expression:?}: {reason}")]
    InvalidCron {
        /// The expression given.
        expression: String,
        /// What the parser said.
        reason: String,
    },
    /// The time zone is not in the IANA time zone database.
    #[error("unknown time zone {name:?}: {reason}")]
    UnknownTimeZone {
        /// The name given.
        name: String,
        /// What the time zone database said.
        reason: String,
    },
    /// A time zone was given to an interval, which is aligned to the Unix epoch and so the
    /// same in every zone.
    #[error("an interval has no time zone (its ticks are aligned to the Unix epoch)")]
    TimeZoneOnInterval,
}

impl Schedule {
    /// Ticks every `interval`, at the multiples of it since the Unix epoch (whole
    /// milliseconds, at least one), so every process computes the same ticks: an hourly
    /// interval ticks on the hour (UTC), a daily one at midnight UTC.
    pub fn every(interval: Duration) -> Self {
        let millis = u64::try_from(interval.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        Self {
            kind: Kind::Every { millis },
        }
    }

    /// Ticks when a cron expression matches, in UTC unless [`Schedule::in_timezone`] says
    /// otherwise. Five fields (minute, hour, day of month, month, day of week) or six with
    /// the second first; names (`MON`, `JAN`), ranges, steps, lists, `L`, `W`, `#` and the
    /// aliases `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly` (parsed by
    /// [croner](https://docs.rs/croner)). Day of month and day of week match when either
    /// does, as in Vixie cron.
    pub fn cron(expression: &str) -> Result<Self, ScheduleError> {
        let cron =
            croner::Cron::from_str(expression).map_err(|error| ScheduleError::InvalidCron {
                expression: expression.to_owned(),
                reason: error.to_string(),
            })?;
        Ok(Self {
            kind: Kind::Cron {
                cron: Box::new(cron),
                expression: expression.to_owned(),
                zone: jiff::tz::TimeZone::UTC,
                zone_name: "UTC".to_owned(),
            },
        })
    }

    /// Evaluates the cron expression in an IANA time zone (`"Europe/Madrid"`,
    /// `"America/New_York"`), read from the system's time zone database or, where the system
    /// has none, from a copy built into the crate.
    ///
    /// Across a change of the clocks the rules are Vixie cron's: a time the clocks skip (a
    /// 02:30 tick on the night summer time begins) runs at the first minute after the gap;
    /// a time the clocks pass twice runs once, the first time, unless the expression has a
    /// wildcard or step in its second, minute or hour field (`*/15 * * * *`), which then
    /// matches on both passes.
    pub fn in_timezone(self, name: &str) -> Result<Self, ScheduleError> {
        match self.kind {
            Kind::Every { .. } => Err(ScheduleError::TimeZoneOnInterval),
            Kind::Cron {
                cron, expression, ..
            } => {
                let zone =
                    jiff::tz::db()
                        .get(name)
                        .map_err(|error| ScheduleError::UnknownTimeZone {
                            name: name.to_owned(),
                            reason: error.to_string(),
                        })?;
                Ok(Self {
                    kind: Kind::Cron {
                        cron,
                        expression,
                        zone,
                        zone_name: name.to_owned(),
                    },
                })
            }
        }
    }

    /// The first tick strictly after `after`, or `None` when the schedule never ticks again
    /// (a cron expression naming a day that does not come, such as February 30).
    pub fn next_after(&self, after: SystemTime) -> Option<SystemTime> {
        match &self.kind {
            Kind::Every { millis } => {
                let now = unix_ms(after)?;
                let next = (now / millis).checked_add(1)?.checked_mul(*millis)?;
                from_unix_ms(next)
            }
            Kind::Cron { cron, zone, .. } => {
                // Ticks are whole seconds and the search starts at the second after `from`;
                // should it ever answer `after` itself, it goes on from there (bounded).
                let mut from = zoned(after, zone)?;
                for _ in 0..3 {
                    let next = cron.find_next_occurrence(&from, false).ok()?;
                    if SystemTime::from(next.timestamp()) > after {
                        return Some(SystemTime::from(next.timestamp()));
                    }
                    from = next;
                }
                None
            }
        }
    }

    /// The latest tick at or before `at`, or `None` when there was none.
    pub fn latest_at_or_before(&self, at: SystemTime) -> Option<SystemTime> {
        match &self.kind {
            Kind::Every { millis } => {
                let now = unix_ms(at)?;
                from_unix_ms(now / millis * millis)
            }
            Kind::Cron { cron, zone, .. } => {
                let from = zoned(at, zone)?;
                let latest = cron.find_previous_occurrence(&from, true).ok()?;
                Some(SystemTime::from(latest.timestamp()))
            }
        }
    }

    /// The next `count` ticks strictly after `after`.
    pub fn upcoming(&self, after: SystemTime, count: usize) -> Vec<SystemTime> {
        let mut ticks = Vec::with_capacity(count);
        let mut from = after;
        while ticks.len() < count {
            let Some(next) = self.next_after(from) else {
                break;
            };
            ticks.push(next);
            from = next;
        }
        ticks
    }

    /// How long a tick's unique key is held: twice the gap to the next tick, at least
    /// [`MIN_KEY_HOLD`]. Long enough that a worker reaching the tick late, or restarting
    /// before the next tick and catching up ([`CatchUp::Latest`]), finds it held.
    fn key_hold(&self, tick: SystemTime) -> Duration {
        let gap = self
            .next_after(tick)
            .and_then(|next| next.duration_since(tick).ok())
            .unwrap_or(Duration::from_secs(24 * 3600));
        gap.saturating_mul(2).max(MIN_KEY_HOLD)
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Every { millis } => write!(f, "every {:?}", Duration::from_millis(*millis)),
            Kind::Cron {
                expression,
                zone_name,
                ..
            } => write!(f, "cron {expression:?} in {zone_name}"),
        }
    }
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Schedule({self})")
    }
}

/// The shortest time a tick's unique key is held, whatever the schedule: clocks of the
/// workers may be this far apart without a tick running twice.
pub const MIN_KEY_HOLD: Duration = Duration::from_secs(60);

/// What a worker does at start about ticks that passed while no worker was running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CatchUp {
    /// Nothing: the first tick is the next one to come (the default). A restart never
    /// brings a burst of missed ticks.
    #[default]
    None,
    /// Enqueue the latest tick that has passed, if no worker enqueued it (its key is still
    /// held when one did), then go on with the next one. At most one missed tick runs,
    /// however long the workers were away.
    Latest,
}

/// A moment a periodic job is enqueued for, handed to the function that makes the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tick {
    at: SystemTime,
}

impl Tick {
    /// When the tick was due (the schedule's time, not when the job was enqueued).
    pub fn scheduled_at(&self) -> SystemTime {
        self.at
    }

    /// The tick in milliseconds since the Unix epoch, as it appears in its unique key.
    pub fn unix_ms(&self) -> u64 {
        unix_ms(self.at).unwrap_or(0)
    }
}

type EnqueueFn = Arc<
    dyn Fn(Queue, Tick, Unique) -> BoxFuture<'static, Result<Enqueued, QueueError>> + Send + Sync,
>;

/// A job enqueued at every tick of a [`Schedule`], registered on a worker with
/// [`Worker::periodic`](crate::Worker::periodic).
///
/// ```no_run
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize)] struct Report { day_ms: u64 }
/// # impl anb_queue::Job for Report { const NAME: &'static str = "report"; }
/// # async fn example(queue: anb_queue::Queue) -> Result<(), Box<dyn std::error::Error>> {
/// use anb_queue::{CatchUp, JobContext, PeriodicJob, Schedule, Worker};
///
/// let nightly = Schedule::cron("0 2 * * *")?.in_timezone("America/Bogota")?;
/// Worker::new(queue)
///     .handle(|report: Report, _ctx: JobContext| async move { Ok(()) })
///     // The function makes the job for a tick: the same tick gives the same job on every worker.
///     .periodic(PeriodicJob::new(nightly, |tick| Report { day_ms: tick.unix_ms() }).catch_up(CatchUp::Latest))
///     .run_until(anb_queue::shutdown_signal())
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct PeriodicJob {
    name: String,
    job_name: &'static str,
    schedule: Schedule,
    catch_up: CatchUp,
    enqueue: EnqueueFn,
}

impl fmt::Debug for PeriodicJob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeriodicJob")
            .field("name", &self.name)
            .field("job", &self.job_name)
            .field("schedule", &self.schedule)
            .field("catch_up", &self.catch_up)
            .finish_non_exhaustive()
    }
}

impl PeriodicJob {
    /// Enqueues the job `make` returns at every tick of `schedule`. Its name (in unique keys,
    /// logs and metrics) is the job type's [`Job::NAME`] unless [`PeriodicJob::name`] sets
    /// another. Every worker that registers it should make the same job for the same tick.
    pub fn new<J, F>(schedule: Schedule, make: F) -> Self
    where
        J: Job,
        F: Fn(Tick) -> J + Send + Sync + 'static,
    {
        let enqueue: EnqueueFn = Arc::new(move |queue: Queue, tick: Tick, unique: Unique| {
            let job = make(tick);
            async move { queue.enqueue_unique(&job, unique).await }.boxed()
        });
        Self {
            name: J::NAME.to_owned(),
            job_name: J::NAME,
            schedule,
            catch_up: CatchUp::None,
            enqueue,
        }
    }

    /// Names this periodic job, to register one job type on two schedules (the name is part
    /// of each tick's unique key, so keep it stable across releases).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// What to do at start about ticks missed while no worker ran (default: nothing).
    pub fn catch_up(mut self, catch_up: CatchUp) -> Self {
        self.catch_up = catch_up;
        self
    }

    /// The periodic job's name.
    pub fn periodic_name(&self) -> &str {
        &self.name
    }

    /// The schedule.
    pub fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The unique key of a tick: the periodic job's name and the tick, held for the key hold.
    fn unique(&self, tick: Tick) -> Unique {
        Unique::key(format!("periodic:{}:{}", self.name, tick.unix_ms()))
            .for_period(self.schedule.key_hold(tick.at))
    }

    /// Enqueues one tick, retrying a failed enqueue with backoff until it succeeds or the
    /// next tick comes due (the tick is skipped then). Returns early on `stop`.
    async fn enqueue_tick(&self, queue: &Queue, tick: Tick, stop: &CancellationToken) {
        let next = self.schedule.next_after(tick.at);
        let mut backoff = Duration::from_millis(500);
        loop {
            let attempt = tokio::time::timeout(
                ENQUEUE_TIMEOUT,
                (self.enqueue)(queue.clone(), tick, self.unique(tick)),
            );
            let outcome = tokio::select! {
                outcome = attempt => outcome.unwrap_or(Err(QueueError::Timeout {
                    operation: "enqueueing a periodic job",
                    after: ENQUEUE_TIMEOUT,
                })),
                () = stop.cancelled() => return,
            };
            let error = match outcome {
                Ok(enqueued) => {
                    let result = if enqueued.duplicate {
                        "duplicate"
                    } else {
                        "enqueued"
                    };
                    tracing::debug!(periodic = %self.name, tick = tick.unix_ms(), job.id = %enqueued.id, result, "periodic tick");
                    count_tick(&self.name, result);
                    return;
                }
                Err(error) => error,
            };
            count_tick(&self.name, "failed");
            let retry_at = SystemTime::now() + backoff;
            if next.is_none_or(|next| retry_at >= next) {
                tracing::warn!(periodic = %self.name, tick = tick.unix_ms(), %error, "enqueueing a periodic job failed; this tick is skipped");
                count_tick(&self.name, "skipped");
                return;
            }
            tracing::warn!(periodic = %self.name, tick = tick.unix_ms(), %error, retry_in = ?backoff, "enqueueing a periodic job failed; retrying");
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = stop.cancelled() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    /// The scheduler of this periodic job: enqueues each tick until `stop` fires.
    pub(crate) async fn run(self, queue: Queue, stop: CancellationToken) {
        tracing::info!(periodic = %self.name, job = self.job_name, schedule = %self.schedule, catch_up = ?self.catch_up, "periodic job scheduled");
        let (catch_up, mut due) = start(&self.schedule, self.catch_up, SystemTime::now());
        if let Some(latest) = catch_up {
            self.enqueue_tick(&queue, Tick { at: latest }, &stop).await;
        }
        while let Some(tick) = due {
            if !sleep_until(tick, &stop).await {
                return;
            }
            let tick = on_waking(&self.schedule, tick, SystemTime::now());
            self.enqueue_tick(&queue, Tick { at: tick }, &stop).await;
            if stop.is_cancelled() {
                return;
            }
            due = self.schedule.next_after(tick);
        }
        tracing::warn!(periodic = %self.name, schedule = %self.schedule, "the schedule has no further tick");
    }
}

/// Where a scheduler starting at `now` begins: the missed tick it catches up, if any, and the
/// first tick it waits for.
fn start(
    schedule: &Schedule,
    catch_up: CatchUp,
    now: SystemTime,
) -> (Option<SystemTime>, Option<SystemTime>) {
    let latest = match catch_up {
        CatchUp::None => None,
        CatchUp::Latest => schedule.latest_at_or_before(now),
    };
    // The latest tick at or before `now` is followed by the first one after it.
    (latest, schedule.next_after(latest.unwrap_or(now)))
}

/// The tick to enqueue on waking at `now` for the tick `due`: `due` itself, or, when the
/// scheduler woke past later ticks too (a suspended host, a stalled runtime, the clock set
/// forward), only the latest of them, never a burst of the missed ones.
fn on_waking(schedule: &Schedule, due: SystemTime, now: SystemTime) -> SystemTime {
    match schedule.latest_at_or_before(now) {
        Some(latest) if latest > due => latest,
        _ => due,
    }
}

/// How long one enqueue of a tick may take before it is retried.
const ENQUEUE_TIMEOUT: Duration = Duration::from_secs(10);

fn count_tick(name: &str, result: &'static str) {
    metrics::counter!("anb_queue_periodic_ticks_total", "periodic" => name.to_owned(), "result" => result)
        .increment(1);
}

/// Sleeps until the wall clock reaches `at` (the runtime's timer follows a monotonic clock,
/// so the wall clock is read again on waking). Returns `false` if `stop` fired first.
async fn sleep_until(at: SystemTime, stop: &CancellationToken) -> bool {
    loop {
        let Ok(wait) = at.duration_since(SystemTime::now()) else {
            return true;
        };
        if wait.is_zero() {
            return true;
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return false,
        }
    }
}

fn unix_ms(at: SystemTime) -> Option<u64> {
    u64::try_from(at.duration_since(UNIX_EPOCH).ok()?.as_millis()).ok()
}

fn from_unix_ms(ms: u64) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::from_millis(ms))
}

fn zoned(at: SystemTime, zone: &jiff::tz::TimeZone) -> Option<jiff::Zoned> {
    let timestamp = jiff::Timestamp::try_from(at).ok()?;
    Some(timestamp.to_zoned(zone.clone()))
}

/// Spawns the scheduler of each periodic job; they stop when `stop` fires.
pub(crate) fn spawn_schedulers(
    jobs: Vec<PeriodicJob>,
    queue: &Queue,
    stop: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    jobs.into_iter()
        .map(|job| tokio::spawn(job.run(queue.clone(), stop.clone())))
        .collect()
}

/// Used by the worker to make sure a periodic job's ticks can be deduplicated.
pub(crate) fn check_supported(queue: &Queue) -> Result<(), QueueError> {
    if queue.supports_unique_jobs() {
        Ok(())
    } else {
        Err(QueueError::UnsupportedByBackend {
            operation: "periodic jobs (one enqueue per tick needs unique keys)",
            backend: queue.kind().as_str(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rfc3339: &str) -> SystemTime {
        SystemTime::from(rfc3339.parse::<jiff::Timestamp>().unwrap())
    }

    fn show(ticks: &[SystemTime]) -> Vec<String> {
        ticks
            .iter()
            .map(|tick| jiff::Timestamp::try_from(*tick).unwrap().to_string())
            .collect()
    }

    #[test]
    fn intervals_tick_on_multiples_of_the_interval_since_the_epoch() {
        let schedule = Schedule::every(Duration::from_secs(300));
        assert_eq!(
            show(&schedule.upcoming(at("2026-12-04T20:03:07.250Z"), 3)),
            [
                "2026-12-04T20:05:00Z",
                "2026-12-04T20:10:00Z",
                "2026-12-04T20:15:00Z"
            ]
        );
        // Strictly after: a tick is not its own next tick.
        assert_eq!(
            show(&schedule.upcoming(at("2026-12-04T20:05:00Z"), 1)),
            ["2026-12-04T20:10:00Z"]
        );
        assert_eq!(
            show(&[schedule
                .latest_at_or_before(at("2026-12-04T20:09:59.999Z"))
                .unwrap()]),
            ["2026-12-04T20:05:00Z"]
        );
        assert_eq!(
            schedule.latest_at_or_before(at("2026-12-04T20:05:00Z")),
            Some(at("2026-12-04T20:05:00Z"))
        );
    }

    #[test]
    fn cron_ticks_follow_the_wall_clock_of_their_time_zone_across_dst() {
        // 09:00 in New York is 14:00 UTC in winter and 13:00 UTC in summer; summer time began
        // on Sunday 8 March 2026.
        let nine = Schedule::cron("0 9 * * *")
            .unwrap()
            .in_timezone("America/New_York")
            .unwrap();
        assert_eq!(
            show(&nine.upcoming(at("2026-03-06T15:00:00Z"), 3)),
            [
                "2026-03-07T14:00:00Z",
                "2026-03-08T13:00:00Z",
                "2026-03-09T13:00:00Z"
            ]
        );

        // Madrid skips 02:00–03:00 on 29 March 2026: the 02:30 tick runs at 03:00 CEST
        // (01:00 UTC) that night, and at 02:30 CEST (00:30 UTC) after.
        let half_past_two = Schedule::cron("30 2 * * *")
            .unwrap()
            .in_timezone("Europe/Madrid")
            .unwrap();
        assert_eq!(
            show(&half_past_two.upcoming(at("2026-03-27T12:00:00Z"), 3)),
            [
                "2026-03-28T01:30:00Z",
                "2026-03-29T01:00:00Z",
                "2026-03-30T00:30:00Z"
            ]
        );
        // It passes 02:00–03:00 twice on 25 October 2026: the tick runs once, the first time
        // (02:30 CEST, 00:30 UTC), then at 02:30 CET (01:30 UTC).
        assert_eq!(
            show(&half_past_two.upcoming(at("2026-10-24T12:00:00Z"), 2)),
            ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
        );
        // A step in the minute field matches on both passes of the repeated hour.
        let half_hourly = Schedule::cron("*/30 2 * * *")
            .unwrap()
            .in_timezone("Europe/Madrid")
            .unwrap();
        assert_eq!(
            show(&half_hourly.upcoming(at("2026-10-24T23:59:00Z"), 4)),
            [
                "2026-10-25T00:00:00Z",
                "2026-10-25T00:30:00Z",
                "2026-10-25T01:00:00Z",
                "2026-10-25T01:30:00Z"
            ]
        );
    }

    #[test]
    fn cron_in_utc_by_default_with_optional_seconds() {
        let hourly = Schedule::cron("@hourly").unwrap();
        assert_eq!(
            show(&hourly.upcoming(at("2026-12-04T20:00:00Z"), 2)),
            ["2026-12-04T21:00:00Z", "2026-12-04T22:00:00Z"]
        );
        assert_eq!(
            hourly.latest_at_or_before(at("2026-12-04T20:59:59Z")),
            Some(at("2026-12-04T20:00:00Z"))
        );
        let seconds = Schedule::cron("*/10 * * * * *").unwrap();
        assert_eq!(
            show(&seconds.upcoming(at("2026-12-04T20:00:00.500Z"), 2)),
            ["2026-12-04T20:00:10Z", "2026-12-04T20:00:20Z"]
        );
        assert_eq!(seconds.to_string(), r#"cron "*/10 * * * * *" in UTC"#);
    }

    #[test]
    fn bad_expressions_and_zones_are_refused() {
        assert!(matches!(
            Schedule::cron("61 * * * *"),
            Err(ScheduleError::InvalidCron { .. })
        ));
        assert!(matches!(
            Schedule::cron("0 3 * * *")
                .unwrap()
                .in_timezone("Mars/Olympus_Mons"),
            Err(ScheduleError::UnknownTimeZone { .. })
        ));
        assert!(matches!(
            Schedule::every(Duration::from_secs(1)).in_timezone("UTC"),
            Err(ScheduleError::TimeZoneOnInterval)
        ));
        // February 30 never comes.
        let never = Schedule::cron("0 0 30 2 *").unwrap();
        assert_eq!(never.next_after(at("2026-01-01T00:00:00Z")), None);
    }

    #[test]
    fn a_start_catches_up_at_most_the_latest_tick_and_a_late_wake_enqueues_only_the_latest() {
        let schedule = Schedule::every(Duration::from_secs(1));
        let now = at("2026-12-04T20:00:05.300Z");
        assert_eq!(
            start(&schedule, CatchUp::None, now),
            (None, Some(at("2026-12-04T20:00:06Z")))
        );
        assert_eq!(
            start(&schedule, CatchUp::Latest, now),
            (
                Some(at("2026-12-04T20:00:05Z")),
                Some(at("2026-12-04T20:00:06Z"))
            )
        );
        let due = at("2026-12-04T20:00:06Z");
        // On time, or late within the gap: the tick itself.
        assert_eq!(on_waking(&schedule, due, due), due);
        assert_eq!(
            on_waking(&schedule, due, at("2026-12-04T20:00:06.900Z")),
            due
        );
        // Woken three ticks late: the latest one only.
        assert_eq!(
            on_waking(&schedule, due, at("2026-12-04T20:00:09.100Z")),
            at("2026-12-04T20:00:09Z")
        );
    }

    #[test]
    fn a_tick_key_names_the_job_and_the_tick_and_outlives_the_next_tick() {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Report;
        impl Job for Report {
            const NAME: &'static str = "report";
        }
        let every_second = PeriodicJob::new(Schedule::every(Duration::from_secs(1)), |_| Report);
        let tick = Tick {
            at: at("2026-12-04T20:00:01Z"),
        };
        let key = every_second.unique(tick).resolve("null");
        assert_eq!(key.key, "periodic:report:1796414401000");
        assert_eq!(key.period, Some(MIN_KEY_HOLD));
        let daily = PeriodicJob::new(Schedule::cron("@daily").unwrap(), |_| Report).name("daily");
        let key = daily
            .unique(Tick {
                at: at("2026-12-04T00:00:00Z"),
            })
            .resolve("null");
        assert!(key.key.starts_with("periodic:daily:"));
        assert_eq!(key.period, Some(Duration::from_secs(2 * 24 * 3600)));
    }
}
