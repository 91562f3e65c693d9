//! The one-pass transcode: decode → filter → encode → fast-start MP4, plus a thumbnail.
//!
//! Two threads share the work. A decoder thread demuxes and decodes the
//! upload and hands decoded frames over a small bounded channel; the calling
//! thread filters them (trim, constant frame rate, fit, pad, watermark) and
//! feeds x264, whose own threads encode. Decoding thus overlaps encoding, and
//! the channel bounds how many decoded frames exist at once.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use ffmpeg_next::{
    self as ffmpeg, Dictionary, Packet, Rational, codec, color, decoder, encoder, filter, format,
    format::Pixel, frame, picture,
};

use crate::art::{self, WATERMARK_HEIGHT};
use crate::colour::ColourRoute;
use crate::error::{Rejection, TranscodeError};
use crate::media::{self, input_error, is_again, media_error, output_error};
use crate::options::TranscodeOptions;
use crate::source::{self, DURATION_TOLERANCE, OpenedSource, SourceInfo};

/// Output picture size: 720p, 16:9.
pub const OUTPUT_WIDTH: u32 = 1280;
/// Output picture height.
pub const OUTPUT_HEIGHT: u32 = 720;
/// Gap between the watermark and the frame's edges.
const WATERMARK_MARGIN: u32 = 24;
/// Consecutive unreadable packets after which the file counts as corrupt.
const MAX_CONSECUTIVE_BAD_PACKETS: u32 = 1_000;

/// What a successful transcode produced.
#[derive(Clone, Debug, PartialEq)]
pub struct TranscodeReport {
    /// The upload as inspected.
    pub source: SourceInfo,
    /// Frames written, bumpers included.
    pub frames: u64,
    /// Frames taken from the upload.
    pub source_frames: u64,
    /// Output duration (frames at the constant output rate).
    pub duration: Duration,
    /// Size of the MP4 in bytes.
    pub output_bytes: u64,
    /// Size of the thumbnail in bytes, when one was asked for.
    pub thumbnail_bytes: Option<u64>,
    /// Wall time spent.
    pub elapsed: Duration,
    /// The constant output frame rate chosen for the source.
    pub frame_rate: u32,
    /// Whether the source was high dynamic range and tone-mapped to SDR.
    pub tone_mapped: bool,
}

/// Transcodes the upload at `input` into the showcase format at `output` (an
/// MP4 whatever its extension), and a JPEG `thumbnail` when given.
///
/// `progress` receives the percentage done whenever it changes, ending with
/// 100 once the outputs are complete. Raising `cancel` stops the work within
/// a frame or so with [`TranscodeError::Cancelled`]. On any error the outputs
/// are removed. Blocking and CPU-bound: call it from a blocking thread.
pub fn transcode(
    input: &Path,
    output: &Path,
    thumbnail: Option<&Path>,
    options: &TranscodeOptions,
    mut progress: impl FnMut(u8),
    cancel: &AtomicBool,
) -> Result<TranscodeReport, TranscodeError> {
    options.validate().map_err(TranscodeError::InvalidOptions)?;
    media::init();
    let started = Instant::now();
    let result = run(input, output, thumbnail, options, &mut progress, cancel);
    match result {
        Ok(mut report) => {
            report.elapsed = started.elapsed();
            progress(100);
            Ok(report)
        }
        Err(error) => {
            // Leave nothing half-written behind; a missing file is fine.
            let _ = std::fs::remove_file(output);
            if let Some(thumbnail) = thumbnail {
                let _ = std::fs::remove_file(thumbnail);
            }
            Err(error)
        }
    }
}

