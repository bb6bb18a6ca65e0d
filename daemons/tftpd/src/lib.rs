//! tftpd: Dragonfly's read-only TFTP server, for the iPXE binaries PXE firmware loads first.
//!
//! Three layers, as everywhere in Dragonfly: [`packet`] is the pure wire format, [`transfer`]
//! drives one transfer on its own socket (window, adaptive retransmission), and this module is
//! the server: it reads requests from the listening socket, applies [`files`]' policy, limits
//! concurrency and reports each transfer on the bus.
//!
//! Each transfer gets its own UDP socket (a new TID, as RFC 1350 wants), bound to the local
//! address the request was sent to and `connect()`ed to the client. The listening socket is
//! usually `0.0.0.0:69`, so the local address is learnt per request from `IP_PKTINFO` /
//! `IPV6_RECVPKTINFO`: binding to it (rather than letting the routing table pick a source)
//! guarantees the client sees replies from the address it asked, which PXE ROMs insist on,
//! even on a multi-homed host or with a secondary address. Connecting makes the kernel drop
//! datagrams from anyone but the client (RFC 1350 would answer them with ERROR 5; we stay
//! silent) and turns an ICMP port-unreachable into an error that ends the transfer at once.
//!
//! Transfers modes: only `octet`. `netascii` (and `mail`) are refused with ERROR 0: every file
//! this server exists for is binary, and translating line ends would make block offsets differ
//! from file offsets, `tsize` wrong, and windowed retransmission stateful.
//!
//! [`run`] never binds its listening socket: systemd (or a test) passes it in.

pub mod config;
pub mod files;
pub mod packet;
pub mod transfer;

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dragonfly_bus::Bus;
use dragonfly_bus::events::TftpTransferred;
use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, setsockopt, sockopt,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::TftpdConfig;
use packet::{ErrorCode, Mode, Packet};
use transfer::Limits;

/// Everything [`run`] needs.
#[derive(Debug, Clone)]
pub struct Config {
    pub tftpd: TftpdConfig,
    /// Where to publish `dragonfly.tftp.transferred`; `None` publishes nothing.
    pub nats_url: Option<String>,
}

/// Why tftpd stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum TftpdError {
    #[error("connecting to NATS")]
    Bus(#[from] dragonfly_bus::BusError),
    #[error("setting up the listening socket")]
    Socket(#[source] io::Error),
    #[error("receiving on the listening socket")]
    Receive(#[source] io::Error),
}

/// Shared by the server loop and every transfer task.
#[derive(Debug)]
struct Shared {
    roots: Vec<PathBuf>,
    limits: Limits,
    bus: Option<Bus>,
    refusals: Mutex<LogLimiter>,
    /// The listening socket's own address, used when `IP_PKTINFO` told us nothing.
    listen_ip: IpAddr,
}

/// How often the server loop proves it is alive to systemd's watchdog.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

/// Serves TFTP on `socket` until `shutdown` is cancelled, then waits for transfers in progress
/// (the caller bounds that wait with its grace period).
pub async fn run(
    config: Config,
    socket: std::net::UdpSocket,
    shutdown: CancellationToken,
) -> Result<(), TftpdError> {
    let local = socket.local_addr().map_err(TftpdError::Socket)?;
    socket.set_nonblocking(true).map_err(TftpdError::Socket)?;
    let pktinfo = match local {
        SocketAddr::V4(_) => setsockopt(&socket, sockopt::Ipv4PacketInfo, &true),
        SocketAddr::V6(_) => setsockopt(&socket, sockopt::Ipv6RecvPacketInfo, &true),
    };
    if let Err(errno) = pktinfo {
        tracing::warn!(%errno, "no packet info: replies will come from the listening address");
    }
    let socket = UdpSocket::from_std(socket).map_err(TftpdError::Socket)?;
    let bus = match &config.nats_url {
        Some(url) => {
            dragonfly_runtime::notify::status("connecting to NATS");
            Some(Bus::connect(url, "dragonfly-tftpd", "/dragonfly/tftpd").await?)
        }
        None => None,
    };
    let cfg = &config.tftpd;
    let shared = Arc::new(Shared {
        roots: cfg.roots.clone(),
        limits: Limits {
            max_blksize: cfg.max_blksize,
            max_windowsize: cfg.max_windowsize,
            timeout: cfg.timeout,
            idle_timeout: cfg.idle_timeout,
        },
        bus,
        refusals: Mutex::new(LogLimiter::new(10, Duration::from_secs(10))),
        listen_ip: local.ip(),
    });
    let slots = Arc::new(Semaphore::new(cfg.max_transfers));
    let tracker = TaskTracker::new();
    let heartbeat = dragonfly_runtime::notify::Heartbeat::new();
    let _ = dragonfly_runtime::notify::spawn_watchdog(shutdown.clone(), heartbeat.progressed());
    let mut tick = tokio::time::interval(HEARTBEAT_EVERY);

    tracing::info!(addr = %local, roots = ?cfg.roots, "serving TFTP");
    dragonfly_runtime::notify::ready();
    dragonfly_runtime::notify::status(&format!("serving TFTP on {local}"));

    let mut buf = vec![0u8; 2048];
    let mut cmsg = nix::cmsg_space!(nix::libc::in6_pktinfo);
    let result = loop {
        let received = tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            _ = tick.tick() => {
                heartbeat.beat();
                continue;
            }
            received = recv_with_destination(&socket, &mut buf, &mut cmsg) => received,
        };
        let (len, client, destination) = match received {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            // ICMP errors from earlier replies surface here on some kernels: not fatal.
            Err(e) if is_transient(&e) => continue,
            Err(e) => break Err(TftpdError::Receive(e)),
        };
        let local_ip = destination.unwrap_or(shared.listen_ip);
        let Some(data) = buf.get(..len) else { continue };
        handle_datagram(data, client, local_ip, &shared, &slots, &tracker);
    };
    tracker.close();
    dragonfly_runtime::notify::status(&format!(
        "stopping: waiting for {} transfers",
        tracker.len()
    ));
    tracker.wait().await;
    result
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    ) || e.raw_os_error() == Some(nix::libc::EHOSTUNREACH)
        || e.raw_os_error() == Some(nix::libc::ENETUNREACH)
}

