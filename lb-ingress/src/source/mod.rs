//! From cluster state to configuration: which Ingresses are ours ([`class`]), their
//! rules as a [`RouteTable`], each rule's Service resolved to ready addresses
//! ([`endpoints`]), and the certificates of their `spec.tls` Secrets. [`build`] is pure
//! over a [`Store`]; [`watch`] folds source events into the store and swaps the result
//! in.
pub mod annotations;
pub mod class;
pub mod endpoints;
pub mod names;
pub mod watch;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::networking::v1::{Ingress, IngressBackend};
use lb_k8s::{Kind, Object, ObjectRef, Store};

use crate::metrics::{RouteLabelValues, RouteSeries};
use crate::proxy::balance::{EndpointRegistry, Pool};
use crate::proxy::basic::BasicAuth;
use crate::proxy::ratelimit::{ConcurrencyLimiter, LimitRegistry, RateLimiter};
use crate::proxy::upstream::UpstreamProtocol;
use crate::routes::{
    HostRule, PathKind, PathRewrite, PathRule, Rank, RouteTable, RouteTableBuilder,
};
use crate::tls::client_auth::{ClientAuth, ClientCa};
use crate::tls::passthrough::Passthrough;
use crate::tls::upstream::{ClientIdentity, UpstreamCa, UpstreamTls};
use crate::tls::{CertTable, certified_key};
use annotations::{CanaryPolicy, RouteOptions};
use endpoints::{SliceIndex, ready_addresses};
use names::Names;

/// A resolved Service port: its label (`namespace/name:port`), the pool of its ready
/// endpoints and their protocol.
type Backend = (String, Arc<Pool>, UpstreamProtocol);

/// The kinds the ingress reads.
pub const KINDS: [Kind; 6] = [
    Kind::Ingress,
    Kind::IngressClass,
    Kind::Service,
    Kind::EndpointSlice,
    Kind::Secret,
    Kind::ConfigMap,
];

/// The canary of a rule: a second backend some requests go to (ingress-nginx's
/// `canary` annotations).
#[derive(Debug)]
pub struct Canary {
    pub policy: Arc<CanaryPolicy>,
    /// The rule with the canary's backend (labelled with the canary Ingress and Service).
    pub target: Arc<Target>,
}

/// An object named on the command line as `NAMESPACE/NAME`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespacedName {
    pub namespace: String,
    pub name: String,
}

impl std::str::FromStr for NamespacedName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('/') {
            Some((namespace, name))
                if !namespace.is_empty() && !name.is_empty() && !name.contains('/') =>
            {
                Ok(NamespacedName {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                })
            }
            _ => Err(format!("{s:?} is not NAMESPACE/NAME")),
        }
    }
}

impl std::fmt::Display for NamespacedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What a build serves beyond the cluster state: whose Ingresses, and the certificate
/// for TLS names no Ingress has one for.
#[derive(Clone, Debug)]
pub struct Scope {
    pub class: class::ClassId,
    /// `--default-ssl-certificate`: a `kubernetes.io/tls` Secret served to TLS clients
    /// whose name has no certificate of its own, and to the hosts of `spec.tls` entries
    /// without a `secretName` (as ingress-nginx's flag of that name).
    pub default_certificate: Option<NamespacedName>,
    /// `--default-backend-service`: the Service (its first port) that takes the requests
    /// no rule and no Ingress `defaultBackend` takes (as ingress-nginx's flag of that
    /// name; without it they get 404).
    pub default_backend: Option<NamespacedName>,
    /// `--watch-namespace`: only the Ingresses of this namespace are served (the API
    /// server source watches no other; a manifests directory may hold others).
    pub namespace: Option<String>,
}

/// The `path` of the [`Target`] of a `defaultBackend`.
pub const DEFAULT_BACKEND: &str = "defaultBackend";

/// What a matched rule leads to: labels for logs and metrics, and the pool of ready
/// endpoints (empty: 503).
#[derive(Debug)]
pub struct Target {
    /// `namespace/name` of the Ingress that defined the rule.
    pub ingress: String,
    /// The rule's host as written (`*.foo.com`, or empty for any host).
    pub host: String,
    /// The rule's path as written (`defaultBackend` for the default backend).
    pub path: String,
    /// `namespace/name:port` of the Service.
    pub service: String,
    pub pool: Arc<Pool>,
    /// What the Service port's endpoints speak (its `appProtocol`, or the Ingress's
    /// `backend-protocol`).
    pub protocol: UpstreamProtocol,
    /// The Ingress's settings from its annotations (shared by its rules).
    pub options: Arc<RouteOptions>,
    /// The Ingress's rate limiter (`limit-rps`), shared by its rules and kept across
    /// swaps.
    pub limiter: Option<Arc<RateLimiter>>,
    /// The Ingress's limit on requests in flight per client (`limit-connections`).
    pub concurrency: Option<Arc<ConcurrencyLimiter>>,
    /// A canary Ingress's backend for this rule, and when it takes a request.
    pub canary: Option<Canary>,
    /// `default-backend`: where requests go while `pool` is empty.
    pub fallback: Option<Arc<Target>>,
    /// `proxy-ssl-verify`: how a TLS upstream's certificate is checked (None: it is not).
    pub verified: Option<Arc<UpstreamTls>>,
    /// `from-to-www-redirect`: this rule only redirects, to this host.
    pub www_redirect: Option<String>,
    /// `rewrite-target`: the upstream path, from the rule path's captures.
    pub rewrite: Option<Arc<PathRewrite>>,
    /// `auth-type: basic`: the users of the Ingress's htpasswd Secret.
    pub basic_auth: Option<Arc<BasicAuth>>,
    /// `auth-tls-secret`: the client certificates the rule accepts.
    pub client_auth: Option<Arc<ClientAuth>>,
    /// `auth-proxy-set-headers`: headers set on the auth request.
    pub auth_headers: Option<Arc<crate::proxy::auth::AuthHeaders>>,
    /// `custom-headers`: headers set on responses.
    pub response_headers: Option<Arc<[(hyper::header::HeaderName, hyper::header::HeaderValue)]>>,
    /// This rule's request metrics, looked up once (see [`RouteSeries`]).
    pub series: RouteSeries,
}

