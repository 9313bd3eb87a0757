//! The agent survives its own crash: killed with SIGKILL (no clean-up, as on an OOM kill or
//! a node agent upgrade gone wrong) and started again, while clients keep long-lived TCP
//! connections open and a steady stream of new requests flows through a ClusterIP (from a
//! pod) and a NodePort (from the external client) on both nodes. The programs and maps stay
//! pinned in the kernel while no agent runs, and the new agent reads them back and applies
//! only the difference, so no connection is reset, no request fails and every long-lived
//! connection stays on its backend. Needs root (fails loudly otherwise).
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lb_tests::manifests::{BACKEND_CLUSTER_IP, BACKEND_NODE_PORT};
use lb_tests::{HttpResponse, Proc, Sandbox};

/// One keep-alive connection: a request, its whole answer, the connection stays open.
struct KeepAlive {
    what: String,
    stream: TcpStream,
}

impl KeepAlive {
    fn open(sb: &Sandbox, ns: &str, addr: SocketAddr, what: String) -> KeepAlive {
        let stream = sb
            .in_ns(ns, move || {
                TcpStream::connect_timeout(&addr, Duration::from_secs(3))
            })
            .expect("enter namespace")
            .unwrap_or_else(|e| panic!("{what}: connect: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(3)))
            .expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        KeepAlive { what, stream }
    }

    /// Sends `GET /` and reads the whole answer; the pod that answered.
    fn request(&mut self) -> Result<String, String> {
        self.stream
            .write_all(b"GET / HTTP/1.1\r\nHost: restart-test\r\n\r\n")
            .map_err(|e| format!("{}: write: {e}", self.what))?;
        let mut raw = Vec::new();
        let mut buf = [0_u8; 4096];
        loop {
            let n = self
                .stream
                .read(&mut buf)
                .map_err(|e| format!("{}: read: {e}", self.what))?;
            if n == 0 {
                return Err(format!("{}: connection closed by the peer", self.what));
            }
            raw.extend_from_slice(&buf[..n]);
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .ok_or_else(|| format!("{}: no content-length in {head:?}", self.what))?;
                if raw.len() >= end + 4 + len {
                    break;
                }
            }
        }
        let r = HttpResponse::parse(&raw).map_err(|e| format!("{}: {e:#}", self.what))?;
        if r.status != 200 {
            return Err(format!("{}: status {}", self.what, r.status));
        }
        r.pod().map_err(|e| format!("{}: {e:#}", self.what))
    }
}

fn start_agents(sb: &Sandbox) -> Vec<Proc> {
    let agents: Vec<Proc> = (0..sb.nodes().len())
        .map(|i| sb.start_agent(i, &[]).expect("start lb-agent"))
        .collect();
    for a in &agents {
        a.wait_for_log("first sync programmed", Duration::from_secs(30))
            .expect("agent ready");
    }
    agents
}

#[test]
fn sigkill_and_restart_of_the_agent_resets_no_connection_and_fails_no_request() {
    let sb = Sandbox::builder()
        .seed_app()
        .build()
        .expect("build sandbox");
    let agents = start_agents(&sb);

    let cluster_ip = SocketAddr::from((BACKEND_CLUSTER_IP, 80));
    let frontend_ns = sb.pods_of("frontend")[0].ns.clone();
    let client_ns = sb.client_ns().to_owned();
    let node_ports: Vec<SocketAddr> = sb
        .nodes()
        .iter()
        .map(|n| SocketAddr::from((n.ip, BACKEND_NODE_PORT)))
        .collect();

    // Targets: the ClusterIP from a pod, the NodePort of each node from the client.
    let mut targets = vec![(frontend_ns.clone(), cluster_ip)];
    targets.extend(node_ports.iter().map(|a| (client_ns.clone(), *a)));

    // Long-lived connections, three per target, each pinned to the pod that answered first.
    let mut conns: Vec<(KeepAlive, String)> = Vec::new();
    for (ns, addr) in &targets {
        for k in 0..3 {
            let mut c = KeepAlive::open(&sb, ns, *addr, format!("keep-alive #{k} {ns} -> {addr}"));
            let pod = c
                .request()
                .unwrap_or_else(|e| panic!("before the restart: {e}"));
            conns.push((c, pod));
        }
    }

    let stop = AtomicBool::new(false);
    let failures = Mutex::new(Vec::<String>::new());
    let new_conn_ok = AtomicU64::new(0);
    let kept_ok = AtomicU64::new(0);

    let new_agents = std::thread::scope(|s| {
        // A steady stream of new connections to every target.
        for (ns, addr) in &targets {
            let (sb, stop, failures, ok) = (&sb, &stop, &failures, &new_conn_ok);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match sb.http_get(ns, *addr, "/") {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => failures.lock().unwrap().push(format!(
                            "new connection {ns} -> {addr}: status {}",
                            r.status
                        )),
                        Err(e) => failures
                            .lock()
                            .unwrap()
                            .push(format!("new connection {ns} -> {addr}: {e:#}")),
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            });
        }
        // Requests on the long-lived connections, which must stay on their pod.
        {
            let (stop, failures, ok) = (&stop, &failures, &kept_ok);
            let conns = &mut conns;
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for (c, pod) in conns.iter_mut() {
                        match c.request() {
                            Ok(p) if p == *pod => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(p) => failures
                                .lock()
                                .unwrap()
                                .push(format!("{}: moved from {pod} to {p}", c.what)),
                            Err(e) => failures.lock().unwrap().push(e),
                        }
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
        }

        std::thread::sleep(Duration::from_secs(1));
        // Both agents die at once with SIGKILL and stay down for a while: the kernel keeps
        // serving from the pinned programs and maps.
        for a in agents {
            let status = a.kill().expect("SIGKILL the agent");
            assert!(!status.success(), "the agent was killed: {status}");
        }
        std::thread::sleep(Duration::from_secs(1));
        let started = Instant::now();
        let new_agents = start_agents(&sb);
        eprintln!("agents restarted and synced in {:?}", started.elapsed());
        std::thread::sleep(Duration::from_secs(2));
        stop.store(true, Ordering::Relaxed);
        new_agents
    });

    let failures = failures.into_inner().unwrap();
    let (fresh, kept) = (new_conn_ok.into_inner(), kept_ok.into_inner());
    eprintln!("{fresh} requests on new connections, {kept} on long-lived ones succeeded");
    assert!(
        failures.is_empty(),
        "{} requests failed or moved across the agent restart (first ones): {:#?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    // The load ran through the whole restart (not a handful of requests before it).
    assert!(
        fresh >= 50 && kept >= 5 * 9,
        "too little load: {fresh} new, {kept} kept"
    );
    // The restarted agents read the maps back rather than flushing them.
    for a in &new_agents {
        let log = a.log();
        assert!(
            log.contains("found programmed maps from a previous run"),
            "the restarted agent did not start from the pinned maps:\n{log}"
        );
    }
    // And the long-lived connections still work after the new agents took over.
    for (c, pod) in &mut conns {
        assert_eq!(c.request().as_ref(), Ok(&*pod), "{}", c.what);
    }
}
