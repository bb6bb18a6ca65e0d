//! The bus, relayed to browsers and scripts: what `GET /api/events` streams.
//!
//! apid follows every event on the bus once, for all clients ([`relay`]: a
//! `Follower<AllEvents>`) and hands each to the [`Hub`], which numbers it, keeps the last
//! [`RING_CAPACITY`] in a ring (so a client that reconnects gets what it missed) and broadcasts
//! it to every open stream. Ids are `<epoch>-<seq>`: the epoch is random per apid process, the
//! sequence grows by one per entry, so an id from another process or one older than the ring
//! is recognised, and the client is told to reconcile (a `resync`) rather than silently
//! given a gap.
//!
//! Events relayed here are what the bus carried, nothing more: a hint that something changed.
//! A client must read the API for the state itself, as every daemon reads the store. So this
//! module must never present an event as state, never block the relay on a slow client (a
//! slow client loses its place and gets a `resync`), and never hold more than the ring and one
//! broadcast buffer of events.

use std::collections::{BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};

use dragonfly_bus::events::ALL_SUBJECTS;
use dragonfly_bus::{AllEvents, Bus, Change, Follower, RawEvent, ReconcileReason};
use dragonfly_core::{Chain, MacAddr};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Events kept for clients that reconnect (`Last-Event-ID`).
pub const RING_CAPACITY: usize = 4096;

/// Streams open at once; beyond it `/api/events` answers 503 with `Retry-After`.
pub const MAX_STREAMS: usize = 256;

/// Entries a stream may fall behind the relay before it loses its place (and gets a
/// `resync`).
const BROADCAST_CAPACITY: usize = 1024;

/// One numbered entry of the stream: an event, or a point where events may have been lost.
#[derive(Debug)]
pub struct Entry {
    /// Its sequence number in this process (from 1).
    pub seq: u64,
    /// What it is.
    pub what: What,
}

/// What an [`Entry`] holds.
#[derive(Debug)]
pub enum What {
    /// An event from the bus.
    Event(Relayed),
    /// Events may have been lost here: every client must reconcile.
    Resync(Resync),
}

/// An event as relayed: its JSON as received, and what the filters look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relayed {
    /// The NATS subject, `dragonfly.<kind>.<event>`.
    pub subject: &'static str,
    /// The CloudEvents `type` (`computer.` + the subject).
    pub ty: String,
    /// The CloudEvent as one line of JSON.
    pub json: String,
    /// The CloudEvents `subject`: what the event is about.
    pub about: Option<String>,
    /// `data.machineId`, when present.
    pub machine_id: Option<Uuid>,
    /// `data.workflowId`, when present.
    pub workflow_id: Option<Uuid>,
    /// `data.mac`, when present.
    pub mac: Option<MacAddr>,
}

impl Relayed {
    /// `None` when the event cannot be written as one line (it always can: compact JSON has
    /// no line breaks).
    pub fn new(raw: RawEvent) -> Option<Self> {
        let json = if raw.json.contains(['\n', '\r']) {
            // Pretty-printed by some other publisher: an SSE `data:` line must be one line.
            serde_json::to_string(&raw.envelope).ok()?
        } else {
            raw.json
        };
        let data = &raw.envelope.data;
        let text = |field: &str| data.get(field).and_then(serde_json::Value::as_str);
        Some(Self {
            subject: raw.subject,
            ty: raw.envelope.ty,
            json,
            about: raw.envelope.subject,
            machine_id: text("machineId").and_then(|t| Uuid::parse_str(t).ok()),
            workflow_id: text("workflowId").and_then(|t| Uuid::parse_str(t).ok()),
            mac: text("mac").and_then(|t| t.parse().ok()),
        })
    }
}

/// Why a client must reconcile with the API: it may have missed events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resync {
    /// `Last-Event-ID` is not an id this stream gives.
    UnknownId,
    /// `Last-Event-ID` is from another apid process (a restart, or another instance).
    OtherEpoch,
    /// `Last-Event-ID` is older than the events apid keeps.
    TooOld,
    /// The client read too slowly and events were skipped.
    SlowClient,
    /// apid's connection to NATS came back: events published meanwhile never reached it.
    BusReconnected,
}

