//! Mount points from /proc/mounts: bpffs (mounted when missing) and cgroup2 (hybrid
//! layouts have it at /sys/fs/cgroup/unified, not /sys/fs/cgroup).
use std::path::{Path, PathBuf};

use super::BpfError;

pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// (mount point, fs type) pairs of the current mount namespace.
fn mounts() -> Vec<(PathBuf, String)> {
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let _dev = f.next()?;
            let mnt = f.next()?;
            let ty = f.next()?;
            // /proc/mounts escapes spaces as \040.
            Some((PathBuf::from(mnt.replace("\\040", " ")), ty.to_owned()))
        })
        .collect()
}

/// True when `dir` is on a bpffs mount (the longest matching mount point is bpf).
pub fn is_on_bpffs(dir: &Path) -> bool {
    mounts()
        .into_iter()
        .filter(|(m, _)| dir.starts_with(m))
        .max_by_key(|(m, _)| m.as_os_str().len())
        .is_some_and(|(_, ty)| ty == "bpf")
}

/// Mounts bpffs at /sys/fs/bpf when `dir` is under it and nothing is mounted there yet.
pub fn ensure_bpffs(dir: &Path) -> Result<(), BpfError> {
    if is_on_bpffs(dir) {
        return Ok(());
    }
    if !dir.starts_with(BPFFS_ROOT) {
        return Err(BpfError::NotBpffs { dir: dir.into() });
    }
    let out = std::process::Command::new("mount")
        .args(["-t", "bpf", "bpf", BPFFS_ROOT])
        .output()
        .map_err(|e| BpfError::BpffsMount {
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(BpfError::BpffsMount {
            detail: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    if is_on_bpffs(dir) {
        Ok(())
    } else {
        Err(BpfError::NotBpffs { dir: dir.into() })
    }
}

/// The first cgroup2 mount point (e.g. /sys/fs/cgroup or /sys/fs/cgroup/unified).
pub fn cgroup2_root() -> Result<PathBuf, BpfError> {
    mounts()
        .into_iter()
        .find(|(_, ty)| ty == "cgroup2")
        .map(|(m, _)| m)
        .ok_or(BpfError::NoCgroup2)
}
