//! Data-plane benchmark (issue 3): numbers, not assertions.
//!
//! ```text
//! cargo run --release -p lb-agent --example dataplane_bench -- --out bench/results/dataplane.md [--quick]
//! ```
//!
//! 1. **Per-packet cost** of `lb_xdp` (NodePort, scope external) and `lb_tc_from_pod`
//!    (ClusterIP) with BPF_PROG_TEST_RUN, Katran's perf-tester method, at 1, 1k, 10k and
//!    100k Services, maps filled by the agent's own writer (`KernelMaps`). The kernel
//!    runs the program on one packet buffer `repeat` times *without resetting it*, so a
//!    packet the program rewrites is only timed with `repeat > 1` when the rewrite leads
//!    back to the same path (see `hot_established`); everything else is timed one run per
//!    syscall over many distinct packets, minus the timer overhead (see the report).
//! 2. **End to end** on the sandbox cluster (lb-tests): the same N Services as a
//!    kube-proxy-shaped iptables rule set (no agent) and as manifests read by lb-agent:
//!    TCP connect latency from a pod to the last Service's ClusterIP and sequential HTTP
//!    requests per second over new connections.
//! 3. The report (Markdown) and a plot (SVG) beside it.
//!
//! Everything created (pin directories, namespaces, processes) is removed on drop, also on
//! error; pin directories of dead runs are swept at start.
#![allow(
    clippy::cast_precision_loss,
    clippy::cast_sign_loss,
    clippy::many_single_char_names,
    reason = "a benchmark script: counts and timings in floating point, plot coordinates"
)]

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use aya::maps::{HashMap, MapData};
use aya::programs::{SchedClassifier, TestRun as _, TestRunOptions, Xdp};
use lb_agent::bpf::{
    Dataplane, LoadOptions, PROG_BENCH_CT_INSERT, PROG_TC_FROM_POD, PROG_XDP, PROG_XDP_PASS,
};
use lb_agent::maps::MapWriter as _;
use lb_agent::maps::kernel::KernelMaps;
use lb_agent::plan::MapOp;
use lb_common::maglev::{MaglevBackend, backend_identity, build_table};
use lb_common::{
    BackendValue, CT_F_SNAT, CtValue, DEFAULT_AFFINITY_SIZE, DEFAULT_CONNTRACK_SIZE,
    DEFAULT_MAGLEV_SIZE, DEFAULT_MAX_BACKENDS, DEFAULT_MAX_SERVICES, FlowKey, MAP_BACKENDS,
    MAP_CONNTRACK, NodeConfig, PROTO_TCP, Reason, SCOPE_EXTERNAL, SCOPE_INTERNAL, SVC_F_CLUSTER_IP,
    SVC_F_EXTERNAL_IP, SVC_F_NODEPORT, ServiceKey, ServiceValue,
};

#[path = "common/iptables.rs"]
mod iptables;

// ---------------------------------------------------------------------------------------
// Arguments and run sizes

struct Args {
    out: PathBuf,
    quick: bool,
    only: Only,
    build: bool,
}

/// Which parts to run (`--only`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Only {
    Both,
    Micro,
    E2e,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        out: PathBuf::from("bench/results/dataplane.md"),
        quick: false,
        only: Only::Both,
        build: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--out" => a.out = it.next().context("--out needs a file")?.into(),
            "--quick" => a.quick = true,
            "--no-build" => a.build = false,
            "--only" => match it.next().as_deref() {
                Some("micro") => a.only = Only::Micro,
                Some("e2e") => a.only = Only::E2e,
                other => bail!("--only micro|e2e, not {other:?}"),
            },
            other => bail!(
                "unknown flag {other}; usage: dataplane_bench [--out FILE.md] [--quick] [--only micro|e2e] [--no-build]"
            ),
        }
    }
    Ok(a)
}

/// How much to measure.
struct Cfg {
    /// Services for the per-packet runs.
    scales: Vec<u32>,
    /// `repeat` of one hot BPF_PROG_TEST_RUN, and how many such runs (median taken).
    repeat: u32,
    trials: u32,
    /// Distinct flows timed one run per syscall.
    flows: u32,
    /// Service entries of the ring the hot new-connection runs go round (`repeat` of
    /// those runs: one new connection per entry).
    ring: u32,
    /// Services for the end-to-end runs.
    e2e_scales: Vec<u32>,
    /// TCP connects and HTTP time per data plane and N, split over `rounds` alternating
    /// rounds.
    connects: usize,
    rate_time: Duration,
    rounds: u32,
}

impl Cfg {
    fn new(quick: bool) -> Self {
        if quick {
            Cfg {
                scales: vec![1, 1000],
                repeat: 100_000,
                trials: 3,
                flows: 1000,
                ring: 1024,
                e2e_scales: vec![100, 1000],
                connects: 300,
                rate_time: Duration::from_millis(600),
                rounds: 2,
            }
        } else {
            Cfg {
                scales: vec![1, 1000, 10_000, 100_000],
                repeat: 1_000_000,
                trials: 7,
                flows: 4000,
                ring: 4096,
                e2e_scales: vec![100, 1000, 10_000],
                connects: 3000,
                rate_time: Duration::from_secs(3),
                rounds: 4,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Packets (the builders of lb-agent/tests/bpf_fixtures.rs, trimmed to TCP)

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

fn be32(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

use lb_common::internet_checksum as csum;

/// Ethernet + IPv4 + TCP (no options, no payload) with valid checksums.
fn tcp(saddr: Ipv4Addr, sport: u16, daddr: Ipv4Addr, dport: u16, flags: u8) -> Vec<u8> {
    let mut l4 = Vec::with_capacity(20);
    l4.extend(sport.to_be_bytes());
    l4.extend(dport.to_be_bytes());
    l4.extend(1000_u32.to_be_bytes());
    l4.extend((if flags & ACK != 0 { 5000_u32 } else { 0 }).to_be_bytes());
    l4.extend([5 << 4, flags]);
    l4.extend(64240_u16.to_be_bytes());
    l4.extend([0, 0, 0, 0]);
    let mut pseudo = Vec::with_capacity(32);
    pseudo.extend(saddr.octets());
    pseudo.extend(daddr.octets());
    pseudo.extend([0, PROTO_TCP]);
    pseudo.extend((l4.len() as u16).to_be_bytes());
    pseudo.extend(&l4);
    let c = csum(&pseudo);
    l4[16..18].copy_from_slice(&c.to_be_bytes());

    let mut ip = vec![0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, 64, PROTO_TCP, 0, 0];
    ip[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    ip.extend(saddr.octets());
    ip.extend(daddr.octets());
    let c = csum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut frame = vec![0x02, 0, 0, 0, 0, 0x0b, 0x02, 0, 0, 0, 0, 0x0a, 0x08, 0x00];
    frame.extend(ip);
    frame.extend(l4);
    frame
}

/// (saddr, sport, daddr, dport) of an output frame.
fn tuple(f: &[u8]) -> (Ipv4Addr, u16, Ipv4Addr, u16) {
    let a = |o: usize| Ipv4Addr::new(f[o], f[o + 1], f[o + 2], f[o + 3]);
    let p = |o: usize| u16::from_be_bytes([f[o], f[o + 1]]);
    (a(26), p(34), a(30), p(36))
}

// ---------------------------------------------------------------------------------------
// 1. Per-packet cost

/// The agent's default Maglev table size; the same at every scale.
const M: u32 = DEFAULT_MAGLEV_SIZE;
/// Endpoints per Service.
const ENDPOINTS: u32 = 10;
/// Kubernetes' default NodePort range 30000-32767: at most this many NodePort entries.
const NODEPORT_MIN: u16 = 30_000;
const NODEPORT_RANGE: u32 = 2768;
/// The agent's SNAT port range (lb-agent/src/reconcile.rs).
const SNAT_PORT_MIN: u16 = 61_000;
const SNAT_PORT_MAX: u16 = 65_535;
/// Backend ids of the hand-made "mirror" conntrack entries of the hot established runs.
const MIRROR_TC: u32 = u32::MAX - 1;
const MIRROR_XDP: u32 = u32::MAX - 2;

// Addresses live only in the maps of this process's private pin directory: no interface
// carries them and no packet leaves BPF_PROG_TEST_RUN.
const NODE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const CLIENT_HOT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const POD: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 10);
const POD_HOT: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 11);
const CLIENT_ONE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
const POD_ONE: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 12);
const CLIENT_NEW: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 4);
const POD_NEW: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 13);

fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i)
}

fn backend_addr(i: u32, j: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i * ENDPOINTS + j)
}

fn backend_id(i: u32, j: u32) -> u32 {
    1 + i * ENDPOINTS + j
}

/// Address of entry `i` of the hot new-connection ring (see `Scale::ring`).
fn ring_addr(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 200, 0, 0)) + i)
}

/// Backend id of ring entry `i` (after every id of `n` Services).
fn ring_backend_id(n: u32, i: u32) -> u32 {
    backend_id(n, 0) + i
}

