//! Requests for another node of the grid: the node a client asked sends them on to the node
//! that can answer, so a client talks to any one node and the grid acts as one.
//!
//! - A request on an env route (`/api/envs/{env}/...`) for the user's env that the catalog
//!   says runs on another node that is up is forwarded there ([`env_routes`]); an env of a
//!   down node still gets the route's one line saying so.
//! - A placed spawn is forwarded to the node chosen ([`crate::place`]).
//! - `GET /api/envs` asks every other node the user has envs on ([`list_on`]).
//!
//! Forwarding is HTTPS to the address the node registered, trusting exactly the certificate
//! fingerprint it registered ([`crate::tls::PinVerifier`]): the catalog is the root of trust
//! between nodes (who can write it can mint tokens anyway). The request goes with the user's
//! own token (tokens are grid-wide), so the receiving node authenticates and authorizes it
//! as if the client had come directly; [`FORWARDED`] names the sending node and makes the
//! receiver serve the request itself (never forward it again). Answers are streamed back as
//! they are, errors included; an upgrade (the `cpu` WebSocket, the web terminal) is carried
//! through by copying bytes both ways, the client's connection counted in the caps
//! ([`crate::conns`]) until the copy ends (or both sides are silent, [`crate::idle`]). The
//! sending node presents its own certificate, so the receiver counts the forwarded
//! connection in its node-wide cap only ([`crate::peers`]).

use crate::error::{Error, Kind};
use crate::http::blocking;
use crate::Node;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;

/// The header on a forwarded request: the sending node's name.
pub const FORWARDED: &str = "x-spawngrid-forwarded";

/// How long connecting to another node (TCP and TLS) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long another node's listing of a user's envs may take, connecting included: a node
/// that connects and then says nothing must not hold up a grid-wide `status`.
const LIST_TIMEOUT: Duration = Duration::from_secs(15);

/// Whether a request was forwarded by another node (it is then served here, whatever it asks).
pub fn forwarded(headers: &HeaderMap) -> bool {
    headers.contains_key(FORWARDED)
}

/// Another node as the registry has it: what a request needs to reach it.
#[derive(Clone, Debug)]
pub struct Peer {
    /// Its name.
    pub name: String,
    /// Its HTTPS address, `host:port`.
    pub address: String,
    /// Its certificate's fingerprint, the one trusted.
    pub fingerprint: String,
}

impl From<catalog::NodeInfo> for Peer {
    fn from(n: catalog::NodeInfo) -> Peer {
        Peer {
            name: n.name,
            address: n.address,
            fingerprint: n.fingerprint,
        }
    }
}

impl From<&api::NodeEntry> for Peer {
    fn from(n: &api::NodeEntry) -> Peer {
        Peer {
            name: n.name.clone(),
            address: n.address.clone(),
            fingerprint: n.fingerprint.clone(),
        }
    }
}

/// The one line for another node that could not be reached.
fn unreachable(peer: &Peer, what: impl std::fmt::Display) -> Error {
    Error::new(
        Kind::Unavailable,
        format!(
            "node {} ({}) did not take the request sent on to it: {what}; try again, or see \
             `spawngrid nodes`",
            peer.name, peer.address
        ),
    )
}

/// Sends `req` from `node` to node `peer` over HTTPS (its registered certificate pinned;
/// presenting this node's, [`crate::peers`]) and returns its answer, streamed; an upgrade
/// it accepts is joined to this request's.
pub async fn send(node: &Node, peer: &Peer, mut req: Request) -> Result<Response, Error> {
    let verifier = crate::tls::PinVerifier::new(Some(peer.fingerprint.clone()));
    let tls = match &node.card {
        Some(card) => verifier.peer_config(card),
        None => verifier.client_config(),
    }
    .map_err(|e| Error::internal(&e))?;
    let name = crate::tls::server_name(&peer.address).map_err(|e| unreachable(peer, e))?;
    let connect = async {
        let tcp = tokio::net::TcpStream::connect(&peer.address).await?;
        let _ = tcp.set_nodelay(true);
        tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
    };
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) if verifier.seen().is_some_and(|s| s != peer.fingerprint) => {
            return Err(unreachable(
                peer,
                format!("its certificate is not the one it registered ({e})"),
            ))
        }
        Ok(Err(e)) => return Err(unreachable(peer, e)),
        Err(_) => return Err(unreachable(peer, "connecting timed out")),
    };
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(peer, e))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("forwarded connection: {e}");
        }
    });
    let headers = req.headers_mut();
    // The body goes at once (this node already answered the client's `Expect`).
    headers.remove(header::EXPECT);
    headers.insert(header::HOST, header_value(&peer.address)?);
    headers.insert(FORWARDED, header_value(&node.name)?);
    relay(sender, req, (), node.config.connections.stream_idle())
        .await
        .map_err(|e| unreachable(peer, e.message))
}

