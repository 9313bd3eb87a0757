//! The Ingress status address: with `--publish-status-address` or `--publish-service`,
//! every Ingress of our class gets the ingress's address in `status.loadBalancer.ingress`,
//! as ingress-nginx writes it (so `kubectl get ingress` shows an ADDRESS, and tools such as
//! external-dns and Argo CD health checks see the Ingress as served).
//!
//! - Addresses: `--publish-status-address` as given (an IP becomes `{ip}`, anything else
//!   `{hostname}`); otherwise the `status.loadBalancer.ingress` of the `--publish-service`
//!   Service (its `ip` and `hostname`), or, when it has none, its `spec.externalIPs`, or for
//!   an ExternalName Service its `externalName`. Neither flag: nothing is written. While the
//!   named Service does not exist, nothing is written either.
//! - Only with the API server source: with `--manifests` there is no API server, and that is
//!   logged once.
//! - Where the state comes from: [`source`] wraps the configured source and tees its events
//!   (Ingresses, IngressClasses and the published Service only, so nothing big is copied)
//!   into a store of its own, re-checked after every batch of events, the same batches the
//!   configuration is rebuilt from. No second watch is opened.
//! - What is written: a JSON merge patch of `status.loadBalancer.ingress` on the `status`
//!   subresource of each Ingress of our class whose list differs (order and duplicates
//!   aside). Equal lists are never rewritten; an Ingress just written is not written again
//!   until the watch has delivered the new version. Ingresses that stop being ours (their
//!   class changed) keep what was written, as with ingress-nginx; the controller of their
//!   new class owns their status now.
//! - Failures are logged with the Ingress's namespace/name, counted in
//!   `lb_ingress_status_updates_total{result="error"}`, and retried with a per-Ingress
//!   exponential backoff ([`StatusConfig::retry`] doubling up to [`StatusConfig::max_retry`]),
//!   sooner when the Ingress itself changes.
//! - Every replica writes the same list, only when it differs, so replicas do not fight and
//!   no leader election is needed.
//! - On shutdown ([`ShutdownStatus`], `--update-status-on-shutdown`, on by default as in
//!   ingress-nginx) the last replica clears the address, so that tools reading it (such as
//!   external-dns) stop pointing at a proxy that is gone. A replica knows it is the last
//!   when no other pod with its labels (less the ones a rollout changes) is running and
//!   not being deleted; ingress-nginx counts terminating pods too, so when all its
//!   replicas stop at once none of them clears anything. A rollout's new pods are running:
//!   the status stays. Without `POD_NAME` and `POD_NAMESPACE` (the Deployment sets them
//!   from the downward API) a replica cannot tell, and leaves the status.
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::networking::v1::{Ingress, IngressClass, IngressLoadBalancerIngress};
use k8s_openapi::serde_json::json;
use kube::api::{Api, ListParams, Patch, PatchParams};
use lb_k8s::{Event, Kind, KindSet, Object, ObjectRef, Source, SourceConfig, Store};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::metrics::ResultLabel;
use crate::source::class;

/// `--publish-service NAMESPACE/NAME`.
pub use crate::source::NamespacedName as PublishService;

/// What to publish, and how failed writes are retried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusConfig {
    /// `--publish-status-address`: written as given; wins over `service` (as in
    /// ingress-nginx).
    pub addresses: Vec<String>,
    /// `--publish-service`: copy this Service's load-balancer addresses.
    pub service: Option<PublishService>,
    /// The first retry of a failed write comes this long after it, ...
    pub retry: Duration,
    /// ... and later ones twice as long as the one before, up to this.
    pub max_retry: Duration,
    /// `--update-status-on-shutdown`: the last replica clears the address when it stops.
    pub clear_on_shutdown: bool,
    /// This replica's pod (`POD_NAMESPACE`/`POD_NAME`), to look for the others by.
    pub pod: Option<crate::source::NamespacedName>,
}

