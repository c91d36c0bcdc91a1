//! TLS for tests: a CA and a server certificate for 127.0.0.1 and localhost (rcgen), written to
//! a temporary directory, and a TLS-terminating proxy that puts TLS in front of a plain server.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::Context as _;
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};
use tokio::{net::TcpListener, task::JoinHandle};
use uuid::Uuid;

/// A test CA and a certificate it signed for 127.0.0.1 and localhost, as PEM files.
pub struct TestCa {
    pub dir: PathBuf,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn generate() -> anyhow::Result<Self> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Pulse test CA");
        let ca_key = KeyPair::generate()?;
        let ca = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        let dir = std::env::temp_dir().join(format!("pulse-tls-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir)?;
        let this = Self {
            dir,
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        std::fs::write(this.ca_path(), &this.ca_pem)?;
        std::fs::write(this.cert_path(), &this.cert_pem)?;
        std::fs::write(this.key_path(), &this.key_pem)?;
        Ok(this)
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }
    pub fn key_path(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    /// A file path in this CA's directory (removed with it).
    pub fn file(&self, name: impl AsRef<Path>) -> PathBuf {
        self.dir.join(name)
    }

    /// A TLS server configuration presenting this CA's certificate.
    pub fn acceptor(&self) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
        let certs = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .context("certificate PEM")?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).context("key PEM")?;
        let config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(certs, key)?;
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }

    /// Accepts TLS with this CA's certificate on a loopback port and forwards the plaintext to
    /// `upstream`, one TCP connection per client. Returns the port.
    pub async fn proxy(&self, upstream: SocketAddr) -> anyhow::Result<(u16, JoinHandle<()>)> {
        let acceptor = self.acceptor()?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let task = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(socket).await else {
                        return;
                    };
                    let Ok(mut plain) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        Ok((port, task))
    }
}

impl Drop for TestCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
