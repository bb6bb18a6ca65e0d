//! mage, the Dragonfly agent: runs from the netboot initramfs, reports the machine's hardware
//! to apid and waits for instructions.
//!
//! Layers: [`cmdline`] and [`detect`] are pure (text and a filesystem root in, values out);
//! [`http`] and [`register`] talk to apid; [`net`] runs `ip` and `udhcpc`; [`run`] ties them
//! together and is all the binary calls. The agent must never reboot the machine on an error
//! (a reboot loop hides the reason from the operator at the console) and must never print the
//! boot token.

pub mod actions;
pub mod cmdline;
pub mod detect;
pub mod http;
pub mod imaging;
pub mod instructions;
pub mod net;
pub mod random;
pub mod register;
pub mod token;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use dragonfly_core::agent_api::{AgentLog, Instructions, LOG_PATH};
use dragonfly_core::{BootFate, Chain, DiscoveryReason, MachineState};

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

/// A console that also keeps every line to send to apid (`POST /api/agent/log`), so an
/// operator can read a machine's console through the API. Lines said before the server is
/// reachable wait (the newest 500 at most) and go out with the next successful request.
pub struct Shipping<'a> {
    inner: &'a dyn Console,
    pending: std::sync::Mutex<std::collections::VecDeque<String>>,
    /// The newest lines, shipped or not: a failed action's report carries them.
    recent: std::sync::Mutex<std::collections::VecDeque<String>>,
}

impl std::fmt::Debug for Shipping<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shipping").finish_non_exhaustive()
    }
}

/// Lines waiting to be shipped, at most.
const PENDING_LINES: usize = 500;
/// Lines kept for a failure report's tail.
const RECENT_LINES: usize = 100;

impl<'a> Shipping<'a> {
    pub fn new(inner: &'a dyn Console) -> Self {
        Self {
            inner,
            pending: std::sync::Mutex::default(),
            recent: std::sync::Mutex::default(),
        }
    }

    /// The newest `n` lines said (at most `RECENT_LINES`), oldest first.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let r = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        r.iter().skip(r.len().saturating_sub(n)).cloned().collect()
    }

    /// Sends what is pending; lines that could not be sent stay for the next call.
    pub fn flush(&self, base: &http::Url, token: &str, timeout: Duration) {
        loop {
            let batch = AgentLog {
                lines: {
                    let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                    let n = p.len().min(AgentLog::MAX_LINES);
                    p.drain(..n).collect()
                },
            };
            if batch.lines.is_empty() {
                return;
            }
            // Encoding a list of strings cannot fail; if it did, the lines wait like unsent ones.
            let sent = serde_json::to_vec(&batch).is_ok_and(|body| {
                http::post_json(base, LOG_PATH, token, &body, timeout)
                    .is_ok_and(|r| r.status == 204)
            });
            if !sent {
                // Put them back in front, keeping the newest if that overflows.
                let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                for line in batch.lines.into_iter().rev() {
                    p.push_front(line);
                }
                while p.len() > PENDING_LINES {
                    p.pop_front();
                }
                return;
            }
        }
    }
}

impl Console for Shipping<'_> {
    fn say(&self, line: &str) {
        self.inner.say(line);
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.len() == PENDING_LINES {
            p.pop_front();
        }
        p.push_back(line.to_owned());
        drop(p);
        let mut r = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if r.len() == RECENT_LINES {
            r.pop_front();
        }
        r.push_back(line.to_owned());
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
    /// Longest wait between two questions to the server (it may ask for less).
    pub poll: Duration,
    /// Restart the machine when the server wants it elsewhere (local disk), and jump into
    /// the installed kernel when the workflow's kexec action succeeded. Off in tests; in the
    /// image, `/init` is PID 1 and `reboot -f` restarts the machine.
    pub reboot_when_told: bool,
    /// The imaging loop's timing.
    pub imaging: imaging::ImagingConfig,
    /// Where the native actions find the machine's `/sys` and `/dev`.
    pub actions: actions::Context,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/"),
            dhcp_script: PathBuf::from("/etc/udhcpc.script"),
            configure_network: true,
            timing: register::Timing::default(),
            heartbeat: Duration::from_secs(5 * 60),
            poll: Duration::from_secs(10),
            reboot_when_told: true,
            imaging: imaging::ImagingConfig::default(),
            actions: actions::Context::default(),
        }
    }
}

