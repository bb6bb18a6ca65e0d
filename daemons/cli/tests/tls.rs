//! The real `dragonfly` binary over https: against dragonfly-http's TLS server (apid's
//! serving loop) with a certificate from a test CA, it trusts the server only with
//! `--ca-file`, sends its token, and refuses an unknown certificate with exit 6 and a reason.

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::routing::get;
use dragonfly_http::{HttpConfig, RawHttpConfig, Server, Tls};
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_dragonfly");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_the_sites_ca_and_only_with_it() {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let tls = Tls::from_pem(cert.pem().as_bytes(), key.serialize_pem().as_bytes()).unwrap();

    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let seen_by_route = Arc::clone(&seen);
    let app = axum::Router::new().route(
        "/api/auth/me",
        get(move |headers: axum::http::HeaderMap| {
            let seen = Arc::clone(&seen_by_route);
            async move {
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                seen.lock().unwrap().push(auth);
                axum::Json(serde_json::json!({"username": "ops", "isAdmin": false}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let shutdown = CancellationToken::new();
    let config = HttpConfig::validate(RawHttpConfig::default()).unwrap();
    let server = Server::new("test", app, config, Some(tls));
    let task = tokio::spawn(server.serve(listener, shutdown.clone()));

    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let url = format!("https://localhost:{port}");
    let ca_arg = ca_file.to_str().unwrap().to_owned();
    let home = dir.path().to_owned();
    let (u, h) = (url.clone(), home.clone());
    let (code, stdout, stderr) =
        tokio::task::spawn_blocking(move || whoami(&u, &h, &["--ca-file", &ca_arg]))
            .await
            .unwrap();
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("ops (operator)"), "{stdout}");
    assert_eq!(seen.lock().unwrap().as_slice(), ["Bearer dft_test-token"]);

    // Without the CA: the certificate is refused, nothing is sent.
    let (code, _, stderr) = tokio::task::spawn_blocking(move || whoami(&url, &home, &[]))
        .await
        .unwrap();
    assert_eq!(code, Some(6), "{stderr}");
    assert!(
        stderr.contains("TLS") && stderr.to_lowercase().contains("certificate"),
        "{stderr}"
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "no request without a trusted certificate"
    );

    shutdown.cancel();
    task.await.unwrap().unwrap();
}

/// `dragonfly whoami` against `url` with a token from the environment: (exit code, stdout,
/// stderr).
fn whoami(url: &str, home: &std::path::Path, extra: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .arg("whoami")
        .args(extra)
        .env("DRAGONFLY_URL", url)
        .env("DRAGONFLY_TOKEN", "dft_test-token")
        .env("HOME", home)
        .env_remove("XDG_CONFIG_HOME")
        .env_remove("DRAGONFLY_CA_FILE")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
