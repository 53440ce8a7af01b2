//! The HTTPS API: the router, the session routes (login, logout, scores, envs), the access
//! log and the TLS accept loop. Route plumbing is in [`crate::http`].

use crate::error::{Error, Kind};
use crate::http::{
    self, accept, bearer, blocking, env_param, ok, AuthUser, ClientAddr, JsonBody, CURRENT_USER,
};
use crate::{envs, forward, nodes, Node};
use api::{routes, LoginRequest, LoginResponse, ScoreEntry, ScoresQuery};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use utoipa_axum::router::OpenApiRouter;

/// The host name clients reached us by (for attach commands), or the configured one.
pub(crate) fn public_host(node: &Node, parts: &axum::http::HeaderMap) -> String {
    if let Some(h) = &node.config.public_host {
        return h.clone();
    }
    let host = parts
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // Strip the port: "[::1]:16998" → "[::1]" → "::1"; "name:16998" → "name".
    let bare = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    let valid = !bare.is_empty()
        && bare
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:".contains(&b));
    if valid {
        bare.to_string()
    } else {
        node.name.clone()
    }
}

/// `POST /api/logout`: the token the request carries stops working (other tokens of the
/// user, e.g. on other machines, do not).
#[utoipa::path(
    post,
    path = routes::LOGOUT,
    summary = "log out: the token this request carries stops working (the user's other tokens do \
        not)",
    responses((status = 200, description = "whose token was revoked", body = api::LogoutResponse)),
)]
async fn logout(
    State(node): State<Arc<Node>>,
    AuthUser(user): AuthUser,
    headers: axum::http::HeaderMap,
) -> Result<Response, Error> {
    let token = bearer(&headers)?;
    let n = node.clone();
    blocking(move || Ok(n.cat.revoke_token(&token)?)).await?;
    tracing::info!(user = %user, "logout");
    Ok(ok(&api::LogoutResponse { user }))
}

#[utoipa::path(
    post,
    path = routes::LOGIN,
    security(),
    summary = "log in: a bearer token for the other routes",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "a token", body = LoginResponse),
        (status = 401, description = "wrong user name or password"),
        (status = 429, description = "too many failed logins for this user or from this address: \
            wait"),
    ),
)]
async fn login(
    State(node): State<Arc<Node>>,
    client: Option<axum::Extension<ClientAddr>>,
    JsonBody(req): JsonBody<LoginRequest>,
) -> Result<Response, Error> {
    // Not a possible user name: refused like a wrong password, and neither tracked nor
    // logged (a name is what keys the backoff table and goes into the log).
    if catalog::check_owner(&req.user).is_err() || req.password.len() > 1024 {
        tracing::warn!("login refused: invalid user name or oversized password");
        return Err(Error::unauthorized("wrong user name or password"));
    }
    let peer = client.map(|c| c.0 .0);
    let attempt = crate::auth::Attempt::new(&req.user, peer);
    if let Some(left) = node.backoff.attempt_locked(&attempt) {
        tracing::warn!(user = %req.user, ?peer, "login refused: locked after failed attempts");
        return Err(Error::new(
            Kind::TooMany,
            format!(
                "too many failed logins for {} or from this address: try again in {} s",
                req.user,
                left.as_secs().max(1)
            ),
        ));
    }
    let n = node.clone();
    let user = req.user.clone();
    let ttl = node.config.token_days.saturating_mul(86_400);
    let token = blocking(move || {
        n.cat
            .login(&req.user, &req.password, ttl)
            .map_err(Error::from)
    })
    .await?;
    match token {
        Some(t) => {
            node.backoff.attempt_succeeded(&attempt);
            tracing::info!(user = %user, ?peer, "login");
            Ok(ok(&LoginResponse {
                user,
                token: t.secret,
                expires: t.expires.max(0) as u64,
            }))
        }
        None => {
            let lock = node.backoff.attempt_failed(&attempt);
            tracing::warn!(user = %user, ?peer, lock_secs = lock.as_secs(), "login failed");
            Err(Error::unauthorized("wrong user name or password"))
        }
    }
}

