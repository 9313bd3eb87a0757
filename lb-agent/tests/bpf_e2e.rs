//! The programs on real interfaces with real kernel routing and real sockets, one node:
//! what BPF_PROG_TEST_RUN cannot show (checksum offload on veths, martian filtering of
//! node-sourced packets, XDP_TX on a veth, the kernel's reaction to our RST and ICMP).
//!
//! ```text
//!  [lbbpf-e2e-client] cli0 192.168.77.2 --- ext0 192.168.77.1 [lbbpf-e2e-node] lxca --- eth0 10.77.1.5 [lbbpf-e2e-pa]
//!                                                                            lxcb --- eth0 10.77.2.6 [lbbpf-e2e-pb]
//! ```
//! pod-b serves TCP 8080 (answers "pod-b") and UDP 5353 (echo). Services: ClusterIP
//! 10.96.0.10:80 and :53, NodePort 192.168.77.1:30080 (backend flagged local: no SNAT),
//! :30081 (backend flagged remote: SNAT to the node), :30099 TCP and UDP and ClusterIP :81
//! with no endpoints.
//!
//! Needs root and BPF: without them the test FAILS with the reason.
#![allow(
    unsafe_code,
    reason = "setns(2) to work inside the test's network namespaces"
)]

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use aya::maps::{Array, HashMap, MapData};
use lb_agent::bpf::{AttachMode, Dataplane, LoadOptions, detach_all};
use lb_common::{
    BACKEND_F_LOCAL, BackendValue, MAP_BACKENDS, MAP_CONFIG, MAP_MAGLEV, MAP_SERVICES, NodeConfig,
    PROTO_TCP, PROTO_UDP, SCOPE_EXTERNAL, SCOPE_INTERNAL, SVC_F_CLUSTER_IP, SVC_F_NODEPORT,
    ServiceKey, ServiceValue,
};

const M: u32 = 7;

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Network namespaces made by this test, deleted on drop (also on panic).
struct Namespaces(Vec<String>);

impl Namespaces {
    fn add(&mut self, name: &str) -> String {
        let full = format!("lbbpf-e2e-{name}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &full]).output();
        sh(&["ip", "netns", "add", &full]);
        sh(&["ip", "-n", &full, "link", "set", "lo", "up"]);
        self.0.push(full.clone());
        full
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

fn enter(ns: &str) {
    let file = std::fs::File::open(PathBuf::from("/run/netns").join(ns)).expect("netns file");
    // SAFETY: plain syscall on a valid fd; affects only the calling thread.
    let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(r, 0, "setns {ns}: {}", std::io::Error::last_os_error());
}

/// Runs `f` on a thread inside `ns`.
fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        enter(&ns);
        f()
    })
}

fn join<T>(h: std::thread::JoinHandle<T>) -> T {
    h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))
}

fn addr(a: [u8; 4]) -> u32 {
    u32::from_ne_bytes(a)
}

fn veth(node: &str, host: &str, other_ns: &str, other: &str) {
    sh(&[
        "ip", "-n", node, "link", "add", host, "type", "veth", "peer", "name", other, "netns",
        other_ns,
    ]);
    sh(&["ip", "-n", node, "link", "set", host, "up"]);
    sh(&["ip", "-n", other_ns, "link", "set", other, "up"]);
}

