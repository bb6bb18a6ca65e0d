//! [`PoweredVm`]: a lab VM behind a BMC emulator whose power commands really start and stop
//! its QEMU process — over IPMI (OpenIPMI's `ipmi_sim`) or Redfish (`sushy-emulator`).
//!
//! Why it exists: bmcd powers machines through their BMCs. The BMC crate's own tests prove it
//! speaks IPMI and Redfish to these emulators, but neither emulator powers anything: only a
//! BMC that really starts a machine proves that "boot from PXE, power on" ends in a network
//! boot that Dragonfly answers. This harness closes that loop: the emulator's power changes
//! become [`Vm`] boots and kills (in a harness thread of the test process), and a VM that
//! exits by itself (`-no-reboot`: a guest reboot, a panic, its timeout) reads as off.
//!
//! What it must never do: listen anywhere but loopback, or run a VM anywhere but the lab's
//! namespace. Both emulators run inside the lab's namespace on its 127.0.0.1 (bmcd runs there
//! too, beside the lab's NATS, and reaches them over that loopback; so do the harness's own
//! clients: [`IpmiBmc::ipmitool`], [`RedfishBmc::curl`]); QEMU runs inside the namespace exactly as
//! [`Vm::boot`] runs it. The VM boots as its [`VmConfig`] says whatever boot device the BMC
//! was told: the device is only recorded ([`PoweredVm::boot_device`]), for tests to assert
//! what a client asked.
//!
//! The first power on waits for the crate-wide VM lock ([`VmLock`]) like any [`Vm::boot`]
//! (until then the BMC reads off), and the harness keeps it until it is dropped, powered on
//! or not: a cycle or a reset must not queue behind another test's VM for minutes, or a BMC
//! client's timeouts would measure the other test. Several powered VMs that must run at
//! once share one lock the test holds ([`PoweredVm::share_lock`]).
//!
//! Each harness starts with power **off** (no QEMU) and tears everything down on drop: the
//! emulator, its threads and QEMU. Drop it before its [`Lab`] (declare it after the lab):
//! it keeps the lab's namespace name and directory, not a borrow, so that the test can go
//! on starting daemons in the lab while the BMC runs.
//!
//! # IPMI (`ipmi_sim`)
//! ipmi_sim has no power state of its own: it runs a `chassis_control` program. Measured
//! here (openipmi 2.0.33, ipmitool 1.8.19 `-I lanplus -C 3`), the program is called as
//! `<program> <mc> get NAME…` (it prints `NAME:VALUE` lines) or `<program> <mc> set NAME
//! VALUE…`:
//!
//! | ipmitool | calls |
//! |---|---|
//! | `chassis power status`, `chassis status` | `get power` |
//! | `chassis power on` | `set power 1` |
//! | `chassis power off` | `set power 0` |
//! | `chassis power cycle` (when on) | `set power 0`, ~1 s later `get power`, `set power 1` |
//! | `chassis power reset` | `set reset 1` |
//! | `chassis power soft` | `set shutdown 1` |
//! | `chassis power diag` | none (refused: "Invalid data field in request") |
//! | `chassis bootdev pxe` (or `force_pxe`) | `get boot`, `set boot pxe` |
//! | `chassis bootdev disk` | `get boot`, `set boot default` |
//! | `chassis bootdev cdrom` / `bios` / `none` | `get boot`, `set boot cdrom` / `bios` / `none` |
//! | `chassis bootdev floppy` / `safe` / `diag` | `get boot`, then refused |
//! | `chassis bootparam get 5` | `get boot` |
//! | `chassis identify` | `set identify 15 0` |
//!
//! `options=persistent,efiboot` (or `clear-cmos`) changes nothing in the calls, and ipmi_sim
//! keeps no boot flags of its own: `bootparam get 5` rebuilds parameter 5 from `get boot`
//! alone, with the valid, persistent and EFI bits always clear. So the boot device recorded
//! here is all an IPMI client can have set.
//!
//! ipmi_sim runs the program synchronously and single-threaded (every other request waits),
//! and ipmitool retransmits a request whose answer takes seconds, so a slow `set` is called
//! twice. Our program therefore only talks to the test process through files in its
//! directory: `set` appends `NAME VALUE…` to `requests` and waits (at most 0.8 s) for the
//! harness thread to count it in `done`; `get` answers from `power` and `boot`, which only the
//! harness writes. The harness polls `requests` every 20 ms: `power 1` boots the VM (at
//! once, but the first one waits for the VM lock, while `get power` reads 0), `power 0` and
//! `shutdown` kill it (a soft off is a hard one: QEMU runs without a monitor to send ACPI
//! events through), `reset` kills it and boots it again when it was on, `boot X` is
//! recorded. `power` is `1` exactly while QEMU runs, and turns `0` within 20 ms of QEMU
//! exiting by itself.
//!
//! # Redfish (`sushy-emulator`, fake driver)
//! libvirt, which sushy's real driver powers, is not available on these machines, so the
//! harness uses sushy's fake driver with its external notifier: the fake system (named after
//! [`VmConfig::name`], its NIC the VM's MAC, its UUID the VM's SMBIOS UUID) has
//! `external_notifier: True`, and `EXTERNAL_NOTIFICATION_URL` points at a tiny HTTP listener
//! of the harness on 127.0.0.1. The driver PUTs the whole system (`power_state`,
//! `pending_power`, `boot_device`, `boot_mode`, …) there on every change.
//!
//! The fake driver applies a power change only later: a reset makes it *pending* with a due
//! time 1–11 s (random) ahead, and it is applied on the first read of the system after that
//! time. A `ForceRestart`/`GracefulRestart` first sets the system Off (the notification then
//! shows Off with the restart pending) and later On. So that power changes happen without
//! depending on the client's reads, the harness itself GETs the system every second while a
//! change is pending. Applied `power_state` changes become boots and kills (a restart shows
//! as an Off then an On in [`PoweredVm::power_log`]); `boot_device` (`Pxe`, `Hdd`, …) is
//! recorded. When QEMU exits by itself, the harness asks sushy for `ForceOff` so that its
//! state converges to Off (again 1–11 s later); a client's `On` sent before that lands is
//! lost, as sushy ignores an `On` while it still reads On.
//!
//! sushy reads only bcrypt in its htpasswd file: the test's password is hashed by the
//! Python that runs `sushy-emulator` (its `bcrypt`, cost 4), given on stdin.
//!
//! # Measured here (2 cores, TCG; `tests/integration/power_harness.rs`)
//! IPMI: `ipmitool chassis power on` returns in 0.04–0.08 s and QEMU has started 0.02–0.04 s
//! after the command was sent (when the VM lock is free); `power off` returns in 0.05 s
//! with QEMU gone; a `cycle` kills QEMU within 0.04 s and starts it again 1.05 s after the
//! command (ipmi_sim's own delay). Redfish: QEMU starts 1–11 s after `ResetType: On`, the
//! fake driver's random delay, plus at most the harness's one-second poll. SeaBIOS + iPXE
//! (virtio-net) has its DHCP answered 2.2 s after QEMU started.

