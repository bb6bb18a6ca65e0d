//! One read transfer: option negotiation, the send window, retransmission.
//!
//! Why it is fast on lossy links: the retransmission timer is adaptive (RFC 6298: smoothed RTT
//! plus four deviations, Karn's rule — no sample from a retransmitted block), between
//! [`MIN_RTO`] and the negotiated `timeout` (the ceiling, as RFC 2349 asks). On a LAN with a
//! sub-millisecond RTT a lost block is resent after ~10 ms instead of the client's whole
//! timeout; each consecutive timeout doubles the timer up to that ceiling.
//!
//! What it must never do (the Sorcerer's Apprentice bug, RFC 1123 4.2.3.1): answer a duplicate
//! ACK with a send. Only an ACK that acknowledges something new moves the window and sends;
//! only the timer retransmits, and a timeout resends from the first unacknowledged block
//! (RFC 7440). An ACK inside the window (the client saw a gap) moves the window to just after
//! it and resends from there.
//!
//! Why it is fast on a clean link: each transfer runs on a thread of its own (tokio's blocking
//! pool, so threads are reused; at most `max_transfers` of them), blocked in `recv` on its
//! connected socket (in `poll`, whose timeout is the retransmission timer). An ACK then costs
//! one wake-up of that thread, a `poll` and a `recv`; through the async runtime it cost a reactor wake-up,
//! task scheduling, a timer re-registration and a `recv` returning `EAGAIN`, and lock-step
//! transfers were slower than tftpd-hpa's process per transfer (measured with
//! `integration/bench/tftp.sh`). A window goes out in one `sendmmsg`.
//!
//! Files are streamed: read [`CHUNK_BYTES`] at a time (whole blocks) into a buffer per
//! transfer that the datagrams point into, so memory per transfer is bounded whatever the file
//! size, and reading costs one `pread` per chunk rather than per block. The reads are
//! synchronous: boot files are small and in the page cache.

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::io::IoSlice;
use std::net::UdpSocket;
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{ControlMessage, MsgFlags, MultiHeaders, recv, sendmmsg};

use crate::files::read_full_at;
use crate::packet::{self, DEFAULT_BLKSIZE, ErrorCode, Options, Packet};

/// Shortest retransmission timer: below this, scheduling noise on a loaded host would look
/// like loss and double the traffic for nothing.
pub const MIN_RTO: Duration = Duration::from_millis(10);
/// Timer before the first RTT sample (RFC 6298 says 1 s; TFTP's first exchange is one packet,
/// and the client retransmits its request anyway).
pub const INITIAL_RTO: Duration = Duration::from_millis(200);

/// What the server grants, from its configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_blksize: u16,
    pub max_windowsize: u16,
    /// Retransmission ceiling when the client does not negotiate `timeout`.
    pub timeout: Duration,
    /// Give up after this long without an acknowledged block.
    pub idle_timeout: Duration,
}

/// The parameters of one transfer after negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    pub blksize: u16,
    pub windowsize: u16,
    /// Retransmission ceiling.
    pub timeout: Duration,
    /// The OACK to send first, if any option was granted.
    pub oack: Option<Options>,
}

/// Grants what the client asked for, within `limits` (RFC 2347: a server may lower `blksize`
/// and `windowsize`; `timeout` is echoed as asked or not at all; `tsize` is the file size).
pub fn negotiate(asked: &Options, size: u64, limits: &Limits) -> Negotiated {
    let granted = Options {
        blksize: asked.blksize.map(|b| b.min(limits.max_blksize)),
        timeout: asked.timeout,
        tsize: asked.tsize.map(|_| size),
        windowsize: asked.windowsize.map(|w| w.min(limits.max_windowsize)),
    };
    Negotiated {
        blksize: granted.blksize.unwrap_or(DEFAULT_BLKSIZE),
        windowsize: granted.windowsize.unwrap_or(1),
        timeout: granted
            .timeout
            .map_or(limits.timeout, |t| Duration::from_secs(u64::from(t))),
        oack: (!granted.is_empty()).then_some(granted),
    }
}

/// RFC 6298 retransmission timer.
#[derive(Debug, Clone)]
pub struct Rto {
    srtt: Option<Duration>,
    rttvar: Duration,
    current: Duration,
    max: Duration,
}

