//! Templates, workflows and the agents' reports: the provisioning tables.
//!
//! Reached through [`Db::templates`] and [`Db::workflows`]. Who writes what (docs/architecture.md):
//! apid creates templates and workflows, records what it *served* an agent and an operator's
//! request (cancel, retry), and appends agents' reports — durably ([`Workflows::report`]
//! commits with `synchronous=FULL` before apid answers 202, so an acknowledged report survives
//! any crash). workflowd is the one writer of a workflow's state: it reads unapplied reports in
//! order, runs `dragonfly_core::workflow`'s state machine and writes the result, the reports it
//! consumed and the machine's lifecycle change in one transaction ([`Workflows::save`]). A
//! crash between two of those steps leaves the reports unapplied, to be applied again.
//!
//! One active (Pending or Running) workflow per machine is enforced here, by a partial unique
//! index, not by a check a caller could forget.

use dragonfly_core::agent_api::{ActionReport, ReportEvent};
use dragonfly_core::lifecycle::LifecycleEvent;
use dragonfly_core::template::{ActionSpec, TemplateSpec};
use dragonfly_core::workflow::{ActionStatus, Request, Served, Workflow, WorkflowState};
use dragonfly_core::{Machine, MachineId};
use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};
use uuid::Uuid;

use crate::db::{write, write_durable};
use crate::error::Sql;
use crate::schema::Shared;
use crate::time::{from_column, from_column_opt, to_column, to_column_opt};
use crate::{Db, StoreError};

impl Db<Shared> {
    /// OS templates.
    pub fn templates(&self) -> Templates<'_> {
        Templates { db: self }
    }

    /// Workflows and the agents' reports.
    pub fn workflows(&self) -> Workflows<'_> {
        Workflows { db: self }
    }
}

/// A stored template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub name: String,
    pub spec: TemplateSpec,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub resource_version: i64,
}

/// The `templates` table: see [`Db::templates`].
#[derive(Debug, Clone, Copy)]
pub struct Templates<'a> {
    db: &'a Db<Shared>,
}

fn json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::corrupt("json", e))
}

fn unjson<T: serde::de::DeserializeOwned>(what: &'static str, s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::corrupt(what, e))
}

fn is_unique_violation(e: &StoreError) -> bool {
    matches!(e, StoreError::Sqlite(s) if s.to_string().contains("UNIQUE constraint failed"))
}

fn get_template(c: &Connection, name: &str) -> Result<Option<Template>, StoreError> {
    c.prepare_cached(
        "SELECT name, spec, created_at_ms, updated_at_ms, resource_version FROM templates WHERE name = ?1",
    )
    .sql()?
    .query_row([name], raw_template)
    .optional()
    .sql()?
    .map(decode_template)
    .transpose()
}

type RawTemplate = (String, String, i64, i64, i64);

fn raw_template(r: &Row<'_>) -> rusqlite::Result<RawTemplate> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn decode_template((name, spec, c, u, v): RawTemplate) -> Result<Template, StoreError> {
    Ok(Template {
        name,
        spec: unjson("template spec", &spec)?,
        created_at: from_column(c)?,
        updated_at: from_column(u)?,
        resource_version: v,
    })
}

const ACTIVE: &str = "state IN ('Pending', 'Running')";

