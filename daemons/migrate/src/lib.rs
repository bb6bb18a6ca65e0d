//! `dragonfly-migrate`: creates the database if needed and applies pending schema migrations.
//!
//! The one place the schema changes (a systemd oneshot every daemon orders itself after), so
//! two daemons of different releases never race to migrate the same file; daemons themselves
//! only check that the schema is the version they know.

use std::path::Path;

use dragonfly_runtime::config::{DaemonConfig, Invalid};
use dragonfly_store::{Migrated, StoreError};

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
}

/// Opens (creating if needed) the database at `path`, group-writable (0660: every daemon's
/// user, group `dragonfly`, writes it, whatever umask we were started with), and migrates it
/// to the current schema.
pub fn run(path: &Path) -> Result<Migrated, MigrateError> {
    Ok(dragonfly_store::migrate_file(path)?)
}