#[utoipa::path(
    get,
    path = routes::SCORES,
    params(ScoresQuery),
    summary = "the names the user may spawn (their own, and OWNER/NAME shared with them)",
    responses((status = 200, description = "names, sorted", body = [ScoreEntry])),
)]
async fn scores(
    State(node): State<Arc<Node>>,
    AuthUser(user): AuthUser,
    query: Result<Query<ScoresQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Error> {
    let Query(q) = query.map_err(|e| Error::invalid(format!("bad query: {e}")))?;
    let list = blocking(move || {
        let recs = node.cat.visible(&user, q.pattern.as_deref())?;
        Ok(recs
            .into_iter()
            .map(|r| ScoreEntry {
                size: node.sizes.size(&r.score),
                name: r.name,
                owner: r.owner,
                score: r.score.to_hex(),
                created: r.created.max(0) as u64,
            })
            .collect::<Vec<_>>())
    })
    .await?;
    Ok(ok(&list))
}

#[utoipa::path(
    post,
    path = routes::ENVS,
    summary = "spawn an env from one of the user's names (on this node, or placed on the grid)",
    request_body = api::SpawnRequest,
    responses(
        (status = 200, description = "the new env", body = api::EnvInfo),
        (status = 404, description = "the user has no such name"),
        (status = 409, description = "the user already has an env of that name, or is over their \
            limits"),
        (status = 503, description = "no room on the node (or the grid), or the node placed on \
            could not be reached"),
    ),
)]
async fn spawn_env(
    State(node): State<Arc<Node>>,
    AuthUser(user): AuthUser,
    headers: axum::http::HeaderMap,
    JsonBody(mut req): JsonBody<api::SpawnRequest>,
) -> Result<Response, Error> {
    // Placed on the grid: maybe on another node (which then spawns it as asked).
    if let Some(want) = req.place.take().filter(|_| !forward::forwarded(&headers)) {
        let (n, mem) = (node.clone(), req.mem);
        if let Some(peer) = blocking(move || nodes::place(&n, &want, mem)).await? {
            return forward::spawn_on(&node, &peer, &headers, &req).await;
        }
    }
    let host = public_host(&node, &headers);
    let info = blocking(move || {
        let st = envs::spawn(&node, &user, &req)?;
        tracing::info!(user = %user, env = %st.name, "spawned");
        Ok(envs::info_spawned(&node, &st, &user, &host, &req.name))
    })
    .await?;
    Ok(ok(&info))
}

#[utoipa::path(
    get,
    path = routes::ENVS,
    summary = "the user's envs on every node of the grid",
    responses((status = 200, description = "envs, sorted by name", body = [api::EnvInfo])),
)]
async fn list_envs(
    State(node): State<Arc<Node>>,
    AuthUser(user): AuthUser,
    headers: axum::http::HeaderMap,
) -> Result<Response, Error> {
    let host = public_host(&node, &headers);
    let (n, u) = (node.clone(), user.clone());
    let here = blocking(move || envs::list(&n, &u, &host)).await?;
    let list = nodes::everywhere(&node, user, &headers, here).await?;
    Ok(ok(&list))
}

#[utoipa::path(
    post,
    path = routes::SAVE,
    params(api::openapi::EnvPath),
    summary = "save the env's state as a new name; the env keeps running",
    request_body = api::SaveRequest,
    responses(
        (status = 200, description = "saved", body = api::SaveResponse),
        (status = 404, description = "the user has no such env"),
        (status = 409, description = "the name is already bound, or the env is not running"),
    ),
)]
async fn save_env(
    State(node): State<Arc<Node>>,
    AuthUser(user): AuthUser,
    env: Result<Path<String>, axum::extract::rejection::PathRejection>,
    JsonBody(req): JsonBody<api::SaveRequest>,
) -> Result<Response, Error> {
    let env = env_param(env)?;
    let resp = blocking(move || {
        let st = envs::load_own(&node, &user, &env)?;
        let r = envs::save(&node, &user, &st, &req.name)?;
        tracing::info!(user = %user, env = %st.name, name = %r.name, score = %r.score, "saved");
        Ok(r)
    })
    .await?;
    Ok(ok(&resp))
}

