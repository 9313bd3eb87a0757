//! The pure core of the agent: given what is programmed and what a Service now wants,
//! the map operations that get from one to the other, in an order in which no packet can
//! see a half-written service (backends, then Maglev slots, then the service entry; deletes
//! in reverse). No I/O here: [`crate::maps`] applies the operations.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use lb_common::maglev::{MaglevBackend, backend_identity, build_table};
use lb_common::{BACKEND_F_LOCAL, BackendValue, PROTO_TCP, ServiceKey, ServiceValue};

use crate::model::{BackendAddr, Frontend};

/// One write to the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapOp {
    PutBackend {
        id: u32,
        value: BackendValue,
    },
    /// Zero a service entry's per-CPU counters before the entry is (re)used.
    ResetCounters {
        lut_id: u32,
    },
    /// Changed Maglev slots of one table: (slot, backend id).
    PutSlots {
        lut_id: u32,
        slots: Vec<(u32, u32)>,
    },
    PutService {
        key: ServiceKey,
        value: ServiceValue,
    },
    DelService {
        key: ServiceKey,
    },
    DelBackend {
        id: u32,
    },
    /// One `loadBalancerSourceRanges` network of a service entry.
    PutSrcRange {
        lut_id: u32,
        addr: Ipv4Addr,
        prefix: u8,
    },
    DelSrcRange {
        lut_id: u32,
        addr: Ipv4Addr,
        prefix: u8,
    },
}

impl MapOp {
    /// Position in the safe write order.
    fn rank(&self) -> u8 {
        match self {
            MapOp::PutBackend { .. } => 0,
            MapOp::ResetCounters { .. } => 1,
            // Ranges are in place before the entry that says to check them; a range is
            // removed only after the entry stopped referring to it (or is gone).
            MapOp::PutSlots { .. } | MapOp::PutSrcRange { .. } => 2,
            MapOp::PutService { .. } => 3,
            MapOp::DelService { .. } | MapOp::DelSrcRange { .. } => 4,
            MapOp::DelBackend { .. } => 5,
        }
    }
}

/// Identity of a backend in the maps: one entry per frontend and endpoint. Not shared
/// between frontends, so that removing an endpoint from one Service deletes the entry its
/// connections point at (the kernel then re-selects, as kube-proxy flushes conntrack
/// for a removed UDP endpoint; a TCP entry is deleted after the retire grace period)
/// even while another Service still uses the same pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    pub frontend: ServiceKey,
    pub addr: Ipv4Addr,
    pub port: u16,
    pub proto: u8,
}

impl BackendKey {
    fn new(frontend: ServiceKey, b: BackendAddr) -> Self {
        BackendKey {
            frontend,
            addr: b.addr,
            port: b.port,
            proto: b.proto,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct BackendState {
    id: u32,
    value: BackendValue,
    refs: u32,
}

/// A programmed service entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceState {
    pub value: ServiceValue,
    /// Every backend entry this frontend holds (table backends and standby ones).
    pub backends: Vec<BackendKey>,
    /// Its `loadBalancerSourceRanges` entries, sorted.
    pub src_ranges: Vec<(Ipv4Addr, u8)>,
}

/// Allocates small integer ids, lowest free first.
#[derive(Clone, Debug)]
struct Ids {
    max: u32,
    next: u32,
    free: BTreeSet<u32>,
}

impl Ids {
    fn new(first: u32, max: u32) -> Self {
        Ids {
            max,
            next: first,
            free: BTreeSet::new(),
        }
    }
    fn alloc(&mut self) -> Option<u32> {
        if let Some(id) = self.free.pop_first() {
            return Some(id);
        }
        (self.next < self.max).then(|| {
            self.next += 1;
            self.next - 1
        })
    }
    fn release(&mut self, id: u32) {
        self.free.insert(id);
    }
    /// Marks `id` as taken (read back from the maps after a restart).
    fn take(&mut self, id: u32) {
        while self.next <= id {
            self.free.insert(self.next);
            self.next += 1;
        }
        self.free.remove(&id);
    }
}

/// A service entry that could not be planned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("service map full ({0} entries): raise --max-services")]
    ServicesFull(u32),
    #[error("backend map full ({0} entries): raise --max-backends")]
    BackendsFull(u32),
}

/// Capacities and the Maglev table size.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_services: u32,
    pub max_backends: u32,
    pub maglev_size: u32,
}

