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

    /// Records an agent's hardware report: idempotent per machine.
    ///
    /// The report is matched to an existing machine by any of its MACs or by its SMBIOS UUID
    /// (when trustworthy). No match creates a machine in state `Registered` named after the
    /// report's first MAC (the agent lists its boot interface first); one match updates that
    /// machine's inventory and MAC set (a report without an SMBIOS UUID keeps the stored one)
    /// and applies the lifecycle's `Register` event; matches on two different machines are
    /// refused as [`StoreError::Ambiguous`] rather than guessed at.
    pub async fn register(
        self,
        report: HardwareReport,
        now: Timestamp,
    ) -> Result<Registered, StoreError> {
        self.db.run(move |c| register(c, &report, now)).await
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
    /// is [`StoreError::IllegalTransition`] and changes nothing.
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
}

/// See [`Machines::boot_info`].
pub(crate) const BOOT_INFO: &str = "SELECT m.id, m.name, m.state, m.workflow_id \
     FROM machine_macs mm JOIN machines m ON m.id = mm.machine_id WHERE mm.mac = ?1";

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
            ))
        })
        .optional()
        .sql()?;
    row.map(|(id, name, state, wf)| {
        Ok(BootInfo {
            id: MachineId(uuid_col(&id)?),
            name,
            state: state_col(&state)?,
            workflow_id: wf.as_deref().map(uuid_col).transpose()?,
        })
    })
    .transpose()
}

