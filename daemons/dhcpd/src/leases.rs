//! The in-memory lease table: who holds which address, what is on offer, what was declined,
//! and which pool addresses are free.
//!
//! dhcpd is the only writer of leases, so this table is the working copy and the store is its
//! durable log: every change policy makes here is also returned as a
//! [`dragonfly_store::leases::LeaseWrite`] and committed before the client hears of it. At
//! start the table is rebuilt from the store ([`Leases::from_store`]). Offers are not stored:
//! a restart forgets them, and the client's REQUEST is still accepted if the address is free.
//!
//! Finding a free address never scans the pool: each pool's free addresses are kept in an
//! ordered set (built on the pool's first allocation), and every claim (lease, offer,
//! decline) is also filed by the time it ends, so a claim that lapsed is returned to the free
//! set when it comes due. Allocation, an exhausted pool included, costs O(log n) per request
//! — a flood of DISCOVERs against a full /16 must not cost a scan of 65 000 addresses each.
//!
//! No I/O and no clock here: time is passed in as Unix milliseconds.

use std::collections::{BTreeSet, HashMap};
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

/// One pool's range and where its next allocation starts looking.
#[derive(Debug, Clone, Copy)]
struct Pool {
    start: u32,
    end: u32,
    /// Offset from `start` of the next address to try (round robin, so a just-freed address
    /// is handed out last).
    next: u32,
}

impl Pool {
    fn contains(&self, ip: u32) -> bool {
        (self.start..=self.end).contains(&ip)
    }
}

/// Due time of an address released by its holder (RELEASE, a client moving, an offer turned
/// down): before any real time, so the next [`Leases::allocate`] returns it to the free set.
const RELEASED: i64 = i64::MIN;

/// The table. See the module documentation.
#[derive(Debug, Default)]
pub struct Leases {
    by_mac: HashMap<MacAddr, Binding>,
    by_ip: HashMap<Ipv4Addr, Holder>,
    /// Per subnet index: its pool, once something was allocated from it.
    pools: HashMap<usize, Pool>,
    /// Free addresses of those pools: nobody holds them, or their holder's claim ended.
    free: BTreeSet<u32>,
    /// Every claim by the time it ends: (Unix ms, address). Entries can be stale (the claim
    /// was renewed, moved or swept); each is checked against the table when it comes due.
    ending: BTreeSet<(i64, u32)>,
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

