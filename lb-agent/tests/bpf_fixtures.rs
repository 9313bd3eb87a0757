//! Packet fixtures for the data plane, run in the real kernel with BPF_PROG_TEST_RUN
//! (Katran's lib/testing fixtures habit): each case has a description, an input packet
//! built here byte by byte, the expected verdict and the expected output packet. Output
//! checksums are verified independently (full recomputation), never trusted.
//!
//! Needs root and BPF: without them every test FAILS with the reason (no skipping).
#![allow(
    clippy::too_many_arguments,
    clippy::cast_lossless,
    reason = "test helpers favour readability"
)]

use std::net::Ipv4Addr;
use std::path::PathBuf;

use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::programs::{SchedClassifier, TestRun as _, TestRunOptions, Xdp};
use lb_agent::bpf::{
    Dataplane, LoadOptions, PROG_TC_FROM_POD, PROG_TC_TO_POD, PROG_XDP, PROG_XDP_PASS,
};
use lb_common::maglev::{MaglevBackend, backend_identity, build_table};
use lb_common::{
    AffinityKey, AffinityValue, BACKEND_F_LOCAL, BackendValue, CtValue, FlowKey, HAIRPIN_ADDR_BE,
    MAP_AFFINITY, MAP_BACKENDS, MAP_CONFIG, MAP_CONNTRACK, MAP_MAGLEV, MAP_REASONS, MAP_REVNAT,
    MAP_SERVICES, MAP_SVC_COUNTERS, NatValue, NodeConfig, PROTO_TCP, PROTO_UDP, Reason,
    SCOPE_EXTERNAL, SCOPE_INTERNAL, SVC_F_AFFINITY, SVC_F_CLUSTER_IP, SVC_F_DROP_EMPTY,
    SVC_F_EXTERNAL_IP, SVC_F_LOCAL, SVC_F_NODEPORT, SVC_F_SRC_RANGES, ServiceKey, ServiceValue,
    SvcCounters,
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const M: u32 = 31;
const SNAT_MIN: u16 = 40_000;
const SNAT_MAX: u16 = 40_999;

const NODE: [u8; 4] = [192, 168, 50, 10];
const CLIENT: [u8; 4] = [192, 168, 50, 99];
const POD_A: [u8; 4] = [10, 244, 1, 5];
const POD_B: [u8; 4] = [10, 244, 1, 6];
const POD_REMOTE: [u8; 4] = [10, 244, 2, 7];
const VIP: [u8; 4] = [10, 96, 0, 10];
const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0xa];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0xb];

fn be32(a: [u8; 4]) -> u32 {
    u32::from_ne_bytes(a)
}

// ---------------------------------------------------------------------------------------
// Packets

/// An IPv4 packet to build. Fields are host order; `build` writes network order and valid
/// checksums (unless told otherwise).
#[derive(Clone)]
struct Pkt {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    saddr: [u8; 4],
    daddr: [u8; 4],
    proto: u8,
    sport: u16,
    dport: u16,
    tcp_flags: u8,
    seq: u32,
    ack: u32,
    payload: Vec<u8>,
    ip_options: Vec<u8>,
    frag: u16,
    udp_zero_csum: bool,
}

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

fn tcp(saddr: [u8; 4], sport: u16, daddr: [u8; 4], dport: u16, flags: u8) -> Pkt {
    Pkt {
        src_mac: MAC_A,
        dst_mac: MAC_B,
        saddr,
        daddr,
        proto: PROTO_TCP,
        sport,
        dport,
        tcp_flags: flags,
        seq: 1000,
        ack: if flags & ACK != 0 { 5000 } else { 0 },
        payload: if flags & PSH != 0 {
            b"GET / HTTP/1.0\r\n\r\n".to_vec()
        } else {
            Vec::new()
        },
        ip_options: Vec::new(),
        frag: 0x4000,
        udp_zero_csum: false,
    }
}

fn udp(saddr: [u8; 4], sport: u16, daddr: [u8; 4], dport: u16) -> Pkt {
    Pkt {
        proto: PROTO_UDP,
        payload: b"hello dns".to_vec(),
        tcp_flags: 0,
        ack: 0,
        frag: 0,
        ..tcp(saddr, sport, daddr, dport, 0)
    }
}

use lb_common::internet_checksum as csum;

fn pseudo(saddr: &[u8], daddr: &[u8], proto: u8, len: usize) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend(saddr);
    p.extend(daddr);
    p.extend([0, proto]);
    p.extend((len as u16).to_be_bytes());
    p
}

impl Pkt {
    fn l4(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        l4.extend(self.sport.to_be_bytes());
        l4.extend(self.dport.to_be_bytes());
        if self.proto == PROTO_TCP {
            l4.extend(self.seq.to_be_bytes());
            l4.extend(self.ack.to_be_bytes());
            l4.extend([5 << 4, self.tcp_flags]);
            l4.extend(64240_u16.to_be_bytes());
            l4.extend([0, 0, 0, 0]);
        } else {
            l4.extend(((8 + self.payload.len()) as u16).to_be_bytes());
            l4.extend([0, 0]);
        }
        l4.extend(&self.payload);
        let coff = if self.proto == PROTO_TCP { 16 } else { 6 };
        if !(self.proto == PROTO_UDP && self.udp_zero_csum) {
            let mut c = pseudo(&self.saddr, &self.daddr, self.proto, l4.len());
            c.extend(&l4);
            let mut sum = csum(&c);
            if sum == 0 && self.proto == PROTO_UDP {
                sum = 0xffff;
            }
            l4[coff..coff + 2].copy_from_slice(&sum.to_be_bytes());
        }
        l4
    }

    fn build(&self) -> Vec<u8> {
        let l4 = self.l4();
        frame(self, &l4)
    }
}

/// Ethernet + IPv4 header (with `p`'s options, fragment field, addresses) + `l4`.
fn frame(p: &Pkt, l4: &[u8]) -> Vec<u8> {
    assert!(p.ip_options.len().is_multiple_of(4));
    let ihl = 20 + p.ip_options.len();
    let mut ip = vec![
        0x40 | (ihl / 4) as u8,
        0,
        0,
        0,
        0x12,
        0x34,
        (p.frag >> 8) as u8,
        p.frag as u8,
        64,
        p.proto,
        0,
        0,
    ];
    ip[2..4].copy_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
    ip.extend(p.saddr);
    ip.extend(p.daddr);
    ip.extend(&p.ip_options);
    let c = csum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let mut out = Vec::new();
    out.extend(p.dst_mac);
    out.extend(p.src_mac);
    out.extend([0x08, 0x00]);
    out.extend(ip);
    out.extend(l4);
    out
}

/// An ICMP error (`icmp_type`/`code`) from `from` to `to` quoting `inner` (its IP header
/// and first 8 bytes of L4), like a router or host would send it.
fn icmp_error(from: [u8; 4], to: [u8; 4], icmp_type: u8, code: u8, inner: &Pkt) -> Vec<u8> {
    let inner_bytes = inner.build();
    let ihl = usize::from(inner_bytes[14] & 0x0f) * 4;
    let quote = &inner_bytes[14..14 + ihl + 8];
    let mut icmp = vec![icmp_type, code, 0, 0, 0, 0, 0x05, 0xdc]; // next-hop MTU 1500
    icmp.extend(quote);
    let c = csum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let outer = Pkt {
        proto: 1,
        ip_options: Vec::new(),
        frag: 0,
        ..tcp(from, 0, to, 0, 0)
    };
    frame(&outer, &icmp)
}

/// What a test reads back from an output packet; construction verifies every checksum
/// (IP header, TCP/UDP with pseudo header, ICMP over its whole message).
#[derive(Debug, Clone, PartialEq, Eq)]
struct View {
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    saddr: Ipv4Addr,
    daddr: Ipv4Addr,
    proto: u8,
    sport: u16,
    dport: u16,
    tcp_flags: u8,
    seq: u32,
    ack: u32,
    l4_csum: u16,
    ip_len: usize,
    l4_payload: Vec<u8>,
}