impl Default for StatusConfig {
    fn default() -> Self {
        StatusConfig {
            addresses: Vec::new(),
            service: None,
            retry: Duration::from_secs(1),
            max_retry: Duration::from_mins(5),
            clear_on_shutdown: true,
            pod: None,
        }
    }
}

impl StatusConfig {
    /// Is anything to be written at all?
    pub fn enabled(&self) -> bool {
        !self.addresses.is_empty() || self.service.is_some()
    }

    fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(20);
        self.retry.saturating_mul(factor).min(self.max_retry)
    }
}

/// `lb_ingress_status_updates_total{result}`: Ingress status writes, by result
/// (`success`, `error`).
#[derive(Clone, Debug, Default)]
pub struct StatusMetrics {
    pub updates: Family<ResultLabel, Counter>,
}

impl StatusMetrics {
    pub fn new(registry: &mut Registry) -> StatusMetrics {
        let m = StatusMetrics::default();
        registry.register(
            "lb_ingress_status_updates",
            "Writes of the status.loadBalancer address of Ingresses, by result",
            m.updates.clone(),
        );
        m
    }

    fn count(&self, result: &'static str) {
        self.updates.get_or_create(&ResultLabel { result }).inc();
    }
}

/// An address as a status entry: an IP as `ip`, anything else as `hostname`.
pub fn address_entry(address: &str) -> IngressLoadBalancerIngress {
    match address.parse::<IpAddr>() {
        Ok(ip) => IngressLoadBalancerIngress {
            ip: Some(ip.to_string()),
            ..IngressLoadBalancerIngress::default()
        },
        Err(_) => IngressLoadBalancerIngress {
            hostname: Some(address.to_owned()),
            ..IngressLoadBalancerIngress::default()
        },
    }
}

/// Sorted and without duplicates, so that lists compare regardless of order.
fn normalized(mut entries: Vec<IngressLoadBalancerIngress>) -> Vec<IngressLoadBalancerIngress> {
    entries.sort_by(|a, b| (&a.ip, &a.hostname).cmp(&(&b.ip, &b.hostname)));
    entries.dedup();
    entries
}

/// The addresses of a published Service: its load-balancer `ip`/`hostname`s, else its
/// `spec.externalIPs`, else (type ExternalName) its `externalName`.
pub fn service_addresses(service: &Service) -> Vec<IngressLoadBalancerIngress> {
    let from_lb: Vec<IngressLoadBalancerIngress> = service
        .status
        .iter()
        .flat_map(|s| s.load_balancer.iter())
        .flat_map(|lb| lb.ingress.iter().flatten())
        .filter(|e| e.ip.is_some() || e.hostname.is_some())
        .map(|e| IngressLoadBalancerIngress {
            ip: e.ip.clone(),
            hostname: e.hostname.clone(),
            ..IngressLoadBalancerIngress::default()
        })
        .collect();
    if !from_lb.is_empty() {
        return normalized(from_lb);
    }
    let spec = service.spec.as_ref();
    let mut out: Vec<IngressLoadBalancerIngress> = spec
        .and_then(|s| s.external_ips.as_ref())
        .into_iter()
        .flatten()
        .map(|a| address_entry(a))
        .collect();
    if out.is_empty()
        && let Some(spec) = spec
        && spec.type_.as_deref() == Some("ExternalName")
        && let Some(name) = &spec.external_name
    {
        out.push(address_entry(name));
    }
    normalized(out)
}

/// The addresses to publish, from the configuration and the store; `None` when they are
/// not known (the published Service does not exist).
pub fn desired(config: &StatusConfig, store: &Store) -> Option<Vec<IngressLoadBalancerIngress>> {
    if !config.addresses.is_empty() {
        return Some(normalized(
            config.addresses.iter().map(|a| address_entry(a)).collect(),
        ));
    }
    let svc = config.service.as_ref()?;
    let r = ObjectRef::new(Kind::Service, svc.namespace.clone(), svc.name.clone());
    match store.get(&r) {
        Some(Object::Service(s)) => Some(service_addresses(s)),
        _ => None,
    }
}

