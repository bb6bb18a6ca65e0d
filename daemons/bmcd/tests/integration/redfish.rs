//! bmcd driving sushy-emulator (Redfish, fake systems driver): boot override and power, read
//! back with plain GETs.

use std::time::Duration;

use dragonfly_bus::power::PowerOp;
use dragonfly_store::bmc::PowerState;
use dragonfly_testkit::sushy::{PASSWORD, SYSTEM_UUID, Sushy, USER};

use crate::fixture::{Fixture, redfish};

/// GET a resource of the emulator with curl (Debian's), the cross-check.
fn get(sushy: &Sushy, path: &str) -> serde_json::Value {
    let out = std::process::Command::new("curl")
        .args(["-sf", "-u", &format!("{USER}:{PASSWORD}"), &sushy.url(path)])
        .output()
        .unwrap();
    assert!(out.status.success(), "curl {path}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn boot_override_and_power_on_reach_the_emulated_system() {
    let Some(fx) = Fixture::new("poll_interval = \"1s\"\npoll_jitter_percent = 0").await else {
        return;
    };
    let Some(sushy) = Sushy::start(1).await else {
        return;
    };
    let _bmcd = fx.start().await;
    let m = fx.machine(7).await;
    fx.set_bmc(m.id, redfish(&sushy.endpoint(), USER, None), PASSWORD)
        .await;
    let path = format!("/redfish/v1/Systems/{SYSTEM_UUID}");

    let r = fx.power(m.id, PowerOp::BootPxe, false).await;
    assert!(r.ok, "{r:?}");
    let boot = &get(&sushy, &path)["Boot"];
    assert_eq!(boot["BootSourceOverrideTarget"], "Pxe", "{boot}");
    // (sushy's fake driver keeps the target only: it always shows `Continuous`.)

    let r = fx.power(m.id, PowerOp::On, false).await;
    assert!(r.ok, "{r:?}");
    // The fake driver applies it 1 to 11 s later; bmcd's poll sees it.
    fx.wait_bmc(m.id, "polled on", |b| b.power_state == Some(PowerState::On))
        .await;
    assert_eq!(get(&sushy, &path)["PowerState"], "On");

    let r = fx.power(m.id, PowerOp::BootDisk, true).await;
    assert!(r.ok, "{r:?}");
    let boot = &get(&sushy, &path)["Boot"];
    assert_eq!(boot["BootSourceOverrideTarget"], "Hdd", "{boot}");
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert!(!fx.log_text().contains(PASSWORD));
}
