//! Who may try a password, and how often: per client address, per account, and which
//! address a request really comes from.
//!
//! - [`AddressLimiter`]: a token bucket per client address (`login_attempts_per_minute`,
//!   IPv6 keyed by /64). Its table is bounded, and when full it **evicts** the buckets least
//!   recently used rather than refusing newcomers: before, 10 000 addresses that each tried
//!   once locked every new client out for a minute.
//! - [`AccountThrottle`]: exponential backoff per user name after failed passwords (1 s,
//!   2 s, 4 s … 60 s), whatever address they come from, so a distributed guesser gets one
//!   guess per backoff for an account however many addresses it has. An address the account
//!   last logged in from successfully ("known good", a few per account) has a backoff of its
//!   own: an attacker elsewhere cannot lock the operator out of their account.
//! - [`TrustedProxies`] and [`client_addr`]: `X-Forwarded-For` is believed only when the
//!   connection comes from a configured proxy, and then only its rightmost untrusted entry.
//!
//! All of it is in memory, bounded, and forgotten on restart (a restart costs an attacker
//! nothing it could not get by waiting a minute). It must never do I/O or hold its lock
//! across an await.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;

/// Clients the address limiter tracks at most.
pub const MAX_TRACKED_CLIENTS: usize = 10_000;
/// User names the account throttle tracks at most.
pub const MAX_TRACKED_ACCOUNTS: usize = 10_000;
/// Known-good addresses remembered per account.
pub const KNOWN_GOOD_PER_ACCOUNT: usize = 4;
/// The first backoff after a failure, doubled for each further failure…
pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// …up to this.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// The key a client is limited under: IPv4 as is (IPv4-mapped IPv6 too), IPv6 by its /64,
/// since one host can trivially use many addresses in it.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// Removes the `share` least recently used entries of `map` (by `at`): the one eviction both
/// tables use when full, paid once per `share` insertions rather than on each.
fn evict_oldest<K: Clone + Eq + std::hash::Hash, V>(
    map: &mut HashMap<K, V>,
    share: usize,
    at: impl Fn(&V) -> Instant,
) {
    let mut ages: Vec<(Instant, K)> = map.iter().map(|(k, v)| (at(v), k.clone())).collect();
    let n = share.clamp(1, ages.len().max(1));
    if ages.len() > n {
        ages.select_nth_unstable_by_key(n - 1, |(t, _)| *t);
    }
    for (_, k) in ages.into_iter().take(n) {
        map.remove(&k);
    }
}

/// A per-client-address token bucket for login attempts (see the module documentation).
#[derive(Debug)]
pub struct AddressLimiter {
    per_minute: f64,
    capacity: usize,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl AddressLimiter {
    pub fn new(per_minute: u32) -> Self {
        Self::with_capacity(per_minute, MAX_TRACKED_CLIENTS)
    }

    /// A limiter tracking at most `capacity` clients.
    pub fn with_capacity(per_minute: u32, capacity: usize) -> Self {
        Self {
            per_minute: f64::from(per_minute),
            capacity: capacity.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one attempt for `ip` at `now`, or says how long until one is available.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let rate = self.per_minute / 60.0;
        let cap = self.per_minute;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let key = client_key(ip);
        if !buckets.contains_key(&key) && buckets.len() >= self.capacity {
            // Full buckets belong to clients that have gone quiet: forgetting them changes
            // nothing. If that frees nothing, forget the least recently seen tenth: a new
            // client is never refused because others came first.
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < cap
            });
            if buckets.len() >= self.capacity {
                evict_oldest(&mut buckets, self.capacity / 10, |(_, at)| *at);
            }
        }
        let (tokens, at) = buckets.entry(key).or_insert((cap, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * rate).min(cap);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / rate))
        }
    }

    /// Clients tracked now.
    pub fn tracked(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Failures and when the next attempt is allowed.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    failures: u32,
    until: Instant,
}

impl Backoff {
    fn check(&self, now: Instant) -> Result<(), Duration> {
        match self.until.checked_duration_since(now) {
            Some(wait) if !wait.is_zero() => Err(wait),
            _ => Ok(()),
        }
    }

