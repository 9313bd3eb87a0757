//! From Kubernetes objects to what this node's maps should hold, as plain Rust types.
//!
//! The rules are kube-proxy's (pkg/proxy: service and endpoint change trackers,
//! topology.go), so that a Service behaves here as it does on any conformant cluster.
//! Nothing in this module touches the kernel; it is exercised by unit tests.
mod endpoints;
mod node;
mod service;

pub use endpoints::{
    Endpoint, EndpointSet, Hint, SERVICE_NAME_LABEL, Slice, SliceAddr, SliceEndpoint, SlicePort,
};
pub use node::NodeInfo;
pub use service::{BackendAddr, Frontend, ServiceModel, SkipReason, service_frontends};

/// Options of this agent that change the model.
#[derive(Clone, Debug, Default)]
pub struct ModelOptions {
    /// Value of the `service.kubernetes.io/service-proxy-name` label this agent serves;
    /// Services carrying the label with another value are left alone (kube-proxy rule).
    pub service_proxy_name: Option<String>,
}