/// One datagram from the listening socket: `(length, sender, local address it was sent to)`;
/// `None` for a truncated datagram (larger than any request we accept).
async fn recv_with_destination(
    socket: &UdpSocket,
    buf: &mut [u8],
    cmsg: &mut [u8],
) -> io::Result<Option<(usize, SocketAddr, Option<IpAddr>)>> {
    socket
        .async_io(Interest::READABLE, || {
            let mut iov = [IoSliceMut::new(&mut *buf)];
            let msg = recvmsg::<SockaddrStorage>(
                socket.as_raw_fd(),
                &mut iov,
                Some(&mut *cmsg),
                MsgFlags::empty(),
            )
            .map_err(io::Error::from)?;
            if msg.flags.contains(MsgFlags::MSG_TRUNC) {
                return Ok(None);
            }
            let Some(client) = msg.address.as_ref().and_then(to_socket_addr) else {
                return Ok(None);
            };
            let mut destination = None;
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    match c {
                        ControlMessageOwned::Ipv4PacketInfo(info) => {
                            destination = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                                info.ipi_spec_dst.s_addr,
                            ))));
                        }
                        ControlMessageOwned::Ipv6PacketInfo(info) => {
                            destination = Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)));
                        }
                        _ => {}
                    }
                }
            }
            Ok(Some((msg.bytes, client, destination)))
        })
        .await
}

fn to_socket_addr(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::new(v4.ip(), v4.port())));
    }
    addr.as_sockaddr_in6().map(|v6| {
        SocketAddr::V6(SocketAddrV6::new(
            v6.ip(),
            v6.port(),
            v6.flowinfo(),
            v6.scope_id(),
        ))
    })
}

/// Decides what a datagram on the listening socket gets; starts a transfer for a valid RRQ.
fn handle_datagram(
    data: &[u8],
    client: SocketAddr,
    local_ip: IpAddr,
    shared: &Arc<Shared>,
    slots: &Arc<Semaphore>,
    tracker: &TaskTracker,
) {
    let request = match packet::parse(data) {
        Ok(Packet::Rrq(request)) => request,
        Ok(Packet::Wrq(request)) => {
            refuse(shared, client, request.filename, "write request");
            reply_error(
                local_ip,
                client,
                ErrorCode::AccessViolation,
                "this server is read-only",
            );
            return;
        }
        // DATA/ACK/ERROR/OACK belong on a transfer socket; garbage gets no answer either, so
        // the listening port cannot be used to reflect traffic at a forged source.
        Ok(_) | Err(_) => {
            tracing::debug!(%client, "ignored a datagram that is not a request");
            return;
        }
    };
    if request.mode != Mode::Octet {
        refuse(shared, client, request.filename, "mode other than octet");
        reply_error(
            local_ip,
            client,
            ErrorCode::NotDefined,
            "only octet (binary) mode is supported",
        );
        return;
    }
    let Ok(permit) = Arc::clone(slots).try_acquire_owned() else {
        refuse(shared, client, request.filename, "too many transfers");
        reply_error(local_ip, client, ErrorCode::NotDefined, "busy");
        return;
    };
    let filename = request.filename.to_owned();
    let options = request.options;
    let shared = Arc::clone(shared);
    tracker.spawn(async move {
        // A blocking thread per transfer (tokio's pool reuses them): see `transfer`'s docs.
        let worker = Arc::clone(&shared);
        let event = tokio::task::spawn_blocking(move || {
            serve(&worker, permit, &filename, options, client, local_ip)
        })
        .await
        .unwrap_or_else(|e| {
            tracing::error!(%client, error = %e, "transfer thread failed");
            None
        });
        if let (Some(event), Some(bus)) = (event, &shared.bus)
            && let Err(e) = bus.publish(&event).await
        {
            tracing::warn!(error = %e, "transfer event not published");
        }
    });
}

