//! The consumer side: folds events into the current set of objects and says which
//! objects changed, so that work is proportional to the change.
use std::collections::{BTreeMap, BTreeSet};

use crate::object::{Kind, Object, ObjectError, ObjectRef};
use crate::source::Event;

/// What one event changed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Changes {
    /// Objects added, modified or deleted (deleted ones are no longer in the store).
    pub changed: BTreeSet<ObjectRef>,
    /// Objects that could not be parsed, reported by the source with this event.
    pub errors: Vec<ObjectError>,
    /// Kinds that have now had a complete listing (set on `Resync`).
    pub synced: Vec<Kind>,
}

/// All objects currently known, by kind, namespace and name.
///
/// A consumer that reads only a few fields of an object keeps its own smaller form of it
/// (`T: From<Object>`): the store converts each object as it arrives, so the parsed
/// object is dropped at once and only what the consumer reads stays in memory.
#[derive(Clone, Debug)]
pub struct Store<T = Object> {
    objects: BTreeMap<ObjectRef, T>,
    origins: BTreeMap<ObjectRef, String>,
    synced: BTreeSet<Kind>,
}

impl<T> Default for Store<T> {
    fn default() -> Self {
        Store {
            objects: BTreeMap::new(),
            origins: BTreeMap::new(),
            synced: BTreeSet::new(),
        }
    }
}

impl Store {
    /// A store of whole objects (`Store::<T>::default()` for a consumer's own form).
    pub fn new() -> Self {
        Store::default()
    }
}

impl<T: From<Object> + PartialEq> Store<T> {
    /// Applies one event and returns what changed. An `Apply` of an identical object
    /// changes nothing.
    pub fn apply(&mut self, event: Event) -> Changes {
        let mut changes = Changes::default();
        match event {
            Event::Apply(object) => {
                let r = object.object_ref();
                let object = T::from(object);
                if self.objects.get(&r) != Some(&object) {
                    self.objects.insert(r.clone(), object);
                    changes.changed.insert(r);
                }
            }
            Event::Delete(r) => {
                self.origins.remove(&r);
                if self.objects.remove(&r).is_some() {
                    changes.changed.insert(r);
                }
            }
            Event::Resync {
                kinds,
                objects,
                errors,
            } => {
                let mut listed = BTreeSet::new();
                for (object, origin) in objects {
                    let r = object.object_ref();
                    if !kinds.contains(&r.kind) {
                        continue;
                    }
                    let object = T::from(object);
                    listed.insert(r.clone());
                    match origin {
                        Some(o) => self.origins.insert(r.clone(), o),
                        None => self.origins.remove(&r),
                    };
                    if self.objects.get(&r) != Some(&object) {
                        self.objects.insert(r.clone(), object);
                        changes.changed.insert(r);
                    }
                }
                // After a complete listing, what was not listed is gone (kube-runtime's
                // InitDone rule).
                let gone: Vec<ObjectRef> = self
                    .objects
                    .keys()
                    .filter(|r| kinds.contains(&r.kind) && !listed.contains(*r))
                    .cloned()
                    .collect();
                for r in gone {
                    self.objects.remove(&r);
                    self.origins.remove(&r);
                    changes.changed.insert(r);
                }
                self.synced.extend(kinds.iter().copied());
                changes.synced = kinds;
                changes.errors = errors;
            }
        }
        changes
    }

    pub fn get(&self, r: &ObjectRef) -> Option<&T> {
        self.objects.get(r)
    }

    /// Where the object was read from (manifest file), when known.
    pub fn origin(&self, r: &ObjectRef) -> Option<&str> {
        self.origins.get(r).map(String::as_str)
    }

    /// True once every kind in `kinds` has had a complete listing.
    pub fn is_synced(&self, kinds: &[Kind]) -> bool {
        kinds.iter().all(|k| self.synced.contains(k))
    }

    /// All objects of one kind, in namespace/name order.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &T> {
        self.entries_of_kind(kind).map(|(_, o)| o)
    }

    /// The names of all objects of one kind, in namespace/name order.
    pub fn refs_of_kind(&self, kind: Kind) -> impl Iterator<Item = &ObjectRef> {
        self.entries_of_kind(kind).map(|(r, _)| r)
    }

    fn entries_of_kind(&self, kind: Kind) -> impl Iterator<Item = (&ObjectRef, &T)> {
        let start = ObjectRef::new(kind, String::new(), String::new());
        self.objects
            .range(start..)
            .take_while(move |(r, _)| r.kind == kind)
    }

    pub fn len(&self) -> usize {
        self.objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn svc(name: &str, port: i32) -> Object {
        Object::Service(Box::new(Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::core::v1::ServiceSpec {
                ports: Some(vec![k8s_openapi::api::core::v1::ServicePort {
                    port,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    fn resync(objects: Vec<Object>) -> Event {
        Event::Resync {
            kinds: vec![Kind::Service],
            objects: objects.into_iter().map(|o| (o, None)).collect(),
            errors: vec![],
        }
    }

    #[test]
    fn resync_removes_what_was_not_listed_and_reports_only_changes() {
        let mut store = Store::new();
        let c = store.apply(resync(vec![svc("a", 80), svc("b", 80)]));
        assert_eq!(c.changed.len(), 2);
        assert!(store.is_synced(&[Kind::Service]));
        let c = store.apply(resync(vec![svc("a", 80), svc("c", 80)]));
        let names: Vec<_> = c.changed.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["b", "c"]);
        assert_eq!(store.of_kind(Kind::Service).count(), 2);
    }

    #[test]
    fn identical_apply_is_not_a_change() {
        let mut store = Store::new();
        assert_eq!(store.apply(Event::Apply(svc("a", 80))).changed.len(), 1);
        assert!(store.apply(Event::Apply(svc("a", 80))).changed.is_empty());
        assert_eq!(store.apply(Event::Apply(svc("a", 81))).changed.len(), 1);
        let r = ObjectRef::new(Kind::Service, "default", "a");
        assert_eq!(store.apply(Event::Delete(r.clone())).changed.len(), 1);
        assert!(store.get(&r).is_none());
    }
}