use std::fmt;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Lab, Vm, VmConfig, VmLock};

/// The BMC user both emulators know (with the password the test gives).
pub const BMC_USER: &str = "admin";

/// How often the harness thread looks at requests and at QEMU.
const TICK: Duration = Duration::from_millis(20);

/// How often the harness reads the Redfish system while a power change is pending.
const PENDING_POLL: Duration = Duration::from_secs(1);

/// How long an emulator may take to answer after it was started.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// Why a powered VM could not be set up, or what it did not do in time.
#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    /// IPMI 2.0 passwords are at most 20 bytes; ipmi_sim's config has no quoting for `"`,
    /// `\` or blanks.
    #[error("the BMC password must be 1 to 20 bytes without quotes, backslashes or blanks")]
    BadPassword,
    /// A file of the harness could not be written or read.
    #[error("{action} {path}")]
    File {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A program (ipmi_sim, sushy-emulator, its Python) could not be run.
    #[error("running {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// A loopback socket could not be bound.
    #[error("binding a socket on 127.0.0.1")]
    Bind(#[source] std::io::Error),
    /// The Python of `sushy-emulator` could not hash the password.
    #[error("hashing the Redfish password with {python}: {stderr}")]
    Hash { python: String, stderr: String },
    /// An emulator exited or did not answer in time; `log` is its output.
    #[error("{what} did not become ready: {why}\n{log}")]
    NotReady {
        what: &'static str,
        why: String,
        log: String,
    },
    /// What a wait was for did not happen in time; `state` says where the VM stood.
    #[error("{what} not seen within {timeout:?}; {state}")]
    Timeout {
        what: String,
        timeout: Duration,
        state: String,
    },
}

/// An IPMI BMC (ipmi_sim, RMCP+ on UDP), inside the lab's namespace.
#[derive(Clone, PartialEq, Eq)]
pub struct IpmiBmc {
    /// The lab's namespace, whose loopback the BMC listens on.
    pub namespace: String,
    /// 127.0.0.1 and a port that was free.
    pub address: SocketAddr,
    pub username: String,
    pub password: String,
}

impl IpmiBmc {
    /// `ipmitool -I lanplus -C 3 -H 127.0.0.1 -p PORT -U admin -E` with the password in
    /// `IPMI_PASSWORD` (never on the command line): add the command's words. `-C 3` spares
    /// a 10 s stall, as ipmi_sim does not answer ipmitool's cipher-suite query.
    pub fn ipmitool(&self) -> Command {
        let mut cmd = crate::lab::netns_command(&self.namespace, "ipmitool");
        cmd.args(["-I", "lanplus", "-C", "3", "-H"])
            .arg(self.address.ip().to_string())
            .arg("-p")
            .arg(self.address.port().to_string())
            .args(["-U", &self.username, "-E"])
            .env("IPMI_PASSWORD", &self.password);
        cmd
    }
}

impl fmt::Debug for IpmiBmc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IpmiBmc")
            .field("address", &self.address)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// A Redfish BMC (sushy-emulator over plain HTTP, basic authentication).
#[derive(Clone, PartialEq, Eq)]
pub struct RedfishBmc {
    /// The lab's namespace, whose loopback the service listens on.
    pub namespace: String,
    /// `http://127.0.0.1:PORT` (inside the namespace), no trailing slash.
    pub endpoint: String,
    /// The system's id in `/redfish/v1/Systems/{id}`: its UUID.
    pub system_id: String,
    pub username: String,
    pub password: String,
}

impl RedfishBmc {
    /// `curl` inside the namespace: add its arguments (and the credentials, on stdin).
    pub fn curl(&self) -> Command {
        crate::lab::netns_command(&self.namespace, "curl")
    }

    /// `{endpoint}/redfish/v1/Systems/{system_id}`.
    pub fn system_url(&self) -> String {
        format!("{}/redfish/v1/Systems/{}", self.endpoint, self.system_id)
    }
}

impl fmt::Debug for RedfishBmc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedfishBmc")
            .field("endpoint", &self.endpoint)
            .field("system_id", &self.system_id)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// The BMC in front of a [`PoweredVm`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bmc {
    Ipmi(IpmiBmc),
    Redfish(RedfishBmc),
}

/// The boot device a BMC was told, in either protocol's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootDevice {
    /// No override (IPMI `none`, Redfish `None`).
    None,
    /// IPMI `pxe`, Redfish `Pxe`.
    Pxe,
    /// IPMI `default` (what `bootdev disk` sends), Redfish `Hdd`.
    Disk,
    /// IPMI `cdrom`, Redfish `Cd`.
    Cd,
    /// IPMI `bios`, Redfish `BiosSetup`.
    BiosSetup,
    /// Anything else, as the BMC said it (e.g. Redfish `UefiHttp`).
    Other(String),
}

impl BootDevice {
    fn from_ipmi(value: &str) -> BootDevice {
        match value {
            "none" => BootDevice::None,
            "pxe" => BootDevice::Pxe,
            "default" => BootDevice::Disk,
            "cdrom" => BootDevice::Cd,
            "bios" => BootDevice::BiosSetup,
            other => BootDevice::Other(other.to_owned()),
        }
    }

    fn from_redfish(value: &str) -> BootDevice {
        match value {
            "None" => BootDevice::None,
            "Pxe" => BootDevice::Pxe,
            "Hdd" => BootDevice::Disk,
            "Cd" => BootDevice::Cd,
            "BiosSetup" => BootDevice::BiosSetup,
            other => BootDevice::Other(other.to_owned()),
        }
    }

