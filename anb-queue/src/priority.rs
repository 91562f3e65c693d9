//! Job priorities: which due job a worker takes first.

use std::fmt;

/// A job's priority, from [`Priority::HIGHEST`] (0, the default) to [`Priority::LOWEST`] (9).
///
/// Among the due jobs of the names a worker claims, those of priority 0 go first, then 1, and
/// so on; within a priority, the oldest due first. Priority orders only what is due: a
/// delayed job waits for its time whatever its priority. As in Oban, River and BullMQ, the
/// default is the highest, and work that may wait is given a lower one:
///
/// ```
/// use anb_queue::{Job, Priority};
/// # use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct SendNewsletter { issue: u32 }
///
/// impl Job for SendNewsletter {
///     const NAME: &'static str = "send_newsletter";
///     // Password-reset mails (priority 0) sent meanwhile go before the rest of the batch.
///     const PRIORITY: Priority = Priority::new(5);
/// }
/// ```
///
/// Ten levels, as in Oban: few enough that every backend keeps one index range (or sorted
/// set) per level and a claim probes them in order, so a claim's cost does not grow with
/// the jobs waiting at other levels or later times. PostgreSQL, SQLite and Redis honour
/// priorities; SQS has no ordering to give and refuses any but the default
/// ([`QueueError::UnsupportedByBackend`](crate::QueueError::UnsupportedByBackend)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Priority(u8);

impl Priority {
    /// Runs first: the default.
    pub const HIGHEST: Priority = Priority(0);
    /// Runs last.
    pub const LOWEST: Priority = Priority(9);

    /// The priority `level`, 0 (first) to 9 (last).
    ///
    /// # Panics
    ///
    /// If `level` is above 9: at compile time in a `const` (such as [`Job::PRIORITY`](crate::Job::PRIORITY)).
    /// [`Priority::try_from`] checks a level that comes from outside.
    pub const fn new(level: u8) -> Self {
        assert!(
            level <= Self::LOWEST.0,
            "a priority is 0 (first) to 9 (last)"
        );
        Self(level)
    }

    /// The level, 0 (first) to 9 (last).
    pub const fn level(self) -> u8 {
        self.0
    }

    /// Every level, first to last.
    #[cfg(test)]
    pub(crate) fn all() -> impl Iterator<Item = Priority> {
        (Self::HIGHEST.0..=Self::LOWEST.0).map(Priority)
    }
}

impl TryFrom<u8> for Priority {
    type Error = PriorityOutOfRange;

    fn try_from(level: u8) -> Result<Self, Self::Error> {
        if level <= Self::LOWEST.0 {
            Ok(Self(level))
        } else {
            Err(PriorityOutOfRange(level))
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A priority level above [`Priority::LOWEST`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("priority {0} is out of range: a priority is 0 (first) to 9 (last)")]
pub struct PriorityOutOfRange(pub u8);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_above_nine_are_refused() {
        assert_eq!(Priority::try_from(9), Ok(Priority::LOWEST));
        assert_eq!(Priority::try_from(10), Err(PriorityOutOfRange(10)));
        assert_eq!(
            Priority::all().map(Priority::level).collect::<Vec<_>>(),
            (0..=9).collect::<Vec<_>>()
        );
    }
}
