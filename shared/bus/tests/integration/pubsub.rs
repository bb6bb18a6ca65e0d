use dragonfly_bus::events::{MachineDeleted, MachineRegistered};
use dragonfly_bus::{Event, JSON_CONTENT_TYPE, SpecVersion};
use dragonfly_testkit::require_nats_servers;
use futures::StreamExt;
use jiff::Timestamp;
use uuid::Uuid;

use crate::{WAIT, connect, next, raw_client, raw_flush, registered, start};

#[tokio::test]
async fn published_event_arrives_with_every_cloudevents_attribute() {
    for binary in require_nats_servers() {
        let server = start(&binary).await;
        let subscriber = connect(&server, "subscriber").await;
        let publisher = connect(&server, "publisher").await;
        let mut events = subscriber
            .subscribe::<MachineRegistered>()
            .await
            .expect("subscribe");
        let mut deleted = subscriber
            .subscribe::<MachineDeleted>()
            .await
            .expect("subscribe");
        let raw = raw_client(&server).await;
        let mut wire = raw
            .subscribe(MachineRegistered::SUBJECT)
            .await
            .expect("raw subscribe");
        raw_flush(&raw).await;
        subscriber
            .flush()
            .await
            .expect("flush: subscriptions are in place");

        let data = registered("rack1-node07");
        let before = Timestamp::now();
        publisher.publish(&data).await.expect("publish");
        let event = next(&mut events).await.expect("a well-formed event");
        let after = Timestamp::now();

        assert_eq!(event.specversion, SpecVersion::V1_0);
        let id: Uuid = event.id.parse().expect("id is a UUID");
        assert_eq!(id.get_version_num(), 7, "id is a UUID v7");
        assert_eq!(event.source, "/dragonfly/test/publisher");
        assert_eq!(event.ty, "computer.dragonfly.machine.registered");
        assert!(
            before <= event.time && event.time <= after,
            "{}",
            event.time
        );
        assert_eq!(event.subject, Some(data.machine_id.to_string()));
        assert_eq!(event.datacontenttype, JSON_CONTENT_TYPE);
        assert_eq!(event.data, data);

        // The same message on the wire: exactly the CloudEvents JSON attributes.
        let msg = tokio::time::timeout(WAIT, wire.next())
            .await
            .expect("raw message in time")
            .expect("raw subscription open");
        let json: serde_json::Value = serde_json::from_slice(&msg.payload).expect("JSON");
        let mut keys: Vec<&str> = json
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "data",
                "datacontenttype",
                "id",
                "source",
                "specversion",
                "subject",
                "time",
                "type"
            ]
        );
        assert_eq!(json["specversion"], "1.0");
        assert_eq!(json["id"], event.id.as_str());

        // Each event type has its own subject.
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(200), deleted.next())
                .await
                .is_err(),
            "a MachineRegistered must not arrive as MachineDeleted"
        );
    }
}

#[tokio::test]
async fn every_subscriber_gets_every_event_in_order() {
    for binary in require_nats_servers() {
        let server = start(&binary).await;
        let bus = connect(&server, "apid").await;
        let mut first = bus
            .subscribe::<MachineRegistered>()
            .await
            .expect("subscribe");
        let mut second = bus
            .subscribe::<MachineRegistered>()
            .await
            .expect("subscribe");
        let names = ["a", "b", "c"];
        for name in names {
            bus.publish(&registered(name)).await.expect("publish");
        }
        for sub in [&mut first, &mut second] {
            for name in names {
                assert_eq!(next(sub).await.expect("event").data.name, name);
            }
        }
    }
}