fn program_maps(dp: &mut Dataplane, cookie: u64) {
    let e = dp.ebpf();
    let mut cfg: Array<&mut MapData, NodeConfig> =
        Array::try_from(e.map_mut(MAP_CONFIG).unwrap()).unwrap();
    cfg.set(
        0,
        NodeConfig {
            node_addr_be: addr([192, 168, 77, 1]),
            maglev_size: M,
            netns_cookie: cookie,
            snat_port_min: 40_000,
            snat_port_max: 40_999,
            ready: 1,
        },
        0,
    )
    .unwrap();
    // Backends: 1 = pod-b:8080 local, 2 = pod-b:8080 flagged remote, 3 = pod-b:5353 UDP.
    let mut be: HashMap<&mut MapData, u32, BackendValue> =
        HashMap::try_from(e.map_mut(MAP_BACKENDS).unwrap()).unwrap();
    for (id, port, proto, flags) in [
        (1, 8080_u16, PROTO_TCP, BACKEND_F_LOCAL),
        (2, 8080, PROTO_TCP, 0),
        (3, 5353, PROTO_UDP, BACKEND_F_LOCAL),
    ] {
        let v = BackendValue {
            addr_be: addr([10, 77, 2, 6]),
            port_be: port.to_be(),
            proto,
            flags,
        };
        be.insert(id, v, 0).unwrap();
    }
    // Tables: lut 0 -> backend 1, lut 1 -> backend 2, lut 2 -> backend 3, lut 3 empty.
    let mut mg: Array<&mut MapData, u32> = Array::try_from(e.map_mut(MAP_MAGLEV).unwrap()).unwrap();
    for (lut, id) in [(0_u32, 1_u32), (1, 2), (2, 3)] {
        for slot in 0..M {
            mg.set(lut * M + slot, id, 0).unwrap();
        }
    }
    let mut svc: HashMap<&mut MapData, ServiceKey, ServiceValue> =
        HashMap::try_from(e.map_mut(MAP_SERVICES).unwrap()).unwrap();
    let vip = addr([10, 96, 0, 10]);
    let node = addr([192, 168, 77, 1]);
    for (a, port, proto, scope, lut_id, count, flags) in [
        (
            vip,
            80_u16,
            PROTO_TCP,
            SCOPE_INTERNAL,
            0,
            1,
            SVC_F_CLUSTER_IP,
        ),
        (vip, 53, PROTO_UDP, SCOPE_INTERNAL, 2, 1, SVC_F_CLUSTER_IP),
        (node, 30080, PROTO_TCP, SCOPE_EXTERNAL, 0, 1, SVC_F_NODEPORT),
        (node, 30081, PROTO_TCP, SCOPE_EXTERNAL, 1, 1, SVC_F_NODEPORT),
        (node, 30082, PROTO_UDP, SCOPE_EXTERNAL, 2, 1, SVC_F_NODEPORT),
        (node, 30099, PROTO_TCP, SCOPE_EXTERNAL, 3, 0, SVC_F_NODEPORT),
        (node, 30099, PROTO_UDP, SCOPE_EXTERNAL, 3, 0, SVC_F_NODEPORT),
        (vip, 81, PROTO_TCP, SCOPE_INTERNAL, 3, 0, SVC_F_CLUSTER_IP),
        (vip, 81, PROTO_UDP, SCOPE_INTERNAL, 3, 0, SVC_F_CLUSTER_IP),
    ] {
        let k = ServiceKey {
            addr_be: a,
            port_be: port.to_be(),
            proto,
            scope,
        };
        let v = ServiceValue {
            lut_id,
            backend_count: count,
            flags,
            affinity_timeout_s: 0,
        };
        svc.insert(k, v, 0).unwrap();
    }
}

/// Connects, reads the answer; returns it or the error kind.
fn fetch(to: &str) -> Result<String, std::io::ErrorKind> {
    let to: SocketAddr = to.parse().unwrap();
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3)).map_err(|e| e.kind())?;
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.kind())?;
    Ok(out)
}

fn udp_echo(to: &str) -> Result<(String, SocketAddr), std::io::ErrorKind> {
    let u = UdpSocket::bind("0.0.0.0:0").unwrap();
    u.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    u.connect(to).map_err(|e| e.kind())?;
    u.send(b"ping").map_err(|e| e.kind())?;
    let mut buf = [0_u8; 64];
    let n = u.recv(&mut buf).map_err(|e| e.kind())?;
    Ok((
        String::from_utf8_lossy(&buf[..n]).into_owned(),
        u.peer_addr().unwrap(),
    ))
}

/// Pin directories of this test, detached and removed on drop.
struct Cleanup(Vec<PathBuf>);
impl Drop for Cleanup {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = detach_all(d);
        }
    }
}

