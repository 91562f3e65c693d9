//! Checks an uploaded file by its content: an MP4 container whose metadata
//! says 20–60 s long with the shorter side of the frame ≥ 1080 px.
//!
//! Only the container's boxes are read (with the `mp4` crate), never the
//! media data, so a check costs a few reads whatever the file's size.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

use crate::settings::UploadLimits;

/// Why a file was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MediaRejection {
    #[error("the file is not an MP4 video: {0}")]
    NotMp4(String),
    #[error("the MP4 file has no video track")]
    NoVideoTrack,
    #[error("duration {actual:?} outside {min:?}–{max:?}")]
    Duration {
        actual: Duration,
        min: Duration,
        max: Duration,
    },
    #[error("resolution {width}x{height}: shorter side below {min_short_side} px")]
    Resolution {
        width: u32,
        height: u32,
        min_short_side: u32,
    },
}

/// What the container says about the video.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoFacts {
    pub duration: Duration,
    pub width: u32,
    pub height: u32,
}

/// Reads the facts of the MP4 file at `path` and checks them against `limits`.
/// Blocking: call from a blocking thread.
pub fn check_mp4(path: &Path, limits: &UploadLimits) -> Result<VideoFacts, MediaRejection> {
    let facts = read_facts(path)?;
    if facts.duration < limits.min_duration || facts.duration > limits.max_duration {
        return Err(MediaRejection::Duration {
            actual: facts.duration,
            min: limits.min_duration,
            max: limits.max_duration,
        });
    }
    if facts.width.min(facts.height) < limits.min_short_side {
        return Err(MediaRejection::Resolution {
            width: facts.width,
            height: facts.height,
            min_short_side: limits.min_short_side,
        });
    }
    Ok(facts)
}

/// Reads duration and frame size from the container metadata.
pub fn read_facts(path: &Path) -> Result<VideoFacts, MediaRejection> {
    let not_mp4 = |reason: String| MediaRejection::NotMp4(reason);
    let mut file = File::open(path).map_err(|e| not_mp4(format!("unreadable: {e}")))?;
    let size = file.metadata().map_err(|e| not_mp4(e.to_string()))?.len();
    check_top_level_boxes(&mut file, size)?;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| not_mp4(e.to_string()))?;
    // The parser is given untrusted input: a panic in it is a rejection,
    // not a crash of the request.
    let parsed =
        std::panic::catch_unwind(move || mp4::Mp4Reader::read_header(BufReader::new(file), size))
            .map_err(|_| not_mp4("unparsable container".into()))?
            .map_err(|e| not_mp4(e.to_string()))?;
    let track = parsed
        .tracks()
        .values()
        .find(|t| matches!(t.track_type(), Ok(mp4::TrackType::Video)))
        .ok_or(MediaRejection::NoVideoTrack)?;
    let (width, height) = (u32::from(track.width()), u32::from(track.height()));
    if width == 0 || height == 0 {
        return Err(MediaRejection::NoVideoTrack);
    }
    // The movie header's duration covers every track; the video track's own
    // is what players show, so prefer it when it is set.
    let timescale = track.timescale();
    let duration = if timescale > 0 && track.trak.mdia.mdhd.duration > 0 {
        track.duration()
    } else if parsed.timescale() > 0 {
        parsed.duration()
    } else {
        return Err(not_mp4("no timescale".into()));
    };
    Ok(VideoFacts {
        duration,
        width,
        height,
    })
}

/// An MP4 file starts with an `ftyp` box, and its top-level boxes tile the
/// file. Checking that first keeps lying box sizes away from the parser.
fn check_top_level_boxes(file: &mut File, size: u64) -> Result<(), MediaRejection> {
    let mut offset = 0u64;
    let mut first = true;
    let mut saw_moov = false;
    while offset < size {
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| MediaRejection::NotMp4(e.to_string()))?;
        let mut header = [0u8; 16];
        let available = (size - offset).min(16) as usize;
        if available < 8 {
            return Err(MediaRejection::NotMp4("truncated box header".into()));
        }
        file.read_exact(&mut header[..available])
            .map_err(|e| MediaRejection::NotMp4(e.to_string()))?;
        let small = u64::from(u32::from_be_bytes([
            header[0], header[1], header[2], header[3],
        ]));
        let kind = &header[4..8];
        let box_size = match small {
            0 => size - offset, // extends to the end of the file
            1 if available >= 16 => u64::from_be_bytes(header[8..16].try_into().expect("8 bytes")),
            _ => small,
        };
        if first && kind != b"ftyp" {
            return Err(MediaRejection::NotMp4("no ftyp box at the start".into()));
        }
        if box_size < 8 || box_size > size - offset {
            return Err(MediaRejection::NotMp4("box larger than the file".into()));
        }
        saw_moov |= kind == b"moov";
        first = false;
        offset += box_size;
    }
    if !saw_moov {
        return Err(MediaRejection::NotMp4("no moov box".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn file_with(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(bytes).unwrap();
        file
    }

    #[test]
    fn non_mp4_content_is_refused_whatever_its_name() {
        let text = file_with(b"this is plainly not a video, even if named clip.mp4");
        assert!(matches!(
            read_facts(text.path()),
            Err(MediaRejection::NotMp4(_))
        ));
        let empty = file_with(b"");
        assert!(matches!(
            read_facts(empty.path()),
            Err(MediaRejection::NotMp4(_))
        ));
    }

    #[test]
    fn lying_box_sizes_are_refused_before_parsing() {
        // An ftyp box, then a moov box claiming 4 GiB.
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&16u32.to_be_bytes());
        bytes.extend_from_slice(b"ftypisom\0\0\0\0");
        bytes.extend_from_slice(&u32::MAX.to_be_bytes());
        bytes.extend_from_slice(b"moov");
        let file = file_with(&bytes);
        assert!(matches!(
            read_facts(file.path()),
            Err(MediaRejection::NotMp4(_))
        ));
    }
}
