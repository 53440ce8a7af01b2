//! A small blocking HTTPS/1.1 client for the node's JSON API, on rustls (ring) with trust on
//! first use: the first connection to a node pins its certificate's SHA-256 fingerprint in
//! `known_nodes`; later connections accept exactly that certificate and refuse any other with
//! one line saying what to do. The handshake signature is still verified against the pinned
//! certificate's key, so only the holder of the node's private key passes.
//!
//! HTTP/1.1 is hyper's (`client::conn::http1`, as the node's forwarding uses): one request per
//! connection, run on a small tokio runtime of its own behind blocking functions, since the
//! rest of the client is blocking. Uploads are announced with `Expect: 100-continue` so that a
//! refusal arrives before any of the body is read; downloads are streams that fail when the
//! node cuts them short.

use super::store::KnownNodes;
use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, Limited, StreamBody};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper_util::rt::TokioIo;
use node::tls::PinVerifier;
use rustls::pki_types::ServerName;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest response the client reads (exec output is at most 2 × 8 MiB, in base64).
const MAX_RESPONSE: usize = 64 << 20;

/// `host` with the API's default port if it has none: `HOST:PORT`, the key of pins and tokens.
pub fn normalize_host(host: &str) -> String {
    let has_port = if let Some(rest) = host.strip_prefix('[') {
        rest.contains("]:")
    } else {
        host.matches(':').count() == 1
    };
    if has_port {
        host.to_string()
    } else if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{}", api::DEFAULT_PORT)
    } else {
        format!("{host}:{}", api::DEFAULT_PORT)
    }
}

/// A response: status and body.
pub struct Response {
    /// The HTTP status.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

/// TLS to one node with its certificate pinned (trust on first use): the rustls
/// configuration for a handshake, then [`PinnedTls::check`] on its outcome.
struct PinnedTls {
    host: String,
    pins: KnownNodes,
    pinned: Option<String>,
    verifier: Arc<PinVerifier>,
    /// The configuration: only the pinned certificate passes (any, when none is pinned yet).
    config: Arc<rustls::ClientConfig>,
    /// The name the handshake sends and checks.
    name: ServerName<'static>,
}

impl PinnedTls {
    /// The TLS settings for `host` (HOST:PORT) with its pin from `known_nodes`.
    fn new(host: &str) -> Result<PinnedTls> {
        let pins = KnownNodes::load()?;
        let pinned = pins.get(host).map(str::to_string);
        let verifier = PinVerifier::new(pinned.clone());
        Ok(PinnedTls {
            host: host.to_string(),
            pins,
            pinned,
            config: verifier.client_config()?,
            verifier,
            name: node::tls::server_name(host)?,
        })
    }

    /// Judges a finished handshake (`outcome`): a changed certificate is refused with one line
    /// saying what to do; a first one is pinned (and said so on stderr).
    fn check<T>(mut self, outcome: std::io::Result<T>) -> Result<T> {
        let host = &self.host;
        let seen = self.verifier.seen();
        if let (Some(p), Some(s)) = (&self.pinned, &seen) {
            if p != s {
                bail!(
                    "the TLS certificate of node {host} changed (pinned SHA-256 {p}, now {s}): if the node's certificate was replaced on purpose, remove its line from {} and connect again; otherwise someone may be intercepting the connection",
                    self.pins.path().display()
                );
            }
        }
        let value = outcome.with_context(|| format!("TLS handshake with {host}"))?;
        if self.pinned.is_none() {
            let fp = seen.context("the node presented no certificate")?;
            self.pins.pin(host, &fp)?;
            eprintln!(
                "spawngrid: first connection to {host}: trusting its TLS certificate, SHA-256 {fp} (pinned in {})",
                self.pins.path().display()
            );
        }
        Ok(value)
    }
}

/// A TLS stream to a node.
pub type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// Connects to `host` (HOST:PORT) over TLS, its certificate checked against the pin (shared
/// with `spawngrid cpu`'s WebSocket).
pub async fn connect_tls(host: &str) -> Result<TlsStream> {
    let tls = PinnedTls::new(host)?;
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(host))
        .await
        .map_err(|_| anyhow!("connecting to {host} timed out"))?
        .with_context(|| format!("connecting to {host} (is `spawngrid serve` running there?)"))?;
    let _ = tcp.set_nodelay(true);
    let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
    let handshake = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(tls.name.clone(), tcp))
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
    tls.check(handshake)
}

