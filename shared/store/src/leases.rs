//! DHCP leases: the addresses dhcpd has bound to clients or set aside after a DHCPDECLINE.
//!
//! dhcpd is the only writer. It keeps the working set in memory and writes every change here
//! before it answers the client, through a group writer ([`Leases::group_writer`]: one
//! `IMMEDIATE` transaction per batch, each reply sent after its commit), so a restarted dhcpd
//! hands each client the address it had. Other daemons may read leases (e.g. to show a
//! machine's address) but must never write them.

use std::net::Ipv4Addr;

use dragonfly_core::MacAddr;
use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

use crate::boot::Sighting;
use crate::db::write;
use crate::error::Sql;
use crate::group::{GroupConfig, GroupWriter};
use crate::schema::Shared;
use crate::time::{from_column, to_column};
use crate::{Db, StoreError};

impl Db<Shared> {
    /// DHCP leases and declined addresses.
    pub fn leases(&self) -> Leases<'_> {
        Leases { db: self }
    }
}

/// The `dhcp_leases` table: see [`Db::leases`].
#[derive(Debug, Clone, Copy)]
pub struct Leases<'a> {
    db: &'a Db<Shared>,
}

impl Leases<'_> {
    /// Every stored lease and declined address, expired or not (dhcpd loads them at start).
    pub async fn all(self) -> Result<Vec<Lease>, StoreError> {
        self.db.run(|c| all(c)).await
    }

    /// The bound lease of `mac`, if any (expired or not).
    pub async fn get_by_mac(self, mac: MacAddr) -> Result<Option<Lease>, StoreError> {
        self.db.run(move |c| get_by_mac(c, mac)).await
    }

    /// The unexpired bound lease of `ip` at `now`, if any (who holds an address: the
    /// metadata service's "which machine is asking").
    pub async fn bound_at(self, ip: Ipv4Addr, now: Timestamp) -> Result<Option<Lease>, StoreError> {
        self.db
            .run(move |c| {
                c.query_row(
                    &format!(
                        "SELECT {COLUMNS} FROM dhcp_leases WHERE ip = ?1 AND state = 'bound' \
                         AND expires_at_ms > ?2"
                    ),
                    params![ip.to_string(), to_column(now)],
                    decode,
                )
                .optional()
                .sql()?
                .map(into_lease)
                .transpose()
            })
            .await
    }

    /// Applies `writes` in one `IMMEDIATE` transaction: all or nothing. For one-off batches;
    /// a stream of writes each waiting for its commit goes through [`Leases::group_writer`].
    pub async fn commit(self, writes: Vec<LeaseWrite>, now: Timestamp) -> Result<(), StoreError> {
        self.db.run(move |c| apply(c, &writes, now)).await
    }

    /// Starts a group writer (a thread named `lease-writer` with its own connection) that
    /// commits queued [`LeaseOp`]s in batches and then calls `on_done` with each one's
    /// context and result: the leases a [`LeaseOp::SweepExpired`] removed (empty for a
    /// write), or the error that rolled its batch back.
    pub async fn group_writer<Ctx, F>(
        self,
        config: GroupConfig,
        on_done: F,
    ) -> Result<GroupWriter<LeaseOp, Ctx>, StoreError>
    where
        Ctx: Send + 'static,
        F: FnMut(Ctx, Result<Vec<Lease>, &StoreError>) + Send + 'static,
    {
        GroupWriter::spawn(self.db, "lease-writer", config, apply_op, on_done).await
    }
}

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

/// One change, as dhcpd's policy produces them.
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

/// What the lease group writer commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOp {
    /// One change.
    Write(LeaseWrite),
    /// A boot answer: record that dhcpd saw `sighting.mac` network-boot, and apply `write`
    /// (the lease change the same answer commits, if any) in the same transaction. Only
    /// network-boot clients cost this row; the reply waits for it, so ipxed can see the
    /// sighting by the time the client asks for its script.
    Sighted {
        sighting: Sighting,
        write: Option<LeaseWrite>,
    },
    /// Delete every row that expired at or before the batch's time; its result is the rows
    /// deleted (for `LeaseEnded` events). Old boot sightings and sessions go with them.
    SweepExpired,
}

const COLUMNS: &str = "ip, mac, state, reserved, expires_at_ms";

type RawLease = (String, Option<String>, String, bool, i64);

fn decode(r: &Row<'_>) -> rusqlite::Result<RawLease> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn into_lease(row: RawLease) -> Result<Lease, StoreError> {
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
        expires_at: from_column(expires)?,
    })
}

fn all(conn: &Connection) -> Result<Vec<Lease>, StoreError> {
    let mut stmt = conn
        .prepare(&format!("SELECT {COLUMNS} FROM dhcp_leases ORDER BY ip"))
        .sql()?;
    let rows = stmt.query_map([], decode).sql()?;
    rows.map(|r| into_lease(r.sql()?)).collect()
}

