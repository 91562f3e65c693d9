//! One module per resource of the API, each with its own `#[OpenApi]` impl.

use poem_openapi::Tags;
use time::{OffsetDateTime, UtcOffset};

pub mod auth;
pub mod direct_uploads;
pub mod health;
pub mod json;
pub mod me;
pub mod media;
pub mod params;
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
    direct_uploads::DirectUploadsApi,
    public::PublicApi,
    health::HealthApi,
);

/// The resources' values.
pub fn apis() -> Apis {
    (
        auth::AuthApi,
        me::MeApi,
        videos::VideosApi,
        direct_uploads::DirectUploadsApi,
        public::PublicApi,
        health::HealthApi,
    )
}

/// The methods the resource at `path` answers, for the `Allow` header of a
/// 405 (RFC 9110 §15.5.6): read from the OpenAPI document, so it is exactly
/// what the document declares (plus `HEAD`, which poem answers wherever
/// `GET` is). `None` when no route matches.
pub fn allowed_methods(path: &str) -> Option<&'static str> {
    use std::sync::OnceLock;
    type Routes = Vec<(Vec<String>, String)>;
    static ROUTES: OnceLock<Routes> = OnceLock::new();
    let routes = ROUTES.get_or_init(|| {
        let spec: serde_json::Value = serde_json::from_str(&crate::api_service().spec())
            .expect("the generated document is JSON");
        let mut routes: Routes = Vec::new();
        for (template, operations) in spec["paths"].as_object().into_iter().flatten() {
            let mut methods: Vec<String> = operations
                .as_object()
                .into_iter()
                .flatten()
                .map(|(method, _)| method.to_uppercase())
                .collect();
            if methods.iter().any(|m| m == "GET") {
                methods.push("HEAD".to_owned());
            }
            let segments = template.split('/').map(str::to_owned).collect();
            routes.push((segments, methods.join(", ")));
        }
        routes.push((
            vec![String::new(), "openapi.json".into()],
            "GET, HEAD".into(),
        ));
        // A direct upload's file with local storage (not in the document).
        routes.push((
            "/api/videos/uploads/{upload_id}/content"
                .split('/')
                .map(str::to_owned)
                .collect(),
            "PUT".into(),
        ));
        routes
    });
    if path.starts_with("/media/") || path == "/docs" || path.starts_with("/docs/") {
        return Some("GET, HEAD");
    }
    let segments: Vec<&str> = path.split('/').collect();
    let is_parameter = |t: &str| t.starts_with('{') && t.ends_with('}');
    // `/api/videos/uploads` matches `/api/videos/{video_id}` too: as in the
    // router, the template with the most literal segments wins.
    routes
        .iter()
        .filter(|(template, _)| {
            template.len() == segments.len()
                && template
                    .iter()
                    .zip(&segments)
                    .all(|(t, s)| t == s || (is_parameter(t) && !s.is_empty()))
        })
        .max_by_key(|(template, _)| template.iter().filter(|t| !is_parameter(t)).count())
        .map(|(_, methods)| methods.as_str())
}
