//! The Grafana dashboards show real data, and the counters behind them count what was sent.
//!
//! The sandbox runs the seed app with lb-agent on both nodes and lb-ingress on node-0,
//! their metrics on the nodes' external addresses; a real Prometheus (Debian's package)
//! in the client namespace scrapes them every second. Traffic goes through the ingress,
//! a ClusterIP and a NodePort, plus requests that fail on purpose (a Service without a
//! ready endpoint, a Service whose endpoints refuse connections). Then every panel query
//! of every dashboards/*.json, with its template variables filled in, runs through
//! Prometheus's HTTP API and must return at least one series with a number in it, and
//! every template variable must have values: a renamed metric or label breaks this test
//! with the panel, the query and Prometheus's answer.
//!
//! Needs root and `cargo xtask setup` (prometheus); fails, never skips, when either is
//! missing or when the data plane does not carry the traffic.
#![allow(clippy::missing_panics_doc, reason = "tests")]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use lb_tests::client::udp_request;
use lb_tests::manifests::{
    BACKEND_CLUSTER_IP, BACKEND_NODE_PORT, SliceEndpoint, SlicePort, endpoint_slice_yaml,
};
use lb_tests::prometheus::{self, Prometheus, Sample, ScrapeTarget};
use lb_tests::{Enter, HttpRequest, Proc, Sandbox, bins};
use serde_json::Value;

const AGENT_METRICS_PORT: u16 = 9100;
const INGRESS_METRICS_PORT: u16 = 9101;
/// Requests through the ingress per seed path (`/api` and `/`): N = 2 * this.
const INGRESS_PER_PATH: u32 = 10;
/// Requests from frontend pods to the backend's ClusterIP.
const CLUSTER_IP_REQUESTS: u32 = 10;
/// UDP datagrams from the client to the backend's NodePort on node-0 (M).
const NODE_PORT_DATAGRAMS: u32 = 20;
/// Requests to each of the two failing routes.
const ERROR_REQUESTS: u32 = 3;
/// A category of traffic stops after this many transport errors in a row (a data plane
/// that drops packets would otherwise cost a timeout per request).
const GIVE_UP_AFTER: u32 = 3;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

const SEED_INGRESS: &str = "default/seed-app";
const NO_ENDPOINT_SERVICE: &str = "dash-no-endpoints";
const REFUSING_SERVICE: &str = "dash-refusing";
/// The ingress's `service` label: `namespace/name:port` of the rule's backend.
fn ingress_service_label(name: &str) -> String {
    format!("default/{name}:80")
}

fn ingress_addr() -> SocketAddr {
    SocketAddr::from((lb_tests::topology::node_ip(0), 80))
}

fn node_port_frontend() -> String {
    format!("{}:{BACKEND_NODE_PORT}/UDP", lb_tests::topology::node_ip(0))
}

fn cluster_ip_frontend() -> String {
    format!("{BACKEND_CLUSTER_IP}:80/TCP")
}

fn agent_metrics(node: usize) -> SocketAddr {
    SocketAddr::from((lb_tests::topology::node_ip(node), AGENT_METRICS_PORT))
}

fn ingress_metrics() -> SocketAddr {
    SocketAddr::from((lb_tests::topology::node_ip(0), INGRESS_METRICS_PORT))
}

/// `args` with the value of `--metrics-addr` replaced by `addr`.
fn with_metrics_addr(mut args: Vec<String>, addr: SocketAddr) -> Vec<String> {
    let i = args
        .iter()
        .position(|a| a == "--metrics-addr")
        .expect("the sandbox's arguments have --metrics-addr");
    args[i + 1] = addr.to_string();
    args
}

fn service_yaml(name: &str, cluster_ip: &str, target_port: u16) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: default
spec:
  type: ClusterIP
  clusterIP: {cluster_ip}
  clusterIPs:
    - {cluster_ip}
  ports:
    - name: http
      protocol: TCP
      port: 80
      targetPort: {target_port}
"
    )
}

