//! Prometheus metrics, end to end: every daemon of a lab serves `GET /metrics` on its own
//! loopback port (`[metrics]` in the lab's one config file), real clients drive each
//! daemon a little (a DHCP lease from busybox's udhcpc, a TFTP read and HTTP requests with
//! curl), `promtool check metrics` accepts each daemon's output, and a real Prometheus
//! (Debian's package, run here with its own storage, never as the system service) scrapes
//! all six every second: every target is up and the counters the clients drove are above 0.
//!
//! Needs root (the lab's namespace), nats-server, prometheus and promtool, curl, busybox,
//! systemd-socket-activate and Debian's iPXE binaries; skips outside CI when one is missing.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use dragonfly_integration::{DhcpdConfig, Lab, Peer};
use dragonfly_testkit::{require_binary, require_nats_servers, require_root};
use serde_json::Value;

use crate::common::start_dragonfly_configured;

/// Each daemon's metrics port: the ports of the units (units/dragonfly-*-metrics.socket).
const PORTS: [(&str, u16); 6] = [
    ("dhcpd", 9641),
    ("tftpd", 9642),
    ("ipxed", 9643),
    ("apid", 9644),
    ("workflowd", 9645),
    ("bmcd", 9646),
];

const CLIENT_MAC: &str = "52:54:00:6d:65:01";

