//! The harness against the lab's reference servers (dnsmasq + busybox httpd): when these
//! fail, the harness or the host is broken, not a Dragonfly daemon.

use dragonfly_integration::{Firmware, Lab, Nic, NicRom, VmConfig, test_image};

use crate::common::{boot_and_check, require_vm_tools, standin_dnsmasq, standin_http};

#[test]
fn standin_bios_virtio_ipxe_rom_boots_the_test_image() {
    if !require_vm_tools() {
        return;
    }
    let image = test_image();
    let mut lab = Lab::new();
    let mac = "52:54:00:99:00:10";
    standin_dnsmasq(&mut lab, false);
    standin_http(&mut lab, &image, mac, "standin");
    let report = boot_and_check(
        &mut lab,
        VmConfig::new(Firmware::Bios, Nic::VirtioNet, NicRom::Ipxe, mac),
    );
    assert_eq!(report.mode, "standin");
}
