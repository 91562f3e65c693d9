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
        anb_queue::Unique::key(Self::unique_key(self.video_id))
    }

    /// The unique key of a video's transcode, by which a deletion cancels it.
    pub fn unique_key(video_id: VideoId) -> String {
        format!("video:{video_id}")
    }
}

impl anb_queue::Job for TranscodeVideo {
    /// Stable across releases: never change it while jobs of the old name
    /// may still be waiting.
    const NAME: &'static str = "anb.transcode_video";
}

/// Finish the deletions still waiting ([`crate::videos::purge_deleted_videos`]):
/// remove what deleted videos left in storage, then their rows.
///
/// The worker enqueues it as a periodic job, one per tick of its purge
/// interval however many workers run, so a pass runs once per interval.
/// It carries nothing: each pass reads what is waiting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeDeletedVideos {}

impl anb_queue::Job for PurgeDeletedVideos {
    /// Stable across releases, like every job name.
    const NAME: &'static str = "anb.purge_deleted_videos";
    /// A pass that fails is tried again soon; the next tick runs a new one
    /// anyway, so a purge that keeps failing is dead-lettered rather than
    /// retried for long.
    const MAX_ATTEMPTS: u32 = 3;
    /// Its own queue, one at a time, so a pass never waits behind a backlog of
    /// transcodes (which run in the default queue).
    const QUEUE: &'static str = MAINTENANCE_QUEUE;
}

/// The named queue of the platform's upkeep jobs ([`PurgeDeletedVideos`]).
pub const MAINTENANCE_QUEUE: &str = "maintenance";

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

    #[test]
    fn the_purge_payload_is_an_empty_object() {
        let json = serde_json::to_value(PurgeDeletedVideos::default()).unwrap();
        assert_eq!(json, serde_json::json!({}));
        assert_eq!(
            serde_json::from_value::<PurgeDeletedVideos>(json).unwrap(),
            PurgeDeletedVideos {}
        );
    }
}