impl Target {
    /// The path prefix the rule matched (`/` for the `defaultBackend`).
    pub fn rule_prefix(&self) -> &str {
        if self.path == DEFAULT_BACKEND {
            "/"
        } else {
            &self.path
        }
    }

    pub fn labels(&self) -> RouteLabelValues<'_> {
        RouteLabelValues {
            ingress: &self.ingress,
            host: &self.host,
            path: &self.path,
            service: &self.service,
        }
    }
}

/// One immutable configuration, swapped in whole.
#[derive(Debug, Default)]
pub struct Config {
    pub routes: RouteTable<Arc<Target>>,
    /// Increases with every swap; 0 before the first complete listing.
    pub generation: u64,
}

/// The result of a build: the configuration, the certificates, and the problems found
/// (objects or references skipped, conflicts lost), each naming its object.
#[derive(Debug)]
pub struct Built {
    pub config: Config,
    pub certs: CertTable,
    pub problems: Vec<String>,
    /// The host names of ExternalName Services that the routes use (see [`names`]).
    pub hosts: BTreeSet<String>,
}

fn rank(ingress: &Ingress, r: &ObjectRef) -> Rank {
    Rank {
        created: ingress.metadata.creation_timestamp.clone(),
        namespace: r.namespace.clone(),
        name: r.name.clone(),
    }
}

/// Resolves Ingress backends to Service ports and their endpoint pools, once per Service
/// port and protocol.
struct Backends<'a> {
    store: &'a Store,
    slices: SliceIndex<'a>,
    registry: &'a EndpointRegistry,
    /// What ExternalName Services' host names stand for.
    names: &'a Names,
    /// The host names used.
    hosts: BTreeSet<String>,
    /// By Service port (namespace, name, port) and how an Ingress asks to reach it.
    pools: HashMap<(String, String, String, Via), Backend>,
}

/// How an Ingress asks to reach a Service port, beyond naming it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
struct Via {
    /// `backend-protocol`, over the port's `appProtocol`.
    protocol: Option<UpstreamProtocol>,
    /// `proxy-ssl-verify`, by [`UpstreamTls::id`].
    verified: Option<u64>,
    /// `service-upstream`: the ClusterIP instead of the endpoints.
    cluster_ip: bool,
}

