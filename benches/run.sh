#!/usr/bin/env bash
# Every headline figure of Twinlake in one command, each next to a peer measured in the same
# run on the same data:
#
#   benches/run.sh [--scale smoke|small|medium|large] [--profile bench|dev]
#
# --profile dev uses the debug build (CI's smoke run, which checks the harness, not speed).
# Writes benches/results/<date>-<scale>[-<run>].json and appends a Markdown table to
# docs/benchmarks.md (not for smoke, which only checks that the harness works). Installs
# nothing: it lists what is missing and how to install it, and stops.
set -euo pipefail

scale=small
profile=bench
while [ $# -gt 0 ]; do
  case "$1" in
    --scale) scale="$2"; shift 2 ;;
    --scale=*) scale="${1#--scale=}"; shift ;;
    --profile) profile="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

# Trucks × one-minute rounds × 23 values, less the 1 % missing: small 10 M values, medium
# 100 M, large 200 M.
case "$scale" in
  smoke)  trucks=10;   rounds=300;  messages=20000;  probes=50;  repeats=1; lookups=20 ;;
  small)  trucks=100;  rounds=4400; messages=200000; probes=250; repeats=5; lookups=200 ;;
  medium) trucks=500;  rounds=8800; messages=500000; probes=250; repeats=3; lookups=200 ;;
  large)  trucks=1000; rounds=8800; messages=1000000; probes=250; repeats=3; lookups=200 ;;
  *) echo "--scale must be smoke, small, medium or large" >&2; exit 2 ;;
esac

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

missing=()
command -v cargo >/dev/null || missing+=("cargo (https://rustup.rs)")
[ -x /usr/sbin/mosquitto ] || missing+=("mosquitto: sudo apt-get install -y mosquitto")
[ -x /usr/bin/time ] || missing+=("GNU time: sudo apt-get install -y time")
command -v influxd >/dev/null || missing+=("InfluxDB 1.6: sudo apt-get install -y influxdb")
command -v victoria-metrics >/dev/null ||
  missing+=("VictoriaMetrics: sudo apt-get install -y victoria-metrics")
command -v python3 >/dev/null || missing+=("python3: sudo apt-get install -y python3 python3-pip")
for module in duckdb deltalake pyarrow psycopg2; do
  python3 -c "import $module" 2>/dev/null || missing+=("python $module: pip install ${module/psycopg2/psycopg2-binary}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "benches/run.sh needs:" >&2
  printf '  - %s\n' "${missing[@]}" >&2
  exit 2
fi

target="${CARGO_TARGET_DIR:-$root/target}"
case "$profile" in
  bench) out_dir=release ;;
  dev) out_dir=debug ;;
  *) echo "--profile must be bench or dev" >&2; exit 2 ;;
esac
echo "== building twinlake ($profile profile) into $target"
cargo build --profile "$profile" -p twinlake
bin="$target/$out_dir/twinlake"

export RUST_LOG="${RUST_LOG:-warn,buoyant_kernel=off}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Runs one phase under GNU time: its peak RSS and CPU seconds go beside its figures.
phase() {
  local name="$1"; shift
  echo "== $name"
  /usr/bin/time -f '{"peak_rss_kib": %M, "user_s": %U, "system_s": %S, "wall_s": %e}' \
    -o "$work/$name.time" "$@" > "$work/$name.log"
}

phase ingest-embedded "$bin" bench ingest --broker embedded \
  --messages "$messages" --probes "$probes" --json "$work/ingest-embedded.json"
phase ingest-mosquitto "$bin" bench ingest --broker mosquitto \
  --messages "$messages" --probes "$probes" --json "$work/ingest-mosquitto.json"
phase queries "$bin" bench queries --devices "$trucks" --rounds "$rounds" \
  --repeats "$repeats" --lookups "$lookups" --dir "$work/lake-data" \
  --results "$work/results" --json "$work/queries.json"
phase peers python3 benches/peers.py --lake "$work/lake-data/lake" \
  --results "$work/results" --repeats "$repeats" --json "$work/peers.json"
phase stores python3 benches/stores.py --lake "$work/lake-data/lake" --json "$work/stores.json"
phase grafana python3 benches/grafana.py --bin "$bin" --data "$work/lake-data" \
  --repeats "$repeats" --json "$work/grafana.json"
phase export python3 benches/export.py --bin "$bin" --data "$work/lake-data" \
  --json "$work/export.json"

date="$(date -u +%Y-%m-%d)"
out="benches/results/$date-$scale.json"
run=1
while [ -e "$out" ]; do run=$((run + 1)); out="benches/results/$date-$scale-$run.json"; done
[ "$scale" = smoke ] && out="$work/$date-smoke.json"
mkdir -p benches/results
markdown="$work/table.md"
# A result that differs from DuckDB's fails the run, after the figures are written.
status=0
python3 benches/report.py --scale "$scale" --work "$work" --out "$out" --markdown "$markdown" \
  --command "benches/run.sh --scale $scale --profile $profile" || status=$?
if [ "$scale" != smoke ] && [ "$profile" = bench ]; then
  cat "$markdown" >> docs/benchmarks.md
  echo "== appended to docs/benchmarks.md"
fi
cat "$markdown"
echo "== results: $out"
exit "$status"