fn run(
    input: &Path,
    output: &Path,
    thumbnail: Option<&Path>,
    options: &TranscodeOptions,
    progress: &mut dyn FnMut(u8),
    cancel: &AtomicBool,
) -> Result<TranscodeReport, TranscodeError> {
    let source = source::open(input, options)?;
    let fps = options.output_frame_rate(source.info.frame_rate);
    let kept = source.info.duration.min(options.max_kept_duration);
    let expected_source_frames = (kept.as_secs_f64() * f64::from(fps)).round() as u64;
    let bumper_frames = options.bumper_frames(fps);
    let budget = options
        .bounds
        .wall_time_budget(kept + options.bumper_duration * 2);
    let deadline = Deadline {
        at: Instant::now() + budget,
        budget,
    };

    let tone_map = tone_mapping(&source);
    let tone_mapped = tone_map.is_some();
    let mut graph = build_graph(&source, options, fps, tone_map.as_deref())?;
    let mut writer = VideoWriter::create(output, options, fps)?;
    let mut tracker = ProgressTracker::new(expected_source_frames + 2 * bumper_frames, progress);

    let mut bumper = media::convert(
        &media::rgba_frame(&art::bumper_card(OUTPUT_WIDTH, OUTPUT_HEIGHT)),
        media::TO_SHOWCASE,
    )
    .map_err(media_error("drawing the bumper"))?;

    write_bumper(
        &mut writer,
        &mut bumper,
        bumper_frames,
        &mut tracker,
        cancel,
        deadline,
    )?;

    let OpenedSource {
        input: demuxer,
        decoder,
        stream_index,
        info,
        ..
    } = source;
    let mut main = MainPart {
        graph: &mut graph,
        writer: &mut writer,
        tracker: &mut tracker,
        thumbnail,
        thumbnail_at: expected_source_frames / 3,
        thumbnail_bytes: None,
        frames: 0,
        end_pts: None,
        deadline,
    };
    let stop_decoding = AtomicBool::new(false);
    let (decoded, consumed) = std::thread::scope(|scope| {
        let (sender, receiver) = sync_channel(options.decoded_frame_queue);
        let stop = &stop_decoding;
        let max_frames = options.bounds.max_frames;
        let decoding = scope.spawn(move || {
            decode(
                demuxer,
                decoder,
                stream_index,
                sender,
                (stop, cancel),
                max_frames,
            )
        });
        let consumed = main.consume(receiver, &stop_decoding, cancel);
        // Wake a decoder blocked on a full queue or still reading.
        stop_decoding.store(true, Ordering::Relaxed);
        let decoded = match decoding.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        (decoded, consumed)
    });
    // A decoding failure is the root cause of whatever the consumer saw.
    let reached_kept_end = decoded.and(consumed)?;
    if cancel.load(Ordering::Relaxed) {
        return Err(TranscodeError::Cancelled);
    }

    let source_frames = main.frames;
    let thumbnail_bytes = main.thumbnail_bytes;
    let tolerated = (DURATION_TOLERANCE.as_secs_f64() * f64::from(fps)).ceil() as u64;
    if !reached_kept_end && source_frames + tolerated < expected_source_frames {
        return Err(Rejection::Truncated {
            decoded: Duration::from_secs_f64(source_frames as f64 / f64::from(fps)),
            declared: info.duration,
        }
        .into());
    }
    if thumbnail.is_some() && thumbnail_bytes.is_none() {
        return Err(Rejection::Truncated {
            decoded: Duration::from_secs_f64(source_frames as f64 / f64::from(fps)),
            declared: info.duration,
        }
        .into());
    }

    write_bumper(
        &mut writer,
        &mut bumper,
        bumper_frames,
        &mut tracker,
        cancel,
        deadline,
    )?;
    let frames = writer.finish()?;
    let output_bytes = std::fs::metadata(output)
        .map_err(|source| TranscodeError::Io {
            context: "measuring the output",
            source,
        })?
        .len();
    Ok(TranscodeReport {
        source: info,
        frames,
        source_frames,
        duration: Duration::from_secs_f64(frames as f64 / f64::from(fps)),
        output_bytes,
        thumbnail_bytes,
        elapsed: Duration::ZERO,
        frame_rate: fps,
        tone_mapped,
    })
}

/// When a job must be done by, from the wall-time budget of the bounds.
#[derive(Clone, Copy)]
struct Deadline {
    at: Instant,
    budget: Duration,
}

impl Deadline {
    fn check(&self) -> Result<(), TranscodeError> {
        if Instant::now() > self.at {
            return Err(Rejection::TooCostly {
                budget: self.budget,
            }
            .into());
        }
        Ok(())
    }
}

