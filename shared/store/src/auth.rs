//! apid's own database ([`AuthDb`]): users, browser sessions and API tokens.
//!
//! These rows are the keys to everything Dragonfly does, so they live in a file of their own,
//! mode 0600 in a 0700 directory owned by apid's user (`/var/lib/dragonfly-apid/auth.db`), and
//! not in the database every daemon shares: a bug in dhcpd or ipxed, which parse hostile
//! packets, must not be able to read a password hash or write a session. The shared store is
//! for machines, leases and workflows, which several daemons need; credentials are apid's
//! alone. Because only apid opens this file, apid creates and migrates it itself
//! ([`AuthDb::create_or_open`]) rather than `dragonfly-migrate`, which runs as another user.
//!
//! Earlier releases kept these tables in the shared file. [`AuthDb::import_from_shared`]
//! copies their rows here once (recorded in `meta`), then deletes them from the shared file
//! with `secure_delete` on, so no hash or token lingers there; the empty tables stay, unused,
//! until a later migration drops them.
//!
//! Secrets are never stored: sessions and tokens are looked up by the SHA-256 of their secret
//! (computed by the caller), and passwords are stored as the caller's Argon2id PHC string.
//! This module only keeps rows; hashing and policy live in apid.

use std::path::{Path, PathBuf};

use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use crate::db::write;
use crate::error::Sql;
use crate::schema::ApidAuth;
use crate::time::{from_column, from_column_opt, to_column, to_column_opt};
use crate::{Db, StoreError};

/// apid's own database of operators and their credentials (see the module documentation).
pub type AuthDb = Db<ApidAuth>;

/// What [`AuthDb::import_from_shared`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Imported {
    /// Rows copied into apid's file this time (0 when the import had already happened).
    pub users: u64,
    pub sessions: u64,
    pub api_tokens: u64,
    /// Rows deleted from the shared file (left there by an import that was interrupted, or
    /// written by an older apid after it).
    pub purged: u64,
}

/// Creates `path`'s directory (0700) if missing, then the file (0600) if missing, and applies
/// the schema's migrations; blocking.
pub(crate) fn create_file(path: &Path) -> Result<(), StoreError> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
        && !dir.exists()
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| StoreError::Permissions {
                path: dir.to_owned(),
                source,
            })?;
    }
    crate::migrate::migrate_file_as::<ApidAuth>(path)?;
    Ok(())
}

impl Db<ApidAuth> {
    /// Opens apid's database at `path`, creating it (and its directory) and applying its
    /// migrations first when needed. Refuses a file of a newer schema.
    pub async fn create_or_open(path: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let path = path.into();
        let p = path.clone();
        tokio::task::spawn_blocking(move || create_file(&p))
            .await
            .map_err(StoreError::Worker)??;
        Self::open_as(path).await
    }

    /// Moves operators, sessions and API tokens from the shared database at `shared` (where
    /// releases before this one kept them) into this file, once; then empties the shared
    /// file's tables. Safe to call at every start: after the first, it only purges rows an
    /// older apid may have written there since.
    pub async fn import_from_shared(&self, shared: &Path) -> Result<Imported, StoreError> {
        let shared = shared.to_owned();
        self.run(move |c| import_from_shared(c, &shared)).await
    }

    /// Operators, their sessions and API tokens.
    pub fn auth(&self) -> Auth<'_> {
        Auth { db: self }
    }
}

const IMPORTED_KEY: &str = "imported_from_shared";

fn import_from_shared(conn: &mut Connection, shared: &Path) -> Result<Imported, StoreError> {
    // ATTACH creates a missing file: a shared database that is not there has nothing to give.
    if !shared.exists() {
        return Ok(Imported::default());
    }
    let shared_text = shared.to_str().ok_or_else(|| StoreError::PathNotUtf8 {
        path: shared.to_owned(),
    })?;
    conn.execute("ATTACH DATABASE ?1 AS legacy", [shared_text])
        .sql()?;
    let out = import_attached(conn);
    // Detach whatever happened: the connection goes back to the pool.
    let detached = conn.execute("DETACH DATABASE legacy", []).sql();
    let out = out?;
    detached?;
    Ok(out)
}