impl Resync {
    /// The `reason` in the `resync` event's data.
    pub fn reason(self) -> &'static str {
        match self {
            Self::UnknownId => "unknownId",
            Self::OtherEpoch => "otherEpoch",
            Self::TooOld => "tooOld",
            Self::SlowClient => "slowClient",
            Self::BusReconnected => "busReconnected",
        }
    }

    /// The `message` in the `resync` event's data.
    pub fn message(self) -> &'static str {
        match self {
            Self::UnknownId => "Last-Event-ID is not an id of this stream",
            Self::OtherEpoch => "Last-Event-ID is from another apid process (apid restarted)",
            Self::TooOld => "Last-Event-ID is older than the events apid keeps",
            Self::SlowClient => "this client read too slowly: events were skipped",
            Self::BusReconnected => "apid reconnected to the bus: events may have been lost",
        }
    }

    /// The `resync` event's data: `{"reason": …, "message": …}`.
    pub fn json(self) -> String {
        serde_json::json!({"reason": self.reason(), "message": self.message()}).to_string()
    }
}

/// The last [`RING_CAPACITY`] entries, and the last sequence number given.
#[derive(Debug)]
struct Ring {
    entries: VecDeque<Arc<Entry>>,
    capacity: usize,
    last: u64,
}

impl Ring {
    fn new(capacity: usize) -> Self {
        Self {
            entries: VecDeque::with_capacity(capacity.min(RING_CAPACITY)),
            capacity: capacity.max(1),
            last: 0,
        }
    }

    fn push(&mut self, what: What) -> Arc<Entry> {
        self.last += 1;
        let entry = Arc::new(Entry {
            seq: self.last,
            what,
        });
        if self.entries.len() == self.capacity {
            self.entries.pop_front();
        }
        self.entries.push_back(Arc::clone(&entry));
        entry
    }

    /// Every entry after `seq`, or why they cannot all be given.
    fn after(&self, seq: u64) -> Result<Vec<Arc<Entry>>, Resync> {
        if seq > self.last {
            return Err(Resync::UnknownId);
        }
        // Entries are contiguous, so the first kept one says what was dropped.
        let first = self.entries.front().map_or(self.last + 1, |e| e.seq);
        if seq + 1 < first {
            return Err(Resync::TooOld);
        }
        Ok(self
            .entries
            .iter()
            .filter(|e| e.seq > seq)
            .cloned()
            .collect())
    }
}

/// Splits an id `<epoch>-<seq>`; `None` when it is not one.
pub fn parse_id(id: &str) -> Option<(&str, u64)> {
    let (epoch, seq) = id.split_once('-')?;
    if epoch.is_empty() || !epoch.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((epoch, seq.parse().ok()?))
}

/// How a stream begins, decided from its `Last-Event-ID`.
#[derive(Debug)]
pub enum Start {
    /// No `Last-Event-ID`: a `hello` with the current id.
    Hello,
    /// A `Last-Event-ID` of this process within the ring: these entries, then live.
    Replay(Vec<Arc<Entry>>),
    /// A `Last-Event-ID` that cannot be resumed: a `resync`, then live.
    Resync(Resync),
}

/// A stream, opened: its place among the streams, where it starts, and the live entries.
#[derive(Debug)]
pub struct Opened {
    /// Held as long as the stream is open.
    pub permit: OwnedSemaphorePermit,
    /// How it begins.
    pub start: Start,
    /// The last sequence number when it opened (the id of `hello` and of a first `resync`).
    pub position: u64,
    /// Every entry after `position`.
    pub live: broadcast::Receiver<Arc<Entry>>,
}

/// Every stream is open already.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("{0} event streams are open already")]
pub struct Busy(pub usize);

/// The relay's shared end: numbering, the ring, the broadcast, the stream limit.
#[derive(Debug)]
pub struct Hub {
    epoch: String,
    ring: Mutex<Ring>,
    tx: broadcast::Sender<Arc<Entry>>,
    streams: Arc<Semaphore>,
    max_streams: usize,
}

