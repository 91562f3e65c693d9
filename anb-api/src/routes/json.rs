//! The JSON request body of every operation: parsed strictly against the
//! schema the document declares for it, with every failure reported as a
//! Spanish problem that names the field at fault.
//!
//! poem-openapi's own `Json<T>` coerces (a number where a string is
//! declared becomes that string) and reports a failure as one English
//! sentence without the field. [`JsonBody`] documents the same schema, but
//! first checks the parsed value against it — presence, JSON type, length,
//! range and enumeration of each member — and only then builds `T`, so what
//! the document promises is exactly what the server accepts.

use std::borrow::Cow;

use anb_core::domain::{Email, InvalidValue};
use poem::{FromRequest, Request, RequestBody};
use poem_openapi::payload::{ParsePayload, Payload};
use poem_openapi::registry::{MetaMediaType, MetaRequest, MetaSchema, MetaSchemaRef, Registry};
use poem_openapi::types::{ParseFromJSON, Type};
use poem_openapi::{ApiExtractor, ApiExtractorType, ExtractParamOptions};
use serde_json::Value;

use crate::error::{ApiError, ErrorCode, FieldError};

/// A JSON request body of type `T`, checked against `T`'s schema.
#[derive(Debug, Clone)]
pub struct JsonBody<T>(pub T);

impl<T: Type> Payload for JsonBody<T> {
    const CONTENT_TYPE: &'static str = "application/json";

    /// `application/json`, with or without parameters (`; charset=utf-8`).
    fn check_content_type(content_type: &str) -> bool {
        let essence = content_type.split(';').next().unwrap_or_default();
        essence.trim().eq_ignore_ascii_case(Self::CONTENT_TYPE)
    }

    fn schema_ref() -> MetaSchemaRef {
        T::schema_ref()
    }

    fn register(registry: &mut Registry) {
        T::register(registry);
    }
}

impl<T: ParseFromJSON> ParsePayload for JsonBody<T> {
    const IS_REQUIRED: bool = true;

    async fn from_request(request: &Request, body: &mut RequestBody) -> poem::Result<Self> {
        let bytes = <Vec<u8> as FromRequest>::from_request(request, body).await?;
        Ok(Self(parse_body::<T>(&bytes)?))
    }
}

impl<'a, T: ParseFromJSON> ApiExtractor<'a> for JsonBody<T> {
    const TYPES: &'static [ApiExtractorType] = &[ApiExtractorType::RequestObject];

    type ParamType = ();
    type ParamRawType = ();

    fn register(registry: &mut Registry) {
        <Self as Payload>::register(registry);
    }

    fn request_meta() -> Option<MetaRequest> {
        Some(MetaRequest {
            description: None,
            content: vec![MetaMediaType {
                content_type: <Self as Payload>::CONTENT_TYPE,
                schema: <Self as Payload>::schema_ref(),
            }],
            required: true,
        })
    }

    async fn from_request(
        request: &'a Request,
        body: &mut RequestBody,
        _param_opts: ExtractParamOptions<Self::ParamType>,
    ) -> poem::Result<Self> {
        let acceptable = request
            .content_type()
            .is_some_and(<Self as Payload>::check_content_type);
        if !acceptable {
            return Err(ApiError::UnsupportedMediaType {
                expected: <Self as Payload>::CONTENT_TYPE,
            }
            .into());
        }
        <Self as ParsePayload>::from_request(request, body).await
    }
}

