//! healthCheckNodePort servers for LoadBalancer Services with externalTrafficPolicy
//! Local: 200 with the local endpoint count while this node has one, 503 otherwise, so
//! the cloud load balancer sends traffic only to nodes with local endpoints (the
//! kube-proxy contract).
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hyper::StatusCode;
use tracing::{info, warn};

use crate::reconcile::HealthChecks;

/// What one server answers: the Service ("namespace/name") and its local endpoints.
type Answer = Arc<Mutex<(String, usize)>>;

#[derive(Default)]
pub struct HealthCheckServers {
    servers: BTreeMap<u16, (Answer, tokio::task::JoinHandle<()>)>,
}

impl HealthCheckServers {
    /// Starts, updates and stops servers so that they match `wanted`.
    pub async fn update(&mut self, wanted: &HealthChecks) {
        self.servers.retain(|port, (_, task)| {
            let keep = wanted.contains_key(port);
            if !keep {
                task.abort();
            }
            keep
        });
        for (port, (svc, n)) in wanted {
            let name = format!("{}/{}", svc.namespace, svc.name);
            if let Some((state, _)) = self.servers.get(port) {
                if let Ok(mut s) = state.lock() {
                    *s = (name, *n);
                }
                continue;
            }
            let state = Arc::new(Mutex::new((name, *n)));
            let s2 = Arc::clone(&state);
            let addr = SocketAddr::from(([0, 0, 0, 0], *port));
            match crate::http::serve(addr, move |_| {
                let (name, n) = s2.lock().map(|s| s.clone()).unwrap_or_default();
                let (ns, svc) = name.split_once('/').unwrap_or(("", ""));
                let body = format!(
                    "{{\"service\":{{\"namespace\":\"{ns}\",\"name\":\"{svc}\"}},\"localEndpoints\":{n}}}\n"
                );
                let status = if n > 0 { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
                (status, "application/json", body)
            })
            .await
            {
                Ok((bound, task)) => {
                    info!(%bound, "health check node port serving");
                    self.servers.insert(*port, (state, task));
                }
                Err(e) => warn!(port, error = %e, "cannot serve health check node port"),
            }
        }
    }
}