/// One transfer, from opening the file to the last ACK. Returns the event to publish, or `None`
/// when the request was refused before any transfer started. Blocks: runs on its own thread.
fn serve(
    shared: &Shared,
    slot: OwnedSemaphorePermit,
    filename: &str,
    options: packet::Options,
    client: SocketAddr,
    local_ip: IpAddr,
) -> Option<TftpTransferred> {
    let socket = match transfer_socket(local_ip, client) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%client, error = %e, "cannot open a transfer socket");
            return None;
        }
    };
    let opened = match files::open_in_roots(&shared.roots, filename) {
        Ok(opened) => opened,
        Err(refusal) => {
            refuse(shared, client, filename, &refusal.to_string());
            let reply = packet::error_packet(refusal.code(), refusal.client_message());
            drop(slot);
            let _ = socket.send(&reply);
            return None;
        }
    };
    let negotiated = transfer::negotiate(&options, opened.size, &shared.limits);
    let started = Instant::now();
    let outcome = transfer::send_file(
        &socket,
        &opened.file,
        opened.size,
        &negotiated,
        shared.limits.idle_timeout,
    );
    // Free the slot before the client can hear that the transfer is over.
    drop(slot);
    if let Some(farewell) = &outcome.farewell {
        let _ = socket.send(farewell);
    }
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    if outcome.complete {
        tracing::info!(file = filename, root = %opened.root.display(), %client, bytes = outcome.bytes,
            duration_ms, blksize = negotiated.blksize, windowsize = negotiated.windowsize, "sent");
    } else {
        tracing::warn!(file = filename, %client, bytes = outcome.bytes, duration_ms,
            error = outcome.error.as_deref().unwrap_or_default(), "transfer failed");
    }
    Some(TftpTransferred {
        file: filename.to_owned(),
        client: client.to_string(),
        bytes: outcome.bytes,
        duration_ms,
        complete: outcome.complete,
        error: outcome.error,
    })
}

/// A new blocking socket (the transfer's TID) on `local_ip`, connected to `client`.
fn transfer_socket(local_ip: IpAddr, client: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = std::net::UdpSocket::bind(SocketAddr::new(local_ip, 0))?;
    socket.connect(client)?;
    Ok(socket)
}

/// Answers a refused request from a fresh socket on the address it was sent to.
fn reply_error(local_ip: IpAddr, client: SocketAddr, code: ErrorCode, message: &str) {
    let sent = std::net::UdpSocket::bind(SocketAddr::new(local_ip, 0))
        .and_then(|s| s.send_to(&packet::error_packet(code, message), client));
    if let Err(e) = sent {
        tracing::debug!(%client, error = %e, "error reply not sent");
    }
}

/// Logs a refused request, at most so many per period (a scanner must not flood the journal).
fn refuse(shared: &Shared, client: SocketAddr, file: &str, why: &str) {
    let mut limiter = match shared.refusals.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    };
    match limiter.admit(Instant::now()) {
        Admit::Log { suppressed } => {
            tracing::warn!(%client, file, reason = why, suppressed, "request refused");
        }
        Admit::Drop => {}
    }
}

/// A fixed-window rate limiter for log lines.
#[derive(Debug)]
struct LogLimiter {
    per_period: u32,
    period: Duration,
    window_start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum Admit {
    /// Log this one; `suppressed` lines were dropped since the last one logged.
    Log {
        suppressed: u64,
    },
    Drop,
}

impl LogLimiter {
    fn new(per_period: u32, period: Duration) -> Self {
        Self {
            per_period,
            period,
            window_start: None,
            logged: 0,
            suppressed: 0,
        }
    }

    fn admit(&mut self, now: Instant) -> Admit {
        let expired = self
            .window_start
            .is_none_or(|start| now.duration_since(start) >= self.period);
        if expired {
            self.window_start = Some(now);
            self.logged = 0;
        }
        if self.logged < self.per_period {
            self.logged += 1;
            Admit::Log {
                suppressed: std::mem::take(&mut self.suppressed),
            }
        } else {
            self.suppressed += 1;
            Admit::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_logs_are_rate_limited_and_count_what_they_dropped() {
        let mut l = LogLimiter::new(2, Duration::from_secs(10));
        let t = Instant::now();
        assert_eq!(l.admit(t), Admit::Log { suppressed: 0 });
        assert_eq!(l.admit(t), Admit::Log { suppressed: 0 });
        assert_eq!(l.admit(t), Admit::Drop);
        assert_eq!(l.admit(t + Duration::from_secs(9)), Admit::Drop);
        assert_eq!(
            l.admit(t + Duration::from_secs(10)),
            Admit::Log { suppressed: 2 }
        );
    }
}
