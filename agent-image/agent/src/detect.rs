//! Hardware detection: what the machine is, read from `/proc`, `/sys` and SMBIOS.
//!
//! Every function takes the filesystem root as a parameter and only reads files under it, so
//! detection is tested against fixture trees (`tests/fixtures/`) exactly as it runs on a
//! machine. It must never write, load modules or run programs, and a missing or unreadable
//! file means "unknown", never an error: firmware and drivers differ wildly, and a partial
//! report is worth more than none.

use std::fs;
use std::path::{Path, PathBuf};

use dragonfly_core::MacAddr;
use dragonfly_core::hardware::{self, HardwareReport, MAX_ITEMS, MAX_TEXT};
use uuid::Uuid;

/// Everything the agent found. Richer than [`HardwareReport`] (which apid accepts today);
/// [`Inventory::report`] keeps what the report can carry, and the console shows the rest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Inventory {
    pub cpu: Option<Cpu>,
    /// Installed memory in bytes (online memory blocks; `MemTotal` as a fallback).
    pub memory_bytes: Option<u64>,
    pub disks: Vec<Disk>,
    pub nics: Vec<Nic>,
    pub system: System,
    /// The hypervisor, when the machine is virtual (`qemu`, `vmware`, …, or `unknown`).
    pub virtualisation: Option<String>,
    /// An IPMI device node or an SMBIOS type 38 (IPMI device) record exists.
    pub bmc_present: bool,
    pub firmware: Firmware,
}

/// Processor summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cpu {
    pub model: String,
    /// Physical cores (distinct physical id / core id pairs).
    pub cores: u32,
    /// Logical processors.
    pub threads: u32,
    /// The CPU reports the `hypervisor` flag.
    pub hypervisor_flag: bool,
}

/// One block device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub name: String,
    pub size_bytes: u64,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub rotational: Option<bool>,
    pub removable: Option<bool>,
}

/// One physical NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nic {
    pub name: String,
    pub mac: MacAddr,
    pub driver: Option<String>,
    pub speed_mbps: Option<u32>,
    pub carrier: Option<bool>,
}

/// SMBIOS type 1 (system) fields.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct System {
    pub uuid: Option<Uuid>,
    pub vendor: Option<String>,
    pub product: Option<String>,
    pub serial: Option<String>,
}

/// How the firmware booted the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Firmware {
    #[default]
    Bios,
    Uefi,
}

impl Firmware {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bios => "BIOS",
            Self::Uefi => "UEFI",
        }
    }
}

/// Detects the machine's hardware under `root` (`/` on a real machine).
pub fn detect(root: &Path) -> Inventory {
    let cpu = cpu(root);
    let system = system(root);
    let virtualisation = virtualisation(&system, cpu.as_ref());
    Inventory {
        memory_bytes: memory(root),
        disks: disks(root),
        nics: nics(root),
        bmc_present: bmc_present(root),
        firmware: if root.join("sys/firmware/efi").is_dir() {
            Firmware::Uefi
        } else {
            Firmware::Bios
        },
        cpu,
        system,
        virtualisation,
    }
}

/// A trimmed, non-empty, printable value of a sysfs attribute.
fn attr(path: impl AsRef<Path>) -> Option<String> {
    let raw = fs::read(path).ok()?;
    let text: String = String::from_utf8_lossy(&raw)
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    let t = text.trim();
    (!t.is_empty()).then(|| t.chars().take(MAX_TEXT).collect())
}

fn attr_num<T: std::str::FromStr>(path: impl AsRef<Path>) -> Option<T> {
    attr(path)?.parse().ok()
}

