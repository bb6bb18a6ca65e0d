-- The agents' console lines (issue: an operator reads why an install failed after apid
-- restarts). Written by apid only, from POST /api/agent/log, which anyone holding a boot token
-- can call: so every append trims, in its own transaction, the machine to its byte budget
-- (oldest lines first) and all machines to the total budget (the machine written least
-- recently loses all its lines first). The budgets are apid's configuration, passed in.
--
-- agent_console: one row per kept line. `id` is AUTOINCREMENT so it only ever grows, even
-- when the newest rows are deleted: a reader that remembers the last id it saw ("lines
-- after id") never misses a line nor sees one twice. `cost` is what the line counts against
-- the budgets (its UTF-8 bytes plus a fixed per-row overhead), stored so that the sums
-- below never depend on how a later release computes it.
CREATE TABLE agent_console (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    machine_id     TEXT    NOT NULL REFERENCES machines(id) ON DELETE CASCADE,
    received_at_ms INTEGER NOT NULL,
    line           TEXT    NOT NULL,
    cost           INTEGER NOT NULL CHECK (cost > 0)
) STRICT;
-- Per machine in id order, with the cost: trimming and reading never touch another machine's
-- rows, and trimming reads the index only.
CREATE INDEX agent_console_machine ON agent_console(machine_id, id, cost);

-- agent_console_machines: per machine, the bytes its lines cost (the sum of their `cost`)
-- and when it was last written (a counter, larger is later), so the total and the least
-- recently written machine are found without reading every line.
CREATE TABLE agent_console_machines (
    machine_id TEXT    PRIMARY KEY REFERENCES machines(id) ON DELETE CASCADE,
    bytes      INTEGER NOT NULL CHECK (bytes >= 0),
    last_write INTEGER NOT NULL
) STRICT;
CREATE INDEX agent_console_machines_lru ON agent_console_machines(last_write);
