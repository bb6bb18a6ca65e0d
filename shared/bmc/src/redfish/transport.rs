//! One HTTP/1.1 exchange per connection, over TCP or TLS, and what the driver trusts as a
//! BMC's certificate.
//!
//! Why not a general HTTP client: a BMC needs a handful of requests per operation, each on a
//! fresh connection (BMCs drop idle connections and limit how many they keep), and the trust
//! decision is per BMC — one machine's self-signed certificate pinned by its fingerprint must
//! not be trusted for another. Owning the `rustls` configuration also keeps the whole
//! workspace on one crypto provider (ring), which a shared client's process-wide default would
//! not.
//!
//! Redirects are not followed: a BMC that redirects (often `http://` to `https://`) gets a
//! clear error naming the status, and the password is never sent to a second address.

use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use http::header::{ACCEPT, AUTHORIZATION, CONNECTION, CONTENT_TYPE, HOST, HeaderValue};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use dragonfly_core::Chain;

use crate::BmcError;

/// The largest answer read from a BMC: a `ComputerSystem` is a few KiB; anything near this is
/// not a Redfish answer.
const MAX_ANSWER_BYTES: usize = 4 << 20;

/// What the driver trusts as a BMC's certificate over `https://`.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum Trust {
    /// The host's trust store (`/etc/ssl/certs`), with the certificate's name checked
    /// against the endpoint's host: for BMCs with certificates from the site's PKI that the
    /// host already trusts.
    #[default]
    System,
    /// Only certificates issued by these CA certificates (PEM), name checked: the site's
    /// own BMC CA, without trusting it for anything else on the host.
    Ca(String),
    /// Exactly the certificate with this SHA-256 fingerprint (of its DER), whatever its
    /// issuer, name or dates: a BMC's self-signed factory certificate, as SSH trusts a host
    /// key. The TLS handshake still proves that the BMC holds that certificate's key.
    Pinned([u8; 32]),
}

impl fmt::Debug for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::System => f.write_str("System"),
            Self::Ca(pem) => write!(f, "Ca({} bytes of PEM)", pem.len()),
            Self::Pinned(sha256) => write!(f, "Pinned({})", fingerprint_hex(sha256)),
        }
    }
}

/// Reads a SHA-256 certificate fingerprint as operators copy it: 64 hex digits, with or
/// without `:` between bytes (`openssl x509 -fingerprint -sha256` prints them with), in
/// either case, optionally after `sha256:` or openssl's `SHA256 Fingerprint=`.
///
/// # Errors
/// A sentence saying what is wrong with it.
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], String> {
    let text = text.trim();
    let lower = text.to_ascii_lowercase();
    let digits = ["sha256 fingerprint=", "sha256:"]
        .iter()
        .find_map(|p| lower.strip_prefix(p))
        .unwrap_or(&lower);
    let digits: String = digits.chars().filter(|&c| c != ':').collect();
    if digits.len() != 64 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(
            "not a SHA-256 fingerprint: 64 hex digits (32 bytes), with or without ':' between \
             bytes, as `openssl x509 -noout -fingerprint -sha256` prints it"
                .into(),
        );
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16)
            .map_err(|_| "not a SHA-256 fingerprint".to_owned())?;
    }
    Ok(out)
}

/// A fingerprint as the store keeps it: 64 lower-case hex digits.
pub fn fingerprint_hex(sha256: &[u8; 32]) -> String {
    crate::hex(sha256)
}

