//! bmcd driving `ipmi_sim` through `ipmitool`: commands, polling, provisioning's power
//! requests, bad credentials, an unreachable BMC, and a kill in the middle of a request.

use std::time::Duration;

use dragonfly_bus::power::{PowerFailure, PowerOp};
use dragonfly_store::bmc::{PowerRequestKind, PowerRequestState, PowerState};
use dragonfly_testkit::ipmi_sim::{IpmiSim, PASSWORD, USER};
use dragonfly_testkit::{TempDir, free_port};

use crate::fixture::{Fixture, in_any_cmdline, ipmi, next_event, provision, succeed, watch};

fn status(sim: &IpmiSim) -> String {
    sim.ipmitool(&["chassis", "power", "status"])
        .trim()
        .to_owned()
}

#[tokio::test]
async fn commands_over_nats_drive_the_chassis_and_polls_follow_it() {
    let Some(fx) = Fixture::new("poll_interval = \"1s\"\npoll_jitter_percent = 0").await else {
        return;
    };
    let Some(sim) = IpmiSim::start().await else {
        return;
    };
    let mut changed = watch(&fx.client, "dragonfly.power.changed").await;
    let _bmcd = fx.start().await;
    let m = fx.machine(1).await;
    fx.set_bmc(m.id, ipmi(sim.port, USER), PASSWORD).await;

    // The poller reads it first: off.
    fx.wait_bmc(m.id, "first poll", |b| {
        b.power_state == Some(PowerState::Off)
    })
    .await;
    let e = next_event(&mut changed, Duration::from_secs(10)).await;
    assert_eq!(e["to"], "off");
    assert_eq!(e["machineId"], m.id.0.to_string());

    let r = fx.power(m.id, PowerOp::On, false).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.attempts, 1);
    assert_eq!(status(&sim), "Chassis Power is on");
    fx.wait_bmc(m.id, "poll after power on", |b| {
        b.power_state == Some(PowerState::On)
    })
    .await;
    let e = next_event(&mut changed, Duration::from_secs(10)).await;
    assert_eq!(
        (e["from"].as_str(), e["to"].as_str()),
        (Some("off"), Some("on"))
    );

    let r = fx.power(m.id, PowerOp::Status, false).await;
    assert_eq!(r.power_state.as_deref(), Some("on"), "{r:?}");

    let r = fx.power(m.id, PowerOp::BootPxe, false).await;
    assert!(r.ok, "{r:?}");
    let flags = sim.ipmitool(&["chassis", "bootparam", "get", "5"]);
    // ipmi_sim keeps only the device selector (not the valid/persistent/EFI bits).
    assert!(
        flags.contains("Boot Device Selector : Force PXE"),
        "{flags}"
    );

    let r = fx.power(m.id, PowerOp::Cycle, false).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.message, "power cycled");

    let r = fx.power(m.id, PowerOp::Off, false).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(status(&sim), "Chassis Power is off");
    // A cycle of an Off machine powers it on.
    let r = fx.power(m.id, PowerOp::Cycle, false).await;
    assert_eq!(r.message, "it was off: powered on", "{r:?}");
    assert_eq!(status(&sim), "Chassis Power is on");

    let r = fx.power(m.id, PowerOp::BootDisk, true).await;
    assert!(r.ok, "{r:?}");
    // ipmi_sim clears the flags' valid bit on a chassis control (so `bootparam get` no
    // longer shows the selector after the cycles above); the chassis program is told the
    // device (ipmi_sim names the selector 0x08, "force boot from default hard drive",
    // `default`).
    let last_boot = sim
        .chassis_log()
        .into_iter()
        .rfind(|l| l.starts_with("set boot"));
    assert_eq!(
        last_boot.as_deref(),
        Some("set boot default"),
        "{:?}",
        sim.chassis_log()
    );

    let log = sim.chassis_log();
    assert!(log.iter().any(|l| l == "set power 1"), "{log:?}");
    assert!(log.iter().any(|l| l == "set power 0"), "{log:?}");
    assert!(
        !fx.log_text().contains(PASSWORD),
        "the password is in bmcd's log"
    );
}

