//! DHCP leases: the addresses dhcpd has bound to clients or set aside after a DHCPDECLINE.
//!
//! dhcpd is the only writer. It keeps the working set in memory and writes every change here
//! before it answers the client (group commit: [`apply`] takes a whole batch in one `IMMEDIATE`
//! transaction), so a restarted dhcpd hands each client the address it had. Other daemons may
//! read leases (e.g. to show a machine's address) but must never write them.

use std::net::Ipv4Addr;

use dragonfly_core::MacAddr;
use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::StoreError;
use crate::db::write;

/// Whether a stored address is held by a client or set aside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Bound to `mac` until the expiry.
    Bound,
    /// Declined by a client (in use by something else): not offered until the expiry.
    Declined,
}

/// One stored address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub ip: Ipv4Addr,
    /// The client; `None` for a declined address.
    pub mac: Option<MacAddr>,
    pub state: LeaseState,
    /// A fixed address from a reservation rather than one from the pool.
    pub reserved: bool,
    pub expires_at: Timestamp,
}

/// One change, as dhcpd's writer queues them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseWrite {
    /// `mac` holds `ip` until `expires_at` (new lease, renewal, or a reclaimed address). Any
    /// other lease of `mac` and any previous holder of `ip` are replaced.
    Bind {
        ip: Ipv4Addr,
        mac: MacAddr,
        reserved: bool,
        expires_at: Timestamp,
    },
    /// `ip` was declined: nobody gets it until `until`.
    Decline { ip: Ipv4Addr, until: Timestamp },
    /// `mac` released `ip` (or it expired): the address is free.
    Free { ip: Ipv4Addr, mac: MacAddr },
}

const COLUMNS: &str = "ip, mac, state, reserved, expires_at_ms";

fn decode(r: &Row<'_>) -> rusqlite::Result<(String, Option<String>, String, bool, i64)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn into_lease(row: (String, Option<String>, String, bool, i64)) -> Result<Lease, StoreError> {
    let (ip, mac, state, reserved, expires) = row;
    Ok(Lease {
        ip: ip
            .parse()
            .map_err(|e| StoreError::corrupt("lease address", e))?,
        mac: mac
            .map(|m| m.parse::<MacAddr>())
            .transpose()
            .map_err(|e| StoreError::corrupt("lease MAC", e))?,
        state: match state.as_str() {
            "bound" => LeaseState::Bound,
            "declined" => LeaseState::Declined,
            other => {
                return Err(StoreError::corrupt(
                    "lease state",
                    std::io::Error::other(format!("unknown lease state {other:?}")),
                ));
            }
        },
        reserved,
        expires_at: Timestamp::from_millisecond(expires)
            .map_err(|e| StoreError::corrupt("timestamp", e))?,
    })
}

/// Every stored lease and declined address, expired or not (dhcpd loads them at start).
pub fn all(conn: &Connection) -> Result<Vec<Lease>, StoreError> {
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM dhcp_leases ORDER BY ip"))?;
    let rows = stmt.query_map([], decode)?;
    rows.map(|r| into_lease(r?)).collect()
}

/// The bound lease of `mac`, if any (expired or not).
pub fn get_by_mac(conn: &Connection, mac: MacAddr) -> Result<Option<Lease>, StoreError> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM dhcp_leases WHERE mac = ?1 AND state = 'bound'"),
        [mac.to_string()],
        decode,
    )
    .optional()?
    .map(into_lease)
    .transpose()
}

/// Forgets a MAC's binding to another address. `state = 'bound'` lets SQLite use the partial
/// unique index on `mac` (declined rows have no MAC anyway); without it every lease write
/// scanned the table and commits slowed as it grew (1.8k leases/s instead of ~10k).
const DROP_OTHER_BINDING: &str =
    "DELETE FROM dhcp_leases WHERE mac = ?1 AND ip <> ?2 AND state = 'bound'";

/// Applies a batch of changes in one `IMMEDIATE` transaction: all or nothing.
pub fn apply(
    conn: &mut Connection,
    writes: &[LeaseWrite],
    now: Timestamp,
) -> Result<(), StoreError> {
    write(conn, |tx| {
        let now = now.as_millisecond();
        let mut drop_other = tx.prepare_cached(DROP_OTHER_BINDING)?;
        let mut upsert = tx.prepare_cached(
            "INSERT INTO dhcp_leases (ip, mac, state, reserved, expires_at_ms, updated_at_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
             ON CONFLICT(ip) DO UPDATE SET mac = excluded.mac, state = excluded.state, \
             reserved = excluded.reserved, expires_at_ms = excluded.expires_at_ms, \
             updated_at_ms = excluded.updated_at_ms",
        )?;
        let mut free = tx.prepare_cached("DELETE FROM dhcp_leases WHERE ip = ?1 AND mac = ?2")?;
        for w in writes {
            match w {
                LeaseWrite::Bind {
                    ip,
                    mac,
                    reserved,
                    expires_at,
                } => {
                    let (ip, mac) = (ip.to_string(), mac.to_string());
                    drop_other.execute(params![mac, ip])?;
                    upsert.execute(params![
                        ip,
                        mac,
                        "bound",
                        reserved,
                        expires_at.as_millisecond(),
                        now
                    ])?;
                }
                LeaseWrite::Decline { ip, until } => {
                    upsert.execute(params![
                        ip.to_string(),
                        None::<String>,
                        "declined",
                        false,
                        until.as_millisecond(),
                        now
                    ])?;
                }
                LeaseWrite::Free { ip, mac } => {
                    free.execute(params![ip.to_string(), mac.to_string()])?;
                }
            }
        }
        Ok(())
    })
}

