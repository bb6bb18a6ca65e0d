//! [`Lab`]: one private network namespace per test, and the processes inside it; [`Network`]:
//! the shape of a lab's network, the one place a namespace, bridge, tap or veth is made.
//!
//! Why it exists: the end-to-end tests ([`Lab`]), the demo (`packaging/local/run.sh`) and the
//! benchmarks (`integration/bench/`) all need a private network; they all build it here, the
//! scripts through `dragonfly-lab up` and `down` (`src/bin/dragonfly-lab.rs`).
//!
//! What it must never do: touch an interface of the host's namespace. Every link it makes
//! lives in a namespace it created (a veth is created with both ends already inside), and
//! [`destroy_network`] deletes only a namespace it is named and the peers joined to it.

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use dragonfly_core::{Chain, HardwareReport, MacAddr};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

/// The bridge's IPv4 address: where servers in the lab listen (the lab's 10.99.0.1/24).
/// Every lab is its own namespace, so every lab can use the same subnet at the same time.
pub const BRIDGE_ADDR: &str = "10.99.0.1";

/// Set (to anything) to keep every lab's directory (logs, serial console) after the test.
pub const KEEP_ENV: &str = "DRAGONFLY_E2E_KEEP";

/// Why a lab network could not be made or removed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A namespace of that name exists with processes inside it or its peers (another run
    /// still going?).
    #[error("network namespace {0} is in use (another run still going?)")]
    InUse(String),
    /// `ip` (or `sysctl` inside the namespace) failed.
    #[error("{command}: {stderr}")]
    Command { command: String, stderr: String },
    /// `ip` could not be run at all.
    #[error("running ip (package iproute2)")]
    Spawn(#[source] std::io::Error),
}

/// A tap on `br0` for a QEMU NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tap {
    /// Interface name inside the namespace (e.g. `tap0`).
    pub name: String,
    /// The user who may open it besides root, e.g. the user QEMU becomes.
    pub owner: Option<String>,
}

/// A namespace of its own joined to `br0` by a veth: a client machine for benchmarks.
/// Its end of the veth is `eth0`; the lab's end is `peer<N>` (N: its place in
/// [`Network::peers`]), a port of `br0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// The peer's namespace name.
    pub namespace: String,
    /// `eth0`'s address with its prefix, in `br0`'s subnet (e.g. `10.200.0.2/16`).
    pub addr: String,
}

/// The shape of a lab's network: a namespace holding a bridge `br0` (no STP delay) with an
/// IPv4 address, taps on it for VMs, and peer namespaces joined to it by veths; nothing
/// joins it to the host. [`create`](Self::create) makes it; [`destroy_network`] removes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    /// The namespace's name.
    pub name: String,
    /// `br0`'s IPv4 address with its prefix.
    pub bridge_addr: String,
    /// `fd99::1/64` on `br0`, only so that router advertisements can be sent: iPXE waits
    /// 13–16 s for one otherwise (lab pitfall 1).
    pub ula: bool,
    pub taps: Vec<Tap>,
    pub peers: Vec<Peer>,
    /// Lets processes without privileges bind ports below 1024 inside the namespace (for a
    /// benchmark's server that binds its own port instead of being handed it).
    pub unprivileged_ports: bool,
}

impl Network {
    /// The tests' and the demo's shape: `br0` 10.99.0.1/24 with the ULA, `tap0` for root,
    /// no peers.
    pub fn new(name: impl Into<String>) -> Network {
        Network {
            name: name.into(),
            bridge_addr: format!("{BRIDGE_ADDR}/24"),
            ula: true,
            taps: vec![Tap {
                name: "tap0".into(),
                owner: None,
            }],
            peers: Vec::new(),
            unprivileged_ports: false,
        }
    }

