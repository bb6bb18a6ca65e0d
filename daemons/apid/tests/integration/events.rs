//! `GET /api/events` against a real `nats-server`: events published through the API and the
//! bus arrive as Server-Sent Events with their type and a resumable id; filters keep out the
//! rest; a reconnect with `Last-Event-ID` replays exactly what was missed; stale ids, a NATS
//! reconnect and the stream limit are answered as documented; a drain ends the streams.

use std::time::Duration;

use dragonfly_apid::live::Hub;
use dragonfly_bus::events::{PowerChanged, TftpTransferred, WorkflowProgress};
use dragonfly_bus::{Bus, ConnectionState};
use dragonfly_core::MachineId;
use dragonfly_testkit::{NatsServer, require_nats_servers};
use serde_json::Value;
use tokio::time::Instant;
use uuid::Uuid;

use crate::common::{Server, config, report};

/// How long any expected message may take.
const WAIT: Duration = Duration::from_secs(10);

/// One message of the stream.
#[derive(Debug, Clone, Default)]
struct Message {
    event: String,
    id: String,
    data: String,
}

impl Message {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or(Value::Null)
    }

    fn seq(&self) -> u64 {
        self.id.rsplit_once('-').unwrap().1.parse().unwrap()
    }

    fn epoch(&self) -> &str {
        self.id.split_once('-').unwrap().0
    }
}

/// A Server-Sent Events reader over a streamed response.
struct Stream {
    response: reqwest::Response,
    buf: String,
    /// Comments seen (`: keepalive`).
    comments: usize,
    /// The last `retry:` value seen.
    retry: Option<String>,
}

impl Stream {
    fn new(response: reqwest::Response) -> Self {
        Self {
            response,
            buf: String::new(),
            comments: 0,
            retry: None,
        }
    }

    /// The next message with an event or data (comments and `retry:`-only ones are noted and
    /// skipped); `None` when the stream ends; panics after `wait`.
    async fn next_within(&mut self, wait: Duration) -> Option<Message> {
        let deadline = Instant::now() + wait;
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut m = Message::default();
                for line in block.lines() {
                    if let Some(c) = line.strip_prefix(':') {
                        assert_eq!(c, " keepalive", "the only comment");
                        self.comments += 1;
                    } else if let Some((field, value)) = line.split_once(": ") {
                        match field {
                            "event" => m.event = value.to_owned(),
                            "id" => m.id = value.to_owned(),
                            "data" => {
                                assert!(m.data.is_empty(), "data on one line: {block}");
                                m.data = value.to_owned();
                            }
                            "retry" => self.retry = Some(value.to_owned()),
                            other => panic!("unexpected field {other}: {block}"),
                        }
                    }
                }
                if !m.event.is_empty() || !m.data.is_empty() {
                    return Some(m);
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .expect("a message in time")
                .unwrap();
            match chunk {
                Some(bytes) => self.buf.push_str(std::str::from_utf8(&bytes).unwrap()),
                None => return None,
            }
        }
    }

    async fn next(&mut self) -> Message {
        self.next_within(WAIT).await.expect("the stream goes on")
    }

    /// The next message that is not a probe.
    async fn next_but_probes(&mut self) -> Message {
        loop {
            let m = self.next().await;
            if m.event != "computer.dragonfly.tftp.transferred" {
                return m;
            }
        }
    }

    /// Asserts nothing but probes and keepalives arrive for `quiet`.
    async fn nothing_more(&mut self, quiet: Duration) {
        let deadline = Instant::now() + quiet;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match tokio::time::timeout(left, self.next_within(WAIT)).await {
                Err(_) => return,
                Ok(Some(m)) if m.event == "computer.dragonfly.tftp.transferred" => {}
                Ok(other) => panic!("expected nothing more, got {other:?}"),
            }
        }
    }
}

async fn connect(nats: &NatsServer, daemon: &str) -> Bus {
    let bus = Bus::connect(dragonfly_bus::ConnectOptions::new(nats.url(), daemon, None))
        .await
        .unwrap();
    let mut state = bus.connection_events();
    tokio::time::timeout(WAIT, state.wait_for(|s| *s == ConnectionState::Connected))
        .await
        .expect("connected to NATS")
        .unwrap();
    bus
}

