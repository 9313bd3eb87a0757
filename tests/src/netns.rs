//! Network namespaces: create, run code or commands inside, delete, and sweep the ones that
//! dead runs left behind.
//!
//! Code runs inside a namespace on a scoped thread that `setns(2)`s into it (the network
//! namespace is per thread), which is much faster than spawning `ip netns exec` per request.
use std::fs::{self, File};
use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;

use anyhow::{Context as _, Result, anyhow, bail};
use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Every namespace, work directory and bpffs directory the sandbox creates starts with this.
pub const PREFIX: &str = "lbt";

/// Where `ip netns add` pins named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// The pinned file of a named namespace.
pub fn netns_path(ns: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(ns)
}

/// Runs `f` on a thread that has entered the network namespace `ns`, and returns its result.
/// `f` may borrow from the caller (scoped thread).
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let file = File::open(netns_path(ns)).with_context(|| format!("open netns {ns}"))?;
    thread::scope(|s| {
        s.spawn(move || -> Result<T> {
            setns(&file, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns into {ns}"))?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow!("thread running in netns {ns} panicked"))?
    })
}

/// Runs a command and fails with its stderr when it does not exit 0.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawn {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ip [-n ns] -batch -` with the given lines (one `ip` process for many commands).
pub fn ip_batch(ns: Option<&str>, lines: &[String]) -> Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    let mut child = cmd
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawn ip (package iproute2)")?;
    let script = lines.join("\n") + "\n";
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "ip -n {} -batch failed: {}\nscript:\n{script}",
            ns.unwrap_or("<root>"),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Writes sysctls (`net/ipv4/ip_forward` style paths under /proc/sys) inside a namespace:
/// /proc/sys/net is resolved against the netns of the thread that opens it.
pub fn sysctls(ns: &str, settings: &[(String, &str)]) -> Result<()> {
    in_netns(ns, || -> Result<()> {
        for (key, value) in settings {
            let path = Path::new("/proc/sys").join(key);
            fs::write(&path, value).with_context(|| format!("{ns}: write {}", path.display()))?;
        }
        Ok(())
    })?
}

/// Names of all named network namespaces (`ip netns list`).
pub fn list() -> Vec<String> {
    let Ok(dir) = fs::read_dir(NETNS_RUN_DIR) else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    names
}

/// Deletes a named namespace and its /etc/netns directory. Processes still inside it keep
/// it alive: end them first.
pub fn delete(ns: &str) -> Result<()> {
    let etc = Path::new("/etc/netns").join(ns);
    if etc.exists() {
        let _ = fs::remove_dir_all(&etc);
    }
    if netns_path(ns).exists() {
        run(Command::new("ip").args(["netns", "del", ns]))?;
    }
    Ok(())
}

/// The pid encoded in a sandbox name `lbt<pid>x<counter>-...`.
pub fn owner_pid(name: &str) -> Option<i32> {
    let rest = name.strip_prefix(PREFIX)?;
    let (pid, _) = rest.split_once('x')?;
    pid.parse().ok()
}

fn pid_alive(pid: i32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// PIDs of the processes whose network namespace is the one pinned at `ns`.
pub fn pids_in(ns: &str) -> Vec<i32> {
    let Ok(meta) = fs::metadata(netns_path(ns)) else {
        return Vec::new();
    };
    let want = format!("net:[{}]", meta.ino());
    let Ok(proc_dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    proc_dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read_link(format!("/proc/{pid}/ns/net")).is_ok_and(|l| l.to_string_lossy() == want)
        })
        .collect()
}

/// Removes what runs of the sandbox left behind when their process died without cleaning
/// up (SIGKILL, abort): namespaces (and the processes still inside them, found by their
/// namespace, ended by pid), /etc/netns entries, work directories and bpffs directories whose
/// owner pid is no longer alive. Sandboxes of live processes are never touched.
pub fn sweep_stale() -> Vec<String> {
    let mut swept = Vec::new();
    let stale = |name: &str| owner_pid(name).is_some_and(|pid| !pid_alive(pid));
    for ns in list().into_iter().filter(|n| stale(n)) {
        for pid in pids_in(&ns) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        if delete(&ns).is_ok() {
            swept.push(ns);
        }
    }
    for dir in ["/etc/netns", "/sys/fs/bpf"]
        .into_iter()
        .map(PathBuf::from)
        .chain([std::env::temp_dir()])
    {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if stale(&name) && fs::remove_dir_all(e.path()).is_ok() {
                swept.push(e.path().display().to_string());
            }
        }
    }
    swept
}
