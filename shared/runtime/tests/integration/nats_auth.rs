//! The bus against a real `nats-server` that demands a user, a password and TLS: the
//! `[nats]` section's credentials (read as a credential file, never from the config) and CA
//! file get a daemon connected; wrong ones get a clear error while the daemon keeps serving.
//!
//! Certificates are made for each run with the `openssl` command.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dragonfly_bus::events::LeaseGranted;
use dragonfly_bus::{Bus, ConnectionState};
use dragonfly_core::MacAddr;
use dragonfly_runtime::config::{NatsConfig, RawNatsConfig};
use dragonfly_runtime::nats_connect_options;
use dragonfly_testkit::{free_port, require_binary, require_nats_servers, unprivileged};
use futures::StreamExt;

const DEMO: &str = env!("CARGO_BIN_EXE_dragonfly-demo");
const USER: &str = "dragonfly";
const PASSWORD: &str = "correct-horse-nats";

/// A CA, a server certificate for 127.0.0.1 signed by it, a password file, and a running
/// `nats-server` that requires all three.
struct SecureNats {
    dir: tempfile::TempDir,
    port: u16,
    child: Child,
}

impl Drop for SecureNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl SecureNats {
    fn start() -> Option<SecureNats> {
        require_binary("openssl", "apt-get install openssl")?;
        let binary = require_nats_servers().into_iter().next()?;
        let dir = tempfile::tempdir().unwrap();
        // nobody (the demo daemon) reads the CA and its own password file from here.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let d = dir.path();
        openssl(
            d,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=dragonfly test CA",
                "-keyout",
                "ca-key.pem",
                "-out",
                "ca.pem",
            ],
        );
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                "server-key.pem",
                "-out",
                "server.csr",
            ],
        );
        std::fs::write(d.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca-key.pem",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                "san.ext",
                "-out",
                "server.pem",
            ],
        );
        std::fs::set_permissions(d.join("ca.pem"), std::fs::Permissions::from_mode(0o644)).unwrap();
        let port = free_port();
        std::fs::write(
            d.join("nats.conf"),
            format!(
                "listen: 127.0.0.1:{port}\n\
                 authorization {{ user: {USER}, password: \"{PASSWORD}\" }}\n\
                 tls {{ cert_file: \"{0}/server.pem\", key_file: \"{0}/server-key.pem\" }}\n",
                d.display()
            ),
        )
        .unwrap();
        let log = d.join("nats.log");
        let child = Command::new(&binary.path)
            .args(["-c", "nats.conf", "-l", "nats.log"])
            .current_dir(d)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = SecureNats { dir, port, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("Server is ready")
        {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(server)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A password credential file, private to its owner (`nobody` when we are root).
    fn password_file(&self, name: &str, password: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, format!("{password}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        dragonfly_testkit::chown_for_unprivileged(&path).unwrap();
        path
    }

    /// The `[nats]` section reaching this server with `password_file`.
    fn section(&self, password_file: &Path) -> String {
        format!(
            "url = \"tls://127.0.0.1:{}\"\nconnect_timeout = \"2s\"\nauth = \"user-password\"\n\
             user = \"{USER}\"\ncredential_file = \"{}\"\ntls_ca_file = \"{}\"\n",
            self.port,
            password_file.display(),
            self.path("ca.pem").display()
        )
    }
}

fn nats_config(section: &str) -> NatsConfig {
    let raw: RawNatsConfig = toml::from_str(section).unwrap();
    NatsConfig::try_from(raw).unwrap()
}

async fn connected(bus: &Bus, within: Duration) -> bool {
    let mut state = bus.connection_events();
    tokio::time::timeout(within, state.wait_for(|s| *s == ConnectionState::Connected))
        .await
        .is_ok_and(|r| r.is_ok())
}

#[tokio::test]
async fn a_bus_with_a_password_and_tls_connects_and_publishes() {
    let Some(server) = SecureNats::start() else {
        return;
    };
    let good = server.password_file("good-password", PASSWORD);
    let config = nats_config(&server.section(&good));
    let subscriber = Bus::connect(nats_connect_options(&config, "subscriber").unwrap())
        .await
        .unwrap();
    let publisher = Bus::connect(nats_connect_options(&config, "publisher").unwrap())
        .await
        .unwrap();
    assert!(connected(&subscriber, Duration::from_secs(10)).await);
    assert!(connected(&publisher, Duration::from_secs(10)).await);
    let mut leases = subscriber.subscribe::<LeaseGranted>().await.unwrap();
    subscriber.flush().await.unwrap();
    let lease = LeaseGranted {
        mac: MacAddr::new([0x52, 0x54, 0, 0, 0, 9]),
        ip: "10.0.0.9".parse().unwrap(),
        lease_seconds: 3600,
        reserved: false,
        machine_id: None,
        relay: None,
    };
    publisher.publish(&lease).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), leases.next())
        .await
        .expect("the event in time")
        .expect("the subscription open")
        .expect("a well-formed event");
    assert_eq!(got.data, lease);

    // The wrong password: the server refuses, the bus keeps trying and never connects.
    let bad = server.password_file("bad-password", "not-the-password");
    let wrong =
        Bus::connect(nats_connect_options(&nats_config(&server.section(&bad)), "x").unwrap())
            .await
            .unwrap();
    assert!(!connected(&wrong, Duration::from_secs(3)).await);
    // Without the CA, the server's certificate does not verify.
    let no_ca = nats_config(&server.section(&good).replace("tls_ca_file", "#"));
    let untrusted = Bus::connect(nats_connect_options(&no_ca, "y").unwrap())
        .await
        .unwrap();
    assert!(!connected(&untrusted, Duration::from_secs(3)).await);
}

