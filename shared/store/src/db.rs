//! Opening connections the one right way, and running blocking SQLite work from async code.
//!
//! SQLite calls block, so every handle method goes through the crate-private [`Db::run`],
//! which executes a closure on tokio's blocking pool with a connection from a small pool.
//! Connections are cheap to keep and expensive to set up (pragmas, schema check), hence the
//! pool. Nothing here is public that names a connection: callers get typed handles
//! (`db.machines()`, `db.leases()`, and `auth()` on apid's own file) and never SQL.
//!
//! Two kinds of caller have no tokio runtime of their own: `dragonfly-apid create-admin`,
//! which runs (and drops privileges) before apid builds one, and test harnesses and tools
//! that are plain synchronous programs. They use [`BlockingDb`], which owns a small
//! current-thread runtime and drives the *same* async handles to completion — rather than a
//! second, synchronous copy of every handle method, which would be a second way to the same
//! rows. The oneshot migrator needs no handle at all: [`crate::migrate_file`] is synchronous.

use std::future::Future;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};

use crate::StoreError;
use crate::error::{Sql, open_error};
use crate::schema::{ApidAuth, Schema, Shared};

/// How long a connection waits for another process's write lock before failing.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens `path` with Dragonfly's connection settings. Does not create or migrate the schema
/// unless `create` (only the migrator creates files).
pub(crate) fn open_connection(path: &Path, create: bool) -> Result<Connection, StoreError> {
    let err = |e| open_error(path, e);
    let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    if create {
        flags |= OpenFlags::SQLITE_OPEN_CREATE;
    }
    let conn = Connection::open_with_flags(path, flags).map_err(err)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(err)?;
    // WAL is a property of the file, set once by the migrator; setting it again is a no-op.
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .map_err(err)?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(path = %path.display(), %mode, "database is not in WAL mode");
    }
    conn.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;")
        .map_err(err)?;
    Ok(conn)
}

/// A connection for schema `S`: opened with the settings above, version checked.
pub(crate) fn open_checked<S: Schema>(path: &Path) -> Result<Connection, StoreError> {
    let conn = open_connection(path, false)?;
    crate::migrate::check::<S>(&conn)?;
    Ok(conn)
}

/// Runs `f` inside a `BEGIN IMMEDIATE` transaction, committing on `Ok`.
///
/// Every write goes through here: taking the write lock up front means a transaction never
/// fails half-way when it first writes and finds another process holding the lock.
pub(crate) fn write<R>(
    conn: &mut Connection,
    f: impl FnOnce(&Transaction<'_>) -> Result<R, StoreError>,
) -> Result<R, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .sql()?;
    let out = f(&tx)?;
    tx.commit().sql()?;
    Ok(out)
}

/// Runs `f` like [`write`], with its commit on disk before this returns (`synchronous=FULL`
/// for this one transaction): for writes whose success is *acknowledged* to someone who will
/// not send them again, such as an agent's registration.
///
/// Every other write keeps `synchronous=NORMAL`: in WAL mode a commit then survives the
/// process crashing, but an OS crash or power loss can roll back the last transactions
/// before the WAL is synced (the database stays consistent). FULL syncs the WAL at each commit;
/// measured by `durable_registrations_cost` below (docs/security.md has the figures).
pub(crate) fn write_durable<R>(
    conn: &mut Connection,
    f: impl FnOnce(&Transaction<'_>) -> Result<R, StoreError>,
) -> Result<R, StoreError> {
    #[cfg(test)]
    let level = if tests::RELAXED.load(std::sync::atomic::Ordering::Relaxed) {
        "NORMAL"
    } else {
        "FULL"
    };
    #[cfg(not(test))]
    let level = "FULL";
    conn.pragma_update(None, "synchronous", level).sql()?;
    let out = write(conn, f);
    // Back to the connection's normal setting, whatever the outcome: a pooled connection
    // must not make every later write pay for a sync.
    let reset = conn.pragma_update(None, "synchronous", "NORMAL").sql();
    let out = out?;
    reset?;
    Ok(out)
}

/// A shareable handle on one database file for async code; cheap to clone.
///
/// `S` says which database it is ([`Shared`] unless named), and with it which handles exist:
/// `Db<Shared>` has [`machines`](Db::machines) and [`leases`](Db::leases); apid's
/// `Db<ApidAuth>` ([`crate::AuthDb`]) has `auth`.
pub struct Db<S: Schema = Shared> {
    inner: Arc<Inner>,
    schema: PhantomData<fn() -> S>,
}

struct Inner {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// At most [`MAX_IDLE`] pieces of database work at once in this process. Without it, a
    /// burst of requests (500 agents registering at once) opened a connection each and
    /// queued in SQLite's busy handler, whose sleeps grow to 100 ms and give up after
    /// [`BUSY_TIMEOUT`]: requests failed with "database is locked" while the lock sat idle
    /// between sleeps. Waiting here is fair and wakes as soon as a connection is free; only
    /// other processes' writers still meet the busy handler.
    permits: Arc<tokio::sync::Semaphore>,
}

/// Connections kept open when idle, and pieces of work run at once (`Inner::permits`).
const MAX_IDLE: usize = 8;

impl<S: Schema> Clone for Db<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            schema: PhantomData,
        }
    }
}

