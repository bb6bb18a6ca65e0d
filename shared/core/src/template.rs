//! OS templates: the ordered native actions that turn a blank disk into an installed OS.
//!
//! Each action kind has typed fields, so a template is checked when it is stored rather than
//! when an agent half-way through imaging finds a missing field.

use serde::{Deserialize, Serialize};

/// An OS template's specification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TemplateSpec {
    /// Actions run in order; the first failure stops the workflow.
    pub actions: Vec<ActionSpec>,
}

/// One step of a template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionSpec {
    /// Unique within the template; progress is reported against it.
    pub name: String,
    /// Give up on the action after this many seconds (the workflow's default otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
    #[serde(flatten)]
    pub action: Action,
}

/// The native actions the agent knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Action {
    /// Write a partition table.
    Partition {
        disk: String,
        table: PartitionTable,
        partitions: Vec<Partition>,
    },
    /// Stream an OS image onto a disk.
    Image2disk {
        url: String,
        disk: String,
        /// Expected SHA-256 of the decompressed image, hex.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
        #[serde(default)]
        compression: Compression,
    },
    /// Write one file into a filesystem on the target disk.
    Writefile {
        /// Block device holding the filesystem, e.g. `/dev/sda2`.
        device: String,
        filesystem: Filesystem,
        path: String,
        contents: String,
        #[serde(default = "default_mode")]
        mode: u32,
        #[serde(default)]
        uid: u32,
        #[serde(default)]
        gid: u32,
    },
    /// Boot the installed kernel directly, without a firmware reboot.
    Kexec {
        device: String,
        filesystem: Filesystem,
        kernel: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        initrd: Option<String>,
        #[serde(default)]
        cmdline: String,
    },
}

fn default_mode() -> u32 {
    0o644
}

/// Partition table kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionTable {
    Gpt,
    Mbr,
}

/// One partition; sizes in bytes, `None` for "the rest of the disk" (last only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Partition {
    pub label: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filesystem: Option<Filesystem>,
}

/// Filesystems the agent can create and mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filesystem {
    Ext4,
    Xfs,
    Vfat,
    Swap,
}

/// Image compression, detected by the agent when `auto`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    Auto,
    None,
    Gzip,
    Xz,
    Zstd,
}

/// Why a template is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("actions: a template needs at least one action")]
    Empty,
    #[error("actions[{0}].name: must not be empty")]
    EmptyName(usize),
    #[error("actions[{index}].name: {name:?} is used twice")]
    DuplicateName { index: usize, name: String },
    #[error("actions[{0}].partitions: only the last partition may omit sizeBytes")]
    UnsizedPartition(usize),
    #[error("actions[{0}].sha256: must be 64 hex digits")]
    Checksum(usize),
    #[error("actions[{0}].path: must be absolute")]
    RelativePath(usize),
}

impl TemplateSpec {
    /// Checks the template's internal consistency.
    pub fn validate(&self) -> Result<(), TemplateError> {
        if self.actions.is_empty() {
            return Err(TemplateError::Empty);
        }
        let mut names = std::collections::HashSet::new();
        for (i, a) in self.actions.iter().enumerate() {
            if a.name.trim().is_empty() {
                return Err(TemplateError::EmptyName(i));
            }
            if !names.insert(a.name.as_str()) {
                return Err(TemplateError::DuplicateName {
                    index: i,
                    name: a.name.clone(),
                });
            }
            match &a.action {
                Action::Partition { partitions, .. } => {
                    let n = partitions.len();
                    if partitions
                        .iter()
                        .take(n.saturating_sub(1))
                        .any(|p| p.size_bytes.is_none())
                    {
                        return Err(TemplateError::UnsizedPartition(i));
                    }
                }
                Action::Image2disk {
                    sha256: Some(sum), ..
                } if sum.len() != 64 || !sum.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    return Err(TemplateError::Checksum(i));
                }
                Action::Writefile { path, .. } if !path.starts_with('/') => {
                    return Err(TemplateError::RelativePath(i));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const DEBIAN_YAML: &str = r#"
actions:
- name: disk
  type: partition
  disk: /dev/sda
  table: gpt
  partitions:
  - label: efi
    sizeBytes: 536870912
    filesystem: vfat
  - label: root
    filesystem: ext4
- name: image
  type: image2disk
  url: http://images.example/debian-12.raw.zst
  disk: /dev/sda
  compression: zstd
- name: hostname
  type: writefile
  device: /dev/sda2
  filesystem: ext4
  path: /etc/hostname
  contents: "node-1\n"
- name: boot
  type: kexec
  device: /dev/sda2
  filesystem: ext4
  kernel: /boot/vmlinuz
  initrd: /boot/initrd.img
  cmdline: root=/dev/sda2 ro
"#;

    #[test]
    fn parses_a_real_template() {
        let t: TemplateSpec = serde_yaml_ng::from_str(DEBIAN_YAML).unwrap();
        assert_eq!(t.actions.len(), 4);
        assert_eq!(t.validate(), Ok(()));
        match &t.actions[2].action {
            Action::Writefile { mode, .. } => assert_eq!(*mode, 0o644),
            other => panic!("{other:?}"),
        }
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<TemplateSpec>(&json).unwrap(), t);
    }

    #[test]
    fn refuses_inconsistent_templates() {
        let mut t: TemplateSpec = serde_yaml_ng::from_str(DEBIAN_YAML).unwrap();
        t.actions[1].name = "disk".into();
        assert!(matches!(
            t.validate(),
            Err(TemplateError::DuplicateName { index: 1, .. })
        ));
        let mut t: TemplateSpec = serde_yaml_ng::from_str(DEBIAN_YAML).unwrap();
        if let Action::Partition { partitions, .. } = &mut t.actions[0].action {
            partitions[0].size_bytes = None;
        }
        assert_eq!(t.validate(), Err(TemplateError::UnsizedPartition(0)));
        assert_eq!(
            TemplateSpec { actions: vec![] }.validate(),
            Err(TemplateError::Empty)
        );
    }

    #[test]
    fn unknown_action_type_is_an_error() {
        let y = "actions:\n- name: x\n  type: format_everything\n";
        assert!(serde_yaml_ng::from_str::<TemplateSpec>(y).is_err());
    }
}
