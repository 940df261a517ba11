//! Partial aggregate states of runs of rows, a run at a time.
//!
//! A validity join matches readings to versions in runs (a device's readings within one
//! version of its place in the hierarchy: thousands of rows). Fed row by row, an accumulator
//! looks up and marks its group for every row, a third of the full-history as-of join's CPU;
//! the same rows as one partial state per run (a count, a sum) go through the accumulator's
//! `merge_batch`, as partial states from another partition would, and the run's sum is taken
//! by a kernel that adds several values at once.
//!
//! Only aggregates whose partial state is known here have a run form: `count`, `sum` of
//! `Float64` or `Int64`, `avg` of `Float64`; the caller feeds any other row by row. Floating
//! sums may differ in their last bits from a row-by-row sum, as they do between partitions.

use std::ops::Range;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int64Array, PrimitiveArray, UInt64Array,
};
use datafusion::arrow::compute::sum;
use datafusion::arrow::datatypes::{ArrowNumericType, DataType, Float64Type, Int64Type};
use datafusion::common::Result;
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;

/// An aggregate whose partial state over a run is computed here.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum RunState {
    /// `count(x)`: the run's non-null values, as `Int64`.
    Count,
    /// `sum(x)` of `Float64`: the sum, null when the run holds no value.
    SumFloat,
    /// `sum(x)` of `Int64`.
    SumInt,
    /// `avg(x)` of `Float64`: count (`UInt64`) and sum, both null when the run holds no value
    /// (a zero count would mark the group as seen, and its average as 0 / 0).
    AvgFloat,
}

impl RunState {
    /// The run form of `function`, if its partial state is one of those known here.
    pub(crate) fn of(function: &AggregateFunctionExpr) -> Option<Self> {
        if function.expressions().len() != 1 {
            return None;
        }
        let fields = function.state_fields().ok()?;
        let states: Vec<&DataType> = fields.iter().map(|field| field.data_type()).collect();
        match (function.fun().name(), states.as_slice()) {
            ("count", [DataType::Int64]) => Some(Self::Count),
            ("sum", [DataType::Float64]) => Some(Self::SumFloat),
            ("sum", [DataType::Int64]) => Some(Self::SumInt),
            ("avg", [DataType::UInt64, DataType::Float64]) => Some(Self::AvgFloat),
            _ => None,
        }
    }

    /// The partial state of each run of `argument`'s rows, as the accumulator's state
    /// columns; `None` when the argument is not of the type this form reads.
    pub(crate) fn states(
        self,
        argument: &ColumnarValue,
        runs: &[Range<usize>],
    ) -> Result<Option<Vec<ArrayRef>>> {
        let array: ArrayRef = match argument {
            ColumnarValue::Scalar(scalar) if self == Self::Count => {
                // `count(*)` is `count(1)`: every row counts, or none when the scalar is null.
                let counted = !scalar.is_null();
                let counts = runs
                    .iter()
                    .map(|run| if counted { run.len() as i64 } else { 0 });
                return Ok(Some(vec![Arc::new(Int64Array::from_iter_values(counts))]));
            }
            ColumnarValue::Scalar(scalar) => scalar.to_array_of_size(runs_end(runs))?,
            ColumnarValue::Array(array) => Arc::clone(array),
        };
        Ok(match (self, array.data_type()) {
            (Self::Count, _) => {
                let counts = value_counts(array.as_ref(), runs).map(|n| n as i64);
                Some(vec![Arc::new(Int64Array::from_iter_values(counts))])
            }
            (Self::SumFloat, DataType::Float64) => {
                Some(vec![Arc::new(run_sums::<Float64Type>(&array, runs))])
            }
            (Self::SumInt, DataType::Int64) => {
                Some(vec![Arc::new(run_sums::<Int64Type>(&array, runs))])
            }
            (Self::AvgFloat, DataType::Float64) => {
                let counts: UInt64Array = value_counts(array.as_ref(), runs)
                    .map(|n| Some(n as u64).filter(|&n| n > 0))
                    .collect();
                let sums: Float64Array = run_sums::<Float64Type>(&array, runs);
                Some(vec![Arc::new(counts), Arc::new(sums)])
            }
            _ => None,
        })
    }
}

