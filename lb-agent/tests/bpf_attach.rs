//! The loader against real interfaces: links are pinned under `<bpffs>/links`, survive the
//! loader going away (as after `kill -9`), are taken over atomically by a second load (same
//! kernel link, new program), and `detach_all` removes everything. Interfaces live in a
//! network namespace made by the test (`lbbpf-` prefix), removed on drop, also on panic.
//!
//! Needs root and BPF: without them the tests FAIL with the reason.
#![allow(
    unsafe_code,
    reason = "setns(2) to work inside the test's network namespace"
)]

use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use aya::programs::Program;
use aya::programs::links::{FdLink, PinnedLink};
use lb_agent::bpf::{
    AttachMode, Dataplane, LoadOptions, PROG_XDP, detach_all, link_pin_path, mounts,
};

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace with a veth pair `lbv0` <-> `lbv1`, deleted on drop.
struct NetNs(String);

impl NetNs {
    fn new(tag: &str) -> Self {
        let name = format!("lbbpf-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&["ip", "netns", "add", &name]);
        let ns = NetNs(name);
        let n = ns.0.as_str();
        sh(&[
            "ip", "-n", n, "link", "add", "lbv0", "type", "veth", "peer", "name", "lbv1",
        ]);
        sh(&["ip", "-n", n, "link", "set", "lbv0", "up"]);
        sh(&["ip", "-n", n, "link", "set", "lbv1", "up"]);
        ns
    }

    /// Runs `f` on a thread that entered this namespace (netns is per thread).
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = PathBuf::from("/run/netns").join(&self.0);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("netns file");
            // SAFETY: plain syscall on a valid fd; affects only this thread.
            let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = detach_all(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn opts(dir: &Path) -> LoadOptions {
    LoadOptions {
        bpffs_dir: dir.to_path_buf(),
        max_services: 8,
        max_backends: 16,
        maglev_size: 7,
        conntrack_size: 256,
        affinity_size: 16,
    }
}

/// (link id, program id) of the link pinned at `path`.
fn link_ids(path: &Path) -> (u32, u32) {
    let link = FdLink::from(
        PinnedLink::from_pin(path).unwrap_or_else(|e| panic!("pin {}: {e}", path.display())),
    );
    let info = link.info().expect("link info");
    (info.id(), info.program_id())
}

fn total_reasons(dp: &mut Dataplane) -> u64 {
    let a: aya::maps::PerCpuArray<&mut aya::maps::MapData, u64> =
        aya::maps::PerCpuArray::try_from(dp.ebpf().map_mut(lb_common::MAP_REASONS).unwrap())
            .unwrap();
    (0..lb_common::Reason::COUNT)
        .map(|i| a.get(&i, 0).unwrap().iter().sum::<u64>())
        .sum()
}

fn prog_id(dp: &mut Dataplane, name: &str) -> u32 {
    match dp.ebpf().program(name).expect("program") {
        Program::Xdp(p) => p.info().unwrap().id(),
        Program::SchedClassifier(p) => p.info().unwrap().id(),
        Program::CgroupSockAddr(p) => p.info().unwrap().id(),
        _ => panic!("unexpected program type"),
    }
}

#[test]
fn links_are_pinned_survive_the_loader_and_are_replaced_atomically() {
    let ns = NetNs::new("attach");
    let dir = PathBuf::from(format!("/sys/fs/bpf/lbtest-attach-{}", std::process::id()));
    let pins = Pins(dir.clone());
    let nsname = ns.0.clone();
    ns.run(move || {
        let xdp_pin = link_pin_path(&dir, "lbv0", "xdp");
        let ing_pin = link_pin_path(&dir, "lbv1", "tc_ingress");
        let eg_pin = link_pin_path(&dir, "lbv1", "tc_egress");

        let mut first = Dataplane::load(&opts(&dir)).expect("load (root, BPF, bpffs needed)");
        let mode = first.attach_external("lbv0").expect("attach XDP");
        let sysctl =
            |f: &str| std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/lbv0/{f}")).unwrap();
        assert_eq!(
            sysctl("accept_local").trim(),
            "1",
            "NodePort replies need accept_local"
        );
        assert_ne!(
            sysctl("rp_filter").trim(),
            "1",
            "strict rp_filter drops NodePort replies"
        );
        assert_eq!(mode, AttachMode::Driver, "veth supports native XDP");
        first.attach_pod("lbv1").expect("attach tcx");
        let xdp_prog_1 = prog_id(&mut first, PROG_XDP);
        let (xdp_link, p) = link_ids(&xdp_pin);
        assert_eq!(p, xdp_prog_1, "the pinned XDP link runs our program");
        let (ing_link, _) = link_ids(&ing_pin);
        let (eg_link, _) = link_ids(&eg_pin);

        // The loader goes away (all its fds closed, as on kill -9): still attached.
        drop(first);
        let shown = sh(&["ip", "-n", &nsname, "-d", "link", "show", "lbv0"]);
        assert!(
            shown.contains(&format!("prog/xdp id {xdp_prog_1}")),
            "XDP detached with the loader: {shown}"
        );
        assert_eq!(link_ids(&xdp_pin).1, xdp_prog_1);

        // A restarted agent: same kernel links, new programs.
        let mut second = Dataplane::load(&opts(&dir)).expect("second load");
        assert_eq!(
            second.attach_external("lbv0").expect("re-attach"),
            AttachMode::Replaced
        );
        second.attach_pod("lbv1").expect("re-attach tcx");
        let xdp_prog_2 = prog_id(&mut second, PROG_XDP);
        assert_ne!(xdp_prog_1, xdp_prog_2);
        assert_eq!(
            link_ids(&xdp_pin),
            (xdp_link, xdp_prog_2),
            "link replaced in place"
        );
        assert_eq!(link_ids(&ing_pin).0, ing_link);
        assert_eq!(link_ids(&eg_pin).0, eg_link);
        assert_eq!(
            link_ids(&ing_pin).1,
            prog_id(&mut second, lb_agent::bpf::PROG_TC_FROM_POD)
        );
        let shown = sh(&["ip", "-n", &nsname, "-d", "link", "show", "lbv0"]);
        assert!(
            shown.contains(&format!("prog/xdp id {xdp_prog_2}")),
            "{shown}"
        );
        drop(second);

        // Clean uninstall: nothing attached, nothing pinned.
        detach_all(&dir).expect("detach_all");
        // The kernel releases a link from a workqueue once its last reference is gone.
        let mut shown = String::new();
        for _ in 0..100 {
            shown = sh(&["ip", "-n", &nsname, "-d", "link", "show", "lbv0"]);
            if !shown.contains("prog/xdp") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(!shown.contains("prog/xdp"), "still attached: {shown}");
        assert!(!dir.exists(), "pin directory left behind");
    });
    drop(pins);
}

#[test]
fn a_pin_whose_interface_was_recreated_is_replaced_by_a_fresh_link() {
    let ns = NetNs::new("stale");
    let dir = PathBuf::from(format!("/sys/fs/bpf/lbtest-stale-{}", std::process::id()));
    let _pins = Pins(dir.clone());
    let nsname = ns.0.clone();
    ns.run(move || {
        let mut dp = Dataplane::load(&opts(&dir)).expect("load");
        dp.attach_pod("lbv1").expect("attach");
        let pin = link_pin_path(&dir, "lbv1", "tc_ingress");
        let (old_link, _) = link_ids(&pin);
        // The pod goes away and comes back with the same interface name.
        sh(&["ip", "-n", &nsname, "link", "del", "lbv0"]);
        sh(&[
            "ip", "-n", &nsname, "link", "add", "lbv0", "type", "veth", "peer", "name", "lbv1",
        ]);
        sh(&[
            "ip",
            "-n",
            &nsname,
            "addr",
            "add",
            "10.99.0.1/24",
            "dev",
            "lbv0",
        ]);
        sh(&["ip", "-n", &nsname, "link", "set", "lbv0", "up"]);
        sh(&["ip", "-n", &nsname, "link", "set", "lbv1", "up"]);
        dp.attach_pod("lbv1").expect("attach to the new interface");
        let (new_link, prog) = link_ids(&pin);
        assert_ne!(
            old_link, new_link,
            "the defunct link must be replaced by a new one"
        );
        assert_eq!(prog, prog_id(&mut dp, lb_agent::bpf::PROG_TC_FROM_POD));
        // Behaviour: a packet leaving lbv0 (an ARP request for a neighbour) enters lbv1
        // and is counted by lb_tc_from_pod.
        let before = total_reasons(&mut dp);
        let sock = std::net::UdpSocket::bind("10.99.0.1:0").expect("bind");
        let _ = sock.send_to(b"x", "10.99.0.3:9");
        let mut after = before;
        for _ in 0..50 {
            after = total_reasons(&mut dp);
            if after > before {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(
            after > before,
            "no packet reached the program on the new lbv1"
        );
    });
}

#[test]
fn unknown_interface_is_a_typed_error() {
    let dir = PathBuf::from(format!("/sys/fs/bpf/lbtest-noif-{}", std::process::id()));
    let _pins = Pins(dir.clone());
    let mut dp = Dataplane::load(&opts(&dir)).expect("load");
    let err = dp.attach_external("lbnosuch0").expect_err("must fail");
    assert!(
        matches!(err, lb_agent::bpf::BpfError::NoSuchInterface { .. }),
        "{err:?}"
    );
    assert!(mounts::is_on_bpffs(&dir));
}

/// A child cgroup of the cgroup2 mount, removed on drop.
struct Cgroup(PathBuf);

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn socket_lb_sends_node_processes_to_a_backend_and_shows_the_service() {
    use std::io::Read as _;

    let ns = NetNs::new("sock");
    let n = ns.0.clone();
    sh(&["ip", "-n", &n, "link", "set", "lo", "up"]);
    sh(&["ip", "-n", &n, "addr", "add", "10.99.1.1/24", "dev", "lbv0"]);
    let root = mounts::cgroup2_root().expect("cgroup2 mount");
    let cg = Cgroup(root.join(format!("lbbpf-sock-{}", std::process::id())));
    std::fs::create_dir_all(&cg.0).expect("create cgroup");
    let dir = PathBuf::from(format!("/sys/fs/bpf/lbtest-sock-{}", std::process::id()));
    let _pins = Pins(dir.clone());
    let cgpath = cg.0.clone();
    ns.run(move || {
        let mut dp = Dataplane::load(&opts(&dir)).expect("load");
        let cookie = lb_agent::bpf::netns_cookie().expect("netns cookie");
        {
            use aya::maps::{Array, HashMap, MapData};
            use lb_common::*;
            let mut cfg: Array<&mut MapData, NodeConfig> =
                Array::try_from(dp.ebpf().map_mut(MAP_CONFIG).unwrap()).unwrap();
            cfg.set(
                0,
                NodeConfig {
                    node_addr_be: u32::from_ne_bytes([10, 99, 1, 1]),
                    maglev_size: 7,
                    netns_cookie: cookie,
                    snat_port_min: 40_000,
                    snat_port_max: 41_000,
                    ready: 1,
                },
                0,
            )
            .unwrap();
            let mut be: HashMap<&mut MapData, u32, BackendValue> =
                HashMap::try_from(dp.ebpf().map_mut(MAP_BACKENDS).unwrap()).unwrap();
            for (id, port, proto) in [(1, 8080_u16, PROTO_TCP), (2, 5353, PROTO_UDP)] {
                let v = BackendValue {
                    addr_be: u32::from_ne_bytes([10, 99, 1, 1]),
                    port_be: port.to_be(),
                    proto,
                    flags: BACKEND_F_LOCAL,
                };
                be.insert(id, v, 0).unwrap();
            }
            let mut mg: Array<&mut MapData, u32> =
                Array::try_from(dp.ebpf().map_mut(MAP_MAGLEV).unwrap()).unwrap();
            for slot in 0..7 {
                mg.set(slot, 1, 0).unwrap();
                mg.set(7 + slot, 2, 0).unwrap();
            }
            let mut svc: HashMap<&mut MapData, ServiceKey, ServiceValue> =
                HashMap::try_from(dp.ebpf().map_mut(MAP_SERVICES).unwrap()).unwrap();
            for (lut_id, port, proto) in [(0, 80_u16, PROTO_TCP), (1, 53, PROTO_UDP)] {
                let k = ServiceKey {
                    addr_be: u32::from_ne_bytes([10, 96, 0, 10]),
                    port_be: port.to_be(),
                    proto,
                    scope: SCOPE_INTERNAL,
                };
                let v = ServiceValue {
                    lut_id,
                    backend_count: 1,
                    flags: SVC_F_CLUSTER_IP,
                    affinity_timeout_s: 0,
                };
                svc.insert(k, v, 0).unwrap();
            }
        }
        let listener = std::net::TcpListener::bind("10.99.1.1:8080").expect("listen");
        let udp = std::net::UdpSocket::bind("10.99.1.1:5353").expect("udp bind");
        assert_eq!(
            dp.attach_cgroup(Some(&cgpath)).expect("attach cgroup"),
            cgpath
        );

        let script = "import socket\n\
s = socket.create_connection(('10.96.0.10', 80), timeout=5)\n\
print(*s.getpeername())\n\
s.sendall(b'hi')\n\
s.close()\n\
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
u.settimeout(5)\n\
u.sendto(b'ping', ('10.96.0.10', 53))\n\
data, peer = u.recvfrom(100)\n\
print(data.decode(), *peer)\n";
        let procs = cgpath.join("cgroup.procs");
        let child = std::thread::spawn(move || {
            Command::new("sh")
                .args([
                    "-c",
                    &format!("echo $$ > {} && exec python3 -c \"$0\"", procs.display()),
                    script,
                ])
                .output()
                .expect("python3")
        });
        let (mut conn, peer) = listener.accept().expect("the backend gets the connection");
        assert_eq!(peer.ip().to_string(), "10.99.1.1");
        let mut got = Vec::new();
        conn.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"hi");
        let mut buf = [0_u8; 16];
        let (len, from) = udp
            .recv_from(&mut buf)
            .expect("the UDP backend gets the datagram");
        assert_eq!(&buf[..len], b"ping");
        udp.send_to(b"pong", from).unwrap();
        let out = child.join().unwrap();
        assert!(
            out.status.success(),
            "client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "10.96.0.10 80\npong 10.96.0.10 53\n",
            "the application sees the service address, not the backend"
        );
        // Another node's namespace shares the cgroup: its sockets are not touched (the
        // programs act only on their own netns cookie), so the ClusterIP is unreachable.
        let other = NetNs::new("sock2");
        let procs = cgpath.join("cgroup.procs");
        sh(&[
            "ip",
            "-n",
            &other.0,
            "addr",
            "add",
            "10.99.1.1/24",
            "dev",
            "lbv0",
        ]);
        let out = other.run(move || {
            // The backend address is served here too: a wrongly rewritten connect would
            // succeed, so the check below can fail.
            let _decoy = std::net::TcpListener::bind("10.99.1.1:8080").expect("decoy listener");
            Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "echo $$ > {} && exec python3 -c \"$0\"",
                    procs.display()
                ))
                .arg(
                    "import socket\n\
try:\n    socket.create_connection(('10.96.0.10', 80), timeout=2)\n    print('connected')\n\
except OSError as e:\n    print('refused', e.errno)\n",
                )
                .output()
                .expect("python3")
        });
        let text = String::from_utf8_lossy(&out.stdout);
        // ENETUNREACH (101): the service address was left alone, and it has no route.
        assert!(
            text.trim() == "refused 101",
            "a socket of another namespace was load-balanced: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        drop(dp);
        detach_all(&dir).expect("detach");
    });
}

#[test]
fn two_agents_attach_to_the_same_cgroup_and_restart() {
    let root = mounts::cgroup2_root().expect("cgroup2 mount");
    let cg = Cgroup(root.join(format!("lbbpf-two-{}", std::process::id())));
    std::fs::create_dir_all(&cg.0).expect("create cgroup");
    let d1 = PathBuf::from(format!("/sys/fs/bpf/lbtest-two1-{}", std::process::id()));
    let d2 = PathBuf::from(format!("/sys/fs/bpf/lbtest-two2-{}", std::process::id()));
    let (_p1, _p2) = (Pins(d1.clone()), Pins(d2.clone()));
    let mut a = Dataplane::load(&opts(&d1)).expect("load 1");
    let mut b = Dataplane::load(&opts(&d2)).expect("load 2");
    a.attach_cgroup(Some(&cg.0)).expect("agent 1 attaches");
    b.attach_cgroup(Some(&cg.0))
        .expect("agent 2 attaches to the same cgroup");
    let pin = d1.join("links").join("cgroup_connect4");
    let (link1, _) = link_ids(&pin);
    // Agent 1 restarts: its cgroup links are updated in place, agent 2's are untouched.
    drop(a);
    let mut a = Dataplane::load(&opts(&d1)).expect("reload 1");
    a.attach_cgroup(Some(&cg.0)).expect("agent 1 re-attaches");
    let (link1_after, prog) = link_ids(&pin);
    assert_eq!(link1, link1_after, "cgroup link replaced in place");
    assert_eq!(prog, prog_id(&mut a, lb_agent::bpf::PROG_SOCK_CONNECT4));
    let (_, prog_b) = link_ids(&d2.join("links").join("cgroup_connect4"));
    assert_eq!(prog_b, prog_id(&mut b, lb_agent::bpf::PROG_SOCK_CONNECT4));
    drop((a, b));
    detach_all(&d1).unwrap();
    detach_all(&d2).unwrap();
}