fn view(b: &[u8]) -> View {
    assert!(b.len() >= 34, "output too short: {b:02x?}");
    assert_eq!(&b[12..14], &[0x08, 0x00], "not IPv4");
    let ihl = usize::from(b[14] & 0x0f) * 4;
    let tot = usize::from(u16::from_be_bytes([b[16], b[17]]));
    assert!(
        b.len() >= 14 + tot,
        "IP total length {tot} beyond the frame ({})",
        b.len()
    );
    assert_eq!(
        csum(&b[14..14 + ihl]),
        0,
        "bad IP header checksum: {b:02x?}"
    );
    let proto = b[23];
    let l4 = &b[14 + ihl..14 + tot];
    let frag_off = u16::from_be_bytes([b[20], b[21]]) & 0x1fff;
    let mut v = View {
        dst_mac: b[0..6].try_into().unwrap(),
        src_mac: b[6..12].try_into().unwrap(),
        saddr: Ipv4Addr::new(b[26], b[27], b[28], b[29]),
        daddr: Ipv4Addr::new(b[30], b[31], b[32], b[33]),
        proto,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        seq: 0,
        ack: 0,
        l4_csum: 0,
        ip_len: tot,
        l4_payload: Vec::new(),
    };
    if frag_off != 0 {
        return v;
    }
    match proto {
        PROTO_TCP | PROTO_UDP => {
            v.sport = u16::from_be_bytes([l4[0], l4[1]]);
            v.dport = u16::from_be_bytes([l4[2], l4[3]]);
            let coff = if proto == PROTO_TCP { 16 } else { 6 };
            v.l4_csum = u16::from_be_bytes([l4[coff], l4[coff + 1]]);
            if proto == PROTO_TCP {
                v.seq = u32::from_be_bytes(l4[4..8].try_into().unwrap());
                v.ack = u32::from_be_bytes(l4[8..12].try_into().unwrap());
                v.tcp_flags = l4[13];
                v.l4_payload = l4[usize::from(l4[12] >> 4) * 4..].to_vec();
            } else {
                v.l4_payload = l4[8..].to_vec();
            }
            if !(proto == PROTO_UDP && v.l4_csum == 0) {
                let mut c = pseudo(&b[26..30], &b[30..34], proto, l4.len());
                c.extend(l4);
                assert_eq!(csum(&c), 0, "bad L4 checksum: {b:02x?}");
            }
        }
        1 => {
            assert_eq!(csum(l4), 0, "bad ICMP checksum: {b:02x?}");
            v.l4_payload = l4.to_vec();
        }
        _ => {}
    }
    v
}

fn ip(a: [u8; 4]) -> Ipv4Addr {
    Ipv4Addr::from(a)
}

// ---------------------------------------------------------------------------------------
// The kernel side

/// A loaded data plane with its own pin directory, removed (maps and links) on drop.
struct Env {
    dp: Dataplane,
    dir: PathBuf,
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = lb_agent::bpf::detach_all(&self.dir);
    }
}

/// Removes pin directories of earlier test runs whose process is gone (a run killed
/// before its guards ran).
fn sweep_stale_pins() {
    let Ok(entries) = std::fs::read_dir("/sys/fs/bpf") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("lbtest-") else {
            continue;
        };
        let pid = rest.split('-').find_map(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = lb_agent::bpf::detach_all(&e.path());
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn env() -> Env {
    sweep_stale_pins();
    let dir = PathBuf::from(format!(
        "/sys/fs/bpf/lbtest-{}-{:x}",
        std::process::id(),
        rand_u64()
    ));
    // Removes the pins even when the load below fails.
    let guard = PinGuard(dir.clone());
    let opts = LoadOptions {
        bpffs_dir: dir.clone(),
        max_services: 16,
        max_backends: 64,
        maglev_size: M,
        conntrack_size: 1024,
        affinity_size: 64,
    };
    let dp = Dataplane::load(&opts).unwrap_or_else(|e| {
        panic!(
            "the data plane must load for these tests (run as root on a kernel with BPF, \
             BTF and bpffs): {e}\n{e:?}"
        )
    });
    std::mem::forget(guard);
    let mut env = Env { dp, dir };
    env.set_config(NodeConfig {
        node_addr_be: be32(NODE),
        maglev_size: M,
        netns_cookie: 0,
        snat_port_min: SNAT_MIN,
        snat_port_max: SNAT_MAX,
        ready: 1,
    });
    env
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .elapsed()
            .map_or(0, |d| d.as_nanos() as u64),
    );
    h.finish()
}

struct PinGuard(PathBuf);

impl Drop for PinGuard {
    fn drop(&mut self) {
        let _ = lb_agent::bpf::detach_all(&self.0);
    }
}

struct Backend {
    id: u32,
    addr: [u8; 4],
    port: u16,
    local: bool,
}

impl Env {
    fn set_config(&mut self, c: NodeConfig) {
        let mut a: Array<&mut MapData, NodeConfig> =
            Array::try_from(self.dp.ebpf().map_mut(MAP_CONFIG).unwrap()).unwrap();
        a.set(0, c, 0).unwrap();
    }

    fn put_backend(&mut self, b: &Backend, proto: u8) {
        let mut m: HashMap<&mut MapData, u32, BackendValue> =
            HashMap::try_from(self.dp.ebpf().map_mut(MAP_BACKENDS).unwrap()).unwrap();
        let v = BackendValue {
            addr_be: be32(b.addr),
            port_be: b.port.to_be(),
            proto,
            flags: if b.local { BACKEND_F_LOCAL } else { 0 },
        };
        m.insert(b.id, v, 0).unwrap();
    }

    fn del_backend(&mut self, id: u32) {
        let mut m: HashMap<&mut MapData, u32, BackendValue> =
            HashMap::try_from(self.dp.ebpf().map_mut(MAP_BACKENDS).unwrap()).unwrap();
        m.remove(&id).unwrap();
    }

    /// Writes the Maglev table of `lut_id` over backend ids `ids` (empty: all zero).
    fn put_table(&mut self, lut_id: u32, backends: &[&Backend]) {
        let table = if backends.is_empty() {
            vec![0; M as usize]
        } else {
            build_table(
                &backends
                    .iter()
                    .map(|b| MaglevBackend {
                        identity: backend_identity(be32(b.addr), b.port.to_be()),
                        id: b.id,
                        weight: 1,
                    })
                    .collect::<Vec<_>>(),
                M,
            )
        };
        let mut a: Array<&mut MapData, u32> =
            Array::try_from(self.dp.ebpf().map_mut(MAP_MAGLEV).unwrap()).unwrap();
        for (slot, id) in table.iter().enumerate() {
            a.set(lut_id * M + slot as u32, id, 0).unwrap();
        }
    }

    /// A service entry with its backends, written in the agent's order: backends, table,
    /// service.
    fn service(
        &mut self,
        addr: [u8; 4],
        port: u16,
        proto: u8,
        scope: u8,
        lut_id: u32,
        flags: u32,
        backends: &[&Backend],
    ) {
        for b in backends {
            self.put_backend(b, proto);
        }
        self.put_table(lut_id, backends);
        let mut m: HashMap<&mut MapData, ServiceKey, ServiceValue> =
            HashMap::try_from(self.dp.ebpf().map_mut(MAP_SERVICES).unwrap()).unwrap();
        let key = ServiceKey {
            addr_be: be32(addr),
            port_be: port.to_be(),
            proto,
            scope,
        };
        let value = ServiceValue {
            lut_id,
            backend_count: backends.len() as u32,
            flags,
            affinity_timeout_s: 10_800,
        };
        m.insert(key, value, 0).unwrap();
    }

    fn run(&mut self, prog: &str, input: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0_u8; 2048];
        let p = self
            .dp
            .ebpf()
            .program_mut(prog)
            .expect("program in the object");
        let opts = TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            repeat: 1,
            ..Default::default()
        };
        let r = if let Ok(x) = <&mut Xdp>::try_from(&mut *p) {
            x.test_run(opts)
        } else {
            <&mut SchedClassifier>::try_from(p).unwrap().test_run(opts)
        }
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of {prog}: {e:?}"));
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }

    fn reason(&mut self, r: Reason) -> u64 {
        let a: PerCpuArray<&mut MapData, u64> =
            PerCpuArray::try_from(self.dp.ebpf().map_mut(MAP_REASONS).unwrap()).unwrap();
        a.get(&(r as u32), 0).unwrap().iter().sum()
    }

    fn svc_counters(&mut self, lut_id: u32) -> SvcCounters {
        let a: PerCpuArray<&mut MapData, SvcCounters> =
            PerCpuArray::try_from(self.dp.ebpf().map_mut(MAP_SVC_COUNTERS).unwrap()).unwrap();
        a.get(&lut_id, 0)
            .unwrap()
            .iter()
            .fold(SvcCounters::default(), |s, c| SvcCounters {
                packets: s.packets + c.packets,
                bytes: s.bytes + c.bytes,
            })
    }

    fn ct(&mut self, key: FlowKey) -> Option<CtValue> {
        let m: HashMap<&mut MapData, FlowKey, CtValue> =
            HashMap::try_from(self.dp.ebpf().map_mut(MAP_CONNTRACK).unwrap()).unwrap();
        m.get(&key, 0).ok()
    }

    fn revnat_entries(&mut self) -> Vec<(FlowKey, NatValue)> {
        let m: HashMap<&mut MapData, FlowKey, NatValue> =
            HashMap::try_from(self.dp.ebpf().map_mut(MAP_REVNAT).unwrap()).unwrap();
        m.iter().map(Result::unwrap).collect()
    }

    fn affinity(&mut self, lut_id: u32, client: [u8; 4]) -> Option<AffinityValue> {
        let m: HashMap<&mut MapData, AffinityKey, AffinityValue> =
            HashMap::try_from(self.dp.ebpf().map_mut(MAP_AFFINITY).unwrap()).unwrap();
        m.get(
            &AffinityKey {
                lut_id,
                client_addr_be: be32(client),
            },
            0,
        )
        .ok()
    }
}

