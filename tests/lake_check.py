#!/usr/bin/env python3
"""Reads a Weir lake back as any engine would, independently of Weir's own code, and prints what it found.

The Rust tests (`tests/all/lake.rs`, `tests/all/service.rs`) call this and assert on its JSON output:

- every table read with pyarrow's Hive partitioning (`dt=YYYY-MM-DD/hour=HH`), its schema and its `_seq`s;
- the event ids in silver;
- `gold_wiki` recomputed with DuckDB from silver (minus the events the aggregate quarantined as late) and
  compared, window by window, with what the aggregate wrote (added up over the hosts that wrote a window).

    python3 tests/lake_check.py LAKE [--endpoint http://127.0.0.1:8333]
    python3 tests/lake_check.py --create-container az://container --endpoint http://127.0.0.1:10000

LAKE is a directory, `s3://bucket/prefix` (with `--endpoint` for an S3-compatible server) or
`az://container/prefix` (with `--endpoint` for Azurite, the Azure Storage emulator, and its well-known
development account). `--create-container` only creates the container (the tests' Azurite setup).
"""

import argparse
import json
import os
import sys

import duckdb
import pyarrow as pa
import pyarrow.compute  # noqa: F401 (pa.compute)
import pyarrow.dataset as ds
import pyarrow.fs as pafs

GOLD_WIKI_SQL = """
with counted as (
  select * from silver where _seq not in (select _seq from late)
)
select
  wiki,
  epoch_ms(_event_time) // 600000 * 600000 as window_start,
  count(*) as events,
  count(*) filter (where event_type = 'edit') as edits,
  count(*) filter (where event_type = 'new') as new_pages,
  count(*) filter (where is_bot) as bot_events,
  count(*) filter (where not is_bot) as human_events,
  count(*) filter (where is_anonymous) as anonymous_events,
  count(distinct "user") as distinct_users,
  coalesce(sum(bytes_changed) filter (where bytes_changed > 0), 0) as bytes_added,
  coalesce(sum(bytes_changed) filter (where bytes_changed < 0), 0) as bytes_removed
from counted
where wiki is not null
group by all
"""

MEASURES = [
    "events",
    "edits",
    "new_pages",
    "bot_events",
    "human_events",
    "anonymous_events",
    "distinct_users",
    "bytes_added",
    "bytes_removed",
]


# Azurite's well-known development account (public, the same in every Azurite).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


def filesystem(lake, endpoint):
    if lake.startswith("az://"):
        scheme, _, host = endpoint.partition("://")
        fs = pafs.AzureFileSystem(
            account_name=AZURITE_ACCOUNT,
            account_key=AZURITE_KEY,
            blob_storage_authority=host,
            blob_storage_scheme=scheme,
            # Asked whether the account has a hierarchical namespace; Azurite answers that it has not.
            dfs_storage_authority=host,
            dfs_storage_scheme=scheme,
        )
        return fs, lake[len("az://") :].rstrip("/")
    if lake.startswith("s3://"):
        scheme, _, host = endpoint.partition("://")
        fs = pafs.S3FileSystem(
            endpoint_override=host,
            scheme=scheme,
            access_key=os.environ.get("AWS_ACCESS_KEY_ID", "weir"),
            secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "weir"),
            region=os.environ.get("AWS_REGION", "us-east-1"),
        )
        return fs, lake[len("s3://") :].rstrip("/")
    path = lake[len("file://") :] if lake.startswith("file://") else lake
    return pafs.LocalFileSystem(), os.path.abspath(path)


def tables(fs, root):
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    return sorted(
        i.base_name
        for i in infos
        if i.type == pafs.FileType.Directory and not i.base_name.startswith("_")
    )


def read(fs, root, table):
    dataset = ds.dataset(
        f"{root}/{table}", filesystem=fs, format="parquet", partitioning="hive"
    )
    return dataset.to_table()


