//! Preview URLs end to end (as root): the real binary serving HTTPS, `spawngrid expose` and
//! `unexpose`, servers inside a busybox env (`httpd`; a WebSocket echo made of `nc` and a
//! shell script), and a raw HTTPS client (Python's, certificate unchecked) that shows
//! statuses, headers and bytes as they are.

use crate::common;

use common::site::*;
use common::Bg;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

/// WebSockets: `python3 -c WS ADDR PATH HEADERS-JSON SRC N` opens N, one after the other,
/// from address SRC: each does a handshake and reads the server's first frame (7 bytes), and
/// prints `{"status", "accept", "first"}` (frames in hex), or `"refused"` when the node closes
/// the connection first; once stdin ends, sends one masked text frame on each socket still
/// open, reads as many bytes back and prints `{"echo", "sent"}`.
const WS: &str = r#"
import json, socket, ssl, sys
addr, path, headers, src, n = sys.argv[1:6]
host, port = addr.rsplit(":", 1)
ctx = ssl._create_unverified_context()
head = "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" \
       "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" % (path, addr)
head += "".join("%s: %s\r\n" % kv for kv in json.loads(headers).items()) + "\r\n"
def exactly(s, n, have):
    while len(have) < n:
        chunk = s.recv(4096)
        if not chunk:
            break
        have += chunk
    return have[:n], have[n:]