impl Backends<'_> {
    /// The Service port `backend` (of Ingress `r`) names, with its ready endpoints; None
    /// for a resource backend (reported).
    fn resolve(
        &mut self,
        r: &ObjectRef,
        backend: &IngressBackend,
        via: Via,
        problems: &mut Vec<String>,
    ) -> Option<Backend> {
        let Some(svc) = &backend.service else {
            problems.push(format!(
                "Ingress {}/{}: resource backends are not supported",
                r.namespace, r.name
            ));
            return None;
        };
        let port = svc.port.clone().unwrap_or_default();
        let port_label = port
            .number
            .map(|n| n.to_string())
            .or(port.name.clone())
            .unwrap_or_default();
        let key = (
            r.namespace.clone(),
            svc.name.clone(),
            port_label.clone(),
            via,
        );
        let (store, slices, registry) = (self.store, &self.slices, self.registry);
        let (names, hosts) = (self.names, &mut self.hosts);
        let backend = self.pools.entry(key).or_insert_with(|| {
            let label = format!("{}/{}:{port_label}", r.namespace, svc.name);
            let sref = ObjectRef::new(Kind::Service, r.namespace.clone(), svc.name.clone());
            let found = (|| {
                let Some(Object::Service(named)) = store.get(&sref) else {
                    return Err(format!("Service {}/{} not found", r.namespace, svc.name));
                };
                // An ExternalName Service stands for the Service it names, on the port
                // number the backend's port means there, or for an IP address.
                let (s, port) = match endpoints::external_target(named, &port) {
                    None => (named, port.clone()),
                    Some(external) => {
                        let (target, number) = external?;
                        let port = k8s_openapi::api::networking::v1::ServiceBackendPort {
                            number: Some(number),
                            name: None,
                        };
                        let p = u16::try_from(number)
                            .map_err(|_| format!("port {number} is not a port"))?;
                        let (namespace, name) = match target {
                            endpoints::ExternalTarget::Ip(ip) => {
                                let protocol = endpoints::upstream_protocol(named, &port);
                                return Ok((vec![std::net::SocketAddr::new(ip, p)], protocol));
                            }
                            endpoints::ExternalTarget::Host(host) => {
                                let protocol = endpoints::upstream_protocol(named, &port);
                                let addrs = match names.get(&host) {
                                    None => Vec::new(), // being resolved
                                    Some((ips, error)) => {
                                        if let Some(e) = error {
                                            let kept = if ips.is_empty() {
                                                String::new()
                                            } else {
                                                format!(" (keeping its last addresses, {ips:?})")
                                            };
                                            problems.push(format!(
                                                "Ingress {}/{}: ExternalName Service {}/{}: \
                                                 cannot resolve {host}: {e}{kept}",
                                                r.namespace, r.name, r.namespace, svc.name
                                            ));
                                        }
                                        let to = |ip: &std::net::IpAddr| {
                                            std::net::SocketAddr::new(*ip, p)
                                        };
                                        ips.iter().map(to).collect()
                                    }
                                };
                                hosts.insert(host);
                                return Ok((addrs, protocol));
                            }
                            endpoints::ExternalTarget::Service { namespace, name } => {
                                (namespace, name)
                            }
                        };
                        let sref = ObjectRef::new(Kind::Service, namespace.clone(), name.clone());
                        let Some(Object::Service(s)) = store.get(&sref) else {
                            return Err(format!(
                                "ExternalName Service points at Service {namespace}/{name}, \
                                 which is not found"
                            ));
                        };
                        if endpoints::external_target(s, &port).is_some() {
                            return Err(format!(
                                "ExternalName Service points at {namespace}/{name}, another \
                                 ExternalName Service (chains are not followed)"
                            ));
                        }
                        (s, port)
                    }
                };
                let addrs = if via.cluster_ip {
                    vec![endpoints::cluster_address(s, &port)?]
                } else {
                    resolve(s, &port, slices, problems, r)
                };
                Ok((addrs, endpoints::upstream_protocol(s, &port)))
            })();
            let (addrs, protocol) = found.unwrap_or_else(|e| {
                problems.push(format!("Ingress {}/{}: {e}", r.namespace, r.name));
                (Vec::new(), UpstreamProtocol::default())
            });
            let protocol = via.protocol.unwrap_or(protocol);
            // An endpoint's pooled connections speak one protocol.
            let pool = Pool::new(
                addrs
                    .into_iter()
                    .map(|a| registry.endpoint(a, protocol, via.verified))
                    .collect(),
            );
            (label, Arc::new(pool), protocol)
        });
        Some(backend.clone())
    }
}

/// The rules of an Ingress, in order: the `defaultBackend` (host any, path
/// [`DEFAULT_BACKEND`]), then each valid path of each rule. Invalid paths are reported.
/// On the hosts in `regex_hosts` every path is a regular expression
/// ([`PathRule::regex`]).
fn rules<'i>(
    spec: &'i k8s_openapi::api::networking::v1::IngressSpec,
    aliases: &[String],
    regex_hosts: &HashSet<HostRule>,
    r: &ObjectRef,
    problems: &mut Vec<String>,
) -> Vec<(HostRule, Option<PathRule>, &'i IngressBackend)> {
    let mut out = Vec::new();
    if let Some(backend) = &spec.default_backend {
        out.push((HostRule::Any, None, backend));
    }
    for rule in spec.rules.iter().flatten() {
        let hosts = rule_hosts(rule.host.as_deref(), aliases);
        for p in rule.http.iter().flat_map(|h| &h.paths) {
            let raw = p.path.as_deref().unwrap_or("/");
            // Each form once, whatever the number of hosts.
            let mut plain = None;
            let mut regex = None;
            for host in &hosts {
                let path = if regex_hosts.contains(host) {
                    regex.get_or_insert_with(|| PathRule::regex(raw))
                } else {
                    plain.get_or_insert_with(|| PathRule::from_spec(&p.path_type, raw))
                };
                if let Ok(path) = path {
                    out.push((host.clone(), Some(path.clone()), &p.backend));
                }
            }
            for e in [plain, regex].into_iter().flatten().filter_map(Result::err) {
                problems.push(format!("Ingress {}/{}: {e}", r.namespace, r.name));
            }
        }
    }
    out
}

/// The hosts a rule serves: its own, and for a named host the `server-alias`es too.
fn rule_hosts(host: Option<&str>, aliases: &[String]) -> Vec<HostRule> {
    let host = HostRule::parse(host);
    let named = host != HostRule::Any;
    std::iter::once(host)
        .chain(
            aliases
                .iter()
                .filter(|_| named)
                .map(|a| HostRule::parse(Some(a))),
        )
        .collect()
}

/// The hosts where paths are regular expressions: those with a rule of a main Ingress
/// that asks for them ([`RouteOptions::wants_regex`]). As in ingress-nginx, this holds
/// for every path of the host, whichever Ingress defines it.
fn regex_hosts<'a>(
    ingresses: impl Iterator<
        Item = (
            &'a k8s_openapi::api::networking::v1::IngressSpec,
            &'a RouteOptions,
        ),
    >,
) -> HashSet<HostRule> {
    let mut hosts = HashSet::new();
    for (spec, options) in ingresses {
        if options.canary.is_some() {
            continue;
        }
        for rule in spec.rules.iter().flatten() {
            let wants = (rule.http.iter().flat_map(|h| &h.paths))
                .any(|p| options.wants_regex(p.path.as_deref().unwrap_or("/")));
            if wants {
                hosts.extend(rule_hosts(rule.host.as_deref(), &options.server_alias));
            }
        }
    }
    hosts
}

