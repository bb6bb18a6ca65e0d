//! Writes a GPT or MBR partition table, re-reads it, waits for the partition nodes and makes
//! the requested filesystems.
//!
//! GPT through `gptman` (a maintained pure-Rust crate: headers, CRCs, backup copy, the
//! BLKRRPART/BLKSSZGET ioctls), MBR by our own 512-byte writer (four primary entries; a crate
//! for that would have brought bincode, bitvec and serde derives into the initramfs). Not
//! sfdisk: util-linux's libfdisk, libsmartcols, libblkid and libuuid would have to be unpacked
//! into the image, and its script language is one more thing to quote. The layout is a pure
//! function ([`layout`]) so its arithmetic is tested without a disk. mkfs runs as a child
//! process with an argument vector, never through a shell.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use dragonfly_core::template::{
    DiskSelector, Filesystem, Partition, PartitionSize, PartitionTable, PartitionType,
};
use gptman::{GPT, GPTPartitionEntry};

use super::{ActionError, Context, Outcome, disk};

/// Partitions start on 1 MiB boundaries (what every partitioning tool does since 2010).
pub const ALIGN: u64 = 1 << 20;

/// Why a layout does not fit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error(
        "the disk is too small: partition {n} needs {need} MiB from MiB {start}, the disk's usable space ends at MiB {end}"
    )]
    TooSmall {
        n: usize,
        need: u64,
        start: u64,
        end: u64,
    },
    #[error("partition {0}: the size does not parse")]
    Size(usize),
    #[error("an MBR cannot address beyond 2 TiB (with 512-byte sectors): partition {0}")]
    MbrLimit(usize),
}

/// One placed partition, in sectors (inclusive end).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    pub first: u64,
    pub last: u64,
}

/// Places the partitions on a disk of `disk_bytes`: each starts at the next 1 MiB boundary;
/// byte sizes round up to whole sectors; percentages are of the usable space (rounded down
/// to MiB); `rest` runs to the last usable sector (GPT keeps 33 sectors for its backup).
pub fn layout(
    disk_bytes: u64,
    sector: u64,
    table: PartitionTable,
    sizes: &[PartitionSize],
) -> Result<Vec<Placed>, LayoutError> {
    let sectors = disk_bytes / sector;
    let align = ALIGN / sector;
    // GPT: the backup entry array (16 KiB) and header at the end.
    let reserved_end = match table {
        PartitionTable::Gpt => 16 * 1024 / sector + 1,
        PartitionTable::Mbr => 0,
    };
    let last_usable = sectors.saturating_sub(reserved_end + 1);
    let usable = (last_usable + 1).saturating_sub(align) * sector;
    let mut next = align;
    let mut out = Vec::with_capacity(sizes.len());
    for (i, s) in sizes.iter().enumerate() {
        let n = i + 1;
        let first = next.div_ceil(align) * align;
        let count = match *s {
            PartitionSize::Bytes(b) => b.div_ceil(sector),
            PartitionSize::Percent(p) => usable / 100 * u64::from(p) / ALIGN * ALIGN / sector,
            PartitionSize::Rest => (last_usable + 1).saturating_sub(first),
        };
        let last = first + count.max(1) - 1;
        if count == 0 || last > last_usable {
            return Err(LayoutError::TooSmall {
                n,
                need: (count * sector).div_ceil(1 << 20),
                start: (first * sector) >> 20,
                end: ((last_usable + 1) * sector) >> 20,
            });
        }
        if table == PartitionTable::Mbr && (last >= 1 << 32) {
            return Err(LayoutError::MbrLimit(n));
        }
        out.push(Placed { first, last });
        next = last + 1;
    }
    Ok(out)
}

/// GPT type GUIDs as text.
fn gpt_type(t: PartitionType) -> &'static str {
    match t {
        PartitionType::Efi => "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
        PartitionType::BiosBoot => "21686148-6449-6E6F-744E-656564454649",
        PartitionType::Linux => "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
        PartitionType::Swap => "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F",
    }
}

/// GUIDs are stored mixed-endian on disk.
fn guid_bytes(s: &str) -> [u8; 16] {
    uuid::Uuid::parse_str(s)
        .map(|u| u.to_bytes_le())
        .unwrap_or_default()
}

