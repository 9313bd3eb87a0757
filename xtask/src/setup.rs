//! `cargo xtask setup`: checks the machine and installs what the project needs. Idempotent:
//! each item says whether it was already there or what was done. A check that cannot pass
//! stops with one line saying what is wrong and how to fix it.
use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::cmd;

/// The nightly that builds lb-ebpf. Keep in step with lb-ebpf/rust-toolchain.toml and
/// lb-agent/build.rs.
pub const EBPF_TOOLCHAIN: &str = "nightly-2026-05-19";
/// bpf-linker built against the nightly's own libLLVM (LLVM 22).
pub const BPF_LINKER_VERSION: &str = "0.13.0";
pub const BPF_LINKER_LLVM_FEATURE: &str = "llvm-22";

/// Debian packages the tests, the demo and the benchmarks use.
pub const PACKAGES: &[&str] = &[
    "iproute2",
    "iputils-ping",
    "iptables",
    "nftables",
    "conntrack",
    "bpftool",
    "ethtool",
    "curl",
    "openssl",
    "jq",
    "wrk",
    // h2load: HTTP/2 load for lb-ingress's profile-guided build (`cargo xtask pgo`).
    "nghttp2-client",
    "nginx",
    "prometheus",
    "xdp-tools",
];

fn did(what: &str) {
    println!("  [done]    {what}");
}

fn skipped(what: &str) {
    println!("  [present] {what}");
}

pub fn run() -> Result<()> {
    println!("==> cargo xtask setup");
    check_root()?;
    check_kernel()?;
    install_packages()?;
    check_netns()?;
    mount_bpffs()?;
    rust_components()?;
    let sysroot = nightly()?;
    bpf_linker(&sysroot)?;
    println!("<== setup: ok");
    Ok(())
}

fn check_root() -> Result<()> {
    let status = fs::read_to_string("/proc/self/status").context("read /proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("?");
    if euid != "0" {
        bail!(
            "not running as root (euid {euid}): setup installs packages and mounts bpffs, and the tests create network namespaces and load BPF programs; run as root, e.g. `sudo -E env PATH=\"$PATH\" cargo xtask test`"
        );
    }
    skipped("running as root");
    Ok(())
}

fn check_kernel() -> Result<()> {
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!(
            "kernel BTF is missing (/sys/kernel/btf/vmlinux): boot a kernel built with CONFIG_DEBUG_INFO_BTF=y (Debian's 6.1+ kernels have it)"
        );
    }
    skipped("kernel BTF at /sys/kernel/btf/vmlinux");
    // This sysctl exists exactly when the kernel has the bpf(2) syscall.
    if !Path::new("/proc/sys/kernel/unprivileged_bpf_disabled").exists() {
        bail!(
            "the kernel has no bpf(2) syscall (no /proc/sys/kernel/unprivileged_bpf_disabled): use a kernel built with CONFIG_BPF_SYSCALL=y and CONFIG_BPF_JIT=y"
        );
    }
    skipped("bpf(2) syscall");
    Ok(())
}

fn check_netns() -> Result<()> {
    let ns = format!("lbtsetup{}", std::process::id());
    let created = cmd::ok(Command::new("ip").args(["netns", "add", &ns]));
    let veth = created
        && cmd::ok(Command::new("ip").args([
            "-n", &ns, "link", "add", "name", "va", "type", "veth", "peer", "name", "vb",
        ]));
    if created {
        let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    }
    if !created {
        bail!(
            "cannot create a network namespace (`ip netns add` failed): the kernel needs CONFIG_NET_NS and this process CAP_SYS_ADMIN (run a privileged container)"
        );
    }
    if !veth {
        bail!("cannot create a veth pair in a network namespace: the kernel needs CONFIG_VETH");
    }
    skipped("network namespaces and veth pairs");
    Ok(())
}

fn bpffs_mounted() -> bool {
    fs::read_to_string("/proc/mounts").is_ok_and(|m| {
        m.lines().any(|l| {
            let mut f = l.split_whitespace();
            let (_, point, kind) = (f.next(), f.next(), f.next());
            point == Some("/sys/fs/bpf") && kind == Some("bpf")
        })
    })
}

