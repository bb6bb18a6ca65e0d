//! Who gets a transfer slot now, who waits for one, and who is ignored.
//!
//! Why it exists: a rack powered on at once sends hundreds of read requests in the same second,
//! and PXE firmware gives up on the first ERROR it gets but retransmits a request nobody
//! answered. So a request beyond the limits is never refused: it waits in a bounded queue (a
//! client repeating it keeps its place) and starts as soon as a slot frees, or — when even the
//! queue is full — it is dropped unanswered, for the client to retransmit.
//!
//! The limits are per client address as well as global, so that one host (or one forged
//! source) cannot hold every slot: at most [`Quotas::per_client`] transfers at once, of which at
//! most [`Quotas::unacked_per_client`] still waiting for their first ACK — a trickle of requests
//! that are never acknowledged holds that many slots, for `first_ack_timeout` each. An address
//! whose transfers ended without a single ACK is remembered for [`SILENT_MEMORY`]: its next
//! requests get the first block once instead of [`FIRST_SENDS`] times (the reflection budget of
//! an address that never answers).
//!
//! Pure bookkeeping: no I/O, time passed in, requests opaque (`R`). It must never grow without
//! bound: the queue, each client's share of it and the silent list are capped.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::transfer::{FIRST_SENDS, FIRST_SENDS_SILENT};

/// How long an address whose transfers were never acknowledged gets a single send.
pub const SILENT_MEMORY: Duration = Duration::from_secs(60);
/// Most addresses remembered as silent (beyond it, new ones are not remembered).
pub const MAX_SILENT: usize = 4096;

/// The limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// Transfers at once, in all.
    pub active: usize,
    /// Transfers at once per client address.
    pub per_client: usize,
    /// Of those, transfers still waiting for their first ACK.
    pub unacked_per_client: usize,
    /// Requests waiting for a slot, in all.
    pub queued: usize,
    /// Requests waiting for a slot, per client address.
    pub queued_per_client: usize,
    /// A queued request the client has not repeated for this long is forgotten.
    pub queue_lifetime: Duration,
}

impl Quotas {
    /// The queue bounds that go with the configured limits: four waiting requests per slot, and
    /// per client as many waiting as it may have running.
    pub fn new(
        active: usize,
        per_client: usize,
        unacked_per_client: usize,
        queue_lifetime: Duration,
    ) -> Self {
        Self {
            active,
            per_client,
            unacked_per_client,
            queued: active.saturating_mul(4),
            queued_per_client: per_client,
            queue_lifetime,
        }
    }
}

/// What became of a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Offer<R> {
    /// Start it now (the slot is counted).
    Start(R),
    /// It waits for a slot.
    Queued,
    /// The same client (address and port) was already waiting: its place is kept, its request
    /// replaced by this one.
    Refreshed,
    /// Not even a place in the queue: ignored, for the client to retransmit.
    Dropped,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    active: usize,
    unacked: usize,
    queued: usize,
}

#[derive(Debug)]
struct Waiting<R> {
    request: R,
    last_heard: Instant,
}

/// The bookkeeping (see the module docs).
#[derive(Debug)]
pub struct Admission<R> {
    quotas: Quotas,
    active: usize,
    clients: HashMap<IpAddr, Counts>,
    queue: VecDeque<SocketAddr>,
    waiting: HashMap<SocketAddr, Waiting<R>>,
    silent: HashMap<IpAddr, Instant>,
}

impl<R> Admission<R> {
    pub fn new(quotas: Quotas) -> Self {
        Self {
            quotas,
            active: 0,
            clients: HashMap::new(),
            queue: VecDeque::new(),
            waiting: HashMap::new(),
            silent: HashMap::new(),
        }
    }

    /// A request from `client` (not a repeat of a transfer in progress: the caller checks).
    pub fn offer(&mut self, client: SocketAddr, request: R, now: Instant) -> Offer<R> {
        if let Some(waiting) = self.waiting.get_mut(&client) {
            waiting.request = request;
            waiting.last_heard = now;
            return Offer::Refreshed;
        }
        let ip = client.ip();
        if self.can_start(ip) {
            self.count_start(ip);
            return Offer::Start(request);
        }
        let counts = self.clients.entry(ip).or_default();
        if self.queue.len() >= self.quotas.queued || counts.queued >= self.quotas.queued_per_client
        {
            self.forget_if_idle(ip);
            return Offer::Dropped;
        }
        counts.queued += 1;
        self.queue.push_back(client);
        self.waiting.insert(
            client,
            Waiting {
                request,
                last_heard: now,
            },
        );
        Offer::Queued
    }

