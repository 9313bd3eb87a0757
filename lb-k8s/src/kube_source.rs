//! The API server source: one kube-runtime watcher per kind, with kube's default backoff.
//! A watcher's Init..InitDone is delivered as one `Resync` (so deletions missed while the
//! watch was down are noticed), Apply/Delete as they come.
use std::fmt::Debug;
use std::path::PathBuf;

use futures::future::BoxFuture;
use futures::{FutureExt as _, StreamExt as _};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event as WatchEvent};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tracing::{info, warn};

use k8s_openapi::api::core::v1::{ConfigMap, Node, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};

use crate::object::{Kind, KindSet, Object};
use crate::source::{Event, Source};

/// `--kubeconfig FILE`, or the in-cluster configuration.
pub struct KubeSource {
    kubeconfig: Option<PathBuf>,
    node: Option<String>,
    namespace: Option<String>,
}

impl KubeSource {
    pub fn new(kubeconfig: Option<PathBuf>) -> Self {
        KubeSource {
            kubeconfig,
            node: None,
            namespace: None,
        }
    }

    /// Watches the namespaced kinds (Services, EndpointSlices, Ingresses, Secrets,
    /// ConfigMaps) in
    /// `namespace` only, when given (ingress-nginx's `--watch-namespace`: a Role in that
    /// namespace is then all the access needed for them); Nodes and IngressClasses are
    /// cluster-scoped and watched whole.
    #[must_use]
    pub fn in_namespace(mut self, namespace: Option<String>) -> Self {
        self.namespace = namespace;
        self
    }

    /// For a node agent, as kube-proxy's informers are set up: only this Node is watched
    /// (`metadata.name=NODE`: the agent reads one Node, and every other one would be
    /// listed and parsed with its whole status), and EndpointSlices of headless Services
    /// (label `service.kubernetes.io/headless`) are left on the server, since nothing
    /// proxies them.
    pub fn for_node(kubeconfig: Option<PathBuf>, node: String) -> Self {
        KubeSource {
            kubeconfig,
            node: Some(node),
            namespace: None,
        }
    }
}

/// Builds a client from a kubeconfig file, or from the in-cluster environment.
pub async fn client(kubeconfig: Option<&PathBuf>) -> anyhow::Result<Client> {
    install_crypto_provider();
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| anyhow::anyhow!("cannot read kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await?
        }
        None => kube::Config::incluster().map_err(|e| {
            anyhow::anyhow!(
                "no --kubeconfig given and not running in a cluster ({e}); pass --kubeconfig \
                 FILE or --manifests DIR"
            )
        })?,
    };
    Ok(Client::try_from(config)?)
}

/// kube's rustls connector is built for every client, even for an `http://` server, and
/// rustls panics unless a process-wide crypto provider is installed or exactly one of its
/// `ring`/`aws-lc-rs` features is on (kube installs aws-lc-rs only with its `aws-lc-rs`
/// feature, which we leave off). Install ring, the provider the workspace builds, unless
/// the process already chose one.
fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Fails only if another thread installed one meanwhile, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

impl Source for KubeSource {
    fn run(
        self: Box<Self>,
        kinds: KindSet,
        tx: mpsc::Sender<Event>,
    ) -> BoxFuture<'static, anyhow::Result<()>> {
        async move {
            let client = client(self.kubeconfig.as_ref()).await?;
            info!("watching the API server");
            let mut tasks = tokio::task::JoinSet::new();
            if let Some(ns) = &self.namespace {
                info!(namespace = %ns, "watching one namespace");
            }
            let ns = self.namespace.as_deref();
            for kind in kinds.iter() {
                let (c, tx) = (client.clone(), tx.clone());
                let config = watch_config(kind, self.node.as_deref());
                match kind {
                    Kind::Service => {
                        tasks.spawn(watch::<Service>(scoped(c, ns), kind, config, tx, |o| {
                            Object::Service(Box::new(o))
                        }))
                    }
                    Kind::EndpointSlice => tasks.spawn(watch::<EndpointSlice>(
                        scoped(c, ns),
                        kind,
                        config,
                        tx,
                        |o| Object::EndpointSlice(Box::new(o)),
                    )),
                    Kind::Node => tasks.spawn(watch::<Node>(Api::all(c), kind, config, tx, |o| {
                        Object::Node(Box::new(o))
                    })),
                    Kind::Ingress => {
                        tasks.spawn(watch::<Ingress>(scoped(c, ns), kind, config, tx, |o| {
                            Object::Ingress(Box::new(o))
                        }))
                    }
                    Kind::IngressClass => {
                        tasks.spawn(watch::<IngressClass>(Api::all(c), kind, config, tx, |o| {
                            Object::IngressClass(Box::new(o))
                        }))
                    }
                    Kind::Secret => {
                        tasks.spawn(watch::<Secret>(scoped(c, ns), kind, config, tx, |o| {
                            Object::Secret(Box::new(slim_secret(o)))
                        }))
                    }
                    Kind::ConfigMap => {
                        tasks.spawn(watch::<ConfigMap>(scoped(c, ns), kind, config, tx, |o| {
                            // Text values are what consumers read (header lists).
                            Object::ConfigMap(Box::new(ConfigMap {
                                binary_data: None,
                                ..o
                            }))
                        }))
                    }
                };
            }
            while let Some(done) = tasks.join_next().await {
                done??;
            }
            Ok(())
        }
        .boxed()
    }
}

