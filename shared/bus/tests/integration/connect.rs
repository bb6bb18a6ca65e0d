use std::time::{Duration, Instant};

use dragonfly_bus::ConnectionState;
use dragonfly_bus::events::MachineRegistered;
use dragonfly_testkit::require_nats_servers;

use crate::{connect, next, registered, start, wait_state};

#[tokio::test]
async fn a_bus_started_before_nats_delivers_once_nats_is_up() {
    for binary in require_nats_servers() {
        let mut server = start(&binary).await;
        server.kill(); // keeps the port; nothing listens there now

        let started = Instant::now();
        let bus = connect(&server, "early").await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "connect must not wait for NATS: {:?}",
            started.elapsed()
        );
        assert_eq!(
            *bus.connection_events().borrow(),
            ConnectionState::Connecting
        );

        // Both wait in the client's buffer, in order.
        let mut events = bus
            .subscribe::<MachineRegistered>()
            .await
            .expect("subscribe while down");
        let data = registered("early-bird");
        bus.publish(&data).await.expect("publish while down");

        tokio::time::sleep(Duration::from_millis(300)).await;
        server.restart().await.expect("start nats-server");
        wait_state(&bus, ConnectionState::Connected).await;
        assert_eq!(next(&mut events).await.expect("well-formed").data, data);
    }
}

#[tokio::test]
async fn an_unparsable_url_is_a_connect_error() {
    let err =
        dragonfly_bus::Bus::connect(dragonfly_bus::ConnectOptions::new("nats://[::1", "x", None))
            .await
            .expect_err("bad URL");
    assert!(
        matches!(err, dragonfly_bus::BusError::Connect { .. }),
        "{err:?}"
    );
}
