-- Provisioning (issue 9): templates, workflows and the agents' reports.
--
-- templates: OS templates by name; spec is the TemplateSpec JSON, validated by apid.
CREATE TABLE templates (
    name             TEXT    PRIMARY KEY,
    spec             TEXT    NOT NULL CHECK (json_valid(spec)),
    created_at_ms    INTEGER NOT NULL,
    updated_at_ms    INTEGER NOT NULL,
    resource_version INTEGER NOT NULL
) STRICT;

-- workflows: one template running on one machine. The template's actions are copied,
-- rendered for the machine, so editing a template never changes a running workflow. Written
-- by apid when created (and for what it served: served_* and the operator's request), by
-- workflowd for everything else. At most one active (Pending or Running) workflow per
-- machine: the partial unique index below.
CREATE TABLE workflows (
    id                       TEXT    PRIMARY KEY,          -- UUID
    name                     TEXT    NOT NULL UNIQUE,
    machine_id               TEXT    NOT NULL REFERENCES machines(id) ON DELETE CASCADE,
    template_name            TEXT    NOT NULL,
    actions                  TEXT    NOT NULL CHECK (json_valid(actions)),   -- [ActionSpec], rendered
    template_values          TEXT    NOT NULL DEFAULT '{}' CHECK (json_valid(template_values)),
    state                    TEXT    NOT NULL CHECK (state IN
                               ('Pending','Running','Succeeded','Failed','TimedOut','Cancelled')),
    attempt                  INTEGER NOT NULL,
    status                   TEXT    NOT NULL CHECK (json_valid(status)),    -- [ActionStatus]
    current_action           INTEGER NOT NULL,
    action_since_ms          INTEGER,
    action_timeout_seconds   INTEGER NOT NULL,
    workflow_timeout_seconds INTEGER NOT NULL,
    served_attempt           INTEGER,
    served_action            INTEGER,
    served_at_ms             INTEGER,
    request                  TEXT    CHECK (request IN ('cancel', 'retry')),
    created_at_ms            INTEGER NOT NULL,
    updated_at_ms            INTEGER NOT NULL,
    started_at_ms            INTEGER,
    finished_at_ms           INTEGER,
    error                    TEXT,
    resource_version         INTEGER NOT NULL
) STRICT;
CREATE UNIQUE INDEX workflows_one_active ON workflows(machine_id)
    WHERE state IN ('Pending', 'Running');
CREATE INDEX workflows_machine ON workflows(machine_id);
CREATE INDEX workflows_template ON workflows(template_name);

-- workflow_reports: append-only, what agents reported, written (synchronous=FULL) by apid
-- before it answers 202; workflowd applies them in id order and sets applied. A re-sent
-- report is kept once: the unique key is the contract's idempotency key.
CREATE TABLE workflow_reports (
    id             INTEGER PRIMARY KEY,
    workflow_id    TEXT    NOT NULL REFERENCES workflows(id) ON DELETE CASCADE,
    attempt        INTEGER NOT NULL,
    action         INTEGER NOT NULL,
    seq            INTEGER NOT NULL,
    event          TEXT    NOT NULL CHECK (json_valid(event)),   -- ReportEvent JSON
    received_at_ms INTEGER NOT NULL,
    applied        INTEGER NOT NULL DEFAULT 0 CHECK (applied IN (0, 1)),
    UNIQUE (workflow_id, attempt, action, seq)
) STRICT;
CREATE INDEX workflow_reports_unapplied ON workflow_reports(id) WHERE applied = 0;
