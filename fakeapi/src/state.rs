//! The server's data: current objects, the event history watches are served from (a
//! bounded window, like etcd's compaction), and paginated list snapshots.
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::Value;

use crate::resources::{self, ResourceType};

/// What a watch event says happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, at one resourceVersion.
#[derive(Clone, Debug)]
pub struct Change {
    pub rv: u64,
    pub resource: ResourceType,
    pub namespace: String,
    pub event: EventType,
    /// The object after the change (for a deletion: as it was, with the deletion's
    /// resourceVersion, as the API server sends it).
    pub object: Arc<Value>,
    /// The object before the change, to work out what a watch with a selector sees.
    pub previous: Option<Arc<Value>>,
}

/// Errors of the test-facing API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("object has no apiVersion/kind")]
    NoTypeMeta,
    #[error("the fake API server does not serve {api_version}/{kind}")]
    UnknownKind { api_version: String, kind: String },
    #[error("the fake API server has no kind named {0}")]
    UnknownKindName(String),
    #[error("object has no metadata.name")]
    NoName,
    #[error("{kind} {namespace}/{name} does not exist")]
    NotFound {
        kind: String,
        namespace: String,
        name: String,
    },
    #[error("object does not serialize to JSON: {0}")]
    Serialize(#[from] serde_json::Error),
}

pub type Key = (ResourceType, String, String);

/// A paginated list in progress: the items after the first page, as of `rv`.
#[derive(Debug)]
pub struct Snapshot {
    pub rv: u64,
    pub rest: VecDeque<Arc<Value>>,
}

#[derive(Debug)]
pub struct State {
    /// The last resourceVersion handed out.
    pub rv: u64,
    pub objects: BTreeMap<Key, Arc<Value>>,
    /// Changes with rv in (compacted, rv], oldest first.
    pub history: VecDeque<Change>,
    /// Watches and continue tokens from before this rv answer 410 Gone.
    pub compacted: u64,
    pub history_window: usize,
    pub snapshots: HashMap<String, Snapshot>,
    pub next_token: u64,
    pub next_uid: u64,
    /// Bumped by `close_watches`: streams opened before end.
    pub watch_epoch: u64,
    /// Bumped by `send_bookmarks`: streams that allow bookmarks send one.
    pub bookmark_epoch: u64,
    pub watches_paused: bool,
    pub lists_paused: bool,
    /// Kinds whose lists are held, besides all of them when `lists_paused`.
    pub lists_paused_of: std::collections::HashSet<&'static str>,
    /// Open watch streams per kind.
    pub open_watches: HashMap<&'static str, usize>,
    /// PATCH and PUT answer this HTTP status (a failure) instead of writing.
    pub failing_writes: Option<u16>,
}

impl State {
    pub fn new(history_window: usize) -> Self {
        State {
            // Real clusters never hand out small numbers; starting higher also keeps a
            // watch from "0" (meaning "any") apart from a real resourceVersion.
            rv: 100,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            compacted: 0,
            history_window,
            snapshots: HashMap::new(),
            next_token: 0,
            next_uid: 0,
            watch_epoch: 0,
            bookmark_epoch: 0,
            watches_paused: false,
            lists_paused: false,
            lists_paused_of: std::collections::HashSet::new(),
            open_watches: HashMap::new(),
            failing_writes: None,
        }
    }