#[test]
fn services_work_through_real_interfaces() {
    let mut nss = Namespaces(Vec::new());
    let client = nss.add("client");
    let node = nss.add("node");
    let pa = nss.add("pa");
    let pb = nss.add("pb");
    veth(&node, "ext0", &client, "cli0");
    veth(&node, "lxca", &pa, "eth0");
    veth(&node, "lxcb", &pb, "eth0");
    sh(&[
        "ip",
        "-n",
        &client,
        "addr",
        "add",
        "192.168.77.2/24",
        "dev",
        "cli0",
    ]);
    sh(&[
        "ip",
        "-n",
        &node,
        "addr",
        "add",
        "192.168.77.1/24",
        "dev",
        "ext0",
    ]);
    sh(&[
        "ip",
        "-n",
        &node,
        "addr",
        "add",
        "10.77.1.1/24",
        "dev",
        "lxca",
    ]);
    sh(&[
        "ip",
        "-n",
        &node,
        "addr",
        "add",
        "10.77.2.1/24",
        "dev",
        "lxcb",
    ]);
    sh(&[
        "ip",
        "-n",
        &pa,
        "addr",
        "add",
        "10.77.1.5/24",
        "dev",
        "eth0",
    ]);
    sh(&[
        "ip",
        "-n",
        &pb,
        "addr",
        "add",
        "10.77.2.6/24",
        "dev",
        "eth0",
    ]);
    sh(&[
        "ip",
        "-n",
        &pa,
        "route",
        "add",
        "default",
        "via",
        "10.77.1.1",
    ]);
    sh(&[
        "ip",
        "-n",
        &pb,
        "route",
        "add",
        "default",
        "via",
        "10.77.2.1",
    ]);
    sh(&[
        "ip",
        "-n",
        &client,
        "route",
        "add",
        "10.77.0.0/16",
        "via",
        "192.168.77.1",
    ]);
    sh(&[
        "ip",
        "netns",
        "exec",
        &node,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]);

    // pod-b's servers.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = in_ns(&pb, move || {
        let l = std::net::TcpListener::bind("10.77.2.6:8080").unwrap();
        let u = UdpSocket::bind("10.77.2.6:5353").unwrap();
        ready_tx.send(()).unwrap();
        std::thread::spawn(move || {
            let mut buf = [0_u8; 64];
            while let Ok((n, from)) = u.recv_from(&mut buf) {
                let _ = u.send_to(&buf[..n], from);
            }
        });
        for s in l.incoming() {
            let Ok(mut s) = s else { break };
            let peer = s.peer_addr().unwrap();
            let _ = write!(s, "pod-b saw {}", peer.ip());
        }
    });
    ready_rx.recv().unwrap();
    drop(server); // detached: ends with its namespace

    let dir = PathBuf::from(format!("/sys/fs/bpf/lbtest-e2e-{}", std::process::id()));
    let dir2 = dir.clone();
    let client_dir = PathBuf::from(format!("/sys/fs/bpf/lbtest-e2ec-{}", std::process::id()));
    let client_dir2 = client_dir.clone();
    let _cleanup = Cleanup(vec![dir.clone(), client_dir.clone()]);
    let opts = |d: PathBuf| LoadOptions {
        bpffs_dir: d,
        max_services: 16,
        max_backends: 16,
        maglev_size: M,
        conntrack_size: 1024,
        affinity_size: 16,
    };
    join(in_ns(&node, move || {
        let mut dp = Dataplane::load(&opts(dir2)).expect("load (root and BPF needed)");
        program_maps(&mut dp, lb_agent::bpf::netns_cookie().unwrap());
        dp.attach_external("ext0").expect("XDP on ext0");
        dp.attach_pod("lxca").expect("tcx on lxca");
        dp.attach_pod("lxcb").expect("tcx on lxcb");
    }));
    // XDP_TX on ext0 reaches the client only when its veth end runs XDP too.
    join(in_ns(&client, move || {
        let mut dp = Dataplane::load(&opts(client_dir2)).expect("load");
        dp.attach_xdp_pass("cli0").expect("xdp pass on cli0");
    }));

    // ClusterIP from a pod: DNAT in from_pod, reverse NAT as the reply leaves pod-b.
    let got = join(in_ns(&pa, || fetch("10.96.0.10:80")));
    assert_eq!(
        got,
        Ok("pod-b saw 10.77.1.5".into()),
        "ClusterIP, client address kept"
    );
    // Hairpin: pod-b reaches itself through the service.
    let got = join(in_ns(&pb, || fetch("10.96.0.10:80")));
    assert_eq!(got, Ok("pod-b saw 169.254.42.1".into()), "hairpin");
    // UDP ClusterIP: the reply comes from the service address.
    let got = join(in_ns(&pa, || udp_echo("10.96.0.10:53")));
    assert_eq!(got, Ok(("ping".into(), "10.96.0.10:53".parse().unwrap())));

    // NodePort from outside, local backend: XDP DNAT, client address kept.
    let got = join(in_ns(&client, || fetch("192.168.77.1:30080")));
    assert_eq!(
        got,
        Ok("pod-b saw 192.168.77.2".into()),
        "NodePort, local backend"
    );
    // NodePort, backend treated as remote: SNAT to the node address.
    let got = join(in_ns(&client, || fetch("192.168.77.1:30081")));
    assert_eq!(
        got,
        Ok("pod-b saw 192.168.77.1".into()),
        "NodePort with SNAT"
    );
    let got = join(in_ns(&client, || udp_echo("192.168.77.1:30082")));
    assert_eq!(
        got,
        Ok(("ping".into(), "192.168.77.1:30082".parse().unwrap()))
    );

    // No endpoints: refused at once (TCP RST / ICMP port unreachable via XDP_TX).
    let got = join(in_ns(&client, || fetch("192.168.77.1:30099")));
    assert_eq!(
        got,
        Err(std::io::ErrorKind::ConnectionRefused),
        "TCP reject"
    );
    let got = join(in_ns(&client, || udp_echo("192.168.77.1:30099")));
    assert_eq!(
        got,
        Err(std::io::ErrorKind::ConnectionRefused),
        "UDP reject"
    );
}

