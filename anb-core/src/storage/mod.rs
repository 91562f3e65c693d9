//! Where original uploads and processed outputs are kept (SPEC §4, §7).
//!
//! [`Storage`] is chosen at start-up from `ANB_STORAGE_URL`: an S3 bucket
//! ([`S3Storage`]) or a local directory ([`LocalStorage`]). Both offer the same
//! operations on [`ObjectKey`]s:
//!
//! - streaming uploads with a size limit enforced while reading
//!   ([`Storage::upload`]); a failed or oversized upload leaves nothing behind;
//! - streaming downloads to a writer or a file, or an open reader with its length;
//! - size/existence checks, idempotent deletes, deleting a video's whole folder;
//! - playable URLs with a bounded lifetime ([`Storage::url`]): presigned S3 GET
//!   URLs, or `/media/{key}?expires=…&sig=…` paths that the API verifies with
//!   [`LocalStorage::verify`] and serves itself;
//! - ranged reads ([`Storage::read_range`]) and, on S3, presigned uploads
//!   of a fixed size and type ([`Storage::presign_put`]);
//! - a cheap readiness check.

mod body;
mod error;
mod key;
mod local;
mod s3;
mod signer;

use std::fmt;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

pub use error::StorageError;
pub use key::{ObjectKey, VideoKeys};
pub use local::LocalStorage;
pub use s3::S3Storage;
pub use signer::UrlSigner;

use crate::config::StorageUrl;
use body::TempFile;

/// Longest lifetime of a URL from [`Storage::url`] (also S3's limit for
/// presigned URLs); longer requests are shortened to it.
pub const MAX_URL_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The configured object store.
#[derive(Debug, Clone)]
pub enum Storage {
    S3(S3Storage),
    Local(LocalStorage),
}

impl Storage {
    /// Opens the store `url` names. S3 is configured from the SDK's standard
    /// environment plus `s3_path_style`; a local directory is created if
    /// missing and signs its media URLs with `url_secret`.
    pub async fn from_url(
        url: &StorageUrl,
        s3_path_style: bool,
        url_secret: &[u8],
    ) -> Result<Self, StorageError> {
        Ok(match url {
            StorageUrl::S3 { bucket, prefix } => {
                Self::S3(S3Storage::from_env(bucket, prefix, s3_path_style).await)
            }
            StorageUrl::Local(root) => Self::Local(LocalStorage::open(root, url_secret).await?),
        })
    }

    /// Stores `body` under `key`, replacing any previous object, and returns
    /// its length.
    ///
    /// Fails with [`StorageError::TooLarge`] as soon as the body goes past
    /// `max_bytes` (the rest is not read), with [`StorageError::Body`] if
    /// reading the body fails; in every failure, and if the returned future is
    /// dropped, nothing is left under `key` or in the store's work area. The
    /// media type stored is [`ObjectKey::content_type`].
    pub async fn upload<R>(
        &self,
        key: &ObjectKey,
        body: R,
        max_bytes: u64,
    ) -> Result<u64, StorageError>
    where
        R: AsyncRead + Send,
    {
        // Pinned here so callers can pass readers that are not `Unpin` (such
        // as a multipart field's reader) without boxing them.
        let body = std::pin::pin!(body);
        match self {
            Self::S3(s3) => s3.upload(key, body, max_bytes).await,
            Self::Local(local) => local.upload(key, body, max_bytes).await,
        }
    }

