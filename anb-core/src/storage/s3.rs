//! Storage in an S3 bucket (or an S3-compatible server).

use std::error::Error;
use std::fmt::Debug;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use bytes::{Bytes, BytesMut};
use tokio::io::AsyncRead;

use super::body::LimitedBody;
use super::{ObjectKey, ObjectReader, StorageError, StoredObject};

/// Objects in an S3 bucket, under an optional key prefix.
///
/// Uploads stream: a body that fits in one part goes up with a single
/// `PutObject`; a longer one as a multipart upload whose next part is read from
/// the body while the previous one is being sent, so at most two parts are held
/// in memory. A multipart upload that fails, is cut off for size, or is
/// dropped half-way is aborted, so no invisible parts are left to pay for.
#[derive(Debug, Clone)]
pub struct S3Storage {
    client: Client,
    bucket: String,
    /// Empty, or the configured prefix followed by '/'.
    prefix: String,
    part_size: usize,
}

impl S3Storage {
    /// Default multipart part size.
    pub const DEFAULT_PART_SIZE: usize = 8 * 1024 * 1024;
    /// S3's minimum size for every part but the last.
    pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;

    /// How long the readiness check waits for the bucket to answer.
    const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
    /// Keys per `DeleteObjects` call (the S3 maximum).
    const DELETE_BATCH: usize = 1000;

    /// A store configured from the AWS SDK's standard environment
    /// (`AWS_REGION`, credentials, `AWS_ENDPOINT_URL`, profiles…), with
    /// path-style addressing when `path_style` is set (S3-compatible servers).
    pub async fn from_env(bucket: &str, prefix: &str, path_style: bool) -> Self {
        let sdk_config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        Self::from_sdk_config(&sdk_config, bucket, prefix, path_style)
    }

    /// A store using an already loaded SDK configuration.
    pub fn from_sdk_config(
        sdk_config: &aws_config::SdkConfig,
        bucket: &str,
        prefix: &str,
        path_style: bool,
    ) -> Self {
        let config = aws_sdk_s3::config::Builder::from(sdk_config)
            .force_path_style(path_style)
            .build();
        Self::new(Client::from_conf(config), bucket, prefix)
    }

    /// A store using `client`. Keys are stored as `{prefix}/{key}`, or just
    /// `{key}` when `prefix` is empty.
    pub fn new(client: Client, bucket: &str, prefix: &str) -> Self {
        let prefix = prefix.trim_matches('/');
        Self {
            client,
            bucket: bucket.to_owned(),
            prefix: if prefix.is_empty() {
                String::new()
            } else {
                format!("{prefix}/")
            },
            part_size: Self::DEFAULT_PART_SIZE,
        }
    }

    /// Uses parts of `bytes` (at least [`Self::MIN_PART_SIZE`]) for multipart
    /// uploads. Memory per upload in flight is about twice this.
    pub fn with_part_size(mut self, bytes: usize) -> Self {
        self.part_size = bytes.max(Self::MIN_PART_SIZE);
        self
    }

    /// The SDK client, for operations this type does not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The bucket name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The full S3 key of `key` (with the prefix).
    pub fn s3_key(&self, key: &ObjectKey) -> String {
        format!("{}{key}", self.prefix)
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
        let mut body = LimitedBody::new(body, max_bytes);
        let first = self.read_part(&mut body).await?;
        if first.len() < self.part_size {
            // The whole body fits in one part.
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(self.s3_key(key))
                .content_type(key.content_type())
                .body(ByteStream::from(first))
                .send()
                .await
                .map_err(|e| sdk_error("upload", key, e))?;
            return Ok(body.bytes_read());
        }

        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(self.s3_key(key))
            .content_type(key.content_type())
            .send()
            .await
            .map_err(|e| sdk_error("starting a multipart upload", key, e))?;
        let upload_id = created.upload_id().ok_or_else(|| {
            StorageError::backend(
                "starting a multipart upload",
                "the response had no upload id",
            )
        })?;
        let mut pending = PendingMultipart {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            s3_key: self.s3_key(key),
            upload_id: upload_id.to_owned(),
            finished: false,
        };

        match self.send_parts(&pending, key, first, &mut body).await {
            Ok(()) => {
                pending.finished = true;
                Ok(body.bytes_read())
            }
            Err(err) => {
                pending.abort().await;
                Err(err)
            }
        }
    }

