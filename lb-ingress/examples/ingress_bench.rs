//! Ingress benchmark (issue 5), run by `cargo xtask bench ingress`:
//!
//! ```text
//! cargo run --release -p lb-ingress --example ingress_bench -- --out bench/results/ingress.md
//!     [--duration SECS] [--warmup SECS] [--idle-conns N] [--quick] [--lb-ingress PATH]
//!     [--lb-ingress-plain PATH]
//! ingress_bench --train --lb-ingress INSTRUMENTED   # the PGO training load (xtask pgo)
//! ```
//!
//! `cargo xtask bench ingress` passes the profile-guided build (`cargo xtask pgo`, as
//! lb-ingress is meant to be shipped) as `--lb-ingress` and the plain release build as
//! `--lb-ingress-plain`: both run in the same rotation, so the report shows both.
//!
//! lb-ingress and nginx (Debian's package) as real processes, side by side on loopback,
//! in front of the same upstreams (small hyper servers in this process answering a fixed
//! 13-byte body with keep-alive), with the same worker count and upstream keep-alive:
//!
//! 1. wrk (Debian's package) against each proxy: 1 and 2 proxy workers x 64 and 512
//!    connections, a warm-up run then a measured run: requests/s, p50/p99 latency, errors,
//!    and the proxy's CPU time per request (from /proc, less sensitive to a shared machine).
//!    A third contender, a bare hyper forwarder (this binary run with `--bare-proxy`; see
//!    `bare_proxy`), splits the gap to nginx into what hyper/tokio cost and what lb-ingress
//!    adds.
//! 2. Memory at N idle keep-alive connections (10k by default): N TCP connections, one
//!    request each, then the proxy's RSS (nginx: master + workers) from /proc, and a second
//!    request on every connection to show that they were still open when measured.
//!
//! Results go to a Markdown file with the machine, kernel and load. Numbers only: no
//! assertion. Only the processes this benchmark starts are stopped (by PID), and its temp
//! directory is removed, also on error (Drop guards).
#![allow(
    clippy::cast_precision_loss,
    clippy::cast_sign_loss,
    reason = "a benchmark script: rates and ratios in floating point"
)]

use std::cell::{Cell, RefCell};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use bytes::Bytes;
use futures::StreamExt as _;
use http_body_util::Full;
use hyper::Response;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The upstreams' response body.
const BODY: &[u8] = b"Hello, world\n";
/// The request the idle-connection client sends (wrk sends the same shape).
const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench.local\r\n\r\n";

struct Args {
    out: Option<PathBuf>,
    duration: u64,
    warmup: u64,
    idle_conns: usize,
    upstreams: usize,
    wrk_threads: u32,
    workers: Vec<usize>,
    conns: Vec<u32>,
    memory_workers: usize,
    lb_ingress: Option<PathBuf>,
    /// A second lb-ingress build measured in the same rotation: the plain release build
    /// when `--lb-ingress` is the profile-guided one (`cargo xtask bench ingress`).
    lb_ingress_plain: Option<PathBuf>,
    /// Measured runs per proxy and scenario, the proxies in turn.
    rounds: usize,
    /// Drive `--lb-ingress` (an instrumented build) with the training load and exit.
    train: bool,
}

/// A comma-separated list of numbers (`1,2`).
fn list<T: std::str::FromStr>(s: &str) -> anyhow::Result<Vec<T>>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let v = s
        .split(',')
        .map(|n| n.trim().parse::<T>())
        .collect::<Result<Vec<_>, _>>()?;
    ensure!(!v.is_empty(), "an empty list");
    Ok(v)
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        out: None,
        duration: 10,
        warmup: 2,
        idle_conns: 10_000,
        upstreams: 3,
        wrk_threads: 2,
        workers: vec![1, 2],
        conns: vec![64, 512],
        memory_workers: 2,
        lb_ingress: None,
        lb_ingress_plain: None,
        rounds: 5,
        train: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut v = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--out" => a.out = Some(v()?.into()),
            "--duration" => a.duration = v()?.parse().context("--duration SECS")?,
            "--warmup" => a.warmup = v()?.parse().context("--warmup SECS")?,
            "--idle-conns" => a.idle_conns = v()?.parse().context("--idle-conns N")?,
            "--upstreams" => a.upstreams = v()?.parse().context("--upstreams N")?,
            "--wrk-threads" => a.wrk_threads = v()?.parse().context("--wrk-threads N")?,
            "--lb-ingress" => a.lb_ingress = Some(v()?.into()),
            "--lb-ingress-plain" => a.lb_ingress_plain = Some(v()?.into()),
            "--train" => a.train = true,
            "--rounds" => a.rounds = v()?.parse().context("--rounds N")?,
            "--workers" => a.workers = list(&v()?).context("--workers N[,N...]")?,
            "--conns" => a.conns = list(&v()?).context("--conns N[,N...]")?,
            "--quick" => {
                a.duration = 2;
                a.warmup = 1;
                a.idle_conns = 1000;
                a.rounds = 1;
            }
            "-h" | "--help" => {
                println!(
                    "ingress_bench [--out PATH] [--duration SECS] [--warmup SECS] [--idle-conns N] \
                     [--upstreams N] [--wrk-threads N] [--rounds N] [--workers N,N] [--conns N,N] \
                     [--lb-ingress PATH] [--lb-ingress-plain PATH] [--quick] [--train]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown flag {other} (try --help)"),
        }
    }
    ensure!(
        a.duration > 0 && a.upstreams > 0 && a.rounds > 0,
        "duration, upstreams and rounds must be > 0"
    );
    Ok(a)
}

// ---------------------------------------------------------------------------------------
// Processes: started here, stopped here by PID, on every path out.

/// A process this benchmark started. Dropping it sends SIGTERM to that PID, waits, then
/// SIGKILLs it and any of its children (nginx workers) that are still there.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); log {}:\n{}",
                self.name,
                self.log.display(),
                tail(&self.log)
            );
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let pid = self.pid();
        let children = child_pids(pid);
        // SAFETY: kill(2) with a PID this process spawned and has not reaped yet (try_wait
        // above returned None), so the PID cannot have been reused.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{} (pid {pid}) ignored SIGTERM; SIGKILL", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
        for c in children {
            // Orphaned workers of the master we just killed: reparented, same command.
            if comm(c).as_deref() == Some(self.name) {
                // SAFETY: kill(2) on a PID read from /proc a moment ago, checked to still
                // be the same program.
                unsafe {
                    libc::kill(c, libc::SIGKILL);
                }
            }
        }
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Fields of /proc/PID/stat after the command name: state, ppid, ...
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

fn comm(pid: i32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_owned())
}

fn child_pids(parent: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| stat_fields(pid).and_then(|f| f.get(1)?.parse::<i32>().ok()) == Some(parent))
        .collect()
}

/// The process and its children (nginx: master and workers).
fn tree(pid: i32) -> Vec<i32> {
    let mut v = vec![pid];
    v.extend(child_pids(pid));
    v
}