/// Two failing routes: `/no-endpoints` to a Service whose only endpoint is not ready
/// (the ingress answers 503), `/refusing` to a Service whose two endpoints are pod
/// addresses on a port nobody listens on (RST: a connect error, a retry on the other
/// endpoint, another connect error, 502).
fn error_routes(sb: &Sandbox) -> String {
    let http = |port| SlicePort {
        name: "http",
        protocol: "TCP",
        port,
    };
    let b0 = sb.pod("backend-0");
    let b1 = sb.pod("backend-1");
    let not_ready = SliceEndpoint {
        ready: false,
        serving: false,
        terminating: false,
        ..SliceEndpoint::ready(&b0.spec, b0.ip)
    };
    [
        service_yaml(NO_ENDPOINT_SERVICE, "10.96.0.30", 8080),
        endpoint_slice_yaml(
            "dash-no-endpoints-x1",
            NO_ENDPOINT_SERVICE,
            &[http(8080)],
            &[not_ready],
        ),
        service_yaml(REFUSING_SERVICE, "10.96.0.31", 9),
        endpoint_slice_yaml(
            "dash-refusing-x1",
            REFUSING_SERVICE,
            &[http(9)],
            &[
                SliceEndpoint::ready(&b0.spec, b0.ip),
                SliceEndpoint::ready(&b1.spec, b1.ip),
            ],
        ),
        format!(
            "apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: dash-errors
  namespace: default
spec:
  ingressClassName: lb
  rules:
    - http:
        paths:
          - path: /no-endpoints
            pathType: Prefix
            backend:
              service:
                name: {NO_ENDPOINT_SERVICE}
                port:
                  number: 80
          - path: /refusing
            pathType: Prefix
            backend:
              service:
                name: {REFUSING_SERVICE}
                port:
                  number: 80
"
        ),
    ]
    .join("---\n")
}

/// A Service that appears while the agents run, so that the network programming latency
/// histogram gets an observation inside the dashboards' rate window.
fn late_service(sb: &Sandbox) -> String {
    let endpoints: Vec<SliceEndpoint> = sb
        .pods_of("backend")
        .iter()
        .map(|p| SliceEndpoint::ready(&p.spec, p.ip))
        .collect();
    [
        service_yaml("dash-late", "10.96.0.32", 8080),
        endpoint_slice_yaml(
            "dash-late-x1",
            "dash-late",
            &[SlicePort {
                name: "http",
                protocol: "TCP",
                port: 8080,
            }],
            &endpoints,
        ),
    ]
    .join("---\n")
}

/// Everything that went wrong, grouped by what it was, reported at the end together.
#[derive(Default)]
struct Failures {
    items: Vec<String>,
}

impl Failures {
    fn add(&mut self, what: impl Into<String>) {
        self.items.push(what.into());
    }
}

/// One kind of traffic: how many were sent, answered as expected, and the first errors.
#[derive(Default, Debug)]
struct Tally {
    sent: u32,
    ok: u32,
    failed_in_a_row: u32,
    errors: Vec<String>,
    gave_up: bool,
}

impl Tally {
    /// Runs one attempt unless this kind was given up; `f` returns whether the answer
    /// was the expected one (Err: a transport error).
    fn attempt(&mut self, f: impl FnOnce() -> anyhow::Result<Result<(), String>>) {
        if self.gave_up {
            return;
        }
        self.sent += 1;
        // Only transport errors (timeouts, refused connections) count towards giving up:
        // a wrong answer costs no time, and sending them all keeps the counters exact.
        let (error, transport) = match f() {
            Ok(Ok(())) => (None, false),
            Ok(Err(unexpected)) => (Some(unexpected), false),
            Err(e) => (Some(format!("{e:#}")), true),
        };
        self.failed_in_a_row = if transport {
            self.failed_in_a_row + 1
        } else {
            0
        };
        if self.failed_in_a_row >= GIVE_UP_AFTER {
            self.gave_up = true;
        }
        match error {
            None => self.ok += 1,
            Some(e) if self.errors.len() < 3 => self.errors.push(e),
            Some(_) => {}
        }
    }

