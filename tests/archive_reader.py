"""Reads a weir Parquet archive copied to a local directory, with pyarrow alone.

The archive tests use it as a reader that shares no code with weir: it finds the files
by walking the directory, reads every one with pyarrow, checks what a reader of the
archive relies on, and prints one JSON document on stdout:

    {"files": [{"path", "rows", "codecs", "statistics", "row_groups", "columns"}],
     "dataset_rows": <rows pyarrow.dataset found with hive partitioning>,
     "rows": [{"file", "scenario_id", "success", "event_time", "event_time_valid",
               "topic", "partition", "offset", "seq", "tag"}]}

Usage: python archive_reader.py ROOT
"""

import json
import os
import sys

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq


def main(root):
    files, rows = [], []
    for directory, dirs, names in os.walk(root):
        # Readers skip names starting with `_` or `.`, as Spark and pyarrow do.
        dirs[:] = sorted(d for d in dirs if not d.startswith(("_", ".")))
        for name in sorted(names):
            if name.startswith(("_", ".")):
                continue
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, root)
            meta = pq.ParquetFile(path).metadata
            codecs, statistics = set(), True
            for g in range(meta.num_row_groups):
                group = meta.row_group(g)
                for c in range(group.num_columns):
                    column = group.column(c)
                    codecs.add(column.compression)
                    statistics = statistics and column.is_stats_set
            table = pq.read_table(path)
            files.append({
                "path": relative,
                "rows": table.num_rows,
                "codecs": sorted(codecs),
                "statistics": statistics,
                "row_groups": meta.num_row_groups,
                "columns": {f.name: str(f.type) for f in table.schema},
            })
            event_time = table.column("event_time").cast(pa.int64()).to_pylist()
            seq = (table.column("seq").to_pylist() if "seq" in table.column_names
                   else [None] * table.num_rows)
            columns = {n: table.column(n).to_pylist()
                       for n in ("scenario_id", "success", "topic", "partition", "offset",
                                 "event_time_valid", "tag")
                       if n in table.column_names}
            for i in range(table.num_rows):
                row = {n: columns[n][i] for n in columns}
                row.update(file=relative, event_time=event_time[i], seq=seq[i])
                rows.append(row)
    # The same directory as a dataset, the way analysts open it: hive partitions with
    # `scenario_id` declared a string (inferred, a numeric id would become int32 and
    # clash with the files' utf8 column), schemas unified by column name across files,
    # `_tmp/` skipped by pyarrow's default ignore prefixes.
    dataset_rows = 0
    if files:
        partitioning = ds.partitioning(
            pa.schema([("scenario_id", pa.string()), ("year", pa.int32()),
                       ("month", pa.int32()), ("day", pa.int32()), ("hour", pa.int32())]),
            flavor="hive")
        schemas = [pq.read_schema(os.path.join(root, f["path"])) for f in files]
        schema = pa.unify_schemas(schemas + [partitioning.schema],
                                  promote_options="permissive")
        dataset = ds.dataset(root, format="parquet", schema=schema,
                             partitioning=partitioning)
        table = dataset.to_table(columns=["scenario_id", "hour", "offset"])
        dataset_rows = table.num_rows
    json.dump({"files": files, "dataset_rows": dataset_rows, "rows": rows}, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