fn status_kib(pid: i32, file: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// (RSS, PSS) in KiB, summed over the process tree.
fn memory_kib(pid: i32) -> (u64, u64) {
    tree(pid).into_iter().fold((0, 0), |(r, p), pid| {
        (
            r + status_kib(pid, "status", "VmRSS:"),
            p + status_kib(pid, "smaps_rollup", "Pss:"),
        )
    })
}

/// User + system CPU time of the process tree (live children only), in seconds.
fn cpu_seconds(pid: i32) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    tree(pid)
        .into_iter()
        .filter_map(stat_fields)
        .map(|f| {
            // utime and stime are fields 14 and 15 of stat; index 11 and 12 after comm.
            let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            (n(11) + n(12)) as f64 / ticks
        })
        .sum()
}

fn raise_nofile(want: u64) -> anyhow::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        ensure!(
            libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) == 0,
            "getrlimit"
        );
        if lim.rlim_cur >= want {
            return Ok(lim.rlim_cur);
        }
        let raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: lim.rlim_max.max(want),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) == 0 {
            return Ok(want);
        }
        // Not privileged: as far as the hard limit goes.
        let soft = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        ensure!(
            libc::setrlimit(libc::RLIMIT_NOFILE, &raw const soft) == 0,
            "setrlimit"
        );
        Ok(lim.rlim_max)
    }
}

/// A free loopback port: bind port 0, read it, release it.
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One blocking `GET /` with `Connection: close`; the status code.
fn get_status(addr: SocketAddr) -> anyhow::Result<u16> {
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: bench.local\r\nConnection: close\r\n\r\n")?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let head = String::from_utf8_lossy(&buf[..buf.len().min(64)]).into_owned();
    head.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP response: {head:?}"))
}

/// Waits until the proxy answers `GET /` with 200.
fn wait_ready(p: &mut Proc, addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    while Instant::now() < deadline {
        p.ensure_running()?;
        match get_status(addr) {
            Ok(200) => return Ok(()),
            Ok(code) => last = format!("status {code}"),
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "{} not ready on {addr} in 20 s (last: {last}); log:\n{}",
        p.name,
        tail(&p.log)
    )
}

// ---------------------------------------------------------------------------------------
// The two proxies.

fn manifests(dir: &Path, upstreams: &[SocketAddr]) -> anyhow::Result<()> {
    let mut y = String::from(
        "apiVersion: networking.k8s.io/v1\nkind: IngressClass\nmetadata:\n  name: lb\n  annotations: {ingressclass.kubernetes.io/is-default-class: \"true\"}\nspec: {controller: lb.example.com/ingress}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: echo, namespace: bench}\nspec:\n  ports:\n  - {name: http, port: 80, targetPort: 8080, protocol: TCP}\n",
    );
    // One EndpointSlice per upstream: each has its own loopback port.
    for (i, u) in upstreams.iter().enumerate() {
        let _ = write!(
            y,
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: echo-{i}\n  namespace: bench\n  labels: {{kubernetes.io/service-name: echo}}\naddressType: IPv4\nports:\n- {{name: http, port: {}, protocol: TCP}}\nendpoints:\n- addresses: [\"{}\"]\n  conditions: {{ready: true}}\n",
            u.port(),
            u.ip()
        );
    }
    y.push_str(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: echo, namespace: bench}\nspec:\n  rules:\n  - http:\n      paths:\n      - {path: /, pathType: Prefix, backend: {service: {name: echo, port: {number: 80}}}}\n",
    );
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(".bench.yaml.tmp");
    std::fs::write(&tmp, y)?;
    std::fs::rename(&tmp, dir.join("bench.yaml"))?;
    Ok(())
}

/// lb-ingress's flags besides the defaults: no access log (nginx's is off too), a 60 s
/// header timeout (nginx's `client_header_timeout` default; lb-ingress's 10 s default also
/// bounds idle keep-alive time on HTTP/1, which would close the idle connections of the
/// memory test), and a short shutdown drain.
const LB_FLAGS: &[&str] = &[
    "--metrics-addr",
    "127.0.0.1:0",
    "--no-access-log",
    "--header-timeout-ms",
    "60000",
    "--shutdown-grace-s",
    "1",
];

fn start_lb(
    bin: &Path,
    tmp: &Path,
    workers: usize,
    manifests_dir: &Path,
) -> anyhow::Result<(Proc, SocketAddr)> {
    start_lb_with(bin, tmp, workers, manifests_dir, &[])
}

/// [`start_lb`] with more flags (the training load's `--listen-tls`).
fn start_lb_with(
    bin: &Path,
    tmp: &Path,
    workers: usize,
    manifests_dir: &Path,
    more: &[String],
) -> anyhow::Result<(Proc, SocketAddr)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let log = tmp.join(format!("lb-ingress-{workers}w-{}.log", addr.port()));
    let child = Command::new(bin)
        .arg("run")
        .arg("--manifests")
        .arg(manifests_dir)
        .arg("--listen")
        .arg(addr.to_string())
        .args(LB_FLAGS)
        .args(more)
        .env("TOKIO_WORKER_THREADS", workers.to_string())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut p = Proc {
        name: "lb-ingress",
        child,
        log,
    };
    wait_ready(&mut p, addr)?;
    Ok((p, addr))
}

/// The bare hyper forwarder (see `bare_proxy`): this benchmark's own binary, re-run.
fn start_bare(
    tmp: &Path,
    workers: usize,
    upstreams: &[SocketAddr],
) -> anyhow::Result<(Proc, SocketAddr)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let log = tmp.join(format!("bare-{workers}w-{}.log", addr.port()));
    let child = Command::new(std::env::current_exe()?)
        .arg("--bare-proxy")
        .arg(addr.to_string())
        .arg(workers.to_string())
        .args(upstreams.iter().map(ToString::to_string))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting the bare hyper forwarder")?;
    let mut p = Proc {
        name: "bare-hyper",
        child,
        log,
    };
    wait_ready(&mut p, addr)?;
    Ok((p, addr))
}

/// `nofile`: this process's RLIMIT_NOFILE, which nginx inherits; worker_connections (client
/// plus upstream connections per worker) may use all of it.
fn nginx_conf(
    dir: &Path,
    workers: usize,
    listen: SocketAddr,
    upstreams: &[SocketAddr],
    nofile: u64,
) -> String {
    let d = dir.display();
    let mut servers = String::new();
    for u in upstreams {
        let _ = writeln!(servers, "        server {u};");
    }
    format!(
        "daemon off;
master_process on;
worker_processes {workers};
worker_rlimit_nofile {nofile};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{
    worker_connections {nofile};
}}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    # ingress-nginx's $req_id: the client's X-Request-ID, else a new one.
    map $http_x_request_id $req_id {{
        default $http_x_request_id;
        \"\" $request_id;
    }}
    upstream echo {{
{servers}        keepalive 64;
        keepalive_requests 1000000;
    }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://echo;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_set_header Forwarded \"for=$remote_addr;host=\\\"$http_host\\\";proto=$scheme\";
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Request-ID $req_id;
        }}
    }}
}}
"
    )
}