    /// What ipmi_sim's `get boot` answer says for this device.
    fn ipmi_word(&self) -> &str {
        match self {
            BootDevice::None => "none",
            BootDevice::Pxe => "pxe",
            BootDevice::Disk => "default",
            BootDevice::Cd => "cdrom",
            BootDevice::BiosSetup => "bios",
            BootDevice::Other(word) => word,
        }
    }
}

/// What happened to the VM's power.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerChange {
    /// QEMU started (power on, or the second half of a cycle or Redfish restart).
    On,
    /// QEMU was killed by an off request (hard or soft, or the first half of a cycle).
    Off,
    /// QEMU was killed and started again by one IPMI reset.
    Reset,
    /// QEMU exited by itself.
    Exited,
    /// An on request could not start QEMU (the event's `request` says why).
    BootFailed,
}

/// One power change of a [`PoweredVm`].
#[derive(Debug, Clone)]
pub struct PowerEvent {
    pub change: PowerChange,
    /// When the harness saw the BMC's request (for IPMI within 20 ms of the hook call; for
    /// Redfish when sushy applied the change); for [`PowerChange::Exited`] when it saw QEMU
    /// gone.
    pub requested: Instant,
    /// When QEMU started ([`Vm::started`]) for On and Reset (later than `requested` by the
    /// wait for the VM lock), or when it was gone for Off and Exited.
    pub at: Instant,
    /// The BMC's request as the harness saw it (e.g. `power 1`, `power_state On`).
    pub request: String,
}

/// A lab VM behind a BMC whose power commands start and stop its QEMU process (see the
/// module docs). Starts off; everything is torn down on drop.
#[derive(Debug)]
pub struct PoweredVm {
    bmc: Bmc,
    machine: Arc<Mutex<Machine>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    emulator: Child,
}

/// Where the lab's VMs are made: what the harness thread needs of the [`Lab`].
#[derive(Debug, Clone)]
struct Place {
    namespace: String,
    dir: PathBuf,
}

/// The power state the harness thread keeps, shared with the test's calls.
#[derive(Debug)]
struct Machine {
    /// The running VM, or the last one (stopped) so its serial console can still be read.
    vm: Option<Vm>,
    /// QEMU was started and has not been seen gone.
    on: bool,
    /// An on (or the second half of a reset) waiting for the VM lock.
    want_on: Option<Wanted>,
    boots: u32,
    /// The crate-wide VM lock, held from the first boot until the harness drops.
    lock: Option<Arc<VmLock>>,
    /// A thread waiting for that lock (in line with every other test's VM).
    lock_waiter: Option<Receiver<VmLock>>,
    log: Vec<PowerEvent>,
    boot_device: Option<BootDevice>,
    /// `power-<name>.log` in the lab directory: the events as they happen.
    log_file: Option<File>,
}

#[derive(Debug)]
struct Wanted {
    requested: Instant,
    request: String,
    change: PowerChange,
}

/// What a BMC asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    On,
    Off,
    Reset,
    Boot(BootDevice),
    Ignore,
}

