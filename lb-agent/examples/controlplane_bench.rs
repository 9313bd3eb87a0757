//! Control-plane benchmark (issue 4), run by `cargo xtask bench controlplane`.
//!
//! 1. N Services with E endpoints each go through the real reconciler into maps; time to
//!    fully programmed maps and the agent's memory (RSS high-water mark).
//! 2. One endpoint change at a time, R times: time from the event to the maps updated.
//! 3. The same Services as a kube-proxy-shaped iptables rule set (KUBE-SERVICES ->
//!    KUBE-SVC-* with the statistic match -> KUBE-SEP-* DNAT), loaded with iptables-restore
//!    into a network namespace made for the purpose: full load, and one changed Service
//!    (kube-proxy's partial restore of just the changed chains).
//!
//! By default the maps are real: the data plane is loaded into the kernel and pinned under
//! a bpffs directory of its own (removed at the end), and the reconciler writes them by
//! syscall and through the mmap'd Maglev array, as the agent does. `--in-memory` uses the
//! in-memory maps instead (no root needed); `--quick` runs 1k Services and 100 changes.
//!
//! Results go to a Markdown table with the machine and kernel. Numbers only: no assertion.
#![allow(
    clippy::cast_precision_loss,
    clippy::cast_sign_loss,
    clippy::many_single_char_names,
    reason = "a benchmark script: timings in floating point, short names for loop indices"
)]

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use lb_agent::maps::MapWriter;
use lb_agent::model::ModelOptions;
use lb_agent::plan::Limits;
use lb_agent::reconcile::Reconciler;
use lb_k8s::{Event, Kind, Object};

#[path = "common/iptables.rs"]
mod iptables;

struct Args {
    services: u32,
    endpoints: u32,
    changes: u32,
    maglev: u32,
    out: Option<String>,
    /// Real BPF maps (the data plane loaded and pinned under a temporary bpffs directory)
    /// rather than in-memory ones.
    kernel: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        services: 10_000,
        endpoints: 10,
        changes: 1000,
        maglev: 251,
        out: None,
        kernel: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut v = || it.next().expect("flag needs a value");
        match flag.as_str() {
            "--services" => a.services = v().parse().expect("number"),
            "--endpoints" => a.endpoints = v().parse().expect("number"),
            "--changes" => a.changes = v().parse().expect("number"),
            "--maglev-size" => a.maglev = v().parse().expect("number"),
            "--out" => a.out = Some(v()),
            "--in-memory" => a.kernel = false,
            "--quick" => {
                a.services = 1000;
                a.changes = 100;
            }
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i)
}

fn pod(i: u32, j: u32, e: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i * e + j)
}

fn service(i: u32) -> Object {
    Object::Service(
        serde_json::from_value::<Box<Service>>(serde_json::json!({
            "metadata": {"name": format!("svc-{i}"), "namespace": "bench"},
            "spec": {"clusterIP": vip(i).to_string(), "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
        }))
        .expect("service"),
    )
}

fn slice(i: u32, e: u32, generation: u32) -> Object {
    let eps: Vec<serde_json::Value> = (0..e)
        .map(|j| {
            // One endpoint's address moves with `generation`, to make a change.
            let addr = if j == 0 && generation > 0 {
                Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) + generation)
            } else {
                pod(i, j, e)
            };
            serde_json::json!({"addresses": [addr.to_string()], "nodeName": format!("node-{}", j % 4), "conditions": {"ready": true}})
        })
        .collect();
    Object::EndpointSlice(
        serde_json::from_value::<Box<EndpointSlice>>(serde_json::json!({
            "metadata": {"name": format!("svc-{i}-abc"), "namespace": "bench", "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": eps
        }))
        .expect("slice"),
    )
}

fn node() -> Object {
    Object::Node(
        serde_json::from_value::<Box<Node>>(serde_json::json!({
            "metadata": {"name": "node-0"},
            "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.10"}]}
        }))
        .expect("node"),
    )
}

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx]
}

struct AgentResult {
    full_sync: Duration,
    rss_mib: f64,
    /// RSS before the objects were built (the process and, with real maps, the loaded
    /// data plane), and with the objects built, before the sync.
    rss_start_mib: f64,
    rss_objects_mib: f64,
    /// After the sync: anonymous (heap) and file-backed (the binary's own pages) RSS.
    anon_mib: f64,
    file_mib: f64,
    change_p50: Duration,
    change_p99: Duration,
    entries: usize,
}

