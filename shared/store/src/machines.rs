//! Machines: registration, lookup, listing, operator edits, lifecycle changes and deletion.
//!
//! Reached through [`Db::machines`]. The SQL functions below take a connection and are
//! private to the crate; [`Machines`] is their only way out.

use std::collections::BTreeMap;

use dragonfly_core::lifecycle::LifecycleEvent;
use dragonfly_core::{HardwareReport, MacAddr, Machine, MachineId, MachineState, names};
use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};
use uuid::Uuid;

use crate::db::{write, write_durable};
use crate::error::Sql;
use crate::schema::Shared;
use crate::time::{from_column, to_column};
use crate::{Db, StoreError};

impl Db<Shared> {
    /// Machines and their MACs.
    pub fn machines(&self) -> Machines<'_> {
        Machines { db: self }
    }
}

/// The machines table group (`machines`, `machine_macs`): see [`Db::machines`].
#[derive(Debug, Clone, Copy)]
pub struct Machines<'a> {
    db: &'a Db<Shared>,
}

impl Machines<'_> {
    /// Looks a machine up by id.
    pub async fn get(self, id: MachineId) -> Result<Option<Machine>, StoreError> {
        self.db.run(move |c| get(c, id)).await
    }

    /// Looks a machine up by id (a UUID) or by memorable name.
    pub async fn get_by_id_or_name(self, key: &str) -> Result<Option<Machine>, StoreError> {
        let key = key.to_owned();
        self.db.run(move |c| get_by_id_or_name(c, &key)).await
    }

    /// Looks a whole machine up by any of its MAC addresses. On a boot path, where only the
    /// machine's fate matters, use [`Machines::boot_info`].
    pub async fn get_by_mac(self, mac: MacAddr) -> Result<Option<Machine>, StoreError> {
        self.db.run(move |c| get_by_mac(c, mac)).await
    }

    /// The boot-relevant facts of the machine owning `mac`: one indexed lookup with a cached
    /// statement and no JSON decoding — this runs for every network boot request.
    pub async fn boot_info(self, mac: MacAddr) -> Result<Option<BootInfo>, StoreError> {
        self.db.run(move |c| boot_info_by_mac(c, mac)).await
    }

    /// Records a hardware report for the machine owning its first MAC (the boot interface),
    /// with no limit on new machines: [`Machines::register_as`] with `report.macs[0]` as the
    /// reporter. For operators' and tests' registrations.
    pub async fn register(
        self,
        report: HardwareReport,
        now: Timestamp,
    ) -> Result<Registered, StoreError> {
        let reporter = report.macs.first().copied().ok_or(StoreError::NotFound {
            what: "MAC in the report",
        })?;
        self.register_as(reporter, None, report, NewMachines::default(), now)
            .await
    }

    /// Records the hardware report of the machine `reporter` (the agent's boot-token MAC)
    /// belongs to: idempotent per machine.
    ///
    /// A report describes its reporter's machine and nothing else. The machine is found by
    /// `reporter` alone, never by another MAC or the SMBIOS UUID. The report may add MACs
    /// nobody owns (a new NIC) and drop the machine's own; a MAC or a (trustworthy) SMBIOS UUID
    /// that belongs to *another* machine is refused as [`StoreError::IdentityConflict`]:
    /// nothing of the report is written, and each claim is recorded in `conflicts` for an
    /// operator ([`Machines::conflicts`]). Identities are never merged or moved.
    ///
    /// No machine owning `reporter` creates one, named after `reporter`, if `new` allows it
    /// ([`StoreError::NewMachineRefused`] when not `allowed`, [`StoreError::Full`] beyond
    /// `max_machines`): `Registered`, or `Discovered` (awaiting
    /// an operator's [`Machines::approve`]) when `new.pending_approval`. A known machine gets
    /// the lifecycle's `Register` event, except that a `Discovered` one stays so while
    /// approval is required.
    ///
    /// With `session` (an agent's token nonce), the reporter's boot session is checked in the
    /// same transaction ([`StoreError::SessionNotCurrent`] unless it is the MAC's current,
    /// unrevoked, unended one): a boot superseded while the report was on its way cannot
    /// slip it in.
    pub async fn register_as(
        self,
        reporter: MacAddr,
        session: Option<[u8; 16]>,
        report: HardwareReport,
        new: NewMachines,
        now: Timestamp,
    ) -> Result<Registered, StoreError> {
        self.db
            .run(move |c| register(c, reporter, session, &report, new, now))
            .await
    }

    /// An operator's approval of a machine awaiting it (`Discovered`): it becomes
    /// `Registered`. [`StoreError::IllegalTransition`]-like refusal
    /// ([`StoreError::NotPending`]) for a machine in any other state.
    pub async fn approve(self, id: MachineId, now: Timestamp) -> Result<Machine, StoreError> {
        self.db.run(move |c| approve(c, id, now)).await
    }

    /// Machine `id`'s lifecycle history, oldest first (at most [`MAX_HISTORY`] entries: the
    /// newest).
    pub async fn history(self, id: MachineId) -> Result<Vec<HistoryEntry>, StoreError> {
        self.db.run(move |c| history(c, id)).await
    }

    /// Identity conflicts recorded, the most recent first, at most `limit`.
    pub async fn conflicts(self, limit: usize) -> Result<Vec<Conflict>, StoreError> {
        self.db.run(move |c| conflicts(c, None, limit)).await
    }

    /// Identity conflicts that name machine `id` as the owner, the most recent first.
    pub async fn conflicts_of(self, id: MachineId) -> Result<Vec<Conflict>, StoreError> {
        self.db
            .run(move |c| conflicts(c, Some(id), MAX_CONFLICTS))
            .await
    }

    /// Lists machines matching `filter`, `limit` at a time, after the name `after`.
    ///
    /// Keyset pagination on the unique name: a page stays correct while machines are added or
    /// removed, which offset pagination does not.
    pub async fn list(
        self,
        filter: Filter,
        after: Option<String>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        self.db
            .run(move |c| list(c, &filter, after.as_deref(), limit))
            .await
    }

    /// Applies an operator's `patch` if the machine's version is still `expected_version`
    /// (when given; [`StoreError::Conflict`] otherwise).
    pub async fn patch(
        self,
        id: MachineId,
        expected_version: Option<i64>,
        patch: Patch,
        now: Timestamp,
    ) -> Result<Machine, StoreError> {
        self.db
            .run(move |c| self::patch(c, id, expected_version, &patch, now))
            .await
    }

    /// Applies a lifecycle `event` to the machine if its version is still `expected_version`
    /// (when given), and sets the workflow it is in afterwards (`None` clears it).
    ///
    /// The new state is whatever [`MachineState::apply`] says; an event the lifecycle refuses
    /// is [`StoreError::IllegalTransition`] and changes nothing. Reaching `Ready` revokes the
    /// boot sessions of the machine's MACs in the same transaction ([`crate::boot`]).
    pub async fn transition(
        self,
        id: MachineId,
        expected_version: Option<i64>,
        event: LifecycleEvent,
        workflow_id: Option<Uuid>,
        now: Timestamp,
    ) -> Result<Machine, StoreError> {
        self.db
            .run(move |c| transition(c, id, expected_version, event, workflow_id, now))
            .await
    }

    /// Deletes a machine (and its MACs) if its version is still `expected_version` (when
    /// given); returns what was deleted.
    pub async fn delete(
        self,
        id: MachineId,
        expected_version: Option<i64>,
    ) -> Result<Machine, StoreError> {
        self.db.run(move |c| delete(c, id, expected_version)).await
    }

    /// How many machines are stored.
    pub async fn count(self) -> Result<u64, StoreError> {
        self.db.run(|c| count(c)).await
    }
}

