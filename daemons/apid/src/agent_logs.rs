//! The agents' recent console lines, in memory, under byte budgets an attacker cannot exceed.
//!
//! Anyone on the provisioning network who holds a boot token can send log lines, so this
//! buffer is attacker-fed. Before it had budgets, 40 machines' lines added 54 MB to apid in
//! 1.3 s and the bound was gigabytes (10 000 machines × 500 lines × 1 000 characters). Now:
//! - every machine has a byte budget; its oldest lines go first;
//! - all machines together have a byte budget; beyond it the machine that has been quiet the
//!   longest loses its whole buffer (least recently written first: a machine still talking
//!   keeps its lines, and no machine can hold more than its own share);
//! - each token (its MAC) may send so many requests a minute ([`AgentLogs::admit`]; the
//!   route answers 429 with `Retry-After` beyond it), which bounds the CPU a flood costs;
//! - only so many lines per machine per minute are copied into apid's own log (the journal),
//!   with a count of what was left out, so a flood cannot flood the journal either.
//!
//! The buffer must never hold a lock across an await, and never grow with anything an agent
//! chooses except within these budgets.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dragonfly_core::MacAddr;
use serde::Serialize;
use utoipa::ToSchema;

/// One line an agent said.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogLine {
    /// When apid received it.
    #[schema(value_type = String, format = DateTime)]
    pub received_at: jiff::Timestamp,
    pub line: String,
}

/// What a kept line costs against the budgets: its text plus its bookkeeping.
fn cost(line: &LogLine) -> usize {
    line.line.len() + std::mem::size_of::<LogLine>()
}

/// The budgets, from `[apid]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentLogLimits {
    /// Bytes kept per machine.
    pub per_machine_bytes: usize,
    /// Bytes kept for all machines together; at least `per_machine_bytes`.
    pub total_bytes: usize,
    /// Requests a token (a MAC) may make per minute; also the burst allowed.
    pub requests_per_minute: u32,
    /// Lines per machine per minute copied into apid's own log.
    pub journal_lines_per_minute: u32,
    /// Lines of all machines together per minute copied into apid's own log.
    pub journal_lines_per_minute_total: u32,
}

/// Tokens whose request rate is tracked at most; past it, full (idle) buckets are dropped,
/// and if every one is busy a new MAC goes untracked rather than refused: the byte budgets
/// still hold, and a legitimate agent is never locked out by a table full of attackers.
const MAX_TRACKED_MACS: usize = 100_000;

/// The journal sampling window.
const JOURNAL_WINDOW: Duration = Duration::from_secs(60);

/// The agents' recent console lines, per machine, bounded in bytes (see the module docs).
#[derive(Debug)]
pub struct AgentLogs {
    limits: AgentLogLimits,
    buffers: Mutex<Buffers>,
    rates: Mutex<HashMap<MacAddr, Bucket>>,
}

#[derive(Debug, Default)]
struct Buffers {
    by_machine: HashMap<uuid::Uuid, MachineLog>,
    /// Machines by their last write (a sequence number), least recent first.
    by_last_write: BTreeMap<u64, uuid::Uuid>,
    next_seq: u64,
    bytes: usize,
    /// The journal allowance of all machines together.
    journal: Option<JournalWindow>,
}

#[derive(Debug)]
struct MachineLog {
    lines: VecDeque<LogLine>,
    bytes: usize,
    last_write: u64,
    journal: JournalWindow,
}

#[derive(Debug, Clone, Copy)]
struct JournalWindow {
    started: Instant,
    logged: u32,
    suppressed: u64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// What the caller should copy into apid's own log after a [`AgentLogs::push`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ToJournal {
    /// Lines to log, in order.
    pub lines: Vec<String>,
    /// Lines of the machine's previous window that were not logged (reported once, now).
    pub suppressed_before: u64,
    /// Lines of this push that were not logged.
    pub suppressed_now: usize,
    /// Lines of all machines in the previous window that were not logged for being over the
    /// total allowance (reported once, by the first push of the next window).
    pub suppressed_total_before: u64,
}

impl AgentLogs {
    /// An empty buffer with these budgets.
    pub fn new(limits: AgentLogLimits) -> Self {
        Self {
            limits,
            buffers: Mutex::default(),
            rates: Mutex::default(),
        }
    }

    /// The budgets in force.
    pub fn limits(&self) -> AgentLogLimits {
        self.limits
    }