    /// The next queued request that may start now, if any (its slot is counted). Forgets the
    /// requests whose clients stopped asking; skips, without losing their place, those whose
    /// client is at its own limit.
    pub fn next(&mut self, now: Instant) -> Option<(SocketAddr, R)> {
        if self.active >= self.quotas.active {
            return None;
        }
        let mut index = 0;
        while let Some(&client) = self.queue.get(index) {
            let expired = self.waiting.get(&client).is_none_or(|w| {
                now.saturating_duration_since(w.last_heard) > self.quotas.queue_lifetime
            });
            if expired || self.can_start(client.ip()) {
                self.queue.remove(index);
                let waiting = self.waiting.remove(&client);
                let counts = self.clients.entry(client.ip()).or_default();
                counts.queued = counts.queued.saturating_sub(1);
                match waiting {
                    Some(w) if !expired => {
                        self.count_start(client.ip());
                        return Some((client, w.request));
                    }
                    _ => {
                        self.forget_if_idle(client.ip());
                        continue;
                    }
                }
            }
            index += 1;
        }
        None
    }

    /// The transfer from `ip` was acknowledged for the first time.
    pub fn confirmed(&mut self, ip: IpAddr) {
        if let Some(counts) = self.clients.get_mut(&ip) {
            counts.unacked = counts.unacked.saturating_sub(1);
        }
        self.silent.remove(&ip);
    }

    /// A transfer from `ip` ended; `confirmed` if it was ever acknowledged, `silent` if the
    /// client never answered at all (remembered, see [`Self::first_sends`]).
    pub fn finished(&mut self, ip: IpAddr, confirmed: bool, silent: bool, now: Instant) {
        self.active = self.active.saturating_sub(1);
        if let Some(counts) = self.clients.get_mut(&ip) {
            counts.active = counts.active.saturating_sub(1);
            if !confirmed {
                counts.unacked = counts.unacked.saturating_sub(1);
            }
        }
        self.forget_if_idle(ip);
        if silent {
            if self.silent.len() >= MAX_SILENT {
                self.silent.retain(|_, until| *until > now);
            }
            if self.silent.len() < MAX_SILENT {
                self.silent.insert(ip, now + SILENT_MEMORY);
            }
        }
    }

    /// How many times the timer may send the first unit to `ip`.
    pub fn first_sends(&self, ip: IpAddr, now: Instant) -> u8 {
        if self.silent.get(&ip).is_some_and(|until| *until > now) {
            FIRST_SENDS_SILENT
        } else {
            FIRST_SENDS
        }
    }

    /// Forgets every queued request (shutting down).
    pub fn clear_queue(&mut self) {
        for client in self.queue.drain(..) {
            if let Some(counts) = self.clients.get_mut(&client.ip()) {
                counts.queued = counts.queued.saturating_sub(1);
            }
        }
        self.waiting.clear();
        self.clients.retain(|_, c| *c != Counts::default());
    }

    /// Transfers counted as in progress.
    pub fn active(&self) -> usize {
        self.active
    }