/// `GET /api/events<query>` with `cookie` and maybe a `Last-Event-ID`.
async fn open(s: &Server, cookie: &str, query: &str, last: Option<&str>) -> reqwest::Response {
    let mut r = s
        .http
        .get(s.url(&format!("/api/events{query}")))
        .header("cookie", cookie);
    if let Some(id) = last {
        r = r.header("last-event-id", id);
    }
    r.send().await.unwrap()
}

/// A stream, once a place is free (publishing probes meanwhile, so that a stream whose
/// client went away notices when it writes).
async fn open_when_free(
    s: &Server,
    cookie: &str,
    query: &str,
    last: Option<&str>,
    bus: &Bus,
) -> Stream {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = open(s, cookie, query, last).await;
        if r.status() == 200 {
            return Stream::new(r);
        }
        assert_eq!(r.status(), 503, "{}", r.text().await.unwrap());
        assert!(Instant::now() < deadline, "no place freed");
        probe(bus).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn probe(bus: &Bus) {
    bus.publish(&TftpTransferred {
        file: "probe".into(),
        client: "10.0.0.9:2070".parse().unwrap(),
        bytes: 1,
        duration_ms: 1,
        complete: true,
        error: None,
    })
    .await
    .unwrap();
}

fn progress(workflow: Uuid, machine: MachineId) -> WorkflowProgress {
    WorkflowProgress {
        workflow_id: workflow,
        machine_id: machine,
        action: 1,
        action_name: "image2disk".into(),
        state: "running".into(),
        percent: 42,
    }
}

async fn register(s: &Server, cookie: &str, macs: &[u8]) -> (MachineId, String) {
    let r = s
        .http
        .post(s.url("/api/machines/register"))
        .header("cookie", cookie)
        .json(&report(macs))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let m: Value = r.json().await.unwrap();
    let id: Uuid = m["id"].as_str().unwrap().parse().unwrap();
    (MachineId(id), m["name"].as_str().unwrap().to_owned())
}

/// The next `n` messages' ids and event names.
async fn take(stream: &mut Stream, n: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let m = stream.next().await;
        out.push((m.id, m.event));
    }
    out
}

fn assert_event(m: &Message, ty: &str, machine: MachineId) {
    assert_eq!(m.event, ty, "{m:?}");
    let v = m.json();
    assert_eq!(v["type"], ty, "data is the CloudEvent: {m:?}");
    assert_eq!(v["specversion"], "1.0");
    assert_eq!(v["data"]["machineId"], machine.to_string(), "{m:?}");
}

#[tokio::test]
async fn the_bus_reaches_the_browser_filtered_resumable_and_bounded() {
    for binary in require_nats_servers() {
        let mut nats = NatsServer::start_with(&binary.path).await.unwrap();
        scenario(&mut nats).await;
    }
}

