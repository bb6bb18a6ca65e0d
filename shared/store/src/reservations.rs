//! Reserved addresses: an operator's fixed IPv4 address per machine (migration
//! `0007_reservations`), and what dhcpd publishes about the subnets it serves.
//!
//! Two writers with separate tables. dhcpd, at every start, replaces what it serves
//! ([`Reservations::publish`]: its mode, its subnets with their options, and its configuration
//! file's reservations), so that a reservation is checked against the subnets dhcpd really
//! has rather than a second copy of its file. apid writes the operator's reservations
//! ([`Reservations::reserve`]), checking in the same `IMMEDIATE` transaction that the address
//! is in a published subnet, is not the subnet's network, broadcast or router address, and is
//! not taken by the file, another machine or another client's unexpired lease — so two
//! operators racing for one address cannot both win. dhcpd reads them whole
//! ([`Reservations::all`]) at start, on a hint and on a period.
//!
//! The file's reservations win over the table's: dhcpd skips (and logs) a stored reservation
//! that collides with one, which only happens when the file changed after the reservation was
//! made.

use std::fmt;
use std::net::Ipv4Addr;

use dragonfly_core::{MacAddr, MachineId};
use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

use crate::db::write;
use crate::error::Sql;
use crate::schema::Shared;
use crate::time::{from_column, to_column};
use crate::{Db, StoreError};

impl Db<Shared> {
    /// Reserved addresses and the subnets dhcpd serves.
    pub fn reservations(&self) -> Reservations<'_> {
        Reservations { db: self }
    }
}

/// The `dhcp_reservations`, `dhcp_server`, `dhcp_subnets` and `dhcp_fixed` tables: see
/// [`Db::reservations`].
#[derive(Debug, Clone, Copy)]
pub struct Reservations<'a> {
    db: &'a Db<Shared>,
}

/// A subnet as dhcpd serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedSubnet {
    pub network: Ipv4Addr,
    pub prefix: u8,
    /// First and last pool address, inclusive.
    pub pool: Option<(Ipv4Addr, Ipv4Addr)>,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain_name: Option<String>,
}

impl PublishedSubnet {
    fn mask(&self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.network)
    }

    /// The subnet's broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !self.mask())
    }

    pub fn in_pool(&self, ip: Ipv4Addr) -> bool {
        self.pool
            .is_some_and(|(a, b)| (u32::from(a)..=u32::from(b)).contains(&u32::from(ip)))
    }
}

/// What dhcpd serves: its mode, subnets and the file's reservations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub mode: String,
    pub subnets: Vec<PublishedSubnet>,
    pub fixed: Vec<(MacAddr, Ipv4Addr)>,
    pub published_at: Timestamp,
}

/// An operator's reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub machine: MachineId,
    pub mac: MacAddr,
    pub ip: Ipv4Addr,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub resource_version: i64,
}

/// Why an address cannot be reserved. The first group is the request's fault (422 in the
/// API), the second a conflict with what exists (409).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// dhcpd has never published what it serves (it has not run against this store).
    NotPublished,
    /// dhcpd runs in a proxy mode: another DHCP server hands out addresses.
    NotServing { mode: String },
    /// The address is in no subnet dhcpd serves.
    Outside { ip: Ipv4Addr },
    /// The subnet's network or broadcast address, or its router.
    Unusable { ip: Ipv4Addr, what: &'static str },
    /// The MAC is not one of the machine's.
    ForeignMac { mac: MacAddr },
    /// The configuration file reserves this address (or this MAC) already.
    InFile { ip: Ipv4Addr, mac: MacAddr },
    /// Another machine has reserved this address.
    Reserved { ip: Ipv4Addr, machine: String },
    /// Another client holds an unexpired lease on this address.
    Leased {
        ip: Ipv4Addr,
        mac: MacAddr,
        until: Timestamp,
    },
}