/// An Ingress of our class whose status differs from what is published.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stale {
    pub namespace: String,
    pub name: String,
    /// Its resourceVersion as seen: a write is not repeated for the same version.
    pub resource_version: Option<String>,
}

/// The Ingresses of `class` in `store` whose `status.loadBalancer.ingress` is not `want`.
pub fn stale(
    store: &Store,
    class: &class::ClassId,
    want: &[IngressLoadBalancerIngress],
) -> Vec<Stale> {
    let classes = store.of_kind(Kind::IngressClass).filter_map(|o| match o {
        Object::IngressClass(c) => Some(&**c),
        _ => None,
    });
    let ours = class::Ours::new(classes, class);
    store
        .of_kind(Kind::Ingress)
        .filter_map(|o| match o {
            Object::Ingress(i) => Some((o, i)),
            _ => None,
        })
        .filter(|(_, i)| ours.selects(i))
        .filter(|(_, i)| current(i) != want)
        .map(|(o, i)| {
            let r = o.object_ref();
            Stale {
                namespace: r.namespace,
                name: r.name,
                resource_version: i.metadata.resource_version.clone(),
            }
        })
        .collect()
}

fn current(ingress: &Ingress) -> Vec<IngressLoadBalancerIngress> {
    normalized(
        ingress
            .status
            .iter()
            .flat_map(|s| s.load_balancer.iter())
            .flat_map(|lb| lb.ingress.iter().flatten())
            .cloned()
            .collect(),
    )
}

/// Pod labels that differ between the replicas of one workload across a rollout, left out
/// when looking for the others (as ingress-nginx does).
const ROLLOUT_LABELS: [&str; 3] = [
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
];

/// Clears the status address of the Ingresses served when the last replica stops (see the
/// module's documentation).
#[derive(Clone, Debug)]
pub struct ShutdownStatus {
    kubeconfig: Option<std::path::PathBuf>,
    class: class::ClassId,
    /// `--watch-namespace`: the Ingresses served are there.
    namespace: Option<String>,
    pod: Option<crate::source::NamespacedName>,
}

impl ShutdownStatus {
    /// None unless the status is written (from the API server) and cleared on shutdown.
    pub fn new(
        source: &SourceConfig,
        scope: &crate::source::Scope,
        config: &StatusConfig,
    ) -> Option<ShutdownStatus> {
        let SourceConfig::Kube { kubeconfig, .. } = source else {
            return None;
        };
        (config.enabled() && config.clear_on_shutdown).then(|| ShutdownStatus {
            kubeconfig: kubeconfig.clone(),
            class: scope.class.clone(),
            namespace: scope.namespace.clone(),
            pod: config.pod.clone(),
        })
    }

    /// Clears `status.loadBalancer` of every Ingress of our class that has an address,
    /// unless another replica runs: the number cleared.
    pub async fn run(self) -> anyhow::Result<usize> {
        let Some(pod) = &self.pod else {
            info!(
                "POD_NAME and POD_NAMESPACE are not set, so other replicas cannot be looked \
                 for: the Ingress status is left as it is"
            );
            return Ok(0);
        };
        let client = lb_k8s::kube_source::client(self.kubeconfig.as_ref()).await?;
        let others = other_replicas(&client, pod).await?;
        if !others.is_empty() {
            info!(
                ?others,
                "other replicas run: the Ingress status is left to them"
            );
            return Ok(0);
        }
        let list = ListParams::default();
        let classes = Api::<IngressClass>::all(client.clone()).list(&list).await?;
        let ingresses: Api<Ingress> = match &self.namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let ingresses = ingresses.list(&list).await?;
        let ours = class::Ours::new(&classes.items, &self.class);
        let clear = Patch::Merge(json!({"status": {"loadBalancer": {"ingress": null}}}));
        let mut cleared = 0;
        for ingress in ingresses.items.iter().filter(|i| ours.selects(i)) {
            let has_address = (ingress.status.as_ref())
                .and_then(|s| s.load_balancer.as_ref()?.ingress.as_ref())
                .is_some_and(|l| !l.is_empty());
            let (Some(ns), Some(name)) = (&ingress.metadata.namespace, &ingress.metadata.name)
            else {
                continue;
            };
            if !has_address {
                continue;
            }
            let api: Api<Ingress> = Api::namespaced(client.clone(), ns);
            match api
                .patch_status(name, &PatchParams::default(), &clear)
                .await
            {
                Ok(_) => cleared += 1,
                Err(e) => {
                    warn!(ingress = %format!("{ns}/{name}"), error = %e, "cannot clear the Ingress status");
                }
            }
        }
        info!(
            cleared,
            "last replica: cleared the status address of the Ingresses served"
        );
        Ok(cleared)
    }
}

