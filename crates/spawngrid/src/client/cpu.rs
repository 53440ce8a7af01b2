//! `spawngrid cpu ENV [-- CMD...]`: an interactive terminal session in one of your envs, over
//! a WebSocket to the node's `GET /api/envs/{env}/cpu` (protocol in docs/node.md).
//!
//! The terminal side is [`crate::term`]'s (shared with `spawngrid env cpu`): raw mode while the
//! session runs (restored on every way out), window size changes sent as resize messages, and
//! the remote exit code as ours. With stdin not a terminal (a pipe) its bytes go in as they
//! come and its end is sent as ^D. The socket runs on a small current-thread tokio runtime
//! (see docs/architecture.md for why not a blocking WebSocket).

use super::{auth, http, NodeArgs};
use crate::term;
use anyhow::{bail, Context, Result};
use api::CpuMessage;
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use std::io::Write;
use std::process::ExitCode;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::{self, Message};

/// `spawngrid cpu`.
#[derive(Args)]
pub struct CpuArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// The env.
    env: String,
    /// A command and its arguments to run instead of root's login shell (after `--`).
    #[arg(last = true)]
    cmd: Vec<String>,
}

/// `spawngrid cpu`: runs the session; exits with the remote command's code.
pub fn cpu(a: CpuArgs) -> Result<ExitCode> {
    let (host, token) = auth(&a.node)?;
    super::ignore_sigpipe();
    let interactive = term::interactive();
    let (rows, cols) = term::size();
    let (resize_tx, resizes) = mpsc::unbounded_channel();
    if interactive {
        // First, before any thread starts (see watch_size).
        term::watch_size(move |rows, cols| {
            let _ = resize_tx.send((rows, cols));
        });
    }
    let query = api::CpuQuery {
        rows: Some(rows),
        cols: Some(cols),
        cmd: match a.cmd.is_empty() {
            true => None,
            false => Some(serde_json::to_string(&a.cmd)?),
        },
    };
    let path = api::routes::cpu(&a.env, &query);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let code = runtime.block_on(session(&host, &token, &path, interactive, resizes))?;
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

/// The WebSocket to `path` on `host`: TCP, TLS with the pinned certificate, the upgrade with
/// the token. A refusal (no such env, not running) is the node's one-line message.
async fn connect(
    host: &str,
    token: &str,
    path: &str,
) -> Result<tokio_tungstenite::WebSocketStream<http::TlsStream>> {
    let stream = http::connect_tls(host).await?;
    let mut request = format!("wss://{host}{path}")
        .into_client_request()
        .context("building the WebSocket request")?;
    request.headers_mut().insert(
        AUTHORIZATION,
        format!("Bearer {token}")
            .parse()
            .context("the stored token is not a valid header")?,
    );
    match tokio_tungstenite::client_async(request, stream).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(resp)) => {
            let body = resp.body().clone().unwrap_or_default();
            match serde_json::from_slice::<api::ErrorBody>(&body) {
                Ok(e) => bail!("{}", e.error),
                Err(_) => bail!("{host} answered HTTP {}", resp.status()),
            }
        }
        Err(e) => Err(e).with_context(|| format!("WebSocket handshake with {host}")),
    }
}

/// Runs the session; the remote exit code.
async fn session(
    host: &str,
    token: &str,
    path: &str,
    interactive: bool,
    mut resizes: mpsc::UnboundedReceiver<(u16, u16)>,
) -> Result<i32> {
    let ws = connect(host, token, path).await?;
    let (mut sink, mut stream) = ws.split();
    use tokio::signal::unix::{signal, SignalKind};
    let mut term_sig = signal(SignalKind::terminate()).context("watching SIGTERM")?;
    let mut hup_sig = signal(SignalKind::hangup()).context("watching SIGHUP")?;
    // Raw from here: everything below returns through this guard.
    let _raw = if interactive {
        term::RawMode::enter()
    } else {
        None
    };
    let (input_tx, mut input) = mpsc::channel::<Vec<u8>>(16);
    term::forward_input(interactive, move |bytes| {
        input_tx
            .blocking_send(bytes.to_vec())
            .map_err(|_| std::io::Error::other("the session ended"))
    });
    // Keyboard and resizes out. Never ends but when the connection breaks.
    let writer = async {
        let mut input_open = true;
        loop {
            let msg = tokio::select! {
                bytes = input.recv(), if input_open => match bytes {
                    Some(b) => Message::binary(b),
                    None => {
                        input_open = false;
                        continue;
                    }
                },
                Some((rows, cols)) = resizes.recv() => {
                    let m = CpuMessage::Resize([rows, cols]);
                    Message::text(serde_json::to_string(&m).unwrap_or_default())
                }
                else => std::future::pending().await,
            };
            if sink.send(msg).await.is_err() {
                return;
            }
        }
    };
    // Screen in, until the exit code and the close.
    let reader = async {
        let mut code = None;
        let mut stdout = std::io::stdout();
        loop {
            let msg = tokio::select! {
                m = stream.next() => m,
                _ = term_sig.recv() => bail!("terminated (SIGTERM)"),
                _ = hup_sig.recv() => bail!("hung up (SIGHUP)"),
            };
            match msg {
                Some(Ok(Message::Binary(bytes))) => {
                    stdout
                        .write_all(&bytes)
                        .and_then(|()| stdout.flush())
                        .context("writing the session's output")?;
                }
                Some(Ok(Message::Text(text))) => match serde_json::from_str(text.as_str()) {
                    Ok(CpuMessage::Exit(c)) => code = Some(c),
                    Ok(CpuMessage::Error(e)) => bail!("{e}"),
                    _ => {}
                },
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e).context(format!("the session with {host} broke")),
            }
        }
        code.with_context(|| {
            format!("{host} ended the session without an exit status (see the node's log)")
        })
    };
    tokio::pin!(reader);
    tokio::select! {
        r = &mut reader => r,
        () = writer => reader.await,
    }
}
