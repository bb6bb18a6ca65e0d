//! BMCs and power over HTTP: the password sealed to bmcd's key and never shown, validation,
//! and power commands answered by a fake bmcd on a real `nats-server`.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use dragonfly_bmc::seal::OpeningKey;
use dragonfly_bus::power::{PowerFailure, PowerOff, PowerOn, PowerReply, PowerStatus};
use dragonfly_bus::{Bus, ConnectionState};
use dragonfly_core::{Machine, MachineId};
use dragonfly_store::bmc::{PowerState, Reading};
use dragonfly_store::testing::NewMachine;
use dragonfly_testkit::NatsServer;
use dragonfly_testkit::require_nats_servers;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::common::{Server, config, mac};

const PASSWORD: &str = "Calvin-7xQ!pw";

/// Everything apid logs in this test binary, at every level. Global rather than per test: a
/// thread-local subscriber misses the events of call sites another test's thread registered
/// first (tracing caches their interest), and every test's log is worth searching for the
/// password anyway (the power scenario uses the same one).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() -> Captured {
    static CAPTURED: OnceLock<Captured> = OnceLock::new();
    CAPTURED
        .get_or_init(|| {
            let captured = Captured::default();
            let writer = captured.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .finish();
            tracing::subscriber::set_global_default(subscriber)
                .expect("no other test sets a global subscriber");
            captured
        })
        .clone()
}

