//! lb-agent: the per-node daemon. The tree reads as the data flow:
//! `lb_k8s` source -> [`model`] (Services and endpoints as plain types) -> [`plan`] (pure
//! diff to map operations) -> [`maps`] (thin writer) over the programs loaded by [`bpf`].
pub mod bpf;
pub mod cli;
pub mod dataplane;
pub mod healthcheck;
pub mod http;
pub mod inspect;
pub mod maps;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod preflight;
pub mod reconcile;
pub mod run;
