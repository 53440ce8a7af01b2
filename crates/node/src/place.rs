//! Where on the grid a spawn goes: a pure choice over the registry's nodes and their load.
//!
//! A node's room is what it can still admit: free env slots (`capacity_envs` minus the envs
//! the catalog says it runs) and free memory (`capacity_mem` minus its envs, each counted at
//! the default size: the catalog records no env's memory). With no preference the env goes
//! to the up node with the most room relative to its capacity (the smaller of its free
//! fractions of env slots and memory), ties to the one with more free slots, then by name.
//! `--near NODE` prefers NODE, then the nodes sharing most labels with it; `--label k=v`
//! keeps only nodes with every label asked; `--node NODE` names the node outright.

use api::{NodeEntry, Placement};

/// Labels as the catalog stores them (`k=v,k=v`) as a list, empty ones dropped.
pub fn parse_labels(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Checks a label given by a user or a config: `key=value`, neither part empty, no `,`.
pub fn check_label(label: &str) -> Result<(), String> {
    match label.split_once('=') {
        Some((k, v)) if !k.is_empty() && !v.is_empty() && !label.contains([',', ' ']) => Ok(()),
        _ => Err(format!(
            "bad label {label:?}: want key=value (no spaces or commas)"
        )),
    }
}

/// Free room of `n` as the smaller of its free fractions (envs, memory), in `[0, 1]`.
fn share(n: &NodeEntry) -> f64 {
    let envs = f64::from(n.room_envs) / f64::from(n.capacity_envs.max(1));
    let mem = n.room_mem as f64 / n.capacity_mem.max(1) as f64;
    envs.min(mem)
}

/// Whether `n` can take one more env reserving `mem` bytes.
fn fits(n: &NodeEntry, mem: u64) -> bool {
    n.up && n.room_envs > 0 && n.room_mem >= mem
}

/// The node a spawn reserving `mem` bytes goes to, by `want`, among `nodes`. `Ok(None)`:
/// no node is known to have room and no label was asked (the node asked spawns it, and its
/// admission policy evicts or refuses); with labels, the labelled node that would be chosen
/// if all had room (its admission decides: the node asked may lack the labels); `Err`: the
/// request cannot be met (one line).
pub fn choose(nodes: &[NodeEntry], want: &Placement, mem: u64) -> Result<Option<String>, String> {
    for l in &want.labels {
        check_label(l)?;
    }
    if let Some(name) = &want.node {
        return match nodes.iter().find(|n| &n.name == name) {
            Some(n) if n.up => Ok(Some(n.name.clone())),
            Some(_) => Err(format!(
                "node {name} is down: spawn on another node (see `spawngrid nodes`)"
            )),
            None => Err(format!(
                "no node {name} in the grid (see `spawngrid nodes`)"
            )),
        };
    }
    let near = match &want.near {
        Some(name) => Some(nodes.iter().find(|n| &n.name == name).ok_or_else(|| {
            format!("no node {name} in the grid to be near (see `spawngrid nodes`)")
        })?),
        None => None,
    };
    let labelled: Vec<&NodeEntry> = nodes
        .iter()
        .filter(|n| n.up && want.labels.iter().all(|l| n.labels.contains(l)))
        .collect();
    if labelled.is_empty() && !want.labels.is_empty() {
        return Err(format!(
            "no up node has the labels {} (see `spawngrid nodes`)",
            want.labels.join(",")
        ));
    }
    // Near: the node itself first, then by labels shared with it; then by room.
    let closeness = |n: &NodeEntry| match near {
        Some(m) if m.name == n.name => usize::MAX,
        Some(m) => n.labels.iter().filter(|l| m.labels.contains(l)).count(),
        None => 0,
    };
    let order = |a: &&NodeEntry, b: &&NodeEntry| {
        closeness(a)
            .cmp(&closeness(b))
            .then(share(a).total_cmp(&share(b)))
            .then(a.room_envs.cmp(&b.room_envs))
            .then(b.name.cmp(&a.name))
    };
    let best = labelled
        .iter()
        .copied()
        .filter(|n| fits(n, mem))
        .max_by(order);
    let full = || labelled.iter().copied().max_by(order);
    let best = best.or_else(|| full().filter(|_| !want.labels.is_empty()));
    Ok(best.map(|n| n.name.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = 1 << 30;

    fn node(name: &str, up: bool, cap: (u32, u64), envs: u32, labels: &[&str]) -> NodeEntry {
        NodeEntry {
            name: name.into(),
            address: format!("{name}:16998"),
            ssh_port: 16999,
            fingerprint: "AB".into(),
            capacity_envs: cap.0,
            capacity_mem: cap.1,
            labels: labels.iter().map(|l| l.to_string()).collect(),
            up,
            silent: 0,
            envs,
            room_envs: cap.0.saturating_sub(envs),
            room_mem: cap.1.saturating_sub(u64::from(envs) * G),
        }
    }

    fn pick(nodes: &[NodeEntry], want: Placement) -> Result<Option<String>, String> {
        choose(nodes, &want, G)
    }

    #[test]
    fn the_node_with_most_room_relative_to_capacity_wins() {
        let nodes = [
            node("a", true, (10, 16 * G), 4, &[]),
            node("b", true, (10, 16 * G), 1, &[]),
            node("c", true, (10, 16 * G), 3, &[]),
        ];
        assert_eq!(pick(&nodes, Placement::default()), Ok(Some("b".into())));
        // A big node with more envs can still have more room than a small one.
        let nodes = [
            node("small", true, (4, 4 * G), 1, &[]),
            node("big", true, (100, 100 * G), 10, &[]),
        ];
        assert_eq!(pick(&nodes, Placement::default()), Ok(Some("big".into())));
        // Memory counts: many slots but little memory left loses.
        let nodes = [
            node("slots", true, (100, 4 * G), 3, &[]),
            node("mem", true, (10, 64 * G), 3, &[]),
        ];
        assert_eq!(pick(&nodes, Placement::default()), Ok(Some("mem".into())));
        // Ties go by name, so the choice is stable.
        let nodes = [
            node("y", true, (4, 4 * G), 0, &[]),
            node("x", true, (4, 4 * G), 0, &[]),
        ];
        assert_eq!(pick(&nodes, Placement::default()), Ok(Some("x".into())));
    }

    #[test]
    fn down_and_full_nodes_are_passed_over() {
        let nodes = [
            node("down", false, (10, 16 * G), 0, &[]),
            node("full", true, (2, 16 * G), 2, &[]),
            node("nomem", true, (10, 2 * G), 2, &[]),
            node("busy", true, (10, 16 * G), 8, &[]),
        ];
        assert_eq!(pick(&nodes, Placement::default()), Ok(Some("busy".into())));
        // None has room: the node asked decides (its admission evicts or refuses).
        assert_eq!(pick(&nodes[..3], Placement::default()), Ok(None));
        assert_eq!(pick(&[], Placement::default()), Ok(None));
    }

    #[test]
    fn labels_near_and_node_steer_the_choice() {
        let nodes = [
            node("a", true, (10, 16 * G), 5, &["rack=r1", "zone=z1"]),
            node("b", true, (10, 16 * G), 0, &["rack=r2", "zone=z2"]),
            node("c", true, (10, 16 * G), 2, &["rack=r3", "zone=z1"]),
            node("d", false, (10, 16 * G), 0, &["rack=r4", "zone=z1"]),
        ];
        let labels = |l: &[&str]| Placement {
            labels: l.iter().map(|s| s.to_string()).collect(),
            ..Placement::default()
        };
        assert_eq!(pick(&nodes, labels(&["zone=z1"])), Ok(Some("c".into())));
        assert_eq!(
            pick(&nodes, labels(&["zone=z1", "rack=r1"])),
            Ok(Some("a".into()))
        );
        // The labelled nodes are full: one of them decides, not the node asked.
        let full = [
            node("a", true, (2, 16 * G), 2, &["rack=r1"]),
            node("b", true, (10, 16 * G), 0, &["rack=r2"]),
        ];
        assert_eq!(pick(&full, labels(&["rack=r1"])), Ok(Some("a".into())));
        let err = pick(&nodes, labels(&["rack=r4"])).unwrap_err();
        assert!(err.contains("no up node has the labels rack=r4"), "{err}");
        assert!(pick(&nodes, labels(&["rack"]))
            .unwrap_err()
            .contains("bad label"));
        let near = |n: &str| Placement {
            near: Some(n.into()),
            ..Placement::default()
        };
        // Near a node with room: that node, though another has more room.
        assert_eq!(pick(&nodes, near("a")), Ok(Some("a".into())));
        // Near a down node: the up node sharing most labels with it (zone=z1), by room.
        assert_eq!(pick(&nodes, near("d")), Ok(Some("c".into())));
        assert!(pick(&nodes, near("zz")).unwrap_err().contains("no node zz"));
        let on = |n: &str| Placement {
            node: Some(n.into()),
            ..Placement::default()
        };
        assert_eq!(pick(&nodes, on("a")), Ok(Some("a".into())));
        assert!(pick(&nodes, on("d"))
            .unwrap_err()
            .contains("node d is down"));
        assert!(pick(&nodes, on("q")).unwrap_err().contains("no node q"));
    }

    #[test]
    fn labels_parse_and_check() {
        assert_eq!(parse_labels("a=1, b=2,,"), ["a=1", "b=2"]);
        assert!(parse_labels("").is_empty());
        assert!(check_label("rack=r1").is_ok());
        for bad in ["rack", "=r1", "rack=", "a=1,b=2", "a =1"] {
            assert!(check_label(bad).is_err(), "{bad}");
        }
    }
}