    fn report(&self, what: &str, failures: &mut Failures) {
        if self.ok < self.sent || self.gave_up {
            failures.add(format!(
                "traffic: {what}: {} of {} as expected{}; first errors:\n      {}",
                self.ok,
                self.sent,
                if self.gave_up {
                    format!(", gave up after {GIVE_UP_AFTER} transport errors in a row")
                } else {
                    String::new()
                },
                self.errors.join("\n      ")
            ));
        }
    }
}

#[derive(Default, Debug)]
struct Traffic {
    api: Tally,
    root: Tally,
    cluster_ip: Tally,
    node_port: Tally,
    no_endpoints: Tally,
    refusing: Tally,
}

/// How many of each kind one round sends.
#[derive(Clone, Copy)]
struct Round {
    per_path: u32,
    cluster_ip: u32,
    datagrams: u32,
    errors: u32,
}

fn ingress_get(sb: &Sandbox, path: &str) -> anyhow::Result<lb_tests::HttpResponse> {
    sb.http(
        sb.client_ns(),
        &HttpRequest::get(ingress_addr(), path).timeout(REQUEST_TIMEOUT),
    )
}

fn expect_status(r: &lb_tests::HttpResponse, ok: impl Fn(u16) -> bool) -> Result<(), String> {
    if ok(r.status) {
        Ok(())
    } else {
        let body: String = r.body.chars().take(300).collect();
        Err(format!("HTTP {}: {body}", r.status))
    }
}

impl Traffic {
    fn run(&mut self, sb: &Sandbox, round: Round) {
        for i in 0..round.per_path {
            self.api.attempt(|| {
                let r = ingress_get(sb, &format!("/api/dash/{i}"))?;
                Ok(expect_status(&r, |s| s == 200))
            });
            // `/` goes to a frontend pod, which calls the backend through its ClusterIP.
            self.root.attempt(|| {
                let r = ingress_get(sb, &format!("/dash/{i}"))?;
                Ok(expect_status(&r, |s| s == 200))
            });
        }
        let frontends = [sb.pod("frontend-0"), sb.pod("frontend-1")];
        for i in 0..round.cluster_ip {
            let fe = frontends[i as usize % frontends.len()];
            self.cluster_ip.attempt(|| {
                let r = sb.http(
                    &fe.ns,
                    &HttpRequest::get(SocketAddr::from((BACKEND_CLUSTER_IP, 80)), "/")
                        .timeout(REQUEST_TIMEOUT),
                )?;
                Ok(expect_status(&r, |s| s == 200).and_then(|()| {
                    let pod = r.pod().map_err(|e| format!("{e:#}"))?;
                    if pod.starts_with("backend-") {
                        Ok(())
                    } else {
                        Err(format!("answered by {pod}, not a backend pod"))
                    }
                }))
                .map(|res| {
                    res.map_err(|e| format!("from {} (node-{}): {e}", fe.name, fe.spec.node))
                })
            });
        }
        let node_port = SocketAddr::from((lb_tests::topology::node_ip(0), BACKEND_NODE_PORT));
        for i in 0..round.datagrams {
            self.node_port.attempt(|| {
                let payload = format!("dash-{i}");
                let (text, _) = sb.in_ns(sb.client_ns(), || {
                    udp_request(node_port, payload.as_bytes(), Duration::from_secs(1))
                })??;
                Ok(if text.starts_with("backend-") {
                    Ok(())
                } else {
                    Err(format!("answer {text:?} is not from a backend pod"))
                })
            });
        }
        for _ in 0..round.errors {
            self.no_endpoints.attempt(|| {
                let r = ingress_get(sb, "/no-endpoints")?;
                Ok(expect_status(&r, |s| s == 503))
            });
            self.refusing.attempt(|| {
                let r = ingress_get(sb, "/refusing")?;
                Ok(expect_status(&r, |s| s == 502))
            });
        }
    }