impl Rto {
    /// A timer that never exceeds `max` (the negotiated timeout).
    pub fn new(max: Duration) -> Self {
        Self {
            srtt: None,
            rttvar: Duration::ZERO,
            current: INITIAL_RTO.clamp(MIN_RTO, max.max(MIN_RTO)),
            max: max.max(MIN_RTO),
        }
    }

    /// The current timeout.
    pub fn get(&self) -> Duration {
        self.current
    }

    /// A round-trip time measured on a block sent once.
    pub fn sample(&mut self, rtt: Duration) {
        let (srtt, rttvar) = match self.srtt {
            None => (rtt, rtt / 2),
            Some(srtt) => {
                let delta = srtt.abs_diff(rtt);
                (srtt * 7 / 8 + rtt / 8, self.rttvar * 3 / 4 + delta / 4)
            }
        };
        self.srtt = Some(srtt);
        self.rttvar = rttvar;
        self.current = (srtt + rttvar * 4).clamp(MIN_RTO, self.max);
    }

    /// A timeout happened: double, up to the ceiling.
    pub fn backoff(&mut self) {
        self.current = (self.current * 2).min(self.max);
    }
}

/// What an ACK did to the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckEffect {
    /// Stale or duplicate: nothing happens (and in particular nothing is sent).
    Ignored,
    /// New units were acknowledged.
    Progress {
        /// RTT of the acknowledged unit, when it had been sent exactly once.
        rtt: Option<Duration>,
        /// The last block is acknowledged.
        done: bool,
    },
}

/// Send-window bookkeeping, in absolute unit numbers: unit 0 is the OACK (when there is one),
/// unit `i >= 1` is DATA block `i` (sent as `i mod 65536`). Pure: no I/O, time passed in.
#[derive(Debug)]
pub struct Window {
    first_unacked: u64,
    next: u64,
    /// One past the highest unit ever sent: units below it are retransmissions.
    high_water: u64,
    last: u64,
    size: u64,
    /// Send time of each unit in `first_unacked..next`, and whether it was a retransmission.
    sent: VecDeque<(Instant, bool)>,
}

impl Window {
    /// A window over `last` data blocks, starting at the OACK when `oack`.
    pub fn new(oack: bool, last: u64, size: u16) -> Self {
        let first = if oack { 0 } else { 1 };
        Self {
            first_unacked: first,
            next: first,
            high_water: first,
            last,
            size: u64::from(size.max(1)),
            sent: VecDeque::new(),
        }
    }

    /// The next unit the window allows to send, if any. The OACK goes alone: the client must
    /// acknowledge it before any data.
    pub fn next_unit(&self) -> Option<u64> {
        let limit = if self.first_unacked == 0 {
            1
        } else {
            self.first_unacked + self.size
        };
        (self.next < limit && self.next <= self.last).then_some(self.next)
    }

    /// How many units the window allows to send from [`Self::next_unit`] on.
    pub fn sendable(&self) -> u64 {
        let limit = if self.first_unacked == 0 {
            1
        } else {
            self.first_unacked + self.size
        };
        limit.min(self.last + 1).saturating_sub(self.next)
    }

    /// Records that [`Self::next_unit`] was sent at `now`.
    pub fn mark_sent(&mut self, now: Instant) {
        self.sent.push_back((now, self.next < self.high_water));
        self.next += 1;
        self.high_water = self.high_water.max(self.next);
    }

    /// Applies an ACK of wire block `block` received at `now`.
    pub fn on_ack(&mut self, block: u16, now: Instant) -> AckEffect {
        if self.next == self.first_unacked {
            return AckEffect::Ignored;
        }
        let top = self.next - 1;
        let behind = u64::from(wire_block(top).wrapping_sub(block));
        if behind > top - self.first_unacked {
            return AckEffect::Ignored;
        }
        let acked = top - behind;
        let index = usize::try_from(acked - self.first_unacked).unwrap_or(usize::MAX);
        let rtt = self
            .sent
            .get(index)
            .and_then(|&(at, retransmitted)| (!retransmitted).then(|| now - at));
        self.sent.drain(..(index + 1).min(self.sent.len()));
        self.first_unacked = acked + 1;
        if self.next > self.first_unacked {
            // The client acknowledged part of the window: it missed the block after `acked`.
            self.next = self.first_unacked;
            self.sent.clear();
        }
        AckEffect::Progress {
            rtt,
            done: acked == self.last,
        }
    }

    /// The timer expired: go back to the first unacknowledged unit.
    pub fn on_timeout(&mut self) {
        self.next = self.first_unacked;
        self.sent.clear();
    }