    /// Uploads `first` and the rest of `body` as parts, then completes the upload.
    async fn send_parts<R>(
        &self,
        pending: &PendingMultipart,
        key: &ObjectKey,
        first: Bytes,
        body: &mut LimitedBody<R>,
    ) -> Result<(), StorageError>
    where
        R: AsyncRead + Unpin + Send,
    {
        let mut completed = Vec::new();
        let mut current = first;
        let mut part_number: i32 = 1;
        while !current.is_empty() {
            // Send this part while reading the next one from the client.
            let (part, next) = tokio::try_join!(
                self.send_part(pending, key, part_number, current),
                self.read_part(body),
            )?;
            completed.push(part);
            current = next;
            part_number += 1;
        }
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&pending.s3_key)
            .upload_id(&pending.upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(completed))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| sdk_error("completing a multipart upload", key, e))?;
        Ok(())
    }

    async fn send_part(
        &self,
        pending: &PendingMultipart,
        key: &ObjectKey,
        part_number: i32,
        data: Bytes,
    ) -> Result<CompletedPart, StorageError> {
        let sent = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&pending.s3_key)
            .upload_id(&pending.upload_id)
            .part_number(part_number)
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| sdk_error("uploading a part", key, e))?;
        Ok(CompletedPart::builder()
            .part_number(part_number)
            .set_e_tag(sent.e_tag().map(str::to_owned))
            .build())
    }

    /// Reads up to one part from `body`; shorter only at the end of the body.
    async fn read_part<R>(&self, body: &mut LimitedBody<R>) -> Result<Bytes, StorageError>
    where
        R: AsyncRead + Unpin + Send,
    {
        let mut buf = BytesMut::with_capacity(self.part_size);
        body.fill(&mut buf).await?;
        Ok(buf.freeze())
    }

    pub(crate) async fn open_object(&self, key: &ObjectKey) -> Result<ObjectReader, StorageError> {
        let object = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.s3_key(key))
            .send()
            .await
            .map_err(|e| sdk_error("download", key, e))?;
        let content_length = object
            .content_length()
            .and_then(|len| u64::try_from(len).ok())
            .unwrap_or_default();
        Ok(ObjectReader {
            content_length,
            content_type: key.content_type(),
            reader: Box::pin(object.body.into_async_read()),
        })
    }

    pub(crate) async fn read_range(
        &self,
        key: &ObjectKey,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, StorageError> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let last = offset.saturating_add(len - 1);
        let object = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.s3_key(key))
            .range(format!("bytes={offset}-{last}"))
            .send()
            .await
            .map_err(|e| {
                // A range starting past the end reads as nothing, like a file.
                if e.code() == Some("InvalidRange") {
                    return None;
                }
                Some(sdk_error("ranged read", key, e))
            });
        let object = match object {
            Ok(object) => object,
            Err(None) => return Ok(Bytes::new()),
            Err(Some(error)) => return Err(error),
        };
        let ranged = object.content_range().is_some();
        let bytes = object
            .body
            .collect()
            .await
            .map_err(|e| StorageError::backend("ranged read", e))?
            .into_bytes();
        // A server that ignores `Range` sends the whole object: keep the
        // asked part only.
        if !ranged && bytes.len() as u64 > len {
            let start = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            let end = start.saturating_add(usize::try_from(len).unwrap_or(usize::MAX));
            return Ok(bytes.slice(start..end.min(bytes.len())));
        }
        Ok(bytes)
    }

    pub(crate) async fn presign_put(
        &self,
        key: &ObjectKey,
        content_length: u64,
        ttl: Duration,
    ) -> Result<super::PresignedPut, StorageError> {
        let presigning = PresigningConfig::expires_in(ttl)
            .map_err(|e| StorageError::backend("presigning an upload", e))?;
        let length = i64::try_from(content_length)
            .map_err(|e| StorageError::backend("presigning an upload", e))?;
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.s3_key(key))
            .content_length(length)
            .content_type(key.content_type())
            .presigned(presigning)
            .await
            .map_err(|e| sdk_error("presigning an upload", key, e))?;
        Ok(super::PresignedPut {
            url: request.uri().to_owned(),
            headers: request
                .headers()
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .collect(),
        })
    }

    pub(crate) async fn size(&self, key: &ObjectKey) -> Result<u64, StorageError> {
        let head = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.s3_key(key))
            .send()
            .await
            .map_err(|e| {
                if e.as_service_error().is_some_and(|s| s.is_not_found()) {
                    StorageError::NotFound {
                        key: key.as_str().to_owned(),
                    }
                } else {
                    sdk_error("stat", key, e)
                }
            })?;
        Ok(head
            .content_length()
            .and_then(|len| u64::try_from(len).ok())
            .unwrap_or_default())
    }

    pub(crate) async fn delete(&self, key: &ObjectKey) -> Result<(), StorageError> {
        // DeleteObject succeeds for a missing key, which is what we want.
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.s3_key(key))
            .send()
            .await
            .map_err(|e| sdk_error("delete", key, e))?;
        Ok(())
    }

    pub(crate) async fn delete_prefix(&self, prefix: &ObjectKey) -> Result<(), StorageError> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(format!("{}/", self.s3_key(prefix)))
            .into_paginator()
            .send();
        let mut batch = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_error("listing a prefix", prefix, e))?;
            for object in page.contents() {
                if let Some(s3_key) = object.key() {
                    batch.push(
                        ObjectIdentifier::builder()
                            .key(s3_key)
                            .build()
                            .map_err(|e| StorageError::backend("delete prefix", e))?,
                    );
                }
            }
            while batch.len() >= Self::DELETE_BATCH {
                let rest = batch.split_off(Self::DELETE_BATCH);
                self.delete_batch(prefix, std::mem::replace(&mut batch, rest))
                    .await?;
            }
        }
        if !batch.is_empty() {
            self.delete_batch(prefix, batch).await?;
        }
        Ok(())
    }

    pub(crate) async fn list(&self, prefix: &ObjectKey) -> Result<Vec<StoredObject>, StorageError> {
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(format!("{}/", self.s3_key(prefix)))
            .into_paginator()
            .send();
        let mut listed = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_error("listing a prefix", prefix, e))?;
            listed.extend(page.contents().iter().filter_map(|o| self.stored_object(o)));
        }
        Ok(listed)
    }

    /// One page of at most `page_size` objects under `prefix/`, in key order,
    /// from where `continuation` (the previous page's token) left off; the
    /// token of the next page, if there is one.
    pub(crate) async fn list_page(
        &self,
        prefix: &ObjectKey,
        page_size: usize,
        continuation: Option<String>,
    ) -> Result<(Vec<StoredObject>, Option<String>), StorageError> {
        let page = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(format!("{}/", self.s3_key(prefix)))
            .max_keys(i32::try_from(page_size).unwrap_or(i32::MAX))
            .set_continuation_token(continuation)
            .send()
            .await
            .map_err(|e| sdk_error("listing a prefix", prefix, e))?;
        let listed = page
            .contents()
            .iter()
            .filter_map(|o| self.stored_object(o))
            .collect();
        let next = page
            .is_truncated()
            .unwrap_or(false)
            .then(|| page.next_continuation_token().map(str::to_owned))
            .flatten();
        Ok((listed, next))
    }

    fn stored_object(&self, object: &aws_sdk_s3::types::Object) -> Option<StoredObject> {
        // Keys this store did not write (not under its prefix, or not a
        // valid key) are none of its business.
        let key = object
            .key()
            .and_then(|k| k.strip_prefix(self.prefix.as_str()))
            .and_then(|k| ObjectKey::parse(k).ok())?;
        let modified = object
            .last_modified()
            .and_then(|at| std::time::SystemTime::try_from(*at).ok())
            .unwrap_or(std::time::SystemTime::UNIX_EPOCH);
        Some(StoredObject { key, modified })
    }

    async fn delete_batch(
        &self,
        prefix: &ObjectKey,
        objects: Vec<ObjectIdentifier>,
    ) -> Result<(), StorageError> {
        let delete = Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()
            .map_err(|e| StorageError::backend("delete prefix", e))?;
        let output = self
            .client
            .delete_objects()
            .bucket(&self.bucket)
            .delete(delete)
            .send()
            .await
            .map_err(|e| sdk_error("delete prefix", prefix, e))?;
        // DeleteObjects reports per-key failures in a successful response.
        if let Some(failed) = output.errors().first() {
            return Err(StorageError::backend(
                "delete prefix",
                format!(
                    "{} keys could not be deleted, first {:?}: {}",
                    output.errors().len(),
                    failed.key().unwrap_or_default(),
                    failed.message().unwrap_or_default()
                ),
            ));
        }
        Ok(())
    }

    pub(crate) async fn url(&self, key: &ObjectKey, ttl: Duration) -> Result<String, StorageError> {
        let presigning = PresigningConfig::expires_in(ttl)
            .map_err(|e| StorageError::backend("presigning a URL", e))?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.s3_key(key))
            .presigned(presigning)
            .await
            .map_err(|e| sdk_error("presigning a URL", key, e))?;
        Ok(request.uri().to_owned())
    }

    /// The bucket exists and the credentials may use it (`HeadBucket`).
    pub(crate) async fn check(&self) -> Result<(), StorageError> {
        let head = self.client.head_bucket().bucket(&self.bucket).send();
        match tokio::time::timeout(Self::CHECK_TIMEOUT, head).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(StorageError::backend(
                "readiness check",
                format!("bucket {:?}: {}", self.bucket, DisplayErrorContext(&e)),
            )),
            Err(_) => Err(StorageError::backend(
                "readiness check",
                format!(
                    "bucket {:?} did not answer within {:?}",
                    self.bucket,
                    Self::CHECK_TIMEOUT
                ),
            )),
        }
    }
}

