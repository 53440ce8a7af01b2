//! The node's TLS identity: a self-signed certificate made on first start and kept in
//! `DATA/tls/` (`cert.pem`, and `key.pem` readable by root only). Clients pin its SHA-256
//! fingerprint on first use, like ssh's known_hosts; to replace it, delete `DATA/tls/` and
//! restart (clients then refuse the node until its old pin is removed), or put a CA-signed
//! pair in its place.
//!
//! [`PinVerifier`] is the other side: a client (the CLI, or a node forwarding a request to
//! another node with the fingerprint the registry gives) that trusts one certificate.

use anyhow::{bail, Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The node's certificate and key, ready to serve.
pub struct Identity {
    /// The rustls configuration (HTTP/1.1 over TLS 1.2/1.3, ring crypto).
    pub config: Arc<rustls::ServerConfig>,
    /// The same, asking the client for a certificate: for other nodes ([`crate::peers`]).
    pub peers: Arc<rustls::ServerConfig>,
    /// The certificate and key, which the node presents to the nodes it forwards requests to.
    pub card: Card,
    /// The SHA-256 fingerprint of the leaf certificate ([`api::format_fingerprint`]).
    pub fingerprint: String,
    /// Whether this start generated the certificate.
    pub generated: bool,
}

/// The certificate file under `data`.
pub fn cert_path(data: &Path) -> PathBuf {
    data.join("tls/cert.pem")
}

/// The private key file under `data`.
pub fn key_path(data: &Path) -> PathBuf {
    data.join("tls/key.pem")
}

/// The ring crypto provider (the one provider this project builds).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// SHA-256 fingerprint of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    api::format_fingerprint(ring::digest::digest(&ring::digest::SHA256, der).as_ref())
}

/// Loads `DATA/tls/`, generating a self-signed certificate for `names` (DNS names or IP
/// addresses) first if there is none.
pub fn load_or_create(data: &Path, names: &[String]) -> Result<Identity> {
    let (cert, key) = (cert_path(data), key_path(data));
    let generated = match (cert.exists(), key.exists()) {
        (true, true) => false,
        (false, false) => {
            generate(data, names)?;
            true
        }
        _ => bail!(
            "{} holds only one of cert.pem and key.pem: restore the other, or delete the directory to make a new certificate",
            cert.parent().unwrap_or(data).display()
        ),
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    let leaf = chain
        .first()
        .with_context(|| format!("no certificate in {}", cert.display()))?;
    let fingerprint = fingerprint(leaf);
    let key_der =
        PrivateKeyDer::from_pem_file(&key).with_context(|| format!("reading {}", key.display()))?;
    let card = Card {
        chain,
        key: key_der,
    };
    let serving = |verifier: Option<Arc<dyn ClientCertVerifier>>| {
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let builder = match verifier {
            Some(v) => builder.with_client_cert_verifier(v),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(card.chain.clone(), card.key.clone_key())
            .with_context(|| format!("{} does not fit {}", key.display(), cert.display()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        anyhow::Ok(Arc::new(config))
    };
    Ok(Identity {
        config: serving(None)?,
        peers: serving(Some(crate::peers::AnyCert::new()))?,
        card,
        fingerprint,
        generated,
    })
}

/// A certificate chain and its key, presented as a TLS client's.
#[derive(Debug)]
pub struct Card {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

/// Accepts exactly the pinned certificate (any, when none is pinned) and remembers the one
/// presented; the handshake's signature is still checked against that certificate's key, so
/// only the holder of the node's private key passes.
#[derive(Debug)]
pub struct PinVerifier {
    pinned: Option<String>,
    seen: Mutex<Option<String>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl PinVerifier {
    /// A verifier trusting the certificate with SHA-256 fingerprint `pinned`
    /// ([`fingerprint`]), or any certificate when `None` (trust on first use).
    pub fn new(pinned: Option<String>) -> Arc<PinVerifier> {
        Arc::new(PinVerifier {
            pinned,
            seen: Mutex::new(None),
            provider: provider(),
        })
    }

    /// The fingerprint of the certificate the server presented, once it has.
    pub fn seen(&self) -> Option<String> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A TLS client configuration trusting only what this verifier accepts.
    pub fn client_config(self: &Arc<Self>) -> Result<Arc<rustls::ClientConfig>> {
        Ok(Arc::new(self.builder()?.with_no_client_auth()))
    }

    /// [`PinVerifier::client_config`] for a node forwarding a request: offering
    /// [`crate::peers::PEER_ALPN`] and presenting `card`, its own certificate.
    pub fn peer_config(self: &Arc<Self>, card: &Card) -> Result<Arc<rustls::ClientConfig>> {
        let mut config = self
            .builder()?
            .with_client_auth_cert(card.chain.clone(), card.key.clone_key())
            .context("the node's certificate as a client's")?;
        config.alpn_protocols = vec![crate::peers::PEER_ALPN.to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// A client configuration's builder trusting only what this verifier accepts.
    fn builder(
        self: &Arc<Self>,
    ) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>> {
        Ok(
            rustls::ClientConfig::builder_with_provider(self.provider.clone())
                .with_safe_default_protocol_versions()
                .context("TLS protocol versions")?
                .dangerous()
                .with_custom_certificate_verifier(self.clone()),
        )
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fp = fingerprint(end_entity);
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(fp.clone());
        match &self.pinned {
            Some(p) if *p != fp => Err(rustls::Error::General(
                "certificate differs from the pinned one".into(),
            )),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The host part of `HOST:PORT` (without brackets), as a TLS server name.
pub fn server_name(hostport: &str) -> Result<ServerName<'static>> {
    let h = hostport.rsplit_once(':').map_or(hostport, |(h, _)| h);
    let h = h.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(h.to_string()).map_err(|_| anyhow::anyhow!("bad host name in {hostport}"))
}

/// Makes a self-signed ECDSA P-256 certificate for `names` and writes it (key 0600).
fn generate(data: &Path, names: &[String]) -> Result<()> {
    let dir = data.join("tls");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut params = rcgen::CertificateParams::new(names.to_vec()).context("certificate names")?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!(
            "spawngrid node {}",
            names.first().map_or("", |n| n.as_str())
        ),
    );
    let key = rcgen::KeyPair::generate().context("generating a TLS key")?;
    let cert = params
        .self_signed(&key)
        .context("signing the TLS certificate")?;
    // Key first, so a crash in between leaves no certificate without its key.
    write_new(&key_path(data), key.serialize_pem().as_bytes(), 0o600)?;
    write_new(&cert_path(data), cert.pem().as_bytes(), 0o644)?;
    Ok(())
}

/// Writes `path` whole and synced with `mode` (also used for the SSH host key).
pub(crate) fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    Ok(library::atomic::replace_synced(path, bytes, mode)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generated_once_then_loaded() {
        let dir = tempfile::tempdir().unwrap();
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        let first = load_or_create(dir.path(), &names).unwrap();
        assert!(first.generated);
        assert_eq!(first.fingerprint.len(), 95);
        let mode = std::fs::metadata(key_path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = load_or_create(dir.path(), &names).unwrap();
        assert!(!again.generated);
        assert_eq!(again.fingerprint, first.fingerprint);
        std::fs::remove_file(key_path(dir.path())).unwrap();
        let err = load_or_create(dir.path(), &names)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("only one of"), "{err}");
        std::fs::remove_file(cert_path(dir.path())).unwrap();
        let third = load_or_create(dir.path(), &names).unwrap();
        assert!(third.generated && third.fingerprint != first.fingerprint);
    }
}
