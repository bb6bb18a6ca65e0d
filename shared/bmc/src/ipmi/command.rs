//! What we say to `ipmitool` and how we read its answers: pure functions, no I/O.
//!
//! Kept apart from the process handling in the parent module so that every argument vector
//! and every known answer (taken from ipmitool 1.8.19 talking to `ipmi_sim` and from the
//! messages Ironic and MAAS match) is unit-tested without a BMC. The password is not an input
//! of anything here: it cannot end up in an argument vector by construction.

use std::ffi::OsString;

use crate::{BmcError, BootDevice, BootMode, BootPersistence, BootTarget, PowerAction, PowerState};

use super::IpmiConfig;

/// The arguments that open a `lanplus` session, without the password: `-E` makes ipmitool
/// read it from `IPMI_PASSWORD` in its environment.
///
/// `-C` is always given: ipmitool 1.8.19 defaults to cipher suite 17 and, without `-C`, first
/// asks the BMC for its suites — BMCs that do not answer that (ipmi_sim, older firmware) cost
/// ten seconds per command. `-v` makes ipmitool say *why* a session failed ("RAKP 2 HMAC is
/// invalid" rather than only "Unable to establish IPMI v2 / RMCP+ session"), which is what
/// tells refused credentials from an unreachable BMC.
pub(crate) fn session_args(config: &IpmiConfig) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::with_capacity(16);
    let mut push = |a: &str| args.push(a.into());
    push("-I");
    push("lanplus");
    push("-H");
    push(&config.host);
    push("-p");
    push(&config.port.to_string());
    push("-U");
    push(&config.username);
    push("-E");
    push("-C");
    push(&config.cipher_suite.to_string());
    push("-N");
    push(&config.retransmit_secs.to_string());
    push("-R");
    push(&config.retries.to_string());
    push("-v");
    args
}

/// The ipmitool command (after the session arguments) for a power action.
pub(crate) fn power_args(action: PowerAction) -> [&'static str; 3] {
    let verb = match action {
        PowerAction::On => "on",
        PowerAction::OffSoft => "soft",
        PowerAction::OffHard => "off",
        PowerAction::Cycle => "cycle",
        PowerAction::Reset => "reset",
    };
    ["chassis", "power", verb]
}

/// The ipmitool command that reads the chassis power state.
pub(crate) const STATUS_ARGS: [&str; 3] = ["chassis", "power", "status"];

/// Set System Boot Options (NetFn chassis 0x00, command 0x08), parameter 3 ("boot flag valid
/// bit clearing") = 0x08: do not clear the boot flags when no chassis control command follows
/// within 60 seconds. Without it, a BMC forgets the PXE request if the power cycle comes more
/// than a minute later (Ironic sends the same bytes, `ipmi_disable_boot_timeout`).
pub(crate) const KEEP_BOOT_FLAGS_ARGS: [&str; 5] = ["raw", "0x00", "0x08", "0x03", "0x08"];

/// The five data bytes of boot option parameter 5 (boot flags), IPMI 2.0 table 28-14.
///
/// Byte 1: bit 7 "flags valid", bit 6 "all future boots" (persistent), bit 5 "EFI boot".
/// Byte 2: the device selector in bits 5:2 — 0001b force PXE, 0010b force default hard disk.
/// Bytes 3–5: no BIOS overrides.
pub(crate) fn boot_flags(target: BootTarget) -> [u8; 5] {
    let mut first = 0x80;
    if target.persistence == BootPersistence::Persistent {
        first |= 0x40;
    }
    if target.mode == BootMode::Uefi {
        first |= 0x20;
    }
    let device = match target.device {
        BootDevice::Pxe => 0x1,
        BootDevice::Disk => 0x2,
    };
    [first, device << 2, 0, 0, 0]
}

