//! Our own traffic generators: a simulated PXE client (a real lock-step TFTP exchange, as
//! firmware does it: RRQ with `blksize` and `tsize`, retransmitted when unanswered, every
//! block checked) for storms, and the hostile side — requests nobody acknowledges, garbage.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use dragonfly_tftpd::packet::{self, ErrorCode, Packet};
use tokio::net::UdpSocket;

/// What one simulated PXE client saw.
#[derive(Debug, Clone, Default)]
pub(crate) struct Fetched {
    /// Blocks (or OACKs) received again after being acknowledged: the server's resends.
    pub(crate) duplicates: u32,
    /// Requests sent (1 when the first was answered).
    pub(crate) requests: u32,
    pub(crate) elapsed: Duration,
}

/// The blksize PXE ROMs ask for (1468 fits a 1500-byte MTU).
const PXE_BLKSIZE: u16 = 1468;

/// An RRQ as PXE firmware sends it: octet, `blksize 1468`, `tsize 0`.
pub(crate) fn pxe_rrq(file: &str) -> Vec<u8> {
    let mut b = vec![0, 1];
    b.extend_from_slice(file.as_bytes());
    b.extend_from_slice(b"\x00octet\x00blksize\x001468\x00tsize\x000\x00");
    b
}

/// A bare RRQ: no options at all (the server answers with DATA 1 of 512 bytes).
pub(crate) fn bare_rrq(file: &str) -> Vec<u8> {
    let mut b = vec![0, 1];
    b.extend_from_slice(file.as_bytes());
    b.extend_from_slice(b"\0octet\0");
    b
}

/// Fetches `file` from `server` as a PXE ROM would, from a new port on `local`, checking every
/// block against `want`. The request is retransmitted after 1, 2, 4, 8, 8 and 8 s without an
/// answer; a block after 1 s without the next (re-acknowledging), up to 10 times in a row.
pub(crate) async fn pxe_fetch(
    local: IpAddr,
    server: SocketAddr,
    file: &str,
    want: &[u8],
) -> Result<Fetched, String> {
    let socket = UdpSocket::bind((local, 0))
        .await
        .map_err(|e| format!("bind {local}: {e}"))?;
    let t0 = Instant::now();
    let rrq = pxe_rrq(file);
    let mut seen = Fetched::default();
    let mut tid: Option<SocketAddr> = None;
    // 0: waiting for the OACK (or DATA 1 from a server that ignores options).
    let mut expected: u64 = 0;
    let mut blksize = usize::from(PXE_BLKSIZE);
    let mut got = 0usize;
    let mut last_ack: Option<Vec<u8>> = None;
    let mut quiet = 0;
    let mut buf = vec![0u8; 2048];
    socket
        .send_to(&rrq, server)
        .await
        .map_err(|e| e.to_string())?;
    seen.requests = 1;
    loop {
        let wait = if tid.is_none() {
            Duration::from_secs(1 << (seen.requests - 1).min(3))
        } else {
            Duration::from_secs(1)
        };
        let (n, from) = match tokio::time::timeout(wait, socket.recv_from(&mut buf)).await {
            Ok(received) => received.map_err(|e| e.to_string())?,
            Err(_) => {
                match (&tid, &last_ack) {
                    (None, _) => {
                        if seen.requests == 6 {
                            return Err(format!("no answer to {} requests", seen.requests));
                        }
                        seen.requests += 1;
                        socket
                            .send_to(&rrq, server)
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    (Some(tid), Some(ack)) => {
                        quiet += 1;
                        if quiet == 10 {
                            return Err(format!("stalled after {got} bytes"));
                        }
                        socket.send_to(ack, *tid).await.map_err(|e| e.to_string())?;
                    }
                    (Some(_), None) => return Err("no ACK to repeat".into()),
                }
                continue;
            }
        };
        if tid.is_some_and(|t| t != from) {
            // Another transfer (an answer to a retransmitted request): RFC 1350 says ERROR 5.
            let _ = socket
                .send_to(
                    &packet::error_packet(ErrorCode::UnknownTid, "unknown transfer ID"),
                    from,
                )
                .await;
            continue;
        }
        quiet = 0;
        let ack = |block: u16| Packet::Ack { block }.to_bytes();
        match packet::parse(&buf[..n]) {
            Ok(Packet::Oack(options)) => {
                if expected == 0 {
                    tid = Some(from);
                    blksize = usize::from(options.blksize.unwrap_or(512));
                    expected = 1;
                } else {
                    seen.duplicates += 1;
                }
                let a = ack(0);
                socket.send_to(&a, from).await.map_err(|e| e.to_string())?;
                last_ack = Some(a);
            }
            Ok(Packet::Data { block, data }) => {
                if expected == 0 {
                    // The server ignored our options.
                    tid = Some(from);
                    blksize = 512;
                    expected = 1;
                }
                if block == (expected & 0xffff) as u16 {
                    let end = got + data.len();
                    if want.get(got..end) != Some(data) {
                        return Err(format!("block {block} differs (at byte {got})"));
                    }
                    got = end;
                    let a = ack(block);
                    socket.send_to(&a, from).await.map_err(|e| e.to_string())?;
                    last_ack = Some(a);
                    expected += 1;
                    if data.len() < blksize {
                        if got != want.len() {
                            return Err(format!("short file: {got} of {} bytes", want.len()));
                        }
                        seen.elapsed = t0.elapsed();
                        return Ok(seen);
                    }
                } else if block == ((expected - 1) & 0xffff) as u16 {
                    // A block we had: acknowledge it again, as firmware does.
                    seen.duplicates += 1;
                    socket
                        .send_to(&ack(block), from)
                        .await
                        .map_err(|e| e.to_string())?;
                }
            }
            Ok(Packet::Error { code, message }) => {
                return Err(format!(
                    "ERROR {} {}",
                    u16::from(code),
                    String::from_utf8_lossy(message)
                ));
            }
            Ok(other) => return Err(format!("unexpected {other:?}")),
            Err(e) => return Err(format!("unparsable datagram: {e}")),
        }
    }
}

/// A datagram the server sent to a [`trickle`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arrival {
    /// When we read it, from the trickle's start (it arrived no later).
    pub(crate) at: Duration,
    /// The transfer ID (server address and port) it came from.
    pub(crate) from: SocketAddr,
    pub(crate) len: usize,
    pub(crate) error: bool,
}

