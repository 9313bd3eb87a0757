//! Attaching as pinned links under `<bpffs dir>/links/<iface>_<hook>`: the links outlive the
//! agent (a `kill -9` detaches nothing), and a restarted agent swaps its new programs into
//! the existing links atomically (BPF_LINK_UPDATE) instead of detach + attach, so no packet
//! ever meets an interface without a program.
use std::path::{Path, PathBuf};

use aya::programs::{
    CgroupAttachMode, CgroupSockAddr, LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
    links::{FdLink, PinnedLink},
    tc::{SchedClassifierLink, TcAttachOptions},
    xdp::XdpLink,
};

use super::{
    BpfError, Dataplane, PROG_SOCK_CONNECT4, PROG_SOCK_GETPEERNAME4, PROG_SOCK_RECVMSG4,
    PROG_SOCK_SENDMSG4, PROG_TC_FROM_POD, PROG_TC_TO_POD, PROG_XDP, PROG_XDP_PASS, mounts, sys,
};

/// How the XDP program ended up on the external interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Native (driver) XDP.
    Driver,
    /// Generic XDP: the driver has no native support (slower, still correct).
    Skb,
    /// A pinned link from a previous run now runs the new program.
    Replaced,
}

/// Where the link of `hook` on `iface` is pinned.
pub fn link_pin_path(bpffs_dir: &Path, iface: &str, hook: &str) -> PathBuf {
    bpffs_dir.join("links").join(format!("{iface}_{hook}"))
}

fn link_err(path: &Path, detail: impl std::fmt::Display) -> BpfError {
    BpfError::Link {
        path: path.into(),
        detail: detail.to_string(),
    }
}

fn attach_err(
    program: &'static str,
    target: &str,
    source: aya::programs::ProgramError,
) -> BpfError {
    BpfError::Attach {
        program,
        target: target.to_owned(),
        source,
    }
}

/// Interface sysctls the data plane needs. Reverse-NATed NodePort replies and SNATed
/// NodePort requests carry a node address as their source while they are routed in from
/// the interface (the XDP/TC programs rewrite them and let the kernel forward them): the
/// kernel drops such packets as martians unless `accept_local=1`, and a strict
/// `rp_filter` (1) would drop them too, so it is relaxed to loose (2) on that interface
/// (the effective value is max(all, iface)). Best effort: failures are logged.
fn prepare_iface(iface: &str) {
    let base = PathBuf::from("/proc/sys/net/ipv4/conf").join(iface);
    if let Err(e) = std::fs::write(base.join("accept_local"), "1") {
        tracing::warn!(%iface, error = %e, "cannot set accept_local=1; NodePort replies may be dropped as martians");
    }
    let rpf = base.join("rp_filter");
    if std::fs::read_to_string(&rpf).is_ok_and(|v| v.trim() != "0")
        && let Err(e) = std::fs::write(&rpf, "2")
    {
        tracing::warn!(%iface, error = %e, "cannot set rp_filter=2");
    }
    let all = "/proc/sys/net/ipv4/conf/all/rp_filter";
    if std::fs::read_to_string(all).is_ok_and(|v| v.trim() == "1") {
        tracing::warn!(%iface, "net.ipv4.conf.all.rp_filter=1 (strict) overrides the interface; set it to 0 or 2");
    }
}

/// Opens the pinned link at `path`, if there is one.
fn existing(path: &Path) -> Option<FdLink> {
    PinnedLink::from_pin(path).ok().map(FdLink::from)
}

impl Dataplane {
    fn links_dir(&self) -> Result<PathBuf, BpfError> {
        let dir = self.bpffs_dir.join("links");
        std::fs::create_dir_all(&dir).map_err(|source| BpfError::PinDir {
            dir: dir.clone(),
            source,
        })?;
        Ok(dir)
    }

    fn pin(&mut self, fd: FdLink, path: &Path) -> Result<(), BpfError> {
        let pinned = fd.pin(path).map_err(|e| link_err(path, e))?;
        self.links.push(pinned);
        Ok(())
    }

    /// Keeps a taken-over link open for the life of the process (it stays pinned).
    fn keep(&mut self, path: &Path) {
        if let Ok(l) = PinnedLink::from_pin(path) {
            self.links.push(l);
        }
    }

