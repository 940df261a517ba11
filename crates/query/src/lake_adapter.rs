//! How the Parquet scan reads a lake file's columns as the table's: DataFusion's adapter
//! (missing columns as nulls, casts where the file's type differs), with a file's microsecond
//! times read by [`MicrosAsNanos`] and comparisons with text made on the columns read as
//! dictionaries ([`compare_on_dictionary`]).

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::Result;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr_adapter::{
    DefaultPhysicalExprAdapterFactory, PhysicalExprAdapter, PhysicalExprAdapterFactory,
};

use crate::lake_dictionary::compare_on_dictionary;
use crate::lake_time::MicrosAsNanos;

#[derive(Debug)]
pub(crate) struct LakeExprAdapterFactory;

impl PhysicalExprAdapterFactory for LakeExprAdapterFactory {
    fn create(
        &self,
        logical_file_schema: SchemaRef,
        physical_file_schema: SchemaRef,
    ) -> Result<Arc<dyn PhysicalExprAdapter>> {
        Ok(Arc::new(LakeExprAdapter {
            default: DefaultPhysicalExprAdapterFactory
                .create(logical_file_schema, Arc::clone(&physical_file_schema))?,
            physical_file_schema,
        }))
    }
}

#[derive(Debug)]
struct LakeExprAdapter {
    default: Arc<dyn PhysicalExprAdapter>,
    physical_file_schema: SchemaRef,
}

impl PhysicalExprAdapter for LakeExprAdapter {
    fn rewrite(&self, expr: Arc<dyn PhysicalExpr>) -> Result<Arc<dyn PhysicalExpr>> {
        // A bare column is a projected one; anything larger is a predicate.
        let projected_column = expr.is::<Column>();
        let rewritten = self.default.rewrite(expr)?;
        if !projected_column {
            return compare_on_dictionary(rewritten, &self.physical_file_schema);
        }
        Ok(
            MicrosAsNanos::in_place_of(&rewritten, &self.physical_file_schema)?
                .unwrap_or(rewritten),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lake_dictionary::TextInDictionary;

    use datafusion::arrow::array::{
        Array, AsArray, DictionaryArray, Int32Array, RecordBatch, StringArray,
    };
    use datafusion::arrow::datatypes::{DataType, Field, Int32Type, Schema, TimeUnit};
    use datafusion::common::ScalarValue;
    use datafusion::logical_expr::Operator;
    use datafusion::physical_expr::expressions::{
        BinaryExpr, CastExpr, InListExpr, IsNullExpr, Literal,
    };

    fn adapter(logical: Field, physical: Field) -> Result<Arc<dyn PhysicalExprAdapter>> {
        LakeExprAdapterFactory.create(
            Arc::new(Schema::new(vec![logical])),
            Arc::new(Schema::new(vec![physical])),
        )
    }

    #[test]
    fn projected_time_columns_are_read_by_micros_as_nanos_and_predicates_keep_the_cast()
    -> Result<()> {
        let nanos = DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()));
        let micros = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let adapter = adapter(
            Field::new("time", nanos, false),
            Field::new("time", micros, false),
        )?;
        let column: Arc<dyn PhysicalExpr> = Arc::new(Column::new("time", 0));
        assert!(adapter.rewrite(Arc::clone(&column))?.is::<MicrosAsNanos>());
        let rewritten = adapter.rewrite(Arc::new(IsNullExpr::new(column)))?;
        assert!(rewritten.children()[0].is::<CastExpr>(), "{rewritten}");
        Ok(())
    }

    fn text(value: &str) -> Arc<dyn PhysicalExpr> {
        Arc::new(Literal::new(ScalarValue::Utf8View(Some(value.into()))))
    }

    type Predicate = Arc<dyn PhysicalExpr>;

    fn dictionary_batch() -> Result<RecordBatch> {
        let keys = Int32Array::from(vec![Some(0), Some(1), None, Some(2), Some(1), Some(0)]);
        let values = StringArray::from(vec!["gps.speed", "load", "fuel.level"]);
        let series = DictionaryArray::<Int32Type>::try_new(keys, Arc::new(values))?;
        let schema = Schema::new(vec![Field::new("series", series.data_type().clone(), true)]);
        Ok(RecordBatch::try_new(
            Arc::new(schema),
            vec![Arc::new(series)],
        )?)
    }