impl Templates<'_> {
    /// Stores a new template; [`StoreError::AlreadyExists`] when the name is taken.
    pub async fn create(
        self,
        name: String,
        spec: TemplateSpec,
        now: Timestamp,
    ) -> Result<Template, StoreError> {
        self.db
            .run(move |c| {
                write(c, |tx| {
                    let n = tx
                        .execute(
                            "INSERT INTO templates (name, spec, created_at_ms, updated_at_ms, resource_version) \
                             VALUES (?1, ?2, ?3, ?3, 1) ON CONFLICT (name) DO NOTHING",
                            params![name, json(&spec)?, to_column(now)],
                        )
                        .sql()?;
                    if n == 0 {
                        return Err(StoreError::AlreadyExists { what: "template" });
                    }
                    get_template(tx, &name)?.ok_or(StoreError::NotFound { what: "template" })
                })
            })
            .await
    }

    /// One template by name.
    pub async fn get(self, name: &str) -> Result<Option<Template>, StoreError> {
        let name = name.to_owned();
        self.db.run(move |c| get_template(c, &name)).await
    }

    /// Every template, by name.
    pub async fn list(self) -> Result<Vec<Template>, StoreError> {
        self.db
            .run(|c| {
                let mut st = c
                    .prepare_cached(
                        "SELECT name, spec, created_at_ms, updated_at_ms, resource_version FROM templates ORDER BY name",
                    )
                    .sql()?;
                let rows = st.query_map([], raw_template).sql()?;
                rows.map(|r| r.sql().and_then(decode_template)).collect()
            })
            .await
    }

    /// Replaces a template's spec if its version is still `expected` (when given).
    pub async fn replace(
        self,
        name: String,
        expected: Option<i64>,
        spec: TemplateSpec,
        now: Timestamp,
    ) -> Result<Template, StoreError> {
        self.db
            .run(move |c| {
                write(c, |tx| {
                    let cur = get_template(tx, &name)?
                        .ok_or(StoreError::NotFound { what: "template" })?;
                    check_version(expected, cur.resource_version)?;
                    tx.execute(
                        "UPDATE templates SET spec = ?2, updated_at_ms = ?3, \
                         resource_version = resource_version + 1 WHERE name = ?1",
                        params![name, json(&spec)?, to_column(now)],
                    )
                    .sql()?;
                    get_template(tx, &name)?.ok_or(StoreError::NotFound { what: "template" })
                })
            })
            .await
    }

    /// Deletes a template, unless an active workflow uses it ([`StoreError::InUse`]).
    pub async fn delete(self, name: String, expected: Option<i64>) -> Result<Template, StoreError> {
        self.db
            .run(move |c| {
                write(c, |tx| {
                    let cur = get_template(tx, &name)?
                        .ok_or(StoreError::NotFound { what: "template" })?;
                    check_version(expected, cur.resource_version)?;
                    let user: Option<String> = tx
                        .query_row(
                            &format!(
                                "SELECT name FROM workflows WHERE template_name = ?1 AND {ACTIVE} LIMIT 1"
                            ),
                            [&name],
                            |r| r.get(0),
                        )
                        .optional()
                        .sql()?;
                    if let Some(by) = user {
                        return Err(StoreError::InUse {
                            what: "template",
                            by: format!("workflow {by}"),
                        });
                    }
                    tx.execute("DELETE FROM templates WHERE name = ?1", [&name])
                        .sql()?;
                    Ok(cur)
                })
            })
            .await
    }
}

fn check_version(expected: Option<i64>, current: i64) -> Result<(), StoreError> {
    match expected {
        Some(e) if e != current => Err(StoreError::Conflict {
            expected: e,
            current,
        }),
        _ => Ok(()),
    }
}

/// The action [`Workflows::serve`] gives an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToServe {
    /// The action's index in the workflow.
    pub index: u32,
    /// The seq the agent's next report for it must carry: one past the highest kept for this
    /// (workflow, attempt, action), or 0. Served so that an agent that restarted mid-action
    /// does not number its reports from 0 again, into seqs already kept (its reports would be
    /// acknowledged as re-sent copies and never applied).
    pub next_seq: u64,
}

/// The `workflows` and `workflow_reports` tables: see [`Db::workflows`].
#[derive(Debug, Clone, Copy)]
pub struct Workflows<'a> {
    db: &'a Db<Shared>,
}

/// A report as stored, for workflowd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReport {
    /// Its position in the table: reports are applied in this order.
    pub id: i64,
    pub report: ActionReport,
    pub received_at: Timestamp,
}

/// What [`Workflows::save`] writes in one transaction.
#[derive(Debug, Clone)]
pub struct Save {
    /// The workflow as the state machine left it; written if its version is still the one
    /// read.
    pub workflow: Workflow,
    /// The reports consumed, marked applied in the same commit.
    pub applied: Vec<i64>,
    /// Clear the operator's request (it was carried out).
    pub clear_request: bool,
    /// The machine's lifecycle events, in order (an illegal one is skipped, not an error:
    /// the machine may have been moved by an operator meanwhile).
    pub machine: Vec<LifecycleEvent>,
}

macro_rules! wf_columns {
    () => {
        "id, name, machine_id, template_name, actions, template_values, state, attempt, status, \
         current_action, action_since_ms, action_timeout_seconds, workflow_timeout_seconds, \
         served_attempt, served_action, served_at_ms, request, created_at_ms, updated_at_ms, \
         started_at_ms, finished_at_ms, error, resource_version"
    };
}

struct RawWf {
    id: String,
    name: String,
    machine: String,
    template: String,
    actions: String,
    values: String,
    state: String,
    attempt: u32,
    status: String,
    current: u32,
    since: Option<i64>,
    action_timeout: u32,
    workflow_timeout: u32,
    served_attempt: Option<u32>,
    served_action: Option<u32>,
    served_at: Option<i64>,
    request: Option<String>,
    created: i64,
    updated: i64,
    started: Option<i64>,
    finished: Option<i64>,
    error: Option<String>,
    version: i64,
}

