//! The grid's node registry: this node registers itself in the shared catalog at start (name,
//! HTTPS address, SSH port, certificate fingerprint, capacity) and heartbeats every
//! [`HEARTBEAT`]; a node not heard from for [`DOWN_AFTER`] is down.

use crate::Node;
use std::sync::Arc;
use std::time::Duration;

/// How often a node says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// A node silent for this long is down.
pub const DOWN_AFTER: Duration = Duration::from_secs(30);

/// Registers `node`, reached at `address` (`host:port`) with certificate `fingerprint`.
pub fn register(node: &Node, address: &str, fingerprint: &str) -> catalog::Result<()> {
    node.cat.register_node(&catalog::NodeInfo {
        name: node.name.clone(),
        address: address.to_string(),
        ssh_port: node.config.ssh_port,
        fingerprint: fingerprint.to_string(),
        capacity_envs: node.limits.max_envs.min(u32::MAX as usize) as u32,
        capacity_mem: node.limits.max_mem,
        labels: String::new(),
    })
}

/// Heartbeats until the process ends; a failed heartbeat (the catalog unreachable) is logged
/// and the next one tried, so the node comes back by itself when the catalog does.
pub async fn heartbeat(node: Arc<Node>) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    loop {
        tick.tick().await;
        let n = node.clone();
        match tokio::task::spawn_blocking(move || n.cat.heartbeat(&n.name)).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => tracing::warn!("heartbeat: this node is not registered"),
            Ok(Err(e)) => tracing::warn!("heartbeat: {e}"),
            Err(e) => tracing::warn!("heartbeat: {e}"),
        }
    }
}

/// The HTTPS address of node `name` and whether it is up (heard from within [`DOWN_AFTER`]),
/// if it is registered.
pub fn locate(node: &Node, name: &str) -> catalog::Result<Option<(String, bool)>> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    Ok(node
        .cat
        .nodes()?
        .into_iter()
        .find(|n| n.info.name == name)
        .map(|n| {
            (
                n.info.address,
                now - n.heartbeat <= DOWN_AFTER.as_secs() as i64,
            )
        }))
}
