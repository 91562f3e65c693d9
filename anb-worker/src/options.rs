//! What the pipeline accepts and how hard it works.

use std::time::Duration;

use anb_core::config::UploadLimits;

/// The x264 presets, fastest first.
pub const X264_PRESETS: [&str; 10] = [
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
    "placebo",
];

/// The rules an upload must meet and the encoder settings.
///
/// The defaults are the showcase rules ([`UploadLimits::default`]: at most
/// 100 MB, 20–60 s, shorter side at least 1080 pixels; the first 30 s kept,
/// 2 s bumpers at each end) and encoder settings sized for a 2 vCPU / 2 GiB
/// worker. The worker process takes its limits from the `ANB_UPLOAD_*`
/// variables the API reads ([`UploadLimits::from_env`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TranscodeOptions {
    /// What a source must be: size, duration bounds, shorter side of the frame.
    pub limits: UploadLimits,
    /// How much of the source is kept, from its first frame.
    pub max_kept_duration: Duration,
    /// Output frame rate (constant).
    pub frame_rate: u32,
    /// Length of each of the opening and the closing bumper.
    pub bumper_duration: Duration,
    /// x264 preset, one of [`X264_PRESETS`].
    pub x264_preset: String,
    /// x264 constant rate factor, 0–51 (lower is better quality, larger files).
    pub crf: u8,
    /// x264 threads; 0 lets x264 choose from the number of CPUs.
    pub encoder_threads: usize,
    /// Decoder threads. The decoder already runs on its own thread beside the
    /// encoder, so one is the most efficient on a small host; more uses frame
    /// threading (more memory, a little more total CPU).
    pub decoder_threads: usize,
    /// Decoded frames queued between the decoder thread and the encoder.
    /// Bounds memory: each 1080p frame is about 3 MiB.
    pub decoded_frame_queue: usize,
}

impl Default for TranscodeOptions {
    fn default() -> Self {
        Self {
            limits: UploadLimits::default(),
            max_kept_duration: Duration::from_secs(30),
            frame_rate: 30,
            bumper_duration: Duration::from_secs(2),
            x264_preset: "veryfast".to_owned(),
            crf: 23,
            encoder_threads: 0,
            decoder_threads: 1,
            decoded_frame_queue: 4,
        }
    }
}

/// Opening and closing bumpers together may add at most this much.
pub const MAX_BUMPERS_TOTAL: Duration = Duration::from_secs(5);

impl TranscodeOptions {
    /// Checks the options are coherent; the pipeline calls this first.
    pub fn validate(&self) -> Result<(), String> {
        if self.limits.min_duration > self.limits.max_duration {
            return Err("the minimum source duration exceeds the maximum".into());
        }
        if self.max_kept_duration.is_zero() {
            return Err("max_kept_duration must be positive".into());
        }
        if !(1..=120).contains(&self.frame_rate) {
            return Err(format!("frame_rate {} is outside 1..=120", self.frame_rate));
        }
        if self.bumper_duration * 2 > MAX_BUMPERS_TOTAL {
            return Err(format!(
                "two bumpers of {:?} exceed the {:?} allowed",
                self.bumper_duration, MAX_BUMPERS_TOTAL
            ));
        }
        if !X264_PRESETS.contains(&self.x264_preset.as_str()) {
            return Err(format!(
                "unknown x264 preset {:?}; expected one of {}",
                self.x264_preset,
                X264_PRESETS.join(", ")
            ));
        }
        if self.crf > 51 {
            return Err(format!("crf {} is outside 0..=51", self.crf));
        }
        if self.decoder_threads == 0 {
            return Err("decoder_threads must be at least 1".into());
        }
        if self.decoded_frame_queue == 0 {
            return Err("decoded_frame_queue must be at least 1".into());
        }
        Ok(())
    }

    /// Frames in one bumper at the output frame rate.
    pub(crate) fn bumper_frames(&self) -> u64 {
        (self.bumper_duration.as_secs_f64() * f64::from(self.frame_rate)).round() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_the_showcase_rules() {
        let options = TranscodeOptions::default();
        assert_eq!(options.validate(), Ok(()));
        assert_eq!(options.limits.min_duration, Duration::from_secs(20));
        assert_eq!(options.limits.max_duration, Duration::from_secs(60));
        assert_eq!(options.limits.min_short_side, 1080);
        assert_eq!(options.bumper_frames(), 60);
    }

    #[test]
    fn bumpers_longer_than_five_seconds_together_are_refused() {
        let options = TranscodeOptions {
            bumper_duration: Duration::from_millis(2600),
            ..TranscodeOptions::default()
        };
        assert!(options.validate().unwrap_err().contains("exceed"));
    }

    #[test]
    fn unknown_presets_and_out_of_range_values_are_refused() {
        let bad = [
            TranscodeOptions {
                x264_preset: "warp".into(),
                ..TranscodeOptions::default()
            },
            TranscodeOptions {
                crf: 60,
                ..TranscodeOptions::default()
            },
            TranscodeOptions {
                frame_rate: 0,
                ..TranscodeOptions::default()
            },
            TranscodeOptions {
                decoder_threads: 0,
                ..TranscodeOptions::default()
            },
            TranscodeOptions {
                limits: UploadLimits {
                    min_duration: Duration::from_secs(90),
                    ..UploadLimits::default()
                },
                ..TranscodeOptions::default()
            },
        ];
        for options in bad {
            assert!(options.validate().is_err(), "{options:?} should be refused");
        }
    }
}