impl Hub {
    /// A hub keeping `ring_capacity` entries for at most `max_streams` streams at once, with a
    /// fresh random epoch.
    pub fn new(ring_capacity: usize, max_streams: usize) -> Self {
        let mut raw = [0u8; 8];
        rand::fill(&mut raw);
        let epoch = raw.iter().fold(String::with_capacity(16), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        });
        let (tx, _) = broadcast::channel(BROADCAST_CAPACITY);
        Self {
            epoch,
            ring: Mutex::new(Ring::new(ring_capacity)),
            tx,
            streams: Arc::new(Semaphore::new(max_streams)),
            max_streams,
        }
    }

    /// This process's epoch: the part of every id before the `-`.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The id of sequence number `seq`.
    pub fn id(&self, seq: u64) -> String {
        format!("{}-{seq}", self.epoch)
    }

    /// Numbers `what`, keeps it and sends it to every open stream.
    pub fn publish(&self, what: What) {
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = ring.push(what);
        // Under the lock, so a stream opening now sees each entry exactly once: in its
        // replay or live. No receiver is no error.
        let _ = self.tx.send(entry);
    }

    /// Opens a stream that resumes after `last_event_id` (if any).
    ///
    /// # Errors
    /// [`Busy`] when every stream is taken.
    pub fn open(&self, last_event_id: Option<&str>) -> Result<Opened, Busy> {
        let permit = Arc::clone(&self.streams)
            .try_acquire_owned()
            .map_err(|_| Busy(self.max_streams))?;
        let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        let live = self.tx.subscribe();
        let start = match last_event_id.map(parse_id) {
            None => Start::Hello,
            Some(None) => Start::Resync(Resync::UnknownId),
            Some(Some((epoch, _))) if epoch != self.epoch => Start::Resync(Resync::OtherEpoch),
            Some(Some((_, seq))) => match ring.after(seq) {
                Ok(entries) => Start::Replay(entries),
                Err(why) => Start::Resync(why),
            },
        };
        Ok(Opened {
            permit,
            start,
            position: ring.last,
            live,
        })
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.max_streams - self.streams.available_permits()
    }
}

/// Follows every event on `bus` into `hub` until `shutdown`: one follower for all
/// streams. A reconnect to NATS becomes a `resync` entry (events published while apid was
/// away never reached it).
pub async fn relay(hub: Arc<Hub>, bus: Bus, shutdown: CancellationToken) {
    let mut follower = match Follower::<AllEvents>::new(&bus, None).await {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(error = %Chain(&e), "cannot follow the bus: /api/events relays nothing");
            return;
        }
    };
    loop {
        let change = tokio::select! {
            () = shutdown.cancelled() => return,
            change = follower.next() => change,
        };
        match change {
            None => {
                tracing::warn!("the NATS client closed: /api/events relays nothing more");
                return;
            }
            Some(Change::Reconcile(ReconcileReason::Reconnected)) => {
                hub.publish(What::Resync(Resync::BusReconnected));
            }
            // Nothing was relayed before the start; no period was asked for.
            Some(Change::Reconcile(ReconcileReason::Start | ReconcileReason::Period)) => {}
            Some(Change::Event(raw)) => match Relayed::new(raw) {
                Some(event) => hub.publish(What::Event(event)),
                None => tracing::warn!("an event could not be written as one line; not relayed"),
            },
        }
    }
}

/// Which events a stream passes: every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Subjects passed (`types=`); `None`: all.
    pub subjects: Option<BTreeSet<&'static str>>,
    /// `machine=`: the machine and the MACs it had when the stream opened.
    pub machine: Option<(Uuid, Vec<MacAddr>)>,
    /// `workflow=`.
    pub workflow: Option<Uuid>,
}

impl Filter {
    /// Whether `event` passes.
    pub fn matches(&self, event: &Relayed) -> bool {
        if let Some(subjects) = &self.subjects
            && !subjects.contains(event.subject)
        {
            return false;
        }
        if let Some((id, macs)) = &self.machine {
            let about = event
                .about
                .as_deref()
                .and_then(|a| Uuid::parse_str(a).ok())
                .is_some_and(|a| a == *id);
            let by_mac = event.mac.is_some_and(|m| macs.contains(&m));
            if !(about || event.machine_id == Some(*id) || by_mac) {
                return false;
            }
        }
        if let Some(id) = &self.workflow {
            let about = event
                .about
                .as_deref()
                .and_then(|a| Uuid::parse_str(a).ok())
                .is_some_and(|a| a == *id);
            if !(about || event.workflow_id == Some(*id)) {
                return false;
            }
        }
        true
    }
}

/// Parses `types=`: comma-separated kinds (`machine`) or kinds with their event
/// (`workflow.progress`), each optionally prefixed `dragonfly.`; the subjects they name.
///
/// # Errors
/// The message for the client: the first entry that names no event, or an empty entry.
pub fn parse_types(text: &str) -> Result<BTreeSet<&'static str>, String> {
    let mut subjects = BTreeSet::new();
    for item in text.split(',') {
        let item = item.trim();
        if item.is_empty() {
            return Err("types: an empty entry (a list like machine,workflow.progress)".into());
        }
        let name = item.strip_prefix("dragonfly.").unwrap_or(item);
        let mut named = false;
        for subject in ALL_SUBJECTS {
            let Some(rest) = subject.strip_prefix("dragonfly.") else {
                continue;
            };
            let kind = rest.split_once('.').map_or(rest, |(k, _)| k);
            if rest == name || kind == name {
                subjects.insert(*subject);
                named = true;
            }
        }
        if !named {
            return Err(format!(
                "types: {item:?} is no event kind or kind.event; known: {}",
                known_types()
            ));
        }
    }
    Ok(subjects)
}