/// A well-spread service index for flow `k` among `n`.
fn spread(k: u32, n: u32) -> u32 {
    ((u64::from(k) * 2_654_435_761) % u64::from(n)) as u32
}

/// Removes this run's pins (maps and any links) when dropped.
struct PinGuard(PathBuf);

impl Drop for PinGuard {
    fn drop(&mut self) {
        let _ = lb_agent::bpf::detach_all(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Pin directories of earlier runs whose process is gone (killed before its guards ran).
fn sweep_stale_pins() {
    let Ok(entries) = std::fs::read_dir("/sys/fs/bpf") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("lbbench-") else {
            continue;
        };
        if let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok())
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = lb_agent::bpf::detach_all(&e.path());
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// One BPF_PROG_TEST_RUN: (verdict, kernel-measured mean ns per run, output size).
fn test_run(
    dp: &mut Dataplane,
    prog: &str,
    input: &[u8],
    repeat: u32,
    out: &mut [u8],
) -> anyhow::Result<(u32, u64, usize)> {
    let p = dp
        .ebpf()
        .program_mut(prog)
        .with_context(|| format!("program {prog} not in the object"))?;
    let opts = TestRunOptions {
        data_in: Some(input),
        data_out: Some(out),
        repeat,
        ..Default::default()
    };
    let r = if let Ok(x) = <&mut Xdp>::try_from(&mut *p) {
        x.test_run(opts)
    } else {
        <&mut SchedClassifier>::try_from(p)?.test_run(opts)
    }
    .map_err(|e| anyhow!("BPF_PROG_TEST_RUN of {prog}: {e}"))?;
    Ok((
        r.return_value,
        r.duration.as_nanos() as u64,
        r.data_size_out as usize,
    ))
}

/// A data plane loaded in a private pin directory with `n` Services programmed.
struct Scale {
    dp: Dataplane,
    maps: KernelMaps,
    n: u32,
    nodeports: u32,
    /// Entries of the hot new-connection ring.
    ring: u32,
    fill: Duration,
    // Last: removed after the maps and programs are closed.
    _pins: PinGuard,
}

impl Scale {
    /// Service `i` has a ClusterIP entry (lut id `i`) and, for the first 2768, a NodePort
    /// entry on the node address (lut id `n + i`); both over the same `ENDPOINTS`
    /// backends, on other nodes (so NodePort traffic is SNATed: the costlier path).
    ///
    /// Then, untimed, the `ring` entries of the hot new-connection runs (see `Scale::ring`).
    fn load(n: u32, ring: u32) -> anyhow::Result<Self> {
        sweep_stale_pins();
        let dir = PathBuf::from(format!("/sys/fs/bpf/lbbench-{}-{n}", std::process::id()));
        let pins = PinGuard(dir.clone());
        let nodeports = n.min(NODEPORT_RANGE);
        let opts = LoadOptions {
            bpffs_dir: dir.clone(),
            // Service entries: n + nodeports, and two per ring entry (one table each).
            max_services: DEFAULT_MAX_SERVICES.max(n + nodeports + 2 * ring + 16),
            max_backends: DEFAULT_MAX_BACKENDS.max((n + 1) * ENDPOINTS + ring + 16),
            maglev_size: M,
            conntrack_size: DEFAULT_CONNTRACK_SIZE,
            affinity_size: DEFAULT_AFFINITY_SIZE,
        };
        let dp = Dataplane::load(&opts).context(
            "loading the data plane (needs root, BPF, BTF and bpffs; see lb-agent/tests/bpf_fixtures.rs)",
        )?;
        let mut maps = KernelMaps::open_pinned(&dir)?;
        maps.set_config(&NodeConfig {
            node_addr_be: be32(NODE),
            maglev_size: M,
            netns_cookie: 0,
            snat_port_min: SNAT_PORT_MIN,
            snat_port_max: SNAT_PORT_MAX,
            ready: 1,
        })?;
        let started = Instant::now();
        for i in 0..n {
            let mut mb = Vec::with_capacity(ENDPOINTS as usize);
            for j in 0..ENDPOINTS {
                let value = BackendValue {
                    addr_be: be32(backend_addr(i, j)),
                    port_be: 8080_u16.to_be(),
                    proto: PROTO_TCP,
                    flags: 0,
                };
                let id = backend_id(i, j);
                maps.apply(&MapOp::PutBackend { id, value })?;
                mb.push(MaglevBackend {
                    identity: backend_identity(value.addr_be, value.port_be),
                    id,
                    weight: 1,
                });
            }
            let table = build_table(&mb, M);
            let mut entries = vec![(
                i,
                ServiceKey {
                    addr_be: be32(vip(i)),
                    port_be: 80_u16.to_be(),
                    proto: PROTO_TCP,
                    scope: SCOPE_INTERNAL,
                },
                SVC_F_CLUSTER_IP,
            )];
            if i < nodeports {
                entries.push((
                    n + i,
                    ServiceKey {
                        addr_be: be32(NODE),
                        port_be: (NODEPORT_MIN + i as u16).to_be(),
                        proto: PROTO_TCP,
                        scope: SCOPE_EXTERNAL,
                    },
                    SVC_F_NODEPORT,
                ));
            }
            for (lut_id, key, flags) in entries {
                let slots = table
                    .iter()
                    .enumerate()
                    .map(|(s, id)| (s as u32, *id))
                    .collect();
                maps.apply(&MapOp::PutSlots { lut_id, slots })?;
                let value = ServiceValue {
                    lut_id,
                    backend_count: ENDPOINTS,
                    flags,
                    affinity_timeout_s: 0,
                };
                maps.apply(&MapOp::PutService { key, value })?;
            }
        }
        let fill = started.elapsed();
        // The ring: entry i is a Service at ring_addr(i):80 (a ClusterIP entry for the
        // TC runs and an external one, as for an externalIP, for the XDP runs; one
        // table), whose one endpoint, on another node, is the next entry's address.
        for i in 0..ring {
            let id = ring_backend_id(n, i);
            let value = BackendValue {
                addr_be: be32(ring_addr((i + 1) % ring)),
                port_be: 80_u16.to_be(),
                proto: PROTO_TCP,
                flags: 0,
            };
            maps.apply(&MapOp::PutBackend { id, value })?;
            let lut_id = n + nodeports + i;
            let slots = (0..M).map(|s| (s, id)).collect();
            maps.apply(&MapOp::PutSlots { lut_id, slots })?;
            for (scope, flags) in [
                (SCOPE_INTERNAL, SVC_F_CLUSTER_IP),
                (SCOPE_EXTERNAL, SVC_F_EXTERNAL_IP),
            ] {
                let key = ServiceKey {
                    addr_be: be32(ring_addr(i)),
                    port_be: 80_u16.to_be(),
                    proto: PROTO_TCP,
                    scope,
                };
                let value = ServiceValue {
                    lut_id,
                    backend_count: 1,
                    flags,
                    affinity_timeout_s: 0,
                };
                maps.apply(&MapOp::PutService { key, value })?;
            }
        }
        Ok(Scale {
            dp,
            maps,
            n,
            nodeports,
            ring,
            fill,
            _pins: pins,
        })
    }

    fn reasons(&self) -> anyhow::Result<Vec<u64>> {
        self.maps.reasons()
    }
}

/// `flows` distinct TCP flows of `hook`'s kind: to service entry `svc(k)`, from
/// source address `src` (distinct sets get distinct sources), source port 10000 + k.
fn flows(
    hook: Hook,
    src: Ipv4Addr,
    flows: u32,
    flags: u8,
    svc: &dyn Fn(u32) -> u32,
) -> Vec<Vec<u8>> {
    (0..flows)
        .map(|k| {
            let sport = 10_000 + k as u16;
            match hook {
                Hook::Tc => tcp(src, sport, vip(svc(k)), 80, flags),
                Hook::Xdp => tcp(src, sport, NODE, NODEPORT_MIN + svc(k) as u16, flags),
            }
        })
        .collect()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Hook {
    Xdp,
    Tc,
}

impl Hook {
    fn prog(self) -> &'static str {
        match self {
            Hook::Xdp => PROG_XDP,
            Hook::Tc => PROG_TC_FROM_POD,
        }
    }
}

/// Kernel-reported ns of many one-run BPF_PROG_TEST_RUNs.
#[derive(Clone, Copy, Default)]
struct Stats {
    mean: f64,
    p50: f64,
    p90: f64,
}

impl Stats {
    fn of(mut v: Vec<u64>) -> Self {
        v.sort_unstable();
        let q = |p: f64| {
            v.get(((v.len().max(1) - 1) as f64 * p) as usize)
                .map_or(0.0, |&x| x as f64)
        };
        Stats {
            mean: v.iter().sum::<u64>() as f64 / v.len().max(1) as f64,
            p50: q(0.5),
            p90: q(0.9),
        }
    }
}

/// What one program measured at one scale (ns per packet).
#[derive(Clone, Default)]
struct HookResult {
    /// Not-a-service packet, `repeat` runs on one buffer (least disturbed of the trials).
    pass_hot: f64,
    /// Established flow, `repeat` runs on one buffer (every run a conntrack hit and a full
    /// rewrite; see `hot_established`).
    est_hot: f64,
    /// New connection, `ring` runs on one buffer, every run a new connection to another
    /// ring entry (least disturbed of the trials; see `Scale::hot_new`).
    new_hot: f64,
    /// One run per syscall over distinct packets (raw: the timer's overhead included):
    /// not a service; new and established flows all to one service entry; the same
    /// spread over all entries.
    pass_1: Stats,
    new_one: Stats,
    est_one: Stats,
    new_all: Stats,
    est_all: Stats,
    /// Service entries the spread flows went to.
    spread_over: u32,
    /// What the reason counters said when they did not match the intended path.
    notes: Vec<String>,
}

struct ScaleResult {
    n: u32,
    fill: Duration,
    /// Timer overhead of one run per syscall: `lb_xdp_pass` (returns at once) timed one
    /// run per syscall (median) minus the same with `repeat` on one buffer.
    overhead: f64,
    /// Busy fraction of all CPUs just before measuring (other work on the machine).
    busy_before: f64,
    /// `lb_bench_ct_insert`, `ring` runs on one buffer: one insert of a fresh key into the
    /// conntrack map per run (a new connection does two such inserts).
    ct_insert: f64,
    xdp: HookResult,
    tc: HookResult,
}

impl Scale {
    /// Checks that `delta` of reason `r` equals `expected`; a note otherwise.
    fn check(
        &self,
        before: &[u64],
        r: Reason,
        expected: u64,
        what: &str,
        notes: &mut Vec<String>,
    ) -> anyhow::Result<()> {
        let after = self.reasons()?;
        let got = after[r as usize] - before[r as usize];
        if got != expected {
            notes.push(format!(
                "{what}: {got} of {expected} runs counted as {}",
                r.name()
            ));
        }
        Ok(())
    }

    /// `trials` runs of `repeat` on one buffer; the kernel's ns per run of the least
    /// disturbed one (other work on the machine only ever adds time).
    fn hot(&mut self, prog: &str, pkt: &[u8], repeat: u32, trials: u32) -> anyhow::Result<f64> {
        let mut out = [0_u8; 256];
        let mut best = u64::MAX;
        for _ in 0..trials {
            let (_, ns, _) = test_run(&mut self.dp, prog, pkt, repeat, &mut out)?;
            best = best.min(ns);
        }
        Ok(best as f64)
    }

    /// One run per syscall over `pkts`: the kernel's ns per packet.
    fn per_packet(&mut self, prog: &str, pkts: &[Vec<u8>]) -> anyhow::Result<Stats> {
        let mut out = [0_u8; 256];
        let mut all = Vec::with_capacity(pkts.len());
        for p in pkts {
            all.push(test_run(&mut self.dp, prog, p, 1, &mut out)?.1);
        }
        Ok(Stats::of(all))
    }

    /// Sets up an established flow whose rewrite leads back to itself, so that every one of
    /// `repeat` runs on the same buffer is a conntrack hit with a full rewrite: the flow
    /// is opened for real (a SYN through the program), then a "mirror" conntrack entry
    /// for the rewritten tuple points back at the original destination (a backend entry
    /// holding the service address). Runs alternate flow / mirror; both do the same work
    /// (reverse-NAT miss, conntrack hit, backend lookup, counters, rewrite of the same
    /// fields). Returns the ACK packet to repeat.
    fn hot_established(&mut self, hook: Hook) -> anyhow::Result<Vec<u8>> {
        let (src, dst, dport, mirror, lut_id) = match hook {
            Hook::Tc => (POD_HOT, vip(self.n - 1), 80, MIRROR_TC, self.n - 1),
            Hook::Xdp => {
                let np = self.nodeports - 1;
                (
                    CLIENT_HOT,
                    NODE,
                    NODEPORT_MIN + np as u16,
                    MIRROR_XDP,
                    self.n + np,
                )
            }
        };
        let mut out = [0_u8; 256];
        let syn = tcp(src, 7000, dst, dport, SYN);
        let (_, _, len) = test_run(&mut self.dp, hook.prog(), &syn, 1, &mut out)?;
        let (s2, sp2, d2, dp2) = tuple(&out[..len]);
        anyhow::ensure!(
            d2 != dst,
            "{}: the SYN was not translated ({s2}:{sp2} -> {d2}:{dp2})",
            hook.prog()
        );
        let snat = hook == Hook::Xdp;
        let mut backends: HashMap<&mut MapData, u32, BackendValue> = HashMap::try_from(
            self.dp
                .ebpf()
                .map_mut(MAP_BACKENDS)
                .context("backends map")?,
        )?;
        backends.insert(
            mirror,
            BackendValue {
                addr_be: be32(dst),
                port_be: dport.to_be(),
                proto: PROTO_TCP,
                flags: 0,
            },
            0,
        )?;
        let mut ct: HashMap<&mut MapData, FlowKey, CtValue> = HashMap::try_from(
            self.dp
                .ebpf()
                .map_mut(MAP_CONNTRACK)
                .context("conntrack map")?,
        )?;
        let key = FlowKey {
            saddr_be: be32(s2),
            daddr_be: be32(d2),
            sport_be: sp2.to_be(),
            dport_be: dp2.to_be(),
            proto: PROTO_TCP,
            _pad: [0; 3],
        };
        let value = CtValue {
            backend_id: mirror,
            lut_id,
            snat_addr_be: be32(src),
            snat_port_be: 7000_u16.to_be(),
            _pad: 0,
            flags: if snat { CT_F_SNAT } else { 0 },
            _pad2: 0,
            last_seen_ns: 0,
        };
        ct.insert(key, value, 0)?;
        Ok(tcp(src, 7000, dst, dport, ACK))
    }

    /// New connections timed the hot way: each rewrite of a SYN by the program leads to the
    /// next ring entry (its one endpoint is the next entry's address), so each of `ring`
    /// runs on one buffer is a full new connection: conntrack miss, service lookup,
    /// Maglev pick, reverse-NAT insert (XDP: SNAT port allocation, the endpoint being on
    /// another node), conntrack insert, counters and rewrite, on a different service
    /// entry every time. Trial t starts from source port 7000 + t, so every trial's
    /// tuples are new too. The least disturbed trial's ns per run.
    fn hot_new(&mut self, hook: Hook, trials: u32, notes: &mut Vec<String>) -> anyhow::Result<f64> {
        let src = match hook {
            Hook::Xdp => CLIENT_NEW,
            Hook::Tc => POD_NEW,
        };
        let before = self.reasons()?;
        let mut out = [0_u8; 256];
        let mut best = u64::MAX;
        for t in 0..trials {
            let syn = tcp(src, 7000 + t as u16, ring_addr(0), 80, SYN);
            let (_, ns, len) = test_run(&mut self.dp, hook.prog(), &syn, self.ring, &mut out)?;
            anyhow::ensure!(
                tuple(&out[..len]).2 == ring_addr(0),
                "{}: the ring did not go round (ended at {:?})",
                hook.prog(),
                tuple(&out[..len])
            );
            best = best.min(ns);
        }
        self.check(
            &before,
            Reason::NatNew,
            u64::from(self.ring) * u64::from(trials),
            "new connection (hot)",
            notes,
        )?;
        Ok(best as f64)
    }

    /// New connections (SYNs) then the same flows established (ACKs), one run each.
    fn new_then_established(
        &mut self,
        prog: &str,
        syns: &[Vec<u8>],
        acks: &[Vec<u8>],
        what: &str,
        notes: &mut Vec<String>,
    ) -> anyhow::Result<(Stats, Stats)> {
        let k = syns.len() as u64;
        let before = self.reasons()?;
        let new = self.per_packet(prog, syns)?;
        self.check(
            &before,
            Reason::NatNew,
            k,
            &format!("new connection, {what}"),
            notes,
        )?;
        let before = self.reasons()?;
        let est = self.per_packet(prog, acks)?;
        self.check(
            &before,
            Reason::NatEstablished,
            k,
            &format!("established, {what}"),
            notes,
        )?;
        Ok((new, est))
    }

    fn bench(&mut self, hook: Hook, cfg: &Cfg) -> anyhow::Result<HookResult> {
        let prog = hook.prog();
        let mut r = HookResult::default();
        let k = cfg.flows;
        // ssh to the node / pod-to-pod traffic: no service.
        let (pass_pkt, pass_pkts): (Vec<u8>, Vec<Vec<u8>>) = match hook {
            Hook::Xdp => (
                tcp(CLIENT, 9, NODE, 22, ACK),
                (0..k)
                    .map(|i| tcp(CLIENT, 10_000 + i as u16, NODE, 22, ACK))
                    .collect(),
            ),
            Hook::Tc => {
                let other = Ipv4Addr::new(10, 244, 1, 10);
                (
                    tcp(POD, 9, other, 8080, ACK),
                    (0..k)
                        .map(|i| tcp(POD, 10_000 + i as u16, other, 8080, ACK))
                        .collect(),
                )
            }
        };
        let before = self.reasons()?;
        r.pass_hot = self.hot(prog, &pass_pkt, cfg.repeat, cfg.trials)?;
        r.pass_1 = self.per_packet(prog, &pass_pkts)?;
        self.check(
            &before,
            Reason::PassNotService,
            u64::from(cfg.repeat) * u64::from(cfg.trials) + u64::from(k),
            "not a service",
            &mut r.notes,
        )?;

        // Distinct flows to one service entry (the last), then spread over all of them.
        let (entries, src_one, src_all) = match hook {
            Hook::Tc => (self.n, POD_ONE, POD),
            Hook::Xdp => (self.nodeports, CLIENT_ONE, CLIENT),
        };
        r.spread_over = entries;
        let last = move |_: u32| entries - 1;
        let all = move |i: u32| spread(i, entries);
        let mut notes = Vec::new();
        let syns = flows(hook, src_one, k, SYN, &last);
        let acks = flows(hook, src_one, k, ACK, &last);
        (r.new_one, r.est_one) =
            self.new_then_established(prog, &syns, &acks, "one service", &mut notes)?;
        let syns = flows(hook, src_all, k, SYN, &all);
        let acks = flows(hook, src_all, k, ACK, &all);
        (r.new_all, r.est_all) =
            self.new_then_established(prog, &syns, &acks, "spread", &mut notes)?;
        r.notes.append(&mut notes);

        r.new_hot = self.hot_new(hook, cfg.trials, &mut r.notes)?;

        let ack = self.hot_established(hook)?;
        let before = self.reasons()?;
        r.est_hot = self.hot(prog, &ack, cfg.repeat, cfg.trials)?;
        self.check(
            &before,
            Reason::NatEstablished,
            u64::from(cfg.repeat) * u64::from(cfg.trials),
            "established (hot)",
            &mut r.notes,
        )?;
        Ok(r)
    }
}

struct Micro {
    scales: Vec<ScaleResult>,
    /// `lb_xdp_pass` (returns at once), `repeat` on one buffer: the floor of the method.
    floor_ns: f64,
}

impl ScaleResult {
    fn hook(&self, hook: Hook) -> &HookResult {
        match hook {
            Hook::Xdp => &self.xdp,
            Hook::Tc => &self.tc,
        }
    }

    /// Median of one run per syscall, minus the timer overhead.
    fn net(&self, st: Stats) -> f64 {
        st.p50 - self.overhead
    }
}

/// Runs the rest of the process's current thread on one CPU (BPF_PROG_TEST_RUN runs the
/// program on the calling CPU: no migration between runs); restores the old mask on drop.
struct Pinned(Option<libc::cpu_set_t>);

impl Pinned {
    fn to_last_cpu() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        // SAFETY: cpu_set_t is plain data; the calls get its exact size and only read or
        // write that set, for the calling thread (pid 0).
        unsafe {
            let mut old: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw mut old) != 0
            {
                return Pinned(None);
            }
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpus - 1, &mut one);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw const one)
                != 0
            {
                return Pinned(None);
            }
            Pinned(Some(old))
        }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if let Some(old) = self.0.take() {
            // SAFETY: as above, restoring the mask read before.
            unsafe {
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw const old);
            }
        }
    }
}