/// What a registration did.
#[derive(Debug, Clone, PartialEq)]
pub enum Registered {
    /// A new machine was created.
    Created(Machine),
    /// An existing machine (matched by MAC or SMBIOS UUID) was updated.
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

/// See [`Machines::register`].
fn register(
    conn: &mut Connection,
    report: &HardwareReport,
    now: Timestamp,
) -> Result<Registered, StoreError> {
    // Acknowledged to the agent, which will not send it again: on disk before the answer.
    write_durable(conn, |tx| {
        let smbios = report.trusted_smbios_uuid().map(|u| u.to_string());
        let mut ids: Vec<String> = Vec::new();
        {
            let mut by_mac = tx
                .prepare_cached("SELECT machine_id FROM machine_macs WHERE mac = ?1")
                .sql()?;
            for mac in &report.macs {
                if let Some(id) = by_mac
                    .query_row([mac.to_string()], |r| r.get::<_, String>(0))
                    .optional()
                    .sql()?
                {
                    ids.push(id);
                }
            }
        }
        if let Some(u) = &smbios
            && let Some(id) = tx
                .query_row("SELECT id FROM machines WHERE smbios_uuid = ?1", [u], |r| {
                    r.get::<_, String>(0)
                })
                .optional()
                .sql()?
        {
            ids.push(id);
        }
        ids.sort();
        ids.dedup();
        let hardware =
            serde_json::to_string(report).map_err(|e| StoreError::corrupt("hardware report", e))?;
        match ids.as_slice() {
            [] => {
                let id = MachineId(Uuid::now_v7());
                let name = names::first_free(report.macs[0], |candidate| {
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
                let state = MachineState::Discovered.apply(LifecycleEvent::Register)?;
                tx.execute(
                    "INSERT INTO machines (id, name, hostname, state, labels, hardware, smbios_uuid, \
                     created_at_ms, updated_at_ms, resource_version) \
                     VALUES (?1, ?2, NULL, ?3, '{}', ?4, ?5, ?6, ?6, 1)",
                    params![id.0.to_string(), name, state.as_str(), hardware, smbios, to_column(now)],
                )
                .sql()?;
                replace_macs(tx, id, &report.macs)?;
                let m = get(tx, id)?.ok_or(StoreError::NotFound { what: "machine" })?;
                Ok(Registered::Created(m))
            }
            [one] => {
                let id = MachineId(uuid_col(one)?);
                let before = get(tx, id)?.ok_or(StoreError::NotFound { what: "machine" })?;
                let state = before.state.apply(LifecycleEvent::Register)?;
                tx.execute(
                    "UPDATE machines SET state = ?2, hardware = ?3, smbios_uuid = COALESCE(?4, smbios_uuid), \
                     updated_at_ms = ?5, resource_version = resource_version + 1 WHERE id = ?1",
                    params![id.0.to_string(), state.as_str(), hardware, smbios, to_column(now)],
                )
                .sql()?;
                replace_macs(tx, id, &report.macs)?;
                let m = get(tx, id)?.ok_or(StoreError::NotFound { what: "machine" })?;
                Ok(Registered::Updated {
                    machine: m,
                    previous_state: before.state,
                })
            }
            many => Err(StoreError::Ambiguous { ids: many.to_vec() }),
        }
    })
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
        get(tx, id)?.ok_or(StoreError::NotFound { what: "machine" })
    })
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

    #[test]
    fn register_creates_then_updates() {
        let (_d, mut c) = db();
        let first = register(&mut c, &report(&[1, 2], Some(5)), now()).unwrap();
        let Registered::Created(m) = &first else {
            panic!("{first:?}")
        };
        assert_eq!(m.state, MachineState::Registered);
        assert_eq!(m.name, names::memorable_name(mac(1)));
        assert_eq!(m.resource_version, 1);
        // Same MACs, more memory: an update, never a duplicate.
        let mut r = report(&[2, 1], Some(5));
        r.memory_bytes = Some(2 << 30);
        let second = register(&mut c, &r, now()).unwrap();
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
    fn matches_by_any_mac_or_by_smbios_uuid() {
        let (_d, mut c) = db();
        let id = register(&mut c, &report(&[1, 2], Some(5)), now())
            .unwrap()
            .machine()
            .id;
        // A NIC was swapped: MAC 2 gone, MAC 3 new; matched by MAC 1.
        let m = register(&mut c, &report(&[1, 3], None), now()).unwrap();
        assert_eq!(m.machine().id, id);
        assert!(get_by_mac(&c, mac(2)).unwrap().is_none());
        assert_eq!(get_by_mac(&c, mac(3)).unwrap().unwrap().id, id);
        // Every NIC swapped, same mainboard: matched by SMBIOS UUID.
        let m = register(&mut c, &report(&[9], Some(5)), now()).unwrap();
        assert_eq!(m.machine().id, id);
        assert_eq!(count(&c).unwrap(), 1);
    }

    #[test]
    fn placeholder_smbios_uuids_do_not_merge_machines() {
        let (_d, mut c) = db();
        register(&mut c, &report(&[1], Some(0)), now()).unwrap();
        register(&mut c, &report(&[2], Some(0)), now()).unwrap();
        assert_eq!(count(&c).unwrap(), 2);
    }

    #[test]
    fn a_report_spanning_two_machines_is_refused() {
        let (_d, mut c) = db();
        register(&mut c, &report(&[1], None), now()).unwrap();
        register(&mut c, &report(&[2], None), now()).unwrap();
        let err = register(&mut c, &report(&[1, 2], None), now()).unwrap_err();
        assert!(
            matches!(err, StoreError::Ambiguous { ref ids } if ids.len() == 2),
            "{err}"
        );
        assert_eq!(count(&c).unwrap(), 2);
    }

    #[test]
    fn name_collision_gets_a_fifth_word() {
        let (_d, mut c) = db();
        // Squat on mac(1)'s name with another machine.
        let other = register(&mut c, &report(&[7], None), now())
            .unwrap()
            .machine()
            .id;
        c.execute(
            "UPDATE machines SET name = ?1 WHERE id = ?2",
            params![names::memorable_name(mac(1)), other.0.to_string()],
        )
        .unwrap();
        let m = register(&mut c, &report(&[1], None), now()).unwrap();
        assert_eq!(m.machine().name, names::name_with_words(mac(1), 5));
    }

    #[test]
    fn boot_info_matches_the_full_record() {
        let (_d, mut c) = db();
        let m = register(&mut c, &report(&[1, 2], None), now())
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
        let m = register(&mut c, &report(&[1], None), now())
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
            let id = register(&mut c, &report(&[i], None), now())
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
        let m = register(&mut c, &report(&[1], None), now())
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
    fn transitions_follow_the_lifecycle_and_the_version() {
        let (_d, mut c) = db();
        let m = register(&mut c, &report(&[1], None), now())
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
