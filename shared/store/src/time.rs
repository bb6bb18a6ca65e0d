//! The one representation of time in the store, and the only place that converts it.
//!
//! Every time column of every table is `INTEGER` milliseconds since the Unix epoch (UTC), named
//! `…_ms` (`created_at_ms`, `expires_at_ms`, `last_used_ms`, …), in `STRICT` tables so SQLite
//! refuses anything else. Milliseconds, not seconds, because DHCP lease and session expiries
//! are compared to the millisecond; integers, not text, because the expiry sweeps compare and
//! index them. Outside the store time is a [`jiff::Timestamp`]; inside, only [`to_column`] and
//! [`from_column`] cross between the two, so a second unit can never creep in through one
//! module's hand-written `as_millisecond()`.
//!
//! Must never read the clock: callers pass `now` in (the group writer takes it once per batch).

use jiff::Timestamp;

use crate::StoreError;

/// The column value of `t`.
pub(crate) fn to_column(t: Timestamp) -> i64 {
    t.as_millisecond()
}

/// The column value of an optional time (`NULL` for `None`).
pub(crate) fn to_column_opt(t: Option<Timestamp>) -> Option<i64> {
    t.map(to_column)
}

/// The time a column holds; a value outside jiff's range means the file was edited by hand.
pub(crate) fn from_column(v: i64) -> Result<Timestamp, StoreError> {
    Timestamp::from_millisecond(v).map_err(|e| StoreError::corrupt("timestamp", e))
}

/// [`from_column`] for a nullable column.
pub(crate) fn from_column_opt(v: Option<i64>) -> Result<Option<Timestamp>, StoreError> {
    v.map(from_column).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_to_the_millisecond() {
        let t: Timestamp = "2026-11-21T12:00:00.123Z".parse().unwrap();
        assert_eq!(to_column(t), 1_795_262_400_123);
        assert_eq!(from_column(to_column(t)).unwrap(), t);
        assert_eq!(from_column_opt(to_column_opt(None)).unwrap(), None);
    }

    #[test]
    fn out_of_range_is_corrupt_not_a_panic() {
        assert!(matches!(
            from_column(i64::MAX),
            Err(StoreError::Corrupt {
                what: "timestamp",
                ..
            })
        ));
    }
}
