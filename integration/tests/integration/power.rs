//! Power control, end to end: a VM whose BMC emulator really starts and stops it
//! (`dragonfly_integration::PoweredVm`: `ipmi_sim` over IPMI, `sushy-emulator` over Redfish),
//! with every Dragonfly daemon in the lab, bmcd included.
//!
//! The operator registers the machine by its MAC and gives its BMC (the password sealed to
//! bmcd's key); powers it on through the API (it PXE-boots and its agent registers) and off
//! again. Then, with the VM **off**, the operator assigns the test OS — and does nothing else:
//! bmcd sets the next boot to the network and powers the VM on, it installs, the workflow
//! succeeds, bmcd sets the next boot to disk, and a power cycle through the API brings the
//! installed OS up from its disk (ipxed answers local boot; the agent does not run again).
//!
//! Figures printed (docs/performance.md): API power-on → the VM's first DHCP request, against
//! the BMC's own client (ipmitool, curl) doing the same in the same run; assignment →
//! installed OS. Tests do not assert times.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dragonfly_integration::{
    BRIDGE_ADDR, BootDevice, Firmware, ImageServer, PowerChange, PoweredVm, TESTOS_MARKER, VmLock,
    test_os,
};
use serde_json::{Value, json};

use crate::discovery::full_lab;
use crate::provision::{Operator, vm_config};

const IMAGES_PORT: u16 = 8091;
const HOSTNAME: &str = "powered-by-dragonfly";
const BMC_PASSWORD: &str = "bmc-pw-Zr8qLm2x";
/// iPXE's line as it starts DHCP on its NIC: the first DHCPDISCOVER goes out right after.
const DHCP_STARTS: &str = "Configuring (net0";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Ipmi,
    Redfish,
}

