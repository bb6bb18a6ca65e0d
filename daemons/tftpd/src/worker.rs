//! The transfer engine: one thread that drives every transfer's state machine
//! ([`crate::transfer`]) on the transfer's own socket, and decides with [`crate::admission`]
//! which requests start.
//!
//! Why one thread with `epoll`, rather than a thread per transfer or a tokio task per transfer:
//! - **Memory is per transfer, not per thread.** A transfer is its state machine, a socket and
//!   the open file — about a kilobyte. Blocks are read (`pread`, page cache) into one buffer
//!   the whole engine shares ([`ReadCache`]: ahead for a transfer streaming alone, exactly
//!   what is sent when transfers interleave), so no transfer holds any of its file. A thread
//!   per transfer cost a stack and a malloc arena each: 1 024 transfers took the server to
//!   278 MiB.
//! - **Latency stays that of a blocking loop.** An ACK costs one `epoll_wait` wake-up, a `recv`
//!   and one `sendmmsg` for the whole window it opens — the same system calls the thread per
//!   transfer made, without tokio's reactor hop, task scheduling and timer re-registration
//!   (which made lock-step transfers slower than tftpd-hpa's process per transfer). Under many
//!   transfers one wake-up serves every ready socket, so the context switches that dominated
//!   the 50-client benchmark go away.
//! - **Timers are a heap of deadlines**, checked after every wake-up; `epoll_wait` sleeps until
//!   the earliest (millisecond resolution, rounded up) and at most [`MAX_SLEEP`], so the
//!   watchdog sees the thread turn even when idle.
//!
//! The async side ([`crate::run`]) parses requests on the listening socket and hands them over
//! through a bounded channel and an eventfd; transfer events go to a sink that must not
//! block (the daemon's bounded publisher). The engine must never block on anything but `epoll_wait` (sockets
//! are non-blocking, files are local and small), never panic on what a client sends (the state
//! machine parses with the fuzzed codec), and never hold a request it has not counted in
//! [`Admission`].

/// Where finished transfers are reported.
type EventSink = Box<dyn FnMut(TftpTransferred) + Send>;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::fs::File;
use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use dragonfly_bus::events::TftpTransferred;
use dragonfly_runtime::cli::Chain;
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{ControlMessage, MsgFlags, MultiHeaders, recv, sendmmsg};
use tokio::sync::oneshot;

use crate::admission::{Admission, Offer, Quotas};
use crate::files::{self, read_full_at};
use crate::packet::{self, ErrorCode, Options, Packet};
use crate::transfer::{
    DelayFloor, Heard, Limits, Plan, Reason, Status, Transfer, negotiate, wire_block,
};
use crate::{Admit, LogLimiter};

/// Longest sleep in `epoll_wait`, so that an idle engine still proves it is alive.
pub(crate) const MAX_SLEEP: Duration = Duration::from_secs(1);
/// Requests handed over but not yet taken by the engine; beyond, they are dropped unanswered
/// (the client retransmits).
const HANDOFF: usize = 1024;
/// Bytes a transfer streaming alone reads at once (see [`ReadCache`]).
const READ_AHEAD: usize = 64 * 1024;
/// Most datagrams handed to one `sendmmsg`.
const MAX_BATCH: usize = 64;
/// File descriptors kept free for everything else (NATS, logging, the listening socket).
const FD_RESERVE: u64 = 64;
/// The eventfd's key in the epoll set; transfers use `generation << 32 | index`.
const WAKE: u64 = u64::MAX;

/// A read request, parsed and checked by the listener.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) client: SocketAddr,
    /// The address the request was sent to: the transfer's socket is bound to it.
    pub(crate) local_ip: IpAddr,
    pub(crate) filename: String,
    pub(crate) options: Options,
}

/// What the engine is configured with.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) roots: Vec<PathBuf>,
    pub(crate) limits: Limits,
    pub(crate) quotas: Quotas,
}

#[derive(Debug, Default)]
struct Control {
    /// Finish the transfers in progress, start no more, then exit.
    draining: AtomicBool,
    /// Exit now.
    stop: AtomicBool,
    /// Loop iterations, for the watchdog.
    turns: AtomicU64,
}

/// The handle the async side holds. Dropping it stops the engine at once.
#[derive(Debug)]
pub(crate) struct Engine {
    requests: SyncSender<Request>,
    wake: Arc<EventFd>,
    control: Arc<Control>,
    exited: oneshot::Receiver<()>,
    _thread: JoinHandle<()>,
}

