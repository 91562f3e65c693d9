//! The API over real HTTP: one test binary, one module per resource.
//!
//! By default the app runs on the embedded default (SQLite, its SQL queue,
//! local storage); the `*_on_postgres_and_s3` tests run the main flows on
//! PostgreSQL (ANB_TEST_POSTGRES_URL) and an S3-compatible server
//! (ANB_TEST_AWS_ENDPOINT), and `outbox` puts the queue on SQS (the same
//! server) or Redis (ANB_TEST_REDIS_URL); they fail if those are unreachable.

mod auth;
mod broker;
mod crafted_mp4;
mod direct_upload;
mod fixtures;
mod harness;
mod hostile;
mod ops;
mod outage;
mod outbox;
mod public;
mod security_headers;
mod transport;
mod upload;
mod upload_policy;
mod videos;
mod web;