/// A canary Ingress's rule, waiting for the main rule of the same host and path.
struct CanaryRule<'s> {
    r: ObjectRef,
    rank: Rank,
    policy: Arc<CanaryPolicy>,
    /// Resolved when a main rule takes it, under that rule's settings.
    backend: &'s IngressBackend,
    used: bool,
}

/// Builds the configuration for `class` from everything in `store`. Endpoint state is
/// taken from `registry`, so that it survives the swap.
pub fn build(
    store: &Store,
    scope: &Scope,
    registry: &EndpointRegistry,
    limits: &LimitRegistry,
    names: &Names,
) -> Built {
    let mut problems = Vec::new();
    let classes = store.of_kind(Kind::IngressClass).filter_map(|o| match o {
        Object::IngressClass(c) => Some(&**c),
        _ => None,
    });
    let our_classes = class::Ours::new(classes, &scope.class);
    let mut backends = Backends {
        store,
        slices: SliceIndex::new(store.of_kind(Kind::EndpointSlice).filter_map(|o| match o {
            Object::EndpointSlice(s) => Some(&**s),
            _ => None,
        })),
        registry,
        names,
        hosts: BTreeSet::new(),
        pools: HashMap::new(),
    };
    let mut routes = RouteTableBuilder::new();
    let mut certs = CertTable::default();
    let default_key = scope.default_certificate.as_ref().and_then(|d| {
        let key = match store.get(&ObjectRef::new(Kind::Secret, &d.namespace, &d.name)) {
            Some(Object::Secret(s)) => secret_key(s),
            _ => Err("not found".to_owned()),
        };
        key.map_err(|e| problems.push(format!("--default-ssl-certificate {d}: {e}")))
            .ok()
    });
    if let Some(key) = &default_key {
        certs.set_fallback(Arc::clone(key));
    }

    // Ours, with their settings.
    let mut ours = Vec::new();
    for object in store.of_kind(Kind::Ingress) {
        let Object::Ingress(ingress) = object else {
            continue;
        };
        if !our_classes.selects(ingress)
            || (scope.namespace.as_ref())
                .is_some_and(|ns| ingress.metadata.namespace.as_ref() != Some(ns))
        {
            continue;
        }
        let r = object.object_ref();
        let rank = rank(ingress, &r);
        let Some(spec) = &ingress.spec else {
            continue;
        };
        let (options, bad) = annotations::parse(ingress.metadata.annotations.as_ref());
        problems.extend(
            bad.into_iter()
                .map(|p| format!("Ingress {}/{}: {p}", r.namespace, r.name)),
        );
        ours.push((r, rank, spec, options));
    }
    let regex_hosts = regex_hosts(ours.iter().map(|(_, _, spec, options)| (*spec, options)));

    // Canary Ingresses are set apart by the rule they follow.
    let mut ingresses = Vec::new();
    let mut canaries: HashMap<(HostRule, Option<PathRule>), CanaryRule> = HashMap::new();
    for (r, rank, spec, options) in ours {
        let Some(policy) = options.canary.clone() else {
            let rules = rules(spec, &options.server_alias, &regex_hosts, &r, &mut problems);
            ingresses.push((r, rank, spec, options, rules));
            continue;
        };
        let policy = Arc::new(policy);
        for (host, path, backend) in
            rules(spec, &options.server_alias, &regex_hosts, &r, &mut problems)
        {
            let canary = CanaryRule {
                r: r.clone(),
                rank: rank.clone(),
                policy: Arc::clone(&policy),
                backend,
                used: false,
            };
            let rule = rule_label(&host, path.as_ref());
            match canaries.entry((host, path)) {
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(canary);
                }
                std::collections::hash_map::Entry::Occupied(mut o) => {
                    let (winner, loser) = if canary.rank < o.get().rank {
                        let loser = o.get().rank.ingress();
                        o.insert(canary);
                        (o.get().rank.ingress(), loser)
                    } else {
                        (o.get().rank.ingress(), canary.rank.ingress())
                    };
                    problems.push(format!(
                        "Ingress {loser}: canary of rule {rule} is also defined by the older Ingress {winner}, which wins"
                    ));
                }
            }
        }
    }

    // Every exact host some served Ingress has rules for (`from-to-www-redirect` never
    // shadows one).
    let named_hosts: std::collections::HashSet<String> = ingresses
        .iter()
        .flat_map(|(.., rules)| rules)
        .filter_map(|(host, _, _)| match host {
            HostRule::Exact(h) => Some(h.clone()),
            _ => None,
        })
        .collect();
    let mut www_done = std::collections::HashSet::new();
    for (r, rank, spec, mut options, rules) in ingresses {
        let limiter = options
            .rate
            .map(|rate| limits.limiter(&rank.ingress(), rate));
        let concurrency = options
            .max_in_flight
            .map(|max| limits.concurrency(&rank.ingress(), max));
        // proxy-ssl-secret: the CA (with proxy-ssl-verify) and the client certificate,
        // once per Ingress; a Secret that cannot give what is asked fails closed.
        let upstream_tls = options.proxy_ssl.clone().and_then(|p| {
            let (ns, name) = &p.secret;
            match upstream_tls_material(store, &p) {
                Ok((None, None)) => {
                    problems.push(format!(
                        "Ingress {}/{}: proxy-ssl-secret {ns}/{name} has no tls.crt and \
                         tls.key to show upstreams and proxy-ssl-verify is not on: it changes \
                         nothing",
                        r.namespace, r.name
                    ));
                    Some((None, None))
                }
                Ok(material) => Some(material),
                Err(e) => {
                    let why = format!("proxy-ssl-secret {ns}/{name}: {e}");
                    deny_rules(&mut problems, &r, &mut options, why);
                    None
                }
            }
        });
        // auth-type: basic: the htpasswd file, once per Ingress; without one the rules
        // fail closed.
        let basic_auth = options.basic_auth.clone().and_then(|spec| {
            let ns = spec.namespace.unwrap_or_else(|| r.namespace.clone());
            let secret = format!("auth-secret {ns}/{}", spec.name);
            let users = if spec.map {
                secret_map(store, &ns, &spec.name).map(|map| {
                    let map = map.iter().map(|(k, v)| (k.as_str(), v.as_str()));
                    BasicAuth::from_map(map, &spec.realm)
                })
            } else {
                secret_data(store, &ns, &spec.name, "auth").and_then(|file| {
                    let text =
                        String::from_utf8(file).map_err(|_| "auth is not text".to_owned())?;
                    Ok(BasicAuth::from_htpasswd(&text, &spec.realm))
                })
            };
            let auth = users.and_then(|(auth, bad)| {
                for b in bad {
                    problems.push(format!(
                        "Ingress {}/{}: {secret}: {b}; that user cannot sign in",
                        r.namespace, r.name
                    ));
                }
                (auth.users() > 0)
                    .then_some(auth)
                    .ok_or_else(|| "has no usable user".to_owned())
            });
            auth.map_err(|e| deny_rules(&mut problems, &r, &mut options, format!("{secret}: {e}")))
                .ok()
                .map(Arc::new)
        });
        // auth-proxy-set-headers: the ConfigMap's entries, once per Ingress; without it
        // the rules fail closed (the headers may be what the auth service decides by).
        let auth_headers = (options.auth.as_ref())
            .and_then(|a| a.proxy_set_headers.clone())
            .and_then(|(ns, name)| {
                let what = format!(
                    "auth-proxy-set-headers {}/{name}",
                    ns.as_deref().unwrap_or(&r.namespace)
                );
                match header_entries(store, ns.as_deref().unwrap_or(&r.namespace), &name) {
                    Ok((entries, bad)) => {
                        for b in bad {
                            problems.push(format!(
                                "Ingress {}/{}: {what}: {b}; skipped",
                                r.namespace, r.name
                            ));
                        }
                        let entries: Vec<_> = (entries.into_iter())
                            .map(|(n, v)| (n, v.to_owned()))
                            .collect();
                        Some(Arc::<crate::proxy::auth::AuthHeaders>::from(entries))
                    }
                    Err(e) => {
                        deny_rules(&mut problems, &r, &mut options, format!("{what}: {e}"));
                        None
                    }
                }
            });
        // custom-headers: the ConfigMap's entries, set on responses; without it the rules
        // are served without them.
        let response_headers = options.custom_headers.clone().and_then(|(ns, name)| {
            let ns = ns.unwrap_or_else(|| r.namespace.clone());
            let what = format!("custom-headers {ns}/{name}");
            let (entries, bad) = header_entries(store, &ns, &name)
                .map_err(|e| {
                    problems.push(format!(
                        "Ingress {}/{}: {what}: {e}; no headers are added",
                        r.namespace, r.name
                    ));
                })
                .ok()?;
            let mut set = Vec::new();
            for (n, v) in entries {
                match hyper::header::HeaderValue::try_from(v) {
                    Ok(value) => set.push((n, value)),
                    Err(_) => problems.push(format!(
                        "Ingress {}/{}: {what}: {n}: {v:?} is not a header value; skipped",
                        r.namespace, r.name
                    )),
                }
            }
            for b in bad {
                problems.push(format!(
                    "Ingress {}/{}: {what}: {b}; skipped",
                    r.namespace, r.name
                ));
            }
            Some(Arc::<[_]>::from(set))
        });
        // auth-tls-secret: the CA, once per Ingress, asked for in the handshakes of its
        // hosts; without it the rules fail closed.
        let client_auth = options.client_cert.clone().and_then(|spec| {
            let ns = spec
                .namespace
                .clone()
                .unwrap_or_else(|| r.namespace.clone());
            let secret = format!("auth-tls-secret {ns}/{}", spec.name);
            let crl = secret_data(store, &ns, &spec.name, "ca.crl").ok();
            secret_data(store, &ns, &spec.name, "ca.crt")
                .and_then(|pem| ClientCa::from_pem(&pem, crl.as_deref()))
                .map_err(|e| deny_rules(&mut problems, &r, &mut options, format!("{secret}: {e}")))
                .ok()
                .map(|ca| {
                    Arc::new(ClientAuth {
                        ca: Arc::new(ca),
                        spec,
                    })
                })
        });
        if let Some(auth) = &client_auth {
            let mut hosts: Vec<&HostRule> = Vec::new();
            for (host, _, _) in &rules {
                if hosts.contains(&host) {
                    continue;
                }
                hosts.push(host);
                if let Some(winner) = certs.add_client_ca(&rank, host, &auth.ca) {
                    problems.push(format!(
                        "Ingress {}/{}: host {} checks client certificates against the \
                         auth-tls-secret of the older Ingress {}, not this one's; this \
                         Ingress's rules there answer 421",
                        r.namespace,
                        r.name,
                        host.label(),
                        winner.ingress()
                    ));
                }
            }
        }
        // default-backend: that Service's first port, as ingress-nginx takes it.
        let fallback = options.default_backend.as_ref().and_then(|name| {
            let backend = first_port(store, &r.namespace, name);
            if backend.is_none() {
                problems.push(format!(
                    "Ingress {}/{}: default-backend Service {}/{name} not found or without \
                     ports; rules without endpoints answer 503",
                    r.namespace, r.name, r.namespace
                ));
            }
            backend
        });
        let options = Arc::new(options);
        let mut tls_by_name: HashMap<String, Option<Arc<UpstreamTls>>> = HashMap::new();
        let mut passed_through = false;
        // How this Ingress reaches a backend (of Ingress `owner`): its protocol, ClusterIP
        // choice and TLS settings, the name a verified endpoint's certificate must carry
        // (and SNI, when sent) being proxy-ssl-name, else the Service's in-cluster name.
        let mut via_for = |owner: &ObjectRef, backend: &IngressBackend| {
            let verified = match (&options.proxy_ssl, &upstream_tls, &backend.service) {
                (Some(p), Some((ca, identity)), Some(svc)) => {
                    let name = (p.name.clone())
                        .unwrap_or_else(|| format!("{}.{}.svc", svc.name, owner.namespace));
                    tls_by_name
                        .entry(name)
                        .or_insert_with_key(|name| {
                            UpstreamTls::new(ca.as_ref(), identity.as_ref(), name, p.sni)
                                .ok()
                                .map(Arc::new)
                        })
                        .clone()
                }
                _ => None,
            };
            let via = Via {
                protocol: options.protocol,
                verified: verified.as_ref().map(|v| v.id),
                cluster_ip: options.service_upstream,
            };
            (via, verified)
        };
        for (host, path, backend) in rules {
            let (via, verified) = via_for(&r, backend);
            let Some((service, pool, protocol)) = backends.resolve(&r, backend, via, &mut problems)
            else {
                continue;
            };
            // ssl-passthrough: the host's TLS goes to its `/` rule's backend unopened.
            if options.ssl_passthrough && path.as_ref().is_some_and(|p| p.as_str() == "/") {
                let target = Arc::new(Passthrough {
                    service: service.clone(),
                    pool: Arc::clone(&pool),
                });
                passed_through |= certs.add_passthrough(&rank, &host, target);
            }
            let path_label = path.as_ref().map_or(DEFAULT_BACKEND, PathRule::as_str);
            // `rewrite-target`, bound to this rule's expression; one it cannot be bound to
            // (a group the path lacks) makes the rule answer 503.
            let mut rule_options = Arc::clone(&options);
            let rewrite = match (&options.rewrite_target, &path) {
                (Some(t), Some(p)) if p.kind() == PathKind::Regex && t.rewrites(p.as_str()) => {
                    PathRewrite::new(p.as_str(), t)
                        .map_err(|e| {
                            problems.push(format!(
                                "Ingress {}/{}: {e}; the rule answers 503 until it is fixed",
                                r.namespace, r.name
                            ));
                            let mut denied = (*options).clone();
                            denied.deny.get_or_insert(e);
                            rule_options = Arc::new(denied);
                        })
                        .ok()
                        .map(Arc::new)
                }
                _ => None,
            };
            let make = |ingress: String, (service, pool, protocol): Backend| Target {
                ingress,
                host: host.label(),
                path: path_label.to_owned(),
                service,
                pool,
                protocol,
                options: Arc::clone(&rule_options),
                limiter: limiter.clone(),
                concurrency: concurrency.clone(),
                verified: None,
                www_redirect: None,
                rewrite: rewrite.clone(),
                basic_auth: basic_auth.clone(),
                client_auth: client_auth.clone(),
                auth_headers: auth_headers.clone(),
                response_headers: response_headers.clone(),
                canary: None,
                fallback: None,
                series: RouteSeries::default(),
            };
            let mut target = make(rank.ingress(), (service, pool, protocol));
            target.verified = verified;
            if let Some(fallback) = &fallback {
                let (via, verified) = via_for(&r, fallback);
                if let Some(backend) = backends.resolve(&r, fallback, via, &mut problems) {
                    let mut fallback = make(rank.ingress(), backend);
                    fallback.verified = verified;
                    target.fallback = Some(Arc::new(fallback));
                }
            }
            if let Some(c) = canaries.get_mut(&(host.clone(), path.clone())) {
                c.used = true;
                // The canary's backend under the main rule's settings (as ingress-nginx:
                // a canary Ingress's other annotations are not applied): its protocol,
                // ClusterIP choice and upstream verification too.
                let (via, verified) = via_for(&c.r, c.backend);
                if let Some(backend) = backends.resolve(&c.r, c.backend, via, &mut problems) {
                    let mut canary = make(c.rank.ingress(), backend);
                    canary.verified = verified;
                    target.canary = Some(Canary {
                        policy: Arc::clone(&c.policy),
                        target: Arc::new(canary),
                    });
                }
            }
            // `from-to-www-redirect`: the other name of a host, when nobody serves it.
            if options.www_redirect
                && let HostRule::Exact(h) = &host
            {
                let other = match h.strip_prefix("www.") {
                    Some(bare) => bare.to_owned(),
                    None => format!("www.{h}"),
                };
                if !named_hosts.contains(&other) && www_done.insert(other.clone()) {
                    let backend = (
                        target.service.clone(),
                        Arc::clone(&target.pool),
                        target.protocol,
                    );
                    let mut redirect = make(rank.ingress(), backend);
                    redirect.www_redirect = Some(h.clone());
                    let prefix = PathRule::from_spec("Prefix", "/").expect("/ is a valid path");
                    routes.add(&rank, HostRule::Exact(other), prefix, Arc::new(redirect));
                }
            }
            let target = Arc::new(target);
            match path {
                None => routes.default_backend(&rank, target),
                Some(path) => routes.add(&rank, host, path, target),
            }
        }
        if options.ssl_passthrough && !passed_through {
            problems.push(format!(
                "Ingress {}/{}: ssl-passthrough needs a rule with a host and the path / \
                 (the TLS server name picks the backend); no connection is passed through",
                r.namespace, r.name
            ));
        }
        for tls in spec.tls.iter().flatten() {
            let Some(secret_name) = &tls.secret_name else {
                // The hosts of an entry without a Secret get the default certificate.
                let hosts = tls.hosts.as_deref().unwrap_or_default();
                match &default_key {
                    Some(key) => {
                        for host in hosts {
                            certs.add(&rank, Some(host), Arc::clone(key));
                        }
                    }
                    None if !hosts.is_empty() => problems.push(format!(
                        "Ingress {}/{}: spec.tls for {} names no secretName and there is no \
                         --default-ssl-certificate: no certificate for these hosts",
                        r.namespace,
                        r.name,
                        hosts.join(", ")
                    )),
                    None => {}
                }
                continue;
            };
            let sref = ObjectRef::new(Kind::Secret, r.namespace.clone(), secret_name.clone());
            let key = match store.get(&sref) {
                Some(Object::Secret(s)) => secret_key(s),
                _ => Err("not found".to_owned()),
            };
            match key {
                Ok(key) => {
                    let hosts = tls.hosts.as_deref().unwrap_or_default();
                    if hosts.is_empty() {
                        certs.add(&rank, None, Arc::clone(&key));
                    }
                    for host in hosts {
                        certs.add(&rank, Some(host), Arc::clone(&key));
                    }
                }
                Err(e) => problems.push(format!(
                    "Ingress {}/{}: TLS Secret {}/{secret_name}: {e}",
                    r.namespace, r.name, r.namespace
                )),
            }
        }
    }
    for ((host, path), c) in &canaries {
        if !c.used {
            problems.push(format!(
                "Ingress {}: canary rule {} follows no rule of a main Ingress; ignored",
                c.rank.ingress(),
                rule_label(host, path.as_ref())
            ));
        }
    }
    // --default-backend-service: what nothing else takes.
    if let Some(d) = &scope.default_backend
        && !routes.has_default_backend()
    {
        let r = ObjectRef::new(Kind::Service, d.namespace.clone(), d.name.clone());
        let resolved = match first_port(store, &d.namespace, &d.name) {
            Some(backend) => backends.resolve(&r, &backend, Via::default(), &mut problems),
            None => {
                problems.push(format!(
                    "--default-backend-service {d}: Service not found or without ports; \
                     requests no rule takes answer 404"
                ));
                None
            }
        };
        if let Some((service, pool, protocol)) = resolved {
            let target = Target {
                // Named after the flag in logs, metrics and `check`: no Ingress made it.
                ingress: "--default-backend-service".to_owned(),
                host: String::new(),
                path: DEFAULT_BACKEND.to_owned(),
                service,
                pool,
                protocol,
                options: Arc::default(),
                limiter: None,
                concurrency: None,
                canary: None,
                fallback: None,
                verified: None,
                www_redirect: None,
                rewrite: None,
                basic_auth: None,
                client_auth: None,
                auth_headers: None,
                response_headers: None,
                series: RouteSeries::default(),
            };
            let last = Rank {
                created: None,
                namespace: String::new(),
                name: String::new(),
            };
            routes.default_backend(&last, Arc::new(target));
        }
    }
    let (routes, conflicts) = routes.build();
    for c in conflicts {
        problems.push(format!(
            "Ingress {}: rule {} is also defined by the older Ingress {}, which wins",
            c.loser, c.rule, c.winner
        ));
    }
    Built {
        config: Config {
            routes,
            generation: 0,
        },
        certs,
        problems,
        hosts: backends.hosts,
    }
}

