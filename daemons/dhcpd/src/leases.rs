//! The in-memory lease table: who holds which address, what is on offer, what was declined.
//!
//! dhcpd is the only writer of leases, so this table is the working copy and the store is its
//! durable log: every change policy makes here is also returned as a
//! [`dragonfly_store::leases::LeaseWrite`] and committed before the client hears of it. At
//! start the table is rebuilt from the store ([`Leases::from_store`]). Offers are not stored:
//! a restart forgets them, and the client's REQUEST is still accepted if the address is free.
//!
//! No I/O and no clock here: time is passed in as Unix milliseconds.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use dragonfly_core::MacAddr;
use dragonfly_store::leases::{Lease, LeaseState};

use crate::config::Subnet;

/// What a client holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    pub ip: Ipv4Addr,
    /// Unix milliseconds.
    pub expires_ms: i64,
    /// `false` while only offered (not stored).
    pub bound: bool,
    pub reserved: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holder {
    Mac(MacAddr),
    Declined { until_ms: i64 },
}

/// The table. See the module documentation.
#[derive(Debug, Default)]
pub struct Leases {
    by_mac: HashMap<MacAddr, Binding>,
    by_ip: HashMap<Ipv4Addr, Holder>,
    /// Per subnet index: where the next pool scan starts.
    cursor: HashMap<usize, u32>,
}

impl Leases {
    /// Rebuilds the table from the store's rows.
    pub fn from_store(rows: impl IntoIterator<Item = Lease>) -> Self {
        let mut t = Self::default();
        for l in rows {
            let expires_ms = l.expires_at.as_millisecond();
            match (l.state, l.mac) {
                (LeaseState::Bound, Some(mac)) => t.set(
                    mac,
                    Binding {
                        ip: l.ip,
                        expires_ms,
                        bound: true,
                        reserved: l.reserved,
                    },
                ),
                _ => t.decline(l.ip, expires_ms),
            }
        }
        t
    }

    /// Number of clients holding or being offered an address.
    pub fn len(&self) -> usize {
        self.by_mac.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_mac.is_empty()
    }

    pub fn binding(&self, mac: MacAddr) -> Option<Binding> {
        self.by_mac.get(&mac).copied()
    }

    /// Whether `mac` may take `ip` now: nobody else holds it unexpired, and it is not declined.
    pub fn free_for(&self, ip: Ipv4Addr, mac: MacAddr, now_ms: i64) -> bool {
        match self.by_ip.get(&ip) {
            None => true,
            Some(Holder::Mac(m)) if *m == mac => true,
            Some(Holder::Mac(m)) => self.by_mac.get(m).is_none_or(|b| b.expires_ms <= now_ms),
            Some(Holder::Declined { until_ms }) => *until_ms <= now_ms,
        }
    }

    /// `mac` now holds (or is offered) `b.ip`; its previous address and the previous holder
    /// of `b.ip` (whose claim must have expired) are dropped.
    pub fn set(&mut self, mac: MacAddr, b: Binding) {
        if let Some(old) = self.by_mac.insert(mac, b)
            && old.ip != b.ip
            && self.by_ip.get(&old.ip) == Some(&Holder::Mac(mac))
        {
            self.by_ip.remove(&old.ip);
        }
        if let Some(Holder::Mac(prev)) = self.by_ip.insert(b.ip, Holder::Mac(mac))
            && prev != mac
        {
            self.by_mac.remove(&prev);
        }
    }

    /// Forgets `mac`'s binding (release, or an offer the client turned down).
    pub fn remove(&mut self, mac: MacAddr) -> Option<Binding> {
        let b = self.by_mac.remove(&mac)?;
        if self.by_ip.get(&b.ip) == Some(&Holder::Mac(mac)) {
            self.by_ip.remove(&b.ip);
        }
        Some(b)
    }

    /// Keeps `ip` out of use until `until_ms` (DHCPDECLINE).
    pub fn decline(&mut self, ip: Ipv4Addr, until_ms: i64) {
        if let Some(Holder::Mac(m)) = self.by_ip.insert(ip, Holder::Declined { until_ms }) {
            self.by_mac.remove(&m);
        }
    }

    /// A free pool address of subnet `index` for `mac`, skipping `reserved` addresses. Scans
    /// from where the last scan stopped, so handing out a pool is linear overall.
    pub fn allocate(
        &mut self,
        index: usize,
        subnet: &Subnet,
        mac: MacAddr,
        now_ms: i64,
        reserved: impl Fn(Ipv4Addr) -> bool,
    ) -> Option<Ipv4Addr> {
        let (start, end) = subnet.pool?;
        let (start, end) = (u32::from(start), u32::from(end));
        let size = end - start + 1;
        let cursor = self.cursor.get(&index).copied().unwrap_or(0) % size;
        for step in 0..size {
            let offset = (cursor + step) % size;
            let ip = Ipv4Addr::from(start + offset);
            if !reserved(ip) && self.free_for(ip, mac, now_ms) {
                self.cursor.insert(index, (offset + 1) % size);
                return Some(ip);
            }
        }
        None
    }

