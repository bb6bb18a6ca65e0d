//! apid's two listeners, as `run` serves them: agents get only their routes, operators
//! everything else (over TLS here, checked with curl), and a boot token works on the agents'
//! listener only.

use std::net::TcpListener;
use std::process::Command;

use dragonfly_apid::{Apid, Listeners, config::RawApid};
use dragonfly_runtime::{Context, Credentials, Daemon, Secret};
use reqwest::StatusCode;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::common::{KEY, TestDb, config, mac, report, token_for};

struct Running {
    operator: String,
    agent: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), dragonfly_apid::ApidError>>,
    store: TestDb,
    _dir: tempfile::TempDir,
    ca: std::path::PathBuf,
}

/// `run` with a self-signed certificate for `localhost` on the operators' listener.
async fn start() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, cert.pem()).unwrap();
    let store = TestDb::new();
    let cfg = config(|c: &mut RawApid| {
        c.auth_db = Some(store.auth_db_path());
        c.http = Some(dragonfly_http::RawHttpConfig {
            tls: Some(true),
            ..Default::default()
        });
    });
    assert!(cfg.secure_cookies, "cookies follow TLS");
    let specs = Apid::credentials(&cfg);
    let credentials = Credentials::from_secrets(
        &specs,
        vec![
            ("boot-token-key", Secret::new(KEY.to_vec())),
            ("tls-certificate", Secret::new(cert.pem().into_bytes())),
            ("tls-key", Secret::new(key.serialize_pem().into_bytes())),
        ],
    )
    .unwrap();
    let ctx = Context::<Apid>::new(cfg, store.db.clone(), None, credentials);
    let operator = TcpListener::bind("127.0.0.1:0").unwrap();
    let agent = TcpListener::bind("127.0.0.1:0").unwrap();
    operator.set_nonblocking(true).unwrap();
    agent.set_nonblocking(true).unwrap();
    let operator_url = format!(
        "https://localhost:{}",
        operator.local_addr().unwrap().port()
    );
    let agent_url = format!("http://{}", agent.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(dragonfly_apid::run(
        ctx,
        Listeners { operator, agent },
        shutdown.clone(),
    ));
    Running {
        operator: operator_url,
        agent: agent_url,
        shutdown,
        task,
        store,
        _dir: dir,
        ca,
    }
}

/// curl against the operators' listener, trusting only the test's certificate: (status, body).
fn curl(r: &Running, args: &[&str]) -> (u16, String) {
    let port = r.operator.rsplit(':').next().unwrap();
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(&r.ca)
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .args(["-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        code.trim().parse().unwrap_or(0),
        format!("{body}{}", String::from_utf8_lossy(&out.stderr)),
    )
}

// curl blocks its thread: the servers run on the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_and_operators_are_served_apart_and_operators_over_tls() {
    if dragonfly_testkit::require_binary("curl", "apt-get install curl").is_none() {
        return;
    }
    let r = start().await;
    let http = reqwest::Client::new();
    let agent = |path: &str| format!("{}{path}", r.agent);

    // The agents' listener: registration with a boot token, instructions, health.
    let reg = http
        .post(agent("/api/machines/register"))
        .bearer_auth(token_for(&r.store.db, mac(1)).await)
        .json(&report(&[1]))
        .send()
        .await
        .unwrap();
    assert_eq!(reg.status(), StatusCode::CREATED);
    let instructions = http
        .get(agent("/api/agent/instructions"))
        .bearer_auth(token_for(&r.store.db, mac(1)).await)
        .send()
        .await
        .unwrap();
    assert_eq!(instructions.status(), StatusCode::OK);
    assert!(
        http.get(agent("/api/health"))
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );
    // Nothing of the operators': not the UI, not the inventory, not a login.
    for (method, path) in [
        ("GET", "/"),
        ("GET", "/api/machines"),
        ("GET", "/api/openapi.json"),
        ("GET", "/api/events"),
        ("POST", "/api/auth/login"),
        ("GET", "/apis/dragonfly.computer/v1/hardware"),
    ] {
        let req = http.request(method.parse().unwrap(), agent(path));
        let status = req.json(&json!({})).send().await.unwrap().status();
        assert!(
            status == StatusCode::NOT_FOUND || status == StatusCode::UNAUTHORIZED,
            "{method} {path} on the agents' listener: {status}"
        );
    }
    // Plain HTTP on the agents' port only: TLS there is not offered.
    assert!(r.agent.starts_with("http://"));

    // The operators' listener, through TLS with a real client.
    let (status, body) = curl(&r, &[&format!("{}/api/health", r.operator)]);
    assert_eq!(status, 200, "{body}");
    // A plain-HTTP request to it gets no answer.
    let plain = r.operator.replace("https://localhost", "http://127.0.0.1");
    assert!(
        http.get(format!("{plain}/api/health"))
            .send()
            .await
            .is_err()
    );
    // Agent-only routes are not here, and a boot token is refused on every route.
    let token = format!(
        "Authorization: Bearer {}",
        token_for(&r.store.db, mac(1)).await
    );
    let (status, _) = curl(
        &r,
        &[
            "-H",
            &token,
            &format!("{}/api/agent/instructions", r.operator),
        ],
    );
    assert!(status == 401 || status == 403, "{status}");
    let (status, _) = curl(&r, &[&format!("{}/api/agent/instructions", r.operator)]);
    assert!(status == 404 || status == 401, "{status}");
    let (status, _) = curl(
        &r,
        &[
            "-H",
            &token,
            "-H",
            "content-type: application/json",
            "--data",
            &report(&[2]).to_string(),
            &format!("{}/api/machines/register", r.operator),
        ],
    );
    assert_eq!(status, 403);
    assert_eq!(r.store.db.machines().count().await.unwrap(), 1);

    r.shutdown.cancel();
    tokio::time::timeout(std::time::Duration::from_secs(5), r.task)
        .await
        .expect("drained")
        .unwrap()
        .unwrap();
}
