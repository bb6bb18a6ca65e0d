//! The power harness (`PoweredVm`): a BMC emulator's power commands, sent by the real
//! clients (ipmitool, curl), start and stop a real VM that then network-boots against the
//! lab's stand-in DHCP server. Each VM runs only until its firmware's DHCP is answered.

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use dragonfly_core::Chain;
use dragonfly_integration::{
    BootDevice, Firmware, Lab, Nic, NicRom, PowerChange, PoweredVm, RedfishBmc, VmConfig,
};
use dragonfly_testkit::require_binary;
use serde_json::Value;

use crate::common::{require_vm_tools, standin_dnsmasq};

const PASSWORD: &str = "pw-Harn3ss-9q";

/// The first power on waits for the crate-wide VM lock, which the other tests' VMs hold in
/// turn (as long as `Vm::boot` would wait).
const LOCK_WAIT: Duration = Duration::from_secs(1800);

/// SeaBIOS + QEMU's iPXE ROM: the quickest way to a DHCP answer (~5 s under TCG).
fn config(name: &str, mac: &str) -> VmConfig {
    let mut config = VmConfig::new(Firmware::Bios, Nic::VirtioNet, NicRom::Ipxe, mac);
    config.name = name.to_owned();
    config.timeout = Duration::from_secs(120);
    config
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn ipmitool(vm: &PoweredVm, args: &[&str]) -> String {
    let out = vm
        .ipmi_bmc()
        .unwrap()
        .ipmitool()
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ipmitool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Waits until the power log's changes are `want` (the BMC and the harness thread act a
/// little after the client's command returns).
fn wait_changes(vm: &PoweredVm, want: &[PowerChange], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while vm.power_changes() != want {
        assert!(
            Instant::now() < deadline,
            "power log {:?}, want {want:?}",
            vm.power_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ipmi_tools() -> bool {
    require_vm_tools()
        && require_binary("ipmi_sim", "apt-get install openipmi").is_some()
        && require_binary("ipmitool", "apt-get install ipmitool").is_some()
}

#[test]
fn ipmi_chassis_power_starts_cycles_resets_and_stops_the_vm() {
    if !ipmi_tools() {
        return;
    }
    let mut lab = Lab::new();
    standin_dnsmasq(&mut lab, false);
    let mac = "52:54:00:99:00:61";
    let vm = PoweredVm::ipmi(&lab, config("ipmi", mac), PASSWORD)
        .unwrap_or_else(|e| panic!("{}", Chain(&e)));

    assert_eq!(
        ipmitool(&vm, &["chassis", "power", "status"]),
        "Chassis Power is off"
    );
    assert!(!vm.is_on() && vm.boots() == 0, "the harness starts off");
    assert_eq!(vm.boot_device(), None);
    ipmitool(
        &vm,
        &["chassis", "bootdev", "pxe", "options=persistent,efiboot"],
    );
    assert_eq!(vm.boot_device(), Some(BootDevice::Pxe));
    assert!(
        ipmitool(&vm, &["chassis", "bootparam", "get", "5"]).contains("Force PXE"),
        "ipmi_sim reads the boot device back from the harness"
    );

    let sent = Instant::now();
    ipmitool(&vm, &["chassis", "power", "on"]);
    let returned = sent.elapsed();
    vm.wait_on(LOCK_WAIT)
        .unwrap_or_else(|e| panic!("{}", Chain(&e)));
    assert_eq!(
        ipmitool(&vm, &["chassis", "power", "status"]),
        "Chassis Power is on"
    );
    let (_, line) = vm
        .wait_for_line("Configuring (net0", Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{}", Chain(&e)));
    assert!(line.contains(mac), "iPXE's DHCP names the VM's NIC: {line}");
    let dhcp = vm
        .wait_for_milestone("DHCP", Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{}", Chain(&e)));
    let on = vm.power_log()[0].clone();
    assert_eq!(on.change, PowerChange::On);
    println!(
        "ipmi: `power on` returned after {:.3} s; QEMU started {:.3} s after the command \
         ({:.3} s of it waiting for the VM lock); iPXE DHCP answered {:.1} s after QEMU \
         started",
        secs(returned),
        secs(on.at.duration_since(sent)),
        secs(on.at.duration_since(on.requested)),
        secs(dhcp)
    );

    let sent = Instant::now();
    ipmitool(&vm, &["chassis", "power", "cycle"]);
    // ipmi_sim turns power off at once and on again about a second later.
    wait_changes(
        &vm,
        &[PowerChange::On, PowerChange::Off, PowerChange::On],
        Duration::from_secs(10),
    );
    let log = vm.power_log();
    println!(
        "ipmi: `power cycle`: QEMU gone {:.3} s and started again {:.3} s after the command",
        secs(log[1].at.duration_since(sent)),
        secs(log[2].at.duration_since(sent))
    );
    assert_eq!(
        ipmitool(&vm, &["chassis", "power", "status"]),
        "Chassis Power is on"
    );

    ipmitool(&vm, &["chassis", "power", "reset"]);
    wait_changes(
        &vm,
        &[
            PowerChange::On,
            PowerChange::Off,
            PowerChange::On,
            PowerChange::Reset,
        ],
        Duration::from_secs(10),
    );
    assert_eq!(vm.boots(), 3, "on, the cycle's on, the reset");

    let sent = Instant::now();
    ipmitool(&vm, &["chassis", "power", "off"]);
    let returned = sent.elapsed();
    // The hook waits for the harness: the status right after says off.
    assert_eq!(
        ipmitool(&vm, &["chassis", "power", "status"]),
        "Chassis Power is off"
    );
    assert!(!vm.is_on());
    assert_eq!(
        vm.with_vm(|vm| vm.is_running()),
        Some(false),
        "QEMU is gone"
    );
    let off = vm.power_log().last().unwrap().clone();
    assert_eq!(off.change, PowerChange::Off);
    println!(
        "ipmi: `power off` returned after {:.3} s; QEMU gone {:.3} s after the command",
        secs(returned),
        secs(off.at.duration_since(sent))
    );
    ipmitool(&vm, &["chassis", "bootdev", "disk"]);
    assert_eq!(vm.boot_device(), Some(BootDevice::Disk));
}

#[test]
fn ipmi_reads_off_once_the_vm_exits_by_itself() {
    if !ipmi_tools() {
        return;
    }
    let lab = Lab::new();
    // No DHCP server and a QEMU limit of 5 s: the VM exits on its own.
    let mut config = config("exits", "52:54:00:99:00:62");
    config.timeout = Duration::from_secs(5);
    let vm = PoweredVm::ipmi(&lab, config, PASSWORD).unwrap_or_else(|e| panic!("{}", Chain(&e)));
    ipmitool(&vm, &["chassis", "power", "on"]);
    vm.wait_on(LOCK_WAIT)
        .unwrap_or_else(|e| panic!("{}", Chain(&e)));
    vm.wait_off(Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{}", Chain(&e)));
    assert_eq!(
        ipmitool(&vm, &["chassis", "power", "status"]),
        "Chassis Power is off"
    );
    assert_eq!(
        vm.power_changes(),
        [PowerChange::On, PowerChange::Exited],
        "{:?}",
        vm.power_log()
    );
    // And it powers on again, at once: the harness kept the VM lock.
    ipmitool(&vm, &["chassis", "power", "on"]);
    assert_eq!(
        ipmitool(&vm, &["chassis", "power", "status"]),
        "Chassis Power is on"
    );
    ipmitool(&vm, &["chassis", "power", "off"]);
    assert_eq!(vm.boots(), 2);
}

/// `curl` against the Redfish BMC, the credentials given on stdin (`-K -`), never on the
/// command line. Returns the body.
fn curl(bmc: &RedfishBmc, method: &str, url: &str, body: Option<&Value>) -> String {
    let mut cmd = bmc.curl();
    cmd.args(["-sS", "-f", "-K", "-", "-X", method, url]);
    if let Some(body) = body {
        cmd.args(["-H", "Content-Type: application/json", "-d"])
            .arg(body.to_string());
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(
        child.stdin.take().unwrap(),
        "user = \"{}:{}\"",
        bmc.username,
        bmc.password
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "curl -X {method} {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn power_state(bmc: &RedfishBmc) -> String {
    let system: Value = serde_json::from_str(&curl(bmc, "GET", &bmc.system_url(), None)).unwrap();
    system["PowerState"].as_str().unwrap().to_owned()
}

fn reset(bmc: &RedfishBmc, kind: &str) {
    curl(
        bmc,
        "POST",
        &format!("{}/Actions/ComputerSystem.Reset", bmc.system_url()),
        Some(&serde_json::json!({ "ResetType": kind })),
    );
}

#[test]
fn redfish_reset_starts_and_stops_the_vm() {
    if !require_vm_tools() || require_binary("curl", "apt-get install curl").is_none() {
        return;
    }
    let Some(sushy) = dragonfly_testkit::sushy::sushy_emulator() else {
        return;
    };
    let mut lab = Lab::new();
    standin_dnsmasq(&mut lab, false);
    let mac = "52:54:00:99:00:63";
    let vm = PoweredVm::redfish(&lab, config("redfish", mac), &sushy, PASSWORD)
        .unwrap_or_else(|e| panic!("{}", Chain(&e)));
    let bmc = vm.redfish_bmc().unwrap().clone();

    assert_eq!(power_state(&bmc), "Off");
    assert!(!vm.is_on());
    let nics = curl(
        &bmc,
        "GET",
        &format!("{}/EthernetInterfaces", bmc.system_url()),
        None,
    );
    assert!(nics.contains(mac), "the system's NIC is the VM's: {nics}");

    curl(
        &bmc,
        "PATCH",
        &bmc.system_url(),
        Some(&serde_json::json!({"Boot": {
            "BootSourceOverrideTarget": "Pxe",
            "BootSourceOverrideEnabled": "Once",
        }})),
    );
    // sushy notifies before it answers; the harness thread applies it within a tick.
    let deadline = Instant::now() + Duration::from_secs(2);
    while vm.boot_device() != Some(BootDevice::Pxe) {
        assert!(
            Instant::now() < deadline,
            "boot device {:?}",
            vm.boot_device()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let sent = Instant::now();
    reset(&bmc, "On");
    // The fake driver applies it 1–11 s later; the harness reads the system meanwhile.
    vm.wait_on(LOCK_WAIT)
        .unwrap_or_else(|e| panic!("{}", Chain(&e)));
    let on = vm.power_log()[0].clone();
    assert_eq!(on.change, PowerChange::On);
    let dhcp = vm
        .wait_for_milestone("DHCP", Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{}", Chain(&e)));
    println!(
        "redfish: QEMU started {:.3} s after `ResetType: On` (sushy applied it {:.3} s after, \
         then {:.3} s waiting for the VM lock); iPXE DHCP answered {:.1} s after QEMU started",
        secs(on.at.duration_since(sent)),
        secs(on.requested.duration_since(sent)),
        secs(on.at.duration_since(on.requested)),
        secs(dhcp)
    );
    assert_eq!(power_state(&bmc), "On");

    let sent = Instant::now();
    reset(&bmc, "ForceOff");
    vm.wait_off(Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("{}", Chain(&e)));
    let off = vm.power_log().last().unwrap().clone();
    println!(
        "redfish: QEMU gone {:.3} s after `ResetType: ForceOff`",
        secs(off.at.duration_since(sent))
    );
    assert_eq!(vm.power_changes(), [PowerChange::On, PowerChange::Off]);
    assert_eq!(
        vm.with_vm(|vm| vm.is_running()),
        Some(false),
        "QEMU is gone"
    );
    assert_eq!(power_state(&bmc), "Off");
    assert_eq!(vm.boot_device(), Some(BootDevice::Pxe));
}