    fn report(&self, failures: &mut Failures) {
        self.api
            .report("GET /api through the ingress -> backend (200)", failures);
        self.root.report(
            "GET / through the ingress -> frontend -> backend ClusterIP (200)",
            failures,
        );
        self.cluster_ip.report(
            &format!("frontend pods -> backend ClusterIP {BACKEND_CLUSTER_IP}:80 (200 from a backend pod; the data plane's ClusterIP path)"),
            failures,
        );
        self.node_port.report(
            &format!("client -> NodePort {} (an answer from a backend pod; the data plane's NodePort path)", node_port_frontend()),
            failures,
        );
        self.no_endpoints.report(
            "GET /no-endpoints through the ingress (503: no ready endpoint)",
            failures,
        );
        self.refusing.report(
            "GET /refusing through the ingress (502: every endpoint refuses)",
            failures,
        );
    }
}

/// What the daemons' /metrics said at one moment (read directly, not via Prometheus).
struct Readings {
    ingress: Vec<Sample>,
    agents: Vec<Vec<Sample>>,
}

impl Readings {
    fn take(sb: &Sandbox) -> anyhow::Result<Self> {
        Ok(Self {
            ingress: prometheus::scrape(sb.client_ns(), ingress_metrics())?,
            agents: (0..sb.nodes().len())
                .map(|i| prometheus::scrape(sb.client_ns(), agent_metrics(i)))
                .collect::<anyhow::Result<_>>()?,
        })
    }

    fn seed_requests(&self, path: Option<&str>, class: Option<&str>) -> f64 {
        prometheus::sum(&self.ingress, "lb_ingress_requests_total", |s| {
            s.label("ingress") == SEED_INGRESS
                && path.is_none_or(|p| s.label("path") == p)
                && class.is_none_or(|c| s.label("status_class") == c)
        })
    }

    fn ingress_by_service(&self, name: &str, service: &str) -> f64 {
        let label = ingress_service_label(service);
        prometheus::sum(&self.ingress, name, |s| s.label("service") == label)
    }

    fn service_packets(&self, node: usize, frontend: &str, scope: &str) -> Option<f64> {
        let samples: Vec<&Sample> = self.agents[node]
            .iter()
            .filter(|s| {
                s.name == "lb_agent_service_packets_total"
                    && s.label("frontend") == frontend
                    && s.label("scope") == scope
            })
            .collect();
        (!samples.is_empty()).then(|| samples.iter().map(|s| s.value).sum())
    }

    fn programming_count(&self, node: usize) -> f64 {
        prometheus::sum(
            &self.agents[node],
            "lb_agent_network_programming_duration_seconds_count",
            |_| true,
        )
    }
}

/// The dashboards' JSON files.
fn dashboard_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no dashboards in {}", dir.display());
    files
}

/// Every panel, rows' nested panels included.
fn panels(list: &Value, out: &mut Vec<Value>) {
    for p in list.as_array().into_iter().flatten() {
        out.push(p.clone());
        panels(&p["panels"], out);
    }
}

