//! Boot sightings and boot sessions: what makes an agent's token belong to one real boot.
//!
//! A boot token alone (an HMAC over MAC, nonce and expiry) proves only that ipxed minted it.
//! Two facts kept here decide whether it is minted at all and whether it still counts:
//!
//! - A **sighting** ([`Boot::sighted`]) is dhcpd's witness that a MAC network-booted: written
//!   (one row per MAC, overwritten) whenever dhcpd gives it a boot answer, in the same batch as
//!   its lease writes ([`crate::leases::LeaseOp::Sighted`]). ipxed reads it, with the MAC's
//!   bound lease, before minting ([`Boot::mint_facts`]); the *decision* is ipxed's, this module
//!   only reports facts.
//! - A **session** ([`Boot::open_session`]) is the boot a token belongs to: one per MAC, its
//!   nonce the token's. Opening one replaces the MAC's previous session, so a token of a past
//!   boot stops working; reaching `Ready` revokes it (in
//!   [`crate::machines::Machines::transition`], same transaction). apid checks every agent
//!   request against it ([`Boot::session`]).
//!
//! Must never decide policy (windows, address matching): that belongs to the daemons.

use std::net::Ipv4Addr;

use dragonfly_core::MacAddr;
use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use crate::db::write;
use crate::error::Sql;
use crate::schema::Shared;
use crate::time::{from_column, from_column_opt, to_column};
use crate::{Db, StoreError};

impl Db<Shared> {
    /// Boot sightings and boot sessions.
    pub fn boot(&self) -> Boot<'_> {
        Boot { db: self }
    }
}

/// The `boot_sightings` and `boot_sessions` tables: see [`Db::boot`].
#[derive(Debug, Clone, Copy)]
pub struct Boot<'a> {
    db: &'a Db<Shared>,
}

/// How dhcpd was answering when it saw the boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SightedVia {
    Reservation,
    Proxy,
    Autoproxy,
}

impl SightedVia {
    fn as_str(self) -> &'static str {
        match self {
            Self::Reservation => "reservation",
            Self::Proxy => "proxy",
            Self::Autoproxy => "autoproxy",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "reservation" => Ok(Self::Reservation),
            "proxy" => Ok(Self::Proxy),
            "autoproxy" => Ok(Self::Autoproxy),
            other => Err(StoreError::corrupt(
                "sighting mode",
                std::io::Error::other(format!("unknown mode {other:?}")),
            )),
        }
    }
}

/// dhcpd saw `mac` network-boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sighting {
    pub mac: MacAddr,
    pub seen_at: Timestamp,
    /// The address dhcpd offered or leased it, or the one it asked from; `None` when it had
    /// none (a ProxyDHCP DISCOVER comes from 0.0.0.0).
    pub address: Option<Ipv4Addr>,
    pub via: SightedVia,
}

/// What ipxed needs to decide whether to mint a token for `mac` (one read).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MintFacts {
    /// The MAC's last sighting.
    pub sighting: Option<Sighting>,
    /// The address of the MAC's bound, unexpired lease.
    pub leased: Option<Ipv4Addr>,
    /// When the MAC's current boot session was opened, if it has one.
    pub session_opened: Option<Timestamp>,
}

/// A MAC's current boot session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootSession {
    pub mac: MacAddr,
    pub nonce: [u8; 16],
    pub created_at: Timestamp,
    /// The session's end: no token of it is valid or renewed after this.
    pub expires_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

impl BootSession {
    /// Whether a token carrying `nonce` belongs to this session and the session still counts
    /// at `now`. The nonce is compared in constant time (it is a secret's part).
    pub fn admits(&self, nonce: &[u8; 16], now: Timestamp) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(self.nonce.ct_eq(nonce)) && self.revoked_at.is_none() && now < self.expires_at
    }
}

