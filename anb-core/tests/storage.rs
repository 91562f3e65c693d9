//! One behaviour suite for both stores: S3 against the S3-compatible server at
//! `ANB_TEST_AWS_ENDPOINT` (a fresh bucket per test), and a local directory (a
//! fresh temporary directory per test). Backend-specific behaviour (presigned
//! URLs over HTTP, signed local paths, prefixes) follows the shared suite.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use anb_core::config::StorageUrl;
use anb_core::storage::{LocalStorage, ObjectKey, S3Storage, Storage, StorageError, VideoKeys};
use aws_sdk_s3::Client;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const MIB: u64 = 1024 * 1024;
const URL_SECRET: &[u8] = b"test secret for media urls, 32+ bytes";

// ---------------------------------------------------------------------------
// Test stores

enum Backend {
    S3 {
        client: Client,
        bucket: String,
    },
    Local {
        _dir: tempfile::TempDir,
        root: std::path::PathBuf,
    },
}

struct TestStore {
    storage: Storage,
    backend: Backend,
}

fn aws_endpoint() -> String {
    std::env::var("ANB_TEST_AWS_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:4566".to_owned())
}

async fn test_sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(aws_endpoint())
        .credentials_provider(aws_sdk_s3::config::Credentials::new(
            "test",
            "test",
            None,
            None,
            "anb-tests",
        ))
        .load()
        .await
}

fn unique_bucket() -> String {
    format!("anb-test-{}", uuid::Uuid::new_v4().simple())
}

impl TestStore {
    /// A store on a new, empty bucket. Fails loudly when the server is not there.
    async fn s3() -> Self {
        Self::s3_with_prefix("").await
    }

    async fn s3_with_prefix(prefix: &str) -> Self {
        let sdk_config = test_sdk_config().await;
        let bucket = unique_bucket();
        let store = S3Storage::from_sdk_config(&sdk_config, &bucket, prefix, true);
        let client = store.client().clone();
        let created = tokio::time::timeout(
            Duration::from_secs(60),
            client.create_bucket().bucket(&bucket).send(),
        )
        .await;
        match created {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!(
                "cannot create a bucket on the S3-compatible server at {} (set ANB_TEST_AWS_ENDPOINT \
                 or start one, e.g. moto_server -H 127.0.0.1 -p 4566): {}",
                aws_endpoint(),
                aws_sdk_s3::error::DisplayErrorContext(&e)
            ),
            Err(_) => panic!(
                "the S3-compatible server at {} did not answer within 60 s",
                aws_endpoint()
            ),
        }
        Self {
            storage: Storage::S3(store),
            backend: Backend::S3 { client, bucket },
        }
    }

    async fn local() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("media");
        let storage = Storage::from_url(&StorageUrl::Local(root.clone()), false, URL_SECRET)
            .await
            .unwrap();
        Self {
            storage,
            backend: Backend::Local { _dir: dir, root },
        }
    }

    /// Everything the store holds, sorted: object keys as stored, plus for S3
    /// any multipart upload still in progress and for a local store any file
    /// at all (including work files) under the root.
    async fn contents(&self) -> Vec<String> {
        let mut found = Vec::new();
        match &self.backend {
            Backend::S3 { client, bucket } => {
                let listed = client
                    .list_objects_v2()
                    .bucket(bucket)
                    .send()
                    .await
                    .unwrap();
                found.extend(
                    listed
                        .contents()
                        .iter()
                        .filter_map(|o| o.key().map(str::to_owned)),
                );
                let uploads = client
                    .list_multipart_uploads()
                    .bucket(bucket)
                    .send()
                    .await
                    .unwrap();
                found.extend(
                    uploads
                        .uploads()
                        .iter()
                        .map(|u| format!("multipart upload in progress: {:?}", u.key())),
                );
            }
            Backend::Local { root, .. } => collect_files(root, root, &mut found),
        }
        found.sort();
        found
    }
}

