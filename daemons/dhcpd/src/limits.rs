//! How many clients dhcpd knows nothing about it answers, per relay and per interface.
//!
//! The provisioning network is hostile: anyone on it can send DISCOVERs from random MACs, each
//! of which would otherwise hold a pool address for `offer_hold` (or, completed with a
//! REQUEST, for a whole lease) and publish an event. Policy therefore spends a token for every
//! answer to a *new* client — no reservation, no binding in the lease table, not a machine the
//! store knows — from a token bucket of the link it came from: its relay (giaddr) or, for a
//! client on our own segment, the interface it arrived on. A flood through one relay or on one
//! segment then takes at most `burst + per_second × t` answers in `t` seconds, and leaves
//! every other link, every reserved or known machine, and every client already holding an
//! address untouched.
//!
//! Pure: time is passed in (Unix milliseconds), so the buckets are unit-tested with explicit
//! time. It must never allocate per packet: the buckets are keyed by relays (which
//! configuration lists) and interfaces (which the kernel numbers), so their number is bounded
//! by the host, never by what a sender chooses.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use crate::config::RateLimit;

/// The link a request came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Link {
    /// Relayed: the relay's giaddr (a listed relay: others are refused before this).
    Relay(Ipv4Addr),
    /// On our own segment: the arrival interface's index (0 when unknown).
    Interface(u32),
}

/// One bucket: tokens in thousandths, so that refilling by elapsed milliseconds is exact.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    milli_tokens: u64,
    last_ms: i64,
}

/// The buckets of every link. See the module documentation.
#[derive(Debug)]
pub struct NewClients {
    limit: RateLimit,
    buckets: HashMap<Link, Bucket>,
}

impl NewClients {
    pub fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            buckets: HashMap::new(),
        }
    }

    /// Spends one token of `link`'s bucket at `now_ms`; `false` when it is empty. A bucket
    /// starts full; a clock that goes backwards refills nothing.
    pub fn admit(&mut self, link: Link, now_ms: i64) -> bool {
        let capacity = u64::from(self.limit.burst) * 1000;
        let per_second = u64::from(self.limit.per_second);
        let b = self.buckets.entry(link).or_insert(Bucket {
            milli_tokens: capacity,
            last_ms: now_ms,
        });
        let elapsed = u64::try_from(now_ms.saturating_sub(b.last_ms)).unwrap_or(0);
        // per_second tokens a second = per_second thousandths a millisecond.
        b.milli_tokens = b
            .milli_tokens
            .saturating_add(elapsed.saturating_mul(per_second))
            .min(capacity);
        b.last_ms = b.last_ms.max(now_ms);
        if b.milli_tokens < 1000 {
            return false;
        }
        b.milli_tokens -= 1000;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: u32, burst: u32) -> NewClients {
        NewClients::new(RateLimit { per_second, burst })
    }

    fn admitted(l: &mut NewClients, link: Link, now: i64, tries: u32) -> usize {
        (0..tries).filter(|_| l.admit(link, now)).count()
    }

    #[test]
    fn a_burst_then_the_rate() {
        let mut l = limiter(10, 50);
        let eth = Link::Interface(2);
        assert_eq!(admitted(&mut l, eth, 0, 1000), 50, "the burst");
        assert_eq!(admitted(&mut l, eth, 99, 1000), 0, "0.99 token refilled");
        assert_eq!(admitted(&mut l, eth, 100, 1000), 1);
        assert_eq!(admitted(&mut l, eth, 1_100, 1000), 10, "10 a second");
        // Idle for an hour: full again, never more than the burst.
        assert_eq!(admitted(&mut l, eth, 3_601_100, 1000), 50);
    }

    #[test]
    fn links_do_not_share_a_bucket() {
        let mut l = limiter(1, 5);
        let relay = Link::Relay(Ipv4Addr::new(10, 1, 0, 1));
        assert_eq!(admitted(&mut l, relay, 0, 100), 5);
        assert_eq!(admitted(&mut l, Link::Interface(2), 0, 100), 5);
        assert_eq!(
            admitted(&mut l, Link::Relay(Ipv4Addr::new(10, 2, 0, 1)), 0, 100),
            5
        );
        assert!(!l.admit(relay, 0));
    }

    #[test]
    fn a_clock_going_backwards_refills_nothing() {
        let mut l = limiter(1000, 2);
        let eth = Link::Interface(1);
        assert_eq!(admitted(&mut l, eth, 10_000, 10), 2);
        assert_eq!(admitted(&mut l, eth, 5_000, 10), 0);
        assert_eq!(
            admitted(&mut l, eth, 10_000, 10),
            0,
            "no credit for the jump back"
        );
        assert_eq!(admitted(&mut l, eth, 10_001, 10), 1);
    }
}
