//! Fixtures for every crate's tests: a migrated database in a temporary directory, and
//! machines in the states a test needs.
//!
//! Compiled only with the `testing` feature, which only `[dev-dependencies]` enable: no daemon
//! binary contains it. Fixtures go through the same handles daemons use (`register`,
//! `transition`), never through SQL, so a test cannot set up a row the daemons themselves
//! could never produce. They panic on failure, as test set-up does.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use dragonfly_core::lifecycle::LifecycleEvent;
use dragonfly_core::{HardwareReport, MacAddr, Machine, MachineId, MachineState};
use uuid::Uuid;

use crate::Db;

/// A migrated database (`dragonfly.db`) in a fresh temporary directory, and a [`Db`] on it.
#[derive(Debug)]
pub struct TestDb {
    /// The directory; removed when the `TestDb` is dropped. Tests may put other files here.
    pub dir: tempfile::TempDir,
    /// The database file, for daemons and binaries started by the test.
    pub path: PathBuf,
    /// A handle on it.
    pub db: Db,
}

impl TestDb {
    /// Creates and migrates the database as `dragonfly-migrate` would (mode 0660), and opens
    /// it. Needs no runtime; the handle's methods do.
    ///
    /// # Panics
    /// When the directory or the database cannot be created.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("creating a temporary directory");
        let path = dir.path().join("dragonfly.db");
        crate::migrate_file(&path).expect("creating the test database");
        let db = Db::open_blocking(path.clone()).expect("opening the test database");
        Self { dir, path, db }
    }

    /// apid's own database beside the shared one (`apid/auth.db` in [`TestDb::dir`]), created
    /// and migrated as apid does; the same file every time it is called.
    ///
    /// # Panics
    /// When it cannot be created.
    pub fn auth_db(&self) -> crate::AuthDb {
        let path = self.auth_db_path();
        crate::auth::create_file(&path).expect("creating the test auth database");
        crate::AuthDb::open_blocking(path).expect("opening the test auth database")
    }

    /// Where [`TestDb::auth_db`] keeps apid's database.
    pub fn auth_db_path(&self) -> PathBuf {
        self.dir.path().join("apid/auth.db")
    }

    /// See [`machine`].
    pub async fn machine(&self, m: NewMachine) -> Machine {
        machine(&self.db, m).await
    }

    /// See [`set_state`].
    pub async fn set_state(
        &self,
        id: MachineId,
        state: MachineState,
        workflow_id: Option<Uuid>,
    ) -> Machine {
        set_state(&self.db, id, state, workflow_id).await
    }
}

impl Default for TestDb {
    fn default() -> Self {
        Self::new()
    }
}

/// A machine a test wants: its MACs (the first is the boot interface and names it), SMBIOS
/// UUID, state and workflow. Starts as `Registered` without a workflow, as an agent's first
/// report leaves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMachine {
    macs: Vec<MacAddr>,
    smbios_uuid: Option<Uuid>,
    state: MachineState,
    workflow_id: Option<Uuid>,
}

impl NewMachine {
    /// A machine with these MACs.
    ///
    /// # Panics
    /// When `macs` is empty (a report always names at least one).
    pub fn with_macs(macs: impl IntoIterator<Item = MacAddr>) -> Self {
        let macs: Vec<MacAddr> = macs.into_iter().collect();
        assert!(!macs.is_empty(), "a machine needs at least one MAC");
        Self {
            macs,
            smbios_uuid: None,
            state: MachineState::Registered,
            workflow_id: None,
        }
    }

    /// A machine with this one MAC.
    pub fn with_mac(mac: MacAddr) -> Self {
        Self::with_macs([mac])
    }

    /// Reports this SMBIOS UUID (ignored by the store when it is a placeholder).
    pub fn smbios_uuid(mut self, uuid: Uuid) -> Self {
        self.smbios_uuid = Some(uuid);
        self
    }

    /// Ends in `state` (any state the lifecycle can reach from `Registered`).
    pub fn state(mut self, state: MachineState) -> Self {
        self.state = state;
        self
    }

    /// Ends in workflow `id`.
    pub fn workflow(mut self, id: Uuid) -> Self {
        self.workflow_id = Some(id);
        self
    }

    /// The hardware report the agent of this machine would send.
    pub fn report(&self) -> HardwareReport {
        HardwareReport {
            smbios_uuid: self.smbios_uuid,
            ..report(&self.macs)
        }
    }
}

/// The smallest valid hardware report for these MACs: no CPU, disks or NICs listed.
pub fn report(macs: &[MacAddr]) -> HardwareReport {
    HardwareReport {
        macs: macs.to_vec(),
        ..Default::default()
    }
}

