//! A kube-proxy-shaped iptables rule set (kube-proxy's iptables mode), rendered as
//! iptables-restore input: KUBE-SERVICES (one rule per Service port, matched in order) ->
//! KUBE-SVC-* (one rule per endpoint with `-m statistic --mode random --probability 1/k`)
//! -> KUBE-SEP-* (mark hairpin for masquerade, DNAT to the endpoint).
//!
//! Shared by the control-plane benchmark (time to restore) and the data-plane benchmark
//! (the rules in effect on traffic), included with `#[path = "common/iptables.rs"]`.
use std::fmt::Write as _;
use std::net::Ipv4Addr;

/// What to render: Services `0..services`, each with `endpoints` endpoints.
pub struct RuleSet<'a> {
    pub services: u32,
    pub endpoints: u32,
    /// Kubernetes namespace of the Services (`<namespace>/svc-<i>:http` in comments).
    pub namespace: &'a str,
    /// Service port (KUBE-SERVICES matches it) and endpoint port (DNAT target).
    pub port: u16,
    pub target_port: u16,
    /// ClusterIP of Service `i`.
    pub vip: &'a dyn Fn(u32) -> Ipv4Addr,
    /// Address of endpoint `j` of Service `i`.
    pub endpoint: &'a dyn Fn(u32, u32) -> Ipv4Addr,
    /// Also the jumps that make the rules take effect, as kube-proxy writes them:
    /// PREROUTING and OUTPUT -> KUBE-SERVICES, POSTROUTING -> KUBE-POSTROUTING (masquerade
    /// of marked packets). Not needed to time a restore.
    pub portal_jumps: bool,
}

/// kube-proxy's chain name hash: KUBE-SVC-<16 chars of base32(sha256)>; any stable
/// 16-character name has the same cost for iptables.
pub fn chain(prefix: &str, s: &str) -> String {
    let h = lb_common::maglev::fnv1a64(s.as_bytes(), 0);
    format!("{prefix}-{h:016X}")
}

/// The nat table. `only = Some((i, generation))` renders just Service `i`'s chains with
/// endpoint chains named after `generation` (kube-proxy's partial restore of one changed
/// Service, for `iptables-restore --noflush`); `None` renders everything.
pub fn render(r: &RuleSet<'_>, only: Option<(u32, u32)>) -> String {
    let mut nat = String::from("*nat\n");
    let ids: Vec<u32> = match only {
        Some((i, _)) => vec![i],
        None => (0..r.services).collect(),
    };
    if only.is_none() {
        if r.portal_jumps {
            nat.push_str(
                ":PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:KUBE-POSTROUTING - [0:0]\n",
            );
        }
        nat.push_str(":KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n");
        nat.push_str("-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n");
        if r.portal_jumps {
            nat.push_str(
                "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
                 -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
                 -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
                 -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
                 -A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n\
                 -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n",
            );
        }
    }
    let generation = only.map_or(0, |(_, g)| g);
    let ns = r.namespace;
    for &i in &ids {
        let svc = chain("KUBE-SVC", &format!("{ns}/svc-{i}:http"));
        let _ = writeln!(nat, ":{svc} - [0:0]");
        for j in 0..r.endpoints {
            let _ = writeln!(
                nat,
                ":{} - [0:0]",
                chain("KUBE-SEP", &format!("{i}/{j}/{generation}"))
            );
        }
    }
    for &i in &ids {
        let svc = chain("KUBE-SVC", &format!("{ns}/svc-{i}:http"));
        if only.is_none() {
            let _ = writeln!(
                nat,
                "-A KUBE-SERVICES -d {}/32 -p tcp -m comment --comment \"{ns}/svc-{i}:http cluster IP\" -m tcp --dport {} -j {svc}",
                (r.vip)(i),
                r.port
            );
        }
        for j in 0..r.endpoints {
            let sep = chain("KUBE-SEP", &format!("{i}/{j}/{generation}"));
            let ep = (r.endpoint)(i, j);
            let tp = r.target_port;
            let left = r.endpoints - j;
            if left > 1 {
                let _ = writeln!(
                    nat,
                    "-A {svc} -m comment --comment \"{ns}/svc-{i}:http -> {ep}:{tp}\" -m statistic --mode random --probability {:.11} -j {sep}",
                    1.0 / f64::from(left)
                );
            } else {
                let _ = writeln!(
                    nat,
                    "-A {svc} -m comment --comment \"{ns}/svc-{i}:http -> {ep}:{tp}\" -j {sep}"
                );
            }
            let _ = writeln!(nat, "-A {sep} -s {ep}/32 -j KUBE-MARK-MASQ");
            let _ = writeln!(
                nat,
                "-A {sep} -p tcp -m tcp -j DNAT --to-destination {ep}:{tp}"
            );
        }
    }
    nat.push_str("COMMIT\n");
    nat
}
