//! Domain types that can only be built valid (SPEC §3).
//!
//! Every constructor checks its rule and returns a typed error, so code that
//! holds an [`Email`] or a [`VideoTitle`] never checks it again. Forms made of
//! several fields ([`SignUp`]) report every invalid field at once.

mod city;
mod ids;
mod pagination;
mod text;
mod user;
mod video;

pub use city::CityKey;
pub use ids::{InvalidId, UserId, VideoId};
pub use pagination::{InvalidPagination, Pagination};
pub use text::{FieldError, FieldErrors, InvalidValue, Readable, text_pattern};
pub use user::{City, Country, Email, Password, PersonName, SignUp, SignUpForm};
pub use video::{FailureReason, IllegalTransition, UnknownStatus, VideoStatus, VideoTitle};
