//! dhcpd: Dragonfly's DHCP server and PXE boot-information server.
//!
//! Three layers: [`wire`] (bytes ↔ `dhcproto`, pure), [`policy`] (what to answer, pure, over
//! the in-memory [`leases`] table), and this module's socket loop. In reservation mode it is
//! the network's DHCP server; in proxy modes it only tells network-booting clients what to
//! boot and never hands out an address.
//!
//! Leases are committed to the store before the client is told (the store's group writer: one
//! thread commits whatever is queued in one transaction, then `committed` sends the replies
//! that waited for it), so an ACK never names a lease a crash could forget. Events are
//! published after the commit; a publish failure is logged, never fatal. The queue to the
//! writer is bounded: when the store falls behind, REQUESTs beyond it get no answer (and
//! retransmit) rather than late answers and unbounded memory. Replies wait for room in a full
//! send buffer instead of being dropped.
//!
//! [`run`] takes its sockets from the caller (systemd, or a test) and binds nothing itself.

pub mod config;
pub mod io;
pub mod leases;
pub mod limits;
pub mod metrics;
pub mod policy;
pub mod wire;

use std::net::UdpSocket as StdUdpSocket;
use std::sync::Arc;
use std::time::Duration;

use dragonfly_bus::events::{LeaseEndReason, LeaseEnded, ReservationChanged};
use dragonfly_bus::{Follower, Publisher};
use dragonfly_runtime::cli::Chain;
use dragonfly_runtime::sockets::{SocketError, Sockets as PassedSockets};
use dragonfly_runtime::{BEAT_EVERY, Context, Daemon, Health};
use dragonfly_store::boot::{SightedVia, Sighting};
use dragonfly_store::leases::{Lease, LeaseOp};
use dragonfly_store::reservations::PublishedSubnet;
use dragonfly_store::{Db, GroupConfig, GroupWriter, Rejected, StoreError};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

pub use config::DhcpdConfig;
use config::Mode;
use policy::{Arrival, Known, LeaseEvent, Port, Reply};

/// dhcpd, as the daemon frame runs it.
#[derive(Debug)]
pub struct Dhcpd;

impl Daemon for Dhcpd {
    const NAME: &'static str = "dhcpd";
    const ABOUT: &'static str = "Dragonfly DHCP and PXE boot-information server";
    // The receive loop beats; leases and proxy lookups need the store to answer.
    const HEALTH: Health = Health::MainLoopAndStore;
    type Config = DhcpdConfig;
    type Sockets = Sockets;
    type Store = Db;
    type Error = DhcpdError;

    fn sockets(config: &DhcpdConfig, passed: &mut PassedSockets) -> Result<Sockets, SocketError> {
        let dhcp = passed.udp_or_bind("dhcp", config.listen.addr)?;
        let pxe = match config.pxe_listen {
            Some(l) => Some(passed.udp_or_bind("pxe", l.addr)?),
            None => None,
        };
        Ok(Sockets { dhcp, pxe })
    }

    async fn run(
        ctx: Context<Self>,
        sockets: Sockets,
        shutdown: CancellationToken,
    ) -> Result<(), DhcpdError> {
        // Boxed: run's state machine is large (clippy::large_futures).
        Box::pin(run(ctx, sockets, shutdown)).await
    }
}

/// The sockets [`run`] serves: `dhcp` (port 67) and, optionally, `pxe` (port 4011).
#[derive(Debug)]
pub struct Sockets {
    pub dhcp: StdUdpSocket,
    pub pxe: Option<StdUdpSocket>,
}