#[utoipa::path(
    post,
    path = routes::FORK,
    params(api::openapi::EnvPath),
    summary = "save the env once and spawn COUNT copies of that save",
    description = "N spawns and one save; a copy that cannot be spawned booms the ones spawned \
        before it (the save stays bound).",
    request_body = api::ForkRequest,
    responses(
        (status = 200, description = "forked", body = api::ForkResponse),
        (status = 404, description = "the user has no such env"),
        (status = 409, description = "the prefix is already a name or a copy's env name is taken, \
            the env is not running, or a copy is over the user's limits (the copies spawned are \
            boomed)"),
        (status = 503, description = "the node has no room for a copy (the copies spawned are \
            boomed)"),
    ),
)]
async fn fork_env(
    State(node): State<Arc<Node>>,
    AuthUser(user): AuthUser,
    headers: axum::http::HeaderMap,
    env: Result<Path<String>, axum::extract::rejection::PathRejection>,
    JsonBody(req): JsonBody<api::ForkRequest>,
) -> Result<Response, Error> {
    let env = env_param(env)?;
    let host = public_host(&node, &headers);
    let resp = blocking(move || {
        let st = envs::load_own(&node, &user, &env)?;
        let r = crate::fork::fork(&node, &user, &st, &req, &host)?;
        tracing::info!(user = %user, env = %st.name, name = %r.save.name, copies = r.envs.len(), "forked");
        Ok(r)
    })
    .await?;
    Ok(ok(&resp))
}

#[utoipa::path(
    delete,
    path = routes::ENV,
    params(api::openapi::EnvPath),
    summary = "boom: destroy the env (its names stay)",
    responses(
        (status = 200, description = "destroyed", body = api::BoomResponse),
        (status = 404, description = "the user has no such env"),
    ),
)]
async fn boom_env(
    State(node): State<Arc<Node>>,
    AuthUser(user): AuthUser,
    env: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Response, Error> {
    let env = env_param(env)?;
    let resp = blocking(move || {
        let st = envs::load_own(&node, &user, &env)?;
        envs::boom(&node, &st)?;
        tracing::info!(user = %user, env = %st.name, "boomed");
        Ok(api::BoomResponse { env })
    })
    .await?;
    Ok(ok(&resp))
}

#[utoipa::path(
    get,
    path = routes::NOTICES,
    summary = "what the node did to the user's envs unasked (evictions, expiries), last 7 days, \
        oldest first",
    responses((status = 200, description = "notices", body = [api::Notice])),
)]
async fn notices(
    State(node): State<Arc<Node>>,
    AuthUser(user): AuthUser,
) -> Result<Response, Error> {
    let list = blocking(move || Ok(crate::notices::list(&node.rt.data, &user)?)).await?;
    Ok(ok(&list))
}

