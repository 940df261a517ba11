#!/usr/bin/env python3
"""What users would pick instead, on Twinlake's own data: DuckDB answering the same questions
(`benches/duckdb/<name>.sql` for each `queries/<name>.sql`, on the views of
`benches/duckdb/setup.sql`) over the same Parquet files (the files of each Delta table's current
snapshot, read with Python's `deltalake`), with its results compared cell by cell to
Twinlake's; and the `measurements` rows written as plain zstd Parquet by pyarrow with default
settings, for bytes per value.

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


HERE = os.path.dirname(os.path.abspath(__file__))
TABLES = ("measurements", "entity_changes", "twin_changes", "alarms", "events", "health")


def duckdb_over(lake):
    """DuckDB with Twinlake's tables and views (benches/duckdb/setup.sql) over the lake's current
    files; and those files, by table."""
    sources = {t: files(lake, t) for t in TABLES}
    db = duckdb.connect()
    with open(os.path.join(HERE, "duckdb", "setup.sql")) as f:
        db.execute(f.read().format(**{t: repr(f) for t, f in sources.items()}))
    return db, sources


def duckdb_queries():
    """The same questions as queries/*.sql, in DuckDB's SQL (benches/duckdb/<name>.sql)."""
    folder = os.path.join(HERE, "duckdb")
    queries = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".sql") and name != "setup.sql":
            with open(os.path.join(folder, name)) as f:
                queries[name.removesuffix(".sql")] = f.read()
    return queries


def as_csv(cell):
    """A DuckDB value as Twinlake's CSV writes it: NULL empty, booleans in lower case."""
    if cell is None:
        return ""
    if isinstance(cell, bool):
        return str(cell).lower()
    return cell


def difference(twinlake_rows, duckdb_rows):
    """None when equal row by row (numbers within rounding of the last printed digit), else
    the first row that differs."""
    if len(twinlake_rows) != len(duckdb_rows):
        return f"{len(twinlake_rows)} rows vs {len(duckdb_rows)}"
    for ours, theirs in zip(twinlake_rows, duckdb_rows):
        theirs = [as_csv(cell) for cell in theirs]
        if len(ours) != len(theirs) or not all(map(same_cell, ours, theirs)):
            return f"{ours} vs {theirs}"
    return None


def same_cell(a, b):
    try:
        x, y = float(a), float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)
    return math.isclose(x, y, rel_tol=1e-9, abs_tol=0.0101)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lake", required=True)
    parser.add_argument("--results", required=True)
    parser.add_argument("--json", required=True)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    db, sources = duckdb_over(args.lake)
    report = {"duckdb_version": duckdb.__version__, "queries": {}}
    for name, sql in duckdb_queries().items():
        times = []
        for _ in range(args.repeats):
            began = time.perf_counter()
            rows = db.execute(sql).fetchall()
            times.append((time.perf_counter() - began) * 1e3)
        entry = {"duckdb_median_ms": statistics.median(times), "rows": len(rows)}
        ours = os.path.join(args.results, f"{name}.csv")
        if os.path.exists(ours):
            with open(ours, newline="") as f:
                differs = difference(list(csv.reader(f))[1:], rows)
            entry["same_result"] = differs is None
            if differs:
                entry["first_difference"] = differs
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
