//! dhcpd's section of the configuration file, `[dhcpd]`.
//!
//! Reservations (MAC → fixed address) come from two places: this file (`[[dhcpd.reservations]]`:
//! the operator who plans a subnet writes them next to it, and `--check-config` catches an
//! address outside its subnet or a MAC reserved twice), and the store's `dhcp_reservations`
//! table, written through apid's API. [`DhcpdConfig::with_stored`] merges the two, the file's
//! winning; dhcpd publishes its subnets and the file's reservations in the store at start so
//! that apid checks a new reservation against them.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::time::Duration;

use dragonfly_core::MacAddr;
use dragonfly_runtime::config::{
    DaemonConfig, Invalid, ListenConfig, Reason, count_between, duration_between, http_url, ipv4,
    length_between,
};
use serde::Deserialize;

/// `[dhcpd]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDhcpd {
    /// `reservation` (default), `proxy` or `autoproxy`.
    pub mode: Option<String>,
    /// Fallback address for the DHCP socket when systemd passed none named `dhcp`.
    pub listen: Option<String>,
    /// Fallback address for the PXE boot-server socket (`pxe`); `""` disables it.
    pub pxe_listen: Option<String>,
    /// Server identifier (option 54) and default TFTP server. Default: the address the
    /// request arrived on.
    pub server_ip: Option<String>,
    /// next-server/siaddr for PXE firmware. Default: the server identifier.
    pub tftp_server: Option<String>,
    pub bios_file: Option<String>,
    pub uefi_x64_file: Option<String>,
    pub uefi_arm64_file: Option<String>,
    /// Full URL of the EFI binary for UEFI HTTP boot (x86-64 / arm64).
    pub http_boot_x64_url: Option<String>,
    pub http_boot_arm64_url: Option<String>,
    /// `host:port` of ipxed, substituted for `{ipxed}` in `ipxe_script_url`.
    pub ipxed: Option<String>,
    /// The filename given to iPXE; `${…}` is left for iPXE to expand.
    pub ipxe_script_url: Option<String>,
    pub lease_time: Option<String>,
    /// How long an OFFER keeps its address for the client (1s to 60s).
    pub offer_hold: Option<String>,
    pub decline_hold: Option<String>,
    /// Relay agents whose relayed requests are served: the giaddr and the source address of
    /// a relayed request must both be listed. None listed: relayed requests are refused.
    #[serde(default)]
    pub relays: Vec<String>,
    /// Answers to new clients (no reservation, no lease, not a known machine) per relay and
    /// per interface: refilled at this rate...
    pub new_clients_per_second: Option<u32>,
    /// ...up to this many at once.
    pub new_clients_burst: Option<u32>,
    #[serde(default)]
    pub subnets: Vec<RawSubnet>,
    #[serde(default)]
    pub reservations: Vec<RawReservation>,
    /// How often the stored reservations are re-read besides at start, on each
    /// `dragonfly.reservation.changed` hint and after a reconnect (5s to 1h).
    pub reconcile_period: Option<String>,
}

/// `[[dhcpd.subnets]]` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSubnet {
    /// `10.99.0.0/24`.
    pub network: String,
    pub pool_start: Option<String>,
    pub pool_end: Option<String>,
    pub router: Option<String>,
    #[serde(default)]
    pub dns: Vec<String>,
    pub domain_name: Option<String>,
    pub lease_time: Option<String>,
}

/// `[[dhcpd.reservations]]` as written.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReservation {
    pub mac: String,
    pub ip: String,
}

/// How dhcpd behaves on a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Full DHCP server for the configured subnets.
    Reservation,
    /// Beside another DHCP server: boot answers for known machines only, never addresses.
    Proxy,
    /// As proxy, and unknown PXE clients too (so they can be discovered).
    AutoProxy,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reservation => "reservation",
            Self::Proxy => "proxy",
            Self::AutoProxy => "autoproxy",
        }
    }
}

/// One served subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix: u8,
    pub pool: Option<(Ipv4Addr, Ipv4Addr)>,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain_name: Option<String>,
    pub lease_time: Duration,
}

impl Subnet {
    pub fn mask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask_bits(self.prefix))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask_bits(self.prefix) == u32::from(self.network)
    }

    /// In the pool range.
    pub fn in_pool(&self, ip: Ipv4Addr) -> bool {
        self.pool
            .is_some_and(|(a, b)| (u32::from(a)..=u32::from(b)).contains(&u32::from(ip)))
    }
}

