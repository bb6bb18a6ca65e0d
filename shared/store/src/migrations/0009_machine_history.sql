-- A machine's lifecycle history: one row per state it entered (registered, approved, OS
-- assigned, provisioning, ready, error, re-registered), written in the same transaction as
-- the move itself, so the history cannot disagree with the state. Shown by apid
-- (`GET /api/machines/{id}/history`), the web UI and `dragonfly machines show`. Bounded: the
-- newest 200 rows per machine are kept.
CREATE TABLE machine_history (
    id          INTEGER PRIMARY KEY,
    machine_id  TEXT    NOT NULL REFERENCES machines(id) ON DELETE CASCADE,
    at_ms       INTEGER NOT NULL,
    from_state  TEXT,
    to_state    TEXT    NOT NULL,
    -- The lifecycle event's name (`Register`, `AssignOs`, …), `Created` for the first row.
    event       TEXT    NOT NULL,
    workflow_id TEXT
) STRICT;
CREATE INDEX machine_history_by_machine ON machine_history (machine_id, id);