fn import_attached(conn: &mut Connection) -> Result<Imported, StoreError> {
    let has_tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM legacy.sqlite_master WHERE type = 'table' \
             AND name IN ('users', 'sessions', 'api_tokens')",
            [],
            |r| r.get(0),
        )
        .sql()?;
    if has_tables < 3 {
        return Ok(Imported::default());
    }
    let mut out = Imported::default();
    // Copy, and record that it happened, in one transaction of this file. The shared file's
    // rows are deleted afterwards in a transaction of their own: a commit spanning two WAL
    // files is not atomic, and losing the copy must never be possible.
    write(conn, |tx| {
        let done = tx
            .query_row(
                "SELECT 1 FROM main.meta WHERE key = ?1",
                [IMPORTED_KEY],
                |_| Ok(()),
            )
            .optional()
            .sql()?
            .is_some();
        if done {
            return Ok(());
        }
        let count = |n: usize| n as u64;
        out.users = count(
            tx.execute(
                "INSERT OR IGNORE INTO main.users (id, username, password_hash, is_admin, created_at_ms) \
                 SELECT id, username, password_hash, is_admin, created_at_ms FROM legacy.users",
                [],
            )
            .sql()?,
        );
        out.sessions = count(
            tx.execute(
                "INSERT OR IGNORE INTO main.sessions SELECT s.* FROM legacy.sessions s \
                 JOIN main.users u ON u.id = s.user_id",
                [],
            )
            .sql()?,
        );
        out.api_tokens = count(
            tx.execute(
                "INSERT OR IGNORE INTO main.api_tokens SELECT t.* FROM legacy.api_tokens t \
                 JOIN main.users u ON u.id = t.user_id",
                [],
            )
            .sql()?,
        );
        tx.execute(
            "INSERT INTO main.meta (key, value_ms) VALUES (?1, ?2)",
            params![IMPORTED_KEY, to_column(Timestamp::now())],
        )
        .sql()?;
        Ok(())
    })?;
    // Overwrite what is deleted, so no hash is left in the shared file's free pages.
    conn.execute_batch("PRAGMA legacy.secure_delete = ON")
        .sql()?;
    out.purged = write(conn, |tx| {
        let mut n = 0;
        for table in ["legacy.sessions", "legacy.api_tokens", "legacy.users"] {
            n += tx.execute(&format!("DELETE FROM {table}"), []).sql()? as u64;
        }
        Ok(n)
    })?;
    Ok(out)
}

/// The auth table group (`users`, `sessions`, `api_tokens`): see [`AuthDb::auth`].
#[derive(Debug, Clone, Copy)]
pub struct Auth<'a> {
    db: &'a AuthDb,
}