/// The kinds, for an error message.
fn known_types() -> String {
    let kinds: BTreeSet<&str> = ALL_SUBJECTS
        .iter()
        .filter_map(|s| s.strip_prefix("dragonfly."))
        .filter_map(|r| r.split_once('.').map(|(k, _)| k))
        .collect();
    let kinds: Vec<&str> = kinds.into_iter().collect();
    format!(
        "{} (or kind.event, e.g. workflow.progress)",
        kinds.join(", ")
    )
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]
mod tests {
    use super::*;

    fn event(subject: &'static str, data: serde_json::Value, about: Option<&str>) -> Relayed {
        Relayed {
            subject,
            ty: format!("computer.{subject}"),
            json: "{}".into(),
            about: about.map(str::to_owned),
            machine_id: data["machineId"]
                .as_str()
                .and_then(|t| Uuid::parse_str(t).ok()),
            workflow_id: data["workflowId"]
                .as_str()
                .and_then(|t| Uuid::parse_str(t).ok()),
            mac: data["mac"].as_str().and_then(|t| t.parse().ok()),
        }
    }

    fn seqs(entries: &[Arc<Entry>]) -> Vec<u64> {
        entries.iter().map(|e| e.seq).collect()
    }

    fn resync() -> What {
        What::Resync(Resync::BusReconnected)
    }

    #[test]
    fn the_ring_replays_what_follows_an_id_and_knows_what_it_dropped() {
        let mut ring = Ring::new(3);
        assert_eq!(seqs(&ring.after(0).unwrap()), Vec::<u64>::new());
        assert_eq!(
            ring.after(1).unwrap_err(),
            Resync::UnknownId,
            "from the future"
        );
        for _ in 0..5 {
            ring.push(resync());
        }
        // Kept: 3, 4, 5.
        assert_eq!(seqs(&ring.after(5).unwrap()), Vec::<u64>::new());
        assert_eq!(seqs(&ring.after(4).unwrap()), [5]);
        assert_eq!(
            seqs(&ring.after(2).unwrap()),
            [3, 4, 5],
            "2 was seen: nothing lost"
        );
        assert_eq!(ring.after(1).unwrap_err(), Resync::TooOld, "2 was dropped");
        assert_eq!(ring.after(0).unwrap_err(), Resync::TooOld);
        assert_eq!(ring.after(6).unwrap_err(), Resync::UnknownId);
    }

