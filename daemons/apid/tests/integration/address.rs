//! Reserved addresses over HTTP: checked against what dhcpd published, 422 for an address
//! that cannot be right and 409 for one that is taken, each with its reason, and
//! `dragonfly.reservation.changed` published on a real `nats-server` for dhcpd.

use std::net::Ipv4Addr;
use std::time::Duration;

use dragonfly_bus::{Bus, ConnectionState};
use dragonfly_core::MacAddr;
use dragonfly_store::leases::LeaseWrite;
use dragonfly_store::reservations::PublishedSubnet;
use dragonfly_store::testing::NewMachine;
use dragonfly_testkit::{NatsServer, require_nats_servers};
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{Server, config, mac};

async fn send(
    s: &Server,
    cookie: &str,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    let mut r = s.http.request(method, s.url(path)).header("cookie", cookie);
    if let Some(b) = body {
        r = r.json(b);
    }
    let r = r.send().await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

#[tokio::test]
async fn addresses_are_reserved_checked_and_announced() {
    let Some(binary) = require_nats_servers().into_iter().next() else {
        return;
    };
    let nats = NatsServer::start_with(&binary.path).await.unwrap();
    let bus = Bus::connect(dragonfly_bus::ConnectOptions::new(nats.url(), "apid", None))
        .await
        .unwrap();
    let mut state = bus.connection_events();
    tokio::time::timeout(
        Duration::from_secs(10),
        state.wait_for(|s| *s == ConnectionState::Connected),
    )
    .await
    .unwrap()
    .unwrap();
    let watcher = async_nats::connect(nats.url()).await.unwrap();
    let mut hints = watcher
        .subscribe("dragonfly.reservation.changed")
        .await
        .unwrap();
    watcher.flush().await.unwrap();
    let s = Server::start_with_bus(config(|_| {}), Some(bus)).await;
    let cookie = s.admin_cookie().await;
    let a = s.store.machine(NewMachine::with_mac(mac(1))).await;
    let b = s.store.machine(NewMachine::with_mac(mac(2))).await;
    let two: [MacAddr; 2] = [mac(3), mac(4)];
    let c = s.store.machine(NewMachine::with_macs(two)).await;
    let path = |m: &dragonfly_core::Machine| format!("/api/machines/{}/address", m.name);

    // Before dhcpd has published what it serves, nothing can be checked.
    let (st, body) = send(
        &s,
        &cookie,
        Method::PUT,
        &path(&a),
        Some(&json!({"ip": "10.9.0.20"})),
    )
    .await;
    assert_eq!(st, 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("has not published"),
        "{body}"
    );

    s.db.reservations()
        .publish(
            "reservation",
            vec![PublishedSubnet {
                network: ip("10.9.0.0"),
                prefix: 24,
                pool: Some((ip("10.9.0.100"), ip("10.9.0.199"))),
                router: Some(ip("10.9.0.1")),
                dns: vec![],
                domain_name: None,
            }],
            vec![(mac(9), ip("10.9.0.10"))],
            jiff::Timestamp::now(),
        )
        .await
        .unwrap();
    let now = jiff::Timestamp::now();
    s.db.leases()
        .commit(
            vec![LeaseWrite::Bind {
                ip: ip("10.9.0.150"),
                mac: mac(8),
                reserved: false,
                expires_at: now + jiff::SignedDuration::from_secs(3600),
            }],
            now,
        )
        .await
        .unwrap();

    for (body, status, says) in [
        (json!({"ip": "10.9.0.300"}), 422, "not an IPv4 address"),
        (json!({"ip": "192.0.2.5"}), 422, "in no subnet dhcpd serves"),
        (json!({"ip": "10.9.0.255"}), 422, "broadcast address"),
        (json!({"ip": "10.9.0.1"}), 422, "router"),
        (
            json!({"ip": "10.9.0.20", "mac": "52:54:00:00:00:ee"}),
            422,
            "not a MAC address of this machine",
        ),
        (json!({"ip": "10.9.0.20", "colour": "red"}), 422, "colour"),
        (
            json!({"ip": "10.9.0.10"}),
            409,
            "configuration file reserves 10.9.0.10",
        ),
        (json!({"ip": "10.9.0.150"}), 409, "leased to"),
    ] {
        let (st, got) = send(&s, &cookie, Method::PUT, &path(&a), Some(&body)).await;
        assert_eq!(st.as_u16(), status, "{body}: {got}");
        let msg = got["message"].as_str().unwrap_or_default();
        assert!(msg.contains(says), "{body}: {got}");
    }
    let (st, got) = send(
        &s,
        &cookie,
        Method::PUT,
        &path(&c),
        Some(&json!({"ip": "10.9.0.30"})),
    )
    .await;
    assert_eq!(st, 422, "{got}");
    assert!(
        got["message"].as_str().unwrap().contains("2 MAC addresses"),
        "{got}"
    );

    let (st, got) = send(
        &s,
        &cookie,
        Method::PUT,
        &path(&a),
        Some(&json!({"ip": "10.9.0.20", "resourceVersion": 0})),
    )
    .await;
    assert_eq!(st, 200, "{got}");
    assert_eq!(got["ip"], "10.9.0.20");
    assert_eq!(got["mac"], mac(1).to_string());
    assert_eq!(got["resourceVersion"], 1);
    let hint = tokio::time::timeout(Duration::from_secs(5), hints.next())
        .await
        .expect("a hint")
        .unwrap();
    let event: Value = serde_json::from_slice(&hint.payload).unwrap();
    assert_eq!(event["data"]["machineId"], a.id.0.to_string());
    assert_eq!(event["data"]["ip"], "10.9.0.20");

    // Taken by another machine: 409 naming it; a stale version: 409.
    let (st, got) = send(
        &s,
        &cookie,
        Method::PUT,
        &path(&b),
        Some(&json!({"ip": "10.9.0.20"})),
    )
    .await;
    assert_eq!(st, 409, "{got}");
    assert!(got["message"].as_str().unwrap().contains(&a.name), "{got}");
    let (st, got) = send(
        &s,
        &cookie,
        Method::PUT,
        &path(&a),
        Some(&json!({"ip": "10.9.0.21", "resourceVersion": 0})),
    )
    .await;
    assert_eq!(st, 409, "{got}");
    let (st, got) = send(
        &s,
        &cookie,
        Method::PUT,
        &path(&c),
        Some(&json!({"ip": "10.9.0.31", "mac": mac(4).to_string()})),
    )
    .await;
    assert_eq!(st, 200, "{got}");

    let (st, got) = send(&s, &cookie, Method::GET, &path(&a), None).await;
    assert_eq!((st.as_u16(), got["ip"].as_str()), (200, Some("10.9.0.20")));
    let (_, got) = send(
        &s,
        &cookie,
        Method::GET,
        &format!("/api/machines/{}", a.name),
        None,
    )
    .await;
    assert_eq!(got["reservedIp"], "10.9.0.20", "{got}");
    let (st, _) = send(&s, &cookie, Method::DELETE, &path(&a), None).await;
    assert_eq!(st, 204);
    let released = loop {
        let m = tokio::time::timeout(Duration::from_secs(5), hints.next())
            .await
            .expect("a hint")
            .unwrap();
        let e: Value = serde_json::from_slice(&m.payload).unwrap();
        if e["data"]["machineId"] == a.id.0.to_string() {
            break e;
        }
    };
    assert!(released["data"].get("ip").is_none(), "{released}");
    let (st, got) = send(&s, &cookie, Method::GET, &path(&a), None).await;
    assert_eq!(st, 404, "{got}");
    // Released: the other machine may have it now.
    let (st, got) = send(
        &s,
        &cookie,
        Method::PUT,
        &path(&b),
        Some(&json!({"ip": "10.9.0.20"})),
    )
    .await;
    assert_eq!(st, 200, "{got}");
    // Without a session: 401.
    let r = s.http.get(s.url(&path(&b))).send().await.unwrap();
    assert_eq!(r.status(), 401);
}