fn flow(saddr: [u8; 4], sport: u16, daddr: [u8; 4], dport: u16, proto: u8) -> FlowKey {
    FlowKey {
        saddr_be: be32(saddr),
        daddr_be: be32(daddr),
        sport_be: sport.to_be(),
        dport_be: dport.to_be(),
        proto,
        _pad: [0; 3],
    }
}

// ---------------------------------------------------------------------------------------
// The fixture table for stateless cases

/// What the output packet must look like.
enum Expect {
    /// Byte for byte the input.
    Unchanged,
    /// Addresses and ports after translation (checksums verified by `view`).
    Tuple {
        saddr: [u8; 4],
        sport: u16,
        daddr: [u8; 4],
        dport: u16,
    },
}

struct Fixture {
    description: &'static str,
    prog: &'static str,
    input: Vec<u8>,
    verdict: u32,
    expect: Expect,
    reason: Reason,
}

fn run_table(env: &mut Env, fixtures: Vec<Fixture>) {
    for f in fixtures {
        let before = env.reason(f.reason);
        let (verdict, out) = env.run(f.prog, &f.input);
        assert_eq!(verdict, f.verdict, "{}: verdict", f.description);
        match f.expect {
            Expect::Unchanged => assert_eq!(out, f.input, "{}: packet changed", f.description),
            Expect::Tuple {
                saddr,
                sport,
                daddr,
                dport,
            } => {
                let v = view(&out);
                assert_eq!(
                    (v.saddr, v.sport, v.daddr, v.dport),
                    (ip(saddr), sport, ip(daddr), dport),
                    "{}: tuple",
                    f.description
                );
                let vin = view(&f.input);
                assert_eq!(v.l4_payload, vin.l4_payload, "{}: payload", f.description);
            }
        }
        assert_eq!(
            env.reason(f.reason),
            before + 1,
            "{}: counted under {:?}",
            f.description,
            f.reason
        );
    }
}

fn backend_a() -> Backend {
    Backend {
        id: 1,
        addr: POD_B,
        port: 8080,
        local: true,
    }
}

// ---------------------------------------------------------------------------------------
// Tests

#[test]
fn stateless_fixture_table() {
    let mut env = env();
    let b = backend_a();
    env.service(
        VIP,
        80,
        PROTO_TCP,
        SCOPE_INTERNAL,
        1,
        SVC_F_CLUSTER_IP,
        &[&b],
    );
    env.service(
        VIP,
        53,
        PROTO_UDP,
        SCOPE_INTERNAL,
        2,
        SVC_F_CLUSTER_IP,
        &[&Backend {
            id: 2,
            addr: POD_B,
            port: 5353,
            local: true,
        }],
    );
    let mut zero = udp(POD_A, 3333, VIP, 53);
    zero.udp_zero_csum = true;
    let mut options = tcp(POD_A, 4444, VIP, 80, SYN);
    options.ip_options = vec![0x94, 0x04, 0, 0]; // router alert
    let mut frag = udp(POD_A, 3334, VIP, 53);
    frag.frag = 0x0010; // offset 128 bytes, a non-first fragment
    let mut truncated = tcp(POD_A, 4445, VIP, 80, SYN).build();
    truncated.truncate(14 + 20 + 10);
    // The IP total length says 40 but the frame ends early.
    let non_service = tcp(POD_A, 4446, [10, 96, 0, 99], 80, SYN).build();
    let mut arp = non_service.clone();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);

    run_table(
        &mut env,
        vec![
            Fixture {
                description: "TCP to an address that is no service passes untouched",
                prog: PROG_TC_FROM_POD,
                input: non_service.clone(),
                verdict: TC_ACT_OK,
                expect: Expect::Unchanged,
                reason: Reason::PassNotService,
            },
            Fixture {
                description: "non-IP (ARP) passes untouched",
                prog: PROG_TC_FROM_POD,
                input: arp.clone(),
                verdict: TC_ACT_OK,
                expect: Expect::Unchanged,
                reason: Reason::PassNotService,
            },
            Fixture {
                description: "XDP: non-service passes untouched",
                prog: PROG_XDP,
                input: non_service.clone(),
                verdict: XDP_PASS,
                expect: Expect::Unchanged,
                reason: Reason::PassNotService,
            },
            Fixture {
                description: "XDP: a ClusterIP is not reachable from outside (scope)",
                prog: PROG_XDP,
                input: tcp(CLIENT, 5555, VIP, 80, SYN).build(),
                verdict: XDP_PASS,
                expect: Expect::Unchanged,
                reason: Reason::PassNotService,
            },
            Fixture {
                description: "ClusterIP TCP SYN from a pod is DNATed to the backend",
                prog: PROG_TC_FROM_POD,
                input: tcp(POD_A, 40_001, VIP, 80, SYN).build(),
                verdict: TC_ACT_OK,
                expect: Expect::Tuple {
                    saddr: POD_A,
                    sport: 40_001,
                    daddr: POD_B,
                    dport: 8080,
                },
                reason: Reason::NatNew,
            },
            Fixture {
                description: "ClusterIP UDP from a pod is DNATed, checksum updated",
                prog: PROG_TC_FROM_POD,
                input: udp(POD_A, 3332, VIP, 53).build(),
                verdict: TC_ACT_OK,
                expect: Expect::Tuple {
                    saddr: POD_A,
                    sport: 3332,
                    daddr: POD_B,
                    dport: 5353,
                },
                reason: Reason::NatNew,
            },
            Fixture {
                description: "UDP with a zero checksum is DNATed and keeps it zero",
                prog: PROG_TC_FROM_POD,
                input: zero.build(),
                verdict: TC_ACT_OK,
                expect: Expect::Tuple {
                    saddr: POD_A,
                    sport: 3333,
                    daddr: POD_B,
                    dport: 5353,
                },
                reason: Reason::NatNew,
            },
            Fixture {
                description: "IP options: L4 found through IHL, DNATed",
                prog: PROG_TC_FROM_POD,
                input: options.build(),
                verdict: TC_ACT_OK,
                expect: Expect::Tuple {
                    saddr: POD_A,
                    sport: 4444,
                    daddr: POD_B,
                    dport: 8080,
                },
                reason: Reason::IpOptions,
            },
            Fixture {
                description: "a non-first fragment whose first fragment was not seen passes",
                prog: PROG_TC_FROM_POD,
                input: frag.build(),
                verdict: TC_ACT_OK,
                expect: Expect::Unchanged,
                reason: Reason::PassFragment,
            },
            Fixture {
                description: "XDP: a non-first fragment whose first was not seen passes",
                prog: PROG_XDP,
                input: frag.build(),
                verdict: XDP_PASS,
                expect: Expect::Unchanged,
                reason: Reason::PassFragment,
            },
            Fixture {
                description: "a truncated TCP header is dropped",
                prog: PROG_TC_FROM_POD,
                input: truncated.clone(),
                verdict: TC_ACT_SHOT,
                expect: Expect::Unchanged,
                reason: Reason::DropMalformed,
            },
            Fixture {
                description: "XDP: a truncated TCP header is dropped",
                prog: PROG_XDP,
                input: truncated,
                verdict: XDP_DROP,
                expect: Expect::Unchanged,
                reason: Reason::DropMalformed,
            },
            Fixture {
                description: "to_pod: a packet that is no reply passes untouched",
                prog: PROG_TC_TO_POD,
                input: non_service.clone(),
                verdict: TC_ACT_OK,
                expect: Expect::Unchanged,
                reason: Reason::PassNotService,
            },
        ],
    );
    // The IP-options packet is also counted under its verdict.
    assert!(env.reason(Reason::NatNew) >= 4);
    let c = env.svc_counters(1);
    assert!(c.packets >= 2 && c.bytes >= 108, "service counters {c:?}");
}

