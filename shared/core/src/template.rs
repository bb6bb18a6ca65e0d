//! OS templates: the ordered native actions that turn a blank disk into an installed OS.
//!
//! Each action kind has typed fields, so a template is checked when it is stored rather than
//! when an agent half-way through imaging finds a missing field. Sizes stay strings in the
//! document (`"512MiB"`, `"50%"`, `"rest"`) so an operator reads back what they wrote;
//! [`TemplateSpec::validate`] parses every one of them, and the agent parses them again with
//! the same functions ([`PartitionSize::parse`], [`parse_size`]), so the two sides can never
//! disagree about what a size means.
//!
//! Nothing here does I/O: which disk a [`DiskSelector`] names is decided by the agent, on the
//! machine, from what it sees in `/sys`.

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
    /// How many times a failed run of the action is tried again before the workflow fails
    /// (0: none). Each try is a new attempt of the workflow that re-runs this action only.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: u32,
    #[serde(flatten)]
    pub action: Action,
}

/// The native actions the agent knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Action {
    /// Write a partition table (and optionally make filesystems on the new partitions).
    #[serde(rename_all = "camelCase")]
    Partition {
        disk: DiskSelector,
        table: PartitionTable,
        partitions: Vec<Partition>,
    },
    /// Stream an OS image onto a disk: from a URL, or from an image of the library by name
    /// (exactly one of `url` and `image`).
    #[serde(rename_all = "camelCase")]
    Image2disk {
        /// `http://` or `https://`.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        url: String,
        /// The name of an image of the library (`/apis/dragonfly.computer/v1/images`). apid
        /// resolves it when a workflow is created: the workflow's action carries the image's
        /// URL, checksum and compression instead, so a later change of the image does not
        /// change an install under way.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        image: Option<String>,
        /// Set by apid only, for an image Dragonfly serves that is not public: the agent sends
        /// its boot token with the download (`Authorization: Bearer`). A template cannot set
        /// it, so a token is never sent to a server the template names.
        #[serde(default, skip_serializing_if = "is_false")]
        authenticate: bool,
        disk: DiskSelector,
        /// Expected SHA-256 of the decompressed image, hex (at most one of `sha256`/`sha512`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
        /// Expected SHA-512 of the decompressed image, hex.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sha512: Option<String>,
        /// Detected from the stream's magic bytes when `auto`; anything else overrides.
        #[serde(default)]
        compression: Compression,
    },
    /// Write one file into a filesystem on the target disk.
    #[serde(rename_all = "camelCase")]
    Writefile {
        /// The block device holding the filesystem.
        device: DeviceRef,
        filesystem: Filesystem,
        /// Absolute path inside that filesystem.
        path: String,
        /// The file's contents, inline (exactly one of `contents` and `url`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        contents: Option<String>,
        /// The file's contents, fetched from `http://` or `https://`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
        #[serde(default = "default_mode")]
        mode: u32,
        #[serde(default)]
        uid: u32,
        #[serde(default)]
        gid: u32,
    },
    /// Boot the installed kernel directly, without a firmware reboot.
    #[serde(rename_all = "camelCase")]
    Kexec {
        device: DeviceRef,
        filesystem: Filesystem,
        /// Absolute path of the kernel inside that filesystem.
        kernel: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        initrd: Option<String>,
        #[serde(default)]
        cmdline: String,
    },
    /// The installed OS's first boot, run by no agent: the metadata service serves
    /// `userData` to the installed OS's cloud-init (with a vendor-data that makes it phone
    /// home), and the action succeeds when it phones home. Until then the machine is
    /// Provisioning, "installed, waiting for first boot"; the action's timeout puts it in
    /// Error. Only as the last action, right after the kexec into the installed OS.
    #[serde(rename_all = "camelCase")]
    Cloudinit {
        /// `#cloud-config` YAML, rendered per machine like a writefile's contents.
        user_data: String,
    },
}

impl Action {
    /// Whether the agent runs this action (all but [`Action::Cloudinit`], which the
    /// installed OS completes by phoning home).
    pub fn runs_on_agent(&self) -> bool {
        !matches!(self, Action::Cloudinit { .. })
    }
}