    /// Creates or updates an object; returns its resourceVersion. An update that changes
    /// nothing keeps the old resourceVersion and produces no event, as on a real server.
    pub fn apply(&mut self, mut object: Value) -> Result<u64, Error> {
        let (api_version, kind) = match (
            object.get("apiVersion").and_then(Value::as_str),
            object.get("kind").and_then(Value::as_str),
        ) {
            (Some(a), Some(k)) => (a.to_owned(), k.to_owned()),
            _ => return Err(Error::NoTypeMeta),
        };
        let resource = resources::by_type_meta(&api_version, &kind)
            .ok_or(Error::UnknownKind { api_version, kind })?;
        let meta = object
            .as_object_mut()
            .ok_or(Error::NoTypeMeta)?
            .entry("metadata")
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
        let meta = meta.as_object_mut().ok_or(Error::NoName)?;
        let name = meta
            .get("name")
            .and_then(Value::as_str)
            .ok_or(Error::NoName)?
            .to_owned();
        let namespace = if resource.namespaced {
            let ns = meta
                .get("namespace")
                .and_then(Value::as_str)
                .unwrap_or("default")
                .to_owned();
            meta.insert("namespace".into(), Value::String(ns.clone()));
            ns
        } else {
            meta.remove("namespace");
            String::new()
        };
        let key = (resource, namespace.clone(), name);
        let previous = self.objects.get(&key).cloned();
        // Server-owned fields: uid kept across updates, resourceVersion assigned here.
        let uid = previous
            .as_ref()
            .and_then(|p| p.pointer("/metadata/uid").cloned())
            .unwrap_or_else(|| {
                self.next_uid += 1;
                Value::String(format!("00000000-0000-4000-8000-{:012x}", self.next_uid))
            });
        meta.insert("uid".into(), uid);
        meta.remove("resourceVersion");
        if let Some(p) = &previous {
            let mut old = (**p).clone();
            if let Some(m) = old.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("resourceVersion");
            }
            if old == object {
                return Ok(self.rv_of(p));
            }
        }
        self.rv += 1;
        let rv = self.rv;
        set_rv(&mut object, rv);
        let object = Arc::new(object);
        self.objects.insert(key, Arc::clone(&object));
        let event = if previous.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.record(Change {
            rv,
            resource,
            namespace,
            event,
            object,
            previous,
        });
        Ok(rv)
    }

    /// Deletes an object; returns the deletion's resourceVersion.
    pub fn delete(&mut self, kind: &str, namespace: &str, name: &str) -> Result<u64, Error> {
        let resource =
            resources::by_kind(kind).ok_or_else(|| Error::UnknownKindName(kind.to_owned()))?;
        let namespace = if resource.namespaced { namespace } else { "" };
        let key = (resource, namespace.to_owned(), name.to_owned());
        let Some(previous) = self.objects.remove(&key) else {
            return Err(Error::NotFound {
                kind: kind.to_owned(),
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            });
        };
        self.rv += 1;
        let rv = self.rv;
        let mut object = (*previous).clone();
        set_rv(&mut object, rv);
        self.record(Change {
            rv,
            resource,
            namespace: namespace.to_owned(),
            event: EventType::Deleted,
            object: Arc::new(object),
            previous: Some(previous),
        });
        Ok(rv)
    }

    pub fn list_paused(&self, kind: &str) -> bool {
        self.lists_paused || self.lists_paused_of.contains(kind)
    }

    fn rv_of(&self, object: &Value) -> u64 {
        object
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
            .unwrap_or(self.rv)
    }

    fn record(&mut self, change: Change) {
        self.history.push_back(change);
        while self.history.len() > self.history_window {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
    }

    /// Forgets all history: a watch or continue token from before now answers 410 Gone.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
        self.snapshots.clear();
    }

    /// Changes after `rv`, oldest first; `None` when some of them were compacted away.
    pub fn changes_after(&self, rv: u64) -> Option<impl Iterator<Item = &Change>> {
        if rv < self.compacted {
            return None;
        }
        let start = self.history.partition_point(|c| c.rv <= rv);
        Some(self.history.range(start..))
    }
}

fn set_rv(object: &mut Value, rv: u64) {
    if let Some(m) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        m.insert("resourceVersion".into(), Value::String(rv.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(name: &str, port: u16) -> Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": {"ports": [{"port": port}]}})
    }

    #[test]
    fn resource_versions_history_and_compaction() {
        let mut s = State::new(3);
        let a = s.apply(svc("a", 80)).unwrap();
        assert_eq!(
            s.apply(svc("a", 80)).unwrap(),
            a,
            "a no-op update keeps the version"
        );
        let b = s.apply(svc("a", 81)).unwrap();
        assert!(b > a);
        let d = s.delete("Service", "default", "a").unwrap();
        assert_eq!(
            s.changes_after(a)
                .unwrap()
                .map(|c| (c.rv, c.event))
                .collect::<Vec<_>>(),
            [(b, EventType::Modified), (d, EventType::Deleted)]
        );
        s.apply(svc("b", 80)).unwrap();
        // The window holds 3 changes: the creation of "a" is gone.
        assert!(s.changes_after(a - 1).is_none());
        assert!(s.changes_after(a).is_some());
        s.compact();
        assert!(s.changes_after(d).is_none());
        assert_eq!(s.changes_after(s.rv).unwrap().count(), 0);
        assert!(matches!(
            s.delete("Service", "default", "a"),
            Err(Error::NotFound { .. })
        ));
        assert!(matches!(
            s.apply(json!({"apiVersion": "v2", "kind": "Service", "metadata": {"name": "x"}})),
            Err(Error::UnknownKind { .. })
        ));
    }
}
