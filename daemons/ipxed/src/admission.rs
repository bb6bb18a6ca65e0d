//! Whether a `/boot/{mac}` request earns a token: a pure function of what the store witnessed.
//!
//! `GET /boot/{mac}` is unauthenticated by nature (iPXE has no credential), so "which MAC is
//! asking" is only what the URL says. Minting for whatever MAC is named let anyone on the
//! network hold a token for any machine. A token is therefore minted only when the boot path
//! itself saw that MAC boot, one of:
//!
//! - **its lease**: the request comes from the address dhcpd leased to that MAC (bound and
//!   unexpired), the strongest evidence a DHCP network offers; or
//! - **a fresh sighting**: dhcpd gave that MAC a boot answer within `sighting_window`, the
//!   request comes from the address that answer named (when it named one: a ProxyDHCP
//!   DISCOVER has none), and no boot session was opened since — one sighting, one session, so
//!   a second asker for the same boot (an attacker racing the machine) gets nothing.
//!
//! Anything else gets the script without a token: the agent boots and says it cannot register.
//! Pure: the caller reads the facts ([`dragonfly_store::boot::MintFacts`]) and the clock.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use dragonfly_store::boot::MintFacts;
use jiff::Timestamp;

/// Why a token may be minted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// The request comes from the MAC's leased address.
    Lease,
    /// dhcpd answered the MAC's boot moments ago.
    Sighting,
}

/// Why no token was minted (logged, never told to the client beyond "no token").
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("dhcpd never saw this MAC boot")]
    NeverSighted,
    #[error("dhcpd last saw this MAC boot too long ago")]
    Stale,
    #[error("the request does not come from the address dhcpd gave this MAC")]
    OtherAddress,
    #[error("a token was already minted for this MAC's last sighted boot")]
    AlreadyMinted,
}

impl Refusal {
    /// A stable word for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NeverSighted => "never-sighted",
            Self::Stale => "stale-sighting",
            Self::OtherAddress => "other-address",
            Self::AlreadyMinted => "already-minted",
        }
    }
}

/// The IPv4 address of an HTTP peer (an IPv4-mapped IPv6 address counts as its IPv4).
pub fn peer_v4(peer: Option<IpAddr>) -> Option<Ipv4Addr> {
    match peer? {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
    }
}

/// Decides whether a request from `peer` at `now` may have a token for the MAC `facts` are about.
pub fn decide(
    facts: &MintFacts,
    peer: Option<Ipv4Addr>,
    now: Timestamp,
    window: Duration,
) -> Result<Proof, Refusal> {
    if peer.is_some() && facts.leased == peer {
        return Ok(Proof::Lease);
    }
    let s = facts.sighting.ok_or(Refusal::NeverSighted)?;
    let age = now.duration_since(s.seen_at);
    let window = jiff::SignedDuration::try_from(window).unwrap_or(jiff::SignedDuration::MAX);
    if age > window || age < -jiff::SignedDuration::from_secs(5) {
        return Err(Refusal::Stale);
    }
    if s.address.is_some() && s.address != peer {
        return Err(Refusal::OtherAddress);
    }
    if facts
        .session_opened
        .is_some_and(|opened| opened >= s.seen_at)
    {
        return Err(Refusal::AlreadyMinted);
    }
    Ok(Proof::Sighting)
}

#[cfg(test)]
mod tests {
    use dragonfly_core::MacAddr;
    use dragonfly_store::boot::{SightedVia, Sighting};

    use super::*;

    const WINDOW: Duration = Duration::from_secs(120);

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    fn ip(n: u8) -> Option<Ipv4Addr> {
        Some(Ipv4Addr::new(10, 99, 0, n))
    }

    fn sighted(at: i64, address: Option<Ipv4Addr>) -> MintFacts {
        MintFacts {
            sighting: Some(Sighting {
                mac: MacAddr::new([0x52, 0x54, 0, 0, 0, 1]),
                seen_at: t(at),
                address,
                via: SightedVia::Reservation,
            }),
            ..MintFacts::default()
        }
    }

    #[test]
    fn a_mac_nobody_saw_boot_gets_nothing() {
        assert_eq!(
            decide(&MintFacts::default(), ip(5), t(0), WINDOW),
            Err(Refusal::NeverSighted)
        );
    }

    #[test]
    fn a_fresh_sighting_from_its_address_earns_one_token() {
        let f = sighted(0, ip(5));
        assert_eq!(decide(&f, ip(5), t(30), WINDOW), Ok(Proof::Sighting));
        assert_eq!(
            decide(&f, ip(66), t(30), WINDOW),
            Err(Refusal::OtherAddress)
        );
        assert_eq!(decide(&f, None, t(30), WINDOW), Err(Refusal::OtherAddress));
        assert_eq!(decide(&f, ip(5), t(121), WINDOW), Err(Refusal::Stale));
        // Once a session is open for this sighting, a second asker gets nothing.
        let minted = MintFacts {
            session_opened: Some(t(1)),
            ..f
        };
        assert_eq!(
            decide(&minted, ip(5), t(30), WINDOW),
            Err(Refusal::AlreadyMinted)
        );
        // A session of an older boot does not count against a new sighting.
        let older = MintFacts {
            session_opened: Some(t(-600)),
            ..f
        };
        assert_eq!(decide(&older, ip(5), t(30), WINDOW), Ok(Proof::Sighting));
    }

    #[test]
    fn a_sighting_without_an_address_is_bound_by_time_only() {
        let f = sighted(0, None);
        assert_eq!(decide(&f, ip(66), t(10), WINDOW), Ok(Proof::Sighting));
    }

    #[test]
    fn the_leased_address_is_proof_enough() {
        let f = MintFacts {
            leased: ip(5),
            session_opened: Some(t(0)),
            ..sighted(-10_000, ip(5))
        };
        assert_eq!(decide(&f, ip(5), t(0), WINDOW), Ok(Proof::Lease));
        assert_eq!(decide(&f, ip(6), t(0), WINDOW), Err(Refusal::Stale));
        assert_eq!(
            peer_v4(Some("::ffff:10.99.0.5".parse().unwrap())),
            ip(5),
            "IPv4-mapped peers count as IPv4"
        );
    }
}
