//! The last value of every measurement series, kept current as rows arrive, so that "what is
//! it now" is a lookup and never a scan of history.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, TimestampNanosecondType};
use arrow_array::{Array, RecordBatch};

/// The newest reading of one series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatestValue {
    /// ns since the Unix epoch.
    pub time: i64,
    pub value: f64,
}

/// One series and its newest reading.
#[derive(Debug, Clone, PartialEq)]
pub struct LatestRow {
    pub gateway: String,
    pub entity: String,
    pub measurement_type: String,
    pub series: String,
    pub latest: LatestValue,
}

/// entity → type → series → newest reading. Nested so that a known series is found by `&str`
/// lookups, allocating only for a series seen the first time.
type SeriesTree = HashMap<String, SeriesOfEntity>;

/// The series, and which entities each gateway has among them, so that one gateway's series
/// are found without looking at the fleet's.
#[derive(Debug, Default)]
struct Held {
    tree: SeriesTree,
    entities_of_gateway: HashMap<String, Vec<String>>,
}

/// type → series → newest reading, of one entity of one gateway.
#[derive(Debug, Default)]
struct SeriesOfEntity {
    gateway: String,
    types: HashMap<String, HashMap<String, LatestValue>>,
}

/// The newest value per (entity, type, series) of `measurements`, in memory.
#[derive(Debug, Default)]
pub struct LatestValues {
    series: RwLock<Held>,
    /// How many series the tree holds, readable without its lock.
    count: AtomicUsize,
}

impl LatestValues {
    /// Takes the rows of a `measurements` batch; a row older than what is held is ignored
    /// (late data does not make a value "latest").
    pub fn update(&self, batch: &RecordBatch) {
        let (Some(time), Some(gateway), Some(entity), Some(kind), Some(series), Some(value)) = (
            batch.column_by_name("time"),
            batch.column_by_name("gateway"),
            batch.column_by_name("entity"),
            batch.column_by_name("type"),
            batch.column_by_name("series"),
            batch.column_by_name("value"),
        ) else {
            return;
        };
        let (Some(time), Some(gateway), Some(entity), Some(kind), Some(series), Some(value)) = (
            time.as_primitive_opt::<TimestampNanosecondType>(),
            gateway.as_string_opt::<i32>(),
            entity.as_string_opt::<i32>(),
            kind.as_string_opt::<i32>(),
            series.as_string_opt::<i32>(),
            value.as_primitive_opt::<Float64Type>(),
        ) else {
            return;
        };
        let Ok(mut held) = self.series.write() else {
            return;
        };
        let Held {
            tree,
            entities_of_gateway,
        } = &mut *held;
        for row in 0..batch.num_rows() {
            if value.is_null(row) {
                continue;
            }
            let reading = LatestValue {
                time: time.value(row),
                value: value.value(row),
            };
            let Some(held) = entry(tree, entity.value(row))
                .map(|of_entity| {
                    if of_entity.gateway.is_empty() {
                        of_entity.gateway = gateway.value(row).to_owned();
                        entities_of_gateway
                            .entry(of_entity.gateway.clone())
                            .or_default()
                            .push(entity.value(row).to_owned());
                    }
                    &mut of_entity.types
                })
                .and_then(|types| entry(types, kind.value(row)))
                .and_then(|by_series| {
                    let new = !by_series.contains_key(series.value(row));
                    self.count.fetch_add(usize::from(new), Ordering::Relaxed);
                    entry(by_series, series.value(row))
                })
            else {
                continue;
            };
            if held.time == i64::MIN || reading.time >= held.time {
                *held = reading;
            }
        }
    }

    /// Every series with its newest reading, in no particular order.
    pub fn rows(&self) -> Vec<LatestRow> {
        self.rows_of(None, None)
    }

