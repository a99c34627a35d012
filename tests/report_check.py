"""An independent computation of `weir report --by day` with DuckDB.

Usage: report_check.py ARCHIVE_DIR [FIELD]

Reads a local copy of an archive: the records under `scenario_id=*/` and the
outcomes (events that left no record) under `_outcomes/scenario_id=*/`, and
prints, per scenario and UTC day of the hour directory, as one JSON object keyed
`scenario|day`: events (distinct source events of the records plus outcome
rows), matched, dead_letters (outcome rows with status `failed`), and the count
of every value of FIELD over the records. On stderr, the time the queries took.
"""

import glob
import json
import os
import sys
import time

import duckdb

root = sys.argv[1]
field = sys.argv[2] if len(sys.argv) > 2 else None
keys = "{'scenario_id': 'VARCHAR', 'year': 'VARCHAR', 'month': 'VARCHAR', 'day': 'VARCHAR', 'hour': 'VARCHAR'}"


def source(pattern):
    if not glob.glob(os.path.join(root, pattern)):
        return None
    path = os.path.join(root, pattern).replace("'", "''")
    return (f"read_parquet('{path}', hive_partitioning = true, union_by_name = true, "
            f"hive_types = {keys})")


started = time.perf_counter()
con = duckdb.connect()
out = {}


def entry(scenario, day):
    return out.setdefault(f"{scenario}|{day}", {
        "events": 0, "matched": 0, "dead_letters": 0, "top": {}})


records = source("scenario_id=*/*/*/*/*/*.parquet")
if records:
    rows = con.execute(f"""
        WITH per_event AS (
            SELECT scenario_id, year || '-' || month || '-' || day AS d,
                   topic, "partition", "offset", max(success) AS m
            FROM {records} GROUP BY ALL)
        SELECT scenario_id, d, count(*), sum(m) FROM per_event GROUP BY ALL""").fetchall()
    for scenario, day, events, matched in rows:
        e = entry(scenario, day)
        e["events"] += events
        e["matched"] += int(matched)
    if field:
        rows = con.execute(f"""
            SELECT scenario_id, year || '-' || month || '-' || day, CAST("{field}" AS VARCHAR),
                   count(*)
            FROM {records} WHERE "{field}" IS NOT NULL GROUP BY ALL""").fetchall()
        for scenario, day, value, n in rows:
            entry(scenario, day)["top"][value] = n

outcomes = source("_outcomes/scenario_id=*/*/*/*/*/*.parquet")
if outcomes:
    rows = con.execute(f"""
        SELECT scenario_id, year || '-' || month || '-' || day, count(*), sum(success),
               count(*) FILTER (WHERE status = 'failed')
        FROM {outcomes} GROUP BY ALL""").fetchall()
    for scenario, day, events, matched, dead in rows:
        e = entry(scenario, day)
        e["events"] += events
        e["matched"] += int(matched)
        e["dead_letters"] += dead

# The queries' time, for benches/benches/report.rs (without Python's start).
print(f"duckdb_secs={time.perf_counter() - started:.3f}", file=sys.stderr)
print(json.dumps(out, sort_keys=True))
