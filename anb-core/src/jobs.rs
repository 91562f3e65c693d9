//! Payloads of the background jobs the API enqueues and the worker runs.

use serde::{Deserialize, Serialize};

use crate::domain::VideoId;

/// Transcode one uploaded video into the showcase format (SPEC §5).
///
/// Carries the storage key of the original so the worker can start reading
/// it without a database round trip; the video row stays the source of truth
/// for whether the work is still wanted (a deleted video is skipped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TranscodeVideo {
    pub video_id: VideoId,
    /// Where the untouched upload lives in object storage.
    pub original_key: String,
}

impl TranscodeVideo {
    /// One transcode per video until it finishes: a second enqueue for the
    /// same video (a retried request, a replayed commit) returns the job
    /// already waiting or running, so the video is never encoded twice at once.
    pub fn unique(&self) -> anb_queue::Unique {
        anb_queue::Unique::key(format!("video:{}", self.video_id))
    }
}

impl anb_queue::Job for TranscodeVideo {
    /// Stable across releases: never change it while jobs of the old name
    /// may still be waiting.
    const NAME: &'static str = "anb.transcode_video";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_plain_json() {
        let id: VideoId = "0190c8a4-5f6e-7a3b-8c2d-1e2f3a4b5c6d".parse().unwrap();
        let job = TranscodeVideo {
            video_id: id,
            original_key: "originals/0190c8a4.mp4".into(),
        };
        let json = serde_json::to_value(&job).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "video_id": "0190c8a4-5f6e-7a3b-8c2d-1e2f3a4b5c6d",
                "original_key": "originals/0190c8a4.mp4",
            })
        );
        assert_eq!(serde_json::from_value::<TranscodeVideo>(json).unwrap(), job);
    }
}