    /// Number of clients holding an unexpired offer (not a lease) at `now_ms`.
    pub fn offers(&self, now_ms: i64) -> usize {
        self.by_mac
            .values()
            .filter(|b| !b.bound && b.expires_ms > now_ms)
            .count()
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

    /// Whether anybody holds `ip` at `now_ms`.
    fn claimed(&self, ip: Ipv4Addr, now_ms: i64) -> bool {
        match self.by_ip.get(&ip) {
            None => false,
            Some(Holder::Mac(m)) => self.by_mac.get(m).is_some_and(|b| b.expires_ms > now_ms),
            Some(Holder::Declined { until_ms }) => *until_ms > now_ms,
        }
    }

    /// When the current claim on `ip` ends, for finding its `ending` entry.
    fn claim_end(&self, ip: Ipv4Addr) -> Option<i64> {
        match self.by_ip.get(&ip)? {
            Holder::Mac(m) => self.by_mac.get(m).map(|b| b.expires_ms),
            Holder::Declined { until_ms } => Some(*until_ms),
        }
    }

    /// Forgets the claim on `ip` in `ending` (the caller replaces or drops it).
    fn unfile(&mut self, ip: Ipv4Addr) {
        if let Some(t) = self.claim_end(ip) {
            self.ending.remove(&(t, u32::from(ip)));
        }
    }

    /// `mac` now holds (or is offered) `b.ip`; its previous address and the previous holder
    /// of `b.ip` (whose claim must have expired) are dropped.
    pub fn set(&mut self, mac: MacAddr, b: Binding) {
        if let Some(old) = self.by_mac.get(&mac).copied()
            && self.by_ip.get(&old.ip) == Some(&Holder::Mac(mac))
        {
            self.unfile(old.ip);
            if old.ip != b.ip {
                self.by_ip.remove(&old.ip);
                self.ending.insert((RELEASED, u32::from(old.ip)));
            }
        }
        self.unfile(b.ip);
        if let Some(Holder::Mac(prev)) = self.by_ip.insert(b.ip, Holder::Mac(mac))
            && prev != mac
        {
            self.by_mac.remove(&prev);
        }
        self.by_mac.insert(mac, b);
        self.free.remove(&u32::from(b.ip));
        self.ending.insert((b.expires_ms, u32::from(b.ip)));
    }

    /// Forgets `mac`'s binding (release, or an offer the client turned down).
    pub fn remove(&mut self, mac: MacAddr) -> Option<Binding> {
        let b = *self.by_mac.get(&mac)?;
        if self.by_ip.get(&b.ip) == Some(&Holder::Mac(mac)) {
            self.unfile(b.ip);
            self.by_ip.remove(&b.ip);
            self.ending.insert((RELEASED, u32::from(b.ip)));
        }
        self.by_mac.remove(&mac)
    }

    /// Keeps `ip` out of use until `until_ms` (DHCPDECLINE).
    pub fn decline(&mut self, ip: Ipv4Addr, until_ms: i64) {
        self.unfile(ip);
        if let Some(Holder::Mac(m)) = self.by_ip.insert(ip, Holder::Declined { until_ms }) {
            self.by_mac.remove(&m);
        }
        self.free.remove(&u32::from(ip));
        self.ending.insert((until_ms, u32::from(ip)));
    }

    /// Returns to the free set every pool address whose claim ended by `now_ms`.
    fn reclaim(&mut self, now_ms: i64) {
        while let Some(&(t, ip)) = self.ending.first()
            && t <= now_ms
        {
            self.ending.pop_first();
            let addr = Ipv4Addr::from(ip);
            if !self.claimed(addr, now_ms) && self.pools.values().any(|p| p.contains(ip)) {
                self.free.insert(ip);
            }
        }
    }

    /// A free pool address of subnet `index` for `mac`, skipping `reserved` addresses, in
    /// O(log n): the next free one after the previous allocation, wrapping around.
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
        if !self
            .pools
            .get(&index)
            .is_some_and(|p| p.start == start && p.end == end)
        {
            // First use (or the pool changed): file its free addresses once.
            self.pools.insert(
                index,
                Pool {
                    start,
                    end,
                    next: 0,
                },
            );
            for ip in start..=end {
                let addr = Ipv4Addr::from(ip);
                if !reserved(addr) && !self.claimed(addr, now_ms) {
                    self.free.insert(ip);
                }
            }
        }
        self.reclaim(now_ms);
        let pool = *self.pools.get(&index)?;
        let from = start.saturating_add(pool.next).min(end);
        loop {
            let ip = *self
                .free
                .range(from..=end)
                .next()
                .or_else(|| self.free.range(start..from).next())?;
            let addr = Ipv4Addr::from(ip);
            if !reserved(addr) && self.free_for(addr, mac, now_ms) {
                let next = if ip == end { 0 } else { ip - start + 1 };
                self.pools.insert(index, Pool { next, ..pool });
                return Some(addr);
            }
            // Filed free but taken since, or reserved: drop it (each such entry once).
            self.free.remove(&ip);
        }
    }

    /// Removes every binding, offer and decline that ended at or before `now_ms`, and returns
    /// their pool addresses to the free set; returns the bound leases that expired (for
    /// `LeaseEnded { reason: "expired" }`).
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
        self.reclaim(now_ms);
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

    fn offer(ip: Ipv4Addr, exp: i64) -> Binding {
        Binding {
            ip,
            expires_ms: exp,
            bound: false,
            reserved: false,
        }
    }