/// The runtime one call runs its connection on: one worker, so the calling thread can block
/// on a body while the connection makes progress.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// A request to `host` for `path` with the client's headers and the token, if any.
fn build<B>(
    host: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: B,
) -> Result<hyper::Request<B>> {
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, host)
        .header(
            header::USER_AGENT,
            concat!("spawngrid/", env!("CARGO_PKG_VERSION")),
        )
        .header(header::ACCEPT, "application/json")
        .header(header::CONNECTION, "close");
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    req.body(body).with_context(|| {
        format!("building the request for {path} (a token or path that is not valid in HTTP?)")
    })
}

/// Sends `req` to `host` on a connection of its own; the answer's head and streamed body.
async fn send<B>(host: &str, req: hyper::Request<B>) -> Result<hyper::Response<Incoming>>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tls = connect_tls(host).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .with_context(|| format!("talking HTTP to {host}"))?;
    // The connection's own errors come back through the request's answer.
    tokio::spawn(conn);
    sender
        .send_request(req)
        .await
        .with_context(|| format!("reading the answer of {host}"))
}

/// The answer read whole (up to [`MAX_RESPONSE`]).
async fn whole(host: &str, resp: hyper::Response<Incoming>) -> Result<Response> {
    let status = resp.status().as_u16();
    let body = Limited::new(resp.into_body(), MAX_RESPONSE)
        .collect()
        .await
        .map_err(|e| anyhow!("reading the answer of {host}: {e}"))?
        .to_bytes()
        .to_vec();
    Ok(Response { status, body })
}

/// Sends one request to `host` (HOST:PORT) and reads the answer.
pub fn request(
    host: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> Result<Response> {
    let body = body.unwrap_or_default();
    let mut req = build(
        host,
        method,
        path,
        token,
        Full::new(Bytes::copy_from_slice(body)),
    )?;
    if !body.is_empty() || method != "GET" {
        let h = req.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    }
    runtime()?.block_on(async { whole(host, send(host, req).await?).await })
}

/// What an upload waits for before it sends its body.
enum Go {
    /// The node said `100 Continue`: send the body.
    Continue,
    /// The node answered (or the request failed) without asking for the body.
    Answered,
}

/// The frames of a streamed request body.
type Frames = mpsc::Sender<std::io::Result<Frame<Bytes>>>;

/// Sends a request whose body `write_body` streams (chunked), announced with
/// `Expect: 100-continue` so that a refusal (no such env, bad destination) arrives before any
/// of the body is sent; returns the answer (read whole).
pub fn upload(
    host: &str,
    method: &str,
    path: &str,
    token: &str,
    content_type: &str,
    write_body: impl FnOnce(&mut dyn Write) -> Result<()>,
) -> Result<Response> {
    let rt = runtime()?;
    let (frames, rx) = mpsc::channel(8);
    let stream =
        futures_util::stream::unfold(rx, |mut rx| async { rx.recv().await.map(|f| (f, rx)) });
    let mut req = build(host, method, path, Some(token), StreamBody::new(stream))?;
    let h = req.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_str(content_type)?);
    h.insert(header::EXPECT, HeaderValue::from_static("100-continue"));
    let (go_tx, go) = std::sync::mpsc::sync_channel(2);
    let on_continue = go_tx.clone();
    hyper::ext::on_informational(&mut req, move |r| {
        if r.status() == hyper::StatusCode::CONTINUE {
            let _ = on_continue.try_send(Go::Continue);
        }
    });
    let owned = host.to_string();
    let answer = rt.spawn(async move {
        let resp = send(&owned, req).await;
        let _ = go_tx.try_send(Go::Answered);
        whole(&owned, resp?).await
    });
    let sent = match go.recv() {
        Ok(Go::Continue) => stream_body(frames, write_body),
        _ => {
            drop(frames);
            return rt.block_on(answer)?;
        }
    };
    let answer = rt.block_on(answer)?;
    match (sent, answer) {
        // The node's answer says more than a broken pipe does (e.g. it refused the body).
        (Err(_), Ok(r)) if !(200..300).contains(&r.status) => Ok(r),
        // Closed while we were still sending, its answer lost with the connection.
        (Err(e), Err(_)) if closed_on_us(&e) => bail!(
            "{host} stopped reading the upload and closed the connection (over its max_copy limit? see its log)"
        ),
        (Err(e), _) => Err(e.context(format!("sending to {host}"))),
        (Ok(()), answer) => answer,
    }
}

