//! The sandbox cluster: a client namespace, N node namespaces on the client network, pod
//! namespaces behind host-side veths on their node, static routes between nodes, a pod server
//! in every pod, and a manifests directory describing it all. Everything is removed on drop.
//!
//! ```text
//!  client ns: br0 10.0.0.1/24 ── veth0 ─┬─ eth0 10.0.0.10  node-0 ns ── lxc* ── eth0 pod ns 10.244.0.x
//!                              └ veth1 ─┴─ eth0 10.0.0.11  node-1 ns ── lxc* ── eth0 pod ns 10.244.1.x
//! ```
use std::fmt::Write as _;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};

use crate::client::{DEFAULT_TIMEOUT, HttpRequest, HttpResponse, udp_request};
use crate::manifests::SEED_TLS_HOST;
use crate::netns::{self, in_netns, ip_batch, sysctls};
use crate::process::{self, Enter, Proc, SharedRegistry};
use crate::topology::{
    CLIENT_IP, CLIENT_PREFIX_LEN, EXTERNAL_IP_CIDR, NODE_EXTERNAL_IFACE, POD_GATEWAY,
    POD_IFACE_PREFIX, PodSpec, node_ip, node_name, pod_cidr,
};
use crate::{bins, manifests};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A node of the sandbox.
#[derive(Clone, Debug)]
pub struct Node {
    pub index: usize,
    /// `node-N`: the name of its v1/Node object.
    pub name: String,
    /// The network namespace.
    pub ns: String,
    /// The address of its external interface `eth0`.
    pub ip: Ipv4Addr,
    pub pod_cidr: String,
}

/// A pod of the sandbox.
#[derive(Clone, Debug)]
pub struct Pod {
    pub spec: PodSpec,
    pub name: String,
    pub ns: String,
    pub ip: Ipv4Addr,
    /// The host-side veth in the node's namespace.
    pub host_iface: String,
}

impl Pod {
    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip, self.spec.http_port))
    }

    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.spec.udp_port.map(|p| SocketAddr::from((self.ip, p)))
    }
}

/// Builds a [`Sandbox`].
#[derive(Clone, Debug)]
pub struct SandboxBuilder {
    nodes: usize,
    pods: Vec<PodSpec>,
    hosts: Vec<(String, Ipv4Addr)>,
    manifests: Vec<(String, String)>,
    start_pods: bool,
    /// Generate the seed Ingress's TLS Secret (a self-signed certificate).
    tls_secret: bool,
}

impl Default for SandboxBuilder {
    fn default() -> Self {
        Self {
            nodes: 2,
            pods: Vec::new(),
            hosts: Vec::new(),
            manifests: Vec::new(),
            start_pods: true,
            tls_secret: false,
        }
    }
}