/// MBR type bytes.
fn mbr_type(t: PartitionType) -> u8 {
    match t {
        PartitionType::Efi => 0xEF,
        PartitionType::Linux | PartitionType::BiosBoot => 0x83,
        PartitionType::Swap => 0x82,
    }
}

/// A classic MBR sector: no boot code, a disk signature, up to four primary entries with LBA
/// addressing (CHS fields set to the "use LBA" maximum).
pub fn mbr_sector(signature: u32, parts: &[(Placed, u8)]) -> [u8; 512] {
    let mut s = [0u8; 512];
    s[440..444].copy_from_slice(&signature.to_le_bytes());
    for (i, (p, kind)) in parts.iter().take(4).enumerate() {
        let e = &mut s[446 + 16 * i..446 + 16 * (i + 1)];
        e[0] = 0;
        e[1..4].copy_from_slice(&[0xFE, 0xFF, 0xFF]);
        e[4] = *kind;
        e[5..8].copy_from_slice(&[0xFE, 0xFF, 0xFF]);
        let first = u32::try_from(p.first).unwrap_or(u32::MAX);
        let count = u32::try_from(p.last - p.first + 1).unwrap_or(u32::MAX);
        e[8..12].copy_from_slice(&first.to_le_bytes());
        e[12..16].copy_from_slice(&count.to_le_bytes());
    }
    s[510] = 0x55;
    s[511] = 0xAA;
    s
}

/// Zeroes the first and last MiB, so no old GPT, MBR or filesystem signature survives to
/// confuse the kernel or the next mkfs (what `wipefs` would do for the table areas).
fn wipe_ends(f: &File, size: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; ALIGN as usize];
    let n = ALIGN.min(size);
    f.write_all_at(&zeros[..n as usize], 0)?;
    f.write_all_at(&zeros[..n as usize], size - n)?;
    Ok(())
}

/// Writes the table, re-reads it and formats.
pub fn run(
    ctx: &Context,
    sel: &DiskSelector,
    table: PartitionTable,
    parts: &[Partition],
) -> Result<super::Outcome, ActionError> {
    let dev = disk::resolve(ctx, sel)?;
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&dev)
        .map_err(ActionError::io("opening", &dev))?;
    let size = f
        .seek(SeekFrom::End(0))
        .map_err(ActionError::io("sizing", &dev))?;
    let sector = gptman::linux::get_sector_size(&mut f).unwrap_or(512);
    let sizes = parts
        .iter()
        .enumerate()
        .map(|(i, p)| PartitionSize::parse(&p.size).map_err(|_| LayoutError::Size(i + 1)))
        .collect::<Result<Vec<_>, _>>()?;
    let placed = layout(size, sector, table, &sizes)?;
    wipe_ends(&f, size).map_err(ActionError::io("wiping", &dev))?;
    match table {
        PartitionTable::Gpt => {
            // GUIDs from crate::random, which never blocks on an unseeded entropy pool (see
            // there), stored mixed-endian like the type GUIDs.
            let mut gpt = GPT::new_from(&mut f, sector, crate::random::gpt_guid())?;
            for (i, (p, at)) in parts.iter().zip(&placed).enumerate() {
                let n = u32::try_from(i + 1).unwrap_or(u32::MAX);
                gpt[n] = GPTPartitionEntry {
                    partition_type_guid: guid_bytes(gpt_type(p.kind)),
                    unique_partition_guid: crate::random::gpt_guid(),
                    starting_lba: at.first,
                    ending_lba: at.last,
                    attribute_bits: 0,
                    partition_name: p.label.as_str().into(),
                };
            }
            gpt.write_into(&mut f)?;
            GPT::write_protective_mbr_into(&mut f, sector)?;
        }
        PartitionTable::Mbr => {
            let entries: Vec<_> = parts
                .iter()
                .zip(&placed)
                .map(|(p, at)| (*at, mbr_type(p.kind)))
                .collect();
            let sig = crate::random::u32();
            f.write_all_at(&mbr_sector(sig, &entries), 0)
                .map_err(ActionError::io("writing the MBR to", &dev))?;
        }
    }
    f.flush().map_err(ActionError::io("flushing", &dev))?;
    f.sync_all().map_err(ActionError::io("syncing", &dev))?;
    let table_parts: Vec<_> = placed
        .iter()
        .enumerate()
        .map(|(i, p)| {
            (
                u32::try_from(i + 1).unwrap_or(u32::MAX),
                p.first * sector,
                (p.last - p.first + 1) * sector,
            )
        })
        .collect();
    reread(&mut f, &dev)?;
    publish(&f, &dev, &table_parts)?;
    drop(f);
    let mut made = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let n = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let node = disk::partition_path(&dev, n);
        disk::wait_for(&node, ctx).map_err(|_| disk::DiskError::NoPartitionNode {
            n,
            disk: dev.clone(),
            node: node.clone(),
            secs: ctx.settle.as_secs(),
        })?;
        if let Some(fs) = p.format {
            mkfs(fs, &p.label, &node)?;
            made.push(format!("{} {fs:?}", node.display()));
        }
    }
    let kind = match table {
        PartitionTable::Gpt => "GPT",
        PartitionTable::Mbr => "MBR",
    };
    let mut msg = format!(
        "{kind} with {} partitions on {}",
        parts.len(),
        dev.display()
    );
    if !made.is_empty() {
        msg.push_str(&format!("; formatted {}", made.join(", ")));
    }
    Ok(Outcome::said(msg))
}

