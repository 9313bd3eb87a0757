//! The control loop's state machine: folds source events into the store, works out which
//! Services an event affects, and programs just those. Before the first complete listing
//! nothing is pruned (after a restart the maps keep serving what the previous agent
//! wrote); after it, entries no Service wants are removed.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

use k8s_openapi::api::core::v1::Service;
use lb_common::{NodeConfig, ServiceKey};
use lb_k8s::{Changes, Event, Kind, Object, ObjectRef, Store};
use tracing::{debug, info, warn};

use crate::maps::{MapWriteError, MapWriter};
use crate::model::{ModelOptions, NodeInfo, SkipReason, Slice, service_frontends};
use crate::plan::{Limits, Programmed};

/// Kinds the agent reads.
pub const KINDS: [Kind; 3] = [Kind::Service, Kind::EndpointSlice, Kind::Node];

/// Source ports for SNAT of external traffic to remote backends: above Linux's default
/// ephemeral range (32768-60999), so they do not collide with the node's own sockets.
const SNAT_PORT_MIN: u16 = 61_000;
const SNAT_PORT_MAX: u16 = 65_535;

/// What the agent keeps of each object it reads: Services whole, EndpointSlices and Nodes
/// only as the model reads them (see [`Slice`]; a Node without its status' image list and
/// conditions).
#[derive(Debug, PartialEq)]
pub enum Stored {
    Service(Box<Service>),
    Slice(Slice),
    Node(NodeInfo),
    /// Kinds the agent does not read (never asked for; kept only to be total).
    Other,
}

impl From<Object> for Stored {
    fn from(o: Object) -> Self {
        match o {
            Object::Service(s) => Stored::Service(s),
            Object::EndpointSlice(es) => Stored::Slice(Slice::from(&*es)),
            Object::Node(n) => Stored::Node(NodeInfo::from_node(&n)),
            _ => Stored::Other,
        }
    }
}

/// What one event did, for logs and metrics.
#[derive(Debug, Default)]
pub struct Outcome {
    pub services_recomputed: usize,
    pub ops_applied: usize,
    /// Newly reported problems: (kind, object, reason).
    pub problems: Vec<(Kind, String, String)>,
    /// Map writes that failed because a map was full.
    pub map_full: Vec<&'static str>,
    /// Map writes that failed otherwise.
    pub map_errors: usize,
    /// True when this event completed the first full sync.
    pub first_sync: bool,
}

/// Health check node ports to serve: port -> (service, local endpoints).
pub type HealthChecks = BTreeMap<u16, (ObjectRef, usize)>;

pub struct Reconciler<W: MapWriter> {
    node: NodeInfo,
    opts: ModelOptions,
    store: Store<Stored>,
    programmed: Programmed,
    writer: W,
    /// Frontends each Service owns, and the reverse.
    owned: HashMap<ObjectRef, Vec<ServiceKey>>,
    owner: HashMap<ServiceKey, ObjectRef>,
    /// EndpointSlice -> the Service (namespace, name) it belongs to.
    slice_service: HashMap<ObjectRef, ObjectRef>,
    service_slices: HashMap<ObjectRef, BTreeSet<ObjectRef>>,
    /// Last problem reported per object, so each is reported once.
    reported: HashMap<String, String>,
    health_checks: HealthChecks,
    synced: bool,
    netns_cookie: u64,
}

impl<W: MapWriter> Reconciler<W> {
    /// Starts from what the maps hold now (read back from pinned maps after a restart,
    /// empty on a first start).
    pub fn new(
        node_name: &str,
        opts: ModelOptions,
        limits: Limits,
        writer: W,
    ) -> anyhow::Result<Self> {
        let rb = writer.read_back(limits.maglev_size)?;
        if !rb.services.is_empty() {
            info!(
                services = rb.services.len(),
                backends = rb.backends.len(),
                "found programmed maps from a previous run; they keep serving until the first sync"
            );
        }
        let programmed =
            Programmed::restore(limits, rb.services, rb.backends, rb.tables, &rb.src_ranges);
        Ok(Reconciler {
            node: NodeInfo::named(node_name),
            opts,
            store: Store::default(),
            programmed,
            writer,
            owned: HashMap::new(),
            owner: HashMap::new(),
            slice_service: HashMap::new(),
            service_slices: HashMap::new(),
            reported: HashMap::new(),
            health_checks: BTreeMap::new(),
            synced: false,
            netns_cookie: 0,
        })
    }

