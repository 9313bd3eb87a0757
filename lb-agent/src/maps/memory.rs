//! An in-memory [`MapWriter`] with the kernel maps' capacities, for tests.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use lb_common::{
    BackendValue, CtValue, FlowKey, NatValue, NodeConfig, ServiceKey, ServiceValue, SvcCounters,
};

use super::{MapWriteError, MapWriter, ReadBack};
use crate::plan::MapOp;

#[derive(Clone, Debug, Default)]
pub struct MemoryMaps {
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    pub backends: BTreeMap<u32, BackendValue>,
    /// Flattened Maglev array: (lut_id, slot) -> backend id.
    pub maglev: HashMap<(u32, u32), u32>,
    /// Source ranges: (lut id, network, prefix length).
    pub src_ranges: BTreeSet<(u32, Ipv4Addr, u8)>,
    pub max_services: usize,
    pub max_backends: usize,
    pub config: NodeConfig,
    /// Every op applied, in order (tests check the order).
    pub log: Vec<MapOp>,
}

impl MemoryMaps {
    pub fn new(max_services: usize, max_backends: usize) -> Self {
        MemoryMaps {
            max_services,
            max_backends,
            ..Default::default()
        }
    }

    /// What a packet would see for `key`: the backends its table points at, checking that
    /// every slot points at an existing backend.
    pub fn resolve(&self, key: &ServiceKey, maglev_size: u32) -> Option<Vec<BackendValue>> {
        let svc = self.services.get(key)?;
        if svc.backend_count == 0 {
            return Some(vec![]);
        }
        let mut out: Vec<BackendValue> = (0..maglev_size)
            .map(|s| {
                let id = self.maglev.get(&(svc.lut_id, s)).copied().unwrap_or(0);
                *self.backends.get(&id).unwrap_or_else(|| {
                    panic!("slot {s} of lut {} -> missing backend {id}", svc.lut_id)
                })
            })
            .collect();
        out.sort_by_key(|b| (b.addr_be, b.port_be));
        out.dedup();
        Some(out)
    }
}

impl MapWriter for MemoryMaps {
    fn apply(&mut self, op: &MapOp) -> Result<(), MapWriteError> {
        match op {
            MapOp::PutBackend { id, value } => {
                if !self.backends.contains_key(id) && self.backends.len() >= self.max_backends {
                    return Err(MapWriteError::Full {
                        map: lb_common::MAP_BACKENDS,
                    });
                }
                self.backends.insert(*id, *value);
            }
            MapOp::ResetCounters { .. } => {}
            MapOp::PutSlots { lut_id, slots } => {
                for (s, id) in slots {
                    self.maglev.insert((*lut_id, *s), *id);
                }
            }
            MapOp::PutService { key, value } => {
                if !self.services.contains_key(key) && self.services.len() >= self.max_services {
                    return Err(MapWriteError::Full {
                        map: lb_common::MAP_SERVICES,
                    });
                }
                self.services.insert(*key, *value);
            }
            MapOp::DelService { key } => {
                self.services.remove(key);
            }
            MapOp::DelBackend { id } => {
                self.backends.remove(id);
            }
            MapOp::PutSrcRange {
                lut_id,
                addr,
                prefix,
            } => {
                self.src_ranges.insert((*lut_id, *addr, *prefix));
            }
            MapOp::DelSrcRange {
                lut_id,
                addr,
                prefix,
            } => {
                self.src_ranges.remove(&(*lut_id, *addr, *prefix));
            }
        }
        self.log.push(op.clone());
        Ok(())
    }

    fn set_config(&mut self, config: &NodeConfig) -> Result<(), MapWriteError> {
        self.config = *config;
        Ok(())
    }

    fn read_back(&self, maglev_size: u32) -> anyhow::Result<ReadBack> {
        let mut tables = HashMap::new();
        for v in self.services.values() {
            let t = (0..maglev_size)
                .map(|s| self.maglev.get(&(v.lut_id, s)).copied().unwrap_or(0))
                .collect();
            tables.insert(v.lut_id, t);
        }
        Ok(ReadBack {
            services: self.services.iter().map(|(k, v)| (*k, *v)).collect(),
            backends: self.backends.iter().map(|(k, v)| (*k, *v)).collect(),
            tables,
            src_ranges: self.src_ranges.iter().copied().collect(),
        })
    }

    fn counters(&self, lut_ids: &[u32]) -> anyhow::Result<Vec<(u32, SvcCounters)>> {
        Ok(lut_ids
            .iter()
            .map(|id| (*id, SvcCounters::default()))
            .collect())
    }

    fn reasons(&self) -> anyhow::Result<Vec<u64>> {
        Ok(vec![0; lb_common::Reason::COUNT as usize])
    }

    fn conntrack_entries(&self) -> anyhow::Result<(u64, u64)> {
        Ok((0, 0))
    }

    fn conntrack(&self, _limit: usize) -> anyhow::Result<Vec<(FlowKey, CtValue)>> {
        Ok(vec![])
    }

    fn revnat(&self, _limit: usize) -> anyhow::Result<Vec<(FlowKey, NatValue)>> {
        Ok(vec![])
    }
}