/// Why dhcpd stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DhcpdError {
    /// The bound and declined leases could not be read at start (the frame opened the store).
    #[error("loading the lease table")]
    LoadLeases(#[source] StoreError),
    /// The lease writer's connection or thread could not be started.
    #[error("starting the lease writer")]
    StartWriter(#[source] StoreError),
    /// A passed or bound socket could not be configured.
    #[error("setting up socket {name:?}")]
    Socket {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The lease writer thread ended while dhcpd still served.
    #[error("the lease writer stopped")]
    Writer,
    /// What dhcpd serves could not be published in the store at start.
    #[error("publishing the served subnets in the store")]
    Publish(#[source] StoreError),
    /// The reservations could not be read at start.
    #[error("loading the reservations")]
    LoadReservations(#[source] StoreError),
    /// The subscription to reservation hints failed.
    #[error("subscribing to reservation hints")]
    Subscribe(#[source] dragonfly_bus::BusError),
}

/// At most this many lease changes per transaction. Small enough that the replies of one
/// commit, sent back to back, fit the receive buffer of a relay (perfdhcp: the default
/// ~208 KiB, some 160 replies) — larger batches were measured to overflow it at 10k/s — and
/// large enough that the commit cost is shared (a transaction costs far less than its rows).
const MAX_BATCH: usize = 128;
/// At most this many lease changes wait for the writer. When the store cannot keep up, the
/// REQUESTs beyond this get no answer (the clients retransmit) instead of queuing without
/// bound: an ACK seconds late is useless to a client that gave up, and the queue would grow
/// the daemon's memory without limit.
const MAX_QUEUED: usize = 16_384;
/// How often expired leases are removed (and `LeaseEnded` with reason `Expired` published).
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// Rate limit for each kind of drop log line.
const LOG_EVERY: Duration = Duration::from_secs(10);

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// The sighting of a boot answer: the address the client was offered or leased (yiaddr), else
/// the one it asked from, else none (a ProxyDHCP DISCOVER from 0.0.0.0).
fn sighting(
    cfg: &DhcpdConfig,
    mac: dragonfly_core::MacAddr,
    reply: Option<&Reply>,
    arrival: &Arrival,
) -> Sighting {
    let yiaddr = reply
        .map(|r| r.msg.yiaddr())
        .filter(|a| !a.is_unspecified());
    let source = Some(*arrival.source.ip()).filter(|a| !a.is_unspecified());
    Sighting {
        mac,
        seen_at: jiff::Timestamp::now(),
        address: yiaddr.or(source),
        via: match cfg.mode {
            Mode::Reservation => SightedVia::Reservation,
            Mode::Proxy => SightedVia::Proxy,
            Mode::AutoProxy => SightedVia::Autoproxy,
        },
    }
}

/// What waits for a lease operation's commit (the group writer's context).
enum After {
    /// A lease change: send `reply` and publish `event`.
    Lease {
        reply: Option<Box<(Reply, Vec<u8>)>>,
        event: Option<LeaseEvent>,
        /// The socket the request came in on, and the reply goes out of.
        port: Port,
    },
    /// The expiry sweep: publish `LeaseEnded` (reason `Expired`) for what it removed.
    Sweep,
}

impl After {
    fn has_reply(&self) -> bool {
        matches!(self, After::Lease { reply: Some(_), .. })
    }
}

/// Serves DHCP on `sockets` until `shutdown` is cancelled.
pub async fn run(
    ctx: Context<Dhcpd>,
    sockets: Sockets,
    shutdown: CancellationToken,
) -> Result<(), DhcpdError> {
    let Context {
        config,
        store: db,
        events,
        heartbeat,
        bus,
        metrics,
        ..
    } = ctx;
    let metrics = metrics::DhcpdMetrics::register(&metrics);
    publish_served(&db, &config).await?;
    let base = config;
    let cfg = Arc::new(
        load_reservations(&db, &base)
            .await
            .map_err(DhcpdError::LoadReservations)?,
    );
    tracing::info!(reservations = cfg.reservations.len(), "reservations loaded");
    let mut reservations = match &bus {
        Some(bus) => Some(
            Follower::<ReservationChanged>::new(bus, Some(base.reconcile_period))
                .await
                .map_err(DhcpdError::Subscribe)?,
        ),
        None => None,
    };
    // Without NATS, the period alone re-reads the reservations.
    let mut reload = tokio::time::interval(base.reconcile_period);
    reload.reset();
    let socket = |name: &'static str, s: StdUdpSocket| {
        let err = |source| DhcpdError::Socket { name, source };
        io::configure(&s).map_err(err)?;
        s.set_nonblocking(true).map_err(err)?;
        UdpSocket::from_std(s).map_err(err)
    };
    let dhcp = Arc::new(socket("dhcp", sockets.dhcp)?);
    let pxe = sockets
        .pxe
        .map(|s| socket("pxe", s))
        .transpose()?
        .map(Arc::new);

    let rows = db.leases().all().await.map_err(DhcpdError::LoadLeases)?;
    let mut table = leases::Leases::from_store(rows);
    tracing::info!(
        leases = table.len(),
        mode = cfg.mode.as_str(),
        "lease table loaded"
    );

    let writer = {
        let dhcp = Arc::clone(&dhcp);
        let pxe = pxe.clone();
        let events = events.clone();
        let metrics = metrics.clone();
        let mut send_failed = io::RateLimited::new("reply not sent", LOG_EVERY);
        let config = GroupConfig {
            max_batch: MAX_BATCH,
            max_queued: MAX_QUEUED,
        };
        db.leases()
            .group_writer(config, move |after, result| {
                // A reply goes out of the socket its request came in on (4011 for the PXE
                // boot server), like the replies the loop sends itself.
                let socket = match (&after, &pxe) {
                    (
                        After::Lease {
                            port: Port::Pxe, ..
                        },
                        Some(pxe),
                    ) => pxe,
                    _ => &dhcp,
                };
                committed(after, result, socket, &events, &metrics, &mut send_failed);
            })
            .await
            .map_err(DhcpdError::StartWriter)?
    };

    let addr = dhcp.local_addr().ok();
    tracing::info!(?addr, pxe = pxe.is_some(), "serving");
    dragonfly_runtime::notify::status(&format!("serving DHCP ({})", cfg.mode.as_str()));

    let mut state = LoopState {
        cfg: Arc::clone(&cfg),
        db: &db,
        table: &mut table,
        writer: &writer,
        events: &events,
        metrics: &metrics,
        malformed: io::RateLimited::new("dropped malformed packet", LOG_EVERY),
        send_failed: io::RateLimited::new("reply not sent", LOG_EVERY),
        overloaded: io::RateLimited::new("lease writer behind", LOG_EVERY),
        store_failed: io::RateLimited::new("store lookup failed", LOG_EVERY),
        new_clients: limits::NewClients::new(cfg.new_clients),
        limited: io::RateLimited::new("new clients over the limit", LOG_EVERY),
    };
    let mut buf = vec![0u8; io::RECV_BUFFER];
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    // The watchdog is fed only while this loop turns: an idle loop still ticks.
    let mut beat = tokio::time::interval(BEAT_EVERY);
    loop {
        heartbeat.beat();
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = beat.tick() => {}
            r = dhcp.readable() => {
                if r.is_ok() {
                    state.drain(&dhcp, Port::Dhcp, &mut buf).await;
                }
            }
            r = readable(pxe.as_deref()) => {
                if let (Ok(()), Some(p)) = (r, pxe.as_deref()) {
                    state.drain(p, Port::Pxe, &mut buf).await;
                }
            }
            Some(_) = next_change(&mut reservations) => {
                reload_reservations(&mut state, &base).await;
            }
            _ = reload.tick(), if reservations.is_none() => {
                reload_reservations(&mut state, &base).await;
            }
            _ = sweep.tick() => {
                state.table.sweep(now_ms());
                // A full queue skips this sweep; the next one catches up.
                if cfg.mode == Mode::Reservation
                    && let Err(Rejected::Stopped(_)) = writer.try_submit(LeaseOp::SweepExpired, After::Sweep)
                {
                    return Err(DhcpdError::Writer);
                }
            }
        }
    }
    // Let the writer commit and answer what is queued; the frame then closes the publisher.
    match writer.shutdown().await {
        Ok(stats) => tracing::info!(
            batches = stats.batches,
            committed = stats.committed,
            failed = stats.failed,
            "lease writer stopped"
        ),
        Err(e) => tracing::error!(error = %Chain(&e), "the lease writer failed while stopping"),
    }
    Ok(())
}

/// Publishes what dhcpd serves (mode, subnets, the file's reservations) for apid to check
/// reservations against.
async fn publish_served(db: &Db, cfg: &DhcpdConfig) -> Result<(), DhcpdError> {
    let subnets = cfg
        .subnets
        .iter()
        .map(|s| PublishedSubnet {
            network: s.network,
            prefix: s.prefix,
            pool: s.pool,
            router: s.router,
            dns: s.dns.clone(),
            domain_name: s.domain_name.clone(),
        })
        .collect();
    let mut fixed: Vec<_> = cfg.reservations.iter().collect();
    fixed.sort_unstable_by_key(|(_, ip)| *ip);
    db.reservations()
        .publish(cfg.mode.as_str(), subnets, fixed, jiff::Timestamp::now())
        .await
        .map_err(DhcpdError::Publish)
}

/// The file's configuration with the store's reservations merged in (see
/// [`DhcpdConfig::with_stored`]); the skipped ones are logged.
async fn load_reservations(db: &Db, base: &DhcpdConfig) -> Result<DhcpdConfig, StoreError> {
    let stored = db.reservations().all().await?;
    let count = stored.len();
    let (merged, skipped) = base.with_stored(stored.into_iter().map(|r| (r.mac, r.ip)));
    for (mac, ip, why) in &skipped {
        tracing::warn!(%mac, %ip, why, "stored reservation not served");
    }
    // Every reconcile_period re-reads them: a line only when they are new or changed (the
    // caller says so), not one a minute saying nothing happened.
    tracing::debug!(
        from_file = base.reservations.len(),
        from_store = count - skipped.len(),
        skipped = skipped.len(),
        "reservations loaded"
    );
    Ok(merged)
}

/// Re-reads the reservations; on a store error the ones in force stay (and the next hint or
/// period tries again).
async fn reload_reservations(state: &mut LoopState<'_>, base: &DhcpdConfig) {
    match load_reservations(state.db, base).await {
        Ok(merged) => {
            if merged.reservations != state.cfg.reservations {
                tracing::info!(
                    reservations = merged.reservations.len(),
                    "reservations changed: served from now on"
                );
            }
            state.cfg = Arc::new(merged);
        }
        Err(e) => state
            .store_failed
            .hit(&format_args!("reloading reservations: {}", Chain(&e))),
    }
}

async fn next_change(
    f: &mut Option<Follower<ReservationChanged>>,
) -> Option<dragonfly_bus::Change<ReservationChanged>> {
    match f {
        Some(f) => f.next().await,
        None => std::future::pending().await,
    }
}

async fn readable(socket: Option<&UdpSocket>) -> std::io::Result<()> {
    match socket {
        Some(s) => s.readable().await,
        None => std::future::pending().await,
    }
}

struct LoopState<'a> {
    /// The configuration with the stored reservations merged in; replaced on each reload.
    cfg: Arc<DhcpdConfig>,
    db: &'a Db,
    table: &'a mut leases::Leases,
    writer: &'a GroupWriter<LeaseOp, After>,
    events: &'a Publisher,
    metrics: &'a metrics::DhcpdMetrics,
    malformed: io::RateLimited,
    send_failed: io::RateLimited,
    overloaded: io::RateLimited,
    store_failed: io::RateLimited,
    /// Answers to new clients, per relay and interface.
    new_clients: limits::NewClients,
    limited: io::RateLimited,
}

impl LoopState<'_> {
    /// Handles every datagram queued on `socket`.
    async fn drain(&mut self, socket: &UdpSocket, port: Port, buf: &mut [u8]) {
        loop {
            let received = socket.try_io(Interest::READABLE, || io::recv(socket, buf));
            let r = match received {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    self.malformed
                        .hit(&format_args!("receive failed: {}", Chain(&e)));
                    return;
                }
            };
            if r.truncated {
                self.malformed
                    .hit(&format_args!("{} bytes from {}: too long", r.len, r.source));
                continue;
            }
            let Some(bytes) = buf.get(..r.len) else {
                continue;
            };
            let req = match wire::decode(bytes) {
                Ok(req) => req,
                Err(e) => {
                    self.malformed.hit(&format_args!(
                        "{} bytes from {}: {}",
                        r.len,
                        r.source,
                        Chain(&e)
                    ));
                    continue;
                }
            };
            let arrival = Arrival {
                port,
                source: r.source,
                local: r.local,
                ifindex: r.ifindex,
            };
            let known = self.known(&req).await;
            let out = policy::decide(
                &self.cfg,
                &req,
                &arrival,
                known,
                self.table,
                &mut self.new_clients,
                now_ms(),
            );
            if let Some(link) = out.limited {
                self.limited.hit(&format_args!(
                    "no answer to {} from {link:?} (new_clients_per_second = {}, new_clients_burst = {})",
                    req.mac, self.cfg.new_clients.per_second, self.cfg.new_clients.burst
                ));
            }
            if let Some(why) = out.silent {
                tracing::debug!(mac = %req.mac, kind = ?req.kind, why, "no answer");
            }
            let booted = out.pxe.as_ref().map(|p| p.mac);
            if let Some(pxe) = out.pxe {
                tracing::info!(mac = %pxe.mac, arch = %pxe.arch, client = %pxe.client, boot = %pxe.boot, "boot answer");
                self.metrics
                    .pxe_answers
                    .get_or_create(&metrics::Pxe {
                        arch: pxe.arch.clone(),
                        client: pxe.client.clone(),
                        mode: pxe.mode.clone(),
                    })
                    .inc();
                self.events.publish(&pxe);
            } else if req.boot_client.is_some() && out.reply.is_some() {
                tracing::info!(mac = %req.mac, arch = ?req.arch, "network-boot client of unknown architecture: no boot answer");
            }
            let reply = match out.reply {
                Some(reply) => match wire::encode(&reply.msg) {
                    Ok(bytes) => Some((reply, bytes)),
                    Err(e) => {
                        self.send_failed.hit(&Chain(&e));
                        None
                    }
                },
                None => None,
            };
            // A boot answer is witnessed in the store (ipxed mints tokens only for boots dhcpd
            // saw), committed with the lease change it makes, before the client is told: by
            // the time it asks ipxed for its script the sighting is there. Only network-boot
            // clients pay for it; everyone else's path is unchanged.
            let op = match (booted, out.write) {
                (Some(mac), write) => Some(LeaseOp::Sighted {
                    sighting: sighting(&self.cfg, mac, reply.as_ref().map(|r| &r.0), &arrival),
                    write,
                }),
                (None, Some(write)) => Some(LeaseOp::Write(write)),
                (None, None) => None,
            };
            match op {
                Some(op) => {
                    let after = After::Lease {
                        reply: reply.map(Box::new),
                        event: out.lease_event,
                        port,
                    };
                    // A full queue drops a REQUEST (its client retransmits and gets the same
                    // address); a RELEASE or DECLINE, which no one retransmits, waits for room.
                    // TODO(robustness): the dropped REQUEST's binding stays in the in-memory
                    // table uncommitted until the retry commits it or it expires.
                    let queued = match self.writer.try_submit(op, after) {
                        Err(Rejected::Full((op, after))) if !after.has_reply() => {
                            self.writer.submit(op, after).await.map_err(drop)
                        }
                        Err(Rejected::Full(_)) => {
                            self.overloaded.hit(&format_args!(
                                "{MAX_QUEUED} changes queued: no answer to {}",
                                req.mac
                            ));
                            Ok(())
                        }
                        Err(Rejected::Stopped(_)) => Err(()),
                        Ok(()) => Ok(()),
                    };
                    if queued.is_err() {
                        self.send_failed.hit(&"the lease writer stopped");
                    }
                }
                None => {
                    if let Some((reply, bytes)) = reply {
                        // A full send buffer is waited out (the receive queue absorbs the
                        // pause), never a reason to drop the reply.
                        let sent = tokio::time::timeout(
                            io::SEND_WAIT,
                            socket
                                .async_io(Interest::WRITABLE, || io::send(socket, &reply, &bytes)),
                        )
                        .await;
                        let err = match sent {
                            Ok(Ok(())) => None,
                            Ok(Err(e)) => Some(Chain(&e).to_string()),
                            Err(_) => Some("send buffer full".to_owned()),
                        };
                        if let Some(e) = err {
                            self.send_failed
                                .hit(&format_args!("to {}: {e}", reply.dest));
                        }
                    }
                }
            }
        }
    }

    /// The store's knowledge of a network-boot client's MAC. Only boot clients are looked up:
    /// that is what proxy modes and boot events need, and it keeps the store off the hot path
    /// of plain DHCP clients. The light boot lookup: one indexed row, no JSON decoded.
    async fn known(&mut self, req: &wire::Request) -> Known {
        if req.boot_client.is_none() {
            return Known::default();
        }
        match self.db.machines().boot_info(req.mac).await {
            Ok(m) => Known {
                machine_id: m.map(|m| m.id.0),
            },
            Err(e) => {
                self.store_failed.hit(&Chain(&e));
                Known::default()
            }
        }
    }
}

