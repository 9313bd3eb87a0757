//! `cargo xtask demo`: the sandbox cluster with the seed application, one lb-agent per node
//! and lb-ingress on node-0, and requests flowing from the client and the pods until Ctrl-C
//! (or `--duration`); with `--prometheus`, a Prometheus server scraping the daemons. Then
//! everything is removed.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Result;
use lb_tests::manifests::{
    BACKEND_CLUSTER_IP, BACKEND_NODE_PORT, FRONTEND_CLUSTER_IP, FRONTEND_NODE_PORT, SEED_TLS_HOST,
};
use lb_tests::prometheus::{self, Prometheus, ScrapeTarget};
use lb_tests::topology::CLIENT_IP;
use lb_tests::{HttpRequest, Proc, Sandbox};

use crate::{cmd, root, setup};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Stop by itself after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    duration: Option<u64>,
    /// Skip `cargo xtask setup` (when it already ran).
    #[arg(long)]
    no_setup: bool,
    /// Seconds between rounds of requests.
    #[arg(long, default_value_t = 2)]
    interval: u64,
    /// Also start Prometheus (Debian's package) in the client namespace, scraping both
    /// agents and the ingress on their node addresses, and show what it sees.
    #[arg(long)]
    prometheus: bool,
}

/// Metrics ports on the node addresses when Prometheus scrapes them (`--prometheus`).
const AGENT_METRICS_PORT: u16 = 9100;
const INGRESS_METRICS_PORT: u16 = 9101;

/// What the demo shows of Prometheus after each round: the dashboards' own queries.
const PROM_QUERIES: [(&str, &str); 3] = [
    (
        "packets/s per Service (lb_agent_service_packets_total)",
        "sum by (namespace, service) (rate(lb_agent_service_packets_total[30s]))",
    ),
    (
        "ingress requests/s per Service and status (lb_ingress_requests_total)",
        "sum by (service, status_class) (rate(lb_ingress_requests_total[30s]))",
    ),
    (
        "drops/s by reason (lb_agent_drops_total)",
        "sum by (reason) (rate(lb_agent_drops_total[30s]))",
    ),
];

/// Which replicas answered on each path.
#[derive(Default)]
struct Tally(BTreeMap<String, BTreeMap<String, u32>>);

impl Tally {
    fn add(&mut self, path: &str, pod: &str) {
        *self
            .0
            .entry(path.to_owned())
            .or_default()
            .entry(pod.to_owned())
            .or_default() += 1;
    }
}

pub fn run(args: &DemoArgs) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    if !args.no_setup {
        setup::run()?;
    }
    build()?;

    println!("==> starting the sandbox cluster with the seed app (examples/seed-app)");
    let sb = Sandbox::builder().seed_app().build()?;
    println!(
        "    client ns {}  nodes {}  pods {}",
        sb.client_ns(),
        sb.nodes()
            .iter()
            .map(|n| format!("{} ({})", n.ns, n.ip))
            .collect::<Vec<_>>()
            .join(", "),
        sb.pods().len()
    );
    println!("    manifests: {}", sb.manifests_dir().display());

    let agents = start_agents(&sb, args.prometheus)?;
    let ingress = start_ingress(&sb, args.prometheus)?;
    print_where(&sb, !agents.is_empty(), ingress.is_some());
    let prom = if args.prometheus {
        Some(start_prometheus(&sb, agents.len(), ingress.is_some())?)
    } else {
        None
    };

    let deadline = args
        .duration
        .map(|s| Instant::now() + Duration::from_secs(s));
    let mut tally = Tally::default();
    let mut round = 0u32;
    while !stop.load(Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
        round += 1;
        println!("--- round {round}");
        show_round(
            &sb,
            round,
            !agents.is_empty(),
            ingress.is_some(),
            &mut tally,
        );
        if let Some(prom) = &prom {
            show_prometheus(prom);
        }
        for proc in agents.iter().chain(ingress.iter()) {
            if let Ok(Some(status)) = proc.try_wait() {
                println!(
                    "!!! {} exited ({status}); its log: {}",
                    proc.name(),
                    proc.log_path().display()
                );
            }
        }
        let until = Instant::now() + Duration::from_secs(args.interval);
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            thread::sleep(Duration::from_millis(50));
        }
    }

    println!("==> replicas that answered, by path:");
    for (path, pods) in &tally.0 {
        let list: Vec<String> = pods.iter().map(|(p, n)| format!("{p}×{n}")).collect();
        println!("    {path:<44} {}", list.join(" "));
    }
    println!("==> cleaning up");
    let namespaces = sb.namespaces().to_vec();
    drop(prom);
    drop(ingress);
    drop(agents);
    drop(sb);
    let live = lb_tests::netns::list();
    let left: Vec<&String> = namespaces.iter().filter(|n| live.contains(n)).collect();
    anyhow::ensure!(left.is_empty(), "namespaces left behind: {left:?}");
    println!(
        "    removed {} namespaces, their processes and bpffs directories",
        namespaces.len()
    );
    Ok(())
}

