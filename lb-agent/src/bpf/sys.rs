//! The two raw bpf(2) commands aya 0.14 does not expose for cgroup links: BPF_OBJ_GET of
//! a pinned link and BPF_LINK_UPDATE (Linux 5.7+).
#![allow(
    unsafe_code,
    reason = "raw bpf(2) syscalls with fixed-size attribute structs"
)]

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_UPDATE: libc::c_long = 29;

fn bpf(cmd: libc::c_long, attr: &mut [u64; 2]) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a zero-initialised 16-byte union bpf_attr prefix, large enough for
    // the fields of both commands used here; the kernel reads at most `size` bytes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Replaces the program of the link pinned at `pin` by `prog`.
pub fn link_update_pinned(pin: &Path, prog: &impl AsFd) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let cpath = CString::new(pin.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // struct { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; }
    let mut attr = [cpath.as_ptr() as u64, 0];
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a new fd that we now own.
    let link = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // struct { __u32 link_fd; __u32 new_prog_fd; __u32 flags; __u32 old_prog_fd; }
    let link_fd = link.as_raw_fd().cast_unsigned();
    let prog_fd = prog.as_fd().as_raw_fd().cast_unsigned();
    let mut attr = [u64::from(link_fd) | (u64::from(prog_fd) << 32), 0];
    bpf(BPF_LINK_UPDATE, &mut attr)?;
    Ok(())
}

/// SO_NETNS_COOKIE from include/uapi/asm-generic/socket.h (Linux 5.14+).
const SO_NETNS_COOKIE: libc::c_int = 71;

/// The cookie of the calling thread's network namespace, as bpf_get_netns_cookie() returns
/// it to programs (the agent writes it to `NodeConfig.netns_cookie`).
pub fn netns_cookie() -> std::io::Result<u64> {
    let sock = std::net::UdpSocket::bind("0.0.0.0:0")?;
    let mut cookie = 0_u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt into a u64 of the stated length on a valid socket.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}
