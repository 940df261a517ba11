//! Stable u32 ids of entities for the roaring pruning index, kept durably in the lake's
//! `entity_ids` Delta table. An id is committed before any file that uses it, and never changes.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use deltalake::kernel::{Action, Add, DataType as DeltaType, StructField};
use parquet::arrow::ArrowWriter;

use crate::StoreError;
use crate::file::read_parquet;
use crate::lake::{self, Lake};

pub(crate) const TABLE_NAME: &str = "entity_ids";

pub(crate) fn columns() -> Vec<StructField> {
    vec![
        StructField::new("entity", DeltaType::STRING, false),
        StructField::new("id", DeltaType::LONG, false),
    ]
}

/// Entity topic id → pruning id.
#[derive(Debug, Default, Clone)]
pub struct EntityIds {
    ids: HashMap<String, u32>,
}

impl EntityIds {
    pub fn id(&self, entity: &str) -> Option<u32> {
        self.ids.get(entity).copied()
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Gives ids to the entities that have none; returns the new pairs (to commit).
    pub(crate) fn assign<'a>(
        &mut self,
        entities: impl Iterator<Item = &'a str>,
    ) -> Vec<(String, u32)> {
        let mut added = Vec::new();
        for entity in entities {
            if self.ids.contains_key(entity) {
                continue;
            }
            let id = self.ids.len() as u32;
            self.ids.insert(entity.to_owned(), id);
            added.push((entity.to_owned(), id));
        }
        added
    }

    /// Loads every committed id.
    pub(crate) async fn load(lake: &Lake) -> Result<Self, StoreError> {
        let paths: Vec<String> = {
            let delta = lake.entity_ids.delta.lock().await;
            delta
                .snapshot()
                .map(|state| {
                    state
                        .log_data()
                        .iter()
                        .map(|view| format!("{TABLE_NAME}/{}", view.path()))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut ids = HashMap::new();
        for path in paths {
            for batch in read_parquet(lake.store(), &path).await? {
                let entities = batch.column(0).as_string::<i32>();
                let values = batch.column(1).as_primitive::<Int64Type>();
                for row in 0..batch.num_rows() {
                    ids.insert(entities.value(row).to_owned(), values.value(row) as u32);
                }
            }
        }
        Ok(Self { ids })
    }

    /// Commits new ids, before any file that uses them.
    pub(crate) async fn commit(lake: &Lake, added: &[(String, u32)]) -> Result<(), StoreError> {
        if added.is_empty() {
            return Ok(());
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("entity", DataType::Utf8, false),
            Field::new("id", DataType::Int64, false),
        ]));
        let entities: ArrayRef = Arc::new(StringArray::from_iter_values(
            added.iter().map(|(e, _)| e.as_str()),
        ));
        let ids: ArrayRef = Arc::new(Int64Array::from_iter_values(
            added.iter().map(|(_, id)| i64::from(*id)),
        ));
        let batch = RecordBatch::try_new(Arc::clone(&schema), vec![entities, ids])?;
        let mut buffer = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut buffer, schema, None)?;
        writer.write(&batch)?;
        writer.close()?;
        let name = format!("part-{}.parquet", uuid::Uuid::new_v4());
        let size = buffer.len() as i64;
        lake.put(&format!("{TABLE_NAME}/{name}"), buffer.into())
            .await?;
        let add = Action::Add(Add {
            path: name,
            partition_values: HashMap::new(),
            size,
            modification_time: chrono::Utc::now().timestamp_millis(),
            data_change: true,
            stats: Some(format!("{{\"numRecords\":{}}}", added.len())),
            tags: None,
            deletion_vector: None,
            base_row_id: None,
            default_row_commit_version: None,
            clustering_provider: None,
        });
        let mut delta = lake.entity_ids.delta.lock().await;
        lake::commit(
            &lake.entity_ids,
            &mut delta,
            vec![add],
            lake::write_operation_unpartitioned(),
            None,
        )
        .await?;
        Ok(())
    }
}

impl FromIterator<(String, u32)> for EntityIds {
    fn from_iter<I: IntoIterator<Item = (String, u32)>>(pairs: I) -> Self {
        Self {
            ids: pairs.into_iter().collect(),
        }
    }
}