/// Parses `bytes` as JSON, checks it against `T`'s schema and builds `T`.
pub fn parse_body<T: ParseFromJSON>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            ErrorCode::MalformedJson,
            "El cuerpo de la solicitud está vacío: se esperaba un objeto JSON.",
        ));
    }
    // serde_json refuses nesting deeper than 128 levels, so a hostile body
    // cannot exhaust the stack.
    let value: Value = serde_json::from_slice(bytes).map_err(|error| {
        ApiError::bad_request(
            ErrorCode::MalformedJson,
            format!(
                "El cuerpo de la solicitud no es JSON válido o está anidado a más de 128 niveles \
                 (línea {}, columna {}).",
                error.line(),
                error.column()
            ),
        )
    })?;
    let mut registry = Registry::new();
    T::register(&mut registry);
    let mut errors = Vec::new();
    check_value(&registry, &T::schema_ref(), &value, "", &mut errors);
    if let Some(body_error) = errors.iter().position(|e| e.field.is_empty()) {
        // The body itself is of the wrong kind (e.g. a list, not an object).
        return Err(ApiError::bad_request(
            ErrorCode::MalformedJson,
            format!(
                "El cuerpo de la solicitud {}.",
                errors.swap_remove(body_error).message
            ),
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation {
            code: ErrorCode::ValidationFailed,
            errors,
        });
    }
    T::parse_from_json(Some(value)).map_err(|_| {
        // Everything the schema declares was checked above; what is left
        // (a pattern, a format) is reported without naming a member.
        ApiError::bad_request(
            ErrorCode::ValidationFailed,
            "El cuerpo de la solicitud no cumple el esquema de la operación.",
        )
    })
}

/// The schema behind `schema`, following a reference into the registry.
fn resolve<'r>(registry: &'r Registry, schema: &'r MetaSchemaRef) -> Option<&'r MetaSchema> {
    match schema {
        MetaSchemaRef::Inline(schema) => Some(schema),
        MetaSchemaRef::Reference(name) => registry.schemas.get(name),
    }
}