/// (id, address, port, protocol, `BACKEND_F_*`)
type BackendRow = (u32, [u8; 4], u16, u8, u8);
/// (address, port, protocol, scope, backend id = lut id, `SVC_F_*`)
type ServiceRow = ([u8; 4], u16, u8, u8, u32, u32);

/// Writes config, backends, one table per backend and the services of a node.
fn program_node(
    dp: &mut Dataplane,
    node_addr: [u8; 4],
    backends: &[BackendRow],
    services: &[ServiceRow],
) {
    let cookie = lb_agent::bpf::netns_cookie().unwrap();
    let e = dp.ebpf();
    let mut cfg: Array<&mut MapData, NodeConfig> =
        Array::try_from(e.map_mut(MAP_CONFIG).unwrap()).unwrap();
    let c = NodeConfig {
        node_addr_be: addr(node_addr),
        maglev_size: M,
        netns_cookie: cookie,
        snat_port_min: 40_000,
        snat_port_max: 40_999,
        ready: 1,
    };
    cfg.set(0, c, 0).unwrap();
    let mut be: HashMap<&mut MapData, u32, BackendValue> =
        HashMap::try_from(e.map_mut(MAP_BACKENDS).unwrap()).unwrap();
    for &(id, a, port, proto, flags) in backends {
        let v = BackendValue {
            addr_be: addr(a),
            port_be: port.to_be(),
            proto,
            flags,
        };
        be.insert(id, v, 0).unwrap();
    }
    let mut mg: Array<&mut MapData, u32> = Array::try_from(e.map_mut(MAP_MAGLEV).unwrap()).unwrap();
    for &(id, ..) in backends {
        for slot in 0..M {
            mg.set(id * M + slot, id, 0).unwrap();
        }
    }
    let mut svc: HashMap<&mut MapData, ServiceKey, ServiceValue> =
        HashMap::try_from(e.map_mut(MAP_SERVICES).unwrap()).unwrap();
    for &(a, port, proto, scope, backend_id, flags) in services {
        let k = ServiceKey {
            addr_be: addr(a),
            port_be: port.to_be(),
            proto,
            scope,
        };
        let v = ServiceValue {
            lut_id: backend_id,
            backend_count: 1,
            flags,
            affinity_timeout_s: 0,
        };
        svc.insert(k, v, 0).unwrap();
    }
}