#[tokio::test]
async fn provisioning_sets_network_boot_and_powers_on_then_disk_when_it_succeeds() {
    let Some(fx) = Fixture::new("").await else {
        return;
    };
    let Some(sim) = IpmiSim::start().await else {
        return;
    };
    let _bmcd = fx.start().await;
    let m = fx.machine(2).await;
    fx.set_bmc(m.id, ipmi(sim.port, USER), PASSWORD).await;
    let wf = provision(&fx.store, &m).await;
    let done = wait_request(&fx, m.id, PowerRequestKind::Provision).await;
    assert_eq!(done.state, PowerRequestState::Done, "{done:?}");
    assert_eq!(
        done.result.as_deref(),
        Some("next boot from the network; it was off: powered on")
    );
    assert_eq!(status(&sim), "Chassis Power is on");
    let flags = sim.ipmitool(&["chassis", "bootparam", "get", "5"]);
    // ipmi_sim keeps only the device selector (not the valid/persistent/EFI bits).
    assert!(
        flags.contains("Boot Device Selector : Force PXE"),
        "{flags}"
    );

    succeed(&fx.store, wf).await;
    let done = wait_request(&fx, m.id, PowerRequestKind::Provisioned).await;
    assert_eq!(done.state, PowerRequestState::Done, "{done:?}");
    let flags = sim.ipmitool(&["chassis", "bootparam", "get", "5"]);
    assert!(
        flags.contains("Force Boot from default Hard-Drive"),
        "{flags}"
    );
    let ons = sim
        .chassis_log()
        .iter()
        .filter(|l| *l == "set power 1")
        .count();
    assert_eq!(ons, 1, "powered on once: {:?}", sim.chassis_log());
}

