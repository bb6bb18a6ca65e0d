//! The agent's files sent with `sendfile(2)` (dragonfly-http's file routes): one keep-alive
//! connection mixing scripts and files, pipelined requests, a client that leaves mid-body,
//! `max_file_transfers` (503 with `Retry-After`), a 64 MiB file checked by SHA-256, the
//! router's streamed path for the same answer, and Debian's curl resuming a download.

use std::process::Command;
use std::time::Duration;

use dragonfly_testkit::require_binary;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{Fixture, Server, bytes, mac, raw_get};

/// One response read off a connection: status, headers (lower-case names), body.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A connection that reads responses one after the other (bytes past one stay for the next).
struct Conn {
    stream: TcpStream,
    pending: Vec<u8>,
}

impl Conn {
    async fn open(s: &Server) -> Self {
        let addr = s.base.strip_prefix("http://").unwrap();
        Self {
            stream: TcpStream::connect(addr).await.unwrap(),
            pending: Vec::new(),
        }
    }

    async fn send(&mut self, method: &str, path: &str, extra: &str) {
        let text = format!("{method} {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n");
        self.stream.write_all(text.as_bytes()).await.unwrap();
    }

    async fn fill(&mut self) -> usize {
        let mut chunk = vec![0u8; 65536];
        let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        self.pending.extend_from_slice(&chunk[..n]);
        n
    }

    /// The next response; `head_only` for a HEAD (no body whatever Content-Length says).
    async fn reply(&mut self, head_only: bool) -> Reply {
        let end = loop {
            if let Some(i) = self.pending.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(self.fill().await > 0, "closed before a response head");
        };
        let head = String::from_utf8(self.pending[..end].to_vec()).unwrap();
        self.pending.drain(..end);
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.trim().to_ascii_lowercase(), v.trim().to_owned())
            })
            .collect();
        let mut reply = Reply {
            status,
            headers,
            body: Vec::new(),
        };
        let len: usize = if head_only {
            0
        } else {
            reply.header("content-length").unwrap().parse().unwrap()
        };
        while self.pending.len() < len {
            assert!(self.fill().await > 0, "closed in a body");
        }
        reply.body = self.pending.drain(..len).collect();
        reply
    }

    async fn get(&mut self, path: &str, extra: &str) -> Reply {
        self.send("GET", path, extra).await;
        self.reply(false).await
    }

    /// Whether the server closed the connection (within a second).
    async fn closed(&mut self) -> bool {
        let mut b = [0u8; 16];
        matches!(
            tokio::time::timeout(Duration::from_secs(1), self.stream.read(&mut b)).await,
            Ok(Ok(0) | Err(_))
        )
    }
}

#[tokio::test]
async fn one_keep_alive_connection_carries_scripts_and_files_in_any_order() {
    let s = Server::start().await;
    let k = s.fx.kernel.clone();
    let mut c = Conn::open(&s).await;
    let r = c.get("/healthz", "").await;
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ok\n"[..]));
    let r = c.get("/agent/vmlinuz", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, k);
    assert!(r.header("date").unwrap().ends_with(" GMT"));
    let tag = r.header("etag").unwrap().to_owned();
    let r = c.get(&format!("/boot/{}?platform=efi", mac(9)), "").await;
    assert_eq!(r.status, 200);
    assert!(String::from_utf8(r.body).unwrap().starts_with("#!ipxe"));
    c.send("HEAD", "/agent/vmlinuz", "").await;
    let r = c.reply(true).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-length"),
        Some(k.len().to_string().as_str())
    );
    // Suffix range, then If-Range: the current validator gets the part, a stale one the whole.
    let r = c.get("/agent/vmlinuz", "Range: bytes=-1000\r\n").await;
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &k[k.len() - 1000..]);
    let r = c
        .get(
            "/agent/vmlinuz",
            &format!("Range: bytes=10-19\r\nIf-Range: {tag}\r\n"),
        )
        .await;
    assert_eq!((r.status, r.body.as_slice()), (206, &k[10..20]));
    let r = c
        .get(
            "/agent/vmlinuz",
            "Range: bytes=10-19\r\nIf-Range: \"stale\"\r\n",
        )
        .await;
    assert_eq!((r.status, r.body.len()), (200, k.len()));
    let r = c.get("/agent/vmlinuz", "Range: bytes=300000-\r\n").await;
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */300000"));
    let r = c.get("/agent/unlisted", "").await;
    assert_eq!(r.status, 404);
    let r = c.get("/healthz", "").await;
    assert_eq!(r.status, 200);
    // Asked to close: answered, then closed.
    let r = c.get("/agent/vmlinuz", "Connection: close\r\n").await;
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(r.body, k);
    assert!(c.closed().await);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let s = Server::start().await;
    let k = s.fx.kernel.clone();
    let mut c = Conn::open(&s).await;
    c.stream
        .write_all(
            b"GET /agent/vmlinuz HTTP/1.1\r\nHost: t\r\nRange: bytes=0-9\r\n\r\n\
              GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n\
              GET /agent/vmlinuz HTTP/1.1\r\nHost: t\r\nRange: bytes=5-6\r\n\r\n\
              GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    assert_eq!(c.reply(false).await.body, &k[..10]);
    assert_eq!(c.reply(false).await.body, b"ok\n");
    assert_eq!(c.reply(false).await.body, &k[5..7]);
    assert_eq!(c.reply(false).await.body, b"ok\n");
    assert!(c.closed().await);
}

