//! Nodes of the grid proving themselves to each other, so a node counts the connections
//! another node forwards for its clients in its `[connections] max` only, not in the
//! `per_address` share of the sending node's address (which many clients' requests through
//! one node would exhaust, refusing everybody). The sending node counts each client in its
//! own caps for as long as the forwarded connection lives.
//!
//! A node forwarding a request offers the ALPN protocol [`PEER_ALPN`] beside `http/1.1`, and
//! to such a client hello (only to it: a browser is never asked for a certificate) the
//! receiving node asks for a client certificate. The sender presents its own certificate,
//! the one it registered ([`crate::tls`]); the handshake proves it holds the key; and a
//! connection whose certificate's fingerprint is a registered node's is a peer's
//! ([`vouch`]). Nothing a client merely says (a header) is trusted; the catalog is the root of
//! trust between nodes, as for forwarding itself ([`crate::forward`]).

use crate::conns::Permit;
use crate::Node;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::Acceptor;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// The ALPN protocol a node's client hello offers when it forwards a request.
pub const PEER_ALPN: &[u8] = b"spawngrid-peer/1";

/// Takes any client certificate whose holder proves it has the key; which certificates count
/// is decided after the handshake, against the registry ([`vouch`]).
#[derive(Debug)]
pub struct AnyCert {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl AnyCert {
    /// The verifier, with the node's one crypto provider.
    pub fn new() -> Arc<AnyCert> {
        Arc::new(AnyCert {
            provider: crate::tls::provider(),
        })
    }
}

impl ClientCertVerifier for AnyCert {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
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
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
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

/// The TLS handshake of a connection to the HTTPS API: with `peers` (asking for a client
/// certificate) when the client hello offers [`PEER_ALPN`], else with `plain`.
pub async fn handshake(
    tcp: TcpStream,
    plain: Arc<rustls::ServerConfig>,
    peers: Arc<rustls::ServerConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let start = tokio_rustls::LazyConfigAcceptor::new(Acceptor::default(), tcp).await?;
    let peer = start
        .client_hello()
        .alpn()
        .is_some_and(|mut offered| offered.any(|p| p == PEER_ALPN));
    start.into_stream(if peer { peers } else { plain }).await
}

/// If `tls` presented the certificate of a node registered in the catalog, counts its
/// connection (`permit`) in the node's max only; that node's name.
pub async fn vouch(
    node: &Arc<Node>,
    tls: &TlsStream<TcpStream>,
    permit: &Permit,
) -> Option<String> {
    let cert = tls.get_ref().1.peer_certificates()?.first()?;
    let fingerprint = crate::tls::fingerprint(cert);
    let n = node.clone();
    let nodes = crate::http::blocking(move || Ok(n.cat.nodes()?)).await;
    let name = match nodes {
        Ok(nodes) => {
            nodes
                .into_iter()
                .find(|r| r.info.fingerprint == fingerprint)?
                .info
                .name
        }
        Err(e) => {
            tracing::warn!("a node's connection counted as a client's: {}", e.message);
            return None;
        }
    };
    permit.vouch();
    Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{load_or_create, PinVerifier};
    use axum::body::Body;
    use hyper::client::conn::http1::SendRequest;
    use hyper_util::rt::TokioIo;

    /// A connection to `addr` with TLS configuration `tls` that got an answer to a request (it
    /// stays open, and counted), or `None` when the node closed it (refused).
    async fn open(addr: &str, tls: Arc<rustls::ClientConfig>) -> Option<SendRequest<Body>> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = crate::tls::server_name(addr).unwrap();
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .ok()?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(conn);
        let req = axum::http::Request::get(api::routes::NODES)
            .body(Body::empty())
            .unwrap();
        let resp = sender.send_request(req).await.ok()?;
        assert_eq!(resp.status(), 401);
        Some(sender)
    }

    /// With `per_address = 2`, a node takes more connections than that from the address of
    /// a registered node presenting that node's certificate, while plain clients from the
    /// same address, and a certificate the registry does not name, are still capped.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_registered_nodes_connections_count_in_the_max_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = crate::Config {
            data: dir.path().join("b"),
            name: Some("b".into()),
            ..Default::default()
        };
        config.connections.per_address = 2;
        let b = Arc::new(Node::open(config).unwrap());
        let id = load_or_create(&b.rt.data, &["127.0.0.1".into()]).unwrap();
        let (a, stranger) = (dir.path().join("a"), dir.path().join("stranger"));
        let (a, stranger) = (
            load_or_create(&a, &["127.0.0.1".into()]).unwrap(),
            load_or_create(&stranger, &["127.0.0.1".into()]).unwrap(),
        );
        b.cat
            .register_node(
                &catalog::NodeInfo {
                    name: "a".into(),
                    address: "127.0.0.1:1".into(),
                    ssh_port: 22,
                    fingerprint: a.fingerprint.clone(),
                    capacity_envs: 1,
                    capacity_mem: 1,
                    labels: String::new(),
                },
                b.config.down_after(),
            )
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let tls = (id.config, id.peers);
        tokio::spawn(crate::server::serve(
            b,
            listener,
            tls,
            std::future::pending(),
        ));
        let verifier = PinVerifier::new(Some(id.fingerprint));
        let (peer, plain) = (
            verifier.peer_config(&a.card).unwrap(),
            verifier.client_config().unwrap(),
        );
        let mut held = Vec::new();
        for i in 0..6 {
            let c = open(&addr, peer.clone()).await;
            held.push(c.unwrap_or_else(|| panic!("node a's connection {i} refused")));
        }
        held.push(open(&addr, plain.clone()).await.expect("a client's first"));
        let strangers = verifier.peer_config(&stranger.card).unwrap();
        held.push(open(&addr, strangers.clone()).await.expect("its second"));
        assert!(open(&addr, plain).await.is_none());
        assert!(open(&addr, strangers).await.is_none());
    }
}