fn start_nginx(
    tmp: &Path,
    workers: usize,
    upstreams: &[SocketAddr],
    nofile: u64,
) -> anyhow::Result<(Proc, SocketAddr)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let dir = tmp.join(format!("nginx-{workers}w-{}", addr.port()));
    std::fs::create_dir_all(&dir)?;
    let conf = dir.join("nginx.conf");
    std::fs::write(&conf, nginx_conf(&dir, workers, addr, upstreams, nofile))?;
    let log = dir.join("error.log");
    let child = Command::new("/usr/sbin/nginx")
        // -e: the error log before the configuration is read (else /var/log/nginx).
        .arg("-e")
        .arg(&log)
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(&conf)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("stdout.log"))?)
        .stderr(std::fs::File::create(dir.join("stderr.log"))?)
        .spawn()
        .context("starting /usr/sbin/nginx (apt-get install nginx)")?;
    let mut p = Proc {
        name: "nginx",
        child,
        log,
    };
    wait_ready(&mut p, addr)?;
    let w = child_pids(p.pid()).len();
    ensure!(w == workers, "nginx has {w} workers, wanted {workers}");
    Ok((p, addr))
}

/// Lines of nginx's error log at warning level or worse.
fn nginx_errors(p: &Proc) -> Vec<String> {
    std::fs::read_to_string(&p.log)
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            ["[warn]", "[error]", "[crit]", "[alert]", "[emerg]"]
                .iter()
                .any(|k| l.contains(k))
        })
        .map(str::to_owned)
        .collect()
}

// ---------------------------------------------------------------------------------------
// wrk.

#[derive(Clone, Copy, Default)]
struct Wrk {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
    errors: u64,
    cpu_us_per_req: f64,
}

fn wrk_ms(v: &str) -> Option<f64> {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        "h" => n * 3_600_000.0,
        _ => return None,
    })
}

fn parse_wrk(out: &str) -> anyhow::Result<Wrk> {
    let mut w = Wrk::default();
    let mut saw = (false, false, false);
    for line in out.lines().map(str::trim) {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["Requests/sec:", v] => {
                w.rps = v.parse()?;
                saw.0 = true;
            }
            ["50%", v] => {
                w.p50_ms = wrk_ms(v).context("p50")?;
                saw.1 = true;
            }
            ["99%", v] => {
                w.p99_ms = wrk_ms(v).context("p99")?;
                saw.2 = true;
            }
            [n, "requests", "in", ..] => w.requests = n.parse()?,
            ["Non-2xx", "or", "3xx", "responses:", n] => w.errors += n.parse::<u64>()?,
            ["Socket", "errors:", rest @ ..] => {
                // connect 0, read 0, write 0, timeout 0
                for pair in rest.chunks(2) {
                    if let [_, n] = pair {
                        w.errors += n.trim_end_matches(',').parse::<u64>()?;
                    }
                }
            }
            _ => {}
        }
    }
    ensure!(saw == (true, true, true), "unexpected wrk output:\n{out}");
    Ok(w)
}

fn run_wrk(addr: SocketAddr, conns: u32, threads: u32, secs: u64, pid: i32) -> anyhow::Result<Wrk> {
    let cpu0 = cpu_seconds(pid);
    let out = Command::new("/usr/bin/wrk")
        .arg(format!("-t{}", threads.min(conns)))
        .arg(format!("-c{conns}"))
        .arg(format!("-d{secs}s"))
        .args(["--latency", "--timeout", "5s"])
        .arg(format!("http://{addr}/"))
        .stdin(Stdio::null())
        .output()
        .context("running /usr/bin/wrk (apt-get install wrk)")?;
    let cpu = cpu_seconds(pid) - cpu0;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "wrk failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut w = parse_wrk(&text)?;
    w.cpu_us_per_req = cpu * 1e6 / (w.requests.max(1) as f64);
    Ok(w)
}

// ---------------------------------------------------------------------------------------
// Upstreams and the idle-connection client (tokio, in this process).

/// What the benchmark and the training load stand on: a temp directory, a runtime with
/// `n` upstream servers on loopback (and the count of requests each has answered), and
/// the manifests routing to them in `tmp/manifests`.
struct Bed {
    tmp: tempfile::TempDir,
    rt: tokio::runtime::Runtime,
    upstreams: Vec<SocketAddr>,
    hits: Vec<Arc<AtomicU64>>,
    manifests: PathBuf,
}

fn bed(prefix: &str, n: usize) -> anyhow::Result<Bed> {
    let tmp = tempfile::Builder::new().prefix(prefix).tempdir()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut upstreams = Vec::new();
    let mut hits = Vec::new();
    for _ in 0..n {
        let l = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        upstreams.push(l.local_addr()?);
        let h = Arc::new(AtomicU64::new(0));
        hits.push(Arc::clone(&h));
        rt.spawn(serve_upstream(l, h));
    }
    let manifests_dir = tmp.path().join("manifests");
    manifests(&manifests_dir, &upstreams)?;
    Ok(Bed {
        tmp,
        rt,
        upstreams,
        hits,
        manifests: manifests_dir,
    })
}

async fn serve_upstream(listener: tokio::net::TcpListener, hits: Arc<AtomicU64>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors or similar: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let hits = Arc::clone(&hits);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: hyper::Request<_>| {
                hits.fetch_add(1, Ordering::Relaxed);
                async {
                    // Read to the end (nothing for a GET): the training load posts bodies.
                    let _ = http_body_util::BodyExt::collect(req.into_body()).await;
                    let mut r = Response::new(Full::new(Bytes::from_static(BODY)));
                    r.headers_mut().insert(
                        hyper::header::CONTENT_TYPE,
                        hyper::header::HeaderValue::from_static("text/plain"),
                    );
                    Ok::<_, Infallible>(r)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// One request on a kept-alive connection; Ok when the answer is a complete 200.
async fn request(s: &mut tokio::net::TcpStream) -> anyhow::Result<()> {
    s.write_all(REQUEST).await?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk).await?;
        ensure!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            ensure!(buf.len() < 16 * 1024, "response head too large");
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        ensure!(head.starts_with("http/1.1 200"), "not a 200: {head}");
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .context("no content-length")?
            .trim()
            .parse()?;
        if buf.len() >= end + 4 + len {
            return Ok(());
        }
    }
}

struct Idle {
    opened: usize,
    failed: usize,
    still_open: usize,
    rss_base_kib: u64,
    rss_kib: u64,
    pss_kib: u64,
    processes: usize,
}

async fn idle_connections(addr: SocketAddr, n: usize, pid: i32) -> Idle {
    let rss_base_kib = memory_kib(pid).0;
    let mut conns: Vec<tokio::net::TcpStream> = futures::stream::iter(0..n)
        .map(|_| async move {
            let go = async {
                let mut s = tokio::net::TcpStream::connect(addr).await?;
                request(&mut s).await?;
                anyhow::Ok(s)
            };
            tokio::time::timeout(Duration::from_secs(20), go)
                .await
                .ok()?
                .ok()
        })
        .buffer_unordered(256)
        .filter_map(|s| async move { s })
        .collect()
        .await;
    let opened = conns.len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_kib, pss_kib) = memory_kib(pid);
    let processes = tree(pid).len();
    // A second request on every connection: were they all still open when measured?
    let still_open = futures::stream::iter(conns.iter_mut())
        .map(|s| async move {
            tokio::time::timeout(Duration::from_secs(20), request(s))
                .await
                .is_ok_and(|r| r.is_ok())
        })
        .buffer_unordered(256)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await;
    drop(conns);
    Idle {
        opened,
        failed: n - opened,
        still_open,
        rss_base_kib,
        rss_kib,
        pss_kib,
        processes,
    }
}

