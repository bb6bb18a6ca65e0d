//! Machines' BMCs, the power state bmcd reads from them, and the power work provisioning
//! needs done (migration `0006_bmc`).
//!
//! Three writers, each with its own columns: apid writes what an operator configures (kind,
//! address, user, the sealed password) through [`Bmcs::put`]; a registration pre-fills a row
//! from the agent's report when there is none (`prefill_tx`, in the registration's own
//! transaction); bmcd writes what it reads (power state, condition) through
//! [`Bmcs::record`]. The password arrives here already sealed to bmcd's public key (see
//! `dragonfly-bmc`'s `seal` module): this crate never sees it in the clear, and no read of it
//! leaves this module except [`Bmcs::credentials`], which only bmcd calls.
//!
//! Power work that must not be lost ([`PowerRequest`]) is created in the transaction of the
//! change that needs it — a workflow created or succeeded (`request_tx`, called by
//! `workflows`) — so it is done even when bmcd was down or crashed at the moment: bmcd reads
//! the open requests at start, on every hint and on a period.

use dragonfly_core::MachineId;
use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};
use uuid::Uuid;

use crate::db::write;
use crate::error::Sql;
use crate::schema::Shared;
use crate::time::{from_column, from_column_opt, to_column};
use crate::{Db, StoreError};

impl Db<Shared> {
    /// Machines' BMCs and the power work for them.
    pub fn bmcs(&self) -> Bmcs<'_> {
        Bmcs { db: self }
    }
}

/// The `bmcs`, `bmc_key` and `power_requests` tables: see [`Db::bmcs`].
#[derive(Debug, Clone, Copy)]
pub struct Bmcs<'a> {
    db: &'a Db<Shared>,
}

/// How a machine's power is controlled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BmcKind {
    Ipmi,
    Redfish,
    /// Wake-on-LAN: power on only.
    Wol,
}

impl BmcKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ipmi => "ipmi",
            Self::Redfish => "redfish",
            Self::Wol => "wol",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "ipmi" => Ok(Self::Ipmi),
            "redfish" => Ok(Self::Redfish),
            "wol" => Ok(Self::Wol),
            other => Err(corrupt("BMC kind", other)),
        }
    }
}

/// What an operator configures (apid's [`Bmcs::put`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BmcSpec {
    pub kind: BmcKind,
    /// IPMI: host or address; Redfish: the service's base URL; WoL: a broadcast address or
    /// none.
    pub address: Option<String>,
    pub port: Option<u16>,
    pub username: Option<String>,
    /// Redfish: which system, when the service manages several.
    pub system: Option<String>,
    /// `true`: UEFI, `false`: legacy BIOS.
    pub uefi: bool,
    /// Redfish over https: PEM certificates to trust instead of the system's roots.
    pub tls_ca: Option<String>,
    /// Redfish over https: the SHA-256 of the BMC's certificate, 64 lowercase hex digits.
    pub tls_fingerprint: Option<String>,
}

/// A password sealed to bmcd's key, and the id of that key.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedSecret {
    pub sealed: Vec<u8>,
    pub key_id: String,
}

impl std::fmt::Debug for SealedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SealedSecret(key {}, {} bytes)",
            self.key_id,
            self.sealed.len()
        )
    }
}

/// The power state bmcd last read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PowerState {
    On,
    Off,
    Unknown,
}

impl PowerState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::On => "on",
            Self::Off => "off",
            Self::Unknown => "unknown",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            "unknown" => Ok(Self::Unknown),
            other => Err(corrupt("power state", other)),
        }
    }
}

/// A machine's BMC as stored, without its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bmc {
    pub machine_id: MachineId,
    pub spec: BmcSpec,
    /// A password is stored (sealed).
    pub password_set: bool,
    /// The id of the key the password was sealed to.
    pub key_id: Option<String>,
    /// `true` when the row came from the agent's report and no operator has set it since.
    pub from_agent: bool,
    pub power_state: Option<PowerState>,
    pub power_checked_at: Option<Timestamp>,
    /// Why bmcd cannot drive it, while that lasts.
    pub condition: Option<String>,
    pub condition_since: Option<Timestamp>,
    pub updated_at: Timestamp,
    pub resource_version: i64,
}

