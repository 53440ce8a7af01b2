//! Networks: `nat` envs get their own address, a default route through the host end of their
//! veth pair and masqueraded outbound access; `none` envs reach nothing; boom and failed
//! spawns leave no link, nft element or lease. The only network targets are listeners on the
//! host (the veth's host end) and in a network namespace the test makes.

mod common;
use common::{link_of, run, serial, unique, Env, TestNode};
use runtime::net::NatLink;
use runtime::Network;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn nat_opts(node: &TestNode, prefix: &str) -> runtime::SpawnOptions {
    let mut opts = node.opts(prefix);
    opts.network = Network::Nat;
    opts
}

/// A TCP server on `addr` (any port) in the current thread's network namespace, or in the
/// namespace at `netns`: answers one line with "ok" and reports who connected, if anyone
/// did within `wait`.
struct Server {
    port: u16,
    peer: std::thread::JoinHandle<Option<SocketAddr>>,
}

impl Server {
    fn start(addr: Ipv4Addr, netns: Option<&Path>, wait: Duration) -> Server {
        let netns = netns.map(|p| std::fs::File::open(p).unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        let peer = std::thread::spawn(move || {
            if let Some(ns) = netns {
                use std::os::fd::AsRawFd;
                // SAFETY: setns(2) on a valid fd; network namespaces are per thread, and this
                // thread only serves.
                let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            }
            let listener = TcpListener::bind((addr, 0)).unwrap();
            tx.send(listener.local_addr().unwrap().port()).unwrap();
            listener.set_nonblocking(true).unwrap();
            let deadline = Instant::now() + wait;
            loop {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        stream.set_nonblocking(false).unwrap();
                        stream
                            .set_read_timeout(Some(Duration::from_secs(5)))
                            .unwrap();
                        let mut line = String::new();
                        let _ = BufReader::new(&stream).read_line(&mut line);
                        let _ = (&stream).write_all(b"ok\n");
                        return Some(peer);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if Instant::now() > deadline {
                            return None;
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => panic!("accept: {e}"),
                }
            }
        });
        let port = rx.recv().unwrap();
        Server { port, peer }
    }

    fn peer(self) -> Option<SocketAddr> {
        self.peer.join().unwrap()
    }
}

/// `nc` from inside `env` to `addr:port`, sending a line; returns (success, stdout).
fn connect(env: &Env, addr: Ipv4Addr, port: u16) -> (bool, String) {
    let out = env.sh(&format!("echo hello | nc -w 3 {addr} {port}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn ip_links() -> String {
    run("ip", &["-o", "link", "show"])
}

fn nft_ruleset() -> String {
    run("nft", &["list", "ruleset"])
}

/// The words of `text` made of digits, dots and slashes (addresses, subnets).
fn addresses(text: &str) -> Vec<&str> {
    text.split(|c: char| !(c.is_ascii_digit() || c == '.' || c == '/'))
        .filter(|w| !w.is_empty())
        .collect()
}

/// Host end links (`sgv*`) and pool subnets in the nft ruleset, to compare before and after.
fn host_network() -> (Vec<String>, Vec<String>) {
    let mut links: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("sgv"))
        .collect();
    links.sort();
    let rules = nft_ruleset();
    let mut subnets: Vec<String> = addresses(&rules)
        .into_iter()
        .filter(|w| w.starts_with("10.88.") && w.ends_with("/30"))
        .map(String::from)
        .collect();
    subnets.sort();
    (links, subnets)
}

/// Asserts that nothing of `link` is left on the host and no lease remains in `node`.
fn assert_no_network_left(node: &TestNode, link: &NatLink) {
    let links = ip_links();
    assert!(
        !links.contains(&format!(": {}@", link.host_if))
            && !links.contains(&format!(": {}:", link.host_if))
            && !Path::new("/sys/class/net").join(&link.host_if).exists(),
        "{} left:\n{links}",
        link.host_if
    );
    let rules = nft_ruleset();
    assert!(
        !addresses(&rules).contains(&link.cidr().as_str()),
        "{} left in the nft ruleset:\n{rules}",
        link.cidr()
    );
    if let Ok(saved) = Command::new("iptables-save").output() {
        let saved = String::from_utf8_lossy(&saved.stdout);
        assert!(!saved.contains(&link.cidr()), "iptables: {saved}");
    }
    assert_no_leases(node);
}

fn assert_no_leases(node: &TestNode) {
    let dir = runtime::net::leases_dir(&node.rt);
    let left: Vec<String> = std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "left in {}: {left:?}", dir.display());
}

#[test]
fn a_nat_env_has_an_address_and_a_route_but_no_way_into_its_host() {
    let _serial = serial();
    let node = TestNode::new();
    let env = Env::spawn(&node.rt, &nat_opts(&node, "nat"));
    let link = link_of(&env);
    assert_ne!(link.host_addr, link.env_addr);

    let addrs = env.ok("ip -4 -o addr show dev eth0");
    assert!(
        addrs.contains(&format!("inet {}/{}", link.env_addr, link.prefix)),
        "{addrs}"
    );
    let routes = env.ok("ip route");
    assert!(
        routes.contains(&format!("default via {} dev eth0", link.host_addr)),
        "{routes}"
    );
    let ifaces = env.ok("ls /proc/sys/net/ipv4/conf");
    assert_eq!(
        ifaces.split_whitespace().collect::<Vec<_>>(),
        ["all", "default", "eth0", "lo"]
    );

    // Its gateway is no way into the host: a listener on every host address (as the node's
    // API and SSH gateway are) sees nothing of the env.
    let server = Server::start(Ipv4Addr::UNSPECIFIED, None, Duration::from_secs(4));
    let (ok, reply) = connect(&env, link.host_addr, server.port);
    let peer = server.peer();
    assert!(
        !ok && reply.is_empty() && peer.is_none(),
        "the env reached the host: nc ok={ok} {reply:?}, the server saw {peer:?}"
    );

    // The state file carries the network for a new process.
    let loaded = runtime::state::load(&node.rt, &env.state.name).unwrap();
    assert_eq!(loaded.nat.as_ref(), Some(&link));
    assert_eq!(loaded.network, Network::Nat);
}

#[test]
fn a_none_env_reaches_nothing() {
    let _serial = serial();
    let node = TestNode::new();
    let nat = Env::spawn(&node.rt, &nat_opts(&node, "nat"));
    let link = link_of(&nat);
    let none = Env::spawn(&node.rt, &node.opts("none"));
    assert_eq!(none.state.network, Network::None);
    assert!(none.state.nat.is_none());
    assert_eq!(none.ok("ip route").trim(), "");

    let server = Server::start(link.host_addr, None, Duration::from_secs(4));
    let (ok, reply) = connect(&none, link.host_addr, server.port);
    let peer = server.peer();
    assert!(
        !ok && reply.is_empty() && peer.is_none(),
        "a none env reached the host end: nc ok={ok} {reply:?}, server saw {peer:?}"
    );
    // The listener works all the same (for the host).
    let server = Server::start(link.host_addr, None, Duration::from_secs(10));
    std::net::TcpStream::connect((link.host_addr, server.port)).unwrap();
    assert!(server.peer().is_some());
}

#[test]
fn boom_and_failed_spawns_leave_no_link_rule_or_lease() {
    let _serial = serial();
    let node = TestNode::new();
    let env = Env::spawn(&node.rt, &nat_opts(&node, "boom"));
    let link = link_of(&env);
    assert!(ip_links().contains(&format!(": {}@", link.host_if)));
    assert!(nft_ruleset().contains(&link.cidr()));
    let leases = std::fs::read_dir(runtime::net::leases_dir(&node.rt))
        .unwrap()
        .count();
    assert_eq!(leases, 1);
    env.ok("sleep 100 >/dev/null 2>&1 &");
    runtime::boom::boom(&node.rt, &env.state.name).unwrap();
    assert_no_network_left(&node, &link);
    runtime::boom::boom(&node.rt, &env.state.name).unwrap();
    drop(env);

    // A spawn that fails right after its network is set up (or before) undoes it.
    let before = host_network();
    for step in ["init", "net"] {
        let mut opts = nat_opts(&node, "fail");
        opts.fail_after = Some(step.into());
        let err = runtime::spawn::spawn(&node.rt, &opts).unwrap_err();
        assert!(format!("{err:#}").contains("injected failure"), "{err:#}");
        assert!(!node.rt.env_dir(&opts.name).unwrap().exists());
        assert_eq!(host_network(), before, "after a failure after {step}");
        assert_no_leases(&node);
    }

    // So does a network setup that fails half-way: the veth cannot go into the namespace of
    // a process that does not exist, after the subnet was leased.
    let name = unique("half");
    let err = runtime::net::setup_nat(&node.rt, &name, 0x3fff_fff0, 0, &[], &Default::default())
        .unwrap_err();
    assert!(format!("{err:#}").contains("veth"), "{err:#}");
    runtime::net::teardown_nat(&node.rt, &name).unwrap();
    assert_eq!(host_network(), before);
    assert_no_leases(&node);
}

#[test]
fn nat_envs_get_different_subnets_and_do_not_reach_each_other() {
    let _serial = serial();
    let node = TestNode::new();
    // Spawned concurrently: the lease files keep the subnets apart.
    let envs: Vec<Env> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let opts = nat_opts(&node, "pair");
                let rt = &node.rt;
                s.spawn(move || Env::spawn(rt, &opts))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let links: Vec<NatLink> = envs.iter().map(link_of).collect();
    for (i, a) in links.iter().enumerate() {
        for b in &links[i + 1..] {
            assert_ne!(a.subnet, b.subnet);
            assert_ne!(a.host_if, b.host_if);
        }
    }
    let leases = std::fs::read_dir(runtime::net::leases_dir(&node.rt))
        .unwrap()
        .count();
    assert_eq!(leases, 4);

    // A listener in env 1; the host reaches it, env 0 does not (envs are not each other's
    // network).
    let (a, b) = (&envs[0], &envs[1]);
    b.ok("nc -ll -p 7000 -e echo from-b </dev/null >/dev/null 2>&1 &");
    let target = SocketAddr::from((links[1].env_addr, 7000));
    let deadline = Instant::now() + Duration::from_secs(5);
    let reached = loop {
        if let Ok(stream) = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(1)) {
            stream
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            let mut got = String::new();
            let _ = std::io::Read::read_to_string(&mut &stream, &mut got);
            if got.contains("from-b") {
                break true;
            }
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(reached, "the host cannot reach env 1's listener");
    let out = a.sh(&format!("nc -w 2 {} 7000 </dev/null", links[1].env_addr));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("from-b"),
        "env 0 reached env 1"
    );

    drop(envs);
    for link in &links {
        assert_no_network_left(&node, link);
    }
}

/// A network namespace standing for a network beyond the host: `NET.2/24` behind a veth
/// whose host end is `NET.1/24`. [`Outside::new`] is the internet (`198.51.100.0/24`, a
/// documentation range). Removed on drop.
struct Outside {
    name: String,
    host_if: String,
    /// The host end's address.
    host: Ipv4Addr,
    /// The address in the namespace.
    addr: Ipv4Addr,
}

impl Outside {
    fn new() -> Outside {
        Outside::on([198, 51, 100])
    }

