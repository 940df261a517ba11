//! Values kept in memory within a budget of bytes, the least recently used evicted first, with
//! the metrics an operator watches: the shared core of the query caches (`file_cache`,
//! `parquet_cache`). It knows nothing of files or Parquet.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Default)]
pub(crate) struct CacheMetrics {
    pub(crate) bytes: Gauge,
    pub(crate) hits: Counter,
    pub(crate) loads: Counter,
    pub(crate) evictions: Counter,
    /// Values not kept: larger than the cache takes.
    pub(crate) too_large: Counter,
}

impl CacheMetrics {
    /// Registers the metrics as `twinlake_query_<name>_…`; `what` names what the cache holds,
    /// for the help texts.
    pub(crate) fn register(&self, registry: &mut Registry, name: &str, what: &str) {
        let metric = |suffix: &str| format!("twinlake_query_{name}_{suffix}");
        registry.register(
            metric("bytes"),
            format!("Memory of the {what} kept for queries"),
            self.bytes.clone(),
        );
        registry.register(
            metric("hits"),
            format!("Files a query read from the cache of {what}"),
            self.hits.clone(),
        );
        registry.register(
            metric("loads"),
            format!("Files read into the cache of {what}"),
            self.loads.clone(),
        );
        registry.register(
            metric("evictions"),
            format!("Files evicted from the cache of {what} to stay within its budget"),
            self.evictions.clone(),
        );
        registry.register(
            metric("too_large"),
            format!("Files too large for the cache of {what}, read and not kept"),
            self.too_large.clone(),
        );
    }
}

#[derive(Debug)]
pub(crate) struct BudgetLru<V> {
    budget_bytes: usize,
    entries: Mutex<Entries<V>>,
    pub(crate) metrics: CacheMetrics,
}

#[derive(Debug)]
struct Entries<V> {
    values: HashMap<String, Entry<V>>,
    bytes: usize,
    /// Counts uses; an entry's stamp says when it was last used.
    clock: u64,
}

#[derive(Debug)]
struct Entry<V> {
    value: V,
    bytes: usize,
    used: u64,
}

impl<V: Clone> BudgetLru<V> {
    pub(crate) fn new(budget_bytes: usize) -> Self {
        Self {
            budget_bytes,
            entries: Mutex::new(Entries {
                values: HashMap::new(),
                bytes: 0,
                clock: 0,
            }),
            metrics: CacheMetrics::default(),
        }
    }

    pub(crate) fn budget_bytes(&self) -> usize {
        self.budget_bytes
    }

    /// The value under `key`, now the most recently used.
    pub(crate) fn get(&self, key: &str) -> Option<V> {
        let mut entries = self.entries.lock().ok()?;
        entries.touch(key)
    }

    /// The value under `key`, or `make()` kept there as `bytes` of the budget, in one step
    /// (two queries asking at once get the same value). None when `bytes` exceed the whole
    /// budget: nothing is made.
    pub(crate) fn get_or_insert(
        &self,
        key: &str,
        bytes: usize,
        make: impl FnOnce() -> V,
    ) -> Option<V> {
        let mut entries = self.entries.lock().ok()?;
        if let Some(value) = entries.touch(key) {
            return Some(value);
        }
        if !self.fits(key, bytes) {
            return None;
        }
        let value = make();
        self.insert_into(&mut entries, key, value.clone(), bytes);
        Some(value)
    }

    /// Keeps `value` under `key`, evicting the least recently used until it fits. False when
    /// it is larger than the whole budget: not kept.
    pub(crate) fn insert(&self, key: &str, value: V, bytes: usize) -> bool {
        if !self.fits(key, bytes) {
            return false;
        }
        let Ok(mut entries) = self.entries.lock() else {
            return false;
        };
        self.insert_into(&mut entries, key, value, bytes);
        true
    }

    fn fits(&self, key: &str, bytes: usize) -> bool {
        if bytes <= self.budget_bytes {
            return true;
        }
        self.metrics.too_large.inc();
        tracing::debug!(
            key,
            bytes,
            budget = self.budget_bytes,
            "a file is larger than a query cache's budget: not kept"
        );
        false
    }

    fn insert_into(&self, entries: &mut Entries<V>, key: &str, value: V, bytes: usize) {
        if let Some(replaced) = entries.values.remove(key) {
            entries.bytes -= replaced.bytes;
        }
        while entries.bytes + bytes > self.budget_bytes {
            let Some(oldest) = entries
                .values
                .iter()
                .min_by_key(|(_, entry)| entry.used)
                .map(|(key, _)| key.clone())
            else {
                break;
            };
            if let Some(evicted) = entries.values.remove(&oldest) {
                entries.bytes -= evicted.bytes;
                self.metrics.evictions.inc();
            }
        }
        entries.clock += 1;
        let used = entries.clock;
        entries
            .values
            .insert(key.to_owned(), Entry { value, bytes, used });
        entries.bytes += bytes;
        self.set_bytes(entries);
    }

