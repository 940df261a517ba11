//! The session PostgreSQL clients query in: every Twinlake table, plus what PostgreSQL
//! clients look for: pg_catalog (from datafusion-postgres), an information_schema in
//! PostgreSQL's shape (PostgreSQL type names, `udt_name`, 1-based `ordinal_position`), and
//! `current_setting`. It is a session of its own, so none of it shows over HTTP.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int32Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::{MemTable, TableType};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
use datafusion::prelude::SessionContext;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::setup_pg_catalog;
use twinlake_query::{QueryEngine, QueryError};

/// The catalog and schema Twinlake's tables are in, as PostgreSQL clients see them.
pub(crate) const CATALOG: &str = "datafusion";
const SCHEMA: &str = "public";

/// What `current_setting(name)` and `SHOW name` answer: fixed, as Twinlake has no settings a
/// client may change. `server_version_num` tells clients which PostgreSQL to expect.
pub(crate) const SETTINGS: [(&str, &str); 12] = [
    ("server_version", "16.6"),
    ("server_version_num", "160000"),
    ("search_path", "\"$user\", public"),
    ("timezone", "UTC"),
    ("datestyle", "ISO, MDY"),
    ("client_encoding", "UTF8"),
    ("server_encoding", "UTF8"),
    ("standard_conforming_strings", "on"),
    ("integer_datetimes", "on"),
    ("max_identifier_length", "63"),
    ("default_transaction_read_only", "on"),
    ("transaction_read_only", "on"),
];

pub(crate) fn setting(name: &str) -> Option<&'static str> {
    let name = name.to_ascii_lowercase();
    SETTINGS
        .iter()
        .find(|(known, _)| *known == name)
        .map(|(_, value)| *value)
}

/// A session over `engine`'s tables with PostgreSQL's catalogs.
pub(crate) async fn postgres_session(engine: &QueryEngine) -> Result<SessionContext, QueryError> {
    let session = engine.new_session(false).await?;
    let failed = |e: Box<DataFusionError>| QueryError::Failed(format!("pg_catalog: {e}"));
    setup_pg_catalog(&session, CATALOG, EmptyContextProvider).map_err(failed)?;
    session.register_udf(current_setting());
    let information_schema = information_schema(&session)
        .await
        .map_err(|e| QueryError::Failed(format!("information_schema: {e}")))?;
    session
        .catalog(CATALOG)
        .ok_or_else(|| QueryError::Failed(format!("no catalog {CATALOG}")))?
        .register_schema("information_schema", information_schema)
        .map_err(|e| QueryError::Failed(format!("information_schema: {e}")))?;
    Ok(session)
}

fn current_setting() -> datafusion::logical_expr::ScalarUDF {
    let answer = |args: &[ColumnarValue]| {
        let name = match args.first() {
            Some(ColumnarValue::Scalar(ScalarValue::Utf8(Some(name)))) => name.clone(),
            _ => {
                return Err(DataFusionError::Plan(
                    "current_setting takes the name of a setting as a literal".to_owned(),
                ));
            }
        };
        let value = setting(&name).ok_or_else(|| {
            DataFusionError::Plan(format!("unrecognized configuration parameter \"{name}\""))
        })?;
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(
            value.to_owned(),
        ))))
    };
    create_udf(
        "current_setting",
        vec![DataType::Utf8],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(answer),
    )
}