    /// A /16 pool, filled by offers: once full, an allocation looks at no address at all
    /// (the free set is empty), and offers that lapse come back one by one when due.
    #[test]
    fn exhausted_pool_costs_no_scan_and_lapsed_offers_come_back() {
        let mut t = Leases::default();
        let s = Subnet {
            network: Ipv4Addr::new(10, 200, 0, 0),
            prefix: 16,
            pool: Some((
                Ipv4Addr::new(10, 200, 0, 10),
                Ipv4Addr::new(10, 200, 255, 250),
            )),
            ..subnet()
        };
        let looked = std::cell::Cell::new(0u32);
        let reserved = |ip: Ipv4Addr| {
            looked.set(looked.get() + 1);
            ip == Ipv4Addr::new(10, 200, 0, 11)
        };
        let size: u32 = 0xff_fa - 0x00_0a + 1 - 1; // minus the reserved address
        for n in 0..size {
            let [_, x, y, z] = u32::to_be_bytes(n);
            let m = MacAddr::new([2, 0, 0, x, y, z]);
            let ip = t.allocate(0, &s, m, 0, reserved).expect("free address");
            // Offers made during the first second lapse at 5 s, the rest at 6 s.
            t.set(m, offer(ip, if n < 100 { 5_000 } else { 6_000 }));
        }
        assert_eq!(t.offers(0), size as usize);
        looked.set(0);
        for _ in 0..1000 {
            assert_eq!(t.allocate(0, &s, mac(1), 4_999, reserved), None);
        }
        assert_eq!(looked.get(), 0, "an exhausted pool is not scanned");
        // At 5 s the first 100 offers lapse: exactly those come back.
        let mut back = BTreeSet::new();
        while let Some(ip) = t.allocate(0, &s, mac(1), 5_000, reserved) {
            assert!(back.insert(ip), "{ip} handed out twice");
            let [_, _, y, z] = u32::to_be_bytes(u32::try_from(back.len()).unwrap());
            t.set(MacAddr::new([4, 0, 0, 0, y, z]), offer(ip, 60_000));
        }
        assert_eq!(back.len(), 100);
        assert!(!back.contains(&Ipv4Addr::new(10, 200, 0, 11)));
        assert_eq!(t.offers(5_000), size as usize);
    }

    #[test]
    fn released_and_moved_addresses_are_free_at_once_declined_ones_when_due() {
        let mut t = Leases::default();
        let s = subnet();
        let none = |_| false;
        let a = t.allocate(0, &s, mac(1), 0, none).unwrap();
        t.set(mac(1), b(a.octets(), 1_000));
        let b2 = t.allocate(0, &s, mac(2), 0, none).unwrap();
        t.set(mac(2), b(b2.octets(), 1_000));
        let c = t.allocate(0, &s, mac(3), 0, none).unwrap();
        t.set(mac(3), b(c.octets(), 1_000));
        assert_eq!(t.allocate(0, &s, mac(4), 0, none), None);
        t.remove(mac(1));
        assert_eq!(t.allocate(0, &s, mac(4), 0, none), Some(a), "released");
        t.set(mac(4), b(a.octets(), 1_000));
        // mac 4 declines its address; mac 2 renews.
        t.decline(a, 500);
        t.set(mac(2), b(b2.octets(), 2_000));
        assert_eq!(t.allocate(0, &s, mac(5), 499, none), None, "declined");
        assert_eq!(
            t.allocate(0, &s, mac(5), 500, none),
            Some(a),
            "decline over"
        );
        // A renewed lease does not come back at its old end.
        assert_eq!(t.allocate(0, &s, mac(5), 1_000, none), Some(c));
        t.set(mac(5), b(c.octets(), 3_000));
        t.set(mac(6), b(a.octets(), 3_000));
        assert_eq!(t.allocate(0, &s, mac(7), 1_500, none), None, "b2 renewed");
        // The sweep returns what lapsed, so the next allocation finds it directly.
        assert_eq!(t.sweep(2_000), vec![(mac(2), b2)]);
        assert_eq!(t.allocate(0, &s, mac(7), 2_000, none), Some(b2));
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
