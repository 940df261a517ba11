#!/usr/bin/env python3
"""What users would pick instead, on Twinlake's own data: DuckDB answering the same questions
over the same Parquet files (the files of each Delta table's current snapshot, read with
Python's `deltalake`), with its results compared to Twinlake's; and the `measurements` rows
written as plain zstd Parquet by pyarrow with default settings, for bytes per value.

Usage: peers.py --lake DIR --results DIR --json OUT [--repeats 5]
  --lake     the lake root of `twinlake bench queries --dir D` (D/lake)
  --results  the CSV results of `twinlake bench queries --results R`
"""

import argparse
import csv
import json
import math
import os
import statistics
import tempfile
import time

import deltalake
import duckdb
import pyarrow.parquet as pq


def files(lake, table):
    return deltalake.DeltaTable(os.path.join(lake, table)).file_uris()


# The twin as DuckDB sees it: the newest registration of every entity and the newest value of
# every twin fragment (the simulated fleet neither moves nor deregisters entities, so the
# current hierarchy is the hierarchy at every reading's time).
SETUP = """
SET TimeZone = 'UTC';
CREATE VIEW measurements AS
    SELECT * REPLACE (CAST(time AS TIMESTAMP) AS time) FROM read_parquet({measurements});
CREATE VIEW entities AS
    SELECT entity, parent, name, type FROM (
        SELECT *, row_number() OVER (PARTITION BY entity ORDER BY time DESC) AS n
        FROM read_parquet({entity_changes}))
    WHERE n = 1 AND change <> 'deregistered';
CREATE VIEW twin AS
    SELECT entity, fragment, value FROM (
        SELECT *, row_number() OVER (PARTITION BY entity, fragment ORDER BY time DESC) AS n
        FROM read_parquet({twin_changes}))
    WHERE n = 1 AND value IS NOT NULL;
"""

# The same questions as queries/*.sql, in DuckDB's SQL.
QUERIES = {
    "06-average-daily-driving-duration": """
        WITH buckets AS (
            SELECT entity, time_bucket(INTERVAL '10 minutes', time) AS bucket, avg(value) AS speed
            FROM measurements WHERE type = 'telemetry' AND series = 'gps.speed'
            GROUP BY entity, bucket)
        SELECT d.name AS depot, e.name AS truck,
               strftime(date_trunc('day', b.bucket), '%Y-%m-%dT%H:%M:%SZ') AS day,
               round(count(*) FILTER (WHERE b.speed > 1) / 6.0, 2) AS driving_hours
        FROM buckets b JOIN entities e ON e.entity = b.entity JOIN entities d ON d.entity = e.parent
        GROUP BY d.name, e.name, day ORDER BY depot, truck, day""",
    "08-breakdown-frequency": """
        WITH buckets AS (
            SELECT entity, time_bucket(INTERVAL '10 minutes', time) AS bucket,
                   count(*) FILTER (WHERE value = 0) * 1.0 / count(*) >= 0.5 AS down
            FROM measurements WHERE type = 'telemetry' AND series = 'gps.speed'
            GROUP BY entity, bucket),
        transitions AS (
            SELECT entity, down, lead(down) OVER (PARTITION BY entity ORDER BY bucket) AS next_down
            FROM buckets)
        SELECT json_extract_string(m.value, '$') AS model, count(*) AS breakdowns,
               count(DISTINCT t.entity) AS trucks
        FROM transitions t JOIN twin m ON m.entity = t.entity AND m.fragment = 'model'
        WHERE NOT t.down AND t.next_down
        GROUP BY model ORDER BY model""",
    "09-average-load-per-model": """
        SELECT d.name AS depot, json_extract_string(m.value, '$') AS model,
               CAST(json_extract(c.value, '$.kg') AS DOUBLE) AS capacity_kg,
               round(avg(l.value), 0) AS avg_load_kg,
               round(avg(l.value) / CAST(json_extract(c.value, '$.kg') AS DOUBLE), 3) AS avg_load_share
        FROM measurements l
        JOIN entities e ON e.entity = l.entity JOIN entities d ON d.entity = e.parent
        JOIN twin m ON m.entity = e.entity AND m.fragment = 'model'
        JOIN twin c ON c.entity = e.entity AND c.fragment = 'capacity'
        WHERE l.type = 'telemetry' AND l.series = 'load'
        GROUP BY d.name, model, capacity_kg ORDER BY depot, model""",
    "full-scan": "SELECT count(*), avg(value) FROM measurements",
}


def same(twinlake_rows, duckdb_rows):
    """Equal row by row; numbers within rounding of the last printed digit."""
    if len(twinlake_rows) != len(duckdb_rows):
        return False
    for ours, theirs in zip(twinlake_rows, duckdb_rows):
        if len(ours) != len(theirs):
            return False
        for a, b in zip(ours, theirs):
            try:
                x, y = float(a), float(b)
            except (TypeError, ValueError):
                if str(a) != str(b):
                    return False
                continue
            if not math.isclose(x, y, rel_tol=1e-9, abs_tol=0.0101):
                return False
    return True


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lake", required=True)
    parser.add_argument("--results", required=True)
    parser.add_argument("--json", required=True)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    sources = {t: files(args.lake, t) for t in ("measurements", "entity_changes", "twin_changes")}
    db = duckdb.connect()
    db.execute(SETUP.format(**{t: repr(f) for t, f in sources.items()}))
    report = {"duckdb_version": duckdb.__version__, "queries": {}}
    for name, sql in QUERIES.items():
        times = []
        for _ in range(args.repeats):
            began = time.perf_counter()
            rows = db.execute(sql).fetchall()
            times.append((time.perf_counter() - began) * 1e3)
        entry = {"duckdb_median_ms": statistics.median(times), "rows": len(rows)}
        ours = os.path.join(args.results, f"{name}.csv")
        if os.path.exists(ours):
            with open(ours, newline="") as f:
                entry["same_result"] = same(list(csv.reader(f))[1:], rows)
        report["queries"][name] = entry

    table = pq.ParquetDataset(sources["measurements"]).read()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "measurements.parquet")
        pq.write_table(table, path, compression="zstd")
        report["pyarrow_zstd_bytes_per_value"] = os.path.getsize(path) / table.num_rows
    report["twinlake_bytes_per_value"] = (
        sum(os.path.getsize(f.removeprefix("file://")) for f in sources["measurements"]) / table.num_rows
    )
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