// ---------------------------------------------------------------------------------------
// Machine, load and other work on it.

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Samples, once a second, whether compilers (someone else's builds) are running.
struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<AtomicU64>,
    busy: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start() -> Sampler {
        let (stop, samples, busy) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
            Arc::new(AtomicU64::new(0)),
        );
        let (s, n, b) = (Arc::clone(&stop), Arc::clone(&samples), Arc::clone(&busy));
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let compiling = std::fs::read_dir("/proc").into_iter().flatten().any(|e| {
                    e.ok()
                        .and_then(|e| e.file_name().to_str()?.parse::<i32>().ok())
                        .and_then(comm)
                        .is_some_and(|c| {
                            matches!(c.as_str(), "rustc" | "cc1" | "cc1plus" | "ld" | "ld.lld")
                        })
                });
                n.fetch_add(1, Ordering::Relaxed);
                if compiling {
                    b.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        Sampler {
            stop,
            samples,
            busy,
            thread: Some(thread),
        }
    }

    fn finish(&mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (
            self.busy.load(Ordering::Relaxed),
            self.samples.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.finish();
    }
}

fn version(cmd: &str, arg: &str) -> String {
    Command::new(cmd).arg(arg).output().map_or_else(
        |_| "?".into(),
        |o| {
            let s = format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            s.lines().next().unwrap_or("").trim().to_owned()
        },
    )
}

/// The lb-ingress binary next to this example (target/release), built if `cargo run`
/// started us (a no-op when it is fresh).
fn lb_ingress_bin(a: &Args) -> anyhow::Result<PathBuf> {
    if let Some(p) = &a.lb_ingress {
        return Ok(p.clone());
    }
    if cfg!(debug_assertions) {
        eprintln!("warning: this example is a debug build; run it with --release");
    }
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("no target dir")?;
    let bin = dir.join("lb-ingress");
    if let Some(cargo) = std::env::var_os("CARGO") {
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "lb-ingress", "--bin", "lb-ingress"]);
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        ensure!(cmd.status()?.success(), "building lb-ingress failed");
    }
    ensure!(
        bin.exists(),
        "{} missing: cargo build --release -p lb-ingress (or --lb-ingress PATH)",
        bin.display()
    );
    Ok(bin)
}

// ---------------------------------------------------------------------------------------

/// The contenders in the rotation, in this order: lb-ingress (the profile-guided build
/// under `cargo xtask bench`), nginx, the bare forwarder, and the plain release build of
/// lb-ingress when `--lb-ingress-plain` names it.
const CONTENDERS: [&str; 4] = ["lb-ingress", "nginx", "bare hyper", "lb-ingress (no PGO)"];

struct Scenario {
    workers: usize,
    conns: u32,
    lb: Wrk,
    nginx: Wrk,
    /// The bare hyper forwarder (see `bare_proxy`).
    bare: Wrk,
    /// The plain release build, when `lb` is the profile-guided one.
    plain: Option<Wrk>,
    /// Lowest and highest req/s over the rounds: lb-ingress, nginx, bare[, plain].
    rps_range: Vec<(f64, f64)>,
    /// Which proxy ran first in the first round.
    first: &'static str,
    /// lb-ingress / nginx within each round (req/s, p99): the two ran minutes apart at
    /// most, so a drift of the shared machine between rounds cancels out.
    paired: Vec<(f64, f64)>,
}

/// Each metric's median over the runs (taken separately); errors and requests summed.
fn median_of(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => v[n / 2],
        _ => f64::midpoint(v[n / 2 - 1], v[n / 2]),
    }
}

fn median(runs: &[Wrk]) -> Wrk {
    let med = |f: fn(&Wrk) -> f64| median_of(runs.iter().map(f).collect());
    Wrk {
        rps: med(|w| w.rps),
        p50_ms: med(|w| w.p50_ms),
        p99_ms: med(|w| w.p99_ms),
        cpu_us_per_req: med(|w| w.cpu_us_per_req),
        requests: runs.iter().map(|w| w.requests).sum(),
        errors: runs.iter().map(|w| w.errors).sum(),
    }
}

fn rps_range(runs: &[Wrk]) -> (f64, f64) {
    runs.iter().fold((f64::INFINITY, 0.0), |(lo, hi), w| {
        (lo.min(w.rps), hi.max(w.rps))
    })
}

