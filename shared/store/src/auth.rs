//! Users, browser sessions and API tokens.
//!
//! Secrets are never stored: sessions and tokens are looked up by the SHA-256 of their secret
//! (computed by the caller), and passwords are stored as the caller's Argon2id PHC string.
//! This module only keeps rows; hashing and policy live in apid.
//!
//! Kept apart from the other table groups on purpose (no query here joins a machine or a
//! lease, and no other module reads these tables): the next issue moves them into a database
//! only apid can read, and then this handle moves from `Db<Shared>` to that file's `Db`.

use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use crate::db::write;
use crate::error::Sql;
use crate::schema::Shared;
use crate::time::{from_column, from_column_opt, to_column, to_column_opt};
use crate::{Db, StoreError};

impl Db<Shared> {
    /// Operators, their sessions and API tokens.
    pub fn auth(&self) -> Auth<'_> {
        Auth { db: self }
    }
}

/// The auth table group (`users`, `sessions`, `api_tokens`): see [`Db::auth`].
#[derive(Debug, Clone, Copy)]
pub struct Auth<'a> {
    db: &'a Db<Shared>,
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

    /// A user and their stored password hash, for login.
    pub async fn user_with_password(
        self,
        username: &str,
    ) -> Result<Option<(User, String)>, StoreError> {
        let u = username.to_owned();
        self.db.run(move |c| user_with_password(c, &u)).await
    }

    /// Replaces a user's password hash and ends all their sessions.
    pub async fn set_password(self, user_id: i64, password_hash: &str) -> Result<(), StoreError> {
        let h = password_hash.to_owned();
        self.db.run(move |c| set_password(c, user_id, &h)).await
    }

    /// How many users exist.
    pub async fn user_count(self) -> Result<u64, StoreError> {
        self.db.run(|c| user_count(c)).await
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

    /// The user of an unexpired session.
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

    /// The user of an unexpired API token, recording (coarsely) that it was used.
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

fn user_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, String, bool, i64)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

fn user((id, username, is_admin, created): (i64, String, bool, i64)) -> Result<User, StoreError> {
    Ok(User {
        id,
        username,
        is_admin,
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
            created_at: now,
        })
    })
}

fn user_with_password(
    conn: &Connection,
    username: &str,
) -> Result<Option<(User, String)>, StoreError> {
    conn.query_row(
        "SELECT id, username, is_admin, created_at_ms, password_hash FROM users WHERE username = ?1",
        [username],
        |r| Ok((user_row(r)?, r.get::<_, String>(4)?)),
    )
    .optional()
    .sql()?
    .map(|(u, h)| Ok((user(u)?, h)))
    .transpose()
}

fn set_password(
    conn: &mut Connection,
    user_id: i64,
    password_hash: &str,
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
        tx.execute("DELETE FROM sessions WHERE user_id = ?1", [user_id])
            .sql()?;
        Ok(())
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
        "SELECT u.id, u.username, u.is_admin, u.created_at_ms FROM sessions s \
         JOIN users u ON u.id = s.user_id WHERE s.secret_hash = ?1 AND s.expires_at_ms > ?2",
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
            "SELECT u.id, u.username, u.is_admin, u.created_at_ms, t.id, t.last_used_ms \
             FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.secret_hash = ?1 \
             AND (t.expires_at_ms IS NULL OR t.expires_at_ms > ?2)",
            params![&secret_hash[..], to_column(now)],
            |r| {
                Ok((
                    user_row(r)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, Option<i64>>(5)?,
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
        let path = dir.path().join("t.db");
        crate::migrate_file(&path).unwrap();
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
        set_password(&mut c, u.id, "h2").unwrap();
        assert_eq!(session_user(&c, &s, t0()).unwrap(), None);
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
