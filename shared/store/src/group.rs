//! The group writer: many small writes, one transaction per batch, an answer per write after
//! its commit.
//!
//! A daemon that must not answer before a write is durable (dhcpd's ACK names a lease a crash
//! must not forget; workflowd will acknowledge an agent's progress report the same way) cannot
//! afford one transaction per write: a commit costs far more than its rows. A [`GroupWriter`]
//! owns a thread and a connection of its own; callers queue `(operation, context)` pairs; the
//! thread takes whatever is queued (up to [`GroupConfig::max_batch`]), applies it in one
//! `BEGIN IMMEDIATE` transaction, commits, and only then hands each context to the completion
//! callback together with its operation's result — so the reply that waited for the commit
//! is sent by the callback, never before it. A batch is all or nothing: if it fails, every
//! context in it gets the error (and nothing of it was written).
//!
//! The queue is bounded ([`GroupConfig::max_queued`]): [`GroupWriter::try_submit`] answers
//! [`Rejected::Full`] at once when the store falls behind, so the caller chooses (drop a
//! request its client will retransmit, or [`GroupWriter::submit`] and wait for room) instead
//! of memory growing without bound. [`GroupWriter::shutdown`] closes the queue and waits while
//! the thread commits everything already queued and completes it.
//!
//! Which operations exist and what SQL they run is decided by the table module that creates
//! the writer (`db.leases().group_writer(…)`): this module knows no table, and must never let
//! a caller supply SQL.

use std::time::{Duration, Instant};

use dragonfly_core::Chain;
use jiff::Timestamp;
use rusqlite::Transaction;
use tokio::sync::mpsc;

use crate::db::write;
use crate::schema::Schema;
use crate::{Db, StoreError};

/// How a group writer batches and queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupConfig {
    /// At most this many operations per transaction.
    pub max_batch: usize,
    /// At most this many operations waiting for the writer; more are [`Rejected::Full`].
    pub max_queued: usize,
}

/// Why an operation was not queued; gives the operation and its context back.
#[derive(Debug)]
pub enum Rejected<T> {
    /// The queue holds [`GroupConfig::max_queued`] operations: the store is behind.
    Full(T),
    /// The writer has stopped (its thread is gone): nothing will be committed.
    Stopped(T),
}

impl<T> Rejected<T> {
    /// What was not queued.
    pub fn into_inner(self) -> T {
        match self {
            Self::Full(t) | Self::Stopped(t) => t,
        }
    }
}

/// What a writer did over its life, returned by [`GroupWriter::shutdown`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// Transactions attempted.
    pub batches: u64,
    /// Operations committed.
    pub committed: u64,
    /// Operations in batches that failed (their contexts got the error).
    pub failed: u64,
}

