//! [`Vm`]: one QEMU machine network-booting (or booting its own disk) inside a [`Lab`], its
//! serial console timestamped line by line so the boot can be cut into milestones.

use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

use crate::{Lab, TESTOS_MARKER};

/// What the test initramfs prints on the serial console once booted (see
/// `integration/e2e/build-test-image.sh`): `DRAGONFLY-E2E-MARKER mac=… nic=… mode=…`.
pub const MARKER: &str = "DRAGONFLY-E2E-MARKER";

/// Serial console lines after which the firmware has given up on the network boot: waiting
/// any longer is pointless.
const GAVE_UP: &[&str] = &["No bootable device", "No bootable option or device"];

/// Firmware of the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS, console mirrored to serial by "sercon" (lab pitfall 7).
    Bios,
    /// OVMF (q35, `OVMF_CODE_4M.fd` + a per-VM copy of `OVMF_VARS_4M.fd`); it mirrors its
    /// console to serial itself.
    Uefi,
}

/// NIC model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nic {
    VirtioNet,
    E1000,
}

impl Nic {
    fn model(self) -> &'static str {
        match self {
            Nic::VirtioNet => "virtio-net-pci",
            Nic::E1000 => "e1000",
        }
    }
}

/// The NIC's option ROM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NicRom {
    /// QEMU's default ROM, which is iPXE (lab pitfall 4): it DHCPs as iPXE and goes straight
    /// to HTTP.
    Ipxe,
    /// `romfile=` (none): under OVMF, OVMF's own PXE client boots (DHCP → TFTP). Under
    /// SeaBIOS there is then no network boot at all.
    None,
}

/// A NIC besides the boot NIC: no option ROM, no boot entry.
#[derive(Debug, Clone)]
pub struct ExtraNic {
    pub nic: Nic,
    pub mac: String,
    /// A tap of the lab (see [`Lab::add_tap`]).
    pub tap: String,
}

/// Where a disk is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskBus {
    /// `virtio-blk-pci` (`vda` in Linux).
    Virtio,
    /// A drive on an AHCI controller (`sda` in Linux).
    Sata,
}

/// What the VM boots from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootFrom {
    /// The boot NIC (`bootindex=1`, `-boot n`).
    Network,
    /// The first of [`VmConfig::disks`] (`bootindex=1`), with no NIC at all: the VM has no
    /// network, and the NIC settings of its [`VmConfig`] are ignored.
    FirstDisk,
}

/// A raw disk image (e.g. a sparse file made with `File::set_len`).
#[derive(Debug, Clone)]
pub struct Disk {
    pub path: PathBuf,
    pub bus: DiskBus,
}

/// One VM's settings.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub firmware: Firmware,
    pub boot: BootFrom,
    pub nic: Nic,
    pub rom: NicRom,
    /// e.g. `52:54:00:99:00:10`.
    pub mac: String,
    /// Hard limit on QEMU's life (`timeout`), also the default wait for the marker.
    pub timeout: Duration,
    /// Names the VM's files in the lab directory (`serial-<name>.log`, `qemu-<name>.log`);
    /// empty: `serial.log` and `qemu.log`. Give each VM of a lab its own.
    pub name: String,
    /// vCPUs (`-smp`).
    pub cpus: u32,
    /// RAM in MiB (`-m`).
    pub memory_mib: u32,
    /// The lab tap the boot NIC is plugged into.
    pub tap: String,
    pub extra_nics: Vec<ExtraNic>,
    pub disks: Vec<Disk>,
    /// SMBIOS type 1 system UUID (`-smbios type=1,uuid=…`).
    pub smbios_uuid: Option<String>,
    /// UEFI only: keep OVMF's PXE (IPv4) boot option. `false` turns it off
    /// (`opt/org.tianocore/IPv4PXESupport`), so the NIC's first boot option is UEFI HTTP boot
    /// over IPv4: the way to test dhcpd's `HTTPClient` answer and ipxed's `/ipxe/` files.
    pub uefi_pxe: bool,
}

impl VmConfig {
    /// A VM with a 150 s limit (the slowest lab variant takes ~35 s), 1 vCPU, 512 MiB, no
    /// disk, one NIC on `tap0`.
    pub fn new(firmware: Firmware, nic: Nic, rom: NicRom, mac: &str) -> VmConfig {
        VmConfig {
            firmware,
            boot: BootFrom::Network,
            nic,
            rom,
            mac: mac.to_owned(),
            timeout: Duration::from_secs(150),
            name: String::new(),
            cpus: 1,
            memory_mib: 512,
            tap: "tap0".to_owned(),
            extra_nics: Vec::new(),
            disks: Vec::new(),
            smbios_uuid: None,
            uefi_pxe: true,
        }
    }