    /// Takes one request for `mac` at `now`, or says how long until one is allowed.
    pub fn admit(&self, mac: MacAddr, now: Instant) -> Result<(), Duration> {
        let cap = f64::from(self.limits.requests_per_minute);
        let rate = cap / 60.0;
        let mut rates = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        if !rates.contains_key(&mac) && rates.len() >= MAX_TRACKED_MACS {
            rates.retain(|_, b| {
                b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < cap
            });
            if rates.len() >= MAX_TRACKED_MACS {
                return Ok(());
            }
        }
        let b = rates.entry(mac).or_insert(Bucket {
            tokens: cap,
            at: now,
        });
        b.tokens = (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate).min(cap);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / rate))
        }
    }

    /// Keeps `lines` (already cleaned) as `machine`'s newest, within the budgets, and says
    /// which of them may go to apid's own log.
    pub fn push(
        &self,
        machine: uuid::Uuid,
        lines: Vec<String>,
        received_at: jiff::Timestamp,
        now: Instant,
    ) -> ToJournal {
        let mut all = self.buffers.lock().unwrap_or_else(|p| p.into_inner());
        let all = &mut *all;
        let seq = all.next_seq;
        all.next_seq += 1;
        let log = all.by_machine.entry(machine).or_insert_with(|| MachineLog {
            lines: VecDeque::new(),
            bytes: 0,
            last_write: seq,
            journal: JournalWindow {
                started: now,
                logged: 0,
                suppressed: 0,
            },
        });
        all.by_last_write.remove(&log.last_write);
        all.by_last_write.insert(seq, machine);
        log.last_write = seq;

        let mut out = ToJournal::default();
        let total = all.journal.get_or_insert(JournalWindow {
            started: now,
            logged: 0,
            suppressed: 0,
        });
        if now.saturating_duration_since(total.started) >= JOURNAL_WINDOW {
            out.suppressed_total_before = total.suppressed;
            *total = JournalWindow {
                started: now,
                logged: 0,
                suppressed: 0,
            };
        }
        if now.saturating_duration_since(log.journal.started) >= JOURNAL_WINDOW {
            out.suppressed_before = log.journal.suppressed;
            log.journal = JournalWindow {
                started: now,
                logged: 0,
                suppressed: 0,
            };
        }
        for mut line in lines {
            if log.journal.logged >= self.limits.journal_lines_per_minute {
                log.journal.suppressed += 1;
                out.suppressed_now += 1;
            } else if total.logged >= self.limits.journal_lines_per_minute_total {
                total.suppressed += 1;
                out.suppressed_now += 1;
            } else {
                log.journal.logged += 1;
                total.logged += 1;
                out.lines.push(line.clone());
            }
            line.shrink_to_fit();
            let kept = LogLine { received_at, line };
            let c = cost(&kept);
            if c > self.limits.per_machine_bytes {
                continue;
            }
            while log.bytes + c > self.limits.per_machine_bytes {
                let Some(old) = log.lines.pop_front() else {
                    break;
                };
                log.bytes -= cost(&old);
                all.bytes -= cost(&old);
            }
            log.bytes += c;
            all.bytes += c;
            log.lines.push_back(kept);
        }

        // The total: whole buffers of the machines quiet the longest go first. This machine
        // was just written, so it is last in line, and its own budget fits in the total.
        while all.bytes > self.limits.total_bytes {
            let Some((_, victim)) = all.by_last_write.pop_first() else {
                break;
            };
            if let Some(gone) = all.by_machine.remove(&victim) {
                all.bytes -= gone.bytes;
            }
        }
        out
    }

    /// The lines kept for `machine`, oldest first.
    pub fn get(&self, machine: uuid::Uuid) -> Vec<LogLine> {
        let all = self.buffers.lock().unwrap_or_else(|p| p.into_inner());
        all.by_machine
            .get(&machine)
            .map(|b| b.lines.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Bytes held for all machines, as counted against the total budget.
    pub fn bytes(&self) -> usize {
        self.buffers.lock().unwrap_or_else(|p| p.into_inner()).bytes
    }

    /// Machines whose lines are held.
    pub fn machines(&self) -> usize {
        self.buffers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_machine
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> AgentLogLimits {
        AgentLogLimits {
            per_machine_bytes: 10 * 1024,
            total_bytes: 30 * 1024,
            requests_per_minute: 6,
            journal_lines_per_minute: 3,
            journal_lines_per_minute_total: 5,
        }
    }

    fn lines(n: usize, len: usize, tag: &str) -> Vec<String> {
        (0..n)
            .map(|i| format!("{tag}{i:05}{}", "x".repeat(len)))
            .collect()
    }

    fn id(n: u128) -> uuid::Uuid {
        uuid::Uuid::from_u128(n)
    }

    #[test]
    fn a_machine_keeps_its_newest_lines_within_its_budget() {
        let logs = AgentLogs::new(limits());
        let now = Instant::now();
        let t = jiff::Timestamp::now();
        for batch in 0..50 {
            logs.push(id(1), lines(100, 100, &format!("b{batch}-")), t, now);
        }
        let kept = logs.get(id(1));
        assert!(
            logs.bytes() <= limits().per_machine_bytes,
            "{}",
            logs.bytes()
        );
        assert!(!kept.is_empty());
        // The newest line survives and the kept lines are the tail, in order.
        assert!(kept.last().unwrap().line.starts_with("b49-00099"));
        let expected = kept.iter().map(cost).sum::<usize>();
        assert_eq!(expected, logs.bytes());
        assert!(logs.bytes() + cost(&kept[0]) > limits().per_machine_bytes);
    }

    #[test]
    fn the_total_evicts_whole_buffers_of_the_quietest_machines() {
        let logs = AgentLogs::new(limits());
        let now = Instant::now();
        let t = jiff::Timestamp::now();
        // A legitimate machine speaks, then many others fill the total.
        logs.push(id(0), lines(5, 50, "legit"), t, now);
        for m in 1..=10 {
            logs.push(id(m), lines(100, 200, "flood"), t, now);
            assert!(logs.bytes() <= limits().total_bytes, "{}", logs.bytes());
        }
        // At most three machines' worth fits: the quietest (including the first) went whole.
        assert!(logs.machines() <= 3, "{}", logs.machines());
        assert!(logs.get(id(0)).is_empty());
        assert!(logs.get(id(1)).is_empty());
        assert!(!logs.get(id(10)).is_empty());
        // A machine that keeps talking keeps its lines while others flood.
        logs.push(id(0), lines(5, 50, "legit"), t, now);
        for m in 11..=20 {
            logs.push(id(0), lines(1, 50, "still"), t, now);
            logs.push(id(m), lines(100, 200, "flood"), t, now);
        }
        assert!(logs.get(id(0)).iter().any(|l| l.line.starts_with("still")));
        assert!(logs.bytes() <= limits().total_bytes);
    }

    #[test]
    fn a_line_larger_than_the_budget_is_not_kept() {
        let logs = AgentLogs::new(AgentLogLimits {
            per_machine_bytes: 100,
            total_bytes: 100,
            ..limits()
        });
        logs.push(
            id(1),
            vec!["y".repeat(500)],
            jiff::Timestamp::now(),
            Instant::now(),
        );
        assert_eq!(logs.bytes(), 0);
        assert!(logs.get(id(1)).is_empty());
    }

    #[test]
    fn the_rate_is_per_mac_with_a_retry_after() {
        let logs = AgentLogs::new(limits());
        let a: MacAddr = "52:54:00:00:00:01".parse().unwrap();
        let b: MacAddr = "52:54:00:00:00:02".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..6 {
            logs.admit(a, t0).unwrap();
        }
        let wait = logs.admit(a, t0).unwrap_err();
        assert!(
            wait > Duration::from_secs(9) && wait <= Duration::from_secs(10),
            "{wait:?}"
        );
        logs.admit(b, t0).unwrap();
        logs.admit(a, t0 + Duration::from_secs(10)).unwrap();
        assert!(logs.admit(a, t0 + Duration::from_secs(10)).is_err());
    }

    #[test]
    fn a_full_rate_table_never_locks_a_new_agent_out() {
        let logs = AgentLogs::new(limits());
        let t0 = Instant::now();
        for i in 0..MAX_TRACKED_MACS {
            let [_, _, _, _, a, b, c, d] = (i as u64).to_be_bytes();
            logs.admit(MacAddr::new([0x02, 0, a, b, c, d]), t0).unwrap();
        }
        // Every tracked MAC is busy: a new one is let through untracked, again and again.
        let newcomer: MacAddr = "52:54:00:aa:bb:cc".parse().unwrap();
        for _ in 0..10 {
            logs.admit(newcomer, t0).unwrap();
        }
        // Once the others are idle (their buckets full again) they make room, and the
        // newcomer is counted like everyone else.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..6 {
            logs.admit(newcomer, later).unwrap();
        }
        assert!(logs.admit(newcomer, later).is_err());
        assert_eq!(
            logs.rates.lock().unwrap().len(),
            1,
            "the idle buckets were dropped"
        );
    }

    #[test]
    fn the_journal_gets_a_sample_and_a_count() {
        let logs = AgentLogs::new(limits());
        let t = jiff::Timestamp::now();
        let t0 = Instant::now();
        let first = logs.push(id(1), lines(5, 1, "a"), t, t0);
        assert_eq!(first.lines.len(), 3);
        assert_eq!(first.suppressed_now, 2);
        assert_eq!(first.suppressed_before, 0);
        let second = logs.push(id(1), lines(5, 1, "b"), t, t0 + Duration::from_secs(30));
        assert!(second.lines.is_empty());
        assert_eq!(second.suppressed_now, 5);
        // Another machine has its own allowance, within the total (5 a minute).
        assert_eq!(logs.push(id(2), lines(1, 1, "c"), t, t0).lines.len(), 1);
        let over_total = logs.push(id(3), lines(3, 1, "d"), t, t0);
        assert_eq!(over_total.lines.len(), 1);
        assert_eq!(over_total.suppressed_now, 2);
        // The next window reports what the last one left out, and logs again.
        let third = logs.push(id(1), lines(1, 1, "c"), t, t0 + Duration::from_secs(61));
        assert_eq!(third.suppressed_before, 7);
        assert_eq!(third.suppressed_total_before, 2);
        assert_eq!(third.lines.len(), 1);
    }
}
