//! From an Ingress backend (Service name and port) to the ready addresses of its pods,
//! read from the Service's EndpointSlices.
//!
//! The EndpointSlice controller names each slice port after the Service port it serves
//! and gives it the resolved container port, so one rule covers a numeric and a named
//! `targetPort`: find the Service port (by number or by name, as the Ingress says), then
//! the slice port with the same name. Slices written by hand without ports fall back to
//! a numeric `targetPort` (or the Service port itself when there is none).
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceBackendPort;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::proxy::upstream::UpstreamProtocol;

/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// EndpointSlices grouped by (namespace, Service name).
#[derive(Debug, Default)]
pub struct SliceIndex<'a> {
    by_service: HashMap<(String, String), Vec<&'a EndpointSlice>>,
}

impl<'a> SliceIndex<'a> {
    pub fn new(slices: impl IntoIterator<Item = &'a EndpointSlice>) -> Self {
        let mut by_service: HashMap<(String, String), Vec<&EndpointSlice>> = HashMap::new();
        for slice in slices {
            let Some(service) = slice
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_NAME_LABEL))
            else {
                continue;
            };
            let namespace = slice.metadata.namespace.as_deref().unwrap_or("default");
            by_service
                .entry((namespace.to_owned(), service.clone()))
                .or_default()
                .push(slice);
        }
        SliceIndex { by_service }
    }

    fn slices(&self, namespace: &str, service: &str) -> &[&'a EndpointSlice] {
        self.by_service
            .get(&(namespace.to_owned(), service.to_owned()))
            .map_or(&[], Vec::as_slice)
    }
}

/// The protocol of `service`'s port `port` ([`UpstreamProtocol::from_app_protocol`] on
/// its `appProtocol`); HTTP/1.1 when the port is not found (the route then has no
/// endpoints anyway).
pub fn upstream_protocol(service: &Service, port: &ServiceBackendPort) -> UpstreamProtocol {
    service_port(service, port).map_or(UpstreamProtocol::Http1, |sp| {
        UpstreamProtocol::from_app_protocol(sp.app_protocol.as_deref())
    })
}

/// The Service port's ClusterIP address (`service-upstream`): the kernel data plane
/// balances behind it.
pub fn cluster_address(service: &Service, port: &ServiceBackendPort) -> Result<SocketAddr, String> {
    let namespace = service.metadata.namespace.as_deref().unwrap_or("default");
    let name = service.metadata.name.as_deref().unwrap_or_default();
    let sp = service_port(service, port)
        .ok_or_else(|| format!("Service {namespace}/{name} has no such port"))?;
    let ip = (service.spec.as_ref())
        .and_then(|s| s.cluster_ip.as_deref())
        .filter(|ip| *ip != "None")
        .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
        .ok_or_else(|| format!("Service {namespace}/{name} has no ClusterIP (service-upstream)"))?;
    let port =
        u16::try_from(sp.port).map_err(|_| format!("Service {namespace}/{name}: bad port"))?;
    Ok(SocketAddr::new(ip, port))
}

/// Where an ExternalName Service points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExternalTarget {
    /// `name.namespace.svc` (with or without the cluster domain): that Service, the
    /// usual way to route an Ingress to a Service of another namespace.
    Service { namespace: String, name: String },
    /// An IP address.
    Ip(IpAddr),
    /// A host name outside the cluster, reached at the addresses DNS gives for it
    /// ([`super::names`]).
    Host(String),
}