fn raw_wf(r: &Row<'_>) -> rusqlite::Result<RawWf> {
    Ok(RawWf {
        id: r.get(0)?,
        name: r.get(1)?,
        machine: r.get(2)?,
        template: r.get(3)?,
        actions: r.get(4)?,
        values: r.get(5)?,
        state: r.get(6)?,
        attempt: r.get(7)?,
        status: r.get(8)?,
        current: r.get(9)?,
        since: r.get(10)?,
        action_timeout: r.get(11)?,
        workflow_timeout: r.get(12)?,
        served_attempt: r.get(13)?,
        served_action: r.get(14)?,
        served_at: r.get(15)?,
        request: r.get(16)?,
        created: r.get(17)?,
        updated: r.get(18)?,
        started: r.get(19)?,
        finished: r.get(20)?,
        error: r.get(21)?,
        version: r.get(22)?,
    })
}

fn uuid_col(s: &str) -> Result<Uuid, StoreError> {
    s.parse().map_err(|e| StoreError::corrupt("uuid", e))
}

impl RawWf {
    fn decode(self) -> Result<Workflow, StoreError> {
        let served = match (self.served_attempt, self.served_action, self.served_at) {
            (Some(attempt), Some(index), Some(at)) => Some(Served {
                attempt,
                index,
                at: from_column(at)?,
            }),
            _ => None,
        };
        Ok(Workflow {
            id: uuid_col(&self.id)?,
            name: self.name,
            machine_id: MachineId(uuid_col(&self.machine)?),
            template: self.template,
            actions: unjson::<Vec<ActionSpec>>("workflow actions", &self.actions)?,
            values: unjson("workflow values", &self.values)?,
            state: self
                .state
                .parse()
                .map_err(|e| StoreError::corrupt("workflow state", e))?,
            attempt: self.attempt,
            status: unjson::<Vec<ActionStatus>>("workflow status", &self.status)?,
            current_action: self.current,
            action_since: from_column_opt(self.since)?,
            action_timeout_seconds: self.action_timeout,
            workflow_timeout_seconds: self.workflow_timeout,
            served,
            request: match self.request.as_deref() {
                None => None,
                Some("cancel") => Some(Request::Cancel),
                Some("retry") => Some(Request::Retry),
                Some(other) => {
                    return Err(StoreError::corrupt(
                        "workflow request",
                        dragonfly_core::workflow::UnknownState(other.to_owned()),
                    ));
                }
            },
            created_at: from_column(self.created)?,
            updated_at: from_column(self.updated)?,
            started_at: from_column_opt(self.started)?,
            finished_at: from_column_opt(self.finished)?,
            error: self.error,
            resource_version: self.version,
        })
    }
}

fn wf_query(
    c: &Connection,
    filter: &str,
    p: impl rusqlite::Params,
) -> Result<Vec<Workflow>, StoreError> {
    let mut st = c
        .prepare_cached(&format!("SELECT {} FROM workflows {filter}", wf_columns!()))
        .sql()?;
    let rows = st.query_map(p, raw_wf).sql()?;
    rows.map(|r| r.sql().and_then(RawWf::decode)).collect()
}

fn wf_get(c: &Connection, id: Uuid) -> Result<Option<Workflow>, StoreError> {
    Ok(wf_query(c, "WHERE id = ?1", [id.to_string()])?.pop())
}

fn request_str(r: Request) -> &'static str {
    match r {
        Request::Cancel => "cancel",
        Request::Retry => "retry",
    }
}

