//! Reservation mode: Dragonfly's dhcpd hands out the addresses itself.

use dragonfly_integration::{DhcpdConfig, Firmware, Lab, Nic, NicRom, VmConfig, test_image};

use crate::common::{boot_and_check, require_vm_tools, start_dragonfly};

fn boot(firmware: Firmware, nic: Nic, rom: NicRom, mac: &str) {
    if !require_vm_tools() || dragonfly_testkit::require_nats_servers().is_empty() {
        return;
    }
    let image = test_image();
    let mut lab = Lab::new();
    lab.answer_router_solicitations();
    start_dragonfly(&mut lab, &image, DhcpdConfig::lab("reservation"));
    boot_and_check(&mut lab, VmConfig::new(firmware, nic, rom, mac));
}

/// SeaBIOS + virtio-net: QEMU's NIC ROM is iPXE, so dhcpd → HTTP `/boot/{mac}` directly.
#[test]
fn reservation_bios_virtio_ipxe_rom() {
    boot(
        Firmware::Bios,
        Nic::VirtioNet,
        NicRom::Ipxe,
        "52:54:00:99:01:10",
    );
}

/// OVMF + virtio-net with no NIC ROM: OVMF's own PXE client → dhcpd → TFTP `ipxe.efi` from
/// tftpd → iPXE → dhcpd again → HTTP `/boot/{mac}` from ipxed.
#[test]
fn reservation_uefi_virtio_ovmf_pxe_tftp_ipxe_efi() {
    boot(
        Firmware::Uefi,
        Nic::VirtioNet,
        NicRom::None,
        "52:54:00:99:01:30",
    );
}

/// SeaBIOS + e1000, QEMU's iPXE ROM: dhcpd → HTTP directly. This does NOT exercise TFTP
/// `undionly.kpxe`: every BIOS PXE client QEMU has is iPXE (lab pitfall 4), and dhcpd rightly
/// sends iPXE straight to HTTP; the TFTP leg is covered by the UEFI case.
#[test]
fn reservation_bios_e1000_ipxe_rom() {
    boot(
        Firmware::Bios,
        Nic::E1000,
        NicRom::Ipxe,
        "52:54:00:99:01:20",
    );
}
