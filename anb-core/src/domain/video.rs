//! Videos: title, processing status and its legal transitions (SPEC §3 Videos).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::text::bounded_text_type;

bounded_text_type!(
    /// A video title: 5–100 characters.
    VideoTitle, 5, 100, LetterOrDigit
);

/// Where a video is in its processing.
///
/// ```text
/// uploaded ◄─► processing ──► processed
///     │            │ ▲
///     │            └─┘ (a redelivered job claims it again)
///     └────────────┴────► failed (with a reason)
/// ```
/// `processing` means an attempt is running. A job given back to the queue unfinished without
/// counting its attempt (its worker shutting down) returns its video to `uploaded`, progress 0,
/// and the next attempt claims it again. `processed` and `failed` are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VideoStatus {
    Uploaded,
    Processing,
    Processed,
    Failed,
}

/// A status change the machine does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a video cannot go from `{from}` to `{to}`")]
pub struct IllegalTransition {
    pub from: VideoStatus,
    pub to: VideoStatus,
}

/// A status name that is not one of the four.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown video status `{0}`")]
pub struct UnknownStatus(pub String);

impl VideoStatus {
    pub const ALL: [Self; 4] = [
        Self::Uploaded,
        Self::Processing,
        Self::Processed,
        Self::Failed,
    ];

    /// The lower-case name used in the API and the database.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Uploaded => "uploaded",
            Self::Processing => "processing",
            Self::Processed => "processed",
            Self::Failed => "failed",
        }
    }

    /// Whether no further change is possible.
    pub fn is_final(&self) -> bool {
        matches!(self, Self::Processed | Self::Failed)
    }

    /// Whether the machine allows going from `self` to `next`.
    pub fn can_become(&self, next: Self) -> bool {
        use VideoStatus::*;
        matches!(
            (self, next),
            (Uploaded, Processing)
                | (Processing, Processing)
                | (Processing, Uploaded)
                | (Processing, Processed)
                | (Uploaded | Processing, Failed)
        )
    }

    /// `next` if the machine allows it, else the typed refusal.
    pub fn transition_to(&self, next: Self) -> Result<Self, IllegalTransition> {
        if self.can_become(next) {
            Ok(next)
        } else {
            Err(IllegalTransition {
                from: *self,
                to: next,
            })
        }
    }
}

impl fmt::Display for VideoStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for VideoStatus {
    type Err = UnknownStatus;
    fn from_str(raw: &str) -> Result<Self, UnknownStatus> {
        Self::ALL
            .into_iter()
            .find(|status| status.as_str() == raw)
            .ok_or_else(|| UnknownStatus(raw.to_owned()))
    }
}

/// Why processing failed, in words a player can read. Never empty; long texts
/// (a chain of low-level errors) are cut to [`Self::MAX_CHARS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureReason(String);

impl FailureReason {
    pub const MAX_CHARS: usize = 500;

    pub fn new(reason: impl AsRef<str>) -> Self {
        let trimmed = reason.as_ref().trim();
        let text: String = if trimmed.is_empty() {
            "processing failed".to_owned()
        } else {
            trimmed.chars().take(Self::MAX_CHARS).collect()
        };
        Self(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::VideoStatus::*;
    use super::*;
    use crate::domain::InvalidValue;

    #[test]
    fn titles_are_five_to_hundred_characters() {
        assert_eq!(
            VideoTitle::parse(" abcd "),
            Err(InvalidValue::TooShort { min: 5 })
        );
        assert!(VideoTitle::parse("Mate!").is_ok());
        assert!(VideoTitle::parse(&"x".repeat(100)).is_ok());
        assert_eq!(
            VideoTitle::parse(&"x".repeat(101)),
            Err(InvalidValue::TooLong { max: 100 })
        );
    }

    #[test]
    fn legal_transitions() {
        let legal = [
            (Uploaded, Processing),
            (Processing, Processing),
            (Processing, Uploaded),
            (Processing, Processed),
            (Processing, Failed),
            (Uploaded, Failed),
        ];
        for from in VideoStatus::ALL {
            for to in VideoStatus::ALL {
                let expected = legal.contains(&(from, to));
                assert_eq!(from.can_become(to), expected, "{from} -> {to}");
                assert_eq!(from.transition_to(to).is_ok(), expected, "{from} -> {to}");
            }
        }
    }

    #[test]
    fn final_states_never_change() {
        for from in [Processed, Failed] {
            assert!(from.is_final());
            for to in VideoStatus::ALL {
                assert_eq!(from.transition_to(to), Err(IllegalTransition { from, to }));
            }
        }
    }

    #[test]
    fn status_names_round_trip() {
        for status in VideoStatus::ALL {
            assert_eq!(status.as_str().parse::<VideoStatus>().unwrap(), status);
            assert_eq!(
                serde_json::to_string(&status).unwrap(),
                format!("\"{status}\"")
            );
        }
        assert!("Processed".parse::<VideoStatus>().is_err());
    }

    #[test]
    fn failure_reason_is_never_empty_and_bounded() {
        assert_eq!(FailureReason::new("  ").as_str(), "processing failed");
        assert_eq!(FailureReason::new("x".repeat(600)).as_str().len(), 500);
    }
}