/// BLKRRPART: the kernel reads the new table and creates the partition devices.
///
/// Retried for a second while the device is busy (udev, where there is one, may still hold it
/// open right after a write); a device that cannot have partitions at all (a loop device
/// without partition scanning: `EINVAL`) is not an error, there is nothing to re-read.
pub fn reread(f: &mut File, dev: &Path) -> Result<(), ActionError> {
    use gptman::linux::BlockError;
    let mut tries = 0;
    loop {
        match gptman::linux::reread_partition_table(f) {
            Ok(()) | Err(BlockError::NotBlock) => return Ok(()),
            Err(BlockError::RereadTable(nix::errno::Errno::EINVAL)) => return Ok(()),
            Err(BlockError::RereadTable(nix::errno::Errno::EBUSY)) if tries < 10 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => {
                return Err(ActionError::Unsupported(format!(
                    "the kernel did not re-read the partition table of {} ({e}); is a partition in use?",
                    dev.display()
                )));
            }
        }
    }
}

/// `struct blkpg_partition` from `<linux/blkpg.h>`.
#[repr(C)]
struct BlkpgPartition {
    start: i64,
    length: i64,
    pno: libc::c_int,
    devname: [libc::c_char; 64],
    volname: [libc::c_char; 64],
}

/// `struct blkpg_ioctl_arg`.
#[repr(C)]
struct BlkpgIoctlArg {
    op: libc::c_int,
    flags: libc::c_int,
    datalen: libc::c_int,
    data: *mut libc::c_void,
}

const BLKPG: libc::c_ulong = 0x1269; // _IO(0x12, 105)
const BLKPG_ADD_PARTITION: libc::c_int = 1;

/// Tells the kernel about one partition (what `partx -a` does).
#[allow(
    unsafe_code,
    reason = "the BLKPG ioctl, which neither nix nor gptman wraps"
)]
fn blkpg_add(f: &File, pno: u32, start: u64, length: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut part = BlkpgPartition {
        start: i64::try_from(start).map_err(std::io::Error::other)?,
        length: i64::try_from(length).map_err(std::io::Error::other)?,
        pno: libc::c_int::try_from(pno).map_err(std::io::Error::other)?,
        devname: [0; 64],
        volname: [0; 64],
    };
    let mut arg = BlkpgIoctlArg {
        op: BLKPG_ADD_PARTITION,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as libc::c_int,
        data: (&raw mut part).cast(),
    };
    // SAFETY: `arg` and the `part` it points to are valid, properly laid-out (`repr(C)`, as in
    // <linux/blkpg.h>) and live for the whole call; the kernel only reads them.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), BLKPG as _, &raw mut arg) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Makes sure the kernel has a device for each partition of the table just written.
///
/// After BLKRRPART a kernel with the GPT/MBR parsers (every distribution kernel, the agent's)
/// has created them already; one built without them (`CONFIG_EFI_PARTITION` unset, as some
/// micro-VM kernels are) has none, and each is added by BLKPG, as `partx -a` would.
pub fn publish(f: &File, dev: &Path, parts: &[(u32, u64, u64)]) -> Result<(), ActionError> {
    let Some(name) = dev.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Ok(());
    };
    for &(n, start, len) in parts {
        let node = disk::partition_path(Path::new(&name), n);
        let sys = Path::new("/sys/class/block").join(&node);
        if sys.exists() {
            continue;
        }
        blkpg_add(f, n, start, len).map_err(|e| {
            ActionError::Unsupported(format!(
                "the kernel has no device for partition {n} of {} and refused to add one ({e})",
                dev.display()
            ))
        })?;
    }
    Ok(())
}

