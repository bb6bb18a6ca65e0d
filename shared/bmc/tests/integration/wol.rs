//! Wake-on-LAN: the datagrams a listener on loopback receives.

use std::time::Duration;

use dragonfly_bmc::wol::{WolConfig, WolDriver, magic_packet};
use dragonfly_bmc::{PowerAction, PowerDriver};
use dragonfly_core::MacAddr;
use tokio::net::UdpSocket;

#[tokio::test]
async fn one_magic_packet_per_mac_reaches_the_listener() {
    let listener = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let macs: Vec<MacAddr> = ["52:54:00:12:34:56", "0c:c4:7a:aa:bb:01"]
        .iter()
        .map(|m| m.parse().unwrap())
        .collect();
    let mut config = WolConfig::new(macs.clone());
    config.target = listener.local_addr().unwrap();
    WolDriver::new(config)
        .unwrap()
        .power(PowerAction::On)
        .await
        .unwrap();

    let mut buf = [0u8; 1500];
    for mac in &macs {
        let (len, _) = tokio::time::timeout(Duration::from_secs(5), listener.recv_from(&mut buf))
            .await
            .expect("a magic packet within 5 s")
            .unwrap();
        assert_eq!(len, 102);
        assert_eq!(buf[..len], magic_packet(*mac), "packet for {mac}");
    }
    // Exactly one per MAC: nothing more arrives.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), listener.recv_from(&mut buf))
            .await
            .is_err(),
        "an extra datagram arrived"
    );
}

#[test]
fn the_default_target_is_the_local_broadcast_discard_port() {
    let config = WolConfig::new(vec!["52:54:00:12:34:56".parse().unwrap()]);
    assert_eq!(config.target, "255.255.255.255:9".parse().unwrap());
}