    /// A VM that boots `disk` (its only disk) and has no NIC: 1 vCPU, 512 MiB, a 150 s
    /// limit.
    pub fn disk_boot(firmware: Firmware, disk: Disk) -> VmConfig {
        VmConfig {
            boot: BootFrom::FirstDisk,
            disks: vec![disk],
            ..VmConfig::new(firmware, Nic::VirtioNet, NicRom::None, "52:54:00:00:00:00")
        }
    }

    fn file(&self, stem: &str) -> String {
        if self.name.is_empty() {
            stem.to_owned()
        } else {
            format!("{stem}-{}", self.name)
        }
    }
}

/// The crate-wide VM lock (`target/e2e-cache/vm.lock`): while it is held, no other test (in
/// this process or another) starts a VM. [`Vm::boot`] takes it for one VM; a test that runs
/// several VMs at once on purpose takes it once and boots them with [`Vm::boot_holding`].
#[derive(Debug)]
pub struct VmLock {
    _lock: Flock<File>,
}

impl VmLock {
    /// Waits for the lock.
    ///
    /// # Panics
    /// When the lock file cannot be opened or locked.
    pub fn acquire() -> VmLock {
        let lock = crate::image::open_lock(&crate::cache_dir().join("vm.lock"));
        VmLock {
            _lock: Flock::lock(lock, FlockArg::LockExclusive)
                .map_err(|(_, e)| e)
                .expect("locking target/e2e-cache/vm.lock"),
        }
    }
}

/// Serial console lines: when the line's first byte came, when it ended, its text.
type Lines = Arc<Mutex<Vec<SerialLine>>>;

#[derive(Debug, Clone)]
struct SerialLine {
    first: Duration,
    end: Duration,
    text: String,
}

/// A running QEMU (TCG, `-no-reboot`, booting from its tap or its first disk), killed on drop. Holds the
/// crate-wide VM lock ([`VmLock`]) while it lives, or until it is stopped.
#[derive(Debug)]
pub struct Vm {
    config: VmConfig,
    child: Child,
    started: Instant,
    lines: Lines,
    reader: Option<JoinHandle<()>>,
    /// Held while QEMU may run; let go by [`stop`](Self::stop).
    _lock: Option<Arc<VmLock>>,
}

impl Vm {
    /// Waits for the VM lock, then starts QEMU inside `lab`'s namespace. The serial console
    /// goes to `serial.log` in the lab directory, each line prefixed with seconds since QEMU
    /// started.
    ///
    /// # Panics
    /// When QEMU cannot be started.
    pub fn boot(lab: &mut Lab, config: VmConfig) -> Vm {
        Self::boot_holding(lab, config, Arc::new(VmLock::acquire()))
    }

    /// [`boot`](Self::boot) under a lock the caller already holds (shared by several VMs
    /// that must run at the same time).
    ///
    /// # Panics
    /// When QEMU cannot be started.
    pub fn boot_holding(lab: &mut Lab, config: VmConfig, lock: Arc<VmLock>) -> Vm {
        Self::start(lab.name(), lab.dir(), config, lock)
    }

