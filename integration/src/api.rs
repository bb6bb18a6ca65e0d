//! The test's side of a running Dragonfly: apid's HTTP API as an operator sees it, and the
//! lab's NATS as a subscriber sees it — both from inside the lab's namespace, where the
//! daemons listen.
//!
//! Blocking on purpose: tests are plain `#[test]` functions that also drive QEMU; each call
//! builds a small current-thread runtime on a thread inside the namespace.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dragonfly_bus::CloudEvent;
use dragonfly_bus::events::MachineRegistered;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::Lab;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building a tokio runtime")
}

/// Logs in to apid at `base` (e.g. `http://10.99.0.1:3000`) as `username` and returns every
/// machine of `GET /api/machines` (all pages), as JSON.
///
/// # Errors
/// Login refused, or any request failing: the message says which.
pub fn list_machines(
    lab: &Lab,
    base: &str,
    username: &str,
    password: &str,
) -> Result<Vec<Value>, String> {
    lab.in_namespace(|| {
        runtime().block_on(async {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .map_err(|e| e.to_string())?;
            let login = http
                .post(format!("{base}/api/auth/login"))
                .json(&json!({"username": username, "password": password}))
                .send()
                .await
                .map_err(|e| format!("POST /api/auth/login: {e}"))?;
            if login.status() != 200 {
                return Err(format!("POST /api/auth/login: {}", login.status()));
            }
            let cookie = login
                .headers()
                .get("set-cookie")
                .and_then(|c| c.to_str().ok())
                .and_then(|c| c.split(';').next())
                .ok_or("login set no cookie")?
                .to_owned();
            let mut machines = Vec::new();
            let mut after: Option<String> = None;
            loop {
                // `after` is an opaque cursor of URL-safe characters.
                let url = match &after {
                    Some(a) => format!("{base}/api/machines?limit=500&after={a}"),
                    None => format!("{base}/api/machines?limit=500"),
                };
                let page: Value = http
                    .get(url)
                    .header("cookie", &cookie)
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status)
                    .map_err(|e| format!("GET /api/machines: {e}"))?
                    .json()
                    .await
                    .map_err(|e| format!("GET /api/machines: {e}"))?;
                machines.extend(page["items"].as_array().cloned().unwrap_or_default());
                match page["next"].as_str() {
                    Some(next) => after = Some(next.to_owned()),
                    None => return Ok(machines),
                }
            }
        })
    })
}

/// A subscription on the lab's NATS, served by a thread inside the namespace that hands each
/// message to a callback; dropping it unsubscribes and joins the thread (a panic in the
/// callback fails the test there, unless the test is already failing).
#[derive(Debug)]
struct Subscription {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Subscription {
    /// Connects to `nats_url` from inside `lab` and subscribes to `subject`; returns once the
    /// server has the subscription (a flush round trip), so no later message is missed.
    ///
    /// # Panics
    /// When the connection or the subscription fails within 10 s.
    fn start(
        lab: &Lab,
        nats_url: &str,
        subject: &str,
        mut on_message: impl FnMut(&async_nats::Message) + Send + 'static,
    ) -> Subscription {
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready) = std::sync::mpsc::channel::<Result<(), String>>();
        let (url, subject) = (nats_url.to_owned(), subject.to_owned());
        let thread = lab.spawn_in_namespace(move || {
            runtime().block_on(async move {
                let subscribed = async {
                    let client = async_nats::connect(&url)
                        .await
                        .map_err(|e| format!("connecting to {url}: {e}"))?;
                    let sub = client
                        .subscribe(subject.clone())
                        .await
                        .map_err(|e| format!("subscribing to {subject}: {e}"))?;
                    client.flush().await.map_err(|e| format!("flushing: {e}"))?;
                    Ok::<_, String>((client, sub))
                };
                let (_client, mut sub) =
                    match tokio::time::timeout(Duration::from_secs(10), subscribed).await {
                        Ok(Ok(s)) => {
                            let _ = ready_tx.send(Ok(()));
                            s
                        }
                        Ok(Err(e)) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                        Err(_) => {
                            let _ = ready_tx.send(Err(format!("no NATS at {url} within 10 s")));
                            return;
                        }
                    };
                loop {
                    tokio::select! {
                        _ = &mut stopped => return,
                        msg = sub.next() => {
                            let Some(msg) = msg else { return };
                            on_message(&msg);
                        }
                    }
                }
            });
        });
        match ready.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("NATS watcher: {e}"),
            Err(_) => panic!("NATS watcher thread died"),
        }
        Subscription {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
            && !std::thread::panicking()
        {
            panic!("the NATS watcher panicked (see above)");
        }
    }
}