/// Prometheus metrics: the recorded counters and histograms, and gauges read now.
#[utoipa::path(
    get,
    path = routes::METRICS,
    security(),
    summary = "Prometheus metrics: envs, spawns, saves, library bytes, request latencies, the grid",
    responses((status = 200, body = String, content_type = "text/plain",
        description = "text exposition format 0.0.4")),
)]
async fn metrics(State(node): State<Arc<Node>>) -> Result<Response, Error> {
    let text = blocking(move || {
        let envs = runtime::state::list(&node.rt)?;
        let running = envs.iter().filter(|st| st.alive()).count();
        let packs = match node.sizes.library() {
            Some(lib) => lib.packed_bytes().map_err(anyhow::Error::from)?,
            None => 0,
        };
        let gauges = [
            ("spawngrid_envs", "envs on this node", envs.len() as f64),
            (
                "spawngrid_envs_running",
                "envs whose init is alive",
                running as f64,
            ),
            (
                "spawngrid_capacity_envs",
                "most envs this node admits",
                node.limits.max_envs as f64,
            ),
            (
                "spawngrid_capacity_memory_bytes",
                "most memory this node's envs may reserve",
                node.limits.max_mem as f64,
            ),
            (
                "spawngrid_library_stored_bytes",
                "bytes in the local library (packs and indexes)",
                packs as f64,
            ),
        ];
        let mut text = node.metrics.render(&gauges);
        // The grid as the catalog has it; without the catalog, this node's own gauges.
        match nodes::gauges(&node) {
            Ok(grid) => text.push_str(&grid),
            Err(e) => tracing::warn!("grid gauges: {}", e.message),
        }
        if let Some(counts) = node.store.remote_counts()? {
            text.push_str(&crate::metrics::remote_library(&counts));
        }
        Ok(text)
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

#[utoipa::path(
    get,
    path = routes::OPENAPI,
    security(),
    summary = "this document",
    responses((status = 200, description = "the OpenAPI document", body = Object)),
)]
async fn openapi(axum::Extension(Document(doc)): axum::Extension<Document>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        doc.to_string(),
    )
        .into_response()
}

/// The OpenAPI document as JSON, made once from the router's routes.
#[derive(Clone)]
struct Document(Arc<str>);

async fn not_found(req: Request) -> Error {
    Error::not_found(format!(
        "no route {} {} (see {})",
        req.method(),
        req.uri().path(),
        routes::OPENAPI
    ))
}

async fn method_not_allowed(req: Request) -> Response {
    let error = format!(
        "{} is not allowed on {} (see {})",
        req.method(),
        req.uri().path(),
        routes::OPENAPI
    );
    http::json(StatusCode::METHOD_NOT_ALLOWED, &api::ErrorBody { error })
}

/// Logs every request: method, path, status, user, duration. Never headers, queries or
/// bodies (they carry tokens and passwords).
async fn access_log(
    State(node): State<Arc<Node>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    // The route template (`/api/envs/{env}`), not the path: metrics keep few label sets.
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_string();
    let start = Instant::now();
    CURRENT_USER
        .scope(std::sync::Mutex::new(None), async move {
            let resp = next.run(req).await;
            let user = CURRENT_USER
                .try_with(|u| u.lock().unwrap_or_else(|e| e.into_inner()).clone())
                .ok()
                .flatten()
                .unwrap_or_default();
            tracing::info!(
                %method,
                %path,
                status = resp.status().as_u16(),
                user = %user,
                ms = start.elapsed().as_secs_f64() * 1e3,
                "request"
            );
            let status = resp.status().as_u16().to_string();
            let labels = [("route", route.as_str()), ("method", method.as_str())];
            node.metrics
                .observe("spawngrid_http_request_seconds", &labels, start.elapsed());
            node.metrics.inc(
                "spawngrid_http_requests_total",
                &[labels[0], labels[1], ("status", &status)],
            );
            resp
        })
        .await
}

