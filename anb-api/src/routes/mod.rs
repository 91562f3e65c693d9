//! One module per resource of the API, each with its own `#[OpenApi]` impl.

use poem_openapi::Tags;
use time::{OffsetDateTime, UtcOffset};

pub mod auth;
pub mod health;
pub mod me;
pub mod media;
pub mod public;
pub mod videos;

/// Groups of operations in the document.
#[derive(Debug, Tags)]
pub enum ApiTags {
    /// Accounts, login and the caller's profile and votes.
    Auth,
    /// A player's own videos.
    Videos,
    /// The public showcase: published videos, votes, rankings.
    Public,
    /// Health, readiness and metrics.
    Operations,
}

/// Timestamps leave the API in UTC (RFC 3339 with `Z`).
pub(crate) fn utc(at: OffsetDateTime) -> OffsetDateTime {
    at.to_offset(UtcOffset::UTC)
}

/// Every documented resource, in document order.
pub type Apis = (
    auth::AuthApi,
    me::MeApi,
    videos::VideosApi,
    public::PublicApi,
    health::HealthApi,
);

/// The resources' values.
pub fn apis() -> Apis {
    (
        auth::AuthApi,
        me::MeApi,
        videos::VideosApi,
        public::PublicApi,
        health::HealthApi,
    )
}
