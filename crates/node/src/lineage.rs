//! A name's lineage (`GET /api/log?name=NAME`): the snapshot the name is bound to, then each
//! parent (a save's parent is the snapshot its env was spawned from), newest first, each with
//! the names the user may spawn that are bound to it. What `spawngrid lib log` shows offline,
//! for the web UI and any client; only names the user can see are named. And what one save
//! of that ancestry changed (`GET /api/diff`): the paths that differ from its parent.

use crate::error::Error;
use crate::http::{blocking, ok, AuthUser};
use crate::Node;
use anyhow::Context;
use api::{Change, Diff, DiffQuery, LogEntry, LogQuery};
use axum::extract::{Query, State};
use axum::response::Response;
use library::Score;
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

/// What the save `score` (default: the name's own snapshot) in the ancestry of the name
/// `user` addresses as `address` changed against its parent. A snapshot is shown only through
/// a name the user may spawn: `score` must be in that name's ancestry.
pub fn diff(node: &Node, user: &str, address: &str, score: Option<&str>) -> Result<Diff, Error> {
    crate::snapshots::check_address(user, address)?;
    let mut at = crate::snapshots::resolve(&node.cat, user, address, false)?;
    let want = match score {
        None => at,
        Some(s) => s
            .parse::<Score>()
            .map_err(|e| Error::invalid(format!("bad score {s:?}: {e}")))?,
    };
    let lib = node.store.library()?;
    let read = |s: &Score| {
        lib.snapshot(s)
            .with_context(|| format!("reading snapshot {s}"))
    };
    let snap = loop {
        let snap = read(&at)?;
        if at == want {
            break snap;
        }
        at = snap.parent.ok_or_else(|| {
            Error::not_found(format!(
                "snapshot {want} is not in the ancestry of {address} (its lineage lists the ones that are)"
            ))
        })?;
    };
    let mut out = Diff {
        score: want.to_hex(),
        parent: snap.parent.map(|p| p.to_hex()),
        changes: Vec::new(),
        truncated: false,
    };
    let Some(parent) = snap.parent else {
        return Ok(out);
    };
    let all = library::diff::diff(&lib, &read(&parent)?, &snap)
        .with_context(|| format!("comparing snapshot {want} with its parent {parent}"))?;
    out.truncated = all.len() > Diff::MAX_CHANGES;
    out.changes = all
        .into_iter()
        .take(Diff::MAX_CHANGES)
        .map(|(c, path)| Change {
            change: match c {
                library::diff::Change::Added => "added",
                library::diff::Change::Removed => "removed",
                library::diff::Change::Changed => "changed",
            }
            .to_string(),
            path: String::from_utf8_lossy(&path).into_owned(),
        })
        .collect();
    Ok(out)
}

/// `GET /api/diff?name=NAME[&score=SCORE]`.
#[utoipa::path(
    get,
    path = api::routes::DIFF,
    operation_id = "diff",
    params(api::DiffQuery),
    summary = "what one save of a name's ancestry changed against its parent",
    description = "The paths that differ between the snapshot `score` (default: the name's own; \
        it must be in the name's ancestry, as `GET /api/log` lists it) and its parent, in \
        canonical order, at most 10 000. An imported snapshot has no parent and no changes.",
    responses(
        (status = 200, description = "the changes", body = api::Diff),
        (status = 404, description = "the user has no such name, or the score is not in its \
            ancestry"),
    ),
)]
pub async fn diff_route(
    State(node): State<Arc<Node>>,
    AuthUser(user): AuthUser,
    query: Result<Query<DiffQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Error> {
    let Query(q) = query.map_err(|e| Error::invalid(format!("bad query: {e}")))?;
    let d = blocking(move || diff(&node, &user, &q.name, q.score.as_deref())).await?;
    Ok(ok(&d))
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
