#!/usr/bin/env python3
"""Merges the figures of one benches/run.sh run into one JSON file and a Markdown table."""

import argparse
import json
import os
import platform
import subprocess


def load(work, name):
    with open(os.path.join(work, name)) as f:
        return json.load(f)


def machine():
    def first(command):
        try:
            return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    model = None
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        memory_kib = int(f.readline().split()[1])
    return {
        "cpus": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(memory_kib / 1048576, 1),
        "os": platform.platform(),
        "rustc": first(["rustc", "--version"]),
    }


def ratio(a, b):
    return a / b if a and b else None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--markdown", required=True)
    parser.add_argument("--command", required=True)
    args = parser.parse_args()

    phases = ["ingest-embedded", "ingest-mosquitto", "queries", "peers", "stores", "grafana", "export"]
    results = {
        "scale": args.scale,
        "command": args.command,
        "machine": machine(),
        "phases": {p: load(args.work, f"{p}.time") for p in phases},
        "ingest": {
            "embedded": load(args.work, "ingest-embedded.json"),
            "mosquitto": load(args.work, "ingest-mosquitto.json"),
        },
        "queries": load(args.work, "queries.json"),
        "peers": load(args.work, "peers.json"),
        "stores": load(args.work, "stores.json"),
        "grafana": load(args.work, "grafana.json"),
        "export": load(args.work, "export.json"),
    }
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)

    q, peers = results["queries"], results["peers"]
    m = results["machine"]
    lines = [
        f"\n## benches/run.sh --scale {args.scale}\n",
        f"`{args.command}` on {m['cpus']} CPUs ({m['cpu']}), {m['memory_gib']} GiB, {m['os']}, "
        f"{m['rustc']}; {q['values']:,} values. Results: `{os.path.basename(args.out)}`.\n",
        "| figure | Twinlake | peer | peer's figure | Twinlake / peer |",
        "|---|---|---|---|---|",
    ]
    for broker, figures in results["ingest"].items():
        # Twinlake's own endpoint delivers nothing: its reference latency is the acknowledgement,
        # which waits for the fsync. Through Mosquitto it is Mosquitto's own delivery.
        second = (
            "the same probes acknowledged to the publisher"
            if broker == "embedded"
            else "the same probes delivered to a subscriber"
        )
        lines.append(
            f"| ingest over MQTT QoS 1 with fsync ({broker}), values/s | "
            f"{figures['ingest_values_per_s']:,.0f} | raw delivery to a do-nothing subscriber | "
            f"{figures['raw_delivery_messages_per_s'] * figures['values_per_message']:,.0f} | "
            f"{figures['ratio_to_raw_delivery']:.2f} |"
        )
        lines.append(
            f"| publish-to-queryable p50 / p99 ({broker}) | {figures['latency_p50_ms']:.1f} / "
            f"{figures['latency_p99_ms']:.1f} ms | {second} | "
            f"{figures['delivery_latency_p50_ms']:.1f} / {figures['delivery_latency_p99_ms']:.1f} ms | "
            f"{ratio(figures['latency_p50_ms'], figures['delivery_latency_p50_ms']):.1f} / "
            f"{ratio(figures['latency_p99_ms'], figures['delivery_latency_p99_ms']):.1f} |"
        )
    lines.append(
        f"| stored bytes per value (measurements) | {peers['twinlake_bytes_per_value']:.2f} | "
        f"pyarrow, zstd, default settings | {peers['pyarrow_zstd_bytes_per_value']:.2f} | "
        f"{ratio(peers['twinlake_bytes_per_value'], peers['pyarrow_zstd_bytes_per_value']):.2f} |"
    )
    for store in results["stores"].values():
        lines.append(
            f"| stored bytes per value (measurements) | {peers['twinlake_bytes_per_value']:.2f} | "
            f"{store['version']}, settled (compacted) | {store['bytes_per_value']:.2f} | "
            f"{ratio(peers['twinlake_bytes_per_value'], store['bytes_per_value']):.2f} |"
        )
    lines.append(
        f"| `latest` lookup p50 / p99 | {q['latest_lookup_p50_ms']:.2f} / "
        f"{q['latest_lookup_p99_ms']:.2f} ms | – | – | – |"
    )
    lines.append(
        f"| one truck's subtree vs full scan | {q['subtree_ms']:.0f} ms | Twinlake full scan | "
        f"{q['full_scan_ms']:.0f} ms | {ratio(q['subtree_ms'], q['full_scan_ms']):.2f} |"
    )
    lines.append(
        f"| full-history as-of hierarchy join | {q['as_of_join_ms']:.0f} ms | – | – | – |"
    )
    duck = peers["queries"]
    full = duck.get("full-scan")
    if full:
        lines.append(
            f"| full scan (count, mean) | {q['full_scan_ms']:.0f} ms | DuckDB {peers['duckdb_version']} "
            f"| {full['duckdb_median_ms']:.0f} ms | {ratio(q['full_scan_ms'], full['duckdb_median_ms']):.2f} |"
        )
    for name, figures in q["queries"].items():
        peer = duck.get(name)
        if peer:
            same = (
                f"same {peer['rows']} rows"
                if peer.get("same_result")
                else f"**results differ**: {peer.get('first_difference')}"
            )
            lines.append(
                f"| `{name}.sql` | {figures['median_ms']:.0f} ms | DuckDB ({same}) | "
                f"{peer['duckdb_median_ms']:.0f} ms | {ratio(figures['median_ms'], peer['duckdb_median_ms']):.2f} |"
            )
        else:
            lines.append(f"| `{name}.sql` | {figures['median_ms']:.0f} ms | – | – | – |")
    grafana = results["grafana"]
    refresh = grafana["refresh_median_ms"]
    lines.append(
        f"| Fleet overview dashboard, one refresh over PostgreSQL wire ({len(grafana['panels'])} panels, "
        f"24 h) | {refresh['twinlake_pg_ms']:.0f} ms | DuckDB, the same questions | "
        f"{refresh['duckdb_ms']:.0f} ms | {grafana['ratio']:.2f} |"
    )
    for title, panel in grafana["panels"].items():
        same = f"same {panel['rows']} rows" if panel["same_result"] else "**results differ**"
        lines.append(
            f"| panel: {title} | {panel['twinlake_pg_ms']:.1f} ms | DuckDB ({same}) | "
            f"{panel['duckdb_ms']:.1f} ms | {ratio(panel['twinlake_pg_ms'], panel['duckdb_ms']):.2f} |"
        )
    export = results["export"]
    same = f"same {export['rows']:,} rows" if export["same_rows"] else "**rows differ**"
    lines.append(
        f"| export of the measurements with path, parent and depot as of each row, rows/s | "
        f"{export['twinlake']['rows_per_s']:,.0f} | DuckDB `COPY (… ASOF JOIN …) TO` Parquet ({same}) | "
        f"{export['duckdb']['rows_per_s']:,.0f} | {export['ratio_rows_per_s']:.2f} |"
    )
    duck_limit = export["duckdb"].get("memory_limit_mb")
    duck_limit = f"{duck_limit} MiB" if duck_limit else "its default, 80 % of RAM: it ran out under 512 MiB"
    lines.append(
        f"| export, peak RSS (Twinlake's export memory {export['memory_limit_mb']} MiB) | "
        f"{export['twinlake']['peak_rss_kib'] / 1024:.0f} MiB (server) | DuckDB (memory limit {duck_limit}) | "
        f"{export['duckdb']['peak_rss_kib'] / 1024:.0f} MiB | "
        f"{ratio(export['twinlake']['peak_rss_kib'], export['duckdb']['peak_rss_kib']):.2f} |"
    )
    lines.append("\n| phase | peak RSS | CPU s (user + system) | wall s |\n|---|---|---|---|")
    for phase, t in results["phases"].items():
        lines.append(
            f"| {phase} | {t['peak_rss_kib'] / 1024:.0f} MiB | {t['user_s'] + t['system_s']:.1f} | {t['wall_s']:.1f} |"
        )
    with open(args.markdown, "w") as f:
        f.write("\n".join(lines) + "\n")
    differ = [name for name, peer in duck.items() if peer.get("same_result") is False]
    if not export["same_rows"]:
        differ.append("export")
    if differ:
        raise SystemExit(f"Twinlake's and DuckDB's results differ: {', '.join(differ)}")


if __name__ == "__main__":
    main()
