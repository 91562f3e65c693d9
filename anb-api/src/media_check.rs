//! Checks an uploaded file by its content: an MP4 container whose metadata
//! says 20–60 s long with the shorter side of the frame ≥ 1080 px.
//!
//! Only the container's boxes are read (with the `mp4` crate), never the
//! media data, so a check costs a few reads whatever the file's size. A file
//! a client stored directly is checked where it lies, by ranged reads of the
//! stored object ([`MediaChecker::check_stored`]): a few requests of
//! [`RANGE_BLOCK`] bytes, never a download of the media data.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anb_core::storage::{ObjectKey, Storage};
use bytes::Bytes;
use tokio::sync::Semaphore;

use crate::settings::UploadLimits;

mod boxes;

pub use boxes::{BoxError, WalkLimits};

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

/// Runs [`check_mp4`] on the blocking pool, at most `concurrency` checks at
/// once and each within a deadline. A check past its deadline is answered as
/// a refusal while its thread finishes on its own; it keeps its slot until
/// then, so whatever a file does to the parser, it holds at most the cores
/// the cap allows.
#[derive(Debug, Clone)]
pub struct MediaChecker {
    slots: Arc<Semaphore>,
    deadline: Duration,
    slot_wait: Duration,
}

/// Why a check gave no facts.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Rejected(#[from] MediaRejection),
    /// Every slot stayed busy for the whole wait: try again later.
    #[error("every media check slot is busy")]
    Busy,
}

impl Default for MediaChecker {
    /// One check per CPU, 10 s each, waiting up to 5 s for a slot.
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        Self::new(cpus, Duration::from_secs(10), Duration::from_secs(5))
    }
}

impl MediaChecker {
    pub fn new(concurrency: usize, deadline: Duration, slot_wait: Duration) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
            deadline,
            slot_wait,
        }
    }

    /// Checks the file at `path` against `limits`.
    pub async fn check(
        &self,
        path: PathBuf,
        limits: UploadLimits,
    ) -> Result<VideoFacts, CheckError> {
        self.run(move || check_mp4(&path, &limits)).await
    }

    /// Checks the object `key` of `size` bytes where it is stored, by ranged
    /// reads, against `limits`.
    pub async fn check_stored(
        &self,
        storage: Storage,
        key: ObjectKey,
        size: u64,
        limits: UploadLimits,
    ) -> Result<VideoFacts, CheckError> {
        let handle = tokio::runtime::Handle::current();
        self.run(move || {
            let object = RangedObject::new(handle, storage, key, size);
            check_facts(read_facts_from(object, size), &limits)
        })
        .await
    }

    async fn run(
        &self,
        check: impl FnOnce() -> Result<VideoFacts, MediaRejection> + Send + 'static,
    ) -> Result<VideoFacts, CheckError> {
        let slot = tokio::time::timeout(self.slot_wait, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| CheckError::Busy)?
            .map_err(|_| CheckError::Busy)?;
        let check = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            check()
        });
        match tokio::time::timeout(self.deadline, check).await {
            Ok(Ok(result)) => Ok(result?),
            // `check_mp4` catches the parser's panics; anything else is a bug
            // about this file, not a reason to fail the process.
            Ok(Err(_)) => Err(MediaRejection::NotMp4("the check failed".into()).into()),
            Err(_) => {
                tracing::warn!(deadline = ?self.deadline, "media check ran past its deadline");
                Err(MediaRejection::NotMp4("the check ran past its deadline".into()).into())
            }
        }
    }
}

/// How many bytes one ranged read of a stored object asks for: enough for
/// the boxes before the media data and a clip's movie box in a few reads.
pub const RANGE_BLOCK: u64 = 256 * 1024;

/// A stored object as a blocking reader, for the parser on a blocking
/// thread: each read outside the block in hand fetches the next
/// [`RANGE_BLOCK`] bytes from where it is, so skipping the media data
/// (a seek) costs nothing.
struct RangedObject {
    handle: tokio::runtime::Handle,
    storage: Storage,
    key: ObjectKey,
    size: u64,
    pos: u64,
    block: Bytes,
    block_start: u64,
}