/// Applies one operation inside the batch's transaction (a table module's function).
pub(crate) type ApplyFn<Op, Out> = fn(&Transaction<'_>, &Op, Timestamp) -> Result<Out, StoreError>;

/// A running group writer; see the module documentation. `Op` is the table group's operation
/// type (e.g. [`crate::leases::LeaseOp`]), `Ctx` whatever the caller needs after the commit
/// (the reply to send, the event to publish).
///
/// Dropping it without [`GroupWriter::shutdown`] also closes the queue; the thread then
/// finishes what is queued on its own, and nobody learns how that went.
#[derive(Debug)]
pub struct GroupWriter<Op, Ctx> {
    name: &'static str,
    queue: mpsc::Sender<(Op, Ctx)>,
    thread: std::thread::JoinHandle<GroupStats>,
}

/// Failed batches are logged at most this often (with a count of those not logged).
const LOG_EVERY: Duration = Duration::from_secs(10);

impl<Op: Send + 'static, Ctx: Send + 'static> GroupWriter<Op, Ctx> {
    /// Opens the writer's connection and starts its thread, named `name`.
    pub(crate) async fn spawn<S, Out, F>(
        db: &Db<S>,
        name: &'static str,
        config: GroupConfig,
        apply: ApplyFn<Op, Out>,
        on_done: F,
    ) -> Result<Self, StoreError>
    where
        S: Schema,
        Out: Send + 'static,
        F: FnMut(Ctx, Result<Out, &StoreError>) + Send + 'static,
    {
        let db = db.clone();
        let conn = tokio::task::spawn_blocking(move || db.dedicated_connection())
            .await
            .map_err(StoreError::Worker)??;
        let (tx, rx) = mpsc::channel(config.max_queued.max(1));
        let max_batch = config.max_batch.max(1);
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(name, conn, rx, max_batch, apply, on_done))
            .map_err(|source| StoreError::WriterThread { name, source })?;
        Ok(Self {
            name,
            queue: tx,
            thread,
        })
    }

    /// Queues `op` unless the queue is full or the writer stopped; never waits.
    pub fn try_submit(&self, op: Op, ctx: Ctx) -> Result<(), Rejected<(Op, Ctx)>> {
        self.queue.try_send((op, ctx)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(item) => Rejected::Full(item),
            mpsc::error::TrySendError::Closed(item) => Rejected::Stopped(item),
        })
    }

    /// Queues `op`, waiting for room; fails only if the writer stopped.
    pub async fn submit(&self, op: Op, ctx: Ctx) -> Result<(), Rejected<(Op, Ctx)>> {
        self.queue
            .send((op, ctx))
            .await
            .map_err(|e| Rejected::Stopped(e.0))
    }

    /// Operations queued and not yet taken into a batch.
    pub fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// Closes the queue, lets the thread commit and complete everything already queued, and
    /// waits for it (on the blocking pool). Fails if the thread died (a completion panicked):
    /// what was still queued then was neither committed nor completed.
    pub async fn shutdown(self) -> Result<GroupStats, StoreError> {
        let Self {
            name,
            queue,
            thread,
        } = self;
        drop(queue);
        match tokio::task::spawn_blocking(move || thread.join()).await {
            Ok(Ok(stats)) => Ok(stats),
            Ok(Err(_panic)) => Err(StoreError::WriterStopped { name }),
            Err(e) => Err(StoreError::Worker(e)),
        }
    }
}

