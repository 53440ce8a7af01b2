//! A small blocking HTTPS/1.1 client for the node's JSON API, on rustls (ring) with trust on
//! first use: the first connection to a node pins its certificate's SHA-256 fingerprint in
//! `known_nodes`; later connections accept exactly that certificate and refuse any other with
//! one line saying what to do. The handshake signature is still verified against the pinned
//! certificate's key, so only the holder of the node's private key passes.
//!
//! One request per connection (`Connection: close`); bodies by `Content-Length`, chunked, or
//! up to the end of the stream.

use super::store::KnownNodes;
use anyhow::{bail, Context, Result};
use node::tls::PinVerifier;
use rustls::pki_types::ServerName;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

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
/// configuration for a handshake, then [`PinnedTls::check`] on its outcome. Shared by the
/// blocking requests here and `spawngrid cpu`'s WebSocket (tokio-rustls).
pub struct PinnedTls {
    host: String,
    pins: KnownNodes,
    pinned: Option<String>,
    verifier: Arc<PinVerifier>,
    /// The configuration: only the pinned certificate passes (any, when none is pinned yet).
    pub config: Arc<rustls::ClientConfig>,
    /// The name the handshake sends and checks.
    pub name: ServerName<'static>,
}

impl PinnedTls {
    /// The TLS settings for `host` (HOST:PORT) with its pin from `known_nodes`.
    pub fn new(host: &str) -> Result<PinnedTls> {
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
    pub fn check<T>(mut self, outcome: std::io::Result<T>) -> Result<T> {
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
pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Connects to `host` (HOST:PORT) over TLS, its certificate checked against the pin.
pub fn connect_tls(host: &str) -> Result<TlsStream> {
    let tls = PinnedTls::new(host)?;
    let mut conn = rustls::ClientConnection::new(tls.config.clone(), tls.name.clone())
        .context("starting TLS")?;
    let mut tcp = connect(host)?;
    let handshake = (|| -> std::io::Result<()> {
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp)?;
        }
        Ok(())
    })();
    tls.check(handshake)?;
    Ok(rustls::StreamOwned::new(conn, tcp))
}

/// A request's head: request line, `Host`, `Connection: close`, the token, and `extra` lines
/// (each ending in CRLF).
fn head(host: &str, method: &str, path: &str, token: Option<&str>, extra: &str) -> String {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: spawngrid/{}\r\nAccept: application/json\r\nConnection: close\r\n",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    head.push_str(extra);
    head.push_str("\r\n");
    head
}

/// Sends one request to `host` (HOST:PORT) and reads the answer.
pub fn request(
    host: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> Result<Response> {
    let mut tls = connect_tls(host)?;
    let body = body.unwrap_or_default();
    let extra = if !body.is_empty() || method != "GET" {
        format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        )
    } else {
        String::new()
    };
    tls.write_all(head(host, method, path, token, &extra).as_bytes())
        .and_then(|_| tls.write_all(body))
        .and_then(|_| tls.flush())
        .with_context(|| format!("sending to {host}"))?;
    read_response(&mut tls).with_context(|| format!("reading the answer of {host}"))
}

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
    let mut tls = connect_tls(host)?;
    let extra = format!(
        "Content-Type: {content_type}\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n"
    );
    tls.write_all(head(host, method, path, Some(token), &extra).as_bytes())
        .and_then(|_| tls.flush())
        .with_context(|| format!("sending to {host}"))?;
    let (first, rest) =
        read_head(&mut tls).with_context(|| format!("reading the answer of {host}"))?;
    if first.status != 100 {
        return read_body(first, rest, &mut tls)
            .with_context(|| format!("reading the answer of {host}"));
    }
    let sent = (|| -> Result<()> {
        let mut chunks = std::io::BufWriter::with_capacity(64 << 10, Chunked(&mut tls));
        write_body(&mut chunks)?;
        chunks.flush()?;
        drop(chunks);
        tls.write_all(b"0\r\n\r\n")?;
        tls.flush()?;
        Ok(())
    })();
    let answer = read_response(&mut std::io::Cursor::new(rest).chain(&mut tls))
        .with_context(|| format!("reading the answer of {host}"));
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

/// Sends a GET and, when the answer is 2xx, gives its body to `consume` as a stream (which
/// fails if the node cuts it short); another answer is returned whole for its error.
pub fn download(
    host: &str,
    path: &str,
    token: &str,
    consume: impl FnOnce(&mut dyn Read) -> Result<()>,
) -> Result<Response> {
    let mut tls = connect_tls(host)?;
    tls.write_all(head(host, "GET", path, Some(token), "").as_bytes())
        .and_then(|_| tls.flush())
        .with_context(|| format!("sending to {host}"))?;
    let (h, rest) = read_head(&mut tls).with_context(|| format!("reading the answer of {host}"))?;
    if !(200..300).contains(&h.status) {
        return read_body(h, rest, &mut tls)
            .with_context(|| format!("reading the answer of {host}"));
    }
    let status = h.status;
    let mut raw = std::io::BufReader::new(EofIsCut(std::io::Cursor::new(rest).chain(&mut tls)));
    let mut body: Box<dyn Read + '_> = match (h.chunked, h.length) {
        (true, _) => Box::new(Dechunk {
            inner: &mut raw,
            left: 0,
            done: false,
        }),
        (false, Some(len)) => Box::new(Exact {
            inner: (&mut raw).take(len as u64),
            left: len as u64,
        }),
        (false, None) => Box::new(&mut raw),
    };
    consume(&mut body)?;
    // Whatever the consumer left (padding after a tar's end) is read, so a cut stream shows.
    std::io::copy(&mut body, &mut std::io::sink())?;
    Ok(Response {
        status,
        body: Vec::new(),
    })
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

/// Writes each write as one HTTP/1.1 chunk.
struct Chunked<W: Write>(W);

impl<W: Write> Write for Chunked<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        write!(self.0, "{:x}\r\n", buf.len())?;
        self.0.write_all(buf)?;
        self.0.write_all(b"\r\n")?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// The error of a body the node stopped sending before its end.
fn cut_short() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "the node stopped sending before the end (over its max_copy limit, or tar failed in the env: see its log)",
    )
}