/// Builds the pod server, the agent and the ingress, all in the dev profile that
/// `cargo xtask test` uses (the sandbox finds them there). A build failure stops the demo
/// with the compiler's errors.
fn build() -> Result<()> {
    for pkg in ["lb-tests", "lb-agent", "lb-ingress"] {
        let mut c = Command::new("cargo");
        c.args(["build", "--bins", "-p", pkg]).current_dir(root());
        cmd::step(&format!("build {pkg}"), c)?;
    }
    Ok(())
}

fn exited(procs: &[Proc]) -> bool {
    procs.iter().any(|p| matches!(p.try_wait(), Ok(Some(_))))
}

fn start_agents(sb: &Sandbox, node_metrics: bool) -> Result<Vec<Proc>> {
    // Several agents share this machine's cgroup tree; socket-level hooks on the root cgroup
    // would apply to every sandbox at once, so the demo keeps to the per-netns hooks.
    let extra: &[&str] = &["--cgroup", "none"];
    let mut agents = Vec::new();
    for node in sb.nodes() {
        let metrics = SocketAddr::from((node.ip, AGENT_METRICS_PORT)).to_string();
        let mut extra = extra.to_vec();
        if node_metrics {
            extra.extend(["--metrics-addr", &metrics]);
        }
        let proc = sb.start_agent(node.index, &extra)?;
        println!(
            "    started lb-agent on {} (pid {}, bpffs {}, log {})",
            node.name,
            proc.pid(),
            sb.bpffs_dir(node.index).display(),
            proc.log_path().display()
        );
        agents.push(proc);
    }
    // Ready when the frontend reaches the backend through its ClusterIP.
    let fe = sb.pod("frontend-0");
    let ready = wait_until(Duration::from_secs(20), || {
        exited(&agents)
            || sb
                .http_get(&fe.ns, SocketAddr::from((BACKEND_CLUSTER_IP, 80)), "/")
                .is_ok_and(|r| r.status == 200)
    });
    if exited(&agents) {
        println!("!!! lb-agent exited; showing direct pod traffic only. Its logs:");
        for a in &agents {
            println!("{}", tail(&a.log(), 15));
        }
        return Ok(Vec::new());
    }
    for (a, node) in agents.iter().zip(sb.nodes()) {
        if let Some(addr) = log_field(&a.log(), "metrics_addr") {
            println!(
                "    {} metrics: ip netns exec {} curl -s http://{addr}/metrics",
                node.name, node.ns
            );
        }
    }
    if !ready {
        println!("!!! ClusterIP 10.96.0.10 does not answer yet; agent logs:");
        for a in &agents {
            println!("{}", tail(&a.log(), 15));
        }
    }
    Ok(agents)
}

fn start_ingress(sb: &Sandbox, node_metrics: bool) -> Result<Option<Proc>> {
    let metrics = SocketAddr::from((sb.node(0).ip, INGRESS_METRICS_PORT)).to_string();
    let extra: &[&str] = if node_metrics {
        &["--metrics-addr", &metrics]
    } else {
        &[]
    };
    let proc = sb.start_ingress(0, extra)?;
    println!(
        "    started lb-ingress on node-0 (pid {}, log {})",
        proc.pid(),
        proc.log_path().display()
    );
    let addr = SocketAddr::from((sb.node(0).ip, 80));
    let procs = [proc];
    let up = wait_until(Duration::from_secs(15), || {
        exited(&procs) || sb.http_get(sb.client_ns(), addr, "/api").is_ok()
    });
    let [proc] = procs;
    if exited(std::slice::from_ref(&proc)) {
        println!(
            "!!! lb-ingress exited; no ingress in this demo. Its log:\n{}",
            tail(&proc.log(), 15)
        );
        return Ok(None);
    }
    if let Some(addr) = log_field(&proc.log(), "metrics_addr") {
        println!(
            "    ingress metrics: ip netns exec {} curl -s http://{addr}/metrics",
            sb.node(0).ns
        );
    }
    if !up {
        println!(
            "!!! the ingress does not answer on {addr} yet; its log:\n{}",
            tail(&proc.log(), 15)
        );
    }
    Ok(Some(proc))
}