/// Sends `req` (its path and query only) on a client connection's `sender` and returns the
/// answer, streamed; an upgrade the other side accepts (101) is joined to `req`'s, bytes
/// copied both ways until either side ends or neither sends anything for `idle`
/// ([`crate::idle`]). The connection must be driven `with_upgrades`.
/// The joined stream holds, until it ends, the permit of the connection `req` came on (it
/// stays counted in the node's connection caps) and `hold`; without an upgrade, `hold` is
/// dropped when the answer's head is in.
pub(crate) async fn relay(
    mut sender: hyper::client::conn::http1::SendRequest<Body>,
    mut req: Request,
    hold: impl Send + 'static,
    idle: Duration,
) -> Result<Response, Error> {
    let upgrade = req
        .headers()
        .contains_key(header::UPGRADE)
        .then(|| hyper::upgrade::on(&mut req));
    let permit = req.extensions().get::<crate::conns::Permit>().cloned();
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .map_err(|e| Error::invalid(format!("bad path: {e}")))?;
    *req.uri_mut() = path;
    let mut resp = sender
        .send_request(req)
        .await
        .map_err(|e| Error::new(Kind::BadGateway, e.to_string()))?;
    if let (StatusCode::SWITCHING_PROTOCOLS, Some(client)) = (resp.status(), upgrade) {
        let theirs = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            let _held = (permit, hold);
            match (client.await, theirs.await) {
                (Ok(a), Ok(b)) => {
                    if crate::idle::copy(TokioIo::new(a), TokioIo::new(b), idle).await {
                        tracing::info!("relayed upgrade closed: silent for {idle:?}");
                    }
                }
                (Err(e), _) | (_, Err(e)) => tracing::debug!("relayed upgrade: {e}"),
            }
        });
    }
    Ok(resp.map(Body::new))
}

/// A header value from text the registry or config holds.
fn header_value(text: &str) -> Result<HeaderValue, Error> {
    HeaderValue::from_str(text)
        .map_err(|_| Error::invalid(format!("{text:?} is not a header value")))
}

/// The node (up, not this one) that runs `user`'s env `env`, if another one does.
fn runs_elsewhere(node: &Node, user: &str, env: &str) -> Result<Option<Peer>, Error> {
    let id = crate::envs::env_id(user, env);
    if catalog::check_name(env).is_err() || node.rt.env_dir(&id).is_ok_and(|d| d.exists()) {
        return Ok(None);
    }
    node_of(node, &id)
}

/// The node (up, not this one) the catalog says env `id` runs on, if another one.
pub(crate) fn node_of(node: &Node, id: &str) -> Result<Option<Peer>, Error> {
    let Some(record) = node.cat.env_record(id)? else {
        return Ok(None);
    };
    if record.node == node.name {
        return Ok(None);
    }
    Ok(crate::registry::locate(node, &record.node)?
        .filter(|(_, up)| *up)
        .map(|(info, _)| info.into()))
}

