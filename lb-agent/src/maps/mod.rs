//! The thin writer: applies [`MapOp`]s to the maps and reads them back after a restart.
//! Behind a trait so that reconciliation is tested without root ([`memory`]), the way aya
//! fakes its syscalls in its own tests.
pub mod kernel;
pub mod memory;
pub mod mmap;

use std::collections::HashMap;

use lb_common::{
    BackendValue, CtValue, FlowKey, NatValue, NodeConfig, ServiceKey, ServiceValue, SvcCounters,
};

use crate::plan::MapOp;

/// Why a write failed. Matched on by kind, never by message.
#[derive(Debug, thiserror::Error)]
pub enum MapWriteError {
    /// The kernel map is full (E2BIG / ENOSPC / ENOMEM on insert).
    #[error("map {map} is full")]
    Full { map: &'static str },
    #[error("map {map}: {source}")]
    Other {
        map: &'static str,
        #[source]
        source: anyhow::Error,
    },
}

/// What the maps hold, read back.
#[derive(Clone, Debug, Default)]
pub struct ReadBack {
    pub services: Vec<(ServiceKey, ServiceValue)>,
    pub backends: Vec<(u32, BackendValue)>,
    /// Maglev tables of the lut ids in use.
    pub tables: HashMap<u32, Vec<u32>>,
    /// Source ranges: (lut id, network, prefix length).
    pub src_ranges: Vec<(u32, std::net::Ipv4Addr, u8)>,
}

/// Read and write access to the service maps.
pub trait MapWriter: Send {
    fn apply(&mut self, op: &MapOp) -> Result<(), MapWriteError>;
    /// Writes the node configuration (SNAT address, Maglev size, ...) at index 0.
    fn set_config(&mut self, config: &NodeConfig) -> Result<(), MapWriteError>;
    fn read_back(&self, maglev_size: u32) -> anyhow::Result<ReadBack>;
    /// Per-service-entry counters, summed over CPUs, by lut id.
    fn counters(&self, lut_ids: &[u32]) -> anyhow::Result<Vec<(u32, SvcCounters)>>;
    /// Verdict reason counters summed over CPUs, indexed by `Reason`.
    fn reasons(&self) -> anyhow::Result<Vec<u64>>;
    /// Number of entries in the conntrack and reverse-NAT maps (walks the keys).
    fn conntrack_entries(&self) -> anyhow::Result<(u64, u64)>;
    /// Conntrack entries, for `inspect conntrack`.
    fn conntrack(&self, limit: usize) -> anyhow::Result<Vec<(FlowKey, CtValue)>>;
    fn revnat(&self, limit: usize) -> anyhow::Result<Vec<(FlowKey, NatValue)>>;
}