fn main() -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--bare-proxy") {
        return bare_proxy(&argv[2..]);
    }
    let a = parse_args()?;
    let bin = lb_ingress_bin(&a)?;
    if a.train {
        return train(&a, &bin);
    }
    let nofile = raise_nofile(65_536)?;
    ensure!(
        nofile as usize > a.idle_conns + 1024,
        "RLIMIT_NOFILE is {nofile}: too low for {} connections",
        a.idle_conns
    );
    let load_before = loadavg();
    let mut sampler = Sampler::start();
    let started = Instant::now();
    let Bed {
        tmp,
        rt,
        upstreams,
        hits,
        manifests: manifests_dir,
    } = bed("ingress-bench-", a.upstreams)?;
    eprintln!(
        "upstreams {upstreams:?}; lb-ingress {}; temp {}",
        bin.display(),
        tmp.path().display()
    );

    let mut scenarios = Vec::new();
    let mut nginx_error_lines = Vec::new();
    for &workers in &a.workers {
        let (lb, lb_addr) = start_lb(&bin, tmp.path(), workers, &manifests_dir)?;
        let (ngx, ngx_addr) = start_nginx(tmp.path(), workers, &upstreams, nofile)?;
        let (bare, bare_addr) = start_bare(tmp.path(), workers, &upstreams)?;
        let mut procs = vec![(lb, lb_addr), (ngx, ngx_addr), (bare, bare_addr)];
        if let Some(plain) = &a.lb_ingress_plain {
            procs.push(start_lb(plain, tmp.path(), workers, &manifests_dir)?);
        }
        let names = &CONTENDERS[..procs.len()];
        for &conns in &a.conns {
            // Rotate which proxy goes first, so none always runs on a cooler machine.
            let turn = scenarios.len();
            let run = |name: &str,
                       addr: SocketAddr,
                       p: &mut Proc,
                       warm: bool|
             -> anyhow::Result<Wrk> {
                p.ensure_running()?;
                let before: Vec<u64> = hits.iter().map(|h| h.load(Ordering::Relaxed)).collect();
                if warm {
                    run_wrk(addr, conns, a.wrk_threads, a.warmup, p.pid())?;
                }
                let w = run_wrk(addr, conns, a.wrk_threads, a.duration, p.pid())?;
                let spread: Vec<u64> = hits
                    .iter()
                    .zip(&before)
                    .map(|(h, b)| h.load(Ordering::Relaxed) - b)
                    .collect();
                eprintln!(
                    "{workers} worker(s), {conns:>3} conns, {name:<10}: {:>9.0} req/s  p50 {:>7.2} ms  p99 {:>7.2} ms  errors {}  cpu {:.1} us/req  upstream hits {spread:?}",
                    w.rps, w.p50_ms, w.p99_ms, w.errors, w.cpu_us_per_req
                );
                Ok(w)
            };
            // Each round runs them all in turn, starting one later than the last round.
            let n = procs.len();
            let mut runs: Vec<Vec<Wrk>> = vec![Vec::new(); n];
            for round in 0..a.rounds {
                for k in 0..n {
                    let which = (turn + round + k) % n;
                    let (p, addr) = &mut procs[which];
                    runs[which].push(run(names[which], *addr, p, round == 0)?);
                }
            }
            scenarios.push(Scenario {
                workers,
                conns,
                lb: median(&runs[0]),
                nginx: median(&runs[1]),
                bare: median(&runs[2]),
                plain: runs.get(3).map(|r| median(r)),
                paired: (runs[0].iter().zip(&runs[1]))
                    .map(|(l, n)| (ratio(l.rps, n.rps), ratio(l.p99_ms, n.p99_ms)))
                    .collect(),
                rps_range: runs.iter().map(|r| rps_range(r)).collect(),
                first: names[turn % n],
            });
        }
        nginx_error_lines.extend(nginx_errors(&procs[1].0));
        drop(procs);
    }

    // Memory: fresh processes, so the load runs above leave nothing behind.
    let w = a.memory_workers;
    let (lb, lb_addr) = start_lb(&bin, tmp.path(), w, &manifests_dir)?;
    eprintln!("memory: {} idle connections to lb-ingress", a.idle_conns);
    let lb_idle = rt.block_on(idle_connections(lb_addr, a.idle_conns, lb.pid()));
    drop(lb);
    let (ngx, ngx_addr) = start_nginx(tmp.path(), w, &upstreams, nofile)?;
    eprintln!("memory: {} idle connections to nginx", a.idle_conns);
    let ngx_idle = rt.block_on(idle_connections(ngx_addr, a.idle_conns, ngx.pid()));
    nginx_error_lines.extend(nginx_errors(&ngx));
    drop(ngx);
    drop(rt);

    let (busy, samples) = sampler.finish();
    let load_after = loadavg();
    let md = report(
        &a,
        &Report {
            scenarios: &scenarios,
            lb_idle: &lb_idle,
            ngx_idle: &ngx_idle,
            load_before: &load_before,
            load_after: &load_after,
            compiling: (busy, samples),
            elapsed: started.elapsed(),
            nginx_error_lines: &nginx_error_lines,
            nofile,
            bin: &bin,
        },
    );
    print!("{md}");
    if let Some(out) = &a.out {
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(out, &md).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}

struct Report<'a> {
    scenarios: &'a [Scenario],
    lb_idle: &'a Idle,
    ngx_idle: &'a Idle,
    load_before: &'a str,
    load_after: &'a str,
    compiling: (u64, u64),
    elapsed: Duration,
    nginx_error_lines: &'a [String],
    nofile: u64,
    bin: &'a Path,
}