    fn fail(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        let exp = self.failures.saturating_sub(1).min(16);
        let wait = BACKOFF_FIRST.saturating_mul(1 << exp).min(BACKOFF_MAX);
        self.until = now + wait;
    }
}

#[derive(Debug)]
struct Account {
    /// Attempts from anywhere but a known-good address.
    others: Option<Backoff>,
    /// Since when a stranger's attempt is being checked: strangers' attempts on one account
    /// are taken one at a time, or a burst from many addresses would all pass the backoff
    /// check together before the first failure is recorded.
    in_flight: Option<Instant>,
    /// Addresses (keys) the account logged in from, each with its own backoff.
    known: Vec<(IpAddr, Option<Backoff>, Instant)>,
    touched: Instant,
}

/// Per-account exponential backoff with known-good addresses (see the module documentation).
#[derive(Debug)]
pub struct AccountThrottle {
    capacity: usize,
    accounts: Mutex<HashMap<String, Account>>,
}

impl Default for AccountThrottle {
    fn default() -> Self {
        Self::with_capacity(MAX_TRACKED_ACCOUNTS)
    }
}

impl AccountThrottle {
    /// A throttle tracking at most `capacity` user names.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            accounts: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `username` may try a password from `ip` now; otherwise how long to wait.
    pub fn check(&self, username: &str, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let key = client_key(ip);
        let accounts = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        let Some(a) = accounts.get(username) else {
            return Ok(());
        };
        match a.known.iter().find(|(k, _, _)| *k == key) {
            Some((_, b, _)) => b.map_or(Ok(()), |b| b.check(now)),
            None => {
                a.others.map_or(Ok(()), |b| b.check(now))?;
                match a.in_flight {
                    Some(since) if now.saturating_duration_since(since) < IN_FLIGHT_MAX => {
                        Err(BACKOFF_FIRST)
                    }
                    _ => Ok(()),
                }
            }
        }
    }