async fn scenario(nats: &mut NatsServer) {
    let apid_bus = connect(nats, "apid").await;
    // A small ring and stream limit, to reach both.
    let s = Server::start_with_hub(config(|_| {}), Some(apid_bus), Some(Hub::new(8, 4))).await;
    let bus = connect(nats, "workflowd").await;
    let cookie = s.admin_cookie().await;

    // Credentials, like every operator route.
    let r = s.http.get(s.url("/api/events")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = s
        .http
        .get(s.url("/api/events"))
        .header("authorization", "Bearer dft_not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Unknown filters are refused, saying what is wrong.
    for (query, says) in [
        ("?types=machines", "types: \"machines\" is no event kind"),
        ("?types=machine,", "types: an empty entry"),
        (
            "?machine=NoSuchMachine",
            "machine: no machine \"NoSuchMachine\"",
        ),
        (
            "?workflow=0196d6a2-0000-7000-8000-000000000001",
            "workflow: no workflow",
        ),
        ("?colour=blue", "unknown field `colour`"),
    ] {
        let r = open(&s, &cookie, query, None).await;
        assert_eq!(r.status(), 400, "{query}");
        let body: Value = r.json().await.unwrap();
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{query}: {message}");
    }

    // A fresh stream says hello with the current id.
    let r = open(&s, &cookie, "", None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(r.headers()["x-accel-buffering"], "no");
    let mut all = Stream::new(r);
    let hello = all.next().await;
    assert_eq!(hello.event, "hello");
    assert_eq!(hello.json()["id"], hello.id.as_str());
    assert_eq!(hello.epoch().len(), 16, "{hello:?}");
    assert_eq!(all.retry.as_deref(), Some("3000"), "a retry hint");
    let epoch = hello.epoch().to_owned();
    // The relay subscribes in the background: wait until a probe comes through.
    loop {
        probe(&bus).await;
        let m = tokio::time::timeout(Duration::from_millis(500), all.next()).await;
        if let Ok(m) = m {
            assert_eq!(m.event, "computer.dragonfly.tftp.transferred");
            assert_eq!(m.epoch(), epoch);
            break;
        }
    }

    // A machine registered through the API: its event arrives.
    let (m1, m1_name) = register(&s, &cookie, &[1]).await;
    let registered = all.next_but_probes().await;
    assert_event(&registered, "computer.dragonfly.machine.registered", m1);
    assert_eq!(registered.epoch(), epoch);
    let seen = registered.id.clone();

    let mut of_m1 = Stream::new(open(&s, &cookie, &format!("?machine={m1_name}"), None).await);
    assert_eq!(of_m1.next().await.event, "hello");
    let mut progress_only = Stream::new(open(&s, &cookie, "?types=workflow.progress", None).await);
    assert_eq!(progress_only.next().await.event, "hello");

    // What happens next: for m1 and for another machine.
    let (w1, w2) = (Uuid::now_v7(), Uuid::now_v7());
    bus.publish(&progress(w1, m1)).await.unwrap();
    let m2 = MachineId(Uuid::now_v7());
    bus.publish(&progress(w2, m2)).await.unwrap();
    let (m3, _) = register(&s, &cookie, &[3]).await;
    bus.publish(&PowerChanged {
        machine_id: m1,
        from: Some("off".into()),
        to: "on".into(),
    })
    .await
    .unwrap();
    // Published from two connections (apid's and "workflowd's"): each connection's events
    // keep their order; all four arrive, numbered in the order apid relayed them.
    let expected = [
        ("computer.dragonfly.workflow.progress", m1),
        ("computer.dragonfly.workflow.progress", m2),
        ("computer.dragonfly.machine.registered", m3),
        ("computer.dragonfly.power.changed", m1),
    ];
    let mut observed = Vec::new();
    let mut last = registered.seq();
    for _ in 0..expected.len() {
        let m = all.next_but_probes().await;
        assert!(m.seq() > last, "ids grow: {m:?}");
        assert_eq!(m.epoch(), epoch);
        last = m.seq();
        observed.push(m);
    }
    let mut got: Vec<(String, String)> = observed
        .iter()
        .map(|m| (m.event.clone(), m.json()["data"]["machineId"].to_string()))
        .collect();
    let mut want: Vec<(String, String)> = expected
        .iter()
        .map(|(ty, m)| ((*ty).to_owned(), Value::from(m.to_string()).to_string()))
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
    // What a filtered stream must see: `all`'s messages that pass, with the same ids.
    let passing = |keep: &dyn Fn(&Message) -> bool| -> Vec<(String, String)> {
        observed
            .iter()
            .filter(|m| keep(m))
            .map(|m| (m.id.clone(), m.event.clone()))
            .collect()
    };
    let of_machine_1 = |m: &Message| m.json()["data"]["machineId"] == m1.to_string();
    let is_progress = |m: &Message| m.event == "computer.dragonfly.workflow.progress";
    // machine=: m1's progress and power, nothing of m2 or m3.
    let want_m1 = passing(&of_machine_1);
    assert_eq!(want_m1.len(), 2);
    assert_eq!(take(&mut of_m1, 2).await, want_m1);
    // types=: both progress events, nothing else.
    let want_progress = passing(&is_progress);
    assert_eq!(want_progress.len(), 2);
    assert_eq!(take(&mut progress_only, 2).await, want_progress);
    of_m1.nothing_more(Duration::from_millis(300)).await;
    progress_only.nothing_more(Duration::from_millis(300)).await;

    // Reconnecting after `seen` replays exactly what came after it (filtered), then goes live.
    let r = open(&s, &cookie, "?types=machine,workflow,power", Some(&seen)).await;
    assert_eq!(r.status(), 200);
    let mut resumed = Stream::new(r);
    assert_eq!(take(&mut resumed, 4).await, passing(&|_| true));
    assert_eq!(resumed.retry.as_deref(), Some("3000"));
    resumed.nothing_more(Duration::from_millis(300)).await;

    // Four streams are open: a fifth waits.
    let r = open(&s, &cookie, "", None).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "10");
    assert!(r.text().await.unwrap().contains("too many event streams"));

    // Clients that go away free their places; the replay is filtered like the stream.
    drop(resumed);
    drop(progress_only);
    let mut again = open_when_free(&s, &cookie, &format!("?machine={m1}"), Some(&seen), &bus).await;
    assert_eq!(take(&mut again, 2).await, want_m1);
    again.nothing_more(Duration::from_millis(300)).await;
    // The `lastEventId` query parameter does the same for a client without the header.
    let query = format!("?types=power&lastEventId={seen}");
    let r = open(&s, &cookie, &query, None).await;
    let mut by_query = Stream::new(r);
    assert_event(
        &by_query.next().await,
        "computer.dragonfly.power.changed",
        m1,
    );
    drop(again);
    drop(by_query);

    // Ids this process cannot resume: resync, then live.
    for (id, reason) in [
        ("0123456789abcdef-1".to_owned(), "otherEpoch"),
        ("garbage".to_owned(), "unknownId"),
        (format!("{epoch}-{}", last + 1000), "unknownId"),
    ] {
        let mut stale = open_when_free(&s, &cookie, "", Some(&id), &bus).await;
        let m = stale.next().await;
        assert_eq!(m.event, "resync", "{id}: {m:?}");
        assert_eq!(m.json()["reason"], reason, "{id}");
        assert_eq!(m.epoch(), epoch, "the resync's id is resumable");
        drop(stale);
    }
    // An id older than the ring (8 entries).
    for _ in 0..10 {
        probe(&bus).await;
    }
    while all.next().await.seq() < last + 10 {}
    let mut old = open_when_free(&s, &cookie, "?types=power", Some(&seen), &bus).await;
    let m = old.next().await;
    assert_eq!(m.event, "resync");
    assert_eq!(m.json()["reason"], "tooOld");
    // ... whose id resumes where the stream stands: nothing missed from there.
    let resync_id = m.id.clone();
    drop(old);
    let mut from_resync = open_when_free(&s, &cookie, "?types=power", Some(&resync_id), &bus).await;
    bus.publish(&PowerChanged {
        machine_id: m1,
        from: Some("on".into()),
        to: "off".into(),
    })
    .await
    .unwrap();
    let m = from_resync.next().await;
    assert_event(&m, "computer.dragonfly.power.changed", m1);
    drop(from_resync);

    // apid's NATS connection drops and comes back: events may have been lost meanwhile.
    nats.kill();
    nats.restart().await.unwrap();
    let m = all.next_but_probes().await;
    let m = if m.event == "computer.dragonfly.power.changed" {
        all.next_but_probes().await
    } else {
        m
    };
    assert_eq!(m.event, "resync", "{m:?}");
    assert_eq!(m.json()["reason"], "busReconnected");
    assert_eq!(
        of_m1.next_but_probes().await.event,
        "computer.dragonfly.power.changed"
    );
    assert_eq!(
        of_m1.next().await.json()["reason"],
        "busReconnected",
        "resync passes every filter"
    );

    // A drain ends every stream at once.
    let started = Instant::now();
    s.shutdown.cancel();
    assert!(all.next_within(WAIT).await.is_none(), "the stream ended");
    assert!(of_m1.next_within(WAIT).await.is_none(), "the stream ended");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn keepalives_hold_a_quiet_stream_open_past_the_idle_timeout() {
    for binary in require_nats_servers() {
        let nats = NatsServer::start_with(&binary.path).await.unwrap();
        let bus = connect(&nats, "apid").await;
        // Connections on which nothing moves for 2 s are closed; keepalives every 1 s.
        let cfg = config(|c| {
            c.http = Some(dragonfly_http::RawHttpConfig {
                idle_timeout: Some("2s".into()),
                ..Default::default()
            });
        });
        let s = Server::start_with_bus(cfg, Some(bus)).await;
        let cookie = s.admin_cookie().await;
        let mut stream = Stream::new(open(&s, &cookie, "", None).await);
        assert_eq!(stream.next().await.event, "hello");
        let quiet =
            tokio::time::timeout(Duration::from_millis(4500), stream.next_within(WAIT)).await;
        assert!(
            quiet.is_err(),
            "still open, nothing but comments: {quiet:?}"
        );
        assert!(stream.comments >= 3, "{} keepalives", stream.comments);
    }
}