/// The partitions of the table at the start of `f` (GPT, else MBR primaries): (number, start
/// byte, length in bytes). Empty when there is no table.
pub fn read_table(f: &mut File, sector: u64) -> Vec<(u32, u64, u64)> {
    if let Ok(gpt) = GPT::read_from(f, sector) {
        return gpt
            .iter()
            .filter(|(_, p)| p.is_used())
            .map(|(n, p)| {
                (
                    n,
                    p.starting_lba * sector,
                    (p.ending_lba - p.starting_lba + 1) * sector,
                )
            })
            .collect();
    }
    let mut mbr = [0u8; 512];
    if f.read_exact_at(&mut mbr, 0).is_err() || mbr[510..] != [0x55, 0xAA] {
        return Vec::new();
    }
    (0..4u32)
        .filter_map(|i| {
            let e = &mbr[446 + 16 * i as usize..][..16];
            let kind = e[4];
            let first = u64::from(u32::from_le_bytes([e[8], e[9], e[10], e[11]]));
            let count = u64::from(u32::from_le_bytes([e[12], e[13], e[14], e[15]]));
            // Empty, protective, or extended (whose logical partitions this does not follow).
            (![0x00, 0xEE, 0x05, 0x0F, 0x85].contains(&kind) && count > 0).then_some((
                i + 1,
                first * 512,
                count * 512,
            ))
        })
        .collect()
}

