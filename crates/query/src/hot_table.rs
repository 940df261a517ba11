//! A table provider over one table of the hot buffer.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::{MemTable, TableType};
use datafusion::error::Result;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use twinlake_model::Table;
use twinlake_store::HotBuffer;

/// Scans a snapshot of the table's in-memory batches taken when the query is planned, so a
/// query sees a consistent set of rows while ingest appends.
#[derive(Debug)]
pub(crate) struct HotTableProvider {
    table: Table,
    hot: Arc<HotBuffer>,
}

impl HotTableProvider {
    pub(crate) fn new(table: Table, hot: Arc<HotBuffer>) -> Self {
        Self { table, hot }
    }
}

#[async_trait::async_trait]
impl TableProvider for HotTableProvider {
    fn schema(&self) -> SchemaRef {
        self.table.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let batches = self.hot.snapshot(self.table);
        let partitions = spread(batches, state.config().target_partitions());
        MemTable::try_new(self.schema(), partitions)?
            .scan(state, projection, filters, limit)
            .await
    }
}

/// Deals batches round-robin into `count` partitions so that every core scans.
fn spread(batches: Vec<RecordBatch>, count: usize) -> Vec<Vec<RecordBatch>> {
    let count = count.max(1);
    let mut partitions = vec![Vec::new(); count];
    for (index, batch) in batches.into_iter().enumerate() {
        partitions[index % count].push(batch);
    }
    partitions
}