#[derive(Debug)]
struct Request {
    action: Action,
    requested: Instant,
    text: String,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not make the harness (and its drop) panic again.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Machine {
    fn new(log_file: Option<File>) -> Machine {
        Machine {
            vm: None,
            on: false,
            want_on: None,
            boots: 0,
            lock: None,
            lock_waiter: None,
            log: Vec::new(),
            boot_device: None,
            log_file,
        }
    }

    fn record(&mut self, event: PowerEvent) {
        if let Some(file) = &mut self.log_file {
            let since = event.at.duration_since(event.requested);
            let _ = writeln!(
                file,
                "{} {:?} ({:.3} s after the request {:?})",
                jiff::Timestamp::now(),
                event.change,
                since.as_secs_f64(),
                event.request
            );
        }
        self.log.push(event);
    }

    fn running(&mut self) -> bool {
        self.on && self.vm.as_mut().is_some_and(Vm::is_running)
    }

    fn kill(&mut self) {
        if let Some(vm) = &mut self.vm {
            vm.stop();
        }
        self.on = false;
    }

    fn apply(&mut self, request: Request) {
        let Request {
            action,
            requested,
            text,
        } = request;
        match action {
            Action::On => {
                if !self.running() && self.want_on.is_none() {
                    self.want_on = Some(Wanted {
                        requested,
                        request: text,
                        change: PowerChange::On,
                    });
                }
            }
            Action::Off => {
                self.want_on = None;
                if self.on {
                    self.kill();
                    self.record(PowerEvent {
                        change: PowerChange::Off,
                        requested,
                        at: Instant::now(),
                        request: text,
                    });
                }
            }
            Action::Reset => {
                if self.on {
                    self.kill();
                    self.want_on = Some(Wanted {
                        requested,
                        request: text,
                        change: PowerChange::Reset,
                    });
                }
            }
            Action::Boot(device) => self.boot_device = Some(device),
            Action::Ignore => {}
        }
    }

    /// Notices QEMU gone by itself; returns whether it was.
    fn reap(&mut self) -> bool {
        if !self.on || self.running() {
            return false;
        }
        self.kill();
        let now = Instant::now();
        self.record(PowerEvent {
            change: PowerChange::Exited,
            requested: now,
            at: now,
            request: "QEMU exited by itself".to_owned(),
        });
        true
    }

    /// Whether the harness holds the VM lock; asks a thread to wait for it when not.
    fn have_lock(&mut self) -> bool {
        if self.lock.is_some() {
            return true;
        }
        let waiter = self.lock_waiter.get_or_insert_with(|| {
            let (tx, rx) = channel();
            // Blocking, like every Vm::boot: a loop polling a non-blocking lock could wait
            // forever behind tests that queue on it. Once it has the lock, a waiter whose
            // harness is gone drops it again.
            std::thread::spawn(move || {
                let _ = tx.send(VmLock::acquire());
            });
            rx
        });
        match waiter.try_recv() {
            Ok(lock) => {
                self.lock = Some(Arc::new(lock));
                self.lock_waiter = None;
                true
            }
            Err(TryRecvError::Empty) => false,
            Err(TryRecvError::Disconnected) => {
                // VmLock::acquire panicked (its message went to stderr).
                self.lock_waiter = None;
                if let Some(wanted) = self.want_on.take() {
                    self.record(PowerEvent {
                        change: PowerChange::BootFailed,
                        requested: wanted.requested,
                        at: Instant::now(),
                        request: format!("{}: could not take the VM lock", wanted.request),
                    });
                }
                false
            }
        }
    }

    /// Boots the wanted VM once the harness holds the VM lock.
    fn boot_if_wanted(&mut self, place: &Place, config: &VmConfig) {
        if self.want_on.is_none() || !self.have_lock() {
            return;
        }
        let (Some(wanted), Some(lock)) = (self.want_on.take(), self.lock.clone()) else {
            return;
        };
        self.boots += 1;
        let mut config = config.clone();
        config.name = if config.name.is_empty() {
            format!("boot{}", self.boots)
        } else {
            format!("{}-boot{}", config.name, self.boots)
        };
        // Vm::start panics when QEMU cannot be started: here that is a power event, not a
        // dead harness thread.
        let started = std::panic::catch_unwind(AssertUnwindSafe(|| {
            Vm::start(&place.namespace, &place.dir, config, lock)
        }));
        match started {
            Ok(vm) => {
                let at = vm.started();
                self.vm = Some(vm);
                self.on = true;
                self.record(PowerEvent {
                    change: wanted.change,
                    requested: wanted.requested,
                    at,
                    request: wanted.request,
                });
            }
            Err(panic) => {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                self.record(PowerEvent {
                    change: PowerChange::BootFailed,
                    requested: wanted.requested,
                    at: Instant::now(),
                    request: format!("{}: {why}", wanted.request),
                });
            }
        }
    }
}

/// The emulator's side of the harness thread: where requests come from and where the state
/// goes back to.
trait Frontend: Send {
    /// Requests that arrived since the last call.
    fn poll(&mut self) -> Vec<Request>;
    /// Publishes the machine's state after the requests were applied.
    fn publish(&mut self, on: bool, boot: Option<&BootDevice>);
    /// QEMU exited by itself.
    fn exited(&mut self) {}
}

/// The harness thread: applies requests, boots when the VM lock is free, notices QEMU gone.
fn power_loop(
    place: &Place,
    config: &VmConfig,
    machine: &Mutex<Machine>,
    stop: &AtomicBool,
    mut frontend: Box<dyn Frontend>,
) {
    while !stop.load(Ordering::Relaxed) {
        let requests = frontend.poll();
        let exited = {
            let mut m = locked(machine);
            for request in requests {
                m.apply(request);
            }
            let exited = m.reap();
            m.boot_if_wanted(place, config);
            let on = m.running();
            frontend.publish(on, m.boot_device.as_ref());
            exited
        };
        if exited {
            frontend.exited();
        }
        std::thread::sleep(TICK);
    }
    let mut m = locked(machine);
    m.want_on = None;
    m.kill();
    m.lock = None;
}

impl PoweredVm {
    /// An `ipmi_sim` BMC on 127.0.0.1 (a free UDP port) for a VM of `config` in `lab`, user
    /// [`BMC_USER`] with `password`; power off.
    ///
    /// # Errors
    /// A bad password, files that cannot be written, or an ipmi_sim that does not start.
    pub fn ipmi(lab: &Lab, config: VmConfig, password: &str) -> Result<PoweredVm, PowerError> {
        if password.is_empty()
            || password.len() > 20
            || password
                .chars()
                .any(|c| c == '"' || c == '\\' || c.is_whitespace() || c.is_control())
        {
            return Err(PowerError::BadPassword);
        }
        let place = place(lab);
        let dir = place.dir.join(format!("bmc{}", suffix(&config)));
        let state = dir.join("state");
        fs::create_dir_all(&state).map_err(file_error("creating", &state))?;
        let hook = dir.join("chassis_control");
        write(&hook, &chassis_control(&dir))?;
        fs::set_permissions(&hook, fs::Permissions::from_mode(0o755))
            .map_err(file_error("making executable", &hook))?;
        let frontend = IpmiFrontend::new(&dir)?;
        let port = crate::lab::in_named_namespace(&place.namespace, free_udp_port)?;
        let lan_conf = dir.join("lan.conf");
        write(
            &lan_conf,
            &format!(
                "name \"dragonfly-powered-vm\"\n\
                 set_working_mc 0x20\n\
                 \x20 startlan 1\n\
                 \x20   addr 127.0.0.1 {port}\n\
                 \x20   priv_limit admin\n\
                 \x20   allowed_auths_callback none md2 md5 straight\n\
                 \x20   allowed_auths_user none md2 md5 straight\n\
                 \x20   allowed_auths_operator none md2 md5 straight\n\
                 \x20   allowed_auths_admin none md2 md5 straight\n\
                 \x20   guid a123456789abcdefa123456789abcdef\n\
                 \x20 endlan\n\
                 \x20 chassis_control \"{hook} 0x20\"\n\
                 \x20 user 2 true \"{BMC_USER}\" \"{password}\" admin 10 none md2 md5 straight\n",
                hook = hook.display(),
            ),
        )?;
        let emu = dir.join("bmc.emu");
        write(
            &emu,
            "mc_setbmc 0x20\n\
             mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02\n\
             mc_enable 0x20\n",
        )?;
        let log = place.dir.join(format!("ipmi_sim{}.log", suffix(&config)));
        let mut cmd = crate::lab::netns_command(&place.namespace, "ipmi_sim");
        // -n: no console on stdio; -s: its persistent state (SEL, users) in our directory.
        cmd.arg("-c")
            .arg(&lan_conf)
            .arg("-f")
            .arg(&emu)
            .arg("-s")
            .arg(&state)
            .arg("-n");
        let mut emulator = spawn_logged("ipmi_sim", cmd, &log)?;
        // Ready once its socket is bound: then binding the same port fails.
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if crate::lab::in_named_namespace(&place.namespace, || {
                UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_err()
            }) {
                break;
            }
            let why = match emulator.try_wait() {
                Ok(Some(status)) => Some(format!("exited with {status}")),
                _ if Instant::now() > deadline => Some(format!("no socket after {READY_WITHIN:?}")),
                _ => None,
            };
            if let Some(why) = why {
                let _ = emulator.kill();
                let _ = emulator.wait();
                return Err(PowerError::NotReady {
                    what: "ipmi_sim",
                    why,
                    log: fs::read_to_string(&log).unwrap_or_default(),
                });
            }
            std::thread::sleep(TICK);
        }
        let bmc = Bmc::Ipmi(IpmiBmc {
            namespace: place.namespace.clone(),
            address: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            username: BMC_USER.to_owned(),
            password: password.to_owned(),
        });
        Ok(Self::run(
            bmc,
            emulator,
            place,
            config,
            Box::new(frontend),
            Vec::new(),
            Arc::new(AtomicBool::new(false)),
        ))
    }