/// Metric names (`lb_...`) an expression mentions.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let word_start = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if word_start && expr[i..].starts_with("lb_") {
            let end = expr[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map_or(expr.len(), |e| i + e);
            let name = expr[i..end].to_owned();
            if !names.contains(&name) {
                names.push(name);
            }
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

/// Why a query came back empty: which of its metrics Prometheus has no series of.
fn diagnose(prom: &Prometheus, expr: &str) -> String {
    let missing: Vec<String> = metric_names(expr)
        .into_iter()
        .filter(|m| {
            prom.query(&format!("count({{__name__=\"{m}\"}})"))
                .map_or(true, |r| r.is_empty())
        })
        .collect();
    if missing.is_empty() {
        "every metric it names has series: a label or a selector matches nothing".to_owned()
    } else {
        format!(
            "no series at all of {}: renamed, or never exported?",
            missing.join(", ")
        )
    }
}

fn describe(series: &[prometheus::Series]) -> String {
    let shown: Vec<String> = series
        .iter()
        .take(4)
        .map(|s| format!("{:?} = {}", s.labels, s.value))
        .collect();
    format!("{} series: {}", series.len(), shown.join("; "))
}

/// Runs every panel target and every template variable query of every dashboard.
fn check_dashboards(prom: &Prometheus, failures: &mut Failures) -> usize {
    let mut checked = 0;
    for file in dashboard_files() {
        let fname = file.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&file).expect("read dashboard");
        let dash: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{fname} is not JSON: {e}"));
        let variables: Vec<&Value> = dash["templating"]["list"]
            .as_array()
            .map(|l| l.iter().collect())
            .unwrap_or_default();
        let names: Vec<String> = variables
            .iter()
            .filter(|v| v["type"] != "datasource")
            .filter_map(|v| v["name"].as_str().map(str::to_owned))
            .collect();
        let expand = |q: &str| prometheus::expand(q, &names, ".*");

        for v in &variables {
            if v["type"] != "query" {
                continue;
            }
            let name = v["name"].as_str().unwrap_or("?");
            let raw = v["query"]["query"]
                .as_str()
                .or_else(|| v["query"].as_str())
                .or_else(|| v["definition"].as_str())
                .unwrap_or_default();
            let query = expand(raw);
            checked += 1;
            let result = variable_values(prom, &query);
            match result {
                Ok(values) if !values.is_empty() => {
                    eprintln!("ok  {fname} ${name}: {query} -> {values:?}");
                }
                Ok(_) => failures.add(format!(
                    "{fname}: template variable ${name} has no values\n    query: {query}\n    why: {}",
                    diagnose(prom, &query)
                )),
                Err(e) => failures.add(format!(
                    "{fname}: template variable ${name}\n    query: {query}\n    error: {e:#}"
                )),
            }
        }

        let mut all = Vec::new();
        panels(&dash["panels"], &mut all);
        for panel in &all {
            let title = panel["title"].as_str().unwrap_or("?");
            for t in panel["targets"].as_array().into_iter().flatten() {
                let Some(raw) = t["expr"].as_str() else {
                    continue;
                };
                let reference = t["refId"].as_str().unwrap_or("?");
                let expr = expand(raw);
                checked += 1;
                let at = format!("{fname}: panel {title:?} ({reference})\n    expr: {expr}");
                if expr.contains('$') {
                    failures.add(format!(
                        "{at}\n    a template variable the test does not know (not in templating.list)"
                    ));
                    continue;
                }
                match prom.query(&expr) {
                    Ok(series) if series.is_empty() => failures.add(format!(
                        "{at}\n    returned no series; why: {}",
                        diagnose(prom, &expr)
                    )),
                    Ok(series) if series.iter().all(|s| s.value.is_nan()) => {
                        failures.add(format!(
                            "{at}\n    returned only NaN (the panel would show nothing): {}",
                            describe(&series)
                        ));
                    }
                    Ok(series) => {
                        eprintln!("ok  {fname} {title:?} {reference}: {}", describe(&series));
                    }
                    Err(e) => failures.add(format!("{at}\n    error: {e:#}")),
                }
            }
        }
    }
    checked
}

/// Values of a Grafana variable query: `label_values([selector,] label)` or
/// `query_result(expr)`.
fn variable_values(prom: &Prometheus, query: &str) -> anyhow::Result<Vec<String>> {
    let query = query.trim();
    if let Some(inner) = query
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
    {
        // The label is after the last comma outside braces and quotes.
        let (mut depth, mut quoted, mut split) = (0i32, false, None);
        for (i, c) in inner.char_indices() {
            match c {
                '"' => quoted = !quoted,
                '{' | '(' if !quoted => depth += 1,
                '}' | ')' if !quoted => depth -= 1,
                ',' if !quoted && depth == 0 => split = Some(i),
                _ => {}
            }
        }
        let (selector, label) = match split {
            Some(i) => (Some(inner[..i].trim()), inner[i + 1..].trim()),
            None => (None, inner.trim()),
        };
        return prom.label_values(label, selector, Duration::from_mins(5));
    }
    if let Some(expr) = query
        .strip_prefix("query_result(")
        .and_then(|q| q.strip_suffix(')'))
    {
        return Ok(prom
            .query(expr)?
            .iter()
            .map(|s| format!("{:?} {}", s.labels, s.value))
            .collect());
    }
    anyhow::bail!("a variable query this test does not understand: {query}")
}