/// The SHA-256 fingerprint of a certificate's DER.
pub fn certificate_fingerprint(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

/// Checks CA certificates in PEM the way the driver will use them; their number.
///
/// # Errors
/// A sentence saying what is wrong: no certificate, a block that does not parse, or a
/// certificate that cannot be a trust anchor.
pub fn check_ca_pem(pem: &str) -> Result<usize, String> {
    ca_roots(pem).map(|roots| roots.len())
}

fn ca_roots(pem: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for (i, cert) in CertificateDer::pem_slice_iter(pem.as_bytes()).enumerate() {
        let cert = cert.map_err(|e| format!("certificate {}: not PEM ({e})", i + 1))?;
        roots
            .add(cert)
            .map_err(|e| format!("certificate {}: not a usable CA certificate ({e})", i + 1))?;
    }
    if roots.is_empty() {
        return Err("no certificate: expected PEM (-----BEGIN CERTIFICATE-----)".into());
    }
    Ok(roots)
}

/// The host's trust store, read once per process.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for e in &found.errors {
                tracing::warn!(error = %e, "reading the host's trusted certificates");
            }
            let mut roots = RootCertStore::empty();
            let (added, ignored) = roots.add_parsable_certificates(found.certs);
            tracing::debug!(added, ignored, "the host's trusted certificates");
            Arc::new(roots)
        })
        .clone()
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS client configuration for one BMC.
fn client_config(trust: &Trust) -> Result<ClientConfig, String> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?;
    let config = match trust {
        Trust::System => builder
            .with_root_certificates(system_roots())
            .with_no_client_auth(),
        Trust::Ca(pem) => builder
            .with_root_certificates(ca_roots(pem).map_err(|e| format!("the BMC's CA: {e}"))?)
            .with_no_client_auth(),
        Trust::Pinned(sha256) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCertificate {
                sha256: *sha256,
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth(),
    };
    Ok(config)
}

/// Trusts one certificate, by fingerprint, and checks the handshake's signatures with it.
#[derive(Debug)]
struct PinnedCertificate {
    sha256: [u8; 32],
    algorithms: WebPkiSupportedAlgorithms,
}

/// The BMC showed another certificate than the pinned one.
#[derive(Debug, thiserror::Error)]
#[error(
    "the certificate's SHA-256 fingerprint is {found}, not the pinned {pinned} (a replaced \
     certificate, or another host answering)"
)]
struct NotThePinnedCertificate {
    found: String,
    pinned: String,
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let found = certificate_fingerprint(end_entity);
        if found == self.sha256 {
            return Ok(ServerCertVerified::assertion());
        }
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            rustls::OtherError(Arc::new(NotThePinnedCertificate {
                found: fingerprint_hex(&found),
                pinned: fingerprint_hex(&self.sha256),
            })),
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Where one BMC is and how to reach it: `http://` or `https://` with its trust.
pub(super) struct Transport {
    /// The host to connect to (an IP address or a name, without brackets).
    host: String,
    port: u16,
    /// `Host:` of every request, and the `scheme://host[:port]` in messages.
    authority: String,
    base: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    /// `Basic …`, marked sensitive.
    authorization: HeaderValue,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transport")
            .field("base", &self.base)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// `endpoint` must be `http(s)://host[:port]`, nothing more (checked by the caller).
    pub(super) fn new(
        url: &super::Endpoint,
        trust: &Trust,
        username: &str,
        password: &str,
    ) -> Result<Self, String> {
        let tls = if url.https {
            let name = match url.host.parse::<IpAddr>() {
                Ok(ip) => ServerName::IpAddress(ip.into()),
                Err(_) => ServerName::try_from(url.host.clone())
                    .map_err(|e| format!("the host is not a valid TLS server name ({e})"))?,
            };
            let config = client_config(trust)?;
            Some((TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        let mut authorization = HeaderValue::from_str(&format!(
            "Basic {}",
            STANDARD.encode(format!("{username}:{password}"))
        ))
        .map_err(|_| "the user name or password cannot go in an HTTP header".to_owned())?;
        authorization.set_sensitive(true);
        Ok(Self {
            host: url.host.clone(),
            port: url.port,
            authority: url.authority.clone(),
            base: url.base.clone(),
            tls,
            authorization,
        })
    }

    /// `scheme://host[:port]`.
    pub(super) fn base(&self) -> &str {
        &self.base
    }

    /// One request on a new connection; the answer's status and body.
    pub(super) async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), BmcError> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, &self.authority)
            .header(AUTHORIZATION, self.authorization.clone())
            .header(ACCEPT, "application/json")
            .header("OData-Version", "4.0")
            .header(CONNECTION, "close");
        if body.is_some() {
            request = request.header(CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| BmcError::Local {
                what: format!("building a request for {path}"),
                source: std::io::Error::other(e),
            })?;
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| BmcError::Unreachable {
                detail: format!("connecting to {}: {e}", self.base),
            })?;
        let _ = tcp.set_nodelay(true);
        // Boxed: a connection's state (TLS's above all) is KiBs, which would otherwise grow
        // every future that awaits a Redfish operation.
        match &self.tls {
            None => Box::pin(over(tcp, request)).await,
            Some((connector, name)) => {
                Box::pin(async {
                    let tls = connector
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(|e| handshake_failed(&self.base, &e))?;
                    over(tls, request).await
                })
                .await
            }
        }
    }
}

/// The request and its answer on one established connection.
async fn over<S>(stream: S, request: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), BmcError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| no_answer(&e))?;
    let exchange = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| no_answer(&e))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| match e.downcast::<hyper::Error>() {
                Ok(e) => no_answer(&e),
                Err(e) => BmcError::UnexpectedOutput {
                    output: format!("the answer was cut off: {e}"),
                },
            })?
            .to_bytes();
        Ok((status, body))
    };
    let mut exchange = std::pin::pin!(exchange);
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        answer = &mut exchange => answer,
        closed = &mut connection => match closed {
            // The BMC closed after answering (`Connection: close`): the answer is complete.
            Ok(()) => exchange.await,
            Err(e) => Err(no_answer(&e)),
        },
    }
}