fn mask_bits(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

/// `[dhcpd]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpdConfig {
    pub mode: Mode,
    pub listen: ListenConfig,
    pub pxe_listen: Option<ListenConfig>,
    pub server_ip: Option<Ipv4Addr>,
    pub tftp_server: Option<Ipv4Addr>,
    pub bios_file: String,
    pub uefi_x64_file: String,
    pub uefi_arm64_file: String,
    pub http_boot_x64_url: Option<String>,
    pub http_boot_arm64_url: Option<String>,
    pub ipxed: Option<String>,
    pub ipxe_script_url: String,
    pub lease_time: Duration,
    pub offer_hold: Duration,
    pub decline_hold: Duration,
    /// Listed relay addresses, sorted (see [`DhcpdConfig::relay_allowed`]).
    pub relays: Vec<Ipv4Addr>,
    pub new_clients: RateLimit,
    pub subnets: Vec<Subnet>,
    pub reservations: Reservations,
    pub reconcile_period: Duration,
}

/// A token bucket's size and refill rate (see [`crate::limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

/// New clients answered per relay or interface, by default: a rack of 1 000 machines (and
/// as many BMCs) powering on at once fits in the burst, and a flood can hold at most
/// `burst + per_second × offer_hold` (3 000) addresses in offers per link.
pub const DEFAULT_NEW_CLIENTS: RateLimit = RateLimit {
    per_second: 100,
    burst: 2000,
};

/// The fixed addresses, indexed both ways: policy asks "is this MAC reserved?" and "is this
/// address reserved?" for every request and pool address, so neither may be a scan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reservations {
    by_mac: HashMap<MacAddr, Ipv4Addr>,
    by_ip: HashMap<Ipv4Addr, MacAddr>,
}

impl Reservations {
    /// Adds `mac` → `ip`; `false` (and nothing added) when either is reserved already.
    pub fn insert(&mut self, mac: MacAddr, ip: Ipv4Addr) -> bool {
        if self.by_mac.contains_key(&mac) || self.by_ip.contains_key(&ip) {
            return false;
        }
        self.by_mac.insert(mac, ip);
        self.by_ip.insert(ip, mac);
        true
    }

    pub fn len(&self) -> usize {
        self.by_mac.len()
    }

    /// Every reservation, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (MacAddr, Ipv4Addr)> + '_ {
        self.by_mac.iter().map(|(m, i)| (*m, *i))
    }

    pub fn is_empty(&self) -> bool {
        self.by_mac.is_empty()
    }
}

/// The iPXE script URL unless configured: `{ipxed}` is replaced by the `ipxed` key (default:
/// the server identifier and port 8080); `${mac}`/`${platform}` are for iPXE to expand.
pub const DEFAULT_IPXE_SCRIPT_URL: &str = "http://{ipxed}/boot/${mac}?platform=${platform}";

/// Why a value in `[dhcpd]` was refused, beyond the shared [`Reason`]s.
#[derive(Debug, thiserror::Error)]
pub enum DhcpdConfigError {
    #[error("unknown mode {0:?}: expected reservation, proxy or autoproxy")]
    Mode(String),
    #[error(
        "invalid network {0:?}: expected ADDRESS/PREFIX with host bits zero, e.g. 10.99.0.0/24"
    )]
    Network(String),
    #[error("{0} is not inside any [[dhcpd.subnets]] network")]
    Outside(Ipv4Addr),
    #[error("pool_start and pool_end must both be set, inside the network, start <= end")]
    Pool,
    #[error("reservation mode needs at least one [[dhcpd.subnets]]")]
    NoSubnet,
    #[error("{0} is reserved twice")]
    Duplicate(String),
    #[error("{0} cannot be a relay agent's address")]
    Relay(Ipv4Addr),
}

/// Lease times and holds: a second to a year.
const DURATIONS: RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(365 * 86400);

/// Offers are held briefly: every DISCOVER from a new MAC holds an address this long, so
/// the longer the hold, the fewer DISCOVERs a second it takes to fill a pool. Ten seconds
/// outlasts any client's wait between OFFER and REQUEST (PXE ROMs collect offers for up to
/// 4 s); a REQUEST after the hold is still granted when the address is free.
const OFFER_HOLDS: RangeInclusive<Duration> = Duration::from_secs(1)..=Duration::from_secs(60);