#[test]
fn xdp_pass_program_passes_everything() {
    let mut env = env();
    let p = tcp(CLIENT, 1, NODE, 2, SYN).build();
    assert_eq!(env.run(PROG_XDP_PASS, &p), (XDP_PASS, p));
}

#[test]
fn cluster_ip_conntrack_and_reverse_nat() {
    let mut env = env();
    let b1 = backend_a();
    env.service(
        VIP,
        80,
        PROTO_TCP,
        SCOPE_INTERNAL,
        1,
        SVC_F_CLUSTER_IP,
        &[&b1],
    );

    // SYN: DNAT to the only backend; CT and REVNAT entries created.
    let (v, out) = env.run(PROG_TC_FROM_POD, &tcp(POD_A, 41_000, VIP, 80, SYN).build());
    assert_eq!(v, TC_ACT_OK);
    let o = view(&out);
    assert_eq!(
        (o.daddr, o.dport, o.saddr, o.sport),
        (ip(POD_B), 8080, ip(POD_A), 41_000)
    );
    let ct = env
        .ct(flow(POD_A, 41_000, VIP, 80, PROTO_TCP))
        .expect("CT entry");
    assert_eq!(ct.backend_id, 1);

    // The Maglev table now points every slot at a new backend 2: the established flow
    // keeps backend 1 (conntrack), a new flow goes to backend 2.
    let b2 = Backend {
        id: 2,
        addr: POD_REMOTE,
        port: 8080,
        local: false,
    };
    env.put_backend(&b2, PROTO_TCP);
    env.put_table(1, &[&b2]);
    let (v, out) = env.run(
        PROG_TC_FROM_POD,
        &tcp(POD_A, 41_000, VIP, 80, ACK | PSH).build(),
    );
    assert_eq!(v, TC_ACT_OK);
    let o = view(&out);
    assert_eq!(
        (o.daddr, o.dport),
        (ip(POD_B), 8080),
        "established flow moved"
    );
    assert_eq!(o.l4_payload, b"GET / HTTP/1.0\r\n\r\n");
    let (_, out) = env.run(PROG_TC_FROM_POD, &tcp(POD_A, 41_001, VIP, 80, SYN).build());
    assert_eq!(
        view(&out).daddr,
        ip(POD_REMOTE),
        "new flow must follow the new table"
    );

    // Reply from the local backend leaves its pod: source back to the VIP (from_pod).
    let (v, out) = env.run(
        PROG_TC_FROM_POD,
        &tcp(POD_B, 8080, POD_A, 41_000, SYN | ACK).build(),
    );
    assert_eq!(v, TC_ACT_OK);
    let o = view(&out);
    assert_eq!(
        (o.saddr, o.sport, o.daddr, o.dport),
        (ip(VIP), 80, ip(POD_A), 41_000)
    );
    // The same reply seen at to_pod (backend on another node, reply arriving for the pod).
    let (v, out) = env.run(
        PROG_TC_TO_POD,
        &tcp(POD_REMOTE, 8080, POD_A, 41_001, SYN | ACK).build(),
    );
    assert_eq!(v, TC_ACT_OK);
    let o = view(&out);
    assert_eq!(
        (o.saddr, o.sport, o.daddr, o.dport),
        (ip(VIP), 80, ip(POD_A), 41_001)
    );
    // ... and at XDP on the external interface (replies of pod flows to remote backends).
    let (v, out) = env.run(PROG_XDP, &tcp(POD_REMOTE, 8080, POD_A, 41_001, ACK).build());
    assert_eq!(v, XDP_PASS);
    let o = view(&out);
    assert_eq!(
        (o.saddr, o.sport, o.daddr, o.dport),
        (ip(VIP), 80, ip(POD_A), 41_001)
    );
    // An already translated reply does not match again.
    let (v, out2) = env.run(PROG_TC_TO_POD, &out);
    assert_eq!((v, &out2), (TC_ACT_OK, &out));

    // The backend of the established flow is deleted: the flow re-selects (backend 2).
    env.del_backend(1);
    let (_, out) = env.run(PROG_TC_FROM_POD, &tcp(POD_A, 41_000, VIP, 80, ACK).build());
    assert_eq!(
        view(&out).daddr,
        ip(POD_REMOTE),
        "flow must re-select when its backend is gone"
    );
    assert_eq!(
        env.ct(flow(POD_A, 41_000, VIP, 80, PROTO_TCP))
            .unwrap()
            .backend_id,
        2
    );
}

#[test]
fn tcp_fin_closes_and_a_new_syn_reselects() {
    let mut env = env();
    let b1 = backend_a();
    env.service(VIP, 80, PROTO_TCP, SCOPE_INTERNAL, 1, 0, &[&b1]);
    env.run(PROG_TC_FROM_POD, &tcp(POD_A, 42_000, VIP, 80, SYN).build());
    env.run(
        PROG_TC_FROM_POD,
        &tcp(POD_A, 42_000, VIP, 80, FIN | ACK).build(),
    );
    let ct = env.ct(flow(POD_A, 42_000, VIP, 80, PROTO_TCP)).unwrap();
    assert_ne!(
        ct.flags & lb_common::CT_F_CLOSING,
        0,
        "FIN must mark the entry closing"
    );
    let b2 = Backend {
        id: 2,
        addr: POD_REMOTE,
        port: 8080,
        local: false,
    };
    env.put_backend(&b2, PROTO_TCP);
    env.put_table(1, &[&b2]);
    // A retransmitted FIN stays on the old backend; a new SYN on the tuple re-selects.
    let (_, out) = env.run(
        PROG_TC_FROM_POD,
        &tcp(POD_A, 42_000, VIP, 80, FIN | ACK).build(),
    );
    assert_eq!(view(&out).daddr, ip(POD_B));
    let (_, out) = env.run(PROG_TC_FROM_POD, &tcp(POD_A, 42_000, VIP, 80, SYN).build());
    assert_eq!(view(&out).daddr, ip(POD_REMOTE));
}

