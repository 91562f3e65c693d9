//! The job types the cases enqueue. Public so that a backend's own extra tests can use the
//! same payloads and names as the suite.

use anb_queue::Job;
use serde::{Deserialize, Serialize};

/// A job that carries a number and a text, handled by recording it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Echo {
    /// Which job of a test this is.
    pub n: u32,
    /// Any text; the cases use non-ASCII and NUL characters to check payloads arrive intact.
    pub text: String,
}

impl Job for Echo {
    const NAME: &'static str = "echo";
}

/// A job whose handler fails its first `fail_attempts` attempts (three attempts at most).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Flaky {
    /// How many attempts fail before one succeeds.
    pub fail_attempts: u32,
}

impl Job for Flaky {
    const NAME: &'static str = "flaky";
    const MAX_ATTEMPTS: u32 = 3;
}

/// A job whose handler sleeps for `millis` milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Slow {
    /// How long the handler takes.
    pub millis: u64,
}

impl Job for Slow {
    const NAME: &'static str = "slow";
}

/// A job no worker of the suite handles: it stays where it was put.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Unhandled;

impl Job for Unhandled {
    const NAME: &'static str = "unhandled";
}

/// A job with one attempt only: any failure, or a lost attempt, dead-letters it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LastChance;

impl Job for LastChance {
    const NAME: &'static str = "last_chance";
    const MAX_ATTEMPTS: u32 = 1;
}