/// Checks a rendered (or, with `{{…}}` placeholders, an unrendered) user-data: cloud-config
/// YAML whose top level is a mapping. The `Err` says what is wrong, for the API.
pub fn check_cloud_config(text: &str) -> Result<(), String> {
    let Some(rest) = text.strip_prefix("#cloud-config") else {
        return Err("must start with the line #cloud-config".into());
    };
    if !rest.is_empty() && !rest.starts_with(['\n', '\r']) {
        return Err("must start with the line #cloud-config".into());
    }
    match serde_yaml_ng::from_str::<serde_yaml_ng::Value>(rest) {
        Ok(serde_yaml_ng::Value::Mapping(_) | serde_yaml_ng::Value::Null) => Ok(()),
        Ok(_) => Err("the cloud-config's top level must be a mapping of keys".into()),
        Err(e) => Err(format!("is not valid YAML: {e}")),
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn default_mode() -> u32 {
    0o644
}

/// Which disk an action works on.
///
/// Written as a plain path (`disk: /dev/sda`, `disk: /dev/disk/by-id/nvme-…`) or as one of
/// `{path: …}`, `{byId: …}` (the name under `/dev/disk/by-id`, which the agent computes from
/// sysfs itself since the initramfs has no udev) and `{rule: {minSize: 8GiB}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DiskSelector {
    Path(String),
    Select(DiskSelect),
}

/// The map form of [`DiskSelector`]: exactly one of the three fields.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiskSelect {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A name under `/dev/disk/by-id`, without the directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<DiskRule>,
}

/// "The first disk that …": disks are considered in the kernel's name order
/// (`nvme0n1` < `sda` < `vda`), and read-only, zero-sized, loop, RAM and device-mapper
/// devices never match.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiskRule {
    /// Smallest acceptable size, e.g. `8GiB` (a [`parse_size`] string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_size: Option<String>,
    /// Whether removable disks (USB sticks, card readers) may match; `false` by default.
    #[serde(default)]
    pub removable: bool,
    /// `Some(false)` for SSDs only, `Some(true)` for spinning disks only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotational: Option<bool>,
}

impl DiskSelector {
    /// The selector's `/dev` path when it names one directly.
    pub fn path(&self) -> Option<&str> {
        match self {
            Self::Path(p) => Some(p),
            Self::Select(s) => s.path.as_deref(),
        }
    }
}

/// A partition: a device path (`/dev/sda2`) or the n-th partition (from 1) of a selected disk,
/// which is what a template whose disk is chosen by a rule must use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DeviceRef {
    Path(String),
    Partition(PartitionOf),
}

/// The `{disk: …, partition: N}` form of [`DeviceRef`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PartitionOf {
    pub disk: DiskSelector,
    pub partition: u32,
}

/// Partition table kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionTable {
    Gpt,
    Mbr,
}

/// One partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Partition {
    /// The GPT partition name (PARTLABEL, at most 36 characters) and the filesystem label
    /// given to `mkfs` (MBR has no partition names).
    pub label: String,
    /// `512MiB`, `20GiB`, `1TiB`, `25%` (of the disk) or `rest` (last partition only; the
    /// default).
    #[serde(default = "default_size")]
    pub size: String,
    #[serde(default, rename = "type")]
    pub kind: PartitionType,
    /// Make this filesystem on the new partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<Filesystem>,
}

fn default_size() -> String {
    "rest".into()
}

/// What a partition is for; sets the GPT type GUID or the MBR type byte.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PartitionType {
    /// EFI system partition.
    Efi,
    /// GRUB's BIOS boot partition (GPT only).
    BiosBoot,
    #[default]
    Linux,
    Swap,
}

/// Filesystems the agent can create (and, except swap, mount).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Filesystem {
    Ext4,
    Xfs,
    Vfat,
    Swap,
}

/// Image compression, detected by the agent from magic bytes when `auto`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    Auto,
    None,
    Gzip,
    Xz,
    Zstd,
    Bzip2,
}

/// A parsed partition size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionSize {
    Bytes(u64),
    /// 1 to 100 percent of the disk's usable size.
    Percent(u8),
    /// Whatever is left.
    Rest,
}

/// Why a size string does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("{0:?} is not a size: write e.g. 512MiB, 20GiB, 1TiB, 25% or rest")]
    Syntax(String),
    #[error("{0:?} is zero")]
    Zero(String),
    #[error("{0:?} is too large")]
    Overflow(String),
    #[error("{0:?}: a percentage is between 1% and 100%")]
    Percent(String),
}

