//! The one trait both sources implement, and the events they produce.
use std::path::PathBuf;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::mpsc;

use crate::object::{Kind, KindSet, Object, ObjectError, ObjectRef};

/// What a source tells its consumer.
#[allow(
    clippy::large_enum_variant,
    reason = "events are moved once, from source to store"
)]
#[derive(Clone, Debug)]
pub enum Event {
    /// A complete listing of `kinds`: objects of those kinds that are not in `objects` are
    /// gone. Sent after the first list, after a relist (watch restart, 410 Gone) and after
    /// every change of a manifests directory. `errors` are the objects that could not be
    /// parsed in this listing.
    Resync {
        kinds: Vec<Kind>,
        objects: Vec<(Object, Option<String>)>,
        errors: Vec<ObjectError>,
    },
    /// An object was added or modified.
    Apply(Object),
    /// An object was deleted.
    Delete(ObjectRef),
}

/// A source of cluster state. `run` delivers events until the receiver is dropped or the
/// source fails for good; it retries transient failures itself.
pub trait Source: Send + 'static {
    fn run(
        self: Box<Self>,
        kinds: KindSet,
        tx: mpsc::Sender<Event>,
    ) -> BoxFuture<'static, anyhow::Result<()>>;
}

/// How a daemon was told to get its state, from the command line.
#[derive(Clone, Debug)]
pub enum SourceConfig {
    /// `--manifests DIR`, polled every `interval` for changes.
    Manifests { dir: PathBuf, interval: Duration },
    /// `--kubeconfig FILE`, or in-cluster configuration when `None`. `node`: a node
    /// agent's own node name (see [`crate::kube_source::KubeSource::for_node`]).
    /// `namespace`: watch the namespaced kinds in this namespace only (see
    /// [`crate::kube_source::KubeSource::in_namespace`]).
    Kube {
        kubeconfig: Option<PathBuf>,
        node: Option<String>,
        namespace: Option<String>,
    },
}

impl SourceConfig {
    pub fn into_source(self) -> Box<dyn Source> {
        match self {
            SourceConfig::Manifests { dir, interval } => {
                Box::new(crate::manifests::ManifestDir::new(dir, interval))
            }
            SourceConfig::Kube {
                kubeconfig,
                node,
                namespace,
            } => {
                let source = match node {
                    None => crate::kube_source::KubeSource::new(kubeconfig),
                    Some(node) => crate::kube_source::KubeSource::for_node(kubeconfig, node),
                };
                Box::new(source.in_namespace(namespace))
            }
        }
    }
}
