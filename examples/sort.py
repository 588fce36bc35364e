"""The sort benchmark from the PyWren paper: random 100-byte records with 10-byte keys,
sorted by a shuffle through the object store.

    python examples/sort.py --size 100MB          # .. 1GB; prints the time and checks the output
    python examples/sort.py --small               # 2 MB, what the test suite runs

1. ``generate``: M calls each write ``size / M`` bytes of random records to a
   scratch area of the store (``wrenpack.scratch()``, under ``in/``; whole
   records, ``size // 100`` of them in all, split as evenly as they go) and return
   their count and checksum (the driver never holds the data). The area goes with
   the program, and ``wrenpack clean --stale`` removes it if the program was killed
   (``--keep``: under ``sort-<run>/`` of ``wrenpack.store()``, kept).
2. ``wrenpack.map_reduce(split, objects, merge, partitions=R, partitioned=True)``:
   each mapper reads its object (``record_size=100``, so no record is cut),
   range-partitions it by the first two key bytes and returns R parts; wrenpack
   writes them to the store; reducer i reads part i of every mapper, sorts it
   by key and writes ``out/<i>``.
3. Verification, in a second map over the output objects: every object is
   sorted, consecutive objects do not overlap, and the count and an
   order-independent checksum of the output equal the input's (so it is a
   permutation of it).

The same script runs on Lambda with an S3 store (``WRENPACK_BACKEND=lambda
WRENPACK_STORAGE=s3://bucket/prefix``; the workers' runtime needs numpy).
"""
from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import signal
import sys
import time
import uuid

try:
    import numpy as np
except ImportError:
    sys.exit("examples/sort.py needs numpy, which the examples extra installs: pip install -e '.[examples]'")

import wrenpack
from wrenpack.limits import check_memory

RECORD = 100
KEY = 10
#: the most reducers ``partition_of`` tells apart: one per value of a key's first two bytes
MAX_PARTITIONS = 1 << 16
_MULT = np.random.default_rng(12345).integers(1, 2**63, size=RECORD // 4, dtype=np.uint64) | np.uint64(1)


#: the largest --size: 10 TB (its mappers, one per ~64 MB, are listed in the driver's memory)
MAX_SIZE = 10**13


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?B?)\s*", text.upper())
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r}; use e.g. 100MB or 1GB")
    scale = {"": 1, "B": 1, "K": 1e3, "KB": 1e3, "M": 1e6, "MB": 1e6, "G": 1e9, "GB": 1e9}[m.group(2)]
    size = float(m.group(1)) * scale
    if size > MAX_SIZE:  # (an absurd size filled the driver's memory listing its mappers; one past a float, a traceback)
        raise argparse.ArgumentTypeError(f"size {text!r} is more than {MAX_SIZE // 10**12} TB; use e.g. 100MB or 1GB")
    if size < RECORD:
        raise argparse.ArgumentTypeError(f"size {text!r} holds no {RECORD}-byte record; use e.g. 100MB")
    return int(size)


def check_room(size: int) -> str | None:
    """Why ``size`` bytes cannot be sorted in the store, if it is a folder of this machine
    (the input, the shuffle's parts and the output: about twice ``size`` at once) with
    less free space than that; None otherwise (S3, or room enough)."""
    storage = wrenpack.store().url()
    if not storage.startswith("file://"):
        return None
    where = storage.removeprefix("file://")
    while where and not os.path.exists(where):
        where = os.path.dirname(where)
    try:
        free = shutil.disk_usage(where or "/").free
    except OSError:
        return None
    if 2 * size <= free:
        return None
    return (f"--size {size / 1e9:,.1f} GB needs about {2 * size / 1e9:,.1f} GB in the store ({storage}), which has "
            f"{free / 1e9:,.1f} GB free; give a smaller --size, or S3 storage (WRENPACK_STORAGE=s3://...)")