fn micro(cfg: &Cfg) -> anyhow::Result<Micro> {
    let _pinned = Pinned::to_last_cpu();
    let mut scales = Vec::new();
    let mut floor_ns = 0.0;
    for &n in &cfg.scales {
        eprintln!("[micro] {n} Services: filling the maps...");
        let mut s = Scale::load(n, cfg.ring)?;
        eprintln!("[micro] {n} Services: filled in {:.1?}", s.fill);
        let busy_before = wait_quiet(Duration::from_secs(10));
        let p = tcp(CLIENT, 9, NODE, 22, ACK);
        let floor_hot = s.hot(PROG_XDP_PASS, &p, cfg.repeat, cfg.trials)?;
        let pkts: Vec<Vec<u8>> = (0..cfg.flows)
            .map(|k| tcp(CLIENT, 10_000 + k as u16, NODE, 22, ACK))
            .collect();
        let floor_1 = s.per_packet(PROG_XDP_PASS, &pkts)?;
        if floor_ns == 0.0 {
            floor_ns = floor_hot;
        }
        let xdp = s.bench(Hook::Xdp, cfg)?;
        let tc = s.bench(Hook::Tc, cfg)?;
        let ct_insert = s.hot(PROG_BENCH_CT_INSERT, &p, cfg.ring, cfg.trials)?;
        let r = ScaleResult {
            n,
            fill: s.fill,
            overhead: floor_1.p50 - floor_hot,
            busy_before,
            ct_insert,
            xdp,
            tc,
        };
        eprintln!(
            "[micro] {n} Services: one conntrack insert (hot) {:.0} ns",
            r.ct_insert
        );
        for (name, h) in [("XDP", &r.xdp), ("TC", &r.tc)] {
            eprintln!(
                "[micro] {n} Services, {name}: hot pass {:.0} est {:.0} new {:.0} | per flow (timer overhead {:.0} off): one service new {:.0} est {:.0}, spread new {:.0} est {:.0}, pass {:.0} ns",
                h.pass_hot,
                h.est_hot,
                h.new_hot,
                r.overhead,
                r.net(h.new_one),
                r.net(h.est_one),
                r.net(h.new_all),
                r.net(h.est_all),
                r.net(h.pass_1)
            );
        }
        scales.push(r);
    }
    Ok(Micro { scales, floor_ns })
}

