//! Types shared by the kernel programs (lb-ebpf) and user space (lb-agent).
//!
//! Every map key and value is `#[repr(C)]`, has its padding written out as fields, carries
//! no `bool`/`Option`/enum, and has a compile-time size assertion. Fields in network byte
//! order end in `_be`. The `user` feature adds `aya::Pod` impls.
#![no_std]

pub mod maglev;
pub mod maps;
pub mod reason;

pub use maps::*;
pub use reason::Reason;
