//! Opening an upload and checking it against the rules before any decoding.

use std::path::Path;
use std::time::Duration;

use ffmpeg_next::{
    self as ffmpeg, Dictionary, Rational, codec, decoder, format, format::stream::Disposition,
    media, packet::side_data,
};

use anb_core::config::UploadLimits;

use crate::error::{Rejection, TranscodeError};
use crate::media::input_error;
use crate::options::{InputBounds, TranscodeOptions};

/// The one demuxer the pipeline opens: FFmpeg's MOV/MP4 family (ISO base media files, as
/// phones record them). Nothing else is probed into use, so a playlist or an image sequence
/// named `.mp4` never reaches a demuxer that would follow references or read other files.
const DEMUXER: &str = "mov,mp4,m4a,3gp,3g2,mj2";

/// Box types an ISO base media file may start with.
const FIRST_BOXES: [&[u8; 4]; 8] = [
    b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid",
];

/// Container durations are rounded in various ways (a "20 s" phone clip may say
/// 19.98 s); the duration rules allow this much either side.
pub const DURATION_TOLERANCE: Duration = Duration::from_millis(500);

/// What the pipeline learnt about an upload.
#[derive(Clone, Debug, PartialEq)]
pub struct SourceInfo {
    /// Coded width in pixels.
    pub width: u32,
    /// Coded height in pixels.
    pub height: u32,
    /// Declared duration of the video stream (or of the container).
    pub duration: Duration,
    /// Decoder name, e.g. `h264`.
    pub codec: String,
    /// Average frame rate, when the container knows it.
    pub frame_rate: Option<f64>,
    /// Clockwise rotation the player must apply (0, 90, 180 or 270 degrees).
    pub rotation: u32,
}

/// An opened upload: the demuxer and the opened decoder of its video stream.
pub(crate) struct OpenedSource {
    pub input: format::context::Input,
    pub decoder: decoder::Video,
    pub stream_index: usize,
    pub time_base: Rational,
    /// Pixel aspect ratio (1:1 when unknown).
    pub sample_aspect_ratio: Rational,
    pub info: SourceInfo,
}

/// Opens `path` and checks it against the rules of `options`, without decoding.
///
/// Fails permanently ([`TranscodeError::Rejected`]) for an upload outside the
/// rules and with a retryable error when the file cannot be read.
pub fn inspect(path: &Path, options: &TranscodeOptions) -> Result<SourceInfo, TranscodeError> {
    crate::media::init();
    open(path, options).map(|source| source.info)
}

pub(crate) fn open(
    path: &Path,
    options: &TranscodeOptions,
) -> Result<OpenedSource, TranscodeError> {
    let bytes = std::fs::metadata(path)
        .map_err(|source| TranscodeError::Io {
            context: "reading the input's size",
            source,
        })?
        .len();
    check_size(bytes, &options.limits)?;
    let input = open_container(path)?;

    // Cover art in an audio file is a "video" stream too; it does not count.
    let stream = input
        .streams()
        .best(media::Type::Video)
        .filter(|stream| !stream.disposition().contains(Disposition::ATTACHED_PIC))
        .or_else(|| {
            input.streams().find(|stream| {
                stream.parameters().medium() == media::Type::Video
                    && !stream.disposition().contains(Disposition::ATTACHED_PIC)
            })
        })
        .ok_or(Rejection::NoVideoStream)?;
    let stream_index = stream.index();
    let time_base = stream.time_base();
    let frame_rate =
        Some(f64::from(stream.avg_frame_rate())).filter(|rate| rate.is_finite() && *rate > 0.0);
    let rotation = rotation_of(&stream);
    let stream_duration = duration_of(stream.duration(), time_base);

    let mut context = codec::context::Context::from_parameters(stream.parameters())
        .map_err(|error| input_error("reading the stream parameters", error))?;
    // Threading must be configured before the decoder opens.
    context.set_threading(codec::threading::Config {
        kind: if options.decoder_threads > 1 {
            codec::threading::Type::Frame
        } else {
            codec::threading::Type::None
        },
        count: options.decoder_threads,
        ..Default::default()
    });
    let mut unopened = context.decoder();
    unopened.set_packet_time_base(time_base);
    let decoder = unopened
        .video()
        .map_err(|error| input_error("opening the video decoder", error))?;

    let (width, height) = (decoder.width(), decoder.height());
    if width == 0 || height == 0 {
        return Err(Rejection::Unreadable {
            detail: "the video stream has no picture size".into(),
        }
        .into());
    }
    // Before any frame is decoded: a huge frame is what exhausts memory.
    check_bounds(width, height, frame_rate, &options.bounds)?;
    let sample_aspect_ratio = match decoder.aspect_ratio() {
        ratio if ratio.numerator() > 0 && ratio.denominator() > 0 => ratio,
        _ => Rational::new(1, 1),
    };
    let codec = decoder
        .codec()
        .map(|codec| codec.name().to_owned())
        .unwrap_or_default();

    // The container's duration (microseconds) stands in when the stream has none.
    let duration = stream_duration
        .or_else(|| {
            duration_of(
                input.duration(),
                Rational::new(1, ffmpeg::ffi::AV_TIME_BASE),
            )
        })
        .ok_or(Rejection::UnknownDuration)?;

    let info = SourceInfo {
        width,
        height,
        duration,
        codec,
        frame_rate,
        rotation,
    };
    check_rules(&info, &options.limits)?;
    Ok(OpenedSource {
        input,
        decoder,
        stream_index,
        time_base,
        sample_aspect_ratio,
        info,
    })
}

