//! A real Prometheus server (Debian's `prometheus` package) inside a sandbox namespace, a
//! client for its HTTP API, a parser for the text exposition format (to read a daemon's
//! `/metrics` directly), and the Grafana template variables the dashboards use.
//!
//! ```no_run
//! use lb_tests::prometheus::{Prometheus, ScrapeTarget};
//! # fn main() -> anyhow::Result<()> {
//! # let sb = lb_tests::Sandbox::builder().build()?;
//! let targets = [ScrapeTarget::new("lb-agent", "10.0.0.10:9100".parse()?).label("node", "node-0")];
//! let prom = Prometheus::start(&sb, sb.client_ns(), &std::env::temp_dir().join("p"), &targets)?;
//! let series = prom.query("up")?;
//! # let _ = series; Ok(()) }
//! ```
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::Value;

use crate::client::HttpRequest;
use crate::netns::in_netns;
use crate::process::{Enter, Proc};
use crate::sandbox::Sandbox;

/// Where Debian's package installs the server (`cargo xtask setup` installs it).
pub const DEBIAN_BINARY: &str = "/usr/bin/prometheus";
/// The listen address inside the namespace Prometheus runs in (its own network namespace,
/// so no clash with anything else on the machine).
pub const LISTEN: &str = "127.0.0.1:9090";
/// Scrape (and evaluation) interval of the test server.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);

/// The Prometheus binary, or an error that says how to install it.
pub fn binary() -> Result<PathBuf> {
    let debian = Path::new(DEBIAN_BINARY);
    if debian.is_file() {
        return Ok(debian.to_path_buf());
    }
    crate::bins::which("prometheus").ok_or_else(|| {
        anyhow!(
            "prometheus is not installed ({DEBIAN_BINARY} is missing and it is not on PATH): run `cargo xtask setup` (or `apt-get install prometheus`)"
        )
    })
}

/// One scrape target: a job, an address and extra target labels (e.g. `node`).
#[derive(Clone, Debug)]
pub struct ScrapeTarget {
    pub job: String,
    pub addr: SocketAddr,
    pub labels: Vec<(String, String)>,
}

impl ScrapeTarget {
    pub fn new(job: &str, addr: SocketAddr) -> Self {
        Self {
            job: job.into(),
            addr,
            labels: Vec::new(),
        }
    }

    #[must_use]
    pub fn label(mut self, name: &str, value: &str) -> Self {
        self.labels.push((name.into(), value.into()));
        self
    }
}

/// `prometheus.yml` scraping `targets` every `interval` (one job per distinct job name).
pub fn config_yaml(targets: &[ScrapeTarget], interval: Duration) -> String {
    let secs = interval.as_secs().max(1);
    let mut y = format!(
        "global:\n  scrape_interval: {secs}s\n  evaluation_interval: {secs}s\n  scrape_timeout: {secs}s\nscrape_configs:\n"
    );
    let mut jobs: Vec<&str> = Vec::new();
    for t in targets {
        if !jobs.contains(&t.job.as_str()) {
            jobs.push(&t.job);
        }
    }
    for job in jobs {
        let _ = writeln!(y, "  - job_name: {job:?}\n    static_configs:");
        for t in targets.iter().filter(|t| t.job == job) {
            let _ = writeln!(y, "      - targets: [{:?}]", t.addr.to_string());
            if !t.labels.is_empty() {
                y.push_str("        labels:\n");
                for (k, v) in &t.labels {
                    let _ = writeln!(y, "          {k}: {v:?}");
                }
            }
        }
    }
    y
}

/// One series of an instant query's answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub labels: BTreeMap<String, String>,
    /// Sample timestamp, seconds since the epoch.
    pub timestamp: f64,
    pub value: f64,
}