    /// A namespace on `NET.0/24`.
    fn on(net: [u8; 3]) -> Outside {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let [a, b, c] = net;
        let name = unique("sg-outside");
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let host_if = format!("sgo{}-{n}", std::process::id() % 100_000);
        let (host, addr) = (Ipv4Addr::new(a, b, c, 1), Ipv4Addr::new(a, b, c, 2));
        let o = Outside {
            name,
            host_if,
            host,
            addr,
        };
        let n = o.name.as_str();
        let h = o.host_if.as_str();
        let (host, addr) = (format!("{host}/24"), format!("{addr}/24"));
        run("ip", &["netns", "add", n]);
        run(
            "ip",
            &[
                "link", "add", h, "type", "veth", "peer", "name", "eth0", "netns", n,
            ],
        );
        run("ip", &["addr", "add", &host, "dev", h]);
        run("ip", &["link", "set", h, "up"]);
        run("ip", &["-n", n, "addr", "add", &addr, "dev", "eth0"]);
        run("ip", &["-n", n, "link", "set", "eth0", "up"]);
        run("ip", &["-n", n, "link", "set", "lo", "up"]);
        o
    }

    fn netns(&self) -> std::path::PathBuf {
        Path::new("/run/netns").join(&self.name)
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

#[test]
fn outbound_traffic_is_masqueraded_through_the_host() {
    let _serial = serial();
    let node = TestNode::new();
    let outside = Outside::new();
    let env = Env::spawn(&node.rt, &nat_opts(&node, "out"));
    let link = link_of(&env);
    let server = Server::start(
        outside.addr,
        Some(&outside.netns()),
        Duration::from_secs(10),
    );
    let (ok, reply) = connect(&env, outside.addr, server.port);
    let peer = server.peer();
    assert!(
        ok && reply == "ok\n",
        "nc: ok={ok} {reply:?}, peer {peer:?}"
    );
    // The outside sees the host's address on its link, not the env's.
    assert_eq!(peer.map(|p| p.ip()), Some(IpAddr::V4(outside.host)));
    // A none env has no way out.
    let none = Env::spawn(&node.rt, &node.opts("none"));
    let server = Server::start(outside.addr, Some(&outside.netns()), Duration::from_secs(4));
    assert!(!connect(&none, outside.addr, server.port).0);
    assert!(server.peer().is_none());
    drop((env, none));
    assert_no_network_left(&node, &link);
}

/// Whether `env` reaches a listener on `addr` (in the namespace at `netns`, else on the
/// host); `nc` and the listener must agree.
fn reaches(env: &Env, addr: Ipv4Addr, netns: Option<&Path>) -> bool {
    let server = Server::start(addr, netns, Duration::from_secs(4));
    let (ok, reply) = connect(env, addr, server.port);
    let peer = server.peer();
    assert_eq!(
        ok && reply == "ok\n",
        peer.is_some(),
        "nc ok={ok} {reply:?}, the server saw {peer:?}"
    );
    peer.is_some()
}

#[test]
fn nat_envs_reach_the_internet_only_unless_the_node_allows_more() {
    let _serial = serial();
    let node = TestNode::new();
    let internet = Outside::new();
    let private = Outside::on([172, 31, 250]);
    let link_local = Outside::on([169, 254, 169]);
    let env = Env::spawn(&node.rt, &nat_opts(&node, "egress"));
    assert!(reaches(&env, internet.addr, Some(&internet.netns())));
    assert!(
        !reaches(&env, private.addr, Some(&private.netns())),
        "RFC 1918"
    );
    let metadata = Some(link_local.netns());
    assert!(
        !reaches(&env, link_local.addr, metadata.as_deref()),
        "link-local"
    );
    // An address of the host that is not the env's gateway is the host all the same.
    assert!(!reaches(&env, internet.host, None), "the host");

    // The node allows a private network and one address of the host to another env.
    let mut opts = nat_opts(&node, "allowed");
    opts.nat_allow = vec![
        "172.31.250.0/24".parse().unwrap(),
        internet.host.to_string().parse().unwrap(),
    ];
    let allowed = Env::spawn(&node.rt, &opts);
    assert!(reaches(&allowed, private.addr, Some(&private.netns())));
    assert!(reaches(&allowed, internet.host, None));
    assert!(!reaches(&allowed, link_local.addr, metadata.as_deref()));
    let gateway = link_of(&allowed).host_addr;
    assert!(
        !reaches(&allowed, gateway, None),
        "a host address it was not allowed"
    );
    // Allowances are the env's own.
    assert!(!reaches(&env, private.addr, Some(&private.netns())));

    let links = [link_of(&env), link_of(&allowed)];
    drop((env, allowed));
    for link in &links {
        assert_no_network_left(&node, link);
    }
}

#[test]
fn state_files_without_a_network_load_as_none() {
    let _serial = serial();
    let node = TestNode::new();
    let env = Env::spawn(&node.rt, &node.opts("old"));
    let file = node.rt.env_dir(&env.state.name).unwrap().join("state.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let obj = json.as_object_mut().unwrap();
    assert!(obj.remove("network").is_some() && obj.remove("nat").is_some());
    std::fs::write(&file, serde_json::to_vec(&json).unwrap()).unwrap();
    let st = runtime::state::load(&node.rt, &env.state.name).unwrap();
    assert_eq!((st.network, &st.nat), (Network::None, &None));
    assert!(st.alive());
}

#[test]
fn a_255_byte_env_name_gets_nat_too() {
    let _serial = serial();
    let node = TestNode::new();
    let mut opts = nat_opts(&node, "long");
    let env_part = format!("{}{}", opts.name, "x".repeat(127 - opts.name.len()));
    opts.name = format!("{env_part}+{}", "u".repeat(127));
    assert_eq!(opts.name.len(), 255);
    let env = Env::spawn(&node.rt, &opts);
    let link = link_of(&env);
    let alias = std::fs::read_to_string(
        Path::new("/sys/class/net")
            .join(&link.host_if)
            .join("ifalias"),
    )
    .unwrap();
    assert!(alias.starts_with("spawngrid-"), "{alias}");
    assert!(env.ok("ip route").contains("default via"));
    drop(env);
    assert_no_network_left(&node, &link);
}

/// Runs `f` on a thread in the network namespace named `netns`.
fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> T {
    let ns = std::fs::File::open(Path::new("/run/netns").join(netns)).unwrap();
    std::thread::scope(|s| {
        s.spawn(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: setns(2) on a valid fd; network namespaces are per thread.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    })
}

/// Network namespaces made by a test, removed on drop.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

#[test]
fn a_node_that_turned_forwarding_on_routes_for_its_envs_only() {
    let _serial = serial();
    let node = TestNode::new();
    // The node's host, with forwarding off, between a LAN neighbour (203.0.113.2, its
    // default route through the host) and a far network (198.51.100.2).
    let names = Namespaces(["host", "lan", "far"].map(unique).to_vec());
    let [host, lan, far] = [&names.0[0], &names.0[1], &names.0[2]];
    for n in &names.0 {
        run("ip", &["netns", "add", n]);
        run("ip", &["-n", n, "link", "set", "lo", "up"]);
    }
    run(
        "ip",
        &[
            "netns",
            "exec",
            host,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=0",
        ],
    );
    for (peer, net, end) in [(lan, "203.0.113", "l0"), (far, "198.51.100", "f0")] {
        let add = [
            "-n", host, "link", "add", end, "type", "veth", "peer", "name", "eth0",
        ];
        run("ip", &[&add[..], &["netns", peer]].concat());
        run(
            "ip",
            &[
                "-n",
                host,
                "addr",
                "add",
                &format!("{net}.1/24"),
                "dev",
                end,
            ],
        );
        run("ip", &["-n", host, "link", "set", end, "up"]);
        run(
            "ip",
            &[
                "-n",
                peer,
                "addr",
                "add",
                &format!("{net}.2/24"),
                "dev",
                "eth0",
            ],
        );
        run("ip", &["-n", peer, "link", "set", "eth0", "up"]);
        let via = format!("{net}.1");
        run("ip", &["-n", peer, "route", "add", "default", "via", &via]);
    }
    let far_addr = Ipv4Addr::new(198, 51, 100, 2);
    let far_ns = Path::new("/run/netns").join(far);
    in_netns(host, || {
        let env = Env::spawn(&node.rt, &nat_opts(&node, "router"));
        // The env goes out through the host.
        assert!(reaches(&env, far_addr, Some(&far_ns)));
        let forwarding = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
        assert_eq!(forwarding.trim(), "1");
        // The LAN neighbour does not.
        let server = Server::start(far_addr, Some(&far_ns), Duration::from_secs(4));
        let target = SocketAddr::from((far_addr, server.port));
        let routed = in_netns(lan, || {
            std::net::TcpStream::connect_timeout(&target, Duration::from_secs(3)).is_ok()
        });
        let peer = server.peer();
        assert!(
            !routed && peer.is_none(),
            "the host routed for its LAN: {peer:?}"
        );
        drop(env);
    });
}

/// The nft objects of env `link` (its chain, its sets, its `egress` map entry) in the table.
fn egress_objects(link: &NatLink) -> Vec<String> {
    let table = run("nft", &["list", "table", "ip", runtime::net::NFT_TABLE]);
    let name = &link.host_if;
    let mut found = Vec::new();
    for line in table.lines() {
        let words: Vec<&str> = line
            .split(|c: char| c.is_whitespace() || c == ',' || c == '{' || c == '}')
            .collect();
        if words.iter().any(|w| {
            *w == name.as_str() || *w == format!("{name}_allow") || *w == format!("{name}_deny")
        }) || line.contains(&format!("{} : jump", link.cidr()))
        {
            found.push(line.trim().to_string());
        }
    }
    found
}

fn policy(default: &str, allow: &[&str], deny: &[&str]) -> runtime::egress::Rules {
    let list = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let p = runtime::egress::Policy::parse(default, &list(allow), &list(deny)).unwrap();
    runtime::egress::Rules::resolve(&p).unwrap()
}

/// Per-env policies narrow the node's floor: a deny of a destination holds for its env only;
/// an allow-only env reaches its list and nothing else (not a private network the node does
/// not allow); a change applies to the running env at once; boom leaves no object of it.
#[test]
fn per_env_egress_policies_deny_allow_and_change_live() {
    let _serial = serial();
    let node = TestNode::new();
    let a = Outside::new();
    let b = Outside::on([203, 0, 113]);
    let private = Outside::on([172, 31, 251]);
    let (a_ns, b_ns) = (Some(a.netns()), Some(b.netns()));

    let mut opts = nat_opts(&node, "deny");
    opts.egress = policy("internet", &[], &["203.0.113.0/24", "localhost"]);
    let denying = Env::spawn(&node.rt, &opts);
    let open = Env::spawn(&node.rt, &nat_opts(&node, "open"));
    assert!(!reaches(&denying, b.addr, b_ns.as_deref()), "denied");
    assert!(reaches(&denying, a.addr, a_ns.as_deref()));
    assert!(reaches(&open, b.addr, b_ns.as_deref()), "another env");
    // The domain's addresses are in its deny set; the state records the policy.
    let link = link_of(&denying);
    let deny_set = run(
        "nft",
        &[
            "list",
            "set",
            "ip",
            runtime::net::NFT_TABLE,
            &format!("{}_deny", link.host_if),
        ],
    );
    assert!(deny_set.contains("127.0.0.1"), "{deny_set}");
    let st = runtime::state::load(&node.rt, &denying.state.name).unwrap();
    assert_eq!(
        st.egress.to_string(),
        "default internet; deny 203.0.113.0/24, localhost"
    );

    let mut opts = nat_opts(&node, "sealed");
    opts.egress = policy("none", &["198.51.100.0/24", "172.31.251.2"], &[]);
    let sealed = Env::spawn(&node.rt, &opts);
    assert!(reaches(&sealed, a.addr, a_ns.as_deref()), "allowed");
    assert!(
        !reaches(&sealed, b.addr, b_ns.as_deref()),
        "not in its list"
    );
    let p_ns = Some(private.netns());
    assert!(
        !reaches(&sealed, private.addr, p_ns.as_deref()),
        "below the floor"
    );

    // Changed while running: the denied destination is reached, then nothing is.
    runtime::policy::set(&node.rt, &denying.state.name, &policy("internet", &[], &[])).unwrap();
    assert!(reaches(&denying, b.addr, b_ns.as_deref()), "deny lifted");
    runtime::policy::set(&node.rt, &denying.state.name, &policy("none", &[], &[])).unwrap();
    assert!(
        !reaches(&denying, a.addr, a_ns.as_deref()),
        "sealed while running"
    );
    // A refresh of a policy that is no longer the env's changes nothing.
    let stale = policy("internet", &[], &[]);
    assert!(
        runtime::policy::refresh(&node.rt, &denying.state.name, &stale)
            .unwrap()
            .is_none()
    );
    assert!(!reaches(&denying, a.addr, a_ns.as_deref()));

    let links = [link, link_of(&open), link_of(&sealed)];
    assert!(!egress_objects(&links[0]).is_empty());
    drop((denying, open, sealed));
    for link in &links {
        assert_eq!(
            egress_objects(link),
            Vec::<String>::new(),
            "{}",
            link.host_if
        );
        assert_no_network_left(&node, link);
    }
}

/// A policy is a `nat` env's: a `none` env with one is refused, naming what to do.
#[test]
fn an_egress_policy_needs_a_nat_network() {
    let _serial = serial();
    let node = TestNode::new();
    let mut opts = node.opts("nonet");
    opts.egress = policy("none", &[], &[]);
    let err = runtime::spawn::spawn(&node.rt, &opts).unwrap_err();
    assert!(format!("{err:#}").contains("--net nat"), "{err:#}");
    assert_no_leases(&node);
}