impl Auth<'_> {
    /// Creates a user; fails with [`StoreError::AlreadyExists`] if the name is taken.
    pub async fn create_user(
        self,
        username: &str,
        password_hash: &str,
        is_admin: bool,
        now: Timestamp,
    ) -> Result<User, StoreError> {
        let (u, h) = (username.to_owned(), password_hash.to_owned());
        self.db
            .run(move |c| create_user(c, &u, &h, is_admin, now))
            .await
    }

    /// A user and their stored password hash, for login (disabled users too: the caller
    /// refuses them after spending the same time as for a wrong password).
    pub async fn user_with_password(
        self,
        username: &str,
    ) -> Result<Option<(User, String)>, StoreError> {
        let u = username.to_owned();
        self.db.run(move |c| user_with_password(c, &u)).await
    }

    /// A user's stored password hash, by id (for a password change).
    pub async fn password_hash(self, user_id: i64) -> Result<Option<String>, StoreError> {
        self.db.run(move |c| password_hash(c, user_id)).await
    }

    /// Replaces a user's password hash and ends all their sessions except `keep` (the one
    /// that made the change, if any).
    pub async fn set_password(
        self,
        user_id: i64,
        password_hash: &str,
        keep: Option<[u8; 32]>,
    ) -> Result<(), StoreError> {
        let h = password_hash.to_owned();
        self.db
            .run(move |c| set_password(c, user_id, &h, keep.as_ref()))
            .await
    }

    /// How many users exist.
    pub async fn user_count(self) -> Result<u64, StoreError> {
        self.db.run(|c| user_count(c)).await
    }

    /// Every user, by id.
    pub async fn list_users(self) -> Result<Vec<User>, StoreError> {
        self.db.run(|c| list_users(c)).await
    }

    /// One user.
    pub async fn user(self, user_id: i64) -> Result<Option<User>, StoreError> {
        self.db.run(move |c| get_user(c, user_id)).await
    }

    /// Changes a user's role and whether they are disabled (`None`: unchanged). Disabling
    /// ends their sessions; their API tokens stop authenticating while they are disabled.
    /// Refuses ([`StoreError::LastAdministrator`]) to leave no enabled administrator.
    pub async fn update_user(
        self,
        user_id: i64,
        is_admin: Option<bool>,
        disabled: Option<bool>,
    ) -> Result<User, StoreError> {
        self.db
            .run(move |c| update_user(c, user_id, is_admin, disabled))
            .await
    }

    /// Deletes every session and API token of a user; returns how many of each.
    pub async fn revoke_user(self, user_id: i64) -> Result<(u64, u64), StoreError> {
        self.db.run(move |c| revoke_user(c, user_id)).await
    }

    /// Records a new session (and forgets expired ones).
    pub async fn create_session(
        self,
        secret_hash: [u8; 32],
        user_id: i64,
        now: Timestamp,
        expires_at: Timestamp,
    ) -> Result<(), StoreError> {
        self.db
            .run(move |c| create_session(c, &secret_hash, user_id, now, expires_at))
            .await
    }

    /// The (enabled) user of an unexpired session.
    pub async fn session_user(
        self,
        secret_hash: [u8; 32],
        now: Timestamp,
    ) -> Result<Option<User>, StoreError> {
        self.db
            .run(move |c| session_user(c, &secret_hash, now))
            .await
    }

    /// Ends a session (logout). Returns whether one existed.
    pub async fn delete_session(self, secret_hash: [u8; 32]) -> Result<bool, StoreError> {
        self.db.run(move |c| delete_session(c, &secret_hash)).await
    }

    /// Records a new API token and returns its public record.
    pub async fn create_api_token(
        self,
        user_id: i64,
        name: &str,
        secret_hash: [u8; 32],
        now: Timestamp,
        expires_at: Option<Timestamp>,
    ) -> Result<ApiToken, StoreError> {
        let name = name.to_owned();
        self.db
            .run(move |c| create_api_token(c, user_id, &name, &secret_hash, now, expires_at))
            .await
    }

    /// The (enabled) user of an unexpired API token, recording (coarsely) that it was used.
    pub async fn token_user(
        self,
        secret_hash: [u8; 32],
        now: Timestamp,
    ) -> Result<Option<User>, StoreError> {
        self.db.run(move |c| token_user(c, &secret_hash, now)).await
    }

    /// A user's tokens, newest first.
    pub async fn list_api_tokens(self, user_id: i64) -> Result<Vec<ApiToken>, StoreError> {
        self.db.run(move |c| list_api_tokens(c, user_id)).await
    }

    /// Revokes one of a user's tokens. Returns whether it existed.
    pub async fn delete_api_token(self, user_id: i64, id: Uuid) -> Result<bool, StoreError> {
        self.db.run(move |c| delete_api_token(c, user_id, id)).await
    }
}

