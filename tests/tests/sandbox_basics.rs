//! The sandbox itself: every pod is reachable from the client, from pods and from nodes,
//! with the source address preserved, and nothing is left behind afterwards. Needs root
//! (fails with a message saying so otherwise; never skipped).
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use lb_tests::netns;
use lb_tests::topology::CLIENT_IP;
use lb_tests::{PodSpec, Sandbox};

/// Building a sandbox sweeps stale ones: the sweep test holds this exclusively so that no
/// other test of this binary sweeps its fake stale namespace first.
static SWEEP: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// What a sandbox leaves behind when it is gone: nothing. Returns what it found.
fn leftovers(namespaces: &[String], pids: &[u32], id: &str) -> Vec<String> {
    let live = netns::list();
    let mut left: Vec<String> = namespaces
        .iter()
        .filter(|ns| live.contains(ns))
        .map(|ns| format!("namespace {ns}"))
        .collect();
    left.extend(
        namespaces
            .iter()
            .filter(|ns| Path::new("/etc/netns").join(ns).exists())
            .map(|ns| format!("/etc/netns/{ns}")),
    );
    left.extend(
        pids.iter()
            .filter(|pid| Path::new(&format!("/proc/{pid}")).exists())
            .map(|pid| format!("process {pid}")),
    );
    let workdir = std::env::temp_dir().join(id);
    if workdir.exists() {
        left.push(workdir.display().to_string());
    }
    left
}

fn ip_of(addr: SocketAddr) -> IpAddr {
    addr.ip()
}

#[test]
fn http_and_udp_reach_pods_on_both_nodes_with_source_preserved() {
    let _shared = SWEEP
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let started = std::time::Instant::now();
    let sb = Sandbox::builder()
        .seed_app()
        .build()
        .expect("build sandbox");
    eprintln!(
        "sandbox with 2 nodes and 6 pods built in {:?}",
        started.elapsed()
    );
    assert_eq!(sb.nodes().len(), 2);
    assert_eq!(sb.pods().len(), 6);
    for node in [0, 1] {
        assert!(
            sb.pods().iter().filter(|p| p.spec.node == node).count() >= 2,
            "pods are spread over both nodes"
        );
    }

    // The client reaches every pod through the nodes' routes; pods see 10.0.0.1.
    for pod in sb.pods() {
        let r = sb
            .http_get(sb.client_ns(), pod.http_addr(), "/api/x?q=1")
            .unwrap_or_else(|e| panic!("client -> {}: {e:#}", pod.name));
        // A frontend also calls the backend's ClusterIP, which only answers once an agent
        // runs: without one it answers 502 with `backend_error`, still naming itself.
        if pod.spec.backend.is_some() {
            assert!(
                r.status == 200 || r.json().unwrap()["backend_error"].is_string(),
                "{r:?}"
            );
        } else {
            assert_eq!(r.status, 200);
        }
        assert_eq!(r.pod().unwrap(), pod.name);
        assert_eq!(ip_of(r.client().unwrap()), IpAddr::from(CLIENT_IP));
        assert_eq!(r.json().unwrap()["path"], "/api/x?q=1");
        // The pod saw exactly our socket (no NAT in the sandbox itself).
        assert_eq!(r.client().unwrap(), r.local_addr.unwrap());

        let (echo, from) = sb
            .udp(sb.client_ns(), pod.udp_addr().unwrap(), b"ping")
            .unwrap_or_else(|e| panic!("client -> {} UDP: {e:#}", pod.name));
        assert_eq!(from, pod.udp_addr().unwrap());
        let (name, seen) = echo.split_once(' ').expect("`<pod> <client>`");
        assert_eq!(name, pod.name);
        assert_eq!(
            seen.parse::<SocketAddr>().unwrap().ip(),
            IpAddr::from(CLIENT_IP)
        );
    }

    // Pod to pod, same node and across nodes: the source pod's address is preserved.
    for src in ["frontend-0", "frontend-1"] {
        let src = sb.pod(src);
        for dst in sb.pods_of("backend") {
            let r = sb
                .http_get(&src.ns, dst.http_addr(), "/")
                .unwrap_or_else(|e| panic!("{} -> {}: {e:#}", src.name, dst.name));
            assert_eq!(r.pod().unwrap(), dst.name);
            assert_eq!(ip_of(r.client().unwrap()), IpAddr::from(src.ip));

            let (echo, _) = sb.udp(&src.ns, dst.udp_addr().unwrap(), b"x").unwrap();
            assert_eq!(echo.split_once(' ').unwrap().0, dst.name);
            assert!(
                echo.ends_with(&format!("{}", src.ip)) || echo.contains(&format!("{}:", src.ip))
            );
        }
    }

    // Nodes reach pods on both nodes and the client; a node's own traffic comes from eth0.
    for node in sb.nodes() {
        for dst in [sb.pod("backend-0"), sb.pod("backend-1")] {
            let r = sb.http_get(&node.ns, dst.http_addr(), "/").unwrap();
            assert_eq!(r.pod().unwrap(), dst.name);
        }
        let remote_pod = sb
            .pods()
            .iter()
            .find(|p| p.spec.node != node.index)
            .unwrap();
        let r = sb.http_get(&node.ns, remote_pod.http_addr(), "/").unwrap();
        assert_eq!(ip_of(r.client().unwrap()), IpAddr::from(node.ip));
    }

    // Names of the seed app's Services resolve inside pods (/etc/netns/<ns>/hosts).
    let out = sb
        .exec(&sb.pod("frontend-0").ns, "getent", &["hosts", "backend"])
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("10.96.0.10 "),
        "backend resolves to its ClusterIP: {out:?}"
    );
    assert!(sb.manifests_dir().join("nodes.yaml").is_file());
    assert!(sb.manifests_dir().join("endpointslices.yaml").is_file());

    let namespaces = sb.namespaces().to_vec();
    let pids = sb.running_pids();
    assert_eq!(pids.len(), 6, "one pod server per pod");
    assert_eq!(namespaces.len(), 1 + 2 + 6);
    let id = sb.id().to_owned();
    drop(sb);
    assert_eq!(leftovers(&namespaces, &pids, &id), Vec::<String>::new());
}