/// A reader whose unexpected end (a TLS stream closed without close_notify) is a body the
/// node cut short.
struct EofIsCut<R: Read>(R);

impl<R: Read> Read for EofIsCut<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => cut_short(),
            _ => e,
        })
    }
}

/// Reads a chunked body as a stream.
struct Dechunk<R: std::io::BufRead> {
    inner: R,
    /// Bytes left in the current chunk.
    left: u64,
    done: bool,
}

impl<R: std::io::BufRead> Dechunk<R> {
    /// One CRLF-terminated line, without its line end.
    fn line(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        if self.inner.read_line(&mut line)? == 0 {
            return Err(cut_short());
        }
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }
}

impl<R: std::io::BufRead> Read for Dechunk<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let line = self.line()?;
            let size = line.split(';').next().unwrap_or("").trim();
            self.left = u64::from_str_radix(size, 16).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, "bad chunk size")
            })?;
            if self.left == 0 {
                // Trailers, up to the empty line.
                while !self.line()?.is_empty() {}
                self.done = true;
                return Ok(0);
            }
        }
        let want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(cut_short());
        }
        self.left -= n as u64;
        if self.left == 0 && !self.line()?.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "chunk not followed by CRLF",
            ));
        }
        Ok(n)
    }
}

/// Reads a body of known length as a stream; ending early is an error.
struct Exact<R: Read> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(cut_short());
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Connects to `host` (HOST:PORT), trying each address it resolves to.
fn connect(host: &str) -> Result<TcpStream> {
    let addrs: Vec<_> = host
        .to_socket_addrs()
        .with_context(|| format!("resolving {host}"))?
        .collect();
    let mut last = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, CONNECT_TIMEOUT) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) => Err(e)
            .with_context(|| format!("connecting to {host} (is `spawngrid serve` running there?)")),
        None => bail!("{host} resolves to no address"),
    }
}

/// A response's status line and the headers that frame its body.
struct Head {
    status: u16,
    length: Option<usize>,
    chunked: bool,
}

/// Reads a response's head; returns it and the bytes read past it.
fn read_head(r: &mut impl Read) -> Result<(Head, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 << 10];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() > 64 << 10 {
            bail!("response headers too long");
        }
        let n = read_some(r, &mut chunk)?;
        if n == 0 {
            bail!("the connection closed before a response");
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end]).context("response headers are not text")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let (mut length, mut chunked) = (None, false);
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        if k == "content-length" {
            length = Some(v.parse::<usize>().context("bad Content-Length")?);
        } else if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
            chunked = true;
        }
    }
    let rest = buf[head_end + 4..].to_vec();
    Ok((
        Head {
            status,
            length,
            chunked,
        },
        rest,
    ))
}

