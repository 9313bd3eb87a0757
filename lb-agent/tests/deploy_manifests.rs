//! deploy/: every manifest parses as its k8s-openapi type with no field the type does not
//! know (a typo is an error, not a silently ignored field), the DaemonSet has the
//! properties a kube-proxy replacement needs, the arguments parse with the binaries' own
//! command lines, and the RBAC rules grant exactly what the code watches.
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser as _;
use k8s_openapi::Resource;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, Node, PodSpec, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, Subject,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use lb_k8s::Kind;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every kind deploy/ may contain.
#[derive(Debug)]
enum Manifest {
    DaemonSet(Box<DaemonSet>),
    Deployment(Box<Deployment>),
    Service(Box<Service>),
    ServiceAccount(ServiceAccount),
    Namespace(Namespace),
    ClusterRole(ClusterRole),
    ClusterRoleBinding(ClusterRoleBinding),
    Role(Role),
    RoleBinding(RoleBinding),
    IngressClass(IngressClass),
}

/// Parses `value` as `T` and checks that serializing it back gives the same document:
/// k8s-openapi ignores fields it does not know, and this turns them into errors.
fn typed<T: DeserializeOwned + serde::Serialize>(value: &Value, at: &str) -> T {
    let parsed: T = serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{at}: does not parse: {e}"));
    let back = serde_json::to_value(&parsed).unwrap();
    if let Some(path) = first_difference(value, &back, String::new()) {
        panic!("{at}: field {path} is unknown to the type or not written as the type writes it");
    }
    parsed
}

/// Where a document as written and as its type writes it back differ; numbers compare
/// by value so that `1` and `1.0` are equal.
fn first_difference(written: &Value, typed: &Value, at: String) -> Option<String> {
    match (written, typed) {
        (Value::Object(written), Value::Object(typed)) => {
            for (key, value) in written {
                let at = format!("{at}.{key}");
                let Some(back) = typed.get(key) else {
                    return Some(at);
                };
                if let Some(d) = first_difference(value, back, at) {
                    return Some(d);
                }
            }
            typed
                .keys()
                .find(|k| !written.contains_key(*k))
                .map(|k| format!("{at}.{k} (added)"))
        }
        (Value::Array(written), Value::Array(typed)) if written.len() == typed.len() => written
            .iter()
            .zip(typed)
            .enumerate()
            .find_map(|(i, (value, back))| first_difference(value, back, format!("{at}[{i}]"))),
        (Value::Number(n), Value::Number(m)) if n.as_f64() == m.as_f64() => None,
        _ if written == typed => None,
        _ => Some(at),
    }
}

/// Every document of every YAML file in deploy/ except the kustomization.
fn manifests() -> Vec<(String, Manifest)> {
    let mut out = Vec::new();
    for file in yaml_files() {
        if file == "kustomization.yaml" {
            continue;
        }
        let text = std::fs::read_to_string(deploy_dir().join(&file)).unwrap();
        for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let value: Value = serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("{file} document {i}: not YAML: {e}"));
            if value.is_null() {
                continue;
            }
            let api_version = value["apiVersion"].as_str().unwrap_or_default();
            let kind = value["kind"].as_str().unwrap_or_default();
            let at = format!(
                "{file}: {kind} {}",
                value["metadata"]["name"].as_str().unwrap_or("?")
            );
            let m = match (api_version, kind) {
                ("apps/v1", "DaemonSet") => Manifest::DaemonSet(Box::new(typed(&value, &at))),
                ("apps/v1", "Deployment") => Manifest::Deployment(Box::new(typed(&value, &at))),
                ("v1", "Service") => Manifest::Service(Box::new(typed(&value, &at))),
                ("v1", "ServiceAccount") => Manifest::ServiceAccount(typed(&value, &at)),
                ("v1", "Namespace") => Manifest::Namespace(typed(&value, &at)),
                ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                    Manifest::ClusterRole(typed(&value, &at))
                }
                ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                    Manifest::ClusterRoleBinding(typed(&value, &at))
                }
                ("rbac.authorization.k8s.io/v1", "Role") => Manifest::Role(typed(&value, &at)),
                ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
                    Manifest::RoleBinding(typed(&value, &at))
                }
                ("networking.k8s.io/v1", "IngressClass") => {
                    Manifest::IngressClass(typed(&value, &at))
                }
                _ => panic!("{at}: unknown kind {api_version}/{kind} in deploy/"),
            };
            out.push((at, m));
        }
    }
    assert!(!out.is_empty(), "no manifests in deploy/");
    out
}

