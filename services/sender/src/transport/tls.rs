//! TLS for relay connections: one rustls stack (ring provider), server certificates verified
//! against the webpki roots plus an optional private CA bundle (`PULSE_TLS_CA_FILE`). There is
//! no way to turn verification off.
//!
//! STARTTLS is lettre's (`AsyncSmtpConnection::starttls`, with [`TlsParameters`]); implicit TLS
//! (`smtps://`) is a tokio-rustls handshake made here before lettre reads the greeting, because
//! lettre opens implicit-TLS sockets itself and this transport must own its sockets (see
//! `gate.rs`). Both are built from the same roots.

use std::sync::Arc;

use lettre::transport::smtp::client::{Certificate, CertificateStore, TlsParameters};
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore, pki_types::CertificateDer};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("the CA bundle holds no PEM certificate")]
    EmptyBundle,
    #[error("the CA bundle is not valid PEM: {0}")]
    Pem(String),
    #[error("a certificate of the CA bundle was refused: {0}")]
    Refused(String),
    #[error("TLS setup: {0}")]
    Lettre(String),
}

/// What a relay connection needs to speak TLS.
#[derive(Clone)]
pub struct TlsConfig {
    /// For implicit TLS.
    client: Arc<ClientConfig>,
    /// For STARTTLS, per relay host.
    starttls: TlsParameters,
}

impl TlsConfig {
    /// Roots for `domain`'s relay: the webpki roots, plus the certificates of `ca_pem`.
    pub fn new(domain: &str, ca_pem: Option<&[u8]>) -> Result<Self, TlsSetupError> {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let mut starttls =
            TlsParameters::builder(domain.to_owned()).certificate_store(CertificateStore::Default);
        if let Some(pem) = ca_pem {
            let certs = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| TlsSetupError::Pem(e.to_string()))?;
            if certs.is_empty() {
                return Err(TlsSetupError::EmptyBundle);
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| TlsSetupError::Refused(e.to_string()))?;
            }
            let bundle =
                Certificate::from_pem(pem).map_err(|e| TlsSetupError::Lettre(e.to_string()))?;
            starttls = starttls.add_root_certificate(bundle);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsSetupError::Lettre(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            client: Arc::new(client),
            starttls: starttls
                .build_rustls()
                .map_err(|e| TlsSetupError::Lettre(e.to_string()))?,
        })
    }

    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.client.clone())
    }

    pub fn starttls(&self) -> TlsParameters {
        self.starttls.clone()
    }
}
