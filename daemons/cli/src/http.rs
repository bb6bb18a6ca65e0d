//! HTTP/1.1 to apid, one connection per request, over TCP or TLS (rustls with ring).
//!
//! Why not reqwest (the tests' client): its rustls backend without aws-lc-rs
//! (`rustls-no-provider`) is a feature that cargo unifies across the workspace, and it makes
//! every other `reqwest::Client::new()` in the workspace's tests panic for want of a
//! process-wide crypto provider (docs/dependencies.md, reqwest). Owning the rustls
//! configuration keeps the client on ring like every TLS connection of the project, trusting
//! the host's CAs plus the operator's `--ca-file`. The shape is the Redfish driver's
//! (`dragonfly-bmc`), built from the same crates: hyper's client connection, tokio-rustls,
//! rustls-native-certs.
//!
//! A command makes a handful of requests: a fresh connection each costs nothing that matters
//! and keeps the client stateless. Redirects are not followed (a token must never be sent to
//! a second address).

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::header::{CONNECTION, HOST, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::error::CliError;

/// The largest answer read whole: a list of thousands of machines is a few MiB.
const MAX_ANSWER_BYTES: usize = 64 << 20;

/// One apid: where it is and how to speak to it.
#[derive(Clone)]
pub struct Endpoint {
    base: String,
    host: String,
    port: u16,
    authority: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("base", &self.base)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// An answer whose body is still to be read (the event stream).
#[derive(Debug)]
pub struct Streaming {
    pub status: StatusCode,
    pub headers: HeaderMap,
    body: Incoming,
}

impl Streaming {
    /// The next piece of the body; `None` at its end.
    ///
    /// # Errors
    /// When the connection broke.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, hyper::Error> {
        loop {
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(e),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }

    /// The whole rest of the body, up to the usual limit.
    ///
    /// # Errors
    /// When the connection broke or the body is too large.
    pub async fn bytes(self) -> Result<Bytes, String> {
        Limited::new(self.body, MAX_ANSWER_BYTES)
            .collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(|e| e.to_string())
    }
}

impl Endpoint {
    /// `base` is `http(s)://host[:port]` (as [`crate::credentials::normalize_url`] leaves it).
    ///
    /// # Errors
    /// [`CliError::Usage`] for a host TLS cannot name or an unusable CA file, [`CliError::Io`]
    /// when the CA file cannot be read.
    pub fn new(base: &str, ca_file: Option<&Path>) -> Result<Self, CliError> {
        let bad = |why: String| CliError::Usage(format!("apid URL {base:?}: {why}"));
        let (https, authority) = match base.split_once("://") {
            Some(("https", a)) => (true, a),
            Some(("http", a)) => (false, a),
            _ => return Err(bad("must start with http:// or https://".into())),
        };
        let default_port = if https { 443 } else { 80 };
        let (host, port) = split_authority(authority, default_port)
            .ok_or_else(|| bad("not scheme://host[:port]".into()))?;
        let tls = if https {
            let name = match host.parse::<IpAddr>() {
                Ok(ip) => ServerName::IpAddress(ip.into()),
                Err(_) => ServerName::try_from(host.clone())
                    .map_err(|e| bad(format!("the host is not a valid TLS server name ({e})")))?,
            };
            let config = client_config(ca_file)?;
            Some((TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        Ok(Self {
            base: base.to_owned(),
            host,
            port,
            authority: authority.to_owned(),
            tls,
        })
    }

    /// `scheme://host[:port]`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends one request on a new connection; the answer with its body unread. Connecting
    /// and the answer's head must come within `timeout`.
    ///
    /// # Errors
    /// [`CliError::Unreachable`] when there is no answer.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Streaming, CliError> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, &self.authority)
            .header(CONNECTION, "close");
        for (k, v) in headers {
            request = request.header(k, v);
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| CliError::Usage(format!("request for {path}: {e}")))?;
        tokio::time::timeout(timeout, self.exchange(request))
            .await
            .map_err(|_| self.unreachable(format!("no answer within {}s", timeout.as_secs())))?
    }

    async fn exchange(&self, request: Request<Full<Bytes>>) -> Result<Streaming, CliError> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| self.unreachable(format!("connecting: {e}")))?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => self.over(tcp, request).await,
            Some((connector, name)) => {
                let tls = Box::pin(connector.connect(name.clone(), tcp))
                    .await
                    .map_err(|e| self.unreachable(format!("TLS: {}", dragonfly_core::Chain(&e))))?;
                self.over(tls, request).await
            }
        }
    }

    async fn over<S>(&self, stream: S, request: Request<Full<Bytes>>) -> Result<Streaming, CliError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.unreachable(dragonfly_core::Chain(&e).to_string()))?;
        // The connection is driven beside the caller, for as long as the body is read.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| self.unreachable(dragonfly_core::Chain(&e).to_string()))?;
        let (parts, body) = response.into_parts();
        Ok(Streaming {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    fn unreachable(&self, detail: String) -> CliError {
        CliError::Unreachable {
            url: self.base.clone(),
            detail,
        }
    }
}

/// `host[:port]` or `[v6][:port]`.
fn split_authority(authority: &str, default_port: u16) -> Option<(String, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return Some((host.to_owned(), port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Some((h.to_owned(), p.parse().ok()?)),
        Some(_) => None,
        None => Some((authority.to_owned(), default_port)),
    }
    .filter(|(h, _)| !h.is_empty())
}

/// rustls with ring, trusting the host's CAs and the certificates of `ca_file`.
fn client_config(ca_file: Option<&Path>) -> Result<ClientConfig, CliError> {
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(found.certs);
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|source| CliError::Io {
            what: "reading the CA file",
            path: path.to_owned(),
            source,
        })?;
        let mut added = 0;
        for (i, cert) in CertificateDer::pem_slice_iter(&pem).enumerate() {
            let cert = cert.map_err(|e| {
                CliError::Usage(format!(
                    "{}: certificate {}: not PEM ({e})",
                    path.display(),
                    i + 1
                ))
            })?;
            roots.add(cert).map_err(|e| {
                CliError::Usage(format!(
                    "{}: certificate {}: not a usable CA certificate ({e})",
                    path.display(),
                    i + 1
                ))
            })?;
            added += 1;
        }
        if added == 0 {
            return Err(CliError::Usage(format!(
                "{}: no certificate in it (expected PEM, -----BEGIN CERTIFICATE-----)",
                path.display()
            )));
        }
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| CliError::Usage(format!("TLS set-up: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities() {
        assert_eq!(split_authority("h:3000", 80), Some(("h".into(), 3000)));
        assert_eq!(split_authority("h", 443), Some(("h".into(), 443)));
        assert_eq!(
            split_authority("[::1]:3000", 80),
            Some(("::1".into(), 3000))
        );
        assert_eq!(split_authority("[::1]", 80), Some(("::1".into(), 80)));
        for bad in ["", ":80", "h:x", "::1", "[::1]x", "h:99999"] {
            assert_eq!(split_authority(bad, 80), None, "{bad}");
        }
    }

    #[test]
    fn endpoints() {
        let e = Endpoint::new("https://dragonfly.example:3000", None).unwrap();
        assert!(e.tls.is_some());
        assert_eq!((e.host.as_str(), e.port), ("dragonfly.example", 3000));
        let e = Endpoint::new("http://10.99.0.1:3000", None).unwrap();
        assert!(e.tls.is_none());
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate").unwrap();
        let err = Endpoint::new("https://h:1", Some(&ca)).unwrap_err();
        assert!(err.to_string().contains("no certificate"), "{err}");
    }
}