#[tokio::test]
async fn malformed_heads_get_400_and_a_percent_encoded_name_the_same_file() {
    let s = Server::start().await;
    let r = raw_get(
        &s.base,
        "/agent/vmlinuz HTTP/1.1\r\nBad Header\r\n\r\nGET /x",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    // The router decodes %76: not the file routes' to guess, the streamed path answers alike.
    let r = s.http.get(s.url("/agent/%76mlinuz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), s.fx.kernel.as_slice());
}

/// A 64 MiB sparse file with data in a few places, its SHA-256, in a fixture's agent_dir.
fn with_large_file(fx: &Fixture) -> [u8; 32] {
    use std::io::{Seek, SeekFrom, Write};
    let path = fx.agent_dir.join("large.img");
    let mut f = std::fs::File::create(&path).unwrap();
    for (i, at) in [0u64, 5 << 20, (32 << 20) + 4095, (64 << 20) - 70_000]
        .into_iter()
        .enumerate()
    {
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&bytes(65_536, 40 + i as u32)).unwrap();
    }
    f.set_len(64 << 20).unwrap();
    drop(f);
    Sha256::digest(std::fs::read(&path).unwrap()).into()
}

fn large_files(r: &mut dragonfly_ipxed::config::RawIpxed) {
    r.agent_files = Some(vec![
        "vmlinuz".into(),
        "initrd.img".into(),
        "large.img".into(),
    ]);
}

#[tokio::test]
async fn a_64_mib_file_arrives_whole_and_a_range_of_it_too() {
    let fx = Fixture::new();
    let digest = with_large_file(&fx);
    let s = Server::start_with(fx, large_files, None).await;
    let r = s.http.get(s.url("/agent/large.img")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body = r.bytes().await.unwrap();
    assert_eq!(body.len(), 64 << 20);
    assert_eq!(<[u8; 32]>::from(Sha256::digest(&body)), digest);
    let r = s
        .http
        .get(s.url("/agent/large.img"))
        .header("range", "bytes=5242000-")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &body[5_242_000..]);
}

#[tokio::test]
async fn over_max_file_transfers_is_503_with_retry_after_and_a_leaving_client_frees_its_place() {
    let fx = Fixture::new();
    let digest = with_large_file(&fx);
    let s = Server::start_with(
        fx,
        |r| {
            large_files(r);
            r.max_file_transfers = Some(1);
        },
        None,
    )
    .await;
    // A client that starts the large file and stops reading holds the one place.
    let mut stalled = Conn::open(&s).await;
    stalled.send("GET", "/agent/large.img", "").await;
    assert!(stalled.fill().await > 0);
    let r = s.http.get(s.url("/agent/vmlinuz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "10");
    // HEAD sends no body and needs no place; scripts are not files.
    let head = s.http.head(s.url("/agent/vmlinuz")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(s.get("/healthz").await.0, 200);
    // It leaves mid-body: its place is free again, the server carries on.
    drop(stalled);
    let mut whole = None;
    for _ in 0..50 {
        let r = s.http.get(s.url("/agent/large.img")).send().await.unwrap();
        if r.status() == 200 {
            whole = Some(r.bytes().await.unwrap());
            break;
        }
        assert_eq!(r.status(), 503);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let whole = whole.expect("the place came back");
    assert_eq!(<[u8; 32]>::from(Sha256::digest(&whole)), digest);
    // Many clients leaving mid-body at once: nothing held afterwards.
    for _ in 0..20 {
        let mut c = Conn::open(&s).await;
        c.send("GET", "/agent/large.img", "").await;
        let _ = c.fill().await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = s.http.get(s.url("/agent/vmlinuz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().as_ref(), s.fx.kernel.as_slice());
}

#[test]
fn curl_resumes_a_cut_download() {
    let Some(curl) = require_binary("curl", "apt-get install curl") else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fx = Fixture::new();
    let digest = with_large_file(&fx);
    let whole = std::fs::read(fx.agent_dir.join("large.img")).unwrap();
    let s = rt.block_on(Server::start_with(fx, large_files, None));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("large.img");
    // What a first, cut download left behind.
    std::fs::write(&out, &whole[..(20 << 20) + 123]).unwrap();
    let _guard = rt.enter();
    let st = Command::new(&curl)
        .args(["-sSf", "-C", "-", "-o"])
        .arg(&out)
        .arg(s.url("/agent/large.img"))
        .status()
        .unwrap();
    assert!(st.success());
    let got = std::fs::read(&out).unwrap();
    assert_eq!(got.len(), whole.len());
    assert_eq!(<[u8; 32]>::from(Sha256::digest(&got)), digest);
}
