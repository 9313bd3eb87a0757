//! Processes started inside sandbox namespaces. Each is ended by its own PID (SIGTERM, then
//! SIGKILL after a grace period) when its [`Proc`] handle or the sandbox is dropped, and
//! reaped, so the PID cannot be reused while we still hold it.
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How a process enters its namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enter {
    /// `nsenter --net=/run/netns/NS`: only the network namespace changes; the process sees
    /// the host's mounts (bpffs at /sys/fs/bpf, cgroup2). Use this for lb-agent.
    NetOnly,
    /// `ip netns exec NS`: also a private mount namespace with /etc/netns/NS/* bind-mounted
    /// over /etc (so `http://backend` resolves) and a fresh /sys (which hides bpffs).
    /// Use this for pod servers.
    IpNetnsExec,
}

#[derive(Default)]
pub(crate) struct Registry {
    next: u64,
    children: BTreeMap<u64, Child>,
}

impl Registry {
    pub(crate) fn pids(&self) -> Vec<u32> {
        self.children.values().map(Child::id).collect()
    }
}

pub(crate) type SharedRegistry = Arc<Mutex<Registry>>;

/// A process started in a namespace. Dropping it ends the process.
pub struct Proc {
    id: u64,
    pid: u32,
    name: String,
    log: PathBuf,
    registry: SharedRegistry,
}

impl std::fmt::Debug for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proc")
            .field("name", &self.name)
            .field("pid", &self.pid)
            .field("log", &self.log)
            .finish_non_exhaustive()
    }
}

pub(crate) fn spawn(
    registry: &SharedRegistry,
    ns: &str,
    enter: Enter,
    name: &str,
    program: &Path,
    args: &[String],
    log_dir: &Path,
) -> Result<Proc> {
    let log = log_dir.join(format!("{name}.log"));
    let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
    let mut cmd = match enter {
        Enter::NetOnly => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", crate::netns::netns_path(ns).display()))
                .arg("--");
            c
        }
        Enter::IpNetnsExec => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]);
            c
        }
    };
    // Both nsenter (without --pid/--fork) and `ip netns exec` exec the program in place, so
    // the child's PID is the program's PID.
    cmd.arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let child = cmd
        .spawn()
        .with_context(|| format!("start {} in {ns}", program.display()))?;
    let pid = child.id();
    let mut reg = registry.lock().expect("process registry poisoned");
    reg.next += 1;
    let id = reg.next;
    reg.children.insert(id, child);
    Ok(Proc {
        id,
        pid,
        name: name.to_owned(),
        log,
        registry: Arc::clone(registry),
    })
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file that receives the process's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything the process wrote so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the process has exited (and its status, then).
    pub fn try_wait(&self) -> Result<Option<ExitStatus>> {
        let mut reg = self.registry.lock().expect("process registry poisoned");
        match reg.children.get_mut(&self.id) {
            Some(child) => Ok(child.try_wait()?),
            None => bail!("{} was already stopped", self.name),
        }
    }

    /// Waits until the log contains `needle`; fails early if the process exits.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return Ok(log);
            }
            if let Some(status) = self.try_wait()? {
                bail!(
                    "{} exited ({status}) before logging {needle:?}; its log:\n{log}",
                    self.name
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not log {needle:?} within {timeout:?}; its log:\n{log}",
                    self.name
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Ends the process: SIGTERM, then SIGKILL after `grace`. Returns its exit status.
    pub fn stop(mut self, grace: Duration) -> Result<ExitStatus> {
        self.stop_inner(grace)
    }

    /// Ends the process with SIGKILL at once (no chance to clean up, as on a crash or an
    /// OOM kill) and reaps it.
    pub fn kill(self) -> Result<ExitStatus> {
        let child = self
            .registry
            .lock()
            .expect("process registry poisoned")
            .children
            .remove(&self.id);
        let Some(mut child) = child else {
            bail!("{} was already stopped", self.name);
        };
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        let _ = kill(Pid::from_raw(i32::try_from(child.id())?), Signal::SIGKILL);
        Ok(child.wait()?)
    }

    fn stop_inner(&mut self, grace: Duration) -> Result<ExitStatus> {
        let child = self
            .registry
            .lock()
            .expect("process registry poisoned")
            .children
            .remove(&self.id);
        match child {
            Some(child) => end(child, grace),
            None => bail!("{} was already stopped", self.name),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.stop_inner(Duration::from_secs(3));
    }
}

/// SIGTERM, wait up to `grace`, then SIGKILL; always reaps.
fn end(mut child: Child, grace: Duration) -> Result<ExitStatus> {
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    let pid = Pid::from_raw(i32::try_from(child.id())?);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        thread::sleep(Duration::from_millis(10));
    }
    let _ = kill(pid, Signal::SIGKILL);
    Ok(child.wait()?)
}

/// Ends every process still registered: SIGTERM to all at once, then the grace period, then
/// SIGKILL to those left. Returns the PIDs that were ended.
pub(crate) fn end_all(registry: &SharedRegistry, grace: Duration) -> Vec<u32> {
    let children: Vec<Child> = std::mem::take(
        &mut registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .children,
    )
    .into_values()
    .collect();
    let pids = children.iter().map(Child::id).collect();
    for c in &children {
        if let Ok(pid) = i32::try_from(c.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }
    for c in children {
        let _ = end(c, grace);
    }
    pids
}