impl<S: Schema> std::fmt::Debug for Db<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("schema", &S::NAME)
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl Db<Shared> {
    /// Opens the shared database and checks its schema version; fails if it is not the one
    /// this build knows (the file is created and migrated only by `dragonfly-migrate`).
    pub async fn open(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        Self::open_as(path.into()).await
    }
}

impl<S: Schema> Db<S> {
    /// [`Db::open`] for any schema.
    pub(crate) async fn open_as(path: PathBuf) -> Result<Self, StoreError> {
        let p = path.clone();
        let conn = tokio::task::spawn_blocking(move || open_checked::<S>(&p))
            .await
            .map_err(StoreError::Worker)??;
        Ok(Self::with_connection(path, conn))
    }

    /// Opens without a runtime (the connection is opened on the calling thread).
    pub(crate) fn open_blocking(path: PathBuf) -> Result<Self, StoreError> {
        let conn = open_checked::<S>(&path)?;
        Ok(Self::with_connection(path, conn))
    }

    fn with_connection(path: PathBuf, conn: Connection) -> Self {
        Self {
            inner: Arc::new(Inner {
                path,
                idle: Mutex::new(vec![conn]),
                permits: Arc::new(tokio::sync::Semaphore::new(MAX_IDLE)),
            }),
            schema: PhantomData,
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// A trivial query through the pool: proves the file, the pool and the blocking threads
    /// all answer (daemons feed systemd's watchdog with it).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.run(|c| {
            c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                .sql()
                .map(drop)
        })
        .await
    }

    /// A connection of its own, outside the pool, for a long-lived thread (a group writer).
    pub(crate) fn dedicated_connection(&self) -> Result<Connection, StoreError> {
        open_checked::<S>(&self.inner.path)
    }

    /// Runs blocking database work on a pooled connection, on tokio's blocking pool.
    pub(crate) async fn run<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        let inner = self.inner.clone();
        // `None` only if the semaphore were closed, which nothing does.
        let permit = inner.permits.clone().acquire_owned().await.ok();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let pooled = inner.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let mut conn = match pooled {
                Some(c) => c,
                None => open_connection(&inner.path, false)?,
            };
            let out = f(&mut conn);
            // A connection left inside a transaction (a panic is caught by tokio, not here,
            // so this only guards against bugs) is dropped rather than reused.
            if conn.is_autocommit() {
                let mut idle = inner.idle.lock().unwrap_or_else(|p| p.into_inner());
                if idle.len() < MAX_IDLE {
                    idle.push(conn);
                }
            }
            out
        })
        .await
        .map_err(StoreError::Worker)?
    }
}