#[test]
fn a_missing_or_open_credential_is_an_error_that_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent");
    let config = nats_config(&format!(
        "auth = \"user-password\"\nuser = \"u\"\ncredential_file = \"{}\"\n",
        missing.display()
    ));
    let err = nats_connect_options(&config, "t").unwrap_err();
    let text = dragonfly_core::Chain(&err).to_string();
    assert!(
        text.contains("nats-password") && text.contains("not found"),
        "{text}"
    );
    let open = dir.path().join("open");
    std::fs::write(&open, "secret-password").unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = nats_config(&format!(
        "auth = \"user-password\"\nuser = \"u\"\ncredential_file = \"{}\"\n",
        open.display()
    ));
    let text = dragonfly_core::Chain(&nats_connect_options(&config, "t").unwrap_err()).to_string();
    assert!(text.contains("readable by other users"), "{text}");
    assert!(!text.contains("secret-password"), "{text}");
}

/// Runs the demo daemon with `nats` as its `[nats]` section until `wanted` is in its log (then
/// `linger` more, for retries to happen) or 15 s pass; proves it serves meanwhile. Returns its
/// log.
fn demo_with(nats: &str, wanted: &str, linger: Duration) -> String {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = dir.path().join("dragonfly.toml");
    std::fs::write(
        &cfg,
        format!("[nats]\n{nats}[log]\nlevel = \"info\"\n[demo]\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let log = dir.path().join("stderr");
    let mut command = unprivileged(DEMO);
    let mut child = command
        .args(["--config", cfg.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains(wanted) {
            std::thread::sleep(linger);
            break std::fs::read_to_string(&log).unwrap_or_default();
        }
        if Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // It serves, bus or no bus.
    let greeting = std::net::TcpStream::connect(("127.0.0.1", port))
        .and_then(|s| {
            use std::io::BufRead;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut line = String::new();
            std::io::BufReader::new(s).read_line(&mut line)?;
            Ok(line)
        })
        .unwrap_or_else(|e| panic!("the demo does not serve: {e}\n{text}"));
    assert_eq!(greeting, "hello from dragonfly\n", "{text}");
    let _ = child.kill();
    let _ = child.wait();
    text
}

#[test]
fn a_daemon_with_wrong_credentials_says_so_and_keeps_serving() {
    let Some(server) = SecureNats::start() else {
        return;
    };
    let good = server.password_file("good-password", PASSWORD);
    let log = demo_with(&server.section(&good), "connected to NATS", Duration::ZERO);
    assert!(log.contains("connected to NATS"), "{log}");

    let bad = server.password_file("bad-password", "not-the-password");
    // Long enough for several retries (backoff up to 2 s).
    let log = demo_with(
        &server.section(&bad),
        "refused this daemon's credentials",
        Duration::from_secs(5),
    );
    assert!(
        log.contains("NATS refused this daemon's credentials"),
        "a clear error: {log}"
    );
    assert!(!log.contains("not-the-password"), "{log}");
    // Said once, not at every retry (async-nats itself logs each refused attempt).
    assert!(log.matches("authorization violation").count() > 2, "{log}");
    assert_eq!(
        log.matches("refused this daemon's credentials").count(),
        1,
        "{log}"
    );
    assert!(!log.contains("connected to NATS"), "{log}");
}