/// For an ExternalName Service: what it points at (or why it cannot be reached), and
/// the port number the backend's port means there (ingress-nginx: the backend's number,
/// or the number of the ExternalName Service's port of that name). None for any other
/// Service.
pub fn external_target(
    service: &Service,
    port: &ServiceBackendPort,
) -> Option<Result<(ExternalTarget, i32), String>> {
    let spec = service.spec.as_ref()?;
    if spec.type_.as_deref() != Some("ExternalName") {
        return None;
    }
    let namespace = service.metadata.namespace.as_deref().unwrap_or("default");
    let name = service.metadata.name.as_deref().unwrap_or_default();
    let external = spec.external_name.as_deref().unwrap_or_default();
    let external = external.trim_end_matches('.').to_ascii_lowercase();
    let number = match (port.number, &port.name) {
        (Some(n), _) => Ok(n),
        (None, Some(_)) => service_port(service, port)
            .map(|sp| sp.port)
            .ok_or_else(|| format!("ExternalName Service {namespace}/{name} has no such port")),
        (None, None) => Err(format!(
            "ExternalName Service {namespace}/{name}: no port given"
        )),
    };
    let target = if let Ok(ip) = external.parse::<IpAddr>() {
        Ok(ExternalTarget::Ip(ip))
    } else {
        match external.split('.').collect::<Vec<_>>().as_slice() {
            [svc, ns, "svc", ..] if !svc.is_empty() && !ns.is_empty() => {
                Ok(ExternalTarget::Service {
                    namespace: (*ns).to_owned(),
                    name: (*svc).to_owned(),
                })
            }
            _ if is_dns_name(&external) => Ok(ExternalTarget::Host(external)),
            _ => Err(format!(
                "ExternalName Service {namespace}/{name}: {external:?} is not a DNS name"
            )),
        }
    };
    Some(target.and_then(|t| number.map(|n| (t, n))))
}

/// A host name as `externalName` must be (a DNS-1123 subdomain, lowercased here):
/// dot-separated labels of letters, digits and inner hyphens, at most 253 characters.
fn is_dns_name(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// The Service port an Ingress backend names, by number or by name.
fn service_port<'a>(
    service: &'a Service,
    port: &ServiceBackendPort,
) -> Option<&'a k8s_openapi::api::core::v1::ServicePort> {
    service.spec.as_ref()?.ports.iter().flatten().find(|sp| {
        match (port.number, port.name.as_deref()) {
            (Some(n), _) => sp.port == n,
            (None, Some(n)) => sp.name.as_deref() == Some(n),
            (None, None) => false,
        }
    })
}