    /// A `sushy-emulator` (fake driver, external notifier) on 127.0.0.1 (a free TCP port)
    /// with one system for a VM of `config` in `lab`, user [`BMC_USER`] with `password`;
    /// power off. When `config` has no SMBIOS UUID, the VM gets one made from its MAC: the
    /// system's id, as on real hardware where the BMC's system UUID is the SMBIOS one.
    ///
    /// # Errors
    /// Files that cannot be written, a password that cannot be hashed, or an emulator that
    /// does not start.
    pub fn redfish(
        lab: &Lab,
        mut config: VmConfig,
        sushy_emulator: &Path,
        password: &str,
    ) -> Result<PoweredVm, PowerError> {
        let uuid = config
            .smbios_uuid
            .get_or_insert_with(|| {
                let hex: String = config.mac.chars().filter(char::is_ascii_hexdigit).collect();
                format!("00000000-0000-4000-8000-{hex:0>12}")
            })
            .clone();
        let place = place(lab);
        let dir = place.dir.join(format!("bmc{}", suffix(&config)));
        fs::create_dir_all(&dir).map_err(file_error("creating", &dir))?;
        let hash = bcrypt(sushy_emulator, password)?;
        let htpasswd = dir.join("htpasswd");
        write(&htpasswd, &format!("{BMC_USER}:{hash}\n"))?;
        // The notifications' listener, inside the namespace where sushy runs.
        let listener = crate::lab::in_named_namespace(&place.namespace, || {
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        })
        .map_err(PowerError::Bind)?;
        let notify_port = listener.local_addr().map_err(PowerError::Bind)?.port();
        let port = crate::lab::in_named_namespace(&place.namespace, free_tcp_port)?;
        let name = if config.name.is_empty() {
            "vm"
        } else {
            &config.name
        };
        // A JSON string is a Python string literal too.
        let py = |s: &str| Value::from(s).to_string();
        let conf = dir.join("sushy.conf");
        write(
            &conf,
            &format!(
                "SUSHY_EMULATOR_FAKE_DRIVER = True\n\
                 SUSHY_EMULATOR_FAKE_SYSTEMS = [{{'uuid': {uuid}, 'name': {name}, \
                 'power_state': 'Off', 'external_notifier': True, 'nics': [{{'mac': {mac}}}]}}]\n\
                 EXTERNAL_NOTIFICATION_URL = 'http://127.0.0.1:{notify_port}/notify'\n\
                 SUSHY_EMULATOR_AUTH_FILE = {auth}\n\
                 SUSHY_EMULATOR_STATE_DIR = {state}\n",
                uuid = py(&uuid),
                name = py(name),
                mac = py(&config.mac),
                auth = py(&htpasswd.to_string_lossy()),
                state = py(&dir.to_string_lossy()),
            ),
        )?;
        let log = place.dir.join(format!("sushy{}.log", suffix(&config)));
        let mut cmd = crate::lab::netns_command(&place.namespace, sushy_emulator);
        cmd.arg("--config").arg(&conf).args([
            "--interface",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ]);
        let mut emulator = spawn_logged("sushy-emulator", cmd, &log)?;
        let bmc = RedfishBmc {
            namespace: place.namespace.clone(),
            endpoint: format!("http://127.0.0.1:{port}"),
            system_id: uuid,
            username: BMC_USER.to_owned(),
            password: password.to_owned(),
        };
        // Ready once the service root (not behind authentication) answers. The client is built
        // inside the namespace: its connections come from its own thread, made there.
        let http = crate::lab::in_named_namespace(&place.namespace, || {
            reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
        })
        .map_err(|e| PowerError::NotReady {
            what: "sushy-emulator",
            why: format!("no HTTP client: {e}"),
            log: String::new(),
        })?;
        let root = format!("{}/redfish/v1/", bmc.endpoint);
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if http
                .get(&root)
                .send()
                .is_ok_and(|r| r.status().is_success())
            {
                break;
            }
            let why = match emulator.try_wait() {
                Ok(Some(status)) => Some(format!("exited with {status}")),
                _ if Instant::now() > deadline => {
                    Some(format!("{root} did not answer within {READY_WITHIN:?}"))
                }
                _ => None,
            };
            if let Some(why) = why {
                let _ = emulator.kill();
                let _ = emulator.wait();
                return Err(PowerError::NotReady {
                    what: "sushy-emulator",
                    why,
                    log: fs::read_to_string(&log).unwrap_or_default(),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let pending = Arc::new(AtomicBool::new(false));
        let force_off = Arc::new(AtomicBool::new(false));
        let (notes_tx, notes_rx) = channel();
        let listen = {
            let (stop, pending) = (Arc::clone(&stop), Arc::clone(&pending));
            std::thread::spawn(move || listen(&listener, &notes_tx, &pending, &stop))
        };
        let poll = {
            let (stop, pending, force_off) = (
                Arc::clone(&stop),
                Arc::clone(&pending),
                Arc::clone(&force_off),
            );
            let bmc = bmc.clone();
            std::thread::spawn(move || poll_pending(&http, &bmc, &pending, &force_off, &stop))
        };
        let frontend = RedfishFrontend {
            notes: notes_rx,
            power_state: "Off".to_owned(),
            force_off,
        };
        Ok(Self::run(
            Bmc::Redfish(bmc),
            emulator,
            place,
            config,
            Box::new(frontend),
            vec![listen, poll],
            stop,
        ))
    }

    fn run(
        bmc: Bmc,
        emulator: Child,
        place: Place,
        config: VmConfig,
        frontend: Box<dyn Frontend>,
        mut threads: Vec<JoinHandle<()>>,
        stop: Arc<AtomicBool>,
    ) -> PoweredVm {
        let log_file = File::create(place.dir.join(format!("power{}.log", suffix(&config)))).ok();
        let machine = Arc::new(Mutex::new(Machine::new(log_file)));
        let thread = {
            let (machine, stop) = (Arc::clone(&machine), Arc::clone(&stop));
            std::thread::spawn(move || power_loop(&place, &config, &machine, &stop, frontend))
        };
        threads.push(thread);
        PoweredVm {
            bmc,
            machine,
            stop,
            threads,
            emulator,
        }
    }

    /// The BMC: its address and credentials.
    pub fn bmc(&self) -> &Bmc {
        &self.bmc
    }

    /// The IPMI BMC, when this is one.
    pub fn ipmi_bmc(&self) -> Option<&IpmiBmc> {
        match &self.bmc {
            Bmc::Ipmi(bmc) => Some(bmc),
            Bmc::Redfish(_) => None,
        }
    }

    /// The Redfish BMC, when this is one.
    pub fn redfish_bmc(&self) -> Option<&RedfishBmc> {
        match &self.bmc {
            Bmc::Redfish(bmc) => Some(bmc),
            Bmc::Ipmi(_) => None,
        }
    }

    /// Whether QEMU is running, as the harness thread last saw it (every 20 ms) and as the
    /// BMC reports it: both change together.
    pub fn is_on(&self) -> bool {
        locked(&self.machine).on
    }

    /// Every power change so far, in order.
    pub fn power_log(&self) -> Vec<PowerEvent> {
        locked(&self.machine).log.clone()
    }

    /// The changes of [`power_log`](Self::power_log) alone, e.g. `[On, Off, On]` after an
    /// on and a cycle.
    pub fn power_changes(&self) -> Vec<PowerChange> {
        locked(&self.machine).log.iter().map(|e| e.change).collect()
    }

    /// The boot device the BMC was last told; `None` when it was never told one.
    pub fn boot_device(&self) -> Option<BootDevice> {
        locked(&self.machine).boot_device.clone()
    }

    /// How many times QEMU was started.
    pub fn boots(&self) -> u32 {
        locked(&self.machine).boots
    }

    /// Boots under `lock` (held by the caller and shared with other VMs that must run at
    /// the same time, as [`Vm::boot_holding`] does) instead of taking the crate-wide VM lock
    /// at the first power on. Call it before the BMC powers the VM on.
    pub fn share_lock(&self, lock: Arc<VmLock>) {
        locked(&self.machine).lock = Some(lock);
    }

    /// Waits until QEMU runs. The first power on waits for the crate-wide VM lock, as
    /// [`Vm::boot`] does (another test's VM may hold it for minutes): give it time.
    ///
    /// # Errors
    /// [`PowerError::Timeout`] when it does not within `timeout`.
    pub fn wait_on(&self, timeout: Duration) -> Result<(), PowerError> {
        self.wait_power(true, timeout)
    }

    /// Waits until QEMU is gone.
    ///
    /// # Errors
    /// [`PowerError::Timeout`] when it is not within `timeout`.
    pub fn wait_off(&self, timeout: Duration) -> Result<(), PowerError> {
        self.wait_power(false, timeout)
    }

    fn wait_power(&self, on: bool, timeout: Duration) -> Result<(), PowerError> {
        let deadline = Instant::now() + timeout;
        while self.is_on() != on {
            if Instant::now() > deadline {
                return Err(self.timeout(if on { "power on" } else { "power off" }, timeout));
            }
            std::thread::sleep(TICK);
        }
        Ok(())
    }

    /// Runs `f` on the current VM, or the last one after it stopped (its serial console is
    /// still there); `None` when no VM was ever started. The harness thread waits while `f`
    /// runs: keep it short (don't call [`Vm::wait_for_line`], which also stops QEMU on a
    /// timeout: use [`wait_for_line`](Self::wait_for_line) here instead).
    pub fn with_vm<R>(&self, f: impl FnOnce(&mut Vm) -> R) -> Option<R> {
        locked(&self.machine).vm.as_mut().map(f)
    }

    /// Waits until a serial console line of the current (or last) VM contains `needle`;
    /// returns its time since that QEMU started and its text. Unlike [`Vm::wait_for_line`]
    /// it never stops QEMU: power stays the BMC's business.
    ///
    /// # Errors
    /// [`PowerError::Timeout`] when no such line comes within `timeout`.
    pub fn wait_for_line(
        &self,
        needle: &str,
        timeout: Duration,
    ) -> Result<(Duration, String), PowerError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.with_vm(|vm| vm.find_line(needle)).flatten() {
                return Ok(found);
            }
            if Instant::now() > deadline {
                return Err(self.timeout(&format!("serial line {needle:?}"), timeout));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the current (or last) VM's [`timeline`](Vm::timeline) has `milestone`
    /// (e.g. `"DHCP"`: the firmware's DHCP answered); returns its time since QEMU started.
    ///
    /// # Errors
    /// [`PowerError::Timeout`] when it does not within `timeout`.
    pub fn wait_for_milestone(
        &self,
        milestone: &str,
        timeout: Duration,
    ) -> Result<Duration, PowerError> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self
                .with_vm(|vm| {
                    vm.timeline()
                        .into_iter()
                        .find_map(|(label, t)| (label == milestone).then_some(t))
                })
                .flatten();
            if let Some(t) = found {
                return Ok(t);
            }
            if Instant::now() > deadline {
                return Err(self.timeout(&format!("milestone {milestone:?}"), timeout));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn timeout(&self, what: &str, timeout: Duration) -> PowerError {
        let mut m = locked(&self.machine);
        let on = m.running();
        let state = format!(
            "power {}, {} boot(s), events {:?}{}",
            if on { "on" } else { "off" },
            m.boots,
            m.log
                .iter()
                .map(|e| (e.change, e.request.as_str()))
                .collect::<Vec<_>>(),
            m.vm.as_ref()
                .map(|vm| format!("\n--- serial (last 30 lines) ---\n{}", vm.serial_tail(30)))
                .unwrap_or_default()
        );
        PowerError::Timeout {
            what: what.to_owned(),
            timeout,
            state,
        }
    }
}

impl Drop for PoweredVm {
    fn drop(&mut self) {
        // The emulator first, so that no request comes in while the threads wind down.
        let _ = self.emulator.kill();
        let _ = self.emulator.wait();
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// `-<name>` for a named VM's files, nothing for an unnamed one.
fn suffix(config: &VmConfig) -> String {
    if config.name.is_empty() {
        String::new()
    } else {
        format!("-{}", config.name)
    }
}

fn place(lab: &Lab) -> Place {
    Place {
        namespace: lab.name().to_owned(),
        dir: lab.dir().to_owned(),
    }
}

fn file_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> PowerError {
    let path = path.to_owned();
    move |source| PowerError::File {
        action,
        path,
        source,
    }
}

fn write(path: &Path, contents: &str) -> Result<(), PowerError> {
    fs::write(path, contents).map_err(file_error("writing", path))
}

/// Writes `path` through a rename, so that a reader never sees it half written.
fn replace(path: &Path, contents: &str) -> Result<(), PowerError> {
    let tmp = path.with_extension("new");
    write(&tmp, contents)?;
    fs::rename(&tmp, path).map_err(file_error("renaming into", path))
}

fn spawn_logged(program: &str, mut cmd: Command, log: &Path) -> Result<Child, PowerError> {
    let out = File::create(log).map_err(file_error("creating", log))?;
    let err = out.try_clone().map_err(file_error("cloning", log))?;
    cmd.stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|source| PowerError::Spawn {
            program: program.to_owned(),
            source,
        })
}

/// A TCP port on 127.0.0.1 free a moment ago (sushy binds its own: it takes no socket).
fn free_tcp_port() -> Result<u16, PowerError> {
    let socket = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(PowerError::Bind)?;
    Ok(socket.local_addr().map_err(PowerError::Bind)?.port())
}

/// A UDP port on 127.0.0.1 free a moment ago (ipmi_sim binds its own).
fn free_udp_port() -> Result<u16, PowerError> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).map_err(PowerError::Bind)?;
    Ok(socket.local_addr().map_err(PowerError::Bind)?.port())
}

/// ipmi_sim's `chassis_control` program for the harness whose files are in `dir` (see the
/// module docs).
fn chassis_control(dir: &Path) -> String {
    format!(
        r#"#!/bin/sh
# ipmi_sim's chassis_control for dragonfly_integration::PoweredVm: it only talks to the
# test process, through files. Called as: $0 MC get NAME... | $0 MC set NAME VALUE...
dir='{dir}'
op=$2
shift 2
case $op in
get)
    for name in "$@"; do
        case $name in
            power) echo "power:$(cat "$dir/power" 2>/dev/null || echo 0)" ;;
            boot) echo "boot:$(cat "$dir/boot" 2>/dev/null || echo none)" ;;
            *) echo "$name:0" ;;
        esac
    done
    ;;
set)
    echo "$*" >> "$dir/requests"
    n=$(wc -l < "$dir/requests")
    # ipmi_sim waits for us and ipmitool retransmits slow answers: wait at most 0.8 s for
    # the harness to apply the request.
    i=0
    while [ "$(cat "$dir/done" 2>/dev/null || echo 0)" -lt "$n" ] && [ $i -lt 40 ]; do
        sleep 0.02
        i=$((i + 1))
    done
    ;;
esac
"#,
        dir = dir.display()
    )
}

