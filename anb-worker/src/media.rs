//! Small FFmpeg helpers: initialisation, error classification, still images.

use std::sync::Once;

use ffmpeg_next::{
    self as ffmpeg, Dictionary, Packet, codec, encoder, filter, format::Pixel, frame,
};

use crate::art::RgbaImage;
use crate::error::{Rejection, TranscodeError};

/// Initialises FFmpeg once per process.
pub(crate) fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        // Only fails on FFmpeg builds older than any ffmpeg-next 9 supports.
        ffmpeg::init().expect("FFmpeg initialises");
    });
}

/// True for FFmpeg's "try again" answer, which only means "feed me more first".
pub(crate) fn is_again(error: &ffmpeg::Error) -> bool {
    matches!(error, ffmpeg::Error::Other { errno } if *errno == ffmpeg::error::EAGAIN)
}

/// Classifies an error from opening or reading the input: damaged or
/// unsupported data is the upload's fault (permanent), an operating-system
/// error is I/O (retryable), anything else is the media library's.
pub(crate) fn input_error(context: &'static str, error: ffmpeg::Error) -> TranscodeError {
    match error {
        ffmpeg::Error::Other { errno } => TranscodeError::Io {
            context,
            source: std::io::Error::from_raw_os_error(errno),
        },
        ffmpeg::Error::InvalidData
        | ffmpeg::Error::DemuxerNotFound
        | ffmpeg::Error::DecoderNotFound
        | ffmpeg::Error::StreamNotFound
        | ffmpeg::Error::PatchWelcome
        | ffmpeg::Error::Eof => Rejection::Unreadable {
            detail: error.to_string(),
        }
        .into(),
        other => TranscodeError::Media {
            context,
            source: other,
        },
    }
}

/// Classifies an error on the output side: an operating-system error is I/O,
/// anything else the media library's. Never the upload's fault.
pub(crate) fn output_error(context: &'static str, error: ffmpeg::Error) -> TranscodeError {
    match error {
        ffmpeg::Error::Other { errno } => TranscodeError::Io {
            context,
            source: std::io::Error::from_raw_os_error(errno),
        },
        other => TranscodeError::Media {
            context,
            source: other,
        },
    }
}

/// Wraps a media-library error that has nothing to do with input or output.
pub(crate) fn media_error(
    context: &'static str,
) -> impl Fn(ffmpeg::Error) -> TranscodeError + Copy {
    move |source| TranscodeError::Media { context, source }
}

/// Copies an RGBA image into an FFmpeg frame (whose rows may be padded).
pub(crate) fn rgba_frame(image: &RgbaImage) -> frame::Video {
    let mut frame = frame::Video::new(Pixel::RGBA, image.width(), image.height());
    let stride = frame.stride(0);
    let row_bytes = image.width() as usize * 4;
    let data = frame.data_mut(0);
    for (y, row) in image.pixels().chunks_exact(row_bytes).enumerate() {
        data[y * stride..y * stride + row_bytes].copy_from_slice(row);
    }
    frame
}

/// Artwork (RGBA) to the showcase video's colour: 8-bit 4:2:0, BT.709 matrix, limited range.
/// (The scaler's default matrix is BT.601, which would shift the colours under BT.709 tags.)
pub(crate) const TO_SHOWCASE: &str = "scale=out_color_matrix=bt709:out_range=tv,format=yuv420p";

/// A showcase frame (BT.709, limited range) to what JPEG viewers assume: BT.601, full range.
const TO_JPEG: &str =
    "scale=in_color_matrix=bt709:in_range=tv:out_color_matrix=bt601:out_range=pc,format=yuvj420p";

/// Converts one frame at the same size through `filters` (a filter chain such as
/// [`TO_SHOWCASE`]), which say the colour conversion explicitly.
pub(crate) fn convert(source: &frame::Video, filters: &str) -> Result<frame::Video, ffmpeg::Error> {
    let format = source
        .format()
        .descriptor()
        .map(|descriptor| descriptor.name())
        .ok_or(ffmpeg::Error::InvalidData)?;
    let mut graph = filter::Graph::new();
    let buffer = filter::find("buffer").ok_or(ffmpeg::Error::FilterNotFound)?;
    let sink = filter::find("buffersink").ok_or(ffmpeg::Error::FilterNotFound)?;
    let args = format!(
        "video_size={}x{}:pix_fmt={format}:time_base=1/1:pixel_aspect=1/1",
        source.width(),
        source.height()
    );
    graph.add(&buffer, "in", &args)?;
    graph.add(&sink, "out", "")?;
    graph.output("in", 0)?.input("out", 0)?.parse(filters)?;
    graph.validate()?;
    let mut still = source.clone();
    still.set_pts(Some(0));
    let mut input = graph.get("in").expect("just added");
    input.source().add(&still)?;
    input.source().flush()?;
    let mut converted = frame::Video::empty();
    graph
        .get("out")
        .expect("just added")
        .sink()
        .frame(&mut converted)?;
    Ok(converted)
}

/// Encodes one frame as a still image file's bytes (JPEG, PNG: one packet is the whole file).
fn encode_still(
    frame: &frame::Video,
    codec: codec::Id,
    options: Dictionary,
) -> Result<Vec<u8>, ffmpeg::Error> {
    let codec = encoder::find(codec).ok_or(ffmpeg::Error::EncoderNotFound)?;
    let mut encoder = codec::context::Context::new_with_codec(codec)
        .encoder()
        .video()?;
    encoder.set_width(frame.width());
    encoder.set_height(frame.height());
    encoder.set_format(frame.format());
    encoder.set_time_base((1, 1));
    let mut encoder = encoder.open_with(options)?;
    let mut still = frame.clone();
    still.set_pts(Some(0));
    encoder.send_frame(&still)?;
    encoder.send_eof()?;
    let mut bytes = Vec::new();
    let mut packet = Packet::empty();
    loop {
        match encoder.receive_packet(&mut packet) {
            Ok(()) => bytes.extend_from_slice(packet.data().unwrap_or_default()),
            Err(ffmpeg::Error::Eof) => return Ok(bytes),
            Err(error) => return Err(error),
        }
    }
}

/// A baseline JPEG of `frame` (any pixel format), at high quality.
pub(crate) fn jpeg(frame: &frame::Video) -> Result<Vec<u8>, ffmpeg::Error> {
    // The JPEG encoder wants full-range YUV; the scaler expands the range.
    let full_range = convert(frame, TO_JPEG)?;
    let mut options = Dictionary::new();
    // Fixed quantiser 3 (on FFmpeg's 2–31 scale): sharp, about 100 KiB at 720p.
    options.set("flags", "+qscale");
    options.set("global_quality", &(3 * 118).to_string());
    encode_still(&full_range, codec::Id::MJPEG, options)
}

/// A PNG of an RGBA image.
pub fn png(image: &RgbaImage) -> Result<Vec<u8>, ffmpeg::Error> {
    init();
    encode_still(&rgba_frame(image), codec::Id::PNG, Dictionary::new())
}