fn mount_bpffs() -> Result<()> {
    if bpffs_mounted() {
        skipped("bpffs at /sys/fs/bpf");
        return Ok(());
    }
    let _ = fs::create_dir_all("/sys/fs/bpf");
    let out = Command::new("mount")
        .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
        .output()
        .context("run mount")?;
    if !out.status.success() || !bpffs_mounted() {
        bail!(
            "bpffs is not mounted at /sys/fs/bpf and `mount -t bpf bpf /sys/fs/bpf` failed ({}): mount it by hand, or give the container CAP_SYS_ADMIN",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    did("mounted bpffs at /sys/fs/bpf");
    Ok(())
}

fn install_packages() -> Result<()> {
    let mut query = Command::new("dpkg-query");
    query
        .args(["-W", "-f=${Package} ${db:Status-Status}\\n"])
        .args(PACKAGES);
    // dpkg-query exits 1 when a package is unknown but still lists the known ones.
    let listed = query
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| !listed.lines().any(|l| l == format!("{p} installed")))
        .collect();
    if missing.is_empty() {
        skipped(&format!("Debian packages: {}", PACKAGES.join(" ")));
        return Ok(());
    }
    if !cmd::ok(Command::new("apt-get").arg("--version")) {
        bail!(
            "apt-get not found: this setup expects Debian 12; install these packages by hand: {}",
            missing.join(" ")
        );
    }
    // Installing nginx or prometheus must not start them as services on the host:
    // policy-rc.d answering 101 tells invoke-rc.d not to start anything.
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let own_policy = !policy.exists();
    if own_policy {
        fs::write(policy, "#!/bin/sh\nexit 101\n")?;
        fs::set_permissions(policy, fs::Permissions::from_mode(0o755))?;
    }
    let result = (|| -> Result<()> {
        let mut update = Command::new("apt-get");
        update.args(["update", "-q"]);
        cmd::step("apt-get update", update)?;
        let mut install = Command::new("apt-get");
        install
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive");
        cmd::step(&format!("apt-get install {}", missing.join(" ")), install)
    })();
    if own_policy {
        let _ = fs::remove_file(policy);
    }
    result?;
    did(&format!("installed Debian packages: {}", missing.join(" ")));
    Ok(())
}

fn rust_components() -> Result<()> {
    let fmt = cmd::ok(Command::new("cargo").args(["fmt", "--version"]));
    let clippy = cmd::ok(Command::new("cargo").args(["clippy", "--version"]));
    if fmt && clippy {
        skipped("rustfmt and clippy");
        return Ok(());
    }
    let mut add = Command::new("rustup");
    add.args(["component", "add", "rustfmt", "clippy"]);
    cmd::step("rustup component add rustfmt clippy", add)?;
    did("added rustfmt and clippy");
    Ok(())
}

fn nightly() -> Result<PathBuf> {
    let has_toolchain = cmd::output(Command::new("rustup").args(["toolchain", "list"]))
        .is_some_and(|l| l.lines().any(|t| t.starts_with(EBPF_TOOLCHAIN)));
    let has_src = has_toolchain
        && cmd::output(Command::new("rustup").args([
            "component",
            "list",
            "--installed",
            "--toolchain",
            EBPF_TOOLCHAIN,
        ]))
        .is_some_and(|l| l.lines().any(|c| c.starts_with("rust-src")));
    if has_src {
        skipped(&format!("{EBPF_TOOLCHAIN} with rust-src"));
    } else {
        let mut install = Command::new("rustup");
        install.args([
            "toolchain",
            "install",
            EBPF_TOOLCHAIN,
            "--profile",
            "minimal",
            "-c",
            "rust-src",
        ]);
        cmd::step(
            &format!("rustup toolchain install {EBPF_TOOLCHAIN}"),
            install,
        )?;
        did(&format!("installed {EBPF_TOOLCHAIN} with rust-src"));
    }
    let sysroot = cmd::output(Command::new("rustc").args([
        &format!("+{EBPF_TOOLCHAIN}"),
        "--print",
        "sysroot",
    ]))
    .with_context(|| format!("rustc +{EBPF_TOOLCHAIN} --print sysroot failed"))?;
    Ok(PathBuf::from(sysroot.trim()))
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from)
}

fn cargo_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map_or_else(|| home().join(".cargo"), PathBuf::from)
        .join("bin")
}

/// bpf-linker against the nightly's libLLVM: `LLVM_PREFIX` is a folder whose lib/ links to
/// that libLLVM. The binary keeps an rpath to it, so the folder is permanent.
fn bpf_linker(sysroot: &Path) -> Result<()> {
    let libdir = sysroot.join("lib");
    let libllvm = fs::read_dir(&libdir)
        .with_context(|| format!("read {}", libdir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", libdir.display()))?;
    let prefix = home().join(".local/share/lb/llvm");
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib)?;
    // Under both names: the one the build links against, and the soname the binary loads.
    for name in ["libLLVM.so", libllvm.as_str()] {
        let link = lib.join(name);
        let target = libdir.join(&libllvm);
        if fs::read_link(&link).ok().as_deref() != Some(target.as_path()) {
            let _ = fs::remove_file(&link);
            std::os::unix::fs::symlink(&target, &link)
                .with_context(|| format!("symlink {}", link.display()))?;
        }
    }
    // rustc runs the linker with the toolchain's lib/ on LD_LIBRARY_PATH: check it that way.
    let bin = cargo_bin_dir().join("bpf-linker");
    let works = cmd::output(
        Command::new(&bin)
            .arg("--version")
            .env("LD_LIBRARY_PATH", &libdir),
    );
    if let Some(v) = works {
        skipped(&format!("{} (linked to {libllvm})", v.trim()));
        return Ok(());
    }
    let mut install = Command::new("cargo");
    install
        .args([
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--force",
            "--no-default-features",
            "--features",
            BPF_LINKER_LLVM_FEATURE,
        ])
        .env("LLVM_PREFIX", &prefix)
        .current_dir(home());
    cmd::step(
        &format!(
            "cargo install bpf-linker {BPF_LINKER_VERSION} against {libllvm} (about 2 minutes)"
        ),
        install,
    )?;
    did(&format!("installed bpf-linker {BPF_LINKER_VERSION}"));
    Ok(())
}
