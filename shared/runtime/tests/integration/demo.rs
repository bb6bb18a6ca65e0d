//! The reference daemon end to end: config and exit codes, socket activation, privilege drop,
//! SIGTERM and drain.
//!
//! CI runs as root, and the daemons refuse root, so serving tests start the demo as `nobody`
//! through `setpriv` (util-linux); as a normal user they start it directly.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use dragonfly_testkit::{free_port, unprivileged};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const DEMO: &str = env!("CARGO_BIN_EXE_dragonfly-demo");
const SOCKET_ACTIVATE: &str = "/usr/bin/systemd-socket-activate";

/// A config file readable by `nobody`, in a directory that is removed afterwards.
struct Config {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn config(text: &str) -> Config {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = dir.path().join("dragonfly.toml");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    Config { _dir: dir, path }
}

fn demo_output(args: &[&str]) -> Output {
    Command::new(DEMO)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn spawn(mut command: Command) -> Child {
    command
        .env_remove("RUST_LOG")
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_FDNAMES")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Connect (retrying while the daemon starts) and read the greeting.
fn greeting(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    let stream = loop {
        match TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
            Ok(stream) => break stream,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("daemon never listened on {port}: {e}"),
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    line
}

/// SIGTERM the daemon and return its exit code and stderr.
fn terminate(child: Child) -> (Option<i32>, String) {
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap());
    kill(pid, Signal::SIGTERM).unwrap();
    terminate_waited(child)
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn socket_activated_demo_serves_warns_about_unused_socket_and_drains() {
    // The fallback (port 1) cannot be bound by nobody: serving proves the passed socket was used.
    let cfg = config("[log]\nlevel = \"info\"\n[demo]\nlisten = \"127.0.0.1:1\"\n");
    let (http, spare) = (free_port(), free_port());
    let mut command = unprivileged(SOCKET_ACTIVATE);
    command
        .arg(format!("--listen=127.0.0.1:{http}"))
        .arg(format!("--listen=127.0.0.1:{spare}"))
        .arg("--fdname=http:spare")
        .args([DEMO, "--config", path_str(&cfg.path)]);
    let child = spawn(command);

    assert_eq!(greeting(http), "hello from dragonfly\n");
    assert_eq!(
        greeting(http),
        "hello from dragonfly\n",
        "serves more than once"
    );

    let (code, stderr) = terminate(child);
    assert_eq!(code, Some(0), "clean stop must exit 0; stderr:\n{stderr}");
    assert!(stderr.contains("listening socket=http"), "{stderr}");
    assert!(stderr.contains("from=\"systemd\""), "{stderr}");
    assert!(
        stderr.contains("does not use") && stderr.contains("socket=spare"),
        "unused socket must be reported: {stderr}"
    );
    assert!(stderr.contains("privileges locked down"), "{stderr}");
    assert!(
        stderr.contains("shutdown requested") && stderr.contains("SIGTERM"),
        "{stderr}"
    );
}

#[test]
fn demo_binds_the_configured_address_without_systemd() {
    let port = free_port();
    let cfg = config(&format!("[demo]\nlisten = \"127.0.0.1:{port}\"\n"));
    let mut command = unprivileged(DEMO);
    command.args(["--config", path_str(&cfg.path)]);
    let child = spawn(command);

    assert_eq!(greeting(port), "hello from dragonfly\n");
    let (code, stderr) = terminate(child);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("from=\"config\""), "{stderr}");
}

#[test]
fn check_config_ok_exits_0() {
    let cfg = config("[demo]\nlisten = \"127.0.0.1:7070\"\n[apid]\nanything = 1\n");
    let out = demo_output(&["--config", path_str(&cfg.path), "--check-config"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("config OK: {}\n", cfg.path.display())
    );
}

#[test]
fn invalid_config_exits_2_naming_file_and_key() {
    let cfg = config("[demo]\nlisten = \"x\"\n");
    for check in [true, false] {
        let mut args = vec!["--config", path_str(&cfg.path)];
        if check {
            args.push("--check-config");
        }
        let out = demo_output(&args);
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        let expected = format!(
            "{}: demo.listen: invalid socket address \"x\"",
            cfg.path.display()
        );
        assert!(stderr.contains(&expected), "{stderr}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn missing_config_exits_2_naming_the_path() {
    let out = demo_output(&["--config", "/nonexistent/dragonfly.toml", "--check-config"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/dragonfly.toml: cannot read configuration file"),
        "{stderr}"
    );
}

#[test]
fn bad_usage_exits_2() {
    assert_eq!(demo_output(&["--no-such-flag"]).status.code(), Some(2));
}

#[test]
fn running_as_root_is_refused_with_exit_1() {
    // Only root can be refused; the unprivileged path is covered above.
    if !dragonfly_testkit::require_root() {
        return;
    }
    let cfg = config("[demo]\nlisten = \"127.0.0.1:0\"\n");
    let out = demo_output(&["--config", path_str(&cfg.path)]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refusing to run as root"), "{stderr}");
}

/// Collects what the daemon sends to `NOTIFY_SOCKET` (one datagram per notification).
struct NotifySocket {
    _dir: tempfile::TempDir,
    path: PathBuf,
    socket: std::os::unix::net::UnixDatagram,
}

impl NotifySocket {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        // The daemon runs as nobody: it must reach the socket.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("notify");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Self {
            _dir: dir,
            path,
            socket,
        }
    }

    /// Every notification received within `window`.
    fn collect(&self, window: Duration) -> Vec<String> {
        let deadline = Instant::now() + window;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        got
    }
}

#[test]
fn the_frame_sends_ready_feeds_the_watchdog_and_says_stopping() {
    let port = free_port();
    let cfg = config(&format!("[demo]\nlisten = \"127.0.0.1:{port}\"\n"));
    let notify = NotifySocket::new();
    let mut command = unprivileged(DEMO);
    command
        .args(["--config", path_str(&cfg.path)])
        .env("NOTIFY_SOCKET", &notify.path)
        // 1 s: the frame pings every 0.5 s while the demo's loop beats.
        .env("WATCHDOG_USEC", "1000000");
    let child = spawn(command);

    let first = notify.collect(Duration::from_secs(3));
    let ready = first.iter().position(|m| m.contains("READY=1"));
    assert!(ready.is_some(), "READY=1 never sent: {first:?}");
    let pings = first.iter().filter(|m| m.contains("WATCHDOG=1")).count();
    assert!(
        pings >= 3,
        "the watchdog must be fed about every 0.5 s; got {pings} pings in 3 s: {first:?}"
    );
    assert!(greeting(port).starts_with("hello"));

    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap());
    kill(pid, Signal::SIGTERM).unwrap();
    let last = notify.collect(Duration::from_secs(1));
    assert!(
        last.iter().any(|m| m.contains("STOPPING=1")),
        "STOPPING=1 never sent: {last:?}"
    );
    let (code, stderr) = terminate_waited(child);
    assert_eq!(code, Some(0), "{stderr}");
}

/// Like [`terminate`] for a child already sent SIGTERM.
fn terminate_waited(mut child: Child) -> (Option<i32>, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("daemon did not exit after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