    /// [`boot_holding`](Self::boot_holding) given only the lab's namespace and directory,
    /// which a thread can own (the power harness boots VMs from its own thread).
    ///
    /// # Panics
    /// When QEMU cannot be started.
    pub(crate) fn start(namespace: &str, dir: &Path, config: VmConfig, lock: Arc<VmLock>) -> Vm {
        let log_path = |label: &str| dir.join(format!("{label}.log"));
        let mut qemu: Vec<String> = vec![
            "timeout".into(),
            "--kill-after=5".into(),
            config.timeout.as_secs().to_string(),
            "qemu-system-x86_64".into(),
            // TCG only: this host's nested KVM fails inside SeaBIOS/iPXE/OVMF.
            "-accel".into(),
            "tcg".into(),
            "-m".into(),
            config.memory_mib.to_string(),
            "-smp".into(),
            config.cpus.to_string(),
            "-display".into(),
            "none".into(),
            "-monitor".into(),
            "none".into(),
            "-serial".into(),
            "stdio".into(),
            "-no-reboot".into(),
        ];
        match config.firmware {
            Firmware::Bios => {
                let sercon = dir.join(config.file("sercon-port") + ".bin");
                std::fs::write(&sercon, [0xf8, 0x03]).expect("writing sercon-port.bin");
                qemu.extend([
                    "-vga".into(),
                    "none".into(),
                    "-fw_cfg".into(),
                    format!("name=etc/sercon-port,file={}", sercon.display()),
                ]);
            }
            Firmware::Uefi => {
                let vars = dir.join(config.file("OVMF_VARS") + ".fd");
                std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars)
                    .expect("copying OVMF_VARS_4M.fd (package ovmf)");
                qemu.extend([
                    "-machine".into(),
                    "q35".into(),
                    "-drive".into(),
                    "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
                    "-drive".into(),
                    format!("if=pflash,format=raw,file={}", vars.display()),
                    // No PXE or HTTP boot over IPv6: the lab has no IPv6 service, and each of
                    // those boot options waits out its own timeouts before the firmware tries
                    // the next one (the disk, when ipxed answers local boot).
                    "-fw_cfg".into(),
                    "name=opt/org.tianocore/IPv6Support,string=no".into(),
                ]);
                if !config.uefi_pxe {
                    qemu.extend([
                        "-fw_cfg".into(),
                        "name=opt/org.tianocore/IPv4PXESupport,string=no".into(),
                    ]);
                }
            }
        }
        let rom = match config.rom {
            NicRom::Ipxe => "",
            NicRom::None => ",romfile=",
        };
        let network = config.boot == BootFrom::Network;
        if network {
            qemu.extend([
                "-boot".into(),
                "n".into(),
                "-netdev".into(),
                format!("tap,id=n0,ifname={},script=no,downscript=no", config.tap),
                "-device".into(),
                // bootindex=1: OVMF ignores -boot n (lab pitfall 6).
                format!(
                    "{},netdev=n0,mac={},bootindex=1{rom}",
                    config.nic.model(),
                    config.mac
                ),
            ]);
            for (i, extra) in config.extra_nics.iter().enumerate() {
                let id = i + 1;
                qemu.extend([
                    "-netdev".into(),
                    format!("tap,id=n{id},ifname={},script=no,downscript=no", extra.tap),
                    "-device".into(),
                    // No ROM: only the boot NIC may network-boot.
                    format!(
                        "{},netdev=n{id},mac={},romfile=",
                        extra.nic.model(),
                        extra.mac
                    ),
                ]);
            }
        } else {
            // Without it QEMU adds a NIC of its own (user networking, iPXE ROM).
            qemu.extend(["-nic".into(), "none".into()]);
        }
        if config.disks.iter().any(|d| d.bus == DiskBus::Sata) {
            qemu.extend(["-device".into(), "ahci,id=dfahci".into()]);
        }
        let mut sata = 0;
        for (i, disk) in config.disks.iter().enumerate() {
            // Booting from the network, the disks follow the NIC: OVMF drops every boot option
            // that has no bootindex when QEMU gives it a boot order, so a disk without one could
            // never boot after iPXE returns to the firmware (ipxed's local-disk answer on UEFI).
            let bootindex = match (network, i) {
                (false, 0) => ",bootindex=1".to_owned(),
                (false, _) => String::new(),
                (true, i) => format!(",bootindex={}", i + 2),
            };
            qemu.extend([
                "-drive".into(),
                format!(
                    "file={},format=raw,if=none,id=d{i},cache=unsafe",
                    disk.path.display()
                ),
                "-device".into(),
                match disk.bus {
                    DiskBus::Virtio => format!("virtio-blk-pci,drive=d{i}{bootindex}"),
                    DiskBus::Sata => {
                        sata += 1;
                        format!("ide-hd,drive=d{i},bus=dfahci.{}{bootindex}", sata - 1)
                    }
                },
            ]);
        }
        if let Some(uuid) = &config.smbios_uuid {
            qemu.extend(["-smbios".into(), format!("type=1,uuid={uuid}")]);
        }
        let mut cmd = crate::lab::netns_command(namespace, &qemu[0]);
        cmd.args(&qemu[1..]);
        let stderr = File::create(log_path(&config.file("qemu"))).expect("creating qemu.log");
        let started = Instant::now();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("starting qemu-system-x86_64");
        let stdout = child.stdout.take().expect("qemu's stdout");
        let lines: Lines = Arc::default();
        let serial = File::create(log_path(&config.file("serial"))).expect("creating serial.log");
        let reader = {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || read_serial(stdout, serial, started, &lines))
        };
        Vm {
            config,
            child,
            started,
            lines,
            reader: Some(reader),
            _lock: Some(lock),
        }
    }

    /// When QEMU was started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The VM's settings.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// Milestones reached so far (see [`BootReport::timeline`]).
    pub fn timeline(&self) -> Vec<(&'static str, Duration)> {
        milestones(&self.lines.lock().expect("serial lines"), self.config.boot)
    }

    /// Waits until a serial console line contains `needle` and returns its time since QEMU
    /// started (when the line ended) and its text.
    ///
    /// # Errors
    /// QEMU exited, the firmware gave up, or `timeout` passed: the message holds the end of
    /// the serial console. QEMU is stopped then.
    pub fn wait_for_line(
        &mut self,
        needle: &str,
        timeout: Duration,
    ) -> Result<(Duration, String), String> {
        let deadline = Instant::now() + timeout;
        let find = |lines: &Lines| {
            lines
                .lock()
                .expect("serial lines")
                .iter()
                .find(|l| l.text.contains(needle))
                .map(|l| (l.end, l.text.clone()))
        };
        loop {
            if let Some(found) = find(&self.lines) {
                return Ok(found);
            }
            let exited = matches!(self.child.try_wait(), Ok(Some(_)));
            let gave_up = self
                .lines
                .lock()
                .expect("serial lines")
                .iter()
                .any(|l| GAVE_UP.iter().any(|g| l.text.contains(g)));
            if exited || gave_up || Instant::now() > deadline {
                let status = self.stop();
                if let Some(found) = find(&self.lines) {
                    return Ok(found);
                }
                return Err(format!(
                    "VM {} ({:?}; {:?}/{:?}/{:?}) showed no {needle:?} after {:.1} s (qemu \
                     exit: {status:?})\n--- serial (last 60 lines) ---\n{}",
                    self.config.mac,
                    self.config.boot,
                    self.config.firmware,
                    self.config.nic,
                    self.config.rom,
                    self.started.elapsed().as_secs_f64(),
                    self.serial_tail(60)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether QEMU (its `timeout` wrapper) is still running: `false` once it exited by
    /// itself (`-no-reboot` turns a guest's reboot or panic into an exit) or was stopped.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The first serial console line so far that contains `needle`, with its time since QEMU
    /// started (when the line ended). Unlike [`wait_for_line`](Self::wait_for_line) it
    /// neither waits nor stops QEMU.
    pub fn find_line(&self, needle: &str) -> Option<(Duration, String)> {
        self.lines
            .lock()
            .expect("serial lines")
            .iter()
            .find(|l| l.text.contains(needle))
            .map(|l| (l.end, l.text.clone()))
    }

    /// Stops QEMU (SIGTERM through `timeout`) and waits for it and the serial reader. A QEMU
    /// already reaped is not signalled again (its PID may belong to another process by now).
    pub(crate) fn stop(&mut self) -> Option<std::process::ExitStatus> {
        if self.is_running() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.child.id().cast_signed()),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let status = self.child.wait().ok();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        // QEMU is gone: another VM may run while this one's console is still read.
        self._lock = None;
        status
    }

    /// Waits until the serial console shows [`MARKER`] (or QEMU exits, or the VM's timeout
    /// passes) and returns the boot's timeline.
    ///
    /// # Errors
    /// No marker: the message holds the end of the serial console.
    pub fn wait_for_marker(&mut self) -> Result<BootReport, String> {
        let deadline = self.started + self.config.timeout + Duration::from_secs(10);
        loop {
            if let Some(report) = self.report() {
                return Ok(report);
            }
            let exited = matches!(self.child.try_wait(), Ok(Some(_)));
            let gave_up = self
                .lines
                .lock()
                .expect("serial lines")
                .iter()
                .any(|l| GAVE_UP.iter().any(|g| l.text.contains(g)));
            if exited || gave_up || Instant::now() > deadline {
                // Stop QEMU (through `timeout`) first: the reader ends only when it exits.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(self.child.id().cast_signed()),
                    nix::sys::signal::Signal::SIGTERM,
                );
                let status = self.child.wait().ok();
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                if let Some(report) = self.report() {
                    return Ok(report);
                }
                return Err(format!(
                    "VM {} ({:?}/{:?}/{:?}) showed no {MARKER} after {:.1} s (qemu exit: {status:?})\n\
                     --- serial (last 60 lines) ---\n{}",
                    self.config.mac,
                    self.config.firmware,
                    self.config.nic,
                    self.config.rom,
                    self.started.elapsed().as_secs_f64(),
                    self.serial_tail(60)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub(crate) fn serial_tail(&self, n: usize) -> String {
        let lines = self.lines.lock().expect("serial lines");
        let skip = lines.len().saturating_sub(n);
        lines[skip..]
            .iter()
            .map(|l| format!("{:8.2}  {}\n", l.end.as_secs_f64(), l.text))
            .collect()
    }

    fn report(&self) -> Option<BootReport> {
        let lines = self.lines.lock().expect("serial lines");
        let marker = lines.iter().find(|l| l.text.contains(MARKER))?;
        let field = |key: &str| {
            marker
                .text
                .split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .unwrap_or("")
                .to_owned()
        };
        Some(BootReport {
            case: format!(
                "{:?}/{}/{:?}",
                self.config.firmware,
                self.config.nic.model(),
                self.config.rom
            ),
            mac: field("mac="),
            nic: field("nic="),
            mode: field("mode="),
            timeline: milestones(&lines, self.config.boot),
        })
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        // `timeout` forks QEMU: kill QEMU itself through the namespace sweep of Lab's drop,
        // and here at least the timeout process so that QEMU gets SIGTERM from it (unless it
        // was reaped already: a VM stopped by the power harness is dropped later).
        self.stop();
    }
}

/// What a boot reached and when.
#[derive(Debug, Clone)]
pub struct BootReport {
    /// `Bios/virtio-net-pci/Ipxe` and so on.
    pub case: String,
    /// `dragonfly.mac=` from the kernel command line, as the initramfs saw it.
    pub mac: String,
    /// eth0's MAC in the booted kernel.
    pub nic: String,
    /// `dragonfly.mode=` from the kernel command line.
    pub mode: String,
    /// Milestones in order, seconds since QEMU started (missing ones are left out).
    pub timeline: Vec<(&'static str, Duration)>,
}

impl fmt::Display for BootReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "timeline {} (QEMU start →):", self.case)?;
        for (label, t) in &self.timeline {
            write!(f, " {label} {:.1}s;", t.as_secs_f64())?;
        }
        write!(f, " mac={} nic={} mode={}", self.mac, self.nic, self.mode)
    }
}

/// Cuts the serial console into milestones, each searched after the previous one found.
///
/// A download shows as one iPXE line `URL... ok`; its time here is when the line *began*
/// (the request), because the line often ends only when the next program prints (the kernel
/// swallows iPXE's final "ok"). DHCP and TFTP milestones are lines' ends (the answer came).
///
/// A boot from disk has its own steps: the network ones would match the boot loader's lines
/// (`/boot/vmlinuz`).
fn milestones(lines: &[SerialLine], boot: BootFrom) -> Vec<(&'static str, Duration)> {
    type Test = fn(&str) -> bool;
    let configured: Test = |l| l.contains("Configuring (net") && l.contains("ok");
    // The test OS (integration/test-os/) from its disk: GRUB started, GRUB starts reading
    // the kernel, the kernel's console is up (its first line; the ~10 s before are the
    // kernel being read and decompressed under TCG), its /init's marker.
    let from_disk: &[(&str, bool, Test)] = &[
        ("GRUB", false, |l| l.contains("Welcome to GRUB")),
        ("GRUB loads the kernel", false, |l| {
            l.contains("Dragonfly test OS: loading")
        }),
        ("kernel console", false, |l| l.contains("Linux version")),
        ("test OS booted", false, |l| l.contains(TESTOS_MARKER)),
    ];
    let from_network: &[(&str, bool, Test)] = &[
        // iPXE: "Configuring (net0 52:54:…)...... ok"; OVMF's PXE: "Station IP address is …"
        ("DHCP", false, |l| {
            (l.contains("Configuring (net") && l.contains("ok")) || l.contains("Station IP address")
        }),
        // OVMF: "NBP file downloaded successfully."; iPXE: "tftp://…/undionly.kpxe... ok"
        ("TFTP NBP done", false, |l| {
            l.contains("NBP file downloaded") || (l.contains("tftp://") && l.contains("ok"))
        }),
        // OVMF's HTTP boot: "URI: http://…/ipxe/ipxe.efi", then the image runs.
        ("HTTP boot URI", false, |l| l.contains("URI: http")),
        ("iPXE DHCP", false, configured),
        ("GET /boot/{mac}", true, |l| l.contains("/boot/")),
        ("GET vmlinuz", true, |l| l.contains("/vmlinuz")),
        ("GET initrd.img", true, |l| l.contains("/initrd.img")),
        ("marker", false, |l| l.contains(MARKER)),
        // The real agent (agent-image/): its first successful registration.
        ("agent registered", false, |l| {
            l.contains("Dragonfly agent: registered as")
        }),
        // The test OS (integration/test-os/), once installed and kexec'd.
        ("test OS booted", false, |l| l.contains(TESTOS_MARKER)),
    ];
    let steps = match boot {
        BootFrom::Network => from_network,
        BootFrom::FirstDisk => from_disk,
    };
    let mut out = Vec::new();
    let mut from = 0;
    for (label, at_start, test) in steps {
        if let Some(i) = lines[from..].iter().position(|l| test(&l.text)) {
            let line = &lines[from + i];
            // The marker may share a line with iPXE's last download: take its own time.
            let t = if *at_start { line.first } else { line.end };
            out.push((*label, t));
            from += i + usize::from(*label != "GET initrd.img");
        }
    }
    out
}

/// Splits QEMU's serial output into lines (`\r`, `\n`), strips ANSI escapes and control
/// characters, and records each non-empty line with its time since `started`.
fn read_serial(mut from: impl Read, mut to: File, started: Instant, lines: &Lines) {
    let mut buf = [0u8; 4096];
    let mut line: Vec<u8> = Vec::new();
    let mut first: Option<Duration> = None;
    let mut emit = |line: &mut Vec<u8>, first: &mut Option<Duration>| {
        let text = clean(line);
        line.clear();
        let first = first.take();
        if text.is_empty() {
            return;
        }
        let end = started.elapsed();
        let _ = writeln!(to, "{:8.2}  {text}", end.as_secs_f64());
        lines.lock().expect("serial lines").push(SerialLine {
            first: first.unwrap_or(end),
            end,
            text,
        });
    };
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let now = started.elapsed();
        for &b in &buf[..n] {
            if b == b'\n' || b == b'\r' {
                emit(&mut line, &mut first);
            } else {
                first.get_or_insert(now);
                line.push(b);
            }
        }
    }
    emit(&mut line, &mut first);
}

fn clean(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => match chars.next() {
                // CSI: parameters, then one final letter.
                Some('[') => {
                    for p in chars.by_ref() {
                        if p.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
                Some('(' | ')') => {
                    chars.next();
                }
                _ => {}
            },
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_strips_escapes_and_controls() {
        assert_eq!(clean(b"\x1b[2J\x1b[01;01Hhello\x08 ok\x1b(B"), "hello ok");
    }

    #[test]
    fn milestones_follow_the_boot_order() {
        let s = Duration::from_secs;
        let lines: Vec<SerialLine> = [
            (1, "Station IP address is 10.99.0.150"),
            (2, "NBP file downloaded successfully."),
            (3, "Configuring (net0 52:54:00:99:00:10)...... ok"),
            (4, "http://10.99.0.1:8080/boot/52:54:00:99:00:10... ok"),
            (5, "http://10.99.0.1:8080/agent/vmlinuz... ok"),
            (9, "http://10.99.0.1:8080/agent/initrd.img... oDRAGONFLY-E2E-MARKER mac=52:54:00:99:00:10 nic=52:54:00:99:00:10 mode=x"),
        ]
        .into_iter()
        .map(|(t, l)| SerialLine {
            first: s(t),
            end: s(t),
            text: l.to_owned(),
        })
        .collect();
        let got: Vec<_> = milestones(&lines, BootFrom::Network)
            .into_iter()
            .map(|(l, _)| l)
            .collect();
        assert_eq!(
            got,
            [
                "DHCP",
                "TFTP NBP done",
                "iPXE DHCP",
                "GET /boot/{mac}",
                "GET vmlinuz",
                "GET initrd.img",
                "marker"
            ]
        );
    }
}
