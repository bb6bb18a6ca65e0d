//! dhcpd: Dragonfly's DHCP server and PXE boot-information server.
//!
//! Three layers: [`wire`] (bytes ↔ `dhcproto`, pure), [`policy`] (what to answer, pure, over
//! the in-memory [`leases`] table), and this module's socket loop. In reservation mode it is
//! the network's DHCP server; in proxy modes it only tells network-booting clients what to
//! boot and never hands out an address.
//!
//! Leases are committed to the store before the client is told (group commit: one writer
//! thread commits whatever is queued in one transaction, then sends the replies that waited for
//! it), so an ACK never names a lease a crash could forget. Events are published after the
//! commit; a publish failure is logged, never fatal. The queue to the writer is bounded: when
//! the store falls behind, REQUESTs beyond it get no answer (and retransmit) rather than late
//! answers and unbounded memory. Replies wait for room in a full send buffer instead of being
//! dropped.
//!
//! [`run`] takes its sockets from the caller (systemd, or a test) and binds nothing itself.

pub mod config;
pub mod io;
pub mod leases;
pub mod policy;
pub mod wire;

use std::net::UdpSocket as StdUdpSocket;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dragonfly_bus::Bus;
use dragonfly_bus::events::{LeaseEnded, PxeAnswered};
use dragonfly_store::leases::LeaseWrite;
use dragonfly_store::{Db, StoreError};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use config::DhcpdConfig;
use config::Mode;
use policy::{Arrival, Known, LeaseEvent, Port, Reply};

/// Everything [`run`] needs besides its sockets.
#[derive(Debug, Clone)]
pub struct Config {
    pub dhcpd: DhcpdConfig,
    /// The SQLite database (already migrated).
    pub store_path: PathBuf,
    /// `None`: publish no events (tests that need no bus).
    pub nats_url: Option<String>,
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
    #[error("opening the store")]
    Store(#[from] StoreError),
    #[error("connecting to NATS")]
    Bus(#[from] dragonfly_bus::BusError),
    #[error("setting up socket {name:?}")]
    Socket {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the lease writer stopped")]
    Writer,
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
/// How often expired leases are removed (and `LeaseEnded { reason: "expired" }` published).
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// Rate limit for each kind of drop log line.
const LOG_EVERY: Duration = Duration::from_secs(10);

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// Work for the writer thread.
enum Job {
    /// Commit `write`, then send `reply` and publish `event`.
    Lease {
        write: LeaseWrite,
        reply: Option<Box<(Reply, Vec<u8>)>>,
        event: Option<LeaseEvent>,
    },
    /// Delete leases that expired by now.
    Sweep,
}

impl Job {
    fn has_reply(&self) -> bool {
        matches!(self, Job::Lease { reply: Some(_), .. })
    }
}

/// What the publisher task publishes.
enum Published {
    Lease(LeaseEvent),
    Pxe(PxeAnswered),
}

/// Serves DHCP on `sockets` until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    sockets: Sockets,
    shutdown: CancellationToken,
) -> Result<(), DhcpdError> {
    let cfg = Arc::new(config.dhcpd);
    let socket = |name: &'static str, s: StdUdpSocket| {
        let err = |source| DhcpdError::Socket { name, source };
        io::configure(&s).map_err(err)?;
        s.set_nonblocking(true).map_err(err)?;
        UdpSocket::from_std(s).map_err(err)
    };
    let dhcp = Arc::new(socket("dhcp", sockets.dhcp)?);
    let pxe = sockets.pxe.map(|s| socket("pxe", s)).transpose()?;

    let db = Db::open(&config.store_path).await?;
    let rows = db.run(|c| dragonfly_store::leases::all(c)).await?;
    let mut table = leases::Leases::from_store(rows);
    tracing::info!(
        leases = table.len(),
        mode = cfg.mode.as_str(),
        "lease table loaded"
    );

    let bus = match &config.nats_url {
        Some(url) => {
            dragonfly_runtime::notify::status("connecting to NATS");
            Some(Bus::connect(url, "dragonfly-dhcpd", "/dragonfly/dhcpd").await?)
        }
        None => None,
    };
    let (events_tx, events_rx) = mpsc::unbounded_channel::<Published>();
    let publisher = tokio::spawn(publish_events(bus, events_rx));

    let (jobs_tx, jobs_rx) = mpsc::channel::<Job>(MAX_QUEUED);
    let writer = {
        let path = config.store_path.clone();
        let dhcp = Arc::clone(&dhcp);
        let events = events_tx.clone();
        std::thread::Builder::new()
            .name("lease-writer".into())
            .spawn(move || writer(&path, jobs_rx, &dhcp, &events))
            .map_err(|source| DhcpdError::Socket {
                name: "lease-writer thread",
                source,
            })?
    };

    let addr = dhcp.local_addr().ok();
    tracing::info!(?addr, pxe = pxe.is_some(), "serving");
    dragonfly_runtime::notify::ready();
    dragonfly_runtime::notify::status(&format!("serving DHCP ({})", cfg.mode.as_str()));

    let mut state = LoopState {
        cfg: &cfg,
        db: &db,
        table: &mut table,
        jobs: &jobs_tx,
        events: &events_tx,
        malformed: io::RateLimited::new("dropped malformed packet", LOG_EVERY),
        send_failed: io::RateLimited::new("reply not sent", LOG_EVERY),
        overloaded: io::RateLimited::new("lease writer behind", LOG_EVERY),
        store_failed: io::RateLimited::new("store lookup failed", LOG_EVERY),
    };
    let mut buf = vec![0u8; io::RECV_BUFFER];
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            r = dhcp.readable() => {
                if r.is_ok() {
                    state.drain(&dhcp, Port::Dhcp, &mut buf).await;
                }
            }
            r = readable(pxe.as_ref()) => {
                if let (Ok(()), Some(p)) = (r, pxe.as_ref()) {
                    state.drain(p, Port::Pxe, &mut buf).await;
                }
            }
            _ = sweep.tick() => {
                state.table.sweep(now_ms());
                // A full queue skips this sweep; the next one catches up.
                if cfg.mode == Mode::Reservation
                    && let Err(mpsc::error::TrySendError::Closed(_)) = jobs_tx.try_send(Job::Sweep)
                {
                    return Err(DhcpdError::Writer);
                }
            }
        }
    }
    // Let the writer commit and answer what is queued, then the publisher flush.
    let _ = state;
    drop(jobs_tx);
    drop(events_tx);
    let joined = tokio::task::spawn_blocking(move || writer.join()).await;
    if !matches!(joined, Ok(Ok(Ok(())))) {
        tracing::error!("the lease writer failed while stopping");
    }
    let _ = publisher.await;
    Ok(())
}

