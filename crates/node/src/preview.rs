//! Preview URLs: `https://NODE/preview/ID/...` serves a port an env exposed
//! ([`crate::exposures`]), proxying HTTP/1.1 to it inside the env's network namespace.
//!
//! - **Where**: the exposure is found in the catalog by its id, so any node of a grid takes
//!   the request; one for an env on another node is sent there as other env requests are
//!   ([`crate::forward`]). The node of the env connects to `127.0.0.1:PORT` from inside the
//!   env's own network namespace (as `ssh -L` does, [`crate::ssh::netns`]): every env has one,
//!   so a preview reaches what the env's processes reach on their loopback, never the host's.
//! - **What goes**: the path below `/preview/ID` (`/preview/ID/app.js` arrives as `/app.js`,
//!   as dev servers serving `/` expect; `X-Forwarded-Prefix: /preview/ID` says what was cut),
//!   the query without the link's signature, every header but `Authorization` and the
//!   preview's own cookie (the owner's credentials never reach the app), `Host:
//!   localhost:PORT` (dev servers refuse unknown hosts; `X-Forwarded-Host` keeps the
//!   client's). Bodies stream both ways; an upgrade (a dev server's hot-reload WebSocket) is
//!   joined and bytes copied, and until it ends the client's connection counts in the
//!   node's caps ([`crate::conns`]) and the env is in use (never idle). hyper bounds header
//!   sizes both ways.
//! - **Who**: a public exposure lets anyone in. A private one lets in the owner's token
//!   (`Authorization: Bearer`), or the preview's cookie, or a signed link: `?sg_exp=T&sg_sig=S`,
//!   S an HMAC-SHA256 with the exposure's key over its id and T; a link sets the cookie (its
//!   own HMAC, [`COOKIE_SECS`]) and redirects to the URL without the signature, so a browser
//!   works. Rotating the key or unexposing revokes every link and cookie at once.

use crate::error::{Error, Kind};
use crate::http::{blocking, AuthUser};
use crate::{forward, Node};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

/// The path every preview is under.
pub const PREFIX: &str = "/preview/";

/// How long the cookie a signed link sets lets a browser in: 12 hours, whatever the link's
/// own expiry (so a link may be short-lived: it only has to be opened in time).
pub const COOKIE_SECS: u64 = 12 * 3600;

/// The query parameters of a signed link.
const EXP: &str = "sg_exp";
const SIG: &str = "sg_sig";

/// The cookie of exposure `id`.
fn cookie_name(id: &str) -> String {
    format!("sg_preview_{id}")
}

/// The hex HMAC-SHA256 of `what` (`link` or `cookie`), `id` and `exp` with `key` (hex).
fn sign(key: &str, what: &str, id: &str, exp: u64) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_bytes());
    let tag = ring::hmac::sign(&key, format!("{what}\0{id}\0{exp}").as_bytes());
    hex::encode(tag.as_ref())
}

/// Whether `sig` is the signature of `what`, `id`, `exp` with `key`, in constant time.
fn signed(key: &str, what: &str, id: &str, exp: u64, sig: &str) -> bool {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_bytes());
    let Ok(tag) = hex::decode(sig) else {
        return false;
    };
    ring::hmac::verify(&key, format!("{what}\0{id}\0{exp}").as_bytes(), &tag).is_ok()
}

/// The query of a link to exposure `id` (key `key`) that works until `exp`.
pub fn link_query(key: &str, id: &str, exp: u64) -> String {
    format!("{EXP}={exp}&{SIG}={}", sign(key, "link", id, exp))
}

/// The preview path of exposure `id` (ends in `/`).
pub fn path(id: &str) -> String {
    format!("{PREFIX}{id}/")
}

