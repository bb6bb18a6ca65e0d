//! The bounded publisher: events arrive, a missing NATS never blocks the caller, and closing
//! is bounded whatever NATS does.

use std::time::{Duration, Instant};

use dragonfly_bus::events::MachineRegistered;
use dragonfly_bus::{ConnectionState, Publisher};
use dragonfly_testkit::require_nats_servers;

use crate::{connect, next, registered, start, wait_state};

#[tokio::test]
async fn published_events_arrive_in_order() {
    for binary in require_nats_servers() {
        let server = start(&binary).await;
        let listener = connect(&server, "listener").await;
        let mut events = listener
            .subscribe::<MachineRegistered>()
            .await
            .expect("subscribe");
        listener.flush().await.expect("flush");
        let bus = connect(&server, "publisher").await;
        let (publisher, task) = Publisher::start(&bus, 16);
        for i in 0..10 {
            publisher.publish(&registered(&format!("m{i}")));
        }
        for i in 0..10 {
            assert_eq!(
                next(&mut events).await.expect("well-formed").data.name,
                format!("m{i}")
            );
        }
        task.close(Duration::from_secs(1)).await;
        assert_eq!(publisher.stats().expect("has a bus").published(), 10);
        assert_eq!(publisher.stats().expect("has a bus").dropped(), 0);
    }
}

#[tokio::test]
async fn without_nats_publishing_never_blocks_and_closing_is_bounded() {
    for binary in require_nats_servers() {
        let mut server = start(&binary).await;
        server.kill(); // Nothing listens on its port now.
        let bus = connect(&server, "lonely").await;
        let (publisher, task) = Publisher::start(&bus, 100);
        let started = Instant::now();
        for i in 0..1_000 {
            publisher.publish(&registered(&format!("m{i}")));
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "1 000 publishes took {:?}",
            started.elapsed()
        );
        let stats = publisher.stats().expect("has a bus");
        assert_eq!(
            stats.dropped(),
            900,
            "beyond the queue's 100, every event is dropped"
        );
        let closing = Instant::now();
        task.close(Duration::from_millis(200)).await;
        assert!(
            closing.elapsed() < Duration::from_secs(2),
            "close took {:?} with NATS away",
            closing.elapsed()
        );
        assert_eq!(
            stats.dropped(),
            1_000,
            "the queued 100 are given up at close"
        );
        assert_eq!(stats.published(), 0);
    }
}

#[tokio::test]
async fn events_queued_during_a_short_outage_are_sent_on_reconnect() {
    for binary in require_nats_servers() {
        let mut server = start(&binary).await;
        let bus = connect(&server, "publisher").await;
        wait_state(&bus, ConnectionState::Connected).await;
        let (publisher, task) = Publisher::start(&bus, 64);

        server.kill();
        wait_state(&bus, ConnectionState::Disconnected).await;
        for i in 0..5 {
            publisher.publish(&registered(&format!("queued{i}")));
        }
        server.restart().await.expect("restart on the same port");
        let listener = connect(&server, "listener").await;
        let mut events = listener
            .subscribe::<MachineRegistered>()
            .await
            .expect("subscribe");
        listener.flush().await.expect("flush");
        // The publisher may already have sent some before the listener subscribed: publish a
        // marker and check that whatever arrives comes in order and ends with it.
        wait_state(&bus, ConnectionState::Connected).await;
        publisher.publish(&registered("marker"));
        let mut seen = Vec::new();
        loop {
            let name = next(&mut events).await.expect("well-formed").data.name;
            if name == "marker" {
                break;
            }
            seen.push(name);
        }
        let expected: Vec<String> = (5 - seen.len()..5).map(|i| format!("queued{i}")).collect();
        assert_eq!(seen, expected);
        task.close(Duration::from_secs(1)).await;
        assert_eq!(publisher.stats().expect("has a bus").dropped(), 0);
        assert_eq!(publisher.stats().expect("has a bus").published(), 6);
    }
}
