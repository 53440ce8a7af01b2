//! The grid as one: `GET /api/nodes`, where a placed spawn goes, the user's envs on every
//! node (`GET /api/envs`), and the grid's gauges for `/metrics`. Each node reads the shared
//! catalog (the registry and the envs table), so every node gives the same view.

use crate::error::Error;
use crate::forward::{self, Peer};
use crate::http::{blocking, ok, AuthUser};
use crate::{registry, Node};
use api::{Attach, EnvInfo, NodeEntry};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use std::collections::BTreeMap;
use std::sync::Arc;

/// `GET /api/nodes`: every registered node, up or down, with its load.
#[utoipa::path(
    get,
    path = api::routes::NODES,
    operation_id = "nodes",
    summary = "the grid's nodes (from the shared catalog), up or down, with their address, \
        certificate fingerprint, capacity, labels and load",
    responses((status = 200, description = "nodes, by name", body = [api::NodeEntry])),
)]
pub async fn list(State(node): State<Arc<Node>>, AuthUser(_): AuthUser) -> Result<Response, Error> {
    let nodes = blocking(move || Ok(registry::grid(&node)?)).await?;
    Ok(ok(&nodes))
}

/// The other node a spawn placed by `want` goes to (reserving `mem` bytes, default the
/// node's), or `None` to spawn here.
pub fn place(node: &Node, want: &api::Placement, mem: Option<u64>) -> Result<Option<Peer>, Error> {
    let grid = registry::grid(node)?;
    let mem = mem.unwrap_or_else(|| node.config.default_mem_bytes());
    let chosen = crate::place::choose(&grid, want, mem).map_err(Error::invalid)?;
    Ok(chosen
        .filter(|name| *name != node.name)
        .and_then(|name| grid.iter().find(|n| n.name == name).map(Peer::from)))
}

/// The user's envs the catalog places on other nodes, by node, with whether it is up.
fn elsewhere(node: &Node, user: &str) -> Result<Vec<(NodeEntry, Vec<catalog::EnvRecord>)>, Error> {
    let mut by_node: BTreeMap<String, Vec<catalog::EnvRecord>> = BTreeMap::new();
    for r in node.cat.envs_on(None)? {
        if r.owner == user && r.node != node.name {
            by_node.entry(r.node.clone()).or_default().push(r);
        }
    }
    if by_node.is_empty() {
        return Ok(Vec::new());
    }
    let grid = registry::grid(node)?;
    Ok(by_node
        .into_iter()
        .filter_map(|(name, recs)| Some((grid.iter().find(|n| n.name == name)?.clone(), recs)))
        .collect())
}

/// What the catalog knows of an env on node `n` that could not be asked (down, or not
/// answering): no memory or write-layer use, `node_up` false.
fn recorded(n: &NodeEntry, r: catalog::EnvRecord) -> EnvInfo {
    let host = n
        .address
        .rsplit_once(':')
        .map_or(n.address.as_str(), |(h, _)| h);
    let created = r.created.max(0) as u64;
    EnvInfo {
        attach: Attach {
            ssh: format!("ssh -p {} {}@{host}", n.ssh_port, r.id),
            cpu: format!("spawngrid cpu {}", r.env),
        },
        env: r.env,
        node: n.name.clone(),
        from: r.name,
        snapshot: r.snapshot,
        running: false,
        disk: false,
        created,
        age: runtime::state::now().saturating_sub(created),
        memory: None,
        write_used: None,
        write_size: 0,
        node_up: false,
        expiry: None,
        // Its previews do not answer while its node is down.
        exposures: Vec::new(),
        net: api::Net::default(),
        egress: None,
    }
}

/// The user's envs on every node, by name: `here` (this node's) and, unless this request
/// was forwarded, each other node's own listing, asked with the client's token; an env of a
/// node that is down or does not answer shows what the catalog knows of it.
pub async fn everywhere(
    node: &Arc<Node>,
    user: String,
    headers: &HeaderMap,
    mut here: Vec<EnvInfo>,
) -> Result<Vec<EnvInfo>, Error> {
    if forward::forwarded(headers) {
        return Ok(here);
    }
    let n = node.clone();
    let others = blocking(move || elsewhere(&n, &user)).await?;
    let asks = others.into_iter().map(|(peer, recs)| async move {
        if !peer.up {
            return recs.into_iter().map(|r| recorded(&peer, r)).collect();
        }
        match forward::list_on(node, &Peer::from(&peer), headers).await {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!(node = %peer.name, "listing envs: {}", e.message);
                recs.into_iter()
                    .map(|r| recorded(&peer, r))
                    .collect::<Vec<_>>()
            }
        }
    });
    for list in futures_util::future::join_all(asks).await {
        here.extend(list);
    }
    here.sort_by(|a, b| a.env.cmp(&b.env));
    Ok(here)
}

/// The grid's gauges as exposition text (one sample per node): up, and envs it runs.
pub fn gauges(node: &Node) -> Result<String, Error> {
    let grid = registry::grid(node)?;
    let up: Vec<(&str, f64)> = grid
        .iter()
        .map(|n| (n.name.as_str(), if n.up { 1.0 } else { 0.0 }))
        .collect();
    let envs: Vec<(&str, f64)> = grid
        .iter()
        .map(|n| (n.name.as_str(), f64::from(n.envs)))
        .collect();
    let mut out = String::new();
    crate::metrics::node_gauge(
        &mut out,
        "spawngrid_grid_node_up",
        "whether each node of the grid is up (heard from in the last 30 s)",
        &up,
    );
    crate::metrics::node_gauge(
        &mut out,
        "spawngrid_grid_node_envs",
        "envs each node of the grid runs (every user's, from the catalog)",
        &envs,
    );
    Ok(out)
}
