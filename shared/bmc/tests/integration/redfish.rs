//! The Redfish driver against sushy-emulator, cross-checked with plain GETs of the system.

use std::time::{Duration, Instant};

use dragonfly_bmc::redfish::{RedfishConfig, RedfishDriver};
use dragonfly_bmc::{
    BmcError, BootDevice, BootMode, BootPersistence, BootTarget, Password, PowerAction,
    PowerDriver, PowerState,
};
use dragonfly_testkit::free_port;

use crate::sushy::{PASSWORD, SYSTEM_UUID, Sushy, SushyExt as _, USER};

/// Runs one driver call, returning its result and how long it took.
async fn timed<T>(f: impl std::future::Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let out = f.await;
    (out, started.elapsed())
}

/// The emulated system's `PowerState`, read without the driver.
async fn power_state(sushy: &Sushy) -> String {
    let system = sushy
        .get(&format!("/redfish/v1/Systems/{SYSTEM_UUID}"))
        .await;
    system["PowerState"].as_str().unwrap().to_owned()
}

/// Waits (the fake driver takes 1–11 s) until the system reads `want` without the driver.
async fn settles_to(sushy: &Sushy, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let state = power_state(sushy).await;
        if state == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "power state stayed {state}, not {want}: {}",
            sushy.output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `work` while reading the system's state (without the driver) every 100 ms; returns
/// its output and every state read, in order, repeats dropped.
async fn watching<T>(
    sushy: &Sushy,
    work: impl std::future::Future<Output = T>,
) -> (T, Vec<String>) {
    let mut seen: Vec<String> = Vec::new();
    let mut work = std::pin::pin!(work);
    loop {
        let state = power_state(sushy).await;
        if seen.last() != Some(&state) {
            seen.push(state);
        }
        tokio::select! {
            out = &mut work => return (out, seen),
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

#[tokio::test]
async fn power_operations_change_the_emulated_system() {
    let Some(sushy) = Sushy::start(1).await else {
        return;
    };
    let driver = RedfishDriver::new(sushy.config()).unwrap();
    let mut times = Vec::new();

    // The first call also finds the only system.
    let (state, t) = timed(driver.status()).await;
    times.push(("status (with discovery)", t));
    assert_eq!(state.unwrap(), PowerState::Off, "{}", sushy.output());
    let (state, t) = timed(driver.status()).await;
    times.push(("status", t));
    assert_eq!(state.unwrap(), PowerState::Off);

    let (r, t) = timed(driver.power(PowerAction::On)).await;
    times.push(("on", t));
    r.unwrap();
    settles_to(&sushy, "On").await;
    assert_eq!(driver.status().await.unwrap(), PowerState::On);

    let (r, t) = timed(driver.power(PowerAction::OffHard)).await;
    times.push(("off (hard)", t));
    r.unwrap();
    settles_to(&sushy, "Off").await;
    assert_eq!(driver.status().await.unwrap(), PowerState::Off);

    // sushy-tools lists no PowerCycle: the driver powers off, waits for Off, powers on.
    driver.power(PowerAction::On).await.unwrap();
    settles_to(&sushy, "On").await;
    let logged_before = sushy.output().lines().count();
    let ((r, t), seen) = watching(&sushy, timed(driver.power(PowerAction::Cycle))).await;
    times.push(("cycle (off, wait, on)", t));
    r.unwrap();
    settles_to(&sushy, "On").await;
    // The Off between the two resets can be shorter than the watcher's polling (the driver
    // sends On as soon as it reads Off), so the proof is the emulator's request log: two
    // resets (ForceOff, On) with the driver's reads of the system between them.
    let log = sushy.output();
    let during: Vec<&str> = log
        .lines()
        .skip(logged_before)
        .filter(|l| l.contains("\"POST ") || l.contains("\"GET "))
        .collect();
    let resets: Vec<usize> = during
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("\"POST ") && l.contains("ComputerSystem.Reset"))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(resets.len(), 2, "two resets in the cycle: {during:#?}");
    assert!(
        during[resets[0] + 1..resets[1]]
            .iter()
            .any(|l| l.contains("\"GET ")),
        "no read of the system between ForceOff and On: {during:#?}"
    );
    println!("cycle: states seen by the watcher {seen:?}");

    // ForceRestart: the fake system goes Off at once and comes back On by itself, after 0 to
    // 11 s (sushy-tools rounds its "apply time" down to a whole second): the read right after
    // is usually Off, but not always, so the emulator's log is the proof that it was asked.
    let logged_before = sushy.output().lines().count();
    let (r, t) = timed(driver.power(PowerAction::Reset)).await;
    times.push(("reset", t));
    r.unwrap();
    let right_after = power_state(&sushy).await;
    let log = sushy.output();
    assert!(
        log.lines()
            .skip(logged_before)
            .any(|l| l.contains("\"POST ") && l.contains("ComputerSystem.Reset")),
        "no reset reached the emulator: {log}"
    );
    println!("reset: the state read right after was {right_after}");
    settles_to(&sushy, "On").await;

    let (r, t) = timed(driver.power(PowerAction::OffSoft)).await;
    times.push(("off (soft)", t));
    r.unwrap();
    settles_to(&sushy, "Off").await;

    for (op, t) in times {
        eprintln!("redfish against sushy-emulator: {op}: {} ms", t.as_millis());
    }
}

#[tokio::test]
async fn boot_override_reads_back_from_the_system() {
    let Some(sushy) = Sushy::start(1).await else {
        return;
    };
    let mut config = sushy.config();
    // Named rather than discovered: the path as the operator would configure it.
    config.system = Some(SYSTEM_UUID.to_owned());
    let driver = RedfishDriver::new(config).unwrap();
    let system = format!("/redfish/v1/Systems/{SYSTEM_UUID}");

    let (r, t) = timed(driver.set_boot(BootTarget {
        device: BootDevice::Pxe,
        persistence: BootPersistence::Once,
        mode: BootMode::Uefi,
    }))
    .await;
    r.unwrap();
    eprintln!(
        "redfish against sushy-emulator: set boot: {} ms",
        t.as_millis()
    );
    let boot = &sushy.get(&system).await["Boot"];
    assert_eq!(boot["BootSourceOverrideTarget"], "Pxe", "{boot}");
    assert_eq!(boot["BootSourceOverrideMode"], "UEFI", "{boot}");
    // sushy-tools keeps no BootSourceOverrideEnabled (it always reads "Continuous"), so
    // Once is proven by the unit test of the request body only.

    driver
        .set_boot(BootTarget {
            device: BootDevice::Disk,
            persistence: BootPersistence::Persistent,
            mode: BootMode::Legacy,
        })
        .await
        .unwrap();
    let boot = &sushy.get(&system).await["Boot"];
    assert_eq!(boot["BootSourceOverrideTarget"], "Hdd", "{boot}");
    assert_eq!(boot["BootSourceOverrideMode"], "Legacy", "{boot}");
}

#[tokio::test]
async fn wrong_password_is_refused_credentials() {
    let Some(sushy) = Sushy::start(1).await else {
        return;
    };
    let mut config = sushy.config();
    config.password = Password::new("not-the-password");
    let (r, t) = timed(RedfishDriver::new(config).unwrap().status()).await;
    match r {
        Err(BmcError::AuthRefused { detail }) => {
            assert!(detail.contains("401"), "{detail}");
            assert!(!detail.contains("not-the-password"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    assert!(t < Duration::from_secs(5), "took {t:?}");

    let mut config = sushy.config();
    config.username = "nobody".to_owned();
    let r = RedfishDriver::new(config)
        .unwrap()
        .power(PowerAction::On)
        .await;
    assert!(matches!(r, Err(BmcError::AuthRefused { .. })), "{r:?}");
    // Nothing was switched on by the refused request.
    assert_eq!(power_state(&sushy).await, "Off");
    assert_eq!(
        RedfishDriver::new(sushy.config())
            .unwrap()
            .status()
            .await
            .unwrap(),
        PowerState::Off
    );
}

#[tokio::test]
async fn several_systems_must_be_named() {
    let Some(sushy) = Sushy::start(2).await else {
        return;
    };
    match RedfishDriver::new(sushy.config()).unwrap().status().await {
        Err(BmcError::NoSingleSystem { members }) => {
            assert_eq!(members.len(), 2, "{members:?}");
            assert!(members.contains(&format!("/redfish/v1/Systems/{SYSTEM_UUID}")));
        }
        other => panic!("{other:?}"),
    }
    let mut config = sushy.config();
    config.system = Some(format!("/redfish/v1/Systems/{SYSTEM_UUID}"));
    assert_eq!(
        RedfishDriver::new(config).unwrap().status().await.unwrap(),
        PowerState::Off
    );
}

#[tokio::test]
async fn the_bmcs_error_message_is_passed_on() {
    let Some(sushy) = Sushy::start(1).await else {
        return;
    };
    let mut config = sushy.config();
    config.system = Some("no-such-system".to_owned());
    match RedfishDriver::new(config).unwrap().status().await {
        Err(BmcError::Rejected { message }) => {
            assert!(message.contains("HTTP 404"), "{message}");
            assert!(message.contains("no-such-system"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn nothing_listening_is_unreachable_at_once() {
    let mut config = RedfishConfig::new(
        format!("http://127.0.0.1:{}", free_port()),
        USER,
        Password::new(PASSWORD),
    );
    config.timeout = Duration::from_secs(20);
    let (r, t) = timed(RedfishDriver::new(config).unwrap().power(PowerAction::On)).await;
    assert!(matches!(r, Err(BmcError::Unreachable { .. })), "{r:?}");
    assert!(t < Duration::from_secs(2), "took {t:?}");
    eprintln!(
        "redfish: nothing listening, unreachable after {} ms",
        t.as_millis()
    );
}

#[tokio::test]
async fn the_timeout_bounds_a_bmc_that_never_answers() {
    // Accepts connections (the kernel does, from the backlog) and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = RedfishConfig::new(
        format!("http://{}", listener.local_addr().unwrap()),
        USER,
        Password::new(PASSWORD),
    );
    config.timeout = Duration::from_millis(1500);
    let (r, t) = timed(RedfishDriver::new(config).unwrap().status()).await;
    assert!(
        matches!(r, Err(BmcError::TimedOut { after }) if after == Duration::from_millis(1500)),
        "{r:?}"
    );
    assert!(
        t >= Duration::from_millis(1500) && t < Duration::from_secs(5),
        "took {t:?}"
    );
}