def handshake():
    tcp = socket.create_connection((host, int(port)), source_address=(src, 0), timeout=30)
    s = ctx.wrap_socket(tcp)
    s.sendall(head.encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            raise OSError("closed")
        buf += chunk
    resp, _, rest = buf.partition(b"\r\n\r\n")
    lines = resp.decode().split("\r\n")
    accept = [l.split(":", 1)[1].strip() for l in lines[1:] if l.lower().startswith("sec-websocket-accept:")]
    first, rest = exactly(s, 7, rest)
    return (s, rest), {"status": int(lines[0].split()[1]), "accept": accept[0] if accept else "",
                       "first": first.hex()}
held = []
for _ in range(int(n)):
    try:
        sock, said = handshake()
        held.append(sock)
    except (OSError, ssl.SSLError):
        said = "refused"
    print(json.dumps(said), flush=True)
sys.stdin.read()
mask = b"\x01\x02\x03\x04"
payload = b"ping!"
frame = b"\x81" + bytes([0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
for s, rest in held:
    s.sendall(frame)
    echo, _ = exactly(s, len(frame), rest)
    print(json.dumps({"echo": echo.hex(), "sent": frame.hex()}), flush=True)
"#;

/// [`WS`] opening `n` WebSockets to `path` with `headers` from address `src`, not waited
/// for (its stdin piped, its stdout read with [`said`]).
fn websockets(site: &Site, path: &str, headers: &str, src: &str, n: usize) -> Bg {
    let child = Command::new("python3")
        .args(["-c", WS, &site.addr(), path, headers, src, &n.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    Bg(Some(child))
}

/// The next `n` lines a [`websockets`] client printed.
fn said(ws: &mut Bg, n: usize) -> Vec<serde_json::Value> {
    let out = BufReader::new(ws.0.as_mut().unwrap().stdout.as_mut().unwrap());
    out.lines()
        .take(n)
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect()
}

/// Ends a [`websockets`] client's stdin: it echoes a frame on each socket still open.
fn echo(ws: &mut Bg) {
    drop(ws.0.as_mut().unwrap().stdin.take());
}

/// `GET path`, with the bearer `token` if given.
fn get(site: &Site, path: &str, token: Option<&str>) -> Answer {
    let headers = match token {
        Some(t) => serde_json::json!({ "Authorization": format!("Bearer {t}") }),
        None => serde_json::json!({}),
    };
    request(site, "GET", path, &headers.to_string())
}

/// `GET path` with cookie `cookie` (`NAME=VALUE`).
fn with_cookie(site: &Site, path: &str, cookie: &str) -> Answer {
    request(
        site,
        "GET",
        path,
        &serde_json::json!({ "Cookie": cookie }).to_string(),
    )
}

/// The path and query of a URL the node printed (`https://HOST:PORT/PATH?QUERY`).
fn path_of(url: &str) -> String {
    let rest = url.strip_prefix("https://").unwrap();
    rest[rest.find('/').unwrap()..].to_string()
}

/// Asserts `a` is a one-line refusal with `status` that contains `says`.
fn refused(a: &Answer, status: u16, says: &str) {
    assert_eq!(a.status, status, "{}", a.body);
    assert!(a.body.starts_with("spawngrid: "), "{}", a.body);
    assert_eq!(a.body.trim_end().lines().count(), 1, "{}", a.body);
    assert!(a.body.contains(says), "{:?} not in {}", says, a.body);
}

/// alice's env `base` with busybox httpd on 127.0.0.1:8000 serving /srv (an index and a
/// file below), logged in.
fn serving(site: &Site) -> User<'_> {
    serving_as(site, "alice")
}

/// [`serving`] for user `name`.
fn serving_as<'a>(site: &'a Site, name: &str) -> User<'a> {
    let alice = site.user(name);
    alice.login();
    alice.ok("spawn", &["base"]);
    let (code, _, err) = alice.exec(
        "base",
        "mkdir -p /srv/sub && echo hello-from-the-env > /srv/index.html && \
         printf 'deep\\n' > /srv/sub/file.txt && httpd -p 127.0.0.1:8000 -h /srv",
    );
    assert_eq!(code, 0, "{err}");
    alice
}

/// A private preview: the owner's token gets the env's bytes (path below the prefix, query
/// kept); no token, another user's, a bad link are refused in one line; a signed link sets a
/// cookie that lets a browser in; it expires, and `--rotate` and `unexpose` revoke it. A
/// port nothing listens on is a 502, and so is the node's own API port: a preview reaches
/// the env's loopback, not the host's. `status` lists it; boom ends it.
#[test]
fn previews_serve_a_port_of_the_env_to_whom_its_owner_lets_in() {
    let site = Site::new("preview");
    site.start("127.0.0.1:0");
    let alice = serving(&site);
    let token = alice.token();
    let r = alice.json("expose", &["base", "8000"]);
    let url = r["exposure"]["url"].as_str().unwrap().to_string();
    let id = r["exposure"]["id"].as_str().unwrap().to_string();
    // The URL names the node as the client reached it, on the port it listens on.
    assert_eq!(url, format!("https://{}/preview/{id}/", site.addr()));
    assert_eq!(r["exposure"]["public"], false);
    let link = path_of(r["link"].as_str().unwrap());
    let base = path_of(&url);

    // The node's own API port is not the env's: a preview reaches the env's loopback only;
    // nothing listens there, so 502 in one line (so for any port nothing listens on).
    alice.ok("expose", &["base", "8001"]);
    let api_port = site.addr().rsplit_once(':').unwrap().1.to_string();
    let r = alice.json("expose", &["base", &api_port]);
    let to_api = path_of(r["exposure"]["url"].as_str().unwrap());
    let a = get(&site, &format!("{to_api}api/openapi.json"), Some(&token));
    refused(
        &a,
        502,
        &format!("nothing answers on port {api_port} in env base"),
    );
    // The owner's token: the bytes of the env's server, the prefix stripped.
    let a = get(&site, &base, Some(&token));
    assert_eq!((a.status, a.body.as_str()), (200, "hello-from-the-env\n"));
    let a = get(&site, &format!("{base}sub/file.txt?x=1"), Some(&token));
    assert_eq!((a.status, a.body.as_str()), (200, "deep\n"));
    // Without the slash: redirected to it (relative links need it).
    let a = get(&site, base.trim_end_matches('/'), None);
    assert_eq!(
        (a.status, a.headers["location"].as_str()),
        (308, Some(base.as_str()))
    );

    // Nobody else: no token, bob's token, a forged link.
    refused(&get(&site, &base, None), 401, "is private");
    let bob = site.user("bob");
    bob.login();
    refused(
        &get(&site, &base, Some(&bob.token())),
        403,
        "belongs to another user",
    );
    let forged = format!("{base}?sg_exp=99999999999&sg_sig={}", "00".repeat(32));
    refused(
        &get(&site, &forged, None),
        403,
        "not valid (revoked or rotated)",
    );

    // The signed link: a cookie for this preview and a redirect without the signature; the
    // cookie lets a browser in.
    let a = get(&site, &link, None);
    assert_eq!(a.status, 303, "{}", a.body);
    assert_eq!(a.header("location"), base);
    let set = a.header("set-cookie").to_string();
    assert!(set.contains(&format!("Path=/preview/{id}/")), "{set}");
    assert!(set.contains("HttpOnly; Secure"), "{set}");
    let cookie = set.split(';').next().unwrap().to_string();
    let a = with_cookie(&site, &base, &cookie);
    assert_eq!((a.status, a.body.as_str()), (200, "hello-from-the-env\n"));

    // A short link expires (410); a rotation revokes links and cookies given out (403).
    let short = alice.json("expose", &["base", "8000", "--ttl", "1s"]);
    assert_eq!(short["exposure"]["id"].as_str(), Some(id.as_str()));
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let short = path_of(short["link"].as_str().unwrap());
    refused(&get(&site, &short, None), 410, "expired");
    let fresh = alice.json("expose", &["base", "8000", "--rotate"]);
    refused(&get(&site, &link, None), 403, "revoked or rotated");
    refused(&with_cookie(&site, &base, &cookie), 403, "revoked");
    let fresh = path_of(fresh["link"].as_str().unwrap());
    assert_eq!(get(&site, &fresh, None).status, 303);

    let status = alice.ok("status", &[]);
    for port in ["8000", "8001", api_port.as_str()] {
        assert!(
            status
                .lines()
                .any(|l| l.starts_with("base") && l.contains(port) && l.contains("private")),
            "{port}: {status}"
        );
    }
    assert!(status.contains(&url), "{status}");

    // A public preview: anyone.
    alice.ok("expose", &["base", "8000", "--public"]);
    let a = get(&site, &base, None);
    assert_eq!((a.status, a.body.as_str()), (200, "hello-from-the-env\n"));

    // unexpose (by URL): the URL and its links are gone; by port; then nothing left to end.
    let out = alice.ok("unexpose", &["base", &url]);
    assert!(out.starts_with("unexposed base:8000"), "{out}");
    refused(&get(&site, &base, Some(&token)), 404, "no preview");
    refused(&get(&site, &fresh, None), 404, "no preview");
    alice.ok("unexpose", &["base", "8001"]);
    let err = alice.refused("unexpose", &["base", "8001"]);
    assert!(
        err.contains("port 8001 of env base is not exposed"),
        "{err}"
    );
    let err = bob.refused("expose", &["base", "8000"]);
    assert!(err.contains("base"), "{err}");

    // Boom ends the env's exposures with it.
    alice.ok("boom", &["base"]);
    refused(&get(&site, &to_api, Some(&token)), 404, "no preview");
}

/// Starts `script` (a request handler on stdin and stdout) in alice's env `base` as a
/// server on `port`, for every connection (`nc -ll -e`).
fn serve_script(alice: &User<'_>, port: u16, script: &str) {
    let setup = format!(
        "cat > /srv/{port}.sh <<'EOF'\n{script}EOF\nchmod +x /srv/{port}.sh && \
         nc -ll -p {port} -e /srv/{port}.sh </dev/null >/dev/null 2>&1 &"
    );
    let (code, _, err) = alice.exec("base", &setup);
    assert_eq!(code, 0, "{err}");
}

/// What reaches the app: the path below the prefix and the query without the link's
/// signature, `Host: localhost:PORT` (dev servers check it) and the forwarded headers; never
/// the owner's token nor the preview's cookie (the app's own cookies do go). The app's
/// answer cannot widen a service worker's scope nor set a preview cookie.
#[test]
fn the_app_gets_the_request_without_the_owners_credentials() {
    let site = Site::new("preview-head");
    site.start("127.0.0.1:0");
    let alice = serving(&site);
    // Answers every request with its head.
    let echo = r#"#!/bin/sh
cr=$(printf '\r')
head=""
while IFS= read -r line; do
  case "$line" in "$cr"|"") break ;; esac
  head="$head$line
"
done
printf 'HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nService-Worker-Allowed: /\r\nSet-Cookie: sg_preview_0=1; Path=/\r\nX-App: 1\r\n\r\n%s' "$head"
"#;
    serve_script(&alice, 9002, echo);
    let r = alice.json("expose", &["base", "9002"]);
    let id = r["exposure"]["id"].as_str().unwrap();
    let base = path_of(r["exposure"]["url"].as_str().unwrap());
    let link = path_of(r["link"].as_str().unwrap());
    // A link to a deeper page keeps the app's query, without the signature.
    let (_, signature) = link.split_once('?').unwrap();
    let a = get(
        &site,
        &format!("{base}deep/page?a=1&{signature}&b=%20"),
        None,
    );
    assert_eq!(a.status, 303, "{}", a.body);
    assert_eq!(a.header("location"), format!("{base}deep/page?a=1&b=%20"));
    let cookie = a
        .header("set-cookie")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let headers = serde_json::json!({
        "Authorization": format!("Bearer {}", alice.token()),
        "Cookie": format!("app=1; {cookie}"),
    });
    let a = request(
        &site,
        "GET",
        &format!("{base}deep/page?a=1&b=%20"),
        &headers.to_string(),
    );
    assert_eq!(a.status, 200, "{}", a.body);
    let head: Vec<String> = a
        .body
        .lines()
        .map(|l| l.trim_end().to_lowercase())
        .collect();
    assert_eq!(head[0], "get /deep/page?a=1&b=%20 http/1.1", "{head:?}");
    for want in [
        "host: localhost:9002".to_string(),
        format!("x-forwarded-prefix: /preview/{id}"),
        "x-forwarded-proto: https".to_string(),
        format!("x-forwarded-host: {}", site.addr()),
        "cookie: app=1".to_string(),
    ] {
        assert!(head.contains(&want), "{want:?} not in {head:?}");
    }
    // The app's own headers come back; what would reach beyond its preview does not.
    assert_eq!(a.header("x-app"), "1");
    assert_eq!(a.header("service-worker-allowed"), "");
    assert_eq!(a.header("set-cookie"), "");
    let leaked = head
        .iter()
        .any(|l| l.starts_with("authorization") || l.contains("sg_preview"));
    assert!(!leaked, "credentials reached the app: {head:?}");
}

/// A one-connection WebSocket server (run for each connection by [`serve_script`]): reads
/// the request head, answers 101 with the RFC 6455 sample key's accept, sends a text frame
/// "hello", then echoes what comes.
const WS_SERVER: &str = r#"#!/bin/sh
cr=$(printf '\r')
while IFS= read -r line; do
  case "$line" in "$cr"|"") break ;; esac