/// The columns `raw` reads, as a macro so statements can be built with `concat!` at compile
/// time and cached by SQLite's statement cache instead of re-prepared on every call.
macro_rules! columns {
    () => {
        "id, name, hostname, state, labels, hardware, os_template, workflow_id, \
         created_at_ms, updated_at_ms, resource_version"
    };
}
const COLUMNS: &str = columns!();

fn uuid_col(s: &str) -> Result<Uuid, StoreError> {
    s.parse().map_err(|e| StoreError::corrupt("uuid", e))
}

fn state_col(s: &str) -> Result<MachineState, StoreError> {
    s.parse()
        .map_err(|e| StoreError::corrupt("machine state", e))
}

/// Columns as read, before decoding (decoding can fail with our error type, which
/// rusqlite's row closure cannot return).
struct RawRow {
    id: String,
    name: String,
    hostname: Option<String>,
    state: String,
    labels: String,
    hardware: String,
    os_template: Option<String>,
    workflow_id: Option<String>,
    created: i64,
    updated: i64,
    version: i64,
}

fn raw(r: &Row<'_>) -> rusqlite::Result<RawRow> {
    Ok(RawRow {
        id: r.get(0)?,
        name: r.get(1)?,
        hostname: r.get(2)?,
        state: r.get(3)?,
        labels: r.get(4)?,
        hardware: r.get(5)?,
        os_template: r.get(6)?,
        workflow_id: r.get(7)?,
        created: r.get(8)?,
        updated: r.get(9)?,
        version: r.get(10)?,
    })
}

impl RawRow {
    fn decode(self) -> Result<Machine, StoreError> {
        Ok(Machine {
            id: MachineId(uuid_col(&self.id)?),
            name: self.name,
            hostname: self.hostname,
            state: state_col(&self.state)?,
            labels: serde_json::from_str(&self.labels)
                .map_err(|e| StoreError::corrupt("labels", e))?,
            hardware: serde_json::from_str(&self.hardware)
                .map_err(|e| StoreError::corrupt("hardware report", e))?,
            os_template: self.os_template,
            workflow_id: self.workflow_id.as_deref().map(uuid_col).transpose()?,
            created_at: from_column(self.created)?,
            updated_at: from_column(self.updated)?,
            resource_version: self.version,
        })
    }
}

/// One machine by a statement whose only parameter is `key`.
fn one(conn: &Connection, sql: &str, key: &str) -> Result<Option<Machine>, StoreError> {
    conn.prepare_cached(sql)
        .sql()?
        .query_row([key], raw)
        .optional()
        .sql()?
        .map(RawRow::decode)
        .transpose()
}

pub(crate) fn get(conn: &Connection, id: MachineId) -> Result<Option<Machine>, StoreError> {
    one(
        conn,
        concat!("SELECT ", columns!(), " FROM machines WHERE id = ?1"),
        &id.0.to_string(),
    )
}

fn get_by_id_or_name(conn: &Connection, key: &str) -> Result<Option<Machine>, StoreError> {
    if let Ok(id) = key.parse::<Uuid>() {
        return get(conn, MachineId(id));
    }
    one(
        conn,
        concat!("SELECT ", columns!(), " FROM machines WHERE name = ?1"),
        key,
    )
}

fn get_by_mac(conn: &Connection, mac: MacAddr) -> Result<Option<Machine>, StoreError> {
    one(
        conn,
        concat!(
            "SELECT ",
            columns!(),
            " FROM machines WHERE id = (SELECT machine_id FROM machine_macs WHERE mac = ?1)"
        ),
        &mac.to_string(),
    )
}

/// The little the boot path needs to decide a machine's fate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootInfo {
    pub id: MachineId,
    pub name: String,
    pub state: MachineState,
    pub workflow_id: Option<Uuid>,
    /// The state of that workflow (it decides the boot fate before the machine's state).
    pub workflow_state: Option<dragonfly_core::workflow::WorkflowState>,
    /// That workflow's current action is the installed OS's first boot (`cloudinit`).
    pub installed: bool,
}

/// See [`Machines::boot_info`].
pub(crate) const BOOT_INFO: &str = "SELECT m.id, m.name, m.state, m.workflow_id, w.state, \
     COALESCE(json_extract(w.actions, '$[' || w.current_action || '].type') = 'cloudinit', 0) \
     FROM machine_macs mm JOIN machines m ON m.id = mm.machine_id \
     LEFT JOIN workflows w ON w.id = m.workflow_id WHERE mm.mac = ?1";

fn boot_info_by_mac(conn: &Connection, mac: MacAddr) -> Result<Option<BootInfo>, StoreError> {
    let row = conn
        .prepare_cached(BOOT_INFO)
        .sql()?
        .query_row([mac.to_string()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<String>>(4)?,
                r.get::<_, bool>(5)?,
            ))
        })
        .optional()
        .sql()?;
    row.map(|(id, name, state, wf, ws, installed)| {
        Ok(BootInfo {
            id: MachineId(uuid_col(&id)?),
            name,
            state: state_col(&state)?,
            workflow_id: wf.as_deref().map(uuid_col).transpose()?,
            workflow_state: ws
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(|e| StoreError::corrupt("workflow state", e))?,
            installed,
        })
    })
    .transpose()
}

/// What a registration did.
#[derive(Debug, Clone, PartialEq)]
pub enum Registered {
    /// A new machine was created.
    Created(Machine),
    /// The reporter's machine was updated.
    Updated {
        machine: Machine,
        /// The state before the report, so callers can tell a transition happened.
        previous_state: MachineState,
    },
}

impl Registered {
    /// The machine as stored now.
    pub fn machine(&self) -> &Machine {
        match self {
            Self::Created(m) | Self::Updated { machine: m, .. } => m,
        }
    }
}

/// Whether a registration may create a machine, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewMachines {
    /// `false`: refuse to create one ([`StoreError::NewMachineRefused`]; a known machine is
    /// still updated). apid's rate limit, decided before the call so that no extra read is
    /// needed to tell new from known.
    pub allowed: bool,
    /// Refuse ([`StoreError::Full`]) to create one when this many are stored.
    pub max_machines: Option<u64>,
    /// Create new machines `Discovered` (awaiting an operator's approval), not `Registered`.
    pub pending_approval: bool,
}

