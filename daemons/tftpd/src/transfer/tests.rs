//! The transfer state machine in virtual time: unit tests for each rule, and a simulated
//! client over a lossy, jittery, reordering network under proptest.

use proptest::prelude::*;

use super::*;

const LIMITS: Limits = Limits {
    max_blksize: 1468,
    max_windowsize: 64,
    timeout: Duration::from_secs(1),
    idle_timeout: Duration::from_secs(10),
    first_ack_timeout: Duration::from_secs(3),
};

const MS: Duration = Duration::from_millis(1);

fn ack(block: u16) -> Vec<u8> {
    Packet::Ack { block }.to_bytes()
}

fn plan(last: u64, oack: bool, windowsize: u16) -> Plan {
    Plan {
        last,
        oack,
        windowsize,
        timeout: LIMITS.timeout,
        idle_timeout: LIMITS.idle_timeout,
        first_ack_timeout: LIMITS.first_ack_timeout,
        first_sends: FIRST_SENDS,
    }
}

/// Sends everything sendable at `now`; returns the units sent.
fn send_all(t: &mut Transfer, now: Instant) -> Vec<u64> {
    let mut units = vec![];
    while let Some((unit, count)) = t.to_send() {
        units.extend(unit..unit + count);
        t.sent(count, now, MIN_RTO);
    }
    units
}

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
    let p = Plan::new(&plain, 1024, &LIMITS, FIRST_SENDS);
    assert_eq!(p.last, 3, "two full blocks and an empty one");
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
        w.on_ack(2, t + MS),
        AckEffect::Progress {
            rtt: Some(MS),
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
        w.on_ack(10, t + 3 * MS),
        AckEffect::Progress {
            rtt: Some(3 * MS),
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

/// An address that never answers gets the first block [`FIRST_SENDS`] times (200 ms, then
/// 400 ms apart), then nothing until the transfer ends at `first_ack_timeout`, without ERROR.
#[test]
fn a_client_that_never_answers_gets_the_first_block_three_times_and_no_error() {
    let t0 = Instant::now();
    let mut t = Transfer::new(plan(100, false, 1), t0);
    let mut sends = vec![];
    let mut now = t0;
    loop {
        for unit in send_all(&mut t, now) {
            assert_eq!(unit, 1);
            sends.push(now - t0);
        }
        let Some(deadline) = t.deadline() else { break };
        assert!(deadline >= now);
        now = deadline;
        t.on_timer(now);
    }
    assert_eq!(sends, [Duration::ZERO, 200 * MS, 600 * MS]);
    assert_eq!(now - t0, LIMITS.first_ack_timeout);
    assert_eq!(
        t.status(),
        &Status::Failed(Failure {
            reason: Reason::NeverAcknowledged(LIMITS.first_ack_timeout),
            farewell: None,
        })
    );
    assert_eq!(t.stats().resent, 2);

    // One send only for an address already known to be silent.
    let mut t = Transfer::new(
        Plan {
            first_sends: FIRST_SENDS_SILENT,
            ..plan(100, false, 1)
        },
        t0,
    );
    assert_eq!(send_all(&mut t, t0), [1]);
    assert_eq!(t.deadline(), Some(t0 + LIMITS.first_ack_timeout));
}

/// A client repeating its request gets the first unit again (unless the repeat crossed our
/// send), not more than once a second, and never once it has acknowledged something.
#[test]
fn a_repeated_request_resends_the_first_unit_at_most_once_a_second() {
    let t0 = Instant::now();
    let mut t = Transfer::new(
        Plan {
            first_sends: FIRST_SENDS_SILENT,
            ..plan(5, true, 1)
        },
        t0,
    );
    assert_eq!(send_all(&mut t, t0), [0]);
    // Within a timer's length (200 ms) of our send, the repeat crossed it.
    assert!(!t.on_request_again(t0 + 100 * MS));
    assert!(t.on_request_again(t0 + 300 * MS));
    assert_eq!(send_all(&mut t, t0 + 300 * MS), [0]);
    assert!(!t.on_request_again(t0 + 600 * MS));
    assert!(!t.on_request_again(t0 + 1200 * MS));
    assert!(t.on_request_again(t0 + 1300 * MS));
    assert_eq!(send_all(&mut t, t0 + 1300 * MS), [0]);
    assert!(matches!(
        t.on_datagram(&ack(0), t0 + 1600 * MS),
        Heard::Progress { .. }
    ));
    assert!(t.confirmed());
    assert_eq!(send_all(&mut t, t0 + 1600 * MS), [1]);
    assert!(!t.on_request_again(t0 + 5000 * MS));
}

/// Once the client answered: the timer doubles from its estimate up to the ceiling, and the
/// transfer gives up `idle_timeout` after the last progress with ERROR 0 "timeout".
#[test]
fn an_answering_client_that_stops_gets_exponential_backoff_then_an_error() {
    let t0 = Instant::now();
    let mut t = Transfer::new(plan(100, false, 1), t0);
    assert_eq!(send_all(&mut t, t0), [1]);
    let acked_at = t0 + 40 * MS;
    assert!(matches!(
        t.on_datagram(&ack(1), acked_at),
        Heard::Progress { .. }
    ));
    assert_eq!(send_all(&mut t, acked_at), [2]);
    let mut now = acked_at;
    let mut sends = vec![];
    while let Some(deadline) = t.deadline() {
        now = deadline;
        t.on_timer(now);
        if send_all(&mut t, now) == [2] {
            sends.push(now - acked_at);
        }
    }
    // First sample 40 ms: srtt 40 ms, rttvar 20 ms, RTO 120 ms; then doubling to 1 s.
    let gaps: Vec<Duration> = std::iter::once(sends[0])
        .chain(sends.windows(2).map(|w| w[1] - w[0]))
        .collect();
    assert_eq!(
        &gaps[..5],
        [120 * MS, 240 * MS, 480 * MS, 960 * MS, 1000 * MS]
    );
    assert!(now - acked_at >= LIMITS.idle_timeout);
    assert!(now - acked_at < LIMITS.idle_timeout + LIMITS.timeout);
    assert_eq!(
        t.status(),
        &Status::Failed(Failure {
            reason: Reason::Idle(LIMITS.idle_timeout),
            farewell: Some((ErrorCode::NotDefined, "timeout")),
        })
    );
}

/// Real loss on a fast link: the lost block goes again after the 10 ms floor, not after the
/// client's timeout, and the loss never raises the floor.
#[test]
fn a_lost_block_is_resent_after_the_floor_on_a_fast_link() {
    let t0 = Instant::now();
    let mut t = Transfer::new(plan(100, false, 1), t0);
    let mut now = t0;
    // 20 quick round trips teach the timer the link is fast.
    for block in 1..=20u16 {
        assert_eq!(send_all(&mut t, now), [u64::from(block)]);
        now += Duration::from_micros(100);
        assert!(matches!(
            t.on_datagram(&ack(block), now),
            Heard::Progress { .. }
        ));
    }
    assert_eq!(t.rto(), MIN_RTO);
    // Block 21 is lost.
    assert_eq!(send_all(&mut t, now), [21]);
    let sent_at = now;
    now = t.deadline().unwrap();
    assert_eq!(now - sent_at, MIN_RTO);
    t.on_timer(now);
    assert_eq!(send_all(&mut t, now), [21]);
    now += Duration::from_micros(100);
    assert!(matches!(
        t.on_datagram(&ack(21), now),
        Heard::Progress { .. }
    ));
    // No duplicate ACK follows a real loss: nothing is undone, and the next block goes at once.
    assert_eq!(send_all(&mut t, now), [22]);
    assert_eq!(t.stats().spurious, 0);
}

/// A loss-free ACK delayed past the timer: one resend, then the duplicate ACK the client sends
/// for the duplicate block proves the timeout spurious. The timer is restored and learns the
/// delay, so a second delay of the same size causes no resend.
#[test]
fn a_delayed_ack_is_resent_once_then_recognised_and_learnt() {
    let t0 = Instant::now();
    let mut t = Transfer::new(plan(100, false, 1), t0);
    let mut now = t0;
    for block in 1..=20u16 {
        send_all(&mut t, now);
        now += Duration::from_micros(100);
        t.on_datagram(&ack(block), now);
    }
    // Block 21's ACK takes 25 ms (the host was busy): the timer fires at 10 ms.
    assert_eq!(send_all(&mut t, now), [21]);
    let sent_at = now;
    now += MIN_RTO;
    t.on_timer(now);
    assert_eq!(send_all(&mut t, now), [21], "one resend");
    now = sent_at + 25 * MS;
    assert!(matches!(
        t.on_datagram(&ack(21), now),
        Heard::Progress { .. }
    ));
    assert_eq!(send_all(&mut t, now), [22]);
    let sent_22 = now;
    // The client got block 21 twice and acknowledges it again.
    now += Duration::from_micros(100);
    assert_eq!(
        t.on_datagram(&ack(21), now),
        Heard::Spurious { delay: 25 * MS }
    );
    assert_eq!(t.to_send(), None, "the duplicate ACK sent nothing");
    assert_eq!(t.stats().spurious, 1);
    assert!(t.rto() > 25 * MS, "{:?}", t.rto());
    // Block 22's ACK is as late: no resend.
    now = sent_22 + 25 * MS;
    assert!(t.deadline().unwrap() > now);
    assert!(matches!(
        t.on_datagram(&ack(22), now),
        Heard::Progress { .. }
    ));
    assert_eq!(t.stats().resent, 1);
}

#[test]
fn the_host_floor_rises_on_slow_round_trips_and_halves_every_two_seconds() {
    let t0 = Instant::now();
    let mut f = DelayFloor::default();
    assert_eq!(f.get(t0), MIN_RTO);
    f.raise(40 * MS, t0);
    assert_eq!(f.get(t0), 60 * MS);
    assert_eq!(f.get(t0 + FLOOR_HALF_LIFE), 30 * MS);
    assert_eq!(f.get(t0 + 10 * FLOOR_HALF_LIFE), MIN_RTO);
    // A smaller delay does not lower it; nothing exceeds the cap.
    f.raise(MS, t0);
    assert_eq!(f.get(t0), 60 * MS);
    f.raise(Duration::from_secs(60), t0);
    assert_eq!(f.get(t0), MAX_FLOOR);
    // Ordinary round trips raise it only when they exceed it (with the same margin).
    let mut f = DelayFloor::default();
    f.observe(Duration::from_micros(100), t0);
    f.observe(4 * MS, t0);
    assert_eq!(f.get(t0), MIN_RTO);
    f.observe(20 * MS, t0);
    assert_eq!(f.get(t0), 30 * MS);
    // A transfer's timer respects the floor, and the ceiling above it.
    let mut t = Transfer::new(plan(10, false, 1), t0);
    t.sent(1, t0, Duration::from_secs(5));
    assert_eq!(t.deadline(), Some(t0 + LIMITS.timeout));
}

#[test]
fn client_errors_and_unexpected_packets_end_the_transfer() {
    let t0 = Instant::now();
    let mut t = Transfer::new(plan(10, true, 1), t0);
    send_all(&mut t, t0);
    // Garbage is ignored.
    assert_eq!(t.on_datagram(b"\x00\x09junk", t0), Heard::Nothing);
    let error = packet::error_packet(ErrorCode::OptionRefused, "tsize only");
    assert_eq!(t.on_datagram(&error, t0), Heard::Ended);
    assert_eq!(
        t.status(),
        &Status::Failed(Failure {
            reason: Reason::ClientError {
                code: 8,
                message: "tsize only".into()
            },
            farewell: None,
        })
    );
    assert_eq!(t.deadline(), None);

    let mut t = Transfer::new(plan(10, false, 1), t0);
    send_all(&mut t, t0);
    let data = Packet::Data {
        block: 1,
        data: b"x",
    }
    .to_bytes();
    assert_eq!(t.on_datagram(&data, t0), Heard::Ended);
    let Status::Failed(failure) = t.status() else {
        panic!("{:?}", t.status())
    };
    assert_eq!(
        failure.farewell,
        Some((ErrorCode::IllegalOperation, "expected ACK"))
    );
}

/// A tiny deterministic generator for the simulation (proptest picks the seed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        self.next() % 1000 < per_mille
    }

    fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = u64::try_from((hi - lo).as_micros()).unwrap();
        lo + Duration::from_micros(self.next() % (span + 1))
    }
}