fn write_bumper(
    writer: &mut VideoWriter,
    bumper: &mut frame::Video,
    frames: u64,
    tracker: &mut ProgressTracker<'_>,
    cancel: &AtomicBool,
    deadline: Deadline,
) -> Result<(), TranscodeError> {
    for _ in 0..frames {
        if cancel.load(Ordering::Relaxed) {
            return Err(TranscodeError::Cancelled);
        }
        deadline.check()?;
        writer.write(bumper)?;
        tracker.frame_done();
    }
    Ok(())
}

/// The decoder thread: demux, decode, queue frames until the end of the
/// stream, until the consumer has all it needs, or until cancelled. More than
/// `max_frames` decoded frames refuse the upload.
fn decode(
    mut demuxer: format::context::Input,
    mut decoder: decoder::Video,
    stream_index: usize,
    frames: SyncSender<frame::Video>,
    (stop, cancel): (&AtomicBool, &AtomicBool),
    max_frames: u64,
) -> Result<(), TranscodeError> {
    let mut bad_packets_in_a_row = 0;
    let mut counter = FrameCounter {
        decoded: 0,
        maximum: max_frames,
    };
    loop {
        if stop.load(Ordering::Relaxed) || cancel.load(Ordering::Relaxed) {
            return Ok(());
        }
        // A fresh packet each time: reading into a used one would overwrite
        // (and leak) its buffer, as `Packet::read` does not release it first.
        let mut packet = Packet::empty();
        match packet.read(&mut demuxer) {
            Ok(()) => bad_packets_in_a_row = 0,
            Err(ffmpeg::Error::Eof) => break,
            // The demuxer resynchronises after damaged data, as the command line does.
            Err(ffmpeg::Error::InvalidData) => {
                bad_packets_in_a_row += 1;
                if bad_packets_in_a_row > MAX_CONSECUTIVE_BAD_PACKETS {
                    return Err(Rejection::Unreadable {
                        detail: "too much damaged data".into(),
                    }
                    .into());
                }
                continue;
            }
            Err(error) => return Err(input_error("reading the input", error)),
        }
        if packet.stream() != stream_index {
            continue;
        }
        match decoder.send_packet(&packet) {
            // A damaged packet is skipped (the decoder conceals it), as the command line does.
            Ok(()) | Err(ffmpeg::Error::InvalidData) => {}
            Err(error) => return Err(input_error("decoding the video", error)),
        }
        if !forward_decoded(&mut decoder, &frames, &mut counter)? {
            return Ok(());
        }
    }
    decoder
        .send_eof()
        .map_err(|error| input_error("decoding the video", error))?;
    forward_decoded(&mut decoder, &frames, &mut counter)?;
    Ok(())
}

/// Decoded frames so far, against the bound.
struct FrameCounter {
    decoded: u64,
    maximum: u64,
}

/// Sends every frame the decoder has ready; false once the consumer is gone.
fn forward_decoded(
    decoder: &mut decoder::Video,
    frames: &SyncSender<frame::Video>,
    counter: &mut FrameCounter,
) -> Result<bool, TranscodeError> {
    loop {
        let mut frame = frame::Video::empty();
        match decoder.receive_frame(&mut frame) {
            Ok(()) => {
                counter.decoded += 1;
                if counter.decoded > counter.maximum {
                    return Err(Rejection::TooManyFrames {
                        maximum: counter.maximum,
                    }
                    .into());
                }
                let timestamp = frame.timestamp();
                frame.set_pts(timestamp);
                if frames.send(frame).is_err() {
                    return Ok(false);
                }
            }
            Err(ffmpeg::Error::Eof) => return Ok(true),
            Err(error) if is_again(&error) => return Ok(true),
            Err(ffmpeg::Error::InvalidData) => {}
            Err(error) => return Err(input_error("decoding the video", error)),
        }
    }
}

/// The calling thread's share: filter decoded frames and encode them.
struct MainPart<'a, 'p> {
    graph: &'a mut filter::Graph,
    writer: &'a mut VideoWriter,
    tracker: &'a mut ProgressTracker<'p>,
    thumbnail: Option<&'a Path>,
    thumbnail_at: u64,
    thumbnail_bytes: Option<u64>,
    /// Source frames written (after trimming and frame-rate conversion).
    frames: u64,
    /// Where the last decoded frame ends, in the stream's time base.
    end_pts: Option<i64>,
    deadline: Deadline,
}