/// What bmcd read from a BMC, to store with [`Bmcs::record`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reading {
    /// The BMC answered with this state.
    State(PowerState),
    /// It could not be read; the text says why (it becomes the machine's condition).
    Failed(String),
    /// A command succeeded: the condition is cleared, the state is left as it was.
    Answered,
}

/// What [`Bmcs::record`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// The stored power state before, when the reading changed it.
    pub changed_from: Option<Option<PowerState>>,
    /// The condition was set (it was clear before).
    pub condition_raised: bool,
    /// The condition was cleared (it was set before).
    pub condition_cleared: bool,
}

/// Why power work was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PowerRequestKind {
    /// A workflow was created: next boot from the network, then power on (or cycle).
    Provision,
    /// A workflow succeeded: next boot from disk.
    Provisioned,
}

impl PowerRequestKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Provision => "provision",
            Self::Provisioned => "provisioned",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "provision" => Ok(Self::Provision),
            "provisioned" => Ok(Self::Provisioned),
            other => Err(corrupt("power request kind", other)),
        }
    }
}

/// Where a power request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PowerRequestState {
    Pending,
    /// bmcd began it; found so at bmcd's start, it was interrupted.
    Running,
    Done,
    Failed,
    /// A newer request for the machine replaced it before it ran.
    Superseded,
}

impl PowerRequestState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Superseded => "superseded",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        match s {
            "pending" => Ok(Self::Pending),
            "running" => Ok(Self::Running),
            "done" => Ok(Self::Done),
            "failed" => Ok(Self::Failed),
            "superseded" => Ok(Self::Superseded),
            other => Err(corrupt("power request state", other)),
        }
    }
}

/// Power work that must not be lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerRequest {
    pub id: i64,
    pub machine_id: MachineId,
    pub kind: PowerRequestKind,
    pub workflow_id: Option<Uuid>,
    /// `Provision` only: a machine that is on is cycled (it was `Ready`: an installed OS runs
    /// on it). Otherwise a machine that is on runs the agent, which takes the workflow
    /// without a reboot, and is left be.
    pub cycle: bool,
    pub state: PowerRequestState,
    /// Times bmcd began it.
    pub attempts: u32,
    /// What the BMC answered, once finished.
    pub result: Option<String>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

#[derive(Debug, thiserror::Error)]
#[error("{0:?}")]
struct Bad(String);

fn corrupt(what: &'static str, value: &str) -> StoreError {
    StoreError::corrupt(what, Bad(value.to_owned()))
}

const BMC_COLUMNS: &str = "machine_id, kind, address, port, username, system, boot_mode, source, \
     secret IS NOT NULL, key_id, power_state, power_checked_ms, condition, condition_since_ms, \
     updated_at_ms, resource_version, tls_ca, tls_fingerprint";

fn bmc_row(r: &Row<'_>) -> rusqlite::Result<RawBmc> {
    Ok(RawBmc {
        machine_id: r.get(0)?,
        kind: r.get(1)?,
        address: r.get(2)?,
        port: r.get(3)?,
        username: r.get(4)?,
        system: r.get(5)?,
        boot_mode: r.get(6)?,
        source: r.get(7)?,
        password_set: r.get(8)?,
        key_id: r.get(9)?,
        power_state: r.get(10)?,
        power_checked_ms: r.get(11)?,
        condition: r.get(12)?,
        condition_since_ms: r.get(13)?,
        updated_at_ms: r.get(14)?,
        resource_version: r.get(15)?,
        tls_ca: r.get(16)?,
        tls_fingerprint: r.get(17)?,
    })
}

struct RawBmc {
    machine_id: String,
    kind: String,
    address: Option<String>,
    port: Option<i64>,
    username: Option<String>,
    system: Option<String>,
    boot_mode: String,
    source: String,
    password_set: bool,
    key_id: Option<String>,
    power_state: Option<String>,
    power_checked_ms: Option<i64>,
    condition: Option<String>,
    condition_since_ms: Option<i64>,
    updated_at_ms: i64,
    resource_version: i64,
    tls_ca: Option<String>,
    tls_fingerprint: Option<String>,
}

