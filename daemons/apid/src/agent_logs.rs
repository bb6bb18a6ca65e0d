//! The agents' console lines: the rates and budgets that keep an attacker-fed log bounded.
//!
//! Anyone on the provisioning network who holds a boot token can send log lines, so they are
//! attacker-fed. Before there were budgets, 40 machines' lines added 54 MB to apid in 1.3 s
//! and the bound was gigabytes (10 000 machines × 500 lines × 1 000 characters). Now:
//! - the lines are kept in the store (`dragonfly_store::console`), not here: the store *is*
//!   the buffer, so an operator still reads why an install failed after apid restarted, and
//!   apid holds no line longer than a request. The store enforces the byte budgets in the
//!   transaction that appends ([`AgentLogLimits::budget`]): every machine keeps its newest
//!   lines within its budget, and beyond the total the machine written least recently loses
//!   all its lines (a machine still talking keeps its lines, and no machine can hold more
//!   than its own share);
//! - each token (its MAC) may send so many requests a minute ([`AgentLogs::admit`]; the
//!   route answers 429 with `Retry-After` beyond it), which bounds the CPU and the database
//!   writes a flood costs;
//! - only so many lines per machine per minute are copied into apid's own log (the journal),
//!   with a count of what was left out, so a flood cannot flood the journal either
//!   ([`AgentLogs::journal`]).
//!
//! Only the rates live here, in memory: they are apid's policy, not data an operator reads,
//! and forgetting them on restart only gives each token a fresh burst. Why not a memory
//! buffer in front of the store as well: it would be a second copy of the same lines with its
//! own budgets, lost on restart, and a flood's cost is the per-token rate's to bound, not a
//! cache's.
//!
//! Nothing here may hold a lock across an await, or grow with anything an agent chooses
//! except within these bounds.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dragonfly_core::MacAddr;
use dragonfly_store::console::{ConsoleBudget, ConsoleLine};
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

impl From<ConsoleLine> for LogLine {
    fn from(l: ConsoleLine) -> Self {
        Self {
            received_at: l.received_at,
            line: l.line,
        }
    }
}

/// The budgets, from `[apid]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentLogLimits {
    /// Bytes kept per machine (each line counts its text and
    /// [`dragonfly_store::console::LINE_OVERHEAD`]).
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

impl AgentLogLimits {
    /// The byte budgets the store enforces when it appends.
    pub fn budget(&self) -> ConsoleBudget {
        ConsoleBudget {
            per_machine_bytes: self.per_machine_bytes,
            total_bytes: self.total_bytes,
        }
    }
}

/// Tokens whose request rate is tracked at most; past it, full (idle) buckets are dropped,
/// and if every one is busy a new MAC goes untracked rather than refused: the byte budgets
/// still hold, and a legitimate agent is never locked out by a table full of attackers.
/// Machines whose journal window is tracked at most, likewise (past it, windows over are
/// dropped, and with them the count of what they left out).
const MAX_TRACKED_MACS: usize = 100_000;

/// The journal sampling window.
const JOURNAL_WINDOW: Duration = Duration::from_secs(60);

/// The rates that bound the agents' console lines (see the module docs).
#[derive(Debug)]
pub struct AgentLogs {
    limits: AgentLogLimits,
    journal: Mutex<Journal>,
    rates: Mutex<HashMap<MacAddr, Bucket>>,
}

#[derive(Debug, Default)]
struct Journal {
    by_machine: HashMap<uuid::Uuid, JournalWindow>,
    /// The journal allowance of all machines together.
    total: Option<JournalWindow>,
}

#[derive(Debug, Clone, Copy)]
struct JournalWindow {
    started: Instant,
    logged: u32,
    suppressed: u64,
}

impl JournalWindow {
    fn new(now: Instant) -> Self {
        Self {
            started: now,
            logged: 0,
            suppressed: 0,
        }
    }

    fn over(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.started) >= JOURNAL_WINDOW
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// What the caller should copy into apid's own log, from [`AgentLogs::journal`].
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
    /// No requests seen yet, these limits.
    pub fn new(limits: AgentLogLimits) -> Self {
        Self {
            limits,
            journal: Mutex::default(),
            rates: Mutex::default(),
        }
    }

    /// The limits in force.
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

    /// Says which of `machine`'s `lines` (already cleaned) may go to apid's own log at
    /// `now`, within the per-machine and total allowances, and what earlier windows left out.
    pub fn journal(&self, machine: uuid::Uuid, lines: &[String], now: Instant) -> ToJournal {
        let mut j = self.journal.lock().unwrap_or_else(|p| p.into_inner());
        let j = &mut *j;
        if !j.by_machine.contains_key(&machine) && j.by_machine.len() >= MAX_TRACKED_MACS {
            j.by_machine.retain(|_, w| !w.over(now));
        }
        let mut out = ToJournal::default();
        let total = j.total.get_or_insert(JournalWindow::new(now));
        if total.over(now) {
            out.suppressed_total_before = total.suppressed;
            *total = JournalWindow::new(now);
        }
        let mine = j
            .by_machine
            .entry(machine)
            .or_insert(JournalWindow::new(now));
        if mine.over(now) {
            out.suppressed_before = mine.suppressed;
            *mine = JournalWindow::new(now);
        }
        for line in lines {
            if mine.logged >= self.limits.journal_lines_per_minute {
                mine.suppressed += 1;
                out.suppressed_now += 1;
            } else if total.logged >= self.limits.journal_lines_per_minute_total {
                total.suppressed += 1;
                out.suppressed_now += 1;
            } else {
                mine.logged += 1;
                total.logged += 1;
                out.lines.push(line.clone());
            }
        }
        out
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
        let t0 = Instant::now();
        let first = logs.journal(id(1), &lines(5, 1, "a"), t0);
        assert_eq!(first.lines.len(), 3);
        assert_eq!(first.suppressed_now, 2);
        assert_eq!(first.suppressed_before, 0);
        let second = logs.journal(id(1), &lines(5, 1, "b"), t0 + Duration::from_secs(30));
        assert!(second.lines.is_empty());
        assert_eq!(second.suppressed_now, 5);
        // Another machine has its own allowance, within the total (5 a minute).
        assert_eq!(logs.journal(id(2), &lines(1, 1, "c"), t0).lines.len(), 1);
        let over_total = logs.journal(id(3), &lines(3, 1, "d"), t0);
        assert_eq!(over_total.lines.len(), 1);
        assert_eq!(over_total.suppressed_now, 2);
        // The next window reports what the last one left out, and logs again.
        let third = logs.journal(id(1), &lines(1, 1, "c"), t0 + Duration::from_secs(61));
        assert_eq!(third.suppressed_before, 7);
        assert_eq!(third.suppressed_total_before, 2);
        assert_eq!(third.lines.len(), 1);
    }

    #[test]
    fn the_journal_windows_stay_bounded() {
        let logs = AgentLogs::new(limits());
        let t0 = Instant::now();
        for i in 0..MAX_TRACKED_MACS {
            logs.journal(id(i as u128), &lines(1, 1, "x"), t0);
        }
        // Full of windows still open: a new machine is tracked anyway (the table may exceed
        // the cap by the machines of one window, which the store's machine cap bounds).
        logs.journal(id(u128::MAX), &lines(1, 1, "y"), t0);
        // Once they are over, the next new machine clears them out.
        logs.journal(id(u128::MAX - 1), &lines(1, 1, "z"), t0 + JOURNAL_WINDOW);
        assert_eq!(logs.journal.lock().unwrap().by_machine.len(), 1);
    }
}
