//! Command line: `lb-agent run | inspect | uninstall`.
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "lb-agent",
    version,
    about = "eBPF service load balancer: the per-node agent that replaces kube-proxy"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "LB_LOG_FORMAT")]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Load the programs, attach them and keep the maps equal to the cluster's Services.
    Run(Box<RunArgs>),
    /// Show what is in the pinned maps of a running agent.
    Inspect(InspectArgs),
    /// Remove everything the agent put in the kernel (links, programs, pinned maps).
    Uninstall {
        #[arg(long, default_value = "/sys/fs/bpf/lb")]
        bpffs: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["manifests", "kubeconfig", "in_cluster"])))]
pub struct RunArgs {
    /// This node's name (its v1/Node object gives the NodePort and SNAT addresses).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// Read cluster state from a directory of manifests (YAML or JSON), watched for changes.
    #[arg(long)]
    pub manifests: Option<PathBuf>,
    /// Read cluster state from the API server with this kubeconfig.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Read cluster state from the API server with the in-cluster service account.
    #[arg(long)]
    pub in_cluster: bool,
    /// The interface facing clients (XDP is attached here).
    #[arg(long)]
    pub external_iface: String,
    /// Host-side pod veths start with this prefix (TC is attached to each, also to ones
    /// that appear later).
    #[arg(long, default_value = "lxc")]
    pub pod_iface_prefix: String,
    /// Prometheus metrics (only /metrics is served here). Port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:9876")]
    pub metrics_addr: SocketAddr,
    /// /healthz and /readyz (ready after the first complete sync).
    #[arg(long, default_value = "127.0.0.1:9877")]
    pub health_addr: SocketAddr,
    /// Directory under a bpffs mount for this agent's pinned maps and links (created when
    /// missing; bpffs is mounted at /sys/fs/bpf when it is not).
    #[arg(long, default_value = "/sys/fs/bpf/lb")]
    pub bpffs: PathBuf,
    /// Attach socket-level load balancing for the node's own processes to this cgroup v2
    /// directory (default: the cgroup2 mount's root). "none" disables it.
    #[arg(long)]
    pub cgroup: Option<String>,
    /// How often the manifests directory is checked for changes, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub manifests_interval_ms: u64,
    /// Serve Services labelled service.kubernetes.io/service-proxy-name=NAME (others
    /// with that label are left alone, as kube-proxy does).
    #[arg(long)]
    pub service_proxy_name: Option<String>,
    #[arg(long, default_value_t = lb_common::DEFAULT_MAX_SERVICES)]
    pub max_services: u32,
    #[arg(long, default_value_t = lb_common::DEFAULT_MAX_BACKENDS)]
    pub max_backends: u32,
    /// Maglev table size per service (prime).
    #[arg(long, default_value_t = lb_common::DEFAULT_MAGLEV_SIZE)]
    pub maglev_size: u32,
    #[arg(long, default_value_t = lb_common::DEFAULT_CONNTRACK_SIZE)]
    pub conntrack_size: u32,
    #[arg(long, default_value_t = lb_common::DEFAULT_AFFINITY_SIZE)]
    pub affinity_size: u32,
    /// Seconds a removed TCP endpoint's backend entry is kept for the connections already
    /// on it (no new connection goes there); afterwards they are moved to another
    /// endpoint. 0: at once. UDP flows always move at once (as kube-proxy flushes them).
    #[arg(long, default_value_t = 60)]
    pub removed_endpoint_grace_s: u64,
}

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    #[arg(value_enum)]
    pub what: InspectWhat,
    /// JSON for scripts instead of a table.
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value = "/sys/fs/bpf/lb")]
    pub bpffs: PathBuf,
    /// Maglev table size the agent runs with.
    #[arg(long, default_value_t = lb_common::DEFAULT_MAGLEV_SIZE)]
    pub maglev_size: u32,
    /// At most this many conntrack entries.
    #[arg(long, default_value_t = 1000)]
    pub limit: usize,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum InspectWhat {
    Services,
    Backends,
    Conntrack,
}
