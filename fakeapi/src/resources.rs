//! The resource types the fake server knows, and how request paths map onto them
//! (`/api/v1/namespaces/{ns}/services`, `/apis/{group}/{version}/{plural}/{name}`, ...).

/// One kind the server serves, with what its REST path is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceType {
    /// API group; empty for the core group (`/api/v1`).
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    /// The lower-case plural used in paths.
    pub plural: &'static str,
    pub namespaced: bool,
}

impl ResourceType {
    const fn new(
        group: &'static str,
        version: &'static str,
        kind: &'static str,
        plural: &'static str,
        namespaced: bool,
    ) -> Self {
        ResourceType {
            group,
            version,
            kind,
            plural,
            namespaced,
        }
    }

    /// `apiVersion` as written in objects: `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The kind of this type's list objects (`ServiceList`).
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }
}

/// The kinds served. Kinds are unique across groups here, so tests can name a kind alone.
pub const RESOURCES: &[ResourceType] = &[
    ResourceType::new("", "v1", "Service", "services", true),
    ResourceType::new("", "v1", "Endpoints", "endpoints", true),
    ResourceType::new("", "v1", "Node", "nodes", false),
    ResourceType::new("", "v1", "Secret", "secrets", true),
    ResourceType::new("", "v1", "ConfigMap", "configmaps", true),
    ResourceType::new("", "v1", "Pod", "pods", true),
    ResourceType::new("", "v1", "Namespace", "namespaces", false),
    ResourceType::new(
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
        true,
    ),
    ResourceType::new("networking.k8s.io", "v1", "Ingress", "ingresses", true),
    ResourceType::new(
        "networking.k8s.io",
        "v1",
        "IngressClass",
        "ingressclasses",
        false,
    ),
];

/// The type of an object with this `apiVersion` and `kind`.
pub fn by_type_meta(api_version: &str, kind: &str) -> Option<ResourceType> {
    RESOURCES
        .iter()
        .find(|r| r.kind == kind && r.api_version() == api_version)
        .copied()
}

/// The type with this kind name.
pub fn by_kind(kind: &str) -> Option<ResourceType> {
    RESOURCES.iter().find(|r| r.kind == kind).copied()
}

/// What a request path names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub resource: ResourceType,
    /// The namespace the request is limited to (`/namespaces/{ns}/...`), if any.
    pub namespace: Option<String>,
    /// A single object (`.../{plural}/{name}`), if named.
    pub name: Option<String>,
    /// A subresource of the named object (`.../{plural}/{name}/status`); only `status`
    /// is known.
    pub subresource: Option<String>,
}

/// Parses a request path; `None` when it names nothing the server knows.
pub fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, plural, name, subresource) = match rest {
        ["namespaces", ns, plural] => (Some(*ns), *plural, None, None),
        ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name), None),
        ["namespaces", ns, plural, name, "status"] => {
            (Some(*ns), *plural, Some(*name), Some("status"))
        }
        [plural] => (None, *plural, None, None),
        [plural, name] => (None, *plural, Some(*name), None),
        [plural, name, "status"] => (None, *plural, Some(*name), Some("status")),
        _ => return None,
    };
    let resource = RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
        .copied()?;
    if namespace.is_some() && !resource.namespaced {
        return None;
    }
    Some(Target {
        resource,
        namespace: namespace.map(str::to_owned),
        name: name.map(str::to_owned),
        subresource: subresource.map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_resource() {
        let t = parse_path("/api/v1/services").unwrap();
        assert_eq!(
            (t.resource.kind, t.namespace, t.name),
            ("Service", None, None)
        );
        let t = parse_path("/api/v1/namespaces/default/services/web").unwrap();
        assert_eq!(t.namespace.as_deref(), Some("default"));
        assert_eq!(t.name.as_deref(), Some("web"));
        let t = parse_path("/apis/discovery.k8s.io/v1/endpointslices").unwrap();
        assert_eq!(t.resource.kind, "EndpointSlice");
        let t = parse_path("/api/v1/namespaces").unwrap();
        assert_eq!(t.resource.kind, "Namespace");
        let t = parse_path("/api/v1/namespaces/kube-system").unwrap();
        assert_eq!(t.resource.kind, "Namespace");
        assert_eq!(t.name.as_deref(), Some("kube-system"));
        assert_eq!(t.subresource, None);
        let t =
            parse_path("/apis/networking.k8s.io/v1/namespaces/web/ingresses/site/status").unwrap();
        assert_eq!(
            (t.resource.kind, t.namespace.as_deref(), t.name.as_deref()),
            ("Ingress", Some("web"), Some("site"))
        );
        assert_eq!(t.subresource.as_deref(), Some("status"));
        let t = parse_path("/api/v1/nodes/n1/status").unwrap();
        assert_eq!(t.subresource.as_deref(), Some("status"));
        assert!(parse_path("/api/v1/namespaces/default/services/web/scale").is_none());
        assert!(parse_path("/api/v1/namespaces/x/nodes").is_none());
        assert!(parse_path("/apis/networking.k8s.io/v1/services").is_none());
        assert!(parse_path("/version").is_none());
    }

    #[test]
    fn type_meta_lookup() {
        assert_eq!(
            by_type_meta("networking.k8s.io/v1", "IngressClass").map(|r| r.plural),
            Some("ingressclasses")
        );
        assert!(by_type_meta("v1", "Ingress").is_none());
    }
}
