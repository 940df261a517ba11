#!/usr/bin/env python3
"""One refresh of the provisioned Fleet overview dashboard: every panel query of
deploy/grafana/dashboards/fleet-overview.json, its macros expanded as Grafana expands them for
the last 24 h of the data set with 1-minute groups, sent over Twinlake's PostgreSQL port as
Grafana's lib/pq sends it (psycopg2: the simple protocol, text results); against the same
questions in DuckDB over the same Parquet files (the views of benches/duckdb/setup.sql). Each
panel's rows must be the same in both, order aside where the panel does not order them.

Usage: grafana.py --bin TWINLAKE --data DIR --json OUT [--repeats 5]
  --data  the directory of `twinlake bench queries --dir DIR` (its lake is DIR/lake)
"""

import argparse
import datetime
import json
import os
import re
import socket
import statistics
import subprocess
import tempfile
import time

import duckdb
import psycopg2

from peers import HERE, difference, duckdb_over, files

ROOT = os.path.dirname(HERE)
DASHBOARD = os.path.join(ROOT, "deploy", "grafana", "dashboards", "fleet-overview.json")

# The same questions in DuckDB, by panel title; {lo} and {hi} are the range as naive UTC.
ACTIVE = """
WITH last_clear AS (
    SELECT entity, type, max(time) AS cleared_at FROM alarms WHERE status = 'cleared' GROUP BY entity, type
), open_raises AS (
    SELECT a.gateway, a.entity, a.type, a.severity, a.text, a.time
    FROM alarms a LEFT JOIN last_clear c ON a.entity = c.entity AND a.type = c.type
    WHERE a.status = 'raised' AND (c.cleared_at IS NULL OR a.time > c.cleared_at)
), ranked AS (
    SELECT *, row_number() OVER (PARTITION BY entity, type ORDER BY time DESC) AS newest,
           min(time) OVER (PARTITION BY entity, type) AS first_raised,
           count(*) OVER (PARTITION BY entity, type) AS count
    FROM open_raises)
SELECT gateway, entity, type, severity, text, first_raised, time AS last_updated, count
FROM ranked WHERE newest = 1"""
DUCKDB = {
    "Gateways reporting":
        "SELECT count(DISTINCT gateway) AS reporting FROM latest WHERE time BETWEEN '{lo}' AND '{hi}'",
    "Gateways silent in the range":
        "SELECT count(*) AS silent FROM (SELECT DISTINCT gateway FROM entities WHERE entity = gateway) g "
        "WHERE g.gateway NOT IN (SELECT gateway FROM latest WHERE time BETWEEN '{lo}' AND '{hi}')",
    "Active alarms by severity":
        "SELECT severity AS metric, count(*) AS value FROM (" + ACTIVE + ") GROUP BY severity "
        "ORDER BY CASE severity WHEN 'critical' THEN 0 WHEN 'major' THEN 1 WHEN 'minor' THEN 2 ELSE 3 END",
    "Gateways by depot":
        "SELECT json_extract_string(value, '$') AS depot, count(*) AS gateways FROM twin_history "
        "WHERE valid_to IS NULL AND fragment = 'depot' AND entity = gateway GROUP BY 1 ORDER BY 1",
    "Values stored per minute, by kind":
        "SELECT floor(epoch(time)/60)*60 AS time, type AS metric, count(*) AS value FROM measurements "
        "WHERE time BETWEEN '{lo}' AND '{hi}' GROUP BY 1, 2 ORDER BY 1",
    "Messages rejected per minute, by reason":
        "SELECT floor(epoch(received_at)/60)*60 AS time, reason_code AS metric, count(*) AS value "
        "FROM rejected WHERE received_at BETWEEN '{lo}' AND '{hi}' GROUP BY 1, 2 ORDER BY 1",
    "Gateways silent for 30 minutes before the end of the range":
        "SELECT g.gateway, max(l.time) AS last_reading "
        "FROM (SELECT DISTINCT gateway FROM entities WHERE entity = gateway) g "
        "LEFT JOIN latest l ON l.gateway = g.gateway GROUP BY g.gateway "
        "HAVING max(l.time) IS NULL OR max(l.time) < TIMESTAMP '{hi}' - INTERVAL 30 MINUTE "
        "ORDER BY last_reading NULLS FIRST, g.gateway",
    "Active alarms": ACTIVE + " ORDER BY last_updated DESC",
}