/// The other running pods of this replica's workload: those with its labels (less
/// [`ROLLOUT_LABELS`]), running and not being deleted.
async fn other_replicas(
    client: &kube::Client,
    pod: &crate::source::NamespacedName,
) -> anyhow::Result<Vec<String>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace);
    let me = pods.get(&pod.name).await?;
    let selector: Vec<String> = (me.metadata.labels.iter().flatten())
        .filter(|(k, _)| !ROLLOUT_LABELS.contains(&k.as_str()))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if selector.is_empty() {
        // No labels, so no workload of several pods: alone.
        return Ok(Vec::new());
    }
    let list = pods
        .list(&ListParams::default().labels(&selector.join(",")))
        .await?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter_map(|p| p.metadata.name)
        .filter(|name| *name != pod.name)
        .collect())
}

/// Wraps `source` so that, with the API server source and something to publish, the
/// Ingress status is written (see the module documentation); otherwise returns the source
/// as it is (with `--manifests`, after logging that no status is written).
pub fn source(
    source: SourceConfig,
    class: &class::ClassId,
    config: StatusConfig,
    metrics: StatusMetrics,
) -> Box<dyn Source> {
    if !config.enabled() {
        return source.into_source();
    }
    match source {
        SourceConfig::Manifests { .. } => {
            warn!(
                "--publish-status-address/--publish-service: there is no API server with \
                 --manifests, so the Ingress status is not written"
            );
            source.into_source()
        }
        SourceConfig::Kube { ref kubeconfig, .. } => Box::new(StatusSource {
            kubeconfig: kubeconfig.clone(),
            inner: source.into_source(),
            class: class.clone(),
            config,
            metrics,
        }),
    }
}

/// The configured source with the status writer beside it.
struct StatusSource {
    kubeconfig: Option<std::path::PathBuf>,
    inner: Box<dyn Source>,
    class: class::ClassId,
    config: StatusConfig,
    metrics: StatusMetrics,
}

/// What the writer is asked to do: the addresses, and the Ingresses that lack them.
#[derive(Debug, Default)]
struct Plan {
    want: Vec<IngressLoadBalancerIngress>,
    stale: Vec<Stale>,
}

impl Source for StatusSource {
    fn run(
        self: Box<Self>,
        kinds: KindSet,
        tx: mpsc::Sender<Event>,
    ) -> BoxFuture<'static, anyhow::Result<()>> {
        async move {
            let StatusSource {
                kubeconfig,
                inner,
                class,
                config,
                metrics,
            } = *self;
            let client = lb_k8s::kube_source::client(kubeconfig.as_ref()).await?;
            let (inner_tx, inner_rx) = mpsc::channel(64);
            let (plan_tx, plan_rx) = watch::channel(Arc::new(Plan::default()));
            let writer = Writer {
                client,
                config: config.clone(),
                metrics,
                written: HashMap::new(),
                failed: HashMap::new(),
            };
            tokio::select! {
                r = inner.run(kinds, inner_tx) => r,
                () = tee(inner_rx, tx, &class, &config, plan_tx) => Ok(()),
                () = writer.run(plan_rx) => Ok(()),
            }
        }
        .boxed()
    }
}

