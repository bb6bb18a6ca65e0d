-- apid's own database (`[apid] auth_db`, mode 0600, only apid's user): operators and their
-- credentials, kept out of the file every daemon shares. Created and migrated by apid itself.

-- Operators. Passwords are Argon2id PHC strings; nothing reversible is stored. A disabled
-- operator cannot log in, and their sessions and API tokens stop authenticating.
CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    username      TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,
    is_admin      INTEGER NOT NULL CHECK (is_admin IN (0, 1)),
    disabled      INTEGER NOT NULL DEFAULT 0 CHECK (disabled IN (0, 1)),
    created_at_ms INTEGER NOT NULL
) STRICT;

-- Browser sessions, server-side. The cookie carries a random secret; only its SHA-256 is
-- stored, so a copy of the database does not let anyone log in.
CREATE TABLE sessions (
    secret_hash   BLOB    PRIMARY KEY,
    user_id       INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX sessions_expiry ON sessions(expires_at_ms);
CREATE INDEX sessions_user ON sessions(user_id);

-- API tokens: shown once at creation, stored as SHA-256.
CREATE TABLE api_tokens (
    id             TEXT    PRIMARY KEY,                -- UUID, the token's public handle
    user_id        INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name           TEXT    NOT NULL,
    secret_hash    BLOB    NOT NULL UNIQUE,
    created_at_ms  INTEGER NOT NULL,
    expires_at_ms  INTEGER,
    last_used_ms   INTEGER
) STRICT;
CREATE INDEX api_tokens_user ON api_tokens(user_id);

-- One-time facts about this file, e.g. when the shared database's credentials were imported.
CREATE TABLE meta (
    key      TEXT    PRIMARY KEY,
    value_ms INTEGER NOT NULL
) STRICT;