#[test]
fn prometheus_scrapes_every_daemon() {
    if !require_root() || require_nats_servers().is_empty() {
        return;
    }
    let mut tools = Vec::new();
    for (name, install) in [
        ("prometheus", "apt-get install prometheus"),
        ("promtool", "apt-get install prometheus"),
        ("curl", "apt-get install curl"),
        ("busybox", "apt-get install busybox-static"),
        ("systemd-socket-activate", "apt-get install systemd"),
        ("ip", "apt-get install iproute2"),
    ] {
        let Some(path) = require_binary(name, install) else {
            return;
        };
        tools.push(path);
    }
    for file in [
        "/usr/lib/ipxe/undionly.kpxe",
        "/usr/lib/ipxe/ipxe.efi",
        "/usr/lib/ipxe/snponly.efi",
    ] {
        if !Path::new(file).is_file() && require_binary(file, "apt-get install ipxe").is_none() {
            return;
        }
    }
    let (prometheus, promtool) = (tools[0].clone(), tools[1].clone());

    // A client machine: a namespace of its own on the lab's bridge, for udhcpc.
    let mut client = String::new();
    let mut lab = Lab::with_network(|n| {
        client = format!("{}c", n.name);
        n.peers.push(Peer {
            namespace: client.clone(),
            addr: "10.99.0.50/24".into(),
        });
    });
    let agent = lab.dir().join("agent");
    std::fs::create_dir_all(&agent).unwrap();
    for name in ["vmlinuz", "initrd.img"] {
        std::fs::write(agent.join(name), b"not a kernel").unwrap();
    }
    start_dragonfly_configured(
        &mut lab,
        &agent,
        DhcpdConfig::lab("reservation"),
        true,
        |config| {
            config.metrics = PORTS
                .iter()
                .map(|(daemon, port)| ((*daemon).to_owned(), format!("127.0.0.1:{port}")))
                .collect();
        },
    );

    // Traffic. The socket-activated daemons (all but workflowd and bmcd) start on their first
    // client, and only then bind their metrics port.
    let status = curl_status(&lab, "http://10.99.0.1:3000/api/health");
    assert_eq!(status, "200", "apid /api/health\n{}", lab.logs());
    assert_eq!(
        curl_status(&lab, "http://10.99.0.1:3000/api/machines"),
        "401"
    );
    let script = curl_body(&lab, &format!("http://10.99.0.1:8080/boot/{CLIENT_MAC}"));
    assert!(script.starts_with("#!ipxe"), "ipxed /boot: {script}");
    assert_eq!(
        curl_status(&lab, "http://10.99.0.1:8080/ipxe/undionly.kpxe"),
        "200"
    );
    let tftp = lab.dir().join("tftp.out");
    let out = lab
        .command("curl")
        .args(["-s", "--max-time", "20", "-o"])
        .arg(&tftp)
        .arg("tftp://10.99.0.1/undionly.kpxe")
        .output()
        .unwrap();
    assert!(out.status.success(), "curl tftp: {out:?}\n{}", lab.logs());
    assert_eq!(
        std::fs::read(&tftp).unwrap(),
        std::fs::read("/usr/lib/ipxe/undionly.kpxe").unwrap()
    );
    let out = Command::new("ip")
        .args(["netns", "exec", &client, "busybox", "udhcpc", "-i", "eth0"])
        .args(["-n", "-q", "-f", "-t", "5", "-T", "2", "-s", "/bin/true"])
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("obtained"), "udhcpc: {said}\n{}", lab.logs());

    // Each daemon's own answer: /metrics in a format promtool accepts, anything else 404.
    for (daemon, port) in PORTS {
        let url = format!("http://127.0.0.1:{port}/metrics");
        let deadline = Instant::now() + Duration::from_secs(15);
        let text = loop {
            let out = lab
                .command("curl")
                .args(["-s", "--max-time", "5", "-f", &url])
                .output()
                .unwrap();
            if out.status.success() {
                break String::from_utf8(out.stdout).unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "{daemon}: no metrics at {url}\n{}",
                lab.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        assert!(
            text.contains(&format!("dragonfly_build_info{{daemon=\"{daemon}\"")),
            "{daemon}: {text}"
        );
        assert!(
            text.contains("dragonfly_bus_events_dropped_total"),
            "{text}"
        );
        // A family without a series is not written: bmcd has driven no BMC in this lab.
        if daemon != "bmcd" {
            assert!(
                text.contains(&format!("dragonfly_{daemon}_")),
                "{daemon}: none of its own metrics\n{text}"
            );
        }
        let file = lab.dir().join(format!("{daemon}.metrics"));
        std::fs::write(&file, &text).unwrap();
        let out = Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(std::fs::File::open(&file).unwrap())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics for {daemon}: {}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("{daemon}: {} lines, promtool: ok", text.lines().count());
        // What Prometheus asks for: OpenMetrics.
        let out = lab
            .command("curl")
            .args(["-s", "--max-time", "5", "-f", "-H"])
            .arg("Accept: application/openmetrics-text;version=1.0.0")
            .arg(&url)
            .output()
            .unwrap();
        let openmetrics = String::from_utf8_lossy(&out.stdout);
        assert!(openmetrics.ends_with("# EOF\n"), "{daemon}: {openmetrics}");
        assert_eq!(
            curl_status(&lab, &format!("http://127.0.0.1:{port}/")),
            "404",
            "{daemon} /"
        );
    }

    // Prometheus, inside the namespace (where the daemons' loopback is), on a free port.
    let port = lab.in_namespace(|| {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap()
    });
    let targets: Vec<String> = PORTS
        .iter()
        .map(|(_, p)| format!("'127.0.0.1:{p}'"))
        .collect();
    let config = lab.write_file(
        "prometheus.yml",
        &format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: dragonfly\n    static_configs:\n      \
             - targets: [{}]\n",
            targets.join(", ")
        ),
    );
    let mut cmd = lab.command(&prometheus);
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            lab.dir().join("prometheus").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"));
    lab.spawn("prometheus", cmd);
    let api = format!("http://127.0.0.1:{port}/api/v1");

    let up = wait_for(&lab, "every target up", || {
        let targets = get_json(&lab, &format!("{api}/targets"), &[])?;
        let active = targets["data"]["activeTargets"].as_array()?.clone();
        let up = active.iter().filter(|t| t["health"] == "up").count();
        (active.len() == PORTS.len() && up == PORTS.len()).then_some(up)
    });
    println!("prometheus: {up} targets up");

    for (query, what) in [
        (
            "sum(dragonfly_apid_http_requests_total{route=\"/api/health\",status=\"200\"})",
            "apid: GET /api/health",
        ),
        (
            "sum(dragonfly_apid_http_requests_total{status=\"401\"})",
            "apid: refused requests",
        ),
        (
            "sum(dragonfly_apid_http_request_duration_seconds_count)",
            "apid: latency observations",
        ),
        (
            "sum(dragonfly_ipxed_boot_decisions_total{fate=\"discovery\"})",
            "ipxed: discovery decisions",
        ),
        ("sum(dragonfly_ipxed_file_bytes_total)", "ipxed: file bytes"),
        (
            "sum(dragonfly_tftpd_transfers_total{outcome=\"complete\"})",
            "tftpd: complete transfers",
        ),
        ("sum(dragonfly_tftpd_bytes_sent_total)", "tftpd: bytes sent"),
        (
            "sum(dragonfly_dhcpd_leases_granted_total)",
            "dhcpd: leases granted",
        ),
        (
            "sum(dragonfly_bus_events_published_total{instance=\"127.0.0.1:9641\"})",
            "dhcpd: events published",
        ),
        ("count(dragonfly_build_info)", "build info, one per daemon"),
        (
            "count(dragonfly_workflowd_workflows)",
            "workflowd: the workflows-by-state gauge",
        ),
        ("count(process_start_time_seconds)", "start times"),
    ] {
        let value = wait_for(&lab, what, || {
            let answer = get_json(&lab, &format!("{api}/query"), &[("query", query)])?;
            let value: f64 = answer["data"]["result"][0]["value"][1]
                .as_str()?
                .parse()
                .ok()?;
            (value > 0.0).then_some(value)
        });
        println!("{what}: {query} = {value}");
    }
    let value = wait_for(&lab, "six build infos", || {
        let answer = get_json(
            &lab,
            &format!("{api}/query"),
            &[("query", "count(dragonfly_build_info)")],
        )?;
        let value: f64 = answer["data"]["result"][0]["value"][1]
            .as_str()?
            .parse()
            .ok()?;
        (value == 6.0).then_some(value)
    });
    assert_eq!(value, 6.0);
}

/// The HTTP status curl got from `url`, inside the lab's namespace.
fn curl_status(lab: &Lab, url: &str) -> String {
    let out = lab
        .command("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
            url,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The body curl got from `url`, inside the lab's namespace.
fn curl_body(lab: &Lab, url: &str) -> String {
    let out = lab
        .command("curl")
        .args(["-s", "--max-time", "10", url])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `url` (with `params` URL-encoded as a GET query) as JSON, or `None`.
fn get_json(lab: &Lab, url: &str, params: &[(&str, &str)]) -> Option<Value> {
    let mut cmd = lab.command("curl");
    cmd.args(["-s", "-f", "--max-time", "5", "-G", url]);
    for (k, v) in params {
        cmd.arg("--data-urlencode").arg(format!("{k}={v}"));
    }
    let out = cmd.output().ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Polls `check` every 500 ms for up to 30 s; panics with the lab's logs when it never holds.
fn wait_for<T>(lab: &Lab, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "prometheus: {what} not seen within 30 s\n{}",
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}
