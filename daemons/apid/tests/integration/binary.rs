//! The real `dragonfly-apid` binary, socket-activated by `systemd-socket-activate`, against a
//! real `nats-server`: registrations arrive as CloudEvents, and a NATS restart is survived.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use dragonfly_testkit::{
    NatsServer, SocketActivated, chown_for_unprivileged, free_port, require_binary,
    require_nats_servers, unprivileged,
};
use futures::StreamExt;
use serde_json::Value;

use crate::common::{KEY, TestDb, mac, report, token_for};

const APID: &str = env!("CARGO_BIN_EXE_dragonfly-apid");

/// A config file, key file and database for the binary, owned by the user it will run as.
fn prepare(db: &TestDb, nats_url: &str, agent_port: u16) -> PathBuf {
    let dir = db.dir.path();
    let key = dir.join("boot-token-key");
    std::fs::write(&key, KEY).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let cfg = dir.join("dragonfly.toml");
    // The fallback address is port 1, which an unprivileged process cannot bind: if apid
    // served at all, it used the socket systemd-socket-activate passed it. The agents'
    // listener is bound from the config (systemd-socket-activate passes one name).
    std::fs::write(
        &cfg,
        format!(
            "[store]\npath = {db:?}\n[nats]\nurl = {nats_url:?}\n[log]\nlevel = \"info\"\n\
             [apid]\nlisten = \"127.0.0.1:1\"\nagent_listen = \"127.0.0.1:{agent_port}\"\n\
             boot_token_key_file = {key:?}\nsecure_cookies = false\n\
              auth_db = {auth:?}\n",
            db = db.path.display().to_string(),
            key = key.display().to_string(),
            auth = db.auth_db_path().display().to_string(),
        ),
    )
    .unwrap();
    chown_for_unprivileged(dir).unwrap();
    cfg
}