fn bench_agent<W: MapWriter>(a: &Args, writer: W) -> anyhow::Result<AgentResult> {
    let limits = Limits {
        max_services: a.services + 16,
        max_backends: a.services * a.endpoints + 16,
        maglev_size: a.maglev,
    };
    let rss_start_mib = rss_kib("VmRSS:") as f64 / 1024.0;
    let mut objects: Vec<(Object, Option<String>)> = vec![(node(), None)];
    for i in 0..a.services {
        objects.push((service(i), None));
        objects.push((slice(i, a.endpoints, 0), None));
    }
    let rss_objects_mib = rss_kib("VmRSS:") as f64 / 1024.0;
    let mut r = Reconciler::new("node-0", ModelOptions::default(), limits, writer)?;
    let event = Event::Resync {
        kinds: vec![Kind::Service, Kind::EndpointSlice, Kind::Node],
        objects,
        errors: vec![],
    };
    let started = Instant::now();
    let out = r.handle(event);
    let full_sync = started.elapsed();
    anyhow::ensure!(
        out.first_sync && out.problems.is_empty(),
        "sync failed: {:?}",
        out.problems
    );
    let entries = r.programmed().services().len();
    let rss_mib = rss_kib("VmHWM:") as f64 / 1024.0;
    let anon_mib = rss_kib("RssAnon:") as f64 / 1024.0;
    let file_mib = rss_kib("RssFile:") as f64 / 1024.0;

    let mut lat = Vec::with_capacity(a.changes as usize);
    for g in 1..=a.changes {
        let i = (g * 7919) % a.services;
        let t = Instant::now();
        let o = r.handle(Event::Apply(slice(i, a.endpoints, g)));
        lat.push(t.elapsed());
        anyhow::ensure!(o.ops_applied > 0, "change {g} programmed nothing");
    }
    lat.sort();
    Ok(AgentResult {
        full_sync,
        rss_mib,
        rss_start_mib,
        rss_objects_mib,
        anon_mib,
        file_mib,
        change_p50: percentile(&lat, 0.5),
        change_p99: percentile(&lat, 0.99),
        entries,
    })
}

/// The Services of this benchmark as kube-proxy's iptables rules (see common/iptables.rs).
fn iptables_rules(a: &Args, only: Option<(u32, u32)>) -> String {
    let endpoint = |i: u32, j: u32| pod(i, j, a.endpoints);
    iptables::render(
        &iptables::RuleSet {
            services: a.services,
            endpoints: a.endpoints,
            namespace: "bench",
            port: 80,
            target_port: 8080,
            vip: &vip,
            endpoint: &endpoint,
            portal_jumps: false,
        },
        only,
    )
}

/// A network namespace for the iptables rules, removed on drop.
struct Netns(String);

impl Netns {
    fn new() -> anyhow::Result<Self> {
        let name = format!("lbbench-cp-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()?
            .success();
        anyhow::ensure!(ok, "ip netns add {name} failed (root needed)");
        Ok(Netns(name))
    }
    fn restore(&self, rules: &str, noflush: bool) -> anyhow::Result<Duration> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.0, "iptables-restore", "-w"]);
        if noflush {
            cmd.arg("--noflush");
        }
        let started = Instant::now();
        let mut child = cmd
            .stdin(Stdio::piped())
            .spawn()
            .context("iptables-restore (apt-get install iptables)")?;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(rules.as_bytes())?;
        let status = child.wait()?;
        let took = started.elapsed();
        anyhow::ensure!(status.success(), "iptables-restore failed");
        Ok(took)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// The data plane loaded into the kernel with maps sized for the run, pinned under a
/// directory of its own that is removed again on drop (also on error).
struct KernelPins {
    dir: std::path::PathBuf,
}

impl KernelPins {
    fn load(a: &Args) -> anyhow::Result<Self> {
        let pins = KernelPins {
            dir: std::path::PathBuf::from(format!("/sys/fs/bpf/lbbench-cp-{}", std::process::id())),
        };
        let opts = lb_agent::bpf::LoadOptions {
            bpffs_dir: pins.dir.clone(),
            max_services: (a.services + 16) * 2,
            max_backends: a.services * a.endpoints + 16,
            maglev_size: a.maglev,
            ..Default::default()
        };
        let dp = lb_agent::bpf::Dataplane::load(&opts).context(
            "loading the data plane for real maps (needs root and bpffs; --in-memory runs without)",
        )?;
        // The maps stay pinned; the reconciler opens them by path like the agent does.
        drop(dp);
        Ok(pins)
    }
}

