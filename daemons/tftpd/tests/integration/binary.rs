//! The real `dragonfly-tftpd` binary, unprivileged and socket-activated by
//! `systemd-socket-activate`, serving a real client and stopping cleanly on SIGTERM.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use dragonfly_testkit::{free_port, require_binary, unprivileged};

use crate::common::{Client, Tree};

pub(crate) const TFTPD: &str = env!("CARGO_BIN_EXE_dragonfly-tftpd");

/// A configuration file for the binary in `tree`, listening (when not socket-activated) on
/// `listen`, with a NATS URL nobody answers: publishing failures must only be logged.
pub(crate) fn write_config(tree: &Tree, listen: &str) -> std::path::PathBuf {
    let cfg = tree.dir.path().join("dragonfly.toml");
    std::fs::write(
        &cfg,
        format!(
            "[nats]\nurl = \"nats://127.0.0.1:1\"\n[log]\nlevel = \"info\"\n\
             [tftpd]\nlisten = {listen:?}\nroots = [{root:?}]\n",
            root = tree.root.display().to_string(),
        ),
    )
    .unwrap();
    dragonfly_testkit::chown_for_unprivileged(&cfg).unwrap();
    cfg
}

/// Waits until something holds UDP `port` on loopback (our probe can no longer bind it).
pub(crate) async fn wait_bound(port: u16) -> bool {
    for _ in 0..200 {
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_err() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_activated_binary_serves_and_stops_on_sigterm() {
    let Some(activate) = require_binary("systemd-socket-activate", "apt-get install systemd")
    else {
        return;
    };
    if !Client::Curl.available() {
        return;
    }
    let tree = Tree::new();
    // Port 1 cannot be bound unprivileged: if the daemon serves, it used systemd's socket.
    let cfg = write_config(&tree, "127.0.0.1:1");
    let port = free_port();
    let mut child = tokio::process::Command::from(unprivileged(&activate))
        .args([
            "-d",
            "-l",
            &format!("127.0.0.1:{port}"),
            "--fdname=tftp",
            TFTPD,
            "--config",
        ])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    assert!(
        wait_bound(port).await,
        "systemd-socket-activate never bound {port}"
    );
    let server = format!("127.0.0.1:{port}").parse().unwrap();
    let out = tree.scratch.join("small");
    assert!(Client::Curl.fetch(server, "small.bin", &out).await);
    assert!(std::fs::read(&out).unwrap() == std::fs::read(tree.root.join("small.bin")).unwrap());

    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exited within 15 s of SIGTERM")
        .unwrap();
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr)
        .await
        .unwrap();
    assert!(status.success(), "{status}: {stderr}");
    assert!(stderr.contains("sent"), "no transfer logged: {stderr}");
}

#[tokio::test]
async fn check_config_refuses_a_bad_section_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("dragonfly.toml");
    std::fs::write(&cfg, "[tftpd]\nroots = [\"relative\"]\n").unwrap();
    let out = std::process::Command::new(TFTPD)
        .args(["--check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tftpd.roots"));
    std::fs::write(
        &cfg,
        "[tftpd]\nroots = [\"/srv/tftp\"]\nmax_blksize = 1432\n",
    )
    .unwrap();
    let out = std::process::Command::new(TFTPD)
        .args(["--check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let _ = Path::new(TFTPD);
}