    /// Starts an attempt on `username` from `ip`, or says how long to wait: [`check`] and,
    /// for an address that is not one of the account's known-good ones, marks a stranger's
    /// attempt in flight until the returned [`Attempt`] is resolved or dropped.
    ///
    /// [`check`]: AccountThrottle::check
    pub fn begin(&self, username: &str, ip: IpAddr, now: Instant) -> Result<Attempt<'_>, Duration> {
        let key = client_key(ip);
        let mut accounts = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        let known = accounts
            .get(username)
            .is_some_and(|a| a.known.iter().any(|(k, _, _)| *k == key));
        drop(accounts);
        self.check(username, ip, now)?;
        if !known {
            accounts = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
            self.make_room(&mut accounts, username, now);
            let a = accounts
                .entry(username.to_owned())
                .or_insert_with(|| Account {
                    others: None,
                    in_flight: None,
                    known: Vec::new(),
                    touched: now,
                });
            // Re-checked under the lock: another stranger may have started meanwhile.
            if a.in_flight
                .is_some_and(|since| now.saturating_duration_since(since) < IN_FLIGHT_MAX)
            {
                return Err(BACKOFF_FIRST);
            }
            a.in_flight = Some(now);
            a.touched = now;
        }
        Ok(Attempt {
            throttle: self,
            username: username.to_owned(),
            ip,
            stranger: !known,
            resolved: false,
        })
    }

    fn clear_in_flight(&self, username: &str) {
        let mut accounts = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = accounts.get_mut(username) {
            a.in_flight = None;
        }
    }

    /// Before inserting `username`: when the table is full, forgets names whose backoff is
    /// over and that protect nobody, then the least recently touched tenth.
    fn make_room(&self, accounts: &mut HashMap<String, Account>, username: &str, now: Instant) {
        if !accounts.contains_key(username) && accounts.len() >= self.capacity {
            accounts.retain(|_, a| {
                !a.known.is_empty() || a.others.is_some_and(|b| b.check(now).is_err())
            });
            if accounts.len() >= self.capacity {
                evict_oldest(accounts, self.capacity / 10, |a| a.touched);
            }
        }
    }

    /// A wrong password for `username` from `ip`. Recorded for every name tried, existing or
    /// not, so the answers do not tell which names exist.
    pub fn failed(&self, username: &str, ip: IpAddr, now: Instant) {
        let key = client_key(ip);
        let mut accounts = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        self.make_room(&mut accounts, username, now);
        let a = accounts
            .entry(username.to_owned())
            .or_insert_with(|| Account {
                others: None,
                in_flight: None,
                known: Vec::new(),
                touched: now,
            });
        a.touched = now;
        let slot = match a.known.iter_mut().find(|(k, _, _)| *k == key) {
            Some((_, b, _)) => b,
            None => &mut a.others,
        };
        slot.get_or_insert(Backoff {
            failures: 0,
            until: now,
        })
        .fail(now);
    }

    /// A successful login: `ip` becomes (or stays) a known-good address of `username`, with
    /// its backoff cleared. The backoff of other addresses is left as it is.
    pub fn succeeded(&self, username: &str, ip: IpAddr, now: Instant) {
        let key = client_key(ip);
        let mut accounts = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        self.make_room(&mut accounts, username, now);
        let a = accounts
            .entry(username.to_owned())
            .or_insert_with(|| Account {
                others: None,
                in_flight: None,
                known: Vec::new(),
                touched: now,
            });
        a.touched = now;
        a.known.retain(|(k, _, _)| *k != key);
        if a.known.len() >= KNOWN_GOOD_PER_ACCOUNT {
            // The address least recently logged in from goes.
            if let Some(oldest) = a
                .known
                .iter()
                .enumerate()
                .min_by_key(|(_, (_, _, at))| *at)
                .map(|(i, _)| i)
            {
                a.known.remove(oldest);
            }
        }
        a.known.push((key, None, now));
    }

    /// User names tracked now.
    pub fn tracked(&self) -> usize {
        self.accounts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

/// How long a stranger's attempt may hold its account's turn (a password check takes well
/// under a second; this only matters if one is lost without being resolved).
const IN_FLIGHT_MAX: Duration = Duration::from_secs(10);

/// A password attempt that passed [`AccountThrottle::begin`]: say how it ended. Dropped
/// unresolved (the request failed or was cancelled), it only gives the account's turn back.
#[derive(Debug)]
pub struct Attempt<'a> {
    throttle: &'a AccountThrottle,
    username: String,
    ip: IpAddr,
    stranger: bool,
    resolved: bool,
}

impl Attempt<'_> {
    /// The password was wrong.
    pub fn failed(mut self, now: Instant) {
        self.throttle.failed(&self.username, self.ip, now);
        self.finish();
    }

    /// The password was right.
    pub fn succeeded(mut self, now: Instant) {
        self.throttle.succeeded(&self.username, self.ip, now);
        self.finish();
    }

    fn finish(&mut self) {
        if self.stranger && !self.resolved {
            self.throttle.clear_in_flight(&self.username);
        }
        self.resolved = true;
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.finish();
    }
}

/// One address or network in `[apid] trusted_proxies`: `10.0.0.5`, `10.0.0.0/24`,
/// `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a `trusted_proxies` entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an IP address or network (e.g. 10.0.0.5 or 10.0.0.0/24)")]
pub struct BadCidr(pub String);

impl FromStr for Cidr {
    type Err = BadCidr;

    fn from_str(s: &str) -> Result<Self, BadCidr> {
        let bad = || BadCidr(s.to_owned());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u8>().map_err(|_| bad())?
            }
            Some(_) => return Err(bad()),
        };
        if prefix > max {
            return Err(bad());
        }
        Ok(Self { addr, prefix })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Cidr {
    /// Whether `ip` is inside this network (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let bits = |a: IpAddr| -> u128 {
            match a {
                IpAddr::V4(v4) => u128::from(u32::from(v4)),
                IpAddr::V6(v6) => u128::from(v6),
            }
        };
        let width: u32 = if self.addr.is_ipv4() { 32 } else { 128 };
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        let shift = width - u32::from(self.prefix);
        let (a, b) = (bits(ip), bits(self.addr));
        shift >= width || (a >> shift) == (b >> shift)
    }
}

