//! The two SQL backends, PostgreSQL and SQLite, as one implementation of
//! [`Backend`](crate::backend::Backend) ([`SqlBackend`], in `sql/backend.rs`: how every
//! operation runs) over a [`Dialect`] (`sql/dialect.rs`: what an engine must provide). The
//! engines' modules, `postgres.rs` and `sqlite.rs`, hold what truly differs: the schema and
//! its migrations, the statements, the encoding of their parameters, inserting jobs, the
//! claim, and how workers are woken (`LISTEN/NOTIFY`, an in-process signal).

mod backend;
mod dialect;

use std::time::Duration;

pub(crate) use backend::SqlBackend;
pub(crate) use dialect::{At, Dialect, SqlQuery, Statements};

use crate::backend::{JobState, Lease};

/// Counts in [`QueueStats`](crate::QueueStats) are exact up to this many jobs per job name and state (per
/// state for running and dead jobs) and read at most that many index entries each, so a
/// worker's periodic stats cost the same over a backlog of a million as over one of ten
/// thousand. Beyond it a count says "at least this many".
pub(crate) const STATS_EXACT_UP_TO: i64 = 10_000;

/// A duration in whole milliseconds, the unit of every SQL time column and parameter.
pub(crate) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// A lease's row id; an id that does not parse cannot be ours, and the operation is then a
/// no-op for it.
pub(crate) fn row_id(lease: &Lease) -> Option<i64> {
    lease.id.0.parse().ok()
}

/// The leases not among those a lease operation touched (by row id and token).
pub(crate) fn lost_leases(leases: &[Lease], touched: &[(i64, String)]) -> Vec<Lease> {
    let touched: std::collections::HashSet<(i64, &str)> = touched
        .iter()
        .map(|(id, token)| (*id, token.as_str()))
        .collect();
    leases
        .iter()
        .filter(|lease| {
            row_id(lease).is_none_or(|id| !touched.contains(&(id, lease.token.as_str())))
        })
        .cloned()
        .collect()
}

/// A job's state from its `state` column and whether its `run_at` is still ahead.
pub(crate) fn sql_state(state: &str, later: bool) -> JobState {
    match state {
        "running" => JobState::Running,
        "dead" => JobState::Dead,
        _ if later => JobState::Delayed,
        _ => JobState::Ready,
    }
}