/// Collects every `dragonfly.machine.registered` CloudEvent published on a NATS server inside
/// the lab, from the moment [`start`](Self::start) returns until the watcher drops.
#[derive(Debug)]
pub struct EventWatcher {
    events: Arc<Mutex<Vec<CloudEvent<MachineRegistered>>>>,
    _sub: Subscription,
}

impl EventWatcher {
    /// Connects to `nats_url` from inside `lab` and subscribes; returns once the server has
    /// the subscription (a flush round trip), so no later event is missed.
    ///
    /// # Panics
    /// When the connection or the subscription fails within 10 s.
    pub fn start(lab: &Lab, nats_url: &str) -> EventWatcher {
        let events: Arc<Mutex<Vec<CloudEvent<MachineRegistered>>>> = Arc::default();
        let sink = Arc::clone(&events);
        let sub = Subscription::start(lab, nats_url, "dragonfly.machine.registered", move |msg| {
            match CloudEvent::<MachineRegistered>::from_json(&msg.payload) {
                Ok(event) => sink.lock().expect("events").push(event),
                Err(e) => panic!(
                    "undecodable event on dragonfly.machine.registered: {e}: {}",
                    String::from_utf8_lossy(&msg.payload)
                ),
            }
        });
        EventWatcher { events, _sub: sub }
    }

    /// Every event seen so far, in arrival order.
    pub fn events(&self) -> Vec<CloudEvent<MachineRegistered>> {
        self.events.lock().expect("events").clone()
    }

    /// Waits up to `timeout` for an event matching `pred` and returns it.
    pub fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&CloudEvent<MachineRegistered>) -> bool,
    ) -> Option<CloudEvent<MachineRegistered>> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(e) = self.events().into_iter().find(|e| pred(e)) {
                return Some(e);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Collects every message on a NATS subject pattern (`dragonfly.workflow.>`) inside the lab as
/// `(subject, JSON)`, from the moment [`start`](Self::start) returns until it drops; a message
/// that is not a CloudEvents 1.0 JSON document fails the test.
#[derive(Debug)]
pub struct SubjectWatcher {
    seen: Arc<Mutex<Vec<(String, Value)>>>,
    _sub: Subscription,
}

impl SubjectWatcher {
    /// Connects to `nats_url` from inside `lab` and subscribes to `subject`; returns once the
    /// server has the subscription, so no later message is missed.
    ///
    /// # Panics
    /// When the connection or the subscription fails within 10 s.
    pub fn start(lab: &Lab, nats_url: &str, subject: &str) -> SubjectWatcher {
        let seen: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
        let sink = Arc::clone(&seen);
        let sub = Subscription::start(lab, nats_url, subject, move |msg| {
            let json: Value = serde_json::from_slice(&msg.payload).unwrap_or_else(|e| {
                panic!(
                    "undecodable message on {}: {e}: {}",
                    msg.subject,
                    String::from_utf8_lossy(&msg.payload)
                )
            });
            assert!(
                json["specversion"] == "1.0"
                    && json["type"].is_string()
                    && json["source"].is_string()
                    && json["id"].is_string(),
                "not a CloudEvent on {}: {json}",
                msg.subject
            );
            sink.lock()
                .expect("seen")
                .push((msg.subject.to_string(), json));
        });
        SubjectWatcher { seen, _sub: sub }
    }

    /// The subjects seen so far, in arrival order.
    pub fn subjects(&self) -> Vec<String> {
        self.seen
            .lock()
            .expect("seen")
            .iter()
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// Every message seen so far, in arrival order.
    pub fn messages(&self) -> Vec<(String, Value)> {
        self.seen.lock().expect("seen").clone()
    }
}
