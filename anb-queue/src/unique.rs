//! Unique jobs: at most one job per key and job name, while it is unfinished or for a period.

use std::{fmt::Write as _, time::Duration};

use sha2::{Digest, Sha256};

use crate::backend::JobId;

/// How an enqueue is made unique: by which key, and for how long the key is held.
///
/// ```
/// use std::time::Duration;
/// use anb_queue::Unique;
///
/// // One job per video until it finishes (completed, dead-lettered).
/// let per_video = Unique::key("video:123");
/// // One job with the same arguments per hour, finished or not.
/// let hourly = Unique::by_args().for_period(Duration::from_secs(3600));
/// # let _ = (per_video, hourly);
/// ```
///
/// Keys are per job name: two job types may use the same key without meeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unique {
    source: KeySource,
    period: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum KeySource {
    Explicit(String),
    Args,
}

impl Unique {
    /// A key chosen by the caller, held while the job is unfinished.
    pub fn key(key: impl Into<String>) -> Self {
        Self {
            source: KeySource::Explicit(key.into()),
            period: None,
        }
    }

    /// The key is the job's serialized arguments (a digest of its JSON), held while the job
    /// is unfinished. Two jobs are the same when serde writes the same JSON for them, so a
    /// job with a `HashMap` field (no fixed order) needs an explicit [`Unique::key`].
    pub fn by_args() -> Self {
        Self {
            source: KeySource::Args,
            period: None,
        }
    }

    /// Holds the key for `period` from the enqueue, whether the job has finished or not
    /// (and not longer, even if it is still waiting or running then).
    pub fn for_period(mut self, period: Duration) -> Self {
        self.period = Some(period);
        self
    }

    /// Holds the key while the job is unfinished (the default): waiting, delayed or
    /// running. Completing it, dead-lettering it or deleting it frees the key.
    pub fn while_unfinished(mut self) -> Self {
        self.period = None;
        self
    }

    /// The key this makes for `job` (for [`Queue::cancel_unique`](crate::Queue::cancel_unique)).
    pub fn key_for<J: crate::Job>(&self, job: &J) -> Result<String, crate::QueueError> {
        let payload =
            serde_json::to_string(job).map_err(|source| crate::QueueError::Serialize {
                job: J::NAME,
                source,
            })?;
        Ok(self.resolve(&payload).key)
    }

    /// The key and its scope for a job with this serialized payload.
    pub(crate) fn resolve(&self, payload: &str) -> UniqueKey {
        let key = match &self.source {
            KeySource::Explicit(key) => key.clone(),
            KeySource::Args => {
                let digest = Sha256::digest(payload.as_bytes());
                let mut key = String::with_capacity(12 + 64);
                key.push_str("args:sha256:");
                for byte in digest {
                    let _ = write!(key, "{byte:02x}");
                }
                key
            }
        };
        UniqueKey {
            key,
            period: self.period,
        }
    }
}

/// A job's unique key as a backend receives it ([`NewJob::unique`](crate::backend::NewJob)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UniqueKey {
    /// The key, unique per job name.
    pub key: String,
    /// `None`: held while the job is unfinished. `Some(period)`: held until `period` after
    /// the enqueue by the backend's own clock, finished or not.
    pub period: Option<Duration>,
}

/// What a unique enqueue did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    /// The new job's id, or, for a duplicate, the id of the job holding the key.
    pub id: JobId,
    /// Whether a job already held the key, so nothing was enqueued.
    pub duplicate: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_by_args_is_a_digest_of_the_payload() {
        let unique = Unique::by_args();
        let first = unique.resolve(r#"{"n":1}"#);
        assert_eq!(first, unique.resolve(r#"{"n":1}"#));
        assert_ne!(first.key, unique.resolve(r#"{"n":2}"#).key);
        assert!(first.key.starts_with("args:sha256:") && first.key.len() == 12 + 64);
        assert_eq!(first.period, None);
    }

    #[test]
    fn an_explicit_key_is_kept_and_a_period_is_carried() {
        let unique = Unique::key("video:1").for_period(Duration::from_secs(5));
        assert_eq!(
            unique.resolve("{}"),
            UniqueKey {
                key: "video:1".to_owned(),
                period: Some(Duration::from_secs(5)),
            }
        );
        assert_eq!(unique.while_unfinished().resolve("{}").period, None);
    }
}