/// The routes of one env, each sent on to the env's node when it runs on another one.
fn env_routes(node: Arc<Node>) -> OpenApiRouter<Arc<Node>> {
    let mut routes = OpenApiRouter::new()
        .routes(utoipa_axum::routes!(boom_env))
        .routes(utoipa_axum::routes!(crate::exec::route))
        .routes(utoipa_axum::routes!(save_env))
        .routes(utoipa_axum::routes!(fork_env))
        .routes(utoipa_axum::routes!(crate::cpu::cpu))
        .routes(utoipa_axum::routes!(crate::egress::put))
        .routes(utoipa_axum::routes!(crate::files::get, crate::files::put))
        .routes(utoipa_axum::routes!(
            crate::exposures::list,
            crate::exposures::expose,
            crate::exposures::unexpose
        ));
    // What the forwarding layer may answer for any of them.
    let doc = routes.get_openapi_mut();
    let misdirected = "the env runs on another node that is down, or that this node cannot \
                       send it to: the message names the node";
    api::openapi::add_error(doc, "421", misdirected);
    api::openapi::add_error(doc, "503", "the env's node could not be reached: try again");
    routes.route_layer(axum::middleware::from_fn_with_state(
        node,
        forward::env_routes,
    ))
}

/// The API's routes, each registered with its OpenAPI operation (`#[utoipa::path]` on the
/// handler): the one list of routes, from which both the router and the document are made.
fn api_routes(node: Arc<Node>) -> OpenApiRouter<Arc<Node>> {
    use crate::{invite, snapshots, users};
    let (schemas, paths, preview) = utoipa_axum::routes!(crate::preview::route);
    OpenApiRouter::with_openapi(api::openapi::header())
        .routes(utoipa_axum::routes!(login))
        .routes(utoipa_axum::routes!(logout))
        .routes(utoipa_axum::routes!(scores))
        .routes(utoipa_axum::routes!(crate::lineage::route))
        .routes(utoipa_axum::routes!(crate::lineage::diff_route))
        .routes(utoipa_axum::routes!(list_envs, spawn_env))
        .merge(env_routes(node))
        .routes(utoipa_axum::routes!(nodes::list))
        .routes(utoipa_axum::routes!(openapi))
        .routes(utoipa_axum::routes!(invite::invite))
        .routes(utoipa_axum::routes!(invite::pending))
        .routes(utoipa_axum::routes!(invite::refuse))
        .routes(utoipa_axum::routes!(invite::accept))
        .routes(utoipa_axum::routes!(snapshots::share))
        .routes(utoipa_axum::routes!(snapshots::unshare))
        .routes(utoipa_axum::routes!(users::delete))
        .routes(utoipa_axum::routes!(users::password))
        .routes(utoipa_axum::routes!(users::keys, users::add_key))
        .routes(utoipa_axum::routes!(users::remove_key))
        .routes(utoipa_axum::routes!(notices))
        .routes(utoipa_axum::routes!(metrics))
        // A preview takes every method (WebDAV's too), not only those OpenAPI can name.
        .routes((schemas, paths, preview.fallback(crate::preview::route)))
}

