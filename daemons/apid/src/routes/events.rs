//! `GET /api/events`: the bus as Server-Sent Events, for the web UI and the command-line
//! client, on the operators' listener only.
//!
//! The numbering, the ring of recent events and the relay from NATS are in [`crate::live`];
//! this module turns one client's query and `Last-Event-ID` into its stream. The contract
//! (what a client may rely on) is in docs/events.md, "To the browser: /api/events".
//!
//! Every connection begins with one message that says where the client stands: `hello` (no
//! `Last-Event-ID`), the events it missed (a `Last-Event-ID` of this process still in the
//! ring), or `resync` (one that is not: reconcile with the API). After that it is live, with a
//! `: keepalive` comment when nothing else was sent for 15 s, and ends when apid drains.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use dragonfly_http::Draining;
use serde::Deserialize;
use tokio::sync::broadcast::{self, error::RecvError};
use utoipa::IntoParams;

use crate::AppState;
use crate::error::{ApiError, ApiQuery, ErrorBody};
use crate::live::{Entry, Filter, Hub, Opened, Resync, Start, What, parse_types};

/// The longest gap between two messages: a `: keepalive` comment when nothing else was sent.
pub const KEEPALIVE: Duration = Duration::from_secs(15);

/// The reconnection delay suggested to clients (`retry:`).
pub const RETRY: Duration = Duration::from_secs(3);

/// `Retry-After` of the 503 when every stream is taken.
const BUSY_RETRY_SECS: u64 = 10;

/// Query of `GET /api/events`. Every filter given must hold; `hello` and `resync` always pass.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Comma-separated event kinds (`machine`, `workflow`, `power`, `lease`, `pxe`, `boot`,
    /// `tftp`, `reservation`) or kinds with their event (`workflow.progress`), matching the
    /// subjects `dragonfly.<kind>.<event>`. An unknown one is 400.
    pub types: Option<String>,
    /// A machine's id or memorable name: the events whose CloudEvents `subject` is that
    /// machine, whose `data.machineId` is that machine (its workflows, power, leases, PXE and
    /// boot answers), or whose `data.mac` is one of the MACs it had when the stream opened
    /// (a lease that ended). An unknown machine is 400.
    pub machine: Option<String>,
    /// A workflow's id or name: the events whose CloudEvents `subject` or `data.workflowId` is
    /// that workflow (its `workflow.*` events, and the `boot.decided` that boots it). An
    /// unknown workflow is 400.
    pub workflow: Option<String>,
    /// The last id received, for a client that cannot send the `Last-Event-ID` header (which
    /// wins when both are given).
    pub last_event_id: Option<String>,
}

/// Follows the bus live: every event as Server-Sent Events.
///
/// Messages: `event: <the CloudEvents type>` (e.g. `computer.dragonfly.workflow.progress`),
/// `id: <epoch>-<seq>`, `data: <the CloudEvent, one line of JSON>`. The first message of a
/// connection is `event: hello` (`data: {"id": …}`, no `Last-Event-ID`), the missed events (a
/// `Last-Event-ID` apid still holds), or `event: resync` (`data: {"reason": …, "message": …}`:
/// reconcile with the API). `resync` also comes when this client read too slowly and when apid
/// reconnected to NATS. `: keepalive` comments every 15 s of silence.
#[utoipa::path(get, path = "/api/events", tag = "events",
    params(EventsQuery,
        ("Last-Event-ID" = Option<String>, Header,
            description = "The id of the last message received: resume after it")),
    responses(
        (status = 200, description = "The event stream", content_type = "text/event-stream",
            body = String),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 503, description = "Too many streams open (Retry-After), or apid has no bus",
            body = ErrorBody)))]
