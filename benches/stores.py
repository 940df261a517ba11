#!/usr/bin/env python3
"""Storage reference points: the `measurements` rows of Twinlake's lake written to InfluxDB 1.6
and VictoriaMetrics (Debian's packages, started here with their default storage settings), as
InfluxDB line protocol, one line per reading (entity, type, time) with its values as fields, in
time order as a fleet sends them. Each store is then brought to its settled on-disk form
(InfluxDB: cache snapshotted and files fully compacted; VictoriaMetrics: flushed and
force-merged), its stored value count checked against the rows sent, and its data directory
measured: bytes per value.

Usage: stores.py --lake DIR --json OUT [--store influxdb,victoriametrics]
"""

import argparse
import concurrent.futures
import json
import os
import re
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import duckdb
import pyarrow.compute

from peers import files

LINES_PER_REQUEST = 10_000
SETTLE_TIMEOUT_S = 900


def escape(column, extra=""):
    """Line protocol escaping of commas, spaces (and `extra`) in a column's text."""
    sql = f"replace(replace({column}, ',', '\\,'), ' ', '\\ ')"
    for char in extra:
        sql = f"replace({sql}, '{char}', '\\{char}')"
    return sql


# One line per reading; a thin-edge type may be empty, a line protocol measurement may not.
LINES = f"""
SELECT concat(
    {escape("coalesce(nullif(type, ''), 'measurement')")}, ',entity=', {escape("entity", "=")}, ' ',
    string_agg({escape("series", "=")} || '=' || CAST(value AS VARCHAR), ','), ' ',
    epoch_ns(CAST(time AS TIMESTAMP))) AS line,
    count(*) AS fields
FROM read_parquet({{files}})
GROUP BY entity, type, time
ORDER BY time
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url, data=None, method=None):
    with urllib.request.urlopen(urllib.request.Request(url, data=data, method=method), timeout=300) as r:
        return r.status, r.read().decode()


def wait_ready(url, process, what):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with {process.returncode} at start")
        try:
            request(url)
            return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    raise SystemExit(f"{what} did not answer {url} within 60 s")


def directory_bytes(path):
    """Bytes allocated on disk, as `du` counts them: InfluxDB preallocates sparse index files."""
    return sum(
        os.stat(os.path.join(d, f)).st_blocks * 512 for d, _, names in os.walk(path) for f in names
    )


def send_lines(db, sources, url):
    """Posts every line to `url`, two requests in flight; returns (lines, values, seconds)."""
    result = db.sql(LINES.format(files=repr(sources)))
    # DuckDB 2 renamed fetch_record_batch to to_arrow_reader.
    reader = getattr(result, "to_arrow_reader", None) or result.fetch_arrow_reader
    reader = reader(LINES_PER_REQUEST)
    values = lines = 0
    began = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        pending = []
        for batch in reader:
            text = batch.column(0).to_pylist()
            lines += len(text)
            values += pyarrow.compute.sum(batch.column(1)).as_py()
            pending.append(pool.submit(request, url, "\n".join(text).encode(), "POST"))
            if len(pending) >= 4:
                pending.pop(0).result()
        for future in pending:
            future.result()
    return lines, values, time.perf_counter() - began


def wait_stable(measure, what, quiet_s=15):
    """Waits until `measure()` (truthy when settled) returns the same value for `quiet_s`."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        now = measure()
        if now != last:
            last, since = now, time.monotonic()
        elif now and time.monotonic() - since >= quiet_s:
            return
        time.sleep(1)
    raise SystemExit(f"{what} did not settle within {SETTLE_TIMEOUT_S} s")


INFLUXDB_CONFIG = """
reporting-disabled = true
bind-address = "127.0.0.1:{rpc}"
[meta]
  dir = "{dir}/meta"
[data]
  dir = "{dir}/data"
  wal-dir = "{dir}/wal"
  query-log-enabled = false
  # Defaults are 10 min and 4 h of quiet before a shard's cache is written to TSM files and
  # fully compacted; a benchmark cannot wait that long for the settled form.
  cache-snapshot-write-cold-duration = "5s"
  compact-full-write-cold-duration = "10s"
[monitor]
  store-enabled = false
[http]
  bind-address = "127.0.0.1:{http}"
  log-enabled = false
[continuous_queries]
  enabled = false
"""