fn yaml_files() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(deploy_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| {
            Path::new(n)
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"))
        })
        .collect();
    files.sort();
    files
}

struct Parsed {
    all: Vec<(String, Manifest)>,
}

/// Whether a binding's `subjects` include ServiceAccount `namespace/name`.
fn names_account(subjects: Option<&[Subject]>, namespace: &str, name: &str) -> bool {
    subjects.into_iter().flatten().any(|s| {
        s.kind == "ServiceAccount" && s.name == name && s.namespace.as_deref() == Some(namespace)
    })
}

impl Parsed {
    fn load() -> Parsed {
        Parsed { all: manifests() }
    }

    fn daemonset(&self, name: &str) -> &DaemonSet {
        self.all
            .iter()
            .find_map(|(_, m)| match m {
                Manifest::DaemonSet(d) if d.metadata.name.as_deref() == Some(name) => Some(&**d),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no DaemonSet {name}"))
    }

    fn deployment(&self, name: &str) -> &Deployment {
        self.all
            .iter()
            .find_map(|(_, m)| match m {
                Manifest::Deployment(d) if d.metadata.name.as_deref() == Some(name) => Some(&**d),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no Deployment {name}"))
    }

    fn cluster_role(&self, name: &str) -> &ClusterRole {
        self.all
            .iter()
            .find_map(|(_, m)| match m {
                Manifest::ClusterRole(r) if r.metadata.name.as_deref() == Some(name) => Some(r),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no ClusterRole {name}"))
    }

    /// The Roles bound to a ServiceAccount in its own namespace.
    fn namespaced_roles_of(&self, namespace: &str, service_account: &str) -> Vec<&Role> {
        let bindings = self.all.iter().filter_map(|(_, m)| match m {
            Manifest::RoleBinding(b) if b.metadata.namespace.as_deref() == Some(namespace) => {
                Some(b)
            }
            _ => None,
        });
        bindings
            .filter(|b| names_account(b.subjects.as_deref(), namespace, service_account))
            .map(|b| {
                assert_eq!(b.role_ref.kind, "Role");
                self.all
                    .iter()
                    .find_map(|(_, m)| match m {
                        Manifest::Role(r)
                            if r.metadata.name.as_deref() == Some(&b.role_ref.name)
                                && r.metadata.namespace.as_deref() == Some(namespace) =>
                        {
                            Some(r)
                        }
                        _ => None,
                    })
                    .unwrap_or_else(|| panic!("no Role {namespace}/{}", b.role_ref.name))
            })
            .collect()
    }

    /// The ClusterRoles bound to a ServiceAccount.
    fn roles_of(&self, namespace: &str, service_account: &str) -> Vec<&ClusterRole> {
        let sa_exists = self.all.iter().any(|(_, m)| {
            matches!(m, Manifest::ServiceAccount(sa)
                if sa.metadata.name.as_deref() == Some(service_account)
                    && sa.metadata.namespace.as_deref() == Some(namespace))
        });
        assert!(sa_exists, "no ServiceAccount {namespace}/{service_account}");
        self.all
            .iter()
            .filter_map(|(_, m)| match m {
                Manifest::ClusterRoleBinding(b) => Some(b),
                _ => None,
            })
            .filter(|b| names_account(b.subjects.as_deref(), namespace, service_account))
            .map(|b| {
                assert_eq!(b.role_ref.kind, "ClusterRole");
                self.cluster_role(&b.role_ref.name)
            })
            .collect()
    }
}

/// (apiGroup, resource) of a kind the sources watch, from k8s-openapi. Exhaustive, so a
/// new Kind needs its resource named here.
fn resource_of(kind: Kind) -> (&'static str, &'static str) {
    fn of<R: Resource>() -> (&'static str, &'static str) {
        (R::GROUP, R::URL_PATH_SEGMENT)
    }
    let (group, resource) = match kind {
        Kind::Service => of::<Service>(),
        Kind::EndpointSlice => of::<EndpointSlice>(),
        Kind::Node => of::<Node>(),
        Kind::Ingress => of::<Ingress>(),
        Kind::IngressClass => of::<IngressClass>(),
        Kind::Secret => of::<Secret>(),
        Kind::ConfigMap => of::<ConfigMap>(),
    };
    let api_version = kind.type_meta().0;
    let expected_group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    assert_eq!(group, expected_group, "{kind}: group");
    (group, resource)
}

type Grant = (String, String, String);

/// Every (apiGroup, resource, verb) a role grants. Wildcards, resourceNames and
/// nonResourceURLs are refused outright.
fn grants(role: &ClusterRole) -> BTreeSet<Grant> {
    let name = role.metadata.name.as_deref().unwrap_or("?");
    assert!(
        role.aggregation_rule.is_none(),
        "{name}: aggregated roles grant what others add"
    );
    rule_grants(name, role.rules.as_deref())
}

/// What `rules` (of role `name`) grant, each once and without wildcards.
fn rule_grants(name: &str, rules: Option<&[PolicyRule]>) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for rule in rules.into_iter().flatten() {
        assert!(
            rule.resource_names.is_none() && rule.non_resource_urls.is_none(),
            "{name}: {rule:?}"
        );
        for g in rule.api_groups.iter().flatten() {
            for r in rule.resources.iter().flatten() {
                for v in &rule.verbs {
                    assert!(
                        ![g, r, v].iter().any(|s| s.contains('*')),
                        "{name}: wildcard in {rule:?}"
                    );
                    assert!(
                        out.insert((g.clone(), r.clone(), v.clone())),
                        "{name}: {g}/{r} {v} granted twice"
                    );
                }
            }
        }
    }
    out
}

fn read_only(kinds: &[Kind]) -> BTreeSet<Grant> {
    kinds
        .iter()
        .flat_map(|k| {
            let (g, r) = resource_of(*k);
            ["get", "list", "watch"].map(|v| (g.to_owned(), r.to_owned(), v.to_owned()))
        })
        .collect()
}

fn container<'a>(spec: &'a PodSpec, name: &str) -> &'a Container {
    spec.containers
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// The container's args with `$(VAR)` replaced by a value, as the kubelet would.
fn args_with(c: &Container, vars: &[(&str, &str)]) -> Vec<String> {
    c.args
        .iter()
        .flatten()
        .map(|a| {
            vars.iter()
                .fold(a.clone(), |a, (k, v)| a.replace(&format!("$({k})"), v))
        })
        .collect()
}

fn probe_http(p: Option<&k8s_openapi::api::core::v1::Probe>) -> (String, i32) {
    let get = p
        .and_then(|p| p.http_get.as_ref())
        .expect("an httpGet probe");
    let port = match &get.port {
        IntOrString::Int(p) => *p,
        IntOrString::String(s) => {
            panic!("probe port {s}: give the number, it must match --health-addr")
        }
    };
    (get.path.clone().unwrap_or_default(), port)
}

#[test]
fn every_manifest_parses_and_the_kustomization_lists_them_all() {
    let all = manifests();
    let kustomization: serde_yaml::Value = serde_yaml::from_str(
        &std::fs::read_to_string(deploy_dir().join("kustomization.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(kustomization["kind"].as_str(), Some("Kustomization"));
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_sequence()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().unwrap().to_owned())
        .collect();
    let files: BTreeSet<String> = yaml_files()
        .into_iter()
        .filter(|f| f != "kustomization.yaml")
        .collect();
    assert_eq!(listed, files, "kustomization resources vs files in deploy/");
    // Namespaced objects live in kube-system or in a Namespace deploy/ creates.
    let mut namespaces: BTreeSet<&str> = all
        .iter()
        .filter_map(|(_, m)| match m {
            Manifest::Namespace(n) => n.metadata.name.as_deref(),
            _ => None,
        })
        .collect();
    namespaces.insert("kube-system");
    for (at, m) in &all {
        let ns = match m {
            Manifest::DaemonSet(d) => d.metadata.namespace.as_deref(),
            Manifest::Deployment(d) => d.metadata.namespace.as_deref(),
            Manifest::Service(s) => s.metadata.namespace.as_deref(),
            Manifest::ServiceAccount(s) => s.metadata.namespace.as_deref(),
            _ => continue,
        };
        let ns = ns.unwrap_or_else(|| panic!("{at}: no namespace"));
        assert!(
            namespaces.contains(ns),
            "{at}: namespace {ns} is not created"
        );
    }
    // Each image the workloads use is set by the kustomization (or pinned).
    let images: BTreeSet<&str> = kustomization["images"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|i| i["name"].as_str())
        .collect();
    for (at, m) in &all {
        let spec = match m {
            Manifest::DaemonSet(d) => d.spec.template.spec.as_ref(),
            Manifest::Deployment(d) => d.spec.template.spec.as_ref(),
            _ => continue,
        };
        let spec = spec.unwrap_or_else(|| panic!("{at}: no pod spec"));
        for c in spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
        {
            let image = c.image.as_deref().unwrap_or_default();
            assert!(
                images.contains(image) || image.contains(':'),
                "{at}: container {} image {image:?} is neither set by the kustomization nor pinned",
                c.name
            );
        }
    }
}

#[test]
fn the_agent_daemonset_runs_one_capable_unprivileged_agent_per_node() {
    let parsed = Parsed::load();
    let ds = parsed.daemonset("lb-agent");
    let namespace = ds.metadata.namespace.as_deref().unwrap();
    let spec = &ds.spec;
    let pod = spec.template.spec.as_ref().unwrap();

    // One agent per node during a rollout.
    let strategy = spec.update_strategy.as_ref().unwrap();
    assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
    let rolling = strategy.rolling_update.as_ref().unwrap();
    assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(1)));
    assert_eq!(rolling.max_surge, Some(IntOrString::Int(0)));

    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert!(
        pod.tolerations
            .iter()
            .flatten()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "tolerates every taint"
    );

    // The agent: not privileged, exactly the capabilities it needs.
    let agent = container(pod, "lb-agent");
    let sc = agent.security_context.as_ref().unwrap();
    assert_eq!(sc.privileged, Some(false));
    let caps = sc.capabilities.as_ref().unwrap();
    let added: BTreeSet<&str> = caps.add.iter().flatten().map(String::as_str).collect();
    assert_eq!(
        added,
        BTreeSet::from(["BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN", "SYS_RESOURCE"])
    );
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_owned()][..]));

    // NODE_NAME from the downward API.
    let node_name = agent
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_NAME")
        .expect("NODE_NAME");
    let field = node_name
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .expect("NODE_NAME from a fieldRef");
    assert_eq!(field.field_path, "spec.nodeName");

    // The arguments parse with the agent's own command line.
    let mut argv = vec!["lb-agent".to_owned()];
    argv.extend(args_with(agent, &[("NODE_NAME", "node-7")]));
    let cli = lb_agent::cli::Cli::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("DaemonSet args {argv:?}: {e}"));
    let lb_agent::cli::Command::Run(run) = cli.command else {
        panic!("the DaemonSet does not run `lb-agent run`");
    };
    assert!(run.in_cluster && run.manifests.is_none() && run.kubeconfig.is_none());
    assert_eq!(run.node_name, "node-7");
    assert!(!run.external_iface.is_empty());

