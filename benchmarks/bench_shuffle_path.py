"""What the shuffle's object path costs per byte, in one process: sealed with keyed BLAKE3,
sealed with HMAC-SHA256, and not sealed, on the local store (/dev/shm).

    python benchmarks/bench_shuffle_path.py [--size 300MB] [--rounds 5]

The data of a sort's shuffle (8 mappers x 8 partitions of numpy records) is
written with ``shuffle.put_sections`` (frame, MAC and write in one pass) and
read back with ``shuffle.get_section`` (mapped, MAC checked), every part touched.
The three systems alternate within each round (the order flips every round);
CPU seconds (this process, all threads) are the figure that a busy machine
does not move, wall seconds are printed beside them. The ``blake3`` system is
skipped where the package is not installed. The same script run with an
older wrenpack on ``PYTHONPATH`` times that version's ``shuffle.put``/``get``
(one object per partition) for a before/after comparison.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _fair  # noqa: E402
import numpy as np  # noqa: E402

from wrenpack import auth  # noqa: E402
from wrenpack.storage.local import LocalStore  # noqa: E402
from wrenpack.worker import shuffle  # noqa: E402

M = P = 8


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=_fair.size, default=300_000_000,
                    help="bytes of parts: 300MB, 1GB or a number (B, KB, MB, GB: powers of 1,000; default 300MB)")
    _fair.add_arguments(ap, hogs=False)
    args = _fair.parse_args(ap)
    sections = hasattr(shuffle, "put_sections")
    blake3 = auth._load_blake3() if hasattr(auth, "_load_blake3") else None
    rng = np.random.default_rng(0)
    rows = args.size // 100 // (M * P)
    parts = [[rng.integers(0, 255, size=(rows, 100), dtype=np.uint8) for _ in range(P)] for _ in range(M)]
    root = tempfile.mkdtemp(prefix="wrenpack-bench-shuffle-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    store = LocalStore(os.path.join(root, "store"))
    secret = shuffle.new_secret()
    systems = {"sealed, keyed BLAKE3": (True, blake3), "sealed, HMAC-SHA256": (True, None), "not sealed": (False, None)}
    if blake3 is None or not sections:
        systems.pop("sealed, keyed BLAKE3")
    got: dict[str, dict[str, list[float]]] = {n: {"write cpu": [], "read cpu": [], "write wall": [], "read wall": []}
                                              for n in systems}

    def run(name: str) -> None:
        auth._enabled, fast = systems[name]
        if hasattr(auth, "_blake3"):
            auth._blake3 = fast
        t0, c0 = time.perf_counter(), time.process_time()
        if sections:
            where = [shuffle.put_sections(store, "bench", m, secret, parts[m]) for m in range(M)]
        else:  # an older wrenpack: one object per mapper and partition
            for m in range(M):
                for p in range(P):
                    shuffle.put(store, shuffle.part_key("bench", m, p), secret, parts[m][p])
        t1, c1 = time.perf_counter(), time.process_time()
        touched = 0
        for p in range(P):
            if sections:
                read = [shuffle.get_section(store, "bench", m, p, secret, where[m][p]) for m in range(M)]
            else:
                read = [shuffle.get(store, shuffle.part_key("bench", m, p), secret) for m in range(M)]
            touched += sum(int(r[-1, -1]) for r in read)
            del read
        t2, c2 = time.perf_counter(), time.process_time()
        store.delete_prefixes(shuffle.prefixes("bench", M))
        g = got[name]
        g["write cpu"].append(c1 - c0)
        g["read cpu"].append(c2 - c1)
        g["write wall"].append(t1 - t0)
        g["read wall"].append(t2 - t1)

    try:
        for rnd in range(args.rounds):
            for name in _fair.order(list(systems), rnd):
                run(name)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    mb = M * P * rows * 100 / 1e6
    print(f"shuffle object path, {mb:.0f} MB as {M} mappers x {P} partitions, "
          f"{'sections (put_sections/get_section)' if sections else 'one object per partition (put/get)'}; "
          f"{_fair.rounds_label(args.rounds)} alternating; {_fair.load_note()}")
    for name, g in got.items():
        print(f"  {name}")
        for what, values in g.items():
            print(f"    {what:10s} {_fair.spread(values)}")
        cpu = [w + r for w, r in zip(g["write cpu"], g["read cpu"])]
        print(f"    write+read CPU per GB: {_fair.spread([c / mb * 1e3 for c in cpu])}")
    return 0


if __name__ == "__main__":
    _fair.main(main)
