//! Kubernetes-shaped resource documents: `dragonfly.computer/v1` Hardware, Template, Workflow.
//!
//! The store keeps rows; these documents are how the same data is exchanged with people and
//! tools (`kubectl`-style YAML, GitOps repositories, a future Kubernetes backend). The shape is
//! Kubernetes' own — `apiVersion`, `kind`, `metadata`, `spec`, `status` — and a document must
//! round-trip through JSON and YAML unchanged.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::template::TemplateSpec;
use crate::workflow::{WorkflowSpec, WorkflowStatus};
use crate::{HardwareReport, Machine, MachineState};

/// The API group and version of every Dragonfly resource.
pub const API_VERSION: &str = "dragonfly.computer/v1";

/// `metadata` of a resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<Uuid>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<Timestamp>,
    /// Opaque to clients, as in Kubernetes; Dragonfly writes the row's version number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

/// A resource document with spec `S` and status `St`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource<S, St> {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: S,
    #[serde(default = "no_status", skip_serializing_if = "Option::is_none")]
    pub status: Option<St>,
}

// A plain `#[serde(default)]` would demand `St: Default` of every status type.
fn no_status<St>() -> Option<St> {
    None
}

/// A document whose `apiVersion` or `kind` is not the one expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected apiVersion {API_VERSION} kind {expected}, got {api_version} {kind}")]
pub struct TypeMetaError {
    pub expected: &'static str,
    pub api_version: String,
    pub kind: String,
}

impl<S, St> Resource<S, St> {
    /// Builds a document of `kind` in Dragonfly's API group.
    pub fn new(kind: &str, metadata: ObjectMeta, spec: S, status: Option<St>) -> Self {
        Self {
            api_version: API_VERSION.to_owned(),
            kind: kind.to_owned(),
            metadata,
            spec,
            status,
        }
    }

    /// Checks that a parsed document is of the expected kind.
    pub fn check_type(&self, expected: &'static str) -> Result<(), TypeMetaError> {
        if self.api_version == API_VERSION && self.kind == expected {
            Ok(())
        } else {
            Err(TypeMetaError {
                expected,
                api_version: self.api_version.chars().take(80).collect(),
                kind: self.kind.chars().take(80).collect(),
            })
        }
    }
}

/// `kind: Hardware`.
pub const HARDWARE: &str = "Hardware";
/// `kind: Template`.
pub const TEMPLATE: &str = "Template";
/// `kind: Workflow`.
pub const WORKFLOW: &str = "Workflow";

/// The desired and reported facts of a machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HardwareSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_template: Option<String>,
    pub hardware: HardwareReport,
}

/// What Dragonfly observed about a machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HardwareStatus {
    pub state: MachineState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<Uuid>,
    pub updated_at: Timestamp,
}

/// A Hardware document.
pub type Hardware = Resource<HardwareSpec, HardwareStatus>;
/// A Template document. Templates have no status.
pub type Template = Resource<TemplateSpec, serde_json::Value>;
/// A Workflow document.
pub type Workflow = Resource<WorkflowSpec, WorkflowStatus>;