/// Registers `m` as its agent would, then moves it to `m`'s state and workflow.
///
/// # Panics
/// When the store refuses (e.g. a MAC already belongs to another machine).
pub async fn machine(db: &Db, m: NewMachine) -> Machine {
    let registered = db
        .machines()
        .register(m.report(), jiff::Timestamp::now())
        .await
        .expect("registering a test machine");
    let id = registered.machine().id;
    set_state(db, id, m.state, m.workflow_id).await
}

/// Moves a machine to `state` with workflow `workflow_id` along the shortest chain of
/// lifecycle events ([`dragonfly_core::lifecycle`]), each applied by
/// [`crate::machines::Machines::transition`] as a daemon would.
///
/// # Panics
/// When the machine does not exist or the lifecycle cannot reach `state` from its current
/// state (nothing leads back to `Discovered`).
pub async fn set_state(
    db: &Db,
    id: MachineId,
    state: MachineState,
    workflow_id: Option<Uuid>,
) -> Machine {
    let machines = db.machines();
    let current = machines
        .get(id)
        .await
        .expect("reading a test machine")
        .expect("the test machine exists");
    let mut events = path(current.state, state)
        .unwrap_or_else(|| panic!("no lifecycle path from {} to {state}", current.state));
    if events.is_empty() {
        // Already there: `Register` is legal in every state and keeps it, so it just sets the
        // workflow.
        events.push(LifecycleEvent::Register);
    }
    let mut m = current;
    for event in events {
        m = machines
            .transition(id, None, event, workflow_id, jiff::Timestamp::now())
            .await
            .unwrap_or_else(|e| panic!("applying {event:?} to a test machine: {e}"));
    }
    m
}

/// The shortest chain of events from `from` to `to` (breadth-first over the lifecycle).
fn path(from: MachineState, to: MachineState) -> Option<Vec<LifecycleEvent>> {
    let mut queue = VecDeque::from([(from, Vec::new())]);
    let mut seen = vec![from];
    while let Some((state, events)) = queue.pop_front() {
        if state == to {
            return Some(events);
        }
        for event in LifecycleEvent::ALL {
            if let Ok(next) = state.apply(event)
                && !seen.contains(&next)
            {
                seen.push(next);
                let mut longer = events.clone();
                longer.push(event);
                queue.push_back((next, longer));
            }
        }
    }
    None
}

/// The schema version of the database file at `path` (0 when never migrated).
///
/// # Panics
/// When the file cannot be opened.
pub fn schema_version(path: &Path) -> i64 {
    crate::migrate::file_version(path).expect("reading the schema version")
}

/// Sets the schema version of the file at `path`, as a newer (or older) release would have
/// left it, to test that it is refused.
///
/// # Panics
/// When the file cannot be opened or written.
pub fn set_schema_version(path: &Path, version: i64) {
    crate::migrate::set_file_version(path, version).expect("setting the schema version");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u8) -> MacAddr {
        MacAddr::new([0x52, 0x54, 0, 0, 0x7e, n])
    }

    #[test]
    fn every_state_but_discovered_is_reachable_from_registered() {
        for to in MachineState::ALL {
            let p = path(MachineState::Registered, to);
            assert_eq!(p.is_some(), to != MachineState::Discovered, "{to}");
            // The chain really leads there.
            if let Some(events) = p {
                let end = events
                    .iter()
                    .try_fold(MachineState::Registered, |s, e| s.apply(*e));
                assert_eq!(end, Ok(to));
            }
        }
    }

    #[tokio::test]
    async fn fixtures_make_machines_in_the_asked_state() {
        let t = TestDb::new();
        let wf = Uuid::from_u128(7);
        let m = t
            .machine(
                NewMachine::with_macs([mac(1), mac(2)])
                    .smbios_uuid(Uuid::from_u128(0x1234_5678_9abc))
                    .state(MachineState::Provisioning)
                    .workflow(wf),
            )
            .await;
        assert_eq!(m.state, MachineState::Provisioning);
        assert_eq!(m.workflow_id, Some(wf));
        assert_eq!(m.hardware.macs, vec![mac(1), mac(2)]);
        let b = t.db.machines().boot_info(mac(2)).await.unwrap().unwrap();
        assert_eq!((b.id, b.state), (m.id, MachineState::Provisioning));
        // Same state, other workflow; then back to no workflow in another state.
        let m = t
            .set_state(m.id, MachineState::Provisioning, Some(Uuid::from_u128(8)))
            .await;
        assert_eq!(m.workflow_id, Some(Uuid::from_u128(8)));
        let m = t.set_state(m.id, MachineState::Ready, None).await;
        assert_eq!((m.state, m.workflow_id), (MachineState::Ready, None));
        assert_eq!(schema_version(&t.path), crate::SCHEMA_VERSION);
    }
}