/// Whether the filter graph's output is still open.
#[derive(PartialEq, Eq)]
enum SinkState {
    Open,
    Finished,
}

impl MainPart<'_, '_> {
    /// Filters and encodes until the graph is done. True when the graph ended
    /// because the kept length was reached (rather than the upload ending).
    fn consume(
        &mut self,
        decoded: Receiver<frame::Video>,
        stop_decoding: &AtomicBool,
        cancel: &AtomicBool,
    ) -> Result<bool, TranscodeError> {
        for frame in decoded.iter() {
            if cancel.load(Ordering::Relaxed) {
                return Err(TranscodeError::Cancelled);
            }
            self.deadline.check()?;
            if let Some(pts) = frame.pts() {
                // The frame lasts until the next one; its packet duration says how long.
                let duration = frame.packet().duration.max(0);
                self.end_pts = Some(self.end_pts.unwrap_or(i64::MIN).max(pts + duration));
            }
            self.graph
                .get("in")
                .expect("the graph has its source")
                .source()
                .add(&frame)
                .map_err(media_error("filtering"))?;
            if self.drain_graph()? == SinkState::Finished {
                // Trimmed: stop the decoder at once, or the graph would keep
                // queueing frames nobody needs.
                stop_decoding.store(true, Ordering::Relaxed);
                return Ok(true);
            }
        }
        if cancel.load(Ordering::Relaxed) {
            return Err(TranscodeError::Cancelled);
        }
        // The upload ended before the kept length: close the graph's input at
        // the end of the last frame so the last frame keeps its full duration.
        {
            let mut source_context = self.graph.get("in").expect("the graph has its source");
            let mut source = source_context.source();
            match self.end_pts {
                Some(end) => source.close(end),
                None => source.flush(),
            }
            .map_err(media_error("filtering"))?;
        }
        if self.drain_graph()? == SinkState::Open {
            // The sink only answers "again" after the end of input if the graph is stuck.
            return Err(TranscodeError::Media {
                context: "flushing the filter graph",
                source: ffmpeg::Error::Bug,
            });
        }
        Ok(false)
    }

    /// Encodes every frame the graph has ready.
    fn drain_graph(&mut self) -> Result<SinkState, TranscodeError> {
        let mut filtered = frame::Video::empty();
        loop {
            let pulled = self
                .graph
                .get("out")
                .expect("the graph has its sink")
                .sink()
                .frame(&mut filtered);
            match pulled {
                Ok(()) => {}
                Err(ffmpeg::Error::Eof) => return Ok(SinkState::Finished),
                Err(error) if is_again(&error) => return Ok(SinkState::Open),
                Err(error) => return Err(media_error("filtering")(error)),
            }
            if self.frames == self.thumbnail_at
                && let Some(path) = self.thumbnail
            {
                let jpeg = media::jpeg(&filtered).map_err(media_error("encoding the thumbnail"))?;
                std::fs::write(path, &jpeg).map_err(|source| TranscodeError::Io {
                    context: "writing the thumbnail",
                    source,
                })?;
                self.thumbnail_bytes = Some(jpeg.len() as u64);
            }
            self.writer.write(&mut filtered)?;
            self.frames += 1;
            self.tracker.frame_done();
        }
    }
}

/// The filters that bring a high-dynamic-range source (PQ or HLG transfer, as
/// phones record HDR) to SDR BT.709, when the system's libavfilter has them
/// (`zscale`, from libzimg, and `tonemap`): linear light, BT.709 primaries,
/// Hable's curve, then BT.709 transfer and matrix in limited range. `None` for
/// an SDR source, or when the filters are missing: the source is then only
/// converted with the BT.709 matrix (10 bits dithered to 8), which keeps it
/// watchable but flat and dull.
fn tone_mapping(source: &OpenedSource) -> Option<String> {
    use color::{Primaries, Space, TransferCharacteristic};
    let transfer = match source.decoder.color_transfer_characteristic() {
        TransferCharacteristic::SMPTE2084 => "smpte2084",
        TransferCharacteristic::ARIB_STD_B67 => "arib-std-b67",
        _ => return None,
    };
    if filter::find("zscale").is_none() || filter::find("tonemap").is_none() {
        tracing::warn!(
            "HDR source but this FFmpeg lacks zscale/tonemap: converting without tone mapping"
        );
        return None;
    }
    // HDR video is BT.2020 in practice; say so when the file does not.
    let primaries = match source.decoder.color_primaries() {
        Primaries::BT709 => "709",
        _ => "2020",
    };
    let matrix = match source.decoder.color_space() {
        Space::BT709 => "709",
        Space::BT2020CL => "2020_cl",
        _ => "2020_ncl",
    };
    Some(format!(
        "zscale=tin={transfer}:pin={primaries}:min={matrix}:t=linear:npl=100,format=gbrpf32le,\
         zscale=p=709,tonemap=tonemap=hable:desat=0,zscale=t=709:m=709:r=limited,format=yuv420p,"
    ))
}

