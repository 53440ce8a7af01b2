//! The grid's node registry: this node registers itself in the shared catalog at start (name,
//! HTTPS address, SSH port, certificate fingerprint, capacity) and heartbeats three times per
//! `down_after` (the node's configuration, 30 s by default); a node not heard from for
//! `down_after` is down, as the catalog's clock says (the database's: never this node's own
//! clock, which may be off). [`grid`] is the grid as every node sees it: the registry and each
//! node's load from the catalog's envs.

use crate::Node;
use api::NodeEntry;
use std::sync::Arc;

/// Registers `node`, reached at `address` (`host:port`) with certificate `fingerprint`;
/// refused while another node of the same name, with another certificate, is up.
pub fn register(node: &Node, address: &str, fingerprint: &str) -> catalog::Result<()> {
    let info = catalog::NodeInfo {
        name: node.name.clone(),
        address: address.to_string(),
        ssh_port: node.config.ssh_port,
        fingerprint: fingerprint.to_string(),
        capacity_envs: node.limits.max_envs.min(u32::MAX as usize) as u32,
        capacity_mem: node.limits.max_mem,
        labels: node.config.labels.join(","),
    };
    node.cat.register_node(&info, node.config.down_after())
}

/// Heartbeats (as the node with certificate `fingerprint`) until the process ends; a failed
/// heartbeat (the catalog unreachable) is logged and the next one tried, so the node comes
/// back by itself when the catalog does.
pub async fn heartbeat(node: Arc<Node>, fingerprint: String) {
    let mut tick = tokio::time::interval(node.config.down_after() / 3);
    loop {
        tick.tick().await;
        let (n, fp) = (node.clone(), fingerprint.clone());
        match tokio::task::spawn_blocking(move || n.cat.heartbeat(&n.name, &fp)).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => tracing::warn!(
                "heartbeat: node {} is not registered with this node's certificate (another \
                 node took the name while this one was silent): restart it with another name",
                node.name
            ),
            Ok(Err(e)) => tracing::warn!("heartbeat: {e}"),
            Err(e) => tracing::warn!("heartbeat: {e}"),
        }
    }
}

/// Marks this node (with certificate `fingerprint`) stopped in the catalog, as it stops: the
/// grid sees it down at once, and a restart with a new certificate keeps its name. A failure
/// is only logged (the node is then seen down once `down_after` has passed).
pub fn leave(node: &Node, fingerprint: &str) {
    match node
        .cat
        .leave_node(&node.name, fingerprint, node.config.down_after())
    {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            "stopping: node {} is not registered with this node's certificate",
            node.name
        ),
        Err(e) => tracing::warn!("stopping: marking this node stopped in the catalog: {e}"),
    }
}

/// Every registered node, by name, with whether it is up and its load: the envs the catalog
/// says it runs, each counted at this node's default memory size (the catalog records no
/// env's memory).
pub fn grid(node: &Node) -> catalog::Result<Vec<NodeEntry>> {
    let nodes = node.cat.nodes()?;
    let envs = node.cat.envs_on(None)?;
    let per_env = node.config.default_mem_bytes();
    let down_after = node.config.down_after().as_secs();
    Ok(nodes
        .into_iter()
        .map(|n| {
            let count = envs.iter().filter(|e| e.node == n.info.name).count() as u32;
            let i = n.info;
            NodeEntry {
                up: n.silent <= down_after,
                silent: n.silent,
                envs: count,
                room_envs: i.capacity_envs.saturating_sub(count),
                room_mem: i
                    .capacity_mem
                    .saturating_sub(u64::from(count).saturating_mul(per_env)),
                labels: crate::place::parse_labels(&i.labels),
                name: i.name,
                address: i.address,
                ssh_port: i.ssh_port,
                fingerprint: i.fingerprint,
                capacity_envs: i.capacity_envs,
                capacity_mem: i.capacity_mem,
            }
        })
        .collect())
}

/// What node `name` said about itself and whether it is up (heard from within
/// `down_after`), if it is registered.
pub fn locate(node: &Node, name: &str) -> catalog::Result<Option<(catalog::NodeInfo, bool)>> {
    Ok(node
        .cat
        .nodes()?
        .into_iter()
        .find(|n| n.info.name == name)
        .map(|n| {
            let up = n.silent <= node.config.down_after().as_secs();
            (n.info, up)
        }))
}
