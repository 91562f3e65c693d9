//! Timestamps in the database.
//!
//! PostgreSQL stores `timestamptz`. SQLite has no date type, and sqlx writes
//! `OffsetDateTime` there as RFC 3339 text whose fraction has a varying number
//! of digits, which does not sort in time order; so SQLite columns hold whole
//! microseconds since the Unix epoch (an `INTEGER`), which sorts and compares
//! correctly. Both keep microseconds, so a value reads back exactly as written.

use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgTypeInfo, PgValueRef};
use sqlx::sqlite::{SqliteArgumentsBuffer, SqliteTypeInfo, SqliteValueRef};
use sqlx::{Decode, Encode, Postgres, Sqlite, Type};
use time::OffsetDateTime;

/// The current time in UTC, cut to the microseconds both engines keep.
pub fn now() -> OffsetDateTime {
    truncate_to_micros(OffsetDateTime::now_utc())
}

pub(crate) fn truncate_to_micros(at: OffsetDateTime) -> OffsetDateTime {
    let micros = at.unix_timestamp_nanos() / 1_000;
    OffsetDateTime::from_unix_timestamp_nanos(micros * 1_000)
        .expect("a valid time stays valid when truncated")
}

/// A UTC instant as either engine stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DbTime(pub OffsetDateTime);

impl DbTime {
    fn unix_micros(&self) -> Result<i64, BoxDynError> {
        Ok(i64::try_from(self.0.unix_timestamp_nanos() / 1_000)?)
    }

    fn from_unix_micros(micros: i64) -> Result<Self, BoxDynError> {
        let nanos = i128::from(micros) * 1_000;
        Ok(Self(OffsetDateTime::from_unix_timestamp_nanos(nanos)?))
    }
}

impl From<DbTime> for OffsetDateTime {
    fn from(at: DbTime) -> Self {
        at.0
    }
}

impl Type<Postgres> for DbTime {
    fn type_info() -> PgTypeInfo {
        <OffsetDateTime as Type<Postgres>>::type_info()
    }
}

impl Encode<'_, Postgres> for DbTime {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <OffsetDateTime as Encode<Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl<'r> Decode<'r, Postgres> for DbTime {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        let at = <OffsetDateTime as Decode<Postgres>>::decode(value)?;
        Ok(Self(at.to_offset(time::UtcOffset::UTC)))
    }
}

impl Type<Sqlite> for DbTime {
    fn type_info() -> SqliteTypeInfo {
        <i64 as Type<Sqlite>>::type_info()
    }

    fn compatible(ty: &SqliteTypeInfo) -> bool {
        <i64 as Type<Sqlite>>::compatible(ty)
    }
}

impl Encode<'_, Sqlite> for DbTime {
    fn encode_by_ref(&self, buf: &mut SqliteArgumentsBuffer) -> Result<IsNull, BoxDynError> {
        <i64 as Encode<Sqlite>>::encode(self.unix_micros()?, buf)
    }
}

impl<'r> Decode<'r, Sqlite> for DbTime {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        Self::from_unix_micros(<i64 as Decode<Sqlite>>::decode(value)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_round_trip() {
        let at = now();
        assert_eq!(
            DbTime::from_unix_micros(DbTime(at).unix_micros().unwrap())
                .unwrap()
                .0,
            at
        );
    }

    #[test]
    fn truncation_drops_nanoseconds_only() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789).unwrap();
        assert_eq!(
            truncate_to_micros(at).unix_timestamp_nanos(),
            1_700_000_000_123_456_000
        );
    }
}
