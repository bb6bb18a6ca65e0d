use dragonfly_bus::events::MachineRegistered;
use dragonfly_bus::{BusError, DecodeError, Event};
use dragonfly_testkit::require_nats_servers;
use serde_json::json;

use crate::{connect, next, raw_client, raw_flush, registered, start};

#[tokio::test]
async fn malformed_messages_yield_errors_and_the_stream_goes_on() {
    for binary in require_nats_servers() {
        let server = start(&binary).await;
        let bus = connect(&server, "subscriber").await;
        let mut events = bus
            .subscribe::<MachineRegistered>()
            .await
            .expect("subscribe");
        bus.flush().await.expect("flush");

        let good = registered("good");
        let envelope = |specversion: &str, ty: &str| {
            json!({
                "specversion": specversion,
                "id": "1",
                "source": "/elsewhere",
                "type": ty,
                "time": "2025-01-01T00:00:00Z",
                "data": good,
            })
            .to_string()
        };
        let raw = raw_client(&server).await;
        for payload in [
            "not json at all".to_owned(),
            envelope("0.3", MachineRegistered::TYPE),
            envelope("1.0", "computer.dragonfly.machine.deleted"),
            json!({"specversion": "1.0", "data": 1}).to_string(),
        ] {
            raw.publish(MachineRegistered::SUBJECT, payload.into())
                .await
                .expect("raw publish");
        }
        raw_flush(&raw).await;
        bus.publish(&good).await.expect("publish");

        let decode_error = |item| match item {
            Err(BusError::Decode { subject, source }) => {
                assert_eq!(subject, MachineRegistered::SUBJECT);
                source
            }
            other => panic!("expected a decode error, got {other:?}"),
        };
        assert!(matches!(
            decode_error(next(&mut events).await),
            DecodeError::Json(_)
        ));
        assert!(matches!(
            decode_error(next(&mut events).await),
            DecodeError::SpecVersion { found: Some(v) } if v == "0.3"
        ));
        assert!(matches!(
            decode_error(next(&mut events).await),
            DecodeError::WrongType { found, .. } if found == "computer.dragonfly.machine.deleted"
        ));
        assert!(matches!(
            decode_error(next(&mut events).await),
            DecodeError::Json(_)
        ));
        assert_eq!(next(&mut events).await.expect("the good event").data, good);
    }
}