/// Checks `value` against `schema`, recording one error per member at fault
/// under its dotted `path` (`""` is the body itself).
fn check_value(
    registry: &Registry,
    schema: &MetaSchemaRef,
    value: &Value,
    path: &str,
    errors: &mut Vec<FieldError>,
) {
    let Some(schema) = resolve(registry, schema) else {
        return;
    };
    let problem = |message: Cow<'static, str>| FieldError::new(path, message);
    if value.is_null() {
        if !schema.nullable {
            errors.push(problem("es obligatorio".into()));
        }
        return;
    }
    let kind_matches = match schema.ty {
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        // A schema without a type (composition) accepts any kind here.
        _ => true,
    };
    if !kind_matches {
        errors.push(problem(expected_kind(schema.ty).into()));
        return;
    }
    if !schema.enum_items.is_empty() && !schema.enum_items.contains(value) {
        errors.push(problem("no es uno de los valores admitidos".into()));
        return;
    }
    match value {
        Value::String(text) => {
            let chars = text.chars().count();
            if let Some(min) = schema.min_length.filter(|min| chars < *min) {
                errors.push(problem(InvalidValue::TooShort { min }.to_string().into()));
            } else if let Some(max) = schema.max_length.filter(|max| chars > *max) {
                errors.push(problem(InvalidValue::TooLong { max }.to_string().into()));
            } else if let Err(invalid) = check_format(schema.format, text) {
                errors.push(problem(invalid.to_string().into()));
            }
        }
        Value::Number(number) => {
            let unsigned = schema
                .format
                .is_some_and(|format| format.starts_with("uint"));
            if unsigned && number.is_i64() && number.as_i64() < Some(0) {
                errors.push(problem("debe ser como mínimo 0".into()));
                return;
            }
            let number = number.as_f64().unwrap_or(f64::NAN);
            if let Some(min) = schema.minimum.filter(|min| number < *min) {
                errors.push(problem(format!("debe ser como mínimo {min}").into()));
            } else if let Some(max) = schema.maximum.filter(|max| number > *max) {
                errors.push(problem(format!("debe ser como máximo {max}").into()));
            }
        }
        Value::Object(members) => {
            let member_path = |name: &str| {
                if path.is_empty() {
                    name.to_owned()
                } else {
                    format!("{path}.{name}")
                }
            };
            for (name, member_schema) in &schema.properties {
                match members.get(*name) {
                    Some(member) => {
                        check_value(registry, member_schema, member, &member_path(name), errors)
                    }
                    None if schema.required.contains(name) => {
                        errors.push(FieldError::new(member_path(name), "es obligatorio"))
                    }
                    None => {}
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = &schema.items {
                for (i, item) in items.iter().enumerate() {
                    check_value(registry, item_schema, item, &format!("{path}[{i}]"), errors);
                }
            }
        }
        Value::Bool(_) | Value::Null => {}
    }
}

/// Checks the formats this API declares on strings.
fn check_format(format: Option<&str>, text: &str) -> Result<(), InvalidValue> {
    match format {
        Some("email") => Email::parse(text).map(drop),
        _ => Ok(()),
    }
}

/// What a member of JSON type `ty` must be, in words.
fn expected_kind(ty: &str) -> &'static str {
    match ty {
        "string" => "debe ser un texto",
        "integer" => "debe ser un número entero",
        "number" => "debe ser un número",
        "boolean" => "debe ser true o false",
        "array" => "debe ser una lista",
        "object" => "debe ser un objeto JSON",
        _ => "no es del tipo esperado",
    }
}

#[cfg(test)]
mod tests {
    use poem_openapi::Object;

    use super::*;

    #[derive(Debug, Object)]
    struct Form {
        #[oai(validator(min_length = 2, max_length = 5))]
        name: String,
        count: Option<u32>,
        flag: Option<bool>,
    }

    fn fields(error: ApiError) -> Vec<(String, String)> {
        match error {
            ApiError::Validation { errors, .. } => {
                errors.into_iter().map(|e| (e.field, e.message)).collect()
            }
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn members_of_the_wrong_type_are_refused_by_name() {
        let error = parse_body::<Form>(br#"{"name": 12345, "count": "3", "flag": 1}"#).unwrap_err();
        assert_eq!(
            fields(error),
            [
                ("name".to_owned(), "debe ser un texto".to_owned()),
                ("count".to_owned(), "debe ser un número entero".to_owned()),
                ("flag".to_owned(), "debe ser true o false".to_owned()),
            ]
        );
    }

    #[test]
    fn missing_and_null_members_are_named() {
        assert_eq!(
            fields(parse_body::<Form>(br#"{"count": 1}"#).unwrap_err()),
            [("name".to_owned(), "es obligatorio".to_owned())]
        );
        assert_eq!(
            fields(parse_body::<Form>(br#"{"name": null}"#).unwrap_err()),
            [("name".to_owned(), "es obligatorio".to_owned())]
        );
    }

    #[test]
    fn declared_lengths_and_ranges_hold() {
        assert_eq!(
            fields(parse_body::<Form>(br#"{"name": "abcdef"}"#).unwrap_err())[0].0,
            "name"
        );
        assert_eq!(
            fields(parse_body::<Form>(br#"{"name": "ab", "count": -1}"#).unwrap_err())[0].0,
            "count"
        );
        let form = parse_body::<Form>(br#"{"name": "abc", "count": 2}"#).unwrap();
        assert_eq!((form.name.as_str(), form.count), ("abc", Some(2)));
    }

    #[test]
    fn bodies_that_are_not_one_json_object_are_malformed() {
        let deep = "[".repeat(10_000);
        for body in [
            &b""[..],
            b"  ",
            b"{",
            b"[1, 2]",
            b"\"text\"",
            deep.as_bytes(),
        ] {
            match parse_body::<Form>(body) {
                Err(ApiError::BadRequest { code, detail }) => {
                    assert_eq!(code, ErrorCode::MalformedJson, "{detail}");
                    assert!(detail.starts_with("El cuerpo"), "{detail}");
                }
                other => panic!("{:?}: {other:?}", String::from_utf8_lossy(body)),
            }
        }
    }
}
