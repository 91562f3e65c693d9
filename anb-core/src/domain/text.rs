//! The rules shared by the text fields (Unicode NFC, trimmed, bounded in
//! characters, no control characters, something readable in it), and the
//! per-field error report.

use std::fmt;

use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

/// Why a single value was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidValue {
    /// Fewer characters than the rule allows (after trimming surrounding space).
    #[error("debe tener al menos {min} caracteres")]
    TooShort { min: usize },
    /// More characters than the rule allows.
    #[error("debe tener como máximo {max} caracteres")]
    TooLong { max: usize },
    /// Contains control characters (line breaks, tabs, NUL…).
    #[error("contiene caracteres no permitidos")]
    ControlCharacters,
    /// No letter at all (e.g. only punctuation or invisible characters).
    #[error("debe contener al menos una letra")]
    NoLetter,
    /// Neither a letter nor a digit (e.g. only punctuation or invisible
    /// characters).
    #[error("debe contener al menos una letra o un número")]
    NoLetterOrDigit,
    /// Not a valid e-mail address.
    #[error("no es un correo electrónico válido")]
    InvalidEmail,
    /// The two passwords of a sign-up differ.
    #[error("las contraseñas no coinciden")]
    PasswordsDiffer,
}

impl InvalidValue {
    /// A stable machine-readable code for API clients.
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooShort { .. } => "too_short",
            Self::TooLong { .. } => "too_long",
            Self::ControlCharacters => "invalid_characters",
            Self::NoLetter => "no_letter",
            Self::NoLetterOrDigit => "no_letter_or_digit",
            Self::InvalidEmail => "invalid_email",
            Self::PasswordsDiffer => "passwords_differ",
        }
    }
}

/// One rejected field of a form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's name as clients send it (`first_name`, `password2`, …).
    pub field: &'static str,
    pub problem: InvalidValue,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

/// Every rejected field of a form, in the order of the form (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldErrors(Vec<FieldError>);

impl FieldErrors {
    /// Wraps a non-empty list; `None` when there is nothing to report.
    pub fn from_vec(errors: Vec<FieldError>) -> Option<Self> {
        (!errors.is_empty()).then_some(Self(errors))
    }

    /// A report about a single field.
    pub fn single(field: &'static str, problem: InvalidValue) -> Self {
        Self(vec![FieldError { field, problem }])
    }

    pub fn iter(&self) -> impl Iterator<Item = &FieldError> {
        self.0.iter()
    }

    /// Whether `field` is among the rejected fields.
    pub fn contains_field(&self, field: &str) -> bool {
        self.0.iter().any(|e| e.field == field)
    }

    pub fn into_vec(self) -> Vec<FieldError> {
        self.0
    }
}

impl fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for FieldErrors {}

/// What a text must contain besides its length to mean something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Readable {
    /// At least one letter (names, places).
    Letter,
    /// At least one letter or digit (titles).
    LetterOrDigit,
}

/// Whether `c` is invisible formatting (zero-width space and joiners,
/// direction marks, the byte-order mark…: Unicode category Cf).
pub(crate) fn is_format(c: char) -> bool {
    c.general_category() == GeneralCategory::Format
}

/// `raw` in Unicode NFC, so that the precomposed and the decomposed
/// spellings of "é" are one and the same text when compared or stored.
pub(crate) fn nfc(raw: &str) -> String {
    raw.nfc().collect()
}

/// Normalises `raw` to NFC, trims white space and invisible formatting at
/// both ends, and checks its length in characters (not bytes, so accented
/// names count as people read them), that it holds no control characters
/// and that it has something readable in it: a value made only of
/// zero-width characters or punctuation is refused.
pub(crate) fn bounded_text(
    raw: &str,
    min: usize,
    max: usize,
    readable: Readable,
) -> Result<String, InvalidValue> {
    let normalised = nfc(raw);
    let trimmed = normalised.trim_matches(|c: char| c.is_whitespace() || is_format(c));
    let chars = trimmed.chars().count();
    if chars < min {
        return Err(InvalidValue::TooShort { min });
    }
    if chars > max {
        return Err(InvalidValue::TooLong { max });
    }
    if trimmed.chars().any(char::is_control) {
        return Err(InvalidValue::ControlCharacters);
    }
    match readable {
        Readable::Letter if !trimmed.chars().any(char::is_alphabetic) => {
            Err(InvalidValue::NoLetter)
        }
        Readable::LetterOrDigit if !trimmed.chars().any(char::is_alphanumeric) => {
            Err(InvalidValue::NoLetterOrDigit)
        }
        _ => Ok(trimmed.to_owned()),
    }
}