def at_least_one(text: str) -> int:
    """A count of calls: a whole number, at least 1."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of calls, at least 1")
    return n


def partition_count(text: str) -> int:
    """A count of reducers: at least 1, at most 65,536, as many as ``partition_of``'s
    two key bytes tell apart (with more, its arithmetic would wrap and the output
    would come out unsorted)."""
    n = at_least_one(text)
    if n > MAX_PARTITIONS:
        raise argparse.ArgumentTypeError(f"{text!r} is more than {MAX_PARTITIONS:,} reducers (the range partition is "
                                         "on the keys' first two bytes: more could only be empty)")
    return n


def memory_mb(text: str) -> int:
    """MB per call, in Lambda's range: checked here, not in a traceback from the first launch."""
    try:
        return check_memory(int(text) if text.strip().lstrip("-").isdigit() else text, name="memory")
    except wrenpack.WrenpackError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def as_records(buf: bytes | memoryview) -> np.ndarray:
    return np.frombuffer(buf, dtype=np.uint8).reshape(-1, RECORD)


def checksum(records: np.ndarray) -> int:
    """Order-independent: the sum of a hash of every record (mod 2**64)."""
    total = 0
    for i in range(0, len(records), 1 << 18):
        words = np.ascontiguousarray(records[i : i + (1 << 18)]).view("<u4").astype(np.uint64)
        h = (words * _MULT).sum(axis=1, dtype=np.uint64)  # uint64 arithmetic wraps: intended
        h ^= h >> np.uint64(29)
        total += int(h.sum(dtype=np.uint64))
    return total % 2**64


def sort_records(records: np.ndarray) -> np.ndarray:
    """Records sorted by their 10-byte key.

    ``np.sort`` of one uint64 per record is numpy's fastest sort (vectorized), far
    faster than an argsort of the keys as byte strings. So each record's number
    goes into the low bits of its key's first 8 bytes (read big-endian, so the
    numbers compare as the keys do), and the sorted numbers give the order.
    Records whose remaining high bits are equal (rare: about one pair in 3
    million random records) are then put in order by their whole key."""
    n = len(records)
    bits = max(1, (n - 1).bit_length())  # enough low bits for a record's number
    # The key's first 8 bytes of every record, gathered and byte-swapped in one pass;
    # then numbered in place (no temporary arrays of n numbers but the numbers' own).
    numbered = records[:, :8].view(">u8")[:, 0].astype(np.uint64)
    numbered >>= np.uint64(bits)
    numbered <<= np.uint64(bits)
    numbered |= np.arange(n, dtype=np.uint64)
    numbered.sort()
    tied = np.flatnonzero((numbered[1:] ^ numbered[:-1]) >> np.uint64(bits) == 0)  # equal high bits
    numbered &= np.uint64((1 << bits) - 1)
    order = numbered.view(np.int64)  # the record numbers, in key order (they fit: n < 2**63)
    if len(tied):
        at = np.union1d(tied, tied + 1)  # every position in a run of equal high bits, runs in order
        keys = np.ascontiguousarray(records[order[at], :KEY]).view(f"S{KEY}").ravel()
        order[at] = order[at][np.argsort(keys, kind="stable")]
    return np.take(records, order, axis=0)  # np.take: 4x faster than records[order] here


def place(prefix) -> tuple:
    """(store handle, key prefix) of a run's objects: ``prefix`` is a scratch area
    (``wrenpack.scratch()``: removed with the program, or by ``wrenpack clean
    --stale`` once it was killed), or a name under ``wrenpack.store()`` (``--keep``)."""
    if isinstance(prefix, str):
        return wrenpack.store(), f"{prefix}/"
    return prefix, ""


def generate(part: int, counts: list[int], seed: int, prefix) -> tuple[int, int]:
    """Write ``counts[part]`` random records as one input object; return (count, checksum)."""
    count = counts[part]
    data = np.random.default_rng([seed, part]).bytes(count * RECORD)
    area, at = place(prefix)
    area.put(f"{at}in/{part:05d}", data)
    return count, checksum(as_records(data))


def partition_of(records: np.ndarray, partitions: int) -> np.ndarray:
    """Range partition on the first two key bytes: partition i holds smaller keys than i + 1."""
    top = records.view(">u2")[:, 0].astype(np.uint32)  # the first two bytes of each row, big-endian
    # (one byte per record where it fits: numpy's stable argsort, a radix sort, then makes one pass)
    return (top * partitions >> 16).astype(np.uint8 if partitions <= 256 else np.uint16)


def split(chunk, partitions: int) -> list[np.ndarray]:
    """Mapper: one object's records, cut into ``partitions`` key ranges."""
    records = as_records(chunk.buffer())  # the stored object mapped where it can be, not copied
    where = partition_of(records, partitions)
    order = np.argsort(where, kind="stable")  # radix sort of 16-bit values
    counts = np.bincount(where, minlength=partitions)
    grouped = np.take(records, order, axis=0)
    edges = np.concatenate(([0], np.cumsum(counts)))
    return [grouped[edges[i] : edges[i + 1]] for i in range(partitions)]