/// A backend on the first port of Service `namespace/name` (how ingress-nginx reads a
/// default backend's Service), or None when there is no such Service or it has no ports.
fn first_port(store: &Store, namespace: &str, name: &str) -> Option<IngressBackend> {
    let sref = ObjectRef::new(Kind::Service, namespace, name);
    let Some(Object::Service(s)) = store.get(&sref) else {
        return None;
    };
    let number = s.spec.as_ref()?.ports.as_ref()?.first()?.port;
    Some(IngressBackend {
        service: Some(k8s_openapi::api::networking::v1::IngressServiceBackend {
            name: name.to_owned(),
            port: Some(k8s_openapi::api::networking::v1::ServiceBackendPort {
                number: Some(number),
                name: None,
            }),
        }),
        resource: None,
    })
}

/// A ConfigMap's entries as headers (name, value), and a sentence for each entry that
/// is not one.
type HeaderEntries<'s> = (Vec<(hyper::header::HeaderName, &'s str)>, Vec<String>);

/// The entries of ConfigMap `ns/name` whose keys are header names (sorted by name), and
/// a sentence for each that is not; or why there is no such ConfigMap.
fn header_entries<'s>(store: &'s Store, ns: &str, name: &str) -> Result<HeaderEntries<'s>, String> {
    let Some(Object::ConfigMap(c)) = store.get(&ObjectRef::new(Kind::ConfigMap, ns, name)) else {
        return Err("ConfigMap not found".to_owned());
    };
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for (k, v) in c.data.iter().flatten() {
        match hyper::header::HeaderName::try_from(k.as_str()) {
            Ok(n) => good.push((n, v.as_str())),
            Err(_) => bad.push(format!("{k:?} is not a header name")),
        }
    }
    Ok((good, bad))
}