impl Refusal {
    /// Whether the refusal is a conflict with existing state (409) rather than a bad
    /// request (422).
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            Self::InFile { .. } | Self::Reserved { .. } | Self::Leased { .. }
        )
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotPublished => f.write_str(
                "dhcpd has not published the subnets it serves (has it started against this store?)",
            ),
            Self::NotServing { mode } => write!(
                f,
                "dhcpd runs in {mode} mode and hands out no addresses: reserve the address in the \
                 network's DHCP server"
            ),
            Self::Outside { ip } => write!(f, "{ip} is in no subnet dhcpd serves"),
            Self::Unusable { ip, what } => write!(f, "{ip} is the subnet's {what}"),
            Self::ForeignMac { mac } => write!(f, "{mac} is not a MAC address of this machine"),
            Self::InFile { ip, mac } => write!(
                f,
                "dhcpd's configuration file reserves {ip} for {mac} ([[dhcpd.reservations]])"
            ),
            Self::Reserved { ip, machine } => write!(f, "{ip} is reserved for machine {machine}"),
            Self::Leased { ip, mac, until } => {
                write!(f, "{ip} is leased to {mac} until {until}")
            }
        }
    }
}

impl std::error::Error for Refusal {}

#[derive(Debug, thiserror::Error)]
#[error("{0:?}")]
struct Bad(String);

fn corrupt(what: &'static str, value: &str) -> StoreError {
    StoreError::corrupt(what, Bad(value.to_owned()))
}

fn parse_ip(what: &'static str, s: &str) -> Result<Ipv4Addr, StoreError> {
    s.parse().map_err(|_| corrupt(what, s))
}

fn parse_mac(s: &str) -> Result<MacAddr, StoreError> {
    s.parse().map_err(|_| corrupt("MAC address", s))
}

