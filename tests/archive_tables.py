"""Reads one scenario's whole archive directory as one table, with pyarrow datasets and
with DuckDB, the way an analyst would, and gives every row's fields back.

A reader that shares no code with weir: pyarrow unifies the files' schemas (it
refuses files whose columns disagree in type), DuckDB reads them with
`union_by_name`. Each row's fields are its typed columns that are not null, plus the
fields of its `extra` JSON column (values that did not fit their column's type, and
nested values), so a test can compare them with what the plugin wrote.

Prints one JSON document: {"pyarrow": [row...], "duckdb": [row...], "columns":
{name: type as the unified schema has it}}, rows as {"partition", "offset", "fields"}
in (partition, offset) order.

Usage: python archive_tables.py SCENARIO_DIRECTORY
"""

import json
import sys

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

FIXED = {"scenario_id", "success", "date", "event_time", "event_time_valid", "topic",
         "partition", "offset", "extra", "year", "month", "day", "hour"}


def fields_of(record):
    fields = {k: v for k, v in record.items() if k not in FIXED and v is not None}
    if record.get("extra"):
        fields.update(json.loads(record["extra"]))
    return fields


def rows_of(records):
    rows = [{"partition": r["partition"], "offset": r["offset"], "fields": fields_of(r)}
            for r in records]
    return sorted(rows, key=lambda r: (r["partition"], r["offset"]))


def main(directory):
    partitioning = ds.partitioning(
        pa.schema([("year", pa.string()), ("month", pa.string()), ("day", pa.string()),
                   ("hour", pa.string())]),
        flavor="hive")
    first = ds.dataset(directory, format="parquet", partitioning=partitioning,
                       exclude_invalid_files=False)
    schema = pa.unify_schemas([pq.read_schema(f) for f in first.files])
    dataset = ds.dataset(directory, format="parquet", partitioning=partitioning,
                         schema=schema)
    with_arrow = rows_of(dataset.to_table().to_pylist())

    con = duckdb.connect()
    relation = con.execute(
        "SELECT * EXCLUDE (event_time) FROM read_parquet(?, union_by_name = true, "
        "hive_partitioning = true, "
        "hive_types = {'year': VARCHAR, 'month': VARCHAR, 'day': VARCHAR, 'hour': VARCHAR})",
        [directory.rstrip("/") + "/**/*.parquet"])
    names = [d[0] for d in relation.description]
    with_duckdb = rows_of([dict(zip(names, row)) for row in relation.fetchall()])

    json.dump({"pyarrow": with_arrow, "duckdb": with_duckdb,
               "columns": {f.name: str(f.type) for f in schema}}, sys.stdout, default=str)


if __name__ == "__main__":
    main(sys.argv[1])
