//! The web app: plain ES modules, CSS and one HTML shell from `web/`,
//! embedded into the binary at compile time and served beside the API.
//!
//! Every asset lives under `/assets/{version}/…`, where the version is a
//! hash of all the embedded files: a new build gets new URLs, so assets can
//! be cached for a year while the HTML shell (which names the version) is
//! revalidated on every visit. Modules import each other by relative path,
//! so they stay inside one version. Each page of the app is a path of its
//! own that answers with the shell; the app's router takes it from there.

use std::sync::OnceLock;

use poem::http::{HeaderValue, Method, StatusCode, header};
use poem::web::Path;
use poem::{Endpoint, EndpointExt, IntoResponse, Response, Route, get, handler};
use rust_embed::Embed;
use sha2::{Digest, Sha256};

use crate::error::{ApiError, ErrorCode};

#[derive(Debug, Embed)]
#[folder = "web/"]
struct WebFiles;

/// The paths the app declares: each answers with the HTML shell.
pub const PAGES: &[&str] = &[
    "/",
    "/registro",
    "/ingresar",
    "/mis-videos",
    "/subir",
    "/galeria",
    "/rankings",
];

/// Scripts only from this origin, no inline script, no framing; images and
/// videos also from HTTPS object storage (presigned URLs in production), and
/// requests to it too (a direct upload's presigned `PUT`).
const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' https: data:; media-src 'self' https:; \
     connect-src 'self' https:; object-src 'none'; base-uri 'none'; form-action 'self'; \
     frame-ancestors 'none'";

const HTML_SHELL: &str = "index.html";
const VERSION_PLACEHOLDER: &str = "{{ASSETS}}";

/// The embedded app, prepared once.
#[derive(Debug)]
struct WebApp {
    /// Hex prefix of a hash over every file's path and content.
    version: String,
    /// The shell with asset URLs filled in.
    shell: String,
}

fn web_app() -> &'static WebApp {
    static APP: OnceLock<WebApp> = OnceLock::new();
    APP.get_or_init(|| {
        let mut paths: Vec<_> = WebFiles::iter().collect();
        paths.sort();
        let mut hasher = Sha256::new();
        for path in &paths {
            let file = WebFiles::get(path).expect("an embedded file listed by iter()");
            hasher.update(path.as_bytes());
            hasher.update(file.metadata.sha256_hash());
        }
        let digest = hasher.finalize();
        let version: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        let shell = WebFiles::get(HTML_SHELL).expect("web/index.html is embedded");
        let shell = String::from_utf8_lossy(&shell.data)
            .replace(VERSION_PLACEHOLDER, &format!("/assets/{version}"));
        WebApp { version, shell }
    })
}

/// The version in the asset URLs of this build.
pub fn assets_version() -> &'static str {
    &web_app().version
}

/// Adds the app's routes to `route` (all but `/`: see [`with_root_page`]).
pub fn routes(route: Route) -> Route {
    PAGES
        .iter()
        .filter(|page| **page != "/")
        .fold(route, |route, page| route.at(*page, get(page_shell)))
        .at("/assets/:version/*path", get(versioned_asset))
}

/// Answers `GET /` with the app's shell. The API is nested at the root, and
/// a nested root takes `/` before any route added beside it, so the landing
/// page is picked out in front of the router.
pub fn with_root_page<E>(ep: E) -> impl Endpoint<Output = Response>
where
    E: Endpoint<Output = Response> + 'static,
{
    ep.around(|ep, req| async move {
        if req.uri().path() == "/" && matches!(*req.method(), Method::GET | Method::HEAD) {
            return Ok(shell_response());
        }
        ep.call(req).await
    })
}

/// Headers every response of the app carries.
fn with_app_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

#[handler]
fn page_shell() -> Response {
    shell_response()
}

fn shell_response() -> Response {
    with_app_headers(
        Response::builder()
            .content_type("text/html; charset=utf-8")
            .header(header::CACHE_CONTROL, "no-cache")
            .body(web_app().shell.clone()),
    )
}

#[handler]
fn versioned_asset(Path((version, path)): Path<(String, String)>) -> Response {
    let app = web_app();
    let file = (version == app.version)
        .then(|| WebFiles::get(&path))
        .flatten()
        .filter(|_| path != HTML_SHELL);
    let Some(file) = file else {
        return ApiError::not_found(ErrorCode::NotFound, "Recurso no encontrado.").into_response();
    };
    let content_type = file.metadata.mimetype();
    let content_type = match content_type {
        // Modules must be served as JavaScript; say the charset for text.
        "text/javascript" | "application/javascript" => "text/javascript; charset=utf-8",
        "text/css" => "text/css; charset=utf-8",
        other => other,
    };
    with_app_headers(
        Response::builder()
            .status(StatusCode::OK)
            .content_type(content_type)
            .header(header::CACHE_CONTROL, "public, max-age=31536000, immutable")
            .body(file.data.into_owned()),
    )
}
