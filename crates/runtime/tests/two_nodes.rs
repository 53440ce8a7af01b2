//! Two nodes (two data directories) on one host never collide: envs with the same id get
//! their own cgroups, subnets and links; env-to-env traffic between nodes is dropped as within
//! one node; booming (or losing) one node's env leaves the other's link, rules and cgroup
//! intact.

mod common;
use common::{busybox, link_of, run, serial, Env, TestNode};
use runtime::cgroup::Limits;
use runtime::net::NatLink;
use runtime::{Network, SpawnOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The env id both nodes use.
const ID: &str = "work+alice";

fn nat_opts(memory: u64) -> SpawnOptions {
    nat_opts_for(ID, memory)
}

fn nat_opts_for(id: &str, memory: u64) -> SpawnOptions {
    let mut opts = SpawnOptions::new(id, "alice", &busybox());
    opts.network = Network::Nat;
    // The pool's addresses allowed, so an env may ping its gateway (the host) to show its
    // link works; traffic between envs is refused before allowances.
    opts.nat_allow = vec![format!(
        "{}/{}",
        runtime::net::NAT_POOL,
        runtime::net::NAT_POOL_PREFIX
    )
    .parse()
    .unwrap()];
    opts.limits = Limits {
        memory,
        ..Limits::default()
    };
    opts
}

fn has_link(name: &str) -> bool {
    run("ip", &["-o", "link", "show"]).contains(&format!(": {name}@"))
}

fn ruleset_has(link: &NatLink) -> bool {
    run("nft", &["list", "ruleset"])
        .split(|c: char| !(c.is_ascii_digit() || c == '.' || c == '/'))
        .any(|w| w == link.cidr())
}

/// The env's memory limit, read from its cgroup (v1 `memory.limit_in_bytes` or v2
/// `memory.max`).
fn memory_limit(env: &Env) -> u64 {
    let value = env
        .state
        .cgroups
        .iter()
        .find_map(|d| {
            ["memory.limit_in_bytes", "memory.max"]
                .iter()
                .find_map(|f| std::fs::read_to_string(d.join(f)).ok())
        })
        .expect("a memory limit file");
    value.trim().parse().unwrap()
}

/// Every pid listed in the env's cgroups.
fn cgroup_pids(dirs: &[PathBuf]) -> Vec<i32> {
    dirs.iter()
        .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|t| {
            t.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Whether `env` answers a ping to `addr` (one packet, 2 s).
fn pings(env: &Env, addr: std::net::Ipv4Addr) -> bool {
    env.sh(&format!("ping -c 1 -W 2 {addr}")).status.success()
}

fn wait_dead(st: &runtime::EnvState) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while st.alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!st.alive(), "the init survived SIGKILL");
}

fn gone(dirs: &[PathBuf]) -> bool {
    dirs.iter().all(|d| !d.exists())
}

#[test]
fn two_nodes_run_the_same_env_id_side_by_side() {
    let _serial = serial();
    let (node_a, node_b) = (TestNode::new(), TestNode::new());
    let (opts_a, opts_b) = (nat_opts(64 << 20), nat_opts(96 << 20));
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| Env::spawn(&node_a.rt, &opts_a));
        let b = s.spawn(|| Env::spawn(&node_b.rt, &opts_b));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert!(a.state.alive() && b.state.alive());

    // Own cgroups, each with its own limit and its own init.
    let (cg_a, cg_b) = (a.state.cgroups.clone(), b.state.cgroups.clone());
    assert!(cg_a.iter().all(|d| !cg_b.contains(d)), "{cg_a:?} {cg_b:?}");
    assert!(cg_a.iter().chain(&cg_b).all(|d| d.is_dir()));
    assert_eq!(memory_limit(&a), 64 << 20);
    assert_eq!(memory_limit(&b), 96 << 20);
    assert!(cgroup_pids(&cg_a).contains(&a.state.init_pid));
    assert!(!cgroup_pids(&cg_a).contains(&b.state.init_pid));
    assert!(cgroup_pids(&cg_b).contains(&b.state.init_pid));

    // Own subnets and links; each reaches its own gateway, not the other env.
    let (la, lb) = (link_of(&a), link_of(&b));
    assert_ne!(la.subnet, lb.subnet);
    assert_ne!(la.host_if, lb.host_if);
    assert!(la.host_if.len() <= 15 && lb.host_if.len() <= 15);
    assert!(has_link(&la.host_if) && has_link(&lb.host_if));
    assert!(pings(&a, la.host_addr) && pings(&b, lb.host_addr));
    assert!(!pings(&a, lb.env_addr), "node a's env reached node b's");
    assert!(!pings(&b, la.env_addr), "node b's env reached node a's");

    // Booming one leaves the other whole.
    runtime::boom::boom(&node_a.rt, ID).unwrap();
    assert!(!has_link(&la.host_if) && !ruleset_has(&la));
    assert!(gone(&cg_a), "{cg_a:?} left");
    assert!(b.state.alive());
    assert!(has_link(&lb.host_if) && ruleset_has(&lb));
    assert!(cg_b.iter().all(|d| d.is_dir()));
    assert!(cgroup_pids(&cg_b).contains(&b.state.init_pid));
    assert!(pings(&b, lb.host_addr));
    drop((a, b));
    assert!(!has_link(&lb.host_if) && !ruleset_has(&lb));
    assert!(gone(&cg_b), "{cg_b:?} left");
    // The nodes' parent cgroups go with their last env.
    for d in cg_a.iter().chain(&cg_b) {
        assert!(!d.parent().unwrap().exists(), "{} left", d.display());
    }
}