impl Engine {
    /// Starts the engine thread. Events of finished transfers go to `events`, which must not
    /// block (the daemon's publisher drops them when NATS falls behind: the bus is best
    /// effort, the transfers are not).
    pub(crate) fn start(
        mut settings: Settings,
        events: impl FnMut(TftpTransferred) + Send + 'static,
    ) -> io::Result<Engine> {
        settings.quotas.active = fit_fd_limit(settings.quotas.active);
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        let wake = Arc::new(EventFd::from_flags(
            EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC,
        )?);
        epoll.add(&*wake, EpollEvent::new(EpollFlags::EPOLLIN, WAKE))?;
        let (requests, inbox) = sync_channel(HANDOFF);
        let (exited_tx, exited) = oneshot::channel();
        let control = Arc::new(Control::default());
        let (thread_wake, thread_control) = (Arc::clone(&wake), Arc::clone(&control));
        let thread = std::thread::Builder::new()
            .name("tftp-transfers".into())
            .spawn(move || {
                // Built on its thread: the sendmmsg headers hold raw pointers (not `Send`).
                Worker::new(
                    settings,
                    epoll,
                    thread_wake,
                    thread_control,
                    inbox,
                    Box::new(events),
                )
                .run();
                let _ = exited_tx.send(());
            })?;
        Ok(Engine {
            requests,
            wake,
            control,
            exited,
            _thread: thread,
        })
    }