    /// Attaches `lb_xdp` to the node's external interface: native mode, falling back to
    /// generic (SKB) mode with a warning when the driver cannot. Also sets the interface's
    /// `accept_local=1` (and loose `rp_filter`), see `prepare_iface`.
    pub fn attach_external(&mut self, iface: &str) -> Result<AttachMode, BpfError> {
        self.links_dir()?;
        prepare_iface(iface);
        let path = link_pin_path(&self.bpffs_dir, iface, "xdp");
        let prog: &mut Xdp = program(&mut self.ebpf, PROG_XDP)?;
        if let Some(fd) = existing(&path) {
            let replaced = XdpLink::try_from(fd)
                .map_err(|e| e.to_string())
                .and_then(|l| prog.attach_to_link(l).map_err(|e| e.to_string()));
            match replaced {
                Ok(id) => {
                    // The kernel link is pinned; dropping our handle keeps it attached.
                    drop(prog.take_link(id));
                    self.keep(&path);
                    return Ok(AttachMode::Replaced);
                }
                Err(e) => {
                    // A link whose interface was deleted and re-created is defunct.
                    tracing::warn!(%iface, error = %e, "stale XDP link pin; attaching anew");
                    remove_pin(&path)?;
                }
            }
        }
        let (id, mode) = match prog.attach(iface, XdpMode::Driver) {
            Ok(id) => (id, AttachMode::Driver),
            Err(aya::programs::ProgramError::UnknownInterface { .. }) => {
                return Err(BpfError::NoSuchInterface {
                    iface: iface.to_owned(),
                });
            }
            Err(e) => {
                tracing::warn!(%iface, error = %e, "native XDP failed; using generic (SKB) mode");
                let id = prog
                    .attach(iface, XdpMode::Skb)
                    .map_err(|e| attach_err(PROG_XDP, iface, e))?;
                (id, AttachMode::Skb)
            }
        };
        let link = prog
            .take_link(id)
            .map_err(|e| attach_err(PROG_XDP, iface, e))?;
        let fd = FdLink::try_from(link).map_err(|e| link_err(&path, e))?;
        self.pin(fd, &path)?;
        Ok(mode)
    }

    /// Attaches `lb_xdp_pass` (XDP_PASS for everything) in native mode: a veth whose peer
    /// sends XDP_TX/redirected frames needs an XDP program to receive them natively.
    pub fn attach_xdp_pass(&mut self, iface: &str) -> Result<(), BpfError> {
        self.links_dir()?;
        let path = link_pin_path(&self.bpffs_dir, iface, "xdp_pass");
        remove_pin(&path)?;
        let prog: &mut Xdp = program(&mut self.ebpf, PROG_XDP_PASS)?;
        let id = prog
            .attach(iface, XdpMode::Driver)
            .map_err(|e| attach_err(PROG_XDP_PASS, iface, e))?;
        let link = prog
            .take_link(id)
            .map_err(|e| attach_err(PROG_XDP_PASS, iface, e))?;
        let fd = FdLink::try_from(link).map_err(|e| link_err(&path, e))?;
        self.pin(fd, &path)
    }

    /// Attaches `lb_tc_from_pod` (tcx ingress) and `lb_tc_to_pod` (tcx egress) to the
    /// host side of a pod's veth. Linux 6.6+ (tcx).
    pub fn attach_pod(&mut self, iface: &str) -> Result<(), BpfError> {
        self.links_dir()?;
        prepare_iface(iface);
        self.attach_tc(iface, PROG_TC_FROM_POD, TcAttachType::Ingress, "tc_ingress")?;
        self.attach_tc(iface, PROG_TC_TO_POD, TcAttachType::Egress, "tc_egress")
    }

    fn attach_tc(
        &mut self,
        iface: &str,
        name: &'static str,
        ty: TcAttachType,
        hook: &str,
    ) -> Result<(), BpfError> {
        let path = link_pin_path(&self.bpffs_dir, iface, hook);
        let prog: &mut SchedClassifier = program(&mut self.ebpf, name)?;
        if let Some(fd) = existing(&path) {
            let replaced = SchedClassifierLink::try_from(fd)
                .map_err(|e| e.to_string())
                .and_then(|l| prog.attach_to_link(l).map_err(|e| e.to_string()));
            match replaced {
                Ok(id) => {
                    drop(prog.take_link(id));
                    self.keep(&path);
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(%iface, hook, error = %e, "stale tcx link pin; attaching anew");
                    remove_pin(&path)?;
                }
            }
        }
        let id = prog
            .attach_with_options(iface, ty, TcAttachOptions::TcxOrder(LinkOrder::default()))
            .map_err(|e| match e {
                aya::programs::ProgramError::UnknownInterface { .. } => BpfError::NoSuchInterface {
                    iface: iface.to_owned(),
                },
                e => attach_err(name, iface, e),
            })?;
        let link = prog.take_link(id).map_err(|e| attach_err(name, iface, e))?;
        let fd = FdLink::try_from(link).map_err(|e| link_err(&path, e))?;
        self.pin(fd, &path)
    }

