//! The rules shared by the text fields (Unicode NFC, trimmed, bounded in
//! characters, no control characters, something readable in it), and the
//! per-field error report.

use std::fmt;
use std::fmt::Write as _;

use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, GeneralCategoryGroup, UnicodeGeneralCategory};

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
pub enum Readable {
    /// At least one letter, Unicode category L (names, places).
    Letter,
    /// At least one letter or number, categories L or N (titles).
    LetterOrDigit,
}

impl Readable {
    pub(crate) fn accepts(self, c: char) -> bool {
        let group = c.general_category_group();
        match self {
            Self::Letter => group == GeneralCategoryGroup::Letter,
            Self::LetterOrDigit => matches!(
                group,
                GeneralCategoryGroup::Letter | GeneralCategoryGroup::Number
            ),
        }
    }

    /// The characters that count, as a regular-expression class.
    pub(crate) fn class(self) -> &'static str {
        match self {
            Self::Letter => r"[\p{L}]",
            Self::LetterOrDigit => r"[\p{L}\p{N}]",
        }
    }
}

/// Whether `c` is invisible formatting (zero-width space and joiners,
/// direction marks, the byte-order mark…: Unicode category Cf).
pub(crate) fn is_format(c: char) -> bool {
    c.general_category() == GeneralCategory::Format
}

/// Whether `c` is trimmed from both ends of a text: white space (Unicode
/// `White_Space`, as [`str::trim`] reads it) or invisible formatting.
pub(crate) fn is_padding(c: char) -> bool {
    c.is_whitespace() || is_format(c)
}

/// `raw` in Unicode NFC, so that the precomposed and the decomposed
/// spellings of "é" are one and the same text when compared or stored.
pub(crate) fn nfc(raw: &str) -> String {
    raw.nfc().collect()
}

/// Checks `raw` and gives the text to store. The rule reads the text as it
/// was sent, as a JSON Schema does (so [`text_pattern`] and `maxLength`
/// describe it exactly): at most `max` characters as sent (characters, not
/// bytes, so accented names count as people read them); white space and
/// invisible formatting at both ends are trimmed, and what is left must have
/// at least `min` characters, no control
/// characters, and something readable — a value made only of zero-width
/// characters or punctuation is refused. The stored text is the trimmed
/// text in NFC.
pub(crate) fn bounded_text(
    raw: &str,
    min: usize,
    max: usize,
    readable: Readable,
) -> Result<String, InvalidValue> {
    // The upper bound counts the text as sent, as `maxLength` does; the
    // lower one what is left once trimmed.
    if raw.chars().count() > max {
        return Err(InvalidValue::TooLong { max });
    }
    let trimmed = raw.trim_matches(is_padding);
    if trimmed.chars().count() < min {
        return Err(InvalidValue::TooShort { min });
    }
    if trimmed.chars().any(char::is_control) {
        return Err(InvalidValue::ControlCharacters);
    }
    if !trimmed.chars().any(|c| readable.accepts(c)) {
        return Err(match readable {
            Readable::Letter => InvalidValue::NoLetter,
            Readable::LetterOrDigit => InvalidValue::NoLetterOrDigit,
        });
    }
    Ok(nfc(trimmed))
}