impl Workflows<'_> {
    /// Creates a workflow and assigns it to its machine (lifecycle `AssignOs`, the machine's
    /// `workflow_id` and `os_template`) in one transaction. [`StoreError::AlreadyExists`] when
    /// the machine has an active workflow already.
    pub async fn create(
        self,
        wf: Workflow,
        machine_version: Option<i64>,
        now: Timestamp,
    ) -> Result<(Workflow, Machine), StoreError> {
        self.db
            .run(move |c| {
                write(c, |tx| {
                    let ins = tx.execute(
                        &format!(
                            "INSERT INTO workflows ({}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, \
                             ?12, ?13, NULL, NULL, NULL, NULL, ?14, ?14, NULL, NULL, NULL, 1)",
                            wf_columns!()
                        ),
                        params![
                            wf.id.to_string(),
                            wf.name,
                            wf.machine_id.0.to_string(),
                            wf.template,
                            json(&wf.actions)?,
                            json(&wf.values)?,
                            wf.state.as_str(),
                            wf.attempt,
                            json(&wf.status)?,
                            wf.current_action,
                            to_column_opt(wf.action_since),
                            wf.action_timeout_seconds,
                            wf.workflow_timeout_seconds,
                            to_column(now),
                        ],
                    );
                    if let Err(e) = ins.sql() {
                        return Err(if is_unique_violation(&e) {
                            StoreError::AlreadyExists {
                                what: "an active workflow for this machine",
                            }
                        } else {
                            e
                        });
                    }
                    // An installed OS runs on a Ready machine that is on: re-imaging cycles it.
                    let was_ready = crate::machines::get(tx, wf.machine_id)?
                        .is_some_and(|m| m.state == dragonfly_core::MachineState::Ready);
                    crate::machines::transition_tx(
                        tx,
                        wf.machine_id,
                        machine_version,
                        LifecycleEvent::AssignOs,
                        Some(wf.id),
                        now,
                    )?;
                    tx.execute(
                        "UPDATE machines SET os_template = ?2 WHERE id = ?1",
                        params![wf.machine_id.0.to_string(), wf.template],
                    )
                    .sql()?;
                    // Power work: next boot from the network and power on, if it has a BMC.
                    crate::bmc::request_tx(
                        tx,
                        wf.machine_id,
                        crate::bmc::PowerRequestKind::Provision,
                        Some(wf.id),
                        was_ready,
                        now,
                    )?;
                    let m = crate::machines::get(tx, wf.machine_id)?
                        .ok_or(StoreError::NotFound { what: "machine" })?;
                    let w = wf_get(tx, wf.id)?.ok_or(StoreError::NotFound { what: "workflow" })?;
                    Ok((w, m))
                })
            })
            .await
    }

    /// One workflow by id.
    pub async fn get(self, id: Uuid) -> Result<Option<Workflow>, StoreError> {
        self.db.run(move |c| wf_get(c, id)).await
    }

    /// One workflow by id (a UUID) or name.
    pub async fn get_by_id_or_name(self, key: &str) -> Result<Option<Workflow>, StoreError> {
        if let Ok(id) = key.parse::<Uuid>() {
            return self.get(id).await;
        }
        let key = key.to_owned();
        self.db
            .run(move |c| Ok(wf_query(c, "WHERE name = ?1", [key])?.pop()))
            .await
    }

    /// Every workflow, newest first (at most `limit`).
    pub async fn list(self, limit: usize) -> Result<Vec<Workflow>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.db
            .run(move |c| wf_query(c, "ORDER BY created_at_ms DESC, id LIMIT ?1", [limit]))
            .await
    }

    /// The workflows workflowd must look at: active ones, and any with an operator's request.
    pub async fn pending_work(self) -> Result<Vec<Workflow>, StoreError> {
        self.db
            .run(|c| {
                wf_query(
                    c,
                    &format!("WHERE {ACTIVE} OR request IS NOT NULL ORDER BY created_at_ms"),
                    [],
                )
            })
            .await
    }

    /// What to serve an agent of this workflow now: the workflow and the action
    /// (`None`: nothing to run), recording it as served. A success the agent already reported
    /// but workflowd has not applied yet moves past that action, so the agent never runs an
    /// action twice for want of workflowd.
    pub async fn serve(
        self,
        id: Uuid,
        now: Timestamp,
    ) -> Result<(Workflow, Option<ToServe>), StoreError> {
        self.db
            .run(move |c| {
                write(c, |tx| {
                    let wf = wf_get(tx, id)?.ok_or(StoreError::NotFound { what: "workflow" })?;
                    let mut st = tx
                        .prepare_cached(
                            "SELECT action, event FROM workflow_reports \
                             WHERE workflow_id = ?1 AND attempt = ?2 AND applied = 0 ORDER BY id",
                        )
                        .sql()?;
                    let rows = st
                        .query_map(params![id.to_string(), wf.attempt], |r| {
                            Ok((r.get::<_, u32>(0)?, r.get::<_, String>(1)?))
                        })
                        .sql()?;
                    let (mut succeeded, mut failed) = (Vec::new(), Vec::new());
                    for row in rows {
                        let (action, event) = row.sql()?;
                        match unjson::<ReportEvent>("report event", &event)? {
                            ReportEvent::Succeeded { .. } => succeeded.push(action),
                            ReportEvent::Failed { .. } => failed.push(action),
                            _ => {}
                        }
                    }
                    let index = wf.to_serve(&succeeded, &failed);
                    let mut served = None;
                    if let Some(i) = index {
                        tx.execute(
                            "UPDATE workflows SET served_at_ms = CASE WHEN served_attempt = ?2 \
                             AND served_action = ?3 THEN served_at_ms ELSE ?4 END, \
                             served_attempt = ?2, served_action = ?3 WHERE id = ?1",
                            params![id.to_string(), wf.attempt, i, to_column(now)],
                        )
                        .sql()?;
                        // Applied reports count too: their seqs are taken all the same (the
                        // unique key ignores `applied`).
                        let top: Option<i64> = tx
                            .query_row(
                                "SELECT max(seq) FROM workflow_reports \
                                 WHERE workflow_id = ?1 AND attempt = ?2 AND action = ?3",
                                params![id.to_string(), wf.attempt, i],
                                |r| r.get(0),
                            )
                            .sql()?;
                        served = Some(ToServe {
                            index: i,
                            next_seq: top.map_or(0, |s| u64::try_from(s).unwrap_or(0) + 1),
                        });
                    }
                    let wf = wf_get(tx, id)?.ok_or(StoreError::NotFound { what: "workflow" })?;
                    Ok((wf, served))
                })
            })
            .await
    }

    /// Appends an agent's report, durably (`synchronous=FULL`): the caller acknowledges it
    /// only after this returns. `Ok(false)`: the same (workflow, attempt, action, seq) was
    /// kept already (a re-sent report), nothing written. [`StoreError::NotFound`] for an
    /// unknown workflow.
    pub async fn report(self, r: ActionReport, now: Timestamp) -> Result<bool, StoreError> {
        self.db
            .run(move |c| {
                write_durable(c, |tx| {
                    let known: Option<i64> = tx
                        .query_row(
                            "SELECT 1 FROM workflows WHERE id = ?1",
                            [r.workflow_id.to_string()],
                            |r| r.get(0),
                        )
                        .optional()
                        .sql()?;
                    if known.is_none() {
                        return Err(StoreError::NotFound { what: "workflow" });
                    }
                    let n = tx
                        .execute(
                            "INSERT INTO workflow_reports (workflow_id, attempt, action, seq, event, received_at_ms) \
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                             ON CONFLICT (workflow_id, attempt, action, seq) DO NOTHING",
                            params![
                                r.workflow_id.to_string(),
                                r.attempt,
                                r.action,
                                i64::try_from(r.seq).unwrap_or(i64::MAX),
                                json(&r.event)?,
                                to_column(now)
                            ],
                        )
                        .sql()?;
                    Ok(n == 1)
                })
            })
            .await
    }

    /// Reports not applied yet, oldest first (at most `limit`).
    pub async fn unapplied(self, limit: usize) -> Result<Vec<StoredReport>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.db
            .run(move |c| {
                let mut st = c
                    .prepare_cached(
                        "SELECT id, workflow_id, attempt, action, seq, event, received_at_ms \
                         FROM workflow_reports WHERE applied = 0 ORDER BY id LIMIT ?1",
                    )
                    .sql()?;
                let rows = st
                    .query_map([limit], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, u32>(2)?,
                            r.get::<_, u32>(3)?,
                            r.get::<_, i64>(4)?,
                            r.get::<_, String>(5)?,
                            r.get::<_, i64>(6)?,
                        ))
                    })
                    .sql()?;
                rows.map(|row| {
                    let (id, wf, attempt, action, seq, event, at) = row.sql()?;
                    Ok(StoredReport {
                        id,
                        report: ActionReport {
                            workflow_id: uuid_col(&wf)?,
                            attempt,
                            action,
                            seq: u64::try_from(seq).unwrap_or(0),
                            event: unjson("report event", &event)?,
                        },
                        received_at: from_column(at)?,
                    })
                })
                .collect()
            })
            .await
    }

    /// How many workflows are in each state (states with none are absent; a state this build
    /// does not know is skipped), for workflowd's `workflows` gauge.
    pub async fn count_by_state(self) -> Result<Vec<(WorkflowState, u64)>, StoreError> {
        self.db
            .run(|c| {
                let mut stmt = c
                    .prepare_cached("SELECT state, count(*) FROM workflows GROUP BY state")
                    .sql()?;
                let rows = stmt
                    .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                    .sql()?;
                let mut counts = Vec::new();
                for row in rows {
                    let (state, n) = row.sql()?;
                    if let Ok(state) = state.parse::<WorkflowState>() {
                        counts.push((state, u64::try_from(n).unwrap_or(0)));
                    }
                }
                Ok(counts)
            })
            .await
    }

    /// How many reports are stored for a workflow (applied or not).
    pub async fn report_count(self, id: Uuid) -> Result<u64, StoreError> {
        self.db
            .run(move |c| {
                c.query_row(
                    "SELECT count(*) FROM workflow_reports WHERE workflow_id = ?1",
                    [id.to_string()],
                    |r| r.get::<_, i64>(0),
                )
                .sql()
                .map(|n| u64::try_from(n).unwrap_or(0))
            })
            .await
    }

    /// Records an operator's request (cancel, retry) for workflowd to carry out.
    pub async fn request(self, id: Uuid, req: Request) -> Result<Workflow, StoreError> {
        self.db
            .run(move |c| {
                write(c, |tx| {
                    let n = tx
                        .execute(
                            "UPDATE workflows SET request = ?2 WHERE id = ?1",
                            params![id.to_string(), request_str(req)],
                        )
                        .sql()?;
                    if n == 0 {
                        return Err(StoreError::NotFound { what: "workflow" });
                    }
                    wf_get(tx, id)?.ok_or(StoreError::NotFound { what: "workflow" })
                })
            })
            .await
    }

    /// Marks reports applied without changing a workflow (reports to a finished or stale
    /// workflow, which the state machine ignores).
    pub async fn mark_applied(self, ids: Vec<i64>) -> Result<(), StoreError> {
        self.db.run(move |c| write(c, |tx| mark(tx, &ids))).await
    }

    /// workflowd's write: the workflow as the state machine left it, the reports it consumed
    /// and the machine's lifecycle change, in one transaction, if the workflow's version is
    /// still the one read ([`StoreError::Conflict`] otherwise). Returns the stored workflow.
    pub async fn save(self, s: Save, now: Timestamp) -> Result<Workflow, StoreError> {
        self.db
            .run(move |c| {
                write(c, |tx| {
                    let w = &s.workflow;
                    let before: Option<String> = tx
                        .query_row(
                            "SELECT state FROM workflows WHERE id = ?1",
                            [w.id.to_string()],
                            |r| r.get(0),
                        )
                        .optional()
                        .sql()?;
                    let n = tx
                        .execute(
                            "UPDATE workflows SET state = ?2, attempt = ?3, status = ?4, current_action = ?5, \
                             action_since_ms = ?6, started_at_ms = ?7, finished_at_ms = ?8, error = ?9, \
                             created_at_ms = ?10, updated_at_ms = ?11, \
                             request = CASE WHEN ?12 THEN NULL ELSE request END, \
                             resource_version = resource_version + 1 \
                             WHERE id = ?1 AND resource_version = ?13",
                            params![
                                w.id.to_string(),
                                w.state.as_str(),
                                w.attempt,
                                json(&w.status)?,
                                w.current_action,
                                to_column_opt(w.action_since),
                                to_column_opt(w.started_at),
                                to_column_opt(w.finished_at),
                                w.error,
                                to_column(w.created_at),
                                to_column(now),
                                s.clear_request,
                                w.resource_version,
                            ],
                        )
                        .sql()?;
                    if n == 0 {
                        return Err(StoreError::Conflict {
                            expected: w.resource_version,
                            current: w.resource_version + 1,
                        });
                    }
                    mark(tx, &s.applied)?;
                    // Power work: next boot from disk, once, when it has just succeeded.
                    if w.state == WorkflowState::Succeeded
                        && before.as_deref() != Some(WorkflowState::Succeeded.as_str())
                    {
                        crate::bmc::request_tx(
                            tx,
                            w.machine_id,
                            crate::bmc::PowerRequestKind::Provisioned,
                            Some(w.id),
                            false,
                            now,
                        )?;
                    }
                    for &event in &s.machine {
                        match crate::machines::transition_tx(
                            tx,
                            w.machine_id,
                            None,
                            event,
                            Some(w.id),
                            now,
                        ) {
                            Ok(_)
                            | Err(StoreError::IllegalTransition(_))
                            | Err(StoreError::NotFound { .. }) => {}
                            Err(e) => return Err(e),
                        }
                    }
                    wf_get(tx, w.id)?.ok_or(StoreError::NotFound { what: "workflow" })
                })
            })
            .await
    }
}

