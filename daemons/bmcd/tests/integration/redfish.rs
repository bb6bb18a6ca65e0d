//! bmcd driving sushy-emulator (Redfish, fake systems driver): boot override and power, read
//! back with plain GETs.

use std::time::Duration;

use dragonfly_bmc::redfish::{certificate_fingerprint, fingerprint_hex};
use dragonfly_bus::power::{PowerFailure, PowerOp};
use dragonfly_store::bmc::PowerState;
use dragonfly_testkit::sushy::{PASSWORD, SYSTEM_UUID, Sushy, USER};

use crate::fixture::{Fixture, redfish};

/// GET a resource of the emulator with curl (Debian's), the cross-check.
fn get(sushy: &Sushy, path: &str) -> serde_json::Value {
    // `-k`: the cross-check reads the emulator whatever its certificate; bmcd's trust is
    // what is under test.
    let out = std::process::Command::new("curl")
        .args([
            "-skf",
            "-u",
            &format!("{USER}:{PASSWORD}"),
            &sushy.url(path),
        ])
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

#[tokio::test]
async fn https_with_a_pinned_certificate_works_and_an_unpinned_one_is_a_condition() {
    let Some(fx) = Fixture::new("poll_interval = \"1s\"\npoll_jitter_percent = 0").await else {
        return;
    };
    // A BMC's self-signed factory certificate.
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["bmc-factory-name".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let Some(sushy) = Sushy::start_tls(1, &cert.pem(), &key.serialize_pem()).await else {
        return;
    };
    let _bmcd = fx.start().await;
    let pinned = fx.machine(8).await;
    let mut spec = redfish(&sushy.endpoint(), USER, None);
    spec.tls_fingerprint = Some(fingerprint_hex(&certificate_fingerprint(cert.der())));
    fx.set_bmc(pinned.id, spec, PASSWORD).await;
    let r = fx.power(pinned.id, PowerOp::Status, false).await;
    assert!(r.ok, "{r:?}");
    assert_eq!(r.power_state.as_deref(), Some("off"), "{r:?}");

    // The same BMC trusted through the host's store: refused, and said so on the machine.
    let unpinned = fx.machine(9).await;
    fx.set_bmc(
        unpinned.id,
        redfish(&sushy.endpoint(), USER, None),
        PASSWORD,
    )
    .await;
    let r = fx.power(unpinned.id, PowerOp::On, false).await;
    assert!(!r.ok, "{r:?}");
    assert_eq!(r.failure, Some(PowerFailure::Untrusted), "{r:?}");
    assert_eq!(r.attempts, 1, "no retry can fix a certificate: {r:?}");
    let b = fx
        .wait_bmc(unpinned.id, "an untrusted condition", |b| {
            b.condition
                .as_deref()
                .is_some_and(|c| c.contains("tlsFingerprint"))
        })
        .await;
    assert!(
        b.condition.as_deref().unwrap().contains("not trusted"),
        "{:?}",
        b.condition
    );
    let path = format!("/redfish/v1/Systems/{SYSTEM_UUID}");
    assert_eq!(get(&sushy, &path)["PowerState"], "Off", "nothing was sent");
    assert!(!fx.log_text().contains(PASSWORD));
}
