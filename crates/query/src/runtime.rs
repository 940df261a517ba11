//! The threads queries run on: a tokio runtime of their own, so that a CPU-heavy query (a
//! large join, a sort) never holds the threads that ingest and the HTTP server run on, and so
//! that a query's timeout, a timer on the caller's runtime, fires on time; and the plan rule
//! that lets a cancelled query's work actually stop.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::joins::{
    CrossJoinExec, HashJoinExec, NestedLoopJoinExec, PiecewiseMergeJoinExec, SortMergeJoinExec,
    SymmetricHashJoinExec,
};
use tokio::runtime::{Builder, Runtime};
use tokio::task::{JoinError, JoinHandle};

use crate::validity_join::ValidityJoinExec;

/// A runtime with a thread per core, for query work only.
#[derive(Debug)]
pub(crate) struct QueryRuntime {
    /// Always `Some` until dropped; taken to shut it down without blocking.
    runtime: Option<Runtime>,
}

impl QueryRuntime {
    pub(crate) fn new() -> std::io::Result<Self> {
        let threads = std::thread::available_parallelism().map_or(2, usize::from);
        let runtime = Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("twinlake-query")
            .enable_all()
            .build()?;
        Ok(Self {
            runtime: Some(runtime),
        })
    }

    /// Runs `work` on the query threads. Dropping what this returns cancels the work.
    pub(crate) fn spawn<F>(&self, work: F) -> Running<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        match &self.runtime {
            Some(runtime) => Running(runtime.spawn(work)),
            // Only while being dropped; there is no caller then.
            None => Running(tokio::spawn(work)),
        }
    }
}

impl Drop for QueryRuntime {
    fn drop(&mut self) {
        // The engine may be dropped on an async thread, where a blocking shutdown panics.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Work on the query runtime, aborted when dropped (a query whose caller went away stops).
#[derive(Debug)]
pub(crate) struct Running<T>(JoinHandle<T>);

impl<T> Future for Running<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for Running<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A task on the query runtime stops when aborted only where it yields to the runtime, and
/// DataFusion yields where batches are read or exchanged. A join can make billions of rows
/// from one batch of its input, and an aggregate above it consumes them all within one poll:
/// `count(*)` over a join whose keys barely differ ran for minutes after its query timed out,
/// holding a query thread. So every join's output counts against the task's budget too.
#[derive(Debug, Default)]
pub(crate) struct CooperativeJoins;

impl PhysicalOptimizerRule for CooperativeJoins {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            if !is_join(node.as_ref()) {
                return Ok(Transformed::no(node));
            }
            Ok(Transformed::yes(
                Arc::new(CooperativeExec::new(node)) as Arc<dyn ExecutionPlan>
            ))
        })
        .map(|done| done.data)
    }

    fn name(&self) -> &str {
        "CooperativeJoins"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

fn is_join(plan: &dyn ExecutionPlan) -> bool {
    plan.is::<HashJoinExec>()
        || plan.is::<NestedLoopJoinExec>()
        || plan.is::<CrossJoinExec>()
        || plan.is::<SortMergeJoinExec>()
        || plan.is::<SymmetricHashJoinExec>()
        || plan.is::<PiecewiseMergeJoinExec>()
        || plan.is::<ValidityJoinExec>()
}