impl Default for NewMachines {
    /// New machines allowed, no cap, registered at once.
    fn default() -> Self {
        Self {
            allowed: true,
            max_machines: None,
            pending_approval: false,
        }
    }
}

/// What kind of identity a report claimed that another machine owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConflictKind {
    Mac,
    SmbiosUuid,
}

impl ConflictKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mac => "mac",
            Self::SmbiosUuid => "smbiosUuid",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "mac" => Ok(Self::Mac),
            "smbiosUuid" => Ok(Self::SmbiosUuid),
            other => Err(StoreError::corrupt(
                "conflict kind",
                std::io::Error::other(format!("unknown conflict kind {other:?}")),
            )),
        }
    }
}

/// One claim a refused report made on another machine's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub id: i64,
    pub kind: ConflictKind,
    /// The MAC or SMBIOS UUID claimed, as text.
    pub claimed: String,
    /// Who claimed it: the reporting agent's boot-token MAC.
    pub claimant_mac: MacAddr,
    /// The machine that owns it.
    pub owner: MachineId,
    pub first_seen: Timestamp,
    pub last_seen: Timestamp,
    /// How many refused reports made this claim.
    pub count: i64,
}

/// At most this many conflict rows are kept: a reporter with many tokens cannot grow the
/// table without bound. Beyond it new claims are still refused, only not recorded (existing
/// rows keep counting).
pub const MAX_CONFLICTS: usize = 10_000;

/// A claim found while checking a report (before it is recorded).
struct Claim {
    kind: ConflictKind,
    claimed: String,
    owner: String,
}

/// Inside the registration's transaction: commit the new state, or commit only the recorded
/// conflicts and refuse.
enum Outcome {
    Done(Box<Registered>),
    Refused(Vec<Claim>),
}

/// See [`Machines::register_as`].
fn register(
    conn: &mut Connection,
    reporter: MacAddr,
    session: Option<[u8; 16]>,
    report: &HardwareReport,
    new: NewMachines,
    now: Timestamp,
) -> Result<Registered, StoreError> {
    // Acknowledged to the agent, which will not send it again: on disk before the answer.
    let outcome = write_durable(conn, |tx| {
        if let Some(nonce) = session
            && !crate::boot::session_in(tx, reporter)?.is_some_and(|s| s.admits(&nonce, now))
        {
            return Err(StoreError::SessionNotCurrent);
        }
        let owner_of = |mac: &MacAddr| -> Result<Option<String>, StoreError> {
            tx.prepare_cached("SELECT machine_id FROM machine_macs WHERE mac = ?1")
                .sql()?
                .query_row([mac.to_string()], |r| r.get::<_, String>(0))
                .optional()
                .sql()
        };
        // The reporter's machine, by the token's MAC only.
        let own = owner_of(&reporter)?;
        let mut claims = Vec::new();
        for mac in &report.macs {
            if let Some(owner) = owner_of(mac)?
                && Some(&owner) != own.as_ref()
            {
                claims.push(Claim {
                    kind: ConflictKind::Mac,
                    claimed: mac.to_string(),
                    owner,
                });
            }
        }
        let smbios = report.trusted_smbios_uuid().map(|u| u.to_string());
        if let Some(u) = &smbios
            && let Some(owner) = tx
                .prepare_cached("SELECT id FROM machines WHERE smbios_uuid = ?1")
                .sql()?
                .query_row([u], |r| r.get::<_, String>(0))
                .optional()
                .sql()?
            && Some(&owner) != own.as_ref()
        {
            claims.push(Claim {
                kind: ConflictKind::SmbiosUuid,
                claimed: u.clone(),
                owner,
            });
        }
        if !claims.is_empty() {
            record_conflicts(tx, reporter, &claims, now)?;
            return Ok(Outcome::Refused(claims));
        }
        let hardware =
            serde_json::to_string(report).map_err(|e| StoreError::corrupt("hardware report", e))?;
        match own {
            None => {
                if !new.allowed {
                    return Err(StoreError::NewMachineRefused);
                }
                // TODO(perf): count(*) walks an index inside the write lock: ~1 ms per 10k
                // machines for each new one. A counter row would make it O(1).
                if let Some(max) = new.max_machines
                    && count(tx)? >= max
                {
                    return Err(StoreError::Full {
                        what: "machines",
                        max,
                    });
                }
                let id = MachineId(Uuid::now_v7());
                let name = names::first_free(reporter, |candidate| {
                    tx.query_row(
                        "SELECT 1 FROM machines WHERE name = ?1",
                        [candidate],
                        |_| Ok(()),
                    )
                    .optional()
                    .map(|taken| taken.is_some())
                    // An error here resurfaces on the INSERT below; treat it as taken.
                    .unwrap_or(true)
                });
                let state = if new.pending_approval {
                    MachineState::Discovered
                } else {
                    MachineState::Discovered.apply(LifecycleEvent::Register)?
                };
                tx.execute(
                    "INSERT INTO machines (id, name, hostname, state, labels, hardware, smbios_uuid, \
                     created_at_ms, updated_at_ms, resource_version) \
                     VALUES (?1, ?2, NULL, ?3, '{}', ?4, ?5, ?6, ?6, 1)",
                    params![id.0.to_string(), name, state.as_str(), hardware, smbios, to_column(now)],
                )
                .sql()?;
                record(tx, id, None, state, "Created", None, now)?;
                replace_macs(tx, id, &report.macs)?;
                crate::bmc::prefill_tx(tx, id, report.bmc.as_ref(), now)?;
                let m = get(tx, id)?.ok_or(StoreError::NotFound { what: "machine" })?;
                Ok(Outcome::Done(Box::new(Registered::Created(m))))
            }
            Some(own) => {
                let id = MachineId(uuid_col(&own)?);
                let before = get(tx, id)?.ok_or(StoreError::NotFound { what: "machine" })?;
                let state = if before.state == MachineState::Discovered && new.pending_approval {
                    MachineState::Discovered
                } else {
                    before.state.apply(LifecycleEvent::Register)?
                };
                tx.execute(
                    "UPDATE machines SET state = ?2, hardware = ?3, smbios_uuid = COALESCE(?4, smbios_uuid), \
                     updated_at_ms = ?5, resource_version = resource_version + 1 WHERE id = ?1",
                    params![id.0.to_string(), state.as_str(), hardware, smbios, to_column(now)],
                )
                .sql()?;
                record(tx, id, Some(before.state), state, "Register", None, now)?;
                replace_macs(tx, id, &report.macs)?;
                crate::bmc::prefill_tx(tx, id, report.bmc.as_ref(), now)?;
                let m = get(tx, id)?.ok_or(StoreError::NotFound { what: "machine" })?;
                Ok(Outcome::Done(Box::new(Registered::Updated {
                    machine: m,
                    previous_state: before.state,
                })))
            }
        }
    })?;
    match outcome {
        Outcome::Done(r) => Ok(*r),
        Outcome::Refused(claims) => Err(StoreError::IdentityConflict {
            claims: claims
                .into_iter()
                .map(|c| {
                    format!(
                        "{} {} (owned by machine {})",
                        c.kind.as_str(),
                        c.claimed,
                        c.owner
                    )
                })
                .collect(),
        }),
    }
}

