//! `twin_at(entity, 'fragment', time)`: the value a twin fragment had for an entity at a time,
//! its own or, when it had none, its nearest ancestor's then (a truck's depot holds for the
//! devices on it). An export's session registers it over the twin history it read at its start.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{Array, RecordBatch, StringArray, TimestampNanosecondArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::exec_err;
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};
use twinlake_model::{intersect, valid_at};

use crate::hierarchy::{
    AsOf, Hierarchy, HierarchyCache, Span, look_up_per_stretch, string_array, text_of,
    time_array_of, time_type,
};

/// One value of one fragment: `value` from `from` until `to`.
#[derive(Debug)]
struct FragmentValue {
    from: i64,
    to: Option<i64>,
    value: String,
}

/// The history of some twin fragments: entity → fragment → values, oldest first.
#[derive(Debug, Default)]
pub(crate) struct TwinValues {
    values: HashMap<String, HashMap<String, Vec<FragmentValue>>>,
}

impl TwinValues {
    /// From rows of `twin_history` (`entity, fragment, value, valid_from, valid_to`). A JSON
    /// string value becomes its text (`"Depot North"` → `Depot North`); other values keep their
    /// JSON text.
    pub(crate) fn from_history(batches: &[RecordBatch]) -> Result<Self> {
        let mut twin = Self::default();
        for batch in batches {
            let text = |i: usize| string_array(batch.column(i));
            let (entities, fragments, values) = (text(0)?, text(1)?, text(2)?);
            let (froms, tos) = (
                time_array_of(batch.column(3))?,
                time_array_of(batch.column(4))?,
            );
            for row in 0..batch.num_rows() {
                if entities.is_null(row) || fragments.is_null(row) || values.is_null(row) {
                    continue;
                }
                twin.values
                    .entry(entities.value(row).to_owned())
                    .or_default()
                    .entry(fragments.value(row).to_owned())
                    .or_default()
                    .push(FragmentValue {
                        from: froms.value(row),
                        to: (!tos.is_null(row)).then(|| tos.value(row)),
                        value: plain_text(values.value(row)),
                    });
            }
        }
        for fragments in twin.values.values_mut() {
            for history in fragments.values_mut() {
                history.sort_by_key(|v| v.from);
            }
        }
        Ok(twin)
    }

    fn history(&self, entity: &str, fragment: &str) -> &[FragmentValue] {
        self.values
            .get(entity)
            .and_then(|fragments| fragments.get(fragment))
            .map_or(&[], Vec::as_slice)
    }

    /// The fragment's value for `entity` at `time`, inherited from the nearest ancestor that
    /// had one, and the stretch around `time` over which that answer holds.
    fn value_at(&self, hierarchy: &Hierarchy, entity: &str, fragment: &str, time: i64) -> AsOf {
        let own = self.history(entity, fragment);
        let Some((chain, span)) = hierarchy.chain_at(entity, time) else {
            // Not in the hierarchy then (its rows came before any registration): its own only.
            return self.first_of(&[own], time, (i64::MIN, None));
        };
        let histories: Vec<&[FragmentValue]> = chain
            .iter()
            .map(|version| self.history(&version.entity, fragment))
            .collect();
        self.first_of(&histories, time, span)
    }

    /// The first history (nearest entity first) with a value at `time`. Each history passed
    /// over narrows the stretch to its gap around `time`: a value set there later would win.
    fn first_of(&self, histories: &[&[FragmentValue]], time: i64, mut span: Span) -> AsOf {
        for history in histories {
            if let Some(found) = history.iter().find(|v| valid_at(v.from, v.to, Some(time))) {
                let span =
                    intersect(span, (found.from, found.to)).unwrap_or((time, Some(time + 1)));
                return AsOf {
                    value: Some(found.value.clone()),
                    span,
                };
            }
            span = intersect(span, gap_around(history, time)).unwrap_or((time, Some(time + 1)));
        }
        AsOf { value: None, span }
    }
}

/// The stretch around `time` in which `history` has no value.
fn gap_around(history: &[FragmentValue], time: i64) -> Span {
    let from = history
        .iter()
        .filter_map(|v| v.to.filter(|&to| to <= time))
        .max()
        .unwrap_or(i64::MIN);
    let to = history.iter().map(|v| v.from).filter(|&f| f > time).min();
    (from, to)
}

/// A JSON string as its text; anything else as its JSON.
fn plain_text(json: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(json) {
        Ok(serde_json::Value::String(text)) => text,
        _ => json.to_owned(),
    }
}

#[derive(Debug)]
pub(crate) struct TwinAtUdf {
    signature: Signature,
    twin: Arc<TwinValues>,
    hierarchy: Arc<HierarchyCache>,
}

impl TwinAtUdf {
    pub(crate) fn new(twin: Arc<TwinValues>, hierarchy: Arc<HierarchyCache>) -> Self {
        Self {
            signature: Signature::exact(
                vec![DataType::Utf8, DataType::Utf8, time_type()],
                Volatility::Stable,
            ),
            twin,
            hierarchy,
        }
    }
}

impl PartialEq for TwinAtUdf {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.twin, &other.twin)
    }
}

impl Eq for TwinAtUdf {}

impl Hash for TwinAtUdf {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name().hash(state);
    }
}

impl ScalarUDFImpl for TwinAtUdf {
    fn name(&self) -> &str {
        "twin_at"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let ColumnarValue::Scalar(fragment) = &args.args[1] else {
            return exec_err!("twin_at: the fragment must be a text literal");
        };
        let Some(fragment) = text_of(fragment).map(str::to_owned) else {
            return exec_err!("twin_at: the fragment must be a text literal");
        };
        let hierarchy = self.hierarchy.latest();
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let entities = string_array(&arrays[0])?;
        let times: TimestampNanosecondArray = time_array_of(&arrays[2])?;
        let values: StringArray = look_up_per_stretch(&entities, Some(&times), |entity, time| {
            let time = time?;
            Some(self.twin.value_at(&hierarchy, entity, &fragment, time))
        });
        Ok(ColumnarValue::Array(Arc::new(values)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(from: i64, to: Option<i64>, value: &str) -> FragmentValue {
        FragmentValue {
            from,
            to,
            value: value.to_owned(),
        }
    }

    #[test]
    fn the_nearest_entity_with_a_value_wins_for_as_long_as_nothing_nearer_changes() {
        let twin = TwinValues::default();
        // The device had its own depot only from 100 to 200; its truck north, then south at 150.
        let own = [value(100, Some(200), "own")];
        let truck = [value(0, Some(150), "north"), value(150, None, "south")];
        let at = |time| twin.first_of(&[&own, &truck], time, (i64::MIN, None));

        let before = at(50);
        assert_eq!(before.value.as_deref(), Some("north"));
        // Until the device's own value begins.
        assert_eq!(before.span, (0, Some(100)));
        let own_then = at(120);
        assert_eq!(own_then.value.as_deref(), Some("own"));
        assert_eq!(own_then.span, (100, Some(200)));
        let after = at(250);
        assert_eq!(after.value.as_deref(), Some("south"));
        assert_eq!(after.span, (200, None));
    }

    #[test]
    fn json_strings_become_their_text() {
        assert_eq!(plain_text(r#""Depot North""#), "Depot North");
        assert_eq!(plain_text(r#"{"version":"1.2"}"#), r#"{"version":"1.2"}"#);
        assert_eq!(plain_text("not json"), "not json");
    }
}
