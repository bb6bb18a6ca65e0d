//! The IPMI driver against `ipmi_sim`, cross-checked with `ipmitool` itself.

use std::time::{Duration, Instant};

use dragonfly_bmc::ipmi::{IpmiConfig, IpmiDriver};
use dragonfly_bmc::{
    BmcError, BootDevice, BootMode, BootPersistence, BootTarget, Password, PowerAction,
    PowerDriver, PowerState,
};
use dragonfly_testkit::{free_port, require_binary, wait_for};

use crate::sim::{PASSWORD, Sim, SimConfig as _, USER};

/// Runs one driver call, returning its result and how long it took.
async fn timed<T>(f: impl std::future::Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let out = f.await;
    (out, started.elapsed())
}

fn status_by_ipmitool(sim: &Sim) -> String {
    sim.ipmitool(&["chassis", "power", "status"])
        .trim()
        .to_owned()
}

#[tokio::test]
async fn power_operations_change_the_simulated_chassis() {
    let Some(sim) = Sim::start().await else {
        return;
    };
    let driver = IpmiDriver::new(sim.config());
    let mut times = Vec::new();

    let (state, t) = timed(driver.status()).await;
    times.push(("status", t));
    assert_eq!(state.unwrap(), PowerState::Off, "{}", sim.output());
    assert_eq!(status_by_ipmitool(&sim), "Chassis Power is off");

    let (r, t) = timed(driver.power(PowerAction::On)).await;
    times.push(("on", t));
    r.unwrap();
    assert_eq!(status_by_ipmitool(&sim), "Chassis Power is on");
    assert_eq!(driver.status().await.unwrap(), PowerState::On);

    let (r, t) = timed(driver.power(PowerAction::OffHard)).await;
    times.push(("off (hard)", t));
    r.unwrap();
    assert_eq!(status_by_ipmitool(&sim), "Chassis Power is off");
    assert_eq!(driver.status().await.unwrap(), PowerState::Off);

    // Cycle: ipmi_sim powers off at once, then on again after a second.
    driver.power(PowerAction::On).await.unwrap();
    let before = sim.chassis_log().len();
    let (r, t) = timed(driver.power(PowerAction::Cycle)).await;
    times.push(("cycle", t));
    r.unwrap();
    assert!(
        wait_for(Duration::from_secs(15), || sim
            .chassis_log()
            .iter()
            .skip(before)
            .any(|l| l == "set power 1"))
        .await,
        "the cycle never powered back on: {:?}",
        sim.chassis_log()
    );
    let after: Vec<String> = sim.chassis_log().split_off(before);
    let off = after.iter().position(|l| l == "set power 0").unwrap();
    let on = after.iter().position(|l| l == "set power 1").unwrap();
    assert!(off < on, "cycle did not go off then on: {after:?}");
    assert_eq!(driver.status().await.unwrap(), PowerState::On);
    assert_eq!(status_by_ipmitool(&sim), "Chassis Power is on");

    let (r, t) = timed(driver.power(PowerAction::Reset)).await;
    times.push(("reset", t));
    r.unwrap();
    assert!(sim.chassis_log().iter().any(|l| l == "set reset 1"));

    let (r, t) = timed(driver.power(PowerAction::OffSoft)).await;
    times.push(("off (soft)", t));
    r.unwrap();
    assert!(sim.chassis_log().iter().any(|l| l == "set shutdown 1"));
    assert_eq!(driver.status().await.unwrap(), PowerState::Off);
    assert_eq!(status_by_ipmitool(&sim), "Chassis Power is off");

    for (op, t) in times {
        eprintln!("ipmitool against ipmi_sim: {op}: {} ms", t.as_millis());
    }
}

