//! `GET /api/envs/{env}/cpu`: an interactive terminal session in one of the user's envs over a
//! WebSocket (what `spawngrid cpu ENV` talks to).
//!
//! Before the upgrade the request is checked like every env route (token, the env is the
//! user's — another user's answers 404 —, running, a well-formed query), so a client gets a
//! plain JSON error for each. After it, the command runs on a terminal inside the env
//! ([`crate::pty`]) and the socket carries:
//!
//! - binary frames: terminal bytes, both ways (keyboard in, screen out);
//! - text frames: [`api::CpuMessage`] JSON — `{"resize":[rows,cols]}` from the client,
//!   `{"exit":code}` from the node just before it closes, `{"error":"..."}` from the node if
//!   the command could not be started.
//!
//! When the command exits, its last output is sent (what it wrote up to 100 ms after its
//! exit), then the exit code, then a close frame. When the client goes away first (closes,
//! or its connection drops), the command's whole session is killed. The node pings the client
//! every 30 s; a client that sends nothing, not even the pongs, for `[connections]
//! stream_idle_timeout` is taken as gone (a shell left idle is not: its client answers the
//! pings). The connection counts in the node's caps ([`crate::conns`]) until then.
//!
//! The token comes in the `Authorization` header as on every route, or — from browsers, which
//! cannot set that header on a WebSocket — as the subprotocol [`BEARER_PROTOCOL`]`TOKEN`
//! offered beside [`PROTOCOL`], which the node answers with (never in the URL: URLs end up
//! in logs).

use crate::conns::Permit;
use crate::error::{chain, Error};
use crate::http::{blocking, env_param, AuthUser, Checked};
use crate::pty::{self, Pty};
use crate::{envs, Node};
use api::CpuMessage;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{close_code, CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::FromRequestParts;
use axum::extract::{Path, Query, State};
use axum::http::{header, request::Parts, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::time::Duration;

/// The WebSocket subprotocol the node answers with when a client offers it (a browser that
/// offers subprotocols refuses an answer without one of them).
pub const PROTOCOL: &str = "spawngrid";

/// The prefix of the subprotocol that carries a token: `bearer.TOKEN` (a token is `sg_` and hex
/// digits, valid in a subprotocol name).
pub const BEARER_PROTOCOL: &str = "bearer.";

/// The user of a cpu request: the `Authorization: Bearer` token when the header is there (as
/// on every route), else the token offered as the subprotocol `bearer.TOKEN`; 401 otherwise.
pub struct CpuUser(pub String);

impl FromRequestParts<Arc<Node>> for CpuUser {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, node: &Arc<Node>) -> Result<Self, Error> {
        let user = match protocol_token(&parts.headers) {
            Some(token)
                if !parts.headers.contains_key(header::AUTHORIZATION)
                    && parts.extensions.get::<Checked>().is_none() =>
            {
                let user = AuthUser::of_token(node, token).await?;
                parts.extensions.insert(Checked(user.0.clone()));
                user
            }
            _ => AuthUser::from_request_parts(parts, node).await?,
        };
        Ok(CpuUser(user.0))
    }
}

/// The token of a `bearer.TOKEN` subprotocol among those the client offers.
fn protocol_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(BEARER_PROTOCOL))
        .map(String::from)
}

/// The largest message a client may send (keyboard input comes in small pieces).
const MAX_MESSAGE: usize = 1 << 20;

/// How long output is still read after the command exits (background writers may hold the
/// terminal open for ever).
const LAST_OUTPUT: Duration = Duration::from_millis(100);

/// How often the node pings a session's client (a quarter of `[connections]
/// stream_idle_timeout` if that is shorter): its pongs keep an idle terminal's session, and
/// any relay on the way, from being silent.
const PING_EVERY: Duration = Duration::from_secs(30);

/// What a session runs: the command and its terminal (`TERM` is `xterm-256color`).
struct Session {
    argv: Vec<String>,
    rows: u16,
    cols: u16,
}