/// Prometheus in the client namespace, scraping every daemon on its node address; its
/// data lives in the sandbox's work directory and goes with it.
fn start_prometheus(sb: &Sandbox, agents: usize, ingress: bool) -> Result<Prometheus> {
    println!("==> starting Prometheus in {}", sb.client_ns());
    let mut targets: Vec<ScrapeTarget> = sb
        .nodes()
        .iter()
        .take(agents)
        .map(|n| {
            ScrapeTarget::new("lb-agent", SocketAddr::from((n.ip, AGENT_METRICS_PORT)))
                .label("node", &n.name)
        })
        .collect();
    if ingress {
        targets.push(
            ScrapeTarget::new(
                "lb-ingress",
                SocketAddr::from((sb.node(0).ip, INGRESS_METRICS_PORT)),
            )
            .label("node", &sb.node(0).name),
        );
    }
    let dir = sb
        .manifests_dir()
        .parent()
        .unwrap_or(sb.manifests_dir())
        .join("prometheus");
    let prom = Prometheus::start(sb, sb.client_ns(), &dir, &targets)?;
    prom.wait_targets_up(targets.len(), Duration::from_secs(20))?;
    println!(
        "    Prometheus scrapes {} targets every {:?}; query it with\n    \
         ip netns exec {} curl -s 'http://{}/api/v1/query?query=up'\n    \
         (the dashboards in dashboards/ import into Grafana with this server as datasource)",
        targets.len(),
        prometheus::SCRAPE_INTERVAL,
        sb.client_ns(),
        prometheus::LISTEN
    );
    Ok(prom)
}

fn show_prometheus(prom: &Prometheus) {
    for (title, expr) in PROM_QUERIES {
        match prom.query(expr) {
            Ok(series) if series.is_empty() => println!("    prometheus: {title}: no data yet"),
            Ok(series) => {
                let parts: Vec<String> = series
                    .iter()
                    .map(|s| {
                        let labels: Vec<String> = s.labels.values().cloned().collect();
                        format!("{}={:.1}", labels.join("/"), s.value)
                    })
                    .collect();
                println!("    prometheus: {title}: {}", parts.join("  "));
            }
            Err(e) => println!("    prometheus: {title}: {e:#}"),
        }
    }
}

/// The value of `name=VALUE` in a tracing log line (text or JSON format).
fn log_field(log: &str, name: &str) -> Option<String> {
    for pat in [format!("{name}="), format!("\"{name}\":\"")] {
        if let Some(i) = log.find(&pat) {
            let rest = &log[i + pat.len()..];
            let end = rest
                .find(|c: char| c.is_whitespace() || c == '"' || c == ',')
                .unwrap_or(rest.len());
            return Some(rest[..end].to_owned());
        }
    }
    None
}

fn wait_until(timeout: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok() {
            return true;
        }
        thread::sleep(Duration::from_millis(250));
    }
    false
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn print_where(sb: &Sandbox, agents: bool, ingress: bool) {
    let c = sb.client_ns();
    let fe = &sb.pod("frontend-0").ns;
    let (n0, n1) = (sb.node(0).ip, sb.node(1).ip);
    println!("==> send requests yourself (in another shell, as root):");
    println!(
        "    ip netns exec {c} curl -s http://{}:8080/        # a backend pod, directly",
        sb.pod("backend-0").ip
    );
    if agents {
        println!(
            "    ip netns exec {c} curl -s http://{n0}:{FRONTEND_NODE_PORT}/     # NodePort on node-0 (frontend)"
        );
        println!(
            "    ip netns exec {c} curl -s http://{n1}:{BACKEND_NODE_PORT}/     # NodePort on node-1 (backend)"
        );
        println!(
            "    ip netns exec {fe} curl -s http://backend/   # ClusterIP {BACKEND_CLUSTER_IP} from a pod"
        );
        println!(
            "    ip netns exec {fe} curl -s http://{FRONTEND_CLUSTER_IP}/     # the frontend's ClusterIP"
        );
    }
    if ingress {
        println!("    ip netns exec {c} curl -s http://{n0}/api/hello  # ingress: /api -> backend");
        println!(
            "    ip netns exec {c} curl -s http://{n0}/          # ingress: / -> frontend -> backend"
        );
        println!(
            "    ip netns exec {c} curl -sk --resolve {SEED_TLS_HOST}:443:{n0} https://{SEED_TLS_HOST}/api/hello  # HTTPS (self-signed)"
        );
    }
    println!("    (Ctrl-C stops the demo and removes everything)");
}

