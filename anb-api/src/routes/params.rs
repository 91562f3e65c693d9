//! Path and query parameter types, and the body field types that need a
//! schema of their own: each declares in the document the rule it enforces.
//! poem-openapi wraps a parameter's parse failure in English, so the edge
//! answers with the rule of the parameter instead ([`rule_of`]), in Spanish,
//! under the parameter's name.

use std::borrow::Cow;

use anb_core::domain::{
    City, CityKey, Country, Email, Pagination, PersonName, VideoId, VideoTitle,
};
use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::{
    ParseError, ParseFromJSON, ParseFromMultipartField, ParseFromParameter, ParseResult, ToJSON,
    Type,
};
use serde_json::Value;

/// Implements [`Type`] for a parameter type with the given schema.
macro_rules! parameter_type {
    ($name:ident, $schema:expr) => {
        impl Type for $name {
            const IS_REQUIRED: bool = true;
            type RawValueType = Self;
            type RawElementValueType = Self;

            fn name() -> Cow<'static, str> {
                stringify!($name).into()
            }

            fn schema_ref() -> MetaSchemaRef {
                MetaSchemaRef::Inline(Box::new($schema))
            }

            fn as_raw_value(&self) -> Option<&Self> {
                Some(self)
            }

            fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Self> + 'a> {
                Box::new(std::iter::once(self))
            }
        }
    };
}

/// What the query parameter `name` must be, for the problem that refuses it.
pub fn rule_of(name: &str) -> String {
    match name {
        "page" => integer_rule(1, Pagination::MAX_PAGE),
        "limit" => integer_rule(Pagination::MIN_LIMIT, Pagination::MAX_LIMIT),
        "city" => format!(
            "debe tener como máximo {} caracteres y al menos una letra o un número",
            CityFilter::MAX_CHARS
        ),
        IDEMPOTENCY_KEY => format!(
            "debe tener entre 1 y {} caracteres ASCII visibles (sin espacios)",
            IdempotencyKeyParam::MAX_CHARS
        ),
        _ => "el valor no es válido".to_owned(),
    }
}

/// The name of the upload's idempotency header.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// Whether the parameter `name` is a header (not a query parameter).
pub fn is_header(name: &str) -> bool {
    name == IDEMPOTENCY_KEY
}

fn integer_rule(min: u32, max: u32) -> String {
    format!("debe ser un número entero entre {min} y {max}")
}

/// An integer query parameter within `min..=max`.
fn integer_in<T: Type>(raw: &str, min: u32, max: u32, wrap: fn(u32) -> T) -> ParseResult<T> {
    raw.parse::<u32>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .map(wrap)
        .ok_or_else(|| ParseError::custom(integer_rule(min, max)))
}

fn integer_schema(min: u32, max: u32, default: u32) -> MetaSchema {
    MetaSchema {
        format: Some("int32"),
        minimum: Some(f64::from(min)),
        maximum: Some(f64::from(max)),
        default: Some(default.into()),
        ..MetaSchema::new("integer")
    }
}

/// `page`: the 1-based page number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page(pub u32);

parameter_type!(Page, integer_schema(1, Pagination::MAX_PAGE, 1));

impl ParseFromParameter for Page {
    fn parse_from_parameter(raw: &str) -> ParseResult<Self> {
        integer_in(raw, 1, Pagination::MAX_PAGE, Self)
    }
}

/// `limit`: the page size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(pub u32);

parameter_type!(
    Limit,
    integer_schema(
        Pagination::MIN_LIMIT,
        Pagination::MAX_LIMIT,
        Pagination::DEFAULT_LIMIT
    )
);

impl ParseFromParameter for Limit {
    fn parse_from_parameter(raw: &str) -> ParseResult<Self> {
        integer_in(raw, Pagination::MIN_LIMIT, Pagination::MAX_LIMIT, Self)
    }
}

/// The pagination of a list from its optional `page` and `limit`.
pub fn pagination(page: Option<Page>, limit: Option<Limit>) -> Pagination {
    Pagination::new(
        Some(page.map_or(1, |p| p.0).into()),
        Some(limit.map_or(Pagination::DEFAULT_LIMIT, |l| l.0).into()),
    )
    .expect("both parameters were parsed within their ranges")
}

/// `city`: a rankings filter, compared by its [`CityKey`] (case, accents,
/// Unicode normalisation and punctuation ignored). Blank means no filter;
/// text with no letter or digit to compare is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CityFilter(pub Option<CityKey>);

impl CityFilter {
    /// The longest filter accepted, in characters.
    pub const MAX_CHARS: usize = 100;
}

parameter_type!(
    CityFilter,
    MetaSchema {
        max_length: Some(CityFilter::MAX_CHARS),
        pattern: Some(CityKey::filter_pattern().to_owned()),
        ..MetaSchema::new("string")
    }
);

impl ParseFromParameter for CityFilter {
    fn parse_from_parameter(raw: &str) -> ParseResult<Self> {
        if raw.chars().count() > Self::MAX_CHARS {
            return Err(ParseError::custom(format!(
                "debe tener como máximo {} caracteres",
                Self::MAX_CHARS
            )));
        }
        if raw.trim().is_empty() {
            return Ok(Self(None));
        }
        CityKey::from_filter(raw)
            .map(|key| Self(Some(key)))
            .ok_or_else(|| ParseError::custom("debe contener al menos una letra o un número"))
    }
}

/// An e-mail address as sent in a body (`format: email`, at most 254
/// characters); [`Email`] checks and normalises it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailField(pub String);