/// A Prometheus server running in a sandbox namespace; ended (by PID) when dropped, or
/// with the sandbox.
#[derive(Debug)]
pub struct Prometheus {
    proc: Proc,
    ns: String,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    /// Writes `dir/prometheus.yml`, starts the server in `ns` with its TSDB in `dir/data`,
    /// listening on [`LISTEN`], and waits until it is ready.
    pub fn start(sb: &Sandbox, ns: &str, dir: &Path, targets: &[ScrapeTarget]) -> Result<Self> {
        let bin = binary()?;
        fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let config = dir.join("prometheus.yml");
        fs::write(&config, config_yaml(targets, SCRAPE_INTERVAL))?;
        let args = vec![
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address={LISTEN}"),
            "--storage.tsdb.retention.time=1h".to_owned(),
        ];
        let proc = sb.spawn(ns, Enter::NetOnly, "prometheus", &bin, &args)?;
        let prom = Self {
            proc,
            ns: ns.to_owned(),
            addr: LISTEN.parse()?,
            dir: dir.to_path_buf(),
        };
        prom.wait_ready(Duration::from_secs(20))?;
        Ok(prom)
    }

    pub fn proc(&self) -> &Proc {
        &self.proc
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.proc.try_wait()? {
                bail!(
                    "prometheus exited ({status}); its log:\n{}",
                    self.proc.log()
                );
            }
            let ready = self.get("/-/ready").is_ok_and(|(status, _)| status == 200);
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "prometheus not ready within {timeout:?}; its log:\n{}",
                    self.proc.log()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// `GET path` on the server, from its namespace: (status, body).
    pub fn get(&self, path_and_query: &str) -> Result<(u16, String)> {
        let req = HttpRequest::get(self.addr, path_and_query).timeout(Duration::from_secs(10));
        let resp = in_netns(&self.ns, || req.send())??;
        Ok((resp.status, resp.body))
    }

    /// An API call (`/api/v1/...`): its `data` on `"status": "success"`, else an error
    /// with the whole answer.
    pub fn api(&self, path_and_query: &str) -> Result<Value> {
        let (status, body) = self.get(path_and_query)?;
        let v: Value = serde_json::from_str(&body)
            .with_context(|| format!("GET {path_and_query}: HTTP {status}, not JSON: {body}"))?;
        if v["status"] != "success" {
            bail!("GET {path_and_query}: HTTP {status}: {body}");
        }
        Ok(v["data"].clone())
    }

    /// An instant query at the current time. Scalars come back as one series with no
    /// labels; strings are refused.
    pub fn query(&self, expr: &str) -> Result<Vec<Series>> {
        let data = self.api(&format!("/api/v1/query?query={}", urlencode(expr)))?;
        let sample = |v: &Value| -> Result<(f64, f64)> {
            let ts = v[0].as_f64().ok_or_else(|| anyhow!("bad sample {v}"))?;
            let value = v[1]
                .as_str()
                .ok_or_else(|| anyhow!("bad sample {v}"))?
                .parse::<f64>()
                .map_err(|e| anyhow!("bad sample {v}: {e}"))?;
            Ok((ts, value))
        };
        match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .ok_or_else(|| anyhow!("no result in {data}"))?
                .iter()
                .map(|s| {
                    let (timestamp, value) = sample(&s["value"])?;
                    Ok(Series {
                        labels: labels_of(&s["metric"]),
                        timestamp,
                        value,
                    })
                })
                .collect(),
            Some("scalar") => {
                let (timestamp, value) = sample(&data["result"])?;
                Ok(vec![Series {
                    labels: BTreeMap::new(),
                    timestamp,
                    value,
                }])
            }
            other => bail!("query {expr:?}: unexpected result type {other:?}: {data}"),
        }
    }

    /// Values of `label` over the series matching `selector` (Grafana's
    /// `label_values(selector, label)`), from the last `lookback`.
    pub fn label_values(
        &self,
        label: &str,
        selector: Option<&str>,
        lookback: Duration,
    ) -> Result<Vec<String>> {
        let now = unix_now();
        let mut q = format!(
            "/api/v1/label/{}/values?start={:.3}&end={:.3}",
            urlencode(label),
            now - lookback.as_secs_f64(),
            now
        );
        if let Some(s) = selector {
            let _ = write!(q, "&match[]={}", urlencode(s));
        }
        let data = self.api(&q)?;
        Ok(data
            .as_array()
            .ok_or_else(|| anyhow!("not a list: {data}"))?
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect())
    }

