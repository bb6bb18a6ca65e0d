//! bmcd's overhead per operation: the same operation on the same emulator, once through
//! bmcd (a NATS request, as apid sends it) and once by the BMC's own client run directly
//! (`ipmitool`, `curl`), alternately, in the same run. Prints medians; the target (< 50 ms
//! beyond the BMC's own answer) is read from the figures, not asserted on time
//! (docs/performance.md).

use std::process::Command;
use std::time::{Duration, Instant};

use dragonfly_bus::power::PowerOp;
use dragonfly_testkit::ipmi_sim::{self, IpmiSim};
use dragonfly_testkit::sushy::{self, Sushy};

use crate::fixture::{Fixture, ipmi, redfish};

const RUNS: usize = 15;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::test]
async fn bmcd_adds_little_to_the_bmcs_own_answer() {
    let Some(fx) = Fixture::new("poll_interval = \"1h\"").await else {
        return;
    };
    let Some(sim) = IpmiSim::start().await else {
        return;
    };
    let Some(sushy) = Sushy::start(1).await else {
        return;
    };
    // The same emulator over https, its certificate from a test CA that bmcd and curl trust.
    let ca = TestCa::new();
    let (cert, key) = ca.issue_for_loopback();
    let Some(sushy_tls) = Sushy::start_tls(1, &cert, &key).await else {
        return;
    };
    let ca_file = fx.cfg.with_file_name("bmc-ca.pem");
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let _bmcd = fx.start().await;
    let a = fx.machine(30).await;
    fx.set_bmc(a.id, ipmi(sim.port, ipmi_sim::USER), ipmi_sim::PASSWORD)
        .await;
    let b = fx.machine(31).await;
    fx.set_bmc(
        b.id,
        redfish(&sushy.endpoint(), sushy::USER, None),
        sushy::PASSWORD,
    )
    .await;
    let c = fx.machine(32).await;
    let mut spec = redfish(&sushy_tls.endpoint(), sushy::USER, None);
    spec.tls_ca = Some(ca.pem.clone());
    fx.set_bmc(c.id, spec, sushy::PASSWORD).await;
    // Warm up (the Redfish driver finds the system on first use).
    for m in [a.id, b.id, c.id] {
        assert!(fx.power(m, PowerOp::Status, false).await.ok);
    }

    let system = format!("/redfish/v1/Systems/{}", sushy::SYSTEM_UUID);
    for (name, machine, op, direct) in [
        (
            "IPMI power status",
            a.id,
            PowerOp::Status,
            Box::new(|| {
                sim.ipmitool(&["chassis", "power", "status"]);
            }) as Box<dyn Fn()>,
        ),
        (
            "IPMI boot device",
            a.id,
            PowerOp::BootPxe,
            Box::new(|| {
                sim.ipmitool(&["chassis", "bootdev", "pxe"]);
            }),
        ),
        (
            "Redfish power status",
            b.id,
            PowerOp::Status,
            Box::new(|| curl(&sushy.url(&system), None)),
        ),
        (
            "Redfish over https (site CA) power status",
            c.id,
            PowerOp::Status,
            Box::new(|| curl_https(&sushy_tls.url(&system), &ca_file)),
        ),
        (
            "Redfish boot override",
            b.id,
            PowerOp::BootPxe,
            Box::new(|| {
                curl(
                    &sushy.url(&system),
                    Some(
                        r#"{"Boot":{"BootSourceOverrideTarget":"Pxe","BootSourceOverrideEnabled":"Once"}}"#,
                    ),
                );
            }),
        ),
    ] {
        let (mut via, mut own) = (Vec::new(), Vec::new());
        for _ in 0..RUNS {
            let t = Instant::now();
            let r = fx.power(machine, op, false).await;
            via.push(t.elapsed());
            assert!(r.ok, "{r:?}");
            let t = Instant::now();
            direct();
            own.push(t.elapsed());
        }
        let (via, own) = (median(via), median(own));
        println!(
            "bmcd overhead: {name}: through bmcd {:.1} ms, the client alone {:.1} ms, \
             difference {:+.1} ms (medians of {RUNS})",
            ms(via),
            ms(own),
            ms(via) - ms(own)
        );
    }
}

/// A test CA and a certificate it issues for 127.0.0.1.
struct TestCa {
    pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    fn new() -> Self {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        // A subject of its own: one equal to the leaf's makes OpenSSL (curl) take the leaf
        // for self-signed.
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "bmcd bench CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            pem,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// (certificate PEM, key PEM) for 127.0.0.1.
    fn issue_for_loopback(&self) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "127.0.0.1");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// `curl` GET over https, trusting `ca` only.
fn curl_https(url: &str, ca: &std::path::Path) {
    let status = Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "--cacert"])
        .arg(ca)
        .arg("-u")
        .arg(format!("{}:{}", sushy::USER, sushy::PASSWORD))
        .arg(url)
        .status()
        .unwrap();
    assert!(status.success(), "curl {url}");
}

/// `curl` GET (or PATCH with `body`) as the emulator's user, checked for success.
fn curl(url: &str, body: Option<&str>) {
    let mut c = Command::new("curl");
    c.args(["-sf", "-o", "/dev/null", "-u"])
        .arg(format!("{}:{}", sushy::USER, sushy::PASSWORD));
    if let Some(body) = body {
        c.args([
            "-X",
            "PATCH",
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
        ]);
    }
    let status = c.arg(url).status().unwrap();
    assert!(status.success(), "curl {url}");
}