/// Reads `requests` (lines `NAME VALUE…` the hook appended), publishes `power`, `boot` and
/// `done` (the number of lines applied).
struct IpmiFrontend {
    dir: PathBuf,
    requests: File,
    offset: u64,
    partial: String,
    lines: u64,
    published: Option<(bool, Option<BootDevice>, u64)>,
}

impl IpmiFrontend {
    fn new(dir: &Path) -> Result<IpmiFrontend, PowerError> {
        replace(&dir.join("power"), "0\n")?;
        replace(&dir.join("boot"), "none\n")?;
        replace(&dir.join("done"), "0\n")?;
        let path = dir.join("requests");
        let requests = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .map_err(file_error("opening", &path))?;
        Ok(IpmiFrontend {
            dir: dir.to_owned(),
            requests,
            offset: 0,
            partial: String::new(),
            lines: 0,
            published: None,
        })
    }
}

fn ipmi_action(line: &str) -> Action {
    let mut words = line.split_whitespace();
    match (words.next(), words.next()) {
        (Some("power"), Some("1")) => Action::On,
        (Some("power"), Some("0")) | (Some("shutdown"), Some("1")) => Action::Off,
        (Some("reset"), Some("1")) => Action::Reset,
        (Some("boot"), Some(device)) => Action::Boot(BootDevice::from_ipmi(device)),
        _ => Action::Ignore,
    }
}