async fn send(
    s: &Server,
    cookie: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<&Value>,
) -> (StatusCode, String) {
    let mut r = s.http.request(method, s.url(path)).header("cookie", cookie);
    if let Some(b) = body {
        r = r.json(b);
    }
    let r = r.send().await.unwrap();
    let status = r.status();
    (status, r.text().await.unwrap())
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

async fn machine(s: &Server, n: u8) -> Machine {
    s.store.machine(NewMachine::with_mac(mac(n))).await
}

async fn publish_key(s: &Server) -> OpeningKey {
    let key = OpeningKey::from_credential(&[7; 32]).unwrap();
    let public = key.public_key();
    s.db.bmcs()
        .set_key(public.to_bytes(), public.id(), jiff::Timestamp::now())
        .await
        .unwrap();
    key
}

#[tokio::test]
async fn the_bmc_password_is_sealed_to_bmcds_key_and_never_shown() {
    let logs = capture_logs();
    let s = Server::start().await;
    let cookie = s.admin_cookie().await;
    let m = machine(&s, 1).await;
    let path = format!("/api/machines/{}/bmc", m.name);
    let body = json!({"type": "ipmi", "address": "10.0.0.5", "username": "admin",
        "password": PASSWORD});
    let mut seen = String::new();

    // No key published: nothing could open the password, so nothing is stored.
    let (st, text) = send(&s, &cookie, reqwest::Method::PUT, &path, Some(&body)).await;
    assert_eq!(st, 503, "{text}");
    assert!(
        text.contains("bmcd has not published its key yet: start dragonfly-bmcd"),
        "{text}"
    );
    seen += &text;
    let (st, text) = send(&s, &cookie, reqwest::Method::GET, &path, None).await;
    assert_eq!(st, 404, "{text}");
    assert_eq!(json_of(&text)["message"], "the machine has no BMC");

    let key = publish_key(&s).await;
    let (st, text) = send(&s, &cookie, reqwest::Method::PUT, &path, Some(&body)).await;
    assert_eq!(st, 200, "{text}");
    seen += &text;
    let v = json_of(&text);
    assert_eq!(v["passwordSet"], true);
    assert_eq!(v["type"], "ipmi");
    assert_eq!(v["bootMode"], "uefi");
    assert_eq!(v["source"], "operator");
    assert_eq!(v["resourceVersion"], 1);
    assert!(v.get("password").is_none(), "{v}");

    let (st, text) = send(&s, &cookie, reqwest::Method::GET, &path, None).await;
    assert_eq!(st, 200);
    seen += &text;
    let v = json_of(&text);
    assert_eq!(v["passwordSet"], true);
    assert_eq!(v["address"], "10.0.0.5");
    assert_eq!(v["powerState"], Value::Null);
    assert_eq!(v["lastRequests"], json!([]));

    // The stored secret is the password sealed to bmcd's key: only the opening key reads it.
    let (user, sealed) = s.db.bmcs().credentials(m.id).await.unwrap().unwrap();
    assert_eq!(user.as_deref(), Some("admin"));
    let sealed = sealed.unwrap();
    assert_eq!(sealed.key_id, key.public_key().id());
    assert!(!String::from_utf8_lossy(&sealed.sealed).contains(PASSWORD));
    assert_eq!(
        key.open(&sealed.sealed, &sealed.key_id).unwrap().expose(),
        PASSWORD
    );

    // Without a password the stored one is kept; a stale version is refused.
    let change = json!({"type": "ipmi", "address": "bmc-1.example", "port": 6230,
        "bootMode": "legacy", "resourceVersion": 1});
    let (st, text) = send(&s, &cookie, reqwest::Method::PUT, &path, Some(&change)).await;
    assert_eq!(st, 200, "{text}");
    let v = json_of(&text);
    assert_eq!(v["passwordSet"], true);
    assert_eq!(v["bootMode"], "legacy");
    assert_eq!(v["resourceVersion"], 2);
    let (st, text) = send(&s, &cookie, reqwest::Method::PUT, &path, Some(&change)).await;
    assert_eq!(st, 409, "{text}");
    seen += &text;
    let (_, still) = s.db.bmcs().credentials(m.id).await.unwrap().unwrap();
    assert_eq!(still.unwrap(), sealed, "the sealed password is unchanged");

    // Redfish over https with a pinned certificate: the pin is shown, normalised; the
    // password is kept.
    let pin = "9F:86:D0:81:88:4C:7D:65:9A:2F:EA:A0:C5:5A:D0:15:A3:BF:4F:1B:2B:0B:82:2C:D1:5D:6C:15:B0:F0:0A:08";
    let https = json!({"type": "redfish", "address": "https://10.0.0.5:8443",
        "username": "root", "tlsFingerprint": pin});
    let (st, text) = send(&s, &cookie, reqwest::Method::PUT, &path, Some(&https)).await;
    assert_eq!(st, 200, "{text}");
    let v = json_of(&text);
    assert_eq!(
        v["tlsFingerprint"],
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    );
    assert_eq!(v["tlsCa"], Value::Null);
    assert_eq!(v["passwordSet"], true);
    let stored = s.db.bmcs().get(m.id).await.unwrap().unwrap();
    assert_eq!(
        stored.spec.tls_fingerprint.as_deref(),
        v["tlsFingerprint"].as_str()
    );

    // A refused request with a password says why without repeating it.
    let bad = json!({"type": "ipmi", "address": "http://10.0.0.5", "password": PASSWORD});
    let (st, text) = send(&s, &cookie, reqwest::Method::PUT, &path, Some(&bad)).await;
    assert_eq!(st, 422);
    seen += &text;

    let (st, _) = send(&s, &cookie, reqwest::Method::DELETE, &path, None).await;
    assert_eq!(st, 204);
    let (st, _) = send(&s, &cookie, reqwest::Method::DELETE, &path, None).await;
    assert_eq!(st, 404);

    assert!(
        !seen.contains(PASSWORD),
        "a response holds the password: {seen}"
    );
    let logged = logs.text();
    assert!(
        logged.contains("BMC configured"),
        "apid's log lines are captured: {logged}"
    );
    assert!(
        !logged.contains(PASSWORD),
        "apid logged the password: {logged}"
    );
}

#[tokio::test]
async fn bad_bmc_and_power_requests_are_422_with_the_reason() {
    let s = Server::start().await;
    let cookie = s.admin_cookie().await;
    let m = machine(&s, 1).await;
    let path = format!("/api/machines/{}/bmc", m.id.0);
    for (body, says) in [
        (
            json!({"type": "redfish", "address": "10.0.0.5"}),
            "http:// or https://",
        ),
        (json!({"type": "ipmi"}), "IPMI needs the BMC's host name"),
        (
            json!({"type": "ipmi", "address": "h", "colour": "red"}),
            "colour",
        ),
        (
            json!({"type": "wol", "username": "x"}),
            "Wake-on-LAN has no username",
        ),
        (json!({"type": "ilo", "address": "h"}), "ilo"),
    ] {
        let (st, text) = send(&s, &cookie, reqwest::Method::PUT, &path, Some(&body)).await;
        assert_eq!(st, 422, "{body}: {text}");
        let msg = json_of(&text)["message"].as_str().unwrap().to_owned();
        assert!(msg.contains(says), "{body}: {msg}");
    }
    let power = format!("/api/machines/{}/power", m.name);
    let (st, text) = send(
        &s,
        &cookie,
        reqwest::Method::POST,
        &power,
        Some(&json!({"action": "explode"})),
    )
    .await;
    assert_eq!(st, 422, "{text}");
    assert!(
        text.contains("\\\"explode\\\" is not one of on, off"),
        "{text}"
    );
    let (st, text) = send(
        &s,
        &cookie,
        reqwest::Method::POST,
        "/api/power",
        Some(&json!({"selector": "", "action": "off"})),
    )
    .await;
    assert_eq!(st, 422, "{text}");
    assert!(text.contains("for every machine"), "{text}");
    // A valid command without a bus: 503, not a hang.
    let (st, text) = send(
        &s,
        &cookie,
        reqwest::Method::POST,
        &power,
        Some(&json!({"action": "status"})),
    )
    .await;
    assert_eq!(st, 503, "{text}");
}

async fn connect(nats: &NatsServer, daemon: &str) -> Bus {
    let bus = Bus::connect(dragonfly_bus::ConnectOptions::new(nats.url(), daemon, None))
        .await
        .unwrap();
    let mut state = bus.connection_events();
    tokio::time::timeout(
        Duration::from_secs(10),
        state.wait_for(|s| *s == ConnectionState::Connected),
    )
    .await
    .expect("connected to NATS")
    .unwrap();
    bus
}

fn answer(
    machine: MachineId,
    op: dragonfly_bus::power::PowerOp,
    failure: Option<PowerFailure>,
) -> PowerReply {
    PowerReply {
        machine_id: machine,
        op,
        ok: failure.is_none(),
        power_state: failure.is_none().then(|| "on".to_owned()),
        failure,
        message: match failure {
            None => "powered on".into(),
            Some(_) => "BMC at 10.0.0.6: connection refused".into(),
        },
        attempts: 3,
        elapsed_ms: 42,
    }
}

#[tokio::test]
async fn power_commands_go_to_bmcd_and_its_answer_sets_the_status() {
    for binary in require_nats_servers() {
        let nats = NatsServer::start_with(&binary.path).await.unwrap();
        power_scenario(&nats).await;
    }
}

async fn power_scenario(nats: &NatsServer) {
    let apid_bus = connect(nats, "apid").await;
    let bmcd = connect(nats, "bmcd").await;
    let s = Server::start_with_bus(
        config(|c| c.power_timeout = Some("1s".into())),
        Some(apid_bus),
    )
    .await;
    let cookie = s.admin_cookie().await;
    let good = machine(&s, 1).await;
    let bad = machine(&s, 2).await;
    let bare = machine(&s, 3).await;
    publish_key(&s).await;
    for (m, rack) in [(&good, "r1"), (&bad, "r1"), (&bare, "r2")] {
        let (st, text) = send(
            &s,
            &cookie,
            reqwest::Method::PATCH,
            &format!("/api/machines/{}", m.id.0),
            Some(&json!({"labels": {"rack": rack}})),
        )
        .await;
        assert_eq!(st, 200, "{text}");
    }
    for m in [&good, &bad] {
        let (st, text) = send(
            &s,
            &cookie,
            reqwest::Method::PUT,
            &format!("/api/machines/{}/bmc", m.id.0),
            Some(
                &json!({"type": "redfish", "address": "http://10.0.0.6", "username": "root",
                "password": PASSWORD}),
            ),
        )
        .await;
        assert_eq!(st, 200, "{text}");
    }
    let power = |m: &Machine| format!("/api/machines/{}/power", m.name);
    let post = |path: String, body: Value| {
        let s = &s;
        let cookie = &cookie;
        async move {
            let (st, text) = send(s, cookie, reqwest::Method::POST, &path, Some(&body)).await;
            (st, json_of(&text))
        }
    };

    // bmcd is not running: nothing answers.
    let (st, v) = post(power(&good), json!({"action": "on"})).await;
    assert_eq!(st, 503, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("bmcd is not running"),
        "{v}"
    );

    // A fake bmcd: `on` works for `good` and finds `bad`'s BMC unreachable; `off` times out at
    // the BMC; `status` never answers in time.
    let stop = CancellationToken::new();
    let bad_id = bad.id;
    bmcd.serve::<PowerOn, _, _>(stop.clone(), move |PowerOn(c)| async move {
        let failure = (c.machine_id == bad_id).then_some(PowerFailure::Unreachable);
        answer(c.machine_id, dragonfly_bus::power::PowerOp::On, failure)
    })
    .await
    .unwrap();
    bmcd.serve::<PowerOff, _, _>(stop.clone(), |PowerOff(c)| async move {
        answer(
            c.machine_id,
            dragonfly_bus::power::PowerOp::Off,
            Some(PowerFailure::TimedOut),
        )
    })
    .await
    .unwrap();
    bmcd.serve::<PowerStatus, _, _>(stop.clone(), |PowerStatus(c)| async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        answer(c.machine_id, dragonfly_bus::power::PowerOp::Status, None)
    })
    .await
    .unwrap();
    bmcd.flush().await.unwrap();

    let (st, v) = post(power(&good), json!({"action": "on"})).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["ok"], true);
    assert_eq!(v["powerState"], "on");
    assert_eq!(v["machineId"], good.id.0.to_string());
    let (st, v) = post(power(&bad), json!({"action": "on"})).await;
    assert_eq!(st, 502, "{v}");
    assert_eq!(v["failure"], "unreachable");
    assert_eq!(v["message"], "BMC at 10.0.0.6: connection refused");
    let (st, v) = post(power(&good), json!({"action": "off"})).await;
    assert_eq!(st, 504, "{v}");
    assert_eq!(v["failure"], "timed-out");
    // No BMC: apid answers for bmcd, nothing is sent.
    let (st, v) = post(power(&bare), json!({"action": "on"})).await;
    assert_eq!(st, 409, "{v}");
    assert_eq!(v["failure"], "no-bmc");
    assert_eq!(v["attempts"], 0);
    // bmcd took longer than [apid] power_timeout.
    let (st, v) = post(power(&good), json!({"action": "status"})).await;
    assert_eq!(st, 504, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("effect is unknown"),
        "{v}"
    );
    // No responder for this operation.
    let (st, _) = post(power(&good), json!({"action": "reset"})).await;
    assert_eq!(st, 503);

    // Bulk over a label: one machine ok, one failing, each with its own status.
    let (st, v) = post(
        "/api/power".into(),
        json!({"selector": "rack=r1", "action": "on"}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (v["succeeded"].as_u64(), v["failed"].as_u64()),
        (Some(1), Some(1)),
        "{v}"
    );
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 2, "{v}");
    for r in results {
        if r["machineId"] == good.id.0.to_string() {
            assert_eq!(
                (r["ok"].as_bool(), r["status"].as_u64()),
                (Some(true), Some(200)),
                "{r}"
            );
            assert_eq!(r["name"], good.name);
            assert_eq!(r["reply"]["powerState"], "on");
        } else {
            assert_eq!(r["machineId"], bad.id.0.to_string());
            assert_eq!(
                (r["ok"].as_bool(), r["status"].as_u64()),
                (Some(false), Some(502)),
                "{r}"
            );
            assert_eq!(r["reply"]["failure"], "unreachable");
        }
    }
    // `*` is every machine; the one without a BMC is 409 without bmcd being asked, and an
    // operation nobody serves is 503 per machine with an error instead of a reply.
    let (st, v) = post(
        "/api/power".into(),
        json!({"selector": "*", "action": "on"}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["results"].as_array().unwrap().len(), 3, "{v}");
    assert_eq!(
        (v["succeeded"].as_u64(), v["failed"].as_u64()),
        (Some(1), Some(2)),
        "{v}"
    );
    let (st, v) = post(
        "/api/power".into(),
        json!({"selector": "rack=r1", "action": "cycle"}),
    )
    .await;
    assert_eq!(st, 200, "{v}");
    for r in v["results"].as_array().unwrap() {
        assert_eq!(r["status"], 503, "{r}");
        assert!(
            r["error"].as_str().unwrap().contains("bmcd is not running"),
            "{r}"
        );
        assert!(r.get("reply").is_none(), "{r}");
    }
    stop.cancel();
}