/// An operator account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub is_admin: bool,
    /// A disabled user cannot log in, and their sessions and tokens do not authenticate.
    pub disabled: bool,
    pub created_at: Timestamp,
}

/// An API token's public record (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub id: Uuid,
    pub user_id: i64,
    pub name: String,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub last_used: Option<Timestamp>,
}

/// The columns [`user_row`] reads, in order, for `users` aliased `u`.
const USER_COLUMNS: &str = "u.id, u.username, u.is_admin, u.disabled, u.created_at_ms";

type UserRow = (i64, String, bool, bool, i64);

fn user_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<UserRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn user((id, username, is_admin, disabled, created): UserRow) -> Result<User, StoreError> {
    Ok(User {
        id,
        username,
        is_admin,
        disabled,
        created_at: from_column(created)?,
    })
}

fn create_user(
    conn: &mut Connection,
    username: &str,
    password_hash: &str,
    is_admin: bool,
    now: Timestamp,
) -> Result<User, StoreError> {
    write(conn, |tx| {
        let taken = tx
            .query_row(
                "SELECT 1 FROM users WHERE username = ?1",
                [username],
                |_| Ok(()),
            )
            .optional()
            .sql()?
            .is_some();
        if taken {
            return Err(StoreError::AlreadyExists { what: "user" });
        }
        tx.execute(
            "INSERT INTO users (username, password_hash, is_admin, created_at_ms) VALUES (?1, ?2, ?3, ?4)",
            params![username, password_hash, is_admin, to_column(now)],
        )
        .sql()?;
        Ok(User {
            id: tx.last_insert_rowid(),
            username: username.to_owned(),
            is_admin,
            disabled: false,
            created_at: now,
        })
    })
}

fn user_with_password(
    conn: &Connection,
    username: &str,
) -> Result<Option<(User, String)>, StoreError> {
    conn.query_row(
        &format!("SELECT {USER_COLUMNS}, u.password_hash FROM users u WHERE u.username = ?1"),
        [username],
        |r| Ok((user_row(r)?, r.get::<_, String>(5)?)),
    )
    .optional()
    .sql()?
    .map(|(u, h)| Ok((user(u)?, h)))
    .transpose()
}

fn password_hash(conn: &Connection, user_id: i64) -> Result<Option<String>, StoreError> {
    conn.query_row(
        "SELECT password_hash FROM users WHERE id = ?1",
        [user_id],
        |r| r.get(0),
    )
    .optional()
    .sql()
}

fn set_password(
    conn: &mut Connection,
    user_id: i64,
    password_hash: &str,
    keep: Option<&[u8; 32]>,
) -> Result<(), StoreError> {
    write(conn, |tx| {
        let n = tx
            .execute(
                "UPDATE users SET password_hash = ?2 WHERE id = ?1",
                params![user_id, password_hash],
            )
            .sql()?;
        if n == 0 {
            return Err(StoreError::NotFound { what: "user" });
        }
        let keep: &[u8] = keep.map_or(&[], |k| &k[..]);
        tx.execute(
            "DELETE FROM sessions WHERE user_id = ?1 AND secret_hash != ?2",
            params![user_id, keep],
        )
        .sql()?;
        Ok(())
    })
}

fn list_users(conn: &Connection) -> Result<Vec<User>, StoreError> {
    let mut stmt = conn
        .prepare(&format!("SELECT {USER_COLUMNS} FROM users u ORDER BY u.id"))
        .sql()?;
    let rows = stmt.query_map([], user_row).sql()?;
    let mut out = Vec::new();
    for row in rows {
        out.push(user(row.sql()?)?);
    }
    Ok(out)
}

fn get_user(conn: &Connection, user_id: i64) -> Result<Option<User>, StoreError> {
    conn.query_row(
        &format!("SELECT {USER_COLUMNS} FROM users u WHERE u.id = ?1"),
        [user_id],
        user_row,
    )
    .optional()
    .sql()?
    .map(user)
    .transpose()
}