/// Parses `<digits><unit>` with unit `KiB`, `MiB`, `GiB` or `TiB` (binary units only: a
/// decimal `GB` is refused rather than guessed) into bytes.
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = (&t[..split], t[split..].trim());
    if digits.is_empty() {
        return Err(SizeError::Syntax(s.into()));
    }
    let shift = match unit {
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        "TiB" => 40,
        _ => return Err(SizeError::Syntax(s.into())),
    };
    let n: u64 = digits.parse().map_err(|_| SizeError::Overflow(s.into()))?;
    if n == 0 {
        return Err(SizeError::Zero(s.into()));
    }
    n.checked_mul(1 << shift)
        .ok_or_else(|| SizeError::Overflow(s.into()))
}

impl PartitionSize {
    /// Parses a partition's `size`: a [`parse_size`] string, `N%` or `rest`.
    pub fn parse(s: &str) -> Result<Self, SizeError> {
        let t = s.trim();
        if t == "rest" {
            return Ok(Self::Rest);
        }
        if let Some(p) = t.strip_suffix('%') {
            return match p.trim().parse::<u8>() {
                Ok(n @ 1..=100) if p.trim().bytes().all(|b| b.is_ascii_digit()) => {
                    Ok(Self::Percent(n))
                }
                _ => Err(SizeError::Percent(s.into())),
            };
        }
        parse_size(t).map(Self::Bytes)
    }
}

/// Where in a template a problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct At {
    /// The action's position, from 0.
    pub index: usize,
    /// The action's name (possibly empty: that may be the problem).
    pub name: String,
    /// The field, as written in the document (`partitions[1].size`).
    pub field: String,
}

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "actions[{}] ({:?}).{}",
            self.index, self.name, self.field
        )
    }
}

/// Why a template is refused; every variant but `Empty` says where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("actions: a template needs at least one action")]
    Empty,
    #[error("{0}: must not be empty")]
    EmptyName(At),
    #[error("{0}: the name is already used by actions[{1}]")]
    DuplicateName(At, usize),
    #[error("{0}: {1:?} is not an http:// or https:// URL with a host")]
    Url(At, String),
    #[error("{0}: must be {1} hex digits")]
    Checksum(At, usize),
    #[error("{0}: give sha256 or sha512, not both")]
    TwoChecksums(At),
    #[error("{0}: give exactly one of url and image")]
    UrlOrImage(At),
    #[error("{0}: {1:?} is not an image name (1–63 characters of a-z, 0-9, '-' and '.')")]
    ImageName(At, String),
    #[error("{0}: set by apid for the library's images, not by a template")]
    Authenticate(At),
    // The size error is the detail of this one, not a cause, so it is printed here (an API
    // client shows this Display alone).
    #[error("{0}: {1}")]
    Size(At, SizeError),
    #[error("{0}: \"rest\" is only allowed for the last partition")]
    RestNotLast(At),
    #[error("{0}: the percentages add up to {1}%, more than 100%")]
    PercentOver(At, u32),
    #[error("{0}: needs at least one partition")]
    NoPartitions(At),
    #[error("{0}: an MBR holds at most 4 partitions (no logical partitions), not {1}")]
    TooManyPartitions(At, usize),
    #[error("{0}: a BIOS boot partition exists only in a GPT table")]
    GptOnly(At),
    #[error("{0}: at most 36 characters")]
    LabelTooLong(At),
    #[error("{0}: the filesystem's label holds at most {1} bytes")]
    FsLabelTooLong(At, usize),
    #[error("{0}: must be an absolute path without \"..\"")]
    Path(At),
    #[error("{0}: give exactly one of contents and url")]
    Contents(At),
    #[error("{0}: swap cannot be mounted")]
    NotMountable(At),
    #[error("{0}: {1:o} is not a file mode (at most 0o7777)")]
    Mode(At, u32),
    #[error("{0}: give exactly one of path, byId and rule")]
    DiskSelector(At),
    #[error("{0}: partitions are numbered from 1")]
    PartitionNumber(At),
    #[error("{0}: must be a name under /dev/disk/by-id (not empty, no '/')")]
    ById(At),
    #[error("{0}: a cloudinit action must be the last one, right after a kexec")]
    CloudinitPlace(At),
    #[error("{0}: {1}")]
    UserData(At, String),
}

/// Whether `name` can name a resource (an image, a template): 1–63 characters of `a-z`,
/// `0-9`, `-` and `.`, so it is also a plain file name and a URL path segment as it is.
pub fn check_image_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Checks an `http://` or `https://` URL's shape (scheme, a host, no spaces); what the agent
/// can reach is only known on the machine.
pub fn check_url(u: &str) -> bool {
    let rest = u
        .strip_prefix("http://")
        .or_else(|| u.strip_prefix("https://"));
    match rest {
        Some(r) => {
            let host = r.split(['/', '?', '#']).next().unwrap_or("");
            !host.is_empty() && !host.contains('@') && !u.contains(char::is_whitespace)
        }
        None => false,
    }
}