#[tokio::test]
async fn boot_device_reads_back_through_ipmitool() {
    let Some(sim) = Sim::start().await else {
        return;
    };
    let driver = IpmiDriver::new(sim.config());

    let (r, t) = timed(driver.set_boot(BootTarget {
        device: BootDevice::Pxe,
        persistence: BootPersistence::Once,
        mode: BootMode::Uefi,
    }))
    .await;
    r.unwrap();
    eprintln!(
        "ipmitool against ipmi_sim: set boot (2 runs): {} ms",
        t.as_millis()
    );
    let param = sim.ipmitool(&["chassis", "bootparam", "get", "5"]);
    // ipmi_sim keeps only the device selector (not the valid/persistent/EFI bits).
    assert!(
        param.contains("Boot Device Selector : Force PXE"),
        "{param}"
    );
    assert!(sim.chassis_log().iter().any(|l| l == "set boot pxe"));

    driver
        .set_boot(BootTarget {
            device: BootDevice::Disk,
            persistence: BootPersistence::Persistent,
            mode: BootMode::Legacy,
        })
        .await
        .unwrap();
    let param = sim.ipmitool(&["chassis", "bootparam", "get", "5"]);
    assert!(
        param.contains("Boot Device Selector : Force Boot from default Hard-Drive"),
        "{param}"
    );
}

#[tokio::test]
async fn wrong_password_is_refused_credentials() {
    let Some(sim) = Sim::start().await else {
        return;
    };
    let mut config = sim.config();
    config.password = Password::new("not-the-password");
    let (r, t) = timed(IpmiDriver::new(config).status()).await;
    match r {
        Err(BmcError::AuthRefused { detail }) => {
            assert!(detail.contains("RAKP 2 HMAC is invalid"), "{detail}");
            // The error says why, never what the password was.
            assert!(!detail.contains("not-the-password"));
        }
        other => panic!("{other:?}"),
    }
    assert!(t < Duration::from_secs(10), "took {t:?}");

    let mut config = sim.config();
    config.username = "nobody".to_owned();
    assert!(matches!(
        IpmiDriver::new(config).status().await,
        Err(BmcError::AuthRefused { .. })
    ));
    // The right credentials still work after the refusals.
    assert_eq!(
        IpmiDriver::new(sim.config()).status().await.unwrap(),
        PowerState::Off
    );
}

#[tokio::test]
async fn nothing_listening_is_unreachable_before_the_timeout() {
    let Some(ipmitool) = require_binary("ipmitool", "apt-get install ipmitool") else {
        return;
    };
    let mut config = IpmiConfig::new("127.0.0.1", USER, Password::new(PASSWORD));
    config.port = free_port();
    config.binary = ipmitool;
    config.retransmit_secs = 1;
    config.retries = 1;
    config.timeout = Duration::from_secs(20);
    let (r, t) = timed(IpmiDriver::new(config).power(PowerAction::On)).await;
    assert!(matches!(r, Err(BmcError::Unreachable { .. })), "{r:?}");
    assert!(t < Duration::from_secs(20), "took {t:?}");
    eprintln!(
        "ipmitool gave up on a silent port after {} ms",
        t.as_millis()
    );
}

#[tokio::test]
async fn the_timeout_bounds_an_operation_that_gets_no_answer() {
    let Some(ipmitool) = require_binary("ipmitool", "apt-get install ipmitool") else {
        return;
    };
    let mut config = IpmiConfig::new("127.0.0.1", USER, Password::new(PASSWORD));
    config.port = free_port();
    config.binary = ipmitool;
    // ipmitool alone would keep retrying for a minute.
    config.retransmit_secs = 2;
    config.retries = 30;
    config.timeout = Duration::from_millis(1500);
    let (r, t) = timed(IpmiDriver::new(config).status()).await;
    assert!(
        matches!(r, Err(BmcError::TimedOut { after }) if after == Duration::from_millis(1500)),
        "{r:?}"
    );
    assert!(
        t >= Duration::from_millis(1500) && t < Duration::from_secs(5),
        "took {t:?}"
    );
}