/// What the maps hold, as far as the agent knows: built from its own writes, or read
/// back from the pinned maps after a restart.
#[derive(Clone, Debug)]
pub struct Programmed {
    limits: Limits,
    services: BTreeMap<ServiceKey, ServiceState>,
    backends: HashMap<BackendKey, BackendState>,
    /// Known content of each lut's Maglev region (absent: all zeros).
    tables: HashMap<u32, Vec<u32>>,
    lut_ids: Ids,
    backend_ids: Ids,
    /// Backend ids read back from the maps that no table references.
    orphan_backends: Vec<u32>,
    /// Source ranges read back whose lut id no service entry holds.
    orphan_ranges: Vec<(u32, Ipv4Addr, u8)>,
    /// TCP backend entries no frontend wants any more, kept for `retire_grace` so that
    /// connections already on them finish (kube-proxy leaves a removed endpoint's TCP
    /// conntrack entries alone; the kernel re-selects only once the entry is gone). Never
    /// in a Maglev table, so no new connection picks them; their ids are not reused.
    retired: BTreeMap<BackendKey, (BackendState, Instant)>,
    retire_grace: Duration,
}

impl Programmed {
    pub fn new(limits: Limits) -> Self {
        Programmed {
            limits,
            services: BTreeMap::new(),
            backends: HashMap::new(),
            tables: HashMap::new(),
            orphan_backends: Vec::new(),
            orphan_ranges: Vec::new(),
            retired: BTreeMap::new(),
            retire_grace: Duration::ZERO,
            lut_ids: Ids::new(0, limits.max_services),
            // Backend id 0 means "unset" in the kernel: never allocate it.
            backend_ids: Ids::new(1, limits.max_backends.saturating_add(1)),
        }
    }

    /// Rebuilds the state from what was read back from pinned maps.
    pub fn restore(
        limits: Limits,
        services: Vec<(ServiceKey, ServiceValue)>,
        backends: Vec<(u32, BackendValue)>,
        tables: HashMap<u32, Vec<u32>>,
        ranges: &[(u32, Ipv4Addr, u8)],
    ) -> Self {
        let mut p = Programmed::new(limits);
        let mut by_id: HashMap<u32, BackendValue> = HashMap::new();
        for (id, value) in backends {
            p.backend_ids.take(id);
            by_id.insert(id, value);
        }
        for (key, value) in services {
            p.lut_ids.take(value.lut_id);
            let table = tables.get(&value.lut_id).cloned().unwrap_or_default();
            let mut ids: Vec<u32> = if value.backend_count == 0 {
                vec![]
            } else {
                table.clone()
            };
            ids.sort_unstable();
            ids.dedup();
            let mut keys = Vec::new();
            for id in ids {
                // Each backend id belongs to one frontend: the one whose table holds it.
                let Some(v) = by_id.remove(&id) else { continue };
                let k = BackendKey {
                    frontend: key,
                    addr: Ipv4Addr::from(u32::from_be(v.addr_be)),
                    port: u16::from_be(v.port_be),
                    proto: v.proto,
                };
                p.backends.insert(
                    k,
                    BackendState {
                        id,
                        value: v,
                        refs: 1,
                    },
                );
                keys.push(k);
            }
            let mut src_ranges: Vec<(Ipv4Addr, u8)> = ranges
                .iter()
                .filter(|(lut, _, _)| *lut == value.lut_id)
                .map(|(_, a, l)| (*a, *l))
                .collect();
            src_ranges.sort_unstable();
            p.services.insert(
                key,
                ServiceState {
                    value,
                    backends: keys,
                    src_ranges,
                },
            );
        }
        // Entries no table points at (standby backends of draining endpoints, or leftovers):
        // removed after the first full sync, when the desired state is known.
        p.orphan_backends = by_id.into_keys().collect();
        // Ranges of lut ids no service entry holds: their ids stay taken until they are
        // deleted, so that no new entry inherits a stale range.
        for &(lut, addr, prefix) in ranges {
            if !p.services.values().any(|s| s.value.lut_id == lut) {
                p.lut_ids.take(lut);
                p.orphan_ranges.push((lut, addr, prefix));
            }
        }
        p.tables = tables;
        p
    }