impl Frontend for IpmiFrontend {
    fn poll(&mut self) -> Vec<Request> {
        let mut new = String::new();
        if self.requests.seek(SeekFrom::Start(self.offset)).is_ok()
            && let Ok(n) = self.requests.read_to_string(&mut new)
        {
            self.offset += n as u64;
        }
        self.partial.push_str(&new);
        let now = Instant::now();
        let mut out = Vec::new();
        while let Some(end) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=end).collect();
            let text = line.trim().to_owned();
            self.lines += 1;
            out.push(Request {
                action: ipmi_action(&text),
                requested: now,
                text,
            });
        }
        out
    }

    fn publish(&mut self, on: bool, boot: Option<&BootDevice>) {
        let state = (on, boot.cloned(), self.lines);
        if self.published.as_ref() == Some(&state) {
            return;
        }
        // power and boot before done: the hook reads them once done counts its request.
        let word = boot.map_or("none", BootDevice::ipmi_word);
        let written = replace(&self.dir.join("power"), if on { "1\n" } else { "0\n" })
            .and_then(|()| replace(&self.dir.join("boot"), &format!("{word}\n")))
            .and_then(|()| replace(&self.dir.join("done"), &format!("{}\n", self.lines)));
        if written.is_ok() {
            self.published = Some(state);
        }
    }
}

/// Turns sushy's notifications (the whole system, on every change) into requests.
struct RedfishFrontend {
    notes: Receiver<Value>,
    /// The last applied `power_state` notified.
    power_state: String,
    force_off: Arc<AtomicBool>,
}