/// `text` with each `{{…}}` replaced by `x`, and each line of a `{{#…}}`/`{{/…}}` block
/// helper dropped, so its YAML shape can be checked before any value is known.
fn placeholders(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("{{#") || t.starts_with("{{/") || t.starts_with("{{else") {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("{{") {
            out.push_str(&rest[..i]);
            match rest[i..].find("}}") {
                Some(end) => {
                    out.push('x');
                    rest = &rest[i + end + 2..];
                    rest = rest.strip_prefix('}').unwrap_or(rest);
                }
                None => {
                    rest = &rest[i..];
                    break;
                }
            }
        }
        out.push_str(rest);
        out.push('\n');
    }
    out
}

pub(crate) fn check_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn check_abs(p: &str) -> bool {
    p.starts_with('/') && !p.split('/').any(|c| c == "..") && !p.contains('\0')
}

impl TemplateSpec {
    /// Checks the template's internal consistency: what apid runs before storing it.
    pub fn validate(&self) -> Result<(), TemplateError> {
        if self.actions.is_empty() {
            return Err(TemplateError::Empty);
        }
        let mut names = std::collections::HashMap::new();
        for (i, a) in self.actions.iter().enumerate() {
            let at = |field: &str| At {
                index: i,
                name: a.name.clone(),
                field: field.to_owned(),
            };
            if a.name.trim().is_empty() {
                return Err(TemplateError::EmptyName(at("name")));
            }
            if let Some(first) = names.insert(a.name.as_str(), i) {
                return Err(TemplateError::DuplicateName(at("name"), first));
            }
            a.action.validate(&at)?;
            if !a.action.runs_on_agent() {
                let after_kexec =
                    i > 0 && matches!(self.actions[i - 1].action, Action::Kexec { .. });
                if i + 1 != self.actions.len() || !after_kexec {
                    return Err(TemplateError::CloudinitPlace(at("type")));
                }
            }
        }
        Ok(())
    }
}