// ---------------------------------------------------------------------------------------
// 2. End to end on the sandbox cluster

/// Endpoints of every benchmark Service: the seed app's backend pods.
const E2E_BACKENDS: [&str; 3] = ["backend-0", "backend-1", "backend-2"];
/// The pod that sends to the Services (node-0).
const E2E_CLIENT_POD: &str = "frontend-0";
/// The pod that sends the reference connects straight to a pod (node-0 too). Another pod
/// than the one above: see `e2e_report` (a port reused after a Service connection).
const E2E_DIRECT_CLIENT_POD: &str = "frontend-2";
/// Agent capacities for up to 10k Services (the same for every run on one sandbox).
const E2E_AGENT_FLAGS: [&str; 4] = ["--max-services", "16384", "--max-backends", "65536"];

/// ClusterIP of Service `i` of `n`: 10.96.1.0 and up (the seed app's are in
/// 10.96.0.0/24), numbered from the end, so that the last Service (the measured one) has
/// the same address at every N: the client's TCP timestamps towards it stay monotonic
/// across the runs (see `e2e_report`).
fn e2e_vip(n: u32, i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 1, 0)) + (n - 1 - i))
}

/// What one data plane measured at one N, pooled over the rounds.
#[derive(Clone, Default)]
struct Measure {
    /// Connect times.
    lat: Vec<Duration>,
    /// HTTP requests answered 200, and the time spent sending them.
    requests: usize,
    rate_time: Duration,
    errors: usize,
    /// Pods that answered the HTTP requests (the Service's endpoints, if balanced).
    answered_by: BTreeSet<String>,
}

impl Measure {
    fn merge(&mut self, o: Measure) {
        self.lat.extend(o.lat);
        self.requests += o.requests;
        self.rate_time += o.rate_time;
        self.errors += o.errors;
        self.answered_by.extend(o.answered_by);
    }

    fn connect_us(&self, p: f64) -> f64 {
        let mut v = self.lat.clone();
        v.sort();
        percentile(&v, p).as_secs_f64() * 1e6
    }

    fn p50_us(&self) -> f64 {
        self.connect_us(0.5)
    }

    fn p99_us(&self) -> f64 {
        self.connect_us(0.99)
    }

    fn rps(&self) -> f64 {
        self.requests as f64 / self.rate_time.as_secs_f64().max(1e-9)
    }
}

