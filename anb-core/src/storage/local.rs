//! Storage in a local directory, with signed expiring URLs served by the API.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWriteExt};

use super::body::{LimitedBody, TempFile};
use super::error::is_missing;
use super::{ObjectKey, ObjectReader, StorageError, StoredObject, UrlSigner};

/// Name of the directory under the root that holds uploads in progress. Keys
/// cannot start with '.', so no object ever lands there.
const WORK_DIR: &str = ".partial";

/// Size of the copy buffer for uploads.
const COPY_BUFFER: usize = 256 * 1024;

/// Objects stored as files under a root directory: key `a/b.mp4` is the file
/// `{root}/a/b.mp4`.
///
/// Uploads are written to a temporary file and renamed into place once
/// complete, so a failed, oversized or cancelled upload leaves nothing behind
/// and readers never see a half-written object.
#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: PathBuf,
    signer: UrlSigner,
}

impl LocalStorage {
    /// Storage under `root` (created if missing), with media URLs signed by
    /// `url_secret`.
    pub async fn open(root: impl Into<PathBuf>, url_secret: &[u8]) -> Result<Self, StorageError> {
        let root = root.into();
        tokio::fs::create_dir_all(root.join(WORK_DIR))
            .await
            .map_err(|e| StorageError::backend("creating the storage directory", e))?;
        Ok(Self {
            root,
            signer: UrlSigner::new(url_secret),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The signer of this store's media URLs.
    pub fn signer(&self) -> &UrlSigner {
        &self.signer
    }

    /// Checks a media URL's `expires` and `sig` for `key`; see [`UrlSigner::verify`].
    pub fn verify(
        &self,
        key: &ObjectKey,
        expires: u64,
        sig: &str,
        now: SystemTime,
    ) -> Result<(), StorageError> {
        self.signer.verify(key, expires, sig, now)
    }

    /// The file that holds `key`, if it exists. Lets the HTTP layer serve it
    /// with its own static-file support (ranges, conditional requests).
    pub async fn file_path(&self, key: &ObjectKey) -> Result<PathBuf, StorageError> {
        let path = self.path_of(key);
        let metadata = tokio::fs::metadata(&path)
            .await
            .map_err(|e| StorageError::from_io("stat", key.as_str(), e))?;
        if !metadata.is_file() {
            return Err(not_found(key));
        }
        Ok(path)
    }

    pub(crate) async fn upload<R>(
        &self,
        key: &ObjectKey,
        body: R,
        max_bytes: u64,
    ) -> Result<u64, StorageError>
    where
        R: AsyncRead + Unpin + Send,
    {
        let dest = self.path_of(key);
        let temp = TempFile::new_in(&self.root.join(WORK_DIR), "upload");
        let mut file = tokio::fs::File::create(temp.path())
            .await
            .map_err(|e| StorageError::backend("creating an upload file", e))?;

        let mut body = LimitedBody::new(body, max_bytes);
        let mut buf = BytesMut::with_capacity(COPY_BUFFER);
        loop {
            buf.clear();
            if body.read_buf(&mut buf).await? == 0 {
                break;
            }
            file.write_all(&buf)
                .await
                .map_err(|e| StorageError::backend("writing an upload", e))?;
        }
        // Data reaches the disk before the rename makes it visible.
        file.sync_all()
            .await
            .map_err(|e| StorageError::backend("writing an upload", e))?;
        drop(file);

        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| StorageError::backend("creating a key's directory", e))?;
        }
        temp.persist(&dest)
            .await
            .map_err(|e| StorageError::backend("moving an upload into place", e))?;
        Ok(body.bytes_read())
    }

    pub(crate) async fn open_object(&self, key: &ObjectKey) -> Result<ObjectReader, StorageError> {
        let path = self.path_of(key);
        let file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| StorageError::from_io("open", key.as_str(), e))?;
        let metadata = file
            .metadata()
            .await
            .map_err(|e| StorageError::backend("stat", e))?;
        if !metadata.is_file() {
            return Err(not_found(key));
        }
        Ok(ObjectReader {
            content_length: metadata.len(),
            content_type: key.content_type(),
            reader: Box::pin(file),
        })
    }