fn report(a: &Args, r: &Report) -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let rev = Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short",
            "HEAD",
        ])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();

    let mut md = String::new();
    let _ = writeln!(md, "# Ingress benchmark: lb-ingress vs nginx\n");
    let _ = writeln!(
        md,
        "Machine: {cpu}, {cores} cores; kernel {}. {} (commit {rev}), {}, {}.",
        kernel.trim(),
        version(&r.bin.to_string_lossy(), "--version"),
        version("/usr/sbin/nginx", "-v").replace("nginx version: ", ""),
        version("/usr/bin/wrk", "-v")
            .split(" Copyright")
            .next()
            .unwrap_or("wrk"),
    );
    let (busy, samples) = r.compiling;
    let _ = writeln!(
        md,
        "Load average (1/5/15 min) {} before, {} after; the run took {:.0} s. {}\n",
        r.load_before,
        r.load_after,
        r.elapsed.as_secs_f64(),
        if busy > 0 {
            format!(
                "**The machine was shared**: other compile jobs (rustc/cc/ld) were running in {busy} of {samples} one-second samples, so absolute numbers are lower and noisier than on a quiet machine; both proxies ran under the same conditions, alternating."
            )
        } else {
            format!(
                "No other compile jobs (rustc/cc/ld) were seen in {samples} one-second samples."
            )
        }
    );
    let _ = writeln!(md, "## Setup\n");
    let _ = writeln!(
        md,
        "- Everything on loopback on this one machine: {} upstreams (hyper HTTP/1.1 servers in the benchmark process, 2 tokio threads, answering `200` with a {}-byte body, keep-alive), the two proxies as real processes, and wrk, all sharing the {cores} cores.",
        a.upstreams,
        BODY.len()
    );
    let _ = writeln!(
        md,
        "- lb-ingress: `lb-ingress run --manifests DIR --listen 127.0.0.1:PORT {}` with `TOKIO_WORKER_THREADS` = workers; a Service with one EndpointSlice per upstream, an Ingress `/` Prefix, IngressClass `lb` (default).{}",
        LB_FLAGS.join(" "),
        if a.lb_ingress_plain.is_some() {
            " **lb-ingress** is the profile-guided build that `cargo xtask pgo` makes (trained by `ingress_bench --train`: this load at 1 and 2 workers, then HTTPS over HTTP/1.1 and HTTP/2, and HTTP/2 posting bodies); **lb-ingress (no PGO)** is the plain `cargo build --release` of the same commit, measured in the same rotation."
        } else {
            ""
        }
    );
    let _ = writeln!(
        md,
        "- nginx: `master_process on`, `worker_processes` = workers, `upstream` with the same servers and `keepalive 64`, `proxy_http_version 1.1`, `proxy_set_header Connection \"\"`, and the request headers lb-ingress sets (as ingress-nginx's template does): `Host $http_host` (passed unchanged; nginx's default would be the upstream block's name), `X-Forwarded-For $remote_addr`, `X-Forwarded-Proto $scheme`, `X-Forwarded-Host $http_host`, `Forwarded \"for=$remote_addr;host=\\\"$http_host\\\";proto=$scheme\"`, `X-Real-IP $remote_addr` and `X-Request-ID $req_id` (the client's, else nginx's `$request_id`); `access_log off`, `keepalive_requests 1000000` on both sides (nginx's default of 1000 would close client and upstream connections that lb-ingress keeps), `worker_connections` and `worker_rlimit_nofile` = RLIMIT_NOFILE."
    );
    let _ = writeln!(
        md,
        "- wrk: `wrk -t{} -cC -d{}s --latency --timeout 5s` after a {} s warm-up run on the same connections count; {} measured run(s) per proxy and cell, the proxies in turn and the order rotated every round, so that none always runs first or last. The tables give each metric's median over the runs (taken separately) and the range of req/s; errors are summed. CPU/req is the proxy's user+system CPU time (nginx: master + workers) over a measured run divided by its requests. RLIMIT_NOFILE {}.\n",
        a.wrk_threads, a.duration, a.warmup, a.rounds, r.nofile
    );

    let _ = writeln!(md, "## Throughput and latency\n");
    let plain = r.scenarios.iter().any(|s| s.plain.is_some());
    let _ = writeln!(
        md,
        "| workers | conns | lb-ingress req/s | nginx req/s | rps ratio lb/nginx | lb p50 | nginx p50 | lb p99 | nginx p99 | p99 ratio lb/nginx |{}",
        if plain {
            " no-PGO rps ratio / nginx | no-PGO p99 ratio / nginx |"
        } else {
            ""
        }
    );
    let _ = writeln!(
        md,
        "|---|---|---|---|---|---|---|---|---|---|{}",
        if plain { "---|---|" } else { "" }
    );
    for s in r.scenarios {
        let no_pgo = s.plain.map_or(String::new(), |p| {
            format!(
                " {:.2} | {:.2} |",
                ratio(p.rps, s.nginx.rps),
                ratio(p.p99_ms, s.nginx.p99_ms)
            )
        });
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {:.0} | **{:.2}** | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | **{:.2}** |{no_pgo}",
            s.workers,
            s.conns,
            s.lb.rps,
            s.nginx.rps,
            ratio(s.lb.rps, s.nginx.rps),
            s.lb.p50_ms,
            s.nginx.p50_ms,
            s.lb.p99_ms,
            s.nginx.p99_ms,
            ratio(s.lb.p99_ms, s.nginx.p99_ms),
        );
    }
    let _ = writeln!(
        md,
        "\nRatios: rps above 1 and p99 below 1 favour lb-ingress. Per scenario:\n"
    );
    for s in r.scenarios {
        let _ = writeln!(
            md,
            "### {} worker{}, {} connections ({} first in round 1)\n",
            s.workers,
            if s.workers == 1 { "" } else { "s" },
            s.conns,
            s.first
        );
        let _ = writeln!(
            md,
            "| proxy | req/s | req/s range | p50 | p99 | errors | CPU/req |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|");
        for ((name, w), (lo, hi)) in CONTENDERS
            .into_iter()
            .zip([Some(&s.lb), Some(&s.nginx), Some(&s.bare), s.plain.as_ref()])
            .filter_map(|(name, w)| Some((name, w?)))
            .zip(s.rps_range.iter().copied())
        {
            let _ = writeln!(
                md,
                "| {name} | {:.0} | {lo:.0}-{hi:.0} | {:.2} ms | {:.2} ms | {} | {:.1} µs |",
                w.rps, w.p50_ms, w.p99_ms, w.errors, w.cpu_us_per_req
            );
        }
        let _ = writeln!(
            md,
            "| lb-ingress / nginx | {:.2} | | {:.2} | {:.2} | | {:.2} |\n",
            ratio(s.lb.rps, s.nginx.rps),
            ratio(s.lb.p50_ms, s.nginx.p50_ms),
            ratio(s.lb.p99_ms, s.nginx.p99_ms),
            ratio(s.lb.cpu_us_per_req, s.nginx.cpu_us_per_req),
        );
        let each = |f: fn(&(f64, f64)) -> f64| {
            let v: Vec<String> = s.paired.iter().map(|p| format!("{:.2}", f(p))).collect();
            v.join(", ")
        };
        let _ = writeln!(
            md,
            "Round by round, lb-ingress / nginx: req/s {} (median {:.2}); p99 {} (median {:.2}).\n",
            each(|p| p.0),
            median_of(s.paired.iter().map(|p| p.0).collect()),
            each(|p| p.1),
            median_of(s.paired.iter().map(|p| p.1).collect()),
        );
    }

    let _ = writeln!(md, "## Where the gap to nginx is\n");
    let _ = writeln!(
        md,
        "The **bare hyper** forwarder (`ingress_bench --bare-proxy`, a process of its own, measured in the same rotation) is lb-ingress with every feature taken out, on the same libraries and threading model: a single-threaded tokio runtime per worker thread with its own SO_REUSEPORT socket, hyper's HTTP/1.1 server, per-thread pools of hyper HTTP/1.1 client connections, requests sent round robin to the upstreams unchanged (no routing, header rewriting, limits, timeouts, retries, metrics or logs). bare / nginx is what hyper and tokio cost against nginx here; lb-ingress / bare is what lb-ingress's own work costs on top.\n"
    );
    // The bare forwarder is a plain release build: set against lb-ingress's plain build
    // when there is one, so that the ratio is about the work, not about the profile.
    let lb_name = if plain {
        "lb-ingress (no PGO)"
    } else {
        "lb-ingress"
    };
    let _ = writeln!(
        md,
        "| workers | conns | bare / nginx req/s | {lb_name} / bare req/s | bare / nginx CPU/req | {lb_name} / bare CPU/req |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for s in r.scenarios {
        let lb = s.plain.as_ref().unwrap_or(&s.lb);
        let _ = writeln!(
            md,
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
            s.workers,
            s.conns,
            ratio(s.bare.rps, s.nginx.rps),
            ratio(lb.rps, s.bare.rps),
            ratio(s.bare.cpu_us_per_req, s.nginx.cpu_us_per_req),
            ratio(lb.cpu_us_per_req, s.bare.cpu_us_per_req),
        );
    }
    let _ = writeln!(md);

    let _ = writeln!(
        md,
        "## Memory at {} idle keep-alive connections ({} workers)\n",
        a.idle_conns, a.memory_workers
    );
    let _ = writeln!(
        md,
        "Fresh processes; {} TCP connections opened, one `GET /` answered on each, 2 s later the RSS (VmRSS, summed over all the proxy's processes) and PSS (shared pages split between processes) read from /proc, then a second request sent on every connection to check it was still open.\n",
        a.idle_conns
    );
    let _ = writeln!(
        md,
        "| proxy | processes | RSS before | RSS at {} conns | PSS at {} conns | RSS growth per conn | conns opened | still open after |",
        a.idle_conns, a.idle_conns
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    for (name, m) in [("lb-ingress", r.lb_idle), ("nginx", r.ngx_idle)] {
        let _ = writeln!(
            md,
            "| {name} | {} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.2} KiB | {} ({} failed) | {} |",
            m.processes,
            m.rss_base_kib as f64 / 1024.0,
            m.rss_kib as f64 / 1024.0,
            m.pss_kib as f64 / 1024.0,
            m.rss_kib.saturating_sub(m.rss_base_kib) as f64 / m.opened.max(1) as f64,
            m.opened,
            m.failed,
            m.still_open,
        );
    }
    if r.nginx_error_lines.is_empty() {
        let _ = writeln!(
            md,
            "\nnginx's error log had no line at warning level or worse."
        );
    } else {
        let _ = writeln!(
            md,
            "\nnginx's error log had {} lines at warning level or worse; the first ones:\n\n```",
            r.nginx_error_lines.len()
        );
        for l in r.nginx_error_lines.iter().take(5) {
            let _ = writeln!(md, "{l}");
        }
        let _ = writeln!(md, "```");
    }

    let _ = writeln!(md, "\n## Reading\n");
    let _ = writeln!(md, "{}", reading(a, r));
    md
}