fn update_user(
    conn: &mut Connection,
    user_id: i64,
    is_admin: Option<bool>,
    disabled: Option<bool>,
) -> Result<User, StoreError> {
    write(conn, |tx| {
        let n = tx
            .execute(
                "UPDATE users SET is_admin = coalesce(?2, is_admin), \
                 disabled = coalesce(?3, disabled) WHERE id = ?1",
                params![user_id, is_admin, disabled],
            )
            .sql()?;
        if n == 0 {
            return Err(StoreError::NotFound { what: "user" });
        }
        let admins: i64 = tx
            .query_row(
                "SELECT count(*) FROM users WHERE is_admin = 1 AND disabled = 0",
                [],
                |r| r.get(0),
            )
            .sql()?;
        if admins == 0 {
            // Returning an error rolls the update back.
            return Err(StoreError::LastAdministrator);
        }
        if disabled == Some(true) {
            tx.execute("DELETE FROM sessions WHERE user_id = ?1", [user_id])
                .sql()?;
        }
        get_user(tx, user_id)?.ok_or(StoreError::NotFound { what: "user" })
    })
}

fn revoke_user(conn: &mut Connection, user_id: i64) -> Result<(u64, u64), StoreError> {
    write(conn, |tx| {
        if get_user(tx, user_id)?.is_none() {
            return Err(StoreError::NotFound { what: "user" });
        }
        let sessions = tx
            .execute("DELETE FROM sessions WHERE user_id = ?1", [user_id])
            .sql()?;
        let tokens = tx
            .execute("DELETE FROM api_tokens WHERE user_id = ?1", [user_id])
            .sql()?;
        Ok((sessions as u64, tokens as u64))
    })
}

fn user_count(conn: &Connection) -> Result<u64, StoreError> {
    let n: i64 = conn
        .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
        .sql()?;
    Ok(n.unsigned_abs())
}

fn create_session(
    conn: &mut Connection,
    secret_hash: &[u8; 32],
    user_id: i64,
    now: Timestamp,
    expires_at: Timestamp,
) -> Result<(), StoreError> {
    write(conn, |tx| {
        // Logging in is a natural moment to forget sessions nobody will use again.
        tx.execute(
            "DELETE FROM sessions WHERE expires_at_ms <= ?1",
            [to_column(now)],
        )
        .sql()?;
        tx.execute(
            "INSERT INTO sessions (secret_hash, user_id, created_at_ms, expires_at_ms) VALUES (?1, ?2, ?3, ?4)",
            params![&secret_hash[..], user_id, to_column(now), to_column(expires_at)],
        )
        .sql()?;
        Ok(())
    })
}

fn session_user(
    conn: &Connection,
    secret_hash: &[u8; 32],
    now: Timestamp,
) -> Result<Option<User>, StoreError> {
    conn.query_row(
        &format!(
            "SELECT {USER_COLUMNS} FROM sessions s JOIN users u ON u.id = s.user_id \
             WHERE s.secret_hash = ?1 AND s.expires_at_ms > ?2 AND u.disabled = 0"
        ),
        params![&secret_hash[..], to_column(now)],
        user_row,
    )
    .optional()
    .sql()?
    .map(user)
    .transpose()
}

fn delete_session(conn: &mut Connection, secret_hash: &[u8; 32]) -> Result<bool, StoreError> {
    write(conn, |tx| {
        Ok(tx
            .execute(
                "DELETE FROM sessions WHERE secret_hash = ?1",
                [&secret_hash[..]],
            )
            .sql()?
            > 0)
    })
}

