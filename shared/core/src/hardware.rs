//! What an agent reports about a machine's hardware, and the checks it must pass.
//!
//! The report arrives from a machine we do not control yet (a netbooted agent), so every
//! field is bounded and checked here before anything is stored: a report is either accepted
//! whole or rejected with the field named. Validation is pure; the API edge maps
//! [`ReportError`] to a 4xx.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::MacAddr;

/// Upper bound on list lengths in a report: far above real hardware, low enough to bound work.
pub const MAX_ITEMS: usize = 128;
/// Upper bound on any free-text field in a report.
pub const MAX_TEXT: usize = 256;

/// The agent's hardware report: the body of `POST /api/machines/register`.
///
/// Fields beyond `macs` are optional, so older agents and hand-written reports stay valid;
/// new fields are only ever added as optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HardwareReport {
    /// Every MAC address of the machine's NICs; at least one. The set identifies the machine.
    pub macs: Vec<MacAddr>,
    /// SMBIOS system UUID (DMI type 1), when the firmware reports a trustworthy one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smbios_uuid: Option<Uuid>,
    /// The hostname the agent sees, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    /// Installed memory in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    #[serde(default)]
    pub disks: Vec<Disk>,
    #[serde(default)]
    pub nics: Vec<Nic>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bmc: Option<Bmc>,
    /// A BMC was detected (IPMI device or SMBIOS type 38) even if its address is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bmc_detected: Option<bool>,
    /// SMBIOS system identity (DMI type 1), placeholders removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<SystemInfo>,
    /// How the firmware booted the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<Firmware>,
    /// The hypervisor, for a virtual machine (`qemu`, `vmware`, `kvm`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtualization: Option<String>,
}

/// SMBIOS system identity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SystemInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

/// Firmware boot mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    Bios,
    Uefi,
}

/// Processor summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Cpu {
    pub model: String,
    pub cores: u32,
    pub threads: u32,
}

/// One block device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Disk {
    /// Kernel name, e.g. `sda`, `nvme0n1`.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    pub size_bytes: u64,
    /// Spinning disk (`queue/rotational`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotational: Option<bool>,
    /// Removable medium (USB stick, card reader).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removable: Option<bool>,
}

/// One network interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Nic {
    /// Kernel name, e.g. `eno1`.
    pub name: String,
    pub mac: MacAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed_mbps: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    /// Link detected (`None` when the interface was down and could not tell).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carrier: Option<bool>,
}

/// How the machine's baseboard management controller is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum BmcKind {
    Ipmi,
    Redfish,
}

/// The machine's BMC, if it has one. Credentials are never part of a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Bmc {
    /// IP address or host name of the BMC.
    pub address: String,
    pub kind: BmcKind,
}

