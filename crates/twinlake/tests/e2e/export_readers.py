"""Reads an export of Twinlake the way analysts do, and prints what each reader saw as JSON.

usage: export_readers.py ROOT [S3_ENDPOINT]
ROOT is a directory or s3://bucket/prefix (then S3_ENDPOINT is moto's URL).
For each of the dataset's tables: rows and sum(value) (measurements) by DuckDB, pandas (pyarrow)
and Polars; the rows of every entity in order, with path, parent and the twin columns.
"""
import json
import sys

import pyarrow.dataset as ds
import pyarrow.fs as pafs

root = sys.argv[1].rstrip("/")
endpoint = sys.argv[2] if len(sys.argv) > 2 else None
manifest_name = root + "/_manifest.json"

if endpoint:
    fs = pafs.S3FileSystem(endpoint_override=endpoint, access_key="test", secret_key="testtesttest",
                           region="us-east-1", scheme="http")
    base = root[len("s3://"):]
else:
    fs = pafs.LocalFileSystem()
    base = root

with fs.open_input_stream(base + "/_manifest.json") as f:
    manifest = json.loads(f.read())

out = {"manifest": manifest, "tables": {}, "checksums": [], "checksums_ok": True, "sorted_ok": True}
for table, listed in manifest["tables"].items():
    files = [base + "/" + f["path"] for f in listed["files"]]
    for listed_file in listed["files"]:
        import hashlib
        with fs.open_input_stream(base + "/" + listed_file["path"]) as f:
            data = f.read()
        ok = hashlib.sha256(data).hexdigest() == listed_file["sha256"] and len(data) == listed_file["bytes"]
        out["checksums"].append({"path": listed_file["path"], "ok": ok})
        out["checksums_ok"] = out["checksums_ok"] and ok
        import io
        import pyarrow.parquet as pq
        rows = pq.read_table(io.BytesIO(data))
        if "entity" in rows.column_names and "time" in rows.column_names:
            keys = list(zip(rows["entity"].to_pylist(), rows["time"].to_pylist()))
            out["sorted_ok"] = out["sorted_ok"] and keys == sorted(keys)
    seen = {}
    # pyarrow (what pandas.read_parquet uses), the whole directory as one dataset.
    dataset = ds.dataset(base + "/" + table if not manifest["request"]["single_file"] else files,
                         filesystem=fs, format="parquet", partitioning="hive")
    frame = dataset.to_table().to_pandas()
    seen["pandas"] = {"rows": len(frame),
                      "sum": float(frame["value"].sum()) if "value" in frame else None}
    import polars as pl
    if endpoint:
        storage = {"aws_endpoint_url": endpoint, "aws_access_key_id": "test",
                   "aws_secret_access_key": "testtesttest", "aws_region": "us-east-1",
                   "aws_allow_http": "true"}
        polars_frame = pl.read_parquet(["s3://" + f for f in files], storage_options=storage)
    else:
        polars_frame = pl.read_parquet(files)
    seen["polars"] = {"rows": polars_frame.height,
                      "sum": float(polars_frame["value"].sum()) if "value" in polars_frame.columns else None}
    if not endpoint:
        import duckdb
        glob = f"{root}/{table}/**/*.parquet" if not manifest["request"]["single_file"] else files[0]
        rows, total = duckdb.sql(
            f"SELECT count(*), {'sum(value)' if 'value' in frame else 'NULL'} FROM '{glob}'").fetchall()[0]
        seen["duckdb"] = {"rows": rows, "sum": None if total is None else float(total)}
    if "entity" not in frame or "time" not in frame:
        out["tables"][table] = seen
        continue
    frame = frame.sort_values(["entity", "time"], kind="stable")
    columns = [c for c in frame.columns if c in ("entity", "gateway", "path", "parent", "value", "series")
               or c in manifest["request"]["twin"]]
    listing = []
    for record in frame[columns + ["time"]].to_dict("records"):
        record["time"] = record["time"].isoformat()
        listing.append({k: (None if v != v else v) for k, v in record.items()})  # NaN -> None
    seen["listing"] = listing
    seen["date_dirs"] = sorted({f["path"].split("/")[1] for f in listed["files"] if "/" in f["path"]})
    out["tables"][table] = seen
print(json.dumps(out, default=str))
