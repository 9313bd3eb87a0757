//! lb-tests: the sandbox cluster that end-to-end tests and `cargo xtask demo` run on.
//!
//! ```no_run
//! use lb_tests::{Sandbox, manifests};
//! # fn main() -> anyhow::Result<()> {
//! let sb = Sandbox::builder().seed_app().build()?;      // client, node-0/1, 6 pods
//! let _agent = sb.start_agent(0, &[])?;                 // lb-agent run ... in node-0's netns
//! let backend = sb.pod("backend-0");
//! let answer = sb.http_get(sb.client_ns(), backend.http_addr(), "/")?;
//! assert_eq!(answer.pod()?, "backend-0");
//! let (echo, _) = sb.udp(&sb.pod("frontend-0").ns, backend.udp_addr().unwrap(), b"hi")?;
//! # let _ = (echo, manifests::BACKEND_CLUSTER_IP); Ok(()) }
//! ```
//!
//! Everything a sandbox creates is removed when it is dropped (also when a test panics),
//! and sandboxes left by dead processes are swept when the next one is built.
#![forbid(unsafe_code)]

pub mod bins;
pub mod client;
pub mod manifests;
pub mod netns;
pub mod process;
pub mod prometheus;
pub mod sandbox;
pub mod topology;

pub use client::{HttpRequest, HttpResponse};
pub use process::{Enter, Proc};
pub use sandbox::{Node, Pod, Sandbox, SandboxBuilder};
pub use topology::PodSpec;