impl SandboxBuilder {
    /// Number of nodes (at least 2; default 2).
    #[must_use]
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n.max(2);
        self
    }

    /// Adds a pod (address assigned in order of addition on its node).
    #[must_use]
    pub fn pod(mut self, pod: PodSpec) -> Self {
        self.pods.push(pod);
        self
    }

    /// The seed application: frontend-0..2 and backend-0..2 pods, their Services,
    /// EndpointSlices, Ingress and IngressClass in the manifests directory, and
    /// `backend`/`frontend` names resolving to their ClusterIPs inside pods.
    #[must_use]
    pub fn seed_app(mut self) -> Self {
        self.pods.extend(manifests::seed_pods());
        self.hosts.extend(manifests::seed_hosts());
        for (file, yaml) in manifests::seed_manifests() {
            if file != "nodes.yaml" {
                self.manifests.push((file.into(), yaml));
            }
        }
        self.tls_secret = true;
        self
    }

    /// A name that resolves to `ip` inside every pod (via /etc/netns/<ns>/hosts).
    #[must_use]
    pub fn host_entry(mut self, name: &str, ip: Ipv4Addr) -> Self {
        self.hosts.push((name.into(), ip));
        self
    }

    /// A file to put in the manifests directory at start.
    #[must_use]
    pub fn manifest(mut self, file: &str, yaml: &str) -> Self {
        self.manifests.push((file.into(), yaml.into()));
        self
    }

    /// Whether to start the pod servers (default true).
    #[must_use]
    pub fn start_pods(mut self, start: bool) -> Self {
        self.start_pods = start;
        self
    }

    /// Creates everything. On error, what was already created is removed.
    pub fn build(self) -> Result<Sandbox> {
        preflight()?;
        netns::sweep_stale();
        let id = format!(
            "{}{}x{}",
            netns::PREFIX,
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let workdir = std::env::temp_dir().join(&id);
        let _ = fs::remove_dir_all(&workdir);
        let mut sb = Sandbox {
            prefix: format!("{id}-"),
            client_ns: format!("{id}-client"),
            manifests_dir: workdir.join("manifests"),
            log_dir: workdir.join("logs"),
            bpffs_root: Path::new("/sys/fs/bpf").join(&id),
            id,
            workdir,
            nodes: Vec::new(),
            pods: Vec::new(),
            namespaces: Vec::new(),
            registry: SharedRegistry::default(),
            pod_procs: Vec::new(),
        };
        fs::create_dir_all(&sb.manifests_dir)?;
        fs::create_dir_all(&sb.log_dir)?;
        sb.create(&self)
            .with_context(|| format!("building sandbox {}", sb.id))?;
        Ok(sb)
    }
}

/// Checks what the sandbox needs, each with one line saying what to do.
pub fn preflight() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "the sandbox needs root (network namespaces, veths, BPF): run the tests as root, e.g. `sudo -E cargo xtask test`"
        );
    }
    for (tool, package) in [
        ("ip", "iproute2"),
        ("nsenter", "util-linux"),
        ("ethtool", "ethtool"),
    ] {
        if bins::which(tool).is_none() {
            bail!("`{tool}` is missing: run `cargo xtask setup` (or `apt-get install {package}`)");
        }
    }
    xdp_pass_object()?;
    Ok(())
}

/// Fails with one line unless bpffs is mounted at /sys/fs/bpf.
pub fn require_bpffs() -> Result<()> {
    let mounted = fs::read_to_string("/proc/mounts").is_ok_and(|m| {
        m.lines().any(|l| {
            l.split_whitespace().nth(1) == Some("/sys/fs/bpf")
                && l.split_whitespace().nth(2) == Some("bpf")
        })
    });
    if !mounted {
        bail!(
            "bpffs is not mounted at /sys/fs/bpf: run `cargo xtask setup` (or `mount -t bpf bpf /sys/fs/bpf`)"
        );
    }
    Ok(())
}

/// A running sandbox cluster. Dropping it ends its processes (by PID) and removes its
/// namespaces, /etc/netns entries, bpffs directories and work directory.
pub struct Sandbox {
    id: String,
    prefix: String,
    client_ns: String,
    workdir: PathBuf,
    manifests_dir: PathBuf,
    log_dir: PathBuf,
    bpffs_root: PathBuf,
    nodes: Vec<Node>,
    pods: Vec<Pod>,
    namespaces: Vec<String>,
    registry: SharedRegistry,
    pod_procs: Vec<Proc>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("id", &self.id)
            .field("nodes", &self.nodes)
            .field("pods", &self.pods)
            .finish_non_exhaustive()
    }
}

impl Sandbox {
    pub fn builder() -> SandboxBuilder {
        SandboxBuilder::default()
    }