    /// Stores the file at `path` under `key` (no size limit).
    pub async fn upload_file(&self, key: &ObjectKey, path: &Path) -> Result<u64, StorageError> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| StorageError::backend("opening the file to upload", e))?;
        self.upload(key, file, u64::MAX).await.map_err(|e| match e {
            // Here the "body" is a local file, not a client.
            StorageError::Body(io) => StorageError::backend("reading the file to upload", io),
            other => other,
        })
    }

    /// Opens `key` for reading, with its length and media type.
    pub async fn open(&self, key: &ObjectKey) -> Result<ObjectReader, StorageError> {
        match self {
            Self::S3(s3) => s3.open_object(key).await,
            Self::Local(local) => local.open_object(key).await,
        }
    }

    /// Copies the object `key` into `writer` and returns its length.
    pub async fn download<W>(&self, key: &ObjectKey, writer: &mut W) -> Result<u64, StorageError>
    where
        W: AsyncWrite + Unpin + ?Sized,
    {
        let mut object = self.open(key).await?;
        let copied = tokio::io::copy(&mut object.reader, writer)
            .await
            .map_err(|e| StorageError::backend("download", e))?;
        writer
            .flush()
            .await
            .map_err(|e| StorageError::backend("download", e))?;
        Ok(copied)
    }

    /// Saves the object `key` as the file `dest` and returns its length. The
    /// file appears complete or not at all (written aside, then renamed).
    pub async fn download_to_file(
        &self,
        key: &ObjectKey,
        dest: &Path,
    ) -> Result<u64, StorageError> {
        let dir = match dest.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        let mut object = self.open(key).await?;
        let temp = TempFile::new_in(dir, "download");
        let mut file = tokio::fs::File::create(temp.path())
            .await
            .map_err(|e| StorageError::backend("creating the download file", e))?;
        let copied = tokio::io::copy(&mut object.reader, &mut file)
            .await
            .map_err(|e| StorageError::backend("download", e))?;
        file.flush()
            .await
            .map_err(|e| StorageError::backend("download", e))?;
        drop(file);
        temp.persist(dest)
            .await
            .map_err(|e| StorageError::backend("moving the download into place", e))?;
        Ok(copied)
    }

    /// The length of the object `key`; [`StorageError::NotFound`] if absent.
    pub async fn size(&self, key: &ObjectKey) -> Result<u64, StorageError> {
        match self {
            Self::S3(s3) => s3.size(key).await,
            Self::Local(local) => local.size(key).await,
        }
    }

    /// At most `len` bytes of the object `key` from `offset` (fewer at its
    /// end, none past it): what a check of an object's container reads
    /// instead of the whole object.
    pub async fn read_range(
        &self,
        key: &ObjectKey,
        offset: u64,
        len: u64,
    ) -> Result<bytes::Bytes, StorageError> {
        match self {
            Self::S3(s3) => s3.read_range(key, offset, len).await,
            Self::Local(local) => local.read_range(key, offset, len).await,
        }
    }

    /// For S3: a presigned `PUT` that stores exactly `content_length` bytes
    /// of [`ObjectKey::content_type`] under `key` within `ttl` (both are
    /// signed into it; see [`PresignedPut`]). `None` for local storage,
    /// whose uploads go through the API.
    pub async fn presign_put(
        &self,
        key: &ObjectKey,
        content_length: u64,
        ttl: Duration,
    ) -> Result<Option<PresignedPut>, StorageError> {
        let ttl = ttl.clamp(Duration::from_secs(1), MAX_URL_TTL);
        match self {
            Self::S3(s3) => s3.presign_put(key, content_length, ttl).await.map(Some),
            Self::Local(_) => Ok(None),
        }
    }

    /// Whether an object is stored under `key`.
    pub async fn exists(&self, key: &ObjectKey) -> Result<bool, StorageError> {
        match self.size(key).await {
            Ok(_) => Ok(true),
            Err(StorageError::NotFound { .. }) => Ok(false),
            Err(other) => Err(other),
        }
    }

    /// Deletes `key`; deleting a missing key succeeds.
    pub async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        match self {
            Self::S3(s3) => s3.delete(key).await,
            Self::Local(local) => local.delete(key).await,
        }
    }

    /// Deletes every key under `prefix/` (for a video: [`VideoKeys::folder`]).
    /// Succeeds when there is none.
    pub async fn delete_prefix(&self, prefix: &ObjectKey) -> Result<(), StorageError> {
        match self {
            Self::S3(s3) => s3.delete_prefix(prefix).await,
            Self::Local(local) => local.delete_prefix(prefix).await,
        }
    }

    /// Every object under `prefix/`, with when it was last written (for
    /// clean-up tasks; the order is unspecified).
    pub async fn list(&self, prefix: &ObjectKey) -> Result<Vec<StoredObject>, StorageError> {
        match self {
            Self::S3(s3) => s3.list(prefix).await,
            Self::Local(local) => local.list(prefix).await,
        }
    }

    /// The objects under `prefix/`, read a page of at most `page_size` at a
    /// time ([`ObjectPages::next_page`]) so a clean-up over a large store
    /// keeps one page in memory: S3 `ListObjectsV2` pages in key order, a
    /// local directory walked depth first. Either way the objects of one
    /// folder come one after the other.
    pub fn list_pages(&self, prefix: &ObjectKey, page_size: usize) -> ObjectPages<'_> {
        let page_size = page_size.max(1);
        ObjectPages(match self {
            Self::S3(s3) => Pages::S3 {
                store: s3,
                prefix: prefix.clone(),
                page_size,
                next: Some(None),
            },
            Self::Local(local) => Pages::Local {
                store: local,
                walk: local.walk(prefix),
                page_size,
                done: false,
            },
        })
    }

    /// A URL that plays `key` for `ttl` (at most [`MAX_URL_TTL`], at least one
    /// second): an absolute presigned S3 URL, or for local storage a signed
    /// path starting with [`UrlSigner::PATH_PREFIX`] that the API serves.
    /// The object's existence is not checked.
    pub async fn url(&self, key: &ObjectKey, ttl: Duration) -> Result<String, StorageError> {
        let ttl = ttl.clamp(Duration::from_secs(1), MAX_URL_TTL);
        match self {
            Self::S3(s3) => s3.url(key, ttl).await,
            Self::Local(local) => Ok(local.url(key, ttl)),
        }
    }

    /// A cheap readiness probe: the bucket answers, or the directory is writable.
    pub async fn check(&self) -> Result<(), StorageError> {
        match self {
            Self::S3(s3) => s3.check().await,
            Self::Local(local) => local.check().await,
        }
    }

    /// The local store, when that is what is configured (the API serves its
    /// media route only then).
    pub fn as_local(&self) -> Option<&LocalStorage> {
        match self {
            Self::Local(local) => Some(local),
            Self::S3(_) => None,
        }
    }
}

