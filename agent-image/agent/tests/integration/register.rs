//! Registration against a real apid: created once, then the same machine; a wrong token is
//! shown and retried, never fatal.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use dragonfly_agent::register::{Timing, register_until_done};
use dragonfly_agent::{AgentConfig, BootParams, Mode, detect, http::Url};
use dragonfly_core::{MacAddr, MachineState};

use crate::common::{Recorder, Server, mint};
use dragonfly_agent::token::{Renewal, Token};

const BOOT_MAC: &str = "52:54:00:df:00:01";

fn fixture() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/qemu-vm"
    ))
}

fn quick() -> Timing {
    Timing {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(100),
        refused: Duration::from_millis(100),
        request_timeout: Duration::from_secs(5),
    }
}

#[test]
fn registers_once_then_finds_the_same_machine() {
    let server = Server::start();
    let mac: MacAddr = BOOT_MAC.parse().unwrap();
    let report = detect::detect(fixture()).report(mac);
    let token = server.token(mac);
    let base = Url::parse(&server.base).unwrap();
    let console = Recorder::default();
    let stop = AtomicBool::new(false);

    let (first, created) =
        register_until_done(&base, &token, &report, &quick(), &console, &stop).unwrap();
    assert!(created, "a new machine");
    assert_eq!(first.state, MachineState::Registered);
    assert_eq!(
        first.hardware, report,
        "apid stored exactly what the agent sent"
    );

    let (again, created) =
        register_until_done(&base, &token, &report, &quick(), &console, &stop).unwrap();
    assert!(!created, "the second registration updates");
    assert_eq!(
        (again.id, again.name.as_str()),
        (first.id, first.name.as_str())
    );
    assert_eq!(server.machine_count(), 1);
}

#[test]
fn a_wrong_token_is_shown_and_retried_until_the_server_is_fixed() {
    let server = Server::start();
    let mac: MacAddr = BOOT_MAC.parse().unwrap();
    let report = detect::detect(fixture()).report(mac);
    let bad = mint(&[0x11; 32], mac);
    let base = Url::parse(&server.base).unwrap();
    let console = Recorder::default();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let h = s.spawn(|| register_until_done(&base, &bad, &report, &quick(), &console, &stop));
        let t0 = Instant::now();
        while console
            .lines()
            .iter()
            .filter(|l| l.contains("HTTP 401"))
            .count()
            < 3
        {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "{:?}",
                console.lines()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
        assert!(h.join().unwrap().is_none(), "stopped, never registered");
    });
    let lines = console.lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("does not accept this machine's boot token")
                && l.contains("will not reboot")),
        "{lines:?}"
    );
    assert_eq!(server.machine_count(), 0);

    // A token for another machine's MAC: 403, named as such.
    let other = server.token("52:54:00:00:00:77".parse().unwrap());
    let r = dragonfly_agent::register::attempt(&base, &other, &report, Duration::from_secs(5));
    assert!(
        matches!(&r, dragonfly_agent::register::Attempt::Refused { status: 403, why } if why.contains("another machine")),
        "{r:?}"
    );
}

#[test]
fn an_unreachable_server_is_retried_with_backoff() {
    // A port nothing listens on: connection refused, transient.
    let port = dragonfly_testkit::free_port();
    let base = Url::parse(&format!("http://127.0.0.1:{port}")).unwrap();
    let mac: MacAddr = BOOT_MAC.parse().unwrap();
    let report = detect::detect(fixture()).report(mac);
    let console = Recorder::default();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let h =
            s.spawn(|| register_until_done(&base, "dfb1.x.y", &report, &quick(), &console, &stop));
        let t0 = Instant::now();
        while console
            .lines()
            .iter()
            .filter(|l| l.contains("cannot register yet"))
            .count()
            < 4
        {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "{:?}",
                console.lines()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::Relaxed);
        assert!(h.join().unwrap().is_none());
    });
    let lines = console.lines();
    assert!(
        lines.iter().any(|l| l.contains("connecting to 127.0.0.1")),
        "{lines:?}"
    );
    assert!(lines.iter().any(|l| l.contains("Attempt 4")), "{lines:?}");
}

#[test]
fn the_whole_agent_registers_and_keeps_a_heartbeat() {
    let server = Server::start();
    let mac: MacAddr = BOOT_MAC.parse().unwrap();
    let params = BootParams {
        url: server.base.clone(),
        mode: Mode::Discovery,
        mac,
        token: server.token(mac),
        workflow: None,
    };
    let cfg = AgentConfig {
        root: fixture().to_owned(),
        configure_network: false,
        timing: quick(),
        heartbeat: Duration::from_millis(100),
        poll: Duration::from_millis(20),
        reboot_when_told: false,
        ..AgentConfig::default()
    };
    let console = Recorder::default();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let h = s.spawn(|| dragonfly_agent::run(&params, &cfg, &console, &stop));
        let t0 = Instant::now();
        // Wait for a few heartbeats (each one a re-registration, updating the same machine).
        let version = || {
            server
                .rt
                .block_on(server.db.machines().list(Default::default(), None, 10))
                .unwrap()
                .items
                .first()
                .map(|m| m.resource_version)
        };
        while version().unwrap_or(0) < 3 {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "{:?}",
                console.lines()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
        h.join().unwrap();
    });
    assert_eq!(server.machine_count(), 1);
    let lines = console.lines().join("\n");
    let name = server
        .rt
        .block_on(server.db.machines().list(Default::default(), None, 10))
        .unwrap()
        .items[0]
        .name
        .clone();
    let want = format!(
        "registered as {name} (Registered, new machine). Waiting for an operator to assign an OS."
    );
    assert!(lines.contains(&want), "{want:?} not in\n{lines}");
    assert!(lines.contains("memory: 1536 MiB"), "{lines}");
    assert_eq!(
        lines.matches("registered as").count(),
        1,
        "said once, not every heartbeat"
    );
}

