//! Types shared by the kernel programs (lb-ebpf) and user space (lb-agent).
//!
//! Every map key and value is `#[repr(C)]`, has its padding written out as fields, carries
//! no `bool`/`Option`/enum, and has a compile-time size assertion. Fields in network byte
//! order end in `_be`. The `user` feature adds `aya::Pod` impls.
#![no_std]
// Padding is written out as public fields so the layout is explicit and the types can be
// built with struct literals on both sides (STYLE.md: no hidden padding).
#![allow(clippy::pub_underscore_fields, reason = "explicit padding fields")]
// The eBPF side has no function calls to spare: its helpers must be inlined.
#![allow(
    clippy::inline_always,
    reason = "helpers shared with the eBPF programs"
)]

pub mod maglev;
pub mod maps;
pub mod reason;

pub use maps::*;
pub use reason::Reason;
