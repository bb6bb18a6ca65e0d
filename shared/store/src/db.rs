//! Opening connections the one right way, and running blocking SQLite work from async code.
//!
//! SQLite calls block, so async daemons go through [`Db::run`], which executes a closure on
//! tokio's blocking pool with a connection from a small pool. Connections are cheap to keep
//! and expensive to set up (pragmas, schema check), hence the pool.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};

use crate::StoreError;

/// How long a connection waits for another process's write lock before failing.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens `path` with Dragonfly's connection settings. Does not create or migrate the schema.
pub fn open_connection(path: &Path, create: bool) -> Result<Connection, StoreError> {
    let err = |source| StoreError::Open {
        path: path.to_owned(),
        source,
    };
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

/// Runs `f` inside a `BEGIN IMMEDIATE` transaction, committing on `Ok`.
///
/// Every write goes through here: taking the write lock up front means a transaction never
/// fails half-way when it first writes and finds another process holding the lock.
pub fn write<R>(
    conn: &mut Connection,
    f: impl FnOnce(&Transaction<'_>) -> Result<R, StoreError>,
) -> Result<R, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let out = f(&tx)?;
    tx.commit()?;
    Ok(out)
}

/// A shareable handle on the database for async code.
#[derive(Clone, Debug)]
pub struct Db {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

/// Connections kept open when idle.
const MAX_IDLE: usize = 8;

impl Db {
    /// Opens the database and checks its schema version; fails if it is not the one this
    /// build knows (see [`crate::check_schema`]).
    pub async fn open(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let path = path.into();
        let p = path.clone();
        let conn = tokio::task::spawn_blocking(move || {
            let conn = open_connection(&p, false)?;
            crate::check_schema(&conn)?;
            Ok::<_, StoreError>(conn)
        })
        .await
        .map_err(StoreError::Worker)??;
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                idle: Mutex::new(vec![conn]),
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// A trivial query through the pool: proves the file, the pool and the blocking threads
    /// all answer (daemons feed systemd's watchdog with it).
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.run(|c| {
            Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                .map(drop)?)
        })
        .await
    }

    /// Runs blocking database work on a pooled connection.
    pub async fn run<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&mut Connection) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
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