fn start_daemons(sb: &Sandbox) -> Vec<Proc> {
    let agent = bins::find("lb-agent").expect("lb-agent binary");
    let ingress = bins::find("lb-ingress").expect("lb-ingress binary");
    let mut procs: Vec<Proc> = sb
        .nodes()
        .iter()
        .map(|n| {
            let args = with_metrics_addr(sb.agent_args(n.index), agent_metrics(n.index));
            sb.spawn(
                &n.ns,
                Enter::NetOnly,
                &format!("lb-agent-{}", n.name),
                &agent,
                &args,
            )
            .expect("start lb-agent")
        })
        .collect();
    let args = with_metrics_addr(sb.ingress_args(), ingress_metrics());
    procs.push(
        sb.spawn(
            &sb.node(0).ns,
            Enter::NetOnly,
            "lb-ingress-node-0",
            &ingress,
            &args,
        )
        .expect("start lb-ingress"),
    );
    for p in &procs[..sb.nodes().len()] {
        p.wait_for_log("first sync programmed", Duration::from_secs(30))
            .expect("lb-agent ready");
    }
    procs[sb.nodes().len()]
        .wait_for_log("first configuration is serving", Duration::from_secs(20))
        .expect("lb-ingress ready");
    procs
}

fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn every_dashboard_panel_has_data_and_counters_match_the_traffic() {
    let started = Instant::now();
    let prometheus_bin = prometheus::binary().unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("prometheus: {}", prometheus_bin.display());
    let sb = Sandbox::builder()
        .seed_app()
        .build()
        .expect("build sandbox");
    sb.write_manifest("dash-errors.yaml", &error_routes(&sb))
        .expect("write manifest");
    let _daemons = start_daemons(&sb);
    eprintln!("daemons ready after {:?}", started.elapsed());

    let mut targets: Vec<ScrapeTarget> = sb
        .nodes()
        .iter()
        .map(|n| ScrapeTarget::new("lb-agent", agent_metrics(n.index)).label("node", &n.name))
        .collect();
    targets.push(ScrapeTarget::new("lb-ingress", ingress_metrics()).label("node", "node-0"));
    // In the sandbox's work directory: removed with it (after its processes have ended).
    let workdir = sb.manifests_dir().parent().expect("work directory");
    let prom = Prometheus::start(&sb, sb.client_ns(), &workdir.join("prometheus"), &targets)
        .expect("start prometheus");
    prom.wait_targets_up(targets.len(), Duration::from_secs(15))
        .expect("prometheus scrapes every daemon");
    eprintln!("prometheus scraping after {:?}", started.elapsed());

    let mut failures = Failures::default();
    let before = Readings::take(&sb).expect("read /metrics before the traffic");

    // Round 1 creates every labelled series; after a scrape has seen them, round 2 makes
    // them move, so rate() over the dashboards' window is not 0 for series that were born
    // with the traffic (Prometheus cannot see a counter's first increment).
    let mut traffic = Traffic::default();
    traffic.run(
        &sb,
        Round {
            per_path: 1,
            cluster_ip: 2,
            datagrams: 2,
            errors: 1,
        },
    );
    prom.wait_scrapes_after(SystemTime::now(), 1, Duration::from_secs(10))
        .expect("a scrape after the first round");

    // A change the agents program while running: the programming latency histogram.
    sb.write_manifest("dash-late.yaml", &late_service(&sb))
        .expect("write manifest");
    let programmed = wait_until(Duration::from_secs(5), || {
        Readings::take(&sb).is_ok_and(|r| {
            (0..sb.nodes().len()).all(|i| r.programming_count(i) > before.programming_count(i))
        })
    });
    if !programmed {
        failures.add(
            "lb_agent_network_programming_duration_seconds_count did not grow on every node within 5 s of adding a Service",
        );
    }

    traffic.run(
        &sb,
        Round {
            per_path: INGRESS_PER_PATH - 1,
            cluster_ip: CLUSTER_IP_REQUESTS - 2,
            datagrams: NODE_PORT_DATAGRAMS - 2,
            errors: ERROR_REQUESTS - 1,
        },
    );
    let traffic_end = SystemTime::now();
    eprintln!("traffic sent after {:?}: {traffic:?}", started.elapsed());
    traffic.report(&mut failures);

    // The ingress counts a request when its response is done, which may be a moment after
    // the client has read it.
    let n = traffic.api.sent + traffic.root.sent;
    let mut after = Readings::take(&sb).expect("read /metrics after the traffic");
    wait_until(Duration::from_secs(3), || {
        after = Readings::take(&sb).expect("read /metrics after the traffic");
        after.seed_requests(None, None) - before.seed_requests(None, None) >= f64::from(n)
    });
    check_counters(&before, &after, &traffic, &mut failures);

    prom.wait_scrapes_after(traffic_end, 2, Duration::from_secs(10))
        .expect("two scrapes after the traffic");
    eprintln!("querying after {:?}", started.elapsed());
    check_prometheus_agrees(&prom, &sb, &mut failures);
    let checked = check_dashboards(&prom, &mut failures);
    eprintln!(
        "{checked} queries checked, {} failures, after {:?}",
        failures.items.len(),
        started.elapsed()
    );

    if !failures.items.is_empty() {
        let mut msg = format!(
            "{} of the checks failed (Prometheus's config and data: {}):\n",
            failures.items.len(),
            prom.dir().display()
        );
        for f in &failures.items {
            let _ = writeln!(msg, "  - {f}");
        }
        panic!("{msg}");
    }
}

