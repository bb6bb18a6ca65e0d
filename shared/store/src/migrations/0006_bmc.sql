-- Power control (issue 10): each machine's BMC, the power state bmcd last read from it, and
-- the power work that provisioning asks for.
--
-- bmcs: one row per machine that has a BMC (or is woken by Wake-on-LAN). Written by apid
-- (an operator's PUT /api/machines/{id}/bmc), by a registration (the agent saw a BMC: the row
-- is pre-filled with its kind and address and no credentials, source 'agent', and never
-- overwrites a row that exists), and by bmcd (power state and condition only).
--
-- `secret` is the BMC password sealed to bmcd's public key (an X25519 sealed box, see the
-- dragonfly-bmc crate's `seal` module): apid can seal but not open it, bmcd opens it with the
-- private key it alone holds as a systemd credential. `key_id` names the public key it was
-- sealed to, so a secret sealed to a replaced key is reported as such instead of failing as
-- "bad credentials". The plain password is never stored, returned or logged.
CREATE TABLE bmcs (
    machine_id       TEXT    PRIMARY KEY REFERENCES machines(id) ON DELETE CASCADE,
    kind             TEXT    NOT NULL CHECK (kind IN ('ipmi','redfish','wol')),
    -- IPMI: host name or address; Redfish: the service's base URL; WoL: NULL or a broadcast
    -- address.
    address          TEXT,
    port             INTEGER CHECK (port BETWEEN 1 AND 65535),
    username         TEXT,
    secret           BLOB,
    key_id           TEXT,
    -- Redfish: the system's @odata.id when the service manages several.
    system           TEXT,
    -- Redfish over https: PEM certificates to trust instead of the system's roots, and/or the
    -- SHA-256 of the BMC's certificate (64 hex digits) to accept it and nothing else. Not
    -- secret: what an operator pins is public.
    tls_ca           TEXT,
    tls_fingerprint  TEXT    CHECK (tls_fingerprint IS NULL OR length(tls_fingerprint) = 64),
    boot_mode        TEXT    NOT NULL DEFAULT 'uefi' CHECK (boot_mode IN ('uefi','legacy')),
    source           TEXT    NOT NULL CHECK (source IN ('operator','agent')),
    -- What bmcd last read: 'on', 'off', 'unknown', or NULL before its first read.
    power_state      TEXT    CHECK (power_state IN ('on','off','unknown')),
    power_checked_ms INTEGER,
    -- Why bmcd cannot drive this BMC (unreachable, credentials refused, no credentials...),
    -- NULL while it can; `condition_since_ms` is when it started.
    condition        TEXT,
    condition_since_ms INTEGER,
    updated_at_ms    INTEGER NOT NULL,
    resource_version INTEGER NOT NULL
) STRICT;

-- bmc_key: bmcd's public key (one row), published by bmcd at start so that apid seals
-- passwords to it. The private key never reaches the database.
CREATE TABLE bmc_key (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    public_key    BLOB    NOT NULL,
    key_id        TEXT    NOT NULL,
    updated_at_ms INTEGER NOT NULL
) STRICT;

-- power_requests: power work that must not be lost. Created in the same transaction as the
-- change that needs it — a workflow created ('provision': next boot from the network, then
-- power on when off, or cycle when on and `cycle`) or succeeded ('provisioned': next boot
-- from disk) — for machines that
-- have a bmcs row, so a bmcd that is down or restarts finds it and does it. A newer request
-- for a machine supersedes its pending ones. bmcd moves each to 'running' (attempts + 1)
-- before it acts and to 'done' or 'failed' (with the BMC's answer in `result`) after; a
-- request found 'running' at start was interrupted and is tried again while attempts remain.
CREATE TABLE power_requests (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    machine_id    TEXT    NOT NULL REFERENCES machines(id) ON DELETE CASCADE,
    kind          TEXT    NOT NULL CHECK (kind IN ('provision','provisioned')),
    workflow_id   TEXT,
    -- 'provision' only: cycle a machine that is on (it runs an installed OS: a re-image) rather
    -- than leave it be (it runs the agent, which takes the workflow without a reboot).
    cycle         INTEGER NOT NULL DEFAULT 0 CHECK (cycle IN (0, 1)),
    state         TEXT    NOT NULL CHECK (state IN ('pending','running','done','failed','superseded')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    result        TEXT,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
) STRICT;
CREATE INDEX power_requests_open ON power_requests(state, id) WHERE state IN ('pending','running');
CREATE INDEX power_requests_machine ON power_requests(machine_id, id);