#[derive(Debug, Clone)]
struct Case {
    seed: u64,
    last: u64,
    oack: bool,
    windowsize: u16,
    /// Loss each way, per mille.
    loss: u64,
    delay: (Duration, Duration),
}

/// What the simulated client did and saw.
#[derive(Debug)]
struct Run {
    status: Status,
    stats: Stats,
    /// Blocks the client took, in order.
    received: u64,
    /// Virtual time from the last progress to the end.
    quiet_at_end: Duration,
    elapsed: Duration,
}

/// Runs a transfer against an RFC 7440 client that acknowledges every `windowsize` blocks, the
/// last in-order block on a gap or a duplicate, repeats its request while it has nothing, and
/// re-acknowledges on its own 1.5 s timer. Checks the window and Sorcerer's Apprentice rules at
/// every step.
fn simulate(case: &Case) -> Run {
    let t0 = Instant::now();
    let mut rng = Rng(case.seed | 1);
    let mut t = Transfer::new(plan(case.last, case.oack, case.windowsize), t0);
    let mut now = t0;
    // (arrival, unit) towards the client; (arrival, block) towards the server.
    let mut to_client: Vec<(Instant, u64)> = vec![];
    let mut to_server: Vec<(Instant, u16)> = vec![];
    let first = u64::from(!case.oack);
    let mut expected = if case.oack { 0 } else { 1 };
    let mut since_ack = 0u64;
    let mut client_heard = now;
    let mut acked_through: Option<u64> = None;
    let mut last_progress = now;
    let client_timeout = Duration::from_millis(1500);
    for _step in 0..2_000_000 {
        while let Some((unit, count)) = t.to_send() {
            assert!(count >= 1);
            let end = unit + count - 1;
            match acked_through {
                None => assert_eq!((unit, count), (first, 1), "more than the first unit"),
                Some(a) => {
                    assert!(unit > a, "resent acknowledged unit {unit} (acked {a})");
                    assert!(
                        end <= a + u64::from(case.windowsize),
                        "window overrun: {unit}..={end} after {a}"
                    );
                }
            }
            for u in unit..=end {
                if !rng.chance(case.loss) {
                    to_client.push((now + rng.between(case.delay.0, case.delay.1), u));
                }
            }
            t.sent(count, now, MIN_RTO);
        }
        if t.status() != &Status::Running {
            break;
        }
        let next_arrival = to_client
            .iter()
            .map(|(at, _)| *at)
            .chain(to_server.iter().map(|(at, _)| *at))
            .min();
        let client_timer = client_heard + client_timeout;
        let deadline = t.deadline().unwrap();
        now = [Some(deadline), next_arrival, Some(client_timer)]
            .into_iter()
            .flatten()
            .min()
            .unwrap()
            .max(now);
        // ACKs first (the server reads before its timer fires), then data, then timers.
        to_server.sort_by_key(|(at, _)| *at);
        while let Some(&(at, block)) = to_server.first() {
            if at > now {
                break;
            }
            to_server.remove(0);
            let before = t.to_send();
            let heard = t.on_datagram(&ack(block), now);
            match heard {
                Heard::Nothing | Heard::Spurious { .. } => {
                    assert_eq!(t.to_send(), before, "a duplicate ACK opened the window");
                }
                Heard::Progress { .. } | Heard::Ended => {
                    last_progress = now;
                    // 0 once the OACK is acknowledged, then the last block acknowledged.
                    acked_through = Some(t.blocks_acked());
                }
            }
            if heard == Heard::Ended {
                break;
            }
        }
        if t.status() != &Status::Running {
            break;
        }
        to_client.sort_by_key(|(at, _)| *at);
        let mut replies = vec![];
        while let Some(&(at, unit)) = to_client.first() {
            if at > now {
                break;
            }
            to_client.remove(0);
            client_heard = now;
            if unit == 0 {
                // The OACK, or a duplicate of it.
                if expected == 0 {
                    expected = 1;
                }
                replies.push(0u16);
            } else if unit == expected {
                expected += 1;
                since_ack += 1;
                if unit == case.last || since_ack == u64::from(case.windowsize) {
                    since_ack = 0;
                    replies.push(wire_block(unit));
                }
            } else {
                // A duplicate or a gap: acknowledge the last block in order.
                since_ack = 0;
                replies.push(wire_block(expected - 1));
            }
        }
        if now >= client_timer {
            client_heard = now;
            if expected == u64::from(!case.oack) {
                // Nothing yet: the client repeats its request.
                t.on_request_again(now);
            } else {
                replies.push(wire_block(expected - 1));
            }
        }
        for block in replies {
            if !rng.chance(case.loss) {
                to_server.push((now + rng.between(case.delay.0, case.delay.1), block));
            }
        }
        t.on_timer(now);
    }
    Run {
        status: t.status().clone(),
        stats: t.stats(),
        received: expected.saturating_sub(1),
        quiet_at_end: now - last_progress,
        elapsed: now - t0,
    }
}

