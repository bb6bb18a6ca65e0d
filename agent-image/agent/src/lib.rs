//! mage, the Dragonfly agent: runs from the netboot initramfs, reports the machine's hardware
//! to apid and waits for instructions.
//!
//! Layers: [`cmdline`] and [`detect`] are pure (text and a filesystem root in, values out);
//! [`http`] and [`register`] talk to apid; [`net`] runs `ip` and `udhcpc`; [`run`] ties them
//! together and is all the binary calls. The agent must never reboot the machine on an error
//! (a reboot loop hides the reason from the operator at the console) and must never print the
//! boot token.

pub mod cmdline;
pub mod detect;
pub mod http;
pub mod net;
pub mod register;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

pub use cmdline::{BootParams, Mode};

/// Where the agent's words go: the console, for the operator at the crash cart.
pub trait Console: Sync {
    fn say(&self, line: &str);
}

/// Prints each line to stdout, prefixed so it stands out among kernel messages; `/init` sends
/// stdout to the serial and the screen console.
#[derive(Debug, Default)]
pub struct Stdout;

impl Console for Stdout {
    #[allow(
        clippy::print_stdout,
        reason = "the console is the agent's user interface"
    )]
    fn say(&self, line: &str) {
        println!("Dragonfly agent: {line}");
    }
}

/// How the agent runs (the binary uses the defaults; tests shorten the waits).
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Filesystem root for detection (`/`).
    pub root: PathBuf,
    /// The script `udhcpc` runs to apply a lease.
    pub dhcp_script: PathBuf,
    /// Bring up the boot NIC with DHCP first (false when the network is already up).
    pub configure_network: bool,
    pub timing: register::Timing,
    /// How often a registered agent registers again, as a heartbeat.
    pub heartbeat: Duration,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/"),
            dhcp_script: PathBuf::from("/etc/udhcpc.script"),
            configure_network: true,
            timing: register::Timing::default(),
            heartbeat: Duration::from_secs(5 * 60),
        }
    }
}

/// The agent's whole life: network, detection, registration, then a heartbeat. Returns only
/// when `stop` is set.
pub fn run(params: &BootParams, cfg: &AgentConfig, console: &dyn Console, stop: &AtomicBool) {
    console.say(&format!(
        "starting (version {}, {} mode).",
        env!("CARGO_PKG_VERSION"),
        match params.mode {
            Mode::Discovery => "discovery",
            Mode::Imaging => "imaging",
        }
    ));
    if params.mode == Mode::Imaging {
        console.say(
            "imaging is not implemented in this agent yet: registering and waiting, as in \
             discovery.",
        );
    }
    if cfg.configure_network {
        match net::bring_up(params.mac, &cfg.dhcp_script, console, stop) {
            Some(ifname) => console.say(&format!("network is up on {ifname}.")),
            None => return,
        }
    }
    let inventory = detect::detect(&cfg.root);
    console.say("this machine has:");
    for line in inventory.summary() {
        console.say(&format!("  {line}"));
    }
    let report = inventory.report(params.mac);
    if let Err(e) = report.validate() {
        // Cannot happen for a report built by `Inventory::report`; shown rather than hidden.
        console.say(&format!("PROBLEM: the hardware report is not valid: {e}"));
    }
    let base = match http::Url::parse(&params.url) {
        Ok(u) => u,
        Err(e) => {
            console.say(&format!("PROBLEM: {e}"));
            return;
        }
    };
    console.say(&format!("registering with {} …", params.url));
    let mut first = true;
    loop {
        let Some((machine, created)) = register::register_until_done(
            &base,
            &params.token,
            &report,
            &cfg.timing,
            console,
            stop,
        ) else {
            return;
        };
        if first {
            console.say(&format!(
                "registered as {} ({}{}). Waiting for an operator to assign an OS.",
                machine.name,
                machine.state,
                if created {
                    ", new machine"
                } else {
                    ", known machine"
                },
            ));
            first = false;
        }
        register::sleep_unless_stopped(cfg.heartbeat, stop);
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
    }
}