impl Reservations<'_> {
    /// Replaces what dhcpd serves (dhcpd, at start).
    pub async fn publish(
        self,
        mode: &str,
        subnets: Vec<PublishedSubnet>,
        fixed: Vec<(MacAddr, Ipv4Addr)>,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mode = mode.to_owned();
        self.db
            .run(move |c| {
                write(c, |tx| {
                    tx.execute(
                        "INSERT INTO dhcp_server (id, mode, published_at_ms) VALUES (1, ?1, ?2) \
                         ON CONFLICT (id) DO UPDATE SET mode = ?1, published_at_ms = ?2",
                        params![mode, to_column(now)],
                    )
                    .sql()?;
                    tx.execute("DELETE FROM dhcp_subnets", []).sql()?;
                    tx.execute("DELETE FROM dhcp_fixed", []).sql()?;
                    for (i, s) in subnets.iter().enumerate() {
                        let dns: Vec<String> = s.dns.iter().map(ToString::to_string).collect();
                        let dns = serde_json::to_string(&dns)
                            .map_err(|e| StoreError::corrupt("DNS servers", e))?;
                        tx.execute(
                            "INSERT INTO dhcp_subnets (network, prefix, pool_start, pool_end, \
                             router, dns, domain_name, position) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                            params![
                                s.network.to_string(),
                                s.prefix,
                                s.pool.map(|p| p.0.to_string()),
                                s.pool.map(|p| p.1.to_string()),
                                s.router.map(|r| r.to_string()),
                                dns,
                                s.domain_name,
                                i64::try_from(i).unwrap_or(i64::MAX),
                            ],
                        )
                        .sql()?;
                    }
                    for (mac, ip) in &fixed {
                        tx.execute(
                            "INSERT INTO dhcp_fixed (mac, ip) VALUES (?1, ?2)",
                            params![mac.to_string(), ip.to_string()],
                        )
                        .sql()?;
                    }
                    Ok(())
                })
            })
            .await
    }

    /// What dhcpd last published, if it ever did.
    pub async fn published(self) -> Result<Option<Published>, StoreError> {
        self.db.run(|c| published(c)).await
    }

    /// Reserves `ip` for `machine` on `mac` (one of its MACs), replacing its reservation if it
    /// had one. `Ok(Err(_))` says why the address cannot be had; [`StoreError::NotFound`]
    /// without the machine; with `expected`, the reservation's version must still be it
    /// ([`StoreError::Conflict`]; 0 for "none yet").
    pub async fn reserve(
        self,
        machine: MachineId,
        mac: MacAddr,
        ip: Ipv4Addr,
        expected: Option<i64>,
        now: Timestamp,
    ) -> Result<Result<Reservation, Refusal>, StoreError> {
        self.db
            .run(move |c| {
                write(c, |tx| {
                    if crate::machines::get(tx, machine)?.is_none() {
                        return Err(StoreError::NotFound { what: "machine" });
                    }
                    let before = get_tx(tx, machine)?;
                    if let Some(expected) = expected {
                        let current = before.as_ref().map_or(0, |r| r.resource_version);
                        if current != expected {
                            return Err(StoreError::Conflict { expected, current });
                        }
                    }
                    if let Err(refusal) = check(tx, machine, mac, ip, now)? {
                        return Ok(Err(refusal));
                    }
                    tx.execute(
                        "INSERT INTO dhcp_reservations (machine_id, mac, ip, created_at_ms, \
                         updated_at_ms, resource_version) VALUES (?1, ?2, ?3, ?4, ?4, 1) \
                         ON CONFLICT (machine_id) DO UPDATE SET mac = ?2, ip = ?3, \
                         updated_at_ms = ?4, resource_version = resource_version + 1",
                        params![
                            machine.0.to_string(),
                            mac.to_string(),
                            ip.to_string(),
                            to_column(now)
                        ],
                    )
                    .sql()?;
                    get_tx(tx, machine)?
                        .ok_or(StoreError::NotFound {
                            what: "reservation",
                        })
                        .map(Ok)
                })
            })
            .await
    }

    /// A machine's reservation.
    pub async fn get(self, machine: MachineId) -> Result<Option<Reservation>, StoreError> {
        self.db.run(move |c| get_tx(c, machine)).await
    }

    /// The reservations of these machines (those that have one): a page of machine views.
    pub async fn of(
        self,
        machines: Vec<MachineId>,
    ) -> Result<std::collections::HashMap<MachineId, Reservation>, StoreError> {
        self.db
            .run(move |c| {
                let mut out = std::collections::HashMap::new();
                for machine in machines {
                    if let Some(r) = get_tx(c, machine)? {
                        out.insert(machine, r);
                    }
                }
                Ok(out)
            })
            .await
    }

    /// The machine's reserved address with its subnet's router, DNS and domain, when it has
    /// one in a subnet dhcpd serves: what its network configuration says.
    pub async fn fixed_address(
        self,
        machine: MachineId,
    ) -> Result<Option<dragonfly_core::metadata::FixedAddress>, StoreError> {
        self.db
            .run(move |c| {
                let Some(r) = get_tx(c, machine)? else {
                    return Ok(None);
                };
                let subnets = published(c)?.map(|p| p.subnets).unwrap_or_default();
                Ok(subnets.iter().find(|s| s.contains(r.ip)).map(|s| {
                    dragonfly_core::metadata::FixedAddress {
                        mac: r.mac,
                        ip: r.ip,
                        prefix: s.prefix,
                        router: s.router,
                        dns: s.dns.clone(),
                        domain: s.domain_name.clone(),
                    }
                }))
            })
            .await
    }

    /// Removes a machine's reservation; `false` if it had none.
    pub async fn release(self, machine: MachineId) -> Result<bool, StoreError> {
        self.db
            .run(move |c| {
                let n = c
                    .execute(
                        "DELETE FROM dhcp_reservations WHERE machine_id = ?1",
                        [machine.0.to_string()],
                    )
                    .sql()?;
                Ok(n > 0)
            })
            .await
    }

    /// Every reservation, by address (dhcpd's reload).
    pub async fn all(self) -> Result<Vec<Reservation>, StoreError> {
        self.db
            .run(|c| {
                let mut st = c
                    .prepare_cached(&format!(
                        "SELECT {COLUMNS} FROM dhcp_reservations ORDER BY ip"
                    ))
                    .sql()?;
                let rows = st.query_map([], raw).sql()?;
                let mut out = Vec::new();
                for r in rows {
                    out.push(decode(r.sql()?)?);
                }
                Ok(out)
            })
            .await
    }
}

