"""cProfile of ringkv's put and get paths under engine.py's workload.

cProfile sees the calling thread only (not the flush and compaction threads)
and slows everything down, so use it for where the time goes, never for
rates; for a whole-process view use py-spy on `engine.py --child ...`.

    python3 benchmarks/profile_engine.py --ops 65536 --top 10
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import random
import sys

import harness


def top(profile: cProfile.Profile, n: int, sort: str) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profile, stream=out)
    stats.strip_dirs().sort_stats(sort).print_stats(n)
    lines = out.getvalue().splitlines()
    start = next((i for i, ln in enumerate(lines) if "ncalls" in ln), 0)
    return "\n".join(lines[start:start + n + 1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ops", type=int, default=65536)
    p.add_argument("--value-bytes", type=int, default=1024)
    p.add_argument("--memtable-mib", type=float, default=8.0)
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--sort", default="tottime", choices=["tottime", "cumulative"])
    p.add_argument("--dir", default=None)
    args = p.parse_args(argv)

    from lsm.db import DB
    from lsm.options import Options

    rng = random.Random(1)
    keys = [rng.randbytes(16) for _ in range(args.ops)]
    values = [os.urandom(args.value_bytes) for _ in range(args.ops)]
    order = keys[:]
    rng.shuffle(order)
    with harness.work_dir(args.dir) as scratch:
        options = Options(fsync="interval", memtable_bytes=int(args.memtable_mib * harness.MIB))
        with DB.open(os.path.join(scratch, "db"), options) as db:
            put_profile = cProfile.Profile()
            put_profile.enable()
            for k, v in zip(keys, values, strict=True):
                db.put(k, v)
            put_profile.disable()
            db.wait_for_compactions()
            db.compact_range(None, None)
            get_profile = cProfile.Profile()
            get_profile.enable()
            for k in order:
                db.get(k)
            get_profile.disable()
    print(f"== put path, {args.ops:,} puts, top {args.top} by {args.sort}")
    print(top(put_profile, args.top, args.sort))
    print(f"\n== get path, {args.ops:,} gets after compact_range, top {args.top} by {args.sort}")
    print(top(get_profile, args.top, args.sort))
    return 0


if __name__ == "__main__":
    sys.exit(main())