/// Declares a newtype over a trimmed, length-bounded string.
macro_rules! bounded_text_type {
    ($(#[$meta:meta])* $name:ident, $min:expr, $max:expr, $readable:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub struct $name(String);

        impl $name {
            /// The fewest characters accepted.
            pub const MIN_CHARS: usize = $min;
            /// The most characters accepted.
            pub const MAX_CHARS: usize = $max;

            /// Normalises (NFC), trims and checks the rules of
            /// [`bounded_text`](crate::domain::text::bounded_text).
            pub fn parse(raw: &str) -> Result<Self, $crate::domain::InvalidValue> {
                $crate::domain::text::bounded_text(
                    raw,
                    Self::MIN_CHARS,
                    Self::MAX_CHARS,
                    $crate::domain::text::Readable::$readable,
                )
                .map(Self)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::domain::InvalidValue;
            fn from_str(raw: &str) -> Result<Self, Self::Err> {
                Self::parse(raw)
            }
        }
    };
}
pub(crate) use bounded_text_type;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_text_counts_characters_not_bytes() {
        // "Ñu" is 2 characters but 3 bytes.
        assert_eq!(bounded_text("Ñu", 2, 2, Readable::Letter).unwrap(), "Ñu");
        assert_eq!(
            bounded_text("ÑÑÑ", 2, 2, Readable::Letter),
            Err(InvalidValue::TooLong { max: 2 })
        );
    }

    #[test]
    fn bounded_text_trims_before_counting() {
        assert_eq!(
            bounded_text("  a  ", 2, 10, Readable::Letter),
            Err(InvalidValue::TooShort { min: 2 })
        );
        assert_eq!(
            bounded_text("  ab  ", 2, 10, Readable::Letter).unwrap(),
            "ab"
        );
    }

    #[test]
    fn bounded_text_rejects_control_characters() {
        assert_eq!(
            bounded_text("a\nb", 2, 10, Readable::Letter),
            Err(InvalidValue::ControlCharacters)
        );
    }

    #[test]
    fn invisible_only_values_are_refused() {
        for raw in [
            "\u{200B}\u{200B}\u{200B}",
            "\u{200D}\u{FEFF}\u{2060}\u{200E}",
            "\u{00AD}\u{00AD}",
        ] {
            assert_eq!(
                bounded_text(raw, 2, 10, Readable::LetterOrDigit),
                Err(InvalidValue::TooShort { min: 2 }),
                "{raw:?}"
            );
        }
        // Invisible padding does not count towards the length either.
        assert_eq!(
            bounded_text("\u{200B}a\u{200B}", 2, 10, Readable::Letter),
            Err(InvalidValue::TooShort { min: 2 })
        );
    }

    #[test]
    fn values_without_a_letter_are_refused() {
        assert_eq!(
            bounded_text("--", 2, 10, Readable::Letter),
            Err(InvalidValue::NoLetter)
        );
        assert_eq!(
            bounded_text("12345", 2, 10, Readable::Letter),
            Err(InvalidValue::NoLetter)
        );
        assert_eq!(
            bounded_text("12345", 2, 10, Readable::LetterOrDigit).unwrap(),
            "12345"
        );
        assert_eq!(
            bounded_text("!!!!!", 2, 10, Readable::LetterOrDigit),
            Err(InvalidValue::NoLetterOrDigit)
        );
    }

    #[test]
    fn text_is_stored_in_nfc() {
        let decomposed = "Jose\u{301}";
        let stored = bounded_text(decomposed, 2, 10, Readable::Letter).unwrap();
        assert_eq!(stored, "Jos\u{e9}");
        assert_eq!(stored.chars().count(), 4);
    }

    #[test]
    fn field_errors_is_never_empty() {
        assert!(FieldErrors::from_vec(vec![]).is_none());
    }
}
