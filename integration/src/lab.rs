//! [`Lab`]: one private network namespace per test, and the processes inside it.

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use dragonfly_core::{HardwareReport, MacAddr};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

/// The bridge's IPv4 address: where servers in the lab listen (the lab's 10.99.0.1/24).
/// Every lab is its own namespace, so every lab can use the same subnet at the same time.
pub const BRIDGE_ADDR: &str = "10.99.0.1";

/// Set (to anything) to keep every lab's directory (logs, serial console) after the test.
pub const KEEP_ENV: &str = "DRAGONFLY_E2E_KEEP";

/// A socket a daemon receives through `systemd-socket-activate`, as in production.
#[derive(Debug, Clone, Copy)]
pub enum Socket<'a> {
    /// UDP socket on `addr` (e.g. `0.0.0.0:67`) named `name` (`LISTEN_FDNAMES`).
    Udp { addr: &'a str, name: &'a str },
    /// Listening TCP socket.
    Tcp { addr: &'a str, name: &'a str },
}

/// A network namespace with a bridge `br0` (10.99.0.1/24 and fd99::1/64, no STP delay) and
/// a tap `tap0` on it for QEMU; no link to the host. Processes started through it run inside
/// the namespace with stdout and stderr in `<label>.log` in [`dir`](Self::dir).
///
/// Drop kills every process in the namespace (SIGKILL), then deletes it. When dropped during
/// a panic it prints every log to stderr and keeps the directory (also kept when
/// [`KEEP_ENV`] is set).
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
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "dfe{}x{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        assert!(name.len() <= 15, "namespace name {name} too long");
        let dir = tempfile::Builder::new()
            .prefix("dragonfly-e2e-")
            .tempdir()
            .expect("creating a temporary directory");
        // Daemons run as nobody and must reach their config and state in here.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod lab dir");
        ip(&["netns", "add", &name]);
        let lab = Lab {
            name,
            dir: Some(dir),
            children: Vec::new(),
            store: None,
        };
        let n = lab.name.clone();
        for args in [
            vec!["-n", &n, "link", "set", "lo", "up"],
            vec!["-n", &n, "link", "add", "br0", "type", "bridge"],
            vec![
                "-n",
                &n,
                "link",
                "set",
                "br0",
                "type",
                "bridge",
                "stp_state",
                "0",
                "forward_delay",
                "0",
            ],
            vec!["-n", &n, "addr", "add", "10.99.0.1/24", "dev", "br0"],
            // Only so that router advertisements can be sent (iPXE waits for one).
            vec!["-n", &n, "addr", "add", "fd99::1/64", "dev", "br0", "nodad"],
            vec!["-n", &n, "link", "set", "br0", "up"],
            vec![
                "netns", "exec", &n, "ip", "tuntap", "add", "dev", "tap0", "mode", "tap",
            ],
            vec!["-n", &n, "link", "set", "tap0", "master", "br0"],
            vec!["-n", &n, "link", "set", "tap0", "up"],
        ] {
            ip(&args);
        }
        lab
    }

    /// Adds a default route out of `br0`, as most real hosts have one. Off by default, so
    /// that a daemon that relies on the routing table to pick the interface for a broadcast
    /// (instead of the interface the request came in on) fails here rather than on a
    /// multi-homed host.
    pub fn add_default_route(&self) {
        ip(&["-n", &self.name, "route", "add", "default", "dev", "br0"]);
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
        let n = &self.name;
        ip(&[
            "netns", "exec", n, "ip", "tuntap", "add", "dev", name, "mode", "tap",
        ]);
        ip(&["-n", n, "link", "set", name, "master", "br0"]);
        ip(&["-n", n, "link", "set", name, "up"]);
    }

    /// Runs `f` on a thread that has entered the namespace, so that every socket it opens
    /// lives there (e.g. an HTTP client of a daemon bound to 10.99.0.1).
    ///
    /// # Panics
    /// When the namespace cannot be entered, or when `f` panics.
    pub fn in_namespace<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                enter_namespace(&path);
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// [`in_namespace`](Self::in_namespace) on a thread that outlives the call (e.g. a NATS
    /// subscriber collecting events while a VM boots).
    pub fn spawn_in_namespace<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            enter_namespace(&path);
            f()
        })
    }

    /// The lab's temporary directory (mode 0755): logs, configs, state.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("lab directory").path()
    }

    /// `ip netns exec <ns> <program>`: add arguments, then [`spawn`](Self::spawn) it.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
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
        let mut conn = dragonfly_store::open_connection(&path, true).expect("creating the store");
        dragonfly_store::migrate(&mut conn).expect("migrating the store");
        drop(conn);
        dragonfly_testkit::chown_for_unprivileged(&state).expect("chown state for nobody");
        self.store = Some(path.clone());
        path
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
            smbios_uuid: None,
            hostname: None,
            cpu: None,
            memory_bytes: None,
            disks: Vec::new(),
            nics: Vec::new(),
            bmc: None,
            ..Default::default()
        };
        let mut conn = dragonfly_store::open_connection(&path, false).expect("opening the store");
        let registered =
            dragonfly_store::machines::register(&mut conn, &report, jiff::Timestamp::now())
                .expect("registering the machine");
        drop(conn);
        dragonfly_testkit::chown_for_unprivileged(path.parent().expect("state dir"))
            .expect("chown state for nobody");
        registered.machine().name.to_string()
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

    fn kill_everything(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
        }
        for _ in 0..50 {
            let out = Command::new("ip")
                .args(["netns", "pids", &self.name])
                .output();
            let pids: Vec<i32> = out
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .split_whitespace()
                        .filter_map(|p| p.parse().ok())
                        .collect()
                })
                .unwrap_or_default();
            if pids.is_empty() {
                break;
            }
            for pid in pids {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(20));
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
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
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

fn enter_namespace(path: &str) {
    use std::os::fd::AsFd;
    let file = File::open(path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .unwrap_or_else(|e| panic!("entering {path}: {e}"));
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("running ip (package iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}
