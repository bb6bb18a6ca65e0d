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
        source: rusqlite::Error,
    },
    /// The file's schema is newer than this build: an older daemon must not touch it.
    #[error(
        "database schema version {found} is newer than this build knows ({known}); upgrade Dragonfly"
    )]
    SchemaTooNew { found: i64, known: i64 },
    /// The file's schema is older than this build: migrations have not been applied.
    #[error(
        "database schema version {found} is older than this build needs ({known}); run dragonfly-migrate"
    )]
    SchemaBehind { found: i64, known: i64 },
    /// No row matched.
    #[error("{what} not found")]
    NotFound { what: &'static str },
    /// The row changed since the caller read it.
    #[error("resource version conflict: expected {expected}, current {current}")]
    Conflict { expected: i64, current: i64 },
    /// A hardware report matches more than one existing machine (by MAC or SMBIOS UUID).
    #[error("the report matches {} machines: {}", ids.len(), ids.join(", "))]
    Ambiguous { ids: Vec<String> },
    /// A unique value (user name, …) is already taken.
    #[error("{what} already exists")]
    AlreadyExists { what: &'static str },
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
    Sqlite(#[from] rusqlite::Error),
    /// The blocking worker running the query panicked or was cancelled.
    #[error("database worker failed")]
    Worker(#[source] tokio::task::JoinError),
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