/// Counts each claim on its (kind, value, claimant) row, creating it while there is room.
fn record_conflicts(
    tx: &Transaction<'_>,
    reporter: MacAddr,
    claims: &[Claim],
    now: Timestamp,
) -> Result<(), StoreError> {
    let stored: i64 = tx
        .query_row("SELECT count(*) FROM conflicts", [], |r| r.get(0))
        .sql()?;
    let mut room = usize::try_from(stored).map_or(0, |n| MAX_CONFLICTS.saturating_sub(n));
    let reporter = reporter.to_string();
    for c in claims {
        let bumped = tx
            .prepare_cached(
                "UPDATE conflicts SET count = count + 1, last_seen_ms = ?4, owner_id = ?5 \
                 WHERE kind = ?1 AND claimed = ?2 AND claimant_mac = ?3",
            )
            .sql()?
            .execute(params![
                c.kind.as_str(),
                c.claimed,
                reporter,
                to_column(now),
                c.owner
            ])
            .sql()?;
        if bumped == 0 && room > 0 {
            tx.prepare_cached(
                "INSERT INTO conflicts (kind, claimed, claimant_mac, owner_id, first_seen_ms, \
                 last_seen_ms, count) VALUES (?1, ?2, ?3, ?4, ?5, ?5, 1)",
            )
            .sql()?
            .execute(params![
                c.kind.as_str(),
                c.claimed,
                reporter,
                c.owner,
                to_column(now)
            ])
            .sql()?;
            room -= 1;
        }
    }
    Ok(())
}

fn conflicts(
    conn: &Connection,
    owner: Option<MachineId>,
    limit: usize,
) -> Result<Vec<Conflict>, StoreError> {
    let limit = i64::try_from(limit.min(MAX_CONFLICTS)).unwrap_or(i64::MAX);
    let mut stmt = conn
        .prepare_cached(
            "SELECT id, kind, claimed, claimant_mac, owner_id, first_seen_ms, last_seen_ms, count \
             FROM conflicts WHERE ?1 IS NULL OR owner_id = ?1 \
             ORDER BY last_seen_ms DESC, id DESC LIMIT ?2",
        )
        .sql()?;
    let rows = stmt
        .query_map(params![owner.map(|o| o.0.to_string()), limit], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, i64>(7)?,
            ))
        })
        .sql()?;
    rows.map(|r| {
        let (id, kind, claimed, claimant, owner, first, last, count) = r.sql()?;
        Ok(Conflict {
            id,
            kind: ConflictKind::parse(&kind)?,
            claimed,
            claimant_mac: claimant
                .parse()
                .map_err(|e| StoreError::corrupt("conflict MAC", e))?,
            owner: MachineId(uuid_col(&owner)?),
            first_seen: from_column(first)?,
            last_seen: from_column(last)?,
            count,
        })
    })
    .collect()
}

/// See [`Machines::approve`].
fn approve(conn: &mut Connection, id: MachineId, now: Timestamp) -> Result<Machine, StoreError> {
    write(conn, |tx| {
        let current = current(tx, id, None)?;
        if current.state != MachineState::Discovered {
            return Err(StoreError::NotPending {
                state: current.state,
            });
        }
        let state = current.state.apply(LifecycleEvent::Register)?;
        tx.execute(
            "UPDATE machines SET state = ?2, updated_at_ms = ?3, \
             resource_version = resource_version + 1 WHERE id = ?1",
            params![id.0.to_string(), state.as_str(), to_column(now)],
        )
        .sql()?;
        record(tx, id, Some(current.state), state, "Approve", None, now)?;
        get(tx, id)?.ok_or(StoreError::NotFound { what: "machine" })
    })
}

/// How many history entries are kept per machine (the newest).
pub const MAX_HISTORY: usize = 200;

/// One state a machine entered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub at: Timestamp,
    /// `None` for the machine's first state.
    pub from: Option<MachineState>,
    pub to: MachineState,
    /// The lifecycle event (`Register`, `AssignOs`, `StartProvisioning`, …), `Approve`, or
    /// `Created`.
    pub event: String,
    /// The workflow that moved the machine, when one did.
    pub workflow_id: Option<Uuid>,
}

/// Records that machine `id` entered state `to` (nothing when it was already there), in the
/// transaction that moved it; keeps the newest [`MAX_HISTORY`].
fn record(
    tx: &Transaction<'_>,
    id: MachineId,
    from: Option<MachineState>,
    to: MachineState,
    event: &str,
    workflow_id: Option<Uuid>,
    now: Timestamp,
) -> Result<(), StoreError> {
    if from == Some(to) {
        return Ok(());
    }
    let machine = id.0.to_string();
    tx.prepare_cached(
        "INSERT INTO machine_history (machine_id, at_ms, from_state, to_state, event, workflow_id) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .sql()?
    .execute(params![
        machine,
        to_column(now),
        from.map(MachineState::as_str),
        to.as_str(),
        event,
        workflow_id.map(|w| w.to_string())
    ])
    .sql()?;
    tx.prepare_cached(
        "DELETE FROM machine_history WHERE machine_id = ?1 AND id <= \
         (SELECT id FROM machine_history WHERE machine_id = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
    )
    .sql()?
    .execute(params![machine, MAX_HISTORY as i64])
    .sql()?;
    Ok(())
}

fn history(conn: &Connection, id: MachineId) -> Result<Vec<HistoryEntry>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT at_ms, from_state, to_state, event, workflow_id FROM machine_history \
             WHERE machine_id = ?1 ORDER BY id",
        )
        .sql()?;
    let rows = stmt
        .query_map([id.0.to_string()], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Option<String>>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, Option<String>>(4)?,
            ))
        })
        .sql()?;
    let state = |s: &str| {
        s.parse::<MachineState>()
            .map_err(|e| StoreError::corrupt("machine_history state", e))
    };
    rows.map(|row| {
        let (at, from, to, event, workflow) = row.sql()?;
        Ok(HistoryEntry {
            at: from_column(at)?,
            from: from.as_deref().map(state).transpose()?,
            to: state(&to)?,
            event,
            workflow_id: workflow
                .map(|w| {
                    Uuid::parse_str(&w)
                        .map_err(|e| StoreError::corrupt("machine_history workflow", e))
                })
                .transpose()?,
        })
    })
    .collect()
}

fn replace_macs(tx: &Transaction<'_>, id: MachineId, macs: &[MacAddr]) -> Result<(), StoreError> {
    tx.execute(
        "DELETE FROM machine_macs WHERE machine_id = ?1",
        [id.0.to_string()],
    )
    .sql()?;
    let mut ins = tx
        .prepare_cached("INSERT INTO machine_macs (mac, machine_id) VALUES (?1, ?2)")
        .sql()?;
    for mac in macs {
        ins.execute([mac.to_string(), id.0.to_string()]).sql()?;
    }
    Ok(())
}