/// Builds the filter graph: trim to the kept length, constant frame rate,
/// upright, fit into 1280×720 with square pixels, BT.709 colour (tone-mapped
/// when `tone_map` is given), pad, watermark.
fn build_graph(
    source: &OpenedSource,
    options: &TranscodeOptions,
    fps: u32,
    tone_map: Option<&str>,
) -> Result<filter::Graph, TranscodeError> {
    let graph_error = media_error("building the filter graph");
    let mut graph = filter::Graph::new();
    let buffer = filter::find("buffer")
        .ok_or(ffmpeg::Error::FilterNotFound)
        .map_err(graph_error)?;
    let sink = filter::find("buffersink")
        .ok_or(ffmpeg::Error::FilterNotFound)
        .map_err(graph_error)?;

    let pixel_format = pixel_format_name(source.decoder.format())?;
    let sar = source.sample_aspect_ratio;
    let source_args = format!(
        "video_size={}x{}:pix_fmt={}:time_base={}/{}:pixel_aspect={}/{}",
        source.info.width,
        source.info.height,
        pixel_format,
        source.time_base.numerator(),
        source.time_base.denominator(),
        sar.numerator(),
        sar.denominator()
    );
    graph
        .add(&buffer, "in", &source_args)
        .map_err(graph_error)?;

    let watermark = media::rgba_frame(&art::watermark(WATERMARK_HEIGHT));
    let logo_args = format!(
        "video_size={}x{}:pix_fmt=rgba:time_base=1/{}:pixel_aspect=1/1",
        watermark.width(),
        watermark.height(),
        fps
    );
    graph
        .add(&buffer, "logo", &logo_args)
        .map_err(graph_error)?;
    graph.add(&sink, "out", "").map_err(graph_error)?;
    graph
        .get("out")
        .expect("just added")
        .set_pixel_format(Pixel::YUV420P);

    let (upright, display_width, display_height) = match source.info.rotation {
        90 => ("transpose=clock,", source.info.height, source.info.width),
        180 => ("hflip,vflip,", source.info.width, source.info.height),
        270 => ("transpose=cclock,", source.info.height, source.info.width),
        _ => ("", source.info.width, source.info.height),
    };
    // Square pixels: widen by the pixel aspect ratio before fitting.
    let (sar_num, sar_den) = if source.info.rotation % 180 == 90 {
        (sar.denominator(), sar.numerator())
    } else {
        (sar.numerator(), sar.denominator())
    };
    let display_width = f64::from(display_width) * f64::from(sar_num) / f64::from(sar_den);
    let (scaled_width, scaled_height) = fit(display_width, f64::from(display_height));
    let kept_frames = (options.max_kept_duration.as_secs_f64() * f64::from(fps)).round() as u64;
    // Output is BT.709, limited range, 8-bit 4:2:0 whatever the source: the tone mapper
    // takes over for HDR, otherwise the colour route (crate::colour) says what the scaler
    // and the filters after it convert. The watermark is converted with the same matrix, so
    // its colours survive.
    let colour = match tone_map {
        Some(tone_map) => format!("scale={scaled_width}:{scaled_height}:flags=bicubic,{tone_map}"),
        None => ColourRoute::for_source(&source.decoder).filters(scaled_width, scaled_height),
    };
    let spec = format!(
        "[in]setpts=PTS-STARTPTS,fps={fps},trim=end_frame={kept_frames},{upright}\
         {colour}setsar=1,\
         pad={OUTPUT_WIDTH}:{OUTPUT_HEIGHT}:{pad_x}:{pad_y}:color=black[main];\
         [logo]scale=out_color_matrix=bt709:out_range=tv,format=yuva420p[mark];\
         [main][mark]overlay=x=W-w-{WATERMARK_MARGIN}:y={WATERMARK_MARGIN}:format=yuv420:eof_action=repeat[out]",
        pad_x = (OUTPUT_WIDTH - scaled_width) / 4 * 2,
        pad_y = (OUTPUT_HEIGHT - scaled_height) / 4 * 2,
    );
    graph
        .output("in", 0)
        .and_then(|parser| parser.output("logo", 0))
        .and_then(|parser| parser.input("out", 0))
        .and_then(|parser| parser.parse(&spec))
        .map_err(graph_error)?;
    graph.validate().map_err(graph_error)?;

    // The watermark is one still frame; overlay repeats it to the end.
    let mut logo_context = graph.get("logo").expect("just added");
    let mut logo = logo_context.source();
    let mut watermark = watermark;
    watermark.set_pts(Some(0));
    logo.add(&watermark).map_err(graph_error)?;
    logo.flush().map_err(graph_error)?;
    Ok(graph)
}

