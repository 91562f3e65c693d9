//! One module per resource of the API.

pub mod health;