/// The ready addresses of `service`'s port `port`, sorted and without duplicates.
/// Err explains why the backend cannot be resolved at all (the route then answers 503).
pub fn ready_addresses(
    service: &Service,
    port: &ServiceBackendPort,
    slices: &SliceIndex<'_>,
) -> Result<Vec<SocketAddr>, String> {
    let namespace = service.metadata.namespace.as_deref().unwrap_or("default");
    let name = service.metadata.name.as_deref().unwrap_or_default();
    let spec = service.spec.as_ref().ok_or("Service has no spec")?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return Err("ExternalName Services are not supported as Ingress backends".into());
    }
    let service_port = service_port(service, port).ok_or_else(|| {
        format!(
            "Service {namespace}/{name} has no port {}",
            port.number
                .map(|n| n.to_string())
                .or_else(|| port.name.clone())
                .unwrap_or_else(|| "(none given)".into())
        )
    })?;
    let port_name = service_port.name.as_deref().unwrap_or_default();
    let fallback_port = match &service_port.target_port {
        Some(IntOrString::Int(p)) => Some(*p),
        Some(IntOrString::String(_)) => None,
        None => Some(service_port.port),
    };
    let mut out = BTreeSet::new();
    for slice in slices.slices(namespace, name) {
        if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
            continue; // FQDN slices are not pod addresses
        }
        let slice_port = match &slice.ports {
            Some(ports) if !ports.is_empty() => ports
                .iter()
                .find(|p| p.name.as_deref().unwrap_or_default() == port_name)
                .and_then(|p| p.port),
            _ => fallback_port,
        };
        let Some(target) = slice_port.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        for endpoint in slice.endpoints.iter().flatten() {
            // A nil `ready` means ready (API documentation); terminating endpoints are
            // not ready and get no new requests.
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            if !ready {
                continue;
            }
            // Addresses of one endpoint are fungible: the first is enough.
            if let Some(ip) = endpoint
                .addresses
                .first()
                .and_then(|a| a.parse::<IpAddr>().ok())
            {
                out.insert(SocketAddr::new(ip, target));
            }
        }
    }
    Ok(out.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml<T: serde::de::DeserializeOwned>(s: &str) -> T {
        let v: serde_json::Value = serde_yaml::from_str(s).unwrap();
        serde_json::from_value(v).unwrap()
    }

    const SERVICE: &str = r"
metadata: {name: web, namespace: shop}
spec:
  ports:
  - {name: http, port: 80, targetPort: web-port}
  - {name: admin, port: 9000, targetPort: 9001}
";
    const SLICE: &str = r"
metadata:
  name: web-abc
  namespace: shop
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports:
- {name: http, port: 8080}
- {name: admin, port: 9001}
endpoints:
- addresses: [10.0.0.2]
  conditions: {ready: true}
- addresses: [10.0.0.1]
- addresses: [10.0.0.3]
  conditions: {ready: false, terminating: true}
";

    #[test]
    fn external_names_in_the_cluster_by_address_and_outside() {
        let port = ServiceBackendPort {
            number: Some(443),
            name: None,
        };
        let target = |to: &str| {
            let svc: Service = yaml(&format!(
                "metadata: {{name: ext, namespace: shop}}\nspec: {{type: ExternalName, externalName: {to:?}}}"
            ));
            external_target(&svc, &port).expect("an ExternalName Service")
        };
        let service = ExternalTarget::Service {
            namespace: "other".into(),
            name: "api".into(),
        };
        assert_eq!(
            target("api.other.svc.cluster.local."),
            Ok((service.clone(), 443))
        );
        assert_eq!(target("api.other.svc"), Ok((service, 443)));
        assert_eq!(
            target("10.1.2.3"),
            Ok((ExternalTarget::Ip("10.1.2.3".parse().unwrap()), 443))
        );
        assert_eq!(
            target("API.Example.com."),
            Ok((ExternalTarget::Host("api.example.com".into()), 443))
        );
        for bad in ["", "a..b", "-a.example", "a_b.example", &"a".repeat(64)] {
            let e = target(bad).unwrap_err();
            assert!(
                e.contains("shop/ext") && e.contains("not a DNS name"),
                "{bad:?}: {e}"
            );
        }
        let plain: Service = yaml(SERVICE);
        assert_eq!(external_target(&plain, &port), None);
    }

    #[test]
    fn by_number_and_by_name_with_named_target_ports() {
        let svc: Service = yaml(SERVICE);
        let slice: EndpointSlice = yaml(SLICE);
        let idx = SliceIndex::new([&slice]);
        let by_number = ServiceBackendPort {
            number: Some(80),
            name: None,
        };
        let got = ready_addresses(&svc, &by_number, &idx).unwrap();
        assert_eq!(
            got,
            [
                "10.0.0.1:8080".parse().unwrap(),
                "10.0.0.2:8080".parse().unwrap()
            ]
        );
        let by_name = ServiceBackendPort {
            number: None,
            name: Some("admin".into()),
        };
        let got = ready_addresses(&svc, &by_name, &idx).unwrap();
        assert_eq!(got.len(), 2);
        assert!(got.iter().all(|a| a.port() == 9001));
    }

    #[test]
    fn unknown_port_is_an_error_and_no_slices_is_empty() {
        let svc: Service = yaml(SERVICE);
        let idx = SliceIndex::default();
        let p = ServiceBackendPort {
            number: Some(81),
            name: None,
        };
        assert!(
            ready_addresses(&svc, &p, &idx)
                .unwrap_err()
                .contains("no port 81")
        );
        let p = ServiceBackendPort {
            number: Some(80),
            name: None,
        };
        assert!(ready_addresses(&svc, &p, &idx).unwrap().is_empty());
    }
}