impl Session {
    /// From the query: the command (JSON array, default the login shell) and the size.
    fn from_query(q: api::CpuQuery) -> Result<Session, Error> {
        let argv = match q.cmd.as_deref() {
            None => pty::login_shell(),
            Some(text) => {
                let argv: Vec<String> = serde_json::from_str(text).map_err(|e| {
                    Error::invalid(format!("cmd must be a JSON array of strings: {e}"))
                })?;
                if argv.first().is_none_or(String::is_empty) {
                    return Err(Error::invalid(
                        "cmd must name a command (a non-empty first element)",
                    ));
                }
                if argv.iter().any(|a| a.contains('\0')) {
                    return Err(Error::invalid("cmd must not contain NUL bytes"));
                }
                argv
            }
        };
        Ok(Session {
            argv,
            rows: q.rows.unwrap_or(24).max(1),
            cols: q.cols.unwrap_or(80).max(1),
        })
    }
}

/// The route: checks, then upgrades to the session.
#[utoipa::path(
    get,
    path = api::routes::CPU,
    params(api::openapi::EnvPath, api::CpuQuery),
    summary = "an interactive terminal session in the env over a WebSocket",
    description = "Upgrade to a WebSocket (RFC 6455). Binary frames carry terminal bytes both ways \
        (keyboard in, screen out). Text frames carry CpuMessage JSON: {\"resize\":[rows,cols]} \
        from the client; {\"exit\":code} from the node just before it closes. The session runs \
        root's login shell in the env, or cmd. When the client goes away, every process of the \
        session is killed.",
    responses(
        (status = 101, description = "switching to the WebSocket protocol; then frames as \
            described"),
        (status = 400, description = "not a WebSocket upgrade, or a bad query (cmd not a JSON \
            array of strings)"),
        (status = 404, description = "the user has no such env"),
        (status = 409, description = "the env is not running"),
    ),
)]
pub async fn cpu(
    State(node): State<Arc<Node>>,
    CpuUser(user): CpuUser,
    env: Result<Path<String>, PathRejection>,
    query: Result<Query<api::CpuQuery>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    permit: Option<Extension<Permit>>,
) -> Result<Response, Error> {
    let env = env_param(env)?;
    let Query(q) = query.map_err(|e| Error::invalid(format!("bad query: {e}")))?;
    let session = Session::from_query(q)?;
    let n = node.clone();
    let st = blocking(move || {
        let st = envs::load_own(&n, &user, &env)?;
        if !st.alive() {
            return Err(Error::conflict(format!(
                "env {env} is not running: boom it"
            )));
        }
        tracing::info!(user = %user, env = %st.name, "cpu session");
        Ok(st)
    })
    .await?;
    let upgrade = upgrade.map_err(|e| {
        Error::invalid(format!(
            "{}: this route is a WebSocket (use `spawngrid cpu`)",
            e.body_text()
        ))
    })?;
    Ok(upgrade
        .protocols([PROTOCOL])
        .max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .on_upgrade(move |socket| async move {
            // The connection counts in the node's caps until the session ends.
            let _permit = permit;
            run(node, st, session, socket).await
        })
        .into_response())
}

