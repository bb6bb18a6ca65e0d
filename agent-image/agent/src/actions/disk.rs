//! Which block device a template means: a path, a `/dev/disk/by-id` name or a rule.
//!
//! The initramfs has no udev, so `/dev/disk/by-id` usually does not exist there: a `byId` name
//! is matched against the names udev *would* give, computed from sysfs (`virtio-<serial>`,
//! `nvme-<model>_<serial>`, `nvme-eui.…`, `ata-<model>_<serial>`, `wwn-0x…`). Everything here
//! reads `ctx.sys` and `ctx.dev` only, so tests run it against a fixture tree. It never
//! chooses a disk that is read-only, empty, a loop/RAM/zram/device-mapper/optical device, or
//! (unless the rule allows it) removable.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use dragonfly_core::template::{DeviceRef, DiskRule, DiskSelector, parse_size};

use super::Context;

/// Why no disk was found.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("{0} does not exist")]
    Missing(PathBuf),
    #[error("{0} is not a whole disk")]
    NotADisk(PathBuf),
    #[error("no disk has the id {0:?} (ids seen: {1})")]
    NoSuchId(String, String),
    #[error("no disk matches the rule {rule} (disks seen: {seen})")]
    NoMatch { rule: String, seen: String },
    #[error("{0}: the template's size does not parse")]
    Size(String),
    #[error("partition {n} of {disk} did not appear as {node} within {secs} s")]
    NoPartitionNode {
        n: u32,
        disk: PathBuf,
        node: PathBuf,
        secs: u64,
    },
}

/// What sysfs says about one whole disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInfo {
    /// Kernel name: `sda`, `nvme0n1`, `vda`.
    pub name: String,
    pub size: u64,
    pub removable: bool,
    pub rotational: bool,
    pub read_only: bool,
    /// The names udev would link under `/dev/disk/by-id`.
    pub ids: Vec<String>,
}

fn read(p: impl AsRef<Path>) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_owned())
}

/// udev's `ID_SERIAL`-style escaping: runs of whitespace become one `_`, and anything outside
/// `[A-Za-z0-9#+-.:=@_]` is dropped (udev replaces with `_`, but only for odd firmware).
fn udev_word(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join("_")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "#+-.:=@_".contains(*c))
        .collect()
}

/// Reads `sys/block/<name>`.
pub fn info(sys: &Path, name: &str) -> Option<DiskInfo> {
    let dir = sys.join("block").join(name);
    let sectors: u64 = read(dir.join("size"))?.parse().ok()?;
    let flag = |f: &str| read(dir.join(f)).is_some_and(|v| v == "1");
    let dev = dir.join("device");
    let mut ids = Vec::new();
    let model = read(dev.join("model")).map(|m| udev_word(&m));
    let serial = read(dev.join("serial")).or_else(|| read(dir.join("serial")));
    if name.starts_with("vd") {
        if let Some(s) = read(dir.join("serial")).filter(|s| !s.is_empty()) {
            ids.push(format!("virtio-{}", udev_word(&s)));
        }
    } else if name.starts_with("nvme") {
        if let (Some(m), Some(s)) = (&model, &serial) {
            ids.push(format!("nvme-{m}_{}", udev_word(s)));
        }
        if let Some(w) = read(dir.join("wwid")).or_else(|| read(dev.join("wwid"))) {
            ids.push(format!("nvme-{}", udev_word(&w)));
        }
    } else if name.starts_with("sd") {
        let vendor = read(dev.join("vendor")).unwrap_or_default();
        // The unit serial number, VPD page 0x80: a 4-byte header, then ASCII.
        let vpd = fs::read(dev.join("vpd_pg80")).ok().and_then(|b| {
            b.get(4..)
                .map(|s| String::from_utf8_lossy(s).trim().to_owned())
        });
        if let (Some(m), Some(s)) = (&model, vpd.as_ref().or(serial.as_ref())) {
            let bus = if vendor == "ATA" { "ata" } else { "scsi-S" };
            ids.push(format!("{bus}-{m}_{}", udev_word(s)));
        }
        if let Some(w) =
            read(dev.join("wwid")).and_then(|w| w.strip_prefix("naa.").map(str::to_owned))
        {
            ids.push(format!("wwn-0x{}", w.to_ascii_lowercase()));
        }
    }
    Some(DiskInfo {
        name: name.to_owned(),
        size: sectors * 512,
        removable: flag("removable"),
        rotational: flag("queue/rotational"),
        read_only: flag("ro"),
        ids,
    })
}

