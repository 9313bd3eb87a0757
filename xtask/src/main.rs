//! `cargo xtask setup | build | test | demo | bench | pgo | manifests`: the project's one-command
//! tasks.
#![forbid(unsafe_code)]

mod cmd;
mod demo;
mod pgo;
mod setup;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Project tasks: setup, build, test, demo"
)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install and check everything the project needs (idempotent; needs root).
    Setup,
    /// Release build of lb-agent, lb-ingress and the pod server.
    Build,
    /// THE test command: setup, fmt check, clippy, build, every test (needs root).
    Test,
    /// Run the sandbox cluster with the seed app, agents and ingress; show traffic.
    Demo(demo::DemoArgs),
    /// Write examples/seed-app/ from the sandbox's address plan.
    Manifests,
    /// Profile-guided release build of lb-ingress (trained by `ingress_bench --train`):
    /// target/pgo/lb-ingress.
    Pgo,
    /// Benchmarks (release builds, real kernel, numbers not assertions): results go to
    /// bench/results/<name>.md.
    Bench(BenchArgs),
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Which benchmarks to run (all when none is named).
    #[arg(value_enum)]
    which: Vec<Bench>,
    /// A short smoke run (fewer sizes and repeats; ingress: the plain release build only,
    /// not the profile-guided one); results go to target/bench-quick/.
    #[arg(long)]
    quick: bool,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Bench {
    /// Per-packet cost (BPF_PROG_TEST_RUN) at 1..100k Services, and end to end against
    /// kube-proxy-shaped iptables rules in the sandbox.
    Dataplane,
    /// 10k Services x 10 endpoints: full sync, one-change latency, RSS; iptables-restore.
    Controlplane,
    /// lb-ingress against nginx under wrk; memory at idle keep-alive connections.
    Ingress,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Setup => setup::run(),
        Task::Build => build_release(),
        Task::Test => test(),
        Task::Demo(args) => demo::run(&args),
        Task::Manifests => manifests(),
        Task::Pgo => setup::run().and_then(|()| pgo::run().map(drop)),
        Task::Bench(args) => bench(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask's parent directory).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// `cargo ARGS` in the workspace root.
pub fn cargo(args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new("cargo");
    c.args(args).current_dir(root());
    c
}

fn build_release() -> Result<()> {
    setup::run()?;
    cmd::step(
        "release build of lb-agent, lb-ingress, lb-podserver",
        cargo(&[
            "build",
            "--release",
            "--bins",
            "-p",
            "lb-agent",
            "-p",
            "lb-ingress",
            "-p",
            "lb-tests",
        ]),
    )?;
    println!("binaries in {}", root().join("target/release").display());
    Ok(())
}

/// Everything runs in the dev profile, once: clippy checks, `cargo build --bins` builds the
/// binaries the end-to-end tests start (found next to the test executables by
/// `lb_tests::bins`), and `cargo test` reuses those artifacts.
fn test() -> Result<()> {
    let started = std::time::Instant::now();
    setup::run()?;
    let ws = ["--workspace", "--exclude", "lb-ebpf"];
    cmd::step(
        "cargo fmt --all --check",
        cargo(&["fmt", "--all", "--check"]),
    )?;
    let mut clippy = vec!["clippy"];
    clippy.extend(ws);
    clippy.extend(["--all-targets", "--", "-D", "warnings"]);
    cmd::step(
        "cargo clippy (workspace, all targets, -D warnings)",
        cargo(&clippy),
    )?;
    let mut build = vec!["build"];
    build.extend(ws);
    build.push("--bins");
    cmd::step(
        "cargo build --bins (what the end-to-end tests run)",
        cargo(&build),
    )?;
    let mut test = vec!["test"];
    test.extend(ws);
    cmd::step("cargo test (unit, BPF and end-to-end tests)", cargo(&test))?;
    // Every test process has exited: a sandbox namespace whose owner is dead was left behind.
    let left: Vec<String> = lb_tests::netns::list()
        .into_iter()
        .filter(|n| {
            lb_tests::netns::owner_pid(n)
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        })
        .collect();
    lb_tests::netns::sweep_stale();
    anyhow::ensure!(left.is_empty(), "tests left namespaces behind: {left:?}");
    println!("all checks passed in {:.0?}", started.elapsed());
    Ok(())
}

fn bench(args: &BenchArgs) -> Result<()> {
    setup::run()?;
    let which = if args.which.is_empty() {
        vec![Bench::Dataplane, Bench::Controlplane, Bench::Ingress]
    } else {
        args.which.clone()
    };
    let out_dir = if args.quick {
        root().join("target/bench-quick")
    } else {
        root().join("bench/results")
    };
    std::fs::create_dir_all(&out_dir).with_context(|| format!("create {}", out_dir.display()))?;
    for b in which {
        let (name, package, example) = match b {
            Bench::Dataplane => ("dataplane", "lb-agent", "dataplane_bench"),
            Bench::Controlplane => ("controlplane", "lb-agent", "controlplane_bench"),
            Bench::Ingress => ("ingress", "lb-ingress", "ingress_bench"),
        };
        // Each benchmark builds the release binaries it starts (lb-ingress; lb-agent and
        // lb-podserver) itself, through the cargo that runs it.
        let out = out_dir.join(format!("{name}.md"));
        let out_s = out.display().to_string();
        let mut run = vec![
            "run",
            "--release",
            "-p",
            package,
            "--example",
            example,
            "--",
            "--out",
            &out_s,
        ];
        if args.quick {
            run.push("--quick");
        }
        // lb-ingress as it is shipped (`cargo xtask pgo`), and the plain release build in
        // the same rotation, so that the report shows what the profile is worth. A quick
        // run measures the plain build alone (the profile takes two more builds).
        let (pgo_bin, plain_bin);
        if matches!(b, Bench::Ingress) && !args.quick {
            pgo_bin = pgo::run()?.display().to_string();
            plain_bin = pgo::plain()?.display().to_string();
            run.extend(["--lb-ingress", &pgo_bin, "--lb-ingress-plain", &plain_bin]);
        }
        cmd::step(&format!("benchmark {name} -> {out_s}"), cargo(&run))?;
    }
    Ok(())
}

fn manifests() -> Result<()> {
    let dir = root().join("examples/seed-app");
    std::fs::create_dir_all(&dir)?;
    for (file, yaml) in lb_tests::manifests::seed_manifests() {
        let path = dir.join(file);
        std::fs::write(&path, yaml).with_context(|| format!("write {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