/// Middleware of the env routes: a request for the user's env that runs on another node
/// that is up goes there; anything else (an env here, none, one on a down node, a request
/// without a valid token, one already forwarded) goes on to the route, which answers it.
pub async fn env_routes(
    State(node): State<Arc<Node>>,
    env: Result<Path<String>, PathRejection>,
    req: Request,
    next: Next,
) -> Response {
    let Ok(Path(env)) = env else {
        return next.run(req).await;
    };
    if forwarded(req.headers()) {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    // The token as the cpu route takes it (a header, or a browser's subprotocol).
    let user = crate::cpu::CpuUser::from_request_parts(&mut parts, &node).await;
    let req = Request::from_parts(parts, body);
    let Ok(crate::cpu::CpuUser(user)) = user else {
        return next.run(req).await;
    };
    let n = node.clone();
    match blocking(move || runs_elsewhere(&n, &user, &env)).await {
        Ok(Some(peer)) => send(&node, &peer, req)
            .await
            .unwrap_or_else(IntoResponse::into_response),
        Ok(None) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// A request to node `peer` like `like` (its token), for `method` `path` with a JSON `body`.
fn request(
    like: &HeaderMap,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<Request, Error> {
    let mut b = axum::http::Request::builder().method(method).uri(path);
    if let Some(auth) = like.get(header::AUTHORIZATION) {
        b = b.header(header::AUTHORIZATION, auth);
    }
    if body.is_some() {
        b = b.header(header::CONTENT_TYPE, "application/json");
    }
    b.body(body.map_or_else(Body::empty, Body::from))
        .map_err(|e| Error::internal(&anyhow::anyhow!("making a request: {e}")))
}

/// Spawns `req` on node `peer` for the client whose request headers are `headers`.
pub async fn spawn_on(
    node: &Node,
    peer: &Peer,
    headers: &HeaderMap,
    req: &api::SpawnRequest,
) -> Result<Response, Error> {
    let body = serde_json::to_vec(req).map_err(|e| Error::internal(&e.into()))?;
    send(
        node,
        peer,
        request(headers, Method::POST, api::routes::ENVS, Some(body))?,
    )
    .await
}

/// The user's envs on node `peer` (its own listing), asked with the client's token.
pub async fn list_on(
    node: &Node,
    peer: &Peer,
    headers: &HeaderMap,
) -> Result<Vec<api::EnvInfo>, Error> {
    list_within(node, peer, headers, LIST_TIMEOUT).await
}

/// [`list_on`], given up after `limit`.
async fn list_within(
    node: &Node,
    peer: &Peer,
    headers: &HeaderMap,
    limit: Duration,
) -> Result<Vec<api::EnvInfo>, Error> {
    let ask = async {
        let req = request(headers, Method::GET, api::routes::ENVS, None)?;
        let resp = send(node, peer, req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await;
        Ok::<_, Error>((status, body.map_err(|e| unreachable(peer, e))?.to_bytes()))
    };
    let (status, bytes) = tokio::time::timeout(limit, ask)
        .await
        .map_err(|_| unreachable(peer, format!("no answer within {limit:?}")))??;
    if !status.is_success() {
        let why = serde_json::from_slice::<api::ErrorBody>(&bytes)
            .map_or_else(|_| format!("HTTP {status}"), |b| b.error);
        return Err(unreachable(peer, why));
    }
    serde_json::from_slice(&bytes).map_err(|e| unreachable(peer, format!("a bad answer: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An HTTPS server on 127.0.0.1 with a certificate made in `dir`, answering every request
    /// with `FORWARDED HOST PATH` as it got them, or (`silent`) never answering once the TLS
    /// handshake is done; its address and certificate fingerprint.
    async fn echo_server(dir: &std::path::Path, silent: bool) -> (String, String) {
        let id = crate::tls::load_or_create(dir, &["127.0.0.1".into()]).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let acceptor = tokio_rustls::TlsAcceptor::from(id.config);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    if silent {
                        std::future::pending::<()>().await;
                    }
                    let echo = hyper::service::service_fn(
                        |req: hyper::Request<hyper::body::Incoming>| async move {
                            let h = |name| {
                                let v = req.headers().get(name).map(|v| v.to_str().unwrap());
                                v.unwrap_or("-").to_string()
                            };
                            let text = format!("{} {} {}", h(FORWARDED), h("host"), req.uri());
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from(text)),
                            ))
                        },
                    );
                    let conn = hyper::server::conn::http1::Builder::new();
                    let _ = conn.serve_connection(TokioIo::new(tls), echo).await;
                });
            }
        });
        (addr, id.fingerprint)
    }

    /// Node `n1` on `dir`, not serving (so without a certificate to present).
    fn n1(dir: &std::path::Path) -> Node {
        Node::open(crate::Config {
            data: dir.join("data"),
            name: Some("n1".into()),
            ..Default::default()
        })
        .unwrap()
    }

    #[tokio::test]
    async fn requests_reach_only_the_registered_certificate() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let n1 = n1(b.path());
        let (addr, fingerprint) = echo_server(a.path(), false).await;
        let peer = Peer {
            name: "n2".into(),
            address: addr.clone(),
            fingerprint,
        };
        let get = || {
            let b = axum::http::Request::builder().uri("https://client.example/api/envs?x=1");
            b.header(header::EXPECT, "100-continue")
                .body(Body::empty())
                .unwrap()
        };
        // The path and query go as they came, to the peer's address, marked as forwarded.
        let resp = send(&n1, &peer, get()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, format!("n1 {addr} /api/envs?x=1"));
        // Another certificate than the one registered: refused, said in one line.
        let other = crate::tls::load_or_create(b.path(), &["127.0.0.1".into()]).unwrap();
        let impostor = Peer {
            fingerprint: other.fingerprint,
            ..peer.clone()
        };
        let err = send(&n1, &impostor, get()).await.unwrap_err();
        assert_eq!(err.kind, Kind::Unavailable);
        assert!(
            err.message
                .contains("its certificate is not the one it registered"),
            "{}",
            err.message
        );
        // A node that does not listen.
        let gone = Peer {
            address: "127.0.0.1:1".into(),
            ..peer
        };
        let err = send(&n1, &gone, get()).await.unwrap_err();
        assert!(
            err.message
                .starts_with("node n2 (127.0.0.1:1) did not take the request"),
            "{}",
            err.message
        );
    }

    /// A node that takes the connection and then says nothing is given up on: its listing
    /// fails in one line instead of holding up the grid's.
    #[tokio::test]
    async fn a_peer_that_never_answers_is_given_up_on() {
        let dir = tempfile::tempdir().unwrap();
        let (address, fingerprint) = echo_server(dir.path(), true).await;
        let n1 = n1(dir.path());
        let peer = Peer {
            name: "n2".into(),
            address,
            fingerprint,
        };
        let limit = Duration::from_millis(500);
        let err = list_within(&n1, &peer, &HeaderMap::new(), limit)
            .await
            .unwrap_err();
        assert_eq!(err.kind, Kind::Unavailable);
        assert!(
            err.message.contains("node n2") && err.message.contains("no answer within 500ms"),
            "{}",
            err.message
        );
    }
}
