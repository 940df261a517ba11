//! The `latest` table: the newest value of every measurement series, from the cache ingest
//! keeps current, so it answers without reading history.

use std::sync::Arc;

use datafusion::arrow::array::{Float64Array, RecordBatch, StringArray, TimestampNanosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::Result;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use twinlake_model::{ColumnType, UTC};
use twinlake_store::LiveTables;

use crate::lake_table::text_literals;

#[derive(Debug)]
pub(crate) struct LatestTable {
    live: Arc<LiveTables>,
}

impl LatestTable {
    pub(crate) fn new(live: Arc<LiveTables>) -> Self {
        Self { live }
    }
}

#[async_trait::async_trait]
impl TableProvider for LatestTable {
    fn schema(&self) -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("gateway", DataType::Utf8, false),
            Field::new("entity", DataType::Utf8, false),
            Field::new("type", DataType::Utf8, false),
            Field::new("series", DataType::Utf8, false),
            Field::new("time", ColumnType::Time.data_type(), false),
            Field::new("value", DataType::Float64, false),
        ]))
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    /// `entity = …`, `entity IN (…)` and the same of `gateway` pick the series out of the
    /// cache; every filter is applied again above the scan.
    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let wanted = filters
            .iter()
            .find_map(|filter| text_literals("entity", filter));
        let gateways = filters
            .iter()
            .find_map(|filter| text_literals("gateway", filter));
        let rows = self
            .live
            .latest()
            .rows_of(wanted.as_deref(), gateways.as_deref());
        let batch = RecordBatch::try_new(
            self.schema(),
            vec![
                Arc::new(
                    rows.iter()
                        .map(|r| Some(r.gateway.as_str()))
                        .collect::<StringArray>(),
                ),
                Arc::new(
                    rows.iter()
                        .map(|r| Some(r.entity.as_str()))
                        .collect::<StringArray>(),
                ),
                Arc::new(
                    rows.iter()
                        .map(|r| Some(r.measurement_type.as_str()))
                        .collect::<StringArray>(),
                ),
                Arc::new(
                    rows.iter()
                        .map(|r| Some(r.series.as_str()))
                        .collect::<StringArray>(),
                ),
                Arc::new(
                    rows.iter()
                        .map(|r| Some(r.latest.time))
                        .collect::<TimestampNanosecondArray>()
                        .with_timezone(UTC),
                ),
                Arc::new(
                    rows.iter()
                        .map(|r| Some(r.latest.value))
                        .collect::<Float64Array>(),
                ),
            ],
        )?;
        Ok(MemorySourceConfig::try_new_exec(
            &[vec![batch]],
            self.schema(),
            projection.cloned(),
        )?)
    }
}