/// The part of an event the status writer needs: Ingresses, IngressClasses and the
/// published Service (cloned; the original goes on to the configuration).
fn relevant(event: &Event, service: Option<&PublishService>) -> Option<Event> {
    let wanted = |r: &ObjectRef| match r.kind {
        Kind::Ingress | Kind::IngressClass => true,
        Kind::Service => service.is_some_and(|s| s.namespace == r.namespace && s.name == r.name),
        _ => false,
    };
    match event {
        Event::Apply(o) => wanted(&o.object_ref()).then(|| Event::Apply(o.clone())),
        Event::Delete(r) => wanted(r).then(|| Event::Delete(r.clone())),
        Event::Resync { kinds, objects, .. } => {
            let kinds: Vec<Kind> = kinds
                .iter()
                .copied()
                .filter(|k| matches!(k, Kind::Ingress | Kind::IngressClass | Kind::Service))
                .collect();
            (!kinds.is_empty()).then(|| Event::Resync {
                objects: objects
                    .iter()
                    .filter(|(o, _)| wanted(&o.object_ref()))
                    .cloned()
                    .collect(),
                kinds,
                errors: Vec::new(),
            })
        }
    }
}

const STATUS_KINDS: [Kind; 3] = [Kind::Ingress, Kind::IngressClass, Kind::Service];

/// Forwards every event to the configuration loop, and after each batch that changed
/// something it reads hands the writer a new plan.
async fn tee(
    mut rx: mpsc::Receiver<Event>,
    tx: mpsc::Sender<Event>,
    class: &class::ClassId,
    config: &StatusConfig,
    plan: watch::Sender<Arc<Plan>>,
) {
    let mut store = Store::new();
    let mut published: Option<Option<Vec<IngressLoadBalancerIngress>>> = None;
    while let Some(first) = rx.recv().await {
        // Coalesce a burst of events into one check, as the configuration loop does.
        let mut event = Some(first);
        let mut changed = false;
        while let Some(e) = event.take().or_else(|| rx.try_recv().ok()) {
            if let Some(mine) = relevant(&e, config.service.as_ref()) {
                let c = store.apply(mine);
                changed |= !c.changed.is_empty() || !c.synced.is_empty();
            }
            if tx.send(e).await.is_err() {
                return;
            }
        }
        if !changed || !store.is_synced(&STATUS_KINDS) {
            continue;
        }
        let want = desired(config, &store);
        if published.as_ref() != Some(&want) {
            match &want {
                Some(w) => info!(addresses = ?w, "publishing the Ingress status address"),
                None => warn!(
                    service = %config.service.as_ref().map(ToString::to_string).unwrap_or_default(),
                    "the --publish-service Service does not exist; the Ingress status is not \
                     written until it does"
                ),
            }
            published = Some(want.clone());
        }
        let next = match want {
            Some(want) => Plan {
                stale: stale(&store, class, &want),
                want,
            },
            None => Plan::default(),
        };
        plan.send_replace(Arc::new(next));
    }
}

type Key = (String, String);

struct Failure {
    /// The Ingress's resourceVersion when the write failed.
    resource_version: Option<String>,
    failures: u32,
    retry_at: Instant,
}

struct Writer {
    client: kube::Client,
    config: StatusConfig,
    metrics: StatusMetrics,
    /// Written successfully at this (resourceVersion, addresses): not again until the
    /// watch delivers the new version.
    written: HashMap<Key, (Option<String>, Vec<IngressLoadBalancerIngress>)>,
    failed: HashMap<Key, Failure>,
}

impl Writer {
    async fn run(mut self, mut plans: watch::Receiver<Arc<Plan>>) {
        loop {
            let plan = Arc::clone(&*plans.borrow_and_update());
            let retry_at = self.apply(&plan, &plans).await;
            let wait = async {
                match retry_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = plans.changed() => if changed.is_err() { return },
                () = wait => {}
            }
        }
    }