/// A preview's error: its status and one line of text (a browser shows it as it is).
fn page(e: Error) -> Response {
    let mut r = (
        crate::http::status(e.kind),
        format!("spawngrid: {}\n", e.message),
    )
        .into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The route: every method on every path under [`PREFIX`].
#[utoipa::path(
    method(get, post, put, delete, patch, head, options, trace),
    path = api::routes::PREVIEW_ROOT,
    operation_id = "preview",
    params(api::openapi::PreviewPath),
    security(("bearer" = []), ()),
    summary = "a preview: the request goes to the exposed port inside the env",
    description = "Any method and any path below /preview/{id}/ is proxied as HTTP/1.1 to the port \
        inside the env, with the /preview/{id} prefix stripped and X-Forwarded-Prefix set; \
        WebSocket upgrades pass through. A private exposure lets in the owner's token \
        (Authorization: Bearer), the exposure's cookie, or a signed link (query sg_exp and sg_sig, \
        which sets the cookie and redirects without them). Errors are one line of text.",
    responses(
        (status = 200, description = "what the server in the env answers (any status)"),
        (status = 303, description = "a signed link was taken: the cookie is set, go to the URL \
            without the signature"),
        (status = 401, body = String, content_type = "text/plain",
            description = "a private exposure and no token, cookie or signed link"),
        (status = 403, body = String, content_type = "text/plain",
            description = "a token of another user, or a link or cookie not signed with the \
                exposure's key (revoked)"),
        (status = 404, body = String, content_type = "text/plain",
            description = "no such exposure (never made, or ended)"),
        (status = 410, body = String, content_type = "text/plain",
            description = "the signed link expired"),
        (status = 429, body = String, content_type = "text/plain",
            description = "the owner's envs already have their share of the node's connects in \
                progress (to addresses slow to answer): try again in a few seconds"),
        (status = 502, body = String, content_type = "text/plain",
            description = "nothing answers on the port inside the env"),
    ),
)]
pub async fn route(State(node): State<Arc<Node>>, req: Request) -> Response {
    serve(node, req).await.unwrap_or_else(page)
}

/// Exposure id and the rest of the path (`/` at least) of a preview request's path.
fn split(path: &str) -> Option<(&str, &str)> {
    let tail = path.strip_prefix(PREFIX)?;
    match tail.find('/') {
        Some(i) => Some((&tail[..i], &tail[i..])),
        None => Some((tail, "")),
    }
}

async fn serve(node: Arc<Node>, req: Request) -> Result<Response, Error> {
    let (id, rest) = split(req.uri().path()).ok_or_else(|| Error::not_found("no preview"))?;
    let (id, rest) = (id.to_string(), rest.to_string());
    if rest.is_empty() {
        // Relative links of the page need the slash.
        return Ok(redirect(
            StatusCode::PERMANENT_REDIRECT,
            &path(&id),
            req.uri().query(),
        ));
    }
    let n = node.clone();
    let key = id.clone();
    let (exposure, elsewhere) = blocking(move || {
        let Some(e) = n.cat.exposure(&key)? else {
            return Err(Error::not_found(format!(
                "no preview {key}: it was never made, or it was unexposed, or its env is gone"
            )));
        };
        let elsewhere = forward::node_of(&n, &e.env_id)?;
        Ok((e, elsewhere))
    })
    .await?;
    if let Some(peer) = elsewhere.filter(|_| !forward::forwarded(req.headers())) {
        return forward::send(&node, &peer, req).await;
    }
    let now = runtime::state::now();
    if let Some(to) = admit(&node, &exposure, req.headers(), req.uri(), now).await? {
        return Ok(to);
    }
    proxy(&node, &exposure, rest, req).await
}