impl Frontend for RedfishFrontend {
    fn poll(&mut self) -> Vec<Request> {
        let mut out = Vec::new();
        while let Ok(system) = self.notes.try_recv() {
            let now = Instant::now();
            if let Some(device) = system.get("boot_device").and_then(Value::as_str) {
                out.push(Request {
                    action: Action::Boot(BootDevice::from_redfish(device)),
                    requested: now,
                    text: format!("boot_device {device}"),
                });
            }
            let Some(state) = system.get("power_state").and_then(Value::as_str) else {
                continue;
            };
            if state == self.power_state {
                continue;
            }
            self.power_state = state.to_owned();
            let pending = system
                .get("pending_power")
                .and_then(|p| p.get("power_state"))
                .and_then(Value::as_str);
            let text = match pending {
                Some(p) => format!("power_state {state} (pending {p})"),
                None => format!("power_state {state}"),
            };
            let action = match state {
                "On" => Action::On,
                "Off" => Action::Off,
                _ => Action::Ignore,
            };
            out.push(Request {
                action,
                requested: now,
                text,
            });
        }
        out
    }

    fn publish(&mut self, _on: bool, _boot: Option<&BootDevice>) {}

    fn exited(&mut self) {
        self.force_off.store(true, Ordering::Relaxed);
    }
}

/// The notification listener: one PUT per connection (we answer `Connection: close`).
fn listen(listener: &TcpListener, notes: &Sender<Value>, pending: &AtomicBool, stop: &AtomicBool) {
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Some(system) = read_notification(stream) {
                    let has_pending = system.get("pending_power").is_some_and(|p| !p.is_null());
                    pending.store(has_pending, Ordering::Relaxed);
                    let _ = notes.send(system);
                }
            }
            Err(_) => std::thread::sleep(TICK),
        }
    }
}

/// Reads one HTTP request's JSON body and answers 204.
fn read_notification(mut stream: TcpStream) -> Option<Value> {
    stream.set_nonblocking(false).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let _ = stream.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
    let end = buf.len().min(head_end + length);
    serde_json::from_slice(&buf[head_end..end]).ok()
}

/// GETs the system every second while sushy holds a pending power change (it applies one
/// only when the system is read), and asks for `ForceOff` after QEMU exited by itself.
fn poll_pending(
    http: &reqwest::blocking::Client,
    bmc: &RedfishBmc,
    pending: &AtomicBool,
    force_off: &AtomicBool,
    stop: &AtomicBool,
) {
    let url = bmc.system_url();
    let mut last = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if force_off.swap(false, Ordering::Relaxed) {
            let _ = http
                .post(format!("{url}/Actions/ComputerSystem.Reset"))
                .basic_auth(&bmc.username, Some(&bmc.password))
                .json(&serde_json::json!({"ResetType": "ForceOff"}))
                .send();
        }
        if pending.load(Ordering::Relaxed) && last.elapsed() >= PENDING_POLL {
            last = Instant::now();
            let _ = http
                .get(&url)
                .basic_auth(&bmc.username, Some(&bmc.password))
                .send();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `password` under bcrypt (cost 4: every request checks it), by the Python that runs
/// `sushy_emulator` (its shebang), which has the `bcrypt` sushy checks with. The password
/// goes through stdin, never the command line.
fn bcrypt(sushy_emulator: &Path, password: &str) -> Result<String, PowerError> {
    let script =
        fs::read_to_string(sushy_emulator).map_err(file_error("reading", sushy_emulator))?;
    let shebang = script
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("#!"))
        .unwrap_or("python3");
    let mut words = shebang.split_whitespace();
    let mut python = words.next().unwrap_or("python3");
    if python.ends_with("/env") {
        python = words.next().unwrap_or("python3");
    }
    let mut child = Command::new(python)
        .args([
            "-c",
            "import bcrypt, sys; \
             sys.stdout.write(bcrypt.hashpw(sys.stdin.buffer.read(), bcrypt.gensalt(4)).decode())",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| PowerError::Spawn {
            program: python.to_owned(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(password.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|source| PowerError::Spawn {
            program: python.to_owned(),
            source,
        })?;
    let hash = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || !hash.starts_with("$2") {
        return Err(PowerError::Hash {
            python: python.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipmi_requests_map_to_actions() {
        assert_eq!(ipmi_action("power 1"), Action::On);
        assert_eq!(ipmi_action("power 0"), Action::Off);
        assert_eq!(ipmi_action("shutdown 1"), Action::Off);
        assert_eq!(ipmi_action("reset 1"), Action::Reset);
        assert_eq!(ipmi_action("boot pxe"), Action::Boot(BootDevice::Pxe));
        assert_eq!(ipmi_action("boot default"), Action::Boot(BootDevice::Disk));
        assert_eq!(ipmi_action("identify 15 0"), Action::Ignore);
    }

    #[test]
    fn boot_devices_read_back_in_ipmi_words() {
        for word in ["none", "pxe", "default", "cdrom", "bios", "floppy"] {
            assert_eq!(BootDevice::from_ipmi(word).ipmi_word(), word);
        }
        assert_eq!(BootDevice::from_redfish("Hdd"), BootDevice::Disk);
        assert_eq!(
            BootDevice::from_redfish("UefiHttp"),
            BootDevice::Other("UefiHttp".into())
        );
    }

    #[test]
    fn redfish_notifications_become_requests_once_per_change() {
        let (tx, rx) = channel();
        let mut frontend = RedfishFrontend {
            notes: rx,
            power_state: "Off".into(),
            force_off: Arc::default(),
        };
        let note = |state: &str, pending: Value| serde_json::json!({"power_state": state, "pending_power": pending, "boot_device": "Pxe"});
        tx.send(note("Off", serde_json::json!({"power_state": "On"})))
            .unwrap();
        tx.send(note("On", Value::Null)).unwrap();
        tx.send(note("On", Value::Null)).unwrap();
        tx.send(note(
            "Off",
            serde_json::json!({"power_state": "ForceRestart"}),
        ))
        .unwrap();
        let actions: Vec<Action> = frontend.poll().into_iter().map(|r| r.action).collect();
        let boot = || Action::Boot(BootDevice::Pxe);
        assert_eq!(
            actions,
            [boot(), boot(), Action::On, boot(), boot(), Action::Off]
        );
    }
}
