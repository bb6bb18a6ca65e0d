//! tftpd: Dragonfly's read-only TFTP server, for the iPXE binaries PXE firmware loads first.
//!
//! Three layers, as everywhere in Dragonfly: [`packet`] is the pure wire format; [`transfer`]
//! is one transfer as a pure state machine (window, adaptive retransmission, giving up) and
//! [`admission`] the pure bookkeeping of who may start a transfer; the socket I/O is the
//! transfer engine (`worker`: one thread, epoll, every transfer's socket) and this module, the
//! server: it reads requests from the listening socket, refuses what is not a binary read,
//! hands the rest to the engine and publishes each finished transfer on the bus. [`files`] is
//! the policy of which file a name means.
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

pub mod admission;
pub mod config;
pub mod files;
pub mod metrics;
pub mod packet;
pub mod transfer;
mod worker;

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dragonfly_runtime::cli::Chain;
use dragonfly_runtime::sockets::{SocketError, Sockets};
use dragonfly_runtime::{BEAT_EVERY, Context, Daemon, Health, NoStore};
use nix::sys::socket::{
    ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, setsockopt, sockopt,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use admission::Quotas;
pub use config::TftpdConfig;
use packet::{ErrorCode, Mode, Packet};
use transfer::Limits;
use worker::Engine;

/// tftpd, as the daemon frame runs it.
#[derive(Debug)]
pub struct Tftpd;

impl Daemon for Tftpd {
    const NAME: &'static str = "tftpd";
    const ABOUT: &'static str = "Dragonfly read-only TFTP server";
    // No store: the receive loop's heartbeat, which beats only while the transfer engine
    // turns too, is the proof of health.
    const HEALTH: Health = Health::MainLoop;
    type Config = TftpdConfig;
    type Sockets = std::net::UdpSocket;
    type Store = NoStore;
    type Error = TftpdError;

    fn sockets(
        config: &TftpdConfig,
        passed: &mut Sockets,
    ) -> Result<std::net::UdpSocket, SocketError> {
        passed.udp_or_bind("tftp", config.listen.addr)
    }

    async fn run(
        ctx: Context<Self>,
        socket: std::net::UdpSocket,
        shutdown: CancellationToken,
    ) -> Result<(), TftpdError> {
        run(ctx, socket, shutdown).await
    }
}

/// Why tftpd stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum TftpdError {
    #[error("setting up the listening socket")]
    Socket(#[source] io::Error),
    #[error("receiving on the listening socket")]
    Receive(#[source] io::Error),
    #[error("starting the transfer engine")]
    EngineStart(#[source] io::Error),
    #[error("the transfer engine thread stopped unexpectedly")]
    EngineStopped,
}

/// The server loop's state.
#[derive(Debug)]
struct Shared {
    refusals: Mutex<LogLimiter>,
    /// ERRORs the listening side may send (refused writes and modes): a forged source cannot
    /// turn the listening port into a steady reflector.
    replies: Mutex<LogLimiter>,
    /// The listening socket's own address, used when `IP_PKTINFO` told us nothing.
    listen_ip: IpAddr,
}

/// ERROR replies from the listening side, per second.
const REPLIES_PER_SECOND: u32 = 100;

/// Serves TFTP on `socket` until `shutdown` is cancelled, then waits for transfers in progress
/// (the caller bounds that wait with its grace period).
pub async fn run(
    ctx: Context<Tftpd>,
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
    let cfg = &ctx.config;
    let shared = Shared {
        refusals: Mutex::new(LogLimiter::new(10, Duration::from_secs(10))),
        replies: Mutex::new(LogLimiter::new(REPLIES_PER_SECOND, Duration::from_secs(1))),
        listen_ip: local.ip(),
    };
    let events = ctx.events.clone();
    let metrics = metrics::TftpdMetrics::register(&ctx.metrics);
    let mut engine = Engine::start(engine_settings(cfg), move |e| {
        metrics.transferred(&e);
        events.publish(&e);
    })
    .map_err(TftpdError::EngineStart)?;
    let heartbeat = &ctx.heartbeat;
    let mut tick = tokio::time::interval(BEAT_EVERY);

    tracing::info!(addr = %local, roots = ?cfg.roots, "serving TFTP");
    dragonfly_runtime::notify::status(&format!("serving TFTP on {local}"));

    let mut buf = vec![0u8; 2048];
    let mut cmsg = nix::cmsg_space!(nix::libc::in6_pktinfo);
    let mut engine_turns = engine.turns();
    let result = loop {
        let received = tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            _ = tick.tick() => {
                // Alive only while the transfer engine turns too (it does at least once a
                // second, idle or not).
                let turns = engine.turns();
                if turns != engine_turns {
                    engine_turns = turns;
                    heartbeat.beat();
                }
                continue;
            }
            () = engine.exited() => break Err(TftpdError::EngineStopped),
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
        handle_datagram(data, client, local_ip, &shared, &engine);
    };
    dragonfly_runtime::notify::status("stopping: waiting for the transfers in progress");
    let drained = match result {
        Err(TftpdError::EngineStopped) => false,
        _ => engine.drain().await,
    };
    match result {
        Ok(()) if !drained => Err(TftpdError::EngineStopped),
        other => other,
    }
}

/// What the transfer engine needs from the configuration.
fn engine_settings(cfg: &TftpdConfig) -> worker::Settings {
    worker::Settings {
        roots: cfg.roots.clone(),
        limits: Limits {
            max_blksize: cfg.max_blksize,
            max_windowsize: cfg.max_windowsize,
            timeout: cfg.timeout,
            idle_timeout: cfg.idle_timeout,
            first_ack_timeout: cfg.first_ack_timeout,
        },
        quotas: Quotas::new(
            cfg.max_transfers,
            cfg.max_transfers_per_client,
            cfg.max_unacked_per_client,
            cfg.idle_timeout,
        ),
    }
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

/// Decides what a datagram on the listening socket gets; hands a valid RRQ to the engine.
fn handle_datagram(
    data: &[u8],
    client: SocketAddr,
    local_ip: IpAddr,
    shared: &Shared,
    engine: &Engine,
) {
    let request = match packet::parse(data) {
        Ok(Packet::Rrq(request)) => request,
        Ok(Packet::Wrq(request)) => {
            refuse(shared, client, request.filename, "write request");
            reply_error(
                shared,
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
            shared,
            local_ip,
            client,
            ErrorCode::NotDefined,
            "only octet (binary) mode is supported",
        );
        return;
    }
    // Beyond the limits the engine queues the request, or drops it for the client to
    // retransmit: never "busy", which PXE firmware takes as final.
    let handed = engine.submit(worker::Request {
        client,
        local_ip,
        filename: request.filename.to_owned(),
        options: request.options,
    });
    if !handed {
        tracing::debug!(%client, "request dropped: the transfer engine is behind");
    }
}

/// Answers a refused request from a fresh socket on the address it was sent to, within
/// [`REPLIES_PER_SECOND`].
fn reply_error(
    shared: &Shared,
    local_ip: IpAddr,
    client: SocketAddr,
    code: ErrorCode,
    message: &str,
) {
    let admitted = match shared.replies.lock() {
        Ok(mut guard) => guard.admit(Instant::now()),
        Err(poisoned) => poisoned.into_inner().admit(Instant::now()),
    };
    if admitted == Admit::Drop {
        return;
    }
    let sent = std::net::UdpSocket::bind(SocketAddr::new(local_ip, 0))
        .and_then(|s| s.send_to(&packet::error_packet(code, message), client));
    if let Err(e) = sent {
        tracing::debug!(%client, error = %Chain(&e), "error reply not sent");
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

/// A fixed-window rate limiter for log lines (and replies).
#[derive(Debug)]
pub(crate) struct LogLimiter {
    per_period: u32,
    period: Duration,
    window_start: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Log this one; `suppressed` lines were dropped since the last one logged.
    Log {
        suppressed: u64,
    },
    Drop,
}

impl LogLimiter {
    pub(crate) fn new(per_period: u32, period: Duration) -> Self {
        Self {
            per_period,
            period,
            window_start: None,
            logged: 0,
            suppressed: 0,
        }
    }

    pub(crate) fn admit(&mut self, now: Instant) -> Admit {
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