fn check_counters(before: &Readings, after: &Readings, traffic: &Traffic, failures: &mut Failures) {
    // Ingress: exactly one count per request, under the rule's own path, whatever the
    // status; and exactly one 2xx per 200 the client saw.
    let sent = traffic.api.sent + traffic.root.sent;
    let delta = |path: Option<&str>, class: Option<&str>| {
        after.seed_requests(path, class) - before.seed_requests(path, class)
    };
    for (what, got, want) in [
        ("all seed routes", delta(None, None), sent),
        ("path=\"/api\"", delta(Some("/api"), None), traffic.api.sent),
        ("path=\"/\"", delta(Some("/"), None), traffic.root.sent),
        (
            "status_class=\"2xx\"",
            delta(None, Some("2xx")),
            traffic.api.ok + traffic.root.ok,
        ),
    ] {
        if (got - f64::from(want)).abs() > 0.5 {
            failures.add(format!(
                "counter: lb_ingress_requests_total{{ingress=\"{SEED_INGRESS}\"}} {what} grew by {got}, but {want} requests were sent/answered so"
            ));
        }
    }
    let grew = after.ingress_by_service("lb_ingress_requests_total", NO_ENDPOINT_SERVICE)
        - before.ingress_by_service("lb_ingress_requests_total", NO_ENDPOINT_SERVICE);
    if (grew - f64::from(traffic.no_endpoints.sent)).abs() > 0.5 {
        failures.add(format!(
            "counter: lb_ingress_requests_total{{service=\"{}\"}} grew by {grew}, {} requests were sent",
            ingress_service_label(NO_ENDPOINT_SERVICE),
            traffic.no_endpoints.sent
        ));
    }
    // Both endpoints refuse: every request fails to connect twice (the retry goes to the
    // other endpoint), so at least one connect error and, budget permitting, a retry each.
    for metric in [
        "lb_ingress_upstream_connect_errors_total",
        "lb_ingress_upstream_retries_total",
    ] {
        let grew = after.ingress_by_service(metric, REFUSING_SERVICE)
            - before.ingress_by_service(metric, REFUSING_SERVICE);
        if traffic.refusing.sent > 0 && grew < f64::from(traffic.refusing.sent) {
            failures.add(format!(
                "counter: {metric}{{service=\"{}\"}} grew by {grew} for {} requests to endpoints that refuse",
                ingress_service_label(REFUSING_SERVICE),
                traffic.refusing.sent
            ));
        }
    }

    // NodePort, UDP, node-0, scope external. The kernel counts a packet for a service
    // entry only on the client -> service direction (nat::forward: the service lookup of
    // a new flow, or the conntrack hit of an established one); replies are reverse-NATed
    // (nat::reverse), which counts nothing, and a packet forwarded to a backend on node-1
    // arrives there addressed to the pod, not to a service. Each datagram is one packet
    // of its own flow (a fresh socket each), so the increase is exactly M, the datagrams
    // sent: M <= increase <= M.
    let frontend = node_port_frontend();
    let datagrams = traffic.node_port.sent;
    match (
        before.service_packets(0, &frontend, "external"),
        after.service_packets(0, &frontend, "external"),
    ) {
        (Some(was), Some(is)) => {
            let grew = is - was;
            if (grew - f64::from(datagrams)).abs() > 0.5 {
                failures.add(format!(
                    "counter: lb_agent_service_packets_total{{frontend=\"{frontend}\", scope=\"external\"}} on node-0 grew by {grew}, but {datagrams} datagrams were sent (one packet each, replies are not counted)"
                ));
            }
        }
        _ => failures.add(format!(
            "counter: node-0's agent exports no lb_agent_service_packets_total{{frontend=\"{frontend}\", scope=\"external\"}} (frontends it has: {:?})",
            frontends_of(&after.agents[0])
        )),
    }

    // ClusterIP, TCP, summed over both nodes (the frontends on each call the backend). Each
    // connection sends at least SYN, the handshake's ACK and the request to the service
    // (only that direction is counted), so the increase is at least 3 per request; the
    // frontends' own calls for `/` through the ingress add more, so there is no upper bound.
    let frontend = cluster_ip_frontend();
    let answered = traffic.cluster_ip.ok;
    let summed = |r: &Readings| -> f64 {
        (0..r.agents.len())
            .filter_map(|i| r.service_packets(i, &frontend, "internal"))
            .sum()
    };
    let grew = summed(after) - summed(before);
    if grew < f64::from(3 * answered) {
        failures.add(format!(
            "counter: lb_agent_service_packets_total{{frontend=\"{frontend}\", scope=\"internal\"}} summed over the nodes grew by {grew}, less than 3 packets for each of the {answered} answered requests"
        ));
    }
}