/// Requests that are never acknowledged, `count` copies of `rrq`, `every` apart, each from a
/// new port of `from` — what a misbehaving host does — then `linger` more of listening.
/// Returns everything the server sent back.
pub(crate) async fn trickle(
    from: IpAddr,
    server: SocketAddr,
    rrq: Vec<u8>,
    count: usize,
    every: Duration,
    linger: Duration,
) -> Vec<Arrival> {
    let t0 = Instant::now();
    let mut sockets: Vec<UdpSocket> = Vec::with_capacity(count);
    let mut arrivals = vec![];
    let mut buf = vec![0u8; 2048];
    let mut sent = 0;
    while sent < count || t0.elapsed() < every * count as u32 + linger {
        if sent < count && t0.elapsed() >= every * sent as u32 {
            let socket = UdpSocket::bind((from, 0)).await.unwrap();
            socket.send_to(&rrq, server).await.unwrap();
            sockets.push(socket);
            sent += 1;
        }
        for socket in &sockets {
            while let Ok((n, peer)) = socket.try_recv_from(&mut buf) {
                arrivals.push(Arrival {
                    at: t0.elapsed(),
                    from: peer,
                    len: n,
                    error: matches!(packet::parse(&buf[..n]), Ok(Packet::Error { .. })),
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    arrivals
}

/// `count` datagrams of junk from one socket at `server`: random lengths (0–600 bytes), random
/// bytes, a third of them starting with a real opcode (ACK, DATA, ERROR, OACK, or a mangled
/// request). Returns the socket, to check nothing was answered.
pub(crate) async fn garbage(server: SocketAddr, count: usize, seed: u64) -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut datagram = Vec::with_capacity(600);
    for i in 0..count {
        datagram.clear();
        let len = (next() % 601) as usize;
        datagram.extend((0..len).map(|_| next() as u8));
        if i % 3 == 0 && len >= 2 {
            datagram[0] = 0;
            datagram[1] = (next() % 7) as u8;
        }
        // Loopback drops what overflows the receiver's buffer; pace a little so most of it is
        // actually parsed.
        if socket.send_to(&datagram, server).await.is_err() || i % 200 == 0 {
            tokio::task::yield_now().await;
        }
    }
    socket
}

/// A line of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
pub(crate) fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}
