//! The Redfish driver over `https://` against a sushy-emulator serving TLS: each way of
//! trusting a BMC's certificate works when it should and refuses, as `Untrusted` with a reason
//! an operator can act on, when it should not.

use std::time::Duration;

use dragonfly_bmc::redfish::{RedfishConfig, RedfishDriver, Trust, certificate_fingerprint};
use dragonfly_bmc::{BmcError, Password, PowerAction, PowerDriver, PowerState};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};

use crate::sushy::{PASSWORD, Sushy, USER};

/// A CA, as a site's BMC PKI would have.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// A BMC's certificate for 127.0.0.1, issued by `ca`; (certificate PEM, key PEM).
fn issued_by(ca: &Ca) -> (String, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn config(endpoint: String, trust: Trust) -> RedfishConfig {
    let mut config = RedfishConfig::new(endpoint, USER, Password::new(PASSWORD));
    config.trust = trust;
    config.timeout = Duration::from_secs(30);
    config
}

async fn status(endpoint: String, trust: Trust) -> Result<PowerState, BmcError> {
    RedfishDriver::new(config(endpoint, trust))
        .unwrap()
        .status()
        .await
}

fn untrusted(r: Result<PowerState, BmcError>) -> String {
    match r {
        Err(BmcError::Untrusted { detail }) => detail,
        other => panic!("expected an untrusted certificate, got {other:?}"),
    }
}

#[tokio::test]
async fn the_sites_ca_is_trusted_for_its_names_and_nothing_else_is() {
    let site = ca("Dragonfly test BMC CA");
    let (cert, key) = issued_by(&site);
    let Some(sushy) = Sushy::start_tls(1, &cert, &key).await else {
        return;
    };
    let https = sushy.endpoint();
    assert!(https.starts_with("https://127.0.0.1:"), "{https}");

    // The site's CA: the system answers, and a power command reaches it.
    let trusted = Trust::Ca(site.pem.clone());
    assert_eq!(
        status(https.clone(), trusted.clone()).await.unwrap(),
        PowerState::Off
    );
    RedfishDriver::new(config(https.clone(), trusted.clone()))
        .unwrap()
        .power(PowerAction::On)
        .await
        .unwrap();

    // The host's trust store does not know the site's CA.
    let why = untrusted(status(https.clone(), Trust::System).await);
    assert!(why.contains("issuer is not trusted"), "{why}");
    assert!(why.contains("tlsFingerprint"), "{why}");

    // Another CA is not the one that issued it.
    let other = ca("Some other CA");
    let why = untrusted(status(https.clone(), Trust::Ca(other.pem)).await);
    assert!(why.contains("issuer is not trusted"), "{why}");

    // The right CA, but a name the certificate does not carry.
    let by_name = https.replace("127.0.0.1", "localhost");
    let why = untrusted(status(by_name, trusted).await);
    assert!(why.contains("not issued for the address"), "{why}");

    // Plain HTTP to a TLS port: no answer that parses, not a hang.
    let plain = https.replace("https://", "http://");
    let r = status(plain, Trust::System).await;
    assert!(
        matches!(
            r,
            Err(BmcError::Unreachable { .. } | BmcError::Rejected { .. })
        ),
        "{r:?}"
    );
}

#[tokio::test]
async fn a_self_signed_certificate_is_trusted_by_its_pinned_fingerprint_only() {
    // A factory certificate: self-signed, for a name nobody uses.
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["idrac-ABC1234".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let Some(sushy) = Sushy::start_tls(1, &cert.pem(), &key.serialize_pem()).await else {
        return;
    };
    let pin = certificate_fingerprint(cert.der());
    assert_eq!(
        status(sushy.endpoint(), Trust::Pinned(pin)).await.unwrap(),
        PowerState::Off
    );

    let mut wrong = pin;
    wrong[0] ^= 1;
    let why = untrusted(status(sushy.endpoint(), Trust::Pinned(wrong)).await);
    assert!(
        why.contains(&dragonfly_bmc::redfish::fingerprint_hex(&pin))
            && why.contains(&dragonfly_bmc::redfish::fingerprint_hex(&wrong)),
        "names both fingerprints: {why}"
    );

    let why = untrusted(status(sushy.endpoint(), Trust::System).await);
    assert!(why.contains("issuer is not trusted"), "{why}");
    // Nothing in any answer repeats the password.
    assert!(!why.contains(PASSWORD));
}