/// Which machines to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub state: Option<MachineState>,
    /// Every pair must match (`key=value`).
    pub labels: BTreeMap<String, String>,
}

/// One page of machines, ordered by name.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub items: Vec<Machine>,
    /// Pass as `after` to get the next page; `None` on the last page.
    pub next_after: Option<String>,
}

/// See [`Machines::list`].
fn list(
    conn: &Connection,
    filter: &Filter,
    after: Option<&str>,
    limit: usize,
) -> Result<Page, StoreError> {
    let mut sql = format!("SELECT {COLUMNS} FROM machines WHERE name > ?1");
    let mut args: Vec<String> = vec![after.unwrap_or("").to_owned()];
    if let Some(s) = filter.state {
        args.push(s.as_str().to_owned());
        sql.push_str(&format!(" AND state = ?{}", args.len()));
    }
    for (k, v) in &filter.labels {
        args.push(k.clone());
        args.push(v.clone());
        sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM json_each(machines.labels) WHERE key = ?{} AND value = ?{})",
            args.len() - 1,
            args.len()
        ));
    }
    // Fetch one extra row to know whether another page follows.
    sql.push_str(&format!(" ORDER BY name LIMIT {}", limit.saturating_add(1)));
    let mut stmt = conn.prepare(&sql).sql()?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(args.iter()), raw)
        .sql()?;
    let mut items = Vec::new();
    for row in rows {
        items.push(row.sql()?.decode()?);
    }
    let next_after = if items.len() > limit {
        items.truncate(limit);
        items.last().map(|m| m.name.clone())
    } else {
        None
    };
    Ok(Page { items, next_after })
}

/// An operator's edit. `None` leaves a field alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Patch {
    /// Replaces the whole label set.
    pub labels: Option<BTreeMap<String, String>>,
    /// `Some(None)` clears the host name.
    pub hostname: Option<Option<String>>,
}

/// The machine, if `expected` (when given) is still its version.
fn current(
    tx: &Transaction<'_>,
    id: MachineId,
    expected: Option<i64>,
) -> Result<Machine, StoreError> {
    let current = get(tx, id)?.ok_or(StoreError::NotFound { what: "machine" })?;
    if let Some(expected) = expected
        && expected != current.resource_version
    {
        return Err(StoreError::Conflict {
            expected,
            current: current.resource_version,
        });
    }
    Ok(current)
}

/// Checks that an `UPDATE … WHERE resource_version = ?` guarded by `read` changed one row.
fn one_updated(n: usize, read: &Machine) -> Result<(), StoreError> {
    if n == 1 {
        Ok(())
    } else {
        Err(StoreError::Conflict {
            expected: read.resource_version,
            current: read.resource_version + 1,
        })
    }
}

/// See [`Machines::patch`].
fn patch(
    conn: &mut Connection,
    id: MachineId,
    expected_version: Option<i64>,
    patch: &Patch,
    now: Timestamp,
) -> Result<Machine, StoreError> {
    write(conn, |tx| {
        let current = current(tx, id, expected_version)?;
        let labels = patch.labels.as_ref().unwrap_or(&current.labels);
        let hostname = patch.hostname.as_ref().unwrap_or(&current.hostname);
        let labels = serde_json::to_string(labels).map_err(|e| StoreError::corrupt("labels", e))?;
        // The version guard is repeated in SQL so the row can never move under us.
        let n = tx
            .execute(
                "UPDATE machines SET labels = ?2, hostname = ?3, updated_at_ms = ?4, \
                 resource_version = resource_version + 1 WHERE id = ?1 AND resource_version = ?5",
                params![
                    id.0.to_string(),
                    labels,
                    hostname,
                    to_column(now),
                    current.resource_version
                ],
            )
            .sql()?;
        one_updated(n, &current)?;
        get(tx, id)?.ok_or(StoreError::NotFound { what: "machine" })
    })
}

/// See [`Machines::transition`].
fn transition(
    conn: &mut Connection,
    id: MachineId,
    expected_version: Option<i64>,
    event: LifecycleEvent,
    workflow_id: Option<Uuid>,
    now: Timestamp,
) -> Result<Machine, StoreError> {
    write(conn, |tx| {
        transition_tx(tx, id, expected_version, event, workflow_id, now)
    })
}

/// [`Machines::transition`] inside a caller's transaction (a workflow's change moves its
/// machine in the same commit).
pub(crate) fn transition_tx(
    tx: &Transaction<'_>,
    id: MachineId,
    expected_version: Option<i64>,
    event: LifecycleEvent,
    workflow_id: Option<Uuid>,
    now: Timestamp,
) -> Result<Machine, StoreError> {
    {
        let current = current(tx, id, expected_version)?;
        let state = current.state.apply(event)?;
        let n = tx
            .execute(
                "UPDATE machines SET state = ?2, workflow_id = ?3, updated_at_ms = ?4, \
                 resource_version = resource_version + 1 WHERE id = ?1 AND resource_version = ?5",
                params![
                    id.0.to_string(),
                    state.as_str(),
                    workflow_id.map(|w| w.to_string()),
                    to_column(now),
                    current.resource_version
                ],
            )
            .sql()?;
        one_updated(n, &current)?;
        record(
            tx,
            id,
            Some(current.state),
            state,
            &format!("{event:?}"),
            workflow_id,
            now,
        )?;
        if state == MachineState::Ready {
            // Its agent's work is done: no token of this boot may speak for it any more.
            crate::boot::revoke_machine(tx, &id.0.to_string(), now)?;
        }
        get(tx, id)?.ok_or(StoreError::NotFound { what: "machine" })
    }
}

/// See [`Machines::delete`].
fn delete(
    conn: &mut Connection,
    id: MachineId,
    expected_version: Option<i64>,
) -> Result<Machine, StoreError> {
    write(conn, |tx| {
        let current = current(tx, id, expected_version)?;
        tx.execute("DELETE FROM machines WHERE id = ?1", [id.0.to_string()])
            .sql()?;
        Ok(current)
    })
}

