//! The test OS (`integration/test-os/build.sh`), the image the provisioning tests install:
//! its layout as the manifest says, and a copy of it booted straight from a virtio disk, with
//! no network, under SeaBIOS and under OVMF, printing the hostname written onto its ext4 root
//! just before (as writefile will). When these fail, the image is broken, not the agent.
//!
//! Times printed (QEMU start → GRUB, the kernel, the marker) are the figures for
//! `docs/performance.md`; tests do not assert times.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use dragonfly_integration::{Disk, DiskBus, Firmware, Lab, TESTOS_MARKER, Vm, VmConfig, test_os};
use dragonfly_testkit::{require_binary, require_root};
use serde_json::Value;

/// What building the image needs.
fn require_image_tools() -> bool {
    [
        ("apt-get", "Debian"),
        ("dpkg", "Debian"),
        ("mke2fs", "apt-get install e2fsprogs"),
        ("debugfs", "apt-get install e2fsprogs"),
        ("zstd", "apt-get install zstd"),
        ("python3", "apt-get install python3"),
    ]
    .iter()
    .all(|(name, install)| require_binary(name, install).is_some())
}

fn debugfs(fs: &str, request: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", request, fs])
        .output()
        .unwrap();
    assert!(out.status.success(), "debugfs {request:?} {fs}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What booting it needs besides the image: root (the lab namespace), QEMU, both firmwares.
/// No network-boot tools: the VM has no NIC.
fn require_disk_vm_tools() -> bool {
    require_root()
        && [
            ("qemu-system-x86_64", "apt-get install qemu-system-x86"),
            ("timeout", "apt-get install coreutils"),
            ("ip", "apt-get install iproute2"),
        ]
        .iter()
        .all(|(name, install)| require_binary(name, install).is_some())
        && [
            "/usr/share/seabios/bios-256k.bin",
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
        ]
        .iter()
        .all(|p| {
            Path::new(p).is_file() || require_binary(p, "apt-get install seabios ovmf").is_some()
        })
}

/// Not a VM: the manifest's layout matches the image, the kernel and initrd a kexec loads are
/// on the root filesystem, and the compressed image stays small.
#[test]
fn test_os_image_has_the_documented_layout() {
    if !require_image_tools() {
        return;
    }
    let os = test_os();
    let manifest: Value = serde_json::from_slice(&std::fs::read(&os.manifest).unwrap()).unwrap();
    let image_len = std::fs::metadata(&os.image).unwrap().len();
    let compressed_len = std::fs::metadata(&os.compressed).unwrap().len();
    assert_eq!(manifest["image"]["size"], image_len);
    assert_eq!(manifest["compressed"]["size"], compressed_len);
    assert!(
        compressed_len < 40 << 20,
        "test-os.img.zst is {compressed_len} bytes, over 40 MiB"
    );
    let sums = std::fs::read_to_string(os.dir.join("SHA256SUMS")).unwrap();
    assert!(sums.contains(&format!("{}  test-os.img\n", os.image_sha256)));
    assert!(sums.contains(&format!("{}  test-os.img.zst\n", os.compressed_sha256)));

    // The partition table: GPT's header at LBA 1, entries at LBA 2 (128 bytes each).
    let raw = std::fs::read(&os.image).unwrap();
    assert_eq!(&raw[512..520], b"EFI PART", "no GPT header at LBA 1");
    assert_eq!(&raw[510..512], [0x55, 0xAA], "no MBR signature");
    for part in manifest["partitions"].as_array().unwrap() {
        let n = usize::try_from(part["number"].as_u64().unwrap()).unwrap();
        let entry = &raw[1024 + (n - 1) * 128..1024 + n * 128];
        let lba = |at: usize| u64::from_le_bytes(entry[at..at + 8].try_into().unwrap());
        let start = part["startBytes"].as_u64().unwrap();
        let size = part["sizeBytes"].as_u64().unwrap();
        assert_eq!(lba(32) * 512, start, "partition {n}'s start");
        assert_eq!((lba(40) + 1) * 512, start + size, "partition {n}'s end");
    }
    // GRUB's boot.img in the MBR points at core.img at the start of the BIOS boot partition.
    let kernel_sector = u64::from_le_bytes(raw[0x5c..0x64].try_into().unwrap());
    assert_eq!(
        kernel_sector * 512,
        manifest["partitions"][0]["startBytes"].as_u64().unwrap()
    );

    let fs = format!("{}?offset={}", os.image.display(), os.root_offset);
    let stats = debugfs(&fs, "stats");
    assert!(
        stats.contains(&format!("Filesystem volume name:   {}", os.root_label)),
        "{stats}"
    );
    let boot = debugfs(&fs, "ls -l /boot");
    for (name, key) in [("vmlinuz", "kernel"), ("initrd.img", "initrd")] {
        let size = manifest[key]["size"].as_u64().unwrap().to_string();
        assert!(
            boot.lines()
                .any(|l| l.trim_end().ends_with(&format!(" {name}")) && l.contains(&size)),
            "/boot/{name} of {size} bytes missing:\n{boot}"
        );
    }
    let grub_cfg = debugfs(&fs, "cat /boot/grub/grub.cfg");
    assert!(grub_cfg.contains(&os.cmdline), "{grub_cfg}");
    assert_eq!(
        debugfs(&fs, "cat /etc/hostname").trim(),
        os.default_hostname
    );
}

/// The image as built: the disk is exactly the image.
#[test]
fn test_os_boots_from_disk_bios() {
    boot_from_disk(Firmware::Bios, "testos-bios-7", None);
}

/// The image at the start of a 2 GiB disk, as image2disk writes it before moving the backup
/// GPT to the disk's end: firmware, GRUB and Linux must all still take it (they read the
/// primary GPT; OVMF also checks the backup, where the primary says it is).
#[test]
fn test_os_boots_from_disk_uefi() {
    boot_from_disk(Firmware::Uefi, "testos-uefi-8", Some(2 << 30));
}

/// Writes `hostname` into a copy of the image (grown to `disk_bytes`, sparse, when given),
/// boots it and waits for the marker naming it.
fn boot_from_disk(firmware: Firmware, hostname: &str, disk_bytes: Option<u64>) {
    if !require_disk_vm_tools() || !require_image_tools() {
        return;
    }
    let os = test_os();
    let mut lab = Lab::new();
    let disk = lab.dir().join("disk.img");
    os.copy_with_hostname(&disk, hostname);
    if let Some(len) = disk_bytes {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&disk)
            .unwrap()
            .set_len(len)
            .unwrap();
    }
    let mut config = VmConfig::disk_boot(
        firmware,
        Disk {
            path: disk.clone(),
            bus: DiskBus::Virtio,
        },
    );
    config.name = format!("{firmware:?}").to_lowercase();
    let mut vm = Vm::boot(&mut lab, config);
    let (at, line) = vm
        .wait_for_line(TESTOS_MARKER, Duration::from_secs(150))
        .unwrap_or_else(|e| panic!("{e}"));
    let field = |key: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .unwrap_or("")
            .to_owned()
    };
    assert_eq!(field("hostname="), hostname, "{line}");
    let expected = match firmware {
        Firmware::Bios => "bios",
        Firmware::Uefi => "uefi",
    };
    assert_eq!(field("firmware="), expected, "{line}");
    assert_eq!(field("root="), "/dev/vda3", "{line}");
    let timeline: String = vm
        .timeline()
        .iter()
        .map(|(label, t)| format!(" {label} {:.1}s;", t.as_secs_f64()))
        .collect();
    println!(
        "test OS from a virtio disk, {firmware:?} (QEMU start →):{timeline} marker {:.1}s \
         (kernel uptime {} s)",
        at.as_secs_f64(),
        field("uptime=")
    );
}