/// A [`Db`] for callers without a tokio runtime (see the module documentation): owns a
/// current-thread runtime and runs the async handles on it.
///
/// ```no_run
/// # fn main() -> Result<(), dragonfly_store::StoreError> {
/// let store = dragonfly_store::BlockingDb::open("/var/lib/dragonfly/dragonfly.db")?;
/// let machines = store.block_on(store.db().machines().count())?;
/// # Ok(()) }
/// ```
///
/// Must not be used from inside a tokio runtime: [`BlockingDb::block_on`] would panic there
/// (use the async [`Db`] instead).
#[derive(Debug)]
pub struct BlockingDb<S: Schema = Shared> {
    runtime: tokio::runtime::Runtime,
    db: Db<S>,
}

impl BlockingDb<Shared> {
    /// Opens the shared database (already migrated) for blocking use.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(StoreError::Runtime)?;
        let db = Db::open_blocking(path.into())?;
        Ok(Self { runtime, db })
    }
}

impl BlockingDb<ApidAuth> {
    /// Opens apid's own database for blocking use, creating and migrating it when needed
    /// (`dragonfly-apid create-admin`, before apid ever ran).
    pub fn create_or_open_auth(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(StoreError::Runtime)?;
        let path = path.into();
        crate::auth::create_file(&path)?;
        let db = Db::open_blocking(path)?;
        Ok(Self { runtime, db })
    }
}

impl<S: Schema> BlockingDb<S> {
    /// The async handle, to build the future [`BlockingDb::block_on`] runs.
    pub fn db(&self) -> &Db<S> {
        &self.db
    }

    /// Runs `f` (a handle call) to completion on this thread.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    use dragonfly_core::{HardwareReport, MacAddr};

    use super::*;
    use crate::testing::TestDb;

    /// Makes [`write_durable`] commit with NORMAL, for the measurement below only.
    pub(super) static RELAXED: AtomicBool = AtomicBool::new(false);
    /// Held by the tests that read or set [`RELAXED`], so they never see each other's setting.
    static SERIAL: Mutex<()> = Mutex::new(());

    #[test]
    fn durable_writes_sync_and_leave_the_connection_normal() {
        let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let t = TestDb::new();
        let mut conn = open_connection(&t.path, false).unwrap();
        let level = |c: &Connection| -> i64 {
            c.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap()
        };
        assert_eq!(level(&conn), 1, "NORMAL");
        let inside = write_durable(&mut conn, |tx| {
            tx.query_row("PRAGMA synchronous", [], |r| r.get::<_, i64>(0))
                .sql()
        })
        .unwrap();
        assert_eq!(inside, 2, "FULL while the durable write commits");
        assert_eq!(level(&conn), 1, "NORMAL again after");
        let failed: Result<(), StoreError> =
            write_durable(&mut conn, |_| Err(StoreError::NotFound { what: "x" }));
        assert!(failed.is_err());
        assert_eq!(level(&conn), 1, "NORMAL again after a failed write");
    }

    /// What `synchronous=FULL` costs an acknowledged registration, through the store API on
    /// this machine's disk. Prints the figures (docs/security.md quotes them); fails only if
    /// FULL is unaffordable for a rack booting at once (under 50 registrations/s).
    #[test]
    #[allow(clippy::print_stdout, reason = "the measurement is the point")]
    fn durable_registrations_cost() {
        const N: u32 = 200;
        let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let t = TestDb::new();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let rate = |base: u32| {
            let start = Instant::now();
            for i in base..base + N {
                let [_, a, b, c] = i.to_be_bytes();
                let report = HardwareReport {
                    macs: vec![MacAddr::new([0x02, 0, 0, a, b, c])],
                    ..Default::default()
                };
                rt.block_on(t.db.machines().register(report, jiff::Timestamp::now()))
                    .unwrap();
            }
            f64::from(N) / start.elapsed().as_secs_f64()
        };
        // Warm the pool and the file first.
        RELAXED.store(true, Ordering::Relaxed);
        rate(1_000_000);
        let normal = rate(0);
        RELAXED.store(false, Ordering::Relaxed);
        let full = rate(N);
        println!(
            "registrations through the store: NORMAL {normal:.0}/s, FULL {full:.0}/s \
             ({:.1} ms more each)",
            (1000.0 / full - 1000.0 / normal).max(0.0)
        );
        assert!(full >= 50.0, "FULL: {full:.0} registrations/s");
    }
}
