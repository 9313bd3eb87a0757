//! Checks that turn a cryptic kernel error into one line saying what to do.
use std::os::fd::AsRawFd as _;

/// Fails with a clear message unless running as root (CAP_BPF/CAP_NET_ADMIN are needed).
pub fn check_root() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        anyhow::bail!(
            "lb-agent needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN) to load eBPF programs: run it with sudo or as root"
        );
    }
    if !std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        anyhow::bail!(
            "the kernel has no BTF (/sys/kernel/btf/vmlinux missing): use a kernel built with CONFIG_DEBUG_INFO_BTF=y"
        );
    }
    Ok(())
}

/// The cookie of the current network namespace (SO_NETNS_COOKIE, Linux 5.14+), so socket
/// programs attached to a shared cgroup can tell this node's sockets from others'.
pub fn netns_cookie() -> std::io::Result<u64> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: the buffer is a valid u64 of the length passed; the fd is open.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}