/// The largest even size with the given display aspect that fits 1280×720.
fn fit(display_width: f64, display_height: f64) -> (u32, u32) {
    let even = |value: f64| ((value / 2.0).round() as u32 * 2).max(2);
    let width_limited =
        display_width * f64::from(OUTPUT_HEIGHT) >= display_height * f64::from(OUTPUT_WIDTH);
    if width_limited {
        let height = f64::from(OUTPUT_WIDTH) * display_height / display_width;
        (OUTPUT_WIDTH, even(height).min(OUTPUT_HEIGHT))
    } else {
        let width = f64::from(OUTPUT_HEIGHT) * display_width / display_height;
        (even(width).min(OUTPUT_WIDTH), OUTPUT_HEIGHT)
    }
}

fn pixel_format_name(format: Pixel) -> Result<&'static str, TranscodeError> {
    format
        .descriptor()
        .map(|descriptor| descriptor.name())
        .ok_or_else(|| {
            Rejection::Unreadable {
                detail: "the video has no known pixel format".into(),
            }
            .into()
        })
}

/// libx264 into a fast-start MP4, at a constant frame rate.
struct VideoWriter {
    muxer: format::context::Output,
    encoder: encoder::Video,
    encoder_time_base: Rational,
    stream_time_base: Rational,
    next_pts: i64,
    packet: Packet,
}

impl VideoWriter {
    fn create(path: &Path, options: &TranscodeOptions, fps: u32) -> Result<Self, TranscodeError> {
        let mut muxer = format::output_as(path, "mp4")
            .map_err(|error| output_error("creating the output", error))?;
        let codec = encoder::find_by_name("libx264")
            .ok_or(ffmpeg::Error::EncoderNotFound)
            .map_err(media_error("finding libx264"))?;
        let encoder_time_base = Rational::new(1, fps as i32);
        let mut setup = codec::context::Context::new_with_codec(codec)
            .encoder()
            .video()
            .map_err(media_error("setting up the encoder"))?;
        setup.set_width(OUTPUT_WIDTH);
        setup.set_height(OUTPUT_HEIGHT);
        setup.set_format(Pixel::YUV420P);
        setup.set_aspect_ratio((1, 1));
        setup.set_time_base(encoder_time_base);
        setup.set_frame_rate(Some((fps as i32, 1)));
        // Tagged as what the filter graph produces, in the bitstream and the container.
        setup.set_color_primaries(color::Primaries::BT709);
        setup.set_color_transfer_characteristic(color::TransferCharacteristic::BT709);
        setup.set_colorspace(color::Space::BT709);
        setup.set_color_range(color::Range::MPEG);

        let mut x264 = Dictionary::new();
        x264.set("preset", &options.x264_preset);
        x264.set("crf", &options.crf.to_string());
        x264.set("threads", &options.encoder_threads.to_string());
        if muxer
            .format()
            .flags()
            .contains(format::Flags::GLOBAL_HEADER)
        {
            // Through the options, not the flags setter: the setter would
            // replace libx264's default flags (and switch it to open GOPs).
            x264.set("flags", "+global_header");
        }
        let encoder = setup
            .open_with(x264)
            .map_err(media_error("opening libx264"))?;

        let mut stream = muxer
            .add_stream(codec)
            .map_err(media_error("adding the video stream"))?;
        stream.set_parameters(&encoder);
        stream.set_time_base(encoder_time_base);
        stream.set_avg_frame_rate((fps as i32, 1));

        let mut mux_options = Dictionary::new();
        // Fast start: the index (moov) goes before the media data once finished.
        mux_options.set("movflags", "+faststart");
        muxer
            .write_header_with(mux_options)
            .map_err(|error| output_error("writing the MP4 header", error))?;
        // The muxer picks its own time base when writing the header.
        let stream_time_base = muxer
            .stream(0)
            .expect("the stream was just added")
            .time_base();
        Ok(Self {
            muxer,
            encoder,
            encoder_time_base,
            stream_time_base,
            next_pts: 0,
            packet: Packet::empty(),
        })
    }

