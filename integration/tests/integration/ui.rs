//! The web UI in a real browser: Debian's chromium, headless, driven by playwright-core
//! (`integration/browser/ui.cjs`), against the real apid, workflowd and bmcd of a lab with a
//! real NATS and SQLite store. This test owns the daemons and a simulated agent and answers
//! the browser script's steps: it registers the machine the page must show without a reload,
//! and runs the agent's action with progress reports while the page watches the bar move.
//! Screenshots of every screen land in `target/ui-screenshots/` (the README's come from there).

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use dragonfly_core::MacAddr;
use dragonfly_integration::{SimAgent, cache_dir};
use serde_json::json;

use crate::common::{
    ADMIN, LAB_APID as URL, LAB_APID_AGENTS as AGENT_URL, LAB_KEY as KEY, PASSWORD,
    require_operator_lab, start_operator_lab,
};

/// The browser's machine reports this vendor: it must show as text.
const XSS: &str = "<img src=x onerror=alert(1)>";

const TEMPLATE: &str = "\
apiVersion: dragonfly.computer/v1
kind: Template
metadata:
  name: ui-test
spec:
  actions:
    - name: hostname
      type: writefile
      device: {disk: /dev/vda, partition: 1}
      filesystem: ext4
      path: /etc/hostname
      contents: web1
";

fn requirements() -> bool {
    require_operator_lab()
        && dragonfly_testkit::require_binary("chromium", "apt-get install chromium").is_some()
        && dragonfly_testkit::require_binary("node", "apt-get install nodejs").is_some()
        && dragonfly_testkit::require_binary("npm", "apt-get install npm").is_some()
}

/// playwright-core and axe-core (the versions `integration/browser/package.json` pins),
/// installed from npm into `target/e2e-cache/browser` once; `node_modules` there.
fn node_modules() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = cache_dir().join("browser");
    let modules = dir.join("node_modules");
    let manifest = std::fs::read(repo.join("browser/package.json")).unwrap();
    let stamp = dir.join("package.json");
    if std::fs::read(&stamp).ok().as_ref() == Some(&manifest)
        && modules.join("playwright-core").is_dir()
        && modules.join("axe-core").is_dir()
    {
        return modules;
    }
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(&stamp, &manifest).unwrap();
    let out = Command::new("npm")
        .args([
            "install",
            "--no-audit",
            "--no-fund",
            "--omit=dev",
            "--prefix",
        ])
        .arg(&dir)
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "npm install: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    modules
}

#[test]
fn the_ui_in_a_real_browser() {
    if !requirements() {
        return;
    }
    let modules = node_modules();
    let lab = start_operator_lab();
    let store = lab.dir().join("state/dragonfly.db");
    let shots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ui-screenshots");
    std::fs::create_dir_all(&shots).unwrap();

    // The template the browser assigns, through the API with a token.
    lab.in_namespace(|| {
        let http = reqwest::blocking::Client::new();
        let r = http
            .post(format!("{URL}/api/auth/login"))
            .json(&json!({"username": ADMIN, "password": PASSWORD}))
            .send()
            .unwrap();
        let cookie = r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let t: serde_json::Value = http
            .post(format!("{URL}/api/tokens"))
            .header("cookie", cookie)
            .header("origin", URL)
            .json(&json!({"name": "ui-test"}))
            .send()
            .unwrap()
            .json()
            .unwrap();
        let token = t["token"].as_str().unwrap().to_owned();
        let r = http
            .post(format!("{URL}/apis/dragonfly.computer/v1/templates"))
            .bearer_auth(&token)
            .header("content-type", "application/yaml")
            .body(TEMPLATE)
            .send()
            .unwrap();
        assert_eq!(
            r.status(),
            201,
            "template: {}",
            r.text().unwrap_or_default()
        );
    });

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/ui.cjs");
    let mut browser = lab
        .command("node")
        .arg(&script)
        .args([URL, ADMIN, PASSWORD])
        .arg(&shots)
        .env("NODE_PATH", &modules)
        .env("HOME", lab.dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut to_browser = browser.stdin.take().unwrap();
    let (tx, steps) = mpsc::channel::<String>();
    let stdout = browser.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            println!("browser: {line}");
            if let Some(step) = line.strip_prefix("STEP ") {
                let _ = tx.send(step.to_owned());
            }
        }
    });
    let stderr = browser.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            println!("browser (stderr): {line}");
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let wait_step = |name: &str| {
        let got = steps.recv_timeout(Duration::from_secs(120));
        assert_eq!(got.as_deref(), Ok(name), "the browser did not reach {name}");
    };

    wait_step("signed-in");
    let mac = MacAddr::new([0x52, 0x54, 0x00, 0xc1, 0x20, 0x01]);
    let agent = lab.in_namespace(|| SimAgent::new(AGENT_URL, KEY, &store, mac).unwrap());
    let mut report = agent.report("web-01");
    report["system"] = json!({"vendor": XSS, "product": "Sim Server 9000", "serial": "SN-1"});
    // dhcpd (socket-activated) publishes its subnets when it starts: the page's address
    // reservation is checked against them.
    lab.in_namespace(|| {
        let s = std::net::UdpSocket::bind("10.99.0.1:0").unwrap();
        s.send_to(b"wake up", "10.99.0.1:67").unwrap();
    });
    let name = lab.in_namespace(|| {
        let m = agent.register(&report).unwrap();
        m["name"].as_str().unwrap().to_owned()
    });
    writeln!(to_browser, "REGISTERED {name}").unwrap();

    wait_step("detail");
    lab.in_namespace(|| {
        agent.log(&[
            "hello from the agent",
            "\u{1b}[31mred\u{1b}[0m <b>bold?</b>",
        ])
    })
    .unwrap();
    wait_step("powered");
    wait_step("assigned");
    lab.in_namespace(|| {
        let step = agent.wait_for_action(Duration::from_secs(20)).unwrap();
        // Slow enough for the page to show the bar between 0 and 100.
        agent
            .run_action(&step, 2_147_483_648, 6, Duration::from_millis(1500))
            .unwrap();
    });
    wait_step("done");
    drop(to_browser);
    let status = browser.wait().unwrap();
    let stderr = errors.join().unwrap();
    assert!(status.success(), "the browser script failed:\n{stderr}");
    for shot in [
        "sign-in",
        "machines",
        "machines-phone",
        "machine",
        "workflow-progress",
        "template",
        "tokens",
    ] {
        assert!(
            shots.join(format!("{shot}.png")).is_file(),
            "screenshot {shot}"
        );
    }
}
