//! State that outlives configuration swaps: a new configuration asks for it by key and
//! gets what the previous one held (endpoint counts and pools, rate-limit buckets), and it
//! is forgotten once no configuration refers to it.
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// Values by key, held weakly: the configurations hold them strongly.
#[derive(Debug)]
pub struct SharedMap<K, V>(Mutex<HashMap<K, Weak<V>>>);

impl<K, V> Default for SharedMap<K, V> {
    fn default() -> Self {
        SharedMap(Mutex::new(HashMap::new()))
    }
}

impl<K: Eq + Hash, V> SharedMap<K, V> {
    fn lock(&self) -> MutexGuard<'_, HashMap<K, Weak<V>>> {
        self.0.lock().expect("shared map poisoned")
    }

    /// The value for `key` some configuration still holds, or a new one from `make`.
    pub fn get_or_insert_with(&self, key: K, make: impl FnOnce() -> V) -> Arc<V> {
        let mut map = self.lock();
        if let Some(v) = map.get(&key).and_then(Weak::upgrade) {
            return v;
        }
        let v = Arc::new(make());
        map.insert(key, Arc::downgrade(&v));
        v
    }

    /// Forgets the values no configuration holds any more.
    pub fn prune(&self) {
        self.lock().retain(|_, w| w.strong_count() > 0);
    }

    /// The values some configuration still holds.
    pub fn live(&self) -> Vec<Arc<V>> {
        self.lock().values().filter_map(Weak::upgrade).collect()
    }

    /// Entries, live or not yet pruned.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