    /// Encodes one frame as the next frame of the constant-rate output.
    fn write(&mut self, frame: &mut frame::Video) -> Result<(), TranscodeError> {
        frame.set_pts(Some(self.next_pts));
        // Let x264 place keyframes itself rather than copying the source's.
        frame.set_kind(picture::Type::None);
        self.next_pts += 1;
        self.encoder
            .send_frame(frame)
            .map_err(media_error("encoding"))?;
        self.write_packets()
    }

    fn write_packets(&mut self) -> Result<(), TranscodeError> {
        loop {
            match self.encoder.receive_packet(&mut self.packet) {
                Ok(()) => {}
                Err(ffmpeg::Error::Eof) => return Ok(()),
                Err(error) if is_again(&error) => return Ok(()),
                Err(error) => return Err(media_error("encoding")(error)),
            }
            self.packet.set_stream(0);
            self.packet
                .rescale_ts(self.encoder_time_base, self.stream_time_base);
            self.packet
                .write_interleaved(&mut self.muxer)
                .map_err(|error| output_error("writing the MP4", error))?;
        }
    }

    /// Drains the encoder and finishes the file (moving the index to the front).
    fn finish(mut self) -> Result<u64, TranscodeError> {
        self.encoder
            .send_eof()
            .map_err(media_error("flushing the encoder"))?;
        self.write_packets()?;
        self.muxer
            .write_trailer()
            .map_err(|error| output_error("finishing the MP4", error))?;
        Ok(self.next_pts as u64)
    }
}

/// Turns frames done into whole percentages, reporting each change once.
/// Stays below 100 until the file is complete.
struct ProgressTracker<'p> {
    expected_frames: u64,
    done_frames: u64,
    last_reported: Option<u8>,
    report: &'p mut dyn FnMut(u8),
}

impl<'p> ProgressTracker<'p> {
    fn new(expected_frames: u64, report: &'p mut dyn FnMut(u8)) -> Self {
        Self {
            expected_frames: expected_frames.max(1),
            done_frames: 0,
            last_reported: None,
            report,
        }
    }

    fn frame_done(&mut self) {
        self.done_frames += 1;
        let percent = (self.done_frames * 100 / self.expected_frames).min(99) as u8;
        if self.last_reported.is_none_or(|last| percent > last) {
            self.last_reported = Some(percent);
            (self.report)(percent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_letterboxes_wide_and_pillarboxes_tall_pictures() {
        assert_eq!(fit(1920.0, 1080.0), (1280, 720));
        assert_eq!(fit(3840.0, 2160.0), (1280, 720));
        assert_eq!(fit(1080.0, 1920.0), (406, 720));
        assert_eq!(fit(2560.0, 1080.0), (1280, 540));
        assert_eq!(fit(1440.0, 1080.0), (960, 720));
    }

    #[test]
    fn progress_is_reported_once_per_percent_and_holds_below_100() {
        let mut seen = Vec::new();
        let mut record = |percent| seen.push(percent);
        {
            let mut tracker = ProgressTracker::new(200, &mut record);
            for _ in 0..200 {
                tracker.frame_done();
            }
        }
        assert_eq!(seen.first(), Some(&0));
        assert_eq!(seen.last(), Some(&99));
        assert!(seen.windows(2).all(|pair| pair[0] < pair[1]));
    }
}