def influxdb(db, sources, work):
    root = os.path.join(work, "influxdb")
    os.makedirs(root)
    http = free_port()
    config = os.path.join(work, "influxdb.conf")  # outside the measured directory
    with open(config, "w") as f:
        f.write(INFLUXDB_CONFIG.format(dir=root, rpc=free_port(), http=http))
    base = f"http://127.0.0.1:{http}"
    log = open(os.path.join(work, "influxdb.log"), "w")
    process = subprocess.Popen(["influxd", "-config", config], stdout=log, stderr=log)
    try:
        wait_ready(f"{base}/ping", process, "influxd")
        request(f"{base}/query?q=CREATE+DATABASE+bench", method="POST")
        lines, values, seconds = send_lines(db, sources, f"{base}/write?db=bench&precision=ns")

        def settled():
            wal = directory_bytes(os.path.join(root, "wal"))
            data = os.path.join(root, "data")
            tsm = sorted(
                (name, os.path.getsize(os.path.join(d, name)))
                for d, _, names in os.walk(data)
                for name in names
            )
            busy = wal > 0 or any(name.endswith(".tmp") for name, _ in tsm)
            return None if busy else tuple(tsm)

        wait_stable(settled, "InfluxDB")
        _, body = request(f"{base}/query?db=bench&q=" + urllib.parse.quote("SELECT count(*) FROM /.*/"))
        stored = sum(
            sum(v for v in serie["values"][0][1:] if v)
            for result in json.loads(body)["results"]
            for serie in result.get("series", [])
        )
        return figures(root, lines, values, stored, seconds, package_version("influxdb"))
    finally:
        process.terminate()
        process.wait()
        log.close()


def victoriametrics(db, sources, work):
    root = os.path.join(work, "victoriametrics")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(os.path.join(work, "victoriametrics.log"), "w")
    process = subprocess.Popen(
        ["victoria-metrics", f"-storageDataPath={root}", f"-httpListenAddr=127.0.0.1:{port}",
         "-retentionPeriod=100y", "-loggerLevel=ERROR"],
        stdout=log, stderr=log)
    try:
        wait_ready(f"{base}/health", process, "victoria-metrics")
        lines, values, seconds = send_lines(db, sources, f"{base}/write")
        request(f"{base}/internal/force_flush")
        request(f"{base}/internal/force_merge")

        def metric(name, labels=""):
            _, body = request(f"{base}/metrics")
            pattern = re.compile(rf"^{name}{{?{labels}[^ ]*}}? (\S+)$", re.M)
            return sum(float(v) for v in pattern.findall(body))

        def settled():
            if metric("vm_active_merges") or metric("vm_pending_rows"):
                return None
            return directory_bytes(root)

        wait_stable(settled, "VictoriaMetrics")
        stored = int(metric("vm_rows", 'type="storage/(?:big|small)"'))
        return figures(root, lines, values, stored, seconds, package_version("victoria-metrics"))
    finally:
        process.terminate()
        process.wait()
        log.close()


def package_version(package):
    """The Debian package's version (Debian's VictoriaMetrics build does not know its own)."""
    answer = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", package], capture_output=True, text=True
    )
    return f"{package} {answer.stdout.strip() or 'unknown'}"


def figures(root, lines, values, stored, seconds, version):
    if stored != values:
        raise SystemExit(f"{root}: {stored} values stored of {values} sent")
    size = directory_bytes(root)
    return {
        "version": version,
        "lines": lines,
        "values": values,
        "load_seconds": seconds,
        "bytes": size,
        "bytes_per_value": size / values,
    }


STORES = {"influxdb": influxdb, "victoriametrics": victoriametrics}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lake", required=True)
    parser.add_argument("--json", required=True)
    parser.add_argument("--store", default=",".join(STORES))
    args = parser.parse_args()
    sources = files(args.lake, "measurements")
    db = duckdb.connect()
    report = {}
    with tempfile.TemporaryDirectory() as work:
        for name in args.store.split(","):
            report[name] = STORES[name](db, sources, work)
            print(name, report[name], flush=True)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