    /// The series of `entities` (every entity when `None`) of `gateways` (every gateway when
    /// `None`) with their newest readings.
    pub fn rows_of(&self, entities: Option<&[&str]>, gateways: Option<&[&str]>) -> Vec<LatestRow> {
        let Ok(held) = self.series.read() else {
            return Vec::new();
        };
        let tree = &held.tree;
        let selected: Vec<(&String, &SeriesOfEntity)> = match (entities, gateways) {
            (None, None) => tree.iter().collect(),
            (None, Some(wanted)) => dedup(wanted)
                .iter()
                .filter_map(|gateway| held.entities_of_gateway.get(*gateway))
                .flatten()
                .filter_map(|entity| tree.get_key_value(entity))
                .collect(),
            (Some(wanted), _) => dedup(wanted)
                .iter()
                .filter_map(|entity| tree.get_key_value(*entity))
                .collect(),
        };
        let mut rows = Vec::new();
        let of_gateway = |of_entity: &SeriesOfEntity| {
            gateways.is_none_or(|wanted| wanted.contains(&of_entity.gateway.as_str()))
        };
        for (entity, of_entity) in selected.into_iter().filter(|(_, s)| of_gateway(s)) {
            for (measurement_type, series) in &of_entity.types {
                for (name, latest) in series {
                    rows.push(LatestRow {
                        gateway: of_entity.gateway.clone(),
                        entity: entity.clone(),
                        measurement_type: measurement_type.clone(),
                        series: name.clone(),
                        latest: *latest,
                    });
                }
            }
        }
        rows
    }

    /// The number of series held.
    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Whether the series is held already.
    pub fn holds(&self, entity: &str, measurement_type: &str, series: &str) -> bool {
        self.series.read().is_ok_and(|held| {
            held.tree
                .get(entity)
                .and_then(|of_entity| of_entity.types.get(measurement_type))
                .is_some_and(|by_series| by_series.contains_key(series))
        })
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Names asked for twice (`IN ('a', 'a')`) still give their series once.
fn dedup<'a>(names: &[&'a str]) -> Vec<&'a str> {
    let mut names = names.to_vec();
    names.sort_unstable();
    names.dedup();
    names
}

/// The value under `key`, inserted empty (a reading at `i64::MIN` for a leaf) when missing.
fn entry<'a, V: Default>(map: &'a mut HashMap<String, V>, key: &str) -> Option<&'a mut V> {
    if !map.contains_key(key) {
        map.insert(key.to_owned(), V::default());
    }
    map.get_mut(key)
}

impl Default for LatestValue {
    fn default() -> Self {
        Self {
            time: i64::MIN,
            value: f64::NAN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_rows::measurements;

    #[test]
    fn keeps_the_newest_reading_per_series() {
        let latest = LatestValues::default();
        latest.update(&measurements(&[
            ("device/a//", r#"{"t":2.0}"#, 20),
            ("device/a//", r#"{"t":1.0}"#, 10),
        ]));
        latest.update(&measurements(&[
            ("device/a//", r#"{"t":1.5}"#, 15),
            ("device/b//", r#"{"t":9.0}"#, 5),
        ]));
        let mut rows: Vec<_> = latest
            .rows()
            .into_iter()
            .map(|r| (r.entity, r.latest.time, r.latest.value))
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            rows,
            vec![
                ("main:device:a".to_owned(), 20_000_000_000, 2.0),
                ("main:device:b".to_owned(), 5_000_000_000, 9.0)
            ]
        );
        assert_eq!(latest.len(), 2);
        let only_b = latest.rows_of(Some(&["main:device:b", "main:device:none"]), None);
        assert_eq!(only_b.len(), 1);
        assert_eq!(only_b[0].entity, "main:device:b");
        // `entity IN ('b', 'b')` selects each series once.
        assert_eq!(
            latest
                .rows_of(Some(&["main:device:b", "main:device:b"]), None)
                .len(),
            1
        );
        assert_eq!(latest.rows_of(None, Some(&["main", "main"])).len(), 2);
        assert_eq!(latest.rows_of(None, Some(&["other"])).len(), 0);
    }
}