fn count(conn: &Connection) -> Result<u64, StoreError> {
    let n: i64 = conn
        .query_row("SELECT count(*) FROM machines", [], |r| r.get(0))
        .sql()?;
    Ok(n.unsigned_abs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::open_connection;

    fn db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        crate::migrate_file(&path).unwrap();
        (dir, open_connection(&path, false).unwrap())
    }

    fn mac(n: u8) -> MacAddr {
        MacAddr::new([0x52, 0x54, 0, 0, 0, n])
    }

    fn report(macs: &[u8], uuid: Option<u128>) -> HardwareReport {
        HardwareReport {
            macs: macs.iter().map(|n| mac(*n)).collect(),
            smbios_uuid: uuid.map(Uuid::from_u128),
            hostname: None,
            cpu: None,
            memory_bytes: Some(1 << 30),
            disks: vec![],
            nics: vec![],
            bmc: None,
            ..Default::default()
        }
    }

    fn now() -> Timestamp {
        "2026-11-21T12:00:00Z".parse().unwrap()
    }

    /// Registers `r` as reported by its first MAC, with no limit on new machines.
    fn reg(
        c: &mut Connection,
        r: &HardwareReport,
        now: Timestamp,
    ) -> Result<Registered, StoreError> {
        register(c, r.macs[0], None, r, NewMachines::default(), now)
    }

    fn rows(c: &Connection, table: &str) -> i64 {
        c.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    /// Everything a registration may write, to prove a refused one wrote none of it.
    fn snapshot(c: &Connection) -> (Vec<Machine>, Vec<(String, String)>) {
        let machines = list(c, &Filter::default(), None, 1000).unwrap().items;
        let macs = c
            .prepare("SELECT mac, machine_id FROM machine_macs ORDER BY mac")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        (machines, macs)
    }

    #[test]
    fn register_creates_then_updates() {
        let (_d, mut c) = db();
        let first = reg(&mut c, &report(&[1, 2], Some(5)), now()).unwrap();
        let Registered::Created(m) = &first else {
            panic!("{first:?}")
        };
        assert_eq!(m.state, MachineState::Registered);
        assert_eq!(m.name, names::memorable_name(mac(1)));
        assert_eq!(m.resource_version, 1);
        // Same MACs, more memory: an update, never a duplicate.
        let mut r = report(&[2, 1], Some(5));
        r.memory_bytes = Some(2 << 30);
        let second = reg(&mut c, &r, now()).unwrap();
        let Registered::Updated {
            machine,
            previous_state,
        } = second
        else {
            panic!()
        };
        assert_eq!(machine.id, m.id);
        assert_eq!(machine.name, m.name);
        assert_eq!(previous_state, MachineState::Registered);
        assert_eq!(machine.hardware.memory_bytes, Some(2 << 30));
        assert_eq!(machine.resource_version, 2);
        assert_eq!(count(&c).unwrap(), 1);
    }

    #[test]
    fn the_reporter_finds_its_machine_by_its_own_mac_only() {
        let (_d, mut c) = db();
        let id = reg(&mut c, &report(&[1, 2], Some(5)), now())
            .unwrap()
            .machine()
            .id;
        // A NIC was swapped: MAC 2 gone, MAC 3 (owned by nobody) new; found by MAC 1.
        let m = reg(&mut c, &report(&[1, 3], None), now()).unwrap();
        assert_eq!(m.machine().id, id);
        assert!(get_by_mac(&c, mac(2)).unwrap().is_none());
        assert_eq!(get_by_mac(&c, mac(3)).unwrap().unwrap().id, id);
        // The SMBIOS UUID was kept (a report without one does not clear it).
        let again = reg(&mut c, &report(&[1, 3], Some(5)), now()).unwrap();
        assert!(matches!(again, Registered::Updated { .. }));
        assert_eq!(count(&c).unwrap(), 1);
        // The same report from MAC 3 (also the machine's): the same machine.
        let m = register(
            &mut c,
            mac(3),
            None,
            &report(&[1, 3], None),
            NewMachines::default(),
            now(),
        )
        .unwrap();
        assert_eq!(m.machine().id, id);
    }

    #[test]
    fn a_report_claiming_another_machines_mac_is_refused_and_recorded() {
        let (_d, mut c) = db();
        let victim = reg(&mut c, &report(&[2], None), now())
            .unwrap()
            .machine()
            .clone();
        let before = snapshot(&c);
        // An attacker with a token for MAC 1 (a new machine) claims the victim's MAC 2.
        let err = reg(&mut c, &report(&[1, 2], None), now()).unwrap_err();
        assert!(matches!(err, StoreError::IdentityConflict { .. }), "{err}");
        assert_eq!(snapshot(&c), before, "nothing of the report written");
        // Again: the same conflict is counted, not duplicated.
        let later = now() + jiff::SignedDuration::from_secs(5);
        reg(&mut c, &report(&[1, 2], None), later).unwrap_err();
        let cs = conflicts(&c, None, 100).unwrap();
        assert_eq!(cs.len(), 1);
        let k = &cs[0];
        assert_eq!(
            (k.kind, k.claimed.as_str(), k.claimant_mac, k.owner, k.count),
            (ConflictKind::Mac, "52:54:00:00:00:02", mac(1), victim.id, 2)
        );
        assert_eq!((k.first_seen, k.last_seen), (now(), later));
        assert_eq!(conflicts(&c, Some(victim.id), 10).unwrap(), cs);
        // An existing machine claiming a neighbour's MAC is refused the same way.
        reg(&mut c, &report(&[1], None), now()).unwrap();
        let before = snapshot(&c);
        reg(&mut c, &report(&[1, 2], None), now()).unwrap_err();
        assert_eq!(snapshot(&c), before);
    }

    #[test]
    fn a_report_claiming_another_machines_smbios_uuid_is_refused_and_recorded() {
        let (_d, mut c) = db();
        let victim = reg(&mut c, &report(&[2], Some(5)), now())
            .unwrap()
            .machine()
            .clone();
        let before = snapshot(&c);
        // Every NIC "swapped", same mainboard: no longer a silent move of the identity.
        let err = reg(&mut c, &report(&[1], Some(5)), now()).unwrap_err();
        assert!(matches!(err, StoreError::IdentityConflict { .. }), "{err}");
        assert_eq!(snapshot(&c), before);
        let cs = conflicts(&c, None, 100).unwrap();
        assert_eq!(cs.len(), 1);
        assert_eq!(
            (cs[0].kind, cs[0].claimed.clone(), cs[0].owner),
            (
                ConflictKind::SmbiosUuid,
                Uuid::from_u128(5).to_string(),
                victim.id
            )
        );
        // The owner itself keeps reporting it.
        reg(&mut c, &report(&[2], Some(5)), now()).unwrap();
    }

    #[test]
    fn an_agent_report_needs_its_current_boot_session() {
        let (_d, mut c) = db();
        let end = now() + jiff::SignedDuration::from_hours(1);
        crate::db::write(&mut c, |tx| {
            tx.execute(
                "INSERT INTO boot_sessions (mac, nonce, created_at_ms, expires_at_ms) \
                 VALUES (?1, ?2, ?3, ?4)",
                params![
                    mac(1).to_string(),
                    &[1u8; 16][..],
                    to_column(now()),
                    to_column(end)
                ],
            )
            .sql()
        })
        .unwrap();
        let r = report(&[1], None);
        for stale in [Some([2; 16]), Some([1; 16])] {
            let at = if stale == Some([1; 16]) { end } else { now() };
            let err = register(&mut c, mac(1), stale, &r, NewMachines::default(), at).unwrap_err();
            assert!(matches!(err, StoreError::SessionNotCurrent), "{err}");
        }
        assert_eq!(count(&c).unwrap(), 0, "nothing written");
        let err = register(
            &mut c,
            mac(2),
            Some([1; 16]),
            &report(&[2], None),
            NewMachines::default(),
            now(),
        )
        .unwrap_err();
        assert!(
            matches!(err, StoreError::SessionNotCurrent),
            "no session at all"
        );
        register(
            &mut c,
            mac(1),
            Some([1; 16]),
            &r,
            NewMachines::default(),
            now(),
        )
        .unwrap();
        assert_eq!(count(&c).unwrap(), 1);
    }

    #[test]
    fn placeholder_smbios_uuids_do_not_merge_machines() {
        let (_d, mut c) = db();
        reg(&mut c, &report(&[1], Some(0)), now()).unwrap();
        reg(&mut c, &report(&[2], Some(0)), now()).unwrap();
        assert_eq!(count(&c).unwrap(), 2);
        assert_eq!(rows(&c, "conflicts"), 0);
    }

    #[test]
    fn new_machines_stop_at_the_cap_and_can_await_approval() {
        let (_d, mut c) = db();
        let capped = NewMachines {
            max_machines: Some(2),
            ..NewMachines::default()
        };
        for n in [1, 2] {
            register(&mut c, mac(n), None, &report(&[n], None), capped, now()).unwrap();
        }
        let err = register(&mut c, mac(3), None, &report(&[3], None), capped, now()).unwrap_err();
        assert!(matches!(err, StoreError::Full { max: 2, .. }), "{err}");
        assert_eq!(count(&c).unwrap(), 2);
        // Known machines still register at the cap, and when new ones are not allowed.
        register(&mut c, mac(1), None, &report(&[1], None), capped, now()).unwrap();
        let paused = NewMachines {
            allowed: false,
            ..NewMachines::default()
        };
        register(&mut c, mac(1), None, &report(&[1], None), paused, now()).unwrap();
        let err = register(&mut c, mac(9), None, &report(&[9], None), paused, now()).unwrap_err();
        assert!(matches!(err, StoreError::NewMachineRefused), "{err}");
        assert_eq!(count(&c).unwrap(), 2);
        let pending = NewMachines {
            pending_approval: true,
            ..NewMachines::default()
        };
        let m = register(&mut c, mac(4), None, &report(&[4], None), pending, now())
            .unwrap()
            .machine()
            .clone();
        assert_eq!(m.state, MachineState::Discovered);
        // Its agent reporting again does not approve it.
        let again = register(&mut c, mac(4), None, &report(&[4], None), pending, now()).unwrap();
        assert_eq!(again.machine().state, MachineState::Discovered);
        let approved = approve(&mut c, m.id, now()).unwrap();
        assert_eq!(approved.state, MachineState::Registered);
        assert!(matches!(
            approve(&mut c, m.id, now()),
            Err(StoreError::NotPending { .. })
        ));
    }

    #[test]
    fn conflicts_are_bounded() {
        let (_d, mut c) = db();
        reg(&mut c, &report(&[2], None), now()).unwrap();
        let owner: String = c
            .query_row("SELECT id FROM machines", [], |r| r.get(0))
            .unwrap();
        c.execute_batch(&format!(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {MAX_CONFLICTS}) \
             INSERT INTO conflicts (kind, claimed, claimant_mac, owner_id, first_seen_ms, last_seen_ms, count) \
             SELECT 'mac', 'x' || i, '52:54:00:00:00:09', '{owner}', 0, 0, 1 FROM n"
        ))
        .unwrap();
        reg(&mut c, &report(&[1, 2], None), now()).unwrap_err();
        assert_eq!(rows(&c, "conflicts"), i64::try_from(MAX_CONFLICTS).unwrap());
    }

    #[test]
    fn name_collision_gets_a_fifth_word() {
        let (_d, mut c) = db();
        // Squat on mac(1)'s name with another machine.
        let other = reg(&mut c, &report(&[7], None), now())
            .unwrap()
            .machine()
            .id;
        c.execute(
            "UPDATE machines SET name = ?1 WHERE id = ?2",
            params![names::memorable_name(mac(1)), other.0.to_string()],
        )
        .unwrap();
        let m = reg(&mut c, &report(&[1], None), now()).unwrap();
        assert_eq!(m.machine().name, names::name_with_words(mac(1), 5));
    }

    #[test]
    fn boot_info_matches_the_full_record() {
        let (_d, mut c) = db();
        let m = reg(&mut c, &report(&[1, 2], None), now())
            .unwrap()
            .machine()
            .clone();
        for n in [1, 2] {
            let b = boot_info_by_mac(&c, mac(n)).unwrap().unwrap();
            assert_eq!(
                (b.id, b.name.as_str(), b.state, b.workflow_id),
                (m.id, m.name.as_str(), m.state, None)
            );
        }
        assert!(boot_info_by_mac(&c, mac(3)).unwrap().is_none());
    }

    #[test]
    fn lookups() {
        let (_d, mut c) = db();
        let m = reg(&mut c, &report(&[1], None), now())
            .unwrap()
            .machine()
            .clone();
        assert_eq!(
            get_by_id_or_name(&c, &m.id.to_string()).unwrap().unwrap(),
            m
        );
        assert_eq!(get_by_id_or_name(&c, &m.name).unwrap().unwrap(), m);
        assert!(get_by_id_or_name(&c, "NoSuchName").unwrap().is_none());
    }

    #[test]
    fn list_filters_and_pages() {
        let (_d, mut c) = db();
        for i in 1..=25u8 {
            let id = reg(&mut c, &report(&[i], None), now())
                .unwrap()
                .machine()
                .id;
            let labels = if i % 2 == 0 {
                [("rack".to_owned(), "r2".to_owned())].into()
            } else {
                [
                    ("rack".to_owned(), "r1".to_owned()),
                    ("dragonfly.computer/role".to_owned(), "gpu".to_owned()),
                ]
                .into()
            };
            patch(
                &mut c,
                id,
                None,
                &Patch {
                    labels: Some(labels),
                    hostname: None,
                },
                now(),
            )
            .unwrap();
        }
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = list(&c, &Filter::default(), after.as_deref(), 10).unwrap();
            assert!(page.items.len() <= 10);
            seen.extend(page.items.iter().map(|m| m.name.clone()));
            match page.next_after {
                Some(a) => after = Some(a),
                None => break,
            }
        }
        assert_eq!(seen.len(), 25);
        assert!(seen.windows(2).all(|w| w[0] < w[1]));
        let f = Filter {
            state: None,
            labels: [("rack".to_owned(), "r1".to_owned())].into(),
        };
        assert_eq!(list(&c, &f, None, 100).unwrap().items.len(), 13);
        let f = Filter {
            state: Some(MachineState::Registered),
            labels: [("dragonfly.computer/role".to_owned(), "gpu".to_owned())].into(),
        };
        assert_eq!(list(&c, &f, None, 100).unwrap().items.len(), 13);
        let f = Filter {
            state: Some(MachineState::Ready),
            labels: BTreeMap::new(),
        };
        assert!(list(&c, &f, None, 100).unwrap().items.is_empty());
    }

    #[test]
    fn stale_versions_are_refused() {
        let (_d, mut c) = db();
        let m = reg(&mut c, &report(&[1], None), now())
            .unwrap()
            .machine()
            .clone();
        let p = Patch {
            labels: None,
            hostname: Some(Some("a".into())),
        };
        let m2 = patch(&mut c, m.id, Some(m.resource_version), &p, now()).unwrap();
        assert_eq!(m2.resource_version, m.resource_version + 1);
        let err = patch(&mut c, m.id, Some(m.resource_version), &p, now()).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Conflict {
                    expected: 1,
                    current: 2
                }
            ),
            "{err}"
        );
        let err = delete(&mut c, m.id, Some(1)).unwrap_err();
        assert!(matches!(err, StoreError::Conflict { .. }));
        delete(&mut c, m.id, Some(2)).unwrap();
        assert!(get(&c, m.id).unwrap().is_none());
        assert!(get_by_mac(&c, mac(1)).unwrap().is_none(), "MACs cascade");
        assert!(matches!(
            delete(&mut c, m.id, None),
            Err(StoreError::NotFound { .. })
        ));
    }

    #[test]
    fn history_records_every_state_entered_in_the_same_transaction() {
        let (_d, mut c) = db();
        let m = reg(&mut c, &report(&[1], None), now())
            .unwrap()
            .machine()
            .clone();
        // A heartbeat (a second registration) changes no state: no entry.
        reg(&mut c, &report(&[1], None), now()).unwrap();
        let wf = Uuid::from_u128(0xf2);
        for event in [
            LifecycleEvent::AssignOs,
            LifecycleEvent::StartProvisioning,
            LifecycleEvent::Fail,
        ] {
            transition(&mut c, m.id, None, event, Some(wf), now()).unwrap();
        }
        // A refused move records nothing.
        transition(
            &mut c,
            m.id,
            None,
            LifecycleEvent::ProvisioningSucceeded,
            None,
            now(),
        )
        .unwrap_err();
        let h = history(&c, m.id).unwrap();
        let steps: Vec<_> = h
            .iter()
            .map(|e| (e.from, e.to, e.event.as_str(), e.workflow_id))
            .collect();
        assert_eq!(
            steps,
            [
                (None, MachineState::Registered, "Created", None),
                (
                    Some(MachineState::Registered),
                    MachineState::OsAssigned,
                    "AssignOs",
                    Some(wf)
                ),
                (
                    Some(MachineState::OsAssigned),
                    MachineState::Provisioning,
                    "StartProvisioning",
                    Some(wf)
                ),
                (
                    Some(MachineState::Provisioning),
                    MachineState::Error,
                    "Fail",
                    Some(wf)
                ),
            ]
        );
        // Bounded: the newest MAX_HISTORY are kept.
        for _ in 0..MAX_HISTORY {
            transition(&mut c, m.id, None, LifecycleEvent::Retry, None, now()).unwrap();
            transition(&mut c, m.id, None, LifecycleEvent::Fail, None, now()).unwrap();
        }
        let h = history(&c, m.id).unwrap();
        assert_eq!(h.len(), MAX_HISTORY);
        assert_eq!(h.last().unwrap().to, MachineState::Error);
        // Deleted with the machine.
        c.execute("DELETE FROM machines WHERE id = ?1", [m.id.0.to_string()])
            .unwrap();
        assert!(history(&c, m.id).unwrap().is_empty());
    }

    #[test]
    fn transitions_follow_the_lifecycle_and_the_version() {
        let (_d, mut c) = db();
        let m = reg(&mut c, &report(&[1], None), now())
            .unwrap()
            .machine()
            .clone();
        let wf = Uuid::from_u128(0xf1);
        let assigned = transition(
            &mut c,
            m.id,
            Some(m.resource_version),
            LifecycleEvent::AssignOs,
            Some(wf),
            now(),
        )
        .unwrap();
        assert_eq!(
            (
                assigned.state,
                assigned.workflow_id,
                assigned.resource_version
            ),
            (MachineState::OsAssigned, Some(wf), m.resource_version + 1)
        );
        // The version read before the assignment is stale now.
        let err = transition(
            &mut c,
            m.id,
            Some(m.resource_version),
            LifecycleEvent::StartProvisioning,
            Some(wf),
            now(),
        )
        .unwrap_err();
        assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
        // Ready straight from OsAssigned is refused, and nothing changes.
        let err = transition(
            &mut c,
            m.id,
            None,
            LifecycleEvent::ProvisioningSucceeded,
            None,
            now(),
        )
        .unwrap_err();
        assert!(matches!(err, StoreError::IllegalTransition(_)), "{err}");
        assert_eq!(get(&c, m.id).unwrap().unwrap(), assigned);
        // The boot path sees the change.
        let b = boot_info_by_mac(&c, mac(1)).unwrap().unwrap();
        assert_eq!(
            (b.state, b.workflow_id),
            (MachineState::OsAssigned, Some(wf))
        );
        let back = transition(&mut c, m.id, None, LifecycleEvent::UnassignOs, None, now()).unwrap();
        assert_eq!(
            (back.state, back.workflow_id),
            (MachineState::Registered, None)
        );
    }

    #[test]
    fn the_boot_lookup_uses_the_mac_primary_key() {
        let (_d, c) = db();
        let plan: Vec<String> = c
            .prepare(&format!("EXPLAIN QUERY PLAN {BOOT_INFO}"))
            .unwrap()
            .query_map(["52:54:00:00:00:01"], |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(
            plan.iter()
                .any(|p| p.contains("USING INDEX sqlite_autoindex_machine_macs_1 (mac=?)")),
            "{plan:?}"
        );
        assert!(
            plan.iter()
                .any(|p| p.contains("USING INDEX sqlite_autoindex_machines_1 (id=?)")),
            "{plan:?}"
        );
    }

    #[tokio::test]
    async fn the_handle_reaches_the_same_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        crate::migrate_file(&path).unwrap();
        let db = Db::open(&path).await.unwrap();
        let machines = db.machines();
        let m = machines
            .register(report(&[1, 2], None), now())
            .await
            .unwrap()
            .machine()
            .clone();
        assert_eq!(machines.count().await.unwrap(), 1);
        assert_eq!(machines.get(m.id).await.unwrap().as_ref(), Some(&m));
        assert_eq!(
            machines.get_by_mac(mac(2)).await.unwrap().as_ref(),
            Some(&m)
        );
        assert_eq!(
            machines.get_by_id_or_name(&m.name).await.unwrap().as_ref(),
            Some(&m)
        );
        assert_eq!(machines.boot_info(mac(1)).await.unwrap().unwrap().id, m.id);
        let page = machines.list(Filter::default(), None, 10).await.unwrap();
        assert_eq!(page.items, vec![m.clone()]);
        let p = Patch {
            labels: None,
            hostname: Some(Some("h".into())),
        };
        let m2 = machines.patch(m.id, Some(1), p, now()).await.unwrap();
        assert_eq!(m2.hostname.as_deref(), Some("h"));
        machines.delete(m.id, Some(2)).await.unwrap();
        assert_eq!(machines.count().await.unwrap(), 0);
    }
}