/// Two nodes on one L2 segment (a bridge namespace), client on the same segment:
///
/// ```text
///  client 192.168.78.2 --+
///  node1  192.168.78.11 -+- br0 [lan]      node1: lxca -- pod-a 10.78.1.5
///  node2  192.168.78.12 -+                 node2: lxcb -- pod-b 10.78.2.6 (serves 8080)
/// ```
/// Node1's services point at pod-b on node2: the ClusterIP reply comes back over node1's
/// external interface (XDP reverse NAT), the NodePort flow is SNATed to node1 and its
/// reply reverse-translated at node1's XDP. An established NodePort connection survives
/// node1's agent going away and a new agent loading over the pins.
#[test]
fn services_across_two_nodes_and_an_agent_restart() {
    let mut nss = Namespaces(Vec::new());
    let lan = nss.add("2lan");
    let client = nss.add("2cli");
    let n1 = nss.add("2n1");
    let n2 = nss.add("2n2");
    let pa = nss.add("2pa");
    let pb = nss.add("2pb");
    sh(&["ip", "-n", &lan, "link", "add", "br0", "type", "bridge"]);
    sh(&["ip", "-n", &lan, "link", "set", "br0", "up"]);
    for (ns, port, ip) in [
        (&client, "p-cli", "192.168.78.2/24"),
        (&n1, "p-n1", "192.168.78.11/24"),
        (&n2, "p-n2", "192.168.78.12/24"),
    ] {
        veth(&lan, port, ns, "ext0");
        sh(&["ip", "-n", &lan, "link", "set", port, "master", "br0"]);
        sh(&["ip", "-n", ns, "addr", "add", ip, "dev", "ext0"]);
    }
    veth(&n1, "lxca", &pa, "eth0");
    veth(&n2, "lxcb", &pb, "eth0");
    sh(&[
        "ip",
        "-n",
        &n1,
        "addr",
        "add",
        "10.78.1.1/24",
        "dev",
        "lxca",
    ]);
    sh(&[
        "ip",
        "-n",
        &n2,
        "addr",
        "add",
        "10.78.2.1/24",
        "dev",
        "lxcb",
    ]);
    sh(&[
        "ip",
        "-n",
        &pa,
        "addr",
        "add",
        "10.78.1.5/24",
        "dev",
        "eth0",
    ]);
    sh(&[
        "ip",
        "-n",
        &pb,
        "addr",
        "add",
        "10.78.2.6/24",
        "dev",
        "eth0",
    ]);
    sh(&[
        "ip",
        "-n",
        &pa,
        "route",
        "add",
        "default",
        "via",
        "10.78.1.1",
    ]);
    sh(&[
        "ip",
        "-n",
        &pb,
        "route",
        "add",
        "default",
        "via",
        "10.78.2.1",
    ]);
    sh(&[
        "ip",
        "-n",
        &n1,
        "route",
        "add",
        "10.78.2.0/24",
        "via",
        "192.168.78.12",
    ]);
    sh(&[
        "ip",
        "-n",
        &n2,
        "route",
        "add",
        "10.78.1.0/24",
        "via",
        "192.168.78.11",
    ]);
    for n in [&n1, &n2] {
        sh(&[
            "ip",
            "netns",
            "exec",
            n,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
    }

    // pod-b: a line echo server that names the peer it sees.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    drop(in_ns(&pb, move || {
        let l = std::net::TcpListener::bind("10.78.2.6:8080").unwrap();
        ready_tx.send(()).unwrap();
        for s in l.incoming() {
            let Ok(s) = s else { break };
            std::thread::spawn(move || {
                use std::io::BufRead as _;
                let peer = s.peer_addr().unwrap().ip();
                let mut w = s.try_clone().unwrap();
                for line in std::io::BufReader::new(s).lines() {
                    let Ok(line) = line else { break };
                    if writeln!(w, "{line} from {peer}").is_err() {
                        break;
                    }
                }
            });
        }
    }));
    ready_rx.recv().unwrap();

    let pid = std::process::id();
    let d1 = PathBuf::from(format!("/sys/fs/bpf/lbtest-2n1-{pid}"));
    let d2 = PathBuf::from(format!("/sys/fs/bpf/lbtest-2n2-{pid}"));
    let _cleanup = Cleanup(vec![d1.clone(), d2.clone()]);
    let opts = move |d: PathBuf| LoadOptions {
        bpffs_dir: d,
        max_services: 16,
        max_backends: 16,
        maglev_size: M,
        conntrack_size: 1024,
        affinity_size: 16,
    };
    let node1_agent = {
        let d1 = d1.clone();
        move |first: bool| {
            let mut dp = Dataplane::load(&opts(d1.clone())).expect("load node1");
            if first {
                program_node(
                    &mut dp,
                    [192, 168, 78, 11],
                    &[(1, [10, 78, 2, 6], 8080, PROTO_TCP, 0)],
                    &[
                        (
                            [10, 96, 0, 10],
                            80,
                            PROTO_TCP,
                            SCOPE_INTERNAL,
                            1,
                            SVC_F_CLUSTER_IP,
                        ),
                        (
                            [192, 168, 78, 11],
                            30080,
                            PROTO_TCP,
                            SCOPE_EXTERNAL,
                            1,
                            SVC_F_NODEPORT,
                        ),
                    ],
                );
            }
            let mode = dp.attach_external("ext0").expect("XDP node1");
            dp.attach_pod("lxca").expect("tcx node1");
            mode
        }
    };
    let first = node1_agent.clone();
    assert_eq!(join(in_ns(&n1, move || first(true))), AttachMode::Driver);
    join(in_ns(&n2, move || {
        let mut dp = Dataplane::load(&opts(d2)).expect("load node2");
        program_node(&mut dp, [192, 168, 78, 12], &[], &[]);
        dp.attach_external("ext0").expect("XDP node2");
        dp.attach_pod("lxcb").expect("tcx node2");
    }));

    let line = |s: &mut TcpStream, msg: &str| -> String {
        use std::io::BufRead as _;
        writeln!(s, "{msg}").unwrap();
        let mut r = std::io::BufReader::new(s.try_clone().unwrap());
        let mut out = String::new();
        r.read_line(&mut out).expect("answer");
        out.trim_end().to_owned()
    };
    let connect = |to: &str| {
        let s = TcpStream::connect_timeout(&to.parse().unwrap(), Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("connect {to}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s
    };

    // ClusterIP from pod-a to pod-b on the other node: client address preserved, the
    // reply is reverse-translated by node1's XDP.
    let got = join(in_ns(&pa, move || {
        line(&mut connect("10.96.0.10:80"), "hello")
    }));
    assert_eq!(got, "hello from 10.78.1.5");

    // NodePort on node1 to a backend on node2: SNAT to node1, reply fixed at node1's XDP.
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let (back_tx, back_rx) = std::sync::mpsc::channel::<String>();
    let conn = in_ns(&client, move || {
        let mut s = connect("192.168.78.11:30080");
        for msg in rx {
            back_tx.send(line(&mut s, &msg)).unwrap();
        }
    });
    tx.send("one".into()).unwrap();
    assert_eq!(back_rx.recv().unwrap(), "one from 192.168.78.11");

    // Node1's agent goes away (its process state is gone; links and maps stay pinned)
    // and a new one loads over the pins: the established connection keeps working.
    let again = node1_agent.clone();
    assert_eq!(join(in_ns(&n1, move || again(false))), AttachMode::Replaced);
    tx.send("two".into()).unwrap();
    assert_eq!(
        back_rx.recv().unwrap(),
        "two from 192.168.78.11",
        "connection broken by restart"
    );
    drop(tx);
    join(conn);
}