fn collect_files(root: &Path, dir: &Path, found: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_files(root, &path, found);
        } else {
            found.push(
                path.strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
}

fn key(raw: &str) -> ObjectKey {
    ObjectKey::parse(raw).unwrap()
}

// ---------------------------------------------------------------------------
// Bodies that are generated and checked on the fly, never held in memory

/// A deterministic pseudo-random body of `len` bytes, handed out in chunks of
/// at most `chunk` bytes (like a network stream), that counts what was read
/// and can fail after `fail_after` bytes.
struct GeneratedBody {
    remaining: u64,
    chunk: usize,
    state: u64,
    consumed: Arc<AtomicU64>,
    fail_after: Option<u64>,
    stall_after: Option<(u64, Arc<tokio::sync::Notify>)>,
}

impl GeneratedBody {
    fn new(len: u64, seed: u64) -> Self {
        Self {
            remaining: len,
            chunk: 64 * 1024,
            state: seed | 1,
            consumed: Arc::new(AtomicU64::new(0)),
            fail_after: None,
            stall_after: None,
        }
    }

    fn failing_after(mut self, bytes: u64) -> Self {
        self.fail_after = Some(bytes);
        self
    }

    /// After `bytes`, the body signals `stalled` and then never yields again,
    /// like a client that stops sending.
    fn stalling_after(mut self, bytes: u64, stalled: Arc<tokio::sync::Notify>) -> Self {
        self.stall_after = Some((bytes, stalled));
        self
    }

    fn consumed(&self) -> Arc<AtomicU64> {
        self.consumed.clone()
    }

    fn next_byte(&mut self) -> u8 {
        // xorshift64: cheap and reproducible.
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        (self.state >> 56) as u8
    }
}

impl AsyncRead for GeneratedBody {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let consumed = self.consumed.load(Ordering::SeqCst);
        if self.fail_after.is_some_and(|limit| consumed >= limit) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "client went away",
            )));
        }
        if let Some((limit, stalled)) = &self.stall_after
            && consumed >= *limit
        {
            // Never woken again: the upload waits here until it is dropped.
            stalled.notify_one();
            return Poll::Pending;
        }
        let n = (self.remaining.min(self.chunk as u64) as usize).min(buf.remaining());
        let chunk: Vec<u8> = (0..n).map(|_| self.next_byte()).collect();
        buf.put_slice(&chunk);
        self.remaining -= n as u64;
        self.consumed.fetch_add(n as u64, Ordering::SeqCst);
        Poll::Ready(Ok(()))
    }
}

/// Length and SHA-256 of what a generated body yields.
fn digest_of(len: u64, seed: u64) -> (u64, Vec<u8>) {
    let mut body = GeneratedBody::new(len, seed);
    let mut hasher = Sha256::new();
    let mut left = len;
    while left > 0 {
        let n = left.min(64 * 1024);
        let chunk: Vec<u8> = (0..n).map(|_| body.next_byte()).collect();
        hasher.update(&chunk);
        left -= n;
    }
    (len, hasher.finalize().to_vec())
}

/// A writer that keeps only the length and SHA-256 of what it is given.
#[derive(Default)]
struct DigestWriter {
    len: u64,
    hasher: Sha256,
}

impl DigestWriter {
    fn finish(self) -> (u64, Vec<u8>) {
        (self.len, self.hasher.finalize().to_vec())
    }
}

impl AsyncWrite for DigestWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.hasher.update(buf);
        self.len += buf.len() as u64;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

async fn stored_digest(storage: &Storage, key: &ObjectKey) -> (u64, Vec<u8>) {
    let mut writer = DigestWriter::default();
    let copied = storage.download(key, &mut writer).await.unwrap();
    let digest = writer.finish();
    assert_eq!(copied, digest.0);
    digest
}

fn file_digest(path: &Path) -> (u64, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap();
    (bytes.len() as u64, Sha256::digest(&bytes).to_vec())
}

// ---------------------------------------------------------------------------
// The shared suite

macro_rules! storage_suite {
    ($($test:ident),* $(,)?) => {
        mod s3 {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::TestStore::s3().await).await;
                }
            )*
        }
        mod local {
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(super::TestStore::local().await).await;
                }
            )*
        }
    };
}

storage_suite!(
    a_20_mib_body_streamed_in_small_chunks_round_trips,
    a_small_body_round_trips_and_a_second_upload_replaces_it,
    an_oversized_body_is_cut_off_and_nothing_is_kept,
    an_oversized_small_body_is_refused_and_nothing_is_kept,
    a_body_that_breaks_off_leaves_nothing,
    an_upload_dropped_half_way_leaves_nothing,
    a_body_of_exactly_two_parts_round_trips,
    deleting_is_idempotent_and_missing_keys_are_not_found,
    deleting_a_video_folder_removes_only_that_video,
    a_key_below_an_object_is_simply_missing,
    the_readiness_check_passes_on_a_working_store,
    listing_gives_the_objects_under_a_prefix_with_their_times,
);