    /// Writes what `plan` asks for; returns when a failed write is due for a retry. Stops
    /// early when a newer plan arrives.
    async fn apply(&mut self, plan: &Plan, plans: &watch::Receiver<Arc<Plan>>) -> Option<Instant> {
        let keys: std::collections::HashSet<Key> = plan
            .stale
            .iter()
            .map(|s| (s.namespace.clone(), s.name.clone()))
            .collect();
        // What is no longer stale (written, deleted, or no longer ours) is forgotten.
        self.written.retain(|k, _| keys.contains(k));
        self.failed.retain(|k, _| keys.contains(k));
        let mut retry_at: Option<Instant> = None;
        for s in &plan.stale {
            if plans.has_changed().unwrap_or(false) {
                break;
            }
            let key = (s.namespace.clone(), s.name.clone());
            if self
                .written
                .get(&key)
                .is_some_and(|(rv, want)| *rv == s.resource_version && *want == plan.want)
            {
                continue;
            }
            if let Some(f) = self.failed.get(&key)
                && f.resource_version == s.resource_version
                && f.retry_at > Instant::now()
            {
                retry_at = Some(retry_at.map_or(f.retry_at, |r| r.min(f.retry_at)));
                continue;
            }
            let ingress = format!("{}/{}", s.namespace, s.name);
            let api: Api<Ingress> = Api::namespaced(self.client.clone(), &s.namespace);
            let patch = json!({"status": {"loadBalancer": {"ingress": &plan.want}}});
            match api
                .patch_status(&s.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    self.metrics.count("success");
                    self.failed.remove(&key);
                    self.written
                        .insert(key, (s.resource_version.clone(), plan.want.clone()));
                    info!(%ingress, addresses = ?plan.want, "Ingress status written");
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    // Deleted meanwhile: the watch will say so.
                    debug!(%ingress, "Ingress gone before its status was written");
                }
                Err(e) => {
                    self.metrics.count("error");
                    let failures = self.failed.get(&key).map_or(0, |f| f.failures) + 1;
                    let delay = self.config.backoff(failures);
                    let at = Instant::now() + delay;
                    warn!(%ingress, error = %e, retry_in = ?delay, "cannot write the Ingress status");
                    self.failed.insert(
                        key,
                        Failure {
                            resource_version: s.resource_version.clone(),
                            failures,
                            retry_at: at,
                        },
                    );
                    retry_at = Some(retry_at.map_or(at, |r| r.min(at)));
                }
            }
        }
        retry_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::serde_json::{Value, from_value};

    fn entries(v: Value) -> Vec<IngressLoadBalancerIngress> {
        from_value(v).unwrap()
    }

    fn svc(v: Value) -> Service {
        from_value(v).unwrap()
    }

    #[test]
    fn publish_service_is_namespace_slash_name() {
        assert_eq!(
            "lb-ingress/lb".parse::<PublishService>().unwrap(),
            PublishService {
                namespace: "lb-ingress".into(),
                name: "lb".into()
            }
        );
        for bad in ["lb", "/lb", "ns/", "a/b/c", ""] {
            assert!(bad.parse::<PublishService>().is_err(), "{bad}");
        }
    }

    #[test]
    fn addresses_are_ips_or_hostnames_in_a_stable_order() {
        let config = StatusConfig {
            addresses: vec![
                "lb.example.com".into(),
                "2001:db8::1".into(),
                "192.0.2.1".into(),
            ],
            ..StatusConfig::default()
        };
        assert_eq!(
            desired(&config, &Store::new()).unwrap(),
            entries(json!([{"hostname": "lb.example.com"}, {"ip": "192.0.2.1"},
                           {"ip": "2001:db8::1"}]))
        );
        assert_eq!(desired(&StatusConfig::default(), &Store::new()), None);
    }