fn mark(tx: &Transaction<'_>, ids: &[i64]) -> Result<(), StoreError> {
    let mut st = tx
        .prepare_cached("UPDATE workflow_reports SET applied = 1 WHERE id = ?1")
        .sql()?;
    for id in ids {
        st.execute([id]).sql()?;
    }
    Ok(())
}

/// A fresh workflow for `machine` running `actions` (already rendered): Pending, attempt 1.
pub fn new_workflow(
    machine: &Machine,
    template: &str,
    actions: Vec<ActionSpec>,
    values: serde_json::Map<String, serde_json::Value>,
    action_timeout_seconds: u32,
    workflow_timeout_seconds: u32,
    now: Timestamp,
) -> Workflow {
    let id = Uuid::now_v7();
    let short = id.simple().to_string();
    let status =
        dragonfly_core::workflow::WorkflowStatus::pending(actions.iter().map(|a| a.name.as_str()))
            .actions;
    Workflow {
        id,
        name: format!(
            "{}-{}",
            machine.name.to_lowercase(),
            &short[short.len() - 8..]
        ),
        machine_id: machine.id,
        template: template.to_owned(),
        actions,
        values,
        state: WorkflowState::Pending,
        attempt: 1,
        status,
        current_action: 0,
        action_since: None,
        action_timeout_seconds,
        workflow_timeout_seconds,
        served: None,
        request: None,
        created_at: now,
        updated_at: now,
        started_at: None,
        finished_at: None,
        error: None,
        resource_version: 1,
    }
}