/// One request; prints a line naming the replica(s) that answered and what they saw.
fn probe(sb: &Sandbox, tally: &mut Tally, label: &str, ns: &str, addr: SocketAddr, path: &str) {
    let req = HttpRequest::get(addr, path).timeout(Duration::from_secs(2));
    show(tally, label, sb.http(ns, &req));
}

/// What one request showed: the pod that answered and, for a frontend, the backend its
/// own call reached.
fn show(tally: &mut Tally, label: &str, response: anyhow::Result<lb_tests::HttpResponse>) {
    match response {
        Ok(r) => {
            let v = r.json().unwrap_or_default();
            let pod = v["pod"].as_str().unwrap_or("?");
            tally.add(label, pod);
            let mut line = format!(
                "{label:<44} -> {pod} (saw {})",
                v["client"].as_str().unwrap_or("?")
            );
            if let Some(b) = v["backend"]["pod"].as_str() {
                tally.add(&format!("{label} (frontend's backend call)"), b);
                let _ = write!(
                    line,
                    " -> ClusterIP -> {b} (saw {})",
                    v["backend"]["client"].as_str().unwrap_or("?")
                );
            } else if let Some(e) = v["backend_error"].as_str() {
                let _ = write!(line, " -> backend call failed: {e}");
            }
            if r.status != 200 {
                let _ = write!(line, " [HTTP {}]", r.status);
            }
            println!("    {line}");
        }
        Err(e) => println!("    {label:<44} !! {e:#}"),
    }
}

fn show_round(sb: &Sandbox, round: u32, agents: bool, ingress: bool, tally: &mut Tally) {
    let c = sb.client_ns().to_owned();
    // Every pod answers directly (routed through its node) in the first round, and in every
    // round while no agent runs.
    if round == 1 || !agents {
        for pod in sb.pods() {
            probe(
                sb,
                tally,
                &format!("client {CLIENT_IP} -> pod {}", pod.http_addr()),
                &c,
                pod.http_addr(),
                "/",
            );
        }
    }
    if agents {
        for fe in ["frontend-0", "frontend-1"] {
            let ns = sb.pod(fe).ns.clone();
            probe(
                sb,
                tally,
                &format!("{fe} -> ClusterIP backend {BACKEND_CLUSTER_IP}:80"),
                &ns,
                SocketAddr::from((BACKEND_CLUSTER_IP, 80)),
                "/api/x",
            );
        }
        for node in sb.nodes() {
            probe(
                sb,
                tally,
                &format!(
                    "client {CLIENT_IP} -> NodePort {}:{FRONTEND_NODE_PORT}",
                    node.ip
                ),
                &c,
                SocketAddr::from((node.ip, FRONTEND_NODE_PORT)),
                "/",
            );
            probe(
                sb,
                tally,
                &format!(
                    "client {CLIENT_IP} -> NodePort {}:{BACKEND_NODE_PORT}",
                    node.ip
                ),
                &c,
                SocketAddr::from((node.ip, BACKEND_NODE_PORT)),
                "/",
            );
        }
    }
    if ingress {
        let n0 = SocketAddr::from((sb.node(0).ip, 80));
        probe(
            sb,
            tally,
            &format!("client -> ingress {n0}/api/hello"),
            &c,
            n0,
            "/api/hello",
        );
        probe(sb, tally, &format!("client -> ingress {n0}/"), &c, n0, "/");
        // HTTPS: the seed Ingress's spec.tls, with the certificate the sandbox made.
        let tls = SocketAddr::from((sb.node(0).ip, 443));
        for path in ["/api/hello", "/"] {
            let label = format!("client -> ingress https://{SEED_TLS_HOST}{path}");
            let result = sb.https_get(&c, tls, path).map(|(r, _version)| r);
            show(tally, &label, result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::log_field;

    #[test]
    fn finds_fields_in_text_and_json_logs() {
        let text = "2026-01-01T00:00:00Z  INFO lb_agent::run: agent serving metrics_addr=127.0.0.1:4321 health_addr=127.0.0.1:9877";
        assert_eq!(
            log_field(text, "metrics_addr").as_deref(),
            Some("127.0.0.1:4321")
        );
        let json = r#"{"fields":{"message":"agent serving","metrics_addr":"127.0.0.1:55"}}"#;
        assert_eq!(
            log_field(json, "metrics_addr").as_deref(),
            Some("127.0.0.1:55")
        );
        assert_eq!(log_field("nothing", "metrics_addr"), None);
    }
}
