//! Metrics: the registry the frame owns, and the tiny server that answers `GET /metrics`.
//!
//! Why it exists: each daemon's counters and latencies must be scrapable by Prometheus, and
//! six daemons each serving them their own way is how one would be left unbounded or
//! forgotten. So the frame creates one [`Metrics`] per process, registers the process basics
//! (`process_start_time_seconds`, `dragonfly_build_info`, the bus publisher's
//! `dragonfly_bus_events_{published,dropped}_total`), hands it to `run` in the
//! [`crate::Context`], and serves it on the socket named `metrics` — from systemd
//! (`FileDescriptorName=metrics`) or from `[metrics] <daemon> = "IP:PORT"`. Without either,
//! nothing listens; the counters still count.
//!
//! The server is deliberately not dragonfly-http's: that crate builds on this one (for its
//! config validators), so the frame cannot use it, and what is served here is one fixed `GET`
//! with no body, on loopback. It holds at most [`MAX_CONNECTIONS`] connections (more are
//! closed as they are accepted), gives each [`EXCHANGE_TIMEOUT`] for the whole exchange,
//! reads at most [`MAX_HEAD_BYTES`] of request head, answers once and closes.
//!
//! A client that accepts `application/openmetrics-text` (Prometheus does) gets OpenMetrics,
//! as the encoder writes it; any other (curl, `promtool check metrics`) gets the same
//! registry in the classic text format 0.0.4 ([`to_text_format`]).
//!
//! What it must never do: take a label value from the network or from a machine (a MAC, a
//! machine id, a raw path): every label set is a closed set chosen in code, so the number of
//! series is bounded whatever clients do.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dragonfly_bus::Publisher;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Metric, Registry};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use prometheus_client;

/// The name of the socket (`FileDescriptorName=`) the frame serves metrics on.
pub const SOCKET_NAME: &str = "metrics";

/// Connections held at once; more are closed as soon as they are accepted. A Prometheus
/// server scrapes with one connection at a time.
pub const MAX_CONNECTIONS: usize = 4;

/// The whole exchange — request head in, answer out — must fit in this.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

/// The request head may be at most this long.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;

/// What the encoder produces, for clients that accept it.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The classic text format, for every other client.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `dragonfly_build_info`'s labels.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Build {
    daemon: &'static str,
    version: &'static str,
}

/// A process's metrics registry. Cheap to clone; every clone registers into the same one.
#[derive(Debug, Clone)]
pub struct Metrics {
    daemon: &'static str,
    registry: Arc<Mutex<Registry>>,
}

