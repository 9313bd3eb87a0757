//! Loading and attaching the embedded eBPF programs (docs/dataplane.md).
//!
//! - [`mounts`]: bpffs and cgroup2 mount points.
//! - [`load`]: [`Dataplane::load`] creates or reuses the pinned maps and loads the programs.
//! - [`attach`]: attach to the external interface, pod veths and the cgroup, as pinned
//!   links that outlive the agent and are replaced atomically on restart.
mod attach;
mod error;
mod load;
pub mod mounts;
mod sys;

pub use attach::{AttachMode, detach_all, forget_iface, link_pin_path};
pub use error::BpfError;
pub use load::{Dataplane, LoadOptions};
pub use sys::netns_cookie;

/// Program names in the object (the functions in lb-ebpf/src/main.rs).
pub const PROG_XDP: &str = "lb_xdp";
pub const PROG_XDP_PASS: &str = "lb_xdp_pass";
/// Benchmark reference (never attached): one conntrack insert per run.
pub const PROG_BENCH_CT_INSERT: &str = "lb_bench_ct_insert";
pub const PROG_TC_FROM_POD: &str = "lb_tc_from_pod";
pub const PROG_TC_TO_POD: &str = "lb_tc_to_pod";
pub const PROG_SOCK_CONNECT4: &str = "lb_sock_connect4";
pub const PROG_SOCK_SENDMSG4: &str = "lb_sock_sendmsg4";
pub const PROG_SOCK_RECVMSG4: &str = "lb_sock_recvmsg4";
pub const PROG_SOCK_GETPEERNAME4: &str = "lb_sock_getpeername4";

/// The eBPF object built from lb-ebpf by build.rs, embedded in this binary.
pub fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"))
}