/// Seconds from `since` to the first `DHCP_STARTS` line of the boot after boot number
/// `boots` (Redfish applies a power change seconds after it answered).
fn to_dhcp(vm: &PoweredVm, since: Instant, boots: u32) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    while vm.boots() <= boots {
        assert!(Instant::now() < deadline, "the VM was not started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (after_start, _) = vm
        .wait_for_line(DHCP_STARTS, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{e}"));
    let started = vm
        .power_log()
        .iter()
        .rev()
        .find(|e| e.change == PowerChange::On)
        .map(|e| e.at)
        .expect("a power on in the log");
    (started + after_start)
        .saturating_duration_since(since)
        .as_secs_f64()
}

/// The BMC's own client powers the VM on (the comparison for bmcd's figure).
fn direct_power_on(vm: &PoweredVm) {
    match vm.ipmi_bmc() {
        Some(bmc) => {
            let out = bmc
                .ipmitool()
                .args(["chassis", "power", "on"])
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
        }
        None => {
            let bmc = vm.redfish_bmc().unwrap();
            let url = format!("{}/Actions/ComputerSystem.Reset", bmc.system_url());
            let out = bmc
                .curl()
                .args(["-sSf", "-u"])
                .arg(format!("{}:{}", bmc.username, bmc.password))
                .args(["-H", "Content-Type: application/json", "-d"])
                .arg(r#"{"ResetType":"On"}"#)
                .arg(url)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
        }
    }
}

fn bmc_body(vm: &PoweredVm) -> Value {
    match vm.ipmi_bmc() {
        Some(b) => json!({
            "type": "ipmi", "address": b.address.ip().to_string(), "port": b.address.port(),
            "username": b.username, "password": BMC_PASSWORD, "bootMode": "legacy",
        }),
        None => {
            let b = vm.redfish_bmc().unwrap();
            json!({
                "type": "redfish", "address": b.endpoint, "username": b.username,
                "password": BMC_PASSWORD, "system": b.system_id, "bootMode": "legacy",
            })
        }
    }
}

fn power(op: &Operator<'_>, id: &str, action: &str) -> Value {
    let (status, reply) = op.call(
        "POST",
        &format!("/api/machines/{id}/power"),
        Some(json!({ "action": action })),
    );
    assert_eq!(status, 200, "power {action}: {reply:#}");
    reply
}

fn powered_provision(protocol: Protocol) {
    let Some((lab, stack, _events)) = full_lab() else {
        return;
    };
    let sushy = match protocol {
        Protocol::Ipmi => None,
        Protocol::Redfish => match dragonfly_testkit::sushy::sushy_emulator() {
            Some(s) => Some(s),
            None => return,
        },
    };
    let base = stack.apid.clone().unwrap();
    let os = test_os();
    let images = ImageServer::start(
        &lab,
        format!("{BRIDGE_ADDR}:{IMAGES_PORT}").parse().unwrap(),
    );
    images.add("test-os.img.zst", std::fs::read(&os.compressed).unwrap());
    let disk = lab.dir().join("powered.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(2 << 30)
        .unwrap();
    let mut config = vm_config(Firmware::Bios, &disk);
    config.name = format!("powered-{protocol:?}").to_lowercase();
    let mac = config.mac.clone();
    // The VM lock up front, so that no power-on below waits for another test's VM.
    let lock = Arc::new(VmLock::acquire());
    let vm = match &sushy {
        None => PoweredVm::ipmi(&lab, config, BMC_PASSWORD),
        Some(sushy) => PoweredVm::redfish(&lab, config, sushy, BMC_PASSWORD),
    }
    .unwrap();
    vm.share_lock(lock);
    let logs = |what: &str| format!("{what}\n===== lab logs =====\n{}", lab.logs());

    let op = Operator::login(&lab, &base);
    let (status, m) = op.call(
        "POST",
        "/api/machines/register",
        Some(json!({ "macs": [mac] })),
    );
    assert_eq!(status, 201, "{m:#}");
    let id = m["id"].as_str().unwrap().to_owned();
    let (status, b) = op.call(
        "PUT",
        &format!("/api/machines/{id}/bmc"),
        Some(bmc_body(&vm)),
    );
    assert_eq!(status, 200, "{b:#}");
    assert_eq!(b["passwordSet"], true);
    assert!(!b.to_string().contains(BMC_PASSWORD));

    // Powered on through the API: it network-boots and its agent registers.
    let t = Instant::now();
    let reply = power(&op, &id, "on");
    assert_eq!(reply["ok"], true, "{reply:#}");
    let api_to_dhcp = to_dhcp(&vm, t, 0);
    vm.wait_for_line("Dragonfly agent: registered as", Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("{}", logs(&e.to_string())));
    let reply = power(&op, &id, "off");
    assert_eq!(reply["ok"], true, "{reply:#}");
    vm.wait_off(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{}", logs(&e.to_string())));

    // The same power-on by the BMC's own client, for comparison; then off again.
    let (t, boots) = (Instant::now(), vm.boots());
    direct_power_on(&vm);
    let direct_to_dhcp = to_dhcp(&vm, t, boots);
    power(&op, &id, "off");
    vm.wait_off(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{}", logs(&e.to_string())));
    let boots_before = vm.boots();

    // Off, assigned: nothing else is done by hand from here to the installed OS.
    let template = os.template("test-os", &images.url("test-os.img.zst", false));
    op.create_template(template);
    let assigned = Instant::now();
    let (status, wf) = op.call(
        "POST",
        &format!("/api/machines/{id}/provision"),
        Some(json!({"template": "test-os", "values": {"hostname": HOSTNAME}})),
    );
    assert_eq!(status, 201, "{wf:#}");
    assert!(
        wf["power"].as_str().unwrap_or("").contains("bmcd"),
        "{wf:#}"
    );
    let marker = format!("{TESTOS_MARKER} hostname={HOSTNAME}");
    vm.wait_for_line(&marker, Duration::from_secs(600))
        .unwrap_or_else(|e| panic!("{}", logs(&e.to_string())));
    let installed = assigned.elapsed().as_secs_f64();
    assert_eq!(vm.boots(), boots_before + 1, "bmcd powered it on once");
    op.wait_workflow(
        wf["id"].as_str().unwrap(),
        "Succeeded",
        Duration::from_secs(60),
    );
    // The succeeded workflow's power request: next boot from disk.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, b) = op.call("GET", &format!("/api/machines/{id}/bmc"), None);
        let done = b["lastRequests"].as_array().is_some_and(|r| {
            r.iter()
                .any(|r| r["kind"] == "provisioned" && r["state"] == "done")
        });
        if done && vm.boot_device() == Some(BootDevice::Disk) {
            assert!(b["condition"].is_null(), "{b:#}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            logs(&format!("BMC {b:#}, boot device {:?}", vm.boot_device()))
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // A power cycle through the API: the installed OS comes up from its disk.
    let reply = power(&op, &id, "cycle");
    assert_eq!(reply["ok"], true, "{reply:#}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while vm.boots() < boots_before + 2 {
        assert!(
            Instant::now() < deadline,
            "{}",
            logs("no new boot after the cycle")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    vm.wait_for_line(&marker, Duration::from_secs(400))
        .unwrap_or_else(|e| panic!("{}", logs(&e.to_string())));
    assert!(
        vm.wait_for_line("Dragonfly agent", Duration::from_secs(1))
            .is_err(),
        "the agent ran again: the machine was not sent to its disk"
    );
    let (_, b) = op.call("GET", &format!("/api/machines/{id}/bmc"), None);
    assert!(!b.to_string().contains(BMC_PASSWORD));
    // Every daemon's log of the whole run (bmcd's and apid's included), and the emulators'.
    assert!(
        !lab.logs().contains(BMC_PASSWORD),
        "the BMC password is in a log"
    );
    println!(
        "power {protocol:?}: API power on → first DHCP {api_to_dhcp:.2} s (the BMC's own \
         client: {direct_to_dhcp:.2} s); assignment of an off machine → installed OS marker \
         {installed:.1} s; power log {:?}",
        vm.power_changes()
    );
}

#[test]
fn ipmi_powered_off_vm_is_installed_and_booted_from_disk_with_no_other_action() {
    powered_provision(Protocol::Ipmi);
}

#[test]
fn redfish_powered_off_vm_is_installed_and_booted_from_disk_with_no_other_action() {
    powered_provision(Protocol::Redfish);
}

/// Wake-on-LAN from bmcd inside the lab: a magic packet for each of the machine's MACs
/// reaches a listener on the lab's bridge (the directed broadcast of its subnet); what WoL
/// cannot do (off) is refused as such.
#[test]
fn wake_on_lan_sends_a_magic_packet_for_each_mac_on_the_lab_network() {
    let Some((lab, stack, _events)) = full_lab() else {
        return;
    };
    let base = stack.apid.clone().unwrap();
    let macs = ["52:54:00:99:0c:01", "52:54:00:99:0c:02"];
    let listener = lab.in_namespace(|| std::net::UdpSocket::bind("0.0.0.0:9").unwrap());
    listener
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let op = Operator::login(&lab, &base);
    let (status, m) = op.call(
        "POST",
        "/api/machines/register",
        Some(json!({ "macs": macs })),
    );
    assert_eq!(status, 201, "{m:#}");
    let id = m["id"].as_str().unwrap().to_owned();
    let (status, b) = op.call(
        "PUT",
        &format!("/api/machines/{id}/bmc"),
        Some(json!({"type": "wol", "address": "10.99.0.255"})),
    );
    assert_eq!(status, 200, "{b:#}");
    let reply = power(&op, &id, "on");
    assert_eq!(reply["ok"], true, "{reply:#}");
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    while seen.len() < macs.len() {
        let (n, from) = listener
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("{e}: got {seen:?}\n{}", lab.logs()));
        let packet = &buf[..n];
        assert_eq!(n, 102, "a magic packet is 102 bytes, from {from}");
        assert_eq!(&packet[..6], &[0xff; 6]);
        let mac: Vec<u8> = packet[6..12].to_vec();
        assert!(
            packet[6..].chunks(6).all(|c| c == mac.as_slice()),
            "sixteen copies of one MAC"
        );
        seen.push(
            mac.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":"),
        );
    }
    seen.sort();
    assert_eq!(seen, macs);
    let (status, reply) = op.call(
        "POST",
        &format!("/api/machines/{id}/power"),
        Some(json!({"action": "off"})),
    );
    assert_eq!(status, 409, "{reply:#}");
    assert_eq!(reply["failure"], "unsupported", "{reply:#}");
}