#[test]
fn an_os_assignment_reaches_the_waiting_agent_within_a_poll() {
    let server = Server::start();
    let mac: MacAddr = BOOT_MAC.parse().unwrap();
    let params = BootParams {
        url: server.base.clone(),
        mode: Mode::Discovery,
        mac,
        token: server.token(mac),
        workflow: None,
    };
    let cfg = AgentConfig {
        root: fixture().to_owned(),
        configure_network: false,
        timing: quick(),
        heartbeat: Duration::from_secs(60),
        poll: Duration::from_millis(50),
        reboot_when_told: false,
        ..AgentConfig::default()
    };
    let console = Recorder::default();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let h = s.spawn(|| dragonfly_agent::run(&params, &cfg, &console, &stop));
        let t0 = Instant::now();
        while !console.lines().iter().any(|l| l.contains("registered as")) {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "{:?}",
                console.lines()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // What an operator's assignment will do once workflows exist: state and workflow.
        server.rt.block_on(async {
            let page = server.db.machines().list(Default::default(), None, 1).await;
            let id = page.unwrap().items[0].id;
            let wf = "0196d6a2-0000-7000-8000-0000000000aa".parse().unwrap();
            dragonfly_store::testing::set_state(
                &server.db,
                id,
                dragonfly_core::MachineState::OsAssigned,
                Some(wf),
            )
            .await
        });
        let assigned = Instant::now();
        while !console.lines().iter().any(|l| l.contains("installing it")) {
            assert!(
                assigned.elapsed() < Duration::from_secs(10),
                "{:?}",
                console.lines()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
        h.join().unwrap();
    });
    let lines = console.lines().join("\n");
    assert!(
        lines.contains("workflow 0196d6a2-0000-7000-8000-0000000000aa"),
        "{lines}"
    );
    assert_eq!(
        lines.matches("waiting for an operator").count(),
        0,
        "said once, at registration:\n{lines}"
    );
    // Everything the console showed also reached apid, in order.
    let machine = server
        .rt
        .block_on(server.db.machines().list(Default::default(), None, 1))
        .unwrap()
        .items[0]
        .id;
    let shipped: Vec<String> = server
        .rt
        .block_on(server.db.console().tail(machine, 10_000))
        .unwrap()
        .into_iter()
        .map(|l| l.line)
        .collect();
    let said = console.lines();
    assert!(shipped.len() + 1 >= said.len(), "{shipped:?}");
    assert_eq!(shipped[..], said[..shipped.len()], "shipped in order");
    assert!(
        shipped.iter().any(|l| l.contains("registered as")),
        "{shipped:?}"
    );
}

#[test]
fn the_token_is_renewed_within_its_boot_and_not_after_it() {
    let server = Server::start();
    let mac: MacAddr = BOOT_MAC.parse().unwrap();
    let base = Url::parse(&server.base).unwrap();
    let console = Recorder::default();
    let first = server.token(mac);
    let token = Token::new(first.clone());
    assert_eq!(
        token.renew_if_due(&base, Duration::from_secs(5), &console),
        Renewal::Renewed
    );
    let renewed = token.get();
    assert_ne!(renewed, first);
    assert!(renewed.starts_with("dfb1."));
    // Not due again until the server's renewAfterSeconds.
    assert_eq!(
        token.renew_if_due(&base, Duration::from_secs(5), &console),
        Renewal::NotDue
    );
    let ask = |t: &str| {
        dragonfly_agent::http::get(
            &base,
            dragonfly_core::agent_api::INSTRUCTIONS_PATH,
            t,
            Duration::from_secs(5),
        )
        .unwrap()
        .status
    };
    assert_eq!(ask(&renewed), 404, "valid (the machine is just unknown)");
    // The machine boots again elsewhere: a new session; this boot's token is over.
    let now = jiff::Timestamp::now();
    server
        .rt
        .block_on(server.db.boot().open_session(
            mac,
            [1; 16],
            now,
            now + jiff::SignedDuration::from_hours(1),
        ))
        .unwrap();
    assert_eq!(ask(&renewed), 401);
    let stale = Token::new(renewed);
    assert_eq!(
        stale.renew_if_due(&base, Duration::from_secs(5), &console),
        Renewal::Refused
    );
    assert!(
        console
            .lines()
            .iter()
            .any(|l| l.contains("cannot be renewed")),
        "{:?}",
        console.lines()
    );
    assert!(
        console.lines().iter().all(|l| !l.contains("dfb1.")),
        "the token is never said"
    );
}