impl RangedObject {
    fn new(handle: tokio::runtime::Handle, storage: Storage, key: ObjectKey, size: u64) -> Self {
        Self {
            handle,
            storage,
            key,
            size,
            pos: 0,
            block: Bytes::new(),
            block_start: 0,
        }
    }
}

impl Read for RangedObject {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let in_block =
            self.pos >= self.block_start && self.pos < self.block_start + self.block.len() as u64;
        if !in_block {
            let len = RANGE_BLOCK.min(self.size - self.pos);
            self.block = self
                .handle
                .block_on(self.storage.read_range(&self.key, self.pos, len))
                .map_err(std::io::Error::other)?;
            self.block_start = self.pos;
            if self.block.is_empty() {
                return Ok(0);
            }
        }
        let from = usize::try_from(self.pos - self.block_start).unwrap_or(usize::MAX);
        let available = &self.block[from.min(self.block.len())..];
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for RangedObject {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let target = match to {
            SeekFrom::Start(at) => Some(at),
            SeekFrom::End(delta) => self.size.checked_add_signed(delta),
            SeekFrom::Current(delta) => self.pos.checked_add_signed(delta),
        };
        self.pos = target.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start")
        })?;
        Ok(self.pos)
    }
}

/// Reads the facts of the MP4 file at `path` and checks them against `limits`.
/// Blocking: call from a blocking thread.
pub fn check_mp4(path: &Path, limits: &UploadLimits) -> Result<VideoFacts, MediaRejection> {
    check_facts(read_facts(path), limits)
}

fn check_facts(
    facts: Result<VideoFacts, MediaRejection>,
    limits: &UploadLimits,
) -> Result<VideoFacts, MediaRejection> {
    let facts = facts?;
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
    let file = File::open(path).map_err(|e| not_mp4(format!("unreadable: {e}")))?;
    let size = file.metadata().map_err(|e| not_mp4(e.to_string()))?.len();
    read_facts_from(file, size)
}

/// Reads duration and frame size from the container metadata of `size`
/// bytes in `file`.
fn read_facts_from<R: Read + Seek>(mut file: R, size: u64) -> Result<VideoFacts, MediaRejection> {
    let not_mp4 = |reason: String| MediaRejection::NotMp4(reason);
    // Lying box sizes make the parser loop forever: the walk proves the tree
    // well formed first.
    boxes::walk(&mut BufReader::new(&mut file), size, WalkLimits::default())
        .map_err(|e| not_mp4(e.to_string()))?;
    file.seek(SeekFrom::Start(0))
        .map_err(|e| not_mp4(e.to_string()))?;
    // The parser is given untrusted input: a panic in it is a rejection,
    // not a crash of the request.
    let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        mp4::Mp4Reader::read_header(BufReader::new(file), size)
    }))
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
    // is what players show, so prefer it when it is set. Both are computed
    // here: the parser's own arithmetic overflows on crafted durations.
    let mdhd = &track.trak.mdia.mdhd;
    let mvhd = &parsed.moov.mvhd;
    let duration = if mdhd.timescale > 0 && mdhd.duration > 0 {
        ticks_to_duration(mdhd.duration, mdhd.timescale)
    } else if mvhd.timescale > 0 {
        ticks_to_duration(mvhd.duration, mvhd.timescale)
    } else {
        return Err(not_mp4("no timescale".into()));
    };
    Ok(VideoFacts {
        duration,
        width,
        height,
    })
}

/// `ticks / timescale` seconds, exact and without overflow for any input.
fn ticks_to_duration(ticks: u64, timescale: u32) -> Duration {
    let timescale = u64::from(timescale.max(1));
    let nanos = u128::from(ticks % timescale) * 1_000_000_000 / u128::from(timescale);
    Duration::new(
        ticks / timescale,
        u32::try_from(nanos).expect("below one second"),
    )
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
    fn durations_are_exact_and_never_overflow() {
        assert_eq!(ticks_to_duration(90_000, 1000), Duration::from_secs(90));
        assert_eq!(ticks_to_duration(1, 4), Duration::from_millis(250));
        assert_eq!(
            ticks_to_duration(u64::MAX, 1),
            Duration::from_secs(u64::MAX)
        );
        assert!(ticks_to_duration(u64::MAX, 90_000) > Duration::from_secs(3600));
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