fn cpu(root: &Path) -> Option<Cpu> {
    let text = fs::read_to_string(root.join("proc/cpuinfo")).ok()?;
    let mut threads = 0u32;
    let mut model = None;
    let mut flags_hv = false;
    let mut cores = std::collections::BTreeSet::new();
    let (mut phys, mut core) = (None::<String>, None::<String>);
    // Blocks are separated by blank lines; one block per logical processor.
    for line in text.lines().chain(std::iter::once("")) {
        let Some((k, v)) = line.split_once(':') else {
            if line.trim().is_empty() {
                if let Some(c) = core.take() {
                    cores.insert((phys.take().unwrap_or_default(), c));
                }
                phys = None;
            }
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        match k {
            "processor" => threads += 1,
            "model name" if model.is_none() => model = Some(v.to_owned()),
            "physical id" => phys = Some(v.to_owned()),
            "core id" => core = Some(v.to_owned()),
            "flags" => flags_hv |= v.split_whitespace().any(|f| f == "hypervisor"),
            _ => {}
        }
    }
    if threads == 0 {
        return None;
    }
    let cores = u32::try_from(cores.len()).unwrap_or(threads);
    Some(Cpu {
        model: model.unwrap_or_else(|| "unknown processor".into()),
        // Without topology lines (some hypervisors), count each logical CPU as a core.
        cores: if cores == 0 {
            threads
        } else {
            cores.min(threads)
        },
        threads,
        hypervisor_flag: flags_hv,
    })
}

fn memory(root: &Path) -> Option<u64> {
    // Online memory blocks add up to the installed RAM (MemTotal lacks what the kernel and
    // firmware reserved, several percent on a small machine).
    let dir = root.join("sys/devices/system/memory");
    if let Some(block) =
        attr(dir.join("block_size_bytes")).and_then(|h| u64::from_str_radix(&h, 16).ok())
        && let Ok(entries) = fs::read_dir(&dir)
    {
        let online = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("memory"))
            .filter(|e| attr(e.path().join("online")).as_deref() == Some("1"))
            .count() as u64;
        if online > 0 {
            return Some(online * block);
        }
    }
    let info = fs::read_to_string(root.join("proc/meminfo")).ok()?;
    let kib: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

fn sorted_dir(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn disks(root: &Path) -> Vec<Disk> {
    const VIRTUAL: [&str; 5] = ["loop", "ram", "zram", "nbd", "fd"];
    sorted_dir(&root.join("sys/block"))
        .into_iter()
        .filter(|(name, _)| !VIRTUAL.iter().any(|p| name.starts_with(p)))
        .filter_map(|(name, p)| {
            let sectors: u64 = attr_num(p.join("size"))?;
            if sectors == 0 {
                return None; // an empty card reader or CD drive
            }
            Some(Disk {
                size_bytes: sectors * 512,
                model: attr(p.join("device/model")),
                // virtio-blk has `serial` on the disk, NVMe and SATA on the device.
                serial: attr(p.join("serial")).or_else(|| attr(p.join("device/serial"))),
                rotational: attr(p.join("queue/rotational")).map(|v| v == "1"),
                removable: attr(p.join("removable")).map(|v| v == "1"),
                name,
            })
        })
        .take(MAX_ITEMS)
        .collect()
}

fn uevent(path: &Path, key: &str) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_owned)
}

fn nics(root: &Path) -> Vec<Nic> {
    sorted_dir(&root.join("sys/class/net"))
        .into_iter()
        // Only NICs backed by a device: not lo, bridges, veths, tunnels.
        .filter(|(_, p)| p.join("device").exists())
        .filter_map(|(name, p)| {
            let mac: MacAddr = attr(p.join("address"))?.parse().ok()?;
            let speed = attr(p.join("speed"))
                .and_then(|s| s.parse::<i64>().ok())
                .and_then(|s| u32::try_from(s).ok())
                .filter(|s| *s > 0 && *s != u32::MAX);
            Some(Nic {
                mac,
                driver: uevent(&p.join("device/uevent"), "DRIVER"),
                speed_mbps: speed,
                // Reading `carrier` fails while the interface is down: unknown, not "no".
                carrier: attr(p.join("carrier")).map(|c| c == "1"),
                name,
            })
        })
        .take(MAX_ITEMS)
        .collect()
}

fn system(root: &Path) -> System {
    let dmi = root.join("sys/class/dmi/id");
    // Firmware fills unset fields with filler text: treat it as absent.
    let clean = |v: Option<String>| {
        v.filter(|s| {
            let l = s.to_ascii_lowercase();
            ![
                "to be filled by o.e.m.",
                "default string",
                "not specified",
                "none",
                "0",
            ]
            .contains(&l.as_str())
        })
    };
    System {
        uuid: attr(dmi.join("product_uuid"))
            .and_then(|u| u.parse().ok())
            .filter(|u| hardware::smbios_uuid_is_trustworthy(*u)),
        vendor: clean(attr(dmi.join("sys_vendor"))),
        product: clean(attr(dmi.join("product_name"))),
        serial: clean(attr(dmi.join("product_serial"))),
    }
}