/// `a / b`, finite when `b` is 0 (a run with no request).
fn ratio(a: f64, b: f64) -> f64 {
    a / b.max(1e-9)
}

/// The paragraph: what the numbers say, and no more.
fn reading(a: &Args, r: &Report) -> String {
    let n = r.scenarios.len();
    let each = |f: fn(&Scenario) -> f64| -> Vec<f64> { r.scenarios.iter().map(f).collect() };
    let ratios = each(|s| ratio(s.lb.rps, s.nginx.rps));
    let p99s = each(|s| ratio(s.lb.p99_ms, s.nginx.p99_ms));
    let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = |v: &[f64]| v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let rps_met = ratios.iter().filter(|&&x| x >= 1.0).count();
    let p99_met = p99s.iter().filter(|&&x| x <= 1.0).count();
    let both = r
        .scenarios
        .iter()
        .filter(|s| s.lb.rps >= s.nginx.rps && s.lb.p99_ms <= s.nginx.p99_ms)
        .count();
    let errors: u64 = r
        .scenarios
        .iter()
        .map(|s| s.lb.errors + s.nginx.errors + s.bare.errors + s.plain.map_or(0, |p| p.errors))
        .sum();
    let cpu = each(|s| ratio(s.lb.cpu_us_per_req, s.nginx.cpu_us_per_req));
    let (lm, nm) = (r.lb_idle, r.ngx_idle);
    let per = |m: &Idle| m.rss_kib.saturating_sub(m.rss_base_kib) as f64 / m.opened.max(1) as f64;
    let mut s = format!(
        "In this run lb-ingress served {:.2}x to {:.2}x nginx's requests per second across the {n} scenarios (at least nginx's in {rps_met} of {n}), with a p99 latency {:.2}x to {:.2}x nginx's (no worse in {p99_met} of {n}); the issue's target (at least nginx's rps and no worse p99) was met in {both} of {n} scenarios. ",
        min(&ratios),
        max(&ratios),
        min(&p99s),
        max(&p99s),
    );
    let worst = |v: &[f64], hi: bool| {
        let at = (0..v.len())
            .reduce(|best, i| if (v[i] > v[best]) == hi { i } else { best })
            .unwrap_or(0);
        r.scenarios.get(at).map_or(String::new(), |sc| {
            format!("{} worker(s) x {} connections", sc.workers, sc.conns)
        })
    };
    if n > 0 {
        let _ = write!(
            s,
            "The rps ratio was lowest at {} and the p99 ratio highest at {}. ",
            worst(&ratios, false),
            worst(&p99s, true)
        );
    }
    let _ = write!(
        s,
        "lb-ingress used {:.2}x to {:.2}x nginx's CPU time per request. ",
        min(&cpu),
        max(&cpu)
    );
    let _ = write!(
        s,
        "With {} idle keep-alive connections lb-ingress held {:.1} MiB RSS ({:.2} KiB per connection over its idle baseline) against nginx's {:.1} MiB for master and workers together ({:.2} KiB per connection); {} and {} of the connections were still open after the measurement. ",
        a.idle_conns,
        lm.rss_kib as f64 / 1024.0,
        per(lm),
        nm.rss_kib as f64 / 1024.0,
        per(nm),
        lm.still_open,
        nm.still_open,
    );
    let bare_ngx = each(|s| ratio(s.bare.rps, s.nginx.rps));
    let lb_bare = each(|s| ratio(s.plain.as_ref().unwrap_or(&s.lb).rps, s.bare.rps));
    let _ = write!(
        s,
        "The bare hyper forwarder served {:.2}x to {:.2}x nginx's requests per second, and {} {:.2}x to {:.2}x the bare forwarder's: the first is the share of the gap that hyper and tokio bring, the second lb-ingress's own. ",
        min(&bare_ngx),
        max(&bare_ngx),
        if r.scenarios.iter().any(|s| s.plain.is_some()) {
            "lb-ingress's plain release build"
        } else {
            "lb-ingress"
        },
        min(&lb_bare),
        max(&lb_bare),
    );
    let pgo: Vec<(f64, f64, f64)> = r
        .scenarios
        .iter()
        .filter_map(|sc| {
            let plain = sc.plain.as_ref()?;
            Some((
                ratio(sc.lb.rps, plain.rps),
                ratio(sc.lb.cpu_us_per_req, plain.cpu_us_per_req),
                ratio(plain.rps, sc.nginx.rps),
            ))
        })
        .collect();
    if !pgo.is_empty() {
        let rps: Vec<f64> = pgo.iter().map(|x| x.0).collect();
        let cpu: Vec<f64> = pgo.iter().map(|x| x.1).collect();
        let plain_ngx: Vec<f64> = pgo.iter().map(|x| x.2).collect();
        let _ = write!(
            s,
            "The profile-guided build served {:.2}x to {:.2}x the plain release build's requests per second at {:.2}x to {:.2}x its CPU time per request; the plain build alone served {:.2}x to {:.2}x nginx's requests per second. ",
            min(&rps),
            max(&rps),
            min(&cpu),
            max(&cpu),
            min(&plain_ngx),
            max(&plain_ngx),
        );
    }
    if errors > 0 {
        let _ = write!(
            s,
            "wrk counted {errors} errors (socket errors or non-2xx) over all runs; see the per-scenario tables. "
        );
    }
    let _ = write!(
        s,
        "These are medians of {} {}-second run(s) per cell on a {}-core machine where wrk, the upstreams and the proxy compete for the same cores, so the proxy never has the CPU to itself: the numbers compare the proxies under identical conditions here, not their capacity on dedicated hardware; the req/s ranges in the tables show how far runs of one proxy spread on this machine. Only small GET responses over HTTP/1.1 without TLS were measured.",
        a.rounds,
        a.duration,
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
    );
    s
}

// ---------------------------------------------------------------------------------------
// Training load for the profile-guided build (`cargo xtask pgo`).

