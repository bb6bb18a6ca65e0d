//! Users, browser sessions and API tokens.
//!
//! Secrets are never stored: sessions and tokens are looked up by the SHA-256 of their secret
//! (computed by the caller), and passwords are stored as the caller's Argon2id PHC string.
//! This module only keeps rows; hashing and policy live in apid.

use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use crate::StoreError;
use crate::db::write;

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

fn ts(v: i64) -> Result<Timestamp, StoreError> {
    Timestamp::from_millisecond(v).map_err(|e| StoreError::corrupt("timestamp", e))
}

fn user_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, String, bool, i64)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

fn user((id, username, is_admin, created): (i64, String, bool, i64)) -> Result<User, StoreError> {
    Ok(User {
        id,
        username,
        is_admin,
        created_at: ts(created)?,
    })
}

/// Creates a user; fails with [`StoreError::AlreadyExists`] if the name is taken.
pub fn create_user(
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
            .optional()?
            .is_some();
        if taken {
            return Err(StoreError::AlreadyExists { what: "user" });
        }
        tx.execute(
            "INSERT INTO users (username, password_hash, is_admin, created_at_ms) VALUES (?1, ?2, ?3, ?4)",
            params![username, password_hash, is_admin, now.as_millisecond()],
        )?;
        Ok(User {
            id: tx.last_insert_rowid(),
            username: username.to_owned(),
            is_admin,
            created_at: now,
        })
    })
}

/// A user and their stored password hash, for login.
pub fn user_with_password(
    conn: &Connection,
    username: &str,
) -> Result<Option<(User, String)>, StoreError> {
    conn.query_row(
        "SELECT id, username, is_admin, created_at_ms, password_hash FROM users WHERE username = ?1",
        [username],
        |r| Ok((user_row(r)?, r.get::<_, String>(4)?)),
    )
    .optional()?
    .map(|(u, h)| Ok((user(u)?, h)))
    .transpose()
}

/// Replaces a user's password hash and ends all their sessions.
pub fn set_password(
    conn: &mut Connection,
    user_id: i64,
    password_hash: &str,
) -> Result<(), StoreError> {
    write(conn, |tx| {
        let n = tx.execute(
            "UPDATE users SET password_hash = ?2 WHERE id = ?1",
            params![user_id, password_hash],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound { what: "user" });
        }
        tx.execute("DELETE FROM sessions WHERE user_id = ?1", [user_id])?;
        Ok(())
    })
}

/// How many users exist.
pub fn user_count(conn: &Connection) -> Result<u64, StoreError> {
    let n: i64 = conn.query_row("SELECT count(*) FROM users", [], |r| r.get(0))?;
    Ok(n.unsigned_abs())
}

/// Records a new session.
pub fn create_session(
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
            [now.as_millisecond()],
        )?;
        tx.execute(
            "INSERT INTO sessions (secret_hash, user_id, created_at_ms, expires_at_ms) VALUES (?1, ?2, ?3, ?4)",
            params![&secret_hash[..], user_id, now.as_millisecond(), expires_at.as_millisecond()],
        )?;
        Ok(())
    })
}

/// The user of an unexpired session.
pub fn session_user(
    conn: &Connection,
    secret_hash: &[u8; 32],
    now: Timestamp,
) -> Result<Option<User>, StoreError> {
    conn.query_row(
        "SELECT u.id, u.username, u.is_admin, u.created_at_ms FROM sessions s \
         JOIN users u ON u.id = s.user_id WHERE s.secret_hash = ?1 AND s.expires_at_ms > ?2",
        params![&secret_hash[..], now.as_millisecond()],
        user_row,
    )
    .optional()?
    .map(user)
    .transpose()
}

/// Ends a session (logout). Returns whether one existed.
pub fn delete_session(conn: &mut Connection, secret_hash: &[u8; 32]) -> Result<bool, StoreError> {
    write(conn, |tx| {
        Ok(tx.execute(
            "DELETE FROM sessions WHERE secret_hash = ?1",
            [&secret_hash[..]],
        )? > 0)
    })
}

/// Records a new API token and returns its public record.
pub fn create_api_token(
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
                now.as_millisecond(),
                expires_at.map(|t| t.as_millisecond())
            ],
        )?;
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
const LAST_USED_GRANULARITY_MS: i64 = 60_000;

/// The user of an unexpired API token, recording (coarsely) that it was used.
pub fn token_user(
    conn: &mut Connection,
    secret_hash: &[u8; 32],
    now: Timestamp,
) -> Result<Option<User>, StoreError> {
    let found = conn
        .query_row(
            "SELECT u.id, u.username, u.is_admin, u.created_at_ms, t.id, t.last_used_ms \
             FROM api_tokens t JOIN users u ON u.id = t.user_id WHERE t.secret_hash = ?1 \
             AND (t.expires_at_ms IS NULL OR t.expires_at_ms > ?2)",
            params![&secret_hash[..], now.as_millisecond()],
            |r| {
                Ok((
                    user_row(r)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, Option<i64>>(5)?,
                ))
            },
        )
        .optional()?;
    let Some((u, token_id, last_used)) = found else {
        return Ok(None);
    };
    let now_ms = now.as_millisecond();
    if last_used.is_none_or(|t| now_ms - t >= LAST_USED_GRANULARITY_MS) {
        write(conn, |tx| {
            tx.execute(
                "UPDATE api_tokens SET last_used_ms = ?2 WHERE id = ?1",
                params![token_id, now_ms],
            )?;
            Ok(())
        })?;
    }
    user(u).map(Some)
}

/// A user's tokens, newest first.
pub fn list_api_tokens(conn: &Connection, user_id: i64) -> Result<Vec<ApiToken>, StoreError> {
    let mut stmt = conn.prepare(
        "SELECT id, user_id, name, created_at_ms, expires_at_ms, last_used_ms FROM api_tokens \
         WHERE user_id = ?1 ORDER BY created_at_ms DESC, id DESC",
    )?;
    let rows = stmt.query_map([user_id], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, Option<i64>>(4)?,
            r.get::<_, Option<i64>>(5)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, user_id, name, created, expires, used) = row?;
        out.push(ApiToken {
            id: id.parse().map_err(|e| StoreError::corrupt("uuid", e))?,
            user_id,
            name,
            created_at: ts(created)?,
            expires_at: expires.map(ts).transpose()?,
            last_used: used.map(ts).transpose()?,
        });
    }
    Ok(out)
}

/// Revokes one of a user's tokens. Returns whether it existed.
pub fn delete_api_token(conn: &mut Connection, user_id: i64, id: Uuid) -> Result<bool, StoreError> {
    write(conn, |tx| {
        Ok(tx.execute(
            "DELETE FROM api_tokens WHERE id = ?1 AND user_id = ?2",
            params![id.to_string(), user_id],
        )? > 0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{migrate, open_connection};
    use jiff::ToSpan;

    fn db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open_connection(&dir.path().join("t.db"), true).unwrap();
        migrate(&mut conn).unwrap();
        (dir, conn)
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
        assert!(delete_api_token(&mut c, u.id, tok.id).unwrap());
        assert_eq!(token_user(&mut c, &secret, t0()).unwrap(), None);
    }
}
