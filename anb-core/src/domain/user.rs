//! Users: e-mail, names, place, password and the sign-up form (SPEC §3 Users).

use std::fmt;
use std::str::FromStr;

use email_address::{EmailAddress, Options};

use super::text::{FieldError, FieldErrors, InvalidValue, bounded_text_type};

/// A syntactically valid e-mail address, stored in Unicode NFC and
/// lower-cased, so that uniqueness ignores case and the precomposed and
/// decomposed spellings of one address are one account.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    /// The longest address SMTP can carry (RFC 5321 path limit).
    pub const MAX_CHARS: usize = 254;

    /// Normalises (NFC), trims, checks the address (with a top-level domain,
    /// no display name) and lower-cases it.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let normalised = super::text::nfc(raw);
        let trimmed = normalised.trim();
        if trimmed.chars().count() > Self::MAX_CHARS {
            return Err(InvalidValue::InvalidEmail);
        }
        let options = Options::default()
            .with_required_tld()
            .without_display_text()
            .without_domain_literal();
        EmailAddress::parse_with_options(trimmed, options)
            .map_err(|_| InvalidValue::InvalidEmail)?;
        // Lower-casing can decompose a character again: normalise once more.
        Ok(Self(super::text::nfc(&trimmed.to_lowercase())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Email {
    type Err = InvalidValue;
    fn from_str(raw: &str) -> Result<Self, InvalidValue> {
        Self::parse(raw)
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Email {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

bounded_text_type!(
    /// A first or last name: 2–50 characters.
    PersonName, 2, 50, Letter
);
bounded_text_type!(
    /// A city as the player wrote it: 2–50 characters. Rankings compare its
    /// [`CityKey`](super::CityKey).
    City, 2, 50, Letter
);
bounded_text_type!(
    /// A country: 2–50 characters.
    Country, 2, 50, Letter
);

/// A plain-text password of 8–128 characters, on its way to the hasher.
/// Never printed: `Debug` shows a placeholder.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub const MIN_CHARS: usize = 8;
    pub const MAX_CHARS: usize = 128;

    /// Checks the length. Spaces are kept: they are part of the secret.
    pub fn parse(raw: &str) -> Result<Self, InvalidValue> {
        let chars = raw.chars().count();
        if chars < Self::MIN_CHARS {
            return Err(InvalidValue::TooShort {
                min: Self::MIN_CHARS,
            });
        }
        if chars > Self::MAX_CHARS {
            return Err(InvalidValue::TooLong {
                max: Self::MAX_CHARS,
            });
        }
        Ok(Self(raw.to_owned()))
    }

    /// The secret, for the password hasher only.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// The sign-up form as received, before any check.
#[derive(Clone, Default)]
pub struct SignUpForm {
    pub first_name: String,
    pub last_name: String,
    pub email: String,
    pub password1: String,
    pub password2: String,
    pub city: String,
    pub country: String,
}

impl fmt::Debug for SignUpForm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignUpForm")
            .field("first_name", &self.first_name)
            .field("last_name", &self.last_name)
            .field("email", &self.email)
            .field("city", &self.city)
            .field("country", &self.country)
            .finish_non_exhaustive()
    }
}

/// A valid sign-up: every field checked, the two passwords equal.
#[derive(Debug, Clone)]
pub struct SignUp {
    pub first_name: PersonName,
    pub last_name: PersonName,
    pub email: Email,
    pub password: Password,
    pub city: City,
    pub country: Country,
}

impl SignUp {
    /// Checks every field and reports all the invalid ones together, named as
    /// in the form. `password2` is reported only when both passwords are
    /// otherwise valid and differ.
    pub fn parse(form: &SignUpForm) -> Result<Self, FieldErrors> {
        fn check<T>(
            errors: &mut Vec<FieldError>,
            field: &'static str,
            result: Result<T, InvalidValue>,
        ) -> Option<T> {
            result
                .map_err(|problem| errors.push(FieldError { field, problem }))
                .ok()
        }
        let mut errors = Vec::new();
        let first_name = check(
            &mut errors,
            "first_name",
            PersonName::parse(&form.first_name),
        );
        let last_name = check(&mut errors, "last_name", PersonName::parse(&form.last_name));
        let email = check(&mut errors, "email", Email::parse(&form.email));
        let password = check(&mut errors, "password1", Password::parse(&form.password1));
        let password = password.and_then(|password| {
            let same = form.password1 == form.password2;
            let result = if same {
                Ok(password)
            } else {
                Err(InvalidValue::PasswordsDiffer)
            };
            check(&mut errors, "password2", result)
        });
        let city = check(&mut errors, "city", City::parse(&form.city));
        let country = check(&mut errors, "country", Country::parse(&form.country));

        match (first_name, last_name, email, password, city, country) {
            (
                Some(first_name),
                Some(last_name),
                Some(email),
                Some(password),
                Some(city),
                Some(country),
            ) => Ok(Self {
                first_name,
                last_name,
                email,
                password,
                city,
                country,
            }),
            _ => {
                Err(FieldErrors::from_vec(errors)
                    .expect("a missing field always records its error"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid_form() -> SignUpForm {
        SignUpForm {
            first_name: "Ana".into(),
            last_name: "Gómez".into(),
            email: "Ana.Gomez@Example.COM".into(),
            password1: "correct horse".into(),
            password2: "correct horse".into(),
            city: "Bogotá".into(),
            country: "Colombia".into(),
        }
    }

    #[test]
    fn email_is_lower_cased_and_trimmed() {
        assert_eq!(
            Email::parse("  Ana@Example.COM ").unwrap().as_str(),
            "ana@example.com"
        );
    }

    #[test]
    fn nfc_and_nfd_spellings_are_one_email() {
        let composed = Email::parse("jos\u{e9}@example.com").unwrap();
        let decomposed = Email::parse("JOSE\u{301}@Example.com").unwrap();
        assert_eq!(composed, decomposed);
        assert_eq!(composed.as_str(), "jos\u{e9}@example.com");
    }

    #[test]
    fn cities_without_a_letter_and_invisible_names_are_refused() {
        assert_eq!(City::parse("--"), Err(InvalidValue::NoLetter));
        assert_eq!(
            PersonName::parse("\u{200B}\u{200B}\u{200B}"),
            Err(InvalidValue::TooShort { min: 2 })
        );
    }

    #[test]
    fn invalid_emails_are_rejected() {
        for raw in [
            "",
            "ana",
            "ana@",
            "@example.com",
            "ana@example",
            "Ana <ana@example.com>",
            "a b@example.com",
        ] {
            assert_eq!(
                Email::parse(raw),
                Err(InvalidValue::InvalidEmail),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn names_are_two_to_fifty_characters() {
        assert_eq!(
            PersonName::parse("A"),
            Err(InvalidValue::TooShort { min: 2 })
        );
        assert!(PersonName::parse("Al").is_ok());
        assert!(PersonName::parse(&"é".repeat(50)).is_ok());
        assert_eq!(
            PersonName::parse(&"é".repeat(51)),
            Err(InvalidValue::TooLong { max: 50 })
        );
    }

    #[test]
    fn passwords_are_eight_to_128_characters() {
        assert_eq!(
            Password::parse("1234567"),
            Err(InvalidValue::TooShort { min: 8 })
        );
        assert!(Password::parse("12345678").is_ok());
        assert!(Password::parse(&"x".repeat(128)).is_ok());
        assert_eq!(
            Password::parse(&"x".repeat(129)),
            Err(InvalidValue::TooLong { max: 128 })
        );
    }

    #[test]
    fn password_never_prints() {
        let form = SignUp::parse(&valid_form()).unwrap();
        let printed = format!("{form:?} {:?}", valid_form());
        assert!(!printed.contains("correct horse"), "{printed}");
    }

    #[test]
    fn valid_form_parses() {
        let signup = SignUp::parse(&valid_form()).unwrap();
        assert_eq!(signup.email.as_str(), "ana.gomez@example.com");
        assert_eq!(signup.last_name.as_str(), "Gómez");
        assert_eq!(signup.password.expose_secret(), "correct horse");
    }

    #[test]
    fn every_invalid_field_is_reported_at_once() {
        let form = SignUpForm {
            first_name: "A".into(),
            email: "nope".into(),
            password1: "short".into(),
            password2: "other".into(),
            country: "X".into(),
            ..valid_form()
        };
        let errors = SignUp::parse(&form).unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field).collect();
        // password2 is not reported: password1 is already invalid.
        assert_eq!(fields, ["first_name", "email", "password1", "country"]);
    }

    #[test]
    fn differing_passwords_are_reported_on_password2() {
        let form = SignUpForm {
            password2: "correct horse!".into(),
            ..valid_form()
        };
        let errors = SignUp::parse(&form).unwrap_err().into_vec();
        assert_eq!(
            errors,
            [FieldError {
                field: "password2",
                problem: InvalidValue::PasswordsDiffer
            }]
        );
        assert_eq!(errors[0].problem.code(), "passwords_differ");
    }
}