/// A connection that broke before the whole answer arrived.
fn no_answer(e: &(dyn std::error::Error + 'static)) -> BmcError {
    BmcError::Unreachable {
        detail: Chain(e).to_string(),
    }
}

/// A failed TLS handshake: a certificate the trust refuses is [`BmcError::Untrusted`] (the
/// operator must configure what to trust; sending again will not help); anything else is no
/// answer.
fn handshake_failed(base: &str, e: &std::io::Error) -> BmcError {
    let rustls_error = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
    match rustls_error {
        Some(rustls::Error::InvalidCertificate(why)) => BmcError::Untrusted {
            detail: format!("{base}: {}", certificate_problem(why)),
        },
        _ => BmcError::Unreachable {
            detail: format!("TLS handshake with {base}: {}", Chain(e)),
        },
    }
}

fn certificate_problem(why: &CertificateError) -> String {
    match why {
        CertificateError::UnknownIssuer => {
            "its certificate's issuer is not trusted (a self-signed BMC certificate: set the \
             BMC's tlsFingerprint, or tlsCa to the CA that issued it)"
                .into()
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!(
                "its certificate is not issued for the address configured ({why:?}): use the \
                 name or address it names, or pin it with tlsFingerprint"
            )
        }
        CertificateError::Other(other) => other.to_string(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_read_as_operators_copy_them() {
        let hex = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let bytes = parse_fingerprint(hex).unwrap();
        assert_eq!(fingerprint_hex(&bytes), hex);
        let colons: Vec<String> = bytes.iter().map(|b| format!("{b:02X}")).collect();
        let openssl = format!("SHA256 Fingerprint={}", colons.join(":"));
        assert_eq!(parse_fingerprint(&openssl).unwrap(), bytes);
        assert_eq!(
            parse_fingerprint(&format!("sha256:{hex}\n")).unwrap(),
            bytes
        );
        for bad in [
            "",
            "abc",
            &hex[..62],
            &format!("{hex}00"),
            &hex.replace('9', "g"),
        ] {
            assert!(parse_fingerprint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ca_pem_must_hold_usable_certificates() {
        assert!(check_ca_pem("").unwrap_err().contains("no certificate"));
        assert!(
            check_ca_pem("hello")
                .unwrap_err()
                .contains("no certificate")
        );
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert_eq!(check_ca_pem(&ca.pem()).unwrap(), 1);
        assert_eq!(
            check_ca_pem(&format!("{}{}", ca.pem(), ca.pem())).unwrap(),
            2
        );
        let broken = ca.pem().replace("MII", "XXX");
        assert!(check_ca_pem(&broken).is_err());
    }

    #[test]
    fn trust_debug_shows_no_pem_and_the_fingerprint_in_hex() {
        assert_eq!(
            format!("{:?}", Trust::Ca("x".repeat(10))),
            "Ca(10 bytes of PEM)"
        );
        assert_eq!(
            format!("{:?}", Trust::Pinned([0xab; 32])),
            format!("Pinned({})", "ab".repeat(32))
        );
    }
}
