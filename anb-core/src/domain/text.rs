//! Length rules shared by the text fields, and the per-field error report.

use std::fmt;

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

/// Trims `raw` and checks its length in characters (not bytes, so accented
/// names count as people read them) and that it holds no control characters.
pub(crate) fn bounded_text(raw: &str, min: usize, max: usize) -> Result<String, InvalidValue> {
    let trimmed = raw.trim();
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
    Ok(trimmed.to_owned())
}

/// Declares a newtype over a trimmed, length-bounded string.
macro_rules! bounded_text_type {
    ($(#[$meta:meta])* $name:ident, $min:expr, $max:expr) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub struct $name(String);

        impl $name {
            /// The fewest characters accepted.
            pub const MIN_CHARS: usize = $min;
            /// The most characters accepted.
            pub const MAX_CHARS: usize = $max;

            /// Trims surrounding space and checks the length rule.
            pub fn parse(raw: &str) -> Result<Self, $crate::domain::InvalidValue> {
                $crate::domain::text::bounded_text(raw, Self::MIN_CHARS, Self::MAX_CHARS).map(Self)
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
        assert_eq!(bounded_text("Ñu", 2, 2).unwrap(), "Ñu");
        assert_eq!(
            bounded_text("ÑÑÑ", 2, 2),
            Err(InvalidValue::TooLong { max: 2 })
        );
    }

    #[test]
    fn bounded_text_trims_before_counting() {
        assert_eq!(
            bounded_text("  a  ", 2, 10),
            Err(InvalidValue::TooShort { min: 2 })
        );
        assert_eq!(bounded_text("  ab  ", 2, 10).unwrap(), "ab");
    }

    #[test]
    fn bounded_text_rejects_control_characters() {
        assert_eq!(
            bounded_text("a\nb", 2, 10),
            Err(InvalidValue::ControlCharacters)
        );
    }

    #[test]
    fn field_errors_is_never_empty() {
        assert!(FieldErrors::from_vec(vec![]).is_none());
    }
}