    /// Makes the namespace and everything in it. A namespace of the same name with nothing
    /// running inside it or its peers (left by a run that was killed) is removed first; one
    /// with processes is [`LabError::InUse`]. On failure, whatever was made is removed again.
    pub fn create(&self) -> Result<(), LabError> {
        if namespace_exists(&self.name) {
            let mut namespaces = peers_of(&self.name);
            namespaces.push(self.name.clone());
            if namespaces.iter().any(|ns| !namespace_pids(ns).is_empty()) {
                return Err(LabError::InUse(self.name.clone()));
            }
            destroy_network(&self.name)?;
        }
        ip(&["netns", "add", &self.name])?;
        let mut made = Vec::new();
        self.build(&mut made).inspect_err(|_| {
            // Only what this call made: a peer name that was taken is someone else's.
            for ns in made.iter().chain([&self.name]) {
                let _ = destroy_network(ns);
            }
        })
    }

    /// Everything inside the namespace; each peer namespace it makes goes into `made`.
    fn build(&self, made: &mut Vec<String>) -> Result<(), LabError> {
        let n = self.name.as_str();
        ip(&["-n", n, "link", "set", "lo", "up"])?;
        ip(&["-n", n, "link", "add", "br0", "type", "bridge"])?;
        ip(&[
            "-n",
            n,
            "link",
            "set",
            "br0",
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ])?;
        ip(&["-n", n, "addr", "add", &self.bridge_addr, "dev", "br0"])?;
        if self.ula {
            ip(&["-n", n, "addr", "add", "fd99::1/64", "dev", "br0", "nodad"])?;
        }
        ip(&["-n", n, "link", "set", "br0", "up"])?;
        for tap in &self.taps {
            add_tap(n, tap)?;
        }
        for (i, peer) in self.peers.iter().enumerate() {
            let port = format!("peer{i}");
            let p = peer.namespace.as_str();
            ip(&["netns", "add", p])?;
            made.push(p.to_owned());
            ip(&["-n", p, "link", "set", "lo", "up"])?;
            // Both ends are made inside their namespaces: the host's never sees either.
            ip(&[
                "link", "add", &port, "netns", n, "type", "veth", "peer", "name", "eth0", "netns",
                p,
            ])?;
            ip(&["-n", n, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", n, "link", "set", &port, "up"])?;
            ip(&["-n", p, "addr", "add", &peer.addr, "dev", "eth0"])?;
            ip(&["-n", p, "link", "set", "eth0", "up"])?;
        }
        if self.unprivileged_ports {
            run(Command::new("ip").args([
                "netns",
                "exec",
                n,
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.ip_unprivileged_port_start=0",
            ]))?;
        }
        Ok(())
    }
}

/// Removes the namespace `name` and every peer namespace joined to it by a veth: kills every
/// process inside (SIGKILL), then deletes them. A namespace that does not exist is no error.
pub fn destroy_network(name: &str) -> Result<(), LabError> {
    if !namespace_exists(name) {
        return Ok(());
    }
    let mut namespaces = peers_of(name);
    namespaces.push(name.to_owned());
    for ns in &namespaces {
        kill_all(ns);
        if namespace_exists(ns) {
            ip(&["netns", "del", ns])?;
        }
    }
    Ok(())
}

/// Kills every process in namespace `name`, until none is left (at most a second).
fn kill_all(name: &str) {
    for _ in 0..50 {
        let pids = namespace_pids(name);
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn namespace_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

fn namespace_pids(name: &str) -> Vec<i32> {
    Command::new("ip")
        .args(["netns", "pids", name])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The namespaces at the other end of `name`'s veths (`ip -o link` prints `link-netns
/// NAME` for a peer in a named namespace).
fn peers_of(name: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-n", name, "-o", "link", "show", "type", "veth"])
        .output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let mut peers = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        while let Some(word) = words.next() {
            if word == "link-netns"
                && let Some(peer) = words.next()
                && !peers.iter().any(|p| p == peer)
            {
                peers.push(peer.to_owned());
            }
        }
    }
    peers
}

fn add_tap(namespace: &str, tap: &Tap) -> Result<(), LabError> {
    let mut args = vec![
        "netns", "exec", namespace, "ip", "tuntap", "add", "dev", &tap.name, "mode", "tap",
    ];
    if let Some(owner) = &tap.owner {
        args.extend(["user", owner]);
    }
    ip(&args)?;
    ip(&["-n", namespace, "link", "set", &tap.name, "master", "br0"])?;
    ip(&["-n", namespace, "link", "set", &tap.name, "up"])
}

fn ip(args: &[&str]) -> Result<(), LabError> {
    run(Command::new("ip").args(args))
}

fn run(cmd: &mut Command) -> Result<(), LabError> {
    let out = cmd.output().map_err(LabError::Spawn)?;
    if out.status.success() {
        return Ok(());
    }
    let mut command = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        command.push(' ');
        command.push_str(&arg.to_string_lossy());
    }
    Err(LabError::Command {
        command,
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    })
}

/// A socket a daemon receives through `systemd-socket-activate`, as in production.
#[derive(Debug, Clone, Copy)]
pub enum Socket<'a> {
    /// UDP socket on `addr` (e.g. `0.0.0.0:67`) named `name` (`LISTEN_FDNAMES`).
    Udp { addr: &'a str, name: &'a str },
    /// Listening TCP socket.
    Tcp { addr: &'a str, name: &'a str },
}

/// A lab [`Network`] of its own for one test (by default [`Network::new`]'s shape: a bridge
/// `br0` 10.99.0.1/24 and fd99::1/64, and a tap `tap0` on it for QEMU). Processes started
/// through it run inside the namespace with stdout and stderr in `<label>.log` in
/// [`dir`](Self::dir).
///
/// Drop kills every process in the namespace and its peers (SIGKILL), then deletes them.
/// When dropped during a panic it prints every log to stderr and keeps the directory (also
/// kept when [`KEEP_ENV`] is set).
#[derive(Debug)]
pub struct Lab {
    name: String,
    dir: Option<TempDir>,
    children: Vec<(String, Child)>,
    store: Option<PathBuf>,
}

impl Lab {
    /// Creates the namespace, bridge and tap.
    ///
    /// # Panics
    /// When any `ip` command fails (not root, or `iproute2` missing).
    pub fn new() -> Lab {
        Lab::with_network(|_| {})
    }

    /// Creates a lab whose network is [`Network::new`]'s shape after `shape` changed it
    /// (another address, peers …); the name is chosen here, unique per process and lab.
    ///
    /// # Panics
    /// When any `ip` command fails (not root, or `iproute2` missing).
    pub fn with_network(shape: impl FnOnce(&mut Network)) -> Lab {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "dfe{}x{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::Builder::new()
            .prefix("dragonfly-e2e-")
            .tempdir()
            .expect("creating a temporary directory");
        // Daemons run as nobody and must reach their config and state in here.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod lab dir");
        let mut network = Network::new(name.clone());
        shape(&mut network);
        network
            .create()
            .unwrap_or_else(|e| panic!("creating lab network {name}: {}", Chain(&e)));
        Lab {
            name,
            dir: Some(dir),
            children: Vec::new(),
            store: None,
        }
    }

    /// Adds a default route out of `br0`, as most real hosts have one. Off by default, so
    /// that a daemon that relies on the routing table to pick the interface for a broadcast
    /// (instead of the interface the request came in on) fails here rather than on a
    /// multi-homed host.
    pub fn add_default_route(&self) {
        ip(&["-n", &self.name, "route", "add", "default", "dev", "br0"])
            .unwrap_or_else(|e| panic!("{}", Chain(&e)));
    }

    /// The namespace's name (unique per test: pid and a counter).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds a tap `name` on `br0` (`tap0` exists already), for a second NIC or a second VM.
    ///
    /// # Panics
    /// When `ip` fails (e.g. the name is taken).
    pub fn add_tap(&self, name: &str) {
        let tap = Tap {
            name: name.to_owned(),
            owner: None,
        };
        add_tap(&self.name, &tap).unwrap_or_else(|e| panic!("adding {name}: {}", Chain(&e)));
    }

    /// Runs `f` on a thread that has entered the namespace, so that every socket it opens
    /// lives there (e.g. an HTTP client of a daemon bound to 10.99.0.1).
    ///
    /// # Panics
    /// When the namespace cannot be entered, or when `f` panics.
    pub fn in_namespace<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        in_named_namespace(&self.name, f)
    }

    /// [`in_namespace`](Self::in_namespace) on a thread that outlives the call (e.g. a NATS
    /// subscriber collecting events while a VM boots).
    pub fn spawn_in_namespace<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        spawn_in_named_namespace(&self.name, f)
    }

