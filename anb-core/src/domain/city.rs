//! The normalised form of a city name used to group and filter rankings.

use std::fmt;

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

    /// The key of a filter value typed by a client. `None` when nothing
    /// comparable is left (empty, or only punctuation).
    pub fn from_filter(raw: &str) -> Option<Self> {
        let key = Self::normalise(raw);
        (!key.0.is_empty()).then_some(key)
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
        // so comparing the ASCII-lowercase words is accent- and case-blind.
        let ascii = deunicode::deunicode(raw);
        let words: Vec<String> = ascii
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|word| !word.is_empty())
            .map(str::to_ascii_lowercase)
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
    fn nothing_comparable_is_no_key() {
        assert_eq!(CityKey::from_filter("  -- "), None);
        assert_eq!(CityKey::from_filter(""), None);
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