/// Deletes every row that expired at or before `now` and returns them (for `LeaseEnded`).
pub fn delete_expired(conn: &mut Connection, now: Timestamp) -> Result<Vec<Lease>, StoreError> {
    write(conn, |tx| {
        let mut stmt = tx.prepare(&format!(
            "DELETE FROM dhcp_leases WHERE expires_at_ms <= ?1 RETURNING {COLUMNS}"
        ))?;
        let rows = stmt.query_map([now.as_millisecond()], decode)?;
        rows.map(|r| into_lease(r?)).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = crate::open_connection(&dir.path().join("t.db"), true).unwrap();
        crate::migrate(&mut conn).unwrap();
        (dir, conn)
    }

    #[test]
    fn the_hot_path_uses_the_mac_index() {
        let (_d, c) = db();
        let plan: Vec<String> = c
            .prepare(&format!("EXPLAIN QUERY PLAN {DROP_OTHER_BINDING}"))
            .unwrap()
            .query_map(["52:54:00:00:00:01", "10.0.0.1"], |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(
            plan.iter()
                .any(|p| p.contains("USING INDEX dhcp_leases_mac")),
            "{plan:?}"
        );
    }

    fn mac(n: u8) -> MacAddr {
        MacAddr::new([0x52, 0x54, 0, 0, 0, n])
    }

    fn t(ms: i64) -> Timestamp {
        Timestamp::from_millisecond(ms).unwrap()
    }

    fn bind(ip: [u8; 4], m: u8, exp: i64) -> LeaseWrite {
        LeaseWrite::Bind {
            ip: ip.into(),
            mac: mac(m),
            reserved: false,
            expires_at: t(exp),
        }
    }

    #[test]
    fn bind_renew_move_and_free() {
        let (_d, mut c) = db();
        apply(&mut c, &[bind([10, 0, 0, 5], 1, 1000)], t(0)).unwrap();
        apply(&mut c, &[bind([10, 0, 0, 5], 1, 5000)], t(1)).unwrap();
        let l = get_by_mac(&c, mac(1)).unwrap().unwrap();
        assert_eq!(
            (l.ip, l.expires_at, l.state),
            ([10, 0, 0, 5].into(), t(5000), LeaseState::Bound)
        );
        // Moving to another address drops the old one: one lease per MAC.
        apply(&mut c, &[bind([10, 0, 0, 6], 1, 6000)], t(2)).unwrap();
        assert_eq!(all(&c).unwrap().len(), 1);
        // Another client takes over the address of an expired lease.
        apply(&mut c, &[bind([10, 0, 0, 6], 2, 9000)], t(7000)).unwrap();
        assert!(get_by_mac(&c, mac(1)).unwrap().is_none());
        // Free only frees the holder's own lease.
        apply(
            &mut c,
            &[LeaseWrite::Free {
                ip: [10, 0, 0, 6].into(),
                mac: mac(1),
            }],
            t(3),
        )
        .unwrap();
        assert_eq!(all(&c).unwrap().len(), 1);
        apply(
            &mut c,
            &[LeaseWrite::Free {
                ip: [10, 0, 0, 6].into(),
                mac: mac(2),
            }],
            t(3),
        )
        .unwrap();
        assert!(all(&c).unwrap().is_empty());
    }

    #[test]
    fn decline_and_expiry_sweep() {
        let (_d, mut c) = db();
        apply(
            &mut c,
            &[
                bind([10, 0, 0, 5], 1, 1000),
                LeaseWrite::Decline {
                    ip: [10, 0, 0, 7].into(),
                    until: t(2000),
                },
                bind([10, 0, 0, 8], 3, 9000),
            ],
            t(0),
        )
        .unwrap();
        let declined = all(&c)
            .unwrap()
            .into_iter()
            .find(|l| l.ip == Ipv4Addr::new(10, 0, 0, 7))
            .unwrap();
        assert_eq!((declined.mac, declined.state), (None, LeaseState::Declined));
        let gone = delete_expired(&mut c, t(2000)).unwrap();
        assert_eq!(gone.len(), 2);
        assert_eq!(all(&c).unwrap().len(), 1);
    }

    #[test]
    fn a_failed_batch_writes_nothing() {
        let (_d, mut c) = db();
        // Two different addresses in one batch for the same MAC are fine (the last wins) …
        apply(
            &mut c,
            &[bind([10, 0, 0, 1], 1, 10), bind([10, 0, 0, 2], 1, 10)],
            t(0),
        )
        .unwrap();
        assert_eq!(all(&c).unwrap().len(), 1);
        // … but a row that violates the schema rolls the whole batch back.
        c.execute_batch("CREATE TRIGGER boom BEFORE INSERT ON dhcp_leases WHEN NEW.ip = '10.0.0.9' BEGIN SELECT RAISE(ABORT, 'no'); END;").unwrap();
        assert!(
            apply(
                &mut c,
                &[bind([10, 0, 0, 3], 4, 10), bind([10, 0, 0, 9], 5, 10)],
                t(0)
            )
            .is_err()
        );
        assert!(get_by_mac(&c, mac(4)).unwrap().is_none());
    }
}
