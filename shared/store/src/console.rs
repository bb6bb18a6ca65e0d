//! The agents' console lines, kept per machine under byte budgets: what an operator reads to
//! learn why an install failed, even after apid restarted.
//!
//! The lines come from `POST /api/agent/log`, which anyone holding a boot token can call, so
//! this table is attacker-fed. It must never grow with anything an agent chooses except within
//! the budgets its caller passes ([`ConsoleBudget`], apid's `[apid] agent_log_bytes_*`), and
//! every [`Console::append`] enforces them in the same transaction that adds the lines:
//! - a machine keeps the newest lines that fit its budget, its oldest go first; a line larger
//!   than the whole budget is not kept;
//! - all machines together keep at most the total budget; beyond it the machine written least
//!   recently loses all its lines (a machine still talking keeps its lines, and no machine can
//!   hold more than its own share), the machine being written never;
//! - every line costs its UTF-8 bytes plus [`LINE_OVERHEAD`], so a flood of empty lines is
//!   bounded in rows as well as in bytes.
//!
//! These are the guarantees apid's in-memory buffer gave, kept exactly: what is kept for a
//! machine after any sequence of appends is the longest run of its newest lines whose cost
//! fits its budget. Rate limits (per token, and on what reaches the journal) are apid's, not
//! the store's. Lines are written with `synchronous=NORMAL`: an OS crash may lose the last
//! few, which a console log can afford; a commit survives apid itself crashing.
//!
//! Ids only grow (`AUTOINCREMENT`), across machines and deletions, so a reader that
//! remembers the last id it saw reads what came after with [`Console::after`].

use dragonfly_core::MachineId;
use jiff::Timestamp;
use rusqlite::{Connection, Transaction, params};

use crate::db::write;
use crate::error::Sql;
use crate::schema::Shared;
use crate::time::{from_column, to_column};
use crate::{Db, StoreError};

impl Db<Shared> {
    /// The agents' console lines.
    pub fn console(&self) -> Console<'_> {
        Console { db: self }
    }
}

/// The `agent_console` tables: see [`Db::console`].
#[derive(Debug, Clone, Copy)]
pub struct Console<'a> {
    db: &'a Db<Shared>,
}

/// What a kept line costs against the budgets beyond its text: roughly what its row and its
/// index entry take in the file (the machine id twice, the id, the time, the cost).
pub const LINE_OVERHEAD: usize = 96;

/// What `line` costs against the budgets.
pub fn cost(line: &str) -> usize {
    line.len() + LINE_OVERHEAD
}

/// The budgets an append enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsoleBudget {
    /// Bytes kept per machine.
    pub per_machine_bytes: usize,
    /// Bytes kept for all machines together; at least `per_machine_bytes` (if less, the
    /// machine being written may still keep its own budget's worth).
    pub total_bytes: usize,
}

/// One kept line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleLine {
    /// Grows with every line stored, of any machine.
    pub id: i64,
    /// When apid received it.
    pub received_at: Timestamp,
    pub line: String,
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Appended {
    /// Lines of the batch now kept.
    pub kept: usize,
    /// Lines of the batch not kept: larger than the budget, or pushed out by the batch's own
    /// newer lines.
    pub dropped: usize,
    /// Older lines of this machine deleted to make room.
    pub trimmed: usize,
    /// Other machines whose lines were all deleted for the total budget.
    pub evicted_machines: usize,
}

/// How much the table holds, as counted against the budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConsoleUsage {
    pub bytes: u64,
    /// Machines with a row (written and not evicted since), lines or not.
    pub machines: u64,
}