impl RawBmc {
    fn decode(self) -> Result<Bmc, StoreError> {
        Ok(Bmc {
            machine_id: MachineId(uuid(&self.machine_id)?),
            spec: BmcSpec {
                kind: BmcKind::parse(&self.kind)?,
                address: self.address,
                port: self
                    .port
                    .map(|p| u16::try_from(p).map_err(|e| StoreError::corrupt("BMC port", e)))
                    .transpose()?,
                username: self.username,
                system: self.system,
                uefi: self.boot_mode == "uefi",
                tls_ca: self.tls_ca,
                tls_fingerprint: self.tls_fingerprint,
            },
            password_set: self.password_set,
            key_id: self.key_id,
            from_agent: self.source == "agent",
            power_state: self
                .power_state
                .as_deref()
                .map(PowerState::parse)
                .transpose()?,
            power_checked_at: from_column_opt(self.power_checked_ms)?,
            condition: self.condition,
            condition_since: from_column_opt(self.condition_since_ms)?,
            updated_at: from_column(self.updated_at_ms)?,
            resource_version: self.resource_version,
        })
    }
}

fn uuid(s: &str) -> Result<Uuid, StoreError> {
    s.parse().map_err(|e| StoreError::corrupt("uuid", e))
}

fn get_tx(c: &Connection, machine: MachineId) -> Result<Option<Bmc>, StoreError> {
    c.prepare_cached(&format!(
        "SELECT {BMC_COLUMNS} FROM bmcs WHERE machine_id = ?1"
    ))
    .sql()?
    .query_row([machine.0.to_string()], bmc_row)
    .optional()
    .sql()?
    .map(RawBmc::decode)
    .transpose()
}

const REQUEST_COLUMNS: &str = "id, machine_id, kind, workflow_id, state, attempts, result, \
     created_at_ms, updated_at_ms, cycle";

fn request_row(r: &Row<'_>) -> rusqlite::Result<RawRequest> {
    Ok(RawRequest {
        id: r.get(0)?,
        machine_id: r.get(1)?,
        kind: r.get(2)?,
        workflow_id: r.get(3)?,
        state: r.get(4)?,
        attempts: r.get(5)?,
        result: r.get(6)?,
        created_at_ms: r.get(7)?,
        updated_at_ms: r.get(8)?,
        cycle: r.get(9)?,
    })
}

struct RawRequest {
    id: i64,
    machine_id: String,
    kind: String,
    workflow_id: Option<String>,
    state: String,
    attempts: u32,
    result: Option<String>,
    created_at_ms: i64,
    updated_at_ms: i64,
    cycle: bool,
}

impl RawRequest {
    fn decode(self) -> Result<PowerRequest, StoreError> {
        Ok(PowerRequest {
            id: self.id,
            machine_id: MachineId(uuid(&self.machine_id)?),
            kind: PowerRequestKind::parse(&self.kind)?,
            workflow_id: self.workflow_id.as_deref().map(uuid).transpose()?,
            cycle: self.cycle,
            state: PowerRequestState::parse(&self.state)?,
            attempts: self.attempts,
            result: self.result,
            created_at: from_column(self.created_at_ms)?,
            updated_at: from_column(self.updated_at_ms)?,
        })
    }
}

fn requests(
    c: &Connection,
    sql: &str,
    p: impl rusqlite::Params,
) -> Result<Vec<PowerRequest>, StoreError> {
    let mut st = c.prepare_cached(sql).sql()?;
    let raws = st.query_map(p, request_row).sql()?;
    let mut out = Vec::new();
    for raw in raws {
        out.push(raw.sql()?.decode()?);
    }
    Ok(out)
}