#[derive(Clone, Default)]
struct E2eRow {
    n: u32,
    rules: usize,
    restore: Duration,
    agent_ready: Duration,
    /// Busy fraction of all CPUs just before measuring (other work on the machine).
    busy_before: f64,
    ipt: Measure,
    agent: Measure,
    /// Connects straight to a backend pod's address (no Service) in each sandbox.
    ipt_direct: Measure,
    agent_direct: Measure,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// (busy, total) jiffies of all CPUs from /proc/stat.
fn cpu_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Waits (at most `max`) until the machine is quiet: all CPUs together less than 25% busy
/// over half a second. Other work on a shared machine disturbs every number here; this
/// returns the busy fraction last seen, for the report.
fn wait_quiet(max: Duration) -> f64 {
    let deadline = Instant::now() + max;
    loop {
        let (b0, t0) = cpu_jiffies();
        std::thread::sleep(Duration::from_millis(500));
        let (b1, t1) = cpu_jiffies();
        let busy = (b1 - b0) as f64 / (t1 - t0).max(1) as f64;
        if busy < 0.25 || Instant::now() > deadline {
            return busy;
        }
    }
}

/// One round, in the client pod's network namespace: `connects` TCP connects, then
/// sequential HTTP requests for `rate_time`.
fn measure_here(targets: &[SocketAddr], connects: usize, rate_time: Duration) -> Measure {
    let mut m = Measure::default();
    for target in targets.iter().cycle().take(connects) {
        let t = Instant::now();
        // A connect not answered within 1 s (the first SYN was lost) counts as an error.
        match TcpStream::connect_timeout(target, Duration::from_secs(1)) {
            Ok(s) => {
                m.lat.push(t.elapsed());
                drop(s);
            }
            Err(_) => m.errors += 1,
        }
    }
    let started = Instant::now();
    while started.elapsed() < rate_time {
        match lb_tests::HttpRequest::get(targets[0], "/")
            .timeout(Duration::from_secs(2))
            .send()
        {
            Ok(r) if r.status == 200 => {
                m.requests += 1;
                if let Ok(p) = r.pod() {
                    m.answered_by.insert(p);
                }
            }
            _ => m.errors += 1,
        }
    }
    m.rate_time = started.elapsed();
    m
}

fn target(n: u32) -> SocketAddr {
    SocketAddr::from((e2e_vip(n, n - 1), 80))
}

/// Waits (up to 10 s) until the last Service answers from the client pod.
fn warm_up(sb: &lb_tests::Sandbox, n: u32) -> anyhow::Result<()> {
    let ns = sb.pod(E2E_CLIENT_POD).ns.clone();
    let ok = sb.in_ns(&ns, || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = lb_tests::HttpRequest::get(target(n), "/")
                .timeout(Duration::from_secs(1))
                .send();
            if r.is_ok() || Instant::now() > deadline {
                return r.is_ok();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })?;
    anyhow::ensure!(ok, "{} does not answer from {ns}", target(n));
    Ok(())
}

/// One round from pod `from` to `to` (connects cycle through them; requests go to the
/// first).
fn measure(
    sb: &lb_tests::Sandbox,
    from: &str,
    to: &[SocketAddr],
    connects: usize,
    rate: Duration,
) -> anyhow::Result<Measure> {
    let ns = sb.pod(from).ns.clone();
    sb.in_ns(&ns, || measure_here(to, connects, rate))
}

/// Many sequential connections from one pod: a wide port range and TIME_WAIT reuse, in
/// the pod's namespace only.
fn tune_client(sb: &lb_tests::Sandbox) -> anyhow::Result<()> {
    for pod in [E2E_CLIENT_POD, E2E_DIRECT_CLIENT_POD] {
        lb_tests::netns::sysctls(
            &sb.pod(pod).ns,
            &[
                ("net/ipv4/ip_local_port_range".into(), "1024 65535"),
                ("net/ipv4/tcp_tw_reuse".into(), "1"),
            ],
        )?;
    }
    Ok(())
}

fn e2e_endpoint(sb: &lb_tests::Sandbox, j: u32) -> Ipv4Addr {
    sb.pod(E2E_BACKENDS[j as usize]).ip
}

fn iptables_restore(ns: &str, rules: &str) -> anyhow::Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "iptables-restore", "-w"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("iptables-restore (apt-get install iptables)")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(rules.as_bytes())?;
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "iptables-restore in {ns} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn services_yaml(sb: &lb_tests::Sandbox, n: u32) -> String {
    use lb_tests::manifests::{SliceEndpoint, SlicePort, endpoint_slice_yaml};
    let eps: Vec<SliceEndpoint> = E2E_BACKENDS
        .iter()
        .map(|p| {
            let pod = sb.pod(p);
            SliceEndpoint::ready(&pod.spec, pod.ip)
        })
        .collect();
    let ports = [SlicePort {
        name: "http",
        protocol: "TCP",
        port: 8080,
    }];
    let mut y = String::new();
    for i in 0..n {
        let vip = e2e_vip(n, i);
        let _ = write!(
            y,
            "apiVersion: v1
kind: Service
metadata:
  name: svc-{i}
  namespace: default
spec:
  type: ClusterIP
  clusterIP: {vip}
  clusterIPs:
    - {vip}
  ports:
    - name: http
      protocol: TCP
      port: 80
      targetPort: 8080
---
{}---
",
            endpoint_slice_yaml(&format!("svc-{i}-bench"), &format!("svc-{i}"), &ports, &eps)
        );
    }
    y
}

fn e2e(cfg: &Cfg) -> anyhow::Result<Vec<E2eRow>> {
    // Two sandboxes side by side, one per data plane, measured in alternating rounds so
    // that both see the same background load. The iptables one never runs an agent; the
    // agent one never has an iptables rule.
    eprintln!("[e2e] building the sandboxes (iptables, lb-agent)...");
    let ipt_sb = lb_tests::Sandbox::builder().seed_app().build()?;
    let agent_sb = lb_tests::Sandbox::builder().seed_app().build()?;
    tune_client(&ipt_sb)?;
    tune_client(&agent_sb)?;
    let mut rows = Vec::new();
    for &n in &cfg.e2e_scales {
        let mut row = E2eRow {
            n,
            ..E2eRow::default()
        };
        let endpoint = |_: u32, j: u32| e2e_endpoint(&ipt_sb, j);
        let rules = iptables::render(
            &iptables::RuleSet {
                services: n,
                endpoints: E2E_BACKENDS.len() as u32,
                namespace: "default",
                port: 80,
                target_port: 8080,
                vip: &|i| e2e_vip(n, i),
                endpoint: &endpoint,
                portal_jumps: true,
            },
            None,
        );
        row.rules = rules.lines().filter(|l| l.starts_with("-A")).count();
        let t = Instant::now();
        for node in ipt_sb.nodes() {
            iptables_restore(&node.ns, &rules)?;
        }
        row.restore = t.elapsed() / ipt_sb.nodes().len() as u32;
        drop(rules);

        agent_sb.write_manifest("bench-services.yaml", &services_yaml(&agent_sb, n))?;
        let t = Instant::now();
        let agents = (0..agent_sb.nodes().len())
            .map(|i| agent_sb.start_agent(i, &E2E_AGENT_FLAGS))
            .collect::<anyhow::Result<Vec<_>>>()?;
        for a in &agents {
            a.wait_for_log("first sync programmed", Duration::from_mins(3))?;
        }
        row.agent_ready = t.elapsed();
        warm_up(&ipt_sb, n)?;
        warm_up(&agent_sb, n)?;
        row.busy_before = wait_quiet(Duration::from_secs(15));
        let rounds = cfg.rounds.max(1);
        let connects = cfg.connects / rounds as usize;
        let rate = cfg.rate_time / rounds;
        for round in 0..rounds {
            let mut order = [(&ipt_sb, false), (&agent_sb, true)];
            if round % 2 == 1 {
                order.reverse();
            }
            for (sb, is_agent) in order {
                let m = measure(sb, E2E_CLIENT_POD, &[target(n)], connects, rate)?;
                let direct: Vec<SocketAddr> =
                    E2E_BACKENDS.iter().map(|p| sb.pod(p).http_addr()).collect();
                let d = measure(sb, E2E_DIRECT_CLIENT_POD, &direct, connects, Duration::ZERO)?;
                if is_agent {
                    row.agent.merge(m);
                    row.agent_direct.merge(d);
                } else {
                    row.ipt.merge(m);
                    row.ipt_direct.merge(d);
                }
            }
        }
        for (name, m, d) in [
            ("iptables", &row.ipt, &row.ipt_direct),
            ("lb-agent", &row.agent, &row.agent_direct),
        ] {
            eprintln!(
                "[e2e] {n} Services, {name}: connect p50 {:.0} us p99 {:.0} us (direct to a pod {:.0} / {:.0}), {:.0} req/s, {} errors (CPUs {:.0}% busy before)",
                m.p50_us(),
                m.p99_us(),
                d.p50_us(),
                d.p99_us(),
                m.rps(),
                m.errors + d.errors,
                row.busy_before * 100.0
            );
        }
        // A restart with the next manifests reuses the pinned maps (same capacities).
        for a in agents {
            a.stop(Duration::from_secs(5))?;
        }
        rows.push(row);
    }
    Ok(rows)
}

