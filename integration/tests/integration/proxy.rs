//! Proxy mode: another DHCP server (dnsmasq, addresses only: no boot file, no TFTP, no
//! option 175) owns the addresses on the same network; Dragonfly's dhcpd answers only the
//! PXE part (ProxyDHCP on 67 and 4011) for machines it knows (`proxy`), or for every PXE
//! client (`autoproxy`, so that unknown machines boot into discovery).

use dragonfly_integration::{DhcpdConfig, Firmware, Lab, Nic, NicRom, VmConfig, test_image};

use crate::common::{boot_and_check, require_vm_tools, start_dragonfly};

/// Boots one VM with dnsmasq handing out addresses and dhcpd in `mode`; registers the
/// machine first when `register`.
fn boot(firmware: Firmware, nic: Nic, rom: NicRom, mac: &str, mode: &str, register: bool) {
    if !require_vm_tools() || dragonfly_testkit::require_nats_servers().is_empty() {
        return;
    }
    let image = test_image();
    let mut lab = Lab::new();
    let mut args: Vec<String> = [
        "--dhcp-range=10.99.0.100,10.99.0.200,255.255.255.0,1h",
        "--dhcp-authoritative",
        "--no-ping",
        "--log-dhcp",
    ]
    .map(String::from)
    .to_vec();
    args.extend(Lab::ra_options());
    lab.dnsmasq("dnsmasq", &args);
    lab.wait_for_log("dnsmasq", "started", std::time::Duration::from_secs(5));
    // Proxy mode answers only machines it knows.
    if register {
        lab.register_machine(mac);
    }
    start_dragonfly(&mut lab, &image, DhcpdConfig::lab(mode));
    boot_and_check(&mut lab, VmConfig::new(firmware, nic, rom, mac));
}

/// SeaBIOS + virtio-net, iPXE ROM: addresses from dnsmasq, the boot URL from dhcpd's
/// ProxyDHCP offer, then ipxed.
#[test]
fn proxy_bios_virtio_ipxe_rom_known_machine() {
    boot(
        Firmware::Bios,
        Nic::VirtioNet,
        NicRom::Ipxe,
        "52:54:00:99:02:10",
        "proxy",
        true,
    );
}

/// OVMF's own PXE client: address from dnsmasq, boot file from dhcpd's ProxyDHCP (port 4011
/// when the client asks there), TFTP `ipxe.efi` from tftpd, then iPXE → ProxyDHCP → ipxed.
#[test]
fn proxy_uefi_virtio_ovmf_pxe_known_machine() {
    boot(
        Firmware::Uefi,
        Nic::VirtioNet,
        NicRom::None,
        "52:54:00:99:02:30",
        "proxy",
        true,
    );
}

/// Autoproxy: a machine the store has never seen still gets the boot URL (discovery).
#[test]
fn autoproxy_bios_virtio_ipxe_rom_unknown_machine() {
    boot(
        Firmware::Bios,
        Nic::VirtioNet,
        NicRom::Ipxe,
        "52:54:00:99:02:50",
        "autoproxy",
        false,
    );
}