/// The API's router, and the web UI's pages.
pub fn router(node: Arc<Node>) -> Router {
    let (api, mut doc) = api_routes(node.clone()).split_for_parts();
    api::openapi::complete(&mut doc);
    let doc = Document(
        doc.to_json()
            .expect("the OpenAPI document serializes")
            .into(),
    );
    api
        // The preview's root is in the document; its bare form and the paths below it
        // (which OpenAPI cannot template) go to the same handler.
        .route(routes::PREVIEW, any(crate::preview::route))
        .route(
            &format!("{}/{{*rest}}", routes::PREVIEW),
            any(crate::preview::route),
        )
        .route(crate::ui::INDEX, get(crate::ui::index))
        .route(crate::ui::ASSETS, get(crate::ui::asset))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::Extension(doc))
        .layer(axum::middleware::from_fn_with_state(
            node.clone(),
            access_log,
        ))
        .with_state(node)
}

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves HTTPS on `listener` until `shutdown` completes, with TLS configuration `tls`: the
/// one for clients, and the one for other nodes ([`crate::peers`]).
pub async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    tls: (Arc<rustls::ServerConfig>, Arc<rustls::ServerConfig>),
    shutdown: impl Future<Output = ()>,
) {
    let app = router(node.clone());
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            c = accept(&listener, "https") => c,
            _ = &mut shutdown => break,
        };
        let permit = match node.gate.admit(peer.ip(), &node.config.connections) {
            Ok(p) => p,
            Err(why) => {
                tracing::warn!(%peer, "connection refused: {why}");
                node.metrics.inc("spawngrid_connections_refused_total", &[]);
                continue;
            }
        };
        let (plain, peers) = tls.clone();
        let node = node.clone();
        let header_timeout = node.config.connections.header();
        // Each request knows its client's address (login backoff per address), and carries
        // the connection's permit for what takes the connection over: an upgraded stream
        // outlives this task and keeps the connection counted until it ends.
        let app = app
            .clone()
            .layer(axum::Extension(ClientAddr(peer.ip())))
            .layer(axum::Extension(permit.clone()));
        tokio::spawn(async move {
            // `permit` lives as long as this task: the connection stays counted.
            let handshake = crate::peers::handshake(tcp, plain, peers);
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "TLS handshake: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            if let Some(name) = crate::peers::vouch(&node, &tls, &permit).await {
                tracing::debug!(%peer, "node {name}: its connection counts in the max only");
            }
            let service = hyper_util::service::TowerToHyperService::new(app);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                // `spawngrid cpu`'s WebSocket, and those a preview or another node relays.
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(%peer, "connection: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use hyper::service::Service;
    use hyper_util::service::TowerToHyperService;

    /// The methods an OpenAPI path item can name.
    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    /// Sends `method path` (no token, empty body) through the router: status and body.
    async fn call(app: &TowerToHyperService<Router>, method: &str, path: &str) -> (u16, String) {
        let req = axum::http::Request::builder()
            .method(method.to_uppercase().as_str())
            .uri(path)
            .body(Body::empty())
            .unwrap();
        let resp = app.call(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// Whether the router answered from its fallbacks: no such route, or no such method.
    fn unrouted((status, body): &(u16, String)) -> bool {
        (*status == 404 && body.contains("no route")) || *status == 405
    }

    /// The document the router serves and the router are one list of routes: every (method,
    /// path) the document names is routed (the answer is not the router's "no route" or
    /// "not allowed"), every other method on its paths is not allowed (HEAD aside where GET
    /// is named: axum answers it with GET's handler), and no two paths share an operation id.
    #[tokio::test]
    async fn the_document_names_exactly_the_routes_served() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::Config {
            data: dir.path().join("data"),
            ..Default::default()
        };
        let app = TowerToHyperService::new(router(Arc::new(Node::open(config).unwrap())));
        let (status, body) = call(&app, "get", routes::OPENAPI).await;
        assert_eq!(status, 200, "{body}");
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(unrouted(&call(&app, "get", "/api/no-such-route").await));
        let mut ids = std::collections::BTreeMap::new();
        let mut operations = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            let filled = ["env", "user", "key", "name", "id"]
                .iter()
                .fold(path.clone(), |p, v| p.replace(&format!("{{{v}}}"), "x"));
            for method in METHODS {
                let answer = call(&app, method, &filled).await;
                match item.get(method) {
                    Some(op) => {
                        operations += 1;
                        // The forwarding layer's errors are on every env route.
                        let forwarded = path.starts_with("/api/envs/{env}");
                        assert_eq!(op["responses"].get("421").is_some(), forwarded, "{path}");
                        assert!(
                            !unrouted(&answer),
                            "{method} {path} is not routed: {answer:?}"
                        );
                        // One id per handler: the preview's one handler takes every method.
                        let id = op["operationId"].as_str().unwrap().to_string();
                        let first = ids.entry(id.clone()).or_insert(path);
                        assert_eq!(*first, path, "operation id {id} on two paths");
                    }
                    None if method == "head" && item.get("get").is_some() => {}
                    None => assert_eq!(answer.0, 405, "{method} {path} is routed, not documented"),
                }
            }
        }
        assert!(operations > 30, "only {operations} operations");
    }
}
