#![doc = include_str!("../README.md")]

pub mod art;
mod colour;
mod error;
pub mod job;
mod media;
pub mod observability;
pub mod operator;
mod options;
mod pipeline;
pub mod purge;
pub mod reconcile;
mod source;

pub use error::{Rejection, TranscodeError};
pub use media::png;
pub use options::{
    EncoderArgs, InputBounds, MAX_BUMPERS_TOTAL, OUTPUT_FRAME_RATES, TranscodeOptions, X264_PRESETS,
};
pub use pipeline::{OUTPUT_HEIGHT, OUTPUT_WIDTH, TranscodeReport, transcode};
pub use source::{DURATION_TOLERANCE, SourceInfo, check_size, inspect};