const COLUMNS: &str = "machine_id, mac, ip, created_at_ms, updated_at_ms, resource_version";

type Raw = (String, String, String, i64, i64, i64);

fn raw(r: &Row<'_>) -> rusqlite::Result<Raw> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

fn decode((id, mac, ip, created, updated, version): Raw) -> Result<Reservation, StoreError> {
    Ok(Reservation {
        machine: MachineId(id.parse().map_err(|_| corrupt("machine id", &id))?),
        mac: parse_mac(&mac)?,
        ip: parse_ip("reserved address", &ip)?,
        created_at: from_column(created)?,
        updated_at: from_column(updated)?,
        resource_version: version,
    })
}

fn get_tx(c: &Connection, machine: MachineId) -> Result<Option<Reservation>, StoreError> {
    c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM dhcp_reservations WHERE machine_id = ?1"
    ))
    .sql()?
    .query_row([machine.0.to_string()], raw)
    .optional()
    .sql()?
    .map(decode)
    .transpose()
}

fn published(c: &Connection) -> Result<Option<Published>, StoreError> {
    let Some((mode, at)) = c
        .query_row(
            "SELECT mode, published_at_ms FROM dhcp_server WHERE id = 1",
            [],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
        )
        .optional()
        .sql()?
    else {
        return Ok(None);
    };
    let mut st = c
        .prepare_cached(
            "SELECT network, prefix, pool_start, pool_end, router, dns, domain_name \
             FROM dhcp_subnets ORDER BY position",
        )
        .sql()?;
    type RawSubnet = (
        String,
        u8,
        Option<String>,
        Option<String>,
        Option<String>,
        String,
        Option<String>,
    );
    let rows = st
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })
        .sql()?;
    let mut subnets = Vec::new();
    for row in rows {
        let (network, prefix, start, end, router, dns, domain_name): RawSubnet = row.sql()?;
        let pool = match (start, end) {
            (Some(a), Some(b)) => Some((parse_ip("pool start", &a)?, parse_ip("pool end", &b)?)),
            _ => None,
        };
        let dns: Vec<String> =
            serde_json::from_str(&dns).map_err(|e| StoreError::corrupt("DNS servers", e))?;
        subnets.push(PublishedSubnet {
            network: parse_ip("subnet", &network)?,
            prefix: prefix.min(32),
            pool,
            router: router.map(|r| parse_ip("router", &r)).transpose()?,
            dns: dns
                .iter()
                .map(|d| parse_ip("DNS server", d))
                .collect::<Result<_, _>>()?,
            domain_name,
        });
    }
    let mut st = c
        .prepare_cached("SELECT mac, ip FROM dhcp_fixed ORDER BY ip")
        .sql()?;
    let rows = st
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .sql()?;
    let mut fixed = Vec::new();
    for row in rows {
        let (mac, ip) = row.sql()?;
        fixed.push((parse_mac(&mac)?, parse_ip("fixed address", &ip)?));
    }
    Ok(Some(Published {
        mode,
        subnets,
        fixed,
        published_at: from_column(at)?,
    }))
}