async fn a_20_mib_body_streamed_in_small_chunks_round_trips(store: TestStore) {
    let storage = &store.storage;
    let key = VideoKeys::new(uuid::Uuid::new_v4()).original();
    let len = 20 * MIB;

    let stored = storage
        .upload(&key, GeneratedBody::new(len, 42), 100 * MIB)
        .await
        .unwrap();
    assert_eq!(stored, len);
    assert_eq!(storage.size(&key).await.unwrap(), len);
    assert!(storage.exists(&key).await.unwrap());

    let expected = digest_of(len, 42);
    assert_eq!(stored_digest(storage, &key).await, expected);

    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("original.mp4");
    assert_eq!(storage.download_to_file(&key, &dest).await.unwrap(), len);
    assert_eq!(file_digest(&dest), expected);
    // Only the finished file is there: no temporary left beside it.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    let opened = storage.open(&key).await.unwrap();
    assert_eq!(opened.content_length, len);
    assert_eq!(opened.content_type, "video/mp4");

    assert_eq!(
        store.contents().await.len(),
        1,
        "{:?}",
        store.contents().await
    );
}

async fn a_small_body_round_trips_and_a_second_upload_replaces_it(store: TestStore) {
    let storage = &store.storage;
    let key = key("videos/small/thumbnail.jpg");

    let first = b"first version of a small object".to_vec();
    assert_eq!(
        storage.upload(&key, &first[..], 1024).await.unwrap(),
        first.len() as u64
    );
    let mut read_back = Vec::new();
    storage.download(&key, &mut read_back).await.unwrap();
    assert_eq!(read_back, first);

    let second = b"second".to_vec();
    storage.upload(&key, &second[..], 1024).await.unwrap();
    let mut read_back = Vec::new();
    storage.download(&key, &mut read_back).await.unwrap();
    assert_eq!(read_back, second);
    assert_eq!(storage.size(&key).await.unwrap(), second.len() as u64);

    let opened = storage.open(&key).await.unwrap();
    assert_eq!(opened.content_type, "image/jpeg");

    // An empty body is a valid (empty) object.
    let empty = self::key("videos/small/empty.bin");
    assert_eq!(storage.upload(&empty, &b""[..], 1024).await.unwrap(), 0);
    assert_eq!(storage.size(&empty).await.unwrap(), 0);
}

async fn an_oversized_body_is_cut_off_and_nothing_is_kept(store: TestStore) {
    let storage = &store.storage;
    let key = key("videos/too-big/original.mp4");
    let limit = 12 * MIB; // more than one S3 part, so the multipart path is cut off
    let body = GeneratedBody::new(200 * MIB, 7);
    let consumed = body.consumed();

    let err = storage.upload(&key, body, limit).await.unwrap_err();
    assert!(
        matches!(err, StorageError::TooLarge { limit: l } if l == limit),
        "{err:?}"
    );
    let read = consumed.load(Ordering::SeqCst);
    assert!(
        read <= limit + 1,
        "read {read} bytes of a body over the {limit}-byte limit: it should stop at the first extra byte"
    );
    assert!(!storage.exists(&key).await.unwrap());
    assert_eq!(store.contents().await, Vec::<String>::new());
}

async fn an_oversized_small_body_is_refused_and_nothing_is_kept(store: TestStore) {
    let storage = &store.storage;
    let key = key("videos/small-but-over/original.mp4");
    let err = storage
        .upload(&key, &[1u8; 5000][..], 4999)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StorageError::TooLarge { limit: 4999 }),
        "{err:?}"
    );
    // Exactly at the limit is fine.
    assert_eq!(
        storage.upload(&key, &[1u8; 4999][..], 4999).await.unwrap(),
        4999
    );
    storage.delete(&key).await.unwrap();
    assert_eq!(store.contents().await, Vec::<String>::new());
}