    #[test]
    fn ids_parse_only_in_their_own_shape() {
        assert_eq!(parse_id("00ff-12"), Some(("00ff", 12)));
        assert_eq!(parse_id("abc-0"), Some(("abc", 0)));
        for bad in [
            "",
            "-",
            "12",
            "abc-",
            "-12",
            "xyz-1",
            "abc-+1",
            "abc--1",
            "abc-1-2",
            "abc-99999999999999999999999",
            "abc- 1",
        ] {
            assert_eq!(parse_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_hub_resumes_its_own_ids_and_resyncs_the_rest() {
        let hub = Hub::new(4, 2);
        let fresh = hub.open(None).unwrap();
        assert!(matches!(fresh.start, Start::Hello));
        assert_eq!(fresh.position, 0);
        for _ in 0..6 {
            hub.publish(resync());
        }
        let id = hub.id(3);
        let other = hub.open(None).unwrap();
        assert_eq!(hub.open_streams(), 2);
        let refused = hub.open(Some(&id)).unwrap_err();
        assert_eq!(refused.0, 2, "two streams at most");
        drop(fresh);
        drop(other);
        let resumed = hub.open(Some(&id)).unwrap();
        match &resumed.start {
            Start::Replay(entries) => assert_eq!(seqs(entries), [4, 5, 6]),
            other => panic!("{other:?}"),
        }
        assert_eq!(resumed.position, 6);
        drop(resumed);
        for (id, why) in [
            (hub.id(1), Resync::TooOld),
            (hub.id(7), Resync::UnknownId),
            ("0123456789abcdef-3".to_owned(), Resync::OtherEpoch),
            ("garbage".to_owned(), Resync::UnknownId),
        ] {
            let opened = hub.open(Some(&id)).unwrap();
            match opened.start {
                Start::Resync(got) => assert_eq!(got, why, "{id}"),
                other => panic!("{id}: {other:?}"),
            }
        }
        assert_eq!(hub.open_streams(), 0, "dropped streams free their place");
        assert_eq!(hub.epoch().len(), 16);
        assert_ne!(Hub::new(1, 1).epoch(), hub.epoch(), "a new epoch per hub");
    }

    #[tokio::test]
    async fn a_stream_opened_between_entries_sees_each_once() {
        let hub = Hub::new(8, 4);
        hub.publish(resync());
        let mut opened = hub.open(Some(&hub.id(0))).unwrap();
        hub.publish(resync());
        match &opened.start {
            Start::Replay(entries) => assert_eq!(seqs(entries), [1]),
            other => panic!("{other:?}"),
        }
        assert_eq!(opened.live.recv().await.unwrap().seq, 2);
    }

    #[test]
    fn types_name_kinds_or_kind_events_and_nothing_else() {
        let t = parse_types("workflow.progress").unwrap();
        assert_eq!(
            t.into_iter().collect::<Vec<_>>(),
            ["dragonfly.workflow.progress"]
        );
        let t = parse_types("machine, power,dragonfly.lease.ended").unwrap();
        assert!(t.contains("dragonfly.machine.registered"));
        assert!(t.contains("dragonfly.machine.deleted"));
        assert!(t.contains("dragonfly.power.changed"));
        assert!(t.contains("dragonfly.power.condition"));
        assert!(t.contains("dragonfly.lease.ended"));
        assert!(!t.contains("dragonfly.lease.granted"));
        assert!(
            parse_types("machine,machine").is_ok(),
            "a repeat is harmless"
        );
        for bad in [
            "",
            "machine,",
            "machines",
            "workflow.nope",
            "dragonfly",
            ".",
            "machine.registered.x",
        ] {
            let e = parse_types(bad).unwrap_err();
            assert!(e.starts_with("types: "), "{bad:?}: {e}");
        }
        assert!(
            parse_types("bogus").unwrap_err().contains("machine"),
            "says what is known"
        );
    }

    #[test]
    fn filters_match_by_subject_machine_mac_and_workflow() {
        let m = Uuid::now_v7();
        let w = Uuid::now_v7();
        let mac: MacAddr = "52:54:00:aa:00:01".parse().unwrap();
        let registered = event(
            "dragonfly.machine.registered",
            serde_json::json!({"machineId": m.to_string()}),
            Some(&m.to_string()),
        );
        let progress = event(
            "dragonfly.workflow.progress",
            serde_json::json!({"workflowId": w.to_string(), "machineId": m.to_string()}),
            Some(&w.to_string()),
        );
        let lease_ended = event(
            "dragonfly.lease.ended",
            serde_json::json!({"mac": mac.to_string()}),
            Some(&mac.to_string()),
        );
        let other = event(
            "dragonfly.machine.registered",
            serde_json::json!({"machineId": Uuid::now_v7().to_string()}),
            None,
        );
        let all = Filter::default();
        assert!(
            [&registered, &progress, &lease_ended, &other]
                .iter()
                .all(|e| all.matches(e))
        );

        let machine = Filter {
            machine: Some((m, vec![mac])),
            ..Filter::default()
        };
        assert!(machine.matches(&registered));
        assert!(machine.matches(&progress), "by data.machineId");
        assert!(machine.matches(&lease_ended), "by its MAC");
        assert!(!machine.matches(&other));

        let workflow = Filter {
            workflow: Some(w),
            ..Filter::default()
        };
        assert!(workflow.matches(&progress));
        assert!(!workflow.matches(&registered));

        let both = Filter {
            subjects: Some(parse_types("machine").unwrap()),
            machine: Some((m, vec![mac])),
            workflow: None,
        };
        assert!(both.matches(&registered));
        assert!(!both.matches(&progress), "every condition must hold");
    }

    #[test]
    fn a_multi_line_event_is_relayed_on_one_line() {
        let envelope = dragonfly_bus::CloudEvent {
            specversion: dragonfly_bus::SpecVersion::V1_0,
            id: "1".into(),
            source: "/test".into(),
            ty: "computer.dragonfly.power.changed".into(),
            time: jiff::Timestamp::UNIX_EPOCH,
            subject: None,
            datacontenttype: "application/json".into(),
            data: serde_json::json!({"machineId": Uuid::nil().to_string(), "to": "on"}),
        };
        let pretty = serde_json::to_string_pretty(&envelope).unwrap();
        let relayed = Relayed::new(RawEvent {
            subject: "dragonfly.power.changed",
            envelope: envelope.clone(),
            json: pretty,
        })
        .unwrap();
        assert!(!relayed.json.contains(['\n', '\r']));
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&relayed.json).unwrap(),
            serde_json::to_value(&envelope).unwrap()
        );
        assert_eq!(relayed.machine_id, Some(Uuid::nil()));
    }
}