#[test]
fn nodeport_xdp_local_backend_keeps_client_address() {
    let mut env = env();
    let b = backend_a();
    env.service(
        NODE,
        30080,
        PROTO_TCP,
        SCOPE_EXTERNAL,
        3,
        SVC_F_NODEPORT,
        &[&b],
    );
    let (v, out) = env.run(PROG_XDP, &tcp(CLIENT, 50_000, NODE, 30080, SYN).build());
    assert_eq!(v, XDP_PASS);
    let o = view(&out);
    assert_eq!(
        (o.saddr, o.sport, o.daddr, o.dport),
        (ip(CLIENT), 50_000, ip(POD_B), 8080)
    );
    // The backend pod's reply leaves through its veth: from_pod reverse-translates it.
    let (v, out) = env.run(
        PROG_TC_FROM_POD,
        &tcp(POD_B, 8080, CLIENT, 50_000, SYN | ACK).build(),
    );
    assert_eq!(v, TC_ACT_OK);
    let o = view(&out);
    assert_eq!(
        (o.saddr, o.sport, o.daddr, o.dport),
        (ip(NODE), 30080, ip(CLIENT), 50_000)
    );
    assert_eq!(env.reason(Reason::NatNew), 1);
    assert_eq!(env.reason(Reason::ReverseNat), 1);
}

#[test]
fn nodeport_xdp_remote_backend_is_snated_to_the_node() {
    let mut env = env();
    let b = Backend {
        id: 7,
        addr: POD_REMOTE,
        port: 8080,
        local: false,
    };
    env.service(
        NODE,
        30080,
        PROTO_TCP,
        SCOPE_EXTERNAL,
        3,
        SVC_F_NODEPORT,
        &[&b],
    );
    let (v, out) = env.run(PROG_XDP, &tcp(CLIENT, 50_001, NODE, 30080, SYN).build());
    assert_eq!(v, XDP_PASS);
    let o = view(&out);
    assert_eq!(
        (o.saddr, o.daddr, o.dport),
        (ip(NODE), ip(POD_REMOTE), 8080)
    );
    assert!(
        (SNAT_MIN..=SNAT_MAX).contains(&o.sport),
        "SNAT port {}",
        o.sport
    );
    let snat_port = o.sport;
    // Next packet of the flow: same SNAT port.
    let (_, out) = env.run(
        PROG_XDP,
        &tcp(CLIENT, 50_001, NODE, 30080, ACK | PSH).build(),
    );
    assert_eq!(view(&out).sport, snat_port);
    // A second client flow gets a different SNAT port... or at least its own entry.
    let (_, out) = env.run(PROG_XDP, &tcp(CLIENT, 50_002, NODE, 30080, SYN).build());
    let other = view(&out).sport;
    assert_ne!(other, snat_port, "two flows share a SNAT port");
    // The reply comes back from the other node to this node's SNAT port.
    let (v, out) = env.run(
        PROG_XDP,
        &tcp(POD_REMOTE, 8080, NODE, snat_port, SYN | ACK).build(),
    );
    assert_eq!(v, XDP_PASS);
    let o = view(&out);
    assert_eq!(
        (o.saddr, o.sport, o.daddr, o.dport),
        (ip(NODE), 30080, ip(CLIENT), 50_001)
    );
}

#[test]
fn nodeport_local_policy_never_snats() {
    let mut env = env();
    let b = Backend {
        id: 7,
        addr: POD_REMOTE,
        port: 8080,
        local: false,
    };
    env.service(
        NODE,
        30081,
        PROTO_TCP,
        SCOPE_EXTERNAL,
        3,
        SVC_F_NODEPORT | SVC_F_LOCAL,
        &[&b],
    );
    let (_, out) = env.run(PROG_XDP, &tcp(CLIENT, 50_003, NODE, 30081, SYN).build());
    assert_eq!(view(&out).saddr, ip(CLIENT));
}

#[test]
fn snat_port_exhaustion_drops() {
    let mut env = env();
    env.set_config(NodeConfig {
        node_addr_be: be32(NODE),
        maglev_size: M,
        netns_cookie: 0,
        snat_port_min: 40_000,
        snat_port_max: 40_000,
        ready: 1,
    });
    let b = Backend {
        id: 7,
        addr: POD_REMOTE,
        port: 8080,
        local: false,
    };
    env.service(
        NODE,
        30080,
        PROTO_TCP,
        SCOPE_EXTERNAL,
        3,
        SVC_F_NODEPORT,
        &[&b],
    );
    let (v, out) = env.run(PROG_XDP, &tcp(CLIENT, 1, NODE, 30080, SYN).build());
    assert_eq!((v, view(&out).sport), (XDP_PASS, 40_000));
    let (v, _) = env.run(PROG_XDP, &tcp(CLIENT, 2, NODE, 30080, SYN).build());
    assert_eq!(v, XDP_DROP, "the only SNAT port is taken");
    assert_eq!(env.reason(Reason::DropSnatExhausted), 1);
}

/// Later fragments have no UDP header: they follow the translation of their datagram's
/// first fragment (same source, destination, IP id), forward and back, at TC and XDP,
/// with a valid IP checksum and the payload untouched.
#[test]
fn fragments_follow_their_first_fragment_both_ways() {
    let mut env = env();
    let b = Backend {
        id: 1,
        addr: POD_B,
        port: 5353,
        local: true,
    };
    env.service(
        VIP,
        53,
        PROTO_UDP,
        SCOPE_INTERNAL,
        2,
        SVC_F_CLUSTER_IP,
        &[&b],
    );
    env.service(
        NODE,
        30053,
        PROTO_UDP,
        SCOPE_EXTERNAL,
        3,
        SVC_F_NODEPORT,
        &[&b],
    );
    let rest = vec![0xab_u8; 16];
    // A later fragment at offset 32 bytes (4 units), from `src` to `dst`.
    let later = |src, dst| {
        frame(
            &Pkt {
                frag: 4,
                ..udp(src, 0, dst, 0)
            },
            &rest,
        )
    };
    let first = |src, sport, dst, dport| {
        let mut p = udp(src, sport, dst, dport);
        p.frag = 0x2000; // more fragments
        p.payload = vec![0xcd; 24];
        p.build()
    };
    // Pod A -> ClusterIP.
    let (v, out) = env.run(PROG_TC_FROM_POD, &first(POD_A, 4000, VIP, 53));
    assert_eq!(v, TC_ACT_OK);
    assert_eq!((view(&out).daddr, view(&out).dport), (ip(POD_B), 5353));
    let (v, out) = env.run(PROG_TC_FROM_POD, &later(POD_A, VIP));
    assert_eq!(v, TC_ACT_OK);
    assert_eq!((view(&out).saddr, view(&out).daddr), (ip(POD_A), ip(POD_B)));
    assert_eq!(&out[34..], &rest[..], "payload untouched");
    // The backend's fragmented reply, reverse-translated to the ClusterIP.
    let (v, out) = env.run(PROG_TC_FROM_POD, &first(POD_B, 5353, POD_A, 4000));
    assert_eq!(v, TC_ACT_OK);
    assert_eq!((view(&out).saddr, view(&out).sport), (ip(VIP), 53));
    let (v, out) = env.run(PROG_TC_FROM_POD, &later(POD_B, POD_A));
    assert_eq!(v, TC_ACT_OK);
    assert_eq!((view(&out).saddr, view(&out).daddr), (ip(VIP), ip(POD_A)));
    // An external client -> NodePort through XDP.
    let (v, out) = env.run(PROG_XDP, &first(CLIENT, 4001, NODE, 30053));
    assert_eq!(v, XDP_PASS);
    assert_eq!(view(&out).daddr, ip(POD_B));
    let (v, out) = env.run(PROG_XDP, &later(CLIENT, NODE));
    assert_eq!(v, XDP_PASS);
    assert_eq!(
        (view(&out).saddr, view(&out).daddr),
        (ip(CLIENT), ip(POD_B))
    );
    assert_eq!(&out[34..], &rest[..]);
    assert_eq!(env.reason(Reason::PassFragment), 0);
}