async fn a_body_that_breaks_off_leaves_nothing(store: TestStore) {
    let storage = &store.storage;
    let key = key("videos/broken/original.mp4");
    let body = GeneratedBody::new(30 * MIB, 9).failing_after(10 * MIB);
    let err = storage.upload(&key, body, 100 * MIB).await.unwrap_err();
    assert!(
        matches!(&err, StorageError::Body(io) if io.kind() == io::ErrorKind::ConnectionReset),
        "{err:?}"
    );
    assert!(!storage.exists(&key).await.unwrap());
    assert_eq!(store.contents().await, Vec::<String>::new());
}

async fn an_upload_dropped_half_way_leaves_nothing(store: TestStore) {
    let key = key("videos/abandoned/original.mp4");
    let stalled = Arc::new(tokio::sync::Notify::new());
    let body = GeneratedBody::new(30 * MIB, 5).stalling_after(10 * MIB, stalled.clone());
    let storage = store.storage.clone();
    let upload = tokio::spawn(async move { storage.upload(&key, body, 100 * MIB).await });
    tokio::time::timeout(Duration::from_secs(120), stalled.notified())
        .await
        .expect("the upload never read 10 MiB of its body");
    // What happens to a request handler when its connection or task goes away.
    upload.abort();
    assert!(upload.await.unwrap_err().is_cancelled());

    // A local store cleans up at once; S3 sends its abort from a spawned task,
    // so give it (boundedly) time to land.
    for _ in 0..150 {
        if store.contents().await.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "left behind after the upload was dropped: {:?}",
        store.contents().await
    );
}

async fn a_body_of_exactly_two_parts_round_trips(store: TestStore) {
    // The end of the body falls exactly on a part boundary.
    let len = 2 * S3Storage::DEFAULT_PART_SIZE as u64;
    let key = key("videos/boundary/original.mp4");
    let stored = store
        .storage
        .upload(&key, GeneratedBody::new(len, 11), len)
        .await
        .unwrap();
    assert_eq!(stored, len);
    assert_eq!(
        stored_digest(&store.storage, &key).await,
        digest_of(len, 11)
    );
}

async fn deleting_is_idempotent_and_missing_keys_are_not_found(store: TestStore) {
    let storage = &store.storage;
    let key = key("videos/doomed/processed.mp4");
    storage.upload(&key, &b"data"[..], 1024).await.unwrap();
    storage.delete(&key).await.unwrap();
    assert!(!storage.exists(&key).await.unwrap());
    storage.delete(&key).await.unwrap();

    let not_found = |result: Result<_, StorageError>| {
        let err = result.expect_err("a missing key must fail");
        assert!(
            matches!(&err, StorageError::NotFound { key } if key == "videos/doomed/processed.mp4"),
            "{err:?}"
        );
    };
    not_found(storage.size(&key).await.map(drop));
    not_found(storage.open(&key).await.map(drop));
    not_found(storage.download(&key, &mut Vec::new()).await.map(drop));
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("never.mp4");
    not_found(storage.download_to_file(&key, &dest).await.map(drop));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    assert_eq!(store.contents().await, Vec::<String>::new());
}

async fn deleting_a_video_folder_removes_only_that_video(store: TestStore) {
    let storage = &store.storage;
    let doomed = VideoKeys::new(uuid::Uuid::new_v4());
    let kept = VideoKeys::new(uuid::Uuid::new_v4());
    for key in doomed.all() {
        storage.upload(&key, &b"bytes"[..], 1024).await.unwrap();
    }
    storage
        .upload(&kept.original(), &b"bytes"[..], 1024)
        .await
        .unwrap();

    storage.delete_prefix(doomed.folder()).await.unwrap();
    for key in doomed.all() {
        assert!(!storage.exists(&key).await.unwrap(), "{key}");
    }
    assert!(storage.exists(&kept.original()).await.unwrap());
    assert_eq!(
        store.contents().await.len(),
        1,
        "{:?}",
        store.contents().await
    );

    // Nothing left to delete is not an error.
    storage.delete_prefix(doomed.folder()).await.unwrap();
}