/// Filesystem labels are shorter than GPT names: ext4 16 bytes, XFS 12, FAT 11. `validate`
/// refuses a longer one; cutting it here only keeps an unvalidated template from failing mkfs.
fn fs_label(fs: Filesystem, label: &str) -> String {
    let max = match fs {
        Filesystem::Ext4 | Filesystem::Swap => 16,
        Filesystem::Xfs => 12,
        Filesystem::Vfat => 11,
    };
    let mut out = String::new();
    for c in label.chars() {
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    if fs == Filesystem::Vfat {
        out = out.to_uppercase();
    }
    out
}

/// The mkfs command line for a filesystem.
pub fn mkfs_command(fs: Filesystem, label: &str, node: &Path) -> (String, Vec<String>) {
    let l = fs_label(fs, label);
    let dev = node.display().to_string();
    let (tool, mut args): (&str, Vec<String>) = match fs {
        Filesystem::Ext4 => ("mkfs.ext4", vec!["-F".into(), "-q".into()]),
        Filesystem::Xfs => ("mkfs.xfs", vec!["-f".into(), "-q".into()]),
        Filesystem::Vfat => ("mkfs.vfat", vec![]),
        Filesystem::Swap => ("mkswap", vec![]),
    };
    if !l.is_empty() {
        args.push(if fs == Filesystem::Vfat { "-n" } else { "-L" }.into());
        args.push(l);
    }
    args.push(dev);
    (tool.into(), args)
}

/// Runs mkfs; a failure carries the tool's stderr (its last 2 KiB).
pub fn mkfs(fs: Filesystem, label: &str, node: &Path) -> Result<(), ActionError> {
    let (tool, args) = mkfs_command(fs, label, node);
    tool_run(&tool, &args)
}

pub(crate) fn tool_run(tool: &str, args: &[String]) -> Result<(), ActionError> {
    let out = Command::new(tool)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(ActionError::io("running", PathBuf::from(tool)))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let tail: String = err
        .chars()
        .rev()
        .take(2048)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    Err(ActionError::Tool {
        tool: format!("{tool} {}", args.join(" ")),
        status: out.status.to_string(),
        stderr: tail.trim().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use PartitionSize::*;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn gpt_layout() {
        let p = layout(
            8 * GIB,
            512,
            PartitionTable::Gpt,
            &[Bytes(MIB), Bytes(512 * MIB), Percent(10), Rest],
        )
        .unwrap();
        assert_eq!(
            p[0],
            Placed {
                first: 2048,
                last: 4095
            }
        );
        assert_eq!(
            p[1],
            Placed {
                first: 4096,
                last: 4096 + 1024 * 1024 * 2 / 2 - 1
            }
        );
        assert_eq!(p[2].first, p[1].last + 1);
        // 10% of (8 GiB - 1 MiB - GPT backup), rounded down to MiB.
        assert_eq!((p[2].last - p[2].first + 1) * 512, 819 * MIB);
        // The rest ends before the backup GPT (33 sectors).
        assert_eq!(p[3].last, 8 * GIB / 512 - 34);
    }

    #[test]
    fn mbr_layout_and_sector() {
        let p = layout(GIB, 512, PartitionTable::Mbr, &[Bytes(100 * MIB), Rest]).unwrap();
        assert_eq!(p[1].last, GIB / 512 - 1);
        let s = mbr_sector(0xDEADBEEF, &[(p[0], 0xEF), (p[1], 0x83)]);
        assert_eq!(&s[510..], &[0x55, 0xAA]);
        assert_eq!(&s[440..444], &0xDEADBEEFu32.to_le_bytes());
        assert_eq!(s[446 + 4], 0xEF);
        assert_eq!(
            u32::from_le_bytes(s[446 + 8..446 + 12].try_into().unwrap()),
            2048
        );
        assert_eq!(
            u32::from_le_bytes(s[446 + 12..446 + 16].try_into().unwrap()),
            204800
        );
        assert_eq!(s[462 + 4], 0x83);
        assert_eq!(s[478 + 4], 0, "third entry empty");
        assert!(matches!(
            layout(3 << 40, 512, PartitionTable::Mbr, &[Rest]),
            Err(LayoutError::MbrLimit(1))
        ));
    }

    #[test]
    fn too_small_says_which_partition() {
        let e = layout(
            GIB,
            512,
            PartitionTable::Gpt,
            &[Bytes(512 * MIB), Bytes(600 * MIB)],
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                LayoutError::TooSmall {
                    n: 2,
                    need: 600,
                    ..
                }
            ),
            "{e}"
        );
        assert!(layout(MIB, 512, PartitionTable::Gpt, &[Rest]).is_err());
    }

    #[test]
    fn mkfs_commands_are_argument_vectors() {
        let (t, a) = mkfs_command(
            Filesystem::Vfat,
            "efi system partition",
            Path::new("/dev/sda1"),
        );
        assert_eq!(
            (t.as_str(), a),
            (
                "mkfs.vfat",
                vec!["-n".into(), "EFI SYSTEM ".to_owned(), "/dev/sda1".into()]
            )
        );
        let (t, a) = mkfs_command(Filesystem::Ext4, "root; rm -rf /", Path::new("/dev/sda2"));
        assert_eq!(t, "mkfs.ext4");
        assert_eq!(a, ["-F", "-q", "-L", "root; rm -rf /", "/dev/sda2"]);
        let (t, a) = mkfs_command(Filesystem::Xfs, "", Path::new("/dev/sda3"));
        assert_eq!(
            (t.as_str(), a),
            (
                "mkfs.xfs",
                vec!["-f".to_owned(), "-q".into(), "/dev/sda3".into()]
            )
        );
    }

    proptest! {
        #[test]
        fn layouts_never_overlap_and_stay_inside(
            disk_mib in 2u64..100_000,
            sizes in proptest::collection::vec(prop_oneof![
                (1u64..4096).prop_map(|m| Bytes(m * MIB + 7)),
                (1u8..=40).prop_map(Percent),
            ], 0..6),
            rest in any::<bool>(),
            gpt in any::<bool>(),
            sector in prop_oneof![Just(512u64), Just(4096)],
        ) {
            let table = if gpt { PartitionTable::Gpt } else { PartitionTable::Mbr };
            let mut sizes = sizes;
            if rest { sizes.push(Rest); }
            if let Ok(p) = layout(disk_mib * MIB, sector, table, &sizes) {
                let sectors = disk_mib * MIB / sector;
                let mut prev = 0;
                for x in &p {
                    prop_assert!(x.first > prev || prev == 0);
                    prop_assert!(x.first * sector % MIB == 0);
                    prop_assert!(x.last >= x.first);
                    let reserved = if gpt { 16384 / sector + 1 } else { 0 };
                    prop_assert!(x.last < sectors - reserved);
                    prev = x.last;
                }
            }
        }
    }
}