/// Every key of Secret `ns/name` with a text value (read as [`secret_data`] reads one),
/// or why it cannot be had.
fn secret_map(store: &Store, ns: &str, name: &str) -> Result<BTreeMap<String, String>, String> {
    let Some(Object::Secret(s)) = store.get(&ObjectRef::new(Kind::Secret, ns, name)) else {
        return Err("not found".to_owned());
    };
    let data = s.data.iter().flatten().map(|(k, _)| k);
    let string_data = s.string_data.iter().flatten().map(|(k, _)| k);
    Ok(data
        .chain(string_data)
        .filter_map(|k| {
            let value = crate::tls::certs::secret_field(s, k)?;
            Some((k.clone(), String::from_utf8(value).ok()?))
        })
        .collect())
}

/// Key `key` of Secret `ns/name`, or why it cannot be had.
fn secret_data(store: &Store, ns: &str, name: &str, key: &str) -> Result<Vec<u8>, String> {
    match store.get(&ObjectRef::new(Kind::Secret, ns, name)) {
        Some(Object::Secret(s)) => {
            crate::tls::certs::secret_field(s, key).ok_or_else(|| format!("has no key {key}"))
        }
        _ => Err("not found".to_owned()),
    }
}

/// What `proxy-ssl-secret` gives: the CA to verify upstreams against (with
/// `proxy-ssl-verify: on`, which needs `ca.crt`) and the client certificate (`tls.crt`
/// and `tls.key`, both or neither), or why it cannot give what is asked of it. A Secret
/// that gives neither (no `tls.crt`, no verification) changes nothing, as in nginx.
fn upstream_tls_material(
    store: &Store,
    p: &annotations::ProxySsl,
) -> Result<(Option<UpstreamCa>, Option<ClientIdentity>), String> {
    let (ns, name) = &p.secret;
    let Some(Object::Secret(secret)) = store.get(&ObjectRef::new(Kind::Secret, ns, name)) else {
        return Err("not found".to_owned());
    };
    let field = |key| crate::tls::certs::secret_field(secret, key);
    let ca = match (p.verify, field("ca.crt")) {
        (true, Some(pem)) => Some(UpstreamCa::from_pem(&pem)?),
        (true, None) => return Err("has no key ca.crt (proxy-ssl-verify: on)".to_owned()),
        (false, _) => None,
    };
    let identity = match (field("tls.crt"), field("tls.key")) {
        (Some(crt), Some(key)) => Some(ClientIdentity::from_pem(&crt, &key)?),
        (Some(_), None) => return Err("has tls.crt but no tls.key".to_owned()),
        (None, Some(_)) => return Err("has tls.key but no tls.crt".to_owned()),
        (None, None) => None,
    };
    Ok((ca, identity))
}