    /// The lab's temporary directory (mode 0755): logs, configs, state.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("lab directory").path()
    }

    /// `ip netns exec <ns> <program>`: add arguments, then [`spawn`](Self::spawn) it.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        netns_command(&self.name, program)
    }

    /// Runs `cmd` in the background with stdout and stderr in `<label>.log`; it is killed
    /// when the lab drops. Returns its PID.
    ///
    /// # Panics
    /// When it cannot be started.
    pub fn spawn(&mut self, label: &str, mut cmd: Command) -> u32 {
        let log = File::create(self.log_path(label)).expect("creating a log file");
        let err = log.try_clone().expect("cloning a log file handle");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {label} ({cmd:?}): {e}"));
        let pid = child.id();
        self.children.push((label.to_owned(), child));
        pid
    }

    /// Kills the process started as `label` with SIGKILL, as a crash or an OOM kill would,
    /// and reaps it. Its log stays.
    ///
    /// # Panics
    /// When no process was started as `label`.
    pub fn kill(&mut self, label: &str) {
        let i = self
            .children
            .iter()
            .position(|(l, _)| l == label)
            .unwrap_or_else(|| panic!("no process {label} in the lab"));
        let (_, mut child) = self.children.remove(i);
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The path of `<label>.log`.
    pub fn log_path(&self, label: &str) -> PathBuf {
        self.dir().join(format!("{label}.log"))
    }

    /// `<label>.log` so far (empty when absent).
    pub fn log(&self, label: &str) -> String {
        std::fs::read_to_string(self.log_path(label)).unwrap_or_default()
    }

    /// Waits until `<label>.log` contains `needle`.
    ///
    /// # Panics
    /// After `timeout`, with every log in the message.
    pub fn wait_for_log(&self, label: &str, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.log(label).contains(needle) {
            assert!(
                Instant::now() < deadline,
                "{label} did not log {needle:?} within {timeout:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every log of the lab, each under a header (for panic messages).
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let mut paths: Vec<_> = std::fs::read_dir(self.dir())
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        paths.retain(|p| p.extension().is_some_and(|e| e == "log"));
        paths.sort();
        for path in paths {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let skip = lines.len().saturating_sub(150);
            let _ = writeln!(out, "----- {} ({} lines)", path.display(), lines.len());
            for line in &lines[skip..] {
                let _ = writeln!(out, "{line}");
            }
        }
        out
    }

    /// dnsmasq in the foreground on `br0` with DNS off and `extra` options (`--dhcp-range=…`,
    /// `--enable-tftp`, …), logging to `<label>.log`.
    pub fn dnsmasq(&mut self, label: &str, extra: &[String]) -> u32 {
        let dir = self.dir().to_owned();
        let mut cmd = self.command("dnsmasq");
        cmd.args([
            "--keep-in-foreground",
            "--port=0",
            "--interface=br0",
            "--bind-interfaces",
            "--except-interface=lo",
            "--no-resolv",
            "--no-hosts",
            "--log-facility=-",
            "--user=root",
        ])
        .arg(format!(
            "--pid-file={}",
            dir.join(format!("{label}.pid")).display()
        ))
        .arg(format!(
            "--dhcp-leasefile={}",
            dir.join(format!("{label}.leases")).display()
        ))
        .args(extra);
        self.spawn(label, cmd)
    }

    /// Options that make dnsmasq answer IPv6 router solicitations with a no-M/no-O RA:
    /// without one, iPXE's "Configuring (net0)" waits 13–16 s (lab pitfall 1).
    pub fn ra_options() -> Vec<String> {
        vec![
            "--enable-ra".into(),
            "--dhcp-range=::,constructor:br0,ra-only,64,1h".into(),
        ]
    }

    /// Starts a dnsmasq that only answers router solicitations (label `ra`).
    pub fn answer_router_solicitations(&mut self) {
        self.dnsmasq("ra", &Self::ra_options());
    }

    /// A NATS server inside the namespace on its own 127.0.0.1:4222 (the testkit's servers
    /// run in the host's namespace, out of the daemons' reach). Returns its URL.
    ///
    /// # Panics
    /// When no `nats-server` is installed or it does not become ready.
    pub fn start_nats(&mut self) -> String {
        let binary = dragonfly_testkit::nats_server_binaries()
            .into_iter()
            .next()
            .expect("a nats-server (call dragonfly_testkit::require_nats_servers first)");
        let mut cmd = self.command(&binary.path);
        cmd.args(["-a", "127.0.0.1", "-p", "4222"]);
        self.spawn("nats", cmd);
        self.wait_for_log("nats", "Server is ready", Duration::from_secs(10));
        "nats://127.0.0.1:4222".to_owned()
    }

    /// A migrated SQLite database in `state/` (both owned by nobody when root), created on
    /// first call.
    ///
    /// # Panics
    /// When the database cannot be created.
    pub fn store(&mut self) -> PathBuf {
        if let Some(path) = &self.store {
            return path.clone();
        }
        let state = self.dir().join("state");
        std::fs::create_dir(&state).expect("mkdir state");
        let path = state.join("dragonfly.db");
        dragonfly_store::migrate_file(&path).expect("creating the store");
        dragonfly_testkit::chown_for_unprivileged(&state).expect("chown state for nobody");
        self.store = Some(path.clone());
        path
    }

    /// Where apid keeps its own database in this lab: `state/apid/auth.db` (apid, as nobody,
    /// creates the directory 0700 and the file 0600 in `state/`, which nobody owns).
    pub fn auth_db(&mut self) -> PathBuf {
        let store = self.store();
        store.with_file_name("apid").join("auth.db")
    }

    /// Registers a machine with this one MAC in the store (as the agent would), so daemons
    /// know it. Returns the machine's name.
    ///
    /// # Panics
    /// When the MAC is invalid or the store refuses.
    pub fn register_machine(&mut self, mac: &str) -> String {
        let path = self.store();
        let mac: MacAddr = mac.parse().expect("a valid MAC");
        let report = HardwareReport {
            macs: vec![mac],
            ..Default::default()
        };
        let store = dragonfly_store::BlockingDb::open(&path).expect("opening the store");
        let registered = store
            .block_on(
                store
                    .db()
                    .machines()
                    .register(report, jiff::Timestamp::now()),
            )
            .expect("registering the machine");
        drop(store);
        dragonfly_testkit::chown_for_unprivileged(path.parent().expect("state dir"))
            .expect("chown state for nobody");
        registered.machine().name.to_string()
    }

    /// Records in the store that dhcpd answered `mac`'s network boot just now, offering it
    /// `address` (`None`: a ProxyDHCP answer, no address): what lets ipxed mint `mac` a token
    /// (docs/security.md), for tests that ask ipxed without a DHCP exchange.
    ///
    /// # Panics
    /// When the MAC is invalid or the store refuses.
    pub fn sight_boot(&mut self, mac: &str, address: Option<std::net::Ipv4Addr>) {
        let path = self.store();
        let mac: MacAddr = mac.parse().expect("a valid MAC");
        let store = dragonfly_store::BlockingDb::open(&path).expect("opening the store");
        store
            .block_on(store.db().boot().sighted(dragonfly_store::boot::Sighting {
                mac,
                seen_at: jiff::Timestamp::now(),
                address,
                via: dragonfly_store::boot::SightedVia::Reservation,
            }))
            .expect("recording the sighting");
        drop(store);
        dragonfly_testkit::chown_for_unprivileged(path.parent().expect("state dir"))
            .expect("chown state for nobody");
    }

    /// Writes `contents` to `<dir>/<name>` (readable by everyone) and returns the path.
    ///
    /// # Panics
    /// When the file cannot be written.
    pub fn write_file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir().join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(&path, contents).expect("writing a lab file");
        path
    }

    /// Starts one of our daemons as production does: root binds `sockets` through
    /// `systemd-socket-activate` (UDP and TCP need two nested calls; the inner names all
    /// fds), which execs `setpriv` to nobody with no capabilities, which execs `binary args`.
    /// `env` is passed through (`-E`). Socket activation is lazy: the daemon starts on the
    /// first packet or connection, so its start-up is part of the first client's wait.
    pub fn spawn_daemon(
        &mut self,
        label: &str,
        binary: &Path,
        sockets: &[Socket<'_>],
        args: &[OsString],
        env: &[(&str, &str)],
    ) -> u32 {
        let tcp: Vec<_> = sockets
            .iter()
            .filter_map(|s| match s {
                Socket::Tcp { addr, name } => Some((*addr, *name)),
                Socket::Udp { .. } => None,
            })
            .collect();
        let udp: Vec<_> = sockets
            .iter()
            .filter_map(|s| match s {
                Socket::Udp { addr, name } => Some((*addr, *name)),
                Socket::Tcp { .. } => None,
            })
            .collect();
        let names: Vec<&str> = tcp.iter().chain(&udp).map(|(_, n)| *n).collect();
        let mut argv: Vec<OsString> = Vec::new();
        let groups: Vec<(bool, &Vec<(&str, &str)>)> = [(false, &tcp), (true, &udp)]
            .into_iter()
            .filter(|(_, g)| !g.is_empty())
            .collect();
        for (i, (datagram, group)) in groups.iter().enumerate() {
            argv.push("systemd-socket-activate".into());
            if *datagram {
                argv.push("-d".into());
            }
            for (addr, _) in group.iter() {
                argv.push(format!("--listen={addr}").into());
            }
            if i + 1 == groups.len() {
                argv.push(format!("--fdname={}", names.join(":")).into());
                for (k, v) in env {
                    argv.push(format!("--setenv={k}={v}").into());
                }
            }
        }
        let priv_drop = dragonfly_testkit::unprivileged(binary);
        argv.push(priv_drop.get_program().to_owned());
        argv.extend(priv_drop.get_args().map(OsStr::to_owned));
        argv.extend(args.iter().cloned());
        let mut cmd = self.command(&argv[0]);
        cmd.args(&argv[1..]);
        self.spawn(label, cmd)
    }

    #[allow(
        clippy::print_stderr,
        reason = "called by Drop, which has nowhere else to report"
    )]
    fn kill_everything(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
        }
        if let Err(e) = destroy_network(&self.name) {
            eprintln!("removing lab network {}: {}", self.name, Chain(&e));
        }
        for (_, child) in &mut self.children {
            let _ = child.wait();
        }
    }
}