/// The API of a namespaced kind: in `namespace` only, when given.
fn scoped<K>(client: Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    }
}

/// Drops what no consumer reads and what is often most of an object's size in a real
/// cluster: `managedFields` and kubectl's last-applied copy of the whole object (what
/// kube-rs advises for reflector stores, and what Cilium's slim objects leave out).
fn slim<K: Resource>(mut o: K) -> K {
    let meta = o.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
    o
}

/// The Secrets watched: all but these types.
pub const SECRET_FIELD_SELECTOR: &str =
    "type!=helm.sh/release.v1,type!=kubernetes.io/service-account-token";

/// The only keys of a Secret's `data` any consumer reads (a TLS certificate and key, a
/// CA bundle, an htpasswd file): the rest, such as an application's passwords in an
/// Opaque Secret, is dropped as it arrives and never held.
pub const SECRET_KEYS: [&str; 4] = ["tls.crt", "tls.key", "ca.crt", "auth"];

fn slim_secret(mut s: Secret) -> Secret {
    if let Some(data) = s.data.as_mut() {
        data.retain(|k, _| SECRET_KEYS.contains(&k.as_str()));
    }
    s.string_data = None;
    s
}

/// The server-side selectors of one kind's watch.
fn watch_config(kind: Kind, node: Option<&str>) -> watcher::Config {
    let config = watcher::Config::default();
    match (kind, node) {
        // Secrets: never Helm's release records or legacy service-account tokens (the
        // bulk of a cluster's Secrets, and of no use here); what is kept of the others is
        // cut to [`SECRET_KEYS`] by `slim_secret`.
        (Kind::Secret, _) => config.fields(SECRET_FIELD_SELECTOR),
        (Kind::Node, Some(node)) => config.fields(&format!("metadata.name={node}")),
        (Kind::EndpointSlice, Some(_)) => config.labels("!service.kubernetes.io/headless"),
        _ => config,
    }
}

/// Watches one kind until the receiver goes away. Watch errors (including 410 Gone) are
/// retried by kube-runtime with backoff, and a relist follows as Init..InitDone.
async fn watch<K>(
    api: Api<K>,
    kind: Kind,
    config: watcher::Config,
    tx: mpsc::Sender<Event>,
    wrap: fn(K) -> Object,
) -> anyhow::Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut buffer: Vec<(Object, Option<String>)> = Vec::new();
    while let Some(item) = stream.next().await {
        let event = match item {
            Ok(WatchEvent::Init) => {
                buffer.clear();
                continue;
            }
            Ok(WatchEvent::InitApply(o)) => {
                buffer.push((wrap(slim(o)), None));
                continue;
            }
            Ok(WatchEvent::InitDone) => Event::Resync {
                kinds: vec![kind],
                objects: std::mem::take(&mut buffer),
                errors: vec![],
            },
            Ok(WatchEvent::Apply(o)) => Event::Apply(wrap(slim(o))),
            Ok(WatchEvent::Delete(o)) => Event::Delete(wrap(o).object_ref()),
            Err(e) => {
                warn!(%kind, error = %e, "watch failed; retrying with backoff");
                continue;
            }
        };
        if tx.send(event).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

use kube::runtime::watcher::watcher;
