//! What the pipeline accepts and how hard it works.

use std::time::Duration;

use anb_core::config::{ConfigError, UploadLimits};

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
    /// What the worker accepts to decode at all: bounds against hostile media.
    pub bounds: InputBounds,
    /// How much of the source is kept, from its first frame.
    pub max_kept_duration: Duration,
    /// Output frame rate (constant) for sources whose rate does not choose one of
    /// [`OUTPUT_FRAME_RATES`] ([`Self::output_frame_rate`]).
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
            bounds: InputBounds::default(),
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

/// Bounds on what a source may cost to decode, whatever the upload rules allow: a small file
/// can declare a huge frame, a huge frame rate or a flood of tiny frames, and hold a worker
/// (or its memory) far longer than a real clip. A source beyond a bound fails permanently.
///
/// | variable | default | meaning |
/// |---|---|---|
/// | `ANB_WORKER_MAX_WIDTH` / `ANB_WORKER_MAX_HEIGHT` | `4096` / `4096` | largest coded frame side, either orientation |
/// | `ANB_WORKER_MAX_PIXELS` | `9437184` | largest coded frame area (4096×2304: 4K in either orientation) |
/// | `ANB_WORKER_MAX_FPS` | `240` | highest declared average frame rate (phone slow motion) |
/// | `ANB_WORKER_MAX_FRAMES` | `15000` | most frames decoded per job (30 s kept at 240 fps is 7200) |
/// | `ANB_WORKER_WALL_TIME_PER_SECOND` | `20` | wall-time budget per second of output video |
/// | `ANB_WORKER_WALL_TIME_MIN` | `120` | smallest wall-time budget, in seconds |
///
/// The wall-time budget of a job is the larger of `WALL_TIME_MIN` and `WALL_TIME_PER_SECOND`
/// times the output's length (34 s with the defaults: 680 s, about 20 times a 2 vCPU worker's
/// usual encode time).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InputBounds {
    pub max_width: u32,
    pub max_height: u32,
    pub max_pixels: u64,
    pub max_frame_rate: u32,
    pub max_frames: u64,
    pub wall_time_per_second: u32,
    pub min_wall_time: Duration,
}

impl Default for InputBounds {
    fn default() -> Self {
        Self {
            max_width: 4096,
            max_height: 4096,
            max_pixels: 4096 * 2304,
            max_frame_rate: 240,
            max_frames: 15_000,
            wall_time_per_second: 20,
            min_wall_time: Duration::from_secs(120),
        }
    }
}

impl InputBounds {
    /// Reads the bounds from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|var| std::env::var(var).ok())
    }

    /// Reads the bounds through `lookup`; unset or empty means the default.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let number = |var: &'static str, default: u64| -> Result<u64, ConfigError> {
            let value = match lookup(var).filter(|v| !v.trim().is_empty()) {
                None => default,
                Some(raw) => raw.trim().parse().map_err(|_| ConfigError::Invalid {
                    var,
                    reason: format!("{raw:?} is not a non-negative integer"),
                })?,
            };
            if value == 0 && var != "ANB_WORKER_WALL_TIME_MIN" {
                return Err(ConfigError::Invalid {
                    var,
                    reason: "must be positive".into(),
                });
            }
            Ok(value)
        };
        let small = |var: &'static str, default: u32| -> Result<u32, ConfigError> {
            u32::try_from(number(var, default.into())?).map_err(|_| ConfigError::Invalid {
                var,
                reason: "too large".into(),
            })
        };
        let defaults = Self::default();
        Ok(Self {
            max_width: small("ANB_WORKER_MAX_WIDTH", defaults.max_width)?,
            max_height: small("ANB_WORKER_MAX_HEIGHT", defaults.max_height)?,
            max_pixels: number("ANB_WORKER_MAX_PIXELS", defaults.max_pixels)?,
            max_frame_rate: small("ANB_WORKER_MAX_FPS", defaults.max_frame_rate)?,
            max_frames: number("ANB_WORKER_MAX_FRAMES", defaults.max_frames)?,
            wall_time_per_second: small(
                "ANB_WORKER_WALL_TIME_PER_SECOND",
                defaults.wall_time_per_second,
            )?,
            min_wall_time: Duration::from_secs(number(
                "ANB_WORKER_WALL_TIME_MIN",
                defaults.min_wall_time.as_secs(),
            )?),
        })
    }

    /// The wall time a job producing `output` seconds of video may take.
    pub fn wall_time_budget(&self, output: Duration) -> Duration {
        (output * self.wall_time_per_second).max(self.min_wall_time)
    }
}

/// Output rates the showcase uses (NTSC-family, PAL-family and film cameras), in order of
/// preference when a source is a multiple of several (120 fps is 4 × 30 and 5 × 24).
pub const OUTPUT_FRAME_RATES: [u32; 3] = [30, 25, 24];

