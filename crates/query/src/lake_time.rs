//! Lake files keep times in microseconds (as Delta Lake and Spark do); queries see
//! nanoseconds. DataFusion's cast between the two first finds each batch's least and greatest
//! time, to reject those a nanosecond timestamp cannot hold, then multiplies with a check per
//! value: three passes, a tenth of the CPU of a join over every reading's time. A time column
//! read as it is goes through [`MicrosAsNanos`] instead: one range check and one multiply, both
//! loops the compiler vectorises.
//!
//! Predicates keep DataFusion's cast: its pruning and simplifier know it, and take the cast off
//! the column to compare against row-group and page statistics.

use std::fmt;
use std::hash::Hash;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, RecordBatch, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{
    DataType, FieldRef, Schema, TimeUnit, TimestampMicrosecondType,
};
use datafusion::common::{Result, exec_err};
use datafusion::logical_expr::ColumnarValue;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{CastExpr, Column};

/// A file's microsecond time column read as nanoseconds, the time zone kept.
#[derive(Debug)]
pub(crate) struct MicrosAsNanos {
    micros: Arc<dyn PhysicalExpr>,
    nanos: FieldRef,
}

impl PartialEq for MicrosAsNanos {
    fn eq(&self, other: &Self) -> bool {
        self.micros.as_ref() == other.micros.as_ref() && self.nanos == other.nanos
    }
}

impl Eq for MicrosAsNanos {}

impl Hash for MicrosAsNanos {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.micros.as_ref().hash(state);
        self.nanos.hash(state);
    }
}

impl MicrosAsNanos {
    /// The same conversion as `expr` when it casts a microsecond column to nanoseconds.
    pub(crate) fn in_place_of(
        expr: &Arc<dyn PhysicalExpr>,
        file_schema: &Schema,
    ) -> Result<Option<Arc<dyn PhysicalExpr>>> {
        let Some(cast) = expr.downcast_ref::<CastExpr>() else {
            return Ok(None);
        };
        let DataType::Timestamp(TimeUnit::Nanosecond, to_zone) = cast.cast_type() else {
            return Ok(None);
        };
        let from = cast.expr().data_type(file_schema)?;
        let DataType::Timestamp(TimeUnit::Microsecond, from_zone) = &from else {
            return Ok(None);
        };
        if from_zone != to_zone || !cast.expr().is::<Column>() {
            return Ok(None);
        }
        Ok(Some(Arc::new(Self {
            micros: Arc::clone(cast.expr()),
            nanos: Arc::clone(cast.target_field()),
        })))
    }
}

/// Microseconds a nanosecond timestamp (`i64`) can hold.
const MICROS_RANGE: std::ops::RangeInclusive<i64> = (i64::MIN / 1000)..=(i64::MAX / 1000);

fn micros_to_nanos(
    micros: &TimestampMicrosecondArray,
    zone: Option<Arc<str>>,
) -> Result<Arc<dyn Array>> {
    let (low, high) = (*MICROS_RANGE.start(), *MICROS_RANGE.end());
    // `&` rather than `&&`: no early exit, so the loop runs on vectors.
    let in_range = |values: &[i64]| {
        values
            .iter()
            .fold(true, |ok, &v| ok & (v >= low) & (v <= high))
    };
    let all_in_range =
        in_range(micros.values()) || micros.iter().flatten().all(|v| MICROS_RANGE.contains(&v));
    if !all_in_range {
        return exec_err!(
            "a lake file holds a time outside the years 1677 to 2262, which a nanosecond timestamp cannot hold"
        );
    }
    let nanos = micros
        .unary::<_, datafusion::arrow::datatypes::TimestampNanosecondType>(|v| v.wrapping_mul(1000))
        .with_timezone_opt(zone);
    Ok(Arc::new(nanos))
}

impl PhysicalExpr for MicrosAsNanos {
    fn data_type(&self, _input_schema: &Schema) -> Result<DataType> {
        Ok(self.nanos.data_type().clone())
    }

    fn nullable(&self, input_schema: &Schema) -> Result<bool> {
        self.micros.nullable(input_schema)
    }

    fn return_field(&self, _input_schema: &Schema) -> Result<FieldRef> {
        Ok(Arc::clone(&self.nanos))
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        match self.micros.evaluate(batch)? {
            ColumnarValue::Array(array) => {
                let Some(micros) = array.as_primitive_opt::<TimestampMicrosecondType>() else {
                    return exec_err!("micros as nanos: read {}", array.data_type());
                };
                // The zone is the file's: `in_place_of` took only casts that keep it.
                let zone = micros.timezone().map(Arc::from);
                Ok(ColumnarValue::Array(micros_to_nanos(micros, zone)?))
            }
            ColumnarValue::Scalar(scalar) => Ok(ColumnarValue::Scalar(
                scalar.cast_to(self.nanos.data_type())?,
            )),
        }
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.micros]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        let [micros] = &children[..] else {
            return exec_err!("micros as nanos takes one input");
        };
        Ok(Arc::new(Self {
            micros: Arc::clone(micros),
            nanos: Arc::clone(&self.nanos),
        }))
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CAST(")?;
        self.micros.fmt_sql(f)?;
        write!(f, " AS {})", self.nanos.data_type())
    }
}

impl fmt::Display for MicrosAsNanos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} µs as ns", self.micros)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use datafusion::arrow::array::TimestampNanosecondArray;
    use datafusion::arrow::datatypes::Field;

    fn nanos_field() -> FieldRef {
        Arc::new(Field::new(
            "time",
            DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
            true,
        ))
    }

    fn read(micros: TimestampMicrosecondArray) -> Result<TimestampNanosecondArray> {
        let micros = micros.with_timezone("UTC");
        let schema = Arc::new(Schema::new(vec![Field::new(
            "time",
            micros.data_type().clone(),
            true,
        )]));
        let batch = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(micros)])?;
        let expr = MicrosAsNanos {
            micros: Arc::new(Column::new("time", 0)),
            nanos: nanos_field(),
        };
        let array = expr.evaluate(&batch)?.into_array(batch.num_rows())?;
        Ok(array
            .as_primitive::<datafusion::arrow::datatypes::TimestampNanosecondType>()
            .clone())
    }

    #[test]
    fn times_keep_their_instant_zone_and_nulls() -> Result<()> {
        let nanos = read(TimestampMicrosecondArray::from(vec![
            Some(1_764_000_000_123_456),
            None,
            Some(-5),
        ]))?;
        assert_eq!(nanos.data_type(), nanos_field().data_type());
        assert_eq!(nanos.value(0), 1_764_000_000_123_456_000);
        assert!(nanos.is_null(1));
        assert_eq!(nanos.value(2), -5_000);
        Ok(())
    }

    #[test]
    fn a_time_no_nanosecond_holds_is_an_error() {
        let beyond = i64::MAX / 1000 + 1;
        let error = read(TimestampMicrosecondArray::from(vec![0, beyond])).unwrap_err();
        assert!(error.to_string().contains("1677 to 2262"), "{error}");
    }

    #[test]
    fn a_null_slot_holding_any_value_is_no_error() -> Result<()> {
        let values = vec![i64::MAX, 7].into();
        let nulls = datafusion::arrow::buffer::NullBuffer::from(vec![false, true]);
        let nanos = read(TimestampMicrosecondArray::new(values, Some(nulls)))?;
        assert!(nanos.is_null(0));
        assert_eq!(nanos.value(1), 7_000);
        Ok(())
    }
}
