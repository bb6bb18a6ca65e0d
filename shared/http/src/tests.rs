//! The serving loop over real TCP on loopback: each bound is met by a client that tries to
//! outlast it, and a well-behaved client is served meanwhile.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{HttpConfig, RawHttpConfig, ServeError, Server, Tls};

struct Running {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), ServeError>>,
}

fn app() -> Router {
    Router::new()
        .route("/", get(|| async { "ok" }))
        .route(
            "/peer",
            get(
                |axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>| async move {
                    peer.ip().to_string()
                },
            ),
        )
        .route("/echo", post(|body: String| async move { body.len().to_string() }))
        .route("/ticks", get(ticks))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                "slow"
            }),
        )
}

/// A response that never ends by itself (as Server-Sent Events): a line every 50 ms until the
/// listener drains.
async fn ticks(axum::Extension(draining): axum::Extension<crate::Draining>) -> axum::body::Body {
    let lines = futures::stream::unfold((draining, 0u32), |(draining, n)| async move {
        tokio::select! {
            () = draining.started() => None,
            () = tokio::time::sleep(Duration::from_millis(50)) => {
                Some((Ok::<_, std::convert::Infallible>(format!("tick {n}\n")), (draining, n + 1)))
            }
        }
    });
    axum::body::Body::from_stream(lines)
}

fn config(tweak: impl FnOnce(&mut RawHttpConfig)) -> HttpConfig {
    let mut raw = RawHttpConfig::default();
    tweak(&mut raw);
    HttpConfig::validate(raw).unwrap()
}

async fn start(config: HttpConfig, tls: Option<Tls>) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = Server::new("test", app(), config, tls);
    let task = tokio::spawn(server.serve(listener, shutdown.clone()));
    Running {
        addr,
        shutdown,
        task,
    }
}

/// A connection from `from` (any 127.x.y.z is loopback on Linux).
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(from.parse().unwrap(), 0))
        .unwrap();
    socket.connect(to).await.unwrap()
}

/// Sends a whole GET and returns the response's text (the server closes after it).
async fn get_text(from: &str, to: SocketAddr, path: &str) -> String {
    let mut s = connect_from(from, to).await;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .expect("a response within 5 s")
        .unwrap();
    out
}

/// How long until the server closes `s` (reads end or fail), if it does within `limit`.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return start.elapsed(),
                Ok(_) => {}
            }
        }
    })
    .await
    .ok()
}

#[tokio::test]
async fn half_sent_headers_are_cut_at_the_header_timeout() {
    let r = start(config(|c| c.header_timeout = Some("300ms".into())), None).await;
    let mut slow = connect_from("127.0.0.1", r.addr).await;
    slow.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    // A header line now and then does not reset the clock.
    tokio::time::sleep(Duration::from_millis(150)).await;
    slow.write_all(b"X-A: b\r\n").await.unwrap();
    let took = closed_within(&mut slow, Duration::from_secs(3))
        .await
        .expect("closed");
    assert!(took < Duration::from_millis(600), "{took:?}");
    // Nothing sent at all: same bound.
    let mut silent = connect_from("127.0.0.1", r.addr).await;
    let took = closed_within(&mut silent, Duration::from_secs(3))
        .await
        .expect("closed");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(800),
        "{took:?}"
    );
    assert!(get_text("127.0.0.1", r.addr, "/").await.ends_with("ok"));
}

#[tokio::test]
async fn a_trickled_body_is_cut_at_the_body_timeout() {
    let r = start(config(|c| c.body_timeout = Some("400ms".into())), None).await;
    let mut s = connect_from("127.0.0.1", r.addr).await;
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n")
        .await
        .unwrap();
    let start = Instant::now();
    // One byte every 100 ms: each read is prompt, the whole is not.
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let _ = s.write_all(b"x").await;
        match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => response.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        assert!(start.elapsed() < Duration::from_secs(3), "never cut");
    }
    let took = start.elapsed();
    let text = String::from_utf8_lossy(&response);
    assert!(!text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        took >= Duration::from_millis(350) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    // A prompt body is fine.
    let mut s = connect_from("127.0.0.1", r.addr).await;
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc",
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(
        out.starts_with("HTTP/1.1 200") && out.ends_with('3'),
        "{out}"
    );
}

