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
        (
            "/api/videos/uploads",
            "post",
            &["201", "400", "401", "403", "429"],
        ),
        (
            "/api/videos/uploads/{upload_id}/complete",
            "post",
            &["201", "400", "401", "404", "409", "410"],
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

#[test]
fn the_document_declares_the_rules_the_server_enforces() {
    use anb_core::domain::{City, CityKey, Country, PersonName, VideoTitle};
    let doc: serde_json::Value = serde_json::from_str(&anb_api::openapi_json()).unwrap();
    // The text rules, as the domain checks them.
    let signup = &doc["components"]["schemas"]["SignupRequest"]["properties"];
    for (field, pattern) in [
        ("first_name", PersonName::pattern()),
        ("last_name", PersonName::pattern()),
        ("city", City::pattern()),
        ("country", Country::pattern()),
    ] {
        assert_eq!(signup[field]["pattern"], pattern, "{field}");
        assert_eq!(signup[field]["minLength"], 2, "{field}");
        assert_eq!(signup[field]["maxLength"], 50, "{field}");
    }
    let rankings = &doc["paths"]["/api/public/rankings"]["get"]["parameters"];
    let city = rankings
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "city")
        .unwrap();
    assert_eq!(city["schema"]["pattern"], CityKey::filter_pattern());

    // The upload form: its fields and no other, the title's rule, the key.
    let upload = &doc["paths"]["/api/videos/upload"]["post"];
    let form = &upload["requestBody"]["content"]["multipart/form-data"]["schema"];
    assert_eq!(form["additionalProperties"], false);
    let fields: Vec<&str> = form["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(fields, ["video_file", "title", "is_public"]);
    assert_eq!(form["required"], serde_json::json!(["video_file", "title"]));
    assert_eq!(form["properties"]["video_file"]["format"], "binary");
    assert_eq!(
        form["properties"]["title"]["pattern"],
        VideoTitle::pattern()
    );
    assert_eq!(form["properties"]["title"]["maxLength"], 100);
    assert_eq!(form["properties"]["is_public"]["type"], "boolean");
    let key = upload["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "Idempotency-Key")
        .expect("the Idempotency-Key header is declared");
    assert_eq!(key["in"], "header");
    assert_eq!(key["schema"]["maxLength"], 255);

    // The refusals of each operation.
    for status in ["403", "409", "422", "429"] {
        assert!(upload["responses"][status].is_object(), "upload {status}");
    }
    assert!(upload["responses"]["409"]["headers"]["Retry-After"].is_object());
    for path in ["/api/auth/signup", "/api/auth/login"] {
        assert!(
            doc["paths"][path]["post"]["responses"]["413"].is_object(),
            "{path} 413"
        );
    }
}