/// Why a hardware report was refused. Each variant names the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("macs: at least one MAC address is required")]
    NoMacs,
    #[error("macs: {0} is not a unicast station address")]
    NotUnicast(MacAddr),
    #[error("macs: {0} is listed twice")]
    DuplicateMac(MacAddr),
    #[error("nics[{index}].mac: {mac} is not listed in macs")]
    NicMacNotListed { index: usize, mac: MacAddr },
    #[error("{field}: more than {max} entries")]
    TooMany { field: &'static str, max: usize },
    #[error("{field}: longer than {max} characters")]
    TooLong { field: String, max: usize },
    #[error("{field}: must not be empty")]
    Empty { field: String },
    #[error("hostname: {0}")]
    Hostname(#[from] HostnameError),
    #[error("cpu: threads ({threads}) is less than cores ({cores})")]
    CpuThreads { cores: u32, threads: u32 },
}

impl HardwareReport {
    /// Checks every bound and invariant; on success the report is safe to store.
    pub fn validate(&self) -> Result<(), ReportError> {
        if self.macs.is_empty() {
            return Err(ReportError::NoMacs);
        }
        bound_len("macs", self.macs.len())?;
        bound_len("disks", self.disks.len())?;
        bound_len("nics", self.nics.len())?;
        let mut seen = std::collections::BTreeSet::new();
        for mac in &self.macs {
            if !mac.is_unicast_station() {
                return Err(ReportError::NotUnicast(*mac));
            }
            if !seen.insert(*mac) {
                return Err(ReportError::DuplicateMac(*mac));
            }
        }
        if let Some(h) = &self.hostname {
            validate_hostname(h)?;
        }
        if let Some(cpu) = &self.cpu {
            text("cpu.model", &cpu.model, false)?;
            if cpu.threads < cpu.cores {
                return Err(ReportError::CpuThreads {
                    cores: cpu.cores,
                    threads: cpu.threads,
                });
            }
        }
        for (i, d) in self.disks.iter().enumerate() {
            text(&format!("disks[{i}].name"), &d.name, false)?;
            opt_text(&format!("disks[{i}].model"), d.model.as_deref())?;
            opt_text(&format!("disks[{i}].serial"), d.serial.as_deref())?;
        }
        for (i, n) in self.nics.iter().enumerate() {
            text(&format!("nics[{i}].name"), &n.name, false)?;
            opt_text(&format!("nics[{i}].driver"), n.driver.as_deref())?;
            if !seen.contains(&n.mac) {
                return Err(ReportError::NicMacNotListed {
                    index: i,
                    mac: n.mac,
                });
            }
        }
        if let Some(b) = &self.bmc {
            text("bmc.address", &b.address, false)?;
        }
        if let Some(sys) = &self.system {
            opt_text("system.vendor", sys.vendor.as_deref())?;
            opt_text("system.product", sys.product.as_deref())?;
            opt_text("system.serial", sys.serial.as_deref())?;
        }
        opt_text("virtualization", self.virtualization.as_deref())?;
        Ok(())
    }

    /// The SMBIOS UUID if it can identify this machine (see [`smbios_uuid_is_trustworthy`]).
    pub fn trusted_smbios_uuid(&self) -> Option<Uuid> {
        self.smbios_uuid.filter(|u| smbios_uuid_is_trustworthy(*u))
    }
}

/// Whether an SMBIOS UUID can tell machines apart.
///
/// Much firmware ships placeholders: all zeros, all ones, or the well-known
/// `03000200-0400-0500-0006-000700080009` that whole product lines share. Matching machines
/// on such a value would merge unrelated machines into one record, so they are ignored.
pub fn smbios_uuid_is_trustworthy(u: Uuid) -> bool {
    const PLACEHOLDERS: [u128; 3] = [0, u128::MAX, 0x03000200_0400_0500_0006_000700080009];
    !PLACEHOLDERS.contains(&u.as_u128())
}

fn bound_len(field: &'static str, n: usize) -> Result<(), ReportError> {
    if n > MAX_ITEMS {
        return Err(ReportError::TooMany {
            field,
            max: MAX_ITEMS,
        });
    }
    Ok(())
}

fn text(field: &str, value: &str, allow_empty: bool) -> Result<(), ReportError> {
    if !allow_empty && value.trim().is_empty() {
        return Err(ReportError::Empty {
            field: field.to_owned(),
        });
    }
    if value.chars().count() > MAX_TEXT {
        return Err(ReportError::TooLong {
            field: field.to_owned(),
            max: MAX_TEXT,
        });
    }
    Ok(())
}

fn opt_text(field: &str, value: Option<&str>) -> Result<(), ReportError> {
    value.map_or(Ok(()), |v| text(field, v, true))
}

/// Why a hostname is not a valid RFC 1123 host name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostnameError {
    #[error("must be 1 to 253 characters")]
    Length,
    #[error(
        "label {0:?} must be 1 to 63 characters of a-z, 0-9 and '-', not starting or ending with '-'"
    )]
    Label(String),
}

