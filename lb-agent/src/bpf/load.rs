//! [`Dataplane::load`]: maps pinned by name under the bpffs directory (created, or reused
//! after a restart so established flows survive), programs loaded and verified.
use std::path::{Path, PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    maps::MapData,
    programs::{Program, links::PinnedLink},
};
use lb_common::{
    DEFAULT_AFFINITY_SIZE, DEFAULT_CONNTRACK_SIZE, DEFAULT_MAGLEV_SIZE, DEFAULT_MAX_BACKENDS,
    DEFAULT_MAX_SERVICES, DEFAULT_SRC_RANGES_SIZE, MAP_AFFINITY, MAP_BACKENDS, MAP_CONNTRACK,
    MAP_MAGLEV, MAP_REASONS, MAP_REVNAT, MAP_SERVICES, MAP_SOCK_REVNAT, MAP_SRC_RANGES,
    MAP_SVC_COUNTERS, Reason,
};

use super::{BpfError, mounts};

/// Capacities and the pin directory. The capacities must stay the same across restarts
/// that reuse the pins (checked: [`BpfError::PinnedMapMismatch`]).
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Maps are pinned by name here, links under `links/`. Created when missing.
    pub bpffs_dir: PathBuf,
    pub max_services: u32,
    pub max_backends: u32,
    /// Maglev table size M (prime); LB_MAGLEV holds `max_services * maglev_size` slots.
    pub maglev_size: u32,
    /// Entries of LB_CONNTRACK, LB_REVNAT and LB_SOCK_REVNAT each.
    pub conntrack_size: u32,
    pub affinity_size: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            bpffs_dir: PathBuf::from("/sys/fs/bpf/lb"),
            max_services: DEFAULT_MAX_SERVICES,
            max_backends: DEFAULT_MAX_BACKENDS,
            maglev_size: DEFAULT_MAGLEV_SIZE,
            conntrack_size: DEFAULT_CONNTRACK_SIZE,
            affinity_size: DEFAULT_AFFINITY_SIZE,
        }
    }
}

impl LoadOptions {
    /// (map name, max entries) for every map whose size is configurable.
    pub fn sizes(&self) -> [(&'static str, u32); 9] {
        [
            (MAP_SERVICES, self.max_services),
            (MAP_BACKENDS, self.max_backends),
            (MAP_MAGLEV, self.max_services * self.maglev_size),
            (MAP_CONNTRACK, self.conntrack_size),
            (MAP_REVNAT, self.conntrack_size),
            (MAP_AFFINITY, self.affinity_size),
            (MAP_SVC_COUNTERS, self.max_services),
            (MAP_SOCK_REVNAT, self.conntrack_size),
            (MAP_SRC_RANGES, DEFAULT_SRC_RANGES_SIZE),
        ]
    }
}

/// The loaded object: maps (pinned) and verified programs, ready to attach.
pub struct Dataplane {
    pub(super) ebpf: Ebpf,
    pub(super) bpffs_dir: PathBuf,
    /// Links this process attached or took over; dropping them leaves them attached
    /// because they are pinned.
    pub(super) links: Vec<PinnedLink>,
}

/// Effective uid from /proc/self/status (no unsafe needed).
fn euid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

impl Dataplane {
    /// Mounts bpffs when needed, creates `bpffs_dir`, creates or reuses the pinned maps and
    /// loads every program (the verifier log is in the error when one is rejected).
    pub fn load(opts: &LoadOptions) -> Result<Self, BpfError> {
        if euid() != Some(0) {
            return Err(BpfError::NotRoot);
        }
        let dir = &opts.bpffs_dir;
        mounts::ensure_bpffs(dir)?;
        std::fs::create_dir_all(dir).map_err(|source| BpfError::PinDir {
            dir: dir.clone(),
            source,
        })?;
        replace_old_reasons(dir);
        let sizes = opts.sizes();
        for (map, wanted) in sizes {
            check_pinned_size(dir, map, wanted)?;
        }
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(dir);
        for (map, size) in sizes {
            loader.map_max_entries(map, size);
        }
        let mut ebpf = loader
            .load(super::object())
            .map_err(|source| BpfError::Load { source })?;
        for (name, prog) in ebpf.programs_mut() {
            let r = match prog {
                Program::Xdp(p) => p.load(),
                Program::SchedClassifier(p) => p.load(),
                Program::CgroupSockAddr(p) => p.load(),
                _ => continue,
            };
            r.map_err(|source| BpfError::Verifier {
                program: static_name(name),
                source,
            })?;
        }
        Ok(Dataplane {
            ebpf,
            bpffs_dir: dir.clone(),
            links: Vec::new(),
        })
    }

    /// The loaded object, for map access (tests, the map writer) and program test runs.
    pub fn ebpf(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    pub fn bpffs_dir(&self) -> &Path {
        &self.bpffs_dir
    }
}

/// Maps a program name back to its constant (for `'static` error fields).
fn static_name(name: &str) -> &'static str {
    use super::{
        PROG_BENCH_CT_INSERT, PROG_SOCK_CONNECT4, PROG_SOCK_GETPEERNAME4, PROG_SOCK_RECVMSG4,
        PROG_SOCK_SENDMSG4, PROG_TC_FROM_POD, PROG_TC_TO_POD, PROG_XDP, PROG_XDP_PASS,
    };
    [
        PROG_XDP,
        PROG_XDP_PASS,
        PROG_BENCH_CT_INSERT,
        PROG_TC_FROM_POD,
        PROG_TC_TO_POD,
        PROG_SOCK_CONNECT4,
        PROG_SOCK_SENDMSG4,
        PROG_SOCK_RECVMSG4,
        PROG_SOCK_GETPEERNAME4,
    ]
    .into_iter()
    .find(|n| *n == name)
    .unwrap_or("unknown program")
}

/// A verdict-reason array pinned by an agent that knew fewer reasons: counters only, so it
/// is unpinned and created anew at the current size (programs still attached keep theirs
/// until they are replaced). Without this the new reasons would go uncounted.
fn replace_old_reasons(dir: &Path) {
    let path = dir.join(MAP_REASONS);
    let size = MapData::from_pin(&path)
        .ok()
        .and_then(|m| m.info().ok())
        .map(|i| i.max_entries());
    if let Some(size) = size
        && size != Reason::COUNT
    {
        tracing::info!(
            pinned = size,
            wanted = Reason::COUNT,
            "replacing the verdict reason counters"
        );
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(error = %e, path = %path.display(), "cannot unpin the old reason counters");
        }
    }
}

fn check_pinned_size(dir: &Path, map: &'static str, wanted: u32) -> Result<(), BpfError> {
    let path = dir.join(map);
    if !path.exists() {
        return Ok(());
    }
    let pinned = MapData::from_pin(&path)
        .ok()
        .and_then(|m| m.info().ok())
        .map(|i| i.max_entries());
    match pinned {
        Some(pinned) if pinned != wanted => Err(BpfError::PinnedMapMismatch {
            map,
            path,
            pinned,
            wanted,
        }),
        _ => Ok(()),
    }
}