#[tokio::test]
async fn a_silent_connection_is_closed_at_the_idle_timeout() {
    let r = start(
        config(|c| {
            c.header_timeout = Some("5s".into());
            c.idle_timeout = Some("300ms".into());
        }),
        None,
    )
    .await;
    let mut s = connect_from("127.0.0.1", r.addr).await;
    let took = closed_within(&mut s, Duration::from_secs(3))
        .await
        .expect("closed");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(1000),
        "{took:?}"
    );
}

#[tokio::test]
async fn connections_beyond_the_per_client_cap_are_closed_at_once() {
    let r = start(
        config(|c| {
            c.max_connections_per_client = Some(3);
            c.header_timeout = Some("5s".into());
        }),
        None,
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from("127.0.0.2", r.addr).await);
    }
    // Let the server accept them, in order.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..5 {
        let mut extra = connect_from("127.0.0.2", r.addr).await;
        let took = closed_within(&mut extra, Duration::from_secs(1))
            .await
            .expect("closed at once");
        assert!(took < Duration::from_millis(200), "{took:?}");
    }
    // The held ones were kept, and another address is served.
    for s in &mut held {
        assert_eq!(closed_within(s, Duration::from_millis(50)).await, None);
    }
    assert!(
        get_text("127.0.0.3", r.addr, "/peer")
            .await
            .ends_with("127.0.0.3")
    );
    // Once they go, their places are free again.
    drop(held);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(get_text("127.0.0.2", r.addr, "/").await.ends_with("ok"));
}

#[tokio::test]
async fn connections_beyond_the_total_cap_are_closed_at_once() {
    let r = start(
        config(|c| {
            c.max_connections = Some(4);
            c.max_connections_per_client = Some(2);
            c.header_timeout = Some("5s".into());
        }),
        None,
    )
    .await;
    let mut held = Vec::new();
    for from in ["127.0.0.4", "127.0.0.4", "127.0.0.5", "127.0.0.5"] {
        held.push(connect_from(from, r.addr).await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut extra = connect_from("127.0.0.6", r.addr).await;
    let took = closed_within(&mut extra, Duration::from_secs(1))
        .await
        .expect("closed at once");
    assert!(took < Duration::from_millis(200), "{took:?}");
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(get_text("127.0.0.6", r.addr, "/").await.ends_with("ok"));
}

#[tokio::test]
async fn shutdown_lets_requests_in_flight_finish_and_stops_accepting() {
    let r = start(HttpConfig::default(), None).await;
    let addr = r.addr;
    let in_flight = tokio::spawn(async move { get_text("127.0.0.1", addr, "/slow").await });
    // An idle keep-alive connection does not hold the drain up.
    let mut idle = connect_from("127.0.0.1", addr).await;
    idle.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = idle.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = Instant::now();
    r.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(3), r.task)
        .await
        .expect("drained")
        .unwrap()
        .unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert!(in_flight.await.unwrap().ends_with("slow"));
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
}

#[tokio::test]
async fn a_response_that_never_ends_ends_when_the_drain_starts() {
    let r = start(HttpConfig::default(), None).await;
    let mut s = connect_from("127.0.0.1", r.addr).await;
    s.write_all(b"GET /ticks HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&seen).contains("tick 2") {
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf))
            .await
            .expect("ticks")
            .unwrap();
        assert!(n > 0, "closed early");
        seen.extend_from_slice(&buf[..n]);
    }
    let start = Instant::now();
    r.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(3), r.task)
        .await
        .expect("the drain does not wait for the stream")
        .unwrap()
        .unwrap();
    assert!(
        start.elapsed() < Duration::from_millis(500),
        "{:?}",
        start.elapsed()
    );
    // The response ended properly (the last chunk) and the connection closed.
    let took = closed_within(&mut s, Duration::from_secs(1)).await;
    assert!(took.is_some(), "the connection stays open");
}

#[tokio::test]
async fn tls_serves_a_client_that_trusts_the_certificate() {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let tls = Tls::from_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).unwrap();
    let r = start(
        config(|c| c.header_timeout = Some("500ms".into())),
        Some(tls),
    )
    .await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
    let tcp = TcpStream::connect(r.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut s = connector.connect(name, tcp).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    assert!(
        out.starts_with("HTTP/1.1 200") && out.ends_with("ok"),
        "{out}"
    );

    // Plain HTTP to the TLS port gets nothing useful, and a silent client is cut at the
    // header timeout, handshake included.
    let plain = get_text("127.0.0.1", r.addr, "/").await;
    assert!(!plain.contains("200 OK"), "{plain}");
    let mut silent = TcpStream::connect(r.addr).await.unwrap();
    let took = closed_within(&mut silent, Duration::from_secs(3))
        .await
        .expect("closed");
    assert!(took < Duration::from_millis(1000), "{took:?}");
}