/// loadBalancerSourceRanges, written through the agent's own writer (so its key encoding is
/// what the program looks up): a SYN from inside a range is served, from outside dropped;
/// a connection already established is not cut by it (only new ones are checked).
#[test]
fn source_ranges_admit_only_listed_sources_to_a_load_balancer_address() {
    use lb_agent::maps::{MapWriter as _, kernel::KernelMaps};
    use lb_agent::plan::MapOp;
    let mut env = env();
    let lb_ip = [203, 0, 113, 7];
    let b = backend_a();
    env.service(
        lb_ip,
        443,
        PROTO_TCP,
        SCOPE_EXTERNAL,
        6,
        SVC_F_EXTERNAL_IP | SVC_F_SRC_RANGES,
        &[&b],
    );
    let mut maps = KernelMaps::open_pinned(&env.dir).expect("pinned maps");
    // 192.168.50.0/25 holds CLIENT (.99); /30 around .200 does not; lut 5's range is
    // another entry's.
    for (lut_id, addr, prefix) in [
        (6, Ipv4Addr::new(192, 168, 50, 0), 25),
        (6, Ipv4Addr::new(192, 168, 50, 200), 30),
        (5, Ipv4Addr::new(198, 51, 100, 0), 24),
    ] {
        maps.apply(&MapOp::PutSrcRange {
            lut_id,
            addr,
            prefix,
        })
        .expect("range");
    }
    let (v, out) = env.run(PROG_XDP, &tcp(CLIENT, 50_100, lb_ip, 443, SYN).build());
    assert_eq!(v, XDP_PASS);
    assert_eq!(view(&out).daddr, ip(POD_B), "inside the range: served");
    let outsider = [192, 168, 50, 130];
    let (v, _) = env.run(PROG_XDP, &tcp(outsider, 50_101, lb_ip, 443, SYN).build());
    assert_eq!(v, XDP_DROP, "outside every range of this entry");
    let other_entry = [198, 51, 100, 9];
    let (v, _) = env.run(PROG_XDP, &tcp(other_entry, 50_102, lb_ip, 443, SYN).build());
    assert_eq!(v, XDP_DROP, "another entry's range does not count");
    assert_eq!(env.reason(Reason::DropSourceRange), 2);
    // The range that admitted CLIENT goes: its established flow goes on, a new one not.
    maps.apply(&MapOp::DelSrcRange {
        lut_id: 6,
        addr: Ipv4Addr::new(192, 168, 50, 0),
        prefix: 25,
    })
    .expect("delete");
    let (v, _) = env.run(PROG_XDP, &tcp(CLIENT, 50_100, lb_ip, 443, ACK).build());
    assert_eq!(v, XDP_PASS);
    let (v, _) = env.run(PROG_XDP, &tcp(CLIENT, 50_103, lb_ip, 443, SYN).build());
    assert_eq!(v, XDP_DROP);
    let mut back = maps.read_back(M).expect("read back").src_ranges;
    back.sort_unstable();
    assert_eq!(
        back,
        [
            (5, Ipv4Addr::new(198, 51, 100, 0), 24),
            (6, Ipv4Addr::new(192, 168, 50, 200), 30)
        ]
    );
}

/// kube-proxy drops (no RST, no ICMP) a new connection to an entry whose Local traffic
/// policy leaves it no endpoint on this node while the Service has endpoints elsewhere.
#[test]
fn no_local_endpoints_under_a_local_policy_is_a_silent_drop() {
    let mut env = env();
    env.service(
        NODE,
        30091,
        PROTO_TCP,
        SCOPE_EXTERNAL,
        4,
        SVC_F_NODEPORT | SVC_F_LOCAL | SVC_F_DROP_EMPTY,
        &[],
    );
    let (v, _) = env.run(PROG_XDP, &tcp(CLIENT, 50_020, NODE, 30091, SYN).build());
    assert_eq!(v, XDP_DROP);
    let (v, _) = env.run(PROG_XDP, &udp(CLIENT, 50_021, NODE, 30091).build());
    assert_eq!(v, XDP_PASS, "another protocol is not this entry");
    env.service(
        VIP,
        8081,
        PROTO_UDP,
        SCOPE_INTERNAL,
        5,
        SVC_F_CLUSTER_IP | SVC_F_LOCAL | SVC_F_DROP_EMPTY,
        &[],
    );
    let (v, _) = env.run(PROG_TC_FROM_POD, &udp(POD_A, 5555, VIP, 8081).build());
    assert_eq!(v, TC_ACT_SHOT, "no ICMP port unreachable either");
    assert_eq!(env.reason(Reason::DropNoLocalEndpoints), 2);
    assert_eq!(env.reason(Reason::RejectNoEndpoints), 0);
}

#[test]
fn no_endpoints_tcp_gets_rst() {
    let mut env = env();
    env.service(
        NODE,
        30090,
        PROTO_TCP,
        SCOPE_EXTERNAL,
        4,
        SVC_F_NODEPORT,
        &[],
    );
    let mut syn = tcp(CLIENT, 50_010, NODE, 30090, SYN);
    syn.seq = 0xffff_fff0;
    syn.ip_options = vec![1, 1, 1, 0]; // NOPs + EOL: the answer must not copy them
    syn.payload = vec![7; 10];
    let (v, out) = env.run(PROG_XDP, &syn.build());
    assert_eq!(v, XDP_TX);
    assert_eq!(out.len(), 54, "RST is exactly Ethernet + IP + TCP");
    let o = view(&out);
    assert_eq!((o.dst_mac, o.src_mac), (MAC_A, MAC_B), "MACs swapped");
    assert_eq!(
        (o.saddr, o.sport, o.daddr, o.dport),
        (ip(NODE), 30090, ip(CLIENT), 50_010)
    );
    assert_eq!(o.tcp_flags, RST | ACK);
    assert_eq!(o.seq, 0);
    assert_eq!(
        o.ack,
        0xffff_fff0_u32.wrapping_add(10 + 1),
        "ack covers payload and SYN"
    );
    assert_eq!(env.reason(Reason::RejectNoEndpoints), 1);

    // A segment with ACK set gets a RST whose seq is the segment's ack.
    let (v, out) = env.run(PROG_XDP, &tcp(CLIENT, 50_011, NODE, 30090, ACK).build());
    assert_eq!(v, XDP_TX);
    let o = view(&out);
    assert_eq!((o.tcp_flags, o.seq), (RST, 5000));
    // A RST is never answered.
    let (v, _) = env.run(PROG_XDP, &tcp(CLIENT, 50_012, NODE, 30090, RST).build());
    assert_eq!(v, XDP_DROP);

    // From a pod (ClusterIP with no endpoints): RST sent back into the pod.
    env.service(VIP, 81, PROTO_TCP, SCOPE_INTERNAL, 5, 0, &[]);
    let (v, out) = env.run(PROG_TC_FROM_POD, &tcp(POD_A, 43_000, VIP, 81, SYN).build());
    assert_eq!(v, TC_ACT_REDIRECT);
    let o = view(&out);
    assert_eq!(
        (o.saddr, o.sport, o.daddr, o.dport),
        (ip(VIP), 81, ip(POD_A), 43_000)
    );
    assert_eq!((o.tcp_flags, o.ack), (RST | ACK, 1001));
}

