//! The agent's Prometheus metrics (prefix `lb_agent_`, base units, `_total` counters).
//!
//! Counters kept by the kernel (per-service packets and bytes, verdict reasons) are read
//! from the per-CPU maps and summed at scrape time by a collector; everything the control
//! loop measures is an ordinary prometheus-client metric. Labels are bounded by the number
//! of Services: nothing per client or per connection.
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};

use lb_common::{Reason, SCOPE_EXTERNAL, ServiceKey};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::maps::MapWriter;
use crate::reconcile::Reconciler;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabel {
    pub map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    namespace: String,
    service: String,
    frontend: String,
    scope: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    node: String,
}

/// Metrics the control loop updates.
#[derive(Clone)]
pub struct AgentMetrics {
    pub sync_duration: Histogram,
    pub programming_duration: Histogram,
    pub objects_skipped: Family<KindLabel, Counter>,
    pub map_capacity_errors: Family<MapLabel, Counter>,
    pub map_write_errors: Counter,
    pub events: Counter,
    pub synced: Gauge,
}

impl AgentMetrics {
    pub fn new(registry: &mut Registry, node_name: &str) -> Self {
        let m = AgentMetrics {
            // 10 us .. ~20 s
            sync_duration: Histogram::new(exponential_buckets(0.000_01, 3.0, 16)),
            programming_duration: Histogram::new(exponential_buckets(0.000_01, 3.0, 16)),
            objects_skipped: Family::default(),
            map_capacity_errors: Family::default(),
            map_write_errors: Counter::default(),
            events: Counter::default(),
            synced: Gauge::default(),
        };
        registry.register(
            "lb_agent_sync_duration_seconds",
            "Time of a full sync of all Services into the maps",
            m.sync_duration.clone(),
        );
        registry.register(
            "lb_agent_network_programming_duration_seconds",
            "Time from receiving a change to the maps being updated (kube-proxy's network_programming_duration_seconds)",
            m.programming_duration.clone(),
        );
        registry.register(
            "lb_agent_objects_skipped",
            "Objects (or parts of them) skipped because they could not be translated",
            m.objects_skipped.clone(),
        );
        registry.register(
            "lb_agent_map_capacity_errors",
            "Map writes refused because the map was full",
            m.map_capacity_errors.clone(),
        );
        registry.register(
            "lb_agent_map_write_errors",
            "Map writes that failed for another reason",
            m.map_write_errors.clone(),
        );
        registry.register("lb_agent_events", "Source events handled", m.events.clone());
        // Families export a series only once a label set exists: create the known ones at
        // zero so dashboards and alerts see 0, not "no data", until the first error.
        for kind in lb_k8s::Kind::ALL {
            m.objects_skipped
                .get_or_create(&KindLabel {
                    kind: kind.to_string(),
                })
                .inc_by(0);
        }
        for map in [
            lb_common::MAP_SERVICES,
            lb_common::MAP_BACKENDS,
            lb_common::MAP_MAGLEV,
        ] {
            m.map_capacity_errors
                .get_or_create(&MapLabel {
                    map: map.to_owned(),
                })
                .inc_by(0);
        }
        registry.register(
            "lb_agent_synced",
            "1 once the first complete sync has been programmed",
            m.synced.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                node: node_name.to_owned(),
            })
            .set(1);
        registry.register("lb_agent_build_info", "Build information", build);
        m
    }
}

/// Reads kernel counters and programmed state at scrape time.
pub struct DataplaneCollector<W: MapWriter + 'static> {
    pub reconciler: Arc<Mutex<Reconciler<W>>>,
    pub conntrack_capacity: u64,
}

impl<W: MapWriter + 'static> std::fmt::Debug for DataplaneCollector<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataplaneCollector")
    }
}

fn frontend(key: ServiceKey) -> String {
    let proto = match key.proto {
        lb_common::PROTO_TCP => "TCP",
        lb_common::PROTO_UDP => "UDP",
        _ => "other",
    };
    format!(
        "{}:{}/{proto}",
        Ipv4Addr::from(u32::from_be(key.addr_be)),
        u16::from_be(key.port_be)
    )
}