    /// Waits until every target is up (`up == 1`) and there are `expected` of them; the
    /// error lists each target's health and last error.
    pub fn wait_targets_up(&self, expected: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let up = self.query("up").unwrap_or_default();
            if up.len() == expected && up.iter().all(|s| (s.value - 1.0).abs() < f64::EPSILON) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let targets = self.describe_targets();
                bail!("not all {expected} scrape targets are up within {timeout:?}:\n  {targets}");
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Each target's job, URL, health and last error, one per line (for error messages).
    pub fn describe_targets(&self) -> String {
        let data = match self.api("/api/v1/targets") {
            Ok(d) => d,
            Err(e) => return format!("{e:#}"),
        };
        data["activeTargets"]
            .as_array()
            .map(|ts| {
                ts.iter()
                    .map(|t| {
                        format!(
                            "{} {}: {} {}",
                            t["labels"]["job"], t["scrapeUrl"], t["health"], t["lastError"]
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n  ")
            })
            .unwrap_or_default()
    }

    /// Waits until every target has been scraped at least `scrapes` times after `since`
    /// (by the timestamps of their `up` samples: the last scrape is at least
    /// `(scrapes - 1) * interval` after `since`, and one came before it).
    pub fn wait_scrapes_after(
        &self,
        since: SystemTime,
        scrapes: u32,
        timeout: Duration,
    ) -> Result<()> {
        let since = since.duration_since(UNIX_EPOCH)?.as_secs_f64();
        let need =
            since + f64::from(scrapes.saturating_sub(1)) * SCRAPE_INTERVAL.as_secs_f64() + 0.001;
        let deadline = Instant::now() + timeout;
        loop {
            let oldest = self
                .query("min(timestamp(up))")?
                .first()
                .map_or(0.0, |s| s.value);
            if oldest >= need {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "targets not scraped {scrapes} times after {since:.3} within {timeout:?} (oldest last scrape {oldest:.3})"
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Seconds since the epoch, now.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn labels_of(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// One sample of the text exposition format (Prometheus 0.0.4 or OpenMetrics).
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// Parses a `/metrics` answer: every sample line (comments and `# EOF` skipped).
pub fn parse_text(text: &str) -> Result<Vec<Sample>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(parse_line(line).with_context(|| format!("line {}: {line:?}", n + 1))?);
    }
    Ok(out)
}

fn parse_line(line: &str) -> Result<Sample> {
    let name_end = line.find(['{', ' ']).ok_or_else(|| anyhow!("no value"))?;
    let name = line[..name_end].to_owned();
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let end;
        loop {
            // Skip separators, then `}` or `name="value"`.
            while let Some((_, c)) = chars.peek() {
                if *c == ',' || *c == ' ' {
                    chars.next();
                } else {
                    break;
                }
            }
            let Some((i, c)) = chars.next() else {
                bail!("unterminated labels");
            };
            if c == '}' {
                end = i + 1;
                break;
            }
            let mut key = String::from(c);
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                bail!("label {key} has no quoted value");
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '"')) => break,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => bail!("unterminated escape"),
                    },
                    Some((_, c)) => value.push(c),
                    None => bail!("unterminated label value"),
                }
            }
            labels.insert(key.trim().to_owned(), value);
        }
        rest = &body[end..];
    }
    let value_text = rest
        .split_whitespace()
        .next()
        .ok_or_else(|| anyhow!("no value"))?;
    let value = match value_text {
        "+Inf" | "Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().map_err(|e| anyhow!("value {v:?}: {e}"))?,
    };
    Ok(Sample {
        name,
        labels,
        value,
    })
}

/// The sum of the samples named `name` whose labels satisfy `filter`.
pub fn sum(samples: &[Sample], name: &str, filter: impl Fn(&Sample) -> bool) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && filter(s))
        .map(|s| s.value)
        .sum()
}

/// `GET /metrics` on `addr` from namespace `ns`, parsed.
pub fn scrape(ns: &str, addr: SocketAddr) -> Result<Vec<Sample>> {
    let req = HttpRequest::get(addr, "/metrics");
    let resp = in_netns(ns, || req.send())??;
    if resp.status != 200 {
        bail!(
            "GET http://{addr}/metrics: HTTP {}: {}",
            resp.status,
            resp.body
        );
    }
    parse_text(&resp.body).with_context(|| format!("parse http://{addr}/metrics"))
}