impl Default for Lab {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Lab {
    #[allow(
        clippy::print_stderr,
        reason = "a failed test's logs must reach cargo test's output"
    )]
    fn drop(&mut self) {
        self.kill_everything();
        let keep = std::env::var_os(KEEP_ENV).is_some();
        if std::thread::panicking() {
            eprintln!("===== logs of lab {} =====\n{}", self.name, self.logs());
        }
        if (std::thread::panicking() || keep)
            && let Some(dir) = self.dir.take()
        {
            eprintln!("lab files kept in {}", dir.keep().display());
        }
    }
}

/// `ip netns exec <namespace> <program>`: [`Lab::command`] for code that holds only the
/// namespace's name (the power harness's thread, which boots VMs after the test's `&mut Lab`
/// has moved on).
pub(crate) fn netns_command(namespace: &str, program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", namespace]).arg(program);
    cmd
}

/// Runs `f` on a thread inside the namespace named `namespace` (see [`Lab::in_namespace`]),
/// for code that holds only the name. Sockets made there stay in that namespace wherever
/// they are used afterwards, and so do threads spawned from `f` (a blocking HTTP client's).
pub(crate) fn in_named_namespace<T: Send>(namespace: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{namespace}");
    std::thread::scope(|s| {
        s.spawn(|| {
            enter_namespace(&path);
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// A thread inside the namespace named `namespace`, for code that holds only the name.
pub(crate) fn spawn_in_named_namespace<T: Send + 'static>(
    namespace: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{namespace}");
    std::thread::spawn(move || {
        enter_namespace(&path);
        f()
    })
}

fn enter_namespace(path: &str) {
    use std::os::fd::AsFd;
    let file = File::open(path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("entering {path}: {e}"));
}