impl Action {
    fn validate(&self, at: &dyn Fn(&str) -> At) -> Result<(), TemplateError> {
        match self {
            Action::Partition {
                disk,
                table,
                partitions,
            } => {
                check_disk(disk, "disk", at)?;
                if partitions.is_empty() {
                    return Err(TemplateError::NoPartitions(at("partitions")));
                }
                if *table == PartitionTable::Mbr && partitions.len() > 4 {
                    return Err(TemplateError::TooManyPartitions(
                        at("partitions"),
                        partitions.len(),
                    ));
                }
                let mut percent = 0u32;
                for (j, p) in partitions.iter().enumerate() {
                    let f = |name: &str| at(&format!("partitions[{j}].{name}"));
                    match PartitionSize::parse(&p.size)
                        .map_err(|e| TemplateError::Size(f("size"), e))?
                    {
                        PartitionSize::Rest if j + 1 != partitions.len() => {
                            return Err(TemplateError::RestNotLast(f("size")));
                        }
                        PartitionSize::Percent(n) => {
                            percent += u32::from(n);
                            if percent > 100 {
                                return Err(TemplateError::PercentOver(f("size"), percent));
                            }
                        }
                        _ => {}
                    }
                    if p.label.chars().count() > 36 {
                        return Err(TemplateError::LabelTooLong(f("label")));
                    }
                    // The label is also the filesystem's, whose limits are tighter.
                    let fs_max = match p.format {
                        Some(Filesystem::Vfat) => 11,
                        Some(Filesystem::Xfs) => 12,
                        Some(Filesystem::Ext4 | Filesystem::Swap) => 16,
                        None => usize::MAX,
                    };
                    if p.label.len() > fs_max {
                        return Err(TemplateError::FsLabelTooLong(f("label"), fs_max));
                    }
                    if *table == PartitionTable::Mbr && p.kind == PartitionType::BiosBoot {
                        return Err(TemplateError::GptOnly(f("type")));
                    }
                }
            }
            Action::Image2disk {
                url,
                image,
                authenticate,
                disk,
                sha256,
                sha512,
                ..
            } => {
                match image {
                    Some(_) if !url.is_empty() => {
                        return Err(TemplateError::UrlOrImage(at("image")));
                    }
                    Some(name) if !check_image_name(name) => {
                        return Err(TemplateError::ImageName(at("image"), name.clone()));
                    }
                    Some(_) => {}
                    None if !check_url(url) => {
                        return Err(TemplateError::Url(at("url"), url.clone()));
                    }
                    None => {}
                }
                if *authenticate {
                    return Err(TemplateError::Authenticate(at("authenticate")));
                }
                check_disk(disk, "disk", at)?;
                if sha256.is_some() && sha512.is_some() {
                    return Err(TemplateError::TwoChecksums(at("sha512")));
                }
                if sha256.as_ref().is_some_and(|s| !check_hex(s, 64)) {
                    return Err(TemplateError::Checksum(at("sha256"), 64));
                }
                if sha512.as_ref().is_some_and(|s| !check_hex(s, 128)) {
                    return Err(TemplateError::Checksum(at("sha512"), 128));
                }
            }
            Action::Writefile {
                device,
                filesystem,
                path,
                contents,
                url,
                mode,
                ..
            } => {
                check_device(device, at)?;
                if *filesystem == Filesystem::Swap {
                    return Err(TemplateError::NotMountable(at("filesystem")));
                }
                if !check_abs(path) || path.ends_with('/') {
                    return Err(TemplateError::Path(at("path")));
                }
                match (contents, url) {
                    (Some(_), None) => {}
                    (None, Some(u)) => {
                        if !check_url(u) {
                            return Err(TemplateError::Url(at("url"), u.clone()));
                        }
                    }
                    _ => return Err(TemplateError::Contents(at("contents"))),
                }
                if *mode > 0o7777 {
                    return Err(TemplateError::Mode(at("mode"), *mode));
                }
            }
            Action::Kexec {
                device,
                filesystem,
                kernel,
                initrd,
                ..
            } => {
                check_device(device, at)?;
                if *filesystem == Filesystem::Swap {
                    return Err(TemplateError::NotMountable(at("filesystem")));
                }
                if !check_abs(kernel) {
                    return Err(TemplateError::Path(at("kernel")));
                }
                if initrd.as_deref().is_some_and(|p| !check_abs(p)) {
                    return Err(TemplateError::Path(at("initrd")));
                }
            }
            Action::Cloudinit { user_data } => {
                // `{{…}}` expressions stand for values only known per machine: checked with
                // a placeholder here, and again once rendered.
                check_cloud_config(&placeholders(user_data))
                    .map_err(|e| TemplateError::UserData(at("userData"), e))?;
            }
        }
        Ok(())
    }
}

fn check_disk(d: &DiskSelector, field: &str, at: &dyn Fn(&str) -> At) -> Result<(), TemplateError> {
    let (path, by_id, rule) = match d {
        DiskSelector::Path(p) => (Some(p), None, None),
        DiskSelector::Select(s) => (s.path.as_ref(), s.by_id.as_ref(), s.rule.as_ref()),
    };
    if usize::from(path.is_some()) + usize::from(by_id.is_some()) + usize::from(rule.is_some()) != 1
    {
        return Err(TemplateError::DiskSelector(at(field)));
    }
    if path.is_some_and(|p| !check_abs(p)) {
        return Err(TemplateError::Path(at(field)));
    }
    if by_id.is_some_and(|id| id.is_empty() || id.contains('/')) {
        return Err(TemplateError::ById(at(&format!("{field}.byId"))));
    }
    if let Some(s) = rule.and_then(|r| r.min_size.as_ref()) {
        parse_size(s).map_err(|e| TemplateError::Size(at(&format!("{field}.rule.minSize")), e))?;
    }
    Ok(())
}