/// Checks an RFC 1123 host name (dot-separated labels of letters, digits and inner hyphens).
pub fn validate_hostname(name: &str) -> Result<(), HostnameError> {
    if name.is_empty() || name.len() > 253 {
        return Err(HostnameError::Length);
    }
    for label in name.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(HostnameError::Label(label.chars().take(70).collect()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(last: u8) -> MacAddr {
        MacAddr::new([0x52, 0x54, 0, 0, 0, last])
    }

    fn report() -> HardwareReport {
        HardwareReport {
            macs: vec![mac(1), mac(2)],
            smbios_uuid: Some(Uuid::from_u128(0x1234)),
            hostname: Some("node-1.lab".into()),
            cpu: Some(Cpu {
                model: "QEMU Virtual CPU".into(),
                cores: 2,
                threads: 4,
            }),
            memory_bytes: Some(512 << 20),
            disks: vec![Disk {
                name: "vda".into(),
                model: None,
                serial: Some("abc".into()),
                size_bytes: 10 << 30,
                rotational: Some(false),
                removable: None,
            }],
            nics: vec![Nic {
                name: "eth0".into(),
                mac: mac(1),
                speed_mbps: Some(1000),
                driver: Some("virtio_net".into()),
                carrier: Some(true),
            }],
            bmc: Some(Bmc {
                address: "10.0.0.5".into(),
                kind: BmcKind::Ipmi,
            }),
            system: Some(SystemInfo {
                vendor: Some("QEMU".into()),
                product: None,
                serial: None,
            }),
            firmware: Some(Firmware::Uefi),
            ..Default::default()
        }
    }

    #[test]
    fn a_good_report_passes() {
        assert_eq!(report().validate(), Ok(()));
    }

    #[test]
    fn each_bad_field_is_named() {
        type Mutation = Box<dyn Fn(&mut HardwareReport)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|r| r.macs.clear()), "macs: at least one"),
            (Box::new(|r| r.macs.push(mac(1))), "listed twice"),
            (
                Box::new(|r| r.macs.push(MacAddr::new([0xff; 6]))),
                "not a unicast",
            ),
            (Box::new(|r| r.nics[0].mac = mac(9)), "nics[0].mac"),
            (
                Box::new(|r| r.hostname = Some("-bad".into())),
                "hostname: label",
            ),
            (
                Box::new(|r| r.disks[0].serial = Some("x".repeat(300))),
                "disks[0].serial: longer",
            ),
            (Box::new(|r| r.disks[0].name = " ".into()), "disks[0].name"),
            (
                Box::new(|r| r.virtualization = Some("v".repeat(300))),
                "virtualization: longer",
            ),
            (
                Box::new(|r| r.system.as_mut().unwrap().serial = Some("s".repeat(300))),
                "system.serial: longer",
            ),
            (
                Box::new(|r| r.cpu.as_mut().unwrap().threads = 1),
                "cpu: threads",
            ),
            (
                Box::new(|r| r.disks = vec![r.disks[0].clone(); MAX_ITEMS + 1]),
                "disks: more than",
            ),
        ];
        for (mutate, want) in cases {
            let mut r = report();
            mutate(&mut r);
            let err = r.validate().expect_err(want).to_string();
            assert!(err.contains(want), "{err:?} lacks {want:?}");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let json = r#"{"macs":["52:54:00:00:00:01"],"colour":"blue"}"#;
        let err = serde_json::from_str::<HardwareReport>(json).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
    }

    #[test]
    fn placeholder_uuids_are_not_trusted() {
        for u in [
            Uuid::nil(),
            Uuid::max(),
            "03000200-0400-0500-0006-000700080009".parse().unwrap(),
        ] {
            assert!(!smbios_uuid_is_trustworthy(u), "{u}");
        }
        let mut r = report();
        assert!(r.trusted_smbios_uuid().is_some());
        r.smbios_uuid = Some(Uuid::nil());
        assert_eq!(r.trusted_smbios_uuid(), None);
    }

    #[test]
    fn hostnames() {
        for ok in ["a", "node-1", "Node1.example.com", &"a".repeat(63)] {
            assert_eq!(validate_hostname(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "a..b",
            "-a",
            "a-",
            "a_b",
            "é",
            &"a".repeat(64),
            &"a.".repeat(130),
        ] {
            assert!(validate_hostname(bad).is_err(), "{bad}");
        }
    }
}
