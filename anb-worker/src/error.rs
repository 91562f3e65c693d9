//! Why a transcode failed, split into what retrying can and cannot fix.

use std::time::Duration;

/// A transcode failure.
///
/// [`TranscodeError::is_permanent`] tells the job handler whether to give up
/// at once (the upload breaks the rules or cannot be read: retrying gives the
/// same answer) or to retry (storage, disk or the media library failed).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TranscodeError {
    /// The upload is not acceptable; the message is fit to show its owner.
    #[error("{0}")]
    Rejected(#[from] Rejection),
    /// The caller raised the cancel flag.
    #[error("transcoding was cancelled")]
    Cancelled,
    /// Reading the input or writing an output failed.
    #[error("I/O failure while {context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// FFmpeg failed in a way that does not point at the upload.
    #[error("media library failure while {context}: {source}")]
    Media {
        context: &'static str,
        #[source]
        source: ffmpeg_next::Error,
    },
    /// The [`TranscodeOptions`](crate::TranscodeOptions) are incoherent (a configuration mistake).
    #[error("invalid transcode options: {0}")]
    InvalidOptions(String),
}

impl TranscodeError {
    /// True when retrying cannot help because the upload itself is at fault.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Rejected(_))
    }

    /// The reason the upload was refused, when it was.
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            Self::Rejected(rejection) => Some(rejection),
            _ => None,
        }
    }
}

/// Why an upload was refused. The `Display` text is the `failure_reason`
/// shown to the player.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    #[error("the file has no video stream")]
    NoVideoStream,
    #[error("the file is not an MP4 or MOV video")]
    NotMp4,
    #[error("the video is {width}×{height}; it must be at most {max_width}×{max_height} pixels")]
    FrameTooLarge {
        width: u32,
        height: u32,
        max_width: u32,
        max_height: u32,
    },
    #[error(
        "the video's frames of {width}×{height} have more than the {max_pixels} pixels allowed"
    )]
    TooManyPixels {
        width: u32,
        height: u32,
        max_pixels: u64,
    },
    #[error("the video runs at {rate} frames per second; it must be at most {maximum}")]
    FrameRateTooHigh { rate: u32, maximum: u32 },
    #[error("the video has more than the {maximum} frames allowed")]
    TooManyFrames { maximum: u64 },
    #[error(
        "processing the video took longer than the {} s allowed for it",
        budget.as_secs()
    )]
    TooCostly { budget: Duration },
    #[error("the file is not a readable video ({detail})")]
    Unreadable { detail: String },
    #[error("the video's length cannot be determined")]
    UnknownDuration,
    #[error(
        "the file is {}; it must be at most {}",
        readable_size(*bytes),
        readable_size(*maximum)
    )]
    TooLarge { bytes: u64, maximum: u64 },
    #[error(
        "the video is {:.1} s long; it must be at least {:.0} s",
        duration.as_secs_f64(),
        minimum.as_secs_f64()
    )]
    TooShort {
        duration: Duration,
        minimum: Duration,
    },
    #[error(
        "the video is {:.1} s long; it must be at most {:.0} s",
        duration.as_secs_f64(),
        maximum.as_secs_f64()
    )]
    TooLong {
        duration: Duration,
        maximum: Duration,
    },
    #[error(
        "the video is {width}×{height}; its shorter side must be at least {minimum_short_side} pixels"
    )]
    ResolutionTooLow {
        width: u32,
        height: u32,
        minimum_short_side: u32,
    },
    #[error(
        "the video stops after {:.1} s of the {:.1} s it declares: the file is truncated or corrupt",
        decoded.as_secs_f64(),
        declared.as_secs_f64()
    )]
    Truncated {
        decoded: Duration,
        declared: Duration,
    },
}

/// A size in megabytes, or in bytes when it is small enough for megabytes to hide it.
fn readable_size(bytes: u64) -> String {
    if bytes >= 100_000 {
        format!("{:.1} MB", bytes as f64 / 1e6)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_are_permanent_and_read_well() {
        let error = TranscodeError::from(Rejection::TooShort {
            duration: Duration::from_millis(10_040),
            minimum: Duration::from_secs(20),
        });
        assert!(error.is_permanent());
        assert_eq!(
            error.to_string(),
            "the video is 10.0 s long; it must be at least 20 s"
        );
        let low = Rejection::ResolutionTooLow {
            width: 1280,
            height: 720,
            minimum_short_side: 1080,
        };
        assert_eq!(
            low.to_string(),
            "the video is 1280×720; its shorter side must be at least 1080 pixels"
        );
        let large = Rejection::TooLarge {
            bytes: 150_000_000,
            maximum: 104_857_600,
        };
        assert_eq!(
            large.to_string(),
            "the file is 150.0 MB; it must be at most 104.9 MB"
        );
        let small = Rejection::TooLarge {
            bytes: 2_000,
            maximum: 1_000,
        };
        assert_eq!(
            small.to_string(),
            "the file is 2000 bytes; it must be at most 1000 bytes"
        );
    }

    #[test]
    fn io_and_media_failures_are_retryable() {
        let io = TranscodeError::Io {
            context: "reading the input",
            source: std::io::Error::from(std::io::ErrorKind::TimedOut),
        };
        assert!(!io.is_permanent());
        assert!(io.rejection().is_none());
        let media = TranscodeError::Media {
            context: "opening the encoder",
            source: ffmpeg_next::Error::Bug,
        };
        assert!(!media.is_permanent());
        assert!(!TranscodeError::Cancelled.is_permanent());
    }
}