/// A redirect to `path` with `query`.
fn redirect(status: StatusCode, path: &str, query: Option<&str>) -> Response {
    let to = match query {
        Some(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path.to_string(),
    };
    let mut r = status.into_response();
    if let Ok(v) = HeaderValue::from_str(&to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// Lets the request in (`None`), answers it (a signed link: the cookie and a redirect), or
/// refuses it.
async fn admit(
    node: &Arc<Node>,
    e: &catalog::Exposure,
    headers: &HeaderMap,
    uri: &axum::http::Uri,
    now: u64,
) -> Result<Option<Response>, Error> {
    let query = uri.query().unwrap_or("");
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
    };
    if let (Some(exp), Some(sig)) = (param(EXP), param(SIG)) {
        check(e, "link", exp, sig, now)?;
        let until = now + COOKIE_SECS;
        let value = format!("{until}.{}", sign(&e.key, "cookie", &e.id, until));
        let cookie = format!(
            "{}={value}; Path={}; Max-Age={COOKIE_SECS}; HttpOnly; Secure; SameSite=Lax",
            cookie_name(&e.id),
            path(&e.id)
        );
        let mut r = redirect(StatusCode::SEE_OTHER, uri.path(), Some(&app_query(query)));
        let v = HeaderValue::from_str(&cookie).map_err(|e| Error::internal(&e.into()))?;
        r.headers_mut().insert(header::SET_COOKIE, v);
        return Ok(Some(r));
    }
    if e.public {
        return Ok(None);
    }
    if headers.contains_key(header::AUTHORIZATION) {
        let token = crate::http::bearer(headers)?;
        let AuthUser(user) = AuthUser::of_token(node, token).await?;
        if user != e.owner {
            return Err(Error::new(
                Kind::Forbidden,
                format!("preview {} belongs to another user", e.id),
            ));
        }
        return Ok(None);
    }
    if let Some(value) = cookie(headers, &cookie_name(&e.id)) {
        let (exp, sig) = value.split_once('.').unwrap_or((&value, ""));
        check(e, "cookie", exp, sig, now)?;
        return Ok(None);
    }
    Err(Error::unauthorized(format!(
        "preview {} is private: open the link `spawngrid expose` printed, or send the \
         owner's token",
        e.id
    )))
}

/// Checks a signature `sig` of `what` until `exp` (text) of exposure `e`: 403 when it is not
/// the exposure's key's (revoked, rotated or forged), 410 when it expired; the expiry.
fn check(e: &catalog::Exposure, what: &str, exp: &str, sig: &str, now: u64) -> Result<u64, Error> {
    let revoked = || {
        Error::new(
            Kind::Forbidden,
            format!(
                "this {what} to preview {} is not valid (revoked or rotated): ask its owner \
                 for a new link (`spawngrid expose ENV PORT`)",
                e.id
            ),
        )
    };
    let exp: u64 = exp.parse().map_err(|_| revoked())?;
    if !signed(&e.key, what, &e.id, exp, sig) {
        return Err(revoked());
    }
    if exp <= now {
        return Err(Error::new(
            Kind::Gone,
            format!(
                "this {what} to preview {} expired: ask its owner for a new link \
                 (`spawngrid expose ENV PORT`)",
                e.id
            ),
        ));
    }
    Ok(exp)
}

/// The value of cookie `name` in a request's `Cookie` headers.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// The `Cookie` header without the cookies of previews (`sg_preview_*`), if any is left.
fn app_cookies(headers: &HeaderMap) -> Option<HeaderValue> {
    let kept: Vec<&str> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|c| !c.is_empty() && !c.starts_with("sg_preview_"))
        .collect();
    (!kept.is_empty())
        .then(|| HeaderValue::from_str(&kept.join("; ")).ok())
        .flatten()
}

/// `query` without a signed link's parameters, the rest as it came.
fn app_query(query: &str) -> String {
    let ours = |p: &&str| {
        let key = p.split('=').next().unwrap_or("");
        key == EXP || key == SIG
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && !ours(p))
        .collect();
    kept.join("&")
}

/// The largest response head the app may send, in bytes.
const MAX_HEAD: usize = 64 << 10;

/// Sends `req` to the exposed port inside the env, as `rest` (and the query without the
/// signature); the answer, streamed.
async fn proxy(
    node: &Arc<Node>,
    e: &catalog::Exposure,
    rest: String,
    mut req: Request,
) -> Result<Response, Error> {
    let (n, env_id) = (node.clone(), e.env_id.clone());
    let st = blocking(move || {
        runtime::state::load(&n.rt, &env_id)
            .ok()
            .filter(|st| st.alive())
            .ok_or_else(|| {
                Error::new(
                    Kind::BadGateway,
                    format!("env {env_id} is not running on node {}", n.name),
                )
            })
    })
    .await?;
    let env = crate::envs::user_env_name(&st, &e.owner).to_string();
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, e.port));
    let tcp = crate::ssh::netns::connect(&st, addr).await.map_err(|err| {
        if let Some(busy) = err.downcast_ref::<crate::ssh::netns::Busy>() {
            return Error::new(Kind::TooMany, busy.to_string());
        }
        Error::new(
            Kind::BadGateway,
            format!(
                "nothing answers on port {} in env {env} ({err:#}): start the server there, \
                 listening on 127.0.0.1 or 0.0.0.0",
                e.port
            ),
        )
    })?;
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(MAX_HEAD)
        .handshake(TokioIo::new(tcp))
        .await
        .map_err(|err| Error::new(Kind::BadGateway, format!("port {}: {err}", e.port)))?;
    // The env is in use while the connection lasts (a slow download) and, once upgraded,
    // while the relayed stream does (a hot-reload socket): the connection's task ends at the
    // upgrade, the relay's copy holds its own mark.
    let busy = node.activity.session(&st.name);
    let upgraded = node.activity.session(&st.name);
    tokio::spawn(async move {
        let _busy = busy;
        if let Err(err) = conn.with_upgrades().await {
            tracing::debug!("preview connection: {err}");
        }
    });
    let query = app_query(req.uri().query().unwrap_or(""));
    let target = if query.is_empty() {
        rest
    } else {
        format!("{rest}?{query}")
    };
    *req.uri_mut() = target
        .parse()
        .map_err(|err| Error::invalid(format!("bad path: {err}")))?;
    let h = req.headers_mut();
    if let Some(host) = h.remove(header::HOST) {
        h.insert("x-forwarded-host", host);
    }
    h.insert(header::HOST, value(&format!("localhost:{}", e.port))?);
    h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
    h.insert("x-forwarded-prefix", value(&format!("{PREFIX}{}", e.id))?);
    h.remove(header::AUTHORIZATION);
    h.remove(forward::FORWARDED);
    match app_cookies(h) {
        Some(c) => h.insert(header::COOKIE, c),
        None => h.remove(header::COOKIE),
    };
    let mut resp = forward::relay(sender, req, upgraded, node.config.connections.stream_idle())
        .await
        .map_err(|err| {
            Error::new(
                Kind::BadGateway,
                format!(
                    "the server on port {} in env {env} failed: {}",
                    e.port, err.message
                ),
            )
        })?;
    confine(resp.headers_mut());
    Ok(resp.map(Body::new))
}

