//! Reading an upload body under a size limit, and temporary files that clean
//! up after themselves.

use std::path::{Path, PathBuf};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt};

use super::StorageError;

/// An upload body read with a size limit.
///
/// Each read is capped so that at most one byte past the limit is ever
/// consumed: an oversized body fails with [`StorageError::TooLarge`] as soon as
/// its first extra byte arrives, without reading the rest.
pub(crate) struct LimitedBody<R> {
    inner: R,
    read: u64,
    limit: u64,
}

impl<R: AsyncRead + Unpin> LimitedBody<R> {
    pub(crate) fn new(inner: R, limit: u64) -> Self {
        Self {
            inner,
            read: 0,
            limit,
        }
    }

    /// Bytes read so far.
    pub(crate) fn bytes_read(&self) -> u64 {
        self.read
    }

    /// Appends what the body has next to `buf` (up to its spare capacity) and
    /// returns how many bytes that was; 0 means the body ended or `buf` is full.
    pub(crate) async fn read_buf(&mut self, buf: &mut BytesMut) -> Result<usize, StorageError> {
        let spare = (buf.capacity() - buf.len()) as u64;
        if spare == 0 {
            return Ok(0);
        }
        let allowed = (self.limit - self.read).saturating_add(1).min(spare);
        let n = (&mut self.inner)
            .take(allowed)
            .read_buf(buf)
            .await
            .map_err(StorageError::Body)?;
        self.read += n as u64;
        if self.read > self.limit {
            return Err(StorageError::TooLarge { limit: self.limit });
        }
        Ok(n)
    }

    /// Fills `buf` up to its capacity, stopping early only at the end of the body.
    pub(crate) async fn fill(&mut self, buf: &mut BytesMut) -> Result<(), StorageError> {
        while buf.len() < buf.capacity() {
            if self.read_buf(buf).await? == 0 {
                break;
            }
        }
        Ok(())
    }
}

/// A file being written under a temporary name; removed when dropped unless
/// [`TempFile::persist`] moved it into place. This keeps failed or cancelled
/// writes from leaving partial files behind.
#[derive(Debug)]
pub(crate) struct TempFile {
    path: PathBuf,
    persisted: bool,
}

impl TempFile {
    /// A fresh, unused name in `dir` (which must exist).
    pub(crate) fn new_in(dir: &Path, hint: &str) -> Self {
        let unique: u64 = rand::random();
        Self {
            path: dir.join(format!(".{hint}.{unique:016x}.partial")),
            persisted: false,
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Renames the file to `dest`, replacing what was there.
    pub(crate) async fn persist(mut self, dest: &Path) -> std::io::Result<()> {
        tokio::fs::rename(&self.path, dest).await?;
        self.persisted = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.persisted {
            // Best effort: the file may never have been created.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limited_body_accepts_exactly_the_limit_and_stops_one_byte_over() {
        let data = vec![7u8; 1000];
        let mut body = LimitedBody::new(&data[..], 1000);
        let mut buf = BytesMut::with_capacity(4096);
        body.fill(&mut buf).await.unwrap();
        assert_eq!(buf.len(), 1000);

        let mut body = LimitedBody::new(&data[..], 999);
        let mut buf = BytesMut::with_capacity(4096);
        let err = body.fill(&mut buf).await.unwrap_err();
        assert!(
            matches!(err, StorageError::TooLarge { limit: 999 }),
            "{err}"
        );
        assert_eq!(
            body.bytes_read(),
            1000,
            "reads at most one byte past the limit"
        );
    }
}