async fn listing_gives_the_objects_under_a_prefix_with_their_times(store: TestStore) {
    let storage = &store.storage;
    let videos = ObjectKey::parse("videos").unwrap();
    assert!(storage.list(&videos).await.unwrap().is_empty());
    let before = SystemTime::now() - Duration::from_secs(60);
    let one = VideoKeys::new(uuid::Uuid::new_v4());
    let two = VideoKeys::new(uuid::Uuid::new_v4());
    for key in [one.original(), one.thumbnail(), two.original()] {
        storage.upload(&key, &b"bytes"[..], 1024).await.unwrap();
    }
    // Not under the prefix: not listed.
    let elsewhere = ObjectKey::parse("exports/videos.json").unwrap();
    storage.upload(&elsewhere, &b"{}"[..], 1024).await.unwrap();

    let listed = storage.list(&videos).await.unwrap();
    let mut keys: Vec<String> = listed.iter().map(|o| o.key.to_string()).collect();
    keys.sort();
    let mut expected = vec![
        one.original().to_string(),
        one.thumbnail().to_string(),
        two.original().to_string(),
    ];
    expected.sort();
    assert_eq!(keys, expected);
    let after = SystemTime::now() + Duration::from_secs(60);
    for object in &listed {
        assert!(
            (before..after).contains(&object.modified),
            "{}: {:?}",
            object.key,
            object.modified
        );
    }
    // One folder only.
    assert_eq!(storage.list(one.folder()).await.unwrap().len(), 2);
}

async fn a_key_below_an_object_is_simply_missing(store: TestStore) {
    // On S3 keys are flat; on disk "a/b.mp4/c" would go through a file.
    let storage = &store.storage;
    let object = key("videos/flat/original.mp4");
    let below = key("videos/flat/original.mp4/thumbnail.jpg");
    storage.upload(&object, &b"bytes"[..], 1024).await.unwrap();

    assert!(!storage.exists(&below).await.unwrap());
    assert!(matches!(
        storage.open(&below).await,
        Err(StorageError::NotFound { .. })
    ));
    storage.delete(&below).await.unwrap();
    // Deleting "under" an object's key removes what is under it, not the object.
    storage.delete_prefix(&object).await.unwrap();
    assert!(storage.exists(&object).await.unwrap());
}

async fn the_readiness_check_passes_on_a_working_store(store: TestStore) {
    store.storage.check().await.unwrap();
}

// ---------------------------------------------------------------------------
// S3 only

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

#[tokio::test]
async fn s3_presigned_url_is_playable_over_http() {
    let store = TestStore::s3().await;
    let key = key("videos/shared/processed.mp4");
    let content = b"a processed video".to_vec();
    store
        .storage
        .upload(&key, &content[..], 1024)
        .await
        .unwrap();

    let url = store
        .storage
        .url(&key, Duration::from_secs(600))
        .await
        .unwrap();
    assert!(url.starts_with(&aws_endpoint()), "{url}");
    assert!(url.contains("X-Amz-Signature="), "{url}");
    assert!(url.contains("X-Amz-Expires=600"), "{url}");

    let response = http_client().get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap().as_ref(), &content[..]);
}

#[tokio::test]
async fn s3_url_lifetime_is_bounded() {
    let store = TestStore::s3().await;
    let url = store
        .storage
        .url(
            &key("videos/x/processed.mp4"),
            Duration::from_secs(365 * 24 * 3600),
        )
        .await
        .unwrap();
    assert!(url.contains("X-Amz-Expires=604800"), "{url}");
}

#[tokio::test]
async fn s3_large_bodies_go_up_in_parts() {
    let store = TestStore::s3().await;
    let Backend::S3 { client, bucket } = &store.backend else {
        unreachable!()
    };
    let key = key("videos/parts/original.mp4");
    store
        .storage
        .upload(&key, GeneratedBody::new(20 * MIB, 3), 100 * MIB)
        .await
        .unwrap();
    let head = client
        .head_object()
        .bucket(bucket)
        .key(key.as_str())
        .send()
        .await
        .unwrap();
    // A multipart object's ETag ends in "-{number of parts}": 8 + 8 + 4 MiB.
    let etag = head.e_tag().unwrap();
    assert!(etag.trim_matches('"').ends_with("-3"), "{etag}");
    assert_eq!(head.content_type(), Some("video/mp4"));
}

#[tokio::test]
async fn s3_keys_are_stored_under_the_configured_prefix() {
    let store = TestStore::s3_with_prefix("/tenant/media/").await;
    let keys = VideoKeys::new(uuid::Uuid::new_v4());
    store
        .storage
        .upload(&keys.original(), &b"bytes"[..], 1024)
        .await
        .unwrap();
    assert_eq!(
        store.contents().await,
        vec![format!("tenant/media/{}", keys.original())]
    );
    // Listed as the store's own keys, without the prefix.
    let listed = store.storage.list(keys.folder()).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].key, keys.original());
    store.storage.delete_prefix(keys.folder()).await.unwrap();
    assert_eq!(store.contents().await, Vec::<String>::new());
}

