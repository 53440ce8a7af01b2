//! A name's lineage (`GET /api/log?name=NAME`): the snapshot the name is bound to, then each
//! parent (a save's parent is the snapshot its env was spawned from), newest first, each with
//! the names the user may spawn that are bound to it. What `spawngrid lib log` shows offline,
//! for the web UI and any client; only names the user can see are named.

use crate::error::Error;
use crate::http::{blocking, ok, AuthUser};
use crate::Node;
use anyhow::Context;
use api::{LogEntry, LogQuery};
use axum::extract::{Query, State};
use axum::response::Response;
use std::sync::Arc;

/// `user`'s view of the ancestry of the name they address as `address`.
pub fn log(node: &Node, user: &str, address: &str) -> Result<Vec<LogEntry>, Error> {
    crate::snapshots::check_address(user, address)?;
    let mut score = crate::snapshots::resolve(&node.cat, user, address, false)?;
    let visible = node.cat.visible(user, None)?;
    let lib = node.store.library()?;
    let mut out = Vec::new();
    loop {
        let snap = lib
            .snapshot(&score)
            .with_context(|| format!("reading snapshot {score}"))?;
        out.push(LogEntry {
            score: score.to_hex(),
            names: visible
                .iter()
                .filter(|r| r.score == score)
                .map(|r| catalog::shares::address(user, &r.owner, &r.name))
                .collect(),
            author: snap.author.clone(),
            created: (snap.time_ns.max(0) / 1_000_000_000) as u64,
            note: snap.note.clone(),
            bytes: snap.bytes(),
        });
        match snap.parent {
            Some(p) => score = p,
            None => return Ok(out),
        }
    }
}

/// `GET /api/log?name=NAME`.
#[utoipa::path(
    get,
    path = api::routes::LOG,
    operation_id = "log",
    params(api::LogQuery),
    summary = "a name's ancestry: its snapshot, then each parent (what it was spawned from when \
        saved), newest first",
    responses(
        (status = 200, description = "the snapshots, newest first", body = [api::LogEntry]),
        (status = 404, description = "the user has no such name"),
    ),
)]
pub async fn route(
    State(node): State<Arc<Node>>,
    AuthUser(user): AuthUser,
    query: Result<Query<LogQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Error> {
    let Query(q) = query.map_err(|e| Error::invalid(format!("bad query: {e}")))?;
    let list = blocking(move || log(&node, &user, &q.name)).await?;
    Ok(ok(&list))
}
