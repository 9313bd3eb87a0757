//! Typed loader errors: each names the map, program or interface and says what to do.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    #[error(
        "loading BPF programs needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN): run the agent \
         as root"
    )]
    NotRoot,
    #[error(
        "bpffs is not mounted at /sys/fs/bpf and mounting it failed ({detail}): run `mount -t \
         bpf bpf /sys/fs/bpf` as root"
    )]
    BpffsMount { detail: String },
    #[error("{dir} is not on a bpffs mount: pass a --bpffs directory under /sys/fs/bpf")]
    NotBpffs { dir: PathBuf },
    #[error("cannot create the pin directory {dir}: {source}")]
    PinDir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "pinned map {map} at {path} has {pinned} entries but {wanted} are configured: keep the \
         old size or run `lb-agent uninstall` (removes the pins and drops all connections) first"
    )]
    PinnedMapMismatch {
        map: &'static str,
        path: PathBuf,
        pinned: u32,
        wanted: u32,
    },
    #[error(
        "loading the eBPF object failed (is BTF at /sys/kernel/btf/vmlinux? kernel >= 6.6?): \
         {source}"
    )]
    Load {
        #[source]
        source: aya::EbpfError,
    },
    #[error("program {program} missing from the eBPF object (build mismatch)")]
    MissingProgram { program: &'static str },
    #[error("the verifier rejected {program} (log follows): {source:?}")]
    Verifier {
        program: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("attaching {program} to {target}: {source}")]
    Attach {
        program: &'static str,
        target: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("interface {iface} does not exist")]
    NoSuchInterface { iface: String },
    #[error("pinning or opening the link {path}: {detail}")]
    Link { path: PathBuf, detail: String },
    #[error("cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no cgroup2 mount found in /proc/mounts: mount cgroup2 or pass the path explicitly")]
    NoCgroup2,
    #[error("removing {path}: {source}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