/// Reports `why` against Ingress `r` and makes its rules answer 503 (fail closed).
fn deny_rules(problems: &mut Vec<String>, r: &ObjectRef, options: &mut RouteOptions, why: String) {
    problems.push(format!(
        "Ingress {}/{}: {why}; its rules answer 503 until it is fixed",
        r.namespace, r.name
    ));
    options.deny.get_or_insert(why);
}

/// `host path` of a rule, or `defaultBackend`, for messages.
fn rule_label(host: &HostRule, path: Option<&PathRule>) -> String {
    match path {
        None => DEFAULT_BACKEND.to_owned(),
        Some(p) => format!("{}{}", host.label(), p.as_str()),
    }
}

fn resolve(
    service: &Service,
    port: &k8s_openapi::api::networking::v1::ServiceBackendPort,
    slices: &SliceIndex<'_>,
    problems: &mut Vec<String>,
    ingress: &ObjectRef,
) -> Vec<std::net::SocketAddr> {
    ready_addresses(service, port, slices).unwrap_or_else(|e| {
        problems.push(format!(
            "Ingress {}/{}: {e}",
            ingress.namespace, ingress.name
        ));
        Vec::new()
    })
}

fn secret_key(secret: &Secret) -> Result<Arc<rustls::sign::CertifiedKey>, String> {
    certified_key(secret)
}
