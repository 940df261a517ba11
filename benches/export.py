#!/usr/bin/env python3
"""Export of the data set's measurements, each row with its path, its parent and its gateway's
depot as of its time: `twinlake export --tables measurements --twin depot` (the server writes
the Parquet dataset) against DuckDB writing the same rows over the same lake files
(`COPY (SELECT … ASOF JOIN …) TO … (FORMAT parquet, PARTITION_BY date)`, with the views of
benches/duckdb/setup.sql), in the same run, both with the same memory limit. Reports rows per
second and peak RSS of each (the server's peak is reset just before the export), and checks that
the two datasets hold the same rows: count, sum of values, rows per depot and per path.

Usage: export.py --bin TWINLAKE --data DIR --json OUT [--memory-mb 512]
  --data  the directory of `twinlake bench queries --dir DIR` (its lake is DIR/lake)
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

import duckdb

from grafana import free_port, wait_for
from peers import HERE

DUCKDB_EXPORT = """
import sys, duckdb
sys.path.insert(0, {here!r})
from peers import duckdb_over
db, _ = duckdb_over({lake!r})
if {memory_mb}:
    db.execute("SET memory_limit = '{memory_mb}MB'")
db.execute("SET temp_directory = {spill!r}")
db.execute('''
COPY (
    SELECT m.*, p.path, e.parent, json_extract_string(d.value, '$') AS depot,
           CAST(m.time AS DATE) AS date
    FROM measurements m
    JOIN entity_paths p ON p.entity = m.entity
    JOIN entities e ON e.entity = m.entity
    ASOF LEFT JOIN (SELECT gateway, value, valid_from FROM gateway_twin_history
                    WHERE fragment = 'depot') d
      ON d.gateway = m.gateway AND m.time >= d.valid_from
    ORDER BY m.entity, m.time
) TO {out!r} (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (date))''')
"""


def query(http, sql):
    request = urllib.request.Request(
        f"{http}/api/v1/query", data=json.dumps({"sql": sql, "format": "json"}).encode(),
        headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as answer:
        return json.loads(answer.read())


def peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return None


def summary(glob):
    """What a dataset holds: rows, sum of values, rows per depot and per path."""
    db = duckdb.connect()
    rows, total = db.execute(f"SELECT count(*), sum(value) FROM '{glob}'").fetchall()[0]
    depots = db.execute(f"SELECT depot, count(*) FROM '{glob}' GROUP BY 1 ORDER BY 1").fetchall()
    paths = db.execute(
        f"SELECT path, parent, count(*) FROM '{glob}' GROUP BY ALL ORDER BY ALL").fetchall()
    return {"rows": rows, "sum": total, "depots": depots, "paths": paths}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--json", required=True)
    parser.add_argument("--memory-mb", type=int, default=512)
    args = parser.parse_args()
    lake = os.path.join(args.data, "lake")
    work = tempfile.mkdtemp(prefix="twinlake-export-bench-")
    http = f"http://127.0.0.1:{free_port()}"
    serve = subprocess.Popen(
        [args.bin, "serve", "--data-dir", args.data, "--http-listen", http.removeprefix("http://"),
         "--pg-listen", "off", "--mqtt-listen", f"127.0.0.1:{free_port()}",
         "--export-memory-mb", str(args.memory_mb)],
        env={**os.environ, "RUST_LOG": "warn,buoyant_kernel=off"})
    try:
        wait_for(lambda: query(http, "SELECT 1"), "the HTTP API")
        gateways = query(http, "SELECT count(DISTINCT gateway) AS n FROM measurements")[0]["n"]
        # `latest` is filled from the history at start: let that finish before measuring.
        wait_for(lambda: query(http, "SELECT count(DISTINCT gateway) AS n FROM latest")[0]["n"]
                 == gateways, "latest to be loaded")
        # Reset the server's peak RSS: what follows is the export's.
        with open(f"/proc/{serve.pid}/clear_refs", "w") as f:
            f.write("5")
        rss_before = peak_rss_kib(serve.pid)
        ours = os.path.join(work, "twinlake")
        began = time.perf_counter()
        subprocess.run([args.bin, "export", "--url", http, "--tables", "measurements",
                        "--twin", "depot", "--out", ours], check=True, stdout=subprocess.DEVNULL)
        twinlake_s = time.perf_counter() - began
        twinlake_rss = peak_rss_kib(serve.pid)
    finally:
        serve.terminate()
        serve.wait()

    # DuckDB under the same memory limit; when it runs out of memory there (it does on the
    # medium set), again under its own default (80 % of RAM), and the report says so.
    theirs = os.path.join(work, "duckdb")
    duckdb_limit_mb = args.memory_mb
    for limit in (args.memory_mb, 0):
        subprocess.run(["rm", "-rf", theirs], check=False)
        script = DUCKDB_EXPORT.format(here=HERE, lake=lake, memory_mb=limit,
                                      spill=os.path.join(work, "duckdb-spill"), out=theirs)
        timing = os.path.join(work, "duckdb.time")
        began = time.perf_counter()
        done = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", timing, sys.executable, "-c",
                               script], stderr=subprocess.PIPE, text=True)
        duckdb_s = time.perf_counter() - began
        if done.returncode == 0:
            duckdb_limit_mb = limit or None
            break
        if "Out of Memory" not in done.stderr or not limit:
            raise SystemExit(f"DuckDB failed: {done.stderr}")
        print(f"DuckDB ran out of memory under {limit} MB; again with its default limit",
              file=sys.stderr)
    with open(timing) as f:
        duckdb_rss = int(f.read().split()[-1])

    mine, yours = summary(f"{ours}/measurements/**/*.parquet"), summary(f"{theirs}/**/*.parquet")
    same = (mine["rows"] == yours["rows"] and abs(mine["sum"] - yours["sum"]) < 1e-6 * abs(yours["sum"])
            and mine["depots"] == yours["depots"] and mine["paths"] == yours["paths"])
    size = lambda folder: sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs)
    report = {
        "rows": mine["rows"],
        "same_rows": same,
        "memory_limit_mb": args.memory_mb,
        "twinlake": {"seconds": twinlake_s, "rows_per_s": mine["rows"] / twinlake_s,
                     "peak_rss_kib": twinlake_rss, "rss_before_kib": rss_before,
                     "bytes": size(ours)},
        "duckdb": {"seconds": duckdb_s, "rows_per_s": yours["rows"] / duckdb_s,
                   "peak_rss_kib": duckdb_rss, "bytes": size(theirs),
                   # None: DuckDB's default (80 % of RAM), after it ran out under ours.
                   "memory_limit_mb": duckdb_limit_mb},
        "duckdb_version": duckdb.__version__,
    }
    report["ratio_rows_per_s"] = report["twinlake"]["rows_per_s"] / report["duckdb"]["rows_per_s"]
    if not same:
        report["twinlake_summary"] = {k: mine[k] for k in ("rows", "sum", "depots")}
        report["duckdb_summary"] = {k: yours[k] for k in ("rows", "sum", "depots")}
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2, default=str)
    print(json.dumps(report, indent=2, default=str))
    subprocess.run(["rm", "-rf", work], check=False)
    if not same:
        raise SystemExit("the two exports hold different rows")


if __name__ == "__main__":
    main()
