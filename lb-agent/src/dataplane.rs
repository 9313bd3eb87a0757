//! Glue between `lb-agent run`'s flags and the loader in [`crate::bpf`]: load (or reuse)
//! the pinned maps and programs, attach XDP to the external interface and the socket
//! programs to the cgroup; pod interfaces are attached as they appear (see run.rs).
use std::path::Path;

use tracing::info;

use crate::bpf::{LoadOptions, detach_all};
use crate::cli::RunArgs;

pub struct Dataplane(crate::bpf::Dataplane);

impl Dataplane {
    /// TC on a pod's host-side veth (ingress: from the pod; egress: to the pod).
    pub fn attach_pod(&mut self, iface: &str) -> anyhow::Result<()> {
        Ok(self.0.attach_pod(iface)?)
    }
}

pub fn start(args: &RunArgs) -> anyhow::Result<Dataplane> {
    let opts = LoadOptions {
        bpffs_dir: args.bpffs.clone(),
        max_services: args.max_services,
        max_backends: args.max_backends,
        maglev_size: args.maglev_size,
        conntrack_size: args.conntrack_size,
        affinity_size: args.affinity_size,
    };
    let mut dp = crate::bpf::Dataplane::load(&opts)?;
    let mode = dp.attach_external(&args.external_iface)?;
    info!(iface = %args.external_iface, ?mode, "XDP attached to the external interface");
    match args.cgroup.as_deref() {
        Some("none") => info!("socket-level load balancing disabled (--cgroup none)"),
        other => {
            let cg = dp.attach_cgroup(other.map(Path::new))?;
            info!(cgroup = %cg.display(), "socket-level load balancing attached");
        }
    }
    Ok(Dataplane(dp))
}

/// `lb-agent uninstall`: detach every program and remove every pin under `bpffs`.
pub fn uninstall(bpffs: &Path) -> anyhow::Result<()> {
    detach_all(bpffs)?;
    info!(dir = %bpffs.display(), "removed the agent's programs, links and maps");
    Ok(())
}
