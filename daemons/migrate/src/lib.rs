//! `dragonfly-migrate`: creates the database if needed and applies pending schema migrations.
//!
//! The one place the schema changes (a systemd oneshot every daemon orders itself after), so
//! two daemons of different releases never race to migrate the same file; daemons themselves
//! only check that the schema is the version they know.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use dragonfly_runtime::config::{DaemonConfig, Invalid};
use dragonfly_store::migrate::Migrated;
use dragonfly_store::{StoreError, migrate, open_connection};

/// `[migrate]` has no keys; the raw struct exists so unknown ones are refused.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMigrate {}

/// The (empty) validated `[migrate]` section.
#[derive(Debug)]
pub struct MigrateConfig;

impl DaemonConfig for MigrateConfig {
    const SECTION: &'static str = "migrate";
    type Raw = RawMigrate;
    fn validate(_: RawMigrate) -> Result<Self, Invalid> {
        Ok(MigrateConfig)
    }
}

/// Why the database could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("making {path} group-writable")]
    Mode {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Opens (creating if needed) the database at `path` and migrates it to the current schema.
pub fn run(path: &Path) -> Result<Migrated, MigrateError> {
    let mut conn = open_connection(path, true)?;
    // Every daemon's user (group `dragonfly`) writes this file, and SQLite gives the -wal and
    // -shm files the database's mode. SQLite creates it 0644 and a umask only removes bits,
    // so set 0660 explicitly, whatever umask we were started with.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(|source| {
        MigrateError::Mode {
            path: path.display().to_string(),
            source,
        }
    })?;
    Ok(migrate(&mut conn)?)
}