impl<W: MapWriter + 'static> Collector for DataplaneCollector<W> {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(rec) = self.reconciler.lock() else {
            return Ok(());
        };
        let entries: Vec<(ServiceKey, u32, u32, ServiceLabels)> = rec
            .programmed()
            .services()
            .iter()
            .map(|(k, s)| {
                let owner = rec.owner_of(k);
                let labels = ServiceLabels {
                    namespace: owner.map(|o| o.namespace.clone()).unwrap_or_default(),
                    service: owner.map(|o| o.name.clone()).unwrap_or_default(),
                    frontend: frontend(*k),
                    scope: if k.scope == SCOPE_EXTERNAL {
                        "external"
                    } else {
                        "internal"
                    }
                    .to_owned(),
                };
                (*k, s.value.lut_id, s.value.backend_count, labels)
            })
            .collect();
        let lut_ids: Vec<u32> = entries.iter().map(|e| e.1).collect();
        let counters = rec.writer().counters(&lut_ids).unwrap_or_default();
        let reasons = rec.writer().reasons().unwrap_or_default();
        let ct = rec.writer().conntrack_entries().unwrap_or_default();
        drop(rec);

        let mut enc = encoder.encode_descriptor(
            "lb_agent_service_packets",
            "Packets the data plane translated for a service frontend",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for ((_, _, _, labels), (_, c)) in entries.iter().zip(&counters) {
            ConstCounter::new(c.packets).encode(enc.encode_family(labels)?)?;
        }
        let mut enc = encoder.encode_descriptor(
            "lb_agent_service_bytes",
            "Bytes the data plane translated for a service frontend",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for ((_, _, _, labels), (_, c)) in entries.iter().zip(&counters) {
            ConstCounter::new(c.bytes).encode(enc.encode_family(labels)?)?;
        }
        let mut enc = encoder.encode_descriptor(
            "lb_agent_service_backends",
            "Backends taking new connections for a service frontend (0: rejected)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (_, _, n, labels) in &entries {
            ConstGauge::new(i64::from(*n)).encode(enc.encode_family(labels)?)?;
        }
        let mut enc = encoder.encode_descriptor(
            "lb_agent_datapath_packets",
            "Packets by verdict reason of the kernel programs",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for r in Reason::ALL {
            let v = reasons.get(r as usize).copied().unwrap_or(0);
            let l = ReasonLabel {
                reason: r.name().to_owned(),
            };
            ConstCounter::new(v).encode(enc.encode_family(&l)?)?;
        }
        let mut enc = encoder.encode_descriptor(
            "lb_agent_drops",
            "Packets dropped or rejected by the kernel programs, by reason",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for r in Reason::ALL {
            if !(r.name().starts_with("drop_") || r.name().starts_with("reject_")) {
                continue;
            }
            let v = reasons.get(r as usize).copied().unwrap_or(0);
            let l = ReasonLabel {
                reason: r.name().to_owned(),
            };
            ConstCounter::new(v).encode(enc.encode_family(&l)?)?;
        }
        let mut enc = encoder.encode_descriptor(
            "lb_agent_conntrack_entries",
            "Entries in the connection tracking maps",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (map, n) in [("conntrack", ct.0), ("revnat", ct.1)] {
            let l = MapLabel {
                map: map.to_owned(),
            };
            ConstGauge::new(n as i64).encode(enc.encode_family(&l)?)?;
        }
        let mut enc = encoder.encode_descriptor(
            "lb_agent_conntrack_capacity",
            "Capacity of the connection tracking maps",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for map in ["conntrack", "revnat"] {
            let l = MapLabel {
                map: map.to_owned(),
            };
            ConstGauge::new(self.conntrack_capacity as i64).encode(enc.encode_family(&l)?)?;
        }
        let n = entries.len() as i64;
        let enc = encoder.encode_descriptor(
            "lb_agent_service_entries",
            "Service frontends programmed",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        ConstGauge::new(n).encode(enc)?;
        Ok(())
    }
}