/// Builds the agent and the pod server (the sandbox finds them beside this example's
/// directory, `target/<profile>/`).
fn build_binaries() -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?;
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root).args([
        "build",
        "-p",
        "lb-agent",
        "--bin",
        "lb-agent",
        "-p",
        "lb-tests",
        "--bin",
        "lb-podserver",
    ]);
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    eprintln!("[e2e] {cmd:?}");
    anyhow::ensure!(
        cmd.status()?.success(),
        "building lb-agent/lb-podserver failed"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 3. Report

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn cpu_model() -> String {
    let lscpu = sh("lscpu", &[]);
    lscpu
        .lines()
        .find(|l| l.starts_with("Model name:"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_owned())
        .or_else(|| {
            std::fs::read_to_string("/proc/cpuinfo")
                .ok()?
                .lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into())
}

fn human(n: u32) -> String {
    match n {
        n if n >= 1000 && n % 1000 == 0 => format!("{}k", n / 1000),
        n => n.to_string(),
    }
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "-".into()
    }
}

fn report(args: &Args, cfg: &Cfg, micro: Option<&Micro>, e2e: Option<&[E2eRow]>) -> String {
    let mut md = String::new();
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let _ = writeln!(md, "# Data-plane benchmark\n");
    let _ = writeln!(
        md,
        "Machine: {}, {cores} cores. Kernel {}. Date {}. {}.\n",
        cpu_model(),
        sh("uname", &["-r"]),
        sh("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        sh("iptables", &["-V"])
    );
    let _ = writeln!(
        md,
        "Command: `cargo run --release -p lb-agent --example dataplane_bench -- --out {}{}` \
         (lb-agent/examples/dataplane_bench.rs). Numbers only: nothing is asserted.\n",
        args.out.display(),
        if args.quick { " --quick" } else { "" }
    );
    if let Some(m) = micro {
        micro_report(&mut md, cfg, m);
    }
    if let Some(rows) = e2e {
        e2e_report(&mut md, cfg, rows);
    }
    let svg = args.out.with_extension("svg");
    if let Some(name) = svg.file_name() {
        let _ = writeln!(
            md,
            "## Plot\n\n![cost against Services]({})\n",
            name.display()
        );
    }
    md
}

/// One number of a scale's results, for the target table.
type Pick = fn(&ScaleResult, Hook) -> f64;

fn micro_report(md: &mut String, cfg: &Cfg, m: &Micro) {
    let _ = writeln!(md, "## 1. Per-packet cost (BPF_PROG_TEST_RUN)\n");
    let _ = writeln!(
        md,
        "Programs `lb_xdp` (XDP on the external interface; NodePort, scope external) and \
         `lb_tc_from_pod` (TC on the pod veth; ClusterIP) run in the kernel on crafted \
         Ethernet/IPv4/TCP frames; the kernel reports the mean duration per run (integer ns). \
         Each Service has {ENDPOINTS} endpoints on other nodes (so NodePort flows are SNATed, \
         the costlier path), a ClusterIP entry and, for the first {NODEPORT_RANGE} Services \
         (the size of Kubernetes' default NodePort range), a NodePort entry: 100k Services \
         are 100k + {NODEPORT_RANGE} service entries and 1M backends. Maglev table size \
         M = {M} (the agent's default) at every scale; map capacities are max(agent default, \
         what the scale needs), so 100k Services need `--max-services 102800 --max-backends \
         1000016` on the agent (the LB_MAGLEV array is then ~840 MB of kernel memory). The \
         maps are filled by the agent's own writer (`KernelMaps`; Maglev slots through the \
         mmapped array). The benchmark thread is pinned to one CPU, and each scale is \
         measured once the CPUs are quiet (< 25% busy, waited up to 10 s; the details table \
         gives what was seen).\n"
    );
    let _ = writeln!(
        md,
        "Two ways of timing, because the kernel runs `repeat` times on **one buffer without \
         resetting it** (a packet the program rewrites would be timed on its rewritten self \
         from the second run on, i.e. on another path):\n\n\
         - **hot** (Katran's perf-tester method): `repeat` = {} on one buffer, the least \
           disturbed of {} such runs (other work on this shared machine only adds time); \
           caches warm. Valid for a packet that stays on its path: **pass** (a packet for no \
           service: TCP to the node's port 22 / pod-to-pod; left unchanged) and \
           **established**: a real flow is opened by a SYN through the program, then a \
           hand-made mirror conntrack entry maps the rewritten tuple back to the original \
           destination, so runs alternate flow / mirror and every run is a full established \
           translation (reverse-NAT miss, conntrack hit, backend lookup, counters, rewrite; \
           XDP: DNAT + SNAT of 4 fields, TC: DNAT of 2). **new** (hot): a ring of {} \
           extra service entries (added after the N Services, outside their fill time), \
           entry i at 10.200.0.i:80 with one endpoint on another node whose address is \
           entry i+1's (a ClusterIP entry for TC, an externalIP entry for XDP, one Maglev \
           table); a SYN to entry 0 run `repeat` = {} times on one buffer goes once round \
           the ring, each run a full new connection on another entry (conntrack miss, \
           service lookup, Maglev pick, reverse-NAT insert (XDP: SNAT port allocation), \
           conntrack insert, counters, rewrite) into tables that grow by one flow per run; \
           trial t starts from source port 7000 + t, so no trial meets another's entries; \
           the least disturbed of {} trials.\n\
         - **per flow**: one run per BPF_PROG_TEST_RUN (`repeat` = 1) over {} distinct flows \
           (distinct source ports; the same number at every scale). **new** = their SYNs \
           (conntrack miss, service lookup, Maglev pick, reverse-NAT (+SNAT port) and \
           conntrack inserts, rewrite); **est.** = the same flows again as ACKs. Two sets: \
           all flows to **one service** entry (the last one: the table holds N entries, the \
           flows touch one), and flows **spread** over all entries (XDP: over the NodePort \
           entries, at most {NODEPORT_RANGE}); each set has its own source address. Each \
           run comes after a trip through the syscall path and touches another flow's \
           entries, so these are costs with cold-ish caches. Reported: the median, minus the \
           timer overhead of one run per syscall (measured at each scale: `lb_xdp_pass`, a \
           program that returns at once, timed one run per syscall minus the same timed hot).\n\
         - floor of the method: `lb_xdp_pass` hot = {:.0} ns per run. The reason counters \
           are read around every measurement to confirm each run took the intended path \
           (`pass_not_service`, `nat_new`, `nat_established`); mismatches are listed below \
           the tables (none listed: all matched).\n",
        cfg.repeat, cfg.trials, cfg.ring, cfg.ring, cfg.trials, cfg.flows, m.floor_ns
    );
    for (hook, title) in [
        (Hook::Xdp, "`lb_xdp`, NodePort (external client)"),
        (Hook::Tc, "`lb_tc_from_pod`, ClusterIP (from a pod)"),
    ] {
        let _ = writeln!(md, "### {title}, ns per packet\n");
        let _ = writeln!(
            md,
            "| Services | pass (hot) | **est. (hot)** | **new (hot)** | new, one service | est., one service | new, spread | est., spread | pass (per flow) | spread over | maps filled in |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|");
        for s in &m.scales {
            let r = s.hook(hook);
            let _ = writeln!(
                md,
                "| {} | {:.0} | **{:.0}** | **{:.0}** | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {:.1} s |",
                human(s.n),
                r.pass_hot,
                r.est_hot,
                r.new_hot,
                s.net(r.new_one),
                s.net(r.est_one),
                s.net(r.new_all),
                s.net(r.est_all),
                s.net(r.pass_1),
                r.spread_over,
                s.fill.as_secs_f64()
            );
        }
        let _ = writeln!(md);
        for s in &m.scales {
            for n in &s.hook(hook).notes {
                let _ = writeln!(md, "- check at {} Services: {n}", human(s.n));
            }
        }
    }
    let _ = writeln!(
        md,
        "### Reference: one conntrack insert\n\n\
         `lb_bench_ct_insert` (in the same object, never attached) inserts one fresh key into \
         the conntrack map (the LRU hash the programs use, same size; the key from the clock, \
         protocol 255, which no flow carries) and returns: run hot like **new (hot)**, after \
         the scale's other runs. A new connection makes two such inserts (conntrack and \
         reverse NAT), so twice this is a floor under **new (hot)** that no change to the \
         programs' own code can remove; Katran's per-flow state is one LRU insert (no reverse \
         path: direct server return).\n"
    );
    let _ = writeln!(
        md,
        "| Services | one insert (hot) | two inserts | new (hot), XDP | new (hot), TC | TC new (hot) minus two inserts |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for s in &m.scales {
        let _ = writeln!(
            md,
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            human(s.n),
            s.ct_insert,
            2.0 * s.ct_insert,
            s.xdp.new_hot,
            s.tc.new_hot,
            s.tc.new_hot - 2.0 * s.ct_insert
        );
    }
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "Per-flow details (ns, raw = timer overhead included): median / p90 / mean. The \
         mean's excess over the median is interrupts and preemption.\n"
    );
    let _ = writeln!(
        md,
        "| Services | program | CPUs busy before | timer overhead | new, one service | est., one service | new, spread | est., spread | pass |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    let st = |x: Stats| format!("{:.0} / {:.0} / {:.0}", x.p50, x.p90, x.mean);
    for s in &m.scales {
        for (hook, name) in [(Hook::Xdp, "lb_xdp"), (Hook::Tc, "lb_tc_from_pod")] {
            let r = s.hook(hook);
            let _ = writeln!(
                md,
                "| {} | {name} | {:.0}% | {:.0} | {} | {} | {} | {} | {} |",
                human(s.n),
                s.busy_before * 100.0,
                s.overhead,
                st(r.new_one),
                st(r.est_one),
                st(r.new_all),
                st(r.est_all),
                st(r.pass_1)
            );
        }
    }
    let _ = writeln!(md);
    let base = m.scales.iter().find(|s| s.n >= 1000);
    let last = m.scales.last();
    let big = last.map_or_else(String::new, |s| human(s.n));
    let _ = writeln!(
        md,
        "### Against the target (issue 3: established and new connection <= 100 ns per packet, flat from 1k to 100k Services)\n"
    );
    let _ = writeln!(
        md,
        "| program | path | at 1k | at {big} | {big} / 1k | worst over all scales | <= 100 ns at every scale |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    let paths: [(&str, Pick); 6] = [
        ("established (hot)", |s, h| s.hook(h).est_hot),
        ("new connection (hot)", |s, h| s.hook(h).new_hot),
        ("established, one service (per flow)", |s, h| {
            s.net(s.hook(h).est_one)
        }),
        ("new connection, one service (per flow)", |s, h| {
            s.net(s.hook(h).new_one)
        }),
        ("established, spread (per flow)", |s, h| {
            s.net(s.hook(h).est_all)
        }),
        ("new connection, spread (per flow)", |s, h| {
            s.net(s.hook(h).new_all)
        }),
    ];
    for (hook, name) in [(Hook::Xdp, "lb_xdp"), (Hook::Tc, "lb_tc_from_pod")] {
        for (path, f) in paths {
            let worst = m.scales.iter().map(|s| f(s, hook)).fold(0.0_f64, f64::max);
            let a = base.map_or(0.0, |s| f(s, hook));
            let b = last.map_or(0.0, |s| f(s, hook));
            let _ = writeln!(
                md,
                "| {name} | {path} | {a:.0} ns | {b:.0} ns | {} | {worst:.0} ns | {} |",
                ratio(b, a),
                if worst <= 100.0 { "yes" } else { "no" }
            );
        }
    }
    let _ = writeln!(md);
}

fn e2e_report(md: &mut String, cfg: &Cfg, rows: &[E2eRow]) {
    let _ = writeln!(md, "## 2. End to end on the sandbox cluster\n");
    let _ = writeln!(
        md,
        "The sandbox (lb-tests): a client namespace, node-0 and node-1 namespaces, the seed \
         app's 6 pods behind veths. N Services `svc-0..N-1` (port 80 -> 8080; ClusterIPs \
         from 10.96.1.0 up, numbered from the end so that the measured Service has the same \
         address at every N), each with the 3 backend pods as endpoints (1 on node-0, 2 on \
         node-1). The sender is pod `{E2E_CLIENT_POD}` on node-0; the target is the **last** \
         Service's ClusterIP (the worst case for iptables' linear KUBE-SERVICES chain). Two \
         sandboxes run side by side, one per data plane:\n\n\
         - **iptables**: the kube-proxy-shaped nat rules (KUBE-SERVICES -> KUBE-SVC-* with \
           `-m statistic --mode random --probability` -> KUBE-SEP-* DNAT, plus the portal \
           jumps from PREROUTING/OUTPUT and KUBE-POSTROUTING) loaded with `iptables-restore` \
           into both node namespaces; no agent ever runs there \
           (lb-agent/examples/common/iptables.rs).\n\
         - **lb-agent**: the same Services as manifests, `lb-agent run` on both nodes ({}), \
           started for each N and measured after `first sync programmed`; no iptables rule \
           is ever loaded there.\n\
         - **connect**: {} sequential TCP connects per data plane and N (SYN -> SYN/ACK seen \
           by the client), closed at once; p50/p99 of the connect time (one not answered \
           within 1 s, i.e. a lost SYN, counts as an error). **req/s**: sequential \
           HTTP GETs, one new connection each, {:.1} s per data plane and N. Both are split \
           into {} rounds alternating between the data planes (iptables first in even \
           rounds), so that background load on this shared 2-core machine hits both alike; \
           measuring starts once the CPUs are quiet (< 25% busy, waited up to 15 s).\n",
        E2E_AGENT_FLAGS.join(" "),
        cfg.connects,
        cfg.rate_time.as_secs_f64(),
        cfg.rounds
    );
    let _ = writeln!(
        md,
        "| Services | iptables rules | connect p50, iptables / agent (us) | ratio | connect p99, iptables / agent (us) | ratio | HTTP req/s, iptables / agent | ratio (agent / iptables) | errors iptables / agent |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} / {:.0} | {} | {:.0} / {:.0} | {} | {:.0} / {:.0} | {} | {} / {} |",
            human(r.n),
            r.rules,
            r.ipt.p50_us(),
            r.agent.p50_us(),
            ratio(r.ipt.p50_us(), r.agent.p50_us()),
            r.ipt.p99_us(),
            r.agent.p99_us(),
            ratio(r.ipt.p99_us(), r.agent.p99_us()),
            r.ipt.rps(),
            r.agent.rps(),
            ratio(r.agent.rps(), r.ipt.rps()),
            r.ipt.errors,
            r.agent.errors
        );
    }
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "For reference, the same number of connects from `{E2E_DIRECT_CLIENT_POD}` (node-0) \
         straight to the backend pods' addresses (in turn, port 8080: no \
         Service, no translation) in each sandbox: what each data plane costs traffic that is \
         for no Service (iptables: the connection's first packet still walks all of \
         KUBE-SERVICES; agent: the programs' pass path, and native XDP on the node's veth).\n"
    );
    let _ = writeln!(
        md,
        "| Services | direct connect p50, iptables / agent (us) | direct connect p99, iptables / agent (us) |"
    );
    let _ = writeln!(md, "|---|---|---|");
    for r in rows {
        let _ = writeln!(
            md,
            "| {} | {:.0} / {:.0} | {:.0} / {:.0} |",
            human(r.n),
            r.ipt_direct.p50_us(),
            r.agent_direct.p50_us(),
            r.ipt_direct.p99_us(),
            r.agent_direct.p99_us()
        );
    }
    let _ = writeln!(md);
    let _ = writeln!(
        md,
        "Two agent behaviours found while building this benchmark (checked by hand in the \
         sandbox) shape the setup; both come from one pod reusing client ports quickly, \
         thousands of connections a second, and netfilter avoids both because NAT resolves \
         a clash of reply tuples by picking another source port:\n\n\
         - reverse-NAT entries (LB_REVNAT) outlive their connection: after a Service \
           connection from client port P was translated to backend B, a later connection \
           from the same port P straight to B's address gets its SYN/ACK rewritten to come \
           from the ClusterIP and never completes (by hand: after a Service connection from \
           port 40001 answered by backend-0, a direct connection from port 40001 to \
           backend-0 timed out, those to the other backends and from unused ports \
           succeeded). Hence the direct connects come from another pod.\n\
         - a connection from port P to another ClusterIP that Maglev maps to the same \
           backend meets that backend's TIME_WAIT of the earlier connection with TCP \
           timestamps from another series (the client's timestamp offset depends on the \
           destination address): the backend answers the SYN with an ACK, the client resets \
           and resends the SYN after 2 jiffies, ~10 ms. Changing the measured ClusterIP \
           between the runs put 1-3% of the agent's connects at ~10 ms (p99 ~11 ms); hence \
           the measured Service keeps its address at every N.\n"
    );
    for r in rows {
        let _ = writeln!(
            md,
            "- {} Services: iptables-restore {:.0} ms per node; agents ready (start to first sync) in {:.1} s; CPUs {:.0}% busy before measuring; answered by iptables {:?}, agent {:?}; connects measured {} / {}; errors of the direct connects {} / {}.",
            human(r.n),
            r.restore.as_secs_f64() * 1000.0,
            r.agent_ready.as_secs_f64(),
            r.busy_before * 100.0,
            r.ipt.answered_by,
            r.agent.answered_by,
            r.ipt.lat.len(),
            r.agent.lat.len(),
            r.ipt_direct.errors,
            r.agent_direct.errors
        );
    }
    let _ = writeln!(
        md,
        "\nBoth data planes share everything else (veths, routing, the pod server), so the \
         difference is the service translation: netfilter's nat table walks KUBE-SERVICES \
         rule by rule for the connection's first packet (conntrack carries the rest), the \
         agent does hash lookups on every packet. A request's time is mostly the pod \
         server's and the client's work, which bounds the req/s ratio.\n"
    );
}

// ---------------------------------------------------------------------------------------
// The plot: a hand-written SVG line chart, two panels.

struct Series {
    name: String,
    color: &'static str,
    /// SVG stroke-dasharray; solid when `None`.
    dash: Option<&'static str>,
    points: Vec<(f64, f64)>,
}

fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let p = 10_f64.powf(v.log10().floor());
    for m in [1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0] {
        if v <= m * p {
            return m * p;
        }
    }
    10.0 * p
}