impl Bmcs<'_> {
    /// Sets a machine's BMC (an operator's configuration). `secret`: `Some` replaces the stored
    /// password, `None` keeps it (changing the address does not need the password again). The
    /// condition is cleared: the next reading tells. With `expected`, the row's version must
    /// still be it ([`StoreError::Conflict`]). [`StoreError::NotFound`] without the machine.
    pub async fn put(
        self,
        machine: MachineId,
        spec: BmcSpec,
        secret: Option<SealedSecret>,
        expected: Option<i64>,
        now: Timestamp,
    ) -> Result<Bmc, StoreError> {
        self.db
            .run(move |c| {
                write(c, |tx| {
                    if crate::machines::get(tx, machine)?.is_none() {
                        return Err(StoreError::NotFound { what: "machine" });
                    }
                    let before = get_tx(tx, machine)?;
                    if let Some(expected) = expected {
                        let current = before.as_ref().map_or(0, |b| b.resource_version);
                        if current != expected {
                            return Err(StoreError::Conflict { expected, current });
                        }
                    }
                    let id = machine.0.to_string();
                    let boot_mode = if spec.uefi { "uefi" } else { "legacy" };
                    let (sealed, key_id) = match secret {
                        Some(s) => (Some(s.sealed), Some(s.key_id)),
                        None => (None, None),
                    };
                    tx.execute(
                        "INSERT INTO bmcs (machine_id, kind, address, port, username, system, boot_mode, \
                         source, secret, key_id, updated_at_ms, resource_version, tls_ca, tls_fingerprint) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'operator', ?8, ?9, ?10, 1, ?11, ?12) \
                         ON CONFLICT (machine_id) DO UPDATE SET kind = ?2, address = ?3, port = ?4, \
                         username = ?5, system = ?6, boot_mode = ?7, source = 'operator', \
                         tls_ca = ?11, tls_fingerprint = ?12, \
                         secret = COALESCE(?8, secret), key_id = CASE WHEN ?8 IS NULL THEN key_id ELSE ?9 END, \
                         condition = NULL, condition_since_ms = NULL, updated_at_ms = ?10, \
                         resource_version = resource_version + 1",
                        params![
                            id,
                            spec.kind.as_str(),
                            spec.address,
                            spec.port,
                            spec.username,
                            spec.system,
                            boot_mode,
                            sealed,
                            key_id,
                            to_column(now),
                            spec.tls_ca,
                            spec.tls_fingerprint,
                        ],
                    )
                    .sql()?;
                    get_tx(tx, machine)?.ok_or(StoreError::NotFound { what: "BMC" })
                })
            })
            .await
    }

    /// A machine's BMC, without its secret.
    pub async fn get(self, machine: MachineId) -> Result<Option<Bmc>, StoreError> {
        self.db.run(move |c| get_tx(c, machine)).await
    }

    /// The BMCs of these machines (those that have one), without their secrets: the power
    /// column of a page of machines.
    pub async fn of(
        self,
        machines: Vec<MachineId>,
    ) -> Result<std::collections::HashMap<MachineId, Bmc>, StoreError> {
        self.db
            .run(move |c| {
                let mut out = std::collections::HashMap::new();
                for machine in machines {
                    if let Some(bmc) = get_tx(c, machine)? {
                        out.insert(machine, bmc);
                    }
                }
                Ok(out)
            })
            .await
    }

    /// Every BMC, in machine id order (bmcd's polling list).
    pub async fn list(self) -> Result<Vec<Bmc>, StoreError> {
        self.db
            .run(move |c| {
                let mut st = c
                    .prepare_cached(&format!(
                        "SELECT {BMC_COLUMNS} FROM bmcs ORDER BY machine_id"
                    ))
                    .sql()?;
                let raws = st.query_map([], bmc_row).sql()?;
                let mut out = Vec::new();
                for raw in raws {
                    out.push(raw.sql()?.decode()?);
                }
                Ok(out)
            })
            .await
    }

    /// Removes a machine's BMC; its open power requests are marked superseded. `false` if it
    /// had none.
    pub async fn delete(self, machine: MachineId, now: Timestamp) -> Result<bool, StoreError> {
        self.db
            .run(move |c| {
                write(c, |tx| {
                    let id = machine.0.to_string();
                    supersede(tx, &id, now)?;
                    let n = tx
                        .execute("DELETE FROM bmcs WHERE machine_id = ?1", [id])
                        .sql()?;
                    Ok(n > 0)
                })
            })
            .await
    }

    /// bmcd's read of a BMC's sealed password: the user name and the sealed secret, if any.
    pub async fn credentials(
        self,
        machine: MachineId,
    ) -> Result<Option<(Option<String>, Option<SealedSecret>)>, StoreError> {
        self.db
            .run(move |c| {
                c.prepare_cached("SELECT username, secret, key_id FROM bmcs WHERE machine_id = ?1")
                    .sql()?
                    .query_row([machine.0.to_string()], |r| {
                        let user: Option<String> = r.get(0)?;
                        let sealed: Option<Vec<u8>> = r.get(1)?;
                        let key_id: Option<String> = r.get(2)?;
                        Ok((
                            user,
                            sealed.map(|sealed| SealedSecret {
                                sealed,
                                key_id: key_id.unwrap_or_default(),
                            }),
                        ))
                    })
                    .optional()
                    .sql()
            })
            .await
    }

    /// Stores what bmcd read from a machine's BMC at `now`, and says what changed. `Ok(None)`
    /// when the machine has no BMC (any more).
    pub async fn record(
        self,
        machine: MachineId,
        reading: Reading,
        now: Timestamp,
    ) -> Result<Option<Recorded>, StoreError> {
        self.db
            .run(move |c| {
                write(c, |tx| {
                    let Some(before) = get_tx(tx, machine)? else {
                        return Ok(None);
                    };
                    let id = machine.0.to_string();
                    let mut out = Recorded {
                        changed_from: None,
                        condition_raised: false,
                        condition_cleared: false,
                    };
                    match reading {
                        Reading::State(state) => {
                            if before.power_state != Some(state) {
                                out.changed_from = Some(before.power_state);
                            }
                            out.condition_cleared = before.condition.is_some();
                            tx.execute(
                                "UPDATE bmcs SET power_state = ?2, power_checked_ms = ?3, condition = NULL, \
                                 condition_since_ms = NULL WHERE machine_id = ?1",
                                params![id, state.as_str(), to_column(now)],
                            )
                            .sql()?;
                        }
                        Reading::Answered => {
                            out.condition_cleared = before.condition.is_some();
                            tx.execute(
                                "UPDATE bmcs SET condition = NULL, condition_since_ms = NULL WHERE machine_id = ?1",
                                [id],
                            )
                            .sql()?;
                        }
                        Reading::Failed(why) => {
                            out.condition_raised = before.condition.is_none();
                            tx.execute(
                                "UPDATE bmcs SET condition = ?2, power_checked_ms = ?3, \
                                 condition_since_ms = COALESCE(condition_since_ms, ?3) WHERE machine_id = ?1",
                                params![id, why, to_column(now)],
                            )
                            .sql()?;
                        }
                    }
                    Ok(Some(out))
                })
            })
            .await
    }

    /// Publishes bmcd's public key (and its id) for apid to seal passwords to.
    pub async fn set_key(
        self,
        public_key: Vec<u8>,
        key_id: String,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.db
            .run(move |c| {
                write(c, |tx| {
                    tx.execute(
                        "INSERT INTO bmc_key (id, public_key, key_id, updated_at_ms) VALUES (1, ?1, ?2, ?3) \
                         ON CONFLICT (id) DO UPDATE SET public_key = ?1, key_id = ?2, updated_at_ms = ?3 \
                         WHERE public_key != ?1",
                        params![public_key, key_id, to_column(now)],
                    )
                    .sql()?;
                    Ok(())
                })
            })
            .await
    }

    /// bmcd's public key and its id, once bmcd has published it.
    pub async fn key(self) -> Result<Option<(Vec<u8>, String)>, StoreError> {
        self.db
            .run(move |c| {
                c.prepare_cached("SELECT public_key, key_id FROM bmc_key WHERE id = 1")
                    .sql()?
                    .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
                    .sql()
            })
            .await
    }

    /// The open power requests (pending, or running when bmcd stopped), oldest first.
    pub async fn open_requests(self, limit: usize) -> Result<Vec<PowerRequest>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.db
            .run(move |c| {
                requests(
                    c,
                    &format!(
                        "SELECT {REQUEST_COLUMNS} FROM power_requests \
                         WHERE state IN ('pending','running') ORDER BY id LIMIT ?1"
                    ),
                    [limit],
                )
            })
            .await
    }

    /// A machine's newest `limit` power requests, newest first.
    pub async fn requests_of(
        self,
        machine: MachineId,
        limit: usize,
    ) -> Result<Vec<PowerRequest>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.db
            .run(move |c| {
                requests(
                    c,
                    &format!(
                        "SELECT {REQUEST_COLUMNS} FROM power_requests \
                         WHERE machine_id = ?1 ORDER BY id DESC LIMIT ?2"
                    ),
                    params![machine.0.to_string(), limit],
                )
            })
            .await
    }

    /// bmcd begins request `id`: running, one more attempt. `None` when it is no longer open
    /// (superseded or finished meanwhile): then it must not act.
    pub async fn begin_request(
        self,
        id: i64,
        now: Timestamp,
    ) -> Result<Option<PowerRequest>, StoreError> {
        self.db
            .run(move |c| {
                write(c, |tx| {
                    let n = tx
                        .execute(
                            "UPDATE power_requests SET state = 'running', attempts = attempts + 1, \
                             updated_at_ms = ?2 WHERE id = ?1 AND state IN ('pending','running')",
                            params![id, to_column(now)],
                        )
                        .sql()?;
                    if n == 0 {
                        return Ok(None);
                    }
                    Ok(requests(
                        tx,
                        &format!("SELECT {REQUEST_COLUMNS} FROM power_requests WHERE id = ?1"),
                        [id],
                    )?
                    .pop())
                })
            })
            .await
    }

    /// bmcd finished request `id` (`done` or `failed`) with the BMC's answer, or puts it back
    /// to `pending` to try again later. Only a running request changes.
    pub async fn finish_request(
        self,
        id: i64,
        state: PowerRequestState,
        result: String,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.db
            .run(move |c| {
                write(c, |tx| {
                    tx.execute(
                        "UPDATE power_requests SET state = ?2, result = ?3, updated_at_ms = ?4 \
                         WHERE id = ?1 AND state = 'running'",
                        params![id, state.as_str(), result, to_column(now)],
                    )
                    .sql()?;
                    Ok(())
                })
            })
            .await
    }
}