impl TranscodeOptions {
    /// The constant output rate for a source of this average rate: the one of
    /// [`OUTPUT_FRAME_RATES`] it is a whole multiple of (within 2 %, so 23.976 and
    /// 59.94 count), which keeps motion even (24 → 24; 25, 50 → 25; 30, 60, 120 → 30);
    /// [`Self::frame_rate`] for anything else (variable or unusual rates, or none declared).
    pub fn output_frame_rate(&self, source: Option<f64>) -> u32 {
        let Some(rate) = source.filter(|rate| rate.is_finite() && *rate >= 1.0) else {
            return self.frame_rate;
        };
        OUTPUT_FRAME_RATES
            .into_iter()
            .filter_map(|candidate| {
                let multiple = (rate / f64::from(candidate)).round();
                let error = (rate - multiple * f64::from(candidate)).abs() / rate;
                (multiple >= 1.0 && error <= 0.02).then_some((error, candidate))
            })
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map_or(self.frame_rate, |(_, candidate)| candidate)
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

    /// Frames in one bumper at the output frame rate `fps`.
    pub(crate) fn bumper_frames(&self, fps: u32) -> u64 {
        (self.bumper_duration.as_secs_f64() * f64::from(fps)).round() as u64
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
        assert_eq!(options.bumper_frames(30), 60);
    }

    #[test]
    fn bounds_come_from_the_environment_and_refuse_nonsense() {
        let vars = [
            ("ANB_WORKER_MAX_WIDTH", "2000"),
            ("ANB_WORKER_WALL_TIME_MIN", "0"),
        ];
        let bounds = InputBounds::from_lookup(|var| {
            vars.iter()
                .find(|(name, _)| *name == var)
                .map(|(_, value)| (*value).to_owned())
        })
        .unwrap();
        assert_eq!(bounds.max_width, 2000);
        assert_eq!(bounds.max_height, 4096);
        assert_eq!(bounds.min_wall_time, Duration::ZERO);
        assert_eq!(
            bounds.wall_time_budget(Duration::from_secs(34)),
            Duration::from_secs(680)
        );
        let error =
            InputBounds::from_lookup(|var| (var == "ANB_WORKER_MAX_FPS").then(|| "0".to_owned()))
                .unwrap_err();
        assert!(error.to_string().contains("ANB_WORKER_MAX_FPS"), "{error}");
        assert_eq!(
            InputBounds::default().wall_time_budget(Duration::from_secs(4)),
            Duration::from_secs(120)
        );
    }

    #[test]
    fn the_output_rate_divides_the_source_rate() {
        let options = TranscodeOptions::default();
        for (source, output) in [
            (30.0, 30),
            (29.97, 30),
            (60.0, 30),
            (59.94, 30),
            (120.0, 30),
            (240.0, 30),
            (25.0, 25),
            (50.0, 25),
            (100.0, 25),
            (24.0, 24),
            (23.976, 24),
            (48.0, 24),
            (20.5, 30),
            (10.0, 30),
        ] {
            assert_eq!(
                options.output_frame_rate(Some(source)),
                output,
                "{source} fps"
            );
        }
        assert_eq!(options.output_frame_rate(None), 30);
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

/// The encoder settings of the command line and the environment (`ANB_X264_PRESET`,
/// `ANB_X264_CRF`, `ANB_ENCODER_THREADS`, `ANB_DECODER_THREADS`, `ANB_DECODED_FRAME_QUEUE`),
/// shared by every program that runs the pipeline: `anb-worker run`, `anb-worker transcode`
/// and the worker inside `anb serve`.
#[derive(Clone, Debug, clap::Args)]
pub struct EncoderArgs {
    /// x264 preset.
    #[arg(long, env = "ANB_X264_PRESET", default_value = "veryfast", value_parser = clap::builder::PossibleValuesParser::new(X264_PRESETS))]
    pub preset: String,
    /// x264 constant rate factor (0–51).
    #[arg(long, env = "ANB_X264_CRF", default_value_t = 23, value_parser = clap::value_parser!(u8).range(0..=51))]
    pub crf: u8,
    /// x264 threads (0: chosen by x264 from the CPU count).
    #[arg(long, env = "ANB_ENCODER_THREADS", default_value_t = 0)]
    pub encoder_threads: usize,
    /// Decoder threads (the decoder already runs beside the encoder).
    #[arg(long, env = "ANB_DECODER_THREADS", default_value_t = 1, value_parser = at_least_one)]
    pub decoder_threads: usize,
    /// Decoded frames queued between the decoder and the encoder (bounds memory).
    #[arg(long, env = "ANB_DECODED_FRAME_QUEUE", default_value_t = 4, value_parser = at_least_one)]
    pub decoded_frame_queue: usize,
}

/// A count of at least one, so a zero is refused at start-up rather than at the first job.
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(count) => Ok(count),
        Err(error) => Err(error.to_string()),
    }
}

impl EncoderArgs {
    /// The pipeline options: these encoder settings over `base` (its limits and bounds).
    pub fn apply(&self, base: TranscodeOptions) -> TranscodeOptions {
        TranscodeOptions {
            x264_preset: self.preset.clone(),
            crf: self.crf,
            encoder_threads: self.encoder_threads,
            decoder_threads: self.decoder_threads,
            decoded_frame_queue: self.decoded_frame_queue,
            ..base
        }
    }

    /// The pipeline options: these encoder settings and the upload limits and input bounds of
    /// the `ANB_UPLOAD_*` and `ANB_WORKER_MAX_*` variables, read as anb-api reads them.
    pub fn options(&self) -> Result<TranscodeOptions, ConfigError> {
        Ok(self.apply(TranscodeOptions {
            limits: UploadLimits::from_env()?,
            bounds: InputBounds::from_env()?,
            ..TranscodeOptions::default()
        }))
    }
}
