//! The Kubernetes kinds the daemons read, as one enum of k8s-openapi types, and how to
//! parse them from YAML or JSON documents.
use std::fmt;

use k8s_openapi::api::core::v1::{ConfigMap, Node, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use serde::de::DeserializeOwned;

/// The kinds a source can deliver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Service,
    EndpointSlice,
    Node,
    Ingress,
    IngressClass,
    Secret,
    ConfigMap,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Node,
        Kind::Ingress,
        Kind::IngressClass,
        Kind::Secret,
        Kind::ConfigMap,
    ];

    /// `(apiVersion, kind)` as written in manifests.
    pub const fn type_meta(self) -> (&'static str, &'static str) {
        match self {
            Kind::Service => ("v1", "Service"),
            Kind::EndpointSlice => ("discovery.k8s.io/v1", "EndpointSlice"),
            Kind::Node => ("v1", "Node"),
            Kind::Ingress => ("networking.k8s.io/v1", "Ingress"),
            Kind::IngressClass => ("networking.k8s.io/v1", "IngressClass"),
            Kind::Secret => ("v1", "Secret"),
            Kind::ConfigMap => ("v1", "ConfigMap"),
        }
    }

    pub fn from_type_meta(api_version: &str, kind: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.type_meta() == (api_version, kind))
    }

    pub const fn namespaced(self) -> bool {
        !matches!(self, Kind::Node | Kind::IngressClass)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.type_meta().1)
    }
}

/// A set of kinds a consumer wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct KindSet(u8);

impl KindSet {
    pub const fn of(kinds: &[Kind]) -> KindSet {
        let mut bits = 0;
        let mut i = 0;
        while i < kinds.len() {
            bits |= 1 << kinds[i] as u8;
            i += 1;
        }
        KindSet(bits)
    }
    pub const fn contains(self, k: Kind) -> bool {
        self.0 & (1 << k as u8) != 0
    }
    pub fn iter(self) -> impl Iterator<Item = Kind> {
        Kind::ALL.into_iter().filter(move |k| self.contains(*k))
    }
}

/// Identity of an object: kind, namespace (empty for cluster-scoped kinds) and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl ObjectRef {
    pub fn new(kind: Kind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectRef {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// One object of a known kind. Boxed, so that the enum is two words whatever the kind: a
/// store of 100k small objects would otherwise pay for the largest kind (Node, 1.5 KiB)
/// in every slot.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    Node(Box<Node>),
    Ingress(Box<Ingress>),
    IngressClass(Box<IngressClass>),
    Secret(Box<Secret>),
    ConfigMap(Box<ConfigMap>),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::Node(_) => Kind::Node,
            Object::Ingress(_) => Kind::Ingress,
            Object::IngressClass(_) => Kind::IngressClass,
            Object::Secret(_) => Kind::Secret,
            Object::ConfigMap(_) => Kind::ConfigMap,
        }
    }

    pub fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        match self {
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
            Object::Ingress(o) => &o.metadata,
            Object::IngressClass(o) => &o.metadata,
            Object::Secret(o) => &o.metadata,
            Object::ConfigMap(o) => &o.metadata,
        }
    }

    /// The object's identity. Namespaced kinds without a namespace get "default", as
    /// `kubectl apply` would give them.
    pub fn object_ref(&self) -> ObjectRef {
        let kind = self.kind();
        let meta = self.meta();
        let namespace = if kind.namespaced() {
            meta.namespace
                .clone()
                .unwrap_or_else(|| "default".to_owned())
        } else {
            String::new()
        };
        ObjectRef::new(kind, namespace, meta.name.clone().unwrap_or_default())
    }

    /// Parses one document already read as JSON. `Ok(None)` for kinds nobody here reads
    /// (Deployments and the like sit in the same manifests and are not errors).
    pub fn from_value(value: serde_json::Value) -> Result<Option<Object>, ObjectError> {
        fn parse<T: DeserializeOwned>(
            v: serde_json::Value,
            at: &ObjectRef,
        ) -> Result<T, ObjectError> {
            serde_json::from_value(v).map_err(|e| ObjectError::new(None, at.clone(), e.to_string()))
        }
        let api_version = value
            .get("apiVersion")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned();
        let kind_name = value
            .get("kind")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned();
        let Some(kind) = Kind::from_type_meta(&api_version, &kind_name) else {
            return Ok(None);
        };
        let meta = value.get("metadata");
        let name = meta
            .and_then(|m| m.get("name"))
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned();
        let namespace = meta
            .and_then(|m| m.get("namespace"))
            .and_then(|v| v.as_str())
            .map_or_else(
                || {
                    if kind.namespaced() {
                        "default".to_owned()
                    } else {
                        String::new()
                    }
                },
                str::to_owned,
            );
        let at = ObjectRef::new(kind, namespace, name.clone());
        if name.is_empty() {
            return Err(ObjectError::new(None, at, "metadata.name is missing"));
        }
        let object = match kind {
            Kind::Service => Object::Service(parse(value, &at)?),
            Kind::EndpointSlice => Object::EndpointSlice(parse(value, &at)?),
            Kind::Node => Object::Node(parse(value, &at)?),
            Kind::Ingress => Object::Ingress(parse(value, &at)?),
            Kind::IngressClass => Object::IngressClass(parse(value, &at)?),
            Kind::Secret => Object::Secret(parse(value, &at)?),
            Kind::ConfigMap => Object::ConfigMap(parse(value, &at)?),
        };
        Ok(Some(object))
    }
}

/// An object that could not be used, with where it came from and why. Reported once,
/// counted, and skipped: the rest still applies.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {reason}",
    origin.as_ref().map(|o| format!("{o}: ")).unwrap_or_default(),
    object.as_ref().map_or_else(|| "document".to_owned(), ToString::to_string))]
pub struct ObjectError {
    /// File (and document index) for manifests; None for the API server.
    pub origin: Option<String>,
    /// The object, when the document got far enough to name it.
    pub object: Option<ObjectRef>,
    pub reason: String,
}

impl ObjectError {
    pub fn new(origin: Option<String>, object: ObjectRef, reason: impl Into<String>) -> Self {
        ObjectError {
            origin,
            object: Some(object),
            reason: reason.into(),
        }
    }

    /// An error in a document that could not be read far enough to name its object.
    pub fn document(origin: String, reason: impl Into<String>) -> Self {
        ObjectError {
            origin: Some(origin),
            object: None,
            reason: reason.into(),
        }
    }
}