    /// Data blocks acknowledged so far.
    pub fn blocks_acked(&self) -> u64 {
        self.first_unacked.saturating_sub(1)
    }
}

/// The block number unit `unit` carries on the wire (wrapping to 0 after 65535).
pub fn wire_block(unit: u64) -> u16 {
    (unit & 0xffff) as u16
}

/// How a transfer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Bytes the client acknowledged.
    pub bytes: u64,
    /// The last block was acknowledged.
    pub complete: bool,
    /// Why it stopped early.
    pub error: Option<String>,
    /// The ERROR packet the client is owed when the server gave up, sent by the caller once
    /// the transfer's slot is free (so a client that retries at once is not told "busy").
    pub farewell: Option<Vec<u8>>,
}

/// Read-ahead over the file, whole blocks at a time: one `pread` per [`CHUNK_BYTES`] instead of
/// one per block, and the datagrams point into it (no copy into a packet buffer).
struct Blocks<'f> {
    file: &'f File,
    size: u64,
    blksize: u64,
    last: u64,
    /// Bytes of the file starting at block `first`'s offset.
    buf: Vec<u8>,
    len: usize,
    first: u64,
    /// Units `first..first + covered` are in `buf`.
    covered: u64,
}

/// Read-ahead per transfer: bounded (a few MiB for hundreds of transfers), large enough that
/// reading is no longer a syscall per block.
pub const CHUNK_BYTES: u64 = 64 * 1024;

/// Most datagrams handed to one `sendmmsg`.
const MAX_BATCH: usize = 64;

/// Why a block could not be read.
enum ReadFailure {
    Shrank,
    Io(io::Error),
}

impl<'f> Blocks<'f> {
    fn new(file: &'f File, size: u64, blksize: u16) -> Self {
        let blksize = u64::from(blksize);
        let capacity = (CHUNK_BYTES / blksize).max(1) * blksize;
        Self {
            file,
            size,
            blksize,
            last: size / blksize + 1,
            buf: vec![0; usize::try_from(capacity.min(size)).unwrap_or(0)],
            len: 0,
            first: 1,
            covered: 0,
        }
    }

    /// Up to `max` consecutive blocks from `unit` on: `(their bytes, how many)`. Every block but
    /// the file's last is `blksize` long; the last may be empty.
    fn batch(&mut self, unit: u64, max: u64) -> Result<(&[u8], u64), ReadFailure> {
        if !(self.first..self.first + self.covered).contains(&unit) {
            self.fill(unit)?;
        }
        let count = max.min(self.first + self.covered - unit);
        let from = usize::try_from((unit - self.first) * self.blksize).unwrap_or(usize::MAX);
        let to = usize::try_from((unit - self.first + count) * self.blksize).unwrap_or(usize::MAX);
        let bytes = self
            .buf
            .get(from.min(self.len)..to.min(self.len))
            .unwrap_or_default();
        Ok((bytes, count))
    }

    fn fill(&mut self, unit: u64) -> Result<(), ReadFailure> {
        let offset = (unit - 1) * self.blksize;
        let want = usize::try_from(self.size.saturating_sub(offset))
            .unwrap_or(usize::MAX)
            .min(self.buf.len());
        let Some(buf) = self.buf.get_mut(..want) else {
            return Err(ReadFailure::Shrank);
        };
        match read_full_at(self.file, buf, offset) {
            Ok(n) if n == want => {}
            Ok(_) => return Err(ReadFailure::Shrank),
            Err(e) => return Err(ReadFailure::Io(e)),
        }
        self.first = unit;
        self.len = want;
        self.covered = if offset + want as u64 == self.size {
            // Up to the end of the file, including a last block that may be empty.
            self.last - unit + 1
        } else {
            want as u64 / self.blksize
        };
        Ok(())
    }
}

/// Sends the DATA packets for `count` consecutive units from `unit`, whose bytes are `data`, in
/// one `sendmmsg`. Returns how many the kernel took.
fn send_data(
    socket: &UdpSocket,
    headers: &mut MultiHeaders<()>,
    unit: u64,
    data: &[u8],
    blksize: usize,
    count: usize,
) -> io::Result<usize> {
    let count = count.min(MAX_BATCH);
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
            socket.as_raw_fd(),
            headers,
            slices.get(..count).unwrap_or_default(),
            NO_ADDRESS,
            [] as [ControlMessage<'_>; 0],
            MsgFlags::empty(),
        );
        match sent {
            Ok(results) => return Ok(results.count()),
            Err(Errno::EINTR) => continue,
            Err(errno) => return Err(errno.into()),
        }
    }
}