fn create_api_token(
    conn: &mut Connection,
    user_id: i64,
    name: &str,
    secret_hash: &[u8; 32],
    now: Timestamp,
    expires_at: Option<Timestamp>,
) -> Result<ApiToken, StoreError> {
    let id = Uuid::now_v7();
    write(conn, |tx| {
        tx.execute(
            "INSERT INTO api_tokens (id, user_id, name, secret_hash, created_at_ms, expires_at_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                id.to_string(),
                user_id,
                name,
                &secret_hash[..],
                to_column(now),
                to_column_opt(expires_at)
            ],
        )
        .sql()?;
        Ok(ApiToken {
            id,
            user_id,
            name: name.to_owned(),
            created_at: now,
            expires_at,
            last_used: None,
        })
    })
}

/// How stale `last_used` may get before a lookup writes it again: recording every use would
/// turn each authenticated read into a write.
const LAST_USED_GRANULARITY: jiff::SignedDuration = jiff::SignedDuration::from_secs(60);

fn token_user(
    conn: &mut Connection,
    secret_hash: &[u8; 32],
    now: Timestamp,
) -> Result<Option<User>, StoreError> {
    let found = conn
        .query_row(
            &format!(
                "SELECT {USER_COLUMNS}, t.id, t.last_used_ms \
                 FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.secret_hash = ?1 \
                 AND (t.expires_at_ms IS NULL OR t.expires_at_ms > ?2) AND u.disabled = 0"
            ),
            params![&secret_hash[..], to_column(now)],
            |r| {
                Ok((
                    user_row(r)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, Option<i64>>(6)?,
                ))
            },
        )
        .optional()
        .sql()?;
    let Some((u, token_id, last_used)) = found else {
        return Ok(None);
    };
    let stale = match from_column_opt(last_used)? {
        None => true,
        Some(t) => now.duration_since(t) >= LAST_USED_GRANULARITY,
    };
    if stale {
        write(conn, |tx| {
            tx.execute(
                "UPDATE api_tokens SET last_used_ms = ?2 WHERE id = ?1",
                params![token_id, to_column(now)],
            )
            .sql()?;
            Ok(())
        })?;
    }
    user(u).map(Some)
}

fn list_api_tokens(conn: &Connection, user_id: i64) -> Result<Vec<ApiToken>, StoreError> {
    let mut stmt = conn
        .prepare(
            "SELECT id, user_id, name, created_at_ms, expires_at_ms, last_used_ms FROM api_tokens \
             WHERE user_id = ?1 ORDER BY created_at_ms DESC, id DESC",
        )
        .sql()?;
    let rows = stmt
        .query_map([user_id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, Option<i64>>(4)?,
                r.get::<_, Option<i64>>(5)?,
            ))
        })
        .sql()?;
    let mut out = Vec::new();
    for row in rows {
        let (id, user_id, name, created, expires, used) = row.sql()?;
        out.push(ApiToken {
            id: id.parse().map_err(|e| StoreError::corrupt("uuid", e))?,
            user_id,
            name,
            created_at: from_column(created)?,
            expires_at: from_column_opt(expires)?,
            last_used: from_column_opt(used)?,
        });
    }
    Ok(out)
}

