//! End-to-end test harness: real QEMU machines network-booting against real servers inside a
//! private network namespace.
//!
//! Why it exists: unit and crate tests prove each daemon speaks its protocol, but only a real
//! firmware (SeaBIOS + iPXE, OVMF's own PXE client) proves the whole chain — DHCP answer,
//! TFTP of an iPXE binary, ipxed's `/boot/{mac}` script, kernel and initrd over HTTP — fits
//! together. The recipe follows the lab in `/work/shared/lab/` (timings and pitfalls there).
//!
//! What it must never do: touch the host's network. Every server and every VM lives in a
//! namespace created per test ([`Lab`]: a bridge `br0` 10.99.0.1/24 and a tap `tap0`, no
//! link to the host), deleted on drop together with every process inside it, even when the
//! test panics. Downloads and built images are cached under `target/e2e-cache/` only.
//!
//! VMs are CPU-heavy (TCG on a 2-core machine): [`Vm::boot`] holds an exclusive file lock
//! (`target/e2e-cache/vm.lock`) for the VM's lifetime, so across threads *and* test
//! processes only one VM runs at a time; labs without a VM still run in parallel.
//!
//! Everything here needs root (namespaces, taps, binding ports 67/69): tests call
//! `dragonfly_testkit::require_root()` and `require_binary(…)` first.
//!
//! [`PoweredVm`] puts a VM behind a BMC emulator (IPMI or Redfish) whose power commands
//! really start and stop its QEMU, for bmcd's tests.
//!
//! It is also the one lab of the scripts: `dragonfly-lab` (`src/bin/dragonfly-lab.rs`) makes
//! the demo's and the benchmarks' networks with [`Network`] and writes their configuration
//! with [`LabConfig`], the one place the lab spells the daemons' configuration keys.

mod api;
mod config;
mod image;
mod lab;
pub mod load;
mod power;
mod serve;
mod sim_agent;
mod vm;

use std::path::PathBuf;

pub use api::{EventWatcher, SubjectWatcher, list_machines};
pub use config::{
    ApidConfig, BmcdConfig, DhcpdConfig, HttpSettings, IpxedConfig, LabConfig, SubnetConfig,
    TftpdConfig,
};
pub use image::{DebianImage, TESTOS_MARKER, TestImage, TestOs, debian_image, test_image, test_os};
pub use lab::{BRIDGE_ADDR, KEEP_ENV, Lab, LabError, Network, Peer, Socket, Tap, destroy_network};
pub use power::{
    BMC_USER, Bmc, BootDevice, IpmiBmc, PowerChange, PowerError, PowerEvent, PoweredVm, RedfishBmc,
};
pub use serve::{GATE_BYTES, ImageServer};
pub use sim_agent::{SimAgent, SimAgentError};
pub use vm::{
    BootFrom, BootReport, Disk, DiskBus, ExtraNic, Firmware, MARKER, Nic, NicRom, Vm, VmConfig,
    VmLock,
};

/// The profile directory holding the workspace's binaries (`target/debug`): the parent of the
/// `deps/` folder the test executable runs from.
///
/// # Panics
/// When the test executable's path has no such parents (not run by cargo).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test executable");
    let deps = exe.parent().expect("test executable in a directory");
    let dir = if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().expect("deps/ inside the profile directory")
    } else {
        deps
    };
    dir.to_owned()
}

/// `target/e2e-cache/`: downloads and built images, kept across runs (created on demand).
///
/// # Panics
/// When the directory cannot be created.
pub fn cache_dir() -> PathBuf {
    let target = profile_dir()
        .parent()
        .expect("profile directory inside target/")
        .to_owned();
    let dir = target.join("e2e-cache");
    std::fs::create_dir_all(&dir).expect("creating target/e2e-cache");
    dir
}

/// The workspace binary `name` (e.g. `dragonfly-dhcpd`) next to the test executable.
///
/// # Panics
/// When it has not been built: the test command builds every binary first.
pub fn daemon_binary(name: &str) -> PathBuf {
    let path = profile_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` before `cargo test -p \
         dragonfly-integration` (integration/run-tests.sh does)",
        path.display()
    );
    path
}
