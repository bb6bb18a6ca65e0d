use std::time::Duration;

use dragonfly_bus::ConnectionState;
use dragonfly_bus::events::MachineRegistered;
use dragonfly_testkit::require_nats_servers;
use futures::StreamExt;

use crate::{WAIT, connect, registered, start, wait_state};

#[tokio::test]
async fn a_subscription_survives_a_server_restart() {
    for binary in require_nats_servers() {
        let mut server = start(&binary).await;
        let subscriber = connect(&server, "subscriber").await;
        let publisher = connect(&server, "publisher").await;
        let mut states = subscriber.connection_events();
        let mut events = subscriber
            .subscribe::<MachineRegistered>()
            .await
            .expect("subscribe");
        subscriber.flush().await.expect("flush");
        wait_state(&subscriber, ConnectionState::Connected).await;
        states.borrow_and_update();

        server.kill();
        wait_state(&subscriber, ConnectionState::Disconnected).await;
        server.restart().await.expect("restart on the same port");
        wait_state(&subscriber, ConnectionState::Connected).await;
        wait_state(&publisher, ConnectionState::Connected).await;
        assert!(
            states.has_changed().expect("sender alive"),
            "the reconnect is announced"
        );

        // The resubscription may reach the server a moment after the Connected event: publish
        // until one arrives. Anything published before the restart is gone (core NATS).
        let data = registered("after-restart");
        let received = tokio::time::timeout(WAIT, async {
            loop {
                publisher.publish(&data).await.expect("publish");
                if let Ok(Some(item)) =
                    tokio::time::timeout(Duration::from_millis(200), events.next()).await
                {
                    return item;
                }
            }
        })
        .await
        .expect("the old subscription received an event after the restart");
        assert_eq!(received.expect("well-formed").data, data);
    }
}