#[test]
fn two_sandboxes_exist_at_once_without_colliding() {
    let _shared = SWEEP
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let a = Sandbox::builder()
        .pod(PodSpec::new("a-0", 0, 8080).udp_port(8080))
        .pod(PodSpec::new("a-1", 1, 8080))
        .build()
        .expect("build sandbox a");
    let b = Sandbox::builder()
        .pod(PodSpec::new("b-0", 0, 8080).udp_port(8080))
        .build()
        .expect("build sandbox b");
    assert_ne!(a.id(), b.id());
    // Same addresses in both, each answered by its own pod.
    assert_eq!(a.pod("a-0").ip, b.pod("b-0").ip);
    for (sb, name) in [(&a, "a-0"), (&b, "b-0")] {
        let pod = sb.pod(name);
        let r = sb.http_get(sb.client_ns(), pod.http_addr(), "/").unwrap();
        assert_eq!(r.pod().unwrap(), name);
        let (echo, _) = sb
            .udp(sb.client_ns(), pod.udp_addr().unwrap(), b"x")
            .unwrap();
        assert!(echo.starts_with(name));
    }
    let r = a
        .http_get(a.client_ns(), a.pod("a-1").http_addr(), "/")
        .unwrap();
    assert_eq!(r.pod().unwrap(), "a-1");
    let gone = [
        (a.namespaces().to_vec(), a.running_pids(), a.id().to_owned()),
        (b.namespaces().to_vec(), b.running_pids(), b.id().to_owned()),
    ];
    drop(a);
    drop(b);
    for (ns, pids, id) in gone {
        assert_eq!(leftovers(&ns, &pids, &id), Vec::<String>::new());
    }
}

#[test]
fn a_panicking_test_leaves_nothing_behind() {
    let _shared = SWEEP
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut seen = (Vec::new(), Vec::new(), String::new());
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let sb = Sandbox::builder()
            .pod(PodSpec::new("p-0", 1, 8080))
            .build()
            .expect("build sandbox");
        seen = (
            sb.namespaces().to_vec(),
            sb.running_pids(),
            sb.id().to_owned(),
        );
        panic!("deliberate panic with a live sandbox");
    }));
    assert!(result.is_err());
    assert!(!seen.0.is_empty() && !seen.1.is_empty());
    assert_eq!(leftovers(&seen.0, &seen.1, &seen.2), Vec::<String>::new());
}

#[test]
fn stale_sandboxes_of_dead_runs_are_swept_with_their_processes() {
    let _exclusive = SWEEP
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    lb_tests::sandbox::preflight().expect("preflight");
    // A pid that is certainly dead: a child we started and reaped.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    let dead_pid = gone.id();
    let ns = format!("{}{dead_pid}x0-stale", netns::PREFIX);
    let live_ns = format!("{}{}x999-alive", netns::PREFIX, std::process::id());
    for n in [&ns, &live_ns] {
        netns::run(std::process::Command::new("ip").args(["netns", "add", n])).unwrap();
    }
    // A process left inside the stale namespace, as after a SIGKILLed test run.
    let mut orphan = std::process::Command::new("nsenter")
        .arg(format!("--net={}", netns::netns_path(&ns).display()))
        .args(["--", "sleep", "60"])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert!(netns::pids_in(&ns).contains(&i32::try_from(orphan.id()).unwrap()));

    let swept = netns::sweep_stale();
    let status = orphan.wait().unwrap();
    let live = netns::list();
    // Clean up the live one ourselves before asserting, so a failure leaves nothing.
    netns::delete(&live_ns).unwrap();
    assert!(swept.contains(&ns), "swept {swept:?}");
    assert!(!live.contains(&ns), "stale namespace removed");
    assert!(
        live.contains(&live_ns),
        "a live process's namespace is left alone"
    );
    assert!(!status.success(), "the orphan was killed: {status}");
}