#[tokio::test]
async fn s3_readiness_check_fails_for_a_missing_bucket() {
    let sdk_config = test_sdk_config().await;
    let storage = Storage::S3(S3Storage::from_sdk_config(
        &sdk_config,
        &unique_bucket(),
        "",
        true,
    ));
    let err = storage.check().await.unwrap_err();
    assert!(matches!(err, StorageError::Backend { .. }), "{err:?}");
}

// ---------------------------------------------------------------------------
// Local only

/// Splits a signed local media path into key, expiry and signature.
fn parse_signed_path(url: &str) -> (ObjectKey, u64, String) {
    let rest = url.strip_prefix("/media/").expect(url);
    let (key, query) = rest.split_once('?').expect(url);
    let mut expires = None;
    let mut sig = None;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("expires", v)) => expires = Some(v.parse().unwrap()),
            Some(("sig", v)) => sig = Some(v.to_owned()),
            _ => panic!("unexpected query parameter in {url}"),
        }
    }
    (
        ObjectKey::parse(key).unwrap(),
        expires.unwrap(),
        sig.unwrap(),
    )
}

#[tokio::test]
async fn local_signed_url_verifies_until_it_expires_and_rejects_tampering() {
    let store = TestStore::local().await;
    let local = store.storage.as_local().unwrap();
    let key = key("videos/played/processed.mp4");
    store
        .storage
        .upload(&key, &b"moving pictures"[..], 1024)
        .await
        .unwrap();

    let before = SystemTime::now();
    let url = store
        .storage
        .url(&key, Duration::from_secs(300))
        .await
        .unwrap();
    let (signed_key, expires, sig) = parse_signed_path(&url);
    assert_eq!(signed_key, key);
    let now_secs = before
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        (now_secs + 299..=now_secs + 301).contains(&expires),
        "{url}"
    );

    local
        .verify(&key, expires, &sig, SystemTime::now())
        .unwrap();

    let at = |secs: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
    assert!(matches!(
        local.verify(&key, expires, &sig, at(expires)),
        Err(StorageError::UrlExpired)
    ));
    assert!(matches!(
        local.verify(&key, expires + 3600, &sig, SystemTime::now()),
        Err(StorageError::UrlSignatureInvalid)
    ));
    let other = self::key("videos/played/original.mp4");
    assert!(matches!(
        local.verify(&other, expires, &sig, SystemTime::now()),
        Err(StorageError::UrlSignatureInvalid)
    ));
    let mut tampered = sig.clone().into_bytes();
    tampered[0] = if tampered[0] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for bad in [tampered.as_str(), "", "not base64!"] {
        assert!(matches!(
            local.verify(&key, expires, bad, SystemTime::now()),
            Err(StorageError::UrlSignatureInvalid)
        ));
    }

    // A store with another secret does not accept this store's URLs.
    let dir = tempfile::tempdir().unwrap();
    let stranger = LocalStorage::open(dir.path(), b"another secret entirely, 32+ bytes")
        .await
        .unwrap();
    assert!(
        stranger
            .verify(&key, expires, &sig, SystemTime::now())
            .is_err()
    );

    // What the media route serves: the file, with its length and type.
    let path = local.file_path(&key).await.unwrap();
    assert_eq!(std::fs::read(path).unwrap(), b"moving pictures");
    let opened = store.storage.open(&key).await.unwrap();
    assert_eq!(opened.content_length, 15);
    assert_eq!(opened.content_type, "video/mp4");
    assert!(matches!(
        local.file_path(&other).await,
        Err(StorageError::NotFound { .. })
    ));
}

#[tokio::test]
async fn local_store_creates_its_root_and_fails_the_check_when_it_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("nested/media");
    let storage = Storage::from_url(&StorageUrl::Local(root.clone()), false, URL_SECRET)
        .await
        .unwrap();
    storage.check().await.unwrap();
    assert!(root.is_dir());
    std::fs::remove_dir_all(&root).unwrap();
    assert!(matches!(
        storage.check().await,
        Err(StorageError::Backend { .. })
    ));
}