fn supersede(tx: &Transaction<'_>, machine: &str, now: Timestamp) -> Result<(), StoreError> {
    tx.execute(
        "UPDATE power_requests SET state = 'superseded', updated_at_ms = ?2 \
         WHERE machine_id = ?1 AND state IN ('pending','running')",
        params![machine, to_column(now)],
    )
    .sql()?;
    Ok(())
}

/// In a workflow's transaction: asks for `kind` power work on `machine` if it has a BMC,
/// superseding its open requests (`cycle`: see [`PowerRequest::cycle`]). Returns whether a
/// request was made.
pub(crate) fn request_tx(
    tx: &Transaction<'_>,
    machine: MachineId,
    kind: PowerRequestKind,
    workflow: Option<Uuid>,
    cycle: bool,
    now: Timestamp,
) -> Result<bool, StoreError> {
    let id = machine.0.to_string();
    let has_bmc = tx
        .query_row(
            "SELECT 1 FROM bmcs WHERE machine_id = ?1",
            [&id],
            |_| Ok(()),
        )
        .optional()
        .sql()?
        .is_some();
    if !has_bmc {
        return Ok(false);
    }
    supersede(tx, &id, now)?;
    tx.execute(
        "INSERT INTO power_requests (machine_id, kind, workflow_id, state, created_at_ms, updated_at_ms, cycle) \
         VALUES (?1, ?2, ?3, 'pending', ?4, ?4, ?5)",
        params![
            id,
            kind.as_str(),
            workflow.map(|w| w.to_string()),
            to_column(now),
            cycle
        ],
    )
    .sql()?;
    Ok(true)
}