#[test]
fn tls_material_is_checked() {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let other = rcgen::KeyPair::generate().unwrap();
    assert!(matches!(
        Tls::from_pem(b"", key.serialize_pem().as_bytes()),
        Err(crate::TlsError::NoCertificate)
    ));
    assert!(matches!(
        Tls::from_pem(cert.pem().as_bytes(), b"not a key"),
        Err(crate::TlsError::Key(_))
    ));
    let mismatch = Tls::from_pem(cert.pem().as_bytes(), other.serialize_pem().as_bytes());
    assert!(
        matches!(mismatch, Err(crate::TlsError::Config(_))),
        "{mismatch:?}"
    );
}

/// File routes for the tests: `/file` is `path` (with `Range: bytes=N-` honoured), `/busy` a
/// short answer; anything else is the router's.
#[derive(Debug)]
struct TestFiles {
    path: std::path::PathBuf,
}

impl crate::FileRoutes for TestFiles {
    fn answer<'a>(&'a self, request: &'a crate::FileRequest<'a>) -> crate::Answering<'a> {
        Box::pin(std::future::ready(self.answer_now(request)))
    }
}

impl TestFiles {
    fn answer_now(&self, request: &crate::FileRequest<'_>) -> Option<crate::FileAnswer> {
        match request.path {
            "/file" => {
                let file = std::fs::File::open(&self.path).unwrap();
                let size = file.metadata().unwrap().len();
                let offset = request
                    .headers
                    .get("range")
                    .and_then(|v| {
                        v.to_str()
                            .ok()?
                            .strip_prefix("bytes=")?
                            .strip_suffix('-')?
                            .parse()
                            .ok()
                    })
                    .unwrap_or(0u64);
                Some(crate::FileAnswer {
                    status: if offset > 0 {
                        http::StatusCode::PARTIAL_CONTENT
                    } else {
                        http::StatusCode::OK
                    },
                    headers: http::HeaderMap::new(),
                    body: crate::FileBody::File(crate::FilePart {
                        file,
                        offset,
                        len: size - offset,
                        permit: None,
                    }),
                })
            }
            "/busy" => Some(crate::FileAnswer::text(
                http::StatusCode::SERVICE_UNAVAILABLE,
                "busy\n",
            )),
            _ => None,
        }
    }
}

