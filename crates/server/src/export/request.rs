//! What an analyst asks an export for, checked and turned into the queries that answer it,
//! before anything is written.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use twinlake_model::Table;

use super::ExportError;

/// An export request, as `POST /api/v1/export` takes it (the CLI's flags, one to one).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportRequest {
    /// Tables to export [default: measurements, events, alarms].
    #[serde(default)]
    pub tables: Vec<String>,
    /// RFC 3339, a UTC date (`2026-11-01`), `now`, or relative to now (`-7d`, `-12h`, `-30m`).
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    /// Rows of this entity and of the entities below it at the row's time.
    #[serde(default)]
    pub subtree: Option<String>,
    /// Measurement series (`engine.temperature`); other tables are not filtered by it.
    #[serde(default)]
    pub series: Vec<String>,
    /// Any read-only query instead of the selection above.
    #[serde(default)]
    pub sql: Option<String>,
    /// Twin fragments added to every row as of its time (`depot`, `firmware`).
    #[serde(default)]
    pub twin: Vec<String>,
    /// A directory of the server's machine (absolute) or `s3://bucket/prefix`.
    pub out: String,
    /// One file per table instead of `<table>/date=…/part-….parquet`.
    #[serde(default)]
    pub single_file: bool,
    /// Replace an earlier export at `out`.
    #[serde(default)]
    pub overwrite: bool,
}

/// The tables an export can select from: those whose rows belong to an entity. (`rejected`
/// is reachable with `sql`.)
const EXPORTABLE: [Table; 7] = [
    Table::Measurements,
    Table::Events,
    Table::Alarms,
    Table::Health,
    Table::TwinChanges,
    Table::EntityChanges,
    Table::MeasurementMeta,
];

const DEFAULT_TABLES: [Table; 3] = [Table::Measurements, Table::Events, Table::Alarms];

/// The columns every selected row gets besides its table's.
pub(crate) const ADDED_COLUMNS: [&str; 2] = ["path", "parent"];

/// A checked request: what to read and how to name it.
#[derive(Debug, Clone)]
pub(crate) enum Selection {
    Tables {
        tables: Vec<Table>,
        /// `[from, to)` in ns since the epoch.
        from: Option<i64>,
        to: Option<i64>,
        /// SQL conditions on the table's rows (gateways, subtree, series), joined by AND.
        filters: Filters,
        twin: Vec<String>,
    },
    Sql(String),
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Filters {
    gateways: Vec<String>,
    subtree: Option<String>,
    series: Vec<String>,
}

impl ExportRequest {
    /// Checks everything that does not need the data: names, times, the shape of the request.
    pub(crate) fn selection(&self, now_ns: i64) -> Result<Selection, ExportError> {
        if let Some(sql) = &self.sql {
            let selected = !self.tables.is_empty()
                || self.from.is_some()
                || self.to.is_some()
                || !self.gateways.is_empty()
                || self.subtree.is_some()
                || !self.series.is_empty()
                || !self.twin.is_empty();
            if selected {
                return Err(ExportError::Invalid(
                    "--sql is the whole selection: it cannot be combined with --tables, --from, \
                     --to, --gateway, --subtree, --series or --twin (use them inside the query)"
                        .to_owned(),
                ));
            }
            if sql.trim().is_empty() {
                return Err(ExportError::Invalid("--sql is empty".to_owned()));
            }
            return Ok(Selection::Sql(sql.clone()));
        }
        let tables = self.tables()?;
        let from = self
            .from
            .as_deref()
            .map(|t| parse_time("--from", t, now_ns))
            .transpose()?;
        let to = self
            .to
            .as_deref()
            .map(|t| parse_time("--to", t, now_ns))
            .transpose()?;
        if let (Some(from), Some(to)) = (from, to)
            && to <= from
        {
            return Err(ExportError::Invalid(format!(
                "--to ({}) is not after --from ({}): nothing to export",
                self.to.as_deref().unwrap_or_default(),
                self.from.as_deref().unwrap_or_default()
            )));
        }
        for fragment in &self.twin {
            check_twin_fragment(fragment, &tables)?;
        }
        for name in self
            .gateways
            .iter()
            .chain(&self.series)
            .chain(&self.subtree)
        {
            if name.is_empty() {
                return Err(ExportError::Invalid(
                    "an empty --gateway, --series or --subtree selects nothing".to_owned(),
                ));
            }
        }
        Ok(Selection::Tables {
            tables,
            from,
            to,
            filters: Filters {
                gateways: self.gateways.clone(),
                subtree: self.subtree.clone(),
                series: self.series.clone(),
            },
            twin: self.twin.clone(),
        })
    }

    fn tables(&self) -> Result<Vec<Table>, ExportError> {
        if self.tables.is_empty() {
            return Ok(DEFAULT_TABLES.to_vec());
        }
        let mut tables = Vec::new();
        for name in &self.tables {
            let table = Table::from_name(name)
                .filter(|table| EXPORTABLE.contains(table))
                .ok_or_else(|| {
                    let known: Vec<&str> = EXPORTABLE.iter().map(|t| t.name()).collect();
                    ExportError::Invalid(format!(
                        "unknown table {name:?}: export one of {} (or any table with --sql)",
                        known.join(", ")
                    ))
                })?;
            if !tables.contains(&table) {
                tables.push(table);
            }
        }
        Ok(tables)
    }
}

/// A fragment becomes a column named after it: it must be a plain name and not one of the
/// columns already there.
fn check_twin_fragment(fragment: &str, tables: &[Table]) -> Result<(), ExportError> {
    let plain = !fragment.is_empty()
        && fragment
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !plain {
        return Err(ExportError::Invalid(format!(
            "--twin {fragment:?}: a fragment name is letters, digits, '_', '-' and '.'"
        )));
    }
    let taken = ADDED_COLUMNS.contains(&fragment)
        || tables
            .iter()
            .any(|table| table.columns().iter().any(|c| c.name == fragment));
    if taken {
        return Err(ExportError::Invalid(format!(
            "--twin {fragment:?}: the export already has a column of that name"
        )));
    }
    Ok(())
}

impl Filters {
    /// The conditions for rows of `table`, as SQL joined by AND (empty for none).
    pub(crate) fn conditions(&self, table: Table) -> Vec<String> {
        let mut conditions = Vec::new();
        if !self.gateways.is_empty() {
            conditions.push(format!("gateway IN ({})", literals(&self.gateways)));
        }
        if let Some(root) = &self.subtree {
            conditions.push(format!("in_subtree(entity, {}, time)", literal(root)));
        }
        if !self.series.is_empty() && table == Table::Measurements {
            conditions.push(format!("series IN ({})", literals(&self.series)));
        }
        conditions
    }

