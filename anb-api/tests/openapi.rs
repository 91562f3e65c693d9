//! The checked-in OpenAPI document must match the one the code generates.

use std::path::PathBuf;

#[test]
fn checked_in_openapi_document_is_up_to_date() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../openapi/openapi.json");
    let generated = anb_api::openapi_json();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "openapi/openapi.json is out of date; refresh it with:\n  \
         UPDATE_OPENAPI=1 cargo test -p anb-api --test openapi"
    );
}

#[test]
fn document_is_openapi_3_with_the_health_operation() {
    let doc: serde_json::Value = serde_json::from_str(&anb_api::openapi_json()).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert!(doc["paths"]["/health"]["get"].is_object());
}

#[test]
fn every_contract_status_is_documented() {
    let doc: serde_json::Value = serde_json::from_str(&anb_api::openapi_json()).unwrap();
    let contract: &[(&str, &str, &[&str])] = &[
        ("/api/auth/signup", "post", &["201", "400"]),
        ("/api/auth/login", "post", &["200", "400", "401"]),
        ("/api/videos/upload", "post", &["201", "400", "401"]),
        ("/api/videos", "get", &["200", "401"]),
        (
            "/api/videos/{video_id}",
            "get",
            &["200", "401", "403", "404"],
        ),
        (
            "/api/videos/{video_id}",
            "delete",
            &["200", "400", "401", "403", "404"],
        ),
        ("/api/public/videos", "get", &["200", "400"]),
        (
            "/api/public/videos/{video_id}/vote",
            "post",
            &["200", "400", "401", "404", "429"],
        ),
        ("/api/public/rankings", "get", &["200", "400"]),
        ("/api/auth/me", "get", &["200", "401"]),
        ("/api/me/votes", "get", &["200", "401"]),
        (
            "/api/videos/{video_id}/publish",
            "post",
            &["200", "400", "401", "403", "404"],
        ),
        ("/ready", "get", &["200", "503"]),
        ("/metrics", "get", &["200"]),
    ];
    for (path, method, statuses) in contract {
        let operation = &doc["paths"][path][method];
        assert!(operation.is_object(), "{method} {path} is not documented");
        for status in *statuses {
            assert!(
                operation["responses"][status].is_object(),
                "{method} {path} does not document {status}"
            );
        }
        for (status, response) in operation["responses"].as_object().unwrap() {
            if status.starts_with('4') || status.starts_with('5') && status != "503" {
                assert!(
                    response["content"]["application/problem+json"].is_object(),
                    "{method} {path} {status} is not a problem document"
                );
            }
        }
    }
}