/// Sightings older than this are swept (dhcpd's expiry sweep); ipxed's window must be shorter.
pub const SIGHTING_RETENTION: jiff::SignedDuration = jiff::SignedDuration::from_hours(1);

impl Boot<'_> {
    /// Records a sighting now (tests and tools; dhcpd batches them through its lease writer).
    pub async fn sighted(self, s: Sighting) -> Result<(), StoreError> {
        self.db
            .run(move |c| write(c, |tx| record_sighting(tx, &s)))
            .await
    }

    /// The facts about `mac` ipxed decides a mint on, read at `now`.
    pub async fn mint_facts(self, mac: MacAddr, now: Timestamp) -> Result<MintFacts, StoreError> {
        self.db.run(move |c| mint_facts(c, mac, now)).await
    }

    /// Opens `mac`'s session for a new boot, replacing (and so ending) any previous one.
    pub async fn open_session(
        self,
        mac: MacAddr,
        nonce: [u8; 16],
        now: Timestamp,
        expires_at: Timestamp,
    ) -> Result<(), StoreError> {
        self.db
            .run(move |c| write(c, |tx| open_session(tx, mac, &nonce, now, expires_at)))
            .await
    }

    /// `mac`'s current session, if any (revoked and expired ones included: the caller checks
    /// [`BootSession::admits`]).
    pub async fn session(self, mac: MacAddr) -> Result<Option<BootSession>, StoreError> {
        self.db.run(move |c| session(c, mac)).await
    }

    /// Revokes `mac`'s session (no-op without one).
    pub async fn revoke(self, mac: MacAddr, now: Timestamp) -> Result<(), StoreError> {
        self.db
            .run(move |c| {
                write(c, |tx| {
                    tx.execute(
                        "UPDATE boot_sessions SET revoked_at_ms = ?2 \
                         WHERE mac = ?1 AND revoked_at_ms IS NULL",
                        params![mac.to_string(), to_column(now)],
                    )
                    .sql()
                    .map(drop)
                })
            })
            .await
    }
}

const UPSERT_SIGHTING: &str = "INSERT INTO boot_sightings (mac, seen_at_ms, address, via) \
     VALUES (?1, ?2, ?3, ?4) ON CONFLICT(mac) DO UPDATE SET seen_at_ms = excluded.seen_at_ms, \
     address = excluded.address, via = excluded.via";

/// Writes a sighting inside `tx` (a cached statement: dhcpd's batches prepare it once).
pub(crate) fn record_sighting(tx: &Transaction<'_>, s: &Sighting) -> Result<(), StoreError> {
    tx.prepare_cached(UPSERT_SIGHTING)
        .sql()?
        .execute(params![
            s.mac.to_string(),
            to_column(s.seen_at),
            s.address.map(|a| a.to_string()),
            s.via.as_str()
        ])
        .sql()
        .map(drop)
}

/// Removes sightings older than [`SIGHTING_RETENTION`] and sessions that ended a day ago.
pub(crate) fn sweep(tx: &Transaction<'_>, now: Timestamp) -> Result<(), StoreError> {
    let sightings = now
        .checked_sub(SIGHTING_RETENTION)
        .map_err(|e| StoreError::corrupt("sweep time", e))?;
    let sessions = now
        .checked_sub(jiff::SignedDuration::from_hours(24))
        .map_err(|e| StoreError::corrupt("sweep time", e))?;
    tx.prepare_cached("DELETE FROM boot_sightings WHERE seen_at_ms < ?1")
        .sql()?
        .execute([to_column(sightings)])
        .sql()?;
    tx.prepare_cached("DELETE FROM boot_sessions WHERE expires_at_ms < ?1")
        .sql()?
        .execute([to_column(sessions)])
        .sql()?;
    Ok(())
}