impl Console<'_> {
    /// Keeps `lines` (already cleaned by the caller) as `machine`'s newest, received at
    /// `received_at`, and trims to `budget` in the same transaction (see the module
    /// documentation). [`StoreError::NotFound`] if the machine does not exist.
    pub async fn append(
        self,
        machine: MachineId,
        lines: Vec<String>,
        received_at: Timestamp,
        budget: ConsoleBudget,
    ) -> Result<Appended, StoreError> {
        self.db
            .run(move |c| {
                write(c, |tx| {
                    append(tx, &machine.0.to_string(), &lines, received_at, budget)
                })
            })
            .await
    }

    /// `machine`'s newest `n` lines, oldest first.
    pub async fn tail(self, machine: MachineId, n: usize) -> Result<Vec<ConsoleLine>, StoreError> {
        self.db
            .run(move |c| {
                let mut lines = read(
                    c,
                    "SELECT id, received_at_ms, line FROM agent_console \
                     WHERE machine_id = ?1 AND id < ?3 ORDER BY id DESC LIMIT ?2",
                    &machine,
                    n,
                    i64::MAX,
                )?;
                lines.reverse();
                Ok(lines)
            })
            .await
    }

    /// At most `limit` of `machine`'s lines whose id is greater than `after`, oldest first.
    pub async fn after(
        self,
        machine: MachineId,
        after: i64,
        limit: usize,
    ) -> Result<Vec<ConsoleLine>, StoreError> {
        self.db
            .run(move |c| {
                read(
                    c,
                    "SELECT id, received_at_ms, line FROM agent_console \
                     WHERE machine_id = ?1 AND id > ?3 ORDER BY id LIMIT ?2",
                    &machine,
                    limit,
                    after,
                )
            })
            .await
    }

    /// What all machines' lines cost together, and how many machines have a row.
    pub async fn usage(self) -> Result<ConsoleUsage, StoreError> {
        self.db
            .run(|c| {
                c.query_row(
                    "SELECT COALESCE(SUM(bytes), 0), COUNT(*) FROM agent_console_machines",
                    [],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)),
                )
                .sql()
                .map(|(bytes, machines)| ConsoleUsage {
                    // Sums and counts of non-negative columns.
                    bytes: bytes.unsigned_abs(),
                    machines: machines.unsigned_abs(),
                })
            })
            .await
    }
}