fn check_device(d: &DeviceRef, at: &dyn Fn(&str) -> At) -> Result<(), TemplateError> {
    match d {
        DeviceRef::Path(p) if !check_abs(p) => Err(TemplateError::Path(at("device"))),
        DeviceRef::Path(_) => Ok(()),
        DeviceRef::Partition(p) => {
            if p.partition == 0 {
                return Err(TemplateError::PartitionNumber(at("device.partition")));
            }
            check_disk(&p.disk, "device.disk", at)
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) const DEBIAN_YAML: &str = r#"
actions:
- name: disk
  type: partition
  disk:
    rule:
      minSize: 8GiB
  table: gpt
  partitions:
  - label: bios
    size: 1MiB
    type: bios-boot
  - label: efi
    size: 512MiB
    type: efi
    format: vfat
  - label: swap
    size: 5%
    type: swap
    format: swap
  - label: root
    format: ext4
- name: image
  type: image2disk
  url: http://images.example/debian-12.raw.zst
  disk: /dev/disk/by-id/virtio-disk0
  sha256: 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
  compression: zstd
- name: hostname
  type: writefile
  device:
    disk:
      byId: virtio-disk0
    partition: 2
  filesystem: ext4
  path: /etc/hostname
  contents: "node-1\n"
- name: keys
  type: writefile
  device: /dev/sda2
  filesystem: ext4
  path: /root/.ssh/authorized_keys
  url: https://keys.example/node-1
  mode: 384
- name: boot
  type: kexec
  device: /dev/sda2
  filesystem: ext4
  kernel: /boot/vmlinuz
  initrd: /boot/initrd.img
  cmdline: root=/dev/sda2 ro
"#;

    fn debian() -> TemplateSpec {
        serde_yaml_ng::from_str(DEBIAN_YAML).unwrap()
    }

    #[test]
    fn a_cloudinit_action_comes_last_after_a_kexec_with_valid_cloud_config() {
        let mut t = debian();
        let user_data = "#cloud-config\nhostname: {{hostname}}\nssh_authorized_keys:\n{{#each sshKeys}}\n  - {{this}}\n{{/each}}\n";
        t.actions.push(ActionSpec {
            name: "first-boot".into(),
            timeout_seconds: Some(900),
            retries: 0,
            action: Action::Cloudinit {
                user_data: user_data.into(),
            },
        });
        assert_eq!(t.validate(), Ok(()));
        assert!(!t.actions[5].action.runs_on_agent());
        assert!(t.actions[4].action.runs_on_agent());
        // Round trip through the documented spelling.
        let json = serde_json::to_value(&t.actions[5]).unwrap();
        assert_eq!(json["type"], "cloudinit");
        assert_eq!(json["userData"], user_data);
        // Not last, not after a kexec.
        let mut moved = t.clone();
        moved.actions.swap(4, 5);
        assert!(matches!(
            moved.validate(),
            Err(TemplateError::CloudinitPlace(_))
        ));
        let mut alone = t.clone();
        alone.actions.remove(4);
        assert!(matches!(
            alone.validate(),
            Err(TemplateError::CloudinitPlace(_))
        ));
        for (bad, says) in [
            ("hostname: x\n", "#cloud-config"),
            ("#cloud-configx\n", "#cloud-config"),
            ("#cloud-config\nusers: [\n", "not valid YAML"),
            ("#cloud-config\n- a\n- b\n", "mapping"),
            (
                "#cloud-config\nkey: {{value}\n  bad: indent\n",
                "not valid YAML",
            ),
        ] {
            let mut b = t.clone();
            b.actions[5].action = Action::Cloudinit {
                user_data: bad.into(),
            };
            let e = b.validate().unwrap_err().to_string();
            assert!(e.contains(says) && e.contains("userData"), "{bad:?}: {e}");
        }
        assert_eq!(check_cloud_config("#cloud-config"), Ok(()));
    }

    #[test]
    fn parses_a_real_template() {
        let t = debian();
        assert_eq!(t.actions.len(), 5);
        assert_eq!(t.validate(), Ok(()));
        match &t.actions[0].action {
            Action::Partition {
                disk, partitions, ..
            } => {
                assert_eq!(
                    disk,
                    &DiskSelector::Select(DiskSelect {
                        rule: Some(DiskRule {
                            min_size: Some("8GiB".into()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                );
                assert_eq!(partitions[0].kind, PartitionType::BiosBoot);
                assert_eq!(partitions[3].size, "rest");
                assert_eq!(partitions[3].kind, PartitionType::Linux);
                assert_eq!(partitions[3].format, Some(Filesystem::Ext4));
            }
            other => panic!("{other:?}"),
        }
        match &t.actions[1].action {
            Action::Image2disk { disk, .. } => {
                assert_eq!(disk.path(), Some("/dev/disk/by-id/virtio-disk0"));
            }
            other => panic!("{other:?}"),
        }
        match &t.actions[2].action {
            Action::Writefile { mode, device, .. } => {
                assert_eq!(*mode, 0o644);
                assert!(matches!(
                    device,
                    DeviceRef::Partition(PartitionOf { partition: 2, .. })
                ));
            }
            other => panic!("{other:?}"),
        }
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<TemplateSpec>(&json).unwrap(), t);
        let yaml = serde_yaml_ng::to_string(&t).unwrap();
        assert_eq!(serde_yaml_ng::from_str::<TemplateSpec>(&yaml).unwrap(), t);
    }

    #[test]
    fn the_json_shape_is_camel_case() {
        let v = serde_json::to_value(debian()).unwrap();
        assert_eq!(v["actions"][0]["disk"]["rule"]["minSize"], "8GiB");
        assert_eq!(v["actions"][0]["partitions"][0]["type"], "bios-boot");
        assert_eq!(v["actions"][2]["device"]["disk"]["byId"], "virtio-disk0");
        assert_eq!(v["actions"][1]["disk"], "/dev/disk/by-id/virtio-disk0");
    }

    fn err(t: &TemplateSpec) -> String {
        t.validate().unwrap_err().to_string()
    }

    #[test]
    fn refuses_inconsistent_templates_naming_the_action_and_field() {
        let mut t = debian();
        t.actions[1].name = "disk".into();
        assert!(matches!(
            t.validate(),
            Err(TemplateError::DuplicateName(At { index: 1, .. }, 0))
        ));
        assert_eq!(
            TemplateSpec { actions: vec![] }.validate(),
            Err(TemplateError::Empty)
        );

        let with_partitions = |f: &dyn Fn(&mut Vec<Partition>, &mut PartitionTable)| {
            let mut t = debian();
            if let Action::Partition {
                partitions, table, ..
            } = &mut t.actions[0].action
            {
                f(partitions, table);
            }
            t
        };
        let t = with_partitions(&|p, _| p[1].size = "rest".into());
        assert_eq!(
            err(&t),
            "actions[0] (\"disk\").partitions[1].size: \"rest\" is only allowed for the last partition"
        );
        let t = with_partitions(&|p, _| p[1].size = "512MB".into());
        assert!(
            matches!(t.validate(), Err(TemplateError::Size(..))),
            "{}",
            err(&t)
        );
        assert!(err(&t).starts_with("actions[0] (\"disk\").partitions[1].size"));
        let t = with_partitions(&|p, _| p[1].size = "96%".into());
        assert!(matches!(
            t.validate(),
            Err(TemplateError::PercentOver(_, 101))
        ));
        let t = with_partitions(&|_, table| *table = PartitionTable::Mbr);
        assert!(matches!(t.validate(), Err(TemplateError::GptOnly(_))));
        let t = with_partitions(&|p, table| {
            *table = PartitionTable::Mbr;
            p.remove(0);
            p.insert(0, p[0].clone());
            p.insert(0, p[0].clone());
        });
        assert!(matches!(
            t.validate(),
            Err(TemplateError::TooManyPartitions(_, 5))
        ));
        let t = with_partitions(&|p, _| p[0].label = "x".repeat(37));
        assert!(matches!(t.validate(), Err(TemplateError::LabelTooLong(_))));
        let t = with_partitions(&|p, _| p[1].label = "EFI system p".into());
        assert!(matches!(
            t.validate(),
            Err(TemplateError::FsLabelTooLong(_, 11))
        ));
        let t = with_partitions(&|p, _| p.clear());
        assert!(matches!(t.validate(), Err(TemplateError::NoPartitions(_))));

        type ImageFields<'a> = (
            &'a mut String,
            &'a mut Option<String>,
            &'a mut Option<String>,
        );
        let with_image = |f: &dyn Fn(ImageFields<'_>)| {
            let mut t = debian();
            if let Action::Image2disk {
                url,
                sha256,
                sha512,
                ..
            } = &mut t.actions[1].action
            {
                f((url, sha256, sha512));
            }
            t
        };
        for bad in [
            "ftp://x/y",
            "http://",
            "http:// x/",
            "images.example/a",
            "http://u@h/",
        ] {
            let t = with_image(&|(u, _, _)| *u = bad.into());
            assert!(matches!(t.validate(), Err(TemplateError::Url(..))), "{bad}");
        }
        let t = with_image(&|(_, s, _)| *s = Some("abc".into()));
        assert_eq!(
            err(&t),
            "actions[1] (\"image\").sha256: must be 64 hex digits"
        );
        let t = with_image(&|(_, s, _)| *s = Some("g".repeat(64)));
        assert!(matches!(t.validate(), Err(TemplateError::Checksum(_, 64))));
        let t = with_image(&|(_, _, s)| *s = Some("0".repeat(128)));
        assert!(matches!(t.validate(), Err(TemplateError::TwoChecksums(_))));
        let t = with_image(&|(_, a, s)| {
            *a = None;
            *s = Some("0".repeat(64));
        });
        assert!(matches!(t.validate(), Err(TemplateError::Checksum(_, 128))));
        let t = with_image(&|(_, a, s)| {
            *a = None;
            *s = Some("aB".repeat(64));
        });
        assert_eq!(t.validate(), Ok(()));

        let mut t = debian();
        if let Action::Writefile { url, .. } = &mut t.actions[2].action {
            *url = Some("http://a/b".into());
        }
        assert!(matches!(t.validate(), Err(TemplateError::Contents(_))));
        let mut t = debian();
        if let Action::Writefile { path, .. } = &mut t.actions[2].action {
            *path = "/etc/../shadow".into();
        }
        assert!(matches!(t.validate(), Err(TemplateError::Path(_))));
        let mut t = debian();
        if let Action::Writefile { device, .. } = &mut t.actions[2].action {
            *device = DeviceRef::Partition(PartitionOf {
                disk: DiskSelector::Path("/dev/sda".into()),
                partition: 0,
            });
        }
        assert!(matches!(
            t.validate(),
            Err(TemplateError::PartitionNumber(_))
        ));
        let mut t = debian();
        if let Action::Kexec { filesystem, .. } = &mut t.actions[4].action {
            *filesystem = Filesystem::Swap;
        }
        assert!(matches!(t.validate(), Err(TemplateError::NotMountable(_))));
        let mut t = debian();
        if let Action::Partition { disk, .. } = &mut t.actions[0].action {
            *disk = DiskSelector::Select(DiskSelect {
                rule: Some(DiskRule {
                    min_size: Some("8 gigs".into()),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        assert!(err(&t).starts_with("actions[0] (\"disk\").disk.rule.minSize: "));
        let mut t = debian();
        if let Action::Partition { disk, .. } = &mut t.actions[0].action {
            *disk = DiskSelector::Select(DiskSelect::default());
        }
        assert!(matches!(t.validate(), Err(TemplateError::DiskSelector(_))));
    }

    #[test]
    fn unknown_action_type_or_field_is_an_error() {
        let y = "actions:\n- name: x\n  type: format_everything\n";
        assert!(serde_yaml_ng::from_str::<TemplateSpec>(y).is_err());
        let y = "actions:\n- name: x\n  type: partition\n  disk: /dev/sda\n  table: gpt\n  \
                 partitions:\n  - label: a\n    sizeBytes: 5\n";
        assert!(serde_yaml_ng::from_str::<TemplateSpec>(y).is_err());
        let y = "actions:\n- name: x\n  type: image2disk\n  url: http://a/b\n  disk: {byName: a}\n";
        assert!(serde_yaml_ng::from_str::<TemplateSpec>(y).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size(" 8GiB "), Ok(8 << 30));
        assert_eq!(parse_size("8 GiB"), Ok(8 << 30));
        assert_eq!(parse_size("1TiB"), Ok(1 << 40));
        assert_eq!(parse_size("4KiB"), Ok(4096));
        assert!(matches!(parse_size("0MiB"), Err(SizeError::Zero(_))));
        assert!(matches!(parse_size("5"), Err(SizeError::Syntax(_))));
        assert!(matches!(parse_size("5GB"), Err(SizeError::Syntax(_))));
        assert!(matches!(parse_size("-5MiB"), Err(SizeError::Syntax(_))));
        assert!(matches!(parse_size("1.5GiB"), Err(SizeError::Syntax(_))));
        assert!(matches!(
            parse_size("99999999999999TiB"),
            Err(SizeError::Overflow(_))
        ));
        assert_eq!(PartitionSize::parse("rest"), Ok(PartitionSize::Rest));
        assert_eq!(
            PartitionSize::parse("100%"),
            Ok(PartitionSize::Percent(100))
        );
        assert_eq!(PartitionSize::parse("1%"), Ok(PartitionSize::Percent(1)));
        for bad in ["0%", "101%", "+5%", "%", "5.5%", "256%"] {
            assert!(
                matches!(PartitionSize::parse(bad), Err(SizeError::Percent(_))),
                "{bad}"
            );
        }
    }

    proptest! {
        #[test]
        fn size_parsing_round_trips(n in 1u64..(1 << 20), unit in 0usize..4) {
            let (name, shift) = [("KiB", 10), ("MiB", 20), ("GiB", 30), ("TiB", 40)][unit];
            prop_assert_eq!(parse_size(&format!("{n}{name}")), Ok(n << shift));
        }

        #[test]
        fn size_parsing_never_panics(s in "\\PC{0,24}") {
            let _ = PartitionSize::parse(&s);
        }
    }
}
