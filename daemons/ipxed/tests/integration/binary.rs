//! The real `dragonfly-ipxed` binary, socket-activated by `systemd-socket-activate` as an
//! unprivileged user, against a real `nats-server`.

use std::path::PathBuf;
use std::time::Duration;

use dragonfly_testkit::{
    NatsServer, SocketActivated, chown_for_unprivileged, free_port, require_binary,
    require_nats_servers,
};
use futures::StreamExt;

use crate::common::{Fixture, KEY, check_syntax, kernel_arg};

const IPXED: &str = env!("CARGO_BIN_EXE_dragonfly-ipxed");

/// A config file and key file for the binary, owned by the user it will run as.
fn prepare(fx: &Fixture, nats_url: &str) -> PathBuf {
    let dir = fx.store.dir.path();
    let key = dir.join("boot-token-key");
    std::fs::write(&key, KEY).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let cfg = dir.join("dragonfly.toml");
    // The fallback address is port 1, which an unprivileged process cannot bind: if ipxed
    // served at all, it used the socket systemd-socket-activate passed it.
    std::fs::write(
        &cfg,
        format!(
            "[store]\npath = {db:?}\n[nats]\nurl = {nats_url:?}\n[log]\nlevel = \"info\"\n\
             [ipxed]\nlisten = \"127.0.0.1:1\"\npublic_url = \"http://10.99.0.1:8080\"\n\
             apid_url = \"http://10.99.0.1:3000\"\nagent_dir = {agent:?}\n\
             boot_token_key_file = {key:?}\n",
            db = fx.db_path.display().to_string(),
            agent = fx.agent_dir.display().to_string(),
            key = key.display().to_string(),
        ),
    )
    .unwrap();
    chown_for_unprivileged(dir).unwrap();
    cfg
}

#[tokio::test]
async fn socket_activated_ipxed_serves_scripts_and_files_and_publishes() {
    let Some(activate) = require_binary("systemd-socket-activate", "apt-get install systemd")
    else {
        return;
    };
    if require_nats_servers().is_empty() {
        return;
    }
    let nats = NatsServer::start().await.unwrap();
    let fx = Fixture::new();
    let cfg = prepare(&fx, &nats.url());
    let port = free_port();
    // The first connection makes systemd-socket-activate start the daemon, which then serves
    // everything queued on the socket.
    let daemon = SocketActivated::tcp(
        &activate,
        port,
        "http",
        IPXED,
        &["--config".as_ref(), cfg.as_os_str()],
    )
    .await;
    let base = daemon.base_url();
    let watcher = async_nats::connect(nats.url()).await.unwrap();
    let mut sub = watcher.subscribe("dragonfly.boot.decided").await.unwrap();
    watcher.flush().await.unwrap();

    // dhcpd answered this boot, offering the address the test asks from.
    fx.store
        .db
        .boot()
        .sighted(dragonfly_store::boot::Sighting {
            mac: "52:54:00:aa:00:01".parse().unwrap(),
            seen_at: jiff::Timestamp::now(),
            address: Some(std::net::Ipv4Addr::LOCALHOST),
            via: dragonfly_store::boot::SightedVia::Reservation,
        })
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let r = http
        .get(format!(
            "{base}/boot/52:54:00:aa:00:01?platform=efi&arch=x86_64"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let script = r.text().await.unwrap();
    check_syntax(&script);
    let token = kernel_arg(&script, "dragonfly.token").unwrap().to_owned();
    dragonfly_core::boot_token::verify(&KEY, &token, jiff::Timestamp::now()).unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("BootDecided within 10 s")
        .unwrap();
    let ev: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(ev["source"], "/dragonfly/ipxed");
    assert_eq!(ev["data"]["fate"], "discovery");
    let kernel = http
        .get(format!("{base}/agent/vmlinuz"))
        .send()
        .await
        .unwrap();
    assert_eq!(kernel.bytes().await.unwrap().as_ref(), fx.kernel.as_slice());
    let health = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    let (exited_0, log) = daemon.stop(Duration::from_secs(15)).await;
    assert!(exited_0, "ipxed did not exit 0: {log}");
    assert!(log.contains("boot decided"), "{log}");
    assert!(
        !log.contains(&token) && !log.contains("dfb1."),
        "a token was logged: {log}"
    );
}

#[test]
fn check_config_exits_0_or_2_naming_the_key() {
    let fx = Fixture::new();
    let good = prepare(&fx, "nats://127.0.0.1:4222");
    let out = std::process::Command::new(IPXED)
        .args(["--check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = fx.store.dir.path().join("bad.toml");
    std::fs::write(&bad, "[ipxed]\npublic_url = \"ftp://x\"\n").unwrap();
    let out = std::process::Command::new(IPXED)
        .args(["--check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("ipxed.public_url"),
        "{err}"
    );
}

#[test]
fn refuses_to_run_as_root() {
    if !dragonfly_testkit::require_root() {
        return;
    }
    let fx = Fixture::new();
    let cfg = prepare(&fx, "nats://127.0.0.1:1");
    let out = std::process::Command::new(IPXED)
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("root"));
}

#[test]
fn the_shipped_example_config_is_valid() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../packaging/dragonfly.toml.example"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dragonfly-ipxed"))
        .args(["--check-config", "--config", example])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