/// The writer thread's loop: until the queue is closed and empty.
fn run<Op, Ctx, Out>(
    name: &'static str,
    mut conn: rusqlite::Connection,
    mut rx: mpsc::Receiver<(Op, Ctx)>,
    max_batch: usize,
    apply: ApplyFn<Op, Out>,
    mut on_done: impl FnMut(Ctx, Result<Out, &StoreError>),
) -> GroupStats {
    let mut stats = GroupStats::default();
    let mut ops = Vec::with_capacity(max_batch);
    let mut ctxs = Vec::with_capacity(max_batch);
    let mut last_log: Option<Instant> = None;
    let mut unlogged = 0u64;
    while let Some((op, ctx)) = rx.blocking_recv() {
        ops.push(op);
        ctxs.push(ctx);
        while ops.len() < max_batch {
            match rx.try_recv() {
                Ok((op, ctx)) => {
                    ops.push(op);
                    ctxs.push(ctx);
                }
                Err(_) => break,
            }
        }
        let n = ops.len() as u64;
        let now = Timestamp::now();
        let result = write(&mut conn, |tx| {
            ops.iter()
                .map(|op| apply(tx, op, now))
                .collect::<Result<Vec<Out>, StoreError>>()
        });
        ops.clear();
        stats.batches += 1;
        match result {
            Ok(outs) => {
                stats.committed += n;
                for (ctx, out) in ctxs.drain(..).zip(outs) {
                    on_done(ctx, Ok(out));
                }
            }
            Err(e) => {
                stats.failed += n;
                if last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                    tracing::error!(
                        writer = name,
                        ops = n,
                        earlier_failed_batches = unlogged,
                        error = %Chain(&e),
                        "group commit failed; nothing of the batch was written"
                    );
                    last_log = Some(Instant::now());
                    unlogged = 0;
                } else {
                    unlogged += 1;
                }
                for ctx in ctxs.drain(..) {
                    on_done(ctx, Err(&e));
                }
            }
        }
    }
    stats
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::sync::mpsc as std_mpsc;

    use dragonfly_core::MacAddr;

    use super::*;
    use crate::leases::{Lease, LeaseOp, LeaseWrite};

    fn mac(n: u16) -> MacAddr {
        let [a, b] = n.to_be_bytes();
        MacAddr::new([0x52, 0x54, 0, 0x9e, a, b])
    }

    fn bind(n: u16) -> LeaseOp {
        let [a, b] = n.to_be_bytes();
        LeaseOp::Write(LeaseWrite::Bind {
            ip: Ipv4Addr::new(10, 9, a, b),
            mac: mac(n),
            reserved: false,
            expires_at: Timestamp::now() + jiff::SignedDuration::from_hours(1),
        })
    }

    async fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        crate::migrate_file(&path).unwrap();
        let db = Db::open(&path).await.unwrap();
        (dir, db)
    }

    /// Another process's write transaction: holds the write lock until dropped (the writer
    /// waits for it, up to the busy timeout).
    struct Lock(rusqlite::Connection);

    impl Lock {
        fn take(db: &Db) -> Self {
            let c = crate::db::open_connection(db.path(), false).unwrap();
            c.execute_batch("BEGIN IMMEDIATE").unwrap();
            Self(c)
        }
    }

    impl Drop for Lock {
        fn drop(&mut self) {
            self.0.execute_batch("COMMIT").unwrap();
        }
    }

    /// Until the writer has taken everything queued into a batch, and a little longer so it
    /// is waiting for the lock rather than still looking for more to batch.
    async fn until_taken<Op: Send + 'static, Ctx: Send + 'static>(w: &GroupWriter<Op, Ctx>) {
        while w.queued() > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    type Done = Result<Vec<Lease>, String>;

    #[tokio::test]
    async fn completes_each_write_after_its_commit() {
        let (_d, db) = db().await;
        let (tx, rx) = std_mpsc::channel::<(u16, Done, bool)>();
        let path = db.path().to_owned();
        let config = GroupConfig {
            max_batch: 16,
            max_queued: 1024,
        };
        let writer = db
            .leases()
            .group_writer(config, move |n: u16, r: Result<Vec<Lease>, &StoreError>| {
                // Another connection already sees the row: the commit came first.
                let c = crate::db::open_connection(&path, false).unwrap();
                let seen: i64 = c
                    .query_row(
                        "SELECT count(*) FROM dhcp_leases WHERE mac = ?1",
                        [mac(n).to_string()],
                        |r| r.get(0),
                    )
                    .unwrap();
                tx.send((n, r.map_err(|e| e.to_string()), seen == 1))
                    .unwrap();
            })
            .await
            .unwrap();
        for n in 0..200 {
            writer.submit(bind(n), n).await.unwrap();
        }
        let stats = writer.shutdown().await.unwrap();
        assert_eq!((stats.committed, stats.failed), (200, 0));
        let done: Vec<_> = rx.try_iter().collect();
        assert_eq!(done.len(), 200);
        for (i, (n, r, seen)) in done.into_iter().enumerate() {
            assert_eq!(usize::from(n), i, "completions in queue order");
            assert_eq!(r, Ok(Vec::new()));
            assert!(seen, "lease {n} was completed before it was visible");
        }
        assert_eq!(db.leases().all().await.unwrap().len(), 200);
    }

    #[tokio::test]
    async fn batches_what_queued_while_the_store_was_busy_and_drains_on_shutdown() {
        let (_d, db) = db().await;
        let (tx, rx) = std_mpsc::channel::<u16>();
        let config = GroupConfig {
            max_batch: 10,
            max_queued: 1024,
        };
        let writer = db
            .leases()
            .group_writer(config, move |n: u16, r: Result<Vec<Lease>, &StoreError>| {
                r.unwrap();
                tx.send(n).unwrap();
            })
            .await
            .unwrap();
        let lock = Lock::take(&db);
        writer.submit(bind(0), 0).await.unwrap();
        until_taken(&writer).await;
        for n in 1..35 {
            writer.submit(bind(n), n).await.unwrap();
        }
        // Shutdown is asked for while everything is still queued behind the lock.
        let stopping = tokio::spawn(writer.shutdown());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            rx.try_recv().is_err(),
            "nothing completes before its commit"
        );
        drop(lock);
        let stats = stopping.await.unwrap().unwrap();
        assert_eq!(stats.committed, 35);
        // The first batch holds what the writer took before it blocked (at least op 0), the
        // rest go ten at a time: never 35 transactions.
        assert!(stats.batches <= 5, "{stats:?}");
        assert_eq!(rx.try_iter().count(), 35);
    }

    #[tokio::test]
    async fn a_full_queue_says_so_at_once() {
        let (_d, db) = db().await;
        let config = GroupConfig {
            max_batch: 1,
            max_queued: 4,
        };
        let writer = db
            .leases()
            .group_writer(config, |_: u16, _: Result<Vec<Lease>, &StoreError>| {})
            .await
            .unwrap();
        let lock = Lock::take(&db);
        writer.try_submit(bind(0), 0).unwrap();
        until_taken(&writer).await;
        for n in 1..=4 {
            writer.try_submit(bind(n), n).unwrap();
        }
        let full = writer.try_submit(bind(5), 5).unwrap_err();
        assert!(matches!(full, Rejected::Full((_, 5))), "{full:?}");
        assert_eq!(writer.queued(), 4);
        drop(lock);
        assert_eq!(writer.shutdown().await.unwrap().committed, 5);
    }

    #[tokio::test]
    async fn a_failed_batch_is_reported_to_each_of_its_writes_and_the_writer_goes_on() {
        let (_d, db) = db().await;
        let c = crate::db::open_connection(db.path(), false).unwrap();
        c.execute_batch(
            "CREATE TRIGGER boom BEFORE INSERT ON dhcp_leases WHEN NEW.ip = '10.9.0.7' \
             BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
        )
        .unwrap();
        let (tx, rx) = std_mpsc::channel::<(u16, Done)>();
        let config = GroupConfig {
            max_batch: 8,
            max_queued: 64,
        };
        let writer = db
            .leases()
            .group_writer(config, move |n: u16, r: Result<Vec<Lease>, &StoreError>| {
                tx.send((n, r.map_err(|e| e.to_string()))).unwrap();
            })
            .await
            .unwrap();
        // 6, 7 and 8 in one batch (queued behind a lock); 7 fails, so all three fail.
        let lock = Lock::take(&db);
        writer.submit(bind(1), 1).await.unwrap();
        until_taken(&writer).await;
        for n in [6, 7, 8] {
            writer.submit(bind(n), n).await.unwrap();
        }
        drop(lock);
        let (first, r) = rx.recv().unwrap();
        assert_eq!((first, r), (1, Ok(Vec::new())));
        for want in [6, 7, 8] {
            let (n, r) = rx.recv().unwrap();
            assert_eq!(n, want);
            assert_eq!(r, Err("database error".to_owned()));
        }
        // The next batch is unaffected, and the sweep's result is what it deleted.
        writer
            .submit(
                LeaseOp::Write(LeaseWrite::Decline {
                    ip: Ipv4Addr::new(10, 9, 0, 9),
                    until: Timestamp::UNIX_EPOCH,
                }),
                9,
            )
            .await
            .unwrap();
        writer.submit(LeaseOp::SweepExpired, 10).await.unwrap();
        assert_eq!(rx.recv().unwrap(), (9, Ok(Vec::new())));
        let (n, swept) = rx.recv().unwrap();
        assert_eq!(n, 10);
        assert_eq!(
            swept.unwrap().iter().map(|l| l.ip).collect::<Vec<_>>(),
            [Ipv4Addr::new(10, 9, 0, 9)]
        );
        let stats = writer.shutdown().await.unwrap();
        assert_eq!((stats.committed, stats.failed), (3, 3));
        let macs: Vec<_> = db
            .leases()
            .all()
            .await
            .unwrap()
            .into_iter()
            .map(|l| l.mac)
            .collect();
        assert_eq!(macs, [Some(mac(1))]);
    }

    #[tokio::test]
    async fn a_dead_writer_is_reported_not_waited_for() {
        let (_d, db) = db().await;
        let config = GroupConfig {
            max_batch: 1,
            max_queued: 8,
        };
        let writer = db
            .leases()
            .group_writer(config, |n: u16, _: Result<Vec<Lease>, &StoreError>| {
                assert_ne!(n, 1, "the test's completion panics on 1");
            })
            .await
            .unwrap();
        writer.submit(bind(1), 1).await.unwrap();
        let mut n = 2;
        let stopped = loop {
            match writer.try_submit(bind(n), n) {
                Err(Rejected::Stopped(_)) => break true,
                Err(Rejected::Full(_)) => tokio::time::sleep(Duration::from_millis(5)).await,
                Ok(()) => {
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            if n > 1000 {
                break false;
            }
        };
        assert!(stopped, "submissions to a dead writer must fail");
        assert!(matches!(
            writer.shutdown().await,
            Err(StoreError::WriterStopped {
                name: "lease-writer"
            })
        ));
    }
}