impl Metrics {
    /// A registry for daemon `daemon` (`dhcpd`) holding the process basics: its start time and
    /// build information.
    pub fn new(daemon: &'static str) -> Self {
        let mut registry = Registry::default();
        let started = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        started.set(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        registry.register(
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch, in seconds",
            started,
        );
        // A gauge of 1, as Prometheus's own `prometheus_build_info`: OpenMetrics' `info` type
        // has no equivalent in the classic format.
        let build = Family::<Build, Gauge>::default();
        build
            .get_or_create(&Build {
                daemon,
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register(
            "dragonfly_build_info",
            "The daemon and the version it was built from (always 1)",
            build,
        );
        Self {
            daemon,
            registry: Arc::new(Mutex::new(registry)),
        }
    }

    /// Registers `metric` as `dragonfly_<daemon>_<name>` (a counter gets `_total` appended by
    /// the encoder). Label values must come from closed sets: see the module docs.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        let name = format!("dragonfly_{}_{name}", self.daemon);
        self.lock().register(name, help, metric);
    }

    /// Counts the bus publisher's events: `dragonfly_bus_events_published_total` and
    /// `dragonfly_bus_events_dropped_total` (queue full, NATS refused, abandoned at stop).
    pub fn register_publisher(&self, events: &Publisher) {
        self.lock().register_collector(Box::new(PublisherCollector {
            events: events.clone(),
        }));
    }

    /// The registry in the OpenMetrics text format ([`OPENMETRICS`]).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail; a metric that failed to encode would be a bug in
        // the encoder, and the answer is then what was written before it.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.lock());
        text
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        // Registration never panics half-way, so a poisoned registry is still consistent.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Reads the publisher's counters at each scrape.
#[derive(Debug)]
struct PublisherCollector {
    events: Publisher,
}

impl Collector for PublisherCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let (published, dropped) = self
            .events
            .stats()
            .map_or((0, 0), |s| (s.published(), s.dropped()));
        for (name, help, value) in [
            (
                "dragonfly_bus_events_published",
                "Events handed to NATS by this daemon's publisher",
                published,
            ),
            (
                "dragonfly_bus_events_dropped",
                "Events this daemon's publisher dropped (queue full, NATS refused, abandoned at stop)",
                dropped,
            ),
        ] {
            let counter = ConstCounter::new(value);
            let metric = encoder.encode_descriptor(name, help, None, counter.metric_type())?;
            counter.encode(metric)?;
        }
        Ok(())
    }
}

/// Serves `metrics` on `listener` until `shutdown` is cancelled. See the module docs for the
/// bounds. Never returns an error: a failed accept or connection is logged and forgotten.
pub async fn serve(listener: TcpListener, metrics: Metrics, shutdown: CancellationToken) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving metrics");
    }
    let places = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::debug!(error = %e, "metrics: accept failed");
                // Out of descriptors: do not spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&places).try_acquire_owned() else {
            continue; // Dropping the stream closes it.
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if tokio::time::timeout(EXCHANGE_TIMEOUT, exchange(stream, &metrics))
                .await
                .is_err()
            {
                tracing::debug!("metrics: a client took too long; closed");
            }
        });
    }
}