/// Default lease time, for subnets that set none.
pub const DEFAULT_LEASE_TIME: Duration = Duration::from_secs(3600);
/// Default hold on an offered address.
pub const DEFAULT_OFFER_HOLD: Duration = Duration::from_secs(10);
/// Default quarantine of an address a client DECLINEd (it found the address in use).
pub const DEFAULT_DECLINE_HOLD: Duration = Duration::from_secs(600);
/// Default of `reconcile_period`.
pub const DEFAULT_RECONCILE_PERIOD: Duration = Duration::from_secs(60);
/// Default boot file for BIOS PXE firmware (iPXE's UNDI build).
pub const DEFAULT_BIOS_FILE: &str = "undionly.kpxe";
/// Default boot file for x86-64 UEFI PXE firmware.
pub const DEFAULT_UEFI_X64_FILE: &str = "ipxe.efi";
/// Default boot file for arm64 UEFI PXE firmware.
pub const DEFAULT_UEFI_ARM64_FILE: &str = "ipxe-arm64.efi";

/// A boot file name for the DHCP `file` field: 128 bytes including the terminating NUL.
fn boot_file(key: &str, value: Option<String>, default: &str) -> Result<String, Invalid> {
    let file = value.unwrap_or_else(|| default.to_owned());
    length_between(key, &file, 1..=127)?;
    Ok(file)
}

/// An optional `http://` or `https://` URL.
fn optional_url(key: &str, value: Option<&str>) -> Result<Option<String>, Invalid> {
    value.map(|url| http_url(key, url)).transpose()
}