#[test]
fn no_endpoints_udp_gets_icmp_port_unreachable() {
    let mut env = env();
    env.service(
        NODE,
        30091,
        PROTO_UDP,
        SCOPE_EXTERNAL,
        4,
        SVC_F_NODEPORT,
        &[],
    );
    let input = udp(CLIENT, 50_020, NODE, 30091).build();
    let (v, out) = env.run(PROG_XDP, &input);
    assert_eq!(v, XDP_TX);
    let o = view(&out);
    assert_eq!((o.dst_mac, o.src_mac), (MAC_A, MAC_B));
    assert_eq!((o.saddr, o.daddr, o.proto), (ip(NODE), ip(CLIENT), 1));
    assert_eq!(o.ip_len, 20 + 8 + 20 + 8);
    assert_eq!(out.len(), 14 + o.ip_len);
    assert_eq!(&o.l4_payload[0..2], &[3, 3], "type 3 code 3");
    assert_eq!(
        &o.l4_payload[8..],
        &input[14..14 + 28],
        "quotes IP header + 8 bytes"
    );
    assert_eq!(env.reason(Reason::RejectNoEndpoints), 1);

    // The same from a pod, through TC.
    env.service(VIP, 53, PROTO_UDP, SCOPE_INTERNAL, 5, 0, &[]);
    let input = udp(POD_A, 3000, VIP, 53).build();
    let (v, out) = env.run(PROG_TC_FROM_POD, &input);
    assert_eq!(v, TC_ACT_REDIRECT);
    let o = view(&out);
    assert_eq!((o.saddr, o.daddr, o.proto), (ip(VIP), ip(POD_A), 1));
    assert_eq!(&o.l4_payload[8..], &input[14..14 + 28]);
}

#[test]
fn client_ip_affinity_sticks_across_flows() {
    let mut env = env();
    let backends: Vec<Backend> = (1..=5)
        .map(|i| Backend {
            id: i,
            addr: [10, 244, 3, i as u8],
            port: 8080,
            local: true,
        })
        .collect();
    let refs: Vec<&Backend> = backends.iter().collect();
    env.service(VIP, 80, PROTO_TCP, SCOPE_INTERNAL, 6, SVC_F_AFFINITY, &refs);
    let (_, out) = env.run(PROG_TC_FROM_POD, &tcp(POD_A, 44_000, VIP, 80, SYN).build());
    let first = view(&out).daddr;
    let aff = env.affinity(6, POD_A).expect("affinity entry");
    assert_eq!(
        Ipv4Addr::from(backends[aff.backend_id as usize - 1].addr),
        first
    );
    // Many source ports (different Maglev slots by 5-tuple): all go to the same backend.
    for port in 44_001..44_040 {
        let (_, out) = env.run(PROG_TC_FROM_POD, &tcp(POD_A, port, VIP, 80, SYN).build());
        assert_eq!(
            view(&out).daddr,
            first,
            "port {port} left the affinity backend"
        );
    }
    // Without affinity the same ports spread over several backends (the check above
    // would be meaningless otherwise).
    env.service(VIP, 81, PROTO_TCP, SCOPE_INTERNAL, 7, 0, &refs);
    let mut seen = std::collections::HashSet::new();
    for port in 44_001..44_040 {
        let (_, out) = env.run(PROG_TC_FROM_POD, &tcp(POD_A, port, VIP, 81, SYN).build());
        seen.insert(view(&out).daddr);
    }
    assert!(seen.len() > 1, "5-tuple hashing did not spread: {seen:?}");
}

#[test]
fn hairpin_is_snated_and_sent_back_into_the_pod() {
    let mut env = env();
    let b = Backend {
        id: 1,
        addr: POD_A,
        port: 8080,
        local: true,
    };
    env.service(VIP, 80, PROTO_TCP, SCOPE_INTERNAL, 1, 0, &[&b]);
    let (v, out) = env.run(PROG_TC_FROM_POD, &tcp(POD_A, 45_000, VIP, 80, SYN).build());
    assert_eq!(
        v, TC_ACT_REDIRECT,
        "hairpin goes straight back into the pod"
    );
    let o = view(&out);
    assert_eq!(o.saddr.octets(), HAIRPIN_ADDR_BE.to_ne_bytes());
    assert_eq!(o.saddr, Ipv4Addr::new(169, 254, 42, 1));
    assert_eq!((o.daddr, o.dport), (ip(POD_A), 8080));
    assert_eq!(
        (o.dst_mac, o.src_mac),
        (MAC_A, MAC_B),
        "MACs swapped for the way back"
    );
    let hp = o.sport;
    // The pod answers 169.254.42.1: the reply becomes VIP -> pod.
    let reply = tcp(POD_A, 8080, [169, 254, 42, 1], hp, SYN | ACK).build();
    let (v, out) = env.run(PROG_TC_FROM_POD, &reply);
    assert_eq!(v, TC_ACT_REDIRECT);
    let o = view(&out);
    assert_eq!(
        (o.saddr, o.sport, o.daddr, o.dport),
        (ip(VIP), 80, ip(POD_A), 45_000)
    );
    assert_eq!(env.revnat_entries().len(), 1);
}

#[test]
fn missing_backend_is_counted_and_dropped() {
    let mut env = env();
    let b = backend_a();
    env.service(VIP, 80, PROTO_TCP, SCOPE_INTERNAL, 1, 0, &[&b]);
    env.put_table(1, &[]); // every slot id 0: a table not written yet
    let (v, _) = env.run(PROG_TC_FROM_POD, &tcp(POD_A, 46_000, VIP, 80, SYN).build());
    assert_eq!(v, TC_ACT_SHOT);
    assert_eq!(env.reason(Reason::DropNoBackend), 1);
}

#[test]
fn icmp_frag_needed_from_a_backend_is_translated() {
    let mut env = env();
    let b = Backend {
        id: 7,
        addr: POD_REMOTE,
        port: 8080,
        local: false,
    };
    env.service(
        NODE,
        30080,
        PROTO_TCP,
        SCOPE_EXTERNAL,
        3,
        SVC_F_NODEPORT,
        &[&b],
    );
    let (_, out) = env.run(PROG_XDP, &tcp(CLIENT, 50_100, NODE, 30080, SYN).build());
    let snat_port = view(&out).sport;
    // The backend (or a router next to it) says "fragmentation needed" about the packet
    // NODE:snat -> backend it received; the error travels back to the node.
    let inner = tcp(NODE, snat_port, POD_REMOTE, 8080, ACK | PSH);
    let err = icmp_error(POD_REMOTE, NODE, 3, 4, &inner);
    let (v, out) = env.run(PROG_XDP, &err);
    assert_eq!(v, XDP_PASS);
    let o = view(&out); // verifies outer IP and ICMP checksums
    assert_eq!(
        (o.saddr, o.daddr),
        (ip(NODE), ip(CLIENT)),
        "outer: from the service to the client"
    );
    let q = &o.l4_payload[8..];
    assert_eq!(csum(&q[..20]), 0, "quoted IP header checksum");
    assert_eq!(
        Ipv4Addr::new(q[12], q[13], q[14], q[15]),
        ip(CLIENT),
        "inner source"
    );
    assert_eq!(
        Ipv4Addr::new(q[16], q[17], q[18], q[19]),
        ip(NODE),
        "inner destination"
    );
    assert_eq!(u16::from_be_bytes([q[20], q[21]]), 50_100);
    assert_eq!(u16::from_be_bytes([q[22], q[23]]), 30080);
    assert_eq!(env.reason(Reason::IcmpErrorTranslated), 1);

    // An ICMP error about nothing we track passes untouched.
    let stray = icmp_error(POD_REMOTE, NODE, 3, 4, &tcp(NODE, 1, POD_REMOTE, 2, ACK));
    let (v, out) = env.run(PROG_XDP, &stray);
    assert_eq!((v, out), (XDP_PASS, stray));
}

