//! The Maglev array mapped into the agent's memory (BPF_F_MMAPABLE, Linux 5.5+): slot
//! writes become plain stores and a restart reads every table back without one syscall
//! per slot. At 10k Services x 1021 slots that is the difference between ~10M
//! `bpf(BPF_MAP_UPDATE_ELEM)` calls and a memcpy.
#![allow(
    unsafe_code,
    reason = "mmap of a BPF array map; bounds are checked on every access"
)]
#![allow(
    clippy::cast_ptr_alignment,
    reason = "the mapping is page aligned and elements are 8-byte aligned"
)]

use std::os::fd::AsRawFd as _;

use aya::maps::MapData;

/// BPF_F_MMAPABLE from include/uapi/linux/bpf.h.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

pub struct MmapArray {
    ptr: *mut u8,
    len: usize,
    /// Bytes between elements: the kernel stores array elements at
    /// `round_up(value_size, 8)` (kernel/bpf/arraymap.c), so u32 slots are 8 bytes apart.
    stride: usize,
    bytes: usize,
    // Keeps the map's fd open for as long as the mapping is used.
    _map: MapData,
}

// SAFETY: the mapping is owned by this value and only accessed through &self/&mut self.
unsafe impl Send for MmapArray {}

impl MmapArray {
    /// Maps an array of u32 created with BPF_F_MMAPABLE. `None` when the map was not
    /// created mmapable (then the caller falls back to syscalls).
    pub fn new(map: MapData) -> std::io::Result<Option<Self>> {
        let info = map
            .info()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        if info.map_flags() & BPF_F_MMAPABLE == 0 || info.value_size() != 4 {
            return Ok(None);
        }
        let len = info.max_entries() as usize;
        let stride = (info.value_size() as usize).next_multiple_of(8);
        let page = 4096;
        let bytes = (len * stride).div_ceil(page) * page;
        // SAFETY: a fresh shared mapping of the map's fd, length rounded to pages as the
        // kernel requires; checked for MAP_FAILED below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Some(MmapArray {
            ptr: ptr.cast(),
            len,
            stride,
            bytes,
            _map: map,
        }))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, i: usize) -> Option<u32> {
        // SAFETY: i < len, so the element is inside the mapping; elements are 8-byte
        // aligned, so the u32 read is aligned.
        (i < self.len)
            .then(|| unsafe { self.ptr.add(i * self.stride).cast::<u32>().read_volatile() })
    }

    /// Stores one slot. A 4-byte aligned store is atomic, so a packet reads either the old
    /// or the new backend id, never a torn value.
    pub fn set(&mut self, i: usize, v: u32) -> bool {
        if i >= self.len {
            return false;
        }
        // SAFETY: as in `get`.
        unsafe {
            self.ptr
                .add(i * self.stride)
                .cast::<u32>()
                .write_volatile(v);
        };
        true
    }
}

impl Drop for MmapArray {
    fn drop(&mut self) {
        // SAFETY: ptr/bytes are exactly what mmap returned.
        unsafe { libc::munmap(self.ptr.cast(), self.bytes) };
    }
}

use std::os::fd::AsFd as _;