fn relays(raw: &[String]) -> Result<Vec<Ipv4Addr>, Invalid> {
    let mut out = Vec::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        let key = format!("relays[{i}]");
        let a = ipv4(&key, r)?;
        if a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback() {
            return Err(Invalid::custom(key, DhcpdConfigError::Relay(a)));
        }
        out.push(a);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

fn subnet(raw: RawSubnet, default_lease: Duration) -> Result<Subnet, Invalid> {
    let bad = || Invalid::custom("network", DhcpdConfigError::Network(raw.network.clone()));
    let (addr, prefix) = raw.network.split_once('/').ok_or_else(bad)?;
    let network: Ipv4Addr = addr.trim().parse().map_err(|_| bad())?;
    let prefix: u8 = prefix
        .trim()
        .parse()
        .ok()
        .filter(|p| *p <= 32)
        .ok_or_else(bad)?;
    if u32::from(network) & !mask_bits(prefix) != 0 {
        return Err(bad());
    }
    let mut s = Subnet {
        network,
        prefix,
        pool: None,
        router: raw
            .router
            .as_deref()
            .map(|r| ipv4("router", r))
            .transpose()?,
        dns: raw
            .dns
            .iter()
            .enumerate()
            .map(|(i, d)| ipv4(&format!("dns[{i}]"), d))
            .collect::<Result<_, _>>()?,
        domain_name: raw.domain_name.filter(|d| !d.is_empty()),
        lease_time: duration_between(
            "lease_time",
            raw.lease_time.as_deref(),
            default_lease,
            DURATIONS,
        )?,
    };
    s.pool = match (raw.pool_start, raw.pool_end) {
        (None, None) => None,
        (Some(a), Some(b)) => {
            let (a, b) = (ipv4("pool_start", &a)?, ipv4("pool_end", &b)?);
            if a > b || !s.contains(a) || !s.contains(b) {
                return Err(Invalid::custom("pool_start", DhcpdConfigError::Pool));
            }
            Some((a, b))
        }
        _ => return Err(Invalid::custom("pool_start", DhcpdConfigError::Pool)),
    };
    Ok(s)
}

impl DaemonConfig for DhcpdConfig {
    const SECTION: &'static str = "dhcpd";
    type Raw = RawDhcpd;

    fn validate(raw: RawDhcpd) -> Result<Self, Invalid> {
        let mode = match raw.mode.as_deref().unwrap_or("reservation") {
            "reservation" => Mode::Reservation,
            "proxy" => Mode::Proxy,
            "autoproxy" => Mode::AutoProxy,
            other => {
                return Err(Invalid::custom(
                    "mode",
                    DhcpdConfigError::Mode(other.into()),
                ));
            }
        };
        let listen = ListenConfig::parse("listen", raw.listen.as_deref().unwrap_or("0.0.0.0:67"))?;
        let pxe_listen = match raw.pxe_listen.as_deref() {
            Some("") => None,
            other => Some(ListenConfig::parse(
                "pxe_listen",
                other.unwrap_or("0.0.0.0:4011"),
            )?),
        };
        let lease_time = duration_between(
            "lease_time",
            raw.lease_time.as_deref(),
            DEFAULT_LEASE_TIME,
            DURATIONS,
        )?;
        let subnets = raw
            .subnets
            .into_iter()
            .enumerate()
            .map(|(i, s)| subnet(s, lease_time).map_err(|e| e.within(&format!("subnets[{i}]"))))
            .collect::<Result<Vec<_>, _>>()?;
        if mode == Mode::Reservation && subnets.is_empty() {
            return Err(Invalid::custom("subnets", DhcpdConfigError::NoSubnet));
        }
        let mut reservations = Reservations::default();
        for (i, r) in raw.reservations.iter().enumerate() {
            let key = |k: &str| format!("reservations[{i}].{k}");
            let mac: MacAddr = r.mac.parse().map_err(|e| Invalid::custom(key("mac"), e))?;
            let addr = ipv4(&key("ip"), &r.ip)?;
            if !subnets.iter().any(|s| s.contains(addr)) {
                return Err(Invalid::custom(key("ip"), DhcpdConfigError::Outside(addr)));
            }
            if !reservations.insert(mac, addr) {
                return Err(Invalid::custom(
                    key("mac"),
                    DhcpdConfigError::Duplicate(r.mac.clone()),
                ));
            }
        }
        if let Some(v) = &raw.ipxed
            && v.trim().is_empty()
        {
            return Err(Invalid::new("ipxed", Reason::Empty));
        }
        let ipxe_script_url = http_url(
            "ipxe_script_url",
            raw.ipxe_script_url
                .as_deref()
                .unwrap_or(DEFAULT_IPXE_SCRIPT_URL),
        )?;
        Ok(Self {
            mode,
            listen,
            pxe_listen,
            server_ip: raw
                .server_ip
                .as_deref()
                .map(|s| ipv4("server_ip", s))
                .transpose()?,
            tftp_server: raw
                .tftp_server
                .as_deref()
                .map(|s| ipv4("tftp_server", s))
                .transpose()?,
            bios_file: boot_file("bios_file", raw.bios_file, DEFAULT_BIOS_FILE)?,
            uefi_x64_file: boot_file("uefi_x64_file", raw.uefi_x64_file, DEFAULT_UEFI_X64_FILE)?,
            uefi_arm64_file: boot_file(
                "uefi_arm64_file",
                raw.uefi_arm64_file,
                DEFAULT_UEFI_ARM64_FILE,
            )?,
            http_boot_x64_url: optional_url("http_boot_x64_url", raw.http_boot_x64_url.as_deref())?,
            http_boot_arm64_url: optional_url(
                "http_boot_arm64_url",
                raw.http_boot_arm64_url.as_deref(),
            )?,
            ipxed: raw.ipxed,
            ipxe_script_url,
            lease_time,
            offer_hold: duration_between(
                "offer_hold",
                raw.offer_hold.as_deref(),
                DEFAULT_OFFER_HOLD,
                OFFER_HOLDS,
            )?,
            decline_hold: duration_between(
                "decline_hold",
                raw.decline_hold.as_deref(),
                DEFAULT_DECLINE_HOLD,
                DURATIONS,
            )?,
            relays: relays(&raw.relays)?,
            new_clients: RateLimit {
                per_second: count_between(
                    "new_clients_per_second",
                    raw.new_clients_per_second,
                    DEFAULT_NEW_CLIENTS.per_second,
                    1..=1_000_000,
                )?,
                burst: count_between(
                    "new_clients_burst",
                    raw.new_clients_burst,
                    DEFAULT_NEW_CLIENTS.burst,
                    1..=1_000_000,
                )?,
            },
            subnets,
            reservations,
            reconcile_period: duration_between(
                "reconcile_period",
                raw.reconcile_period.as_deref(),
                DEFAULT_RECONCILE_PERIOD,
                Duration::from_secs(5)..=Duration::from_secs(3600),
            )?,
        })
    }
}

impl DhcpdConfig {
    /// The subnet containing `ip`.
    pub fn subnet_of(&self, ip: Ipv4Addr) -> Option<(usize, &Subnet)> {
        self.subnets
            .iter()
            .enumerate()
            .find(|(_, s)| s.contains(ip))
    }

    /// Whether a request relayed with `giaddr` and sent from `source` is to be served: both
    /// addresses must be listed relays. (A host on our own segment can write any giaddr; it
    /// must then also forge a listed source address, and the answer still goes to the relay.)
    pub fn relay_allowed(&self, giaddr: Ipv4Addr, source: Ipv4Addr) -> bool {
        self.relays.binary_search(&giaddr).is_ok() && self.relays.binary_search(&source).is_ok()
    }

    /// The fixed address reserved for `mac`.
    pub fn reservation(&self, mac: MacAddr) -> Option<Ipv4Addr> {
        self.reservations.by_mac.get(&mac).copied()
    }

    pub fn is_reserved(&self, ip: Ipv4Addr) -> bool {
        self.reservations.by_ip.contains_key(&ip)
    }

    /// This configuration with `stored` (the store's reservations) added to the file's. A
    /// stored reservation is skipped when its MAC or address is reserved already (the file
    /// wins, and the table cannot hold either twice) or when its address is in no subnet
    /// (the subnets changed since it was made); the skipped ones are returned, with why.
    pub fn with_stored(
        &self,
        stored: impl IntoIterator<Item = (MacAddr, Ipv4Addr)>,
    ) -> (Self, Vec<(MacAddr, Ipv4Addr, &'static str)>) {
        let mut merged = self.clone();
        let mut skipped = Vec::new();
        for (mac, ip) in stored {
            if !self.subnets.iter().any(|s| s.contains(ip)) {
                skipped.push((mac, ip, "the address is in no configured subnet"));
            } else if !merged.reservations.insert(mac, ip) {
                skipped.push((
                    mac,
                    ip,
                    "the configuration file reserves this MAC or address",
                ));
            }
        }
        (merged, skipped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab() -> RawDhcpd {
        RawDhcpd {
            subnets: vec![RawSubnet {
                network: "10.99.0.0/24".into(),
                pool_start: Some("10.99.0.100".into()),
                pool_end: Some("10.99.0.200".into()),
                router: Some("10.99.0.1".into()),
                dns: vec!["10.99.0.1".into()],
                ..Default::default()
            }],
            reservations: vec![RawReservation {
                mac: "52:54:00:12:34:56".into(),
                ip: "10.99.0.10".into(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn stored_reservations_merge_under_the_files() {
        let c = DhcpdConfig::validate(lab()).unwrap();
        let m = |s: &str| s.parse::<MacAddr>().unwrap();
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        let (merged, skipped) = c.with_stored([
            (m("52:54:00:00:00:01"), ip("10.99.0.20")),
            // The file's MAC, and the file's address: the file wins.
            (m("52:54:00:12:34:56"), ip("10.99.0.21")),
            (m("52:54:00:00:00:02"), ip("10.99.0.10")),
            // Outside every subnet (the file changed since).
            (m("52:54:00:00:00:03"), ip("10.98.0.5")),
        ]);
        assert_eq!(
            merged.reservation(m("52:54:00:00:00:01")),
            Some(ip("10.99.0.20"))
        );
        assert_eq!(
            merged.reservation(m("52:54:00:12:34:56")),
            Some(ip("10.99.0.10"))
        );
        assert!(merged.is_reserved(ip("10.99.0.20")));
        assert_eq!(merged.reservations.len(), 2);
        let why: Vec<_> = skipped.iter().map(|s| s.2).collect();
        assert_eq!(
            why,
            [
                "the configuration file reserves this MAC or address",
                "the configuration file reserves this MAC or address",
                "the address is in no configured subnet"
            ]
        );
        // The base is untouched: the next reload starts from the file again.
        assert_eq!(c.reservations.len(), 1);
        assert_eq!(c.reconcile_period, DEFAULT_RECONCILE_PERIOD);
    }

    #[test]
    fn defaults() {
        let c = DhcpdConfig::validate(lab()).unwrap();
        assert_eq!(c.mode, Mode::Reservation);
        assert_eq!(c.listen.addr.to_string(), "0.0.0.0:67");
        assert_eq!(c.pxe_listen.unwrap().addr.to_string(), "0.0.0.0:4011");
        assert_eq!(c.bios_file, "undionly.kpxe");
        assert_eq!(c.ipxe_script_url, DEFAULT_IPXE_SCRIPT_URL);
        let s = &c.subnets[0];
        assert_eq!(s.mask(), Ipv4Addr::new(255, 255, 255, 0));
        assert!(
            s.contains(Ipv4Addr::new(10, 99, 0, 255)) && !s.contains(Ipv4Addr::new(10, 98, 0, 1))
        );
        assert!(
            s.in_pool(Ipv4Addr::new(10, 99, 0, 150)) && !s.in_pool(Ipv4Addr::new(10, 99, 0, 10))
        );
        assert_eq!(s.lease_time, Duration::from_secs(3600));
        assert!(c.is_reserved(Ipv4Addr::new(10, 99, 0, 10)));
        assert_eq!(c.offer_hold, Duration::from_secs(10));
        assert_eq!(c.new_clients, DEFAULT_NEW_CLIENTS);
        assert!(c.relays.is_empty());
        assert!(!c.relay_allowed(Ipv4Addr::new(10, 99, 0, 1), Ipv4Addr::new(10, 99, 0, 1)));
    }

    #[test]
    fn relays_must_be_listed_twice_over() {
        let mut raw = lab();
        raw.relays = vec!["10.1.0.1".into(), "10.0.0.9".into(), "10.1.0.1".into()];
        raw.new_clients_per_second = Some(5);
        raw.new_clients_burst = Some(7);
        let c = DhcpdConfig::validate(raw).unwrap();
        assert_eq!(
            c.relays,
            [Ipv4Addr::new(10, 0, 0, 9), Ipv4Addr::new(10, 1, 0, 1)]
        );
        let (relay, upstream, other) = (
            Ipv4Addr::new(10, 1, 0, 1),
            Ipv4Addr::new(10, 0, 0, 9),
            Ipv4Addr::new(10, 99, 0, 77),
        );
        assert!(c.relay_allowed(relay, relay));
        assert!(
            c.relay_allowed(relay, upstream),
            "sent from its other listed address"
        );
        assert!(!c.relay_allowed(other, relay), "unlisted giaddr");
        assert!(
            !c.relay_allowed(relay, other),
            "listed giaddr from an unlisted host"
        );
        assert_eq!(
            c.new_clients,
            RateLimit {
                per_second: 5,
                burst: 7
            }
        );
    }

    /// The shipped example's `[dhcpd]` values are the defaults (with a subnet added, which
    /// reservation mode needs and which has no default).
    #[test]
    fn the_shipped_example_states_the_defaults() {
        let text = format!(
            "{}\n[[dhcpd.subnets]]\nnetwork = \"10.99.0.0/24\"\n",
            include_str!("../../../packaging/dragonfly.toml.example")
        );
        let example = dragonfly_runtime::config::parse_str::<DhcpdConfig>(
            std::path::Path::new("dragonfly.toml.example"),
            &text,
        )
        .unwrap()
        .daemon;
        let mut raw = lab();
        raw.reservations.clear();
        raw.subnets = vec![RawSubnet {
            network: "10.99.0.0/24".into(),
            ..Default::default()
        }];
        assert_eq!(example, DhcpdConfig::validate(raw).unwrap());
    }

    #[test]
    fn errors_name_the_value_and_what_is_allowed() {
        let error = |tweak: fn(&mut RawDhcpd)| {
            let mut raw = lab();
            tweak(&mut raw);
            DhcpdConfig::validate(raw).unwrap_err().to_string()
        };
        assert_eq!(
            error(|r| r.subnets[0].router = Some("10.99.0".into())),
            "subnets[0].router: invalid IPv4 address \"10.99.0\": expected four decimal numbers, \
             e.g. 10.0.0.1"
        );
        assert_eq!(
            error(|r| r.offer_hold = Some("61s".into())),
            "offer_hold: 61s is out of range: must be between 1s and 1m"
        );
        assert_eq!(
            error(|r| r.lease_time = Some("0s".into())),
            "lease_time: 0s is out of range: must be between 1s and 8760h"
        );
        assert_eq!(
            error(|r| r.new_clients_burst = Some(0)),
            "new_clients_burst: 0 is out of range: must be between 1 and 1000000"
        );
        assert_eq!(
            error(|r| r.bios_file = Some(String::new())),
            "bios_file: is 0 bytes long: must be 1 to 127 bytes"
        );
        assert!(
            error(|r| r.ipxe_script_url = Some("tftp://x".into()))
                .starts_with("ipxe_script_url: invalid URL \"tftp://x\": expected http://"),
        );
    }

    #[test]
    fn proxy_needs_no_subnet() {
        let raw = RawDhcpd {
            mode: Some("proxy".into()),
            pxe_listen: Some(String::new()),
            ..Default::default()
        };
        let c = DhcpdConfig::validate(raw).unwrap();
        assert_eq!((c.mode, c.pxe_listen), (Mode::Proxy, None));
    }

    #[test]
    fn bad_values_name_their_key() {
        type Tweak = Box<dyn Fn(&mut RawDhcpd)>;
        let cases: Vec<(Tweak, &str)> = vec![
            (Box::new(|r| r.mode = Some("dhcp".into())), "mode"),
            (Box::new(|r| r.subnets.clear()), "subnets"),
            (
                Box::new(|r| r.subnets[0].network = "10.99.0.1/24".into()),
                "subnets[0].network",
            ),
            (
                Box::new(|r| r.subnets[0].network = "10.99.0.0/33".into()),
                "subnets[0].network",
            ),
            (
                Box::new(|r| r.subnets[0].pool_end = Some("10.98.0.1".into())),
                "subnets[0].pool_start",
            ),
            (
                Box::new(|r| r.subnets[0].pool_end = None),
                "subnets[0].pool_start",
            ),
            (
                Box::new(|r| r.subnets[0].router = Some("x".into())),
                "subnets[0].router",
            ),
            (
                Box::new(|r| r.reservations[0].ip = "10.1.1.1".into()),
                "reservations[0].ip",
            ),
            (
                Box::new(|r| r.reservations[0].mac = "zz".into()),
                "reservations[0].mac",
            ),
            (
                Box::new(|r| r.reservations.push(r.reservations[0].clone())),
                "reservations[1].mac",
            ),
            (Box::new(|r| r.lease_time = Some("0s".into())), "lease_time"),
            (
                Box::new(|r| r.ipxe_script_url = Some("tftp://x".into())),
                "ipxe_script_url",
            ),
            (
                Box::new(|r| r.ipxe_script_url = Some("http://".into())),
                "ipxe_script_url",
            ),
            (
                Box::new(|r| r.http_boot_arm64_url = Some("http://a b/ipxe.efi".into())),
                "http_boot_arm64_url",
            ),
            (
                Box::new(|r| r.subnets[0].dns.push("dns.example".into())),
                "subnets[0].dns[1]",
            ),
            (
                Box::new(|r| r.uefi_x64_file = Some("x".repeat(128))),
                "uefi_x64_file",
            ),
            (
                Box::new(|r| r.decline_hold = Some("8761h".into())),
                "decline_hold",
            ),
            (Box::new(|r| r.server_ip = Some("::1".into())), "server_ip"),
            (Box::new(|r| r.bios_file = Some(String::new())), "bios_file"),
            (Box::new(|r| r.listen = Some("nope".into())), "listen"),
            (
                Box::new(|r| r.offer_hold = Some("61s".into())),
                "offer_hold",
            ),
            (Box::new(|r| r.offer_hold = Some("0s".into())), "offer_hold"),
            (
                Box::new(|r| r.relays = vec!["10.0.0.1".into(), "x".into()]),
                "relays[1]",
            ),
            (Box::new(|r| r.relays = vec!["0.0.0.0".into()]), "relays[0]"),
            (
                Box::new(|r| r.relays = vec!["255.255.255.255".into()]),
                "relays[0]",
            ),
            (
                Box::new(|r| r.new_clients_per_second = Some(0)),
                "new_clients_per_second",
            ),
            (
                Box::new(|r| r.new_clients_burst = Some(1_000_001)),
                "new_clients_burst",
            ),
        ];
        for (tweak, key) in cases {
            let mut raw = lab();
            tweak(&mut raw);
            assert_eq!(DhcpdConfig::validate(raw).unwrap_err().key(), key);
        }
    }
}