#[tokio::test]
async fn machine_views_show_power_state_and_a_bmcs_condition() {
    let s = Server::start().await;
    let cookie = s.admin_cookie().await;
    let with = machine(&s, 11).await;
    let without = machine(&s, 12).await;
    publish_key(&s).await;
    let body = json!({"type": "ipmi", "address": "10.0.0.5", "username": "admin",
        "password": PASSWORD});
    let path = format!("/api/machines/{}/bmc", with.id.0);
    let (st, text) = send(&s, &cookie, reqwest::Method::PUT, &path, Some(&body)).await;
    assert_eq!(st, 200, "{text}");

    // Before bmcd's first reading: the type, no state, no condition.
    let one = format!("/api/machines/{}", with.id.0);
    let (st, text) = send(&s, &cookie, reqwest::Method::GET, &one, None).await;
    assert_eq!(st, 200, "{text}");
    let v = json_of(&text);
    assert_eq!(
        v["name"],
        with.name.as_str(),
        "the machine's own fields stay"
    );
    assert_eq!(v["power"]["type"], "ipmi");
    assert_eq!(v["power"]["state"], Value::Null);
    assert_eq!(v["power"]["condition"], Value::Null);

    // bmcd finds the BMC unreachable: the machine, listed, says so.
    let now = jiff::Timestamp::now();
    s.db.bmcs()
        .record(
            with.id,
            Reading::Failed("BMC unreachable: no answer from 10.0.0.5".into()),
            now,
        )
        .await
        .unwrap();
    let (st, text) = send(&s, &cookie, reqwest::Method::GET, "/api/machines", None).await;
    assert_eq!(st, 200, "{text}");
    let items = json_of(&text)["items"].as_array().unwrap().clone();
    let listed = |id: MachineId| {
        items
            .iter()
            .find(|m| m["id"] == id.0.to_string())
            .unwrap()
            .clone()
    };
    let v = listed(with.id);
    assert_eq!(
        v["power"]["condition"],
        "BMC unreachable: no answer from 10.0.0.5"
    );
    assert!(v["power"]["conditionSince"].is_string(), "{v}");
    assert!(
        listed(without.id).get("power").is_none(),
        "no BMC, no power field"
    );

    // It answers again: state on, condition gone.
    s.db.bmcs()
        .record(with.id, Reading::State(PowerState::On), now)
        .await
        .unwrap();
    let (_, text) = send(&s, &cookie, reqwest::Method::GET, &one, None).await;
    let v = json_of(&text);
    assert_eq!(v["power"]["state"], "on");
    assert_eq!(v["power"]["condition"], Value::Null);
}
