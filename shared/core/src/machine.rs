//! A machine as Dragonfly knows it: identity, inventory, lifecycle state and operator data.

use std::collections::BTreeMap;
use std::fmt;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{HardwareReport, MacAddr, MachineState};

/// A machine's stable identity: assigned once, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(transparent)]
#[cfg_attr(feature = "utoipa", schema(value_type = String, format = Uuid))]
pub struct MachineId(pub Uuid);

impl fmt::Display for MachineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A machine record, as stored and as served by the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Machine {
    pub id: MachineId,
    /// Memorable name (see [`crate::names`]); unique, derived from the first MAC.
    pub name: String,
    /// Operator-chosen host name for the installed OS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    pub state: MachineState,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The latest hardware report (its `macs` are the machine's MAC set).
    pub hardware: HardwareReport,
    /// Name of the OS template assigned to the machine, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_template: Option<String>,
    /// The workflow currently provisioning the machine, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "utoipa", schema(value_type = Option<String>, format = Uuid))]
    pub workflow_id: Option<Uuid>,
    #[cfg_attr(feature = "utoipa", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
    #[cfg_attr(feature = "utoipa", schema(value_type = String, format = DateTime))]
    pub updated_at: Timestamp,
    /// Optimistic-concurrency token: bumped on every write; an update naming a stale
    /// version is refused instead of silently overwriting someone else's change.
    pub resource_version: i64,
}

impl Machine {
    /// The machine's MAC addresses.
    pub fn macs(&self) -> &[MacAddr] {
        &self.hardware.macs
    }
}