parameter_type!(
    EmailField,
    MetaSchema {
        max_length: Some(Email::MAX_CHARS),
        ..MetaSchema::new_with_format("string", "email")
    }
);

impl ParseFromJSON for EmailField {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            Some(Value::String(text)) => Ok(Self(text)),
            _ => Err(ParseError::custom("debe ser un texto")),
        }
    }
}

impl ToJSON for EmailField {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(self.0.clone()))
    }
}

/// Declares a text field of a body checked by the domain type `$rule`: its
/// schema carries the rule's lengths and its pattern (the domain's own
/// regular expression, built from the predicates it checks), so the
/// document describes exactly what the server accepts. The value is taken
/// as sent; `$rule::parse` checks and normalises it.
macro_rules! text_field {
    ($(#[$doc:meta])* $name:ident, $rule:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name(pub String);

        parameter_type!(
            $name,
            MetaSchema {
                min_length: Some(<$rule>::MIN_CHARS),
                max_length: Some(<$rule>::MAX_CHARS),
                pattern: Some(<$rule>::pattern().to_owned()),
                ..MetaSchema::new("string")
            }
        );

        impl ParseFromJSON for $name {
            fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
                match value {
                    Some(Value::String(text)) => Ok(Self(text)),
                    _ => Err(ParseError::custom("debe ser un texto")),
                }
            }
        }

        impl ParseFromMultipartField for $name {
            async fn parse_from_multipart(
                field: Option<poem::web::Field>,
            ) -> ParseResult<Self> {
                match field {
                    Some(field) => field.text().await.map(Self).map_err(ParseError::custom),
                    None => Err(ParseError::custom("es obligatorio")),
                }
            }
        }

        impl ToJSON for $name {
            fn to_json(&self) -> Option<Value> {
                Some(Value::String(self.0.clone()))
            }
        }
    };
}

text_field!(
    /// A first or last name (a letter at least).
    NameField,
    PersonName
);
text_field!(
    /// A city (a letter at least).
    CityField,
    City
);
text_field!(
    /// A country (a letter at least).
    CountryField,
    Country
);
text_field!(
    /// A video title (a letter or number at least).
    TitleField,
    VideoTitle
);

/// `Idempotency-Key`: a client-chosen key that makes a retried upload
/// return the first answer (e.g. a UUID), 1–255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKeyParam(pub String);

impl IdempotencyKeyParam {
    pub const MAX_CHARS: usize = 255;
}

parameter_type!(
    IdempotencyKeyParam,
    MetaSchema {
        min_length: Some(1),
        max_length: Some(IdempotencyKeyParam::MAX_CHARS),
        pattern: Some("^[!-~]+$".to_owned()),
        ..MetaSchema::new("string")
    }
);

impl IdempotencyKeyParam {
    /// The key among `headers`, if sent: refused unless it is one line of
    /// visible ASCII within the length.
    pub fn from_headers(
        headers: &poem::http::HeaderMap,
    ) -> Result<Option<Self>, crate::error::ApiError> {
        let mut lines = headers.get_all(IDEMPOTENCY_KEY).iter();
        let Some(line) = lines.next() else {
            return Ok(None);
        };
        let refused =
            || crate::error::ApiError::invalid_field(IDEMPOTENCY_KEY, rule_of(IDEMPOTENCY_KEY));
        if lines.next().is_some() {
            return Err(crate::error::ApiError::invalid_field(
                IDEMPOTENCY_KEY,
                "se envió más de una vez",
            ));
        }
        let text = line.to_str().map_err(|_| refused())?;
        Self::parse_from_parameter(text)
            .map(Some)
            .map_err(|_| refused())
    }
}

impl ParseFromParameter for IdempotencyKeyParam {
    fn parse_from_parameter(raw: &str) -> ParseResult<Self> {
        let visible = raw.bytes().all(|b| b.is_ascii_graphic());
        if raw.is_empty() || raw.len() > Self::MAX_CHARS || !visible {
            return Err(ParseError::custom(rule_of(IDEMPOTENCY_KEY)));
        }
        Ok(Self(raw.to_owned()))
    }
}

/// `{video_id}`: a video's UUID. An id that is not a UUID names no video,
/// so it parses (as `None`) and the operation answers its 404.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoIdParam(pub Option<VideoId>);

parameter_type!(VideoIdParam, MetaSchema::new_with_format("string", "uuid"));

impl ParseFromParameter for VideoIdParam {
    fn parse_from_parameter(raw: &str) -> ParseResult<Self> {
        Ok(Self(raw.parse().ok()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_and_limit_refuse_what_the_document_excludes_in_spanish() {
        for raw in ["0", "-1", "abc", "", "1.5", "99999999999"] {
            assert!(Page::parse_from_parameter(raw).is_err(), "{raw}");
        }
        assert_eq!(
            rule_of("page"),
            "debe ser un número entero entre 1 y 2147483647"
        );
        assert!(Limit::parse_from_parameter("101").is_err());
        assert_eq!(Limit::parse_from_parameter("100").unwrap(), Limit(100));
        assert_eq!(
            pagination(Some(Page(3)), None).offset(),
            2 * u64::from(Pagination::DEFAULT_LIMIT)
        );
    }

    #[test]
    fn a_malformed_video_id_is_no_video() {
        assert_eq!(
            VideoIdParam::parse_from_parameter("../etc/passwd").unwrap(),
            VideoIdParam(None)
        );
    }
}