    pub(crate) fn subtree(&self) -> Option<&str> {
        self.subtree.as_deref()
    }

    pub(crate) fn gateways(&self) -> &[String] {
        &self.gateways
    }
}

/// A SQL text literal.
pub(crate) fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn literals(texts: &[String]) -> String {
    texts
        .iter()
        .map(|t| literal(t))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A SQL timestamp literal for `ns` since the epoch.
pub(crate) fn time_literal(ns: i64) -> String {
    format!("arrow_cast({ns}, 'Timestamp(Nanosecond, Some(\"UTC\"))')")
}

const NS_PER_SECOND: i64 = 1_000_000_000;

pub(crate) fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// `text` as ns since the epoch: RFC 3339, a UTC date, `now`, or `-<n><s|m|h|d|w>` before now.
fn parse_time(flag: &str, text: &str, now_ns: i64) -> Result<i64, ExportError> {
    let invalid = || {
        ExportError::Invalid(format!(
            "{flag} {text:?}: use RFC 3339 (2026-11-01T06:00:00Z), a date (2026-11-01), now, or \
             a time before now such as -7d, -12h, -30m"
        ))
    };
    let text = text.trim();
    if text == "now" {
        return Ok(now_ns);
    }
    if let Some(ago) = text.strip_prefix('-') {
        let unit = ago.chars().last().ok_or_else(invalid)?;
        let count: i64 = ago[..ago.len() - unit.len_utf8()]
            .parse()
            .map_err(|_| invalid())?;
        let seconds = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return Err(invalid()),
        };
        let ago = count
            .checked_mul(seconds * NS_PER_SECOND)
            .ok_or_else(invalid)?;
        return Ok(now_ns.saturating_sub(ago));
    }
    if let Ok(date) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        let midnight = date.and_hms_opt(0, 0, 0).ok_or_else(invalid)?.and_utc();
        return midnight.timestamp_nanos_opt().ok_or_else(invalid);
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
        .ok_or_else(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_764_000_000 * NS_PER_SECOND;

    fn request() -> ExportRequest {
        ExportRequest {
            out: "/tmp/x".to_owned(),
            ..ExportRequest::default()
        }
    }

    fn refusal(request: &ExportRequest) -> String {
        match request.selection(NOW) {
            Err(ExportError::Invalid(message)) => message,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn times_are_rfc_3339_dates_now_or_before_now() {
        assert_eq!(parse_time("--from", "now", NOW).ok(), Some(NOW));
        assert_eq!(
            parse_time("--from", "-7d", NOW).ok(),
            Some(NOW - 7 * 86_400 * NS_PER_SECOND)
        );
        assert_eq!(
            parse_time("--from", "-90m", NOW).ok(),
            Some(NOW - 90 * 60 * NS_PER_SECOND)
        );
        assert_eq!(
            parse_time("--from", "2026-11-01", NOW).ok(),
            Some(1_793_491_200 * NS_PER_SECOND)
        );
        assert_eq!(
            parse_time("--from", "2026-11-01T01:00:00+01:00", NOW).ok(),
            Some(1_793_491_200 * NS_PER_SECOND)
        );
        for bad in ["-7x", "yesterday", "-d", "2026-13-01", "-99999999999999d"] {
            assert!(parse_time("--from", bad, NOW).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn bad_requests_are_refused_with_what_to_do() {
        let mut unknown = request();
        unknown.tables = vec!["measurments".to_owned()];
        assert!(refusal(&unknown).contains("unknown table \"measurments\""));

        let mut backwards = request();
        backwards.from = Some("2026-11-02".to_owned());
        backwards.to = Some("2026-11-01".to_owned());
        assert!(refusal(&backwards).contains("is not after --from"));

        let mut both = request();
        both.sql = Some("SELECT 1".to_owned());
        both.gateways = vec!["truck0001".to_owned()];
        assert!(refusal(&both).contains("--sql is the whole selection"));

        let mut clash = request();
        clash.twin = vec!["value".to_owned()];
        assert!(refusal(&clash).contains("already has a column"));

        let mut odd = request();
        odd.twin = vec!["de'pot".to_owned()];
        assert!(refusal(&odd).contains("a fragment name is"));
    }

    #[test]
    fn filters_quote_what_they_are_given() {
        let filters = Filters {
            gateways: vec!["truck'1".to_owned()],
            subtree: Some("main:device:depot02".to_owned()),
            series: vec!["gps.speed".to_owned()],
        };
        assert_eq!(
            filters.conditions(Table::Measurements),
            [
                "gateway IN ('truck''1')",
                "in_subtree(entity, 'main:device:depot02', time)",
                "series IN ('gps.speed')"
            ]
        );
        assert_eq!(filters.conditions(Table::Events).len(), 2);
    }
}