    // Probes reach the health server: on hostNetwork the kubelet connects to the node's
    // address, so it must listen on all addresses, on the probed port.
    let health: SocketAddr = run.health_addr;
    assert!(health.ip().is_unspecified(), "--health-addr {health}");
    assert_eq!(
        probe_http(agent.readiness_probe.as_ref()),
        ("/readyz".to_owned(), i32::from(health.port()))
    );
    assert_eq!(
        probe_http(agent.liveness_probe.as_ref()),
        ("/healthz".to_owned(), i32::from(health.port()))
    );

    // Host paths: the bpffs (pins outlive the container) and the cgroup v2 root.
    let host_paths: BTreeMap<&str, &str> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| Some((v.name.as_str(), v.host_path.as_ref()?.path.as_str())))
        .collect();
    let mount_of = |c: &Container, host: &str| {
        c.volume_mounts
            .iter()
            .flatten()
            .find(|m| host_paths.get(m.name.as_str()) == Some(&host))
            .cloned()
    };
    let bpffs = mount_of(agent, "/sys/fs/bpf").expect("the agent mounts the host's /sys/fs/bpf");
    assert!(
        run.bpffs.starts_with(&bpffs.mount_path),
        "--bpffs {} is not on the host's bpffs ({})",
        run.bpffs.display(),
        bpffs.mount_path
    );
    let cgroup = mount_of(agent, "/sys/fs/cgroup").expect("the agent mounts the host's cgroup2");
    assert_eq!(run.cgroup.as_deref(), Some(cgroup.mount_path.as_str()));
    // The bpffs is mounted with Bidirectional propagation so a mount made in the pod
    // reaches the host; Kubernetes allows that only in privileged containers, which is
    // why it is done by an init container and the agent only receives it.
    let all_containers: Vec<&Container> = pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
        .collect();
    assert!(
        all_containers.iter().any(|c| mount_of(c, "/sys/fs/bpf")
            .is_some_and(|m| m.mount_propagation.as_deref() == Some("Bidirectional"))),
        "the bpffs is mounted Bidirectional somewhere"
    );
    for c in &all_containers {
        for m in c.volume_mounts.iter().flatten() {
            if m.mount_propagation.as_deref() == Some("Bidirectional") {
                let privileged = c.security_context.as_ref().and_then(|s| s.privileged);
                assert_eq!(
                    privileged,
                    Some(true),
                    "{}: the API server refuses Bidirectional in unprivileged containers",
                    c.name
                );
                assert!(
                    pod.init_containers
                        .iter()
                        .flatten()
                        .any(|i| i.name == c.name),
                    "{}: only a short-lived init container may be privileged",
                    c.name
                );
            }
        }
    }

    // Its ServiceAccount is bound to the agent's role.
    let sa = pod.service_account_name.as_deref().unwrap();
    let roles = parsed.roles_of(namespace, sa);
    assert_eq!(roles.len(), 1);
    assert_eq!(roles[0].metadata.name.as_deref(), Some("lb-agent"));
}

