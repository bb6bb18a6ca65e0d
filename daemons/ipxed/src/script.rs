//! iPXE script rendering: a pure function of (boot fate, machine view, settings, token).
//!
//! This module exists so that what a machine executes can be tested byte for byte (golden files
//! in `tests/fixtures/`) without a socket, a database or a clock. It must never do I/O, read
//! the time or mint tokens: the caller passes everything in.
//!
//! Templates are compiled once ([`Renderer::new`]) in strict mode, so a misspelt or missing
//! variable is an error instead of an empty word in a kernel command line, and with HTML
//! escaping off (`&` in a URL must stay `&`). Because nothing is escaped, every value that
//! reaches a template is checked here or in config validation to contain no whitespace,
//! quotes or newlines that could add words or commands to the script.

use std::fmt;

use dragonfly_core::{BootFate, DiscoveryReason, MacAddr};
use handlebars::Handlebars;
use serde::Serialize;
use uuid::Uuid;

/// The firmware interface iPXE runs on, from iPXE's `${platform}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// Legacy BIOS.
    Pcbios,
    /// UEFI.
    Efi,
}

impl Platform {
    /// Parses iPXE's `${platform}` value; `None` for platforms we cannot boot (`linux`, …).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pcbios" => Some(Self::Pcbios),
            "efi" => Some(Self::Efi),
            _ => None,
        }
    }

    /// iPXE's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pcbios => "pcbios",
            Self::Efi => "efi",
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the booting client told us about itself, already validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub mac: MacAddr,
    pub platform: Platform,
    /// `true` when the request did not say, and [`Platform::Pcbios`] was assumed.
    pub platform_assumed: bool,
    /// iPXE's `${buildarch}` (`x86_64`, `i386`, `arm64`, …), if given and well-formed.
    pub arch: Option<String>,
}

/// What the script may say about the machine (for the operator reading the console).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MachineView {
    pub id: Option<Uuid>,
    pub name: Option<String>,
}

/// Deployment settings the scripts need; built once from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// How machines reach ipxed, without a trailing slash.
    pub public_url: String,
    /// How the agent reaches apid, without a trailing slash.
    pub apid_url: String,
    /// File names (under `/agent/`) of the agent kernel and initrd.
    pub agent_kernel: String,
    pub agent_initrd: String,
    pub kernel_cmdline_extra: String,
}

/// Seconds a script waits before retrying a failed download, or before giving up.
pub const RETRY_DELAY_SECS: u32 = 10;
/// Seconds an error script shows its message before returning to the firmware.
pub const ERROR_DELAY_SECS: u32 = 30;

/// Why a script could not be rendered. A bug (template and data disagree), never the client's
/// fault; `Display` carries handlebars' description.
#[derive(Debug, thiserror::Error)]
#[error("rendering the {template} script")]
pub struct RenderError {
    template: &'static str,
    #[source]
    source: handlebars::RenderError,
}

/// A template failed to compile (a bug in this crate, caught by every test).
#[derive(Debug, thiserror::Error)]
#[error("compiling the {template} script template")]
pub struct TemplateError {
    template: &'static str,
    #[source]
    source: Box<handlebars::TemplateError>,
}

const AGENT: &str = "agent";
const LOCAL_PCBIOS: &str = "local-pcbios";
const LOCAL_EFI: &str = "local-efi";
const ERROR: &str = "error";

const TEMPLATES: [(&str, &str); 4] = [
    (AGENT, include_str!("templates/agent.ipxe.hbs")),
    (
        LOCAL_PCBIOS,
        include_str!("templates/local-pcbios.ipxe.hbs"),
    ),
    (LOCAL_EFI, include_str!("templates/local-efi.ipxe.hbs")),
    (ERROR, include_str!("templates/error.ipxe.hbs")),
];

/// The compiled templates.
#[derive(Debug)]
pub struct Renderer {
    hb: Handlebars<'static>,
}

/// The variables every template sees. Every field is always present (strict mode).
#[derive(Serialize)]
struct Context<'a> {
    mac: String,
    platform: &'static str,
    platform_assumed: bool,
    arch: &'a str,
    machine_id: Option<String>,
    machine_name: Option<&'a str>,
    fate: &'static str,
    reason: Option<&'static str>,
    mode: &'static str,
    workflow_id: Option<String>,
    kernel_url: String,
    initrd_url: String,
    initrd_name: &'a str,
    apid_url: &'a str,
    token: &'a str,
    cmdline_extra: &'a str,
    retry_delay: u32,
}

#[derive(Serialize)]
struct ErrorContext<'a> {
    message: &'a str,
    delay: u32,
}

impl Renderer {
    /// Compiles every template.
    pub fn new() -> Result<Self, TemplateError> {
        let mut hb = Handlebars::new();
        hb.register_escape_fn(handlebars::no_escape);
        hb.set_strict_mode(true);
        for (name, text) in TEMPLATES {
            hb.register_template_string(name, text)
                .map_err(|source| TemplateError {
                    template: name,
                    source: Box::new(source),
                })?;
        }
        Ok(Self { hb })
    }

