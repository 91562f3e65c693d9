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
