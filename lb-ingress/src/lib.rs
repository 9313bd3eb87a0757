//! lb-ingress: an HTTP ingress proxy for `networking.k8s.io/v1` Ingress.
//!
//! The modules follow the data flow:
//! [`source`] (cluster state into a configuration) -> [`routes`] (the host and path
//! matcher) -> [`proxy`] (the request phases: balancing, headers, upstream, logging)
//! -> [`tls`] (certificates by SNI), with [`server`] composing listeners and connections
//! and [`metrics`] exporting what happens. Start it in-process with [`Server::start`].
#![forbid(unsafe_code)]

pub mod check;
pub mod cli;
pub mod metrics;
pub mod proxy;
pub mod routes;
pub mod server;
pub mod source;
pub mod status;
pub mod template;
pub mod tls;

pub use proxy::ProxyOptions;
pub use server::{Server, ServerConfig, ServerHandle};