    /// The script for a machine whose fate was decided. `token` is only used by agent scripts.
    pub fn render(
        &self,
        fate: &BootFate,
        client: &Client,
        machine: &MachineView,
        settings: &Settings,
        token: &str,
    ) -> Result<String, RenderError> {
        let (template, mode, reason, workflow_id) = match fate {
            BootFate::Discovery { reason } => (AGENT, "discovery", Some(reason_str(*reason)), None),
            BootFate::Imaging { workflow_id } => {
                (AGENT, "imaging", None, Some(workflow_id.to_string()))
            }
            BootFate::LocalDisk => match client.platform {
                Platform::Pcbios => (LOCAL_PCBIOS, "local", None, None),
                Platform::Efi => (LOCAL_EFI, "local", None, None),
            },
        };
        let ctx = Context {
            mac: client.mac.to_string(),
            platform: client.platform.as_str(),
            platform_assumed: client.platform_assumed,
            arch: client.arch.as_deref().unwrap_or("unknown"),
            machine_id: machine.id.map(|u| u.to_string()),
            machine_name: machine.name.as_deref().filter(|n| is_word(n)),
            fate: fate_str(fate),
            reason,
            mode,
            workflow_id,
            kernel_url: format!("{}/agent/{}", settings.public_url, settings.agent_kernel),
            initrd_url: format!("{}/agent/{}", settings.public_url, settings.agent_initrd),
            initrd_name: &settings.agent_initrd,
            apid_url: &settings.apid_url,
            token,
            cmdline_extra: &settings.kernel_cmdline_extra,
            retry_delay: RETRY_DELAY_SECS,
        };
        self.hb
            .render(template, &ctx)
            .map_err(|source| RenderError { template, source })
    }

    /// A script that shows `message` for a while, then returns to the firmware (`exit 1`):
    /// never a hang and never a reboot. `message` must be a fixed text, never client input.
    pub fn render_error(&self, message: &'static str) -> Result<String, RenderError> {
        let ctx = ErrorContext {
            message,
            delay: ERROR_DELAY_SECS,
        };
        self.hb.render(ERROR, &ctx).map_err(|source| RenderError {
            template: ERROR,
            source,
        })
    }
}

/// A value safe to put anywhere in a script: one word of `[A-Za-z0-9._-]`.
pub fn is_word(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The name a fate has in events and scripts.
pub fn fate_str(fate: &BootFate) -> &'static str {
    match fate {
        BootFate::Discovery { .. } => "discovery",
        BootFate::Imaging { .. } => "imaging",
        BootFate::LocalDisk => "localDisk",
    }
}

/// The camelCase name of a discovery reason, as serde writes it in events.
pub fn reason_str(reason: DiscoveryReason) -> &'static str {
    match reason {
        DiscoveryReason::UnknownMachine => "unknownMachine",
        DiscoveryReason::NotRegistered => "notRegistered",
        DiscoveryReason::AwaitingAssignment => "awaitingAssignment",
        DiscoveryReason::AwaitingWorkflow => "awaitingWorkflow",
        DiscoveryReason::HeldAfterError => "heldAfterError",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            public_url: "http://10.0.0.1:8080".into(),
            apid_url: "http://10.0.0.1:3000".into(),
            agent_kernel: "vmlinuz".into(),
            agent_initrd: "initrd.img".into(),
            kernel_cmdline_extra: "quiet".into(),
        }
    }

    fn client(platform: Platform) -> Client {
        Client {
            mac: "52:54:00:00:00:01".parse().unwrap(),
            platform,
            platform_assumed: false,
            arch: Some("x86_64".into()),
        }
    }

    #[test]
    fn templates_compile_and_every_fate_renders() {
        let r = Renderer::new().unwrap();
        let fates = [
            BootFate::Discovery {
                reason: DiscoveryReason::UnknownMachine,
            },
            BootFate::Imaging {
                workflow_id: Uuid::from_u128(1),
            },
            BootFate::LocalDisk,
        ];
        for fate in fates {
            for p in [Platform::Pcbios, Platform::Efi] {
                let s = r
                    .render(
                        &fate,
                        &client(p),
                        &MachineView::default(),
                        &settings(),
                        "T0K",
                    )
                    .unwrap();
                assert!(s.starts_with("#!ipxe\n"), "{s}");
                let agent = !matches!(fate, BootFate::LocalDisk);
                assert_eq!(s.contains("dragonfly.token=T0K"), agent, "{s}");
                assert_eq!(s.contains("initrd=initrd.img"), agent, "{s}");
            }
        }
        assert!(r.render_error("bad").unwrap().contains("exit 1"));
    }

    #[test]
    fn reason_names_match_serde() {
        for reason in [
            DiscoveryReason::UnknownMachine,
            DiscoveryReason::NotRegistered,
            DiscoveryReason::AwaitingAssignment,
            DiscoveryReason::AwaitingWorkflow,
            DiscoveryReason::HeldAfterError,
        ] {
            let json = serde_json_name(reason);
            assert_eq!(reason_str(reason), json);
        }
    }

    fn serde_json_name(reason: DiscoveryReason) -> String {
        // serde's own name, through the tagged BootFate serialisation used by the bus.
        let v = handlebars::to_json(reason);
        v.as_str().unwrap().to_owned()
    }

    #[test]
    fn unsafe_machine_names_are_left_out() {
        let r = Renderer::new().unwrap();
        let m = MachineView {
            id: None,
            name: Some("x\nchain http://evil".into()),
        };
        let s = r
            .render(
                &BootFate::LocalDisk,
                &client(Platform::Efi),
                &m,
                &settings(),
                "",
            )
            .unwrap();
        assert!(!s.contains("evil"), "{s}");
    }
}
