//! One read transfer as a state machine: option negotiation, the send window, the
//! retransmission timer, and when to give up.
//!
//! Why it exists apart from the sockets (the engine, `worker`, drives it): every decision a
//! transfer makes — what to send, when to send it again, when to stop — is then a function of
//! the datagrams it heard and the times it was told, and is tested in virtual time, by the
//! thousand, with a simulated lossy client (see the tests). It must never do I/O, read the
//! clock or sleep: the caller passes `now` in, sends what [`Transfer::to_send`] names, and calls
//! [`Transfer::on_timer`] once [`Transfer::deadline`] has passed.
//!
//! What it must never do (the Sorcerer's Apprentice bug, RFC 1123 4.2.3.1): answer a duplicate
//! ACK with a send. Only an ACK that acknowledges something new moves the window; only the
//! timer (or the client repeating its request, below) retransmits, and a timeout resends from
//! the first unacknowledged block (RFC 7440). An ACK inside the window (the client saw a gap)
//! moves the window to just after it and resends from there.
//!
//! **Fast on lossy links.** The retransmission timer is adaptive (RFC 6298: smoothed RTT plus
//! four deviations, Karn's rule — no sample from a retransmitted block), between [`MIN_RTO`] and
//! the negotiated `timeout` (the ceiling, as RFC 2349 asks). On a LAN with a sub-millisecond
//! RTT a lost block is resent after ~10 ms instead of the client's whole timeout; each
//! consecutive timeout doubles the timer up to that ceiling.
//!
//! **No resends on a slow but loss-free host.** A loaded host can delay an ACK past a 10 ms
//! timer without losing anything. Most clients (PXE ROMs, iPXE, curl, tftp-hpa) acknowledge a
//! duplicate block again, so a timeout that was not needed shows as a *second* ACK of the block
//! that the first ACK after the retransmission already covered. On that evidence the timeout
//! is undone (Eifel, RFC 3522/4015): the timer goes back to its value before the timeout and
//! the delayed ACK's true round trip is sampled, and the caller is told the delay so it can
//! raise a host-wide [`DelayFloor`] under every transfer's timer for a few seconds — the delay
//! came from the host, so the other transfers will see it too. Real loss produces no such
//! second ACK, so recovery from loss keeps the 10 ms floor.
//!
//! **Reflection.** Until the client has acknowledged something, its address is unproven: a
//! request with a forged source would make us send blocks at a victim. So the first unit (OACK
//! or DATA 1) is sent at most [`Plan::first_sends`] times by the timer, again when the client
//! repeats its request (at most once per [`REQUEST_RESEND_GAP`]), and nothing at all after
//! [`Plan::first_ack_timeout`]: the transfer then ends without an ERROR (one more datagram at an
//! address that never answered).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::packet::{self, DEFAULT_BLKSIZE, ErrorCode, Options, Packet};

/// Shortest retransmission timer on evidence of a fast link. Below this, scheduling noise would
/// look like loss; above it, recovery from real loss slows (the 10 %-loss benchmark).
pub const MIN_RTO: Duration = Duration::from_millis(10);
/// Timer before the first RTT sample (RFC 6298 says 1 s; TFTP's first exchange is one packet,
/// and the client retransmits its request anyway).
pub const INITIAL_RTO: Duration = Duration::from_millis(200);
/// Sends of the first unit by the timer before the client has answered anything.
pub const FIRST_SENDS: u8 = 3;
/// The same for an address whose earlier transfers were never acknowledged.
pub const FIRST_SENDS_SILENT: u8 = 1;
/// A client repeating its request gets the first unit again at once, then at most this often.
pub const REQUEST_RESEND_GAP: Duration = Duration::from_secs(1);
/// How long a [`DelayFloor`] takes to halve once no new evidence comes.
pub const FLOOR_HALF_LIFE: Duration = Duration::from_secs(2);
/// Highest [`DelayFloor`]: a host that slow is better served by the clients' own timeouts.
pub const MAX_FLOOR: Duration = Duration::from_secs(1);
/// A duplicate ACK this many units after the one it duplicates is no longer evidence.
const SUSPECT_SPAN: u64 = 1024;