    /// `lbt<pid>x<n>`: unique per sandbox; every name the sandbox creates starts with it.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Prefix of the sandbox's namespace names (`<id>-`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The external client's namespace (10.0.0.1).
    pub fn client_ns(&self) -> &str {
        &self.client_ns
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    pub fn node(&self, index: usize) -> &Node {
        &self.nodes[index]
    }

    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// The pod named `name` (panics when there is none: a test bug).
    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name} in the sandbox"))
    }

    /// Pods whose name starts with `<app>-`.
    pub fn pods_of(&self, app: &str) -> Vec<&Pod> {
        let prefix = format!("{app}-");
        self.pods
            .iter()
            .filter(|p| p.name.starts_with(&prefix))
            .collect()
    }

    /// Every namespace this sandbox created.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// The manifests directory (`--manifests` of lb-agent and lb-ingress).
    pub fn manifests_dir(&self) -> &Path {
        &self.manifests_dir
    }

    /// Where process logs go.
    pub fn log_dir(&self) -> &Path {
        &self.log_dir
    }

    /// Writes (or replaces) a file in the manifests directory atomically (write to a hidden
    /// temporary file, then rename), so a watcher never reads half a file.
    pub fn write_manifest(&self, file: &str, yaml: &str) -> Result<()> {
        let tmp = self.manifests_dir.join(format!(".{file}.tmp"));
        fs::write(&tmp, yaml)?;
        fs::rename(&tmp, self.manifests_dir.join(file))?;
        Ok(())
    }

    /// Writes `tls-secret.yaml`: the `kubernetes.io/tls` Secret the seed Ingress names,
    /// with a self-signed ECDSA P-256 certificate for [`SEED_TLS_HOST`] and the node
    /// addresses, made by `openssl` in the sandbox's work directory.
    fn write_tls_secret(&self) -> Result<()> {
        if bins::which("openssl").is_none() {
            bail!("`openssl` is missing: run `cargo xtask setup` (or `apt-get install openssl`)");
        }
        let dir = self.workdir.join("tls");
        fs::create_dir_all(&dir)?;
        let (crt, key) = (dir.join("tls.crt"), dir.join("tls.key"));
        let mut san = format!("subjectAltName=DNS:{SEED_TLS_HOST}");
        for n in &self.nodes {
            let _ = write!(san, ",IP:{}", n.ip);
        }
        let out = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "30"])
            .arg("-subj")
            .arg(format!("/CN={SEED_TLS_HOST}"))
            .arg("-addext")
            .arg(&san)
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&crt)
            .output()
            .context("run openssl")?;
        if !out.status.success() {
            bail!(
                "openssl req failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let yaml = manifests::tls_secret_yaml(
            manifests::SEED_TLS_SECRET,
            &fs::read_to_string(&crt)?,
            &fs::read_to_string(&key)?,
        );
        self.write_manifest("tls-secret.yaml", &yaml)
    }

    /// `GET https://{SEED_TLS_HOST}{path}` with curl from namespace `ns`, the name resolved
    /// to `addr` (certificate not verified: it is self-signed). The response (headers
    /// left out) and the HTTP version curl used (`2` when ALPN chose HTTP/2).
    pub fn https_get(
        &self,
        ns: &str,
        addr: SocketAddr,
        path: &str,
    ) -> Result<(HttpResponse, String)> {
        let url = format!("https://{SEED_TLS_HOST}:{}{path}", addr.port());
        let resolve = format!("{SEED_TLS_HOST}:{}:{}", addr.port(), addr.ip());
        let out = self.exec(
            ns,
            "curl",
            &[
                "-sk",
                "--max-time",
                "5",
                "--resolve",
                &resolve,
                "-w",
                "\n%{http_code} %{http_version}",
                &url,
            ],
        )?;
        if !out.status.success() {
            bail!(
                "curl {url} (resolved to {addr}) failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, last) = text.rsplit_once('\n').unwrap_or(("", &text));
        let mut last = last.split_whitespace();
        let status = last
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("no status from curl {url}: {text:?}"))?;
        let version = last.next().unwrap_or_default().to_owned();
        let resp = HttpResponse {
            status,
            headers: Vec::new(),
            body: body.to_owned(),
            local_addr: None,
        };
        Ok((resp, version))
    }

    pub fn remove_manifest(&self, file: &str) -> Result<()> {
        fs::remove_file(self.manifests_dir.join(file))?;
        Ok(())
    }

    /// The bpffs directory for node `index`'s agent (`/sys/fs/bpf/<id>/node-N`; removed on
    /// drop; the agent creates it).
    pub fn bpffs_dir(&self, index: usize) -> PathBuf {
        self.bpffs_root.join(node_name(index))
    }

    /// Starts a process in namespace `ns`; its output goes to `<log_dir>/<name>.log`. It is
    /// ended when the returned handle or the sandbox is dropped.
    pub fn spawn(
        &self,
        ns: &str,
        enter: Enter,
        name: &str,
        program: &Path,
        args: &[String],
    ) -> Result<Proc> {
        process::spawn(
            &self.registry,
            ns,
            enter,
            name,
            program,
            args,
            &self.log_dir,
        )
    }

    /// The arguments `lb-agent run` gets on node `index` (before `extra`).
    pub fn agent_args(&self, index: usize) -> Vec<String> {
        [
            "run",
            "--node-name",
            &node_name(index),
            "--manifests",
            &self.manifests_dir.display().to_string(),
            "--external-iface",
            NODE_EXTERNAL_IFACE,
            "--pod-iface-prefix",
            POD_IFACE_PREFIX,
            "--metrics-addr",
            "127.0.0.1:0",
            "--bpffs",
            &self.bpffs_dir(index).display().to_string(),
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// Starts `lb-agent run` in node `index`'s namespace (network namespace only, so it sees
    /// the host's bpffs), with [`Self::agent_args`] plus `extra`; a `--flag value` in `extra`
    /// replaces the default one (e.g. `--metrics-addr 10.0.0.10:9100`).
    pub fn start_agent(&self, index: usize, extra: &[&str]) -> Result<Proc> {
        let bin = bins::find("lb-agent")?;
        let args = merge_args(self.agent_args(index), extra);
        self.spawn(
            &self.nodes[index].ns,
            Enter::NetOnly,
            &format!("lb-agent-{}", node_name(index)),
            &bin,
            &args,
        )
    }

    /// The arguments `lb-ingress run` gets (before `extra`): HTTP on :80, HTTPS on :443.
    pub fn ingress_args(&self) -> Vec<String> {
        [
            "run",
            "--manifests",
            &self.manifests_dir.display().to_string(),
            "--listen",
            "0.0.0.0:80",
            "--listen-tls",
            "0.0.0.0:443",
            "--metrics-addr",
            "127.0.0.1:0",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// Starts `lb-ingress run` in node `index`'s namespace; reach it at `node_ip(index):80`.
    pub fn start_ingress(&self, index: usize, extra: &[&str]) -> Result<Proc> {
        let bin = bins::find("lb-ingress")?;
        let args = merge_args(self.ingress_args(), extra);
        self.spawn(
            &self.nodes[index].ns,
            Enter::NetOnly,
            &format!("lb-ingress-{}", node_name(index)),
            &bin,
            &args,
        )
    }

    /// Runs a command in `ns` (via `ip netns exec`, so /etc/netns/<ns>/hosts applies) and
    /// returns its output whatever its exit status.
    pub fn exec(&self, ns: &str, program: &str, args: &[&str]) -> Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args)
            .output()
            .with_context(|| format!("ip netns exec {ns} {program}"))
    }

    /// Runs `f` on a thread inside namespace `ns`.
    pub fn in_ns<T: Send>(&self, ns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
        in_netns(ns, f)
    }

    /// Sends an HTTP request from namespace `ns`.
    pub fn http(&self, ns: &str, req: &HttpRequest) -> Result<HttpResponse> {
        in_netns(ns, || req.send())?
    }

    /// `GET path` on `addr` from namespace `ns`.
    pub fn http_get(&self, ns: &str, addr: SocketAddr, path: &str) -> Result<HttpResponse> {
        self.http(ns, &HttpRequest::get(addr, path))
    }

    /// One UDP datagram from namespace `ns` to `addr`; the answer and who sent it.
    pub fn udp(&self, ns: &str, addr: SocketAddr, payload: &[u8]) -> Result<(String, SocketAddr)> {
        in_netns(ns, || udp_request(addr, payload, DEFAULT_TIMEOUT))?
    }

    fn add_ns(&mut self, ns: &str) -> Result<()> {
        netns::run(Command::new("ip").args(["netns", "add", ns]))?;
        self.namespaces.push(ns.to_owned());
        Ok(())
    }

    fn create(&mut self, b: &SandboxBuilder) -> Result<()> {
        // Namespaces first, so veths can be created with their peer directly in place (no
        // interface ever exists in the root namespace, where names could collide).
        let client = self.client_ns.clone();
        self.add_ns(&client)?;
        for i in 0..b.nodes {
            let ns = format!("{}{}", self.prefix, node_name(i));
            self.add_ns(&ns)?;
            self.nodes.push(Node {
                index: i,
                name: node_name(i),
                ns,
                ip: node_ip(i),
                pod_cidr: pod_cidr(i),
            });
        }
        for (idx, (spec, ip)) in crate::topology::assign(&b.pods).into_iter().enumerate() {
            if spec.node >= b.nodes {
                bail!(
                    "pod {} is on node {} but there are {} nodes",
                    spec.name,
                    spec.node,
                    b.nodes
                );
            }
            let ns = format!("{}{}", self.prefix, spec.name);
            self.add_ns(&ns)?;
            let short = format!("{POD_IFACE_PREFIX}{}", spec.name);
            let host_iface = if short.len() <= 15 {
                short
            } else {
                format!("{POD_IFACE_PREFIX}p{idx}")
            };
            self.pods.push(Pod {
                name: spec.name.clone(),
                spec,
                ns,
                ip,
                host_iface,
            });
        }
        self.wire_client()?;
        for i in 0..self.nodes.len() {
            self.wire_node(i)?;
        }
        for i in 0..self.pods.len() {
            self.wire_pod(i, &b.hosts)?;
        }
        self.enable_gro()?;
        fs::write(
            self.manifests_dir.join("nodes.yaml"),
            manifests::nodes_yaml(self.nodes.len()),
        )?;
        for (file, yaml) in &b.manifests {
            self.write_manifest(file, yaml)?;
        }
        if b.tls_secret {
            self.write_tls_secret()
                .context("generating the seed Ingress's TLS certificate")?;
        }
        if b.start_pods {
            self.start_pod_servers()?;
        }
        Ok(())
    }

    fn wire_client(&self) -> Result<()> {
        let mut l = vec![
            "link set lo up".to_owned(),
            "link add br0 type bridge".to_owned(),
            format!("addr add {CLIENT_IP}/{CLIENT_PREFIX_LEN} dev br0"),
            "link set br0 up".to_owned(),
        ];
        for n in &self.nodes {
            let i = n.index;
            l.push(format!(
                "link add veth{i} type veth peer name {NODE_EXTERNAL_IFACE} netns {} address 02:0a:00:00:00:{:02x}",
                n.ns,
                10 + i
            ));
            l.push(format!("link set veth{i} master br0"));
            l.push(format!("link set veth{i} up"));
            l.push(format!("route add {} via {}", n.pod_cidr, n.ip));
        }
        l.push(format!("route add {EXTERNAL_IP_CIDR} via {}", node_ip(0)));
        ip_batch(Some(&self.client_ns), &l)?;
        let mut s = base_sysctls();
        s.push(("net/ipv4/conf/br0/rp_filter".into(), "0"));
        // The nodes' default route points here. With forwarding on, a packet for an address
        // nobody has (a ClusterIP while no agent runs) is answered at once with ICMP
        // unreachable instead of being dropped silently (a slow timeout for the sender).
        s.push(("net/ipv4/ip_forward".into(), "1"));
        sysctls(&self.client_ns, &s)
    }

    fn wire_node(&self, i: usize) -> Result<()> {
        let n = &self.nodes[i];
        let mut l = vec![
            "link set lo up".to_owned(),
            format!(
                "addr add {}/{CLIENT_PREFIX_LEN} dev {NODE_EXTERNAL_IFACE}",
                n.ip
            ),
            format!("link set {NODE_EXTERNAL_IFACE} up"),
            // Stays inside the sandbox: 10.0.0.1 is the client namespace, which routes
            // nowhere else. It also makes proxy ARP answer for the pods' gateway.
            format!("route add default via {CLIENT_IP}"),
        ];
        for other in self.nodes.iter().filter(|o| o.index != i) {
            l.push(format!("route add {} via {}", other.pod_cidr, other.ip));
        }
        ip_batch(Some(&n.ns), &l)?;
        let mut s = base_sysctls();
        s.push(("net/ipv4/ip_forward".into(), "1"));
        s.push((
            format!("net/ipv4/conf/{NODE_EXTERNAL_IFACE}/rp_filter"),
            "0",
        ));
        sysctls(&n.ns, &s)
    }

    fn wire_pod(&self, index: usize, hosts: &[(String, Ipv4Addr)]) -> Result<()> {
        let p = &self.pods[index];
        let node = &self.nodes[p.spec.node];
        let [_, _, net, host] = p.ip.octets();
        let host_mac = format!("02:fe:0a:f4:{net:02x}:{host:02x}");
        let pod_mac = format!("02:00:0a:f4:{net:02x}:{host:02x}");
        let h = &p.host_iface;
        ip_batch(
            Some(&node.ns),
            &[
                format!(
                    "link add {h} address {host_mac} type veth peer name eth0 netns {} address {pod_mac}",
                    p.ns
                ),
                format!("link set {h} up"),
                format!("route add {}/32 dev {h} scope link", p.ip),
            ],
        )?;
        sysctls(
            &node.ns,
            &[
                (format!("net/ipv4/conf/{h}/proxy_arp"), "1"),
                (format!("net/ipv4/conf/{h}/rp_filter"), "0"),
                (format!("net/ipv4/conf/{h}/forwarding"), "1"),
            ],
        )?;
        ip_batch(
            Some(&p.ns),
            &[
                "link set lo up".to_owned(),
                format!("addr add {}/32 dev eth0", p.ip),
                "link set eth0 up".to_owned(),
                format!("route add {POD_GATEWAY} dev eth0 scope link"),
                format!("route add default via {POD_GATEWAY} dev eth0"),
                // The gateway's MAC is known (as Cilium does), so pods never depend on
                // proxy ARP timing.
                format!("neigh replace {POD_GATEWAY} lladdr {host_mac} dev eth0 nud permanent"),
            ],
        )?;
        sysctls(&p.ns, &base_sysctls())?;
        if !hosts.is_empty() {
            let dir = Path::new("/etc/netns").join(&p.ns);
            fs::create_dir_all(&dir)?;
            let mut text = format!("127.0.0.1 localhost\n{} {}\n", p.ip, p.name);
            for (name, ip) in hosts {
                let _ = writeln!(
                    text,
                    "{ip} {name} {name}.default {name}.default.svc {name}.default.svc.cluster.local"
                );
            }
            fs::write(dir.join("hosts"), text)?;
            // Names not in hosts fail at once (nothing listens on the pod's own port 53)
            // instead of waiting for the machine's resolver, unreachable from the sandbox.
            fs::write(
                dir.join("resolv.conf"),
                "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
            )?;
        }
        Ok(())
    }

    /// GRO on every veth: native XDP_TX / XDP_REDIRECT into a veth only delivers when the
    /// receiving side has GRO on (or an XDP program attached) - a known veth rule.
    fn enable_gro(&self) -> Result<()> {
        let mut per_ns: Vec<(String, Vec<String>)> = vec![(
            self.client_ns.clone(),
            (0..self.nodes.len()).map(|i| format!("veth{i}")).collect(),
        )];
        for n in &self.nodes {
            let mut ifs = vec![NODE_EXTERNAL_IFACE.to_owned()];
            ifs.extend(
                self.pods
                    .iter()
                    .filter(|p| p.spec.node == n.index)
                    .map(|p| p.host_iface.clone()),
            );
            per_ns.push((n.ns.clone(), ifs));
        }
        for p in &self.pods {
            per_ns.push((p.ns.clone(), vec!["eth0".to_owned()]));
        }
        // The client side of each node's external veth stands for the physical network.
        // A NIC delivers what a node sends back with XDP_TX (TCP RST / ICMP unreachable for
        // a Service without endpoints); a veth does so only when its peer has an XDP
        // program of its own (GRO is not enough for a bridge port): give it a pass-all one.
        let pass_all = xdp_pass_object()?;
        for i in 0..self.nodes.len() {
            // iproute2 loads it without xdp-loader's global lock file, so concurrent
            // sandboxes do not collide.
            netns::run(Command::new("ip").args([
                "-n",
                &self.client_ns,
                "link",
                "set",
                "dev",
                &format!("veth{i}"),
                "xdpdrv",
                "obj",
                &pass_all.display().to_string(),
                "sec",
                "xdp",
            ]))
            .with_context(|| {
                format!("attach a pass-all XDP program to veth{i} in the client namespace")
            })?;
        }
        for (ns, ifs) in per_ns {
            let script = ifs
                .iter()
                .map(|i| format!("ethtool -K {i} gro on >/dev/null"))
                .collect::<Vec<_>>()
                .join(" && ");
            netns::run(
                Command::new("nsenter")
                    .arg(format!("--net={}", netns::netns_path(&ns).display()))
                    .args(["sh", "-c", &script]),
            )
            .with_context(|| format!("enable GRO in {ns}"))?;
        }
        Ok(())
    }

    fn start_pod_servers(&mut self) -> Result<()> {
        let bin = bins::find("lb-podserver")?;
        let mut procs = Vec::new();
        for p in &self.pods {
            let mut args = vec![
                "--name".to_owned(),
                p.name.clone(),
                "--http-port".to_owned(),
                p.spec.http_port.to_string(),
            ];
            if let Some(u) = p.spec.udp_port {
                args.extend(["--udp-port".to_owned(), u.to_string()]);
            }
            if let Some(b) = &p.spec.backend {
                args.extend(["--backend".to_owned(), b.clone()]);
            }
            procs.push(self.spawn(&p.ns, Enter::IpNetnsExec, &p.name, &bin, &args)?);
        }
        for proc in &procs {
            proc.wait_for_log("listening", Duration::from_secs(10))?;
        }
        self.pod_procs = procs;
        Ok(())
    }

    /// Stops the pod server of `name` (to test endpoints that go away); returns its handle's
    /// exit status.
    pub fn stop_pod(&mut self, name: &str) -> Result<()> {
        let pos = self
            .pod_procs
            .iter()
            .position(|p| p.name() == name)
            .ok_or_else(|| anyhow!("pod {name} is not running"))?;
        self.pod_procs.remove(pos).stop(Duration::from_secs(1))?;
        Ok(())
    }

    /// (Re)starts the pod server of `name`.
    pub fn start_pod(&mut self, name: &str) -> Result<()> {
        if self.pod_procs.iter().any(|p| p.name() == name) {
            bail!("pod {name} is already running");
        }
        let p = self.pod(name).clone();
        let mut args = vec![
            "--name".to_owned(),
            p.name.clone(),
            "--http-port".to_owned(),
            p.spec.http_port.to_string(),
        ];
        if let Some(u) = p.spec.udp_port {
            args.extend(["--udp-port".to_owned(), u.to_string()]);
        }
        if let Some(b) = &p.spec.backend {
            args.extend(["--backend".to_owned(), b.clone()]);
        }
        let proc = self.spawn(
            &p.ns,
            Enter::IpNetnsExec,
            &p.name,
            &bins::find("lb-podserver")?,
            &args,
        )?;
        proc.wait_for_log("listening", Duration::from_secs(10))?;
        self.pod_procs.push(proc);
        Ok(())
    }

    /// PIDs of all processes the sandbox started that are still running.
    pub fn running_pids(&self) -> Vec<u32> {
        self.registry
            .lock()
            .expect("process registry poisoned")
            .pids()
    }

    fn print_logs_on_panic(&self) {
        if !std::thread::panicking() {
            return;
        }
        let Ok(entries) = fs::read_dir(&self.log_dir) else {
            return;
        };
        for e in entries.flatten() {
            let text = fs::read_to_string(e.path()).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("--- {} (last {} lines) ---", e.path().display(), tail.len());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// `defaults` (`run --flag value ...`) with `extra` appended; a `--flag` given in `extra`
/// replaces the default's `--flag value`.
fn merge_args(defaults: Vec<String>, extra: &[&str]) -> Vec<String> {
    let overridden: Vec<&str> = extra
        .iter()
        .copied()
        .filter(|a| a.starts_with("--"))
        .collect();
    let mut out = Vec::new();
    let mut it = defaults.into_iter();
    while let Some(a) = it.next() {
        if overridden.contains(&a.as_str()) {
            it.next();
        } else {
            out.push(a);
        }
    }
    out.extend(extra.iter().map(|s| (*s).to_owned()));
    out
}

fn base_sysctls() -> Vec<(String, &'static str)> {
    vec![
        ("net/ipv4/conf/all/rp_filter".into(), "0"),
        ("net/ipv4/conf/default/rp_filter".into(), "0"),
        ("net/ipv4/conf/lo/rp_filter".into(), "0"),
    ]
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.print_logs_on_panic();
        // Processes first (a namespace lives on while a process is inside it).
        process::end_all(&self.registry, Duration::from_secs(3));
        self.pod_procs.clear();
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = netns::delete(ns) {
                eprintln!("sandbox {}: {e:#}", self.id);
            }
        }
        let _ = fs::remove_dir_all(&self.bpffs_root);
        let _ = fs::remove_dir_all(&self.workdir);
    }
}

/// xdp-tools' allow-all filter program: an XDP program that passes every packet.
fn xdp_pass_object() -> Result<PathBuf> {
    for dir in [
        "/usr/lib/x86_64-linux-gnu/bpf",
        "/usr/lib/aarch64-linux-gnu/bpf",
        "/usr/lib/bpf",
    ] {
        let p = Path::new(dir).join("xdpfilt_alw_all.o");
        if p.exists() {
            return Ok(p);
        }
    }
    bail!(
        "xdp-tools' xdpfilt_alw_all.o not found: run `cargo xtask setup` (or `apt-get install xdp-tools`)"
    )
}

#[cfg(test)]
mod tests {
    use super::merge_args;

    #[test]
    fn extra_flags_replace_defaults() {
        let d = ["run", "--metrics-addr", "127.0.0.1:0", "--bpffs", "/x"]
            .map(str::to_owned)
            .to_vec();
        assert_eq!(
            merge_args(d.clone(), &["--metrics-addr", "10.0.0.10:9100", "--v"]),
            [
                "run",
                "--bpffs",
                "/x",
                "--metrics-addr",
                "10.0.0.10:9100",
                "--v"
            ]
        );
        assert_eq!(merge_args(d.clone(), &[]), d);
    }
}