    /// Attaches the socket-LB programs (connect4, sendmsg4, recvmsg4, getpeername4) to a
    /// cgroup v2 directory; `None` means the root of the first cgroup2 mount (found in
    /// /proc/mounts: /sys/fs/cgroup/unified on hybrid hosts). Returns the cgroup used.
    pub fn attach_cgroup(&mut self, path: Option<&Path>) -> Result<PathBuf, BpfError> {
        let cgroup = match path {
            Some(p) => p.to_path_buf(),
            None => mounts::cgroup2_root()?,
        };
        self.links_dir()?;
        for (name, hook) in [
            (PROG_SOCK_CONNECT4, "cgroup_connect4"),
            (PROG_SOCK_SENDMSG4, "cgroup_sendmsg4"),
            (PROG_SOCK_RECVMSG4, "cgroup_recvmsg4"),
            (PROG_SOCK_GETPEERNAME4, "cgroup_getpeername4"),
        ] {
            let pin = self.bpffs_dir.join("links").join(hook);
            let prog: &mut CgroupSockAddr = program(&mut self.ebpf, name)?;
            if pin.exists() {
                // aya 0.14 has no attach_to_link for cgroup links: BPF_LINK_UPDATE by hand.
                let prog_fd = prog.fd().map_err(|e| attach_err(name, "cgroup", e))?;
                match sys::link_update_pinned(&pin, prog_fd) {
                    Ok(()) => {
                        self.keep(&pin);
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(hook, error = %e, "stale cgroup link pin; attaching anew");
                        remove_pin(&pin)?;
                    }
                }
            }
            let file = std::fs::File::open(&cgroup).map_err(|source| BpfError::Cgroup {
                path: cgroup.clone(),
                source,
            })?;
            let id = prog
                .attach(file, CgroupAttachMode::Single)
                .map_err(|e| attach_err(name, &cgroup.display().to_string(), e))?;
            let link = prog
                .take_link(id)
                .map_err(|e| attach_err(name, "cgroup", e))?;
            let fd = FdLink::try_from(link).map_err(|e| link_err(&pin, e))?;
            self.pin(fd, &pin)?;
        }
        Ok(cgroup)
    }
}

fn program<'a, T>(ebpf: &'a mut aya::Ebpf, name: &'static str) -> Result<&'a mut T, BpfError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program>,
{
    ebpf.program_mut(name)
        .and_then(|p| <&mut T>::try_from(p).ok())
        .ok_or(BpfError::MissingProgram { program: name })
}

fn remove_pin(path: &Path) -> Result<(), BpfError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(BpfError::Remove {
            path: path.into(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// Unpins the links of an interface that went away (its links are already defunct).
pub fn forget_iface(bpffs_dir: &Path, iface: &str) -> Result<(), BpfError> {
    for hook in ["xdp", "xdp_pass", "tc_ingress", "tc_egress"] {
        remove_pin(&link_pin_path(bpffs_dir, iface, hook))?;
    }
    Ok(())
}

/// Clean uninstall: unpins (and so detaches) every link, then removes the map pins and
/// the directory. Established connections through the data plane break.
pub fn detach_all(bpffs_dir: &Path) -> Result<(), BpfError> {
    let links = bpffs_dir.join("links");
    if let Ok(entries) = std::fs::read_dir(&links) {
        for e in entries.flatten() {
            // Removing the last reference (the pin; we hold no fd) detaches the link.
            remove_pin(&e.path())?;
        }
        let _ = std::fs::remove_dir(&links);
    }
    for map in lb_common::ALL_MAPS {
        remove_pin(&bpffs_dir.join(map))?;
    }
    match std::fs::remove_dir(bpffs_dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!(dir = %bpffs_dir.display(), error = %e, "pin directory not removed");
        }
        _ => {}
    }
    Ok(())
}