/// What waiting for the client gave.
enum Heard {
    /// A datagram of this length.
    Datagram(usize),
    /// The timer expired.
    Timeout,
    /// Nothing yet (a signal, a spurious wake-up): wait again.
    Nothing,
}

/// Waits up to `wait` for a datagram. With `poll` (millisecond timeout, high-resolution timer)
/// rather than `SO_RCVTIMEO`, which counts in scheduler ticks: that stretched the 10 ms floor of
/// the retransmission timer to 12–16 ms and made the lossy-link benchmark slower.
fn wait_for_datagram(socket: &UdpSocket, buf: &mut [u8], wait: Duration) -> io::Result<Heard> {
    if wait.is_zero() {
        return Ok(Heard::Timeout);
    }
    let ms = wait.as_micros().div_ceil(1000);
    let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
    let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, timeout) {
        Ok(0) => return Ok(Heard::Timeout),
        Ok(_) => {}
        Err(Errno::EINTR) => return Ok(Heard::Nothing),
        Err(errno) => return Err(errno.into()),
    }
    match recv(socket.as_raw_fd(), buf, MsgFlags::MSG_DONTWAIT) {
        Ok(n) => Ok(Heard::Datagram(n)),
        Err(Errno::EAGAIN | Errno::EINTR) => Ok(Heard::Nothing),
        Err(errno) => Err(errno.into()),
    }
}