fn virtualisation(system: &System, cpu: Option<&Cpu>) -> Option<String> {
    let vendor = system.vendor.as_deref().unwrap_or("").to_ascii_lowercase();
    let product = system.product.as_deref().unwrap_or("").to_ascii_lowercase();
    let known = [
        ("qemu", "qemu"),
        ("vmware", "vmware"),
        ("innotek", "virtualbox"),
        ("xen", "xen"),
        ("amazon ec2", "amazon"),
        ("google", "google"),
    ];
    for (needle, name) in known {
        if vendor.contains(needle) {
            return Some(name.into());
        }
    }
    if vendor.contains("microsoft") && product.contains("virtual") {
        return Some("hyper-v".into());
    }
    if product.contains("kvm") {
        return Some("kvm".into());
    }
    cpu.filter(|c| c.hypervisor_flag).map(|_| "unknown".into())
}

fn bmc_present(root: &Path) -> bool {
    let ipmi_dev = sorted_dir(&root.join("dev"))
        .iter()
        .any(|(n, _)| n.starts_with("ipmi"));
    let smbios_38 = sorted_dir(&root.join("sys/firmware/dmi/entries"))
        .iter()
        .any(|(n, _)| n.starts_with("38-"));
    ipmi_dev || smbios_38
}

impl Inventory {
    /// The report apid accepts: every NIC's MAC with the boot NIC's first (the memorable name
    /// derives from the first MAC), duplicates dropped (bonded NICs share one), and only
    /// values that pass [`HardwareReport::validate`].
    pub fn report(&self, boot_mac: MacAddr) -> HardwareReport {
        let mut macs = vec![boot_mac];
        for n in &self.nics {
            if n.mac.is_unicast_station() && !macs.contains(&n.mac) {
                macs.push(n.mac);
            }
        }
        macs.truncate(MAX_ITEMS);
        let mut seen = Vec::new();
        let nics = self
            .nics
            .iter()
            .filter(|n| macs.contains(&n.mac))
            // One entry per MAC in the report, so the set stays consistent.
            .filter(|n| {
                let first = !seen.contains(&n.mac);
                seen.push(n.mac);
                first
            })
            .map(|n| hardware::Nic {
                name: n.name.clone(),
                mac: n.mac,
                speed_mbps: n.speed_mbps,
                driver: n.driver.clone(),
                carrier: n.carrier,
            })
            .collect();
        HardwareReport {
            macs,
            smbios_uuid: self.system.uuid,
            hostname: None,
            cpu: self.cpu.as_ref().map(|c| hardware::Cpu {
                model: c.model.clone(),
                cores: c.cores,
                threads: c.threads.max(c.cores),
            }),
            memory_bytes: self.memory_bytes,
            disks: self
                .disks
                .iter()
                .map(|d| hardware::Disk {
                    name: d.name.clone(),
                    model: d.model.clone(),
                    serial: d.serial.clone(),
                    size_bytes: d.size_bytes,
                    rotational: d.rotational,
                    removable: d.removable,
                })
                .collect(),
            nics,
            // The report's BMC needs an address, which only the BMC's own tools can read;
            // presence alone is reported as `bmcDetected`.
            bmc: None,
            bmc_detected: Some(self.bmc_present),
            system: Some(hardware::SystemInfo {
                vendor: self.system.vendor.clone(),
                product: self.system.product.clone(),
                serial: self.system.serial.clone(),
            })
            .filter(|s| s.vendor.is_some() || s.product.is_some() || s.serial.is_some()),
            firmware: Some(match self.firmware {
                Firmware::Bios => hardware::Firmware::Bios,
                Firmware::Uefi => hardware::Firmware::Uefi,
            }),
            virtualization: self.virtualisation.clone(),
        }
    }

