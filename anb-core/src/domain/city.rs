//! The normalised form of a city name used to group and filter rankings.

use std::fmt;

use super::text::Readable;
use super::user::City;

/// A city name folded for comparison: accents transliterated, letters
/// lower-cased, runs of spaces, hyphens and punctuation reduced to one space.
/// "Bogotá", "BOGOTA" and " bogota " all give `bogota`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CityKey(String);

impl CityKey {
    /// The key of a registered user's city.
    pub fn of(city: &City) -> Self {
        Self::normalise(city.as_str())
    }

    /// The key of a filter value typed by a client. `None` when it has no
    /// letter or number (Unicode categories L, N) to compare: empty, only
    /// punctuation or symbols ([`filter_pattern`](Self::filter_pattern)).
    pub fn from_filter(raw: &str) -> Option<Self> {
        if !raw.chars().any(|c| Readable::LetterOrDigit.accepts(c)) {
            return None;
        }
        let key = Self::normalise(raw);
        (!key.0.is_empty()).then_some(key)
    }

    /// The regular expression (ECMA-262) of a filter parameter: blank
    /// (white space only: no filter) or with a letter or number somewhere.
    pub fn filter_pattern() -> &'static str {
        static PATTERN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        PATTERN.get_or_init(|| {
            let space = super::text::class_body(char::is_whitespace);
            let wanted = Readable::LetterOrDigit.class();
            format!(r"^(?:[{space}]*|[\s\S]*{wanted}[\s\S]*)$")
        })
    }

    /// Rebuilds a key read back from storage (already normalised).
    pub fn from_stored(stored: String) -> Self {
        Self(stored)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn normalise(raw: &str) -> Self {
        // deunicode transliterates to ASCII ("São Paulo" → "Sao Paulo"),
        // so comparing the lower-case words is accent- and case-blind. A
        // letter or digit it has no readable transliteration for is kept
        // (lower-cased), so every name with a letter has a non-empty key
        // and can be found by the filter.
        let mut folded = String::with_capacity(raw.len());
        for c in super::text::nfc(raw).chars() {
            if c.is_ascii() {
                folded.push(c);
                continue;
            }
            match deunicode::deunicode_char(c) {
                Some(ascii) if ascii.chars().any(|a| a.is_ascii_alphanumeric()) => {
                    folded.push_str(ascii)
                }
                _ if c.is_alphanumeric() => folded.extend(c.to_lowercase()),
                _ => folded.push(' '),
            }
        }
        let words: Vec<String> = folded
            .split(|c: char| !c.is_alphanumeric())
            .filter(|word| !word.is_empty())
            .map(str::to_lowercase)
            .collect();
        Self(words.join(" "))
    }
}

impl fmt::Display for CityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_and_accents_do_not_matter() {
        let expected = CityKey::from_filter("bogota").unwrap();
        for spelling in ["Bogotá", "BOGOTÁ", " bogotá ", "Bogota"] {
            assert_eq!(
                CityKey::from_filter(spelling).unwrap(),
                expected,
                "{spelling}"
            );
        }
    }

    #[test]
    fn separators_collapse_to_one_space() {
        assert_eq!(
            CityKey::from_filter("São  Paulo").unwrap().as_str(),
            "sao paulo"
        );
        assert_eq!(
            CityKey::from_filter("Saint-Étienne").unwrap().as_str(),
            "saint etienne"
        );
    }

    #[test]
    fn different_cities_stay_different() {
        assert_ne!(CityKey::from_filter("Cali"), CityKey::from_filter("Cúcuta"));
    }

    #[test]
    fn every_city_with_a_letter_has_a_key() {
        for city in ["東京", "Zürich", "Ōsaka", "Kraków", "ᏣᎳᎩ"] {
            let city = City::parse(city).unwrap();
            assert!(!CityKey::of(&city).as_str().is_empty(), "{city}");
        }
        // NFC and NFD spellings are one city.
        assert_eq!(
            CityKey::from_filter("Bogota\u{301}"),
            CityKey::from_filter("Bogot\u{e1}")
        );
    }

    #[test]
    fn nothing_comparable_is_no_key() {
        assert_eq!(CityKey::from_filter("  -- "), None);
        assert_eq!(CityKey::from_filter(""), None);
    }

    #[test]
    fn the_filter_pattern_accepts_exactly_what_the_filter_does() {
        let pattern = regex::Regex::new(CityKey::filter_pattern()).unwrap();
        let alphabet = [
            'a', 'É', '7', '-', ' ', '\u{A0}', '\u{200B}', '\n', '€', '½',
        ];
        let mut texts = vec![String::new()];
        for _ in 0..3 {
            let longer: Vec<String> = texts
                .iter()
                .flat_map(|t| alphabet.iter().map(move |c| format!("{t}{c}")))
                .collect();
            texts.extend(longer);
        }
        for text in texts {
            let by_filter = text.trim().is_empty() || CityKey::from_filter(&text).is_some();
            assert_eq!(pattern.is_match(&text), by_filter, "{text:?}");
        }
    }

    #[test]
    fn a_registered_city_matches_its_filter() {
        let city = City::parse("Medellín").unwrap();
        assert_eq!(
            CityKey::of(&city),
            CityKey::from_filter("MEDELLIN").unwrap()
        );
    }
}