/// After a lease operation's commit, on the group writer's thread: sends the reply that
/// waited for it and publishes its events. A failed batch was logged by the store; its clients
/// get no answer and retransmit.
// TODO(robustness): the in-memory table already holds a failed batch's leases; the clients'
// retries rewrite them.
fn committed(
    after: After,
    result: Result<Vec<Lease>, &StoreError>,
    dhcp: &UdpSocket,
    events: &Publisher,
    metrics: &metrics::DhcpdMetrics,
    send_failed: &mut io::RateLimited,
) {
    let Ok(ended) = result else { return };
    match after {
        After::Lease { reply, event, .. } => {
            if let Some(boxed) = reply
                && let (reply, bytes) = *boxed
                && let Err(e) = io::send_blocking(dhcp, &reply, &bytes)
            {
                send_failed.hit(&format_args!("to {}: {}", reply.dest, Chain(&e)));
            }
            match event {
                Some(LeaseEvent::Granted(g)) => {
                    metrics.leases_granted.inc();
                    events.publish(&g);
                }
                Some(LeaseEvent::Ended(x)) => {
                    metrics.ended(x.reason);
                    events.publish(&x);
                }
                None => {}
            }
        }
        After::Sweep => {
            for l in ended {
                metrics.ended(LeaseEndReason::Expired);
                if let Some(mac) = l.mac {
                    events.publish(&LeaseEnded {
                        mac,
                        ip: l.ip,
                        reason: LeaseEndReason::Expired,
                    });
                }
            }
        }
    }
}