#[test]
fn the_agent_role_grants_exactly_read_access_to_what_the_agent_watches() {
    let parsed = Parsed::load();
    let role = parsed.cluster_role("lb-agent");
    assert_eq!(grants(role), read_only(&lb_agent::reconcile::KINDS));
}

#[test]
fn the_ingress_role_grants_what_the_ingress_watches_and_its_status() {
    let parsed = Parsed::load();
    let deployment = parsed.deployment("lb-ingress");
    let pod = deployment.spec.template.spec.as_ref().unwrap();
    let sa = pod.service_account_name.as_deref().unwrap();
    let namespace = deployment.metadata.namespace.as_deref().unwrap();
    let roles = parsed.roles_of(namespace, sa);
    assert_eq!(roles.len(), 1);
    let mut expected = read_only(&lb_ingress::source::KINDS);
    let (group, ingresses) = resource_of(Kind::Ingress);
    // The status address is written with a merge patch (lb_ingress::status).
    for verb in ["update", "patch"] {
        expected.insert((
            group.to_owned(),
            format!("{ingresses}/status"),
            verb.to_owned(),
        ));
    }
    assert_eq!(grants(roles[0]), expected);
    // In its namespace, reading its own Pods (the status cleared by the last replica),
    // which its Deployment tells it the name of.
    let own = parsed.namespaced_roles_of(namespace, sa);
    assert_eq!(own.len(), 1);
    let pods = ["get", "list"].map(|v| (String::new(), "pods".to_owned(), v.to_owned()));
    assert_eq!(
        rule_grants("lb-ingress", own[0].rules.as_deref()),
        BTreeSet::from(pods)
    );
    let c = container(pod, "lb-ingress");
    for (var, field) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        let env = (c.env.iter().flatten()).find(|e| e.name == var);
        let from = env.and_then(|e| e.value_from.as_ref()?.field_ref.as_ref());
        assert_eq!(from.map(|f| f.field_path.as_str()), Some(field), "{var}");
    }
}