/// Grafana's built-in interval variables and what a test substitutes for them.
pub const GRAFANA_INTERVALS: &[(&str, &str)] = &[
    ("__rate_interval", "30s"),
    ("__interval", "15s"),
    ("__range", "5m"),
];

/// Replaces Grafana template variables in `expr`: each of `vars` (`$name` and `${name}`,
/// also `${name:format}`) by `all` (the "All" value, `.*` for regex matchers), and the
/// built-in intervals by [`GRAFANA_INTERVALS`]. Longer names first, so `$service` never
/// eats the start of `$services`.
pub fn expand(expr: &str, vars: &[String], all: &str) -> String {
    let mut subs: Vec<(String, String)> =
        vars.iter().map(|v| (v.clone(), all.to_owned())).collect();
    subs.extend(
        GRAFANA_INTERVALS
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    subs.sort_by_key(|(k, _)| std::cmp::Reverse(k.len()));
    let mut out = expr.to_owned();
    for (name, value) in &subs {
        // ${name} and ${name:format}
        loop {
            let open = format!("${{{name}");
            let Some(start) = out.find(&open) else { break };
            let after = start + open.len();
            let tail = &out[after..];
            let Some(close) = tail.find('}') else { break };
            if !(close == 0 || tail.starts_with(':')) {
                break;
            }
            out.replace_range(start..=after + close, value);
        }
        // $name, not followed by another identifier character
        let plain = format!("${name}");
        let mut from = 0;
        while let Some(pos) = out[from..].find(&plain).map(|p| p + from) {
            let end = pos + plain.len();
            let next = out[end..].chars().next();
            if next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                from = end;
                continue;
            }
            out.replace_range(pos..end, value);
            from = pos + value.len();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_openmetrics() {
        let text = "# HELP a_total x\n# TYPE a counter\na_total{service=\"b\\\"x\",scope=\"external\"} 3\nb 1.5\nc_bucket{le=\"+Inf\"} 2\nd NaN\n# EOF\n";
        let s = parse_text(text).unwrap();
        assert_eq!(s.len(), 4);
        assert_eq!(s[0].name, "a_total");
        assert_eq!(s[0].label("service"), "b\"x");
        assert_eq!(s[0].label("scope"), "external");
        assert!((s[0].value - 3.0).abs() < f64::EPSILON);
        assert!((s[1].value - 1.5).abs() < f64::EPSILON);
        assert_eq!(s[2].label("le"), "+Inf");
        assert!(s[3].value.is_nan());
        assert!((sum(&s, "a_total", |x| x.label("scope") == "external") - 3.0).abs() < 1e-9);
    }

    #[test]
    fn expands_template_variables() {
        let vars = vec!["node".to_owned(), "service".to_owned()];
        assert_eq!(
            expand(
                r#"rate(x{node=~"$node", service=~"${service}", s2=~"$services"}[$__rate_interval]) + y[$__range] + z[${__interval}]"#,
                &vars,
                ".*"
            ),
            r#"rate(x{node=~".*", service=~".*", s2=~"$services"}[30s]) + y[5m] + z[15s]"#
        );
        assert_eq!(expand("${node:regex}", &vars, ".*"), ".*");
    }

    #[test]
    fn encodes_queries() {
        assert_eq!(
            urlencode("a{b=~\".*\"} [1m]"),
            "a%7Bb%3D~%22.%2A%22%7D%20%5B1m%5D"
        );
    }

    #[test]
    fn writes_a_config_with_target_labels() {
        let y = config_yaml(
            &[
                ScrapeTarget::new("lb-agent", "10.0.0.10:9100".parse().unwrap())
                    .label("node", "node-0"),
                ScrapeTarget::new("lb-agent", "10.0.0.11:9100".parse().unwrap())
                    .label("node", "node-1"),
                ScrapeTarget::new("lb-ingress", "10.0.0.10:9101".parse().unwrap()),
            ],
            Duration::from_secs(1),
        );
        assert!(y.contains("scrape_interval: 1s"), "{y}");
        assert_eq!(y.matches("job_name").count(), 2, "{y}");
        assert!(
            y.contains(
                "targets: [\"10.0.0.11:9100\"]\n        labels:\n          node: \"node-1\""
            ),
            "{y}"
        );
    }
}
