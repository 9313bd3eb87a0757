//! Builds lb-ebpf for bpfel-unknown-none with the pinned nightly and leaves the object in
//! OUT_DIR, where src/loader.rs embeds it with include_bytes_aligned!.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// Keep in step with lb-ebpf/rust-toolchain.toml and xtask's setup.
const EBPF_TOOLCHAIN: &str = "nightly-2026-05-19";

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "lb-ebpf")
        .ok_or_else(|| anyhow!("lb-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("lb-ebpf manifest has no parent directory"))?;
    aya_build::build_ebpf(
        [Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::Custom(EBPF_TOOLCHAIN),
    )
    .context("building lb-ebpf: if the toolchain or bpf-linker is missing, run `cargo xtask setup`")
}