/// `--train`: the load a profile-guided build of lb-ingress is laid out for, run against
/// an instrumented build (`-Cprofile-generate`), which writes its profile when it exits
/// on SIGTERM. For 1 and then 2 workers: this benchmark's own HTTP/1.1 load (64 and 512
/// connections, by wrk), then as much again over TLS (HTTP/1.1 by wrk, HTTP/2 by h2load),
/// and HTTP/2 without TLS (prior knowledge) posting 4 KiB bodies. Code no training
/// request reaches (errors, other annotations) is laid out as cold, not removed: it
/// stays correct and tested, only slower to reach. Every run must answer 2xx only, so a
/// broken instrumented build fails here rather than yielding a profile of error paths.
fn train(a: &Args, bin: &Path) -> anyhow::Result<()> {
    let Bed {
        tmp,
        rt,
        manifests: dir,
        ..
    } = bed("ingress-train-", a.upstreams)?;
    tls_manifests(&dir)?;
    let body = tmp.path().join("body");
    std::fs::write(&body, vec![b'x'; 4096])?;
    let secs = a.duration.min(3).to_string();
    for workers in [1, 2] {
        let tls = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let more = ["--listen-tls".to_owned(), tls.to_string()];
        let (mut lb, plain) = start_lb_with(bin, tmp.path(), workers, &dir, &more)?;
        for (conns, url) in [
            ("64", format!("http://{plain}/")),
            ("512", format!("http://{plain}/")),
            ("64", format!("https://{tls}/")),
        ] {
            eprintln!("train: {workers} worker(s), wrk {conns} connections, {url}");
            let out = load(
                Command::new("/usr/bin/wrk")
                    .args(["-t2", &format!("-c{conns}"), &format!("-d{secs}s")])
                    .arg(&url),
            )?;
            ensure!(
                !out.contains("Non-2xx") && !out.contains("Socket errors"),
                "wrk {url} saw errors:\n{out}"
            );
            lb.ensure_running()?;
        }
        for (url, post) in [
            (format!("https://{tls}/"), false),
            (format!("http://{plain}/"), true),
        ] {
            eprintln!("train: {workers} worker(s), h2load {url}");
            let mut cmd = Command::new("h2load");
            cmd.args(["-n", "20000", "-c", "16", "-m", "8", "-t", "2"]);
            if post {
                cmd.arg("-d").arg(&body);
            }
            let out = load(cmd.arg(&url))?;
            ensure!(
                out.lines()
                    .any(|l| l.starts_with("requests:") && l.contains(" 0 failed")),
                "h2load {url} saw failures:\n{out}"
            );
            lb.ensure_running()?;
        }
        drop(lb);
    }
    drop(rt);
    Ok(())
}

/// Runs a load generator to its end; its output, or why it failed.
fn load(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?} (cargo xtask setup installs wrk and h2load)"))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(text)
}

/// A self-signed certificate as the TLS Secret of a second Ingress with no `hosts`: the
/// default certificate, whatever name (or none) the client sends.
fn tls_manifests(dir: &Path) -> anyhow::Result<()> {
    use base64::Engine as _;
    let cert = rcgen::generate_simple_self_signed(vec!["bench.local".to_owned()])?;
    let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
    let y = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: bench-tls, namespace: bench}}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: echo-tls, namespace: bench}}\nspec:\n  tls:\n  - {{secretName: bench-tls}}\n  rules:\n  - host: bench.local\n    http:\n      paths:\n      - {{path: /, pathType: Prefix, backend: {{service: {{name: echo, port: {{number: 80}}}}}}}}\n",
        b64(cert.cert.pem()),
        b64(cert.signing_key.serialize_pem()),
    );
    std::fs::write(dir.join("tls.yaml"), y)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The bare hyper forwarder: the reference that splits the gap to nginx in two.

/// `ingress_bench --bare-proxy LISTEN WORKERS UPSTREAM...`: what lb-ingress would be with
/// every feature taken out, on the same libraries and threading model (a single-threaded
/// tokio runtime per worker thread, each with its own SO_REUSEPORT listening socket, and
/// pooled hyper HTTP/1.1 client connections per thread): requests go round robin to the
/// upstreams unchanged (no routing, header rewriting, limits, timeouts, retries, metrics
/// or logs). Runs until killed.
fn bare_proxy(args: &[String]) -> anyhow::Result<()> {
    let [listen, workers, ups @ ..] = args else {
        bail!("usage: --bare-proxy LISTEN WORKERS UPSTREAM...");
    };
    let listen: SocketAddr = listen.parse().context("LISTEN")?;
    let workers: usize = workers.parse().context("WORKERS")?;
    let ups: Vec<SocketAddr> = ups
        .iter()
        .map(|u| u.parse().context("UPSTREAM"))
        .collect::<anyhow::Result<_>>()?;
    ensure!(!ups.is_empty(), "no upstream");
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let ups = ups.clone();
            std::thread::spawn(move || bare_worker(listen, ups))
        })
        .collect();
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("a worker panicked"))??;
    }
    Ok(())
}

fn bare_worker(listen: SocketAddr, ups: Vec<SocketAddr>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(true)?;
        socket.bind(listen)?;
        let listener = socket.listen(4096)?;
        let pool = Rc::new(BarePool {
            idle: RefCell::new(ups.iter().map(|_| Vec::new()).collect()),
            next: Cell::new(0),
            ups,
        });
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let pool = Rc::clone(&pool);
            tokio::task::spawn_local(async move {
                let svc = hyper::service::service_fn(move |req| Rc::clone(&pool).forward(req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}

type BareSender = hyper::client::conn::http1::SendRequest<hyper::body::Incoming>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One thread's idle upstream connections, by upstream.
struct BarePool {
    ups: Vec<SocketAddr>,
    idle: RefCell<Vec<Vec<BareSender>>>,
    next: Cell<usize>,
}

impl BarePool {
    async fn forward(
        self: Rc<Self>,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> Result<Response<BareBody>, BoxError> {
        let i = self.next.get();
        self.next.set((i + 1) % self.ups.len());
        let mut tx = loop {
            let idle = self.idle.borrow_mut()[i].pop();
            match idle {
                Some(mut tx) => {
                    if tx.ready().await.is_ok() {
                        break tx;
                    }
                }
                None => break self.connect(i).await?,
            }
        };
        let resp = tx.send_request(req).await?;
        let (parts, body) = resp.into_parts();
        Ok(Response::from_parts(
            parts,
            BareBody {
                inner: body,
                back: Some((self, i, tx)),
            },
        ))
    }

    async fn connect(&self, i: usize) -> Result<BareSender, BoxError> {
        let stream = tokio::net::TcpStream::connect(self.ups[i]).await?;
        stream.set_nodelay(true)?;
        let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::task::spawn_local(async move {
            let _ = conn.await;
        });
        Ok(tx)
    }
}

/// The upstream's response body; its connection goes back to the pool when it has been
/// read to the end (dropped with it otherwise).
struct BareBody {
    inner: hyper::body::Incoming,
    back: Option<(Rc<BarePool>, usize, BareSender)>,
}

impl hyper::body::Body for BareBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if (matches!(r, std::task::Poll::Ready(None)) || self.inner.is_end_stream())
            && let Some((pool, i, tx)) = self.back.take()
        {
            pool.idle.borrow_mut()[i].push(tx);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}
