//! Loading and attaching the embedded eBPF programs.

/// The eBPF object built from lb-ebpf by build.rs, embedded in this binary.
pub fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf"))
}