/// Reads a whole HTTP/1.1 response.
fn read_response(r: &mut impl Read) -> Result<Response> {
    let (head, rest) = read_head(r)?;
    read_body(head, rest, r)
}

/// Reads the body after `head` whole (`body` is what was read past the head).
fn read_body(head: Head, mut body: Vec<u8>, r: &mut impl Read) -> Result<Response> {
    let Head {
        status,
        length,
        chunked,
    } = head;
    let mut chunk = [0u8; 16 << 10];
    if chunked {
        loop {
            if let Some(done) = dechunk(&body)? {
                return Ok(Response { status, body: done });
            }
            let n = read_some(r, &mut chunk)?;
            if n == 0 {
                bail!("the connection closed inside a chunked body");
            }
            body.extend_from_slice(&chunk[..n]);
            if body.len() > MAX_RESPONSE {
                bail!("response larger than {MAX_RESPONSE} bytes");
            }
        }
    }
    match length {
        Some(len) => {
            if len > MAX_RESPONSE {
                bail!("response larger than {MAX_RESPONSE} bytes");
            }
            while body.len() < len {
                let n = read_some(r, &mut chunk)?;
                if n == 0 {
                    bail!("the connection closed after {} of {len} bytes", body.len());
                }
                body.extend_from_slice(&chunk[..n]);
            }
            body.truncate(len);
        }
        None => loop {
            let n = read_some(r, &mut chunk)?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
            if body.len() > MAX_RESPONSE {
                bail!("response larger than {MAX_RESPONSE} bytes");
            }
        },
    }
    Ok(Response { status, body })
}

/// One read; a TLS stream closed without close_notify counts as its end.
fn read_some(r: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
    loop {
        match r.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(0),
            Err(e) => return Err(e.into()),
        }
    }
}

/// The decoded body if `raw` holds a complete chunked body, else `None`.
fn dechunk(raw: &[u8]) -> Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let Some(eol) = find(&raw[at..], b"\r\n") else {
            return Ok(None);
        };
        let size_text = std::str::from_utf8(&raw[at..at + eol]).context("bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).context("bad chunk size")?;
        at += eol + 2;
        if size == 0 {
            return Ok(Some(out));
        }
        if raw.len() < at + size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&raw[at..at + size]);
        at += size + 2;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
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
    fn streamed_bodies_are_chunked_and_checked() {
        let mut out = Vec::new();
        Chunked(&mut out).write_all(b"hello").unwrap();
        assert_eq!(out, b"5\r\nhello\r\n");
        let read = |raw: &[u8]| {
            let mut body = Vec::new();
            let mut d = Dechunk {
                inner: std::io::BufReader::new(raw),
                left: 0,
                done: false,
            };
            d.read_to_end(&mut body).map(|_| body)
        };
        assert_eq!(
            read(b"3\r\nabc\r\n2;x\r\nde\r\n0\r\nT: v\r\n\r\n").unwrap(),
            b"abcde"
        );
        for cut in [&b"3\r\nab"[..], b"3\r\nabc\r\n", b"zz\r\n", b"3\r\nabcX"] {
            assert!(read(cut).is_err(), "{:?}", String::from_utf8_lossy(cut));
        }
        let mut short = Exact {
            inner: &b"abc"[..],
            left: 5,
        };
        let mut buf = Vec::new();
        assert_eq!(
            short.read_to_end(&mut buf).unwrap_err().kind(),
            std::io::ErrorKind::UnexpectedEof
        );
        let pipe = anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            .context("archiving x");
        assert!(closed_on_us(&pipe) && !closed_on_us(&anyhow::anyhow!("other")));
    }

    #[test]
    fn responses_by_length_chunks_and_eof() {
        let by_len = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhiEXTRA";
        let r = read_response(&mut &by_len[..]).unwrap();
        assert_eq!((r.status, &r.body[..]), (200, &b"hi"[..]));
        let chunked =
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x\r\nde\r\n0\r\n\r\n";
        let r = read_response(&mut &chunked[..]).unwrap();
        assert_eq!((r.status, &r.body[..]), (404, &b"abcde"[..]));
        let eof = b"HTTP/1.1 500 X\r\n\r\nall of it";
        let r = read_response(&mut &eof[..]).unwrap();
        assert_eq!(&r.body[..], b"all of it");
        assert!(
            read_response(&mut &b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nhi"[..]).is_err()
        );
        assert!(read_response(&mut &b"garbage"[..]).is_err());
    }
}