impl Drop for KernelPins {
    fn drop(&mut self) {
        let _ = lb_agent::bpf::detach_all(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn main() -> anyhow::Result<()> {
    let a = parse_args();
    eprintln!(
        "control plane: {} Services x {} endpoints, Maglev {}",
        a.services, a.endpoints, a.maglev
    );
    let agent = if a.kernel {
        let pins = KernelPins::load(&a)?;
        let maps = lb_agent::maps::kernel::KernelMaps::open_pinned(&pins.dir)?;
        let r = bench_agent(&a, maps)?;
        drop(pins);
        r
    } else {
        bench_agent(
            &a,
            lb_agent::maps::memory::MemoryMaps::new(usize::MAX, usize::MAX),
        )?
    };
    eprintln!(
        "agent: full sync {:?}, change p99 {:?}",
        agent.full_sync, agent.change_p99
    );

    let ns = Netns::new()?;
    let full_rules = iptables_rules(&a, None);
    eprintln!("iptables: {} rules, loading...", full_rules.lines().count());
    let ipt_full = ns.restore(&full_rules, false)?;
    let rounds = 20_u32;
    let mut ipt_changes = Vec::new();
    for g in 1..=rounds {
        let i = (g * 7919) % a.services;
        // kube-proxy's partial sync: the changed service's chains are rewritten
        // (new endpoint chains declared, the service chain flushed and refilled).
        ipt_changes.push(ns.restore(&iptables_rules(&a, Some((i, g))), true)?);
    }
    ipt_changes.sort();
    let ipt_p50 = percentile(&ipt_changes, 0.5);
    let ipt_p99 = percentile(&ipt_changes, 0.99);
    drop(ns);

    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_owned();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let mut md = String::new();
    let _ = writeln!(md, "# Control plane benchmark\n");
    let _ = writeln!(
        md,
        "Run {}. Machine: {cpu}, {} cores; kernel {}; {}. Maps: {}.\n",
        Command::new("date")
            .args(["-u", "+%F %H:%M UTC"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default(),
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        kernel.trim(),
        Command::new("iptables")
            .arg("-V")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default(),
        if a.kernel {
            "real pinned BPF maps (the data plane loaded into the kernel)"
        } else {
            "in-memory maps (no kernel)"
        }
    );
    let _ = writeln!(
        md,
        "{} Services x {} endpoints ({} endpoints), Maglev table {} slots, {} service entries.\n",
        a.services,
        a.endpoints,
        a.services * a.endpoints,
        a.maglev,
        agent.entries
    );
    let _ = writeln!(
        md,
        "| measure | lb-agent | kube-proxy-shaped iptables-restore | ratio |"
    );
    let _ = writeln!(md, "|---|---|---|---|");
    let _ = writeln!(
        md,
        "| full sync | {:.1} ms | {:.1} ms | {:.1}x |",
        ms(agent.full_sync),
        ms(ipt_full),
        ms(ipt_full) / ms(agent.full_sync).max(1e-9)
    );
    let _ = writeln!(
        md,
        "| one endpoint change, p50 | {:.3} ms | {:.1} ms | {:.0}x |",
        ms(agent.change_p50),
        ms(ipt_p50),
        ms(ipt_p50) / ms(agent.change_p50).max(1e-9)
    );
    let _ = writeln!(
        md,
        "| one endpoint change, p99 | {:.3} ms | {:.1} ms | {:.0}x |",
        ms(agent.change_p99),
        ms(ipt_p99),
        ms(ipt_p99) / ms(agent.change_p99).max(1e-9)
    );
    let _ = writeln!(
        md,
        "| agent memory (RSS high-water) | {:.0} MiB | | |",
        agent.rss_mib
    );
    let _ = writeln!(
        md,
        "| of which: before the objects existed (the process{}) | {:.0} MiB | | |",
        if a.kernel {
            " and the mmapped Maglev map"
        } else {
            ""
        },
        agent.rss_start_mib
    );
    let _ = writeln!(
        md,
        "| of which: the parsed Service/EndpointSlice objects of the initial listing (as the watch delivers them; the agent keeps Services and a compact form of slices and Nodes) | {:.0} MiB | | |",
        agent.rss_objects_mib - agent.rss_start_mib
    );
    let _ = writeln!(
        md,
        "| of which: the agent's store, model, programmed state and sync on top of that | {:.0} MiB | | |",
        agent.rss_mib - agent.rss_objects_mib
    );
    let _ = writeln!(
        md,
        "| after the sync: anonymous (the agent's heap) / file-backed (the mmapped LB_MAGLEV array, i.e. the kernel map's own pages, sized by max-services, and the binary) | {:.0} MiB / {:.0} MiB | | |",
        agent.anon_mib, agent.file_mib
    );
    let _ = writeln!(
        md,
        "\nTargets (issue 4): full sync under 1 s, RSS under 150 MB, one-change p99 under 1 ms. Agent change latency over {} changes; iptables partial restore over {rounds} changes. The agent's full sync starts from objects already parsed (the API server's watch delivers parsed objects; the manifests source's parse time is not included).",
        a.changes
    );
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    let _ = writeln!(
        md,
        "\nIn this run: full sync under 1 s {}; RSS under 150 MB {}; one-change p99 under 1 ms {}.",
        met(agent.full_sync < Duration::from_secs(1)),
        met(agent.rss_mib * 1.048_576 < 150.0),
        met(agent.change_p99 < Duration::from_millis(1)),
    );
    print!("{md}");
    if let Some(out) = &a.out {
        std::fs::write(out, &md).with_context(|| format!("writing {out}"))?;
        eprintln!("wrote {out}");
    }
    Ok(())
}