#[test]
fn a_dead_env_of_one_node_does_not_take_another_nodes_network_at_boom() {
    let _serial = serial();
    let (node_a, node_b) = (TestNode::new(), TestNode::new());
    let a = Env::spawn(&node_a.rt, &nat_opts(64 << 20));
    let la = link_of(&a);
    // Node a's env dies without a boom: its veth pair goes with its network namespace, its
    // lease stays until node a booms it.
    let init = rustix::process::Pid::from_raw(a.state.init_pid).unwrap();
    rustix::process::kill_process(init, rustix::process::Signal::KILL).unwrap();
    wait_dead(&a.state);
    let deadline = Instant::now() + Duration::from_secs(5);
    while has_link(&la.host_if) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }

    // Another id, so that this checks the network alone.
    let b = Env::spawn(&node_b.rt, &nat_opts_for("other+alice", 64 << 20));
    let lb = link_of(&b);
    assert!(has_link(&lb.host_if) && ruleset_has(&lb));
    runtime::boom::boom(&node_a.rt, ID).unwrap();
    assert!(b.state.alive());
    assert!(
        has_link(&lb.host_if),
        "node a's boom deleted {}",
        lb.host_if
    );
    assert!(ruleset_has(&lb), "node a's boom removed {}", lb.cidr());
    assert!(pings(&b, lb.host_addr));
    drop((a, b));
    assert!(!has_link(&lb.host_if) && !ruleset_has(&lb));
    assert!(!Path::new("/sys/class/net").join(&lb.host_if).exists());
}

/// Turns a running env into one spawned before per-node names: its cgroup under the shared
/// `spawngrid/` parent (recorded so in its state), its lease without init and host-wide claim.
fn make_legacy(node: &TestNode, env: &mut Env) {
    let st = &mut env.state;
    let legacy: Vec<PathBuf> = st
        .cgroups
        .iter()
        .map(|d| {
            d.parent()
                .unwrap()
                .with_file_name("spawngrid")
                .join(&st.name)
        })
        .collect();
    for (new, old) in st.cgroups.iter().zip(&legacy) {
        std::fs::create_dir_all(old).unwrap();
        for pid in cgroup_pids(std::slice::from_ref(new)) {
            std::fs::write(old.join("cgroup.procs"), pid.to_string()).unwrap();
        }
    }
    if let Some(memory) = legacy
        .iter()
        .find(|d| d.join("memory.limit_in_bytes").exists())
    {
        std::fs::write(
            memory.join("memory.limit_in_bytes"),
            (64u64 << 20).to_string(),
        )
        .unwrap();
    }
    for new in &st.cgroups {
        std::fs::remove_dir(new).unwrap();
        std::fs::remove_dir(new.parent().unwrap()).unwrap();
    }
    st.cgroups = legacy;
    let dir = node.rt.env_dir(&st.name).unwrap();
    std::fs::write(dir.join("state.json"), serde_json::to_vec(&*st).unwrap()).unwrap();
    let link = link_of(env);
    let lease = runtime::net::leases_dir(&node.rt).join(format!("lease-{}", link.subnet));
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&lease).unwrap()).unwrap();
    assert!(json.as_object_mut().unwrap().remove("init").is_some());
    std::fs::write(&lease, serde_json::to_vec(&json).unwrap()).unwrap();
    let claim = Path::new(runtime::net::HOST_CLAIMS).join(link.subnet.to_string());
    std::fs::remove_file(claim).unwrap();
}

#[test]
fn a_node_on_new_code_booms_envs_spawned_with_the_old_names() {
    let _serial = serial();
    let node = TestNode::new();
    let mut opts = node.opts("legacy");
    opts.network = Network::Nat;
    let mut env = Env::spawn(&node.rt, &opts);
    env.ok("sleep 100 >/dev/null 2>&1 &");
    make_legacy(&node, &mut env);
    let (link, cgroups) = (link_of(&env), env.state.cgroups.clone());
    assert!(cgroups
        .iter()
        .all(|d| d.starts_with("/sys/fs/cgroup") && d.parent().unwrap().ends_with("spawngrid")));
    let mut pids = cgroup_pids(&cgroups);
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), 2, "the init and the sleep: {pids:?}");

    // A restarted node (a new runtime on the same data directory) adopts and booms it.
    let restarted = runtime::Runtime::new(&node.rt.data, &node.rt.helper).unwrap();
    let st = runtime::state::load(&restarted, &env.state.name).unwrap();
    assert!(st.alive());
    assert_eq!(st.cgroups, cgroups);
    assert_eq!(env.run_via_init(&["true"]).0, 0);
    runtime::boom::boom(&restarted, &st.name).unwrap();
    wait_dead(&st);
    assert!(gone(&cgroups), "{cgroups:?} left");
    assert!(!has_link(&link.host_if) && !ruleset_has(&link));
    let leases = std::fs::read_dir(runtime::net::leases_dir(&node.rt)).unwrap();
    assert_eq!(leases.count(), 0);
    drop(env);
}
