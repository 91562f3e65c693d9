//! Security headers on every answer, and the cross-origin policy.
//!
//! - `X-Content-Type-Options: nosniff`: a browser never guesses a type (an
//!   uploaded file served as media is never run as a script or page);
//! - `Referrer-Policy: no-referrer`: signed media links carry their
//!   signature in the query, which must not leak to other sites;
//! - `Strict-Transport-Security` when the request came over HTTPS (directly,
//!   or through a trusted proxy's `X-Forwarded-Proto: https`);
//! - `Cache-Control: no-store` on everything about the caller (tokens,
//!   profile, own videos and votes), so no shared cache keeps it.
//!
//! Cross-origin requests are refused by browsers unless `ANB_CORS_ORIGINS`
//! names the origins of a front-end served elsewhere (none by default).

use std::net::IpAddr;

use ipnet::IpNet;
use poem::http::{HeaderValue, header};
use poem::{Endpoint, IntoResponse, Middleware, Request, Response};

/// One year, the usual HSTS lifetime.
const HSTS: &str = "max-age=31536000";

/// Paths whose answers are about the caller and must never be cached.
fn is_private(path: &str) -> bool {
    ["/api/auth/", "/api/me", "/api/videos"]
        .iter()
        .any(|prefix| path.starts_with(prefix))
}

/// The security headers middleware.
#[derive(Debug, Clone)]
pub struct SecurityHeaders {
    /// Peers whose `X-Forwarded-Proto` is believed.
    pub trusted_proxies: Vec<IpNet>,
}

impl<E: Endpoint> Middleware<E> for SecurityHeaders {
    type Output = SecurityHeadersEndpoint<E>;

    fn transform(&self, inner: E) -> Self::Output {
        SecurityHeadersEndpoint {
            inner,
            trusted_proxies: self.trusted_proxies.clone(),
        }
    }
}

/// [`SecurityHeaders`] around an endpoint.
#[derive(Debug)]
pub struct SecurityHeadersEndpoint<E> {
    inner: E,
    trusted_proxies: Vec<IpNet>,
}

impl<E> SecurityHeadersEndpoint<E> {
    /// Whether the client reached us over HTTPS.
    fn is_https(&self, req: &Request) -> bool {
        if req.scheme().as_str() == "https" {
            return true;
        }
        let from_trusted_proxy = req
            .remote_addr()
            .as_socket_addr()
            .map(|addr| addr.ip())
            .is_some_and(|peer: IpAddr| self.trusted_proxies.iter().any(|net| net.contains(&peer)));
        from_trusted_proxy
            && req
                .headers()
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
    }
}

impl<E: Endpoint> Endpoint for SecurityHeadersEndpoint<E> {
    type Output = Response;

    async fn call(&self, req: Request) -> poem::Result<Response> {
        let https = self.is_https(&req);
        let private = is_private(req.uri().path());
        // Errors become responses here so they carry the headers too.
        let mut response = match self.inner.call(req).await {
            Ok(output) => output.into_response(),
            Err(error) => crate::error::problem_response(error),
        };
        let headers = response.headers_mut();
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers
            .entry(header::REFERRER_POLICY)
            .or_insert(HeaderValue::from_static("no-referrer"));
        if https {
            headers.insert(
                header::STRICT_TRANSPORT_SECURITY,
                HeaderValue::from_static(HSTS),
            );
        }
        if private {
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        }
        Ok(response)
    }
}

/// The CORS policy for `origins` (from `ANB_CORS_ORIGINS`); `None` when no
/// origin is allowed, so no CORS header is ever sent.
pub fn cors(origins: &[String]) -> Option<poem::middleware::Cors> {
    if origins.is_empty() {
        return None;
    }
    Some(
        poem::middleware::Cors::new()
            .allow_origins(origins.iter().map(String::as_str))
            .allow_methods(["GET", "POST", "DELETE", "OPTIONS"])
            .allow_headers(["authorization", "content-type", "idempotency-key"])
            .expose_headers(["retry-after", "x-request-id"])
            .max_age(600),
    )
}

/// Parses `ANB_CORS_ORIGINS`: comma-separated origins such as
/// `https://app.example.com` (scheme, host, optional port; nothing else).
pub fn parse_origins(
    var: &'static str,
    raw: &str,
) -> Result<Vec<String>, anb_core::config::ConfigError> {
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|origin| {
            let invalid = |reason: &str| anb_core::config::ConfigError::Invalid {
                var,
                reason: format!("{origin:?}: {reason} (expected e.g. https://app.example.com)"),
            };
            let (scheme, rest) = origin
                .split_once("://")
                .ok_or_else(|| invalid("no scheme"))?;
            if !matches!(scheme, "http" | "https") {
                return Err(invalid("the scheme must be http or https"));
            }
            if rest.is_empty() || rest.contains(['/', '?', '#', '*', ' ']) {
                return Err(invalid("an origin is a scheme and a host, with no path"));
            }
            Ok(origin.trim_end_matches('/').to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_parse_and_bad_ones_name_the_variable() {
        assert_eq!(
            parse_origins(
                "ANB_CORS_ORIGINS",
                "https://a.example, http://localhost:5173"
            )
            .unwrap(),
            ["https://a.example", "http://localhost:5173"]
        );
        assert!(parse_origins("ANB_CORS_ORIGINS", "").unwrap().is_empty());
        for bad in ["*", "a.example", "ftp://a.example", "https://a.example/app"] {
            let error = parse_origins("ANB_CORS_ORIGINS", bad).unwrap_err();
            assert!(error.to_string().starts_with("ANB_CORS_ORIGINS"), "{error}");
        }
    }
}
