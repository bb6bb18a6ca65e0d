//! Machines: registration, lookup, listing, operator edits and deletion.

use std::collections::BTreeMap;

use dragonfly_core::lifecycle::LifecycleEvent;
use dragonfly_core::{HardwareReport, MacAddr, Machine, MachineId, MachineState, names};
use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};
use uuid::Uuid;

use crate::StoreError;
use crate::db::write;

/// The columns `raw` reads, as a macro so statements can be built with `concat!` at compile
/// time and cached by SQLite's statement cache instead of re-prepared on every call.
macro_rules! columns {
    () => {
        "id, name, hostname, state, labels, hardware, os_template, workflow_id, \
         created_at_ms, updated_at_ms, resource_version"
    };
}
const COLUMNS: &str = columns!();

fn ms(t: Timestamp) -> i64 {
    t.as_millisecond()
}

fn from_ms(v: i64) -> Result<Timestamp, StoreError> {
    Timestamp::from_millisecond(v).map_err(|e| StoreError::corrupt("timestamp", e))
}

fn uuid_col(s: &str) -> Result<Uuid, StoreError> {
    s.parse().map_err(|e| StoreError::corrupt("uuid", e))
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
            state: self
                .state
                .parse::<MachineState>()
                .map_err(|e| StoreError::corrupt("machine state", e))?,
            labels: serde_json::from_str(&self.labels)
                .map_err(|e| StoreError::corrupt("labels", e))?,
            hardware: serde_json::from_str(&self.hardware)
                .map_err(|e| StoreError::corrupt("hardware report", e))?,
            os_template: self.os_template,
            workflow_id: self.workflow_id.as_deref().map(uuid_col).transpose()?,
            created_at: from_ms(self.created)?,
            updated_at: from_ms(self.updated)?,
            resource_version: self.version,
        })
    }
}

/// Looks a machine up by id.
pub fn get(conn: &Connection, id: MachineId) -> Result<Option<Machine>, StoreError> {
    conn.prepare_cached(concat!(
        "SELECT ",
        columns!(),
        " FROM machines WHERE id = ?1"
    ))?
    .query_row([id.0.to_string()], raw)
    .optional()?
    .map(RawRow::decode)
    .transpose()
}

/// Looks a machine up by id (a UUID) or by memorable name.
pub fn get_by_id_or_name(conn: &Connection, key: &str) -> Result<Option<Machine>, StoreError> {
    if let Ok(id) = key.parse::<Uuid>() {
        return get(conn, MachineId(id));
    }
    conn.prepare_cached(concat!(
        "SELECT ",
        columns!(),
        " FROM machines WHERE name = ?1"
    ))?
    .query_row([key], raw)
    .optional()?
    .map(RawRow::decode)
    .transpose()
}

/// Looks a machine up by any of its MAC addresses.
pub fn get_by_mac(conn: &Connection, mac: MacAddr) -> Result<Option<Machine>, StoreError> {
    conn.prepare_cached(concat!(
        "SELECT ",
        columns!(),
        " FROM machines WHERE id = (SELECT machine_id FROM machine_macs WHERE mac = ?1)"
    ))?
    .query_row([mac.to_string()], raw)
    .optional()?
    .map(RawRow::decode)
    .transpose()
}

/// The little the boot path needs to decide a machine's fate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootInfo {
    pub id: MachineId,
    pub name: String,
    pub state: MachineState,
    pub workflow_id: Option<Uuid>,
}