#[cfg(test)]
mod tests {
    use dragonfly_core::agent_api::ReportEvent;
    use dragonfly_core::{HardwareReport, MacAddr, MachineState};

    use super::*;
    use crate::testing::TestDb;

    fn spec() -> TemplateSpec {
        serde_json::from_value(serde_json::json!({"actions": [
            {"name": "disk", "type": "partition", "disk": "/dev/vda", "table": "gpt",
             "partitions": [{"label": "root", "size": "rest", "type": "linux"}]},
            {"name": "boot", "type": "kexec", "device": {"disk": "/dev/vda", "partition": 1},
             "filesystem": "ext4", "kernel": "/boot/vmlinuz"}
        ]}))
        .unwrap()
    }

    async fn machine(db: &Db) -> Machine {
        let report = HardwareReport {
            macs: vec![MacAddr::new([2, 0, 0, 0, 0, 1])],
            ..Default::default()
        };
        db.machines()
            .register(report, Timestamp::now())
            .await
            .unwrap()
            .machine()
            .clone()
    }

    /// A registered machine with a new workflow of [`spec`] (60 s per action, 600 s in all):
    /// the workflow and the machine as `create` leaves them.
    async fn assigned(db: &Db, now: Timestamp) -> (Workflow, Machine) {
        let m = machine(db).await;
        let wf = new_workflow(
            &m,
            "debian",
            spec().actions,
            Default::default(),
            60,
            600,
            now,
        );
        db.workflows().create(wf, None, now).await.unwrap()
    }