async fn wait_request(
    fx: &Fixture,
    m: dragonfly_core::MachineId,
    kind: PowerRequestKind,
) -> dragonfly_store::bmc::PowerRequest {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let rs = fx.store.db.bmcs().requests_of(m, 10).await.unwrap();
        if let Some(r) = rs.iter().find(|r| {
            r.kind == kind && matches!(r.state, PowerRequestState::Done | PowerRequestState::Failed)
        }) {
            return r.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "request {kind:?} not finished: {rs:#?}\n{}",
            fx.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn bad_credentials_and_an_unreachable_bmc_are_machine_conditions() {
    let Some(fx) = Fixture::new("retries = 1\npoll_interval = \"1h\"").await else {
        return;
    };
    let Some(sim) = IpmiSim::start().await else {
        return;
    };
    let mut conditions = watch(&fx.client, "dragonfly.power.condition").await;
    let _bmcd = fx.start().await;
    let wrong = fx.machine(3).await;
    fx.set_bmc(wrong.id, ipmi(sim.port, USER), "not-the-password")
        .await;
    let r = fx.power(wrong.id, PowerOp::Status, false).await;
    assert_eq!(r.failure, Some(PowerFailure::AuthRefused), "{r:?}");
    assert_eq!(r.attempts, 1, "refused credentials are not retried");
    let b = fx.store.db.bmcs().get(wrong.id).await.unwrap().unwrap();
    assert!(
        b.condition
            .as_deref()
            .is_some_and(|c| c.contains("credentials")),
        "{b:?}"
    );
    let e = next_event(&mut conditions, Duration::from_secs(10)).await;
    assert_eq!(e["machineId"], wrong.id.0.to_string());

    // Nothing listens on this port: no answer, tried twice (retries = 1).
    let gone = fx.machine(4).await;
    fx.set_bmc(gone.id, ipmi(free_port(), USER), PASSWORD).await;
    let r = fx.power(gone.id, PowerOp::On, false).await;
    assert!(
        matches!(
            r.failure,
            Some(PowerFailure::Unreachable | PowerFailure::TimedOut)
        ),
        "{r:?}"
    );
    assert_eq!(r.attempts, 2, "{r:?}");
    assert!(
        fx.store
            .db
            .bmcs()
            .get(gone.id)
            .await
            .unwrap()
            .unwrap()
            .condition
            .is_some()
    );

    // Fixed: the condition clears with the next answer.
    fx.set_bmc(wrong.id, ipmi(sim.port, USER), PASSWORD).await;
    let r = fx.power(wrong.id, PowerOp::Status, false).await;
    assert!(r.ok, "{r:?}");
    assert!(
        fx.store
            .db
            .bmcs()
            .get(wrong.id)
            .await
            .unwrap()
            .unwrap()
            .condition
            .is_none()
    );

    // A command is followed by a read of the state within seconds, not a poll interval (1 h
    // here).
    let r = fx.power(wrong.id, PowerOp::On, false).await;
    assert!(r.ok, "{r:?}");
    fx.wait_bmc(wrong.id, "a read after the command", |b| {
        b.power_state == Some(PowerState::On)
    })
    .await;

    // No machine, no BMC.
    let bare = fx.machine(5).await;
    let r = fx.power(bare.id, PowerOp::On, false).await;
    assert_eq!(r.failure, Some(PowerFailure::NoBmc), "{r:?}");
    assert!(!fx.log_text().contains("not-the-password"));
    assert!(!fx.log_text().contains(PASSWORD));
}

#[tokio::test]
async fn a_bmcd_killed_mid_request_completes_it_once_after_restart() {
    let Some(sim) = IpmiSim::start().await else {
        return;
    };
    // An ipmitool that hangs on the first "power on" while a flag file exists: bmcd is killed
    // while the request is running, before the BMC was told anything.
    let wrapper_dir = TempDir::new().unwrap();
    let flag = wrapper_dir.path().join("hang");
    let wrapper = wrapper_dir.path().join("ipmitool");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ncase \"$*\" in *\"power on\"*) if [ -e {flag} ]; then sleep 300; fi;; esac\n\
             exec {real} \"$@\"\n",
            flag = flag.display(),
            real = sim.ipmitool.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(
        wrapper_dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    std::fs::write(&flag, "").unwrap();
    let Some(fx) = Fixture::new(&format!(
        "ipmitool = {:?}\ncommand_timeout = \"120s\"\npoll_interval = \"1h\"",
        wrapper.display().to_string()
    ))
    .await
    else {
        return;
    };
    // The fixture's default ipmitool line comes first; TOML takes one value per key, so
    // rewrite it.
    let cfg = std::fs::read_to_string(&fx.cfg)
        .unwrap()
        .replace("ipmitool = \"/usr/bin/ipmitool\"\n", "")
        .replace("command_timeout = \"10s\"\n", "");
    std::fs::write(&fx.cfg, cfg).unwrap();

    let mut bmcd = fx.start().await;
    let m = fx.machine(6).await;
    fx.set_bmc(m.id, ipmi(sim.port, USER), PASSWORD).await;
    provision(&fx.store, &m).await;
    // Running, and stuck in "power on".
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !in_any_cmdline(&["power\0on", &format!("-p\0{}\0", sim.port)]) {
        assert!(tokio::time::Instant::now() < deadline, "{}", fx.log_text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !in_any_cmdline(&[PASSWORD]),
        "the password is in a command line"
    );
    bmcd.kill().await.unwrap();
    let _ = std::process::Command::new("pkill")
        .args(["-f", "^sleep 300$"])
        .status();
    let r = &fx.store.db.bmcs().requests_of(m.id, 1).await.unwrap()[0];
    assert_eq!((r.state, r.attempts), (PowerRequestState::Running, 1));
    assert_eq!(status(&sim), "Chassis Power is off");

    std::fs::remove_file(&flag).unwrap();
    let _bmcd = fx.start().await;
    let done = wait_request(&fx, m.id, PowerRequestKind::Provision).await;
    assert_eq!(done.state, PowerRequestState::Done, "{done:?}");
    assert_eq!(done.attempts, 2);
    assert_eq!(status(&sim), "Chassis Power is on");
    let ons = sim
        .chassis_log()
        .iter()
        .filter(|l| *l == "set power 1")
        .count();
    assert_eq!(ons, 1, "powered on exactly once: {:?}", sim.chassis_log());
}

#[tokio::test]
async fn a_bmc_that_hangs_mid_command_times_out_and_says_so() {
    let Some(sim) = IpmiSim::start().await else {
        return;
    };
    // An ipmitool that never answers "power off" (a BMC that hangs mid-command).
    let wrapper_dir = TempDir::new().unwrap();
    let wrapper = wrapper_dir.path().join("ipmitool");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ncase \"$*\" in *\"power off\"*) exec sleep 301;; esac\nexec {} \"$@\"\n",
            sim.ipmitool.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let Some(fx) = Fixture::new("").await else {
        return;
    };
    let cfg = std::fs::read_to_string(&fx.cfg)
        .unwrap()
        .replace(
            "ipmitool = \"/usr/bin/ipmitool\"",
            &format!("ipmitool = {:?}", wrapper.display().to_string()),
        )
        .replace("command_timeout = \"10s\"", "command_timeout = \"2s\"")
        .replace(
            "retry_delay = \"200ms\"",
            "retry_delay = \"100ms\"\nretries = 1",
        );
    std::fs::write(&fx.cfg, cfg).unwrap();
    let _bmcd = fx.start().await;
    let m = fx.machine(8).await;
    fx.set_bmc(m.id, ipmi(sim.port, USER), PASSWORD).await;
    let r = fx.power(m.id, PowerOp::On, false).await;
    assert!(r.ok, "{r:?}");
    let started = std::time::Instant::now();
    let r = fx.power(m.id, PowerOp::Off, false).await;
    let took = started.elapsed();
    assert_eq!(r.failure, Some(PowerFailure::TimedOut), "{r:?}");
    assert_eq!(r.attempts, 2, "{r:?}");
    assert!(r.message.contains("2s"), "{r:?}");
    // Two attempts of 2 s and the delay between: bounded, not the 300 s the BMC would take.
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert!(
        !in_any_cmdline(&["sleep\x00301"]),
        "the hung child was not killed"
    );
    let b = fx.store.db.bmcs().get(m.id).await.unwrap().unwrap();
    assert!(b.condition.is_some(), "{b:?}");
    // The BMC still answers other operations: the machine is still on.
    let r = fx.power(m.id, PowerOp::Status, false).await;
    assert_eq!(r.power_state.as_deref(), Some("on"), "{r:?}");
}

#[tokio::test]
async fn a_machine_that_is_on_is_cycled_only_when_an_installed_os_runs_on_it() {
    let Some(fx) = Fixture::new("").await else {
        return;
    };
    let Some(sim) = IpmiSim::start().await else {
        return;
    };
    let _bmcd = fx.start().await;
    sim.ipmitool(&["chassis", "power", "on"]);
    // Registered and on: it runs the agent, which takes the workflow itself.
    let agent = fx.machine(9).await;
    fx.set_bmc(agent.id, ipmi(sim.port, USER), PASSWORD).await;
    provision(&fx.store, &agent).await;
    let done = wait_request(&fx, agent.id, PowerRequestKind::Provision).await;
    assert_eq!(
        done.result.as_deref(),
        Some("next boot from the network; already on, running the agent: no reboot needed"),
        "{done:?}"
    );
    assert!(
        !sim.chassis_log().iter().any(|l| l == "set power 0"),
        "{:?}",
        sim.chassis_log()
    );
    // Ready and on: an installed OS runs on it, so a re-image cycles it.
    let ready = fx.machine(10).await;
    let ready = fx
        .store
        .set_state(ready.id, dragonfly_core::MachineState::Ready, None)
        .await;
    fx.set_bmc(ready.id, ipmi(sim.port, USER), PASSWORD).await;
    provision(&fx.store, &ready).await;
    let done = wait_request(&fx, ready.id, PowerRequestKind::Provision).await;
    assert_eq!(
        done.result.as_deref(),
        Some("next boot from the network; it was on (an installed OS): power cycled"),
        "{done:?}"
    );
    assert!(
        sim.chassis_log().iter().any(|l| l == "set power 0"),
        "{:?}",
        sim.chassis_log()
    );
}