async fn readable(socket: Option<&UdpSocket>) -> std::io::Result<()> {
    match socket {
        Some(s) => s.readable().await,
        None => std::future::pending().await,
    }
}

struct LoopState<'a> {
    cfg: &'a DhcpdConfig,
    db: &'a Db,
    table: &'a mut leases::Leases,
    jobs: &'a mpsc::Sender<Job>,
    events: &'a mpsc::UnboundedSender<Published>,
    malformed: io::RateLimited,
    send_failed: io::RateLimited,
    overloaded: io::RateLimited,
    store_failed: io::RateLimited,
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
                    self.malformed.hit(&format_args!("receive failed: {e}"));
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
                    self.malformed
                        .hit(&format_args!("{} bytes from {}: {e}", r.len, r.source));
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
            let out = policy::decide(self.cfg, &req, &arrival, known, self.table, now_ms());
            if let Some(why) = out.silent {
                tracing::debug!(mac = %req.mac, kind = ?req.kind, why, "no answer");
            }
            if let Some(pxe) = out.pxe {
                tracing::info!(mac = %pxe.mac, arch = %pxe.arch, client = %pxe.client, boot = %pxe.boot, "boot answer");
                let _ = self.events.send(Published::Pxe(pxe));
            } else if req.boot_client.is_some() && out.reply.is_some() {
                tracing::info!(mac = %req.mac, arch = ?req.arch, "network-boot client of unknown architecture: no boot answer");
            }
            let reply = match out.reply {
                Some(reply) => match wire::encode(&reply.msg) {
                    Ok(bytes) => Some((reply, bytes)),
                    Err(e) => {
                        self.send_failed.hit(&format_args!("{e}"));
                        None
                    }
                },
                None => None,
            };
            match out.write {
                Some(write) => {
                    let job = Job::Lease {
                        write,
                        reply: reply.map(Box::new),
                        event: out.lease_event,
                    };
                    // A full queue drops a REQUEST (its client retransmits and gets the same
                    // address); a RELEASE or DECLINE, which no one retransmits, waits for room.
                    // TODO(robustness): the dropped REQUEST's binding stays in the in-memory
                    // table uncommitted until the retry commits it or it expires.
                    let queued = match self.jobs.try_send(job) {
                        Err(mpsc::error::TrySendError::Full(job)) if !job.has_reply() => {
                            self.jobs.send(job).await.map_err(|_| ())
                        }
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            self.overloaded.hit(&format_args!(
                                "{MAX_QUEUED} changes queued: no answer to {}",
                                req.mac
                            ));
                            Ok(())
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => Err(()),
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
                            Ok(Err(e)) => Some(e.to_string()),
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
    /// of plain DHCP clients.
    async fn known(&mut self, req: &wire::Request) -> Known {
        if req.boot_client.is_none() {
            return Known::default();
        }
        let mac = req.mac;
        match self
            .db
            .run(move |c| dragonfly_store::machines::get_by_mac(c, mac))
            .await
        {
            Ok(m) => Known {
                machine_id: m.map(|m| m.id.0),
            },
            Err(e) => {
                self.store_failed.hit(&format_args!("{e}"));
                Known::default()
            }
        }
    }
}

/// The writer thread: commits queued lease changes in batches, then sends their replies.
fn writer(
    path: &std::path::Path,
    mut jobs: mpsc::Receiver<Job>,
    dhcp: &UdpSocket,
    events: &mpsc::UnboundedSender<Published>,
) -> Result<(), StoreError> {
    let mut conn = dragonfly_store::open_connection(path, false)?;
    dragonfly_store::check_schema(&conn)?;
    let mut failed = io::RateLimited::new("lease commit failed", LOG_EVERY);
    let mut send_failed = io::RateLimited::new("reply not sent", LOG_EVERY);
    let mut batch = Vec::new();
    while let Some(first) = jobs.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let now = jiff::Timestamp::now();
        let writes: Vec<LeaseWrite> = batch
            .iter()
            .filter_map(|j| match j {
                Job::Lease { write, .. } => Some(write.clone()),
                Job::Sweep => None,
            })
            .collect();
        if let Err(e) = dragonfly_store::leases::apply(&mut conn, &writes, now) {
            // TODO(robustness): the in-memory table already holds these leases; the clients
            // get no answer and will retry, which rewrites them.
            failed.hit(&format_args!("{} changes: {e}", writes.len()));
            batch.clear();
            continue;
        }
        for job in batch.drain(..) {
            match job {
                Job::Lease {
                    reply,
                    event,
                    write: _,
                } => {
                    if let Some(boxed) = reply
                        && let (reply, bytes) = *boxed
                        && let Err(e) = io::send_blocking(dhcp, &reply, &bytes)
                    {
                        send_failed.hit(&format_args!("to {}: {e}", reply.dest));
                    }
                    if let Some(e) = event {
                        let _ = events.send(Published::Lease(e));
                    }
                }
                Job::Sweep => match dragonfly_store::leases::delete_expired(&mut conn, now) {
                    Ok(gone) => {
                        for l in gone {
                            if let Some(mac) = l.mac {
                                let _ =
                                    events.send(Published::Lease(LeaseEvent::Ended(LeaseEnded {
                                        mac: mac.to_string(),
                                        ip: l.ip.to_string(),
                                        reason: "expired".into(),
                                    })));
                            }
                        }
                    }
                    Err(e) => failed.hit(&format_args!("expiry sweep: {e}")),
                },
            }
        }
    }
    Ok(())
}

/// Publishes events in order; failures are logged (rate-limited), never fatal.
async fn publish_events(bus: Option<Bus>, mut rx: mpsc::UnboundedReceiver<Published>) {
    let mut failed = io::RateLimited::new("event not published", LOG_EVERY);
    while let Some(e) = rx.recv().await {
        let Some(bus) = &bus else { continue };
        let r = match &e {
            Published::Lease(LeaseEvent::Granted(g)) => bus.publish(g).await,
            Published::Lease(LeaseEvent::Ended(x)) => bus.publish(x).await,
            Published::Pxe(p) => bus.publish(p).await,
        };
        if let Err(err) = r {
            failed.hit(&format_args!(
                "{err}; subscribers will reconcile from the store"
            ));
        }
    }
}
