//! Out of descriptors: accept fails with EMFILE while connections wait in the backlog. The
//! loop must pause and go on (not spin on the failing accept, not stop serving), and every
//! waiting client is served once descriptors free up.
//!
//! Its own test binary: it lowers this process's RLIMIT_NOFILE, which would starve any test
//! running beside it.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use dragonfly_http::{HttpConfig, Server};
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use tokio_util::sync::CancellationToken;

const CLIENTS: usize = 60;
/// Descriptors left to the server above those in use when it starts.
const SPARE: u64 = 8;

fn highest_fd() -> u64 {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .max()
        .unwrap()
}

fn cpu_time() -> Duration {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).unwrap();
    let t = |tv: nix::sys::time::TimeVal| {
        Duration::from_secs(tv.tv_sec().try_into().unwrap())
            + Duration::from_micros(tv.tv_usec().try_into().unwrap())
    };
    t(usage.user_time()) + t(usage.system_time())
}

#[test]
fn accept_backs_off_when_out_of_descriptors_and_serves_everyone_after() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    // Every client is connected (in the kernel's backlog) and has sent its request before the
    // server accepts anything.
    let mut clients: Vec<TcpStream> = (0..CLIENTS)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                .unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s
        })
        .collect();
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    let limit = highest_fd() + 1 + SPARE;
    setrlimit(Resource::RLIMIT_NOFILE, limit, hard).unwrap();
    // Fill every free descriptor below the limit (there are holes), then free SPARE of them.
    let mut filler: Vec<_> = std::iter::from_fn(|| std::fs::File::open("/dev/null").ok()).collect();
    filler.truncate(filler.len().saturating_sub(usize::try_from(SPARE).unwrap()));

    let shutdown = CancellationToken::new();
    let app = Router::new().route(
        "/",
        get(|| async {
            // Hold the descriptor a little, so accept meets EMFILE for a while.
            tokio::time::sleep(Duration::from_millis(50)).await;
            "ok"
        }),
    );
    let server = Server::new("test", app, HttpConfig::default(), None);
    let task = {
        let _guard = runtime.enter();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        runtime.spawn(server.serve(listener, shutdown.clone()))
    };

    let cpu_before = cpu_time();
    let start = Instant::now();
    let mut served = 0;
    for s in &mut clients {
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(
            out.starts_with("HTTP/1.1 200") && out.ends_with("ok"),
            "{out:?}"
        );
        served += 1;
    }
    let took = start.elapsed();
    let cpu = cpu_time() - cpu_before;
    assert_eq!(served, CLIENTS);
    // With SPARE descriptors and 50 ms a request, 60 clients need several rounds of back-off:
    // CPU stays well under the wall time (a spinning accept would use a whole core).
    eprintln!("{CLIENTS} clients served with {SPARE} spare descriptors in {took:?}, CPU {cpu:?}");
    assert!(cpu < took / 2, "CPU {cpu:?} over {took:?}: accept spins");

    drop(filler);
    shutdown.cancel();
    runtime.block_on(task).unwrap().unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard.min(1 << 16), hard).unwrap();
}