/// information_schema's `schemata`, `tables` and `columns` over the public schema, built once:
/// Twinlake's tables are fixed for the life of the server.
async fn information_schema(
    session: &SessionContext,
) -> Result<Arc<dyn SchemaProvider>, DataFusionError> {
    let public = session
        .catalog(CATALOG)
        .and_then(|catalog| catalog.schema(SCHEMA))
        .ok_or_else(|| DataFusionError::Plan(format!("no schema {SCHEMA}")))?;
    let mut names = public.table_names();
    names.sort();
    let mut tables = Rows::default();
    let mut columns = Rows::default();
    for name in &names {
        let Some(table) = public.table(name).await? else {
            continue;
        };
        let table_type = match table.table_type() {
            TableType::View => "VIEW",
            _ => "BASE TABLE",
        };
        tables.push(&[CATALOG, SCHEMA, name, table_type]);
        for (position, field) in table.schema().fields().iter().enumerate() {
            let (data_type, udt_name) = postgres_type(field.data_type());
            let nullable = if field.is_nullable() { "YES" } else { "NO" };
            columns.push(&[
                CATALOG,
                SCHEMA,
                name,
                field.name(),
                nullable,
                data_type,
                udt_name,
            ]);
            columns
                .positions
                .push(i32::try_from(position + 1).unwrap_or(i32::MAX));
        }
    }
    let schema = MemorySchemaProvider::new();
    let schemata = Rows {
        text: vec![
            vec![CATALOG.to_owned(), SCHEMA.to_owned(), "twinlake".to_owned()],
            vec![
                CATALOG.to_owned(),
                "information_schema".to_owned(),
                "twinlake".to_owned(),
            ],
            vec![
                CATALOG.to_owned(),
                "pg_catalog".to_owned(),
                "twinlake".to_owned(),
            ],
        ],
        positions: Vec::new(),
    };
    let text = |names: &[&str]| {
        names
            .iter()
            .map(|n| Field::new(*n, DataType::Utf8, true))
            .collect::<Vec<_>>()
    };
    let schemata = schemata.table(text(&["catalog_name", "schema_name", "schema_owner"]))?;
    schema.register_table("schemata".to_owned(), schemata)?;
    let tables = tables.table(text(&[
        "table_catalog",
        "table_schema",
        "table_name",
        "table_type",
    ]))?;
    schema.register_table("tables".to_owned(), tables)?;
    let mut column_fields = text(&[
        "table_catalog",
        "table_schema",
        "table_name",
        "column_name",
        "is_nullable",
        "data_type",
        "udt_name",
    ]);
    column_fields.push(Field::new("ordinal_position", DataType::Int32, false));
    schema.register_table("columns".to_owned(), columns.table(column_fields)?)?;
    Ok(Arc::new(schema))
}

/// The rows of an information_schema table: text columns, and for `columns` the positions.
#[derive(Default)]
struct Rows {
    text: Vec<Vec<String>>,
    positions: Vec<i32>,
}

impl Rows {
    fn push(&mut self, row: &[&str]) {
        self.text
            .push(row.iter().map(|s| (*s).to_owned()).collect());
    }

    fn table(self, fields: Vec<Field>) -> Result<Arc<MemTable>, DataFusionError> {
        let schema: SchemaRef = Arc::new(Schema::new(fields));
        let width = self.text.first().map_or(0, Vec::len);
        let mut arrays: Vec<ArrayRef> = (0..width)
            .map(|column| {
                let values = self.text.iter().map(|row| row[column].as_str());
                Arc::new(StringArray::from_iter_values(values)) as ArrayRef
            })
            .collect();
        if schema.fields().len() > width {
            arrays.push(Arc::new(Int32Array::from(self.positions)));
        }
        let batch = RecordBatch::try_new(Arc::clone(&schema), arrays)?;
        Ok(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))
    }
}

/// PostgreSQL's `data_type` and `udt_name` for an Arrow type, as the PostgreSQL port sends
/// it (dictionaries as their values).
fn postgres_type(data_type: &DataType) -> (&'static str, &'static str) {
    match data_type {
        DataType::Boolean => ("boolean", "bool"),
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => ("smallint", "int2"),
        DataType::Int32 | DataType::UInt16 => ("integer", "int4"),
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => ("bigint", "int8"),
        DataType::Float16 | DataType::Float32 => ("real", "float4"),
        DataType::Float64 => ("double precision", "float8"),
        DataType::Decimal128(..) | DataType::Decimal256(..) => ("numeric", "numeric"),
        DataType::Timestamp(_, Some(_)) => ("timestamp with time zone", "timestamptz"),
        DataType::Timestamp(_, None) => ("timestamp without time zone", "timestamp"),
        DataType::Date32 | DataType::Date64 => ("date", "date"),
        DataType::Time32(_) | DataType::Time64(_) => ("time without time zone", "time"),
        DataType::Duration(_) | DataType::Interval(_) => ("interval", "interval"),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => ("bytea", "bytea"),
        DataType::Dictionary(_, value) => postgres_type(value),
        DataType::List(_) | DataType::LargeList(_) => ("ARRAY", "_text"),
        _ => ("text", "text"),
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::datatypes::TimeUnit;

    use super::*;

    #[test]
    fn arrow_types_get_postgres_names() {
        let utc = DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()));
        assert_eq!(
            postgres_type(&utc),
            ("timestamp with time zone", "timestamptz")
        );
        assert_eq!(
            postgres_type(&DataType::Float64),
            ("double precision", "float8")
        );
        let dictionary = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
        assert_eq!(postgres_type(&dictionary), ("text", "text"));
        assert_eq!(postgres_type(&DataType::Utf8View), ("text", "text"));
        assert_eq!(postgres_type(&DataType::Int64), ("bigint", "int8"));
        assert_eq!(setting("SERVER_VERSION_NUM"), Some("160000"));
        assert_eq!(setting("nonsense"), None);
    }
}
