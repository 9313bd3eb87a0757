//! [`MapWriter`] over the real, pinned kernel maps.
//!
//! Maps are opened from their pins (`<bpffs dir>/<MAP NAME>`), so the running agent and
//! `lb-agent inspect` use the same code, and a restarted agent finds what its predecessor
//! wrote.
use std::path::Path;

use anyhow::Context as _;
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues};
use aya::util::nr_cpus;
use lb_common::{
    BackendValue, CtValue, FlowKey, MAP_BACKENDS, MAP_CONFIG, MAP_CONNTRACK, MAP_MAGLEV,
    MAP_REASONS, MAP_REVNAT, MAP_SERVICES, MAP_SRC_RANGES, MAP_SVC_COUNTERS, NatValue, NodeConfig,
    Reason, ServiceKey, ServiceValue, SrcRangeKey, SvcCounters,
};

use super::{MapWriteError, MapWriter, ReadBack};
use crate::plan::MapOp;

pub struct KernelMaps {
    /// The Maglev array mapped into memory when it was created mmapable.
    maglev_mmap: Option<super::mmap::MmapArray>,
    /// Slots per table, from the node configuration (written before any slot).
    maglev_size: u32,
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    backends: HashMap<MapData, u32, BackendValue>,
    maglev: Array<MapData, u32>,
    config: Array<MapData, NodeConfig>,
    counters: PerCpuArray<MapData, SvcCounters>,
    reasons: PerCpuArray<MapData, u64>,
    conntrack: HashMap<MapData, FlowKey, CtValue>,
    revnat: HashMap<MapData, FlowKey, NatValue>,
    src_ranges: LpmTrie<MapData, SrcRangeKey, u8>,
}

fn src_range_key(lut_id: u32, addr: std::net::Ipv4Addr, prefix: u8) -> Key<SrcRangeKey> {
    Key::new(
        32 + u32::from(prefix),
        SrcRangeKey {
            lut_id_be: lut_id.to_be(),
            addr_be: u32::from(addr).to_be(),
        },
    )
}

fn open(dir: &Path, name: &str) -> anyhow::Result<Map> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path).with_context(|| {
        format!(
            "cannot open pinned map {}: is an lb-agent running with --bpffs {}?",
            path.display(),
            dir.display()
        )
    })?;
    Ok(Map::from_map_data(data)?)
}

impl KernelMaps {
    /// Opens the maps pinned under `dir`.
    pub fn open_pinned(dir: &Path) -> anyhow::Result<Self> {
        let maglev_mmap = super::mmap::MmapArray::new(MapData::from_pin(dir.join(MAP_MAGLEV))?)
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot mmap the Maglev map; writing slots by syscall");
                None
            });
        let config: Array<MapData, NodeConfig> = open(dir, MAP_CONFIG)?.try_into()?;
        let maglev_size = config.get(&0, 0).map_or(0, |c| c.maglev_size);
        Ok(KernelMaps {
            maglev_mmap,
            maglev_size,
            services: open(dir, MAP_SERVICES)?.try_into()?,
            backends: open(dir, MAP_BACKENDS)?.try_into()?,
            maglev: open(dir, MAP_MAGLEV)?.try_into()?,
            config,
            counters: open(dir, MAP_SVC_COUNTERS)?.try_into()?,
            reasons: open(dir, MAP_REASONS)?.try_into()?,
            conntrack: open(dir, MAP_CONNTRACK)?.try_into()?,
            revnat: open(dir, MAP_REVNAT)?.try_into()?,
            src_ranges: open(dir, MAP_SRC_RANGES)?.try_into()?,
        })
    }
}

fn classify(map: &'static str, e: MapError) -> MapWriteError {
    if let MapError::SyscallError(s) = &e
        && matches!(
            s.io_error.raw_os_error(),
            Some(libc::E2BIG | libc::ENOSPC | libc::ENOMEM)
        )
    {
        return MapWriteError::Full { map };
    }
    MapWriteError::Other {
        map,
        source: e.into(),
    }
}

fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound | MapError::ElementNotFound) => Ok(()),
        Err(MapError::SyscallError(s)) if s.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