async fn exchange(mut stream: TcpStream, metrics: &Metrics) {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
        if head.len() >= MAX_HEAD_BYTES {
            break; // answer() refuses an incomplete head.
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n.min(MAX_HEAD_BYTES - head.len())]),
        }
    }
    let answer = match answer(&head) {
        Answer::Metrics { openmetrics: true } => response("200 OK", OPENMETRICS, &metrics.encode()),
        Answer::Metrics { openmetrics: false } => {
            response("200 OK", TEXT_FORMAT, &to_text_format(&metrics.encode()))
        }
        Answer::NotFound => response("404 Not Found", "text/plain", "not found\n"),
        Answer::NotAllowed => response("405 Method Not Allowed", "text/plain", "GET only\n"),
        Answer::Bad => response("400 Bad Request", "text/plain", "bad request\n"),
    };
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn response(status: &str, content_type: &str, body: &str) -> String {
    let extra = if status.starts_with("405") {
        "Allow: GET\r\n"
    } else {
        ""
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

/// What a request head gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// The registry, in OpenMetrics when the client accepts it.
    Metrics {
        openmetrics: bool,
    },
    NotFound,
    NotAllowed,
    Bad,
}

/// Pure: the answer to a request head (its bytes up to and including the blank line).
fn answer(head: &[u8]) -> Answer {
    if !head.windows(4).any(|w| w == b"\r\n\r\n") {
        return Answer::Bad;
    }
    let Some(line) = head.split(|&b| b == b'\n').next() else {
        return Answer::Bad;
    };
    let Ok(line) = std::str::from_utf8(line) else {
        return Answer::Bad;
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Answer::Bad;
    };
    if !version.starts_with("HTTP/1.") {
        return Answer::Bad;
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    let openmetrics = head
        .split(|&b| b == b'\n')
        .skip(1)
        .filter_map(|line| std::str::from_utf8(line).ok())
        .filter_map(|line| line.split_once(':'))
        .any(|(name, value)| {
            name.trim().eq_ignore_ascii_case("accept")
                && value
                    .to_ascii_lowercase()
                    .contains("application/openmetrics-text")
        });
    match (path, method) {
        ("/metrics", "GET") => Answer::Metrics { openmetrics },
        ("/metrics", _) => Answer::NotAllowed,
        _ => Answer::NotFound,
    }
}

/// OpenMetrics text, as [`Metrics::encode`] writes it, in the classic text format 0.0.4: a
/// counter family `x` is named `x_total` in its `HELP` and `TYPE` lines (its samples already
/// are), and `# EOF` and `# UNIT` lines go. Pure. Correct for what this crate's encoder writes
/// from our registries: no `info` or `stateset` families, no exemplars, no quote or backslash
/// in help texts.
pub fn to_text_format(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // The encoder writes each family's HELP right before its TYPE.
    let mut help: Option<&str> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let name = if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_owned()
            };
            if let Some(text) = help.take() {
                let text = text.split_once(' ').map_or("", |(_, text)| text);
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[test]
    fn answers_get_metrics_only() {
        let text = Answer::Metrics { openmetrics: false };
        assert_eq!(answer(b"GET /metrics HTTP/1.1\r\n\r\n"), text);
        assert_eq!(
            answer(b"GET /metrics?x=1 HTTP/1.0\r\nHost: a\r\n\r\n"),
            text
        );
        assert_eq!(
            answer(
                b"GET /metrics HTTP/1.1\r\nACCEPT: application/openmetrics-text;version=1.0.0,\
                  text/plain;version=0.0.4;q=0.5\r\n\r\n"
            ),
            Answer::Metrics { openmetrics: true }
        );
        assert_eq!(answer(b"GET / HTTP/1.1\r\n\r\n"), Answer::NotFound);
        assert_eq!(answer(b"GET /metricsx HTTP/1.1\r\n\r\n"), Answer::NotFound);
        assert_eq!(
            answer(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Answer::NotAllowed
        );
        assert_eq!(answer(b"GET /metrics HTTP/1.1\r\n"), Answer::Bad);
        assert_eq!(answer(b"GET /metrics\r\n\r\n"), Answer::Bad);
        assert_eq!(answer(b"\xff\xfe /metrics HTTP/1.1\r\n\r\n"), Answer::Bad);
        assert_eq!(answer(b""), Answer::Bad);
    }

    #[test]
    fn registers_with_the_daemon_prefix_and_basics() {
        let metrics = Metrics::new("demo");
        let counter = Counter::<u64>::default();
        metrics.register("things", "Things", counter.clone());
        counter.inc_by(3);
        metrics.register_publisher(&Publisher::disabled());
        let text = metrics.encode();
        assert!(text.contains("dragonfly_demo_things_total 3"), "{text}");
        assert!(text.contains("process_start_time_seconds "), "{text}");
        assert!(
            text.contains("dragonfly_build_info{daemon=\"demo\""),
            "{text}"
        );
        assert!(
            text.contains("dragonfly_bus_events_dropped_total 0"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        let classic = to_text_format(&text);
        assert!(
            classic.contains(
                "# HELP dragonfly_demo_things_total Things.\n\
                 # TYPE dragonfly_demo_things_total counter\n\
                 dragonfly_demo_things_total 3\n"
            ),
            "{classic}"
        );
        assert!(
            classic.contains("# TYPE dragonfly_build_info gauge\n"),
            "{classic}"
        );
        assert!(!classic.contains("# EOF"), "{classic}");
    }

    #[tokio::test]
    async fn serves_over_tcp_and_closes_past_the_cap() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(listener, Metrics::new("demo"), shutdown.clone()));
        // MAX_CONNECTIONS silent clients hold every place...
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            held.push(TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        // ...so the next connection is closed unanswered.
        let mut refused = TcpStream::connect(addr).await.unwrap();
        let mut out = Vec::new();
        refused.read_to_end(&mut out).await.unwrap_or_default();
        assert!(out.is_empty());
        drop(held);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut client = TcpStream::connect(addr).await.unwrap();
        client
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        client.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("dragonfly_build_info"), "{out}");
        shutdown.cancel();
        server.await.unwrap();
    }
}