/// In a registration's transaction: when the agent reported a BMC and the machine has no BMC
/// row yet, creates one with the reported kind and address and no credentials (source
/// `agent`). An existing row, the operator's or an earlier report's, is never changed.
pub(crate) fn prefill_tx(
    tx: &Transaction<'_>,
    machine: MachineId,
    reported: Option<&dragonfly_core::Bmc>,
    now: Timestamp,
) -> Result<(), StoreError> {
    let Some(b) = reported else {
        return Ok(());
    };
    let kind = match b.kind {
        dragonfly_core::BmcKind::Ipmi => BmcKind::Ipmi,
        dragonfly_core::BmcKind::Redfish => BmcKind::Redfish,
    };
    tx.execute(
        "INSERT INTO bmcs (machine_id, kind, address, source, updated_at_ms, resource_version) \
         VALUES (?1, ?2, ?3, 'agent', ?4, 1) ON CONFLICT (machine_id) DO NOTHING",
        params![
            machine.0.to_string(),
            kind.as_str(),
            b.address,
            to_column(now)
        ],
    )
    .sql()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use dragonfly_core::MacAddr;

    use super::*;
    use crate::testing::{NewMachine, TestDb};

    async fn machine(t: &TestDb) -> dragonfly_core::Machine {
        t.machine(NewMachine::with_mac(MacAddr::new([0x02, 0, 0, 0, 0, 1])))
            .await
    }

    fn spec() -> BmcSpec {
        BmcSpec {
            kind: BmcKind::Ipmi,
            address: Some("10.0.0.5".into()),
            port: Some(623),
            username: Some("admin".into()),
            system: None,
            uefi: true,
            tls_ca: None,
            tls_fingerprint: None,
        }
    }

    fn secret(b: u8) -> SealedSecret {
        SealedSecret {
            sealed: vec![b; 48],
            key_id: "k1".into(),
        }
    }

    #[tokio::test]
    async fn put_keeps_the_secret_unless_replaced_and_bumps_the_version() {
        let t = TestDb::new();
        let db = &t.db;
        let m = machine(&t).await;
        let now = Timestamp::now();
        let b = db
            .bmcs()
            .put(m.id, spec(), Some(secret(1)), None, now)
            .await
            .unwrap();
        assert!(b.password_set);
        assert_eq!(b.resource_version, 1);
        let mut s = spec();
        s.address = Some("10.0.0.6".into());
        let b = db.bmcs().put(m.id, s, None, Some(1), now).await.unwrap();
        assert!(b.password_set, "the secret is kept when none is given");
        assert_eq!(b.spec.address.as_deref(), Some("10.0.0.6"));
        assert_eq!(b.resource_version, 2);
        let (_, sealed) = db.bmcs().credentials(m.id).await.unwrap().unwrap();
        assert_eq!(sealed.unwrap(), secret(1));
        let stale = db.bmcs().put(m.id, spec(), None, Some(1), now).await;
        assert!(
            matches!(stale, Err(StoreError::Conflict { .. })),
            "{stale:?}"
        );
    }

    #[tokio::test]
    async fn record_reports_changes_and_conditions() {
        let t = TestDb::new();
        let db = &t.db;
        let m = machine(&t).await;
        let now = Timestamp::now();
        db.bmcs().put(m.id, spec(), None, None, now).await.unwrap();
        let r = db
            .bmcs()
            .record(m.id, Reading::State(PowerState::Off), now)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.changed_from, Some(None));
        let r = db
            .bmcs()
            .record(m.id, Reading::State(PowerState::Off), now)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.changed_from, None);
        let r = db
            .bmcs()
            .record(m.id, Reading::Failed("unreachable".into()), now)
            .await
            .unwrap()
            .unwrap();
        assert!(r.condition_raised);
        let b = db.bmcs().get(m.id).await.unwrap().unwrap();
        assert_eq!(b.condition.as_deref(), Some("unreachable"));
        assert_eq!(
            b.power_state,
            Some(PowerState::Off),
            "a failed read keeps the last state"
        );
        let r = db
            .bmcs()
            .record(m.id, Reading::State(PowerState::On), now)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(r.changed_from, Some(Some(PowerState::Off)));
        assert!(r.condition_cleared);
    }

    #[tokio::test]
    async fn requests_supersede_and_only_open_ones_begin() {
        let t = TestDb::new();
        let db = &t.db;
        let m = machine(&t).await;
        let now = Timestamp::now();
        let made = db
            .run(move |c| {
                write(c, |tx| {
                    request_tx(tx, m.id, PowerRequestKind::Provision, None, false, now)
                })
            })
            .await
            .unwrap();
        assert!(!made, "no BMC, no request");
        db.bmcs().put(m.id, spec(), None, None, now).await.unwrap();
        for kind in [PowerRequestKind::Provision, PowerRequestKind::Provisioned] {
            db.run(move |c| write(c, |tx| request_tx(tx, m.id, kind, None, false, now)))
                .await
                .unwrap();
        }
        let open = db.bmcs().open_requests(10).await.unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].kind, PowerRequestKind::Provisioned);
        let all = db.bmcs().requests_of(m.id, 10).await.unwrap();
        assert_eq!(all[1].state, PowerRequestState::Superseded);
        assert!(
            db.bmcs()
                .begin_request(all[1].id, now)
                .await
                .unwrap()
                .is_none()
        );
        let r = db
            .bmcs()
            .begin_request(open[0].id, now)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((r.state, r.attempts), (PowerRequestState::Running, 1));
        db.bmcs()
            .finish_request(r.id, PowerRequestState::Done, "ok".into(), now)
            .await
            .unwrap();
        assert!(db.bmcs().open_requests(10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_agents_report_prefills_but_never_overwrites() {
        let t = TestDb::new();
        let db = &t.db;
        let mac = MacAddr::new([0x02, 0, 0, 0, 0, 9]);
        let report = |address: &str| dragonfly_core::HardwareReport {
            macs: vec![mac],
            bmc: Some(dragonfly_core::Bmc {
                address: address.into(),
                kind: dragonfly_core::BmcKind::Redfish,
            }),
            ..Default::default()
        };
        let now = Timestamp::now();
        let m = db
            .machines()
            .register(report("10.0.0.9"), now)
            .await
            .unwrap()
            .machine()
            .clone();
        let b = db.bmcs().get(m.id).await.unwrap().unwrap();
        assert!(b.from_agent && !b.password_set, "{b:?}");
        assert_eq!(
            (b.spec.kind, b.spec.address.as_deref()),
            (BmcKind::Redfish, Some("10.0.0.9"))
        );
        // A later report does not move it (the operator may have corrected it).
        db.machines()
            .register(report("10.0.0.10"), now)
            .await
            .unwrap();
        let b = db.bmcs().get(m.id).await.unwrap().unwrap();
        assert_eq!(b.spec.address.as_deref(), Some("10.0.0.9"));
        // The operator's setting replaces it and is never overwritten by a report.
        db.bmcs()
            .put(m.id, spec(), Some(secret(2)), None, now)
            .await
            .unwrap();
        db.machines()
            .register(report("10.0.0.11"), now)
            .await
            .unwrap();
        let b = db.bmcs().get(m.id).await.unwrap().unwrap();
        assert!(!b.from_agent && b.password_set);
        assert_eq!(b.spec.address.as_deref(), Some("10.0.0.5"));
    }

    #[tokio::test]
    async fn the_key_is_published_once_and_replaced_when_it_changes() {
        let t = TestDb::new();
        let db = &t.db;
        assert!(db.bmcs().key().await.unwrap().is_none());
        let now = Timestamp::now();
        db.bmcs()
            .set_key(vec![1; 32], "a".into(), now)
            .await
            .unwrap();
        db.bmcs()
            .set_key(vec![2; 32], "b".into(), now)
            .await
            .unwrap();
        assert_eq!(
            db.bmcs().key().await.unwrap().unwrap(),
            (vec![2; 32], "b".into())
        );
    }
}