/// Converts a count to SQLite's integer, saturating (a budget beyond `i64::MAX` is no budget).
fn int(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Runs a read of one machine's lines: `?1` the machine, `?2` the limit, `?3` the id bound.
fn read(
    c: &Connection,
    sql: &str,
    machine: &MachineId,
    limit: usize,
    bound: i64,
) -> Result<Vec<ConsoleLine>, StoreError> {
    let mut stmt = c.prepare_cached(sql).sql()?;
    let mut rows = stmt
        .query(params![machine.0.to_string(), int(limit), bound])
        .sql()?;
    let mut out = Vec::new();
    while let Some(r) = rows.next().sql()? {
        out.push(ConsoleLine {
            id: r.get(0).sql()?,
            received_at: from_column(r.get(1).sql()?)?,
            line: r.get(2).sql()?,
        });
    }
    Ok(out)
}

fn append(
    tx: &Transaction<'_>,
    machine: &str,
    lines: &[String],
    received_at: Timestamp,
    budget: ConsoleBudget,
) -> Result<Appended, StoreError> {
    let per_machine = int(budget.per_machine_bytes);
    let total = int(budget.total_bytes);
    // Mark the write first: it is also the check that the machine exists (a machine deleted
    // meanwhile gets no lines, rather than a foreign-key failure).
    let marked = tx
        .prepare_cached(
            "INSERT INTO agent_console_machines (machine_id, bytes, last_write) \
             SELECT ?1, 0, (SELECT COALESCE(MAX(last_write), 0) + 1 FROM agent_console_machines) \
             WHERE EXISTS (SELECT 1 FROM machines WHERE id = ?1) \
             ON CONFLICT (machine_id) DO UPDATE SET last_write = excluded.last_write",
        )
        .sql()?
        .execute([machine])
        .sql()?;
    if marked == 0 {
        return Err(StoreError::NotFound { what: "machine" });
    }
    let mut bytes: i64 = tx
        .prepare_cached("SELECT bytes FROM agent_console_machines WHERE machine_id = ?1")
        .sql()?
        .query_row([machine], |r| r.get(0))
        .sql()?;

    // What is kept is the longest run of newest lines that fits the budget (a line larger than
    // the budget is never kept). Only the batch's lines in that run are written: a batch that
    // overflows the budget on its own never writes the lines it would delete again at once.
    let fits: Vec<(&str, i64)> = lines
        .iter()
        .map(|l| (l.as_str(), int(cost(l))))
        .filter(|(_, c)| *c <= per_machine)
        .collect();
    let mut start = fits.len();
    let mut run = 0i64;
    while start > 0 && run + fits[start - 1].1 <= per_machine {
        run += fits[start - 1].1;
        start -= 1;
    }
    let mut out = Appended {
        kept: fits.len() - start,
        dropped: lines.len() - (fits.len() - start),
        ..Appended::default()
    };

    // Make room among the machine's older lines, oldest first.
    if start > 0 {
        // The batch alone filled the budget: none of the older lines is in the run.
        out.trimmed = tx
            .prepare_cached("DELETE FROM agent_console WHERE machine_id = ?1")
            .sql()?
            .execute([machine])
            .sql()?;
        bytes = 0;
    } else if bytes + run > per_machine {
        let excess = bytes + run - per_machine;
        let mut freed = 0i64;
        let mut last = None;
        {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT id, cost FROM agent_console WHERE machine_id = ?1 ORDER BY id",
                )
                .sql()?;
            let mut rows = stmt.query([machine]).sql()?;
            while freed < excess {
                let Some(r) = rows.next().sql()? else { break };
                freed += r.get::<_, i64>(1).sql()?;
                last = Some(r.get::<_, i64>(0).sql()?);
            }
        }
        if let Some(last) = last {
            out.trimmed = tx
                .prepare_cached("DELETE FROM agent_console WHERE machine_id = ?1 AND id <= ?2")
                .sql()?
                .execute(params![machine, last])
                .sql()?;
        }
        bytes -= freed;
    }

    {
        let mut insert = tx
            .prepare_cached(
                "INSERT INTO agent_console (machine_id, received_at_ms, line, cost) \
                 VALUES (?1, ?2, ?3, ?4)",
            )
            .sql()?;
        let at = to_column(received_at);
        for (line, c) in &fits[start..] {
            insert.execute(params![machine, at, line, c]).sql()?;
        }
    }
    tx.prepare_cached("UPDATE agent_console_machines SET bytes = ?2 WHERE machine_id = ?1")
        .sql()?
        .execute(params![machine, bytes + run])
        .sql()?;

    // The total: whole machines, least recently written first, never the one just written.
    let mut all: i64 = tx
        .prepare_cached("SELECT COALESCE(SUM(bytes), 0) FROM agent_console_machines")
        .sql()?
        .query_row([], |r| r.get(0))
        .sql()?;
    while all > total {
        let victim: Option<(String, i64)> = {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT machine_id, bytes FROM agent_console_machines \
                     WHERE machine_id <> ?1 ORDER BY last_write LIMIT 1",
                )
                .sql()?;
            let mut rows = stmt.query([machine]).sql()?;
            match rows.next().sql()? {
                Some(r) => Some((r.get(0).sql()?, r.get(1).sql()?)),
                None => None,
            }
        };
        let Some((victim, victim_bytes)) = victim else {
            break;
        };
        tx.prepare_cached("DELETE FROM agent_console WHERE machine_id = ?1")
            .sql()?
            .execute([&victim])
            .sql()?;
        tx.prepare_cached("DELETE FROM agent_console_machines WHERE machine_id = ?1")
            .sql()?
            .execute([&victim])
            .sql()?;
        all -= victim_bytes;
        out.evicted_machines += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use dragonfly_core::{HardwareReport, MacAddr};

    use super::*;
    use crate::testing::TestDb;

    fn budget() -> ConsoleBudget {
        ConsoleBudget {
            per_machine_bytes: 10 * 1024,
            total_bytes: 30 * 1024,
        }
    }

    fn lines(n: usize, len: usize, tag: &str) -> Vec<String> {
        (0..n)
            .map(|i| format!("{tag}{i:05}{}", "x".repeat(len)))
            .collect()
    }

    async fn machines(t: &TestDb, n: u8) -> Vec<MachineId> {
        let mut out = Vec::new();
        for i in 0..n {
            let report = HardwareReport {
                macs: vec![MacAddr::new([0x02, 0, 0, 0, 0, i])],
                ..Default::default()
            };
            let r =
                t.db.machines()
                    .register(report, Timestamp::now())
                    .await
                    .unwrap();
            out.push(r.machine().id);
        }
        out
    }

    async fn all(t: &TestDb, m: MachineId) -> Vec<ConsoleLine> {
        t.db.console().tail(m, usize::MAX).await.unwrap()
    }

    /// The per-machine sums agree with the lines, and the usage with the sums.
    async fn consistent(t: &TestDb) -> u64 {
        let (lines, summary): (i64, i64) =
            t.db.run(|c| {
                c.query_row(
                    "SELECT (SELECT COALESCE(SUM(cost), 0) FROM agent_console), \
                            (SELECT COALESCE(SUM(bytes), 0) FROM agent_console_machines)",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .sql()
            })
            .await
            .unwrap();
        assert_eq!(lines, summary, "the per-machine byte counts drifted");
        let usage = t.db.console().usage().await.unwrap();
        assert_eq!(usage.bytes, u64::try_from(lines).unwrap());
        usage.bytes
    }

    #[tokio::test]
    async fn a_machine_keeps_its_newest_lines_within_its_budget() {
        let t = TestDb::new();
        let m = machines(&t, 1).await[0];
        let now = Timestamp::now();
        for batch in 0..30 {
            // Small batches (older lines trimmed) and one that overflows the budget alone.
            let n = if batch == 10 { 100 } else { 7 };
            t.db.console()
                .append(m, lines(n, 100, &format!("b{batch}-")), now, budget())
                .await
                .unwrap();
            let bytes = consistent(&t).await;
            assert!(bytes <= 10 * 1024, "{bytes}");
        }
        let kept = all(&t, m).await;
        assert!(kept.last().unwrap().line.starts_with("b29-00006"));
        // In order, the newest run, and one more older line would not have fitted.
        assert!(kept.windows(2).all(|w| w[0].id < w[1].id));
        let bytes: usize = kept.iter().map(|l| cost(&l.line)).sum();
        assert!(bytes + cost(&kept[0].line) > 10 * 1024);
        let names: Vec<_> = kept.iter().map(|l| l.line.trim_end_matches('x')).collect();
        let mut expected: Vec<String> = (0..30)
            .flat_map(|b| (0..if b == 10 { 100 } else { 7 }).map(move |i| format!("b{b}-{i:05}")))
            .collect();
        expected.drain(..expected.len() - names.len());
        assert_eq!(names, expected);
    }

    #[tokio::test]
    async fn a_batch_larger_than_the_budget_replaces_everything_older() {
        let t = TestDb::new();
        let m = machines(&t, 1).await[0];
        let tight = ConsoleBudget {
            per_machine_bytes: 100 + 2 * LINE_OVERHEAD,
            total_bytes: 10_000,
        };
        let c = t.db.console();
        c.append(m, vec!["old".into()], Timestamp::now(), tight)
            .await
            .unwrap();
        // "a"×90 and "b"×50 do not fit together: only "b" is kept, and "old" goes although
        // it would fit beside "b" (it is older than "a", which did not fit).
        let r = c
            .append(
                m,
                vec!["a".repeat(90), "b".repeat(50)],
                Timestamp::now(),
                tight,
            )
            .await
            .unwrap();
        assert_eq!((r.kept, r.dropped, r.trimmed), (1, 1, 1));
        let kept = all(&t, m).await;
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].line, "b".repeat(50));
        consistent(&t).await;
    }

    #[tokio::test]
    async fn a_line_larger_than_the_budget_is_not_kept() {
        let t = TestDb::new();
        let m = machines(&t, 1).await[0];
        let small = ConsoleBudget {
            per_machine_bytes: 200,
            total_bytes: 200,
        };
        let r =
            t.db.console()
                .append(
                    m,
                    vec!["y".repeat(500), "ok".into()],
                    Timestamp::now(),
                    small,
                )
                .await
                .unwrap();
        assert_eq!((r.kept, r.dropped), (1, 1));
        assert_eq!(all(&t, m).await.len(), 1);
        assert_eq!(consistent(&t).await, u64::try_from(cost("ok")).unwrap());
    }

    #[tokio::test]
    async fn the_total_evicts_whole_machines_written_least_recently() {
        let t = TestDb::new();
        let ms = machines(&t, 21).await;
        let c = t.db.console();
        let now = Timestamp::now();
        // A legitimate machine speaks, then many others fill the total.
        c.append(ms[0], lines(5, 50, "legit"), now, budget())
            .await
            .unwrap();
        for m in &ms[1..=10] {
            c.append(*m, lines(100, 200, "flood"), now, budget())
                .await
                .unwrap();
            assert!(consistent(&t).await <= 30 * 1024);
        }
        // At most three machines' worth fits: the quietest (the first included) went whole.
        assert!(c.usage().await.unwrap().machines <= 3);
        assert!(all(&t, ms[0]).await.is_empty());
        assert!(all(&t, ms[1]).await.is_empty());
        assert!(!all(&t, ms[10]).await.is_empty());
        // A machine that keeps talking keeps its lines while others flood.
        c.append(ms[0], lines(5, 50, "legit"), now, budget())
            .await
            .unwrap();
        for m in &ms[11..=20] {
            c.append(ms[0], lines(1, 50, "still"), now, budget())
                .await
                .unwrap();
            c.append(*m, lines(100, 200, "flood"), now, budget())
                .await
                .unwrap();
        }
        assert!(
            all(&t, ms[0])
                .await
                .iter()
                .any(|l| l.line.starts_with("still"))
        );
        assert!(consistent(&t).await <= 30 * 1024);
    }

    #[tokio::test]
    async fn readers_follow_by_id_in_order() {
        let t = TestDb::new();
        let ms = machines(&t, 2).await;
        let c = t.db.console();
        let t0: Timestamp = "2026-12-01T10:00:00.123Z".parse().unwrap();
        c.append(ms[0], lines(3, 1, "a"), t0, budget())
            .await
            .unwrap();
        c.append(ms[1], lines(2, 1, "other"), t0, budget())
            .await
            .unwrap();
        c.append(ms[0], lines(2, 1, "b"), t0, budget())
            .await
            .unwrap();
        let every = all(&t, ms[0]).await;
        assert_eq!(
            every.iter().map(|l| &l.line[..6]).collect::<Vec<_>>(),
            ["a00000", "a00001", "a00002", "b00000", "b00001"]
        );
        assert!(every.iter().all(|l| l.received_at == t0));
        let tail = c.tail(ms[0], 2).await.unwrap();
        assert_eq!(tail, every[3..]);
        let after = c.after(ms[0], every[1].id, 2).await.unwrap();
        assert_eq!(after, every[2..4]);
        assert!(c.after(ms[0], every[4].id, 10).await.unwrap().is_empty());
        // Ids keep growing after the newest lines are deleted (their machine deleted whole).
        let top = every[4].id;
        let gone = ms[0].0.to_string();
        t.db.run(move |c| {
            c.execute("DELETE FROM machines WHERE id = ?1", [gone])
                .sql()
        })
        .await
        .unwrap();
        c.append(ms[1], lines(1, 1, "new"), t0, budget())
            .await
            .unwrap();
        assert!(all(&t, ms[1]).await.last().unwrap().id > top);
    }

    #[tokio::test]
    async fn an_unknown_or_deleted_machine_gets_no_lines() {
        let t = TestDb::new();
        let unknown = MachineId(uuid::Uuid::from_u128(7));
        assert!(matches!(
            t.db.console()
                .append(unknown, lines(1, 1, "x"), Timestamp::now(), budget())
                .await,
            Err(StoreError::NotFound { what: "machine" })
        ));
        let m = machines(&t, 1).await[0];
        t.db.console()
            .append(m, lines(3, 10, "x"), Timestamp::now(), budget())
            .await
            .unwrap();
        t.db.run(move |c| {
            c.execute("DELETE FROM machines WHERE id = ?1", [m.0.to_string()])
                .sql()
        })
        .await
        .unwrap();
        assert!(all(&t, m).await.is_empty());
        assert_eq!(consistent(&t).await, 0);
        assert_eq!(t.db.console().usage().await.unwrap().machines, 0);
    }

    /// The in-memory buffer apid had, as the reference: line by line, the oldest out first,
    /// then whole machines least recently written first.
    #[derive(Default)]
    struct Model {
        machines: Vec<(usize, std::collections::VecDeque<String>)>,
        order: Vec<usize>,
    }

    impl Model {
        fn push(&mut self, m: usize, lines: &[String], b: ConsoleBudget) {
            self.order.retain(|x| *x != m);
            self.order.push(m);
            let i = match self.machines.iter().position(|(x, _)| *x == m) {
                Some(i) => i,
                None => {
                    self.machines.push((m, Default::default()));
                    self.machines.len() - 1
                }
            };
            let kept = &mut self.machines[i].1;
            for l in lines {
                if cost(l) > b.per_machine_bytes {
                    continue;
                }
                while kept.iter().map(|k| cost(k)).sum::<usize>() + cost(l) > b.per_machine_bytes {
                    kept.pop_front();
                }
                kept.push_back(l.clone());
            }
            let bytes = |ms: &Vec<(usize, std::collections::VecDeque<String>)>| {
                ms.iter()
                    .flat_map(|(_, k)| k.iter().map(|l| cost(l)))
                    .sum::<usize>()
            };
            while bytes(&self.machines) > b.total_bytes {
                let victim = self.order.remove(0);
                self.machines.retain(|(x, _)| *x != victim);
            }
        }

        fn lines(&self, m: usize) -> Vec<String> {
            self.machines
                .iter()
                .find(|(x, _)| *x == m)
                .map(|(_, k)| k.iter().cloned().collect())
                .unwrap_or_default()
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

        /// Any sequence of appends keeps exactly what the memory buffer kept.
        #[test]
        fn appends_keep_what_the_memory_buffer_kept(
            appends in proptest::collection::vec(
                (0..4usize, proptest::collection::vec(0..400usize, 0..12)),
                1..25,
            )
        ) {
            let b = ConsoleBudget { per_machine_bytes: 1_000, total_bytes: 2_500 };
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let t = TestDb::new();
            let ms = rt.block_on(machines(&t, 4));
            let mut model = Model::default();
            for (n, (m, lens)) in appends.iter().enumerate() {
                let lines: Vec<String> = lens
                    .iter()
                    .enumerate()
                    .map(|(i, len)| format!("{n}.{i}:{}", "z".repeat(*len)))
                    .collect();
                model.push(*m, &lines, b);
                rt.block_on(t.db.console().append(ms[*m], lines, Timestamp::now(), b)).unwrap();
                for (i, id) in ms.iter().enumerate() {
                    let stored: Vec<String> = rt
                        .block_on(all(&t, *id))
                        .into_iter()
                        .map(|l| l.line)
                        .collect();
                    proptest::prop_assert_eq!(stored, model.lines(i), "machine {} after append {}", i, n);
                }
                rt.block_on(consistent(&t));
            }
        }
    }
}