    /// Removes every binding, offer and decline that ended at or before `now_ms`; returns the
    /// bound leases that expired (for `LeaseEnded { reason: "expired" }`).
    pub fn sweep(&mut self, now_ms: i64) -> Vec<(MacAddr, Ipv4Addr)> {
        let mut expired = Vec::new();
        self.by_mac.retain(|mac, b| {
            let keep = b.expires_ms > now_ms;
            if !keep && b.bound {
                expired.push((*mac, b.ip));
            }
            keep
        });
        let by_mac = &self.by_mac;
        self.by_ip.retain(|_, h| match h {
            Holder::Mac(m) => by_mac.contains_key(m),
            Holder::Declined { until_ms } => *until_ms > now_ms,
        });
        expired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u8) -> MacAddr {
        MacAddr::new([2, 0, 0, 0, 0, n])
    }

    fn subnet() -> Subnet {
        Subnet {
            network: Ipv4Addr::new(10, 0, 0, 0),
            prefix: 24,
            pool: Some((Ipv4Addr::new(10, 0, 0, 10), Ipv4Addr::new(10, 0, 0, 12))),
            router: None,
            dns: vec![],
            domain_name: None,
            lease_time: std::time::Duration::from_secs(60),
        }
    }

    fn b(ip: [u8; 4], exp: i64) -> Binding {
        Binding {
            ip: ip.into(),
            expires_ms: exp,
            bound: true,
            reserved: false,
        }
    }

    #[test]
    fn pool_is_handed_out_then_exhausted_then_reclaimed() {
        let mut t = Leases::default();
        let s = subnet();
        let none = |_| false;
        let mut got = Vec::new();
        for n in 1..=3 {
            let ip = t.allocate(0, &s, mac(n), 0, none).unwrap();
            t.set(mac(n), b(ip.octets(), 100));
            got.push(ip);
        }
        got.sort();
        got.dedup();
        assert_eq!(got.len(), 3);
        assert_eq!(t.allocate(0, &s, mac(4), 50, none), None, "pool exhausted");
        // Expired at 100: mac 4 reclaims one, and its holder loses its binding.
        let ip = t.allocate(0, &s, mac(4), 100, none).unwrap();
        t.set(mac(4), b(ip.octets(), 500));
        assert_eq!(t.len(), 3);
        assert_eq!(t.sweep(200).len(), 2);
        assert_eq!(t.binding(mac(4)).unwrap().ip, ip);
    }

    #[test]
    fn reserved_and_declined_addresses_are_skipped() {
        let mut t = Leases::default();
        let s = subnet();
        t.decline(Ipv4Addr::new(10, 0, 0, 10), 1000);
        let ip = t
            .allocate(0, &s, mac(1), 0, |ip| ip == Ipv4Addr::new(10, 0, 0, 11))
            .unwrap();
        assert_eq!(ip, Ipv4Addr::new(10, 0, 0, 12));
        assert!(t.free_for(Ipv4Addr::new(10, 0, 0, 10), mac(1), 1000));
        assert!(t.sweep(1000).is_empty());
        assert!(t.free_for(Ipv4Addr::new(10, 0, 0, 10), mac(1), 0));
    }

    #[test]
    fn moving_and_declining_keep_both_indexes_consistent() {
        let mut t = Leases::default();
        t.set(mac(1), b([10, 0, 0, 10], 100));
        t.set(mac(1), b([10, 0, 0, 11], 100));
        assert!(t.free_for(Ipv4Addr::new(10, 0, 0, 10), mac(2), 0));
        t.decline(Ipv4Addr::new(10, 0, 0, 11), 50);
        assert!(t.binding(mac(1)).is_none());
        assert!(!t.free_for(Ipv4Addr::new(10, 0, 0, 11), mac(1), 10));
        t.set(mac(3), b([10, 0, 0, 12], 100));
        assert_eq!(t.remove(mac(3)).unwrap().ip, Ipv4Addr::new(10, 0, 0, 12));
        assert!(t.is_empty());
    }

    #[test]
    fn rebuilt_from_store_rows() {
        let rows = vec![
            Lease {
                ip: [10, 0, 0, 10].into(),
                mac: Some(mac(1)),
                state: LeaseState::Bound,
                reserved: false,
                expires_at: jiff::Timestamp::from_millisecond(100).unwrap(),
            },
            Lease {
                ip: [10, 0, 0, 11].into(),
                mac: None,
                state: LeaseState::Declined,
                reserved: false,
                expires_at: jiff::Timestamp::from_millisecond(100).unwrap(),
            },
        ];
        let t = Leases::from_store(rows);
        assert_eq!(t.binding(mac(1)).unwrap().ip, Ipv4Addr::new(10, 0, 0, 10));
        assert!(!t.free_for(Ipv4Addr::new(10, 0, 0, 11), mac(2), 99));
    }
}