    fn report(wf: Uuid, action: u32, seq: u64, event: ReportEvent) -> ActionReport {
        ActionReport {
            workflow_id: wf,
            attempt: 1,
            action,
            seq,
            event,
        }
    }

    #[tokio::test]
    async fn templates_are_created_once_replaced_by_version_and_deleted() {
        let t = TestDb::new();
        let now = Timestamp::now();
        let tpl =
            t.db.templates()
                .create("debian".into(), spec(), now)
                .await
                .unwrap();
        assert_eq!(tpl.resource_version, 1);
        assert!(matches!(
            t.db.templates().create("debian".into(), spec(), now).await,
            Err(StoreError::AlreadyExists { .. })
        ));
        assert!(matches!(
            t.db.templates()
                .replace("debian".into(), Some(7), spec(), now)
                .await,
            Err(StoreError::Conflict { .. })
        ));
        let tpl =
            t.db.templates()
                .replace("debian".into(), Some(1), spec(), now)
                .await
                .unwrap();
        assert_eq!(tpl.resource_version, 2);
        assert_eq!(t.db.templates().list().await.unwrap().len(), 1);
        t.db.templates()
            .delete("debian".into(), None)
            .await
            .unwrap();
        assert!(t.db.templates().get("debian").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn workflows_are_counted_by_state() {
        let t = TestDb::new();
        let now = Timestamp::now();
        assert!(t.db.workflows().count_by_state().await.unwrap().is_empty());
        t.db.templates()
            .create("debian".into(), spec(), now)
            .await
            .unwrap();
        assigned(&t.db, now).await;
        assert_eq!(
            t.db.workflows().count_by_state().await.unwrap(),
            vec![(WorkflowState::Pending, 1)]
        );
    }

    #[tokio::test]
    async fn one_active_workflow_per_machine_and_its_template_cannot_go() {
        let t = TestDb::new();
        let now = Timestamp::now();
        t.db.templates()
            .create("debian".into(), spec(), now)
            .await
            .unwrap();
        let (wf, m2) = assigned(&t.db, now).await;
        assert_eq!(m2.state, MachineState::OsAssigned);
        assert_eq!(m2.workflow_id, Some(wf.id));
        // The boot path sees the workflow's state with the machine's, in one statement.
        let info =
            t.db.machines()
                .boot_info(m2.macs()[0])
                .await
                .unwrap()
                .unwrap();
        assert_eq!(
            (info.workflow_id, info.workflow_state),
            (Some(wf.id), Some(WorkflowState::Pending))
        );
        let again = new_workflow(
            &m2,
            "debian",
            spec().actions,
            Default::default(),
            60,
            600,
            now,
        );
        assert!(matches!(
            t.db.workflows().create(again, None, now).await,
            Err(StoreError::AlreadyExists { .. })
        ));
        assert!(matches!(
            t.db.templates().delete("debian".into(), None).await,
            Err(StoreError::InUse { .. })
        ));
    }

    #[tokio::test]
    async fn reports_are_kept_once_served_apart_and_applied_with_the_machine() {
        let t = TestDb::new();
        let now = Timestamp::now();
        let (wf, m) = assigned(&t.db, now).await;
        let w = t.db.workflows();
        let (served, i) = w.serve(wf.id, now).await.unwrap();
        assert_eq!(
            i,
            Some(ToServe {
                index: 0,
                next_seq: 0
            })
        );
        assert_eq!(served.served.unwrap().index, 0);
        assert!(
            w.report(report(wf.id, 0, 0, ReportEvent::Started), now)
                .await
                .unwrap()
        );
        assert!(
            !w.report(report(wf.id, 0, 0, ReportEvent::Started), now)
                .await
                .unwrap()
        );
        let done = ReportEvent::Succeeded { message: None };
        assert!(w.report(report(wf.id, 0, 1, done), now).await.unwrap());
        // Not applied yet, but the agent that asks again is given the next action.
        assert_eq!(
            w.serve(wf.id, now).await.unwrap().1.map(|a| a.index),
            Some(1)
        );
        // A success claimed for an action never served skips nothing.
        let skip = ReportEvent::Succeeded { message: None };
        assert!(w.report(report(wf.id, 5, 0, skip), now).await.unwrap());
        assert_eq!(
            w.serve(wf.id, now).await.unwrap().1.map(|a| a.index),
            Some(1)
        );
        assert!(matches!(
            w.report(report(Uuid::nil(), 0, 0, ReportEvent::Started), now)
                .await,
            Err(StoreError::NotFound { .. })
        ));
        let pending = w.unapplied(100).await.unwrap();
        assert_eq!(pending.len(), 3);
        let mut cur = w.get(wf.id).await.unwrap().unwrap();
        for r in &pending {
            cur.apply(&r.report, now);
        }
        assert_eq!(cur.state, WorkflowState::Running);
        assert_eq!(cur.current_action, 1);
        let saved = w
            .save(
                Save {
                    workflow: cur.clone(),
                    applied: pending.iter().map(|r| r.id).collect(),
                    clear_request: false,
                    machine: vec![LifecycleEvent::StartProvisioning],
                },
                now,
            )
            .await
            .unwrap();
        assert_eq!(saved.resource_version, 2);
        assert!(w.unapplied(100).await.unwrap().is_empty());
        let m = t.db.machines().get(m.id).await.unwrap().unwrap();
        assert_eq!(m.state, MachineState::Provisioning);
        // A stale save is refused.
        assert!(matches!(
            w.save(
                Save {
                    workflow: cur,
                    applied: vec![],
                    clear_request: false,
                    machine: vec![],
                },
                now
            )
            .await,
            Err(StoreError::Conflict { .. })
        ));
        assert_eq!(w.report_count(wf.id).await.unwrap(), 3);
    }

    #[tokio::test]
    async fn an_action_served_again_says_where_its_reports_numbering_goes_on() {
        let t = TestDb::new();
        let now = Timestamp::now();
        let (wf, _) = assigned(&t.db, now).await;
        let w = t.db.workflows();
        assert_eq!(w.serve(wf.id, now).await.unwrap().1.unwrap().next_seq, 0);
        // An agent reported seqs 0..=3 of action 0, then its machine rebooted mid-action.
        let progress = || ReportEvent::Progress {
            bytes_done: 1,
            bytes_total: None,
            bytes_per_second: 1,
            message: None,
        };
        assert!(
            w.report(report(wf.id, 0, 0, ReportEvent::Started), now)
                .await
                .unwrap()
        );
        for seq in 1..=3 {
            assert!(
                w.report(report(wf.id, 0, seq, progress()), now)
                    .await
                    .unwrap()
            );
        }
        // Reports of another action and another attempt number apart.
        assert!(
            w.report(report(wf.id, 1, 9, ReportEvent::Started), now)
                .await
                .unwrap()
        );
        let mut other = report(wf.id, 0, 20, ReportEvent::Started);
        other.attempt = 2;
        assert!(w.report(other, now).await.unwrap());
        assert_eq!(
            w.serve(wf.id, now).await.unwrap().1,
            Some(ToServe {
                index: 0,
                next_seq: 4
            })
        );
        // Applied reports keep their seqs taken.
        let ids = w
            .unapplied(100)
            .await
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        w.mark_applied(ids).await.unwrap();
        assert_eq!(w.serve(wf.id, now).await.unwrap().1.unwrap().next_seq, 4);
    }
}
