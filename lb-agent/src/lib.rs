//! lb-agent: the per-node daemon. The tree reads as the data flow:
//! `lb_k8s` source -> [`model`] (Services and endpoints as plain types) -> [`plan`] (pure
//! diff to map operations) -> [`maps`] (thin writer) over the programs loaded by [`bpf`].
pub mod bpf;
pub mod model;