    #[test]
    fn a_service_publishes_its_load_balancer_else_its_external_ips() {
        let lb = svc(
            json!({"spec": {"type": "LoadBalancer", "externalIPs": ["203.0.113.9"]},
            "status": {"loadBalancer": {"ingress": [
                {"hostname": "x.elb.example", "ports": [{"port": 80, "protocol": "TCP"}]},
                {"ip": "198.51.100.7", "ipMode": "VIP"}]}}}),
        );
        assert_eq!(
            service_addresses(&lb),
            entries(json!([{"hostname": "x.elb.example"}, {"ip": "198.51.100.7"}]))
        );
        let external = svc(
            json!({"spec": {"externalIPs": ["203.0.113.9", "203.0.113.8"]},
            "status": {"loadBalancer": {}}}),
        );
        assert_eq!(
            service_addresses(&external),
            entries(json!([{"ip": "203.0.113.8"}, {"ip": "203.0.113.9"}]))
        );
        let pending = svc(json!({"spec": {"type": "LoadBalancer"}}));
        assert_eq!(service_addresses(&pending), []);
        let name = svc(json!({"spec": {"type": "ExternalName", "externalName": "a.example"}}));
        assert_eq!(
            service_addresses(&name),
            entries(json!([{"hostname": "a.example"}]))
        );
    }

    fn lb() -> class::ClassId {
        class::ClassId {
            name: "lb".into(),
            controller: class::CONTROLLER.into(),
        }
    }

    #[test]
    fn only_ingresses_of_our_class_that_differ_are_stale() {
        let ing = |name: &str, class: &str, status: Value| {
            Object::Ingress(
                from_value(json!({"metadata": {"name": name, "namespace": "web",
                    "resourceVersion": "7"},
                    "spec": {"ingressClassName": class}, "status": status}))
                .unwrap(),
            )
        };
        let mut store = Store::new();
        for o in [
            ing("new", "lb", json!({})),
            ing("other", "nginx", json!({})),
            ing(
                "done",
                "lb",
                json!({"loadBalancer": {"ingress": [
                {"hostname": "h.example"}, {"ip": "192.0.2.1"}, {"ip": "192.0.2.1"}]}}),
            ),
            ing(
                "old",
                "lb",
                json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.9"}]}}),
            ),
        ] {
            store.apply(Event::Apply(o));
        }
        let want = entries(json!([{"ip": "192.0.2.1"}, {"hostname": "h.example"}]));
        let want = normalized(want);
        let names: Vec<String> = stale(&store, &lb(), &want)
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["new", "old"]);
        // Nothing to publish: only Ingresses that show something are stale.
        let names: Vec<String> = stale(&store, &lb(), &[])
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["done", "old"]);
    }

    #[test]
    fn retries_back_off_exponentially_up_to_the_cap() {
        let c = StatusConfig {
            retry: Duration::from_secs(1),
            max_retry: Duration::from_secs(10),
            ..StatusConfig::default()
        };
        let got: Vec<u64> = (1..=6).map(|n| c.backoff(n).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 10, 10]);
        assert_eq!(c.backoff(u32::MAX), Duration::from_secs(10));
    }

    #[test]
    fn the_status_writer_sees_only_what_it_needs() {
        let published = PublishService {
            namespace: "lb".into(),
            name: "lb".into(),
        };
        let service = |ns: &str, name: &str| {
            Object::Service(Box::new(svc(
                json!({"metadata": {"name": name, "namespace": ns}}),
            )))
        };
        let resync = Event::Resync {
            kinds: vec![Kind::Service, Kind::EndpointSlice],
            objects: vec![(service("lb", "lb"), None), (service("web", "site"), None)],
            errors: Vec::new(),
        };
        match relevant(&resync, Some(&published)) {
            Some(Event::Resync { kinds, objects, .. }) => {
                assert_eq!(kinds, [Kind::Service]);
                assert_eq!(objects.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        assert!(relevant(&Event::Apply(service("web", "site")), Some(&published)).is_none());
        assert!(relevant(&Event::Apply(service("lb", "lb")), Some(&published)).is_some());
        assert!(relevant(&Event::Apply(service("lb", "lb")), None).is_none());
        let slices = Event::Resync {
            kinds: vec![Kind::EndpointSlice],
            objects: Vec::new(),
            errors: Vec::new(),
        };
        assert!(relevant(&slices, Some(&published)).is_none());
    }
}