    pub(crate) async fn read_range(
        &self,
        key: &ObjectKey,
        offset: u64,
        len: u64,
    ) -> Result<bytes::Bytes, StorageError> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        let mut file = tokio::fs::File::open(self.path_of(key))
            .await
            .map_err(|e| StorageError::from_io("open", key.as_str(), e))?;
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(|e| StorageError::backend("ranged read", e))?;
        let mut bytes = Vec::new();
        file.take(len)
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| StorageError::backend("ranged read", e))?;
        Ok(bytes.into())
    }

    pub(crate) async fn size(&self, key: &ObjectKey) -> Result<u64, StorageError> {
        let metadata = tokio::fs::metadata(self.path_of(key))
            .await
            .map_err(|e| StorageError::from_io("stat", key.as_str(), e))?;
        if metadata.is_file() {
            Ok(metadata.len())
        } else {
            Err(not_found(key))
        }
    }

    pub(crate) async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        let path = self.path_of(key);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if is_missing(&e) => return Ok(()),
            Err(e) => return Err(StorageError::backend("delete", e)),
        }
        self.prune_empty_parents(&path).await;
        Ok(())
    }

    pub(crate) async fn delete_prefix(&self, prefix: &ObjectKey) -> Result<(), StorageError> {
        let dir = self.path_of(prefix);
        match tokio::fs::metadata(&dir).await {
            Ok(metadata) if metadata.is_dir() => {}
            // Only keys *under* the prefix go; a file named like it is another key.
            Ok(_) => return Ok(()),
            Err(e) if is_missing(&e) => return Ok(()),
            Err(e) => return Err(StorageError::backend("delete prefix", e)),
        }
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => {}
            Err(e) if is_missing(&e) => {}
            Err(e) => return Err(StorageError::backend("delete prefix", e)),
        }
        self.prune_empty_parents(&dir).await;
        Ok(())
    }

    pub(crate) async fn list(&self, prefix: &ObjectKey) -> Result<Vec<StoredObject>, StorageError> {
        let mut listed = Vec::new();
        let mut dirs = vec![self.path_of(prefix)];
        while let Some(dir) = dirs.pop() {
            let mut entries = match tokio::fs::read_dir(&dir).await {
                Ok(entries) => entries,
                Err(e) if is_missing(&e) => continue,
                Err(e) => return Err(StorageError::backend("list", e)),
            };
            while let Some(entry) = entries
                .next_entry()
                .await
                .map_err(|e| StorageError::backend("list", e))?
            {
                let path = entry.path();
                let metadata = entry
                    .metadata()
                    .await
                    .map_err(|e| StorageError::backend("list", e))?;
                if metadata.is_dir() {
                    dirs.push(path);
                    continue;
                }
                // Only what is a valid key under the root is an object.
                let key = path
                    .strip_prefix(&self.root)
                    .ok()
                    .and_then(Path::to_str)
                    .and_then(|k| ObjectKey::parse(k).ok());
                if let Some(key) = key {
                    let modified = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    listed.push(StoredObject { key, modified });
                }
            }
        }
        Ok(listed)
    }

    /// Starts a depth-first walk of the files under `prefix/` that
    /// [`LocalWalk::next_batch`] reads a bounded batch at a time.
    pub(crate) fn walk(&self, prefix: &ObjectKey) -> LocalWalk {
        LocalWalk {
            start: Some(self.path_of(prefix)),
            open: Vec::new(),
        }
    }

    pub(crate) fn url(&self, key: &ObjectKey, ttl: Duration) -> String {
        self.signer.signed_path(key, SystemTime::now() + ttl)
    }

    /// The directory exists and a file can be created in it.
    pub(crate) async fn check(&self) -> Result<(), StorageError> {
        let probe = TempFile::new_in(&self.root.join(WORK_DIR), "ready");
        tokio::fs::write(probe.path(), b"")
            .await
            .map_err(|e| StorageError::backend("readiness check", e))?;
        Ok(())
    }

    fn path_of(&self, key: &ObjectKey) -> PathBuf {
        // Validated keys are relative and have no '.' or '..' segment, so the
        // joined path is always inside the root.
        self.root.join(key.as_str())
    }

    /// Removes directories left empty by a deletion, up to (not including) the
    /// root, so deleted videos do not leave a trail of empty folders.
    async fn prune_empty_parents(&self, removed: &Path) {
        let mut dir = removed.parent();
        while let Some(current) = dir {
            if current == self.root || !current.starts_with(&self.root) {
                break;
            }
            // Fails (and stops) at the first directory that is not empty.
            if tokio::fs::remove_dir(current).await.is_err() {
                break;
            }
            dir = current.parent();
        }
    }
}

fn not_found(key: &ObjectKey) -> StorageError {
    StorageError::NotFound {
        key: key.as_str().to_owned(),
    }
}

/// A depth-first walk of a directory tree that keeps only the open directory
/// handles of the current path (one per level), so the files of one folder
/// come one after the other and a large tree is read in bounded batches.
#[derive(Debug)]
pub(crate) struct LocalWalk {
    /// The directory to open first, until the walk starts.
    start: Option<PathBuf>,
    open: Vec<tokio::fs::ReadDir>,
}

impl LocalWalk {
    /// The next files (at most `limit`; fewer only at the end), empty once
    /// the walk is over.
    pub(crate) async fn next_batch(
        &mut self,
        store: &LocalStorage,
        limit: usize,
    ) -> Result<Vec<StoredObject>, StorageError> {
        if let Some(start) = self.start.take() {
            match tokio::fs::read_dir(&start).await {
                Ok(entries) => self.open.push(entries),
                Err(e) if is_missing(&e) => {}
                Err(e) => return Err(StorageError::backend("list", e)),
            }
        }
        let mut batch = Vec::new();
        while batch.len() < limit {
            let Some(entries) = self.open.last_mut() else {
                break;
            };
            let Some(entry) = entries
                .next_entry()
                .await
                .map_err(|e| StorageError::backend("list", e))?
            else {
                self.open.pop();
                continue;
            };
            let path = entry.path();
            let metadata = match entry.metadata().await {
                Ok(metadata) => metadata,
                // Removed since the directory was read (e.g. by a sweep).
                Err(e) if is_missing(&e) => continue,
                Err(e) => return Err(StorageError::backend("list", e)),
            };
            if metadata.is_dir() {
                match tokio::fs::read_dir(&path).await {
                    Ok(entries) => self.open.push(entries),
                    Err(e) if is_missing(&e) => {}
                    Err(e) => return Err(StorageError::backend("list", e)),
                }
                continue;
            }
            // Only what is a valid key under the root is an object.
            let key = path
                .strip_prefix(&store.root)
                .ok()
                .and_then(Path::to_str)
                .and_then(|k| ObjectKey::parse(k).ok());
            if let Some(key) = key {
                let modified = metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                batch.push(StoredObject { key, modified });
            }
        }
        Ok(batch)
    }
}