/// One panel of the plot: x is the number of Services on a log scale.
struct Panel<'a> {
    /// x, y, width, height in the SVG.
    frame: (f64, f64, f64, f64),
    title: &'a str,
    ylabel: &'a str,
    series: &'a [Series],
    /// A dashed horizontal line (a target) and its label.
    hline: Option<(f64, &'a str)>,
    /// Log scale on y too (for values spanning decades).
    log_y: bool,
}

fn tick_label(y: f64) -> String {
    if y >= 10.0 || y == 0.0 {
        format!("{y:.0}")
    } else {
        format!("{y:.1}")
    }
}

fn panel(svg: &mut String, p: &Panel<'_>) {
    let (x0, y0, w, h) = p.frame;
    let xs: Vec<f64> = p
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|q| q.0))
        .collect();
    let ys: Vec<f64> = p
        .series
        .iter()
        .flat_map(|s| s.points.iter().map(|q| q.1))
        .chain(p.hline.map(|l| l.0))
        .filter(|y| y.is_finite())
        .collect();
    let (xmin, xmax) = (
        xs.iter().copied().fold(f64::INFINITY, f64::min).max(1.0),
        xs.iter().copied().fold(0.0_f64, f64::max).max(10.0),
    );
    let ydata_max = ys.iter().copied().fold(0.0_f64, f64::max);
    let ydata_min = ys
        .iter()
        .copied()
        .filter(|y| *y > 0.0)
        .fold(f64::INFINITY, f64::min);
    // y range: [0, nice max] linear, or whole decades around the data in log scale.
    let (ylo, yhi) = if p.log_y {
        (
            10_f64.powf(ydata_min.max(1.0).log10().floor()),
            10_f64.powf(ydata_max.max(10.0).log10().ceil()),
        )
    } else {
        (0.0, nice_max(ydata_max * 1.1))
    };
    let (lx, ly) = (xmin.log10(), xmax.log10().max(xmin.log10() + 1.0));
    let px = |x: f64| x0 + 60.0 + (x.max(1.0).log10() - lx) / (ly - lx) * (w - 80.0);
    let frac = |y: f64| {
        if p.log_y {
            (y.max(ylo).log10() - ylo.log10()) / (yhi.log10() - ylo.log10())
        } else {
            y.max(0.0) / yhi
        }
    };
    let py = |y: f64| y0 + h - 40.0 - frac(y) * (h - 80.0);
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" font-size="14" text-anchor="middle" font-weight="bold">{}</text>"#,
        x0 + w / 2.0,
        y0 + 20.0,
        p.title
    );
    let _ = writeln!(
        svg,
        r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/><line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/>"##,
        px(xmin),
        py(ylo),
        px(xmax),
        py(ylo),
        px(xmin),
        py(ylo),
        px(xmin),
        py(yhi)
    );
    let yticks: Vec<f64> = if p.log_y {
        let mut t = Vec::new();
        let mut d = ylo;
        while d <= yhi * 1.0001 {
            for m in [1.0, 2.0, 5.0] {
                if m * d <= yhi * 1.0001 {
                    t.push(m * d);
                }
            }
            d *= 10.0;
        }
        t
    } else {
        (0..=4).map(|k| yhi * f64::from(k) / 4.0).collect()
    };
    for y in yticks {
        let _ = writeln!(
            svg,
            r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            px(xmin),
            py(y),
            px(xmax),
            py(y),
            px(xmin) - 6.0,
            py(y) + 4.0,
            tick_label(y)
        );
    }
    let mut xticks = xs.clone();
    xticks.sort_by(f64::total_cmp);
    xticks.dedup();
    for x in xticks {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"#,
            px(x),
            py(ylo) + 16.0,
            human(x as u32)
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">Services (log scale)</text>"#,
        x0 + w / 2.0,
        y0 + h - 6.0
    );
    let (lx0, ly0) = (x0 + 16.0, y0 + h / 2.0);
    let _ = writeln!(
        svg,
        r#"<text x="{lx0:.1}" y="{ly0:.1}" font-size="12" text-anchor="middle" transform="rotate(-90 {lx0:.1} {ly0:.1})">{}{}</text>"#,
        p.ylabel,
        if p.log_y { " (log scale)" } else { "" }
    );
    if let Some((y, label)) = p.hline {
        let _ = writeln!(
            svg,
            r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#c00" stroke-dasharray="2,4"/><text x="{:.1}" y="{:.1}" font-size="11" fill="#c00" text-anchor="end">{label}</text>"##,
            px(xmin),
            py(y),
            px(xmax),
            py(y),
            px(xmax),
            py(y) - 4.0
        );
    }
    for (i, s) in p.series.iter().enumerate() {
        let pts: Vec<String> = s
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        let dash = s
            .dash
            .map_or_else(String::new, |d| format!(r#" stroke-dasharray="{d}""#));
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{}" stroke-width="2"{dash} points="{}"/>"#,
            s.color,
            pts.join(" ")
        );
        for &(x, y) in &s.points {
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#,
                px(x),
                py(y),
                s.color
            );
        }
        let ly = y0 + 40.0 + 15.0 * i as f64;
        let lx0 = x0 + 75.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx0:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}" font-size="11">{}</text>"#,
            ly - 4.0,
            lx0 + 20.0,
            ly - 4.0,
            s.color,
            lx0 + 25.0,
            ly,
            s.name
        );
    }
}