    pub fn services(&self) -> &BTreeMap<ServiceKey, ServiceState> {
        &self.services
    }

    pub fn backend_count(&self) -> usize {
        self.backends.len()
    }

    /// How long a removed TCP endpoint's backend entry stays for the connections already
    /// on it (zero: deleted at once, and those connections re-select).
    pub fn set_retire_grace(&mut self, grace: Duration) {
        self.retire_grace = grace;
    }

    /// Backend entries kept only for connections already on them.
    pub fn retired_count(&self) -> usize {
        self.retired.len()
    }

    /// Deletes retired backend entries older than the grace period.
    pub fn expire_retired(&mut self, now: Instant) -> Vec<MapOp> {
        let expired: Vec<BackendKey> = self
            .retired
            .iter()
            .filter(|(_, (_, at))| now.duration_since(*at) >= self.retire_grace)
            .map(|(k, _)| *k)
            .collect();
        expired
            .into_iter()
            .filter_map(|k| self.retired.remove(&k))
            .map(|(b, _)| {
                self.backend_ids.release(b.id);
                MapOp::DelBackend { id: b.id }
            })
            .collect()
    }

    /// A backend id: a free one, else the oldest retired entry's (its connections then
    /// re-select; the caller's PutBackend overwrites the entry, so no delete is planned).
    fn alloc_backend_id(&mut self) -> Option<u32> {
        if let Some(id) = self.backend_ids.alloc() {
            return Some(id);
        }
        let oldest = self
            .retired
            .iter()
            .min_by_key(|(_, (_, at))| *at)
            .map(|(k, _)| *k)?;
        self.retired.remove(&oldest).map(|(b, _)| b.id)
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Plans the removal of `remove` and the creation or update of `upsert`, updating
    /// the state as if the operations succeed. Frontends that cannot be placed (a map is
    /// full) are returned as errors and left out; everything else is still planned.
    pub fn plan(
        &mut self,
        remove: &[ServiceKey],
        upsert: &[Frontend],
    ) -> (Vec<MapOp>, Vec<(ServiceKey, PlanError)>) {
        let mut ops = Vec::new();
        let mut errors = Vec::new();
        let mut released_backends: Vec<BackendKey> = Vec::new();
        // Released after the upserts, so that no entry of this batch reuses a lut id whose
        // range deletions are still in the batch (they run after the puts).
        let mut released_luts: Vec<u32> = Vec::new();
        for key in remove {
            if upsert.iter().any(|f| f.key == *key) {
                continue;
            }
            if let Some(old) = self.services.remove(key) {
                ops.push(MapOp::DelService { key: *key });
                for &(addr, prefix) in &old.src_ranges {
                    ops.push(MapOp::DelSrcRange {
                        lut_id: old.value.lut_id,
                        addr,
                        prefix,
                    });
                }
                released_luts.push(old.value.lut_id);
                released_backends.extend(old.backends);
            }
        }
        for f in upsert {
            match self.plan_frontend(f, &mut ops, &mut released_backends) {
                Ok(()) => {}
                Err(e) => errors.push((f.key, e)),
            }
        }
        for id in released_luts {
            self.lut_ids.release(id);
        }
        let now = Instant::now();
        for key in released_backends {
            if let Some(b) = self.backends.get_mut(&key) {
                b.refs -= 1;
                if b.refs == 0 {
                    let Some(state) = self.backends.remove(&key) else {
                        continue;
                    };
                    if key.proto == PROTO_TCP && !self.retire_grace.is_zero() {
                        self.retired.insert(key, (state, now));
                    } else {
                        // UDP: kube-proxy flushes a removed endpoint's UDP conntrack
                        // entries, so the flow re-selects at once.
                        self.backend_ids.release(state.id);
                        ops.push(MapOp::DelBackend { id: state.id });
                    }
                }
            }
        }
        // Stable sort: within a rank, the order above is kept.
        ops.sort_by_key(MapOp::rank);
        (ops, errors)
    }

    fn plan_frontend(
        &mut self,
        f: &Frontend,
        ops: &mut Vec<MapOp>,
        released: &mut Vec<BackendKey>,
    ) -> Result<(), PlanError> {
        let old = self.services.get(&f.key).cloned();
        let lut_id = match &old {
            Some(o) => o.value.lut_id,
            None => self
                .lut_ids
                .alloc()
                .ok_or(PlanError::ServicesFull(self.limits.max_services))?,
        };
        // Backends: take a reference on each new one first, release the old ones after.
        // Table backends take new connections; standby ones only keep their entries.
        let mut keys: Vec<BackendKey> = f
            .backends
            .iter()
            .map(|b| BackendKey::new(f.key, *b))
            .collect();
        keys.sort();
        keys.dedup();
        let mut acquired = Vec::new();
        for b in f.backends.iter().chain(&f.standby) {
            let key = BackendKey::new(f.key, *b);
            if acquired.contains(&key) {
                continue;
            }
            let value = BackendValue {
                addr_be: u32::from(b.addr).to_be(),
                port_be: b.port.to_be(),
                proto: b.proto,
                flags: if b.local { BACKEND_F_LOCAL } else { 0 },
            };
            if let Some((state, _)) = self.retired.remove(&key) {
                // The endpoint came back within the grace period: same entry, same id.
                self.backends.insert(key, BackendState { refs: 0, ..state });
            }
            match self.backends.get_mut(&key) {
                Some(state) => {
                    state.refs += 1;
                    if state.value != value {
                        state.value = value;
                        ops.push(MapOp::PutBackend {
                            id: state.id,
                            value,
                        });
                    }
                }
                None => {
                    let Some(id) = self.alloc_backend_id() else {
                        // Undo what this frontend took so the state stays consistent.
                        for k in &acquired {
                            released.push(*k);
                        }
                        if old.is_none() {
                            self.lut_ids.release(lut_id);
                        }
                        return Err(PlanError::BackendsFull(self.limits.max_backends));
                    };
                    self.backends
                        .insert(key, BackendState { id, value, refs: 1 });
                    ops.push(MapOp::PutBackend { id, value });
                }
            }
            acquired.push(key);
        }
        if old.is_none() {
            ops.push(MapOp::ResetCounters { lut_id });
        }
        // Maglev: write only the slots that differ from what the region holds.
        if !keys.is_empty() {
            let mb: Vec<MaglevBackend> = keys
                .iter()
                .map(|k| MaglevBackend {
                    identity: backend_identity(u32::from(k.addr).to_be(), k.port.to_be()),
                    id: self.backends[k].id,
                    weight: 1,
                })
                .collect();
            let table = build_table(&mb, self.limits.maglev_size);
            let current = self.tables.get(&lut_id);
            let slots: Vec<(u32, u32)> = table
                .iter()
                .enumerate()
                .filter(|(i, id)| current.map_or(0, |c| c.get(*i).copied().unwrap_or(0)) != **id)
                .map(|(i, id)| (i as u32, *id))
                .collect();
            if !slots.is_empty() {
                ops.push(MapOp::PutSlots { lut_id, slots });
            }
            self.tables.insert(lut_id, table);
        }
        let value = ServiceValue {
            lut_id,
            backend_count: keys.len() as u32,
            flags: f.flags,
            affinity_timeout_s: f.affinity_timeout_s,
        };
        let mut src_ranges = f.source_ranges.clone();
        src_ranges.sort_unstable();
        src_ranges.dedup();
        let old_ranges = old.as_ref().map_or(&[][..], |o| &o.src_ranges[..]);
        for &(addr, prefix) in &src_ranges {
            if !old_ranges.contains(&(addr, prefix)) {
                ops.push(MapOp::PutSrcRange {
                    lut_id,
                    addr,
                    prefix,
                });
            }
        }
        for &(addr, prefix) in old_ranges {
            if !src_ranges.contains(&(addr, prefix)) {
                ops.push(MapOp::DelSrcRange {
                    lut_id,
                    addr,
                    prefix,
                });
            }
        }
        if old.as_ref().map(|o| o.value) != Some(value) {
            ops.push(MapOp::PutService { key: f.key, value });
        }
        if let Some(o) = old {
            released.extend(o.backends);
        }
        self.services.insert(
            f.key,
            ServiceState {
                value,
                backends: acquired,
                src_ranges,
            },
        );
        Ok(())
    }

    /// Deletes backend entries read back at start that nothing references any more.
    /// Call after the first full sync.
    pub fn prune_orphan_backends(&mut self) -> Vec<MapOp> {
        let mut ops = Vec::new();
        let mut luts = BTreeSet::new();
        for (lut_id, addr, prefix) in std::mem::take(&mut self.orphan_ranges) {
            luts.insert(lut_id);
            ops.push(MapOp::DelSrcRange {
                lut_id,
                addr,
                prefix,
            });
        }
        for lut in luts {
            self.lut_ids.release(lut);
        }
        let ids = std::mem::take(&mut self.orphan_backends);
        ops.extend(ids.into_iter().map(|id| {
            self.backend_ids.release(id);
            MapOp::DelBackend { id }
        }));
        ops
    }

    /// Forgets a service entry whose write failed, so that a later sync retries it.
    /// Returns the deletions of the source ranges written for it, to apply next.
    pub fn forget(&mut self, key: &ServiceKey) -> Vec<MapOp> {
        let mut ops = Vec::new();
        if let Some(old) = self.services.remove(key) {
            for &(addr, prefix) in &old.src_ranges {
                ops.push(MapOp::DelSrcRange {
                    lut_id: old.value.lut_id,
                    addr,
                    prefix,
                });
            }
            self.lut_ids.release(old.value.lut_id);
            for k in old.backends {
                if let Some(b) = self.backends.get_mut(&k) {
                    b.refs = b.refs.saturating_sub(1);
                }
            }
        }
        ops
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_common::{PROTO_UDP, SCOPE_INTERNAL};

    const LIMITS: Limits = Limits {
        max_services: 4,
        max_backends: 8,
        maglev_size: 31,
    };

    fn fe(port: u16, backends: &[u8]) -> Frontend {
        Frontend {
            key: ServiceKey {
                addr_be: u32::from(Ipv4Addr::new(10, 96, 0, 10)).to_be(),
                port_be: port.to_be(),
                proto: PROTO_TCP,
                scope: SCOPE_INTERNAL,
            },
            flags: 0,
            affinity_timeout_s: 0,
            backends: backends
                .iter()
                .map(|i| BackendAddr {
                    addr: Ipv4Addr::new(10, 244, 0, *i),
                    port: 8080,
                    proto: PROTO_TCP,
                    local: false,
                })
                .collect(),
            standby: vec![],
            port_name: String::new(),
            source_ranges: vec![],
        }
    }

    fn put_ids(ops: &[MapOp]) -> Vec<u32> {
        ops.iter()
            .filter_map(|o| match o {
                MapOp::PutBackend { id, .. } => Some(*id),
                _ => None,
            })
            .collect()
    }

    fn del_ids(ops: &[MapOp]) -> Vec<u32> {
        ops.iter()
            .filter_map(|o| match o {
                MapOp::DelBackend { id } => Some(*id),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_removed_tcp_endpoint_keeps_its_entry_for_the_grace_period_only() {
        let grace = Duration::from_mins(1);
        let mut p = Programmed::new(LIMITS);
        p.set_retire_grace(grace);
        let (ops, _) = p.plan(&[], &[fe(80, &[1, 2, 3])]);
        assert_eq!(put_ids(&ops), [1, 2, 3]);
        // Endpoint .3 (id 3) leaves: out of the table, entry kept, id not reused.
        let (ops, _) = p.plan(&[], &[fe(80, &[1, 2])]);
        assert!(del_ids(&ops).is_empty(), "{ops:?}");
        assert_eq!(p.retired_count(), 1);
        let (ops, _) = p.plan(&[], &[fe(80, &[1, 2, 4])]);
        assert_eq!(put_ids(&ops), [4], "a new endpoint gets a new id: {ops:?}");
        // Back within the grace period: the same entry again, nothing to write for it.
        let (ops, _) = p.plan(&[], &[fe(80, &[1, 2, 3, 4])]);
        assert!(put_ids(&ops).is_empty(), "{ops:?}");
        assert_eq!(p.retired_count(), 0);
        // Gone again; deleted only once the grace period is over.
        p.plan(&[], &[fe(80, &[1, 2, 4])]);
        assert!(p.expire_retired(Instant::now()).is_empty());
        let later = Instant::now() + grace;
        assert_eq!(del_ids(&p.expire_retired(later)), [3]);
        assert_eq!(p.retired_count(), 0);
        let (ops, _) = p.plan(&[], &[fe(80, &[1, 2, 4, 5])]);
        assert_eq!(put_ids(&ops), [3], "the expired id is free again");
    }

    #[test]
    fn a_removed_udp_endpoint_is_deleted_at_once() {
        let mut p = Programmed::new(LIMITS);
        p.set_retire_grace(Duration::from_mins(1));
        let udp = |backends: &[u8]| {
            let mut f = fe(53, backends);
            f.key.proto = PROTO_UDP;
            for b in &mut f.backends {
                b.proto = PROTO_UDP;
            }
            f
        };
        p.plan(&[], &[udp(&[1, 2])]);
        let (ops, _) = p.plan(&[], &[udp(&[1])]);
        assert_eq!(del_ids(&ops), [2]);
        assert_eq!(p.retired_count(), 0);
    }

    #[test]
    fn a_full_backend_map_reuses_the_oldest_retired_entry() {
        let mut p = Programmed::new(LIMITS); // 8 backends
        p.set_retire_grace(Duration::from_mins(1));
        p.plan(&[], &[fe(80, &[1, 2, 3, 4, 5, 6, 7, 8])]);
        p.plan(&[], &[fe(80, &[2, 3, 4, 5, 6, 7, 8])]);
        let (ops, errs) = p.plan(&[], &[fe(80, &[2, 3, 4, 5, 6, 7, 8, 9])]);
        assert!(errs.is_empty(), "{errs:?}");
        // Id 1 is overwritten by the new backend; no delete may follow the write.
        assert_eq!(put_ids(&ops), [1]);
        assert!(del_ids(&ops).is_empty(), "{ops:?}");
        assert_eq!(p.retired_count(), 0);
    }

    fn ranks(ops: &[MapOp]) -> Vec<u8> {
        ops.iter().map(MapOp::rank).collect()
    }

    #[test]
    fn new_service_writes_backends_then_slots_then_service() {
        let mut p = Programmed::new(LIMITS);
        let (ops, errs) = p.plan(&[], &[fe(80, &[1, 2, 3])]);
        assert!(errs.is_empty());
        assert!(ranks(&ops).windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(
            ops.iter()
                .filter(|o| matches!(o, MapOp::PutBackend { .. }))
                .count(),
            3
        );
        let MapOp::PutSlots { slots, .. } = &ops[4] else {
            panic!("{ops:?}")
        };
        assert_eq!(slots.len(), 31, "a fresh table writes every slot");
        assert!(
            matches!(ops.last(), Some(MapOp::PutService { value, .. }) if value.backend_count == 3)
        );
    }

    #[test]
    fn unchanged_service_plans_nothing_and_a_change_writes_only_changed_slots() {
        let mut p = Programmed::new(LIMITS);
        p.plan(&[], &[fe(80, &[1, 2, 3])]);
        let (ops, _) = p.plan(&[], &[fe(80, &[1, 2, 3])]);
        assert!(ops.is_empty(), "{ops:?}");
        let (ops, _) = p.plan(&[], &[fe(80, &[1, 2])]);
        let slots: usize = ops
            .iter()
            .map(|o| {
                if let MapOp::PutSlots { slots, .. } = o {
                    slots.len()
                } else {
                    0
                }
            })
            .sum();
        assert!(
            slots > 0 && slots < 31,
            "only the removed backend's slots move: {slots}"
        );
        // The removed backend is deleted last, after the table no longer points at it.
        assert!(matches!(ops.last(), Some(MapOp::DelBackend { .. })));
        assert!(matches!(ops[ops.len() - 2], MapOp::PutService { .. }));
    }

    #[test]
    fn removal_deletes_service_before_its_backends_and_ids_are_reused() {
        let mut p = Programmed::new(LIMITS);
        p.plan(&[], &[fe(80, &[1])]);
        let key = fe(80, &[]).key;
        let (ops, _) = p.plan(&[key], &[]);
        assert_eq!(ops.len(), 2);
        assert!(matches!(ops[0], MapOp::DelService { .. }));
        assert!(matches!(ops[1], MapOp::DelBackend { id: 1 }));
        let (ops, _) = p.plan(&[], &[fe(81, &[1])]);
        assert!(
            ops.iter()
                .any(|o| matches!(o, MapOp::ResetCounters { lut_id: 0 }))
        );
    }

    #[test]
    fn full_maps_are_reported_per_entry_and_the_rest_still_applies() {
        let mut p = Programmed::new(LIMITS);
        let many: Vec<Frontend> = (0..6).map(|i| fe(80 + i, &[1])).collect();
        let (ops, errs) = p.plan(&[], &many);
        assert_eq!(errs.len(), 2);
        assert!(
            errs.iter()
                .all(|(_, e)| matches!(e, PlanError::ServicesFull(4)))
        );
        assert_eq!(
            ops.iter()
                .filter(|o| matches!(o, MapOp::PutService { .. }))
                .count(),
            4
        );
        let (_, errs) = p.plan(&[], &[fe(80, &[1, 2, 3, 4, 5, 6, 7, 8, 9])]);
        assert!(matches!(errs[0].1, PlanError::BackendsFull(8)));
    }

    #[test]
    fn restore_then_identical_desired_state_plans_nothing() {
        let mut p = Programmed::new(LIMITS);
        let (ops, _) = p.plan(&[], &[fe(80, &[1, 2]), fe(81, &[])]);
        let mut services = vec![];
        let mut backends = vec![];
        let mut tables: HashMap<u32, Vec<u32>> = HashMap::new();
        for op in ops {
            match op {
                MapOp::PutService { key, value } => services.push((key, value)),
                MapOp::PutBackend { id, value } => backends.push((id, value)),
                MapOp::PutSlots { lut_id, slots } => {
                    let t = tables.entry(lut_id).or_insert_with(|| vec![0; 31]);
                    for (s, id) in slots {
                        t[s as usize] = id;
                    }
                }
                _ => {}
            }
        }
        let mut q = Programmed::restore(LIMITS, services, backends, tables, &[]);
        let (ops, errs) = q.plan(&[], &[fe(80, &[1, 2]), fe(81, &[])]);
        assert!(errs.is_empty());
        assert!(ops.is_empty(), "restart must not rewrite anything: {ops:?}");
    }

    #[test]
    fn source_ranges_are_written_before_the_entry_and_removed_after_it() {
        let mut p = Programmed::new(LIMITS);
        let mut f = fe(80, &[1]);
        f.source_ranges = vec![(Ipv4Addr::new(10, 0, 0, 0), 8)];
        let (ops, _) = p.plan(&[], &[f.clone()]);
        let put = ops
            .iter()
            .position(|o| matches!(o, MapOp::PutSrcRange { prefix: 8, .. }))
            .expect("range written");
        let svc = ops
            .iter()
            .position(|o| matches!(o, MapOp::PutService { .. }))
            .unwrap();
        assert!(put < svc, "{ops:?}");
        // One range swapped for another: put the new, delete the old after the entry.
        f.source_ranges = vec![(Ipv4Addr::new(10, 1, 0, 0), 16)];
        let (ops, _) = p.plan(&[], &[f.clone()]);
        assert!(
            matches!(
                ops.as_slice(),
                [
                    MapOp::PutSrcRange { prefix: 16, .. },
                    MapOp::DelSrcRange { prefix: 8, .. }
                ]
            ),
            "{ops:?}"
        );
        // Removed with the entry, after it; its lut id is not reused in the same batch.
        let mut g = fe(81, &[2]);
        g.source_ranges = vec![(Ipv4Addr::new(10, 2, 0, 0), 16)];
        let (ops, _) = p.plan(&[f.key], &[g]);
        let lut_of = |o: &MapOp| match o {
            MapOp::PutSrcRange { lut_id, .. } | MapOp::DelSrcRange { lut_id, .. } => Some(*lut_id),
            _ => None,
        };
        let puts: Vec<u32> = ops
            .iter()
            .filter(|o| matches!(o, MapOp::PutSrcRange { .. }))
            .filter_map(lut_of)
            .collect();
        let dels: Vec<u32> = ops
            .iter()
            .filter(|o| matches!(o, MapOp::DelSrcRange { .. }))
            .filter_map(lut_of)
            .collect();
        assert_eq!((puts.len(), dels.len()), (1, 1), "{ops:?}");
        assert_ne!(
            puts[0], dels[0],
            "a deleted range must not be the new entry's"
        );
    }

    #[test]
    fn restored_ranges_plan_nothing_and_orphans_are_pruned_without_lut_reuse() {
        let mut p = Programmed::new(LIMITS);
        let mut f = fe(80, &[1, 2]);
        f.source_ranges = vec![(Ipv4Addr::new(10, 0, 0, 0), 8)];
        let mut maps = crate::maps::memory::MemoryMaps::new(4, 8);
        let (ops, _) = p.plan(&[], &[f.clone()]);
        for op in &ops {
            crate::maps::MapWriter::apply(&mut maps, op).unwrap();
        }
        // A range left by a service entry that no longer exists (lut 3).
        maps.src_ranges
            .insert((3, Ipv4Addr::new(192, 168, 0, 0), 16));
        let rb = crate::maps::MapWriter::read_back(&maps, LIMITS.maglev_size).unwrap();
        let mut q =
            Programmed::restore(LIMITS, rb.services, rb.backends, rb.tables, &rb.src_ranges);
        let (ops, _) = q.plan(&[], &[f]);
        assert!(ops.is_empty(), "{ops:?}");
        // Until pruned, lut 3 is not handed out.
        let (ops, _) = q.plan(&[], &[fe(81, &[3]), fe(82, &[4]), fe(83, &[5])]);
        assert!(
            !ops.iter()
                .any(|o| matches!(o, MapOp::PutService { value, .. } if value.lut_id == 3)),
            "{ops:?}"
        );
        let pruned = q.prune_orphan_backends();
        assert!(pruned.contains(&MapOp::DelSrcRange {
            lut_id: 3,
            addr: Ipv4Addr::new(192, 168, 0, 0),
            prefix: 16
        }));
    }
}