/// The agent's whole life: network, detection, registration, then a heartbeat. Returns only
/// when `stop` is set.
pub fn run(params: &BootParams, cfg: &AgentConfig, console: &dyn Console, stop: &AtomicBool) {
    let shipping = Shipping::new(console);
    let console: &dyn Console = &shipping;
    console.say(&format!(
        "starting (version {}, {} mode).",
        env!("CARGO_PKG_VERSION"),
        match params.mode {
            Mode::Discovery => "discovery",
            Mode::Imaging => "imaging",
        }
    ));
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
        console.say(&format!(
            "PROBLEM: the hardware report is not valid: {}",
            Chain(&e)
        ));
    }
    let base = match http::Url::parse(&params.url) {
        Ok(u) => u,
        Err(e) => {
            console.say(&format!("PROBLEM: {}", Chain(&e)));
            return;
        }
    };
    console.say(&format!("registering with {} …", params.url));
    let token = token::Token::new(params.token.clone());
    let mut first = true;
    loop {
        let Some((machine, created)) =
            register::register_until_done(&base, &token.get(), &report, &cfg.timing, console, stop)
        else {
            return;
        };
        if first {
            // Only a machine with nothing assigned waits for an operator; one booted to
            // install (OsAssigned, Provisioning) or held (Error) hears what next from the
            // server's instructions, said just after.
            let next = match machine.state {
                MachineState::Discovered | MachineState::Registered => {
                    " Waiting for an operator to assign an OS."
                }
                _ => " Asking the server what to do next.",
            };
            console.say(&format!(
                "registered as {} ({}{}).{next}",
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
        shipping.flush(&base, &token.get(), cfg.timing.request_timeout);
        if !follow_instructions(params, &base, cfg, &shipping, &token, stop) {
            return;
        }
    }
}

/// Runs the workflow (see [`imaging`]); performs the restart its last action asks for, and
/// stays up if that restart fails.
fn image(
    base: &http::Url,
    cfg: &AgentConfig,
    console: &Shipping<'_>,
    token: &token::Token,
    stop: &AtomicBool,
) -> imaging::Ended {
    let session = imaging::Imaging {
        base,
        token,
        console,
        cfg: &cfg.imaging,
        stop,
    };
    let ended = session.run(&mut imaging::Native(actions::Context {
        token: Some(token.clone()),
        ..cfg.actions.clone()
    }));
    if let imaging::Ended::Reboot(how) = &ended {
        match how {
            actions::kexec::Reboot::Kexec => {
                console.say("the installed OS is loaded: jumping into it (kexec).");
            }
            actions::kexec::Reboot::Firmware(why) => console.say(&format!(
                "the kernel refused to load the installed OS ({why}): restarting through the \
                 firmware; the next boot starts from the local disk."
            )),
        }
        console.flush(base, &token.get(), cfg.timing.request_timeout);
        if cfg.reboot_when_told {
            let e = how.now();
            console.say(&format!(
                "PROBLEM: cannot restart this machine: {}. It stays up.",
                Chain(&e)
            ));
        }
    }
    ended
}

/// Polls for instructions until the next heartbeat is due (returns true: register again) or
/// `stop` is set (returns false). Each change of answer is said once on the console.
fn follow_instructions(
    params: &BootParams,
    base: &http::Url,
    cfg: &AgentConfig,
    console: &Shipping<'_>,
    token: &token::Token,
    stop: &AtomicBool,
) -> bool {
    use std::sync::atomic::Ordering;
    let started = std::time::Instant::now();
    let mut last: Option<Instructions> = None;
    // Why the imaging loop last returned, said once.
    let mut over_said: Option<String> = None;
    let mut failing = false;
    while started.elapsed() < cfg.heartbeat {
        // Tokens live minutes: keep this boot's token fresh while the agent waits.
        token.renew_if_due(base, cfg.timing.request_timeout, console);
        let wait = match instructions::ask(base, &token.get(), cfg.timing.request_timeout) {
            instructions::Poll::Answer(i) => {
                failing = false;
                let wait = cfg
                    .poll
                    .min(Duration::from_secs(u64::from(i.poll_after_seconds.max(1))));
                let changed = last.as_ref().is_none_or(|l| l.fate != i.fate);
                // Waiting for an assignment was already said when the agent registered.
                let already_said = last.is_none()
                    && i.fate
                        == (BootFate::Discovery {
                            reason: DiscoveryReason::AwaitingAssignment,
                        });
                if changed && !already_said {
                    console.say(&instructions::describe(&i));
                }
                let elsewhere = instructions::wants_elsewhere(&i.fate, params.mode);
                if changed && elsewhere && cfg.reboot_when_told {
                    // The server decides what the next boot does; this agent's job is done.
                    let _ = std::process::Command::new("reboot").arg("-f").status();
                }
                if changed {
                    over_said = None;
                }
                if matches!(i.fate, BootFate::Imaging { .. }) {
                    // Booted for imaging, or the fast track: a discovery agent installs in
                    // place, without a reboot through PXE. Entered at every poll that says
                    // imaging (a retried workflow may follow a failed one unseen), said once.
                    match image(base, cfg, console, token, stop) {
                        imaging::Ended::Stopped => return false,
                        imaging::Ended::Over(why) => {
                            if over_said.as_deref() != Some(why.as_str()) {
                                console.say(&format!("{why}: asking the server what comes next."));
                                over_said = Some(why);
                            }
                        }
                        imaging::Ended::Reboot(_) => {}
                    }
                }
                last = Some(i);
                wait
            }
            instructions::Poll::Unknown => {
                console.say("the server no longer knows this machine: registering again.");
                return true;
            }
            instructions::Poll::Failed(why) => {
                if !failing {
                    console.say(&format!(
                        "cannot reach the server for instructions ({why}); will keep asking."
                    ));
                    failing = true;
                }
                cfg.poll
            }
        };
        console.flush(base, &token.get(), cfg.timing.request_timeout);
        register::sleep_unless_stopped(wait, stop);
        if stop.load(Ordering::Relaxed) {
            return false;
        }
    }
    true
}