fn mint_facts(conn: &Connection, mac: MacAddr, now: Timestamp) -> Result<MintFacts, StoreError> {
    let key = mac.to_string();
    let sighting = conn
        .prepare_cached("SELECT seen_at_ms, address, via FROM boot_sightings WHERE mac = ?1")
        .sql()?
        .query_row([&key], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .optional()
        .sql()?
        .map(|(seen, address, via)| {
            Ok::<_, StoreError>(Sighting {
                mac,
                seen_at: from_column(seen)?,
                address: address
                    .map(|a| a.parse())
                    .transpose()
                    .map_err(|e| StoreError::corrupt("sighting address", e))?,
                via: SightedVia::parse(&via)?,
            })
        })
        .transpose()?;
    let leased = conn
        .prepare_cached(
            "SELECT ip FROM dhcp_leases WHERE mac = ?1 AND state = 'bound' AND expires_at_ms > ?2",
        )
        .sql()?
        .query_row(params![key, to_column(now)], |r| r.get::<_, String>(0))
        .optional()
        .sql()?
        .map(|ip| ip.parse())
        .transpose()
        .map_err(|e| StoreError::corrupt("lease address", e))?;
    let session_opened = conn
        .prepare_cached("SELECT created_at_ms FROM boot_sessions WHERE mac = ?1")
        .sql()?
        .query_row([&key], |r| r.get::<_, i64>(0))
        .optional()
        .sql()?
        .map(from_column)
        .transpose()?;
    Ok(MintFacts {
        sighting,
        leased,
        session_opened,
    })
}

fn open_session(
    tx: &Transaction<'_>,
    mac: MacAddr,
    nonce: &[u8; 16],
    now: Timestamp,
    expires_at: Timestamp,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO boot_sessions (mac, nonce, created_at_ms, expires_at_ms, revoked_at_ms) \
         VALUES (?1, ?2, ?3, ?4, NULL) ON CONFLICT(mac) DO UPDATE SET nonce = excluded.nonce, \
         created_at_ms = excluded.created_at_ms, expires_at_ms = excluded.expires_at_ms, \
         revoked_at_ms = NULL",
    )
    .sql()?
    .execute(params![
        mac.to_string(),
        &nonce[..],
        to_column(now),
        to_column(expires_at)
    ])
    .sql()
    .map(drop)
}

/// [`Boot::session`] inside another operation's transaction.
pub(crate) fn session_in(
    conn: &Connection,
    mac: MacAddr,
) -> Result<Option<BootSession>, StoreError> {
    session(conn, mac)
}

fn session(conn: &Connection, mac: MacAddr) -> Result<Option<BootSession>, StoreError> {
    conn.prepare_cached(
        "SELECT nonce, created_at_ms, expires_at_ms, revoked_at_ms FROM boot_sessions \
         WHERE mac = ?1",
    )
    .sql()?
    .query_row([mac.to_string()], |r| {
        Ok((
            r.get::<_, Vec<u8>>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, Option<i64>>(3)?,
        ))
    })
    .optional()
    .sql()?
    .map(|(nonce, created, expires, revoked)| {
        Ok(BootSession {
            mac,
            nonce: nonce.try_into().map_err(|_| {
                StoreError::corrupt("session nonce", std::io::Error::other("not 16 bytes"))
            })?,
            created_at: from_column(created)?,
            expires_at: from_column(expires)?,
            revoked_at: from_column_opt(revoked)?,
        })
    })
    .transpose()
}

