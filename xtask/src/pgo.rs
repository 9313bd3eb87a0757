//! `cargo xtask pgo`: lb-ingress built with profile-guided optimization.
//!
//! rustc's PGO as the rustc book's "Profile-guided Optimization" chapter describes it: an
//! instrumented build (`-Cprofile-generate`), the training load of `ingress_bench
//! --train` against it, the profiles merged by the toolchain's own `llvm-profdata`
//! (rustup's `llvm-tools` component: its LLVM is rustc's, which the profile format must
//! match), and the build that uses them (`-Cprofile-use`). `cargo xtask bench ingress`
//! runs this first and measures the result beside the plain release build.
//!
//! Why: at one worker under the benchmark's load, callgrind counted 34.6k instructions
//! and 1745 L1 instruction-cache misses per request in the plain release build (42d8fd0),
//! 25.6k and 784 in this one (611ae01, which also dropped ~700 instructions of request-id
//! formatting). A proxy's request path crosses hyper, tokio, http and its own code, tens
//! of kilobytes of machine code per request; PGO lays the hot parts out together and
//! inlines by measured call counts.
//!
//! Each build has its own target directory (under `target/pgo/`), so they stay
//! incremental and never touch `target/release`.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, ensure};

use crate::{cargo, cmd, root};

/// The host's target triple, from `rustc -vV`.
fn host() -> Result<String> {
    let out = cmd::output(Command::new("rustc").arg("-vV")).context("running rustc -vV")?;
    out.lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_owned)
        .context("rustc -vV printed no host line")
}

/// The toolchain's `llvm-profdata`, added with rustup's `llvm-tools` component if missing.
fn llvm_profdata(host: &str) -> Result<PathBuf> {
    let sysroot = cmd::output(Command::new("rustc").args(["--print", "sysroot"]))
        .context("running rustc --print sysroot")?;
    let bin = Path::new(sysroot.trim())
        .join("lib/rustlib")
        .join(host)
        .join("bin/llvm-profdata");
    if !bin.exists() {
        let mut add = Command::new("rustup");
        add.args(["component", "add", "llvm-tools"])
            .current_dir(root());
        cmd::step("rustup component add llvm-tools (llvm-profdata)", add)?;
    }
    ensure!(
        bin.exists(),
        "{} missing after `rustup component add llvm-tools`",
        bin.display()
    );
    Ok(bin)
}

/// `cargo build` of the lb-ingress binary in release: every build here adds to it.
const RELEASE_BUILD: [&str; 6] = [
    "build",
    "--release",
    "-p",
    "lb-ingress",
    "--bin",
    "lb-ingress",
];

/// The plain release build of lb-ingress (`target/release/lb-ingress`), which the
/// benchmark measures beside the profile-guided one.
pub fn plain() -> Result<PathBuf> {
    cmd::step("plain release build of lb-ingress", cargo(&RELEASE_BUILD))?;
    Ok(root().join("target/release/lb-ingress"))
}

/// A release build of lb-ingress for `host` in `target_dir` with `rustflags` added.
fn build(title: &str, host: &str, target_dir: &Path, rustflags: &str) -> Result<PathBuf> {
    let dir = target_dir.to_string_lossy();
    let mut c = cargo(&RELEASE_BUILD);
    c.args([
        // With --target, RUSTFLAGS reach only the target's crates: build scripts and
        // proc macros are neither instrumented nor optimized by the profile.
        "--target",
        host,
        "--target-dir",
        &dir,
    ]);
    let flags = match std::env::var("RUSTFLAGS") {
        Ok(user) if !user.trim().is_empty() => format!("{user} {rustflags}"),
        _ => rustflags.to_owned(),
    };
    c.env("RUSTFLAGS", flags);
    cmd::step(title, c)?;
    Ok(target_dir.join(host).join("release/lb-ingress"))
}

/// Builds the profile-guided lb-ingress; its path (`target/pgo/lb-ingress`).
pub fn run() -> Result<PathBuf> {
    let host = host()?;
    let profdata_tool = llvm_profdata(&host)?;
    let pgo = root().join("target/pgo");
    let profiles = pgo.join("profiles");
    let instrumented = build(
        "instrumented build of lb-ingress (-Cprofile-generate)",
        &host,
        &pgo.join("generate"),
        &format!("-Cprofile-generate={}", profiles.display()),
    )?;
    let merged = pgo.join("lb-ingress.profdata");
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    if modified(&merged) > modified(&instrumented) {
        // rustc lists the profile among a crate's inputs, so a new one rebuilds every
        // crate: retrain only when the code did change.
        println!(
            "  [present] {} is newer than the instrumented build: not retrained",
            merged.display()
        );
    } else {
        train(&instrumented, &profiles, &profdata_tool, &merged)?;
    }
    let optimized = build(
        "profile-guided build of lb-ingress (-Cprofile-use)",
        &host,
        &pgo.join("use"),
        &format!("-Cprofile-use={}", merged.display()),
    )?;
    let out = pgo.join("lb-ingress");
    std::fs::copy(&optimized, &out)
        .with_context(|| format!("copy {} to {}", optimized.display(), out.display()))?;
    println!("profile-guided lb-ingress: {}", out.display());
    Ok(out)
}

/// Runs the training load against the instrumented build and merges its profiles.
fn train(instrumented: &Path, profiles: &Path, profdata_tool: &Path, merged: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(profiles);
    std::fs::create_dir_all(profiles).with_context(|| format!("create {}", profiles.display()))?;
    let bin = instrumented.to_string_lossy();
    cmd::step(
        "training load (ingress_bench --train: HTTP/1.1, HTTPS, HTTP/2)",
        cargo(&[
            "run",
            "--release",
            "-p",
            "lb-ingress",
            "--example",
            "ingress_bench",
            "--",
            "--train",
            "--lb-ingress",
            &bin,
        ]),
    )?;
    let raw: Vec<PathBuf> = std::fs::read_dir(profiles)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "profraw"))
        .collect();
    ensure!(
        !raw.is_empty(),
        "the instrumented lb-ingress wrote no profile to {} (did it exit on SIGTERM?)",
        profiles.display()
    );
    let mut merge = Command::new(profdata_tool);
    merge.arg("merge").arg("-o").arg(merged).args(&raw);
    cmd::step("llvm-profdata merge", merge)
}