    /// The node's network namespace cookie, written into the node configuration.
    pub fn set_netns_cookie(&mut self, cookie: u64) {
        self.netns_cookie = cookie;
    }

    /// See [`Programmed::set_retire_grace`].
    pub fn set_retire_grace(&mut self, grace: std::time::Duration) {
        self.programmed.set_retire_grace(grace);
    }

    /// Deletes the backend entries of removed endpoints whose grace period is over.
    pub fn expire_retired(&mut self) -> Outcome {
        let mut out = Outcome::default();
        let ops = self.programmed.expire_retired(Instant::now());
        if !ops.is_empty() {
            debug!(
                entries = ops.len(),
                "removed endpoints' backend entries expired"
            );
        }
        self.apply(&ops, &mut out);
        out
    }

    pub fn is_synced(&self) -> bool {
        self.synced
    }

    pub fn node(&self) -> &NodeInfo {
        &self.node
    }

    pub fn programmed(&self) -> &Programmed {
        &self.programmed
    }

    pub fn writer(&self) -> &W {
        &self.writer
    }

    pub fn health_checks(&self) -> &HealthChecks {
        &self.health_checks
    }

    /// The Service owning a frontend, for metrics labels.
    pub fn owner_of(&self, key: &ServiceKey) -> Option<&ObjectRef> {
        self.owner.get(key)
    }

    /// Handles one event from the source.
    pub fn handle(&mut self, event: Event) -> Outcome {
        let started = Instant::now();
        let changes = self.store.apply(event);
        let mut out = Outcome::default();
        for e in &changes.errors {
            let kind = e.object.as_ref().map_or(Kind::Service, |o| o.kind);
            let at = e.origin.clone().unwrap_or_default()
                + &e.object
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default();
            self.report(&mut out, kind, at, e.reason.clone());
        }
        let affected = self.affected(&changes);
        let first_sync = !self.synced && self.store.is_synced(&KINDS);
        if first_sync {
            self.synced = true;
            out.first_sync = true;
            self.full_sync(&mut out);
        } else if self.synced {
            for svc in affected {
                self.sync_service(&svc, &mut out);
            }
        }
        debug!(
            elapsed_us = started.elapsed().as_micros() as u64,
            recomputed = out.services_recomputed,
            ops = out.ops_applied,
            "event handled"
        );
        out
    }

    /// Services touched by `changes`; updates the slice index and the node.
    fn affected(&mut self, changes: &Changes) -> BTreeSet<ObjectRef> {
        let mut affected = BTreeSet::new();
        let mut node_changed = false;
        for r in &changes.changed {
            match r.kind {
                Kind::Service => {
                    affected.insert(r.clone());
                }
                Kind::EndpointSlice => {
                    if let Some(old) = self.slice_service.remove(r) {
                        if let Some(s) = self.service_slices.get_mut(&old) {
                            s.remove(r);
                        }
                        affected.insert(old);
                    }
                    if let Some(Stored::Slice(es)) = self.store.get(r)
                        && let Some(name) = &es.service_name
                    {
                        let svc = ObjectRef::new(Kind::Service, r.namespace.clone(), &**name);
                        self.slice_service.insert(r.clone(), svc.clone());
                        self.service_slices
                            .entry(svc.clone())
                            .or_default()
                            .insert(r.clone());
                        affected.insert(svc);
                    }
                }
                Kind::Node if r.name == self.node.name => node_changed = true,
                _ => {}
            }
        }
        if node_changed {
            let info = match self
                .store
                .get(&ObjectRef::new(Kind::Node, "", self.node.name.clone()))
            {
                Some(Stored::Node(n)) => n.clone(),
                _ => NodeInfo::named(&self.node.name),
            };
            if info != self.node {
                info!(node = %info.name, addrs = ?info.addrs, zone = ?info.zone, "node addresses");
                self.node = info;
                self.write_config();
                affected.extend(self.store.refs_of_kind(Kind::Service).cloned());
            }
        }
        affected
    }