/// Revokes the sessions of every MAC of machine `id` (inside the transaction that made it
/// `Ready`).
pub(crate) fn revoke_machine(
    tx: &Transaction<'_>,
    id: &str,
    now: Timestamp,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "UPDATE boot_sessions SET revoked_at_ms = ?2 WHERE revoked_at_ms IS NULL \
         AND mac IN (SELECT mac FROM machine_macs WHERE machine_id = ?1)",
    )
    .sql()?
    .execute(params![id, to_column(now)])
    .sql()
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{NewMachine, TestDb};
    use dragonfly_core::MachineState;

    fn mac(n: u8) -> MacAddr {
        MacAddr::new([0x52, 0x54, 0, 0, 0xb0, n])
    }

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[tokio::test]
    async fn a_sighting_is_overwritten_and_read_with_the_lease() {
        let d = TestDb::new();
        let boot = d.db.boot();
        assert_eq!(
            boot.mint_facts(mac(1), t(0)).await.unwrap(),
            MintFacts::default()
        );
        for (at, addr) in [(0, None), (5, Some(Ipv4Addr::new(10, 0, 0, 5)))] {
            boot.sighted(Sighting {
                mac: mac(1),
                seen_at: t(at),
                address: addr,
                via: SightedVia::Reservation,
            })
            .await
            .unwrap();
        }
        let f = boot.mint_facts(mac(1), t(6)).await.unwrap();
        let s = f.sighting.unwrap();
        assert_eq!(
            (s.seen_at, s.address),
            (t(5), Some(Ipv4Addr::new(10, 0, 0, 5)))
        );
        assert_eq!(f.leased, None);
        d.db.leases()
            .commit(
                vec![crate::leases::LeaseWrite::Bind {
                    ip: Ipv4Addr::new(10, 0, 0, 7),
                    mac: mac(1),
                    reserved: false,
                    expires_at: t(100),
                }],
                t(6),
            )
            .await
            .unwrap();
        let f = boot.mint_facts(mac(1), t(7)).await.unwrap();
        assert_eq!(f.leased, Some(Ipv4Addr::new(10, 0, 0, 7)));
        // An expired lease is no evidence.
        assert_eq!(boot.mint_facts(mac(1), t(100)).await.unwrap().leased, None);
    }

    #[tokio::test]
    async fn a_new_session_ends_the_old_one() {
        let d = TestDb::new();
        let boot = d.db.boot();
        boot.open_session(mac(1), [1; 16], t(0), t(3600))
            .await
            .unwrap();
        let s = boot.session(mac(1)).await.unwrap().unwrap();
        assert!(s.admits(&[1; 16], t(1)));
        assert!(!s.admits(&[2; 16], t(1)));
        assert!(!s.admits(&[1; 16], t(3600)), "expired");
        boot.open_session(mac(1), [2; 16], t(10), t(3600))
            .await
            .unwrap();
        let s = boot.session(mac(1)).await.unwrap().unwrap();
        assert!(!s.admits(&[1; 16], t(11)), "the old boot's nonce is dead");
        assert!(s.admits(&[2; 16], t(11)));
        boot.revoke(mac(1), t(12)).await.unwrap();
        let s = boot.session(mac(1)).await.unwrap().unwrap();
        assert!(!s.admits(&[2; 16], t(13)), "revoked");
        assert!(boot.session(mac(2)).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn reaching_ready_revokes_every_mac_of_the_machine() {
        let d = TestDb::new();
        let m = d.machine(NewMachine::with_macs([mac(1), mac(2)])).await;
        let boot = d.db.boot();
        let now = Timestamp::now();
        let later = now + jiff::SignedDuration::from_hours(1);
        for n in [1, 2, 3] {
            boot.open_session(mac(n), [n; 16], now, later)
                .await
                .unwrap();
        }
        d.set_state(m.id, MachineState::Provisioning, Some(uuid::Uuid::nil()))
            .await;
        assert!(
            boot.session(mac(1))
                .await
                .unwrap()
                .unwrap()
                .admits(&[1; 16], now)
        );
        d.set_state(m.id, MachineState::Ready, None).await;
        for n in [1, 2] {
            let s = boot.session(mac(n)).await.unwrap().unwrap();
            assert!(s.revoked_at.is_some(), "mac {n}");
        }
        let other = boot.session(mac(3)).await.unwrap().unwrap();
        assert!(
            other.admits(&[3; 16], now),
            "another machine's boot is untouched"
        );
    }
}