/// The boot-relevant facts of the machine owning `mac`: one indexed lookup with a cached
/// statement and no JSON decoding — this runs for every network boot request.
pub fn boot_info_by_mac(conn: &Connection, mac: MacAddr) -> Result<Option<BootInfo>, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT m.id, m.name, m.state, m.workflow_id FROM machine_macs mm \
             JOIN machines m ON m.id = mm.machine_id WHERE mm.mac = ?1",
        )?
        .query_row([mac.to_string()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        })
        .optional()?;
    row.map(|(id, name, state, wf)| {
        Ok(BootInfo {
            id: MachineId(uuid_col(&id)?),
            name,
            state: state
                .parse()
                .map_err(|e| StoreError::corrupt("machine state", e))?,
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

/// Records an agent's hardware report: idempotent per machine.
///
/// The report is matched to an existing machine by any of its MACs or by its SMBIOS UUID (when
/// trustworthy). No match creates a machine in state `Registered` named after the report's
/// first MAC (the agent lists its boot interface first); one match updates that machine's
/// inventory and MAC set (a report without an SMBIOS UUID keeps the stored one) and applies
/// the lifecycle's `Register` event; matches on two
/// different machines are refused as [`StoreError::Ambiguous`] rather than guessed at.
pub fn register(
    conn: &mut Connection,
    report: &HardwareReport,
    now: Timestamp,
) -> Result<Registered, StoreError> {
    write(conn, |tx| {
        let smbios = report.trusted_smbios_uuid().map(|u| u.to_string());
        let mut ids: Vec<String> = Vec::new();
        {
            let mut by_mac =
                tx.prepare_cached("SELECT machine_id FROM machine_macs WHERE mac = ?1")?;
            for mac in &report.macs {
                if let Some(id) = by_mac
                    .query_row([mac.to_string()], |r| r.get::<_, String>(0))
                    .optional()?
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
                .optional()?
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
                    params![id.0.to_string(), name, state.as_str(), hardware, smbios, ms(now)],
                )?;
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
                    params![id.0.to_string(), state.as_str(), hardware, smbios, ms(now)],
                )?;
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
    )?;
    let mut ins =
        tx.prepare_cached("INSERT INTO machine_macs (mac, machine_id) VALUES (?1, ?2)")?;
    for mac in macs {
        ins.execute([mac.to_string(), id.0.to_string()])?;
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

/// Lists machines matching `filter`, `limit` at a time, after the name `after`.
///
/// Keyset pagination on the unique name: a page stays correct while machines are added or
/// removed, which offset pagination does not.
pub fn list(
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
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args.iter()), raw)?;
    let mut items = Vec::new();
    for row in rows {
        items.push(row?.decode()?);
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

/// Applies `patch` to the machine if its version is still `expected_version` (when given).
pub fn patch(
    conn: &mut Connection,
    id: MachineId,
    expected_version: Option<i64>,
    patch: &Patch,
    now: Timestamp,
) -> Result<Machine, StoreError> {
    write(conn, |tx| {
        let current = get(tx, id)?.ok_or(StoreError::NotFound { what: "machine" })?;
        if let Some(expected) = expected_version
            && expected != current.resource_version
        {
            return Err(StoreError::Conflict {
                expected,
                current: current.resource_version,
            });
        }
        let labels = patch.labels.as_ref().unwrap_or(&current.labels);
        let hostname = patch.hostname.as_ref().unwrap_or(&current.hostname);
        let labels = serde_json::to_string(labels).map_err(|e| StoreError::corrupt("labels", e))?;
        // The version guard is repeated in SQL so the row can never move under us.
        let n = tx.execute(
            "UPDATE machines SET labels = ?2, hostname = ?3, updated_at_ms = ?4, \
             resource_version = resource_version + 1 WHERE id = ?1 AND resource_version = ?5",
            params![
                id.0.to_string(),
                labels,
                hostname,
                ms(now),
                current.resource_version
            ],
        )?;
        if n != 1 {
            return Err(StoreError::Conflict {
                expected: current.resource_version,
                current: current.resource_version + 1,
            });
        }
        get(tx, id)?.ok_or(StoreError::NotFound { what: "machine" })
    })
}

/// Deletes a machine (and its MACs) if its version is still `expected_version` (when given).
pub fn delete(
    conn: &mut Connection,
    id: MachineId,
    expected_version: Option<i64>,
) -> Result<Machine, StoreError> {
    write(conn, |tx| {
        let current = get(tx, id)?.ok_or(StoreError::NotFound { what: "machine" })?;
        if let Some(expected) = expected_version
            && expected != current.resource_version
        {
            return Err(StoreError::Conflict {
                expected,
                current: current.resource_version,
            });
        }
        tx.execute("DELETE FROM machines WHERE id = ?1", [id.0.to_string()])?;
        Ok(current)
    })
}

/// How many machines are stored.
pub fn count(conn: &Connection) -> Result<u64, StoreError> {
    let n: i64 = conn.query_row("SELECT count(*) FROM machines", [], |r| r.get(0))?;
    Ok(n.unsigned_abs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{migrate, open_connection};

    fn db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = open_connection(&dir.path().join("t.db"), true).unwrap();
        migrate(&mut conn).unwrap();
        (dir, conn)
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
}