/// Devices a rule never picks.
fn never_a_target(name: &str) -> bool {
    ["loop", "ram", "zram", "dm-", "sr", "md", "fd", "nbd"]
        .iter()
        .any(|p| name.starts_with(p))
}

/// Every whole disk sysfs lists, in name order.
pub fn disks(sys: &Path) -> Vec<DiskInfo> {
    let mut names: Vec<String> = fs::read_dir(sys.join("block"))
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.iter().filter_map(|n| info(sys, n)).collect()
}

/// The first disk matching `rule`, in name order; pure over the list.
pub fn pick<'a>(disks: &'a [DiskInfo], rule: &DiskRule) -> Result<&'a DiskInfo, DiskError> {
    let min = match &rule.min_size {
        Some(s) => parse_size(s).map_err(|_| DiskError::Size(s.clone()))?,
        None => 1,
    };
    disks
        .iter()
        .find(|d| {
            !never_a_target(&d.name)
                && !d.read_only
                && d.size > 0
                && d.size >= min
                && (rule.removable || !d.removable)
                && rule.rotational.is_none_or(|r| r == d.rotational)
        })
        .ok_or_else(|| DiskError::NoMatch {
            rule: describe_rule(rule),
            seen: summary(disks),
        })
}

/// A rule as the template says it (`minSize 1TiB, not removable`), for messages.
fn describe_rule(rule: &DiskRule) -> String {
    let mut parts = Vec::new();
    if let Some(min) = &rule.min_size {
        parts.push(format!("minSize {min}"));
    }
    parts.push(
        if rule.removable {
            "removable"
        } else {
            "not removable"
        }
        .to_owned(),
    );
    match rule.rotational {
        Some(true) => parts.push("rotational".into()),
        Some(false) => parts.push("not rotational".into()),
        None => {}
    }
    format!("{{{}}}", parts.join(", "))
}

/// A size in the largest binary unit that keeps it at least 1 (`32 MiB`, `2 GiB`).
fn human(bytes: u64) -> String {
    let units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut i = 0;
    while i + 1 < units.len() && bytes >> (10 * (i + 1)) > 0 {
        i += 1;
    }
    format!("{} {}", bytes >> (10 * i), units[i])
}

