//! Running commands with progress lines.
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

/// Runs a long step with its output shown, framed by start and end lines with the time taken.
pub fn step(title: &str, mut cmd: Command) -> Result<()> {
    println!("==> {title}");
    let started = Instant::now();
    let status = cmd
        .status()
        .with_context(|| format!("{title}: cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{title} failed ({status}) after {:.0?}", started.elapsed());
    }
    println!("<== {title}: ok in {:.0?}", started.elapsed());
    Ok(())
}

/// Runs a command quietly; its stdout when it succeeds.
pub fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command quietly; whether it succeeded.
pub fn ok(cmd: &mut Command) -> bool {
    output(cmd).is_some()
}