/// Runs `write_body` into `frames`; a failure ends the body with an error, so the node never
/// takes a partial upload for a whole one.
fn stream_body(
    frames: Frames,
    write_body: impl FnOnce(&mut dyn Write) -> Result<()>,
) -> Result<()> {
    let mut out = std::io::BufWriter::with_capacity(64 << 10, FrameWriter(frames.clone()));
    let done = write_body(&mut out).and_then(|()| Ok(out.flush()?));
    drop(out);
    if let Err(e) = &done {
        let _ = frames.blocking_send(Err(std::io::Error::other(format!("{e:#}"))));
    }
    done
}

/// Writes each write as one body frame.
struct FrameWriter(Frames);

impl Write for FrameWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !buf.is_empty() {
            self.0
                .blocking_send(Ok(Frame::data(Bytes::copy_from_slice(buf))))
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sends a GET and, when the answer is 2xx, gives its body to `consume` as a stream (which
/// fails if the node cuts it short); another answer is returned whole for its error.
pub fn download(
    host: &str,
    path: &str,
    token: &str,
    consume: impl FnOnce(&mut dyn Read) -> Result<()>,
) -> Result<Response> {
    let rt = runtime()?;
    let req = build(host, "GET", path, Some(token), Empty::<Bytes>::new())?;
    let resp = rt.block_on(send(host, req))?;
    let status = resp.status().as_u16();
    if !(200..300).contains(&status) {
        return rt.block_on(whole(host, resp));
    }
    let (tx, rx) = mpsc::channel(8);
    let mut incoming = resp.into_body();
    rt.spawn(async move {
        while let Some(frame) = incoming.frame().await {
            let data = match frame {
                Ok(f) => match f.into_data() {
                    Ok(d) => Ok(d),
                    Err(_) => continue,
                },
                // The connection ended before the body's length or last chunk.
                Err(_) => Err(cut_short()),
            };
            let failed = data.is_err();
            if tx.send(data).await.is_err() || failed {
                break;
            }
        }
    });
    let mut body = Received {
        rx,
        data: Bytes::new(),
    };
    consume(&mut body)?;
    // Whatever the consumer left (padding after a tar's end) is read, so a cut stream shows.
    std::io::copy(&mut body, &mut std::io::sink())?;
    Ok(Response {
        status,
        body: Vec::new(),
    })
}

/// A streamed answer's body as a blocking reader.
struct Received {
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
    /// What is left of the last frame.
    data: Bytes,
}

impl Read for Received {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.data.is_empty() {
            match self.rx.blocking_recv() {
                Some(d) => self.data = d?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.data.len());
        buf[..n].copy_from_slice(&self.data.split_to(n));
        Ok(n)
    }
}

/// Whether `e` comes from the peer closing the connection (broken pipe, reset).
fn closed_on_us(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .any(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            )
        })
}

/// The error of a body the node stopped sending before its end.
fn cut_short() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "the node stopped sending before the end (over its max_copy limit, or tar failed in the env: see its log)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_get_the_default_port() {
        assert_eq!(normalize_host("localhost"), "localhost:16998");
        assert_eq!(normalize_host("n1:443"), "n1:443");
        assert_eq!(normalize_host("::1"), "[::1]:16998");
        assert_eq!(normalize_host("[::1]:5"), "[::1]:5");
        let name = |h: &str| node::tls::server_name(h).unwrap().to_str().into_owned();
        assert_eq!(name("[::1]:5"), "::1");
        assert_eq!(name("127.0.0.1:5"), "127.0.0.1");
        assert_eq!(name("n1:5"), "n1");
    }

    #[test]
    fn a_closed_connection_is_told_apart() {
        let pipe = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            .context("archiving x");
        assert!(closed_on_us(&pipe) && !closed_on_us(&anyhow::anyhow!("other")));
    }
}