impl MapWriter for KernelMaps {
    fn apply(&mut self, op: &MapOp) -> Result<(), MapWriteError> {
        match op {
            MapOp::PutBackend { id, value } => self
                .backends
                .insert(id, value, 0)
                .map_err(|e| classify(MAP_BACKENDS, e)),
            MapOp::ResetCounters { lut_id } => {
                let n = nr_cpus().map_err(|(_, e)| MapWriteError::Other {
                    map: MAP_SVC_COUNTERS,
                    source: e.into(),
                })?;
                let zeros =
                    PerCpuValues::try_from(vec![SvcCounters::default(); n]).map_err(|e| {
                        MapWriteError::Other {
                            map: MAP_SVC_COUNTERS,
                            source: e.into(),
                        }
                    })?;
                self.counters
                    .set(*lut_id, zeros, 0)
                    .map_err(|e| classify(MAP_SVC_COUNTERS, e))
            }
            MapOp::PutSlots { lut_id, slots } => {
                let m = self.maglev_size;
                if m == 0 {
                    return Err(MapWriteError::Other {
                        map: MAP_MAGLEV,
                        source: anyhow::anyhow!("node configuration (Maglev size) not written yet"),
                    });
                }
                if let Some(mm) = self.maglev_mmap.as_mut() {
                    for (slot, id) in slots {
                        if !mm.set((lut_id * m + slot) as usize, *id) {
                            return Err(MapWriteError::Other {
                                map: MAP_MAGLEV,
                                source: anyhow::anyhow!("slot {slot} of lut {lut_id} out of range"),
                            });
                        }
                    }
                    return Ok(());
                }
                for (slot, id) in slots {
                    self.maglev
                        .set(lut_id * m + slot, id, 0)
                        .map_err(|e| classify(MAP_MAGLEV, e))?;
                }
                Ok(())
            }
            MapOp::PutService { key, value } => self
                .services
                .insert(key, value, 0)
                .map_err(|e| classify(MAP_SERVICES, e)),
            MapOp::DelService { key } => {
                ignore_missing(self.services.remove(key)).map_err(|e| classify(MAP_SERVICES, e))
            }
            MapOp::DelBackend { id } => {
                ignore_missing(self.backends.remove(id)).map_err(|e| classify(MAP_BACKENDS, e))
            }
            MapOp::PutSrcRange {
                lut_id,
                addr,
                prefix,
            } => self
                .src_ranges
                .insert(&src_range_key(*lut_id, *addr, *prefix), 1, 0)
                .map_err(|e| classify(MAP_SRC_RANGES, e)),
            MapOp::DelSrcRange {
                lut_id,
                addr,
                prefix,
            } => ignore_missing(
                self.src_ranges
                    .remove(&src_range_key(*lut_id, *addr, *prefix)),
            )
            .map_err(|e| classify(MAP_SRC_RANGES, e)),
        }
    }

    fn set_config(&mut self, config: &NodeConfig) -> Result<(), MapWriteError> {
        self.config
            .set(0, config, 0)
            .map_err(|e| classify(MAP_CONFIG, e))?;
        self.maglev_size = config.maglev_size;
        Ok(())
    }

    fn read_back(&self, maglev_size: u32) -> anyhow::Result<ReadBack> {
        let services: Vec<(ServiceKey, ServiceValue)> =
            self.services.iter().collect::<Result<_, _>>()?;
        let backends = self.backends.iter().collect::<Result<_, _>>()?;
        let mut tables = std::collections::HashMap::new();
        for (_, v) in &services {
            let base = v.lut_id * maglev_size;
            let t = match &self.maglev_mmap {
                Some(mm) => (0..maglev_size)
                    .map(|s| mm.get((base + s) as usize).unwrap_or(0))
                    .collect(),
                None => (0..maglev_size)
                    .map(|s| self.maglev.get(&(base + s), 0))
                    .collect::<Result<Vec<u32>, _>>()?,
            };
            tables.insert(v.lut_id, t);
        }
        let src_ranges = self
            .src_ranges
            .keys()
            .map(|k| {
                let k = k?;
                let data = k.data();
                Ok((
                    u32::from_be(data.lut_id_be),
                    std::net::Ipv4Addr::from(u32::from_be(data.addr_be)),
                    u8::try_from(k.prefix_len().saturating_sub(32)).unwrap_or(32),
                ))
            })
            .collect::<Result<Vec<_>, MapError>>()?;
        Ok(ReadBack {
            services,
            backends,
            tables,
            src_ranges,
        })
    }

    fn counters(&self, lut_ids: &[u32]) -> anyhow::Result<Vec<(u32, SvcCounters)>> {
        lut_ids
            .iter()
            .map(|id| {
                let per_cpu = self.counters.get(id, 0)?;
                let sum = per_cpu
                    .iter()
                    .fold(SvcCounters::default(), |a, c| SvcCounters {
                        packets: a.packets + c.packets,
                        bytes: a.bytes + c.bytes,
                    });
                Ok((*id, sum))
            })
            .collect()
    }

    fn reasons(&self) -> anyhow::Result<Vec<u64>> {
        (0..Reason::COUNT)
            .map(|i| Ok(self.reasons.get(&i, 0)?.iter().sum()))
            .collect()
    }

    fn conntrack_entries(&self) -> anyhow::Result<(u64, u64)> {
        Ok((
            self.conntrack.keys().count() as u64,
            self.revnat.keys().count() as u64,
        ))
    }

    fn conntrack(&self, limit: usize) -> anyhow::Result<Vec<(FlowKey, CtValue)>> {
        Ok(self
            .conntrack
            .iter()
            .take(limit)
            .collect::<Result<_, _>>()?)
    }

    fn revnat(&self, limit: usize) -> anyhow::Result<Vec<(FlowKey, NatValue)>> {
        Ok(self.revnat.iter().take(limit).collect::<Result<_, _>>()?)
    }
}
