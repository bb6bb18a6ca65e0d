//! Wake-on-LAN: power on by a magic packet, for machines without a reachable BMC.
//!
//! A NIC armed for WoL powers its machine on when it sees a frame that holds six `0xFF` bytes
//! followed by its MAC sixteen times, anywhere in the payload. We send that as a UDP datagram
//! (port 9, "discard", by convention) to the broadcast address or to a directed broadcast
//! (e.g. `10.0.5.255:9`) that a router forwards to the machine's segment. UDP needs no raw
//! socket and so no capability; `SO_BROADCAST` is all it takes.
//!
//! WoL can only wake: it cannot power off, reset, read the state or choose the boot device,
//! and says so with [`BmcError::Unsupported`] rather than pretending. Nor can it confirm
//! anything — a sent packet is all there is to report.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use dragonfly_core::MacAddr;
use tokio::net::UdpSocket;

use crate::{BmcError, BootTarget, Operation, PowerAction, PowerDriver, PowerState};

/// The length of a magic packet: 6 bytes of `0xFF`, then 16 × 6 bytes of MAC.
pub const MAGIC_PACKET_LEN: usize = 6 + 16 * 6;

/// The magic packet that wakes the NIC with address `mac`.
pub fn magic_packet(mac: MacAddr) -> [u8; MAGIC_PACKET_LEN] {
    let mut packet = [0xFF; MAGIC_PACKET_LEN];
    for copy in packet[6..].chunks_exact_mut(6) {
        copy.copy_from_slice(&mac.octets());
    }
    packet
}

/// Where and how to send one machine's magic packets.
#[derive(Debug, Clone)]
pub struct WolConfig {
    /// Every MAC of the machine: which NIC has WoL armed is rarely known, so each gets one.
    pub macs: Vec<MacAddr>,
    /// Where the datagrams go: 255.255.255.255:9 (the local segment) by default, or a
    /// directed broadcast.
    pub target: SocketAddr,
    /// The local address to send from: chooses the interface when the host has several.
    pub bind: SocketAddr,
    /// The most sending may take.
    pub timeout: Duration,
}

impl WolConfig {
    /// Broadcast to 255.255.255.255:9 from any local address, with a 5 s timeout.
    pub fn new(macs: Vec<MacAddr>) -> Self {
        Self {
            macs,
            target: SocketAddrV4::new(Ipv4Addr::BROADCAST, 9).into(),
            bind: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0).into(),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Why a [`WolConfig`] cannot make a driver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WolConfigError {
    #[error("Wake-on-LAN needs at least one MAC address")]
    NoMacs,
}

/// The Wake-on-LAN driver for one machine.
#[derive(Debug, Clone)]
pub struct WolDriver {
    config: WolConfig,
}

impl WolDriver {
    pub fn new(config: WolConfig) -> Result<Self, WolConfigError> {
        if config.macs.is_empty() {
            return Err(WolConfigError::NoMacs);
        }
        Ok(Self { config })
    }

    async fn send_all(&self) -> Result<(), BmcError> {
        let local = |what: String| move |source| BmcError::Local { what, source };
        let socket = UdpSocket::bind(self.config.bind)
            .await
            .map_err(local(format!("binding {}", self.config.bind)))?;
        socket
            .set_broadcast(true)
            .map_err(local("setting SO_BROADCAST".to_owned()))?;
        for mac in &self.config.macs {
            let packet = magic_packet(*mac);
            socket
                .send_to(&packet, self.config.target)
                .await
                .map_err(|source| BmcError::Unreachable {
                    detail: format!(
                        "sending the magic packet for {mac} to {}: {source}",
                        self.config.target
                    ),
                })?;
        }
        Ok(())
    }

    fn unsupported(&self, operation: Operation) -> BmcError {
        BmcError::Unsupported {
            driver: self.kind(),
            operation,
        }
    }
}

impl PowerDriver for WolDriver {
    fn kind(&self) -> &'static str {
        "wol"
    }

    async fn power(&self, action: PowerAction) -> Result<(), BmcError> {
        if action != PowerAction::On {
            return Err(self.unsupported(Operation::Power(action)));
        }
        tokio::time::timeout(self.config.timeout, self.send_all())
            .await
            .unwrap_or(Err(BmcError::TimedOut {
                after: self.config.timeout,
            }))
    }

    async fn status(&self) -> Result<PowerState, BmcError> {
        Err(self.unsupported(Operation::Status))
    }

    async fn set_boot(&self, _target: BootTarget) -> Result<(), BmcError> {
        Err(self.unsupported(Operation::SetBoot))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn magic_packet_is_six_ff_then_sixteen_macs(octets in any::<[u8; 6]>()) {
            let packet = magic_packet(MacAddr::new(octets));
            prop_assert_eq!(packet.len(), 102);
            prop_assert_eq!(&packet[..6], &[0xFF; 6]);
            let copies: Vec<&[u8]> = packet[6..].chunks(6).collect();
            prop_assert_eq!(copies.len(), 16);
            for copy in copies {
                prop_assert_eq!(copy, &octets[..]);
            }
        }
    }

    #[test]
    fn magic_packet_for_a_known_mac() {
        let mac: MacAddr = "52:54:00:12:34:56".parse().unwrap();
        let packet = magic_packet(mac);
        assert_eq!(
            &packet[..12],
            &[
                0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x52, 0x54, 0, 0x12, 0x34, 0x56
            ]
        );
        assert_eq!(&packet[96..], &[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    }

    #[test]
    fn no_macs_is_refused() {
        assert_eq!(
            WolDriver::new(WolConfig::new(Vec::new())).unwrap_err(),
            WolConfigError::NoMacs
        );
    }

    #[tokio::test]
    async fn everything_but_power_on_is_unsupported() {
        let mac: MacAddr = "52:54:00:12:34:56".parse().unwrap();
        let driver = WolDriver::new(WolConfig::new(vec![mac])).unwrap();
        for action in [
            PowerAction::OffSoft,
            PowerAction::OffHard,
            PowerAction::Cycle,
            PowerAction::Reset,
        ] {
            assert!(matches!(
                driver.power(action).await,
                Err(BmcError::Unsupported { driver: "wol", operation: Operation::Power(a) }) if a == action
            ));
        }
        assert!(matches!(
            driver.status().await,
            Err(BmcError::Unsupported {
                operation: Operation::Status,
                ..
            })
        ));
        let target = BootTarget {
            device: crate::BootDevice::Pxe,
            persistence: crate::BootPersistence::Once,
            mode: crate::BootMode::Uefi,
        };
        assert!(matches!(
            driver.set_boot(target).await,
            Err(BmcError::Unsupported {
                operation: Operation::SetBoot,
                ..
            })
        ));
    }
}
