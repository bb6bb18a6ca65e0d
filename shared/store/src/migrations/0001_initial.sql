-- Machines and their MAC addresses. A machine owns every MAC in its last hardware report;
-- machine_macs makes "which machine has this MAC" an index lookup and makes two machines
-- sharing a MAC impossible.
CREATE TABLE machines (
    id               TEXT    PRIMARY KEY,              -- UUID
    name             TEXT    NOT NULL UNIQUE,          -- memorable name
    hostname         TEXT,
    state            TEXT    NOT NULL CHECK (state IN
                       ('Discovered','Registered','OsAssigned','Provisioning','Ready','Error')),
    labels           TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(labels)),
    hardware         TEXT    NOT NULL CHECK (json_valid(hardware)),  -- HardwareReport JSON
    smbios_uuid      TEXT    UNIQUE,                   -- only trustworthy UUIDs
    os_template      TEXT,
    workflow_id      TEXT,
    created_at_ms    INTEGER NOT NULL,
    updated_at_ms    INTEGER NOT NULL,
    resource_version INTEGER NOT NULL
) STRICT;
CREATE INDEX machines_state ON machines(state);

CREATE TABLE machine_macs (
    mac        TEXT NOT NULL PRIMARY KEY,               -- aa:bb:cc:dd:ee:ff
    machine_id TEXT NOT NULL REFERENCES machines(id) ON DELETE CASCADE
) STRICT;
CREATE INDEX machine_macs_machine ON machine_macs(machine_id);

-- Operators. Passwords are Argon2id PHC strings; nothing reversible is stored.
CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    username      TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,
    is_admin      INTEGER NOT NULL CHECK (is_admin IN (0, 1)),
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