fn case() -> impl Strategy<Value = Case> {
    (
        any::<u64>(),
        1u64..300,
        any::<bool>(),
        prop_oneof![Just(1u16), Just(4), Just(16)],
        0u64..250,
        0u64..30,
        0u64..30,
    )
        .prop_map(|(seed, last, oack, windowsize, loss, a, b)| Case {
            seed,
            last,
            oack: oack || windowsize > 1,
            windowsize,
            loss,
            delay: (MS * a.min(b) as u32, MS * a.max(b) as u32),
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the loss, delay and reordering: the window and duplicate-ACK rules hold at
    /// every step (checked inside), and the transfer either delivers every block in order or
    /// gives up only after `idle_timeout` without progress (or the first ACK never came).
    #[test]
    fn every_transfer_completes_in_order_or_gives_up_for_a_reason(case in case()) {
        let run = simulate(&case);
        match &run.status {
            Status::Complete => prop_assert_eq!(run.received, case.last),
            Status::Failed(Failure { reason: Reason::Idle(_), farewell }) => {
                prop_assert!(run.quiet_at_end >= LIMITS.idle_timeout, "{run:?}");
                prop_assert!(farewell.is_some());
            }
            Status::Failed(Failure { reason: Reason::NeverAcknowledged(_), farewell }) => {
                prop_assert_eq!(run.elapsed, LIMITS.first_ack_timeout);
                prop_assert!(farewell.is_none());
            }
            other => prop_assert!(false, "{other:?} {run:?}"),
        }
    }

    /// No loss and a steady delay (up to 100 ms a round trip): nothing is ever sent twice.
    #[test]
    fn a_steady_link_without_loss_sees_no_retransmission(
        seed in any::<u64>(), last in 1u64..300, windowsize in prop_oneof![Just(1u16), Just(8)],
        delay in 0u64..50,
    ) {
        let d = MS * delay as u32;
        let run = simulate(&Case {
            seed, last, oack: windowsize > 1, windowsize, loss: 0, delay: (d, d),
        });
        prop_assert_eq!(&run.status, &Status::Complete);
        prop_assert_eq!(run.stats.resent, 0, "{:?}", run);
    }

    /// Lossy links finish: at 10 % loss each way, a few hundred blocks take seconds of
    /// virtual time, not the client's timeouts. (Or the first exchange failed every time for
    /// 3 s, about one case in a thousand: a real client then sends a new request.)
    #[test]
    fn ten_percent_loss_recovers_at_the_link_speed(seed in any::<u64>()) {
        let run = simulate(&Case {
            seed, last: 200, oack: true, windowsize: 1, loss: 100,
            delay: (Duration::from_micros(50), Duration::from_micros(150)),
        });
        if run.stats.sent > 4 {
            prop_assert_eq!(&run.status, &Status::Complete);
            prop_assert!(run.elapsed < Duration::from_secs(10), "{run:?}");
        } else {
            let handshake_failed = matches!(
                &run.status,
                Status::Failed(Failure { reason: Reason::NeverAcknowledged(_), .. })
            );
            prop_assert!(handshake_failed, "{:?}", run);
        }
    }
}

/// One step of an arbitrary (hostile) peer.
#[derive(Debug, Clone)]
enum Step {
    /// Any datagram from the client's address.
    Datagram(Vec<u8>),
    /// An ACK of any block.
    Ack(u16),
    /// Time passes, then the timer is run.
    Wait(u16),
    /// The client repeats its request.
    Repeat,
    /// Everything sendable goes out.
    Send,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(Step::Datagram),
        any::<u16>().prop_map(Step::Ack),
        (0u16..0x0fff).prop_map(|b| Step::Ack(b % 8)),
        any::<u16>().prop_map(Step::Wait),
        Just(Step::Repeat),
        Just(Step::Send),
    ]
}

/// Checks what [`Transfer::to_send`] offers against what has been acknowledged.
fn check_window(t: &Transfer, oack: bool, windowsize: u16) -> Result<(), TestCaseError> {
    let Some((unit, count)) = t.to_send() else {
        return Ok(());
    };
    prop_assert!(count >= 1);
    if !t.confirmed() {
        prop_assert_eq!((unit, count), (u64::from(!oack), 1));
    } else {
        let acked = t.blocks_acked();
        prop_assert!(unit > acked);
        prop_assert!(unit + count - 1 <= acked + u64::from(windowsize));
    }
    Ok(())
}

proptest! {
    /// Whatever a peer sends, and whenever: no panic, the window rules hold, a datagram that
    /// acknowledges nothing new sends nothing, and the timer is always armed while running.
    #[test]
    fn a_hostile_peer_never_breaks_the_rules(
        last in 1u64..100_000, oack in any::<bool>(), windowsize in 1u16..70,
        steps in proptest::collection::vec(step(), 1..300),
    ) {
        let oack = oack || windowsize > 1;
        let t0 = Instant::now();
        let mut now = t0;
        let mut t = Transfer::new(plan(last, oack, windowsize), t0);
        for step in steps {
            check_window(&t, oack, windowsize)?;
            match step {
                Step::Datagram(bytes) => {
                    let before = t.to_send();
                    if let Heard::Nothing | Heard::Spurious { .. } = t.on_datagram(&bytes, now) {
                        prop_assert_eq!(t.to_send(), before);
                    }
                }
                Step::Ack(block) => {
                    let before = t.to_send();
                    if let Heard::Nothing | Heard::Spurious { .. } = t.on_datagram(&ack(block), now) {
                        prop_assert_eq!(t.to_send(), before);
                    }
                }
                Step::Wait(ms) => {
                    now += Duration::from_millis(u64::from(ms));
                    t.on_timer(now);
                }
                Step::Repeat => {
                    t.on_request_again(now);
                }
                Step::Send => {
                    send_all(&mut t, now);
                }
            }
            if t.status() == &Status::Running {
                prop_assert!(t.deadline().is_some());
            } else {
                prop_assert_eq!(t.deadline(), None);
                prop_assert_eq!(t.to_send(), None);
            }
        }
    }
}