def expand(sql, start, end):
    """Grafana's macros for the range [start, end] (ISO 8601, UTC), as §2.6 of grafana.md."""
    def group(match):
        column, interval = [a.strip() for a in match.group(2).split(",")]
        interval = interval.strip("'")
        seconds = int(interval[:-1]) * {"s": 1, "m": 60, "h": 3600}[interval[-1]]
        alias = ' AS "time"' if match.group(1) == "timeGroupAlias" else ""
        return f"floor(extract(epoch from {column})/{seconds})*{seconds}{alias}"
    sql = sql.replace("$__interval", "1m")
    sql = re.sub(r"\$__(timeGroupAlias|timeGroup)\(([^)]*)\)", group, sql)
    sql = re.sub(r"\$__timeFilter\(([^)]*)\)", lambda m: f"{m.group(1)} BETWEEN '{start}' AND '{end}'", sql)
    sql = sql.replace("$__timeFrom()", f"'{start}'").replace("$__timeTo()", f"'{end}'")
    return sql


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, what, seconds=300):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if predicate():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def normalised(rows):
    """Rows with times as epoch seconds, sorted."""
    def cell(value):
        if isinstance(value, datetime.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=datetime.timezone.utc)
            return f"{value.timestamp():.0f}"
        return value
    rows = [[cell(v) for v in row] for row in rows]
    return sorted(rows, key=lambda r: [str(v) for v in r])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--json", required=True)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    with open(DASHBOARD) as f:
        panels = [(p["title"], t["rawSql"]) for p in json.load(f)["panels"] for t in p["targets"]]
    pg_port = free_port()
    serve = subprocess.Popen(
        [args.bin, "serve", "--data-dir", args.data, "--pg-listen", f"127.0.0.1:{pg_port}",
         "--http-listen", f"127.0.0.1:{free_port()}", "--mqtt-listen", f"127.0.0.1:{free_port()}"],
        env={**os.environ, "RUST_LOG": "warn,buoyant_kernel=off"})
    try:
        dsn = f"host=127.0.0.1 port={pg_port} user=grafana dbname=twinlake sslmode=disable"
        wait_for(lambda: psycopg2.connect(dsn).close() is None, "the PostgreSQL port")
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        cur = conn.cursor()
        # `latest` is filled from the history in the background at start.
        cur.execute("SELECT count(DISTINCT gateway) FROM measurements")
        gateways = cur.fetchone()[0]
        def latest_loaded():
            cur.execute("SELECT count(DISTINCT gateway) FROM latest")
            return cur.fetchone()[0] == gateways
        wait_for(latest_loaded, "latest to be loaded")
        cur.execute("SELECT max(time) FROM measurements")
        end = cur.fetchone()[0].astimezone(datetime.timezone.utc)
        start = end - datetime.timedelta(hours=24)
        iso = lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ")
        naive = lambda t: t.strftime("%Y-%m-%d %H:%M:%S")
        queries = [(title, expand(sql, iso(start), iso(end))) for title, sql in panels]

        db, _ = duckdb_over(os.path.join(args.data, "lake"))
        rejected = files(os.path.join(args.data, "lake"), "rejected")
        db.execute(f"CREATE VIEW rejected AS SELECT * FROM read_parquet({rejected!r})" if rejected else
                   "CREATE TABLE rejected (received_at TIMESTAMPTZ, reason_code VARCHAR)")
        theirs = [DUCKDB[title].format(lo=naive(start), hi=naive(end)) for title, _ in queries]

        report = {"range": [iso(start), iso(end)], "panels": {}}
        refreshes = {"twinlake_pg_ms": [], "duckdb_ms": []}
        for repeat in range(args.repeats + 1):
            total_ours, total_theirs = 0.0, 0.0
            for (title, sql), duck in zip(queries, theirs):
                began = time.perf_counter()
                cur.execute(sql)
                ours = cur.fetchall()
                ours_ms = (time.perf_counter() - began) * 1e3
                began = time.perf_counter()
                rows = db.execute(duck).fetchall()
                theirs_ms = (time.perf_counter() - began) * 1e3
                total_ours += ours_ms
                total_theirs += theirs_ms
                if repeat == 0:  # warm-up: checks the answers, times nothing
                    # Panels order by time only: ties come in any order, so rows compare sorted.
                    differs = difference(
                        [[str(c) for c in r] for r in normalised(ours)], normalised(rows))
                    report["panels"][title] = {"rows": len(ours), "same_result": differs is None,
                                               "twinlake_pg_ms": [], "duckdb_ms": []}
                    if differs:
                        report["panels"][title]["first_difference"] = differs
                    continue
                report["panels"][title]["twinlake_pg_ms"].append(ours_ms)
                report["panels"][title]["duckdb_ms"].append(theirs_ms)
            if repeat:
                refreshes["twinlake_pg_ms"].append(total_ours)
                refreshes["duckdb_ms"].append(total_theirs)
        for panel in report["panels"].values():
            for key in ("twinlake_pg_ms", "duckdb_ms"):
                panel[key] = statistics.median(panel[key])
        report["refresh_median_ms"] = {k: statistics.median(v) for k, v in refreshes.items()}
        report["ratio"] = report["refresh_median_ms"]["twinlake_pg_ms"] / report["refresh_median_ms"]["duckdb_ms"]
        report["duckdb_version"] = duckdb.__version__
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(json.dumps(report, indent=2))
        failed = [t for t, p in report["panels"].items() if not p["same_result"]]
        if failed:
            raise SystemExit(f"answers differ from DuckDB's: {failed}")
    finally:
        serve.terminate()
        serve.wait()


if __name__ == "__main__":
    main()