def merge(partition: int, parts: list[np.ndarray], prefix) -> tuple[int, int]:
    """Reducer: sort one key range and write it; returns (partition, records)."""
    records = sort_records(np.concatenate(parts) if parts else np.empty((0, RECORD), np.uint8))
    area, at = place(prefix)
    area.put(f"{at}out/{partition:05d}", memoryview(records))  # the array's bytes, not a copy
    return partition, len(records)


def check_output(chunk) -> dict:
    """Verification of one output object (a separate pass, after the sort)."""
    records = as_records(chunk.read())
    keys = np.ascontiguousarray(records[:, :KEY]).view(f"S{KEY}").ravel()
    return {
        "count": len(records), "checksum": checksum(records), "sorted": bool((keys[1:] >= keys[:-1]).all()),
        "first": keys[0] if len(keys) else None, "last": keys[-1] if len(keys) else None,
    }


def generate_input(size: int, mappers: int, prefix, seed: int = 0, memory: int = 1024) -> tuple[int, int]:
    """``mappers`` calls write the input under ``prefix/in/``, ``size // RECORD`` records
    in all (the first ``records % mappers`` objects one more; with fewer records than
    mappers, some objects are empty); returns (records, checksum)."""
    counts = split_count(size // RECORD, mappers)
    futures = wrenpack.remote(generate, memory=memory).map(range(mappers), counts=counts, seed=seed, prefix=prefix)
    made = _get_or_stop(futures)
    return sum(c for c, _ in made), sum(s for _, s in made) % 2**64


def split_count(records: int, parts: int) -> list[int]:
    """``records`` over ``parts``, as even as can be, summing to ``records`` (each part
    was given ``max(1, records // parts)``: 10 records on 100 mappers made 100)."""
    return [records // parts + (i < records % parts) for i in range(parts)]


def _get_or_stop(futures):
    """``wrenpack.get(futures)``; interrupted (Ctrl-C) or failed, the calls still
    running are stopped first, so none writes after ``run_sort`` removed the objects."""
    try:
        return wrenpack.get(futures)
    except BaseException:
        wrenpack.cancel(futures)
        raise


def sort_stored(prefix, partitions: int, memory: int = 1024) -> list[tuple[int, int]]:
    """Sort ``prefix/in/*`` into ``prefix/out/<i>`` through the shuffle; (partition, records) of each reducer."""
    area, at = place(prefix)
    inputs = area.objects(f"{at}in/", record_size=RECORD)
    return _get_or_stop(wrenpack.map_reduce(
        lambda chunk: split(chunk, partitions), inputs,
        lambda i, parts: merge(i, parts, prefix),
        partitions=partitions, partitioned=True, memory=memory,
    ))


def verify(prefix, n_in: int, sum_in: int, memory: int = 1024, here: bool = False) -> dict[str, bool]:
    """Check ``prefix/out/*`` against the input's count and checksum, in remote
    calls (or in this process, ``here``)."""
    area, at = place(prefix)
    outputs = area.objects(f"{at}out/", record_size=RECORD)
    if here:
        out = [check_output(chunk) for chunk in outputs]
    else:
        out = wrenpack.get(wrenpack.remote(check_output, memory=memory).map(outputs))
    n_out, sum_out = sum(r["count"] for r in out), sum(r["checksum"] for r in out) % 2**64
    nonempty = [r for r in out if r["count"]]
    return {
        "each output object sorted": all(r["sorted"] for r in out),
        "objects in key order": all(a["last"] <= b["first"] for a, b in zip(nonempty, nonempty[1:])),
        "same record count": n_out == n_in,
        "same checksum (a permutation)": sum_out == sum_in,
    }


def run_sort(size: int, mappers: int, partitions: int, seed: int = 0, memory: int = 1024,
             keep: bool = False, log=print) -> dict:
    """Generate, sort and verify ``size`` bytes of records; returns timings and checks.
    The objects go in a scratch area, removed at the end (also when the program is
    stopped, and by ``wrenpack clean --stale`` when it was killed); ``keep``: under
    ``sort-<run>/`` of ``wrenpack.store()``, kept."""
    prefix = f"sort-{uuid.uuid4().hex[:8]}" if keep else wrenpack.scratch("sort.py")
    try:
        t0 = time.perf_counter()
        n_in, sum_in = generate_input(size, mappers, prefix, seed, memory)
        t_gen = time.perf_counter() - t0
        log(f"generated {n_in:,} records ({n_in * RECORD / 1e6:.0f} MB) in {mappers} objects in {t_gen:.2f} s")
        t0 = time.perf_counter()
        sort_stored(prefix, partitions, memory)
        t_sort = time.perf_counter() - t0
        log(f"sorted with {mappers} mappers and {partitions} reducers in {t_sort:.2f} s")
        checks = verify(prefix, n_in, sum_in, memory)
        for what, ok in checks.items():
            log(f"  {'ok  ' if ok else 'FAIL'} {what}")
        return {"records": n_in, "bytes": n_in * RECORD, "generate_s": t_gen, "sort_s": t_sort,
                "ok": all(checks.values()), "prefix": prefix if keep else None, "checks": checks}
    finally:
        if not keep:
            prefix.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=parse_size, help="bytes of records (default 100MB)")
    ap.add_argument("--small", action="store_true", help="2 MB, 4 mappers, 3 reducers (the tests run this)")
    ap.add_argument("--mappers", type=at_least_one, help="input objects / map calls (default: one per ~64 MB, at least 2)")
    ap.add_argument("--partitions", type=partition_count, help="reducers (default: as many as mappers)")
    ap.add_argument("--memory", type=memory_mb, default=3008,
                    help="MB per call (default 3008: on the local backend a worker's memory cgroup is also charged "
                         "for the /dev/shm store objects it wrote)")
    ap.add_argument("--keep", action="store_true", help="keep the input and output objects")
    args = ap.parse_args(argv)
    if args.small and args.size is not None:  # (--small's 2 MB won over it without a word)
        ap.error("--small sorts 2 MB: give --small or --size, not both")
    size = 2_000_000 if args.small else args.size or parse_size("100MB")
    room = check_room(size)
    if room is not None:
        ap.error(room)
    mappers = args.mappers or (4 if args.small else max(2, math.ceil(size / 64e6)))
    partitions = args.partitions or (3 if args.small else mappers)
    records = size // RECORD
    if size % RECORD or records < mappers:  # (say what is sorted when it is not what the numbers suggest)
        note = f"{records:,} record{'s' if records != 1 else ''} of {RECORD} bytes"
        if size % RECORD:
            note += f" ({size % RECORD} bytes of --size {size:,} left over)"
        if records < mappers:
            note += f", fewer than the {mappers} mappers: {mappers - records} of their objects are empty"
        print(f"sort.py: {note}", file=sys.stderr)
    try:
        result = run_sort(size, mappers, partitions, memory=args.memory, keep=args.keep)
    except wrenpack.WrenpackError as exc:  # a call's failure (its memory, its timeout...): one line, as wordcount's
        print(f"sort.py: {exc}", file=sys.stderr)
        return 1
    print(f"{'sorted and verified' if result['ok'] else 'VERIFICATION FAILED'}: "
          f"{result['bytes'] / 1e6:.0f} MB in {result['sort_s']:.2f} s")
    if args.keep:
        print(f"kept in the store under {result['prefix']}/ (remove them with wrenpack.store().delete_prefix"
              f"('{result['prefix']}/'))")
    return 0 if result["ok"] else 1


def exit_quietly_on_broken_pipe(run) -> int:
    """``run()``, flushed; if whoever reads the output went away (``| head -1``), end
    quietly, as a well-behaved command does, with SIGPIPE's status and no traceback.
    (run_sort's ``finally`` has removed the store objects by then: the error came
    from a ``print`` and went up through it.)"""
    try:
        status = run()
        sys.stdout.flush()  # (piped output is buffered: a closed pipe shows here, or at exit)
        return status
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (no second error at exit's flush)
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt:  # (Ctrl-C: run_sort's finally stopped the calls and removed the objects; a traceback through wrenpack's futures said nothing more)
        print("sort.py: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT


if __name__ == "__main__":
    # (SIGTERM and SIGHUP: wrenpack stops the calls and removes their objects and the scratch
    # area, then the signal ends the program, as it would without wrenpack)
    sys.exit(exit_quietly_on_broken_pipe(main))