/// Opens `path` with the MOV/MP4 demuxer only and the local-file protocol only.
fn open_container(path: &Path) -> Result<format::context::Input, TranscodeError> {
    let mut head = [0u8; 8];
    let read = std::fs::File::open(path)
        .and_then(|mut file| std::io::Read::read(&mut file, &mut head))
        .map_err(|source| TranscodeError::Io {
            context: "reading the input",
            source,
        })?;
    if read < head.len() || !FIRST_BOXES.iter().any(|kind| head[4..8] == kind[..]) {
        return Err(Rejection::NotMp4.into());
    }
    let mut options = Dictionary::new();
    options.set("format_whitelist", DEMUXER);
    options.set("protocol_whitelist", "file");
    let input = match format::input_with_dictionary(path, options) {
        Ok(input) => input,
        // FFmpeg's answer when the probed demuxer is not on the whitelist.
        Err(ffmpeg::Error::Other { errno }) if errno == ffmpeg::error::EINVAL => {
            return Err(Rejection::NotMp4.into());
        }
        Err(error) => return Err(input_error("opening the input", error)),
    };
    if input.format().name() != DEMUXER {
        return Err(Rejection::NotMp4.into());
    }
    Ok(input)
}

/// Refuses a source whose frames or frame rate are beyond the worker's bounds.
fn check_bounds(
    width: u32,
    height: u32,
    frame_rate: Option<f64>,
    bounds: &InputBounds,
) -> Result<(), Rejection> {
    if width > bounds.max_width || height > bounds.max_height {
        return Err(Rejection::FrameTooLarge {
            width,
            height,
            max_width: bounds.max_width,
            max_height: bounds.max_height,
        });
    }
    if u64::from(width) * u64::from(height) > bounds.max_pixels {
        return Err(Rejection::TooManyPixels {
            width,
            height,
            max_pixels: bounds.max_pixels,
        });
    }
    if let Some(rate) = frame_rate
        && rate > f64::from(bounds.max_frame_rate) + 0.5
    {
        return Err(Rejection::FrameRateTooHigh {
            rate: rate.round().min(f64::from(u32::MAX)) as u32,
            maximum: bounds.max_frame_rate,
        });
    }
    Ok(())
}

/// Refuses a source larger than the limits allow. The job handler calls this
/// with the stored object's size before downloading it; [`inspect`] and the
/// pipeline with the file's size.
pub fn check_size(bytes: u64, limits: &UploadLimits) -> Result<(), Rejection> {
    if bytes > limits.max_bytes {
        return Err(Rejection::TooLarge {
            bytes,
            maximum: limits.max_bytes,
        });
    }
    Ok(())
}

