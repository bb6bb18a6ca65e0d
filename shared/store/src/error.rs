use std::path::PathBuf;

use dragonfly_core::lifecycle::IllegalTransition;

/// Everything a store operation can fail with that a caller may act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file could not be opened or configured.
    #[error("opening database {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: SqliteError,
    },
    /// The new database file's mode could not be set.
    #[error("setting the mode of {path}")]
    Permissions {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file's schema is newer than this build: an older daemon must not touch it.
    #[error(
        "{schema} database schema version {found} is newer than this build knows ({known}); upgrade Dragonfly"
    )]
    SchemaTooNew {
        schema: &'static str,
        found: i64,
        known: i64,
    },
    /// The file's schema is older than this build: migrations have not been applied.
    #[error(
        "{schema} database schema version {found} is older than this build needs ({known}); run dragonfly-migrate"
    )]
    SchemaBehind {
        schema: &'static str,
        found: i64,
        known: i64,
    },
    /// No row matched.
    #[error("{what} not found")]
    NotFound { what: &'static str },
    /// The row changed since the caller read it.
    #[error("resource version conflict: expected {expected}, current {current}")]
    Conflict { expected: i64, current: i64 },
    /// A hardware report claims MACs or an SMBIOS UUID owned by other machines: refused, the
    /// claims recorded as conflicts for an operator.
    #[error("the report claims what another machine owns: {}", claims.join("; "))]
    IdentityConflict { claims: Vec<String> },
    /// The reporting agent's token does not belong to its MAC's current boot session.
    #[error("the boot session of this token is not current")]
    SessionNotCurrent,
    /// A registration would create a machine, and the caller did not allow new ones now.
    #[error("new machines are not accepted now")]
    NewMachineRefused,
    /// A new row would exceed a configured cap.
    #[error("{what}: the limit of {max} is reached")]
    Full { what: &'static str, max: u64 },
    /// Approval asked for a machine that is not awaiting it.
    #[error("the machine is {state}, not awaiting approval")]
    NotPending { state: dragonfly_core::MachineState },
    /// A unique value (user name, …) is already taken.
    #[error("{what} already exists")]
    AlreadyExists { what: &'static str },
    /// The row is used by something active (a template by a running workflow).
    #[error("{what} is used by {by}")]
    InUse { what: &'static str, by: String },
    /// The change would leave no enabled administrator.
    #[error("at least one enabled administrator must remain")]
    LastAdministrator,
    /// SQLite names files by UTF-8 paths.
    #[error("{path} is not valid UTF-8")]
    PathNotUtf8 { path: PathBuf },
    /// The lifecycle refuses the state change.
    #[error(transparent)]
    IllegalTransition(#[from] IllegalTransition),
    /// A stored value could not be decoded: the file was changed outside Dragonfly.
    #[error("corrupt {what} in the database")]
    Corrupt {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// SQLite failed (I/O error, disk full, lock timeout …).
    #[error("database error")]
    Sqlite(#[source] SqliteError),
    /// The blocking worker running the query panicked or was cancelled.
    #[error("database worker failed")]
    Worker(#[source] tokio::task::JoinError),
    /// A group writer's thread could not be started.
    #[error("starting the {name} group writer's thread")]
    WriterThread {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A group writer's thread is gone (a completion panicked).
    #[error("the {name} group writer stopped")]
    WriterStopped { name: &'static str },
    /// A blocking caller's private runtime could not be built.
    #[error("starting a runtime for blocking store access")]
    Runtime(#[source] std::io::Error),
}

impl StoreError {
    pub(crate) fn corrupt(
        what: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self::Corrupt {
            what,
            source: Box::new(source),
        }
    }
}

/// What SQLite said, opaque: the SQL library is private to this crate, so no caller can match
/// on (or construct) its error type; the message and cause chain are all it needs to log.
#[derive(Debug)]
pub struct SqliteError(rusqlite::Error);

impl std::fmt::Display for SqliteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SqliteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// `?` for SQLite results inside the crate. A `From<rusqlite::Error>` impl on [`StoreError`]
/// would be public and name the private SQL library in this crate's API, so the conversion is
/// spelled out instead: `stmt.execute(..).sql()?`.
pub(crate) trait Sql<T> {
    fn sql(self) -> Result<T, StoreError>;
}

impl<T> Sql<T> for rusqlite::Result<T> {
    fn sql(self) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::Sqlite(SqliteError(e)))
    }
}

pub(crate) fn open_error(path: &std::path::Path, e: rusqlite::Error) -> StoreError {
    StoreError::Open {
        path: path.to_owned(),
        source: SqliteError(e),
    }
}