pub async fn events(
    State(state): State<AppState>,
    draining: Option<Extension<Draining>>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<Response, ApiError> {
    let filter = filter(&state, &q).await?;
    if state.bus.is_none() {
        return Err(ApiError::Unavailable {
            message: "apid has no connection to the event bus",
            retry_after_secs: BUSY_RETRY_SECS,
        });
    }
    // A header that is not text is no id of ours: resync. An empty one is none (a client
    // that never received an id).
    let last = match headers.get("last-event-id") {
        Some(v) => Some(v.to_str().unwrap_or("\u{fffd}").to_owned()),
        None => q.last_event_id.clone(),
    }
    .filter(|id| !id.is_empty());
    let hub = Arc::clone(&state.live);
    let opened = hub.open(last.as_deref()).map_err(|busy| {
        // Answered, and logged once as a refusal by `ApiError`: a reconnecting crowd must not
        // become a line each at warning level.
        tracing::debug!(error = %busy, "refusing an event stream");
        ApiError::Unavailable {
            message: "too many event streams are open; retry later",
            retry_after_secs: BUSY_RETRY_SECS,
        }
    })?;
    let keepalive = KEEPALIVE.min(state.config.http.idle_timeout / 2);
    let stream = Client::new(hub, opened, filter, draining.map(|Extension(d)| d));
    let mut response = Sse::new(stream.into_stream())
        .keep_alive(KeepAlive::new().interval(keepalive).text("keepalive"))
        .into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// The query's filters, resolved against the store.
async fn filter(state: &AppState, q: &EventsQuery) -> Result<Filter, ApiError> {
    let subjects = match &q.types {
        Some(t) => Some(parse_types(t).map_err(ApiError::BadRequest)?),
        None => None,
    };
    let machine = match &q.machine {
        Some(key) => {
            let m = state
                .db
                .machines()
                .get_by_id_or_name(key)
                .await?
                .ok_or_else(|| ApiError::BadRequest(format!("machine: no machine {key:?}")))?;
            Some((m.id.0, m.macs().to_vec()))
        }
        None => None,
    };
    let workflow = match &q.workflow {
        Some(key) => {
            let w = state
                .db
                .workflows()
                .get_by_id_or_name(key)
                .await?
                .ok_or_else(|| ApiError::BadRequest(format!("workflow: no workflow {key:?}")))?;
            Some(w.id)
        }
        None => None,
    };
    Ok(Filter {
        subjects,
        machine,
        workflow,
    })
}

/// One client's stream: what is queued for it, and the live entries.
struct Client {
    hub: Arc<Hub>,
    filter: Filter,
    queue: VecDeque<Event>,
    live: broadcast::Receiver<Arc<Entry>>,
    draining: Option<Draining>,
    /// This client lost entries: a `resync` goes before the next one.
    lagged: bool,
    /// Its place among the streams: freed when the stream is dropped (the client went away,
    /// or apid drained).
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Client {
    fn new(hub: Arc<Hub>, opened: Opened, filter: Filter, draining: Option<Draining>) -> Self {
        let Opened {
            permit,
            start,
            position,
            live,
        } = opened;
        let mut queue = VecDeque::new();
        match start {
            Start::Hello => {
                let id = hub.id(position);
                let data = serde_json::json!({ "id": id }).to_string();
                queue.push_back(
                    Event::default()
                        .event("hello")
                        .id(id)
                        .data(data)
                        .retry(RETRY),
                );
            }
            Start::Resync(why) => {
                queue.push_back(resync(&hub, position, why).retry(RETRY));
            }
            Start::Replay(entries) => {
                // Only `retry:`: no message for the client, the missed events follow.
                queue.push_back(Event::default().retry(RETRY));
                queue.extend(entries.iter().filter_map(|e| render(&hub, &filter, e)));
            }
        }
        Self {
            hub,
            filter,
            queue,
            live,
            draining,
            lagged: false,
            _permit: permit,
        }
    }

    /// The next message; `None` when apid drains (or the relay is gone).
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(event);
            }
            let draining = self.draining.clone();
            let drained = async {
                match draining {
                    Some(d) => d.started().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                () = drained => return None,
                got = self.live.recv() => match got {
                    Ok(entry) => {
                        if std::mem::take(&mut self.lagged) {
                            let before = entry.seq.saturating_sub(1);
                            self.queue.push_back(resync(&self.hub, before, Resync::SlowClient));
                        }
                        if let Some(event) = render(&self.hub, &self.filter, &entry) {
                            self.queue.push_back(event);
                        }
                    }
                    Err(RecvError::Lagged(missed)) => {
                        tracing::debug!(missed, "an event stream's client reads too slowly");
                        self.lagged = true;
                    }
                    Err(RecvError::Closed) => return None,
                },
            }
        }
    }

    fn into_stream(self) -> impl futures::Stream<Item = Result<Event, Infallible>> + Send {
        futures::stream::unfold(self, |mut client| async move {
            let event = client.next().await?;
            Some((Ok(event), client))
        })
    }
}

/// `entry` as the client gets it, if its filter passes it (a `resync` always passes).
fn render(hub: &Hub, filter: &Filter, entry: &Entry) -> Option<Event> {
    match &entry.what {
        What::Event(event) => filter.matches(event).then(|| {
            Event::default()
                .id(hub.id(entry.seq))
                .event(&event.ty)
                .data(&event.json)
        }),
        What::Resync(why) => Some(resync(hub, entry.seq, *why)),
    }
}

fn resync(hub: &Hub, seq: u64, why: Resync) -> Event {
    Event::default()
        .id(hub.id(seq))
        .event("resync")
        .data(why.json())
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]
mod tests {
    use super::*;
    use crate::live::Relayed;

    fn text(event: &Event) -> String {
        format!("{event:?}")
    }

    fn tftp() -> What {
        What::Event(Relayed {
            subject: "dragonfly.tftp.transferred",
            ty: "computer.dragonfly.tftp.transferred".into(),
            json: "{\"type\":\"computer.dragonfly.tftp.transferred\"}".into(),
            about: None,
            machine_id: None,
            workflow_id: None,
            mac: None,
        })
    }

    #[tokio::test]
    async fn a_client_that_falls_behind_is_told_to_resync_then_goes_on() {
        let hub = Arc::new(Hub::new(16, 4));
        let opened = hub.open(None).unwrap();
        let mut client = Client::new(Arc::clone(&hub), opened, Filter::default(), None);
        let hello = text(&client.next().await.unwrap());
        assert!(
            hello.contains("event: hello") && hello.contains("retry: 3000"),
            "{hello}"
        );
        // More than its broadcast buffer, unread.
        let published = 1500u64;
        for _ in 0..published {
            hub.publish(tftp());
        }
        let resync = text(&client.next().await.unwrap());
        assert!(resync.contains("event: resync"), "{resync}");
        assert!(resync.contains("slowClient"), "{resync}");
        let first_kept = published - 1024 + 1;
        assert!(
            resync.contains(&format!("id: {}-{}\\n", hub.epoch(), first_kept - 1)),
            "just before the next message: {resync}"
        );
        let next = text(&client.next().await.unwrap());
        assert!(
            next.contains(&format!("id: {}-{first_kept}\\n", hub.epoch())),
            "{next}"
        );
        assert!(
            next.contains("event: computer.dragonfly.tftp.transferred"),
            "{next}"
        );
    }

    #[tokio::test]
    async fn a_stream_ends_when_the_drain_starts() {
        let hub = Arc::new(Hub::new(16, 4));
        let token = tokio_util::sync::CancellationToken::new();
        let opened = hub.open(None).unwrap();
        let mut client = Client::new(
            Arc::clone(&hub),
            opened,
            Filter::default(),
            Some(Draining::new(token.clone())),
        );
        assert!(client.next().await.is_some(), "hello");
        token.cancel();
        assert!(client.next().await.is_none());
        drop(client);
        assert_eq!(hub.open_streams(), 0, "its place is free");
    }
}