    /// Each predicate as the adapter rewrites it for a dictionary column, and as DataFusion
    /// evaluates it on the column cast to `Utf8View`: the same answer, row by row.
    #[test]
    fn comparisons_with_text_on_the_dictionary_answer_as_on_the_text() -> Result<()> {
        let batch = dictionary_batch()?;
        let logical = Schema::new(vec![Field::new("series", DataType::Utf8View, true)]);
        let adapter = LakeExprAdapterFactory.create(Arc::new(logical.clone()), batch.schema())?;
        let column: Arc<dyn PhysicalExpr> = Arc::new(Column::new("series", 0));
        let cast: Arc<dyn PhysicalExpr> =
            Arc::new(CastExpr::new(Arc::clone(&column), DataType::Utf8View, None));
        let compare = |on: &Arc<dyn PhysicalExpr>, op, value: &str| -> Arc<dyn PhysicalExpr> {
            Arc::new(BinaryExpr::new(Arc::clone(on), op, text(value)))
        };
        let in_list = |on: &Arc<dyn PhysicalExpr>, values: &[&str], negated| {
            let list = values.iter().map(|value| text(value)).collect();
            let schema = match on.is::<Column>() {
                true => logical.clone(),
                false => batch.schema().as_ref().clone(),
            };
            InListExpr::try_new(Arc::clone(on), list, negated, &schema)
                .map(|expr| Arc::new(expr) as Arc<dyn PhysicalExpr>)
        };
        let cases: Vec<(Predicate, Predicate, &str)> = vec![
            (
                compare(&column, Operator::Eq, "load"),
                compare(&cast, Operator::Eq, "load"),
                "TextInDictionary",
            ),
            (
                compare(&column, Operator::NotEq, "load"),
                compare(&cast, Operator::NotEq, "load"),
                "TextInDictionary",
            ),
            (
                compare(&column, Operator::Eq, "none"),
                compare(&cast, Operator::Eq, "none"),
                "TextInDictionary",
            ),
            (
                compare(&column, Operator::Lt, "load"),
                compare(&cast, Operator::Lt, "load"),
                "BinaryExpr",
            ),
            (
                compare(&column, Operator::IsDistinctFrom, "load"),
                compare(&cast, Operator::IsDistinctFrom, "load"),
                "BinaryExpr",
            ),
            (
                in_list(&column, &["load", "gps.speed"], false)?,
                in_list(&cast, &["load", "gps.speed"], false)?,
                "TextInDictionary",
            ),
            (
                in_list(&column, &["load", "gps.speed"], true)?,
                in_list(&cast, &["load", "gps.speed"], true)?,
                "TextInDictionary",
            ),
        ];
        for (logical_predicate, on_text, kind) in cases {
            let rewritten = adapter.rewrite(logical_predicate)?;
            let on_dictionary = match kind {
                "TextInDictionary" => rewritten.is::<TextInDictionary>(),
                _ => rewritten.is::<BinaryExpr>() && !format!("{rewritten}").contains("CAST"),
            };
            assert!(
                on_dictionary,
                "{rewritten} is not a {kind} on the dictionary"
            );
            let got = rewritten.evaluate(&batch)?.into_array(batch.num_rows())?;
            let want = on_text.evaluate(&batch)?.into_array(batch.num_rows())?;
            assert_eq!(
                got.as_boolean(),
                want.as_boolean(),
                "{rewritten} against {on_text}"
            );
        }
        Ok(())
    }

    #[test]
    fn projected_dictionary_columns_are_cast_to_text() -> Result<()> {
        let batch = dictionary_batch()?;
        let logical = Schema::new(vec![Field::new("series", DataType::Utf8View, true)]);
        let adapter = LakeExprAdapterFactory.create(Arc::new(logical), batch.schema())?;
        let projected = adapter.rewrite(Arc::new(Column::new("series", 0)))?;
        let read = projected.evaluate(&batch)?.into_array(batch.num_rows())?;
        assert_eq!(read.data_type(), &DataType::Utf8View);
        assert_eq!(read.as_string_view().value(1), "load");
        Ok(())
    }
}