fn delete_api_token(conn: &mut Connection, user_id: i64, id: Uuid) -> Result<bool, StoreError> {
    write(conn, |tx| {
        Ok(tx
            .execute(
                "DELETE FROM api_tokens WHERE id = ?1 AND user_id = ?2",
                params![id.to_string(), user_id],
            )
            .sql()?
            > 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::ToSpan;

    fn db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("apid/auth.db");
        create_file(&path).unwrap();
        (dir, crate::db::open_connection(&path, false).unwrap())
    }

    fn t0() -> Timestamp {
        "2026-11-21T12:00:00Z".parse().unwrap()
    }

    #[test]
    fn users_are_unique() {
        let (_d, mut c) = db();
        let u = create_user(&mut c, "admin", "$argon2id$x", true, t0()).unwrap();
        assert!(matches!(
            create_user(&mut c, "admin", "$argon2id$y", false, t0()),
            Err(StoreError::AlreadyExists { .. })
        ));
        let (found, hash) = user_with_password(&c, "admin").unwrap().unwrap();
        assert_eq!((found, hash.as_str()), (u, "$argon2id$x"));
        assert_eq!(user_count(&c).unwrap(), 1);
        assert!(user_with_password(&c, "nobody").unwrap().is_none());
    }

    #[test]
    fn sessions_expire_and_end() {
        let (_d, mut c) = db();
        let u = create_user(&mut c, "a", "h", true, t0()).unwrap();
        let s = [7u8; 32];
        create_session(&mut c, &s, u.id, t0(), t0() + 1.hour()).unwrap();
        assert_eq!(session_user(&c, &s, t0()).unwrap(), Some(u.clone()));
        assert_eq!(session_user(&c, &[8u8; 32], t0()).unwrap(), None);
        assert_eq!(session_user(&c, &s, t0() + 2.hours()).unwrap(), None);
        assert!(delete_session(&mut c, &s).unwrap());
        assert_eq!(session_user(&c, &s, t0()).unwrap(), None);
        // A password change ends every session.
        create_session(&mut c, &s, u.id, t0(), t0() + 1.hour()).unwrap();
        let other = [9u8; 32];
        create_session(&mut c, &other, u.id, t0(), t0() + 1.hour()).unwrap();
        set_password(&mut c, u.id, "h2", None).unwrap();
        assert_eq!(session_user(&c, &s, t0()).unwrap(), None);
        assert_eq!(session_user(&c, &other, t0()).unwrap(), None);
        // …except the one that made the change, when named.
        create_session(&mut c, &s, u.id, t0(), t0() + 1.hour()).unwrap();
        create_session(&mut c, &other, u.id, t0(), t0() + 1.hour()).unwrap();
        set_password(&mut c, u.id, "h3", Some(&s)).unwrap();
        assert!(session_user(&c, &s, t0()).unwrap().is_some());
        assert_eq!(session_user(&c, &other, t0()).unwrap(), None);
        assert_eq!(password_hash(&c, u.id).unwrap().as_deref(), Some("h3"));
    }

    #[test]
    fn disabled_users_and_revocation() {
        let (_d, mut c) = db();
        let admin = create_user(&mut c, "admin", "h", true, t0()).unwrap();
        let ops = create_user(&mut c, "ops", "h", false, t0()).unwrap();
        let (s, t) = ([1u8; 32], [2u8; 32]);
        create_session(&mut c, &s, ops.id, t0(), t0() + 1.hour()).unwrap();
        create_api_token(&mut c, ops.id, "ci", &t, t0(), None).unwrap();
        // Disabling ends sessions; tokens stop authenticating until re-enabled.
        let d = update_user(&mut c, ops.id, None, Some(true)).unwrap();
        assert!(d.disabled && !d.is_admin);
        assert_eq!(session_user(&c, &s, t0()).unwrap(), None);
        assert_eq!(token_user(&mut c, &t, t0()).unwrap(), None);
        assert!(user_with_password(&c, "ops").unwrap().unwrap().0.disabled);
        update_user(&mut c, ops.id, Some(true), Some(false)).unwrap();
        assert!(token_user(&mut c, &t, t0()).unwrap().unwrap().is_admin);
        // Revocation deletes every session and token.
        create_session(&mut c, &s, ops.id, t0(), t0() + 1.hour()).unwrap();
        assert_eq!(revoke_user(&mut c, ops.id).unwrap(), (1, 1));
        assert_eq!(token_user(&mut c, &t, t0()).unwrap(), None);
        assert!(matches!(
            revoke_user(&mut c, 999),
            Err(StoreError::NotFound { .. })
        ));
        // The last enabled administrator stays one.
        update_user(&mut c, ops.id, Some(false), None).unwrap();
        assert!(matches!(
            update_user(&mut c, admin.id, None, Some(true)),
            Err(StoreError::LastAdministrator)
        ));
        assert!(matches!(
            update_user(&mut c, admin.id, Some(false), None),
            Err(StoreError::LastAdministrator)
        ));
        assert!(!get_user(&c, admin.id).unwrap().unwrap().disabled);
        assert_eq!(list_users(&c).unwrap().len(), 2);
    }

    #[test]
    fn credentials_move_out_of_the_shared_file_once() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("dragonfly.db");
        crate::migrate_file(&shared).unwrap();
        let old = crate::db::open_connection(&shared, false).unwrap();
        let secret = "$argon2id$v=19$m=19456,t=2,p=1$c2VjcmV0LXNhbHQ$the-hash";
        old.execute_batch(&format!(
            "INSERT INTO users VALUES (7, 'admin', '{secret}', 1, 0); \
             INSERT INTO sessions VALUES (x'01', 7, 0, 99999999999999); \
             INSERT INTO api_tokens VALUES ('0196d6a2-0000-7000-8000-000000000001', 7, 'ci', \
               x'02', 0, NULL, NULL);"
        ))
        .unwrap();
        let path = dir.path().join("apid/auth.db");
        create_file(&path).unwrap();
        let mut c = crate::db::open_connection(&path, false).unwrap();
        let first = import_from_shared(&mut c, &shared).unwrap();
        assert_eq!((first.users, first.sessions, first.api_tokens), (1, 1, 1));
        assert_eq!(first.purged, 3);
        let (u, h) = user_with_password(&c, "admin").unwrap().unwrap();
        assert_eq!((u.id, u.is_admin, h.as_str()), (7, true, secret));
        // The shared file keeps empty tables, and not the hash in any page.
        let left: i64 = old
            .query_row(
                "SELECT (SELECT count(*) FROM users) + (SELECT count(*) FROM sessions) \
                        + (SELECT count(*) FROM api_tokens)",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(left, 0);
        old.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
        let bytes = std::fs::read(&shared).unwrap();
        assert!(
            !bytes.windows(8).any(|w| w == b"the-hash"),
            "hash left in the file"
        );
        // Once only: a row an old apid writes later is purged, not imported.
        old.execute("INSERT INTO users VALUES (8, 'late', 'h', 0, 0)", [])
            .unwrap();
        let again = import_from_shared(&mut c, &shared).unwrap();
        assert_eq!((again.users, again.purged), (0, 1));
        assert!(user_with_password(&c, "late").unwrap().is_none());
        // apid's file is its user's alone.
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        // A missing shared file is nothing to import (and is not created).
        let none = import_from_shared(&mut c, &dir.path().join("absent.db")).unwrap();
        assert_eq!(none, Imported::default());
        assert!(!dir.path().join("absent.db").exists());
    }

    #[test]
    fn tokens_authenticate_until_revoked_or_expired() {
        let (_d, mut c) = db();
        let u = create_user(&mut c, "a", "h", true, t0()).unwrap();
        let secret = [1u8; 32];
        let tok =
            create_api_token(&mut c, u.id, "ci", &secret, t0(), Some(t0() + 24.hours())).unwrap();
        assert_eq!(token_user(&mut c, &secret, t0()).unwrap(), Some(u.clone()));
        assert_eq!(
            token_user(&mut c, &secret, t0() + 48.hours()).unwrap(),
            None
        );
        let listed = list_api_tokens(&c, u.id).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].last_used, Some(t0()));
        // Uses within a minute are not written again; a later one is.
        token_user(&mut c, &secret, t0() + 30.seconds()).unwrap();
        assert_eq!(list_api_tokens(&c, u.id).unwrap()[0].last_used, Some(t0()));
        token_user(&mut c, &secret, t0() + 61.seconds()).unwrap();
        assert_eq!(
            list_api_tokens(&c, u.id).unwrap()[0].last_used,
            Some(t0() + 61.seconds())
        );
        assert!(delete_api_token(&mut c, u.id, tok.id).unwrap());
        assert_eq!(token_user(&mut c, &secret, t0()).unwrap(), None);
    }
}