fn plot(micro: Option<&Micro>, e2e: Option<&[E2eRow]>) -> String {
    let (w, h) = (1000.0, 420.0);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
"#
    );
    if let Some(m) = micro {
        let line = |name: &str, color, dash, f: &dyn Fn(&ScaleResult) -> f64| Series {
            name: name.into(),
            color,
            dash,
            points: m.scales.iter().map(|s| (f64::from(s.n), f(s))).collect(),
        };
        let (solid, dashed, dotted) = (None, Some("6,4"), Some("2,3"));
        let series = [
            line(
                "XDP NodePort, new, spread (per flow)",
                "#1f77b4",
                solid,
                &|s| s.net(s.xdp.new_all),
            ),
            line(
                "XDP NodePort, new, one service (per flow)",
                "#1f77b4",
                dashed,
                &|s| s.net(s.xdp.new_one),
            ),
            line("XDP NodePort, established (hot)", "#1f77b4", dotted, &|s| {
                s.xdp.est_hot
            }),
            line(
                "TC ClusterIP, new, spread (per flow)",
                "#2ca02c",
                solid,
                &|s| s.net(s.tc.new_all),
            ),
            line(
                "TC ClusterIP, new, one service (per flow)",
                "#2ca02c",
                dashed,
                &|s| s.net(s.tc.new_one),
            ),
            line("TC ClusterIP, established (hot)", "#2ca02c", dotted, &|s| {
                s.tc.est_hot
            }),
        ];
        panel(
            &mut svg,
            &Panel {
                frame: (0.0, 0.0, w / 2.0, h),
                title: "lb-agent per packet (BPF_PROG_TEST_RUN)",
                ylabel: "ns per packet",
                series: &series,
                hline: Some((100.0, "target 100 ns")),
                log_y: true,
            },
        );
    }
    if let Some(rows) = e2e {
        let line = |name: &str, color, dashed: bool, f: &dyn Fn(&E2eRow) -> f64| Series {
            name: name.into(),
            color,
            dash: dashed.then_some("6,4"),
            points: rows.iter().map(|r| (f64::from(r.n), f(r))).collect(),
        };
        let series = [
            line(
                "iptables (kube-proxy rules), to the ClusterIP",
                "#d62728",
                false,
                &|r| r.ipt.p50_us(),
            ),
            line("lb-agent, to the ClusterIP", "#1f77b4", false, &|r| {
                r.agent.p50_us()
            }),
            line(
                "iptables, direct to a pod (no Service)",
                "#d62728",
                true,
                &|r| r.ipt_direct.p50_us(),
            ),
            line(
                "lb-agent, direct to a pod (no Service)",
                "#1f77b4",
                true,
                &|r| r.agent_direct.p50_us(),
            ),
        ];
        panel(
            &mut svg,
            &Panel {
                frame: (w / 2.0, 0.0, w / 2.0, h),
                title: "End to end: TCP connect from a pod, p50",
                ylabel: "connect time (us)",
                series: &series,
                hline: None,
                log_y: false,
            },
        );
    }
    svg.push_str("</svg>\n");
    svg
}

// ---------------------------------------------------------------------------------------

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let cfg = Cfg::new(args.quick);
    let started = Instant::now();
    let micro = match args.only {
        Only::E2e => None,
        Only::Both | Only::Micro => Some(micro(&cfg)?),
    };
    let micro_time = started.elapsed();
    let e2e = match args.only {
        Only::Micro => None,
        Only::Both | Only::E2e => {
            if args.build {
                build_binaries()?;
            }
            Some(e2e(&cfg)?)
        }
    };
    let mut md = report(&args, &cfg, micro.as_ref(), e2e.as_deref());
    let _ = writeln!(
        md,
        "Run time: {:.0} s in all ({:.0} s per-packet part; the rest builds lb-agent and \
         lb-podserver when needed and runs the sandboxes).",
        started.elapsed().as_secs_f64(),
        micro_time.as_secs_f64()
    );
    if let Some(dir) = args.out.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&args.out, &md).with_context(|| format!("writing {}", args.out.display()))?;
    let svg = args.out.with_extension("svg");
    std::fs::write(&svg, plot(micro.as_ref(), e2e.as_deref()))
        .with_context(|| format!("writing {}", svg.display()))?;
    print!("{md}");
    eprintln!(
        "wrote {} and {} in {:.0?}",
        args.out.display(),
        svg.display(),
        started.elapsed()
    );
    Ok(())
}