/// What the server grants, from its configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_blksize: u16,
    pub max_windowsize: u16,
    /// Retransmission ceiling when the client does not negotiate `timeout`.
    pub timeout: Duration,
    /// Give up after this long without an acknowledged block.
    pub idle_timeout: Duration,
    /// Give up this long after the start when the client never acknowledged anything.
    pub first_ack_timeout: Duration,
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
#[derive(Debug, Clone, PartialEq, Eq)]
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

    /// The ceiling.
    pub fn max(&self) -> Duration {
        self.max
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

/// A floor under every transfer's timer, raised when a transfer proves its timeout was spurious
/// (the host, not the link, delayed an ACK) and halving every [`FLOOR_HALF_LIFE`] after that.
/// One per server: the delay that fooled one transfer is the host's, and would fool the others.
#[derive(Debug, Clone, Default)]
pub struct DelayFloor {
    value: Duration,
    at: Option<Instant>,
}

impl DelayFloor {
    /// The floor at `now`: [`MIN_RTO`] without recent evidence.
    pub fn get(&self, now: Instant) -> Duration {
        let Some(at) = self.at else {
            return MIN_RTO;
        };
        let halvings =
            now.saturating_duration_since(at).as_secs_f64() / FLOOR_HALF_LIFE.as_secs_f64();
        self.value.mul_f64(0.5f64.powf(halvings)).max(MIN_RTO)
    }

    /// A round trip measured by any transfer: under a loaded host, every transfer's ACKs are
    /// slow at once, and one that has not yet seen it itself must not fire first.
    pub fn observe(&mut self, rtt: Duration, now: Instant) {
        if rtt.saturating_mul(3) / 2 > self.get(now) {
            self.raise(rtt, now);
        }
    }

    /// A transfer saw an ACK delayed by `delay` past its timer: keep the next ones above it
    /// (with half again as margin).
    pub fn raise(&mut self, delay: Duration, now: Instant) {
        let wanted = delay.saturating_mul(3) / 2;
        self.value = self.get(now).max(wanted).min(MAX_FLOOR);
        self.at = Some(now);
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
/// unit `i >= 1` is DATA block `i` (sent as `i mod 65536`).
#[derive(Debug, Clone)]
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
        (self.sendable() > 0).then_some(self.next)
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

    /// Records that [`Self::next_unit`] was sent at `now`; true if it had been sent before.
    pub fn mark_sent(&mut self, now: Instant) -> bool {
        let again = self.next < self.high_water;
        self.sent.push_back((now, again));
        self.next += 1;
        self.high_water = self.high_water.max(self.next);
        again
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
        let rtt = self.sent.get(index).and_then(|&(at, retransmitted)| {
            (!retransmitted).then(|| now.saturating_duration_since(at))
        });
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

    /// The oldest unit not yet acknowledged.
    pub fn first_unacked(&self) -> u64 {
        self.first_unacked
    }

    /// When the oldest unit in flight was sent, and whether that was a retransmission.
    pub fn oldest_in_flight(&self) -> Option<(Instant, bool)> {
        self.sent.front().copied()
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

/// What a transfer needs to know, fixed at its start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// The last DATA block (absolute): `size / blksize + 1`, so a file that is a whole number
    /// of blocks ends with an empty one.
    pub last: u64,
    /// An OACK (unit 0) goes first.
    pub oack: bool,
    pub windowsize: u16,
    /// Retransmission ceiling.
    pub timeout: Duration,
    /// Give up after this long without progress, once the client has answered.
    pub idle_timeout: Duration,
    /// Give up this long after the start if the client never answered.
    pub first_ack_timeout: Duration,
    /// Timer sends of the first unit before the client answered ([`FIRST_SENDS`] or
    /// [`FIRST_SENDS_SILENT`]).
    pub first_sends: u8,
}

impl Plan {
    /// The plan for sending `size` bytes as `negotiated`.
    pub fn new(negotiated: &Negotiated, size: u64, limits: &Limits, first_sends: u8) -> Self {
        Self {
            last: size / u64::from(negotiated.blksize.max(1)) + 1,
            oack: negotiated.oack.is_some(),
            windowsize: negotiated.windowsize,
            timeout: negotiated.timeout,
            idle_timeout: limits.idle_timeout,
            first_ack_timeout: limits.first_ack_timeout,
            first_sends: first_sends.max(1),
        }
    }
}

/// Where a transfer stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Running,
    /// The last block was acknowledged.
    Complete,
    Failed(Failure),
}

/// Why a transfer stopped early, and what the client is owed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: Reason,
    /// The ERROR to send the client: only to a client that has answered, and sent by the
    /// caller once the transfer's slot is free (so a client that retries at once gets a slot).
    pub farewell: Option<(ErrorCode, &'static str)>,
}

/// Why a transfer stopped early.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    #[error("never acknowledged within {0:?}")]
    NeverAcknowledged(Duration),
    #[error("no acknowledgement for {0:?}")]
    Idle(Duration),
    #[error("client sent error {code}: {message}")]
    ClientError { code: u16, message: String },
    #[error("unexpected {0} from the client")]
    Unexpected(&'static str),
}

/// What a datagram from the client did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// Nothing changed: garbage, a stale or duplicate ACK. Nothing may be sent because of it.
    Nothing,
    /// New units were acknowledged; more may be sendable. `rtt`: the round trip measured, if
    /// the unit had been sent once (feed it to the [`DelayFloor`]).
    Progress { rtt: Option<Duration> },
    /// A duplicate ACK proved the last timeout spurious: the ACK had been delayed this long
    /// (raise the [`DelayFloor`]). Nothing may be sent because of it.
    Spurious { delay: Duration },
    /// The transfer is over (see [`Transfer::status`]).
    Ended,
}

/// Counters for logs, events and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams sent (OACK and DATA).
    pub sent: u64,
    /// Of which retransmissions.
    pub resent: u64,
    /// Timer expiries that retransmitted.
    pub timeouts: u64,
    /// Timeouts later proven spurious.
    pub spurious: u64,
}

/// The last timeout: when the unit it resent had first left, and the timer before it.
#[derive(Debug, Clone)]
struct Rewound {
    original_at: Instant,
    rto_before: Rto,
}

/// The first ACK after a timeout: a duplicate of it would prove the timeout spurious.
#[derive(Debug, Clone)]
struct Suspect {
    acked: u64,
    first_ack_at: Instant,
    original_at: Instant,
    rto_before: Rto,
}

/// One read transfer (see the module docs).
#[derive(Debug, Clone)]
pub struct Transfer {
    plan: Plan,
    window: Window,
    rto: Rto,
    started: Instant,
    last_progress: Instant,
    /// When the timer was last armed (a send, or a timeout) and for how long.
    armed: Option<(Instant, Duration)>,
    /// The host floor at the last send.
    floor: Duration,
    /// The client acknowledged something: its address is real.
    confirmed: bool,
    first_sends: u32,
    /// When a repeated request last made us resend.
    request_resent: Option<Instant>,
    rewound: Option<Rewound>,
    suspect: Option<Suspect>,
    status: Status,
    stats: Stats,
}

impl Transfer {
    /// A transfer that starts at `now` and has sent nothing yet.
    pub fn new(plan: Plan, now: Instant) -> Self {
        Self {
            window: Window::new(plan.oack, plan.last, plan.windowsize),
            rto: Rto::new(plan.timeout),
            plan,
            started: now,
            last_progress: now,
            armed: None,
            floor: MIN_RTO,
            confirmed: false,
            first_sends: 0,
            request_resent: None,
            rewound: None,
            suspect: None,
            status: Status::Running,
            stats: Stats::default(),
        }
    }

    /// What to send now: `(first unit, how many)`, consecutive. Unit 0 is the OACK and always
    /// goes alone. `None` while the window is full or the transfer is over.
    pub fn to_send(&self) -> Option<(u64, u64)> {
        if self.status != Status::Running {
            return None;
        }
        self.window
            .next_unit()
            .map(|unit| (unit, self.window.sendable()))
    }

    /// `n` units from [`Self::to_send`] left at `now`; `floor` is the host's [`DelayFloor`].
    pub fn sent(&mut self, n: u64, now: Instant, floor: Duration) {
        for _ in 0..n {
            if self.window.next_unit().is_none() {
                break;
            }
            let again = self.window.mark_sent(now);
            self.stats.sent += 1;
            self.stats.resent += u64::from(again);
            if !self.confirmed {
                self.first_sends += 1;
            }
        }
        self.floor = floor;
        self.armed = Some((now, self.timer()));
    }

    /// The timer to arm now: the estimate, never below the host floor, never above the ceiling.
    fn timer(&self) -> Duration {
        self.rto.get().max(self.floor).min(self.rto.max())
    }

    /// When [`Self::on_timer`] must be called next; `None` once the transfer is over.
    pub fn deadline(&self) -> Option<Instant> {
        if self.status != Status::Running {
            return None;
        }
        let retransmit = match self.armed {
            Some((at, timer)) => at + timer,
            None => self.started + self.timer(),
        };
        if self.confirmed {
            return Some(retransmit);
        }
        let give_up = self.started + self.plan.first_ack_timeout;
        if self.first_sends >= u32::from(self.plan.first_sends) {
            Some(give_up)
        } else {
            Some(retransmit.min(give_up))
        }
    }

    /// The timer: gives up, or goes back to the first unacknowledged unit (see
    /// [`Self::to_send`]). Does nothing before [`Self::deadline`].
    pub fn on_timer(&mut self, now: Instant) {
        let Some(deadline) = self.deadline() else {
            return;
        };
        if now < deadline {
            return;
        }
        if !self.confirmed {
            if now >= self.started + self.plan.first_ack_timeout {
                self.fail(Reason::NeverAcknowledged(self.plan.first_ack_timeout), None);
                return;
            }
        } else if now.saturating_duration_since(self.last_progress) >= self.plan.idle_timeout {
            self.fail(
                Reason::Idle(self.plan.idle_timeout),
                Some((ErrorCode::NotDefined, "timeout")),
            );
            return;
        }
        self.stats.timeouts += 1;
        // Remember what an undo would need, once per run of timeouts (a second timeout of the
        // same unit finds it flagged as a retransmission).
        if let Some((at, false)) = self.window.oldest_in_flight() {
            self.rewound = Some(Rewound {
                original_at: at,
                rto_before: self.rto.clone(),
            });
        }
        self.suspect = None;
        self.rto.backoff();
        self.window.on_timeout();
        self.armed = Some((now, self.timer()));
    }

    /// The client repeated its request while this transfer waits for its first ACK: send the
    /// first unit again — unless we sent it less than a timer's length ago (the repeat crossed
    /// it), and at most once per [`REQUEST_RESEND_GAP`] (a forged source repeating a request
    /// quickly must not turn it into a stream). True if there is now something to send.
    pub fn on_request_again(&mut self, now: Instant) -> bool {
        if self.confirmed || self.status != Status::Running {
            return false;
        }
        // A repeat that arrives within a timer's length of our last send probably crossed it
        // (the client asked again while waiting in the queue, or just before our answer came).
        let crossed = self
            .armed
            .is_some_and(|(at, _)| now.saturating_duration_since(at) < self.timer());
        let too_soon = self
            .request_resent
            .is_some_and(|at| now.saturating_duration_since(at) < REQUEST_RESEND_GAP);
        if crossed || too_soon {
            return false;
        }
        self.request_resent = Some(now);
        self.window.on_timeout();
        self.to_send().is_some()
    }

    /// A datagram from the client arrived at `now`.
    pub fn on_datagram(&mut self, datagram: &[u8], now: Instant) -> Heard {
        if self.status != Status::Running {
            return Heard::Nothing;
        }
        match packet::parse(datagram) {
            Ok(Packet::Ack { block }) => self.on_ack(block, now),
            Ok(Packet::Error { code, message }) => {
                let message = String::from_utf8_lossy(message.get(..128).unwrap_or(message));
                self.fail(
                    Reason::ClientError {
                        code: u16::from(code),
                        message: message.into_owned(),
                    },
                    None,
                );
                Heard::Ended
            }
            Ok(other) => {
                let kind = match other {
                    Packet::Rrq(_) => "RRQ",
                    Packet::Wrq(_) => "WRQ",
                    Packet::Data { .. } => "DATA",
                    Packet::Oack(_) => "OACK",
                    Packet::Ack { .. } | Packet::Error { .. } => "packet",
                };
                self.fail(
                    Reason::Unexpected(kind),
                    Some((ErrorCode::IllegalOperation, "expected ACK")),
                );
                Heard::Ended
            }
            // Garbage from the client's address: ignored, as a lost packet.
            Err(_) => Heard::Nothing,
        }
    }

    fn on_ack(&mut self, block: u16, now: Instant) -> Heard {
        match self.window.on_ack(block, now) {
            AckEffect::Ignored => {
                let Some(suspect) = self.suspect.take_if(|s| wire_block(s.acked) == block) else {
                    return Heard::Nothing;
                };
                let delay = suspect
                    .first_ack_at
                    .saturating_duration_since(suspect.original_at);
                self.rto = suspect.rto_before;
                self.rto.sample(delay);
                // What is in flight now went out under the backed-off timer: give it the
                // learnt one.
                if let Some((at, _)) = self.armed {
                    self.armed = Some((at, self.timer()));
                }
                self.stats.spurious += 1;
                Heard::Spurious { delay }
            }
            AckEffect::Progress { rtt, done } => {
                if let Some(rtt) = rtt {
                    self.rto.sample(rtt);
                }
                self.confirmed = true;
                self.last_progress = now;
                let acked = self.window.first_unacked() - 1;
                if let Some(rewound) = self.rewound.take() {
                    self.suspect = Some(Suspect {
                        acked,
                        first_ack_at: now,
                        original_at: rewound.original_at,
                        rto_before: rewound.rto_before,
                    });
                } else if self
                    .suspect
                    .as_ref()
                    .is_some_and(|s| acked > s.acked + SUSPECT_SPAN)
                {
                    self.suspect = None;
                }
                if done {
                    self.status = Status::Complete;
                    return Heard::Ended;
                }
                Heard::Progress { rtt }
            }
        }
    }

    fn fail(&mut self, reason: Reason, farewell: Option<(ErrorCode, &'static str)>) {
        self.status = Status::Failed(Failure { reason, farewell });
    }

    pub fn status(&self) -> &Status {
        &self.status
    }

    /// Whether the client has acknowledged anything (proving its address).
    pub fn confirmed(&self) -> bool {
        self.confirmed
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Data blocks the client acknowledged.
    pub fn blocks_acked(&self) -> u64 {
        self.window.blocks_acked()
    }

    /// The timer's current estimate (without the host floor).
    pub fn rto(&self) -> Duration {
        self.rto.get()
    }
}

#[cfg(test)]
mod tests;