/// The proxies whose `X-Forwarded-For` apid believes (`[apid] trusted_proxies`; none by
/// default, so the header is ignored unless configured).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<Cidr>);

impl TrustedProxies {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }
}

/// The most `X-Forwarded-For` entries read: a proxy chain is a handful of hops.
const MAX_FORWARDED_HOPS: usize = 16;

/// The client's address: the connection's peer, unless the peer is a trusted proxy, in which
/// case the rightmost `X-Forwarded-For` entry that is not itself a trusted proxy (entries to
/// its left were written by the client and prove nothing). A malformed entry stops the walk
/// at the last trusted hop.
pub fn client_addr(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    if !trusted.contains(peer) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev().take(MAX_FORWARDED_HOPS) {
        let Ok(ip) = hop.parse::<IpAddr>() else {
            break;
        };
        client = ip;
        if !trusted.contains(ip) {
            break;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn rate_limit_refills_over_time() {
        let rl = AddressLimiter::new(6);
        let a = ip("192.0.2.1");
        let t0 = Instant::now();
        for _ in 0..6 {
            assert!(rl.check(a, t0).is_ok());
        }
        let wait = rl.check(a, t0).unwrap_err();
        assert!(
            wait > Duration::from_secs(9) && wait <= Duration::from_secs(10),
            "{wait:?}"
        );
        // Another client is unaffected.
        assert!(rl.check(ip("192.0.2.2"), t0).is_ok());
        // After 10 s one more attempt is allowed.
        assert!(rl.check(a, t0 + Duration::from_secs(10)).is_ok());
        assert!(rl.check(a, t0 + Duration::from_secs(10)).is_err());
    }

    #[test]
    fn ipv6_clients_share_their_64() {
        let rl = AddressLimiter::new(1);
        let t0 = Instant::now();
        assert!(rl.check(ip("2001:db8::1"), t0).is_ok());
        assert!(rl.check(ip("2001:db8::2"), t0).is_err());
        assert!(rl.check(ip("2001:db8:0:1::1"), t0).is_ok());
        assert_eq!(client_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
    }

    #[test]
    fn a_full_table_evicts_instead_of_locking_newcomers_out() {
        let rl = AddressLimiter::with_capacity(1, 100);
        let t0 = Instant::now();
        // 100 clients each spend their one attempt: none of their buckets is full.
        for i in 0..100u8 {
            assert!(rl.check(IpAddr::from([198, 51, 100, i]), t0).is_ok());
        }
        // Before: a newcomer was refused for a minute. Now the oldest are forgotten.
        for i in 0..50u8 {
            assert!(rl.check(IpAddr::from([203, 0, 113, i]), t0).is_ok(), "{i}");
        }
        assert!(rl.tracked() <= 100);
        // A client still tracked keeps its limit.
        assert!(rl.check(IpAddr::from([203, 0, 113, 49]), t0).is_err());
    }

    #[test]
    fn accounts_back_off_exponentially_up_to_a_minute() {
        let th = AccountThrottle::default();
        let t0 = Instant::now();
        let attacker = ip("198.51.100.7");
        assert!(th.check("ops", attacker, t0).is_ok());
        let mut waits = Vec::new();
        let mut now = t0;
        for _ in 0..9 {
            th.failed("ops", attacker, now);
            let wait = th.check("ops", attacker, now).unwrap_err();
            waits.push(wait.as_secs());
            now += wait;
            assert!(th.check("ops", attacker, now).is_ok());
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        // From any other address too: the account is what is throttled.
        th.failed("ops", attacker, now);
        assert!(th.check("ops", ip("203.0.113.9"), now).is_err());
        // Another name is not.
        assert!(th.check("other", attacker, now).is_ok());
    }

    #[test]
    fn the_operators_known_address_is_not_locked_out_from_elsewhere() {
        let th = AccountThrottle::default();
        let t0 = Instant::now();
        let operator = ip("10.0.0.10");
        th.succeeded("ops", operator, t0);
        for i in 0..20 {
            th.failed("ops", ip("198.51.100.7"), t0 + Duration::from_millis(i));
        }
        assert!(th.check("ops", ip("198.51.100.8"), t0).is_err());
        assert!(th.check("ops", operator, t0).is_ok(), "known-good bypass");
        // The operator's own typos back off on their own counter.
        th.failed("ops", operator, t0);
        assert!(th.check("ops", operator, t0).is_err());
        assert!(
            th.check("ops", operator, t0 + Duration::from_secs(1))
                .is_ok()
        );
    }

    #[test]
    fn strangers_attempts_on_one_account_are_taken_one_at_a_time() {
        let th = AccountThrottle::default();
        let t0 = Instant::now();
        let operator = ip("10.0.0.10");
        th.succeeded("ops", operator, t0);
        // A burst from many addresses: one passes, the others wait for its result.
        let first = th.begin("ops", ip("198.51.100.1"), t0).unwrap();
        for i in 2..40u8 {
            assert!(
                th.begin("ops", IpAddr::from([198, 51, 100, i]), t0)
                    .is_err()
            );
        }
        // The operator's known address is not in the strangers' queue.
        th.begin("ops", operator, t0).unwrap().succeeded(t0);
        first.failed(t0);
        assert!(th.begin("ops", ip("198.51.100.2"), t0).is_err(), "backoff");
        let later = t0 + Duration::from_secs(1);
        let second = th.begin("ops", ip("198.51.100.2"), later).unwrap();
        // Dropped unresolved (a cancelled request): the turn is given back, nothing counted.
        drop(second);
        th.begin("ops", ip("198.51.100.3"), later)
            .unwrap()
            .failed(later);
        assert_eq!(
            th.check("ops", ip("198.51.100.4"), later).unwrap_err(),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn the_account_table_is_bounded() {
        let th = AccountThrottle::with_capacity(100);
        let t0 = Instant::now();
        th.succeeded("ops", ip("10.0.0.10"), t0);
        for i in 0..1000 {
            th.failed(&format!("guess{i}"), ip("198.51.100.7"), t0);
        }
        assert!(th.tracked() <= 100, "{}", th.tracked());
    }

    #[test]
    fn cidrs_parse_and_match() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.1.2.3")));
        assert!(c.contains(ip("::ffff:10.1.2.3")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(!c.contains(ip("fd00::1")));
        let one: Cidr = "192.0.2.5".parse().unwrap();
        assert!(one.contains(ip("192.0.2.5")) && !one.contains(ip("192.0.2.6")));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.1")));
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0/8",
            "10.0.0.0/",
            "10.0.0.0/-1",
            "x",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_proxy() {
        let trusted = TrustedProxies(vec!["10.0.0.1".parse().unwrap()]);
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "1.1.1.1, 203.0.113.9".parse().unwrap());
        // From a stranger the header is the client's own claim.
        assert_eq!(
            client_addr(ip("198.51.100.7"), &h, &trusted),
            ip("198.51.100.7")
        );
        // From the proxy, the rightmost entry it did not write itself.
        assert_eq!(client_addr(ip("10.0.0.1"), &h, &trusted), ip("203.0.113.9"));
        // Through two trusted hops, still the first untrusted one from the right.
        let two = TrustedProxies(vec!["10.0.0.0/24".parse().unwrap()]);
        let mut h2 = HeaderMap::new();
        h2.append("x-forwarded-for", "6.6.6.6, 203.0.113.9".parse().unwrap());
        h2.append("x-forwarded-for", "10.0.0.2".parse().unwrap());
        assert_eq!(client_addr(ip("10.0.0.1"), &h2, &two), ip("203.0.113.9"));
        // Garbage stops the walk at the last hop a proxy vouched for.
        let mut bad = HeaderMap::new();
        bad.append("x-forwarded-for", "203.0.113.9, nonsense".parse().unwrap());
        assert_eq!(client_addr(ip("10.0.0.1"), &bad, &trusted), ip("10.0.0.1"));
        // No header: the proxy itself.
        assert_eq!(
            client_addr(ip("10.0.0.1"), &HeaderMap::new(), &trusted),
            ip("10.0.0.1")
        );
    }
}