#[test]
fn icmp_error_from_local_backend_pod_is_translated_in_tc() {
    let mut env = env();
    let b = backend_a();
    env.service(
        VIP,
        53,
        PROTO_UDP,
        SCOPE_INTERNAL,
        2,
        0,
        &[&Backend { port: 5353, ..b }],
    );
    env.run(PROG_TC_FROM_POD, &udp(POD_A, 3000, VIP, 53).build());
    // The backend pod answers with port unreachable about POD_A:3000 -> POD_B:5353.
    let err = icmp_error(POD_B, POD_A, 3, 3, &udp(POD_A, 3000, POD_B, 5353));
    let (v, out) = env.run(PROG_TC_FROM_POD, &err);
    assert_eq!(v, TC_ACT_OK);
    let o = view(&out);
    assert_eq!((o.saddr, o.daddr), (ip(VIP), ip(POD_A)));
    let q = &o.l4_payload[8..];
    assert_eq!(csum(&q[..20]), 0, "quoted IP header checksum");
    assert_eq!(Ipv4Addr::new(q[16], q[17], q[18], q[19]), ip(VIP));
    assert_eq!(u16::from_be_bytes([q[22], q[23]]), 53);
    // The quoted UDP checksum is the one of the datagram the client sent (to the VIP).
    let sent = udp(POD_A, 3000, VIP, 53).l4();
    assert_eq!(&q[26..28], &sent[6..8], "quoted UDP checksum");
    assert_eq!(env.reason(Reason::IcmpErrorTranslated), 1);
}

#[test]
fn nothing_is_translated_before_the_agent_writes_the_config() {
    let mut env = env();
    let b = backend_a();
    env.service(VIP, 80, PROTO_TCP, SCOPE_INTERNAL, 1, 0, &[&b]);
    env.set_config(NodeConfig::default());
    let p = tcp(POD_A, 47_000, VIP, 80, SYN).build();
    assert_eq!(env.run(PROG_TC_FROM_POD, &p), (TC_ACT_OK, p));
    assert_eq!(env.reason(Reason::PassOther), 1);
}

#[test]
fn maps_are_pinned_by_name_and_reused_by_a_second_load() {
    let mut env = env();
    let b = backend_a();
    env.service(VIP, 80, PROTO_TCP, SCOPE_INTERNAL, 1, 0, &[&b]);
    env.run(PROG_TC_FROM_POD, &tcp(POD_A, 48_000, VIP, 80, SYN).build());
    for m in lb_common::ALL_MAPS {
        assert!(env.dir.join(m).exists(), "map {m} not pinned");
    }
    // A restarted agent: the conntrack entry is still there and still used.
    let opts = LoadOptions {
        bpffs_dir: env.dir.clone(),
        max_services: 16,
        max_backends: 64,
        maglev_size: M,
        conntrack_size: 1024,
        affinity_size: 64,
    };
    let mut second = Dataplane::load(&opts).expect("reload over the pins");
    let ct: HashMap<&mut MapData, FlowKey, CtValue> =
        HashMap::try_from(second.ebpf().map_mut(MAP_CONNTRACK).unwrap()).unwrap();
    assert_eq!(
        ct.get(&flow(POD_A, 48_000, VIP, 80, PROTO_TCP), 0)
            .unwrap()
            .backend_id,
        1
    );
    // A size change over existing pins is refused with a clear error.
    let bigger = LoadOptions {
        conntrack_size: 2048,
        ..opts
    };
    let err = Dataplane::load(&bigger)
        .err()
        .expect("size mismatch must fail");
    assert!(
        matches!(err, lb_agent::bpf::BpfError::PinnedMapMismatch { .. }),
        "{err}"
    );
}

#[test]
fn udp_zero_checksum_stays_zero_and_others_stay_valid() {
    let mut env = env();
    let b = Backend {
        id: 3,
        addr: POD_B,
        port: 5353,
        local: false,
    };
    env.service(VIP, 53, PROTO_UDP, SCOPE_INTERNAL, 2, 0, &[&b]);
    env.service(
        NODE,
        30053,
        PROTO_UDP,
        SCOPE_EXTERNAL,
        3,
        SVC_F_NODEPORT,
        &[&b],
    );
    for (prog, daddr, dport) in [(PROG_TC_FROM_POD, VIP, 53), (PROG_XDP, NODE, 30053)] {
        let mut zero = udp(POD_A, 3100, daddr, dport);
        zero.udp_zero_csum = true;
        let (_, out) = env.run(prog, &zero.build());
        let o = view(&out);
        assert_eq!((o.daddr, o.dport), (ip(POD_B), 5353), "{prog}");
        assert_eq!(o.l4_csum, 0, "{prog}: a zero UDP checksum must stay zero");
        // With a checksum: still valid (view verifies) and not zero.
        let (_, out) = env.run(prog, &udp(POD_A, 3101, daddr, dport).build());
        let o = view(&out);
        assert_eq!((o.daddr, o.dport), (ip(POD_B), 5353), "{prog}");
        assert_ne!(o.l4_csum, 0, "{prog}");
    }
    // The XDP flow was SNATed (remote backend); the reply is reverse-translated.
    let snat_port = {
        let (_, out) = env.run(PROG_XDP, &udp(POD_A, 3101, NODE, 30053).build());
        view(&out).sport
    };
    let (v, out) = env.run(PROG_XDP, &udp(POD_B, 5353, NODE, snat_port).build());
    assert_eq!(v, XDP_PASS);
    let o = view(&out);
    assert_eq!(
        (o.saddr, o.sport, o.daddr, o.dport),
        (ip(NODE), 30053, ip(POD_A), 3101)
    );
}

#[test]
fn a_direct_connection_reusing_a_service_connections_port_is_not_reverse_translated() {
    let mut env = env();
    let b1 = backend_a();
    env.service(VIP, 80, PROTO_TCP, SCOPE_INTERNAL, 1, 0, &[&b1]);
    // A service connection from POD_A:43000 to the VIP, DNATed to POD_B:8080, and its
    // reply translated back.
    env.run(PROG_TC_FROM_POD, &tcp(POD_A, 43_000, VIP, 80, SYN).build());
    let reply = tcp(POD_B, 8080, POD_A, 43_000, SYN | ACK).build();
    let (_, out) = env.run(PROG_TC_FROM_POD, &reply);
    assert_eq!(view(&out).saddr, ip(VIP), "the service connection's reply");
    let reply_key = flow(POD_B, 8080, POD_A, 43_000, PROTO_TCP);
    assert!(
        env.revnat_entries().iter().any(|(k, _)| *k == reply_key),
        "reverse-NAT entry of the service connection"
    );

    // Later the client opens a direct connection to the pod from the same port (the
    // kernel may reuse it: to the client the two connections have different tuples).
    // The SYN is no service traffic and passes unchanged...
    let syn = tcp(POD_A, 43_000, POD_B, 8080, SYN).build();
    let before = env.reason(Reason::PassNotService);
    let (v, out) = env.run(PROG_TC_FROM_POD, &syn);
    assert_eq!((v, &out), (TC_ACT_OK, &syn));
    assert_eq!(env.reason(Reason::PassNotService), before + 1);
    // ... and the stale entry is gone, so the pod's SYN-ACK reaches the client as sent
    // (before the fix it was rewritten to come from the VIP and the connect hung).
    assert!(
        !env.revnat_entries().iter().any(|(k, _)| *k == reply_key),
        "the stale reverse-NAT entry was removed"
    );
    let (v, out) = env.run(PROG_TC_FROM_POD, &reply);
    assert_eq!(
        (v, &out),
        (TC_ACT_OK, &reply),
        "the direct reply is left alone"
    );
    let (v, out) = env.run(PROG_TC_TO_POD, &reply);
    assert_eq!((v, &out), (TC_ACT_OK, &reply));

    // A new service connection from yet another port is translated as before.
    env.run(PROG_TC_FROM_POD, &tcp(POD_A, 43_001, VIP, 80, SYN).build());
    let (_, out) = env.run(
        PROG_TC_FROM_POD,
        &tcp(POD_B, 8080, POD_A, 43_001, SYN | ACK).build(),
    );
    assert_eq!(view(&out).saddr, ip(VIP));
}
