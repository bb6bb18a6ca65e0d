//! fetch-load: `--clients` HTTP/1.1 clients fetch one URL at the same moment and discard the
//! body, for integration/bench/images.sh (ipxed against nginx serving the same file).
//!
//! The client must cost little: it shares the machine's cores with the server it measures. So
//! each client is a plain thread with a blocking socket, and the body is dropped in the kernel
//! (`recv` with `MSG_TRUNC`, which on TCP discards without copying to userspace): what the
//! client spends is a syscall per chunk, not a copy of every byte. Correctness of the bytes is
//! the tests' business (ipxed's `sendfile` tests check SHA-256); this counts them.
//!
//! Prints one line of `key=value` figures: clients, ok, errors, bytes, seconds (from the
//! moment every client is connected to the last byte), gib_per_s, first_byte_p50_ms,
//! done_p50_s, done_max_s. Exit code 0 even with errors (the script reports them), 2 on usage.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "the figures are this program's output; client errors are named on stderr"
)]

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::os::fd::AsRawFd as _;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use nix::sys::socket::{MsgFlags, recv};

#[derive(Debug, Parser)]
#[command(
    about = "Many HTTP clients fetch one URL at once; the bodies are discarded in the kernel"
)]
struct Args {
    /// `http://HOST:PORT/PATH`.
    #[arg(long)]
    url: String,
    /// Clients at once, each on its own connection.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Ask for `Range: bytes=N-` (a resumed download); 206 is then expected.
    #[arg(long)]
    range_from: Option<u64>,
    /// The body length each client must receive.
    #[arg(long)]
    expect_bytes: u64,
}

/// What one client saw.
#[derive(Debug)]
struct Outcome {
    bytes: u64,
    first_byte: Duration,
    done: Duration,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rest = args
        .url
        .strip_prefix("http://")
        .context("only http:// URLs")?;
    let (host, path) = rest.split_once('/').context("the URL has no path")?;
    let request = format!(
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: fetch-load\r\n{}Connection: close\r\n\r\n",
        args.range_from
            .map(|n| format!("Range: bytes={n}-\r\n"))
            .unwrap_or_default()
    );
    let want_status = if args.range_from.is_some() { 206 } else { 200 };
    let barrier = Arc::new(Barrier::new(args.clients + 1));
    let start = Arc::new(std::sync::OnceLock::<Instant>::new());
    let threads: Vec<_> = (0..args.clients)
        .map(|_| {
            let (barrier, start) = (Arc::clone(&barrier), Arc::clone(&start));
            let (host, request) = (host.to_owned(), request.clone());
            let expect = args.expect_bytes;
            std::thread::spawn(move || {
                let stream = TcpStream::connect(&host);
                barrier.wait();
                let start = *start.get_or_init(Instant::now);
                fetch(stream?, &request, want_status, expect, start)
            })
        })
        .collect();
    barrier.wait();
    let start = *start.get_or_init(Instant::now);
    let mut outcomes = Vec::new();
    let mut errors = Vec::new();
    for t in threads {
        match t.join() {
            Ok(Ok(o)) => outcomes.push(o),
            Ok(Err(e)) => errors.push(format!("{e:#}")),
            Err(_) => errors.push("client thread panicked".to_owned()),
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let bytes: u64 = outcomes.iter().map(|o| o.bytes).sum();
    let mut first: Vec<_> = outcomes.iter().map(|o| o.first_byte).collect();
    let mut done: Vec<_> = outcomes.iter().map(|o| o.done).collect();
    first.sort();
    done.sort();
    let p50 = |v: &[Duration]| v.get(v.len() / 2).copied().unwrap_or_default();
    for e in errors.iter().take(5) {
        eprintln!("fetch-load: client error: {e}");
    }
    println!(
        "clients={} ok={} errors={} bytes={bytes} seconds={seconds:.3} gib_per_s={:.3} \
         first_byte_p50_ms={:.1} done_p50_s={:.3} done_max_s={:.3}",
        args.clients,
        outcomes.len(),
        errors.len(),
        bytes as f64 / f64::from(1u32 << 30) / seconds,
        p50(&first).as_secs_f64() * 1000.0,
        p50(&done).as_secs_f64(),
        done.last().copied().unwrap_or_default().as_secs_f64(),
    );
    Ok(())
}

/// One request on `stream`; the body is counted and discarded.
fn fetch(
    mut stream: TcpStream,
    request: &str,
    want_status: u16,
    expect: u64,
    start: Instant,
) -> anyhow::Result<Outcome> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.write_all(request.as_bytes())?;
    let mut head = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let (end, first_byte) = loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            bail!("closed before the response head");
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break (i + 4, start.elapsed());
        }
        if head.len() > 64 * 1024 {
            bail!("response head too long");
        }
    };
    let text = String::from_utf8_lossy(&head[..end]).into_owned();
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status")?;
    if status != want_status {
        bail!("status {status}, wanted {want_status}");
    }
    let length: u64 = text
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .context("no Content-Length")?;
    if length != expect {
        bail!("Content-Length {length}, wanted {expect}");
    }
    let mut got = (head.len() - end) as u64;
    // Never written to: with MSG_TRUNC the kernel discards into no buffer.
    let mut sink = vec![0u8; 4 << 20];
    let fd = stream.as_raw_fd();
    while got < length {
        let want = usize::try_from(length - got)
            .unwrap_or(usize::MAX)
            .min(sink.len());
        let n = recv(fd, &mut sink[..want], MsgFlags::MSG_TRUNC)?;
        if n == 0 {
            bail!("closed after {got} of {length} bytes");
        }
        got += n as u64;
    }
    Ok(Outcome {
        bytes: got,
        first_byte,
        done: start.elapsed(),
    })
}