/// Drops what an app's answer could do to the node's origin beyond its own preview: a
/// service worker scope wider than its path (`Service-Worker-Allowed`: one at `/` would
/// control the web UI's pages), wiping the origin's storage (`Clear-Site-Data`: the UI's
/// session), and cookies named as the node's preview cookies.
fn confine(headers: &mut HeaderMap) {
    headers.remove("service-worker-allowed");
    headers.remove("clear-site-data");
    let cookies: Vec<HeaderValue> = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter(|v| !v.as_bytes().trim_ascii_start().starts_with(b"sg_preview_"))
        .cloned()
        .collect();
    headers.remove(header::SET_COOKIE);
    for c in cookies {
        headers.append(header::SET_COOKIE, c);
    }
}

/// A header value from text made here.
fn value(text: &str) -> Result<HeaderValue, Error> {
    HeaderValue::from_str(text)
        .map_err(|_| Error::invalid(format!("{text:?} is not a header value")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposure() -> catalog::Exposure {
        catalog::Exposure {
            id: "00ff".into(),
            env_id: "web+alice".into(),
            owner: "alice".into(),
            port: 8000,
            public: false,
            key: "ab".repeat(32),
            created: 1,
        }
    }

    #[test]
    fn signatures_hold_for_their_key_id_and_time_only() {
        let e = exposure();
        let sig = sign(&e.key, "link", &e.id, 100);
        assert_eq!(check(&e, "link", "100", &sig, 99).unwrap(), 100);
        // Expired: 410; another time, kind, key or a forged one: 403.
        assert_eq!(
            check(&e, "link", "100", &sig, 100).unwrap_err().kind,
            Kind::Gone
        );
        for (what, exp, s) in [
            ("link", "101", &sig[..]),
            ("cookie", "100", &sig),
            ("link", "100", "00"),
            ("link", "x", &sig),
        ] {
            let err = check(&e, what, exp, s, 0).unwrap_err();
            assert_eq!(err.kind, Kind::Forbidden, "{what} {exp} {s}");
        }
        let rotated = catalog::Exposure {
            key: "cd".repeat(32),
            ..e.clone()
        };
        assert_eq!(
            check(&rotated, "link", "100", &sig, 0).unwrap_err().kind,
            Kind::Forbidden
        );
    }

    #[test]
    fn paths_split_into_id_and_rest() {
        assert_eq!(split("/preview/ab/x/y"), Some(("ab", "/x/y")));
        assert_eq!(split("/preview/ab/"), Some(("ab", "/")));
        assert_eq!(split("/preview/ab"), Some(("ab", "")));
        assert_eq!(split("/api/x"), None);
    }

    #[test]
    fn preview_cookies_stay_with_the_node() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, "a=1; sg_preview_00ff=9.ab".parse().unwrap());
        h.append(header::COOKIE, "sg_preview_11=2; b=2".parse().unwrap());
        assert_eq!(cookie(&h, "sg_preview_00ff").as_deref(), Some("9.ab"));
        assert_eq!(app_cookies(&h).unwrap(), "a=1; b=2");
        h.clear();
        h.append(header::COOKIE, "sg_preview_11=2".parse().unwrap());
        assert_eq!(app_cookies(&h), None);
        assert_eq!(app_query("a=%20&sg_exp=1&b&sg_sig=ff"), "a=%20&b");
        let mut h = HeaderMap::new();
        h.insert("service-worker-allowed", "/".parse().unwrap());
        h.insert("clear-site-data", "\"storage\"".parse().unwrap());
        h.append(
            header::SET_COOKIE,
            "sg_preview_00ff=1; Path=/".parse().unwrap(),
        );
        h.append(header::SET_COOKIE, "app=2".parse().unwrap());
        h.insert("x-app", "1".parse().unwrap());
        confine(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h[header::SET_COOKIE], "app=2");
    }
}