done
printf 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n'
printf '\201\005hello'
exec cat
"#;

/// Serves [`WS_SERVER`] on port 9001 of alice's env `base` and exposes it (`flags`): the
/// path of a hot-reload socket through its preview.
fn hot_reload(alice: &User<'_>, flags: &[&str]) -> String {
    serve_script(alice, 9001, WS_SERVER);
    let r = alice.json("expose", &[&["base", "9001"][..], flags].concat());
    format!("{}hmr", path_of(r["exposure"]["url"].as_str().unwrap()))
}

/// Asserts a [`websockets`] client's line says the handshake reached [`WS_SERVER`].
fn upgraded(said: &serde_json::Value) {
    assert_eq!(said["status"], 101, "{said}");
    assert_eq!(said["accept"], "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    assert_eq!(said["first"], hex(b"\x81\x05hello"));
}

/// Asserts a [`websockets`] client's echo lines came back as sent.
fn echoed(said: &[serde_json::Value]) {
    for e in said {
        assert_eq!(e["echo"], e["sent"], "{e}");
    }
}

/// A dev server's hot-reload socket: a WebSocket handshake through the preview reaches the
/// server in the env (its `101` and accept key come back), and frames go both ways as they
/// are.
#[test]
fn websockets_pass_through_a_preview() {
    let site = Site::new("preview-ws");
    site.start("127.0.0.1:0");
    let alice = serving(&site);
    let path = hot_reload(&alice, &[]);
    let auth = serde_json::json!({ "Authorization": format!("Bearer {}", alice.token()) });
    let mut ws = websockets(&site, &path, &auth.to_string(), "127.0.0.1", 1);
    upgraded(&said(&mut ws, 1)[0]);
    echo(&mut ws);
    echoed(&said(&mut ws, 1));
    assert!(ws.wait().status.success());
}

/// An upgraded connection counts in the node's connection caps until it ends: with
/// `per_address = 4`, four WebSockets through a public preview from one address are taken
/// and held, and the next ones are closed at accept like any connection over the cap; the
/// four still relay, and once they end, the address is let in again.
#[test]
fn preview_websockets_count_in_the_connection_caps() {
    let site = Site::new("preview-ws-caps");
    let config = site.config("[connections]\nper_address = 4\n");
    site.start_with("127.0.0.1:0", &["--config", &config]);
    let alice = serving(&site);
    let path = hot_reload(&alice, &["--public"]);
    let mut ws = websockets(&site, &path, "{}", "127.0.0.2", 8);
    let first = said(&mut ws, 8);
    first[..4].iter().for_each(upgraded);
    assert_eq!(first[4..], ["refused"; 4], "{first:?}");
    echo(&mut ws);
    echoed(&said(&mut ws, 4));
    assert!(ws.wait().status.success());
    eventually("the ended WebSockets' connections to be freed", || {
        let mut again = websockets(&site, &path, "{}", "127.0.0.2", 4);
        let ok = said(&mut again, 4).iter().all(|s| s["status"] == 101);
        echo(&mut again);
        ok
    });
    let log = site.log();
    assert!(
        log.contains("connection refused: 4 connections open from 127.0.0.2"),
        "{log}"
    );
}

/// An open preview WebSocket keeps its env in use: with a short `idle_timeout`, an env
/// whose only session is a hot-reload socket outlives envs spawned after the socket opened
/// and ended by that timeout, one after the other, and the socket still relays.
#[test]
fn an_open_preview_websocket_keeps_its_env_from_going_idle() {
    let site = Site::new("preview-ws-idle");
    let config = site.config("idle_timeout = \"3s\"\n");
    site.start_with("127.0.0.1:0", &["--config", &config]);
    let alice = serving(&site);
    let path = hot_reload(&alice, &["--public"]);
    let mut ws = websockets(&site, &path, "{}", "127.0.0.1", 1);
    upgraded(&said(&mut ws, 1)[0]);
    for idle in ["idle1", "idle2"] {
        alice.ok("spawn", &["base", "--as", idle]);
        eventually("the idle env to be ended", || {
            !alice.env_names().iter().any(|e| e == idle)
        });
    }
    assert_eq!(alice.env_names(), ["base"]);
    echo(&mut ws);
    echoed(&said(&mut ws, 1));
    assert!(ws.wait().status.success());
}

/// A WebSocket through a preview whose two ends went silent is closed after `[connections]
/// stream_idle_timeout`, its connection no longer held: the node says so in its log, and a
/// frame sent afterwards is not echoed.
#[test]
fn a_silent_preview_websocket_is_closed() {
    let site = Site::new("preview-ws-silent");
    let config = site.config("[connections]\nstream_idle_timeout = 2\n");
    site.start_with("127.0.0.1:0", &["--config", &config]);
    let alice = serving(&site);
    let path = hot_reload(&alice, &["--public"]);
    let mut ws = websockets(&site, &path, "{}", "127.0.0.1", 1);
    upgraded(&said(&mut ws, 1)[0]);
    eventually("the silent WebSocket to be closed", || {
        site.log().contains("relayed upgrade closed: silent for 2s")
    });
    echo(&mut ws);
    let after = said(&mut ws, 1);
    assert!(after.iter().all(|e| e["echo"] != e["sent"]), "{after:?}");
}

/// A listener on 127.0.0.1:7000 whose queue is full (backlog 0, filled by itself, never
/// accepting): the kernel drops further connects, which wait for their timeout. Prints
/// `ready` once full.
const STUCK: &str = r#"
import socket, time
l = socket.socket()
l.bind(("127.0.0.1", 7000))
l.listen(0)
fill = [socket.socket() for _ in range(3)]
for f in fill:
    f.setblocking(False)
    f.connect_ex(("127.0.0.1", 7000))
time.sleep(1)
print("ready", flush=True)
time.sleep(3600)
"#;

/// `python3 -c FLOOD ADDR PATH N OUT`: N GETs of PATH at once, each appending
/// `STATUS FIRST-LINE-OF-BODY` to file OUT once answered.
const FLOOD: &str = r#"
import http.client, ssl, sys, threading
host, port = sys.argv[1].rsplit(":", 1)
path, n, out = sys.argv[2], int(sys.argv[3]), sys.argv[4]
lock = threading.Lock()
def get():
    c = http.client.HTTPSConnection(host, int(port), context=ssl._create_unverified_context(), timeout=120)
    c.request("GET", path)
    r = c.getresponse()
    line = "%d %s\n" % (r.status, r.read().decode().split("\n")[0])
    with lock, open(out, "a") as f:
        f.write(line)
threads = [threading.Thread(target=get) for _ in range(n)]
[t.start() for t in threads]
[t.join() for t in threads]
"#;

/// The threads of the node's process that are opening sockets inside envs.
fn netns_threads(site: &Site) -> usize {
    let pid = site.server.borrow().as_ref().unwrap().child.id();
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == "ssh-netns")
        .count()
}

