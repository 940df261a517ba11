"""What psycopg2 (simple protocol, like lib/pq) and psycopg 3 (extended protocol, with
parameters, text and binary results) get from Twinlake's PostgreSQL port; and whether a
cancelled or timed-out query stops using the server's CPU.

Usage: postgres_clients.py DSN SERVER_PID; prints one JSON object.
"""
import json
import sys
import threading
import time

import psycopg
import psycopg2

dsn, server_pid = sys.argv[1], int(sys.argv[2])
report = {}

HEAVY = ("SELECT count(*) FROM generate_series(1, 3000000) a "
         "JOIN generate_series(1, 3000000) b ON a.value % 1000 = b.value % 1000")


def cpu_seconds():
    """User and system CPU time of the server process so far."""
    with open(f"/proc/{server_pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0


def cpu_over(seconds):
    before = cpu_seconds()
    time.sleep(seconds)
    return cpu_seconds() - before


# psycopg2: the simple protocol, text results.
with psycopg2.connect(dsn) as conn:
    with conn.cursor() as cur:
        cur.execute("SELECT gateway, count(*) AS n FROM measurements "
                    "WHERE series = 'gps.speed' GROUP BY gateway ORDER BY gateway")
        report["psycopg2_rows"] = [[g, n] for g, n in cur.fetchall()]
        report["psycopg2_types"] = [d.type_code for d in cur.description]
        try:
            cur.execute("UPDATE measurements SET value = 0")
        except psycopg2.Error as error:
            report["psycopg2_update"] = error.pgcode
conn.close()

# A named cursor (DECLARE … CURSOR FOR, then FETCH FORWARD 1000 until the end).
with psycopg2.connect(dsn) as conn:
    with conn.cursor(name="speeds") as cur:
        cur.itersize = 1000
        cur.execute("SELECT gateway, time, value FROM measurements WHERE series = 'gps.speed' "
                    "ORDER BY gateway, time")
        fetched = list(cur)
    report["cursor_rows"] = len(fetched)
    report["cursor_ordered"] = fetched == sorted(fetched, key=lambda r: (r[0], r[1]))
conn.close()

# psycopg 3: the extended protocol, parameters bound by the server.
with psycopg.connect(dsn, autocommit=True) as conn:
    # Grafana's pings over the extended protocol: an empty query (status 0), then on as before.
    report["extended_pings"] = [int(conn.execute(q).pgresult.status) for q in ("-- ping", ";", "/* x */")]
    rows = conn.execute(
        "SELECT gateway, count(*) AS n, avg(value) AS mean FROM measurements "
        "WHERE series = %s AND time >= %s GROUP BY gateway ORDER BY gateway",
        ("gps.speed", "2026-11-01T00:00:00Z")).fetchall()
    report["psycopg3_rows"] = [[g, n, float(m)] for g, n, m in rows]
    cur = conn.cursor(binary=True)
    cur.execute("SELECT time, value FROM measurements WHERE series = %s ORDER BY time LIMIT 1",
                ("gps.speed",))
    first = cur.fetchone()
    report["psycopg3_binary"] = [first[0].isoformat(), float(first[1])]
    # Grafana's newest schema API: $1, $2 bound over the extended protocol.
    tables = conn.execute(
        "SELECT table_name FROM information_schema.tables "
        "WHERE table_schema = %s AND table_type IN ('BASE TABLE','VIEW') ORDER BY 1",
        ("public",)).fetchall()
    report["schema_tables"] = [t for (t,) in tables]
    columns = conn.execute(
        "SELECT column_name, data_type, udt_name, ordinal_position FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
        ("public", "measurements")).fetchall()
    report["schema_columns"] = [list(c) for c in columns]
    try:
        conn.execute("DROP TABLE measurements")
    except psycopg.Error as error:
        report["psycopg3_drop"] = error.sqlstate

# A cancelled query stops: psycopg2's cancel() sends PostgreSQL's CancelRequest.
conn = psycopg2.connect(dsn)
outcome = {}


def run_heavy():
    started = time.time()
    try:
        with conn.cursor() as cur:
            cur.execute(HEAVY)
            outcome["result"] = cur.fetchone()
    except psycopg2.Error as error:
        outcome["code"] = error.pgcode
    outcome["seconds"] = time.time() - started


worker = threading.Thread(target=run_heavy)
worker.start()
report["cpu_while_running"] = cpu_over(2.0)
conn.cancel()
worker.join(30)
report["cancelled"] = outcome
time.sleep(0.5)
report["cpu_after_cancel"] = cpu_over(2.0)
conn.close()

# A query past the client's statement_timeout ends with PostgreSQL's query_canceled.
with psycopg2.connect(dsn) as conn:
    with conn.cursor() as cur:
        cur.execute("SET statement_timeout = '1s'")
        started = time.time()
        try:
            cur.execute(HEAVY)
            report["timeout"] = {"result": cur.fetchone()}
        except psycopg2.Error as error:
            report["timeout"] = {"code": error.pgcode, "seconds": time.time() - started}
conn.close()
time.sleep(0.5)
report["cpu_after_timeout"] = cpu_over(2.0)
print(json.dumps(report))