fn summary(disks: &[DiskInfo]) -> String {
    if disks.is_empty() {
        return "none".into();
    }
    disks
        .iter()
        .map(|d| {
            format!(
                "{} {}{}{}",
                d.name,
                human(d.size),
                if d.removable { " removable" } else { "" },
                if d.read_only { " read-only" } else { "" }
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The whole-disk device a selector names.
pub fn resolve(ctx: &Context, sel: &DiskSelector) -> Result<PathBuf, DiskError> {
    let (path, by_id, rule) = match sel {
        DiskSelector::Path(p) => (Some(p.as_str()), None, None),
        DiskSelector::Select(s) => (s.path.as_deref(), s.by_id.as_deref(), s.rule.as_ref()),
    };
    if let Some(p) = path {
        let p = Path::new(p);
        if let Ok(real) = fs::canonicalize(p) {
            return Ok(real);
        }
        // No udev in the initramfs: a by-id path is matched by name.
        if let Some(id) = p
            .strip_prefix("/dev/disk/by-id")
            .ok()
            .and_then(|r| r.to_str())
        {
            return by_id_name(ctx, id);
        }
        return Err(DiskError::Missing(p.to_owned()));
    }
    if let Some(id) = by_id {
        let linked = ctx.dev.join("disk/by-id").join(id);
        if let Ok(real) = fs::canonicalize(&linked) {
            return Ok(real);
        }
        return by_id_name(ctx, id);
    }
    let rule = rule.cloned().unwrap_or_default();
    let all = disks(&ctx.sys);
    let d = pick(&all, &rule)?;
    Ok(ctx.dev.join(&d.name))
}

fn by_id_name(ctx: &Context, id: &str) -> Result<PathBuf, DiskError> {
    let all = disks(&ctx.sys);
    all.iter()
        .find(|d| d.ids.iter().any(|i| i == id))
        .map(|d| ctx.dev.join(&d.name))
        .ok_or_else(|| {
            DiskError::NoSuchId(
                id.to_owned(),
                all.iter()
                    .flat_map(|d| d.ids.iter().cloned())
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        })
}

/// The kernel's name for partition `n` of `disk`: `sda1`, but `nvme0n1p1` and `loop0p1` when
/// the disk's name ends in a digit.
pub fn partition_path(disk: &Path, n: u32) -> PathBuf {
    let s = disk.as_os_str().to_string_lossy();
    if s.ends_with(|c: char| c.is_ascii_digit()) {
        PathBuf::from(format!("{s}p{n}"))
    } else {
        PathBuf::from(format!("{s}{n}"))
    }
}

/// The partition device a writefile/kexec names, waiting for it to appear.
pub fn resolve_device(ctx: &Context, d: &DeviceRef) -> Result<PathBuf, DiskError> {
    match d {
        DeviceRef::Path(p) => {
            let p = PathBuf::from(p);
            wait_for(&p, ctx)?;
            Ok(fs::canonicalize(&p).unwrap_or(p))
        }
        DeviceRef::Partition(of) => {
            let disk = resolve(ctx, &of.disk)?;
            let node = partition_path(&disk, of.partition);
            wait_for(&node, ctx).map_err(|_| DiskError::NoPartitionNode {
                n: of.partition,
                disk,
                node: node.clone(),
                secs: ctx.settle.as_secs(),
            })?;
            Ok(node)
        }
    }
}

/// Waits up to `ctx.settle` for a device node (devtmpfs creates it after a table re-read).
pub fn wait_for(node: &Path, ctx: &Context) -> Result<(), DiskError> {
    let start = Instant::now();
    loop {
        if node.exists() {
            return Ok(());
        }
        if start.elapsed() >= ctx.settle {
            return Err(DiskError::Missing(node.to_owned()));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(dir: &Path, name: &str, sectors: u64, files: &[(&str, &[u8])]) {
        let d = dir.join("block").join(name);
        fs::create_dir_all(d.join("device")).unwrap();
        fs::create_dir_all(d.join("queue")).unwrap();
        fs::write(d.join("size"), format!("{sectors}\n")).unwrap();
        for (f, v) in files {
            fs::write(d.join(f), v).unwrap();
        }
    }

    fn fixture() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let p = t.path();
        disk(p, "loop0", 1 << 30, &[]);
        disk(
            p,
            "sda",
            16 << 21,
            &[
                ("removable", b"1\n"),
                ("device/vendor", b"Kingston"),
                ("device/model", b"DataTraveler 3.0 "),
            ],
        );
        disk(
            p,
            "sdb",
            4 << 21,
            &[
                ("device/vendor", b"ATA     "),
                ("device/model", b"Samsung SSD 870"),
                ("device/vpd_pg80", b"\0\x80\0\x0fS5Y1NJ0R123456A"),
                ("device/wwid", b"naa.5002538F4123ABCD"),
                ("queue/rotational", b"0"),
            ],
        );
        disk(
            p,
            "sdc",
            64 << 21,
            &[
                ("device/vendor", b"ATA"),
                ("device/model", b"ST4000"),
                ("queue/rotational", b"1"),
            ],
        );
        disk(p, "nvme0n1", 0, &[]);
        disk(
            p,
            "nvme1n1",
            512 << 21,
            &[
                ("device/model", b"Samsung SSD 980 PRO 1TB"),
                ("device/serial", b"S5GXNF0R  "),
                ("wwid", b"eui.002538b111b2c3d4"),
            ],
        );
        disk(p, "vda", 8 << 21, &[("serial", b"disk0"), ("ro", b"1")]);
        disk(p, "vdb", 8 << 21, &[("serial", b"disk1")]);
        t
    }

    fn ctx(t: &tempfile::TempDir) -> Context {
        Context {
            sys: t.path().into(),
            dev: "/dev".into(),
            settle: std::time::Duration::from_millis(100),
            ..Context::default()
        }
    }

    #[test]
    fn ids_as_udev_would_name_them() {
        let t = fixture();
        let all = disks(t.path());
        let ids = |n: &str| all.iter().find(|d| d.name == n).unwrap().ids.clone();
        assert_eq!(
            ids("sdb"),
            [
                "ata-Samsung_SSD_870_S5Y1NJ0R123456A",
                "wwn-0x5002538f4123abcd"
            ]
        );
        assert_eq!(
            ids("nvme1n1"),
            [
                "nvme-Samsung_SSD_980_PRO_1TB_S5GXNF0R",
                "nvme-eui.002538b111b2c3d4"
            ]
        );
        assert_eq!(ids("vdb"), ["virtio-disk1"]);
        let c = ctx(&t);
        let by = |id: &str| {
            resolve(
                &c,
                &DiskSelector::Select(dragonfly_core::template::DiskSelect {
                    by_id: Some(id.into()),
                    ..Default::default()
                }),
            )
        };
        assert_eq!(by("virtio-disk1").unwrap(), PathBuf::from("/dev/vdb"));
        assert_eq!(
            by("wwn-0x5002538f4123abcd").unwrap(),
            PathBuf::from("/dev/sdb")
        );
        let e = by("virtio-nope").unwrap_err().to_string();
        assert!(e.contains("virtio-disk0"), "{e}");
        // A by-id path with no udev behind it is matched by name too.
        assert_eq!(
            resolve(
                &c,
                &DiskSelector::Path("/dev/disk/by-id/nvme-eui.002538b111b2c3d4".into())
            )
            .unwrap(),
            PathBuf::from("/dev/nvme1n1")
        );
    }

    #[test]
    fn rules_pick_the_first_acceptable_disk() {
        let t = fixture();
        let all = disks(t.path());
        let rule = |min: &str| DiskRule {
            min_size: Some(min.into()),
            ..Default::default()
        };
        // loop0 is never a target; sda is removable; nvme0n1 is empty.
        assert_eq!(pick(&all, &rule("1GiB")).unwrap().name, "nvme1n1");
        let e = pick(&all, &rule("1TiB")).unwrap_err().to_string();
        assert!(e.contains("sdc 64 GiB"), "{e}");
        assert!(e.contains("the rule {minSize 1TiB, not removable}"), "{e}");
        assert_eq!(human(32 << 20), "32 MiB");
        assert_eq!(human(512), "512 bytes");
        assert_eq!(human((2 << 30) + 5), "2 GiB");
        let sd: Vec<_> = all
            .iter()
            .filter(|d| d.name.starts_with("sd"))
            .cloned()
            .collect();
        assert_eq!(pick(&sd, &rule("8GiB")).unwrap().name, "sdc");
        let r = DiskRule {
            removable: true,
            ..rule("8GiB")
        };
        assert_eq!(pick(&sd, &r).unwrap().name, "sda");
        let r = DiskRule {
            rotational: Some(true),
            ..rule("8GiB")
        };
        assert_eq!(pick(&all, &r).unwrap().name, "sdc");
        // vda is read-only.
        let only_v: Vec<_> = all
            .iter()
            .filter(|d| d.name.starts_with('v'))
            .cloned()
            .collect();
        assert_eq!(pick(&only_v, &rule("4GiB")).unwrap().name, "vdb");
        assert!(matches!(
            pick(&[], &rule("4GiB")),
            Err(DiskError::NoMatch { .. })
        ));
    }

    #[test]
    fn partition_names() {
        assert_eq!(
            partition_path(Path::new("/dev/sda"), 2),
            PathBuf::from("/dev/sda2")
        );
        assert_eq!(
            partition_path(Path::new("/dev/nvme0n1"), 1),
            PathBuf::from("/dev/nvme0n1p1")
        );
        assert_eq!(
            partition_path(Path::new("/dev/loop7"), 3),
            PathBuf::from("/dev/loop7p3")
        );
        assert_eq!(
            partition_path(Path::new("/dev/mmcblk0"), 1),
            PathBuf::from("/dev/mmcblk0p1")
        );
    }
}