/// The characters of `0..=U+10FFFF` for which `belongs` holds, as the body
/// of a regular-expression class (`\uXXXX` escapes in the Basic Multilingual
/// Plane, the characters themselves beyond it: the one spelling ECMA-262,
/// Python and Rust engines all read).
pub(crate) fn class_body(belongs: impl Fn(char) -> bool) -> String {
    fn push(out: &mut String, c: char) {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if u32::from(c) <= 0xFFFF {
            let _ = write!(out, "\\u{:04X}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    let mut out = String::new();
    let mut run: Option<(char, char)> = None;
    let flush = |out: &mut String, (first, last): (char, char)| {
        push(out, first);
        if last != first {
            out.push('-');
            push(out, last);
        }
    };
    for c in (0..=0x10_FFFF_u32).filter_map(char::from_u32) {
        if !belongs(c) {
            continue;
        }
        run = match run {
            // Surrogates are not chars, so a run may jump over them.
            Some((first, last))
                if char::from_u32(u32::from(last) + 1) == Some(c)
                    || (u32::from(last) == 0xD7FF && u32::from(c) == 0xE000) =>
            {
                Some((first, c))
            }
            Some(done) => {
                flush(&mut out, done);
                Some((c, c))
            }
            None => Some((c, c)),
        };
    }
    if let Some(done) = run {
        flush(&mut out, done);
    }
    out
}

/// The regular expression (ECMA-262 syntax, as OpenAPI's `pattern` takes
/// it) that a text meets exactly when `bounded_text` with at least `min`
/// characters (`min` ≥ 2) and the `readable` rule accepts it; the upper
/// bound is left to `maxLength`, which counts the padding too. Built from
/// the same character predicates, so the document and the server cannot
/// drift apart.
pub fn text_pattern(readable: Readable, min: usize) -> String {
    assert!(
        min >= 2,
        "the pattern spells out a first and a last character"
    );
    let padding = class_body(is_padding);
    let control = class_body(char::is_control);
    let pad = format!("[{padding}]*");
    // A character the trimmed text may start or end with, and any other.
    let edge = format!("[^{padding}{control}]");
    let inner = format!("[^{control}]");
    let wanted = readable.class();
    let at_least = |n: usize| match n {
        0 => "*".to_owned(),
        n => format!("{{{n},}}"),
    };
    let exactly = |n: usize| match n {
        0 => String::new(),
        1 => String::new(),
        n => format!("{{{n}}}"),
    };
    // The first wanted character is at position `k` of the trimmed text.
    // Either `k` alone makes the length (k ≥ min - 1) …
    let mut branches = vec![format!(
        "{edge}{inner}{}{wanted}(?:{inner}*{edge})?",
        at_least(min - 2)
    )];
    // … or what follows it makes up the rest.
    for k in 0..=min - 2 {
        let prefix = match k {
            0 => String::new(),
            1 => edge.clone(),
            k => format!("{edge}{inner}{}", exactly(k - 1)),
        };
        let rest = min - 1 - k;
        branches.push(format!(
            "{prefix}{wanted}{inner}{}{edge}",
            at_least(rest - 1)
        ));
    }
    format!("^{pad}(?:{}){pad}$", branches.join("|"))
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
            /// `bounded_text`.
            pub fn parse(raw: &str) -> Result<Self, $crate::domain::InvalidValue> {
                $crate::domain::text::bounded_text(
                    raw,
                    Self::MIN_CHARS,
                    Self::MAX_CHARS,
                    $crate::domain::text::Readable::$readable,
                )
                .map(Self)
            }

            /// The regular expression of the rule, for the API's document
            /// (see [`text_pattern`](crate::domain::text_pattern)).
            pub fn pattern() -> &'static str {
                static PATTERN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
                PATTERN.get_or_init(|| {
                    $crate::domain::text_pattern(
                        $crate::domain::Readable::$readable,
                        Self::MIN_CHARS,
                    )
                })
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

    /// Every string up to `len` characters over `alphabet`.
    fn strings(alphabet: &[char], len: usize) -> Vec<String> {
        let mut all = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..len {
            last = last
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            all.extend(last.iter().cloned());
        }
        all
    }

    #[test]
    fn the_pattern_accepts_exactly_what_the_rule_accepts() {
        // Letters (one decomposed), a digit, punctuation, inner and outer
        // white space, invisible formatting, controls that are white space
        // and one that is not.
        let alphabet = [
            'a',
            'É',
            '\u{301}',
            '7',
            '-',
            ' ',
            '\u{A0}',
            '\u{200B}',
            '\n',
            '\u{0}',
            '\u{1F600}',
        ];
        for (readable, min, max) in [(Readable::Letter, 2, 3), (Readable::LetterOrDigit, 3, 4)] {
            let pattern = regex::Regex::new(&text_pattern(readable, min)).unwrap();
            for text in strings(&alphabet, max + 1) {
                let by_rule = bounded_text(&text, min, max, readable).is_ok();
                let by_schema = pattern.is_match(&text) && text.chars().count() <= max;
                assert_eq!(by_schema, by_rule, "{readable:?} {min}..{max}: {text:?}");
            }
        }
    }

    #[test]
    fn the_pattern_compiles_with_every_minimum_in_use() {
        for min in 2..=5 {
            for readable in [Readable::Letter, Readable::LetterOrDigit] {
                let pattern = regex::Regex::new(&text_pattern(readable, min)).unwrap();
                assert!(pattern.is_match(&format!("  {}  ", "ñ".repeat(min))));
                assert!(!pattern.is_match(&"ñ".repeat(min - 1)));
            }
        }
    }

    #[test]
    fn field_errors_is_never_empty() {
        assert!(FieldErrors::from_vec(vec![]).is_none());
    }
}