/// A presigned upload: the client sends `PUT url` with these headers and
/// exactly the signed number of bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresignedPut {
    pub url: String,
    /// The headers signed into the URL that the client must send as they
    /// are (`content-type`, and `content-length`, which a browser sets
    /// itself from the body).
    pub headers: Vec<(String, String)>,
}

/// An object found by [`Storage::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub key: ObjectKey,
    /// When it was last written.
    pub modified: std::time::SystemTime,
}

/// The pages of a listing, from [`Storage::list_pages`].
#[derive(Debug)]
pub struct ObjectPages<'s>(Pages<'s>);

#[derive(Debug)]
enum Pages<'s> {
    S3 {
        store: &'s S3Storage,
        prefix: ObjectKey,
        page_size: usize,
        /// The continuation of the next page (`Some(None)`: the first);
        /// `None` once the last page was read.
        next: Option<Option<String>>,
    },
    Local {
        store: &'s LocalStorage,
        walk: local::LocalWalk,
        page_size: usize,
        done: bool,
    },
}

impl ObjectPages<'_> {
    /// The next page (possibly empty on S3 when it held only keys this store
    /// ignores), or `None` after the last one.
    pub async fn next_page(&mut self) -> Result<Option<Vec<StoredObject>>, StorageError> {
        match &mut self.0 {
            Pages::S3 {
                store,
                prefix,
                page_size,
                next,
            } => {
                let Some(continuation) = next.take() else {
                    return Ok(None);
                };
                let (page, more) = store.list_page(prefix, *page_size, continuation).await?;
                *next = more.map(Some);
                Ok(Some(page))
            }
            Pages::Local {
                store,
                walk,
                page_size,
                done,
            } => {
                if *done {
                    return Ok(None);
                }
                let page = walk.next_batch(store, *page_size).await?;
                *done = page.len() < *page_size;
                if page.is_empty() {
                    return Ok(None);
                }
                Ok(Some(page))
            }
        }
    }
}

/// An object opened for reading.
pub struct ObjectReader {
    /// Length in bytes.
    pub content_length: u64,
    /// Media type, from the key's extension.
    pub content_type: &'static str,
    /// The object's bytes.
    pub reader: Pin<Box<dyn AsyncRead + Send>>,
}

impl fmt::Debug for ObjectReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectReader")
            .field("content_length", &self.content_length)
            .field("content_type", &self.content_type)
            .finish_non_exhaustive()
    }
}
