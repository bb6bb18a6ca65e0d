//! The follower: a reconcile at start, after every reconnect and on its period; events
//! between them.

use std::time::Duration;

use dragonfly_bus::events::MachineRegistered;
use dragonfly_bus::{Change, ConnectionState, Follower, ReconcileReason};
use dragonfly_testkit::require_nats_servers;

use crate::{WAIT, connect, registered, start, wait_state};

async fn next_change(follower: &mut Follower<MachineRegistered>) -> Change<MachineRegistered> {
    tokio::time::timeout(WAIT, follower.next())
        .await
        .expect("a change within WAIT")
        .expect("the follower goes on")
}

fn reason(change: &Change<MachineRegistered>) -> Option<ReconcileReason> {
    match change {
        Change::Reconcile(r) => Some(*r),
        Change::Event(_) => None,
    }
}

#[tokio::test]
async fn reconciles_at_start_and_after_a_reconnect_and_delivers_events_between() {
    for binary in require_nats_servers() {
        let mut server = start(&binary).await;
        let bus = connect(&server, "follower").await;
        wait_state(&bus, ConnectionState::Connected).await;
        let publisher = connect(&server, "publisher").await;
        let mut follower = Follower::<MachineRegistered>::new(&bus, None)
            .await
            .expect("follow");

        let first = next_change(&mut follower).await;
        assert_eq!(reason(&first), Some(ReconcileReason::Start));
        // Once the start reconcile is yielded the subscription is in place: nothing published
        // from now on can be missed.
        publisher.publish(&registered("a")).await.expect("publish");
        match next_change(&mut follower).await {
            Change::Event(e) => assert_eq!(e.data.name, "a"),
            other => panic!("expected the event, got {other:?}"),
        }

        server.kill();
        wait_state(&bus, ConnectionState::Disconnected).await;
        server.restart().await.expect("restart on the same port");
        let change = next_change(&mut follower).await;
        assert_eq!(
            reason(&change),
            Some(ReconcileReason::Reconnected),
            "a reconnect asks for a reconcile: events may have been missed"
        );
        wait_state(&publisher, ConnectionState::Connected).await;
        publisher.publish(&registered("b")).await.expect("publish");
        match next_change(&mut follower).await {
            Change::Event(e) => assert_eq!(e.data.name, "b"),
            other => panic!("expected the event after the reconnect, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_period_asks_for_reconciles_even_when_nothing_happens() {
    for binary in require_nats_servers() {
        let server = start(&binary).await;
        let bus = connect(&server, "follower").await;
        let mut follower =
            Follower::<MachineRegistered>::new(&bus, Some(Duration::from_millis(300)))
                .await
                .expect("follow");
        assert_eq!(
            reason(&next_change(&mut follower).await),
            Some(ReconcileReason::Start)
        );
        let mut periods = 0;
        while periods < 2 {
            match reason(&next_change(&mut follower).await) {
                Some(ReconcileReason::Period) => periods += 1,
                Some(ReconcileReason::Reconnected) => {} // the first connect may land here
                other => panic!("unexpected {other:?}"),
            }
        }
        drop(server);
    }
}

#[tokio::test]
async fn all_events_come_undecoded_as_received_and_requests_are_skipped() {
    use dragonfly_bus::AllEvents;
    use dragonfly_bus::events::PowerChanged;

    for binary in require_nats_servers() {
        let server = start(&binary).await;
        let bus = connect(&server, "relay").await;
        wait_state(&bus, ConnectionState::Connected).await;
        let publisher = connect(&server, "publisher").await;
        let raw = crate::raw_client(&server).await;
        let mut follower = Follower::<AllEvents>::new(&bus, None)
            .await
            .expect("follow");
        match tokio::time::timeout(WAIT, follower.next()).await.unwrap() {
            Some(Change::Reconcile(ReconcileReason::Start)) => {}
            other => panic!("expected the start reconcile, got {other:?}"),
        }
        // A power request shares the namespace: not followed (and so still answered "no
        // responders" when bmcd is down).
        raw.publish("dragonfly.power.status", "{\"machineId\":\"x\"}".into())
            .await
            .unwrap();
        crate::raw_flush(&raw).await;
        publisher.publish(&registered("a")).await.expect("publish");
        let machine = dragonfly_core::MachineId(uuid::Uuid::now_v7());
        publisher
            .publish(&PowerChanged {
                machine_id: machine,
                from: None,
                to: "on".into(),
            })
            .await
            .expect("publish");
        let mut got = Vec::new();
        while got.len() < 2 {
            match tokio::time::timeout(WAIT, follower.next()).await.unwrap() {
                Some(Change::Event(e)) => got.push(e),
                Some(Change::Reconcile(_)) => {}
                None => panic!("the follower ended"),
            }
        }
        assert_eq!(got[0].subject, "dragonfly.machine.registered");
        assert_eq!(got[0].envelope.ty, "computer.dragonfly.machine.registered");
        assert_eq!(got[0].envelope.data["name"], "a");
        let as_received: serde_json::Value = serde_json::from_str(&got[0].json).unwrap();
        assert_eq!(as_received["data"]["name"], "a");
        assert_eq!(got[1].subject, "dragonfly.power.changed");
        assert_eq!(got[1].envelope.subject, Some(machine.to_string()));
        // An event whose type is not its subject's is refused, not relayed.
        raw.publish("dragonfly.power.changed", got[0].json.clone().into())
            .await
            .unwrap();
        crate::raw_flush(&raw).await;
        publisher.publish(&registered("b")).await.expect("publish");
        match tokio::time::timeout(WAIT, follower.next()).await.unwrap() {
            Some(Change::Event(e)) => assert_eq!(e.envelope.data["name"], "b"),
            other => panic!("expected the next good event, got {other:?}"),
        }
    }
}