/// Runs the session on an upgraded socket.
async fn run(node: Arc<Node>, st: runtime::EnvState, s: Session, socket: WebSocket) {
    // The env counts as in use (never evicted) for the whole session.
    let _busy = node.activity.session(&st.name);
    let (mut tx, mut rx) = socket.split();
    let pty = match Pty::spawn(&node.rt, &st, s.argv, Vec::new(), s.rows, s.cols).await {
        Ok(p) => p,
        Err(e) => {
            let e = e.context(format!("starting the session in {}", st.name));
            tracing::warn!(env = %st.name, "cpu: {}", chain(&e));
            let _ = tx.send(control(&CpuMessage::Error(chain(&e)))).await;
            let _ = tx.send(close(close_code::ERROR)).await;
            return;
        }
    };
    let idle = node.config.connections.stream_idle();
    // Keyboard, resizes and pongs in; ends only when the client is gone or silent for `idle`
    // (true), never for a terminal that stopped taking input.
    let input = async {
        let mut writable = true;
        loop {
            let msg = match tokio::time::timeout(idle, rx.next()).await {
                Ok(Some(Ok(msg))) => msg,
                Ok(_) => return false,
                Err(_) => return true,
            };
            match msg {
                Message::Binary(bytes) if writable => {
                    writable = pty.write_all(&bytes).await.is_ok();
                }
                Message::Text(text) => match serde_json::from_str(text.as_str()) {
                    Ok(CpuMessage::Resize([rows, cols])) => {
                        let _ = pty.resize(rows, cols);
                    }
                    _ => tracing::debug!(env = %st.name, "cpu: ignored control message"),
                },
                Message::Close(_) => return false,
                _ => {}
            }
        }
    };
    // Screen out and pings, then the exit code.
    let output = async {
        let mut buf = vec![0u8; 16 << 10];
        let every = (idle / 4).min(PING_EVERY);
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let code = loop {
            tokio::select! {
                _ = ping.tick() => {
                    if tx.send(Message::Ping(Default::default())).await.is_err() {
                        return;
                    }
                }
                r = pty.read(&mut buf) => match r {
                    Ok(n @ 1..) => {
                        if tx.send(Message::binary(buf[..n].to_vec())).await.is_err() {
                            return;
                        }
                    }
                    _ => break pty.wait().await,
                },
                code = pty.wait() => {
                    let last = tokio::time::Instant::now() + LAST_OUTPUT;
                    while let Ok(Ok(n @ 1..)) =
                        tokio::time::timeout_at(last, pty.read(&mut buf)).await
                    {
                        if tx.send(Message::binary(buf[..n].to_vec())).await.is_err() {
                            return;
                        }
                    }
                    break code;
                }
            }
        };
        let code = code.unwrap_or_else(|e| {
            tracing::warn!(env = %st.name, "cpu: {e:#}");
            i32::from(runtime::exec::ENTER_FAILED)
        });
        tracing::info!(env = %st.name, code, "cpu session ended");
        let _ = tx.send(control(&CpuMessage::Exit(code))).await;
        let _ = tx.send(close(close_code::NORMAL)).await;
    };
    tokio::select! {
        silent = input => match silent {
            true => tracing::info!(env = %st.name, "cpu client silent for {idle:?}: ending its session"),
            false => tracing::info!(env = %st.name, "cpu client went away: ending its session"),
        },
        _ = output => {}
    }
    // Dropping the terminal kills what is left of the session if the command still runs.
    drop(pty);
}

/// A control message as a text frame.
fn control(m: &CpuMessage) -> Message {
    Message::text(serde_json::to_string(m).unwrap_or_default())
}

/// A close frame with `code`.
fn close(code: u16) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: "".into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(cmd: Option<&str>) -> api::CpuQuery {
        api::CpuQuery {
            rows: Some(0),
            cols: None,
            cmd: cmd.map(String::from),
        }
    }

    #[test]
    fn tokens_come_from_a_bearer_subprotocol() {
        let mut h = HeaderMap::new();
        assert_eq!(protocol_token(&h), None);
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            "spawngrid, bearer.sg_00ff".parse().unwrap(),
        );
        assert_eq!(protocol_token(&h).as_deref(), Some("sg_00ff"));
        h.insert(header::SEC_WEBSOCKET_PROTOCOL, "spawngrid".parse().unwrap());
        assert_eq!(protocol_token(&h), None);
    }

    #[test]
    fn queries_become_sessions() {
        let s = Session::from_query(query(None)).unwrap();
        assert_eq!(s.argv, pty::login_shell());
        assert_eq!((s.rows, s.cols), (1, 80));
        let s = Session::from_query(query(Some(r#"["ls","-l"]"#))).unwrap();
        assert_eq!(s.argv, ["ls", "-l"]);
        for cmd in ["ls", "[]", r#"[""]"#, r#"["a\u0000"]"#] {
            let e = Session::from_query(query(Some(cmd))).err().unwrap();
            assert_eq!(e.kind, crate::error::Kind::Invalid, "{cmd:?}");
        }
    }
}