/// Whether `machine` may have `ip` on `mac` (see the module docs for the rules).
fn check(
    tx: &Transaction<'_>,
    machine: MachineId,
    mac: MacAddr,
    ip: Ipv4Addr,
    now: Timestamp,
) -> Result<Result<(), Refusal>, StoreError> {
    let owner: Option<String> = tx
        .query_row(
            "SELECT machine_id FROM machine_macs WHERE mac = ?1",
            [mac.to_string()],
            |r| r.get(0),
        )
        .optional()
        .sql()?;
    if owner.as_deref() != Some(machine.0.to_string().as_str()) {
        return Ok(Err(Refusal::ForeignMac { mac }));
    }
    let Some(published) = published(tx)? else {
        return Ok(Err(Refusal::NotPublished));
    };
    if published.mode != "reservation" {
        return Ok(Err(Refusal::NotServing {
            mode: published.mode,
        }));
    }
    let Some(subnet) = published.subnets.iter().find(|s| s.contains(ip)) else {
        return Ok(Err(Refusal::Outside { ip }));
    };
    if subnet.prefix < 31 {
        if ip == subnet.network {
            return Ok(Err(Refusal::Unusable {
                ip,
                what: "network address",
            }));
        }
        if ip == subnet.broadcast() {
            return Ok(Err(Refusal::Unusable {
                ip,
                what: "broadcast address",
            }));
        }
    }
    if subnet.router == Some(ip) {
        return Ok(Err(Refusal::Unusable { ip, what: "router" }));
    }
    if let Some((m, i)) = published.fixed.iter().find(|(m, i)| *i == ip || *m == mac) {
        return Ok(Err(Refusal::InFile { ip: *i, mac: *m }));
    }
    let other: Option<String> = tx
        .query_row(
            "SELECT m.name FROM dhcp_reservations r JOIN machines m ON m.id = r.machine_id \
             WHERE r.ip = ?1 AND r.machine_id <> ?2",
            params![ip.to_string(), machine.0.to_string()],
            |r| r.get(0),
        )
        .optional()
        .sql()?;
    if let Some(name) = other {
        return Ok(Err(Refusal::Reserved { ip, machine: name }));
    }
    // A MAC reserved by another machine cannot be: MACs belong to one machine.
    let lease: Option<(String, i64)> = tx
        .query_row(
            "SELECT mac, expires_at_ms FROM dhcp_leases WHERE ip = ?1 AND state = 'bound' \
             AND expires_at_ms > ?2",
            params![ip.to_string(), to_column(now)],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .sql()?;
    if let Some((holder, until)) = lease {
        let holder = parse_mac(&holder)?;
        let theirs = tx
            .query_row(
                "SELECT machine_id FROM machine_macs WHERE mac = ?1",
                [holder.to_string()],
                |r| r.get::<_, String>(0),
            )
            .optional()
            .sql()?;
        // The machine's own lease (on any of its MACs) is no conflict: it moves on renewal.
        if theirs.as_deref() != Some(machine.0.to_string().as_str()) {
            return Ok(Err(Refusal::Leased {
                ip,
                mac: holder,
                until: from_column(until)?,
            }));
        }
    }
    Ok(Ok(()))
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]
mod tests {
    use super::*;
    use crate::leases::LeaseWrite;
    use crate::testing::{NewMachine, TestDb};

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn lab_subnet() -> PublishedSubnet {
        PublishedSubnet {
            network: ip("10.9.0.0"),
            prefix: 24,
            pool: Some((ip("10.9.0.100"), ip("10.9.0.199"))),
            router: Some(ip("10.9.0.1")),
            dns: vec![ip("10.9.0.1")],
            domain_name: Some("lab.test".into()),
        }
    }

    #[tokio::test]
    async fn reservations_are_checked_against_what_dhcpd_publishes() {
        let t = TestDb::new();
        let db = &t.db;
        let now = Timestamp::now();
        let mac_a: MacAddr = "52:54:00:00:00:0a".parse().unwrap();
        let mac_b: MacAddr = "52:54:00:00:00:0b".parse().unwrap();
        let a = t.machine(NewMachine::with_mac(mac_a)).await.id;
        let b = t.machine(NewMachine::with_mac(mac_b)).await.id;
        let r = db.reservations();
        assert_eq!(
            r.reserve(a, mac_a, ip("10.9.0.20"), None, now)
                .await
                .unwrap(),
            Err(Refusal::NotPublished)
        );
        r.publish("proxy", vec![], vec![], now).await.unwrap();
        assert!(matches!(
            r.reserve(a, mac_a, ip("10.9.0.20"), None, now)
                .await
                .unwrap(),
            Err(Refusal::NotServing { .. })
        ));
        let fixed_mac: MacAddr = "52:54:00:00:00:ff".parse().unwrap();
        r.publish(
            "reservation",
            vec![lab_subnet()],
            vec![(fixed_mac, ip("10.9.0.10"))],
            now,
        )
        .await
        .unwrap();
        let p = r.published().await.unwrap().unwrap();
        assert_eq!(p.subnets, vec![lab_subnet()]);
        assert_eq!(p.fixed, vec![(fixed_mac, ip("10.9.0.10"))]);
        for (addr, want) in [
            ("10.8.0.20", "in no subnet"),
            ("10.9.0.0", "network address"),
            ("10.9.0.255", "broadcast address"),
            ("10.9.0.1", "router"),
            ("10.9.0.10", "configuration file"),
        ] {
            let refusal = r
                .reserve(a, mac_a, ip(addr), None, now)
                .await
                .unwrap()
                .unwrap_err();
            assert!(refusal.to_string().contains(want), "{addr}: {refusal}");
        }
        assert_eq!(
            r.reserve(a, mac_b, ip("10.9.0.20"), None, now)
                .await
                .unwrap(),
            Err(Refusal::ForeignMac { mac: mac_b })
        );
        let got = r
            .reserve(a, mac_a, ip("10.9.0.20"), Some(0), now)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((got.ip, got.resource_version), (ip("10.9.0.20"), 1));
        // What the machine's network configuration will say.
        assert_eq!(
            r.fixed_address(a).await.unwrap(),
            Some(dragonfly_core::metadata::FixedAddress {
                mac: mac_a,
                ip: ip("10.9.0.20"),
                prefix: 24,
                router: Some(ip("10.9.0.1")),
                dns: vec![ip("10.9.0.1")],
                domain: Some("lab.test".into()),
            })
        );
        assert_eq!(r.fixed_address(b).await.unwrap(), None);
        let taken = r
            .reserve(b, mac_b, ip("10.9.0.20"), None, now)
            .await
            .unwrap()
            .unwrap_err();
        assert!(taken.is_conflict() && matches!(taken, Refusal::Reserved { .. }));
        // A stale version is a conflict; the current one moves the reservation.
        assert!(matches!(
            r.reserve(a, mac_a, ip("10.9.0.21"), Some(0), now).await,
            Err(StoreError::Conflict { .. })
        ));
        let moved = r
            .reserve(a, mac_a, ip("10.9.0.21"), Some(1), now)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((moved.ip, moved.resource_version), (ip("10.9.0.21"), 2));
        // An unexpired lease of another client blocks; the machine's own does not.
        let until = now + jiff::SignedDuration::from_secs(3600);
        db.leases()
            .commit(
                vec![
                    LeaseWrite::Bind {
                        ip: ip("10.9.0.150"),
                        mac: mac_b,
                        reserved: false,
                        expires_at: until,
                    },
                    LeaseWrite::Bind {
                        ip: ip("10.9.0.151"),
                        mac: mac_a,
                        reserved: false,
                        expires_at: until,
                    },
                ],
                now,
            )
            .await
            .unwrap();
        let leased = r
            .reserve(a, mac_a, ip("10.9.0.150"), None, now)
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            leased.to_string().contains("leased to 52:54:00:00:00:0b"),
            "{leased}"
        );
        r.reserve(a, mac_a, ip("10.9.0.151"), None, now)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.all().await.unwrap().len(), 1);
        assert!(r.release(a).await.unwrap());
        assert!(!r.release(a).await.unwrap());
        assert!(r.get(a).await.unwrap().is_none());
    }
}
