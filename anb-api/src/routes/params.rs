//! Path and query parameter types, and the body field types that need a
//! schema of their own: each declares in the document the rule it enforces.
//! poem-openapi wraps a parameter's parse failure in English, so the edge
//! answers with the rule of the parameter instead ([`rule_of`]), in Spanish,
//! under the parameter's name.

use std::borrow::Cow;

use anb_core::domain::{CityKey, Email, Pagination, VideoId};
use poem_openapi::registry::{MetaSchema, MetaSchemaRef};
use poem_openapi::types::{
    ParseError, ParseFromJSON, ParseFromParameter, ParseResult, ToJSON, Type,
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
        _ => "el valor no es válido".to_owned(),
    }
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