/// One user's connects to an address in their env that never answers take a share of the
/// node's threads for them, not all: while 80 requests to alice's preview of a port whose
/// listener never accepts wait on their connects, bob's preview is served before any of
/// alice's is answered; alice's requests past her share wait a bounded time and are told to
/// try again (429), the others get the 502 of a port that does not answer.
#[test]
fn one_users_unanswered_previews_leave_others_served() {
    let site = Site::new("preview-slots");
    site.start("127.0.0.1:0");
    let bob = serving_as(&site, "bob");
    let bobs = bob.json("expose", &["base", "8000", "--public"]);
    let bobs = path_of(bobs["exposure"]["url"].as_str().unwrap());
    let alice = site.user("alice");
    alice.login();
    alice.ok("spawn", &["base"]);
    let state = site
        .data()
        .join(format!("envs/base+{}/state.json", alice.name));
    let state: serde_json::Value = serde_json::from_slice(&std::fs::read(state).unwrap()).unwrap();
    let pid = state["init_pid"].to_string();
    let mut stuck = Bg(Some(
        Command::new("nsenter")
            .args(["-t", &pid, "-n", "python3", "-c", STUCK])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    ));
    let mut ready = String::new();
    BufReader::new(stuck.0.as_mut().unwrap().stdout.as_mut().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready, "ready\n");
    let alices = alice.json("expose", &["base", "7000", "--public"]);
    let alices = path_of(alices["exposure"]["url"].as_str().unwrap());
    let out = site.scratch.path().join("flood.txt");
    let flood = Bg(Some(
        Command::new("python3")
            .args(["-c", FLOOD, &site.addr(), &alices, "80"])
            .arg(&out)
            .spawn()
            .unwrap(),
    ));
    eventually("alice's connects to be waiting", || {
        netns_threads(&site) >= 16
    });
    // The rest of alice's requests come in meanwhile.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let served = get(&site, &bobs, None);
    assert_eq!(served.status, 200, "{}", served.body);
    assert_eq!(served.body, "hello-from-the-env\n");
    let answered = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(
        answered.is_empty(),
        "{} of alice's requests were answered before bob's",
        answered.lines().count()
    );
    assert!(flood.wait().status.success());
    let answered = std::fs::read_to_string(&out).unwrap();
    let busy = answered.lines().filter(|l| l.starts_with("429 ")).count();
    assert!(busy > 0, "{answered}");
    for line in answered.lines() {
        match &line[..4] {
            "429 " => assert!(
                line.ends_with(
                    "spawngrid: too many connections are being opened in your envs at \
                     once; try again in a few seconds"
                ),
                "{line}"
            ),
            "502 " => assert!(line.contains("nothing answers on port 7000"), "{line}"),
            _ => panic!("{answered}"),
        }
    }
}

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
