//! Versioned schema migrations, embedded in the binary, and the one way a file is created.
//!
//! The version lives in SQLite's `user_version` header field; each [`Schema`] lists its
//! migrations. Migrations run only in the oneshot `dragonfly-migrate` (through
//! [`migrate_file`]), never in a daemon: daemons only check, when they open the file, that its
//! version is exactly the one they were built for ([`check`]), and refuse anything else.
//!
//! [`migrate_file`] is synchronous on purpose: its caller is a oneshot that runs before any
//! daemon and has no async runtime, and it holds one connection for a few transactions.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rusqlite::Connection;

use crate::StoreError;
use crate::db::{open_connection, write};
use crate::error::Sql;
use crate::schema::{Schema, Shared};

/// One embedded migration (see `Schema`).
#[derive(Debug)]
pub struct Migration {
    pub(crate) name: &'static str,
    pub(crate) sql: &'static str,
}

fn user_version(conn: &Connection) -> Result<i64, StoreError> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        .sql()
}

/// Succeeds only if the file is at exactly `S`'s version: daemons refuse a newer schema
/// (written by a newer release) and an older one (migrations not applied yet).
pub(crate) fn check<S: Schema>(conn: &Connection) -> Result<(), StoreError> {
    let found = user_version(conn)?;
    let known = S::VERSION;
    match found.cmp(&known) {
        std::cmp::Ordering::Equal => Ok(()),
        std::cmp::Ordering::Greater => Err(StoreError::SchemaTooNew {
            schema: S::NAME,
            found,
            known,
        }),
        std::cmp::Ordering::Less => Err(StoreError::SchemaBehind {
            schema: S::NAME,
            found,
            known,
        }),
    }
}

/// What [`migrate_file`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    pub from: i64,
    pub to: i64,
    pub applied: Vec<&'static str>,
}

/// Creates the shared database at `path` if it does not exist, gives it mode 0660 (whatever
/// the caller's umask), and applies every pending migration.
pub fn migrate_file(path: &Path) -> Result<Migrated, StoreError> {
    migrate_file_as::<Shared>(path)
}

/// [`migrate_file`] for any schema: the file gets `S`'s mode, then `S`'s migrations.
pub(crate) fn migrate_file_as<S: Schema>(path: &Path) -> Result<Migrated, StoreError> {
    let mode_error = |source| StoreError::Permissions {
        path: path.to_owned(),
        source,
    };
    // Create a new file with its mode from the start (less the umask), so a file meant for
    // one user is never readable by others, even empty, even for a moment.
    if !path.exists() {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(S::FILE_MODE)
            .open(path)
            .map_err(mode_error)?;
    }
    let mut conn = open_connection(path, true)?;
    // SQLite creates the file 0644 and a umask only removes bits, so the mode is set
    // explicitly; the -wal and -shm files SQLite creates later copy it.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(S::FILE_MODE))
        .map_err(mode_error)?;
    apply::<S>(&mut conn)
}

/// Applies every pending migration of `S`, each in its own `IMMEDIATE` transaction together
/// with the version bump, so a crash leaves the file at a consistent version.
pub(crate) fn apply<S: Schema>(conn: &mut Connection) -> Result<Migrated, StoreError> {
    let from = user_version(conn)?;
    if from > S::VERSION {
        return Err(StoreError::SchemaTooNew {
            schema: S::NAME,
            found: from,
            known: S::VERSION,
        });
    }
    let mut applied = Vec::new();
    for (i, m) in S::MIGRATIONS.iter().enumerate() {
        let version = i as i64 + 1;
        if version <= from {
            continue;
        }
        write(conn, |tx| {
            // Re-check under the write lock: another migrator may have run meanwhile.
            let now: i64 = tx
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .sql()?;
            if now >= version {
                return Ok(());
            }
            tx.execute_batch(m.sql).sql()?;
            tx.pragma_update(None, "user_version", version).sql()?;
            Ok(())
        })?;
        tracing::info!(
            schema = S::NAME,
            migration = m.name,
            version,
            "applied migration"
        );
        applied.push(m.name);
    }
    Ok(Migrated {
        from,
        to: user_version(conn)?,
        applied,
    })
}

/// The version `path` is at (0 for a file no migration has touched). Tests only.
#[cfg(any(test, feature = "testing"))]
pub(crate) fn file_version(path: &Path) -> Result<i64, StoreError> {
    user_version(&open_connection(path, false)?)
}

/// Forces `path`'s version, as a newer or an older release would have left it. Tests only.
#[cfg(any(test, feature = "testing"))]
pub(crate) fn set_file_version(path: &Path, version: i64) -> Result<(), StoreError> {
    open_connection(path, false)?
        .pragma_update(None, "user_version", version)
        .sql()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::SCHEMA_VERSION;
    use crate::schema::sealed::Sealed;

    #[test]
    fn migrates_once_and_checks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = open_connection(&path, true).unwrap();
        assert!(matches!(
            check::<Shared>(&conn),
            Err(StoreError::SchemaBehind { found: 0, .. })
        ));
        let m = migrate_file(&path).unwrap();
        assert_eq!((m.from, m.to), (0, SCHEMA_VERSION));
        assert_eq!(m.applied.len(), Shared::MIGRATIONS.len());
        check::<Shared>(&conn).unwrap();
        let again = migrate_file(&path).unwrap();
        assert!(again.applied.is_empty());
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let fk: i64 = conn
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(fk, 1);
    }

    #[test]
    fn creates_the_file_group_writable_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        migrate_file(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
    }

    #[test]
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        migrate_file(&path).unwrap();
        set_file_version(&path, SCHEMA_VERSION + 1).unwrap();
        assert_eq!(file_version(&path).unwrap(), SCHEMA_VERSION + 1);
        let conn = open_connection(&path, false).unwrap();
        assert!(matches!(
            check::<Shared>(&conn),
            Err(StoreError::SchemaTooNew { .. })
        ));
        assert!(matches!(
            migrate_file(&path),
            Err(StoreError::SchemaTooNew { .. })
        ));
    }

    #[test]
    fn open_does_not_create_a_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = open_connection(&dir.path().join("missing.db"), false).unwrap_err();
        assert!(err.to_string().contains("missing.db"), "{err}");
    }
}