impl From<&Machine> for Hardware {
    fn from(m: &Machine) -> Self {
        Resource::new(
            HARDWARE,
            ObjectMeta {
                name: m.name.clone(),
                uid: Some(m.id.0),
                labels: m.labels.clone(),
                annotations: BTreeMap::new(),
                creation_timestamp: Some(m.created_at),
                resource_version: Some(m.resource_version.to_string()),
            },
            HardwareSpec {
                hostname: m.hostname.clone(),
                os_template: m.os_template.clone(),
                hardware: m.hardware.clone(),
            },
            Some(HardwareStatus {
                state: m.state,
                workflow_id: m.workflow_id,
                updated_at: m.updated_at,
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cpu, Disk, MacAddr, MachineId};

    fn machine() -> Machine {
        Machine {
            id: MachineId(Uuid::from_u128(42)),
            name: "CensusAbleQualityParent".into(),
            hostname: Some("node-1".into()),
            state: MachineState::Registered,
            labels: [("rack".to_owned(), "r1".to_owned())].into(),
            hardware: HardwareReport {
                macs: vec![MacAddr::new([0x52, 0x54, 0, 1, 2, 3])],
                smbios_uuid: Some(Uuid::from_u128(9)),
                hostname: None,
                cpu: Some(Cpu {
                    model: "EPYC".into(),
                    cores: 8,
                    threads: 16,
                }),
                memory_bytes: Some(1 << 34),
                disks: vec![Disk {
                    name: "nvme0n1".into(),
                    model: Some("Samsung".into()),
                    serial: Some("S1".into()),
                    size_bytes: 1 << 40,
                    rotational: Some(false),
                    removable: Some(false),
                }],
                nics: vec![],
                bmc: None,
                firmware: Some(crate::Firmware::Bios),
                ..Default::default()
            },
            os_template: Some("debian-12".into()),
            workflow_id: None,
            created_at: "2026-01-02T03:04:05Z".parse().unwrap(),
            updated_at: "2026-01-02T03:04:06.5Z".parse().unwrap(),
            resource_version: 3,
        }
    }

    fn round_trip<T>(doc: &T)
    where
        T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let json = serde_json::to_string_pretty(doc).unwrap();
        assert_eq!(&serde_json::from_str::<T>(&json).unwrap(), doc, "{json}");
        let yaml = serde_yaml_ng::to_string(doc).unwrap();
        assert_eq!(&serde_yaml_ng::from_str::<T>(&yaml).unwrap(), doc, "{yaml}");
    }

    #[test]
    fn hardware_document_shape() {
        let hw = Hardware::from(&machine());
        let v = serde_json::to_value(&hw).unwrap();
        assert_eq!(v["apiVersion"], API_VERSION);
        assert_eq!(v["kind"], "Hardware");
        assert_eq!(v["metadata"]["name"], "CensusAbleQualityParent");
        assert_eq!(v["metadata"]["uid"], Uuid::from_u128(42).to_string());
        assert_eq!(v["metadata"]["creationTimestamp"], "2026-01-02T03:04:05Z");
        assert_eq!(v["metadata"]["resourceVersion"], "3");
        assert_eq!(v["metadata"]["labels"]["rack"], "r1");
        assert_eq!(v["spec"]["hardware"]["macs"][0], "52:54:00:01:02:03");
        assert_eq!(v["status"]["state"], "Registered");
        assert_eq!(hw.check_type(HARDWARE), Ok(()));
        assert!(hw.check_type(WORKFLOW).is_err());
    }

    #[test]
    fn every_kind_round_trips_through_json_and_yaml() {
        round_trip(&Hardware::from(&machine()));
        let spec: TemplateSpec =
            serde_yaml_ng::from_str(crate::template::tests::DEBIAN_YAML).unwrap();
        let meta = ObjectMeta {
            name: "debian-12".into(),
            uid: Some(Uuid::from_u128(1)),
            labels: BTreeMap::new(),
            annotations: [("note".to_owned(), "a: b".to_owned())].into(),
            creation_timestamp: Some("2026-03-04T05:06:07Z".parse().unwrap()),
            resource_version: Some("1".into()),
        };
        round_trip(&Template::new(TEMPLATE, meta.clone(), spec.clone(), None));
        let mut status = WorkflowStatus::pending(spec.actions.iter().map(|a| a.name.as_str()));
        status.current_action = Some(1);
        status.actions[0].state = crate::workflow::ActionState::Succeeded;
        status.actions[0].percent = 100;
        round_trip(&Workflow::new(
            WORKFLOW,
            ObjectMeta {
                name: "wf-1".into(),
                ..meta
            },
            WorkflowSpec {
                hardware_ref: "CensusAbleQualityParent".into(),
                template_ref: "debian-12".into(),
                timeout_seconds: Some(600),
            },
            Some(status),
        ));
    }

    #[test]
    fn parses_a_hand_written_yaml_document() {
        let yaml = r#"
apiVersion: dragonfly.computer/v1
kind: Hardware
metadata:
  name: CensusAbleQualityParent
  labels: {rack: r1}
spec:
  hardware:
    macs: ["52-54-00-01-02-03"]
"#;
        let hw: Hardware = serde_yaml_ng::from_str(yaml).unwrap();
        assert_eq!(hw.check_type(HARDWARE), Ok(()));
        assert_eq!(hw.spec.hardware.macs[0].to_string(), "52:54:00:01:02:03");
        assert!(hw.status.is_none());
    }
}
