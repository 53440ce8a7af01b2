//! The exposure routes (`GET`, `POST`, `DELETE /api/envs/{env}/exposures`): an env's owner
//! serves a port of it at a preview URL ([`crate::preview`]), lists and ends them. The
//! exposures are rows of the catalog, so any node lists them and serves their URLs; an env
//! route, the request goes to the env's node ([`crate::forward::env_routes`]).

use crate::error::Error;
use crate::http::{blocking, env_param, ok, AuthUser, JsonBody};
use crate::{envs, preview, Node};
use api::{ExposeRequest, ExposeResponse, UnexposeQuery};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use std::sync::Arc;

/// The URL of a preview at `host` (bare, as `public_host` gives it) on this node's port.
pub fn url(node: &Node, host: &str, id: &str) -> String {
    let host = match host.contains(':') {
        true => format!("[{host}]"),
        false => host.to_string(),
    };
    format!(
        "https://{host}:{}{}",
        node.config.listen.port(),
        preview::path(id)
    )
}

/// What the API shows of exposure `e` of env `env`.
pub fn info(node: &Node, e: &catalog::Exposure, env: &str, host: &str) -> api::Exposure {
    api::Exposure {
        url: url(node, host, &e.id),
        id: e.id.clone(),
        env: env.to_string(),
        port: e.port,
        public: e.public,
        created: e.created.max(0) as u64,
    }
}

/// The exposures of env `st` as the API shows them (none if the catalog cannot say).
pub fn of_env(node: &Node, st: &runtime::EnvState, env: &str, host: &str) -> Vec<api::Exposure> {
    match node.cat.exposures_of(&st.name) {
        Ok(list) => list.iter().map(|e| info(node, e, env, host)).collect(),
        Err(e) => {
            tracing::warn!(env = %st.name, "listing exposures: {e}");
            Vec::new()
        }
    }
}

/// `POST`: exposes a port of the user's running env; the exposure and a signed link.
#[utoipa::path(
    post,
    path = api::routes::EXPOSURES,
    params(api::openapi::EnvPath),
    summary = "expose: serve a port of the env at a preview URL",
    description = "Exposing a port already exposed keeps its id and URL (public as asked now) and \
        gives a new signed link; rotate first gives the exposure a new key, so every link and \
        cookie given out before stops working. The port need not be listened on yet: a request \
        finds out (502).",
    request_body = ExposeRequest,
    responses(
        (status = 200, description = "exposed", body = api::ExposeResponse),
        (status = 404, description = "the user has no such env"),
        (status = 409, description = "the env is not running"),
    ),
)]
pub async fn expose(
    State(node): State<Arc<Node>>,
    AuthUser(user): AuthUser,
    headers: HeaderMap,
    env: Result<Path<String>, PathRejection>,
    JsonBody(req): JsonBody<ExposeRequest>,
) -> Result<Response, Error> {
    let env = env_param(env)?;
    if req.port == 0 {
        return Err(Error::invalid("port must be 1 to 65535"));
    }
    let ttl = req.ttl.unwrap_or(api::DEFAULT_LINK_TTL).max(1);
    let host = crate::server::public_host(&node, &headers);
    let resp = blocking(move || {
        let st = envs::load_own(&node, &user, &env)?;
        if !st.alive() {
            return Err(Error::conflict(format!("env {env} is not running: boom it")));
        }
        let mut e = node.cat.expose(&st.name, &user, req.port, req.public)?;
        if req.rotate {
            node.cat.rotate_exposure(&e.id)?;
            e = node.cat.exposure(&e.id)?.ok_or_else(|| {
                Error::conflict(format!("port {} of {env} was unexposed meanwhile", req.port))
            })?;
        }
        let expires = runtime::state::now().saturating_add(ttl);
        let exposure = info(&node, &e, &env, &host);
        let link = format!("{}?{}", exposure.url, preview::link_query(&e.key, &e.id, expires));
        tracing::info!(user = %user, env = %st.name, port = e.port, public = e.public, id = %e.id, "exposed");
        Ok(ExposeResponse {
            exposure,
            link,
            link_expires: expires,
        })
    })
    .await?;
    Ok(ok(&resp))
}

/// `GET`: the user's env's exposures.
#[utoipa::path(
    get,
    path = api::routes::EXPOSURES,
    operation_id = "exposures",
    params(api::openapi::EnvPath),
    summary = "the env's ports served at preview URLs",
    responses(
        (status = 200, description = "the exposures, by port", body = [api::Exposure]),
        (status = 404, description = "the user has no such env"),
    ),
)]
pub async fn list(
    State(node): State<Arc<Node>>,
    AuthUser(user): AuthUser,
    headers: HeaderMap,
    env: Result<Path<String>, PathRejection>,
) -> Result<Response, Error> {
    let env = env_param(env)?;
    let host = crate::server::public_host(&node, &headers);
    let list = blocking(move || {
        let st = envs::load_own(&node, &user, &env)?;
        let list = node.cat.exposures_of(&st.name)?;
        Ok(list
            .iter()
            .map(|e| info(&node, e, &env, &host))
            .collect::<Vec<_>>())
    })
    .await?;
    Ok(ok(&list))
}

/// `DELETE ?port=P` or `?id=ID`: ends an exposure of the user's env; the one ended.
#[utoipa::path(
    delete,
    path = api::routes::EXPOSURES,
    params(api::openapi::EnvPath, api::UnexposeQuery),
    summary = "unexpose: end an exposure (its URL and links stop working)",
    responses(
        (status = 200, description = "the exposure ended", body = api::Exposure),
        (status = 400, description = "neither port nor id, or both"),
        (status = 404, description = "no such env, or no such exposure"),
    ),
)]
pub async fn unexpose(
    State(node): State<Arc<Node>>,
    AuthUser(user): AuthUser,
    headers: HeaderMap,
    env: Result<Path<String>, PathRejection>,
    query: Result<Query<UnexposeQuery>, QueryRejection>,
) -> Result<Response, Error> {
    let env = env_param(env)?;
    let Query(q) = query.map_err(|e| Error::invalid(format!("bad query: {e}")))?;
    let host = crate::server::public_host(&node, &headers);
    let ended = blocking(move || {
        let st = envs::load_own(&node, &user, &env)?;
        let list = node.cat.exposures_of(&st.name)?;
        let found = match (q.port, q.id.as_deref()) {
            (Some(port), None) => list.into_iter().find(|e| e.port == port),
            (None, Some(id)) => list.into_iter().find(|e| e.id == id),
            _ => {
                return Err(Error::invalid(
                    "name the exposure by port or by id (one of them)",
                ))
            }
        };
        let what = q.port.map_or_else(
            || format!("preview {}", q.id.unwrap_or_default()),
            |p| format!("port {p}"),
        );
        let e =
            found.ok_or_else(|| Error::not_found(format!("{what} of env {env} is not exposed")))?;
        node.cat.unexpose(&st.name, e.port)?;
        tracing::info!(user = %user, env = %st.name, port = e.port, id = %e.id, "unexposed");
        Ok(info(&node, &e, &env, &host))
    })
    .await?;
    Ok(ok(&ended))
}