fn frontends_of(samples: &[Sample]) -> Vec<String> {
    let mut v: Vec<String> = samples
        .iter()
        .filter(|s| s.name == "lb_agent_service_packets_total")
        .map(|s| format!("{} {}", s.label("frontend"), s.label("scope")))
        .collect();
    v.dedup();
    v
}

/// What Prometheus has, two scrapes after the traffic, is what the daemons say now.
fn check_prometheus_agrees(prom: &Prometheus, sb: &Sandbox, failures: &mut Failures) {
    let now = Readings::take(sb).expect("read /metrics");
    let frontend = node_port_frontend();
    let checks: [(String, f64); 2] = [
        (
            format!(
                "sum(lb_ingress_requests_total{{job=\"lb-ingress\", ingress=\"{SEED_INGRESS}\"}})"
            ),
            now.seed_requests(None, None),
        ),
        (
            format!(
                "sum(lb_agent_service_packets_total{{job=\"lb-agent\", node=\"node-0\", frontend=\"{frontend}\", scope=\"external\"}})"
            ),
            now.service_packets(0, &frontend, "external")
                .unwrap_or(f64::NAN),
        ),
    ];
    for (expr, direct) in checks {
        match prom.query(&expr) {
            Ok(s) if s.len() == 1 && (s[0].value - direct).abs() < 0.5 => {}
            Ok(s) => failures.add(format!(
                "prometheus: {expr} is {s:?}, the daemon's /metrics says {direct}"
            )),
            Err(e) => failures.add(format!("prometheus: {expr}: {e:#}")),
        }
    }
    let by_node: BTreeMap<String, usize> = prom
        .query("lb_agent_build_info")
        .unwrap_or_default()
        .iter()
        .map(|s| (s.labels.get("node").cloned().unwrap_or_default(), 1))
        .collect();
    if by_node.len() != sb.nodes().len() {
        failures.add(format!(
            "prometheus: lb_agent_build_info by node label: {by_node:?}, want one per node"
        ));
    }
}