#[test]
fn the_ingress_serves_its_class_behind_a_load_balancer() {
    let parsed = Parsed::load();
    let deployment = parsed.deployment("lb-ingress");
    let pod = deployment.spec.template.spec.as_ref().unwrap();
    let c = container(pod, "lb-ingress");
    let mut argv = vec!["lb-ingress".to_owned()];
    argv.extend(args_with(c, &[]));
    let cli = lb_ingress::cli::Cli::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("Deployment args {argv:?}: {e}"));
    let lb_ingress::cli::Command::Run(run) = cli.command else {
        panic!("the Deployment runs `lb-ingress run`: {argv:?}");
    };
    assert!(run.source.in_cluster);

    // The IngressClass it serves exists and names a controller.
    let class = parsed
        .all
        .iter()
        .find_map(|(_, m)| match m {
            Manifest::IngressClass(ic)
                if ic.metadata.name.as_deref() == Some(&run.scope.ingress_class) =>
            {
                Some(ic)
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no IngressClass {}", run.scope.ingress_class));
    assert!(
        class
            .spec
            .as_ref()
            .and_then(|s| s.controller.as_deref())
            .is_some_and(|c| c.contains('/')),
        "the controller is a domain-prefixed name"
    );
    // ... and is the one the proxy answers to, so that other classes created for it are
    // served too.
    assert_eq!(
        class.spec.as_ref().and_then(|s| s.controller.as_deref()),
        Some(run.scope.controller_name.as_str())
    );

    // The LoadBalancer Service selects the pods and targets the listeners.
    let labels = pod_labels(deployment);
    let svc = parsed
        .all
        .iter()
        .find_map(|(_, m)| match m {
            Manifest::Service(s) if s.metadata.namespace == deployment.metadata.namespace => {
                Some(s)
            }
            _ => None,
        })
        .expect("a Service for the ingress");
    let spec = svc.spec.as_ref().unwrap();
    assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
    let selector = spec.selector.as_ref().expect("a selector");
    assert!(selector.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let container_ports: BTreeMap<String, i32> = c
        .ports
        .iter()
        .flatten()
        .filter_map(|p| Some((p.name.clone()?, p.container_port)))
        .collect();
    let mut listened = vec![run.listen.port()];
    listened.extend(run.listen_tls.map(|a| a.port()));
    for p in spec.ports.iter().flatten() {
        let target = match p.target_port.as_ref().expect("targetPort") {
            IntOrString::Int(n) => *n,
            IntOrString::String(name) => *container_ports
                .get(name)
                .unwrap_or_else(|| panic!("no container port named {name}")),
        };
        assert!(
            listened.iter().any(|l| i32::from(*l) == target),
            "Service port {} targets {target}, where nothing listens ({listened:?})",
            p.port
        );
    }
}

fn pod_labels(d: &Deployment) -> BTreeMap<String, String> {
    d.spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
}