def gold_wiki_check(silver, late, gold):
    con = duckdb.connect()
    con.register("silver", silver)
    con.register("late", late)
    expected = {
        (r[0], r[1]): r[2:]
        for r in con.execute(GOLD_WIKI_SQL).fetchall()
    }
    con.register("gold", gold)
    # Several hosts on one consumer each write their own row for a window and wiki (README, "Deploying"):
    # counts and sums add up across them; a distinct count is only bounded (each host's is at most the
    # whole's, and together they are at least it). One host writes one row, which must match whole.
    sums = ", ".join(f"sum(coalesce({m}, 0))" for m in MEASURES)
    written = con.execute(
        f"select wiki, epoch_ms(window_start), count(*), max(coalesce(distinct_users, 0)), {sums} "
        "from gold group by all"
    ).fetchall()
    distinct = MEASURES.index("distinct_users")
    mismatches = []
    exceeding = 0
    for row in written:
        key, rows, most, got = (row[0], row[1]), row[2], row[3], tuple(row[4:])
        want = expected.get(key)
        if want is None:
            ok = False
        elif rows == 1:
            ok = tuple(want) == got
        else:
            additive = all(w == g for i, (w, g) in enumerate(zip(want, got)) if i != distinct)
            ok = additive and most <= want[distinct] <= got[distinct]
        if not ok:
            mismatches.append(
                {"wiki": key[0], "window_start": key[1], "rows": rows, "gold": got, "silver": want}
            )
            # Short of silver (some host's share not written yet) is one thing; more than silver has, or a
            # window silver has no events for, is wrong whatever the hosts still hold. Each measure sums
            # values of one sign (bytes_removed, negative ones): a share is never larger in magnitude.
            if want is None or any(
                abs(g) > abs(w) for i, (w, g) in enumerate(zip(want, got)) if i != distinct
            ):
                exceeding += 1
    # Windows silver has events for that no gold row covers: still open when the lake was read.
    unwritten = len(set(expected) - {(r[0], r[1]) for r in written})
    return {
        "windows": len(written),
        "mismatches": mismatches[:20],
        "mismatched": len(mismatches),
        "exceeding": exceeding,
        "unwritten": unwritten,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("lake")
    parser.add_argument("--endpoint", default="")
    parser.add_argument("--create-container", action="store_true")
    args = parser.parse_args()
    fs, root = filesystem(args.lake, args.endpoint)
    if args.create_container:
        # A path of only a container name: AzureFileSystem creates the container.
        fs.create_dir(root.split("/")[0])
        return

    report = {"tables": {}}
    data = {}
    for table in tables(fs, root):
        t = read(fs, root, table)
        data[table] = t
        report["tables"][table] = {
            "rows": t.num_rows,
            "schema": [[f.name, str(f.type)] for f in t.schema],
            "seqs": t.column("_seq").to_pylist() if "_seq" in t.column_names else [],
        }
    if "silver" in data:
        report["silver_event_ids"] = data["silver"].column("_event_id").to_pylist()
        report["silver_chains"] = sorted(set(data["silver"].column("_chain").to_pylist()))
        ranges = {}
        for chain, seq in zip(data["silver"].column("_chain").to_pylist(), data["silver"].column("_seq").to_pylist()):
            lo, hi = ranges.get(chain, (seq, seq))
            ranges[chain] = (min(lo, seq), max(hi, seq))
        report["silver_chain_ranges"] = ranges
    late = data.get("quarantine_gold")
    if late is None:
        late = pa.table({"_seq": pa.array([], pa.uint64()), "stage": pa.array([], pa.string())})
    report["late_by_stage"] = [
        [stage, seq]
        for stage, seq in zip(late.column("stage").to_pylist(), late.column("_seq").to_pylist())
    ]
    if "silver" in data and "gold_wiki" in data:
        late_wiki = late.filter(pa.compute.equal(late.column("stage"), "gold_wiki")).select(["_seq"])
        report["gold_wiki"] = gold_wiki_check(data["silver"], late_wiki, data["gold_wiki"])
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
