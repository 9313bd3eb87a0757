//! Finding the project's binaries (lb-agent, lb-ingress, lb-podserver) for tests and xtask.
//!
//! Order: `$LB_BIN_DIR`, then the directory of the running executable and its parent. A
//! test binary lives in `target/<profile>/deps/`, xtask in `target/<profile>/`, so both find
//! the binaries that `cargo build --workspace --bins` put in `target/<profile>/` (the same
//! profile, so nothing is built twice).
use std::path::PathBuf;

use anyhow::{Result, bail};

/// The directories searched, in order.
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("LB_BIN_DIR") {
        dirs.push(PathBuf::from(d));
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        dirs.push(dir.to_path_buf());
        if let Some(parent) = dir.parent() {
            dirs.push(parent.to_path_buf());
        }
    }
    dirs
}

/// The path of binary `name`, or an error that says how to build it.
pub fn find(name: &str) -> Result<PathBuf> {
    let dirs = search_dirs();
    if let Some(p) = dirs.iter().map(|d| d.join(name)).find(|p| p.is_file()) {
        return Ok(p);
    }
    bail!(
        "{name} not found in {dirs:?}: build it first with `cargo build --workspace --exclude lb-ebpf --bins` (`cargo xtask test` does), or set LB_BIN_DIR"
    )
}

/// Whether `tool` is on PATH.
pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}