    /// A few plain lines for the console.
    pub fn summary(&self) -> Vec<String> {
        let mut out = Vec::new();
        let s = &self.system;
        out.push(format!(
            "machine: {} {} (serial {}, SMBIOS UUID {}), firmware {}, {}",
            s.vendor.as_deref().unwrap_or("unknown vendor"),
            s.product.as_deref().unwrap_or("unknown product"),
            s.serial.as_deref().unwrap_or("none"),
            s.uuid.map_or_else(|| "none".into(), |u| u.to_string()),
            self.firmware.as_str(),
            match &self.virtualisation {
                Some(v) => format!("virtual ({v})"),
                None => "physical".into(),
            }
        ));
        if let Some(c) = &self.cpu {
            out.push(format!(
                "cpu: {} — {} cores, {} threads",
                c.model, c.cores, c.threads
            ));
        }
        if let Some(m) = self.memory_bytes {
            out.push(format!("memory: {} MiB", m >> 20));
        }
        for d in &self.disks {
            out.push(format!(
                "disk {}: {:.1} GiB {}{}{}",
                d.name,
                d.size_bytes as f64 / f64::from(1u32 << 30),
                d.model.as_deref().unwrap_or("(no model)"),
                match d.rotational {
                    Some(true) => ", spinning",
                    Some(false) => ", solid-state",
                    None => "",
                },
                if d.removable == Some(true) {
                    ", removable"
                } else {
                    ""
                },
            ));
        }
        for n in &self.nics {
            out.push(format!(
                "nic {}: {} driver {} link {}",
                n.name,
                n.mac,
                n.driver.as_deref().unwrap_or("unknown"),
                match (n.carrier, n.speed_mbps) {
                    (Some(true), Some(s)) => format!("up at {s} Mb/s"),
                    (Some(true), None) => "up".into(),
                    (Some(false), _) => "down".into(),
                    (None, _) => "not configured".into(),
                }
            ));
        }
        out.push(format!(
            "bmc: {}",
            if self.bmc_present {
                "present (IPMI)"
            } else {
                "none found"
            }
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    fn mac(s: &str) -> MacAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_qemu_vm() {
        let inv = detect(&fixture("qemu-vm"));
        let cpu = inv.cpu.as_ref().unwrap();
        assert_eq!(cpu.model, "QEMU Virtual CPU version 2.5+");
        assert_eq!((cpu.cores, cpu.threads, cpu.hypervisor_flag), (2, 2, true));
        // 12 online 128 MiB blocks, not MemTotal's 1437 MiB.
        assert_eq!(inv.memory_bytes, Some(1536 << 20));
        let disks: Vec<_> = inv
            .disks
            .iter()
            .map(|d| {
                (
                    d.name.as_str(),
                    d.size_bytes,
                    d.model.as_deref(),
                    d.serial.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            disks,
            [
                ("sda", 2 << 30, Some("QEMU HARDDISK"), None),
                ("vda", 4 << 30, None, Some("df-virtio-0")),
            ],
            "loop, ram, zram and the empty CD drive are skipped"
        );
        assert_eq!(inv.disks[0].rotational, Some(true));
        assert_eq!(inv.disks[0].removable, Some(false));
        let nics: Vec<_> = inv
            .nics
            .iter()
            .map(|n| {
                (
                    n.name.as_str(),
                    n.mac,
                    n.driver.as_deref(),
                    n.speed_mbps,
                    n.carrier,
                )
            })
            .collect();
        assert_eq!(
            nics,
            [
                (
                    "enp0s3",
                    mac("52:54:00:df:00:01"),
                    Some("virtio_net"),
                    None,
                    Some(true)
                ),
                (
                    "enp0s4",
                    mac("52:54:00:df:00:02"),
                    Some("e1000"),
                    None,
                    None
                ),
            ],
            "lo and the bridge are not NICs"
        );
        assert_eq!(
            inv.system,
            System {
                uuid: Some("7d6e3a52-9f1c-4b8e-a2d4-5c0e1f2a3b4c".parse().unwrap()),
                vendor: Some("QEMU".into()),
                product: Some("Standard PC (i440FX + PIIX, 1996)".into()),
                serial: None,
            }
        );
        assert_eq!(inv.virtualisation.as_deref(), Some("qemu"));
        assert!(!inv.bmc_present);
        assert_eq!(inv.firmware, Firmware::Bios);
    }

    #[test]
    fn a_uefi_server_with_nvme_sata_usb_and_a_bmc() {
        let inv = detect(&fixture("server-uefi"));
        let cpu = inv.cpu.as_ref().unwrap();
        assert_eq!((cpu.cores, cpu.threads, cpu.hypervisor_flag), (4, 8, false));
        // No memory blocks in this tree: MemTotal.
        assert_eq!(inv.memory_bytes, Some(65_634_116 * 1024));
        let names: Vec<_> = inv.disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["nvme0n1", "sda", "sdb", "sdc"]);
        let nvme = &inv.disks[0];
        assert_eq!(nvme.size_bytes, 1_875_385_008 * 512);
        assert_eq!(nvme.model.as_deref(), Some("SAMSUNG MZ1LB960HAJQ-00007"));
        assert_eq!(nvme.serial.as_deref(), Some("S435NE0M123456"));
        let kinds: Vec<_> = inv
            .disks
            .iter()
            .map(|d| (d.rotational, d.removable))
            .collect();
        assert_eq!(
            kinds,
            [
                (Some(false), Some(false)),
                (Some(false), Some(false)),
                (Some(true), Some(false)),
                (Some(false), Some(true)),
            ]
        );
        let nics: Vec<_> = inv
            .nics
            .iter()
            .map(|n| {
                (
                    n.name.as_str(),
                    n.driver.as_deref(),
                    n.speed_mbps,
                    n.carrier,
                )
            })
            .collect();
        assert_eq!(
            nics,
            [
                ("eno1", Some("igb"), Some(1000), Some(true)),
                ("eno2", Some("igb"), None, Some(false)),
                ("ens1f0", Some("ixgbe"), Some(10000), Some(true)),
            ]
        );
        assert_eq!(inv.system.vendor.as_deref(), Some("Dell Inc."));
        assert_eq!(inv.system.serial.as_deref(), Some("7XK9J23"));
        assert_eq!(inv.virtualisation, None);
        assert!(inv.bmc_present);
        assert_eq!(inv.firmware, Firmware::Uefi);
    }

    #[test]
    fn the_report_puts_the_boot_mac_first_and_validates() {
        let inv = detect(&fixture("server-uefi"));
        let boot = mac("b4:96:91:aa:bb:c0");
        let r = inv.report(boot);
        r.validate().unwrap();
        assert_eq!(
            r.macs,
            [boot, mac("3c:ec:ef:10:20:31"), mac("3c:ec:ef:10:20:32")]
        );
        assert_eq!(r.smbios_uuid, inv.system.uuid);
        assert_eq!(r.cpu.unwrap().threads, 8);
        assert_eq!(r.disks.len(), 4);
        assert_eq!(r.nics.len(), 3);
        // A boot MAC the kernel does not show (a driver missing) is still reported first.
        let r = inv.report(mac("52:54:00:00:00:09"));
        r.validate().unwrap();
        assert_eq!(r.macs.len(), 4);
    }

    #[test]
    fn placeholders_and_missing_files_mean_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let dmi = dir.path().join("sys/class/dmi/id");
        fs::create_dir_all(&dmi).unwrap();
        fs::write(
            dmi.join("product_uuid"),
            "03000200-0400-0500-0006-000700080009\n",
        )
        .unwrap();
        fs::write(dmi.join("product_serial"), "To Be Filled By O.E.M.\n").unwrap();
        fs::write(dmi.join("sys_vendor"), "Default string\n").unwrap();
        let inv = detect(dir.path());
        assert_eq!(inv.system, System::default());
        assert_eq!(inv.cpu, None);
        assert_eq!(inv.memory_bytes, None);
        assert!(inv.disks.is_empty() && inv.nics.is_empty());
        assert_eq!(inv.summary().len(), 2, "{:?}", inv.summary());
    }

    #[test]
    fn the_summary_speaks_plainly() {
        let text = detect(&fixture("qemu-vm")).summary().join("\n");
        for want in [
            "machine: QEMU Standard PC",
            "firmware BIOS, virtual (qemu)",
            "cpu: QEMU Virtual CPU version 2.5+ — 2 cores, 2 threads",
            "memory: 1536 MiB",
            "disk vda: 4.0 GiB",
            "nic enp0s3: 52:54:00:df:00:01 driver virtio_net link up",
            "bmc: none found",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
    }
}
