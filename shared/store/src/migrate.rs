//! Versioned schema migrations, embedded in the binary.
//!
//! The version lives in SQLite's `user_version` header field. Migration `n` (1-based) takes the
//! schema from version `n-1` to `n`. Migrations are append-only: a released one is never
//! edited, because databases in the field have already run it.

use rusqlite::Connection;

use crate::StoreError;

/// The embedded migrations, in order.
const MIGRATIONS: &[(&str, &str)] = &[
    ("0001_initial", include_str!("migrations/0001_initial.sql")),
    ("0002_dhcp", include_str!("migrations/0002_dhcp.sql")),
];

/// The schema version this build reads and writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

fn user_version(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("PRAGMA user_version", [], |r| r.get(0))?)
}

/// Succeeds only if the file is at exactly [`SCHEMA_VERSION`]: daemons refuse a newer schema
/// (written by a newer release) and an older one (migrations not applied yet).
pub fn check_schema(conn: &Connection) -> Result<(), StoreError> {
    let found = user_version(conn)?;
    match found.cmp(&SCHEMA_VERSION) {
        std::cmp::Ordering::Equal => Ok(()),
        std::cmp::Ordering::Greater => Err(StoreError::SchemaTooNew {
            found,
            known: SCHEMA_VERSION,
        }),
        std::cmp::Ordering::Less => Err(StoreError::SchemaBehind {
            found,
            known: SCHEMA_VERSION,
        }),
    }
}

/// What [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    pub from: i64,
    pub to: i64,
    pub applied: Vec<&'static str>,
}

/// Applies every pending migration, each in its own `IMMEDIATE` transaction together with
/// the version bump, so a crash leaves the file at a consistent version.
pub fn migrate(conn: &mut Connection) -> Result<Migrated, StoreError> {
    let from = user_version(conn)?;
    if from > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found: from,
            known: SCHEMA_VERSION,
        });
    }
    let mut applied = Vec::new();
    for (i, (name, sql)) in MIGRATIONS.iter().enumerate() {
        let version = i as i64 + 1;
        if version <= from {
            continue;
        }
        crate::db::write(conn, |tx| {
            // Re-check under the write lock: another migrator may have run meanwhile.
            let now = tx.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))?;
            if now >= version {
                return Ok(());
            }
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", version)?;
            Ok(())
        })?;
        tracing::info!(migration = name, version, "applied migration");
        applied.push(*name);
    }
    Ok(Migrated {
        from,
        to: user_version(conn)?,
        applied,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::open_connection;

    #[test]
    fn migrates_once_and_checks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut conn = open_connection(&path, true).unwrap();
        assert!(matches!(
            check_schema(&conn),
            Err(StoreError::SchemaBehind { found: 0, .. })
        ));
        let m = migrate(&mut conn).unwrap();
        assert_eq!((m.from, m.to), (0, SCHEMA_VERSION));
        assert_eq!(m.applied.len(), MIGRATIONS.len());
        check_schema(&conn).unwrap();
        let again = migrate(&mut conn).unwrap();
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
    fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open_connection(&dir.path().join("t.db"), true).unwrap();
        migrate(&mut conn).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        assert!(matches!(
            check_schema(&conn),
            Err(StoreError::SchemaTooNew { .. })
        ));
        assert!(matches!(
            migrate(&mut conn),
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