    fn set_bytes(&self, entries: &Entries<V>) {
        self.metrics
            .bytes
            .set(i64::try_from(entries.bytes).unwrap_or(i64::MAX));
    }

    /// Counts the value under `key`, if it is still `is_it`, as `bytes` from now on: what it
    /// takes once made may differ from what was reserved for it. Evicts others to stay within
    /// the budget; one now larger than the whole budget is dropped.
    pub(crate) fn reweigh_if(&self, key: &str, bytes: usize, is_it: impl FnOnce(&V) -> bool) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        let Some(value) = entries
            .values
            .get(key)
            .filter(|entry| is_it(&entry.value))
            .map(|entry| entry.value.clone())
        else {
            return;
        };
        if self.fits(key, bytes) {
            self.insert_into(&mut entries, key, value, bytes);
            return;
        }
        if let Some(removed) = entries.values.remove(key) {
            entries.bytes -= removed.bytes;
        }
        self.set_bytes(&entries);
    }

    /// Drops the value under `key`, if it is still `is_it`.
    pub(crate) fn remove_if(&self, key: &str, is_it: impl FnOnce(&V) -> bool) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if !entries
            .values
            .get(key)
            .is_some_and(|entry| is_it(&entry.value))
        {
            return;
        }
        if let Some(removed) = entries.values.remove(key) {
            entries.bytes -= removed.bytes;
        }
        self.set_bytes(&entries);
    }
}

impl<V: Clone> Entries<V> {
    fn touch(&mut self, key: &str) -> Option<V> {
        self.clock += 1;
        let clock = self.clock;
        let entry = self.values.get_mut(key)?;
        entry.used = clock;
        Some(entry.value.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_value_is_evicted_to_stay_within_the_budget() {
        let cache = BudgetLru::new(200);
        assert!(cache.insert("a", 1, 100));
        assert!(cache.insert("b", 2, 100));
        assert_eq!(cache.get("a"), Some(1), "a used after b");
        assert!(cache.insert("c", 3, 100));
        assert_eq!(cache.get("b"), None, "b, the least recently used, evicted");
        assert_eq!(cache.get("a"), Some(1));
        assert_eq!(cache.get("c"), Some(3));
        assert_eq!(cache.metrics.evictions.get(), 1);
        assert_eq!(cache.metrics.bytes.get(), 200);
    }

    #[test]
    fn a_value_larger_than_the_budget_is_not_kept() {
        let cache = BudgetLru::new(100);
        assert!(!cache.insert("a", 1, 101));
        assert_eq!(cache.get("a"), None);
        assert_eq!(cache.get_or_insert("a", 101, || 1), None);
        assert_eq!(cache.metrics.too_large.get(), 2);
        assert_eq!(cache.metrics.bytes.get(), 0);
    }

    #[test]
    fn a_value_replaced_or_removed_gives_its_bytes_back() {
        let cache = BudgetLru::new(100);
        assert_eq!(cache.get_or_insert("a", 60, || 1), Some(1));
        assert_eq!(
            cache.get_or_insert("a", 60, || 2),
            Some(1),
            "kept, not made again"
        );
        assert!(cache.insert("a", 3, 80));
        assert_eq!(cache.metrics.bytes.get(), 80);
        assert_eq!(cache.metrics.evictions.get(), 0, "a replaced, not evicted");
        cache.remove_if("a", |value| *value == 1);
        assert_eq!(
            cache.get("a"),
            Some(3),
            "not removed: no longer the value asked"
        );
        cache.remove_if("a", |value| *value == 3);
        assert_eq!(cache.get("a"), None);
        assert_eq!(cache.metrics.bytes.get(), 0);
    }

    #[test]
    fn a_value_reweighed_evicts_others_to_fit_and_is_dropped_past_the_budget() {
        let cache = BudgetLru::new(100);
        assert!(cache.insert("a", 1, 40));
        assert!(cache.insert("b", 2, 40));
        cache.reweigh_if("b", 50, |value| *value == 1);
        assert_eq!(cache.metrics.bytes.get(), 80, "not b's value: unchanged");
        cache.reweigh_if("b", 70, |value| *value == 2);
        assert_eq!(cache.get("a"), None, "a evicted to make room");
        assert_eq!(cache.get("b"), Some(2));
        assert_eq!(cache.metrics.bytes.get(), 70);
        cache.reweigh_if("b", 101, |value| *value == 2);
        assert_eq!(cache.get("b"), None, "larger than the budget: dropped");
        assert_eq!(cache.metrics.bytes.get(), 0);
    }
}
