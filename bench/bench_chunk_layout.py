"""Benchmark: which table layout and chunk size would meet #16's day-2 goal (<= 10 % of day 1), without clouds.

    .venv/bin/python bench/bench_chunk_layout.py [--gb 1] [--chunk-kib 16,32,64,256,1024] [--skip-load]

A model of deduplication, not a backup: each `client_data` table's binary COPY stream is cut by the product's
keyed FastCDC (`wedsync_dr.chunking`) at every size at once, in two orders -- the heap's (what `extract` copies
today) and clustered by wedding (`ORDER BY wedding_id, <primary key>` where the table has a `wedding_id`, else
by primary key) --, on day 1 and again after bench_dedup's day-2 change (2 % of the weddings: every row of 1 %
updated, guests and tasks of 0.5 % deleted, 20 new guests for 0.5 %; VACUUM). Printed per order and size:
the share of day 2's bytes in chunks day 1 did not have (plaintext, and zstd -3 of each new chunk against zstd
-3 of each day-1 chunk: what a cloud would receive, before packing), the chunks per backup, and the seconds
each order's COPY took (with the chunkers attached; and alone, alternating: the cost of the sort). It CHANGES
the bench stack's database like bench_dedup.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_dedup import change_two_percent, tables
from common import REPO, WEDDINGS_PER_GB, stack_with_data

sys.path.insert(0, str(REPO / "include"))


def order_by(conn, table: str) -> str:
    """`wedding_id, <primary key>` (or the primary key alone) of a table, as an ORDER BY list."""
    key = [r[0] for r in conn.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary ORDER BY a.attnum",
        (f"wedsync.{table}",)).fetchall()]
    columns = {r[0] for r in conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'wedsync' AND table_name = %s",
        (table,)).fetchall()}
    lead = ["wedding_id"] if "wedding_id" in columns and key != ["wedding_id"] else []
    return ", ".join(lead + key) or "ctid"


def copy_query(table: str, order: str, orders: dict[str, str]) -> str:
    """The binary COPY of a table in heap order, or clustered by wedding (`orders`: table -> `order_by`)."""
    source = f"wedsync.{table}" if order == "heap" else f"(SELECT * FROM wedsync.{table} ORDER BY {orders[table]})"
    return f"COPY {source} TO STDOUT (FORMAT binary)"


def one_day(state, key_ring, sizes: list[int]) -> dict[tuple[str, int], dict[bytes, tuple[int, int]]]:
    """Per order and chunk size, the day's chunks: digest -> (plaintext bytes, zstd -3 bytes)."""
    import psycopg
    import zstandard

    from wedsync_dr import chunking
    from wedsync_dr_dev import local_stack

    compressor = zstandard.ZstdCompressor(level=3)
    tallies: dict[tuple[str, int], dict[bytes, tuple[int, int]]] = {
        (order, kib): {} for order in ("heap", "wedding") for kib in sizes}
    seconds = {"heap": 0.0, "wedding": 0.0}
    with psycopg.connect(state.admin_url(local_stack.SOURCE_DB)) as conn:
        orders = {t: order_by(conn, t) for t in tables()}
        for table in tables():
            for order in ("heap", "wedding"):
                writers = []
                for kib in sizes:
                    tally = tallies[order, kib]

                    def keep(view, tally=tally):
                        digest = hashlib.blake2b(view, digest_size=16).digest()
                        if digest not in tally:
                            tally[digest] = (len(view), len(compressor.compress(view)))

                    writers.append(chunking.ChunkingWriter(chunking.chunker(key_ring, kib << 10), keep))
                t0 = time.perf_counter()
                with conn.cursor() as cur, cur.copy(copy_query(table, order, orders)) as copy:
                    for block in copy:
                        for writer in writers:
                            writer.write(block)
                seconds[order] += time.perf_counter() - t0
                for writer in writers:
                    writer.close()
    print("COPY seconds (chunking at every size included): " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()),
          flush=True)
    return tallies


def copy_seconds(state, turns: int = 2) -> dict[str, list[float]]:
    """The COPY alone (read and dropped, nothing attached), in heap order and clustered by wedding, alternating:
    what the clustered order itself costs the extract."""
    import psycopg

    from wedsync_dr_dev import local_stack

    seconds: dict[str, list[float]] = {"heap": [], "wedding": []}
    with psycopg.connect(state.admin_url(local_stack.SOURCE_DB)) as conn:
        orders = {t: order_by(conn, t) for t in tables()}
        for _turn in range(turns):
            for order in ("heap", "wedding"):
                t0 = time.perf_counter()
                for table in tables():
                    with conn.cursor() as cur, cur.copy(copy_query(table, order, orders)) as copy:
                        for _block in copy:
                            pass
                seconds[order].append(time.perf_counter() - t0)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gb", type=float, default=1.0)
    parser.add_argument("--chunk-kib", default="16,32,64,256,1024")
    parser.add_argument("--skip-load", action="store_true")
    args = parser.parse_args()
    sizes = [int(k) for k in args.chunk_kib.split(",")]
    state, _env = stack_with_data(None if args.skip_load else int(args.gb * WEDDINGS_PER_GB))
    from wedsync_dr import crypto

    ring = crypto.KeyRing.generate()  # one chunker seed for both days
    alone = copy_seconds(state)
    print("COPY alone, all tables, s: " + "; ".join(f"{k} " + " / ".join(f"{v:.1f}" for v in vs)
                                                     for k, vs in alone.items()), flush=True)
    day1 = one_day(state, ring, sizes)
    change_two_percent(state)
    day2 = one_day(state, ring, sizes)
    print("\n| order | chunk KiB | chunks day 1 / day 2 | day 2 new / all, plaintext | day 2 new / day 1, zstd -3 |"
          "\n|---|---|---|---|---|")
    for (order, kib), second in day2.items():
        first = day1[order, kib]
        new = [v for k, v in second.items() if k not in first]
        plain_all = sum(v[0] for v in second.values())
        zstd_day1 = sum(v[1] for v in first.values())
        print(f"| {order} | {kib} | {len(first)} / {len(second)} | "
              f"{sum(v[0] for v in new) / plain_all:.1%} | {sum(v[1] for v in new) / zstd_day1:.1%} |")


if __name__ == "__main__":
    main()