    /// Hands a request over; false when the engine is that far behind (the request is dropped
    /// unanswered, as beyond the queue).
    pub(crate) fn submit(&self, request: Request) -> bool {
        match self.requests.try_send(request) {
            Ok(()) => {
                self.wake();
                true
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }

    /// Loop iterations so far: the engine is alive while this moves (at least every
    /// [`MAX_SLEEP`]).
    pub(crate) fn turns(&self) -> u64 {
        self.control.turns.load(Ordering::Relaxed)
    }

    /// Resolves if the engine thread ends (it only does when told to, or by a panic). Once it
    /// has resolved, do not call [`Self::drain`].
    pub(crate) async fn exited(&mut self) {
        let _ = (&mut self.exited).await;
    }

    /// Lets the transfers in progress finish (the caller bounds the wait) and starts no more;
    /// false if the engine thread had died instead.
    pub(crate) async fn drain(mut self) -> bool {
        self.control.draining.store(true, Ordering::SeqCst);
        self.wake();
        (&mut self.exited).await.is_ok()
    }

    fn wake(&self) {
        if let Err(errno) = self.wake.write(1) {
            tracing::error!(%errno, "cannot wake the transfer engine");
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.control.stop.store(true, Ordering::SeqCst);
        self.wake();
    }
}

/// Each transfer holds two descriptors (its socket and its file): keep `wanted` transfers
/// within the process's limit, or as many as fit (with a warning).
fn fit_fd_limit(wanted: usize) -> usize {
    use nix::sys::resource::{Resource, getrlimit};
    let Ok((soft, _)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return wanted;
    };
    let fit = usize::try_from(soft.saturating_sub(FD_RESERVE) / 2).unwrap_or(usize::MAX);
    if fit >= wanted {
        return wanted;
    }
    let fit = fit.max(1);
    tracing::warn!(
        max_transfers = wanted,
        open_files = soft,
        used = fit,
        "max_transfers lowered to what the open-file limit allows (raise LimitNOFILE=)"
    );
    fit
}

/// One transfer in progress.
#[derive(Debug)]
struct Live {
    transfer: Transfer,
    socket: UdpSocket,
    file: File,
    size: u64,
    blksize: u16,
    windowsize: u16,
    oack: Option<Vec<u8>>,
    client: SocketAddr,
    filename: String,
    root: PathBuf,
    started: Instant,
    /// The deadline this transfer has in the timer heap.
    scheduled: Option<Instant>,
    /// Waiting for the socket to take more (`EPOLLOUT` registered).
    blocked: bool,
}

#[derive(Debug, Default)]
struct Entry {
    generation: u32,
    live: Option<Live>,
}

/// The transfer `key` names, if it is still in progress (`key` is `generation << 32 | index`:
/// a key outlives its transfer in the timer heap and the epoll set, never its generation).
fn live_of(entries: &mut [Entry], key: u64) -> Option<&mut Live> {
    let index = usize::try_from(key & 0xffff_ffff).ok()?;
    let entry = entries.get_mut(index)?;
    if u64::from(entry.generation) != key >> 32 {
        return None;
    }
    entry.live.as_mut()
}

/// How a transfer ended, as far as the engine is concerned.
#[derive(Debug)]
enum End {
    Complete,
    Failed {
        why: String,
        farewell: Option<(ErrorCode, &'static str)>,
        never_answered: bool,
    },
}

/// Why blocks could not be sent.
enum SendFailure {
    Shrank,
    Read(io::Error),
    Socket(io::Error),
}

struct Worker {
    settings: Settings,
    epoll: Epoll,
    wake: Arc<EventFd>,
    control: Arc<Control>,
    inbox: Receiver<Request>,
    events: EventSink,
    admission: Admission<Request>,
    entries: Vec<Entry>,
    free: Vec<usize>,
    live: usize,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Transfers still waiting for their first ACK, by client: a repeated request goes to
    /// them instead of starting another transfer.
    unacked: HashMap<SocketAddr, u64>,
    floor: DelayFloor,
    cache: ReadCache,
    headers: MultiHeaders<()>,
    incoming: Vec<u8>,
    draining: bool,
    refusals: LogLimiter,
    unanswered: LogLimiter,
    dropped: LogLimiter,
}

impl Worker {
    fn new(
        settings: Settings,
        epoll: Epoll,
        wake: Arc<EventFd>,
        control: Arc<Control>,
        inbox: Receiver<Request>,
        events: EventSink,
    ) -> Self {
        let blksize = usize::from(settings.limits.max_blksize);
        Self {
            admission: Admission::new(settings.quotas),
            settings,
            epoll,
            wake,
            control,
            inbox,
            events,
            entries: Vec::new(),
            free: Vec::new(),
            live: 0,
            timers: BinaryHeap::new(),
            unacked: HashMap::new(),
            floor: DelayFloor::default(),
            cache: ReadCache::new((MAX_BATCH * blksize).max(READ_AHEAD)),
            headers: MultiHeaders::preallocate(MAX_BATCH, None),
            incoming: vec![0; 1024],
            draining: false,
            refusals: LogLimiter::new(10, Duration::from_secs(10)),
            unanswered: LogLimiter::new(10, Duration::from_secs(10)),
            dropped: LogLimiter::new(1, Duration::from_secs(10)),
        }
    }

    fn run(mut self) {
        let mut ready = vec![EpollEvent::empty(); 256];
        loop {
            self.control.turns.fetch_add(1, Ordering::Relaxed);
            if self.control.stop.load(Ordering::SeqCst) {
                break;
            }
            if self.control.draining.load(Ordering::SeqCst) && !self.draining {
                self.draining = true;
                self.admission.clear_queue();
            }
            if self.draining && self.live == 0 {
                break;
            }
            let n = match self.epoll.wait(&mut ready, self.sleep(Instant::now())) {
                Ok(n) => n,
                Err(Errno::EINTR) => 0,
                Err(errno) => {
                    tracing::error!(%errno, "epoll_wait failed; the transfer engine stops");
                    break;
                }
            };
            let now = Instant::now();
            for event in ready.get(..n).unwrap_or_default() {
                if event.data() == WAKE {
                    let _ = self.wake.read();
                } else {
                    self.on_ready(event.data(), event.events(), now);
                }
            }
            self.take_requests(now);
            self.fire_timers(now);
            self.start_queued(now);
            self.compact_timers();
        }
        tracing::debug!(abandoned = self.live, "transfer engine stopped");
    }

    /// How long `epoll_wait` may sleep: until the earliest deadline, at most [`MAX_SLEEP`].
    fn sleep(&self, now: Instant) -> EpollTimeout {
        let wait = self
            .timers
            .peek()
            .map_or(MAX_SLEEP, |Reverse((at, _))| {
                at.saturating_duration_since(now)
            })
            .min(MAX_SLEEP);
        let ms = wait.as_micros().div_ceil(1000);
        EpollTimeout::try_from(ms).unwrap_or(EpollTimeout::MAX)
    }

    fn take_requests(&mut self, now: Instant) {
        loop {
            let request = match self.inbox.try_recv() {
                Ok(request) => request,
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
            };
            if self.draining {
                continue;
            }
            // A repeat of a request whose transfer waits for its first ACK: the client did not
            // hear us (or is slow); maybe send the first unit again, never a second transfer.
            if let Some(&key) = self.unacked.get(&request.client)
                && let Some(live) = live_of(&mut self.entries, key)
                && live.filename == request.filename
            {
                if live.transfer.on_request_again(now) {
                    self.pump(key, now);
                }
                continue;
            }
            let client = request.client;
            match self.admission.offer(client, request, now) {
                Offer::Start(request) => self.start(request, now),
                Offer::Queued | Offer::Refreshed => {}
                Offer::Dropped => {
                    if let Admit::Log { suppressed } = self.dropped.admit(now) {
                        tracing::warn!(%client, queued = self.admission.queued(), suppressed,
                            "request dropped unanswered: queue full (the client will retransmit)");
                    }
                }
            }
        }
    }

    fn start_queued(&mut self, now: Instant) {
        if self.draining {
            return;
        }
        while let Some((_, request)) = self.admission.next(now) {
            self.start(request, now);
        }
    }

    /// Starts a request [`Admission`] counted: opens the file and the transfer's socket, sends
    /// the first unit.
    fn start(&mut self, request: Request, now: Instant) {
        let Request {
            client,
            local_ip,
            filename,
            options,
        } = request;
        let ip = client.ip();
        let first_sends = self.admission.first_sends(ip, now);
        let socket = match transfer_socket(local_ip, client) {
            Ok(socket) => socket,
            Err(e) => {
                self.admission.finished(ip, false, false, now);
                if let Admit::Log { suppressed } = self.refusals.admit(now) {
                    tracing::warn!(%client, error = %Chain(&e), suppressed, "cannot open a transfer socket");
                }
                return;
            }
        };
        let opened = match files::open_in_roots(&self.settings.roots, &filename) {
            Ok(opened) => opened,
            Err(refusal) => {
                self.admission.finished(ip, false, false, now);
                if let Admit::Log { suppressed } = self.refusals.admit(now) {
                    tracing::warn!(%client, file = filename, reason = %refusal, suppressed, "request refused");
                }
                let _ = socket.send(&packet::error_packet(
                    refusal.code(),
                    refusal.client_message(),
                ));
                return;
            }
        };
        let limits = self.settings.limits;
        let negotiated = negotiate(&options, opened.size, &limits);
        let plan = Plan::new(&negotiated, opened.size, &limits, first_sends);
        let index = self.free.pop().unwrap_or_else(|| {
            self.entries.push(Entry::default());
            self.entries.len() - 1
        });
        let Some(entry) = self.entries.get_mut(index) else {
            self.admission.finished(ip, false, false, now);
            return;
        };
        let key = u64::from(entry.generation) << 32 | index as u64;
        if let Err(errno) = self
            .epoll
            .add(&socket, EpollEvent::new(EpollFlags::EPOLLIN, key))
        {
            self.free.push(index);
            self.admission.finished(ip, false, false, now);
            tracing::error!(%errno, "cannot watch a transfer socket");
            return;
        }
        entry.live = Some(Live {
            transfer: Transfer::new(plan, now),
            socket,
            file: opened.file,
            size: opened.size,
            blksize: negotiated.blksize,
            windowsize: negotiated.windowsize,
            oack: negotiated.oack.map(|o| Packet::Oack(o).to_bytes()),
            client,
            filename,
            root: opened.root,
            started: now,
            scheduled: None,
            blocked: false,
        });
        self.live += 1;
        self.unacked.insert(client, key);
        self.pump(key, now);
    }

    /// A transfer's socket is readable (or writable again, or has an error pending).
    fn on_ready(&mut self, key: u64, flags: EpollFlags, now: Instant) {
        let Some(live) = live_of(&mut self.entries, key) else {
            return;
        };
        if flags.contains(EpollFlags::EPOLLOUT) && live.blocked {
            live.blocked = false;
            let mut event = EpollEvent::new(EpollFlags::EPOLLIN, key);
            if let Err(errno) = self.epoll.modify(&live.socket, &mut event) {
                let why = format!("cannot watch the transfer socket: {errno}");
                return self.finish(key, failed(why), now);
            }
        }
        // One datagram per readiness: epoll is level-triggered, so another one waiting is
        // reported again at once, and the usual case — one ACK — costs no `recv` that finds
        // nothing.
        if flags.intersects(EpollFlags::EPOLLIN | EpollFlags::EPOLLERR) {
            let received = loop {
                match recv(
                    live.socket.as_raw_fd(),
                    &mut self.incoming,
                    MsgFlags::MSG_DONTWAIT,
                ) {
                    Err(Errno::EINTR) => continue,
                    other => break other,
                }
            };
            match received {
                Ok(n) => {
                    let was_confirmed = live.transfer.confirmed();
                    let datagram = self.incoming.get(..n).unwrap_or_default();
                    let heard = live.transfer.on_datagram(datagram, now);
                    if !was_confirmed && live.transfer.confirmed() {
                        let client = live.client;
                        self.admission.confirmed(client.ip());
                        self.unacked.remove(&client);
                    }
                    match heard {
                        Heard::Spurious { delay } => self.floor.raise(delay, now),
                        Heard::Progress { rtt: Some(rtt) } => self.floor.observe(rtt, now),
                        Heard::Ended | Heard::Nothing | Heard::Progress { rtt: None } => {}
                    }
                }
                Err(Errno::EAGAIN) => {}
                Err(errno) => {
                    let why = client_gone(&io::Error::from(errno));
                    return self.finish(key, failed(why), now);
                }
            }
        }
        self.pump(key, now);
    }

    /// Sends what the window allows, then re-arms the timer or ends the transfer.
    fn pump(&mut self, key: u64, now: Instant) {
        let floor = self.floor.get(now);
        let Some(live) = live_of(&mut self.entries, key) else {
            return;
        };
        while !live.blocked
            && let Some((unit, count)) = live.transfer.to_send()
        {
            let sent = if unit == 0 {
                let oack = live.oack.as_deref().unwrap_or_default();
                send_one(&live.socket, oack)
            } else {
                send_blocks(live, key, &mut self.cache, &mut self.headers, unit, count)
            };
            match sent {
                Ok(0) => {
                    live.blocked = true;
                    let mut event =
                        EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLOUT, key);
                    if let Err(errno) = self.epoll.modify(&live.socket, &mut event) {
                        let why = format!("cannot watch the transfer socket: {errno}");
                        return self.finish(key, failed(why), now);
                    }
                }
                Ok(n) => live.transfer.sent(n as u64, now, floor),
                Err(SendFailure::Shrank) => {
                    let end = End::Failed {
                        why: "the file shrank during the transfer".into(),
                        farewell: Some((ErrorCode::NotDefined, "file changed")),
                        never_answered: false,
                    };
                    return self.finish(key, end, now);
                }
                Err(SendFailure::Read(e)) => {
                    let end = End::Failed {
                        why: format!("reading the file: {}", Chain(&e)),
                        farewell: Some((ErrorCode::NotDefined, "read error")),
                        never_answered: false,
                    };
                    return self.finish(key, end, now);
                }
                Err(SendFailure::Socket(e)) => {
                    return self.finish(key, failed(client_gone(&e)), now);
                }
            }
        }
        match live.transfer.status() {
            Status::Running => {
                if let Some(deadline) = live.transfer.deadline()
                    && live.scheduled.is_none_or(|s| deadline < s)
                {
                    live.scheduled = Some(deadline);
                    self.timers.push(Reverse((deadline, key)));
                }
            }
            Status::Complete => self.finish(key, End::Complete, now),
            Status::Failed(failure) => {
                let end = End::Failed {
                    why: failure.reason.to_string(),
                    farewell: failure.farewell,
                    never_answered: matches!(failure.reason, Reason::NeverAcknowledged(_)),
                };
                self.finish(key, end, now);
            }
        }
    }

    fn fire_timers(&mut self, now: Instant) {
        while let Some(&Reverse((at, key))) = self.timers.peek() {
            if at > now {
                return;
            }
            self.timers.pop();
            let Some(live) = live_of(&mut self.entries, key) else {
                continue;
            };
            if live.scheduled != Some(at) {
                continue;
            }
            live.scheduled = None;
            match live.transfer.deadline() {
                Some(deadline) if deadline > now => {
                    live.scheduled = Some(deadline);
                    self.timers.push(Reverse((deadline, key)));
                }
                Some(_) => {
                    live.transfer.on_timer(now);
                    self.pump(key, now);
                }
                None => {}
            }
        }
    }

    /// Stale heap entries (deadlines that moved) are skipped when they fire; rebuild the heap
    /// if they ever outnumber the live ones by far.
    fn compact_timers(&mut self) {
        if self.timers.len() <= 4 * self.live + 1024 {
            return;
        }
        self.timers = self
            .entries
            .iter()
            .enumerate()
            .filter_map(|(index, entry)| {
                let at = entry.live.as_ref()?.scheduled?;
                Some(Reverse((
                    at,
                    u64::from(entry.generation) << 32 | index as u64,
                )))
            })
            .collect();
    }

    /// Ends a transfer: frees its slot first, then says goodbye, logs and reports it.
    fn finish(&mut self, key: u64, end: End, now: Instant) {
        let index = usize::try_from(key & 0xffff_ffff).unwrap_or(usize::MAX);
        let Some(entry) = self.entries.get_mut(index) else {
            return;
        };
        if u64::from(entry.generation) != key >> 32 {
            return;
        }
        let Some(live) = entry.live.take() else {
            return;
        };
        entry.generation = entry.generation.wrapping_add(1);
        self.free.push(index);
        self.live -= 1;
        let confirmed = live.transfer.confirmed();
        let never_answered = matches!(
            end,
            End::Failed {
                never_answered: true,
                ..
            }
        );
        self.admission
            .finished(live.client.ip(), confirmed, never_answered, now);
        if self.unacked.get(&live.client) == Some(&key) {
            self.unacked.remove(&live.client);
        }
        let Live {
            transfer,
            socket,
            size,
            blksize,
            windowsize,
            client,
            filename,
            root,
            started,
            ..
        } = live;
        if let End::Failed {
            farewell: Some((code, message)),
            ..
        } = &end
        {
            let _ = socket.send(&packet::error_packet(*code, message));
        }
        drop(socket);
        let stats = transfer.stats();
        let bytes = (transfer.blocks_acked() * u64::from(blksize)).min(size);
        let duration_ms =
            u64::try_from(now.saturating_duration_since(started).as_millis()).unwrap_or(u64::MAX);
        let error = match end {
            End::Complete => {
                tracing::info!(file = filename, root = %root.display(), %client, bytes = size,
                    duration_ms, blksize, windowsize, resent = stats.resent,
                    spurious = stats.spurious, "sent");
                None
            }
            End::Failed {
                never_answered: true,
                why,
                ..
            } => {
                // Unproven addresses (possibly forged) get neither an event nor a line each.
                if let Admit::Log { suppressed } = self.unanswered.admit(now) {
                    tracing::info!(file = filename, %client, error = why, suppressed,
                        "transfer never acknowledged");
                }
                return;
            }
            End::Failed { why, .. } => {
                tracing::warn!(file = filename, %client, bytes, duration_ms, error = why,
                    resent = stats.resent, "transfer failed");
                Some(why)
            }
        };
        let event = TftpTransferred {
            file: filename,
            client,
            bytes: if error.is_none() { size } else { bytes },
            duration_ms,
            complete: error.is_none(),
            error,
        };
        (self.events)(event);
    }
}

fn failed(why: String) -> End {
    End::Failed {
        why,
        farewell: None,
        never_answered: false,
    }
}

/// A new non-blocking socket (the transfer's TID) on `local_ip`, connected to `client`.
fn transfer_socket(local_ip: IpAddr, client: SocketAddr) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(SocketAddr::new(local_ip, 0))?;
    socket.connect(client)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Sends one datagram: `Ok(1)`, or `Ok(0)` when the socket would block.
fn send_one(socket: &UdpSocket, datagram: &[u8]) -> Result<usize, SendFailure> {
    match socket.send(datagram) {
        Ok(_) => Ok(1),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
        Err(e) => Err(SendFailure::Socket(e)),
    }
}

/// The engine's one read buffer: blocks are read into it just before they are sent, and the
/// datagrams point into it. When the transfer that reads is the one that read last — a
/// transfer streaming alone, the common case for a big file — it reads ahead up to the whole
/// buffer, so lock-step costs one `pread` per ~44 blocks instead of one per block; when
/// transfers interleave, each reads exactly what it sends, so nothing is read to be thrown
/// away. One buffer for the engine: memory does not grow with the number of transfers.
#[derive(Debug)]
struct ReadCache {
    buf: Vec<u8>,
    /// The transfer whose blocks are in `buf` (its key: never reused for another transfer).
    owner: Option<u64>,
    /// Units `first..first + covered` are in `buf[..len]`.
    first: u64,
    covered: u64,
    len: usize,
}

impl ReadCache {
    fn new(bytes: usize) -> Self {
        Self {
            buf: vec![0; bytes],
            owner: None,
            first: 0,
            covered: 0,
            len: 0,
        }
    }

    /// Up to `count` consecutive blocks of transfer `key` from `unit` on: their bytes and how
    /// many. Every block but the file's last is `blksize` long; the last may be empty.
    fn blocks(
        &mut self,
        key: u64,
        live: &Live,
        unit: u64,
        count: usize,
    ) -> Result<(&[u8], usize), SendFailure> {
        let blksize = usize::from(live.blksize).max(1);
        let streaming = self.owner == Some(key);
        if !(streaming && (self.first..self.first + self.covered).contains(&unit)) {
            let capacity = self.buf.len() / blksize;
            let blocks = if streaming {
                capacity
            } else {
                count.min(capacity)
            };
            let offset = (unit - 1) * blksize as u64;
            let want = usize::try_from(live.size.saturating_sub(offset))
                .unwrap_or(usize::MAX)
                .min(blocks * blksize);
            self.owner = None;
            let buf = self.buf.get_mut(..want).ok_or(SendFailure::Shrank)?;
            match read_full_at(&live.file, buf, offset) {
                Ok(n) if n == want => {}
                Ok(_) => return Err(SendFailure::Shrank),
                Err(e) => return Err(SendFailure::Read(e)),
            }
            self.owner = Some(key);
            self.first = unit;
            self.len = want;
            self.covered = if offset + want as u64 == live.size {
                // Up to the end of the file, including a last block that may be empty.
                live.size / blksize as u64 + 1 - unit + 1
            } else {
                (want / blksize) as u64
            };
        }
        let available = usize::try_from(self.first + self.covered - unit).unwrap_or(usize::MAX);
        let count = count.min(available);
        let from = usize::try_from(unit - self.first).unwrap_or(usize::MAX) * blksize;
        let to = from.saturating_add(count * blksize);
        let bytes = self
            .buf
            .get(from.min(self.len)..to.min(self.len))
            .unwrap_or_default();
        Ok((bytes, count))
    }
}

/// Sends `count` blocks of transfer `key` from `unit` on (read through `cache`) in one
/// `sendmmsg`: how many the kernel took (0 when it would block).
fn send_blocks(
    live: &Live,
    key: u64,
    cache: &mut ReadCache,
    headers: &mut MultiHeaders<()>,
    unit: u64,
    count: u64,
) -> Result<usize, SendFailure> {
    let blksize = usize::from(live.blksize);
    let count = usize::try_from(count).unwrap_or(MAX_BATCH).min(MAX_BATCH);
    let (data, count) = cache.blocks(key, live, unit, count)?;
    let mut wire = [[0u8; 4]; MAX_BATCH];
    for (i, header) in wire.iter_mut().take(count).enumerate() {
        *header = packet::data_header(wire_block(unit + i as u64));
    }
    let mut slices: [[IoSlice<'_>; 2]; MAX_BATCH] =
        [[IoSlice::new(&[]), IoSlice::new(&[])]; MAX_BATCH];
    for (i, (slot, header)) in slices.iter_mut().zip(&wire).take(count).enumerate() {
        let from = (i * blksize).min(data.len());
        let to = ((i + 1) * blksize).min(data.len());
        *slot = [
            IoSlice::new(header),
            IoSlice::new(data.get(from..to).unwrap_or_default()),
        ];
    }
    const NO_ADDRESS: [Option<()>; MAX_BATCH] = [None; MAX_BATCH];
    loop {
        let sent = sendmmsg(
            live.socket.as_raw_fd(),
            headers,
            slices.get(..count).unwrap_or_default(),
            NO_ADDRESS,
            [] as [ControlMessage<'_>; 0],
            MsgFlags::empty(),
        );
        match sent {
            Ok(results) => return Ok(results.count()),
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return Ok(0),
            Err(errno) => return Err(SendFailure::Socket(errno.into())),
        }
    }
}

fn client_gone(e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::ConnectionRefused {
        "the client went away (ICMP port unreachable)".into()
    } else {
        format!("socket error: {}", Chain(e))
    }
}

#[cfg(test)]
mod tests;