    /// Requests waiting.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    fn can_start(&self, ip: IpAddr) -> bool {
        let counts = self.clients.get(&ip).copied().unwrap_or_default();
        self.active < self.quotas.active
            && counts.active < self.quotas.per_client
            && counts.unacked < self.quotas.unacked_per_client
    }

    fn count_start(&mut self, ip: IpAddr) {
        self.active += 1;
        let counts = self.clients.entry(ip).or_default();
        counts.active += 1;
        counts.unacked += 1;
    }

    fn forget_if_idle(&mut self, ip: IpAddr) {
        if self.clients.get(&ip) == Some(&Counts::default()) {
            self.clients.remove(&ip);
        }
    }

    /// Client addresses with any bookkeeping (tests check nothing leaks).
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.clients.len()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use proptest::prelude::*;

    use super::*;

    fn addr(host: u8, port: u16) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::new(10, 0, 0, host), port))
    }

    fn quotas() -> Quotas {
        Quotas {
            active: 4,
            per_client: 3,
            unacked_per_client: 2,
            queued: 6,
            queued_per_client: 3,
            queue_lifetime: Duration::from_secs(10),
        }
    }

    #[test]
    fn beyond_the_limits_requests_wait_in_order_and_start_as_slots_free() {
        let t = Instant::now();
        let mut a = Admission::new(quotas());
        assert_eq!(a.offer(addr(1, 1), "a", t), Offer::Start("a"));
        assert_eq!(a.offer(addr(1, 2), "b", t), Offer::Start("b"));
        // Host 1 has two transfers awaiting their first ACK: a third waits.
        assert_eq!(a.offer(addr(1, 3), "c", t), Offer::Queued);
        assert_eq!(a.offer(addr(2, 1), "d", t), Offer::Start("d"));
        assert_eq!(a.offer(addr(3, 1), "e", t), Offer::Start("e"));
        // Every slot is taken.
        assert_eq!(a.offer(addr(4, 1), "f", t), Offer::Queued);
        // A repeat keeps its place and replaces the request.
        assert_eq!(a.offer(addr(4, 1), "f2", t), Offer::Refreshed);
        assert_eq!(a.queued(), 2);
        assert_eq!(a.next(t), None, "no slot free");
        // Host 1's first transfer is acknowledged, host 2's ends: one slot frees. Host 1 may
        // start another (one unacknowledged left), and is first in line.
        a.confirmed(addr(1, 1).ip());
        a.finished(addr(2, 1).ip(), true, false, t);
        assert_eq!(a.next(t), Some((addr(1, 3), "c")));
        assert_eq!(a.next(t), None);
        a.finished(addr(3, 1).ip(), true, false, t);
        assert_eq!(a.next(t), Some((addr(4, 1), "f2")));
        assert_eq!(a.active(), 4);
    }

    #[test]
    fn one_host_cannot_take_every_slot_nor_the_whole_queue() {
        let t = Instant::now();
        let mut a = Admission::new(quotas());
        let mut outcomes = vec![];
        for port in 1..=10 {
            outcomes.push(a.offer(addr(9, port), (), t));
        }
        let started = outcomes
            .iter()
            .filter(|o| matches!(o, Offer::Start(())))
            .count();
        let queued = outcomes.iter().filter(|o| **o == Offer::Queued).count();
        assert_eq!((started, queued), (2, 3));
        // Another host still starts at once.
        assert_eq!(a.offer(addr(7, 1), (), t), Offer::Start(()));
        // The trickle's transfers expire unacknowledged: the host is remembered as silent.
        assert_eq!(a.first_sends(addr(9, 1).ip(), t), FIRST_SENDS);
        a.finished(addr(9, 1).ip(), false, true, t);
        assert_eq!(a.first_sends(addr(9, 1).ip(), t), FIRST_SENDS_SILENT);
        assert_eq!(
            a.first_sends(addr(9, 1).ip(), t + SILENT_MEMORY),
            FIRST_SENDS
        );
        // An ACK from it clears that.
        a.finished(addr(9, 2).ip(), false, true, t);
        assert!(a.next(t).is_some());
        a.confirmed(addr(9, 1).ip());
        assert_eq!(a.first_sends(addr(9, 1).ip(), t), FIRST_SENDS);
    }

    #[test]
    fn requests_the_client_stopped_repeating_are_forgotten() {
        let t = Instant::now();
        let mut a = Admission::new(quotas());
        for host in 1..=4 {
            assert!(matches!(a.offer(addr(host, 1), host, t), Offer::Start(_)));
        }
        assert_eq!(a.offer(addr(5, 1), 5, t), Offer::Queued);
        assert_eq!(a.offer(addr(6, 1), 6, t), Offer::Queued);
        let later = t + Duration::from_secs(11);
        assert_eq!(a.offer(addr(6, 1), 6, later), Offer::Refreshed);
        a.finished(addr(1, 1).ip(), true, false, later);
        assert_eq!(a.next(later), Some((addr(6, 1), 6)));
        assert_eq!(a.queued(), 0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Offer(u8, u16),
        Confirm(usize),
        Finish(usize, bool),
        Next,
        Wait(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..6, 0u16..4).prop_map(|(h, p)| Op::Offer(h, p)),
            any::<usize>().prop_map(Op::Confirm),
            (any::<usize>(), any::<bool>()).prop_map(|(i, s)| Op::Finish(i, s)),
            Just(Op::Next),
            (0u64..20).prop_map(Op::Wait),
        ]
    }

    proptest! {
        /// Whatever happens, the limits hold, counts match what was started and finished,
        /// nothing is started twice, and once everything finished no bookkeeping is left.
        #[test]
        fn limits_always_hold_and_nothing_leaks(ops in proptest::collection::vec(op(), 1..200)) {
            let q = quotas();
            let mut a = Admission::new(q);
            let mut now = Instant::now();
            // Transfers in progress: (client, confirmed).
            let mut running: Vec<(SocketAddr, bool)> = vec![];
            for op in ops {
                match op {
                    Op::Offer(h, p) => {
                        let client = addr(h, p);
                        if let Offer::Start(()) = a.offer(client, (), now) {
                            running.push((client, false));
                        }
                    }
                    Op::Confirm(i) if !running.is_empty() => {
                        let i = i % running.len();
                        if !running[i].1 {
                            running[i].1 = true;
                            a.confirmed(running[i].0.ip());
                        }
                    }
                    Op::Finish(i, silent) if !running.is_empty() => {
                        let (client, confirmed) = running.remove(i % running.len());
                        a.finished(client.ip(), confirmed, silent && !confirmed, now);
                    }
                    Op::Next => {
                        if let Some((client, ())) = a.next(now) {
                            running.push((client, false));
                        }
                    }
                    Op::Wait(s) => now += Duration::from_secs(s),
                    Op::Confirm(_) | Op::Finish(..) => {}
                }
                prop_assert_eq!(a.active(), running.len());
                prop_assert!(running.len() <= q.active);
                prop_assert!(a.queued() <= q.queued);
                let mut per: HashMap<IpAddr, (usize, usize)> = HashMap::new();
                for (c, confirmed) in &running {
                    let e = per.entry(c.ip()).or_default();
                    e.0 += 1;
                    e.1 += usize::from(!confirmed);
                }
                for (active, unacked) in per.values() {
                    prop_assert!(*active <= q.per_client);
                    prop_assert!(*unacked <= q.unacked_per_client);
                }
            }
            for (client, confirmed) in running.drain(..) {
                a.finished(client.ip(), confirmed, false, now);
            }
            a.clear_queue();
            prop_assert_eq!(a.active(), 0);
            prop_assert_eq!(a.tracked(), 0);
        }
    }
}