async fn register(http: &reqwest::Client, base: &str, db: &TestDb, n: u8) -> Value {
    let r = http
        .post(format!("{base}/api/machines/register"))
        .bearer_auth(token_for(&db.db, mac(n)).await)
        .json(&report(&[n]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json().await.unwrap()
}

async fn next_event(sub: &mut async_nats::Subscriber) -> Value {
    let msg = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a CloudEvent within 10 s")
        .unwrap();
    serde_json::from_slice(&msg.payload).unwrap()
}

async fn bus_state(http: &reqwest::Client, base: &str) -> String {
    match http.get(format!("{base}/api/health")).send().await {
        Ok(r) => r.json::<Value>().await.unwrap()["bus"]
            .as_str()
            .unwrap()
            .to_owned(),
        Err(_) => "unreachable".into(),
    }
}

async fn wait_bus(http: &reqwest::Client, base: &str, want: &str) {
    for _ in 0..150 {
        if bus_state(http, base).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("bus never became {want}");
}

#[tokio::test]
async fn socket_activated_apid_publishes_cloudevents_and_survives_a_nats_restart() {
    let Some(activate) = require_binary("systemd-socket-activate", "apt-get install systemd")
    else {
        return;
    };
    for binary in require_nats_servers() {
        let t0 = std::time::Instant::now();
        run_scenario(&activate, &binary.path).await;
        eprintln!(
            "nats-server {}: scenario passed in {:?}",
            binary.version,
            t0.elapsed()
        );
    }
}

async fn run_scenario(activate: &Path, nats_binary: &Path) {
    let mut nats = NatsServer::start_with(nats_binary).await.unwrap();
    let db = TestDb::new();
    let agent_port = free_port();
    let cfg = prepare(&db, &nats.url(), agent_port);
    let port = free_port();
    // The first connection makes systemd-socket-activate start the daemon, which then serves
    // everything queued on the socket.
    let daemon = SocketActivated::tcp(
        activate,
        port,
        "http",
        APID,
        &["--config".as_ref(), cfg.as_os_str()],
    )
    .await;
    let base = daemon.base_url();
    // Agents register on their own listener; the operators' refuses boot tokens.
    let agents = format!("http://127.0.0.1:{agent_port}");

    let watcher = async_nats::connect(nats.url()).await.unwrap();
    let mut sub = watcher.subscribe("dragonfly.machine.>").await.unwrap();
    watcher.flush().await.unwrap();

    let http = reqwest::Client::new();
    // The connection above started apid; it binds the agents' listener from the config while
    // starting up, so that one may take a moment to answer.
    for _ in 0..100 {
        if bus_state(&http, &agents).await != "unreachable" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = register(&http, &agents, &db, 1).await;
    let ev = next_event(&mut sub).await;
    assert_eq!(ev["specversion"], "1.0");
    assert_eq!(ev["type"], "computer.dragonfly.machine.registered");
    assert_eq!(ev["source"], "/dragonfly/apid");
    assert_eq!(ev["datacontenttype"], "application/json");
    assert_eq!(ev["subject"], first["id"]);
    assert!(ev["id"].as_str().is_some_and(|id| !id.is_empty()));
    assert!(
        ev["time"]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .is_ok()
    );
    assert_eq!(ev["data"]["name"], first["name"]);
    assert_eq!(ev["data"]["created"], true);

    // NATS goes away: apid keeps serving, because the store is the truth.
    nats.kill();
    wait_bus(&http, &base, "disconnected").await;
    let during = register(&http, &agents, &db, 2).await;
    assert_eq!(during["state"], "Registered");

    // NATS comes back on the same port: apid reconnects and publishes again.
    nats.restart().await.unwrap();
    wait_bus(&http, &base, "connected").await;
    watcher.flush().await.unwrap();
    let after = register(&http, &agents, &db, 3).await;
    let mut names = Vec::new();
    loop {
        let ev = next_event(&mut sub).await;
        names.push(ev["data"]["name"].clone());
        if ev["data"]["name"] == after["name"] {
            break;
        }
    }
    assert!(
        names.len() <= 2,
        "only the outage's event may precede: {names:?}"
    );

    // SIGTERM: a graceful stop, exit status 0.
    let (exited_0, log) = daemon.stop(Duration::from_secs(15)).await;
    assert!(exited_0, "apid did not exit 0: {log}");
    assert!(log.contains("serving"), "{log}");
}

#[test]
fn check_config_exits_0_or_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[apid]\nlisten = \"127.0.0.1:3000\"\n").unwrap();
    let out = std::process::Command::new(APID)
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
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[apid]\nlisten = \"localhost\"\n").unwrap();
    let out = std::process::Command::new(APID)
        .args(["--check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("apid.listen"),
        "{err}"
    );
}

#[test]
fn create_admin_reads_the_password_from_stdin_and_refuses_weak_ones() {
    use std::io::Write;
    let db = TestDb::new();
    let cfg = prepare(&db, "nats://127.0.0.1:1", free_port());
    let run = |password: &str| {
        let mut child = unprivileged(APID)
            .args(["--config"])
            .arg(&cfg)
            .args(["create-admin", "--username", "root-of-trust"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
        child.wait_with_output().unwrap()
    };
    let weak = run("short");
    assert_eq!(weak.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&weak.stderr).contains("at least 12"));
    let ok = run("a long enough passphrase");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // In apid's own file, created by the command as apid's user, 0600 in a 0700 directory.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&db.auth_db_path()), 0o600);
    assert_eq!(mode(db.auth_db_path().parent().unwrap()), 0o700);
    let store = dragonfly_store::BlockingDb::create_or_open_auth(db.auth_db_path()).unwrap();
    let (user, hash) = store
        .block_on(store.db().auth().user_with_password("root-of-trust"))
        .unwrap()
        .unwrap();
    assert!(user.is_admin);
    assert!(hash.starts_with("$argon2id$"));
    assert!(dragonfly_apid::auth::verify_password(
        "a long enough passphrase",
        &hash
    ));
    let dup = run("a long enough passphrase");
    assert!(!dup.status.success());
}

#[test]
fn refuses_to_run_as_root() {
    if !dragonfly_testkit::require_root() {
        return;
    }
    let db = TestDb::new();
    let cfg = prepare(&db, "nats://127.0.0.1:1", free_port());
    let out = std::process::Command::new(APID)
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
    let out = std::process::Command::new(APID)
        .args(["--check-config", "--config", example])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