/// Sends `file` (`size` bytes) to the client the blocking `socket` is connected to. Runs on a
/// thread of its own (see the module docs): it blocks in `recv` until an ACK or the timer.
pub fn send_file(
    socket: &UdpSocket,
    file: &File,
    size: u64,
    negotiated: &Negotiated,
    idle_timeout: Duration,
) -> Outcome {
    let blksize = u64::from(negotiated.blksize);
    let last = size / blksize + 1;
    let mut window = Window::new(negotiated.oack.is_some(), last, negotiated.windowsize);
    let mut rto = Rto::new(negotiated.timeout);
    let mut blocks = Blocks::new(file, size, negotiated.blksize);
    let mut headers = MultiHeaders::<()>::preallocate(MAX_BATCH, None);
    let oack = negotiated.oack.map(|o| Packet::Oack(o).to_bytes());
    let mut incoming = [0u8; 516];
    let mut last_progress = Instant::now();
    let bytes_acked = |w: &Window| (w.blocks_acked() * blksize).min(size);
    let fail = |w: &Window, why: String| Outcome {
        bytes: bytes_acked(w),
        complete: false,
        error: Some(why),
        farewell: None,
    };
    let give_up = |w: &Window, code: ErrorCode, message: &str, why: String| Outcome {
        farewell: Some(packet::error_packet(code, message)),
        ..fail(w, why)
    };

    loop {
        // Send everything the window allows, as few syscalls as the read-ahead permits.
        while let Some(unit) = window.next_unit() {
            let sent = if unit == 0 {
                socket.send(oack.as_deref().unwrap_or_default()).map(|_| 1)
            } else {
                let (data, count) = match blocks.batch(unit, window.sendable()) {
                    Ok(batch) => batch,
                    Err(ReadFailure::Shrank) => {
                        return give_up(
                            &window,
                            ErrorCode::NotDefined,
                            "file changed",
                            "the file shrank during the transfer".into(),
                        );
                    }
                    Err(ReadFailure::Io(e)) => {
                        return give_up(
                            &window,
                            ErrorCode::NotDefined,
                            "read error",
                            format!("reading the file: {e}"),
                        );
                    }
                };
                let count = usize::try_from(count).unwrap_or(MAX_BATCH);
                send_data(socket, &mut headers, unit, data, blksize as usize, count)
            };
            match sent {
                Ok(n) => {
                    let now = Instant::now();
                    for _ in 0..n {
                        window.mark_sent(now);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return fail(&window, client_gone(&e)),
            }
        }
        let deadline = Instant::now() + rto.get();

        // Wait for something new, or the timer.
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            let n = match wait_for_datagram(socket, &mut incoming, wait) {
                Ok(Heard::Datagram(n)) => n,
                Ok(Heard::Nothing) => continue,
                Ok(Heard::Timeout) => {
                    if last_progress.elapsed() >= idle_timeout {
                        return give_up(
                            &window,
                            ErrorCode::NotDefined,
                            "timeout",
                            format!("no acknowledgement for {idle_timeout:?}"),
                        );
                    }
                    rto.backoff();
                    window.on_timeout();
                    break;
                }
                Err(e) => return fail(&window, client_gone(&e)),
            };
            match packet::parse(incoming.get(..n).unwrap_or_default()) {
                Ok(Packet::Ack { block }) => match window.on_ack(block, Instant::now()) {
                    AckEffect::Ignored => continue,
                    AckEffect::Progress { rtt, done } => {
                        if let Some(rtt) = rtt {
                            rto.sample(rtt);
                        }
                        if done {
                            return Outcome {
                                bytes: size,
                                complete: true,
                                error: None,
                                farewell: None,
                            };
                        }
                        last_progress = Instant::now();
                        break;
                    }
                },
                Ok(Packet::Error { code, message }) => {
                    return fail(
                        &window,
                        format!(
                            "client sent error {}: {}",
                            u16::from(code),
                            String::from_utf8_lossy(message)
                        ),
                    );
                }
                Ok(other) => {
                    return give_up(
                        &window,
                        ErrorCode::IllegalOperation,
                        "expected ACK",
                        format!("unexpected packet from client: {other:?}"),
                    );
                }
                // Garbage from the client's address: ignore it, as a lost packet.
                Err(_) => continue,
            }
        }
    }
}

fn client_gone(e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::ConnectionRefused {
        "the client went away (ICMP port unreachable)".into()
    } else {
        format!("socket error: {e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const LIMITS: Limits = Limits {
        max_blksize: 1468,
        max_windowsize: 64,
        timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(10),
    };

    #[test]
    fn negotiation_grants_within_limits() {
        let asked = Options {
            blksize: Some(65464),
            timeout: Some(3),
            tsize: Some(0),
            windowsize: Some(1000),
        };
        let n = negotiate(&asked, 1234, &LIMITS);
        assert_eq!(n.blksize, 1468);
        assert_eq!(n.windowsize, 64);
        assert_eq!(n.timeout, Duration::from_secs(3));
        assert_eq!(
            n.oack,
            Some(Options {
                blksize: Some(1468),
                timeout: Some(3),
                tsize: Some(1234),
                windowsize: Some(64)
            })
        );
        let plain = negotiate(&Options::default(), 1, &LIMITS);
        assert_eq!(
            (plain.blksize, plain.windowsize, plain.oack),
            (512, 1, None)
        );
        assert_eq!(plain.timeout, LIMITS.timeout);
    }

    #[test]
    fn rto_follows_rtt_within_bounds_and_backs_off_to_the_ceiling() {
        let mut rto = Rto::new(Duration::from_secs(1));
        assert_eq!(rto.get(), INITIAL_RTO);
        for _ in 0..20 {
            rto.sample(Duration::from_micros(100));
        }
        assert_eq!(rto.get(), MIN_RTO);
        rto.sample(Duration::from_millis(100));
        assert!(rto.get() > Duration::from_millis(100), "{:?}", rto.get());
        for _ in 0..10 {
            rto.backoff();
        }
        assert_eq!(rto.get(), Duration::from_secs(1));
        for _ in 0..50 {
            rto.sample(Duration::from_millis(30));
        }
        assert!(rto.get() < Duration::from_millis(60), "{:?}", rto.get());
    }

    #[test]
    fn duplicate_acks_never_send_and_timeouts_go_back_to_the_first_unacked_block() {
        let t = Instant::now();
        let mut w = Window::new(false, 10, 4);
        let mut sent = vec![];
        while let Some(u) = w.next_unit() {
            sent.push(u);
            w.mark_sent(t);
        }
        assert_eq!(sent, [1, 2, 3, 4]);
        // Partial ACK: the client missed block 3.
        assert_eq!(
            w.on_ack(2, t + Duration::from_millis(1)),
            AckEffect::Progress {
                rtt: Some(Duration::from_millis(1)),
                done: false
            }
        );
        assert_eq!(w.next_unit(), Some(3));
        w.mark_sent(t);
        // Duplicates and stale ACKs change nothing.
        for stale in [2, 1, 0, 9, 100] {
            assert_eq!(w.on_ack(stale, t), AckEffect::Ignored, "{stale}");
        }
        // Block 3 was resent: no RTT sample from it (Karn). Blocks 4..=6 were in flight, so
        // this ACK says the client missed block 4: the window restarts there (RFC 7440).
        while w.next_unit().is_some() {
            w.mark_sent(t);
        }
        assert_eq!(
            w.on_ack(3, t),
            AckEffect::Progress {
                rtt: None,
                done: false
            }
        );
        assert_eq!(w.on_ack(3, t), AckEffect::Ignored);
        assert_eq!(w.next_unit(), Some(4));
        while w.next_unit().is_some() {
            w.mark_sent(t);
        }
        // An ACK beyond what was sent is ignored.
        assert_eq!(w.on_ack(10, t), AckEffect::Ignored);
        w.on_timeout();
        assert_eq!(w.next_unit(), Some(4));
        while w.next_unit().is_some() {
            w.mark_sent(t);
        }
        assert_eq!(
            w.on_ack(7, t),
            AckEffect::Progress {
                rtt: None,
                done: false
            }
        );
        let mut rest = vec![];
        while let Some(u) = w.next_unit() {
            rest.push(u);
            w.mark_sent(t);
        }
        assert_eq!(rest, [8, 9, 10]);
        assert_eq!(
            w.on_ack(10, t + Duration::from_millis(3)),
            AckEffect::Progress {
                rtt: Some(Duration::from_millis(3)),
                done: true
            }
        );
    }

    #[test]
    fn the_oack_is_acknowledged_alone_before_data_and_block_numbers_wrap() {
        let t = Instant::now();
        let mut w = Window::new(true, 70_000, 8);
        assert_eq!(w.next_unit(), Some(0));
        w.mark_sent(t);
        assert_eq!(w.next_unit(), None);
        assert!(matches!(w.on_ack(0, t), AckEffect::Progress { .. }));
        assert_eq!(w.next_unit(), Some(1));
        // Walk to the 16-bit wrap.
        loop {
            let u = w.next_unit().unwrap();
            w.mark_sent(t);
            if u == 65_536 {
                break;
            }
            if w.next_unit().is_none() {
                assert!(matches!(
                    w.on_ack(wire_block(u), t),
                    AckEffect::Progress { .. }
                ));
            }
        }
        assert_eq!(wire_block(65_536), 0);
        assert!(matches!(w.on_ack(0, t), AckEffect::Progress { .. }));
        assert_eq!(w.blocks_acked(), 65_536);
    }

    /// A connected pair of blocking loopback sockets: (server side, client side).
    fn pair() -> (UdpSocket, UdpSocket) {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.connect(b.local_addr().unwrap()).unwrap();
        b.connect(a.local_addr().unwrap()).unwrap();
        b.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        (a, b)
    }

    fn file_of(len: usize) -> (tempfile::NamedTempFile, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&data).unwrap();
        (f, data)
    }

    // The transfer blocks in `recv` on a real socket (see the module docs), so these run in
    // real time rather than under `tokio::time::pause()`: timings are checked with a margin
    // for a loaded machine, and the give-up delay is kept short.
    #[test]
    fn retransmits_with_exponential_backoff_then_gives_up() {
        let (server, client) = pair();
        let (f, _) = file_of(100);
        let n = negotiate(&Options::default(), 100, &LIMITS);
        let task = std::thread::spawn(move || {
            let outcome = send_file(&server, f.as_file(), 100, &n, Duration::from_secs(2));
            server.send(outcome.farewell.as_deref().unwrap()).unwrap();
            outcome
        });
        let start = Instant::now();
        let mut times = vec![];
        let mut buf = [0u8; 600];
        loop {
            let len = client.recv(&mut buf).unwrap();
            match packet::parse(&buf[..len]).unwrap() {
                Packet::Data { block: 1, data } => {
                    assert_eq!(data.len(), 100);
                    times.push(start.elapsed());
                }
                Packet::Error { .. } => break,
                other => panic!("{other:?}"),
            }
        }
        let outcome = task.join().unwrap();
        assert!(!outcome.complete);
        assert_eq!(outcome.bytes, 0);
        // 200 ms initial timer, doubled per timeout up to the 1 s ceiling, until 2 s passed
        // without progress.
        // Gaps rather than absolute times, so that one late wake-up is not counted thrice.
        assert_eq!(times.len(), 4, "{times:?}");
        for (pair, want) in times.windows(2).zip([200, 400, 800]) {
            let (gap, want) = (pair[1] - pair[0], Duration::from_millis(want));
            assert!(
                gap >= want && gap < want + Duration::from_millis(150),
                "{times:?}"
            );
        }
    }

    #[test]
    fn a_duplicate_ack_is_not_answered_and_the_file_arrives_whole() {
        let (server, client) = pair();
        let (f, data) = file_of(2000);
        let asked = Options {
            blksize: Some(512),
            tsize: Some(0),
            ..Options::default()
        };
        let n = negotiate(&asked, 2000, &LIMITS);
        let task = std::thread::spawn(move || {
            send_file(&server, f.as_file(), 2000, &n, Duration::from_secs(5))
        });
        let mut buf = [0u8; 600];
        let len = client.recv(&mut buf).unwrap();
        assert_eq!(
            packet::parse(&buf[..len]).unwrap(),
            Packet::Oack(Options {
                blksize: Some(512),
                timeout: None,
                tsize: Some(2000),
                windowsize: None
            })
        );
        let mut got = vec![];
        let ack = |b: u16| Packet::Ack { block: b }.to_bytes();
        client.send(&ack(0)).unwrap();
        for expected in 1..=4u16 {
            let len = client.recv(&mut buf).unwrap();
            let Packet::Data { block, data } = packet::parse(&buf[..len]).unwrap() else {
                panic!("not DATA");
            };
            assert_eq!(block, expected);
            got.extend_from_slice(data);
            // Acknowledge twice: the second must not make the server send anything.
            client.send(&ack(block)).unwrap();
            client.send(&ack(block)).unwrap();
        }
        let outcome = task.join().unwrap();
        assert_eq!(outcome.error, None);
        assert!(outcome.complete);
        assert_eq!(got, data);
        // Nothing else was sent: no duplicate DATA answered the duplicate ACKs.
        client.set_nonblocking(true).unwrap();
        assert!(client.recv(&mut buf).is_err());
    }

    /// Windows cross read-ahead chunks and a timeout resends a whole window: every block still
    /// carries the right bytes.
    #[test]
    fn windowed_sends_across_chunks_and_rewinds_carry_the_right_bytes() {
        let (server, client) = pair();
        // Not a multiple of the block size, and several chunks long.
        let len = 3 * CHUNK_BYTES as usize + 700;
        let (f, data) = file_of(len);
        let asked = Options {
            blksize: Some(1000),
            windowsize: Some(16),
            ..Options::default()
        };
        let n = negotiate(&asked, len as u64, &LIMITS);
        let task = std::thread::spawn(move || {
            send_file(&server, f.as_file(), len as u64, &n, Duration::from_secs(5))
        });
        let mut buf = [0u8; 1100];
        let ack = |b: u16| Packet::Ack { block: b }.to_bytes();
        let len_oack = client.recv(&mut buf).unwrap();
        assert!(matches!(
            packet::parse(&buf[..len_oack]).unwrap(),
            Packet::Oack(_)
        ));
        client.send(&ack(0)).unwrap();
        let mut got = vec![];
        let mut rewound = false;
        loop {
            // Take a whole window, keep what follows `got`, then acknowledge the last in order.
            let mut highest = None;
            for _ in 0..16 {
                let n = client.recv(&mut buf).unwrap();
                let Packet::Data { block, data: d } = packet::parse(&buf[..n]).unwrap() else {
                    panic!("not DATA");
                };
                let at = (usize::from(block) - 1) * 1000;
                assert_eq!(d, &data[at..at + d.len()], "block {block}");
                if at == got.len() {
                    got.extend_from_slice(d);
                    highest = Some(block);
                }
                if d.len() < 1000 {
                    break;
                }
            }
            let block = highest.unwrap();
            if got.len() == len {
                client.send(&ack(block)).unwrap();
                break;
            }
            if !rewound && got.len() > 2 * CHUNK_BYTES as usize {
                // Claim a block from an earlier chunk was the last one seen: a stale ACK,
                // ignored, then the timer resends from the first unacknowledged block.
                rewound = true;
                client.send(&ack(block - 40)).unwrap();
                // Drop what we kept of this window: it must come again after the timeout.
                got.truncate((usize::from(block) - 16) * 1000);
                continue;
            }
            client.send(&ack(block)).unwrap();
        }
        let outcome = task.join().unwrap();
        assert!(outcome.complete, "{outcome:?}");
        assert_eq!(got, data);
    }
}