fn get_by_mac(conn: &Connection, mac: MacAddr) -> Result<Option<Lease>, StoreError> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM dhcp_leases WHERE mac = ?1 AND state = 'bound'"),
        [mac.to_string()],
        decode,
    )
    .optional()
    .sql()?
    .map(into_lease)
    .transpose()
}

/// Forgets a MAC's binding to another address. `state = 'bound'` lets SQLite use the partial
/// unique index on `mac` (declined rows have no MAC anyway); without it every lease write
/// scanned the table and commits slowed as it grew (1.8k leases/s instead of ~10k).
const DROP_OTHER_BINDING: &str =
    "DELETE FROM dhcp_leases WHERE mac = ?1 AND ip <> ?2 AND state = 'bound'";

const UPSERT: &str = "INSERT INTO dhcp_leases (ip, mac, state, reserved, expires_at_ms, updated_at_ms) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
     ON CONFLICT(ip) DO UPDATE SET mac = excluded.mac, state = excluded.state, \
     reserved = excluded.reserved, expires_at_ms = excluded.expires_at_ms, \
     updated_at_ms = excluded.updated_at_ms";

/// Applies one change inside `tx`. Statements are cached, so a batch prepares each once.
fn apply_write(tx: &Transaction<'_>, w: &LeaseWrite, now: Timestamp) -> Result<(), StoreError> {
    let now = to_column(now);
    match w {
        LeaseWrite::Bind {
            ip,
            mac,
            reserved,
            expires_at,
        } => {
            let (ip, mac) = (ip.to_string(), mac.to_string());
            tx.prepare_cached(DROP_OTHER_BINDING)
                .sql()?
                .execute(params![mac, ip])
                .sql()?;
            tx.prepare_cached(UPSERT)
                .sql()?
                .execute(params![
                    ip,
                    mac,
                    "bound",
                    reserved,
                    to_column(*expires_at),
                    now
                ])
                .sql()?;
        }
        LeaseWrite::Decline { ip, until } => {
            tx.prepare_cached(UPSERT)
                .sql()?
                .execute(params![
                    ip.to_string(),
                    None::<String>,
                    "declined",
                    false,
                    to_column(*until),
                    now
                ])
                .sql()?;
        }
        LeaseWrite::Free { ip, mac } => {
            tx.prepare_cached("DELETE FROM dhcp_leases WHERE ip = ?1 AND mac = ?2")
                .sql()?
                .execute(params![ip.to_string(), mac.to_string()])
                .sql()?;
        }
    }
    Ok(())
}

/// Deletes every row that expired at or before `now` and returns them.
fn sweep_expired(tx: &Transaction<'_>, now: Timestamp) -> Result<Vec<Lease>, StoreError> {
    let mut stmt = tx
        .prepare_cached(&format!(
            "DELETE FROM dhcp_leases WHERE expires_at_ms <= ?1 RETURNING {COLUMNS}"
        ))
        .sql()?;
    let rows = stmt.query_map([to_column(now)], decode).sql()?;
    rows.map(|r| into_lease(r.sql()?)).collect()
}

/// The group writer's [`crate::group::ApplyFn`] for leases.
fn apply_op(tx: &Transaction<'_>, op: &LeaseOp, now: Timestamp) -> Result<Vec<Lease>, StoreError> {
    match op {
        LeaseOp::Write(w) => apply_write(tx, w, now).map(|()| Vec::new()),
        LeaseOp::Sighted { sighting, write } => {
            crate::boot::record_sighting(tx, sighting)?;
            if let Some(w) = write {
                apply_write(tx, w, now)?;
            }
            Ok(Vec::new())
        }
        LeaseOp::SweepExpired => {
            crate::boot::sweep(tx, now)?;
            sweep_expired(tx, now)
        }
    }
}

/// Applies a batch of changes in one `IMMEDIATE` transaction: all or nothing.
fn apply(conn: &mut Connection, writes: &[LeaseWrite], now: Timestamp) -> Result<(), StoreError> {
    write(conn, |tx| {
        writes.iter().try_for_each(|w| apply_write(tx, w, now))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        crate::migrate_file(&path).unwrap();
        (dir, crate::db::open_connection(&path, false).unwrap())
    }

    fn delete_expired(c: &mut Connection, now: Timestamp) -> Result<Vec<Lease>, StoreError> {
        write(c, |tx| sweep_expired(tx, now))
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

    #[tokio::test]
    async fn the_handle_commits_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        crate::migrate_file(&path).unwrap();
        let db = Db::open(&path).await.unwrap();
        let leases = db.leases();
        leases
            .commit(
                vec![bind([10, 0, 0, 5], 1, 5000), bind([10, 0, 0, 6], 2, 5000)],
                t(0),
            )
            .await
            .unwrap();
        assert_eq!(leases.all().await.unwrap().len(), 2);
        let l = leases.get_by_mac(mac(2)).await.unwrap().unwrap();
        assert_eq!((l.ip, l.expires_at), ([10, 0, 0, 6].into(), t(5000)));
        assert!(leases.get_by_mac(mac(3)).await.unwrap().is_none());
    }
}