/// A server with file routes over a file of `len` deterministic bytes; the router serves the
/// same file at `/file` (what it answers after a request with a body took the connection).
async fn start_with_files(config: HttpConfig, len: usize) -> (Running, Vec<u8>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("file");
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let files = std::sync::Arc::new(TestFiles { path });
    let routed = std::sync::Arc::clone(&files);
    let app = app().route(
        "/file",
        get(move |headers: http::HeaderMap| {
            let routed = std::sync::Arc::clone(&routed);
            async move {
                let request = crate::FileRequest {
                    method: &http::Method::GET,
                    path: "/file",
                    headers: &headers,
                    peer: "127.0.0.1:1".parse().unwrap(),
                };
                crate::FileRoutes::answer(routed.as_ref(), &request)
                    .await
                    .unwrap()
                    .streamed()
                    .await
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = Server::new("test", app, config, None).with_files(files);
    let task = tokio::spawn(server.serve(listener, shutdown.clone()));
    (
        Running {
            addr,
            shutdown,
            task,
        },
        data,
        dir,
    )
}

/// Reads one response (status line and headers, then Content-Length bytes) off `s`.
async fn read_response(s: &mut TcpStream, pending: &mut Vec<u8>) -> (String, Vec<u8>) {
    let mut buf = vec![0u8; 65536];
    let end = loop {
        if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before a head");
        pending.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8(pending.drain(..end).collect()).unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .unwrap()
        .parse()
        .unwrap();
    while pending.len() < len {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed in a body");
        pending.extend_from_slice(&buf[..n]);
    }
    (head, pending.drain(..len).collect())
}

#[tokio::test]
async fn file_routes_share_a_connection_with_the_router_and_a_body_hands_it_over() {
    let (r, data, _dir) = start_with_files(HttpConfig::default(), 3 << 20).await;
    let mut s = connect_from("127.0.0.1", r.addr).await;
    let mut pending = Vec::new();
    let requests: [(&[u8], &str, &[u8]); 6] = [
        (
            b"GET /file HTTP/1.1\r\nHost: t\r\n\r\n",
            "HTTP/1.1 200",
            &data,
        ),
        (b"GET / HTTP/1.1\r\nHost: t\r\n\r\n", "HTTP/1.1 200", b"ok"),
        (
            b"GET /file HTTP/1.1\r\nRange: bytes=100-\r\n\r\n",
            "HTTP/1.1 206",
            &data[100..],
        ),
        (b"HEAD /busy HTTP/1.1\r\n\r\n", "HTTP/1.1 503", b""),
        // A body: hyper takes the rest of the connection, the router answers from then on.
        (
            b"POST /echo HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            "HTTP/1.1 200",
            b"3",
        ),
        (b"GET /file HTTP/1.1\r\n\r\n", "HTTP/1.1 200", &data),
    ];
    for (request, status, body) in requests {
        s.write_all(request).await.unwrap();
        let (head, got) = if request.starts_with(b"HEAD") {
            // No body for HEAD, whatever its Content-Length says.
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            (String::from_utf8_lossy(&buf[..n]).into_owned(), Vec::new())
        } else {
            read_response(&mut s, &mut pending).await
        };
        assert!(head.starts_with(status), "{head}");
        assert!(
            got == body,
            "{head}: {} bytes, wanted {}",
            got.len(),
            body.len()
        );
    }
}

#[tokio::test]
async fn malformed_or_oversized_heads_are_refused_and_closed() {
    let (r, _data, _dir) = start_with_files(HttpConfig::default(), 10).await;
    for (request, status) in [
        (
            b"GET /file HTTP/1.1\r\nNo colon\r\n\r\n".to_vec(),
            "HTTP/1.1 400",
        ),
        (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
            "HTTP/1.1 400",
        ),
        (
            format!("GET /file HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(40_000)).into_bytes(),
            "HTTP/1.1 431",
        ),
    ] {
        let mut s = connect_from("127.0.0.1", r.addr).await;
        s.write_all(&request).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out))
            .await
            .expect("closed")
            .unwrap();
        let out = String::from_utf8_lossy(&out);
        assert!(out.starts_with(status), "{out}");
    }
    assert!(get_text("127.0.0.1", r.addr, "/").await.ends_with("ok"));
}

#[tokio::test]
async fn a_stalled_file_answer_is_cut_at_the_idle_timeout() {
    let (r, data, _dir) =
        start_with_files(config(|c| c.idle_timeout = Some("300ms".into())), 64 << 20).await;
    let mut s = connect_from("127.0.0.1", r.addr).await;
    s.write_all(b"GET /file HTTP/1.1\r\n\r\n").await.unwrap();
    // Read nothing for a while: the socket fills, sendfile makes no progress.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => got += n,
            Err(_) => panic!("still open"),
        }
    }
    assert!(got < data.len(), "the whole file arrived");
    assert!(get_text("127.0.0.1", r.addr, "/").await.ends_with("ok"));
}

#[tokio::test]
async fn the_drain_lets_a_file_answer_finish_and_closes_idle_connections() {
    let (r, data, _dir) = start_with_files(HttpConfig::default(), 32 << 20).await;
    let mut idle = connect_from("127.0.0.1", r.addr).await;
    let mut pending = Vec::new();
    idle.write_all(b"GET /file HTTP/1.1\r\nRange: bytes=33554000-\r\n\r\n")
        .await
        .unwrap();
    let (_, tail) = read_response(&mut idle, &mut pending).await;
    assert_eq!(tail, &data[33_554_000..]);
    let mut busy = connect_from("127.0.0.1", r.addr).await;
    busy.write_all(b"GET /file HTTP/1.1\r\n\r\n").await.unwrap();
    let mut first = [0u8; 1024];
    assert!(busy.read(&mut first).await.unwrap() > 0);
    r.shutdown.cancel();
    // The idle one is closed at once; the busy one still gets every byte, and then the end.
    assert!(
        closed_within(&mut idle, Duration::from_secs(1))
            .await
            .is_some()
    );
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), busy.read_to_end(&mut rest))
        .await
        .expect("finished")
        .unwrap();
    let whole: Vec<u8> = first.iter().chain(rest.iter()).copied().collect();
    let body_at = whole.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(&whole[body_at..], data.as_slice());
    tokio::time::timeout(Duration::from_secs(3), r.task)
        .await
        .expect("drained")
        .unwrap()
        .unwrap();
}