    fn write_config(&mut self) {
        let cfg = NodeConfig {
            node_addr_be: self.node.snat_addr().map_or(0, |a| u32::from(a).to_be()),
            maglev_size: self.programmed.limits().maglev_size,
            netns_cookie: self.netns_cookie,
            snat_port_min: SNAT_PORT_MIN,
            snat_port_max: SNAT_PORT_MAX,
            ready: 1,
        };
        if let Err(e) = self.writer.set_config(&cfg) {
            warn!(error = %e, "cannot write node configuration");
        }
    }

    /// Programs every Service, then removes entries that no Service wants.
    fn full_sync(&mut self, out: &mut Outcome) {
        let started = Instant::now();
        self.write_config();
        // Services, and the names slices point at (to report slices without a Service).
        let services: BTreeSet<ObjectRef> = self
            .store
            .refs_of_kind(Kind::Service)
            .cloned()
            .chain(self.service_slices.keys().cloned())
            .collect();
        for svc in &services {
            self.sync_service(svc, out);
        }
        let orphans: Vec<ServiceKey> = self
            .programmed
            .services()
            .keys()
            .filter(|k| !self.owner.contains_key(k))
            .copied()
            .collect();
        if !orphans.is_empty() {
            info!(
                entries = orphans.len(),
                "removing service entries no Service wants"
            );
            let (ops, _) = self.programmed.plan(&orphans, &[]);
            self.apply(&ops, out);
        }
        let ops = self.programmed.prune_orphan_backends();
        self.apply(&ops, out);
        info!(
            services = services.len(),
            entries = self.programmed.services().len(),
            backends = self.programmed.backend_count(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "full sync done"
        );
    }

    /// Recomputes one Service and programs the difference.
    fn sync_service(&mut self, svc_ref: &ObjectRef, out: &mut Outcome) {
        out.services_recomputed += 1;
        let old: Vec<ServiceKey> = self.owned.get(svc_ref).cloned().unwrap_or_default();
        let desired = match self.store.get(svc_ref) {
            Some(Stored::Service(svc)) => {
                let slices: Vec<&Slice> = self
                    .service_slices
                    .get(svc_ref)
                    .into_iter()
                    .flatten()
                    .filter_map(|r| match self.store.get(r) {
                        Some(Stored::Slice(es)) => Some(es),
                        _ => None,
                    })
                    .collect();
                match service_frontends(svc, &slices, &self.node, &self.opts) {
                    Ok(model) => {
                        let problems = model.problems.join("; ");
                        self.report_if(out, svc_ref, problems);
                        self.set_health_check(svc_ref, model.health_check);
                        model.frontends
                    }
                    Err(SkipReason::Invalid(reason)) => {
                        // Keep what was programmed for it: a bad update must not take a
                        // working Service down.
                        self.report_if(out, svc_ref, reason);
                        return;
                    }
                    Err(skip) => {
                        debug!(service = %svc_ref, reason = %skip, "not proxied");
                        self.report_if(out, svc_ref, String::new());
                        self.set_health_check(svc_ref, None);
                        vec![]
                    }
                }
            }
            _ => {
                self.reported.remove(&svc_ref.to_string());
                self.set_health_check(svc_ref, None);
                // Slices whose Service does not exist: nothing to serve them with.
                let orphans: Vec<ObjectRef> = self
                    .service_slices
                    .get(svc_ref)
                    .into_iter()
                    .flatten()
                    .cloned()
                    .collect();
                for slice in orphans {
                    let reason = format!("its Service {svc_ref} does not exist");
                    self.report(out, Kind::EndpointSlice, slice.to_string(), reason);
                }
                vec![]
            }
        };
        // A frontend claimed by another Service stays with the first owner.
        let mut frontends = Vec::with_capacity(desired.len());
        for f in desired {
            match self.owner.get(&f.key) {
                Some(o) if o != svc_ref => {
                    let reason = format!(
                        "{}:{} is already used by {o}",
                        std::net::Ipv4Addr::from(u32::from_be(f.key.addr_be)),
                        u16::from_be(f.key.port_be)
                    );
                    self.report(out, Kind::Service, svc_ref.to_string(), reason);
                }
                _ => frontends.push(f),
            }
        }
        let new_keys: Vec<ServiceKey> = frontends.iter().map(|f| f.key).collect();
        let remove: Vec<ServiceKey> = old
            .iter()
            .filter(|k| !new_keys.contains(k))
            .copied()
            .collect();
        let (ops, errors) = self.programmed.plan(&remove, &frontends);
        for k in &remove {
            self.owner.remove(k);
        }
        let mut placed = new_keys.clone();
        for (key, e) in errors {
            placed.retain(|k| *k != key);
            self.report(out, Kind::Service, svc_ref.to_string(), e.to_string());
            out.map_full.push(match e {
                crate::plan::PlanError::ServicesFull(_) => lb_common::MAP_SERVICES,
                crate::plan::PlanError::BackendsFull(_) => lb_common::MAP_BACKENDS,
            });
        }
        for k in &placed {
            self.owner.insert(*k, svc_ref.clone());
        }
        if placed.is_empty() {
            self.owned.remove(svc_ref);
        } else {
            self.owned.insert(svc_ref.clone(), placed);
        }
        self.apply(&ops, out);
    }

    fn apply(&mut self, ops: &[crate::plan::MapOp], out: &mut Outcome) {
        let mut cleanup = Vec::new();
        for op in ops {
            match self.writer.apply(op) {
                Ok(()) => out.ops_applied += 1,
                Err(MapWriteError::Full { map }) => {
                    warn!(map, ?op, "map full: entry not written");
                    out.map_full.push(map);
                    if let crate::plan::MapOp::PutService { key, .. } = op {
                        cleanup.extend(self.programmed.forget(key));
                        self.owner.remove(key);
                    }
                }
                Err(e) => {
                    warn!(error = %e, ?op, "map write failed");
                    out.map_errors += 1;
                    if let crate::plan::MapOp::PutService { key, .. } = op {
                        cleanup.extend(self.programmed.forget(key));
                        self.owner.remove(key);
                    }
                }
            }
        }
        for op in &cleanup {
            if let Err(e) = self.writer.apply(op) {
                warn!(error = %e, ?op, "map write failed");
                out.map_errors += 1;
            }
        }
    }

    fn set_health_check(&mut self, svc: &ObjectRef, hc: Option<(u16, usize)>) {
        self.health_checks.retain(|_, (s, _)| s != svc);
        if let Some((port, n)) = hc {
            self.health_checks.insert(port, (svc.clone(), n));
        }
    }

    /// Reports `reason` for `svc` unless it was the last thing reported for it; an empty
    /// reason clears the record.
    fn report_if(&mut self, out: &mut Outcome, svc: &ObjectRef, reason: String) {
        if reason.is_empty() {
            self.reported.remove(&svc.to_string());
        } else {
            self.report(out, Kind::Service, svc.to_string(), reason);
        }
    }

    fn report(&mut self, out: &mut Outcome, kind: Kind, at: String, reason: String) {
        if self.reported.get(&at) == Some(&reason) {
            return;
        }
        warn!(object = %at, %reason, "skipped bad input");
        self.reported.insert(at.clone(), reason.clone());
        out.problems.push((kind, at, reason));
    }
}