fn check_rules(info: &SourceInfo, limits: &UploadLimits) -> Result<(), Rejection> {
    if info.duration + DURATION_TOLERANCE < limits.min_duration {
        return Err(Rejection::TooShort {
            duration: info.duration,
            minimum: limits.min_duration,
        });
    }
    if info.duration > limits.max_duration + DURATION_TOLERANCE {
        return Err(Rejection::TooLong {
            duration: info.duration,
            maximum: limits.max_duration,
        });
    }
    if info.width.min(info.height) < limits.min_short_side {
        return Err(Rejection::ResolutionTooLow {
            width: info.width,
            height: info.height,
            minimum_short_side: limits.min_short_side,
        });
    }
    Ok(())
}

/// A timestamp span in `time_base` units as a duration, if known and positive.
fn duration_of(span: i64, time_base: Rational) -> Option<Duration> {
    if span <= 0 || time_base.denominator() == 0 {
        return None;
    }
    let seconds = span as f64 * f64::from(time_base);
    (seconds.is_finite() && seconds > 0.0).then(|| Duration::from_secs_f64(seconds))
}

/// The clockwise rotation recorded in the stream's display matrix, rounded to a
/// quarter turn (phones record portrait video as rotated landscape).
fn rotation_of(stream: &format::stream::Stream) -> u32 {
    let Some(matrix) = stream
        .side_data()
        .find(|data| data.kind() == side_data::Type::DisplayMatrix)
    else {
        return 0;
    };
    let bytes = matrix.data();
    if bytes.len() < 36 {
        return 0;
    }
    let entry = |index: usize| {
        let raw = i32::from_ne_bytes(
            bytes[index * 4..index * 4 + 4]
                .try_into()
                .unwrap_or_default(),
        );
        // 16.16 fixed point.
        f64::from(raw) / 65536.0
    };
    let (a, b, c, d) = (entry(0), entry(1), entry(3), entry(4));
    let (scale_x, scale_y) = (a.hypot(c), b.hypot(d));
    if scale_x == 0.0 || scale_y == 0.0 {
        return 0;
    }
    // The matrix maps stored pixels to the display; atan2(b, a) is the
    // clockwise turn that makes the stored picture upright.
    let clockwise = (b / scale_y)
        .atan2(a / scale_x)
        .to_degrees()
        .round()
        .rem_euclid(360.0);
    (((clockwise / 90.0).round() as u32) % 4) * 90
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(width: u32, height: u32, seconds: f64) -> SourceInfo {
        SourceInfo {
            width,
            height,
            duration: Duration::from_secs_f64(seconds),
            codec: "h264".into(),
            frame_rate: Some(30.0),
            rotation: 0,
        }
    }

    #[test]
    fn the_rules_accept_the_edges_and_refuse_beyond_them() {
        let limits = UploadLimits::default();
        for (width, height, seconds) in [
            (1920, 1080, 20.0),
            (1920, 1080, 19.8),
            (1080, 1920, 60.0),
            (3840, 2160, 60.4),
        ] {
            assert_eq!(check_rules(&info(width, height, seconds), &limits), Ok(()));
        }
        assert!(matches!(
            check_rules(&info(1920, 1080, 19.0), &limits),
            Err(Rejection::TooShort { .. })
        ));
        assert!(matches!(
            check_rules(&info(1920, 1080, 61.0), &limits),
            Err(Rejection::TooLong { .. })
        ));
        assert!(matches!(
            check_rules(&info(1920, 1079, 30.0), &limits),
            Err(Rejection::ResolutionTooLow { .. })
        ));
    }

    #[test]
    fn changed_limits_move_the_edges() {
        let limits = UploadLimits {
            max_bytes: 1_000,
            min_duration: Duration::from_secs(25),
            max_duration: Duration::from_secs(30),
            min_short_side: 720,
        };
        assert_eq!(check_rules(&info(1280, 720, 27.0), &limits), Ok(()));
        assert!(matches!(
            check_rules(&info(1920, 1080, 21.0), &limits),
            Err(Rejection::TooShort { .. })
        ));
        assert!(matches!(
            check_rules(&info(1920, 1080, 45.0), &limits),
            Err(Rejection::TooLong { .. })
        ));
        assert!(matches!(
            check_rules(&info(1280, 719, 27.0), &limits),
            Err(Rejection::ResolutionTooLow { .. })
        ));
        assert_eq!(check_size(1_000, &limits), Ok(()));
        assert_eq!(
            check_size(1_001, &limits),
            Err(Rejection::TooLarge {
                bytes: 1_001,
                maximum: 1_000
            })
        );
    }
}