/// The rows the runs reach up to.
fn runs_end(runs: &[Range<usize>]) -> usize {
    runs.iter().map(|run| run.end).max().unwrap_or(0)
}

/// The non-null values among `array`'s rows of each run; its nulls taken once.
fn value_counts<'a>(
    array: &dyn Array,
    runs: &'a [Range<usize>],
) -> impl Iterator<Item = usize> + 'a {
    let nulls = array.logical_nulls();
    runs.iter().map(move |run| {
        let null_count = nulls
            .as_ref()
            .map_or(0, |nulls| nulls.slice(run.start, run.len()).null_count());
        run.len() - null_count
    })
}

/// Each run's sum (wrapping on overflow for integers, as `sum`'s accumulator does), null
/// where the run holds no value.
fn run_sums<T: ArrowNumericType>(array: &ArrayRef, runs: &[Range<usize>]) -> PrimitiveArray<T> {
    let values = array.as_primitive::<T>();
    runs.iter()
        .map(|run| sum(&values.slice(run.start, run.len())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use datafusion::common::ScalarValue;

    fn values() -> ColumnarValue {
        ColumnarValue::Array(Arc::new(Float64Array::from(vec![
            Some(1.0),
            Some(2.0),
            None,
            None,
            Some(4.5),
        ])))
    }

    const RUNS: [Range<usize>; 4] = [0..2, 2..4, 1..5, 0..5];

    #[test]
    fn counts_sums_and_averages_of_runs_with_nulls() -> Result<()> {
        let count = RunState::Count.states(&values(), &RUNS)?.unwrap();
        assert_eq!(count[0].as_primitive::<Int64Type>().values(), &[2, 0, 2, 3]);
        let sums = RunState::SumFloat.states(&values(), &RUNS)?.unwrap();
        let sums = sums[0].as_primitive::<Float64Type>();
        assert_eq!(
            sums.iter().collect::<Vec<_>>(),
            [Some(3.0), None, Some(6.5), Some(7.5)]
        );
        let avg = RunState::AvgFloat.states(&values(), &RUNS)?.unwrap();
        let counts = avg[0].as_primitive::<datafusion::arrow::datatypes::UInt64Type>();
        assert_eq!(
            counts.iter().collect::<Vec<_>>(),
            [Some(2), None, Some(2), Some(3)]
        );
        let sums = avg[1].as_primitive::<Float64Type>();
        assert_eq!(
            sums.iter().collect::<Vec<_>>(),
            [Some(3.0), None, Some(6.5), Some(7.5)]
        );
        Ok(())
    }

    #[test]
    fn count_of_a_scalar_counts_rows_unless_null() -> Result<()> {
        let one = ColumnarValue::Scalar(ScalarValue::Int64(Some(1)));
        let counts = RunState::Count.states(&one, &RUNS)?.unwrap();
        assert_eq!(
            counts[0].as_primitive::<Int64Type>().values(),
            &[2, 2, 4, 5]
        );
        let null = ColumnarValue::Scalar(ScalarValue::Int64(None));
        let counts = RunState::Count.states(&null, &RUNS)?.unwrap();
        assert_eq!(
            counts[0].as_primitive::<Int64Type>().values(),
            &[0, 0, 0, 0]
        );
        Ok(())
    }

    #[test]
    fn an_argument_of_another_type_has_no_run_form() -> Result<()> {
        let ints = ColumnarValue::Array(Arc::new(Int64Array::from(vec![1, 2, 3, 4, 5])));
        assert!(RunState::SumFloat.states(&ints, &RUNS)?.is_none());
        assert!(RunState::AvgFloat.states(&ints, &RUNS)?.is_none());
        let sums = RunState::SumInt.states(&ints, &RUNS)?.unwrap();
        assert_eq!(
            sums[0].as_primitive::<Int64Type>().values(),
            &[3, 7, 14, 15]
        );
        Ok(())
    }
}
