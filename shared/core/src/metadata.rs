//! The per-machine secret in the metadata service's URL.
//!
//! The installed OS's cloud-init finds its datasource at
//! `<metadata_url>/<machine id>/<secret>/` (NoCloud's `seedfrom`), which apid renders into the
//! template when it creates the workflow, and ipxed checks on every request. The secret is an
//! HMAC of the machine and the workflow under the boot-token key, which apid and ipxed both
//! hold: nothing to store, and a new install (a new workflow) gets a new secret, so a URL
//! copied out of an old install stops working. Without it, the metadata service can only
//! tell machines apart by their source address, which any host on the same L2 segment can
//! take (docs/security.md).

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::MachineId;

/// Hex digits of the secret (128 bits).
pub const SECRET_LEN: usize = 32;

fn tag(key: &[u8], machine: MachineId, workflow: Uuid) -> [u8; 32] {
    // An HMAC key of any length is accepted.
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    m.update(b"dragonfly metadata v1\0");
    m.update(machine.0.as_bytes());
    m.update(workflow.as_bytes());
    m.finalize().into_bytes().into()
}

/// The secret of `machine`'s install by `workflow`: 32 lowercase hex digits.
pub fn secret(key: &[u8], machine: MachineId, workflow: Uuid) -> String {
    let t = tag(key, machine, workflow);
    let mut s = String::with_capacity(SECRET_LEN);
    for b in &t[..SECRET_LEN / 2] {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Whether `given` is the secret of `machine`'s install by `workflow` (constant time).
pub fn verify(key: &[u8], machine: MachineId, workflow: Uuid, given: &str) -> bool {
    let want = secret(key, machine, workflow);
    given.len() == SECRET_LEN && bool::from(want.as_bytes().ct_eq(given.as_bytes()))
}

/// The datasource URL of an install: `base` (ipxed's `…/metadata`, no trailing slash needed)
/// joined with the machine and its secret, ending in `/` as NoCloud's `seedfrom` wants.
pub fn datasource_url(base: &str, key: &[u8], machine: MachineId, workflow: Uuid) -> String {
    format!(
        "{}/{}/{}/",
        base.trim_end_matches('/'),
        machine,
        secret(key, machine, workflow)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_differ_per_machine_workflow_and_key_and_verify() {
        let m = MachineId(Uuid::from_u128(1));
        let w = Uuid::from_u128(2);
        let s = secret(b"key", m, w);
        assert_eq!(s.len(), SECRET_LEN);
        assert!(
            s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert!(verify(b"key", m, w, &s));
        assert!(!verify(b"key", MachineId(Uuid::from_u128(3)), w, &s));
        assert!(!verify(b"key", m, Uuid::from_u128(4), &s));
        assert!(!verify(b"other", m, w, &s));
        assert!(!verify(b"key", m, w, &s[..31]));
        assert!(!verify(b"key", m, w, ""));
        assert_eq!(
            datasource_url("http://10.0.0.1:8080/metadata/", b"key", m, w),
            format!("http://10.0.0.1:8080/metadata/{m}/{s}/")
        );
    }
}

/// A machine's reserved address and what its subnet tells a client (router, DNS, domain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedAddress {
    /// The NIC that keeps the address.
    pub mac: crate::MacAddr,
    pub ip: std::net::Ipv4Addr,
    pub prefix: u8,
    pub router: Option<std::net::Ipv4Addr>,
    pub dns: Vec<std::net::Ipv4Addr>,
    pub domain: Option<String>,
}

/// The cloud-init network configuration (version 2) of a machine with these NICs: each matched
/// by MAC; the reserved one with its static address, router and DNS; the others by DHCP. Only
/// the NIC the machine is reached by (the reserved one, else the first) is required: the
/// others are `optional`, so an uncabled port does not hold the boot in `wait-online`.
///
/// One value for both ways it reaches cloud-init: ipxed serves it as NoCloud's
/// `network-config` (YAML), and apid renders it into templates as `{{networkConfig}}` (JSON,
/// which is YAML in flow style) for the system configuration's `network:` key — the one that
/// Debian 12's cloud-init (22.4) reads, as its NoCloud `seedfrom` does not fetch
/// `network-config`.
pub fn network_config(macs: &[crate::MacAddr], fixed: Option<&FixedAddress>) -> serde_json::Value {
    use serde_json::{Map, Value, json};
    let main = fixed
        .map(|f| f.mac)
        .filter(|m| macs.contains(m))
        .or_else(|| macs.first().copied());
    let mut ethernets = Map::new();
    for (i, mac) in macs.iter().enumerate() {
        let mut nic = Map::new();
        nic.insert("match".into(), json!({ "macaddress": mac.to_string() }));
        match fixed.filter(|f| f.mac == *mac) {
            Some(f) => {
                nic.insert("dhcp4".into(), false.into());
                nic.insert(
                    "addresses".into(),
                    json!([format!("{}/{}", f.ip, f.prefix)]),
                );
                if let Some(router) = f.router {
                    nic.insert(
                        "routes".into(),
                        json!([{ "to": "default", "via": router.to_string() }]),
                    );
                }
                if !f.dns.is_empty() || f.domain.is_some() {
                    let mut ns = Map::new();
                    if !f.dns.is_empty() {
                        ns.insert(
                            "addresses".into(),
                            f.dns.iter().map(|d| Value::from(d.to_string())).collect(),
                        );
                    }
                    if let Some(d) = &f.domain {
                        ns.insert("search".into(), json!([d]));
                    }
                    nic.insert("nameservers".into(), Value::Object(ns));
                }
            }
            None => {
                nic.insert("dhcp4".into(), true.into());
            }
        }
        if Some(*mac) != main {
            nic.insert("optional".into(), true.into());
        }
        ethernets.insert(format!("nic{i}"), Value::Object(nic));
    }
    json!({ "version": 2, "ethernets": ethernets })
}

#[cfg(test)]
mod network_tests {
    use super::*;
    use crate::MacAddr;
    use std::net::Ipv4Addr;

    #[test]
    fn the_reserved_nic_is_static_and_required_the_others_dhcp_and_optional() {
        let a = MacAddr::new([0x52, 0x54, 0, 0, 0, 0x0a]);
        let b = MacAddr::new([0x52, 0x54, 0, 0, 0, 0x0b]);
        let fixed = FixedAddress {
            mac: b,
            ip: Ipv4Addr::new(10, 9, 0, 20),
            prefix: 24,
            router: Some(Ipv4Addr::new(10, 9, 0, 1)),
            dns: vec![Ipv4Addr::new(10, 9, 0, 2)],
            domain: Some("lab.test".into()),
        };
        assert_eq!(
            network_config(&[a, b], Some(&fixed)),
            serde_json::json!({"version": 2, "ethernets": {
                "nic0": {"match": {"macaddress": "52:54:00:00:00:0a"}, "dhcp4": true,
                         "optional": true},
                "nic1": {"match": {"macaddress": "52:54:00:00:00:0b"}, "dhcp4": false,
                         "addresses": ["10.9.0.20/24"],
                         "routes": [{"to": "default", "via": "10.9.0.1"}],
                         "nameservers": {"addresses": ["10.9.0.2"], "search": ["lab.test"]}}}})
        );
        // No reservation: all by DHCP, the first NIC required.
        assert_eq!(
            network_config(&[a, b], None),
            serde_json::json!({"version": 2, "ethernets": {
                "nic0": {"match": {"macaddress": "52:54:00:00:00:0a"}, "dhcp4": true},
                "nic1": {"match": {"macaddress": "52:54:00:00:00:0b"}, "dhcp4": true,
                         "optional": true}}})
        );
    }
}