/// The `raw` command that sets the boot flags. It is sent as raw bytes rather than through
/// `chassis bootdev … options=…` because what `bootdev` sends for `efiboot` and `persistent`
/// has changed between ipmitool releases; the bytes here mean the same on every version.
pub(crate) fn set_boot_args(target: BootTarget) -> Vec<String> {
    let mut args: Vec<String> = ["raw", "0x00", "0x08", "0x05"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    args.extend(boot_flags(target).iter().map(|b| format!("{b:#04x}")));
    args
}

/// Reads `chassis power status` output: "Chassis Power is on" / "Chassis Power is off".
pub(crate) fn parse_power_status(stdout: &str) -> Result<PowerState, BmcError> {
    for line in stdout.lines() {
        if let Some(state) = line.trim().strip_prefix("Chassis Power is ") {
            return Ok(match state.trim() {
                "on" => PowerState::On,
                "off" => PowerState::Off,
                _ => PowerState::Unknown,
            });
        }
    }
    Err(BmcError::UnexpectedOutput {
        output: stdout.trim().to_owned(),
    })
}

/// Lines of ipmitool's `-v` chatter that say nothing about a failure.
fn is_noise(line: &str) -> bool {
    const NOISE: [&str; 4] = [
        "Loading IANA PEN Registry",
        "Running Get VSO Capabilities",
        "Discovered IPMB address",
        // ipmi_sim (and many BMCs) do not know the VSO command ipmitool probes with.
        "Invalid completion code received: Invalid command",
    ];
    let line = line.trim();
    line.is_empty() || NOISE.iter().any(|n| line.starts_with(n))
}

/// Messages ipmitool prints when the BMC answered but refused the user or the password
/// (RAKP 2 is the BMC's reply to the user name; its HMAC is keyed by the password).
const AUTH_REFUSED: [&str; 6] = [
    "rakp 2 hmac is invalid",
    "unauthorized name",
    "invalid user name",
    "invalid role",
    "rakp 4 message has invalid integrity check value",
    "insufficient privilege",
];

/// Messages ipmitool prints when nothing answered.
const UNREACHABLE: [&str; 7] = [
    "get auth capabilities error",
    "error issuing get channel authentication capabilities",
    "no response from remote controller",
    "address lookup for",
    "network is unreachable",
    "no route to host",
    "connection refused",
];

/// Turns a failed ipmitool run (non-zero exit) into the error a caller acts on.
pub(crate) fn classify_failure(stdout: &str, stderr: &str, exit: Option<i32>) -> BmcError {
    let lines: Vec<&str> = stderr
        .lines()
        .chain(stdout.lines())
        .filter(|l| !is_noise(l))
        .map(str::trim)
        .collect();
    let detail = if lines.is_empty() {
        match exit {
            Some(code) => format!("ipmitool exited with status {code} and said nothing"),
            None => "ipmitool was killed by a signal".to_owned(),
        }
    } else {
        lines.join("; ")
    };
    let lower = detail.to_ascii_lowercase();
    if AUTH_REFUSED.iter().any(|m| lower.contains(m)) {
        BmcError::AuthRefused { detail }
    } else if UNREACHABLE.iter().any(|m| lower.contains(m))
        // A session that could not be opened for no reason ipmitool names: no answer.
        || lower == "error: unable to establish ipmi v2 / rmcp+ session"
    {
        BmcError::Unreachable { detail }
    } else {
        BmcError::Rejected { message: detail }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Password;

    fn config() -> IpmiConfig {
        IpmiConfig::new("10.0.0.5", "admin", Password::new("s3cret"))
    }

    #[test]
    fn session_args_never_hold_the_password_and_read_it_from_the_environment() {
        let args = session_args(&config());
        assert!(args.iter().all(|a| !a.to_string_lossy().contains("s3cret")));
        assert!(args.iter().any(|a| a == "-E"));
        // No option that takes a password on the command line.
        assert!(args.iter().all(|a| a != "-P" && a != "-f" && a != "-k"));
        let text: Vec<_> = args.iter().map(|a| a.to_string_lossy()).collect();
        assert_eq!(
            text.join(" "),
            "-I lanplus -H 10.0.0.5 -p 623 -U admin -E -C 3 -N 1 -R 3 -v"
        );
    }

    #[test]
    fn power_actions_map_to_ipmitool_verbs() {
        assert_eq!(power_args(PowerAction::On), ["chassis", "power", "on"]);
        assert_eq!(power_args(PowerAction::OffSoft)[2], "soft");
        assert_eq!(power_args(PowerAction::OffHard)[2], "off");
        assert_eq!(power_args(PowerAction::Cycle)[2], "cycle");
        assert_eq!(power_args(PowerAction::Reset)[2], "reset");
    }

    #[test]
    fn boot_flags_follow_the_ipmi_table() {
        let t = |device, persistence, mode| BootTarget {
            device,
            persistence,
            mode,
        };
        use BootDevice::*;
        use BootMode::*;
        use BootPersistence::*;
        // The bytes Ironic sends for UEFI PXE once, and for persistent legacy disk.
        assert_eq!(boot_flags(t(Pxe, Once, Uefi)), [0xa0, 0x04, 0, 0, 0]);
        assert_eq!(
            boot_flags(t(Disk, Persistent, Legacy)),
            [0xc0, 0x08, 0, 0, 0]
        );
        assert_eq!(boot_flags(t(Pxe, Persistent, Uefi)), [0xe0, 0x04, 0, 0, 0]);
        assert_eq!(boot_flags(t(Disk, Once, Legacy)), [0x80, 0x08, 0, 0, 0]);
        assert_eq!(
            set_boot_args(t(Pxe, Persistent, Uefi)).join(" "),
            "raw 0x00 0x08 0x05 0xe0 0x04 0x00 0x00 0x00"
        );
    }

    #[test]
    fn power_status_is_read_from_its_line() {
        assert_eq!(
            parse_power_status("Chassis Power is on\n").unwrap(),
            PowerState::On
        );
        assert_eq!(
            parse_power_status("Chassis Power is off\n").unwrap(),
            PowerState::Off
        );
        assert_eq!(
            parse_power_status("Chassis Power is sleeping\n").unwrap(),
            PowerState::Unknown
        );
        assert!(matches!(
            parse_power_status("Set Boot Device to pxe\n"),
            Err(BmcError::UnexpectedOutput { output }) if output == "Set Boot Device to pxe"
        ));
    }

    // The stderr of ipmitool 1.8.19 -v against ipmi_sim, copied from real runs.
    const VERBOSE_PREFIX: &str = "Loading IANA PEN Registry...\n";

    #[test]
    fn wrong_password_is_refused_credentials() {
        let stderr = format!(
            "{VERBOSE_PREFIX}> RAKP 2 HMAC is invalid\nError: Unable to establish IPMI v2 / RMCP+ session\n"
        );
        let e = classify_failure("", &stderr, Some(1));
        assert!(
            matches!(&e, BmcError::AuthRefused { detail } if detail.contains("RAKP 2 HMAC")),
            "{e:?}"
        );
    }

    #[test]
    fn unknown_user_is_refused_credentials() {
        let stderr = format!(
            "{VERBOSE_PREFIX}RAKP 2 message indicates an error : unauthorized name\nError: Unable to establish IPMI v2 / RMCP+ session\n"
        );
        assert!(matches!(
            classify_failure("", &stderr, Some(1)),
            BmcError::AuthRefused { .. }
        ));
        assert!(matches!(
            classify_failure("", "Invalid user name\n", Some(1)),
            BmcError::AuthRefused { .. }
        ));
    }

    #[test]
    fn no_answer_is_unreachable() {
        let stderr = format!(
            "{VERBOSE_PREFIX}Get Auth Capabilities error\nError issuing Get Channel Authentication Capabilities request\nError: Unable to establish IPMI v2 / RMCP+ session\n"
        );
        assert!(matches!(
            classify_failure("", &stderr, Some(1)),
            BmcError::Unreachable { .. }
        ));
        assert!(matches!(
            classify_failure(
                "",
                "Error: Unable to establish IPMI v2 / RMCP+ session\n",
                Some(1)
            ),
            BmcError::Unreachable { .. }
        ));
        assert!(matches!(
            classify_failure("", "Address lookup for bmc.invalid failed\n", Some(1)),
            BmcError::Unreachable { .. }
        ));
    }

    #[test]
    fn a_command_error_is_the_bmcs_text_without_the_chatter() {
        let stderr = format!(
            "{VERBOSE_PREFIX}Running Get VSO Capabilities my_addr 0x20, transit 0, target 0x20\nInvalid completion code received: Invalid command\nDiscovered IPMB address 0x0\nSet Chassis Power Control to Up/On failed: Invalid data field in request\n"
        );
        match classify_failure("", &stderr, Some(1)) {
            BmcError::Rejected { message } => assert_eq!(
                message,
                "Set Chassis Power Control to Up/On failed: Invalid data field in request"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_silent_failure_still_says_something() {
        match classify_failure("", VERBOSE_PREFIX, Some(1)) {
            BmcError::Rejected { message } => assert!(message.contains("status 1")),
            other => panic!("{other:?}"),
        }
    }
}
