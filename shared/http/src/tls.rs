//! TLS for a listener: a rustls server configuration built from a PEM certificate chain and
//! key, with ring as the only crypto provider (the workspace links no other; see
//! `dragonfly-bus`). Pure: the caller reads the files (as credentials) and passes the bytes.
//! Errors never carry a key's bytes.

use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A listener's TLS acceptor.
#[derive(Clone)]
pub struct Tls(pub(crate) tokio_rustls::TlsAcceptor);

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls(..)")
    }
}

/// Why the certificate and key do not make a TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate credential is not a PEM certificate chain.
    #[error("the TLS certificate is not a PEM certificate chain")]
    Certificate(#[source] pem::Error),
    /// It holds no certificate at all.
    #[error("the TLS certificate credential holds no PEM certificate")]
    NoCertificate,
    /// The key credential is not a PEM private key (PKCS#8, PKCS#1 or SEC1).
    #[error("the TLS key is not a PEM private key")]
    Key(#[source] pem::Error),
    /// rustls refused the pair (a key that does not match the certificate, say).
    #[error("the TLS certificate and key do not make a server configuration")]
    Config(#[source] rustls::Error),
}

impl Tls {
    /// From a PEM certificate chain (leaf first) and a PEM private key. Offers HTTP/1.1 by
    /// ALPN, TLS 1.2 and 1.3.
    pub fn from_pem(certificate_chain: &[u8], key: &[u8]) -> Result<Self, TlsError> {
        let chain = CertificateDer::pem_slice_iter(certificate_chain)
            .collect::<Result<Vec<_>, _>>()
            .map_err(TlsError::Certificate)?;
        if chain.is_empty() {
            return Err(TlsError::NoCertificate);
        }
        let key = PrivateKeyDer::from_pem_slice(key).map_err(TlsError::Key)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(TlsError::Config)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
    }
}