/// A multipart upload that has been started. Aborted on drop unless finished,
/// so a cancelled upload (the request future dropped) does not leave parts
/// behind either.
struct PendingMultipart {
    client: Client,
    bucket: String,
    s3_key: String,
    upload_id: String,
    finished: bool,
}

impl PendingMultipart {
    async fn abort(&mut self) {
        self.finished = true;
        abort_multipart(
            self.client.clone(),
            self.bucket.clone(),
            self.s3_key.clone(),
            self.upload_id.clone(),
        )
        .await;
    }
}

impl Drop for PendingMultipart {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(abort_multipart(
                self.client.clone(),
                std::mem::take(&mut self.bucket),
                std::mem::take(&mut self.s3_key),
                std::mem::take(&mut self.upload_id),
            ));
        }
    }
}

async fn abort_multipart(client: Client, bucket: String, s3_key: String, upload_id: String) {
    let result = client
        .abort_multipart_upload()
        .bucket(&bucket)
        .key(&s3_key)
        .upload_id(&upload_id)
        .send()
        .await;
    if let Err(e) = result {
        // Nothing more can be done here; a bucket lifecycle rule for incomplete
        // multipart uploads is the backstop.
        tracing::warn!(
            bucket,
            key = s3_key,
            upload_id,
            error = %DisplayErrorContext(&e),
            "aborting a multipart upload failed"
        );
    }
}

/// Maps an SDK error: a missing key becomes [`StorageError::NotFound`],
/// anything else a backend error carrying the SDK's full explanation.
fn sdk_error<E, R>(operation: &'static str, key: &ObjectKey, err: SdkError<E, R>) -> StorageError
where
    E: ProvideErrorMetadata + Error + Send + Sync + 'static,
    R: Debug + Send + Sync + 'static,
{
    if matches!(err.code(), Some("NoSuchKey" | "NotFound")) {
        return StorageError::NotFound {
            key: key.as_str().to_owned(),
        };
    }
    StorageError::backend(operation, DisplayErrorContext(&err).to_string())
}
