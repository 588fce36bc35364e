"""The request schedule of a large sort's shuffle on S3, simulated: requests per S3 partition and the expected time.

    python benchmarks/bench_s3_shuffle_plan.py                  # 1 TB, 1,000 mappers and reducers
    python benchmarks/bench_s3_shuffle_plan.py --size 100GB --functions 200 --mbps 90

A self-contained discrete-event simulation of the requests (no S3, no boto3;
the simulated S3 service in tests/aws/sim_service.py answers real boto3 calls
one by one, far too slowly for two million of them). What it takes from
wrenpack itself, so it simulates the code and not a description of it:
the key of every object (``wrenpack.keys.shuffle_part_key``), how a mapper
combines its partitions into objects (``shuffle.plan_objects``, up to
``COMBINE_BYTES`` each, one sealed section per partition that its reducer
reads with one ranged GET), the section overhead (frame + trailer) and when a
PUT becomes a multipart upload (``S3Store``'s threshold and part size).

The model, stated so it can be argued with:

- every function moves bytes at ``--mbps`` MB/s (S3 from one Lambda function:
  ~80-100 MB/s per function is the commonly measured figure) and a request
  costs ``--latency-ms`` before its first byte; a function's requests are
  issued as its bytes flow, ``IO_THREADS`` at a time;
- the functions start spread over ``--ramp`` seconds (Lambda's burst);
- mappers read their input (one 1 GB object each, under ``data/``), partition
  (``--map-cpu`` s per GB) and write their sections and then a small index;
  reducers start when every mapper is done, read their sections, sort
  (``--reduce-cpu``) and write their output. (map_reduce also starts up to a
  tenth of the reducers early in slots the last mappers leave idle, each
  polling one mapper's index at a time, at most every 0.5 s; with mappers of
  equal size there are no such stragglers, so that is not simulated);
- the input and output objects are the user's, spread over ``--data-prefixes``
  prefixes (a reducer's 1 GB output is a multipart upload of ~60 PUT-class
  requests; a thousand of them finishing together need ~20 prefixes);
- S3 serves 3,500 PUT/COPY/POST/DELETE and 5,500 GET/HEAD requests per
  second per *partition* of a bucket's keyspace: a key range. A new bucket
  is one partition; S3 splits a range that stays busy (after minutes of load,
  longer than this sort lasts) and keeps the split for a while; how many
  splits it makes, when, and for how long, is S3's (undocumented). The model:
  no split or merge during the run. The
  user's ``data/`` prefixes count as split already (their layout is the
  user's, the same in every case below).

It prints, for each layout, the busiest second of every partition against
its limit and the expected time (the bandwidth-bound schedule, stretched
where a partition would be over its limit), on two buckets:

- split by earlier shuffles: S3 split ``shuffle/`` at the shard prefixes of an
  earlier map_reduce's keys (64 partitions), the best a warm bucket gives;
- cold: the first shuffle, ``shuffle/`` one partition.

wrenpack's layout puts the shard first (``shuffle/<shard>/<id>/``): the
splits S3 made under earlier shuffles' load serve this one. The previous
layout put the map_reduce's random id first (``shuffle/<id>/<shard>/``):
earlier shuffles' splits lie inside their own ids' ranges, none inside a new
id's, so every shuffle ran on a cold range, whatever the bucket's history.
"""
from __future__ import annotations

import argparse
import bisect
import math
import random
import re
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _fair  # noqa: E402
from wrenpack import auth, keys  # noqa: E402
from wrenpack.storage.s3 import MULTIPART_CHUNK, MULTIPART_THRESHOLD  # noqa: E402
from wrenpack.worker import shuffle  # noqa: E402

PUT_LIMIT = 3500
GET_LIMIT = 5500
#: a section's frame, pickle header (an ndarray's) and seal trailer, beside its data
SECTION_OVERHEAD = 4 + 8 * 3 + 200 + 64 + auth.TRAILER_BYTES


def parse_size(text: str) -> int:
    """An argparse ``type``: ``1TB``, ``500GB``... (powers of 1,000) or bytes, at least 1 MB."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(KB|MB|GB|TB)?\s*", text.upper())
    n = int(float(m.group(1)) * {"KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, None: 1}[m.group(2)]) if m else 0
    if n < 10**6:
        raise argparse.ArgumentTypeError(f"bad size {text!r}; give at least 1MB, with KB, MB, GB or TB (powers of "
                                         "1,000), e.g. 1TB")
    return n


#: request start times by (prefix, "PUT" or "GET")
Requests = dict[tuple[str, str], list[float]]


def put_requests(size: int) -> int:
    """S3 requests of the PUT class one object of ``size`` bytes costs through ``S3Store.put``."""
    if size < MULTIPART_THRESHOLD:
        return 1
    return 2 + math.ceil(size / max(MULTIPART_CHUNK, math.ceil(size / 10000)))  # create + parts + complete


def prefix_of(key: str) -> str:
    return key.rsplit("/", 1)[0] + "/"


class Function:
    """One function's bytes and requests on its own clock (bandwidth shared by its threads)."""

    def __init__(self, start: float, mbps: float, latency: float) -> None:
        self.t = start
        self.rate = mbps * 1e6
        self.latency = latency

    def transfer(self, out: Requests, items: list[tuple[str, int, str, int]]) -> None:
        """``(prefix, bytes, kind, requests)`` moved ``IO_THREADS`` at a time: the requests of
        an item start as its bytes begin to flow; latency overlaps across the threads."""
        if not items:
            return
        total = sum(n for _, n, _, _ in items)
        duration = total / self.rate + self.latency * math.ceil(len(items) / shuffle.IO_THREADS)
        at = 0
        for prefix, nbytes, kind, count in items:
            t = self.t + duration * at / max(1, total)
            out[(prefix, kind)].extend(t + i * 1e-3 for i in range(count))
            at += nbytes
        self.t += duration

    def compute(self, seconds: float) -> None:
        self.t += seconds


#: the map_reduce simulated, and an earlier one whose load made S3 split the bucket (12 hex digits each)
SHUFFLE_ID, EARLIER_ID = "7c1e9a40b2d5", "3b8f0d6e1a27"
LAYOUTS = {
    # wrenpack's: the shard first (``wrenpack.keys``)
    "shard first": (keys.shuffle_part_key, keys.shuffle_index_key),
    # the previous layout: the map_reduce's id first
    "id first": (lambda sid, m, n: f"{keys.SHUFFLE}{sid}/{keys.shuffle_shard(m)}/m{m:05d}-{n:03d}",
                 lambda sid, m: f"{keys.SHUFFLE}{sid}/{keys.shuffle_shard(m)}/i{m:05d}"),
}


def simulate(size: int, mappers: int, reducers: int, mbps: float, latency: float, ramp: float,
             map_cpu: float, reduce_cpu: float, layout: str, out_prefixes: int, seed: int = 0) -> dict:
    """The requests of one sort, by the prefix of their keys (``requests``), and its phases' ends."""
    part_key, index_key = LAYOUTS[layout]
    rng = random.Random(seed)
    per_mapper = size / mappers
    part = per_mapper / reducers  # a range partition of uniform keys: equal parts
    section = part + SECTION_OVERHEAD
    reqs: Requests = defaultdict(list)
    ends = []
    # where every mapper's sections go
    groups = shuffle.plan_objects([round(section)] * reducers)
    objects = [len(g) * round(section) for g in groups]
    for m in range(mappers):
        f = Function(rng.uniform(0, ramp), mbps, latency)
        f.transfer(reqs, [(f"data/in/{m % out_prefixes:02x}/", int(per_mapper), "GET", 1)])
        f.compute(map_cpu * per_mapper / 1e9)
        items = [(prefix_of(part_key(SHUFFLE_ID, m, n)), nbytes, "PUT", put_requests(nbytes))
                 for n, nbytes in enumerate(objects)]
        items.append((prefix_of(index_key(SHUFFLE_ID, m)), 16 * reducers, "PUT", 1))  # its index, last
        f.transfer(reqs, items)
        ends.append(f.t)
    t_map = max(ends)
    ends = []
    for r in range(reducers):
        f = Function(t_map + rng.uniform(0, ramp), mbps, latency)
        order = list(range(mappers))
        rng.shuffle(order)  # the reads of one reducer go out as its threads get to them
        items = [(prefix_of(part_key(SHUFFLE_ID, m, 0)), round(section), "GET", 1) for m in order]
        f.transfer(reqs, items)
        f.compute(reduce_cpu * per_mapper / 1e9)
        out = int(per_mapper)
        f.transfer(reqs, [(f"data/out/{r % out_prefixes:02x}/", out, "PUT", put_requests(out))])
        ends.append(f.t)
    return {
        "t_map": t_map, "t_end": max(ends), "requests": reqs,
        "puts": sum(len(v) for (_, kind), v in reqs.items() if kind == "PUT"),
        "gets": sum(len(v) for (_, kind), v in reqs.items() if kind == "GET"),
        "objects_per_mapper": len(objects),
    }


def bucket(layout: str | None, out_prefixes: int) -> list[str]:
    """Where S3 has split the bucket's keyspace: each partition starts at one of these keys
    (sorted). The user's data prefixes and ``shuffle/`` always; with a ``layout``, also
    where an earlier map_reduce of that layout loaded it: at each of its shard prefixes
    (the least a split between its shards can be: S3 places its split points itself)."""
    starts = {"", keys.SHUFFLE, "shuffle0"}  # ("shuffle0": the first key after shuffle/)
    starts |= {f"data/{d}/{i:02x}/" for d in ("in", "out") for i in range(out_prefixes)}
    if layout is not None:
        part_key = LAYOUTS[layout][0]
        starts |= {prefix_of(part_key(EARLIER_ID, n, 0)) for n in range(keys.SHUFFLE_SHARDS)}
    return sorted(starts)


def load(sim: dict, starts: list[str]) -> dict:
    """The simulated requests on a bucket split at ``starts``: each partition's busiest second
    per kind, and the sort's time stretched where a partition's requests exceed its limit."""
    by: Requests = defaultdict(list)
    for (prefix, kind), times in sim["requests"].items():
        by[(starts[bisect.bisect_right(starts, prefix) - 1], kind)].extend(times)
    peaks = {}
    for k, times in by.items():
        times.sort()
        peaks[k] = max(bisect.bisect_right(times, t + 1.0) - i for i, t in enumerate(times))
    # throttled, a phase lasts at least (its requests on the busiest partition) / limit
    stretch = 0.0
    t_map, t_end = sim["t_map"], sim["t_end"]
    for (_start, kind), times in by.items():
        limit = PUT_LIMIT if kind == "PUT" else GET_LIMIT
        for lo, hi in ((0, t_map), (t_map, t_end)):
            n = sum(1 for t in times if lo <= t < hi)
            stretch = max(stretch, n / limit - (hi - lo))
    shuffle_parts = {start for start, _kind in by if start.startswith(keys.SHUFFLE)}
    return {"peaks": peaks, "t_throttled": t_end + max(0.0, stretch), "shuffle_partitions": len(shuffle_parts)}


def report(name: str, sim: dict, r: dict) -> bool:
    """Whether every partition stays under its limits."""
    worst = {"PUT": (0, ""), "GET": (0, "")}
    for (start, kind), peak in r["peaks"].items():
        worst[kind] = max(worst[kind], (peak, start))
    ok = worst["PUT"][0] <= PUT_LIMIT and worst["GET"][0] <= GET_LIMIT
    print(f"  {name}: the shuffle's requests fall in {r['shuffle_partitions']} partition(s)")
    for kind, limit in (("PUT", PUT_LIMIT), ("GET", GET_LIMIT)):
        peak, start = worst[kind]
        if peak <= limit:
            verdict = "under it"
        else:
            verdict = f"{peak / limit:.1f}x OVER: throttled until S3 has split it into {math.ceil(peak / limit)}+ partitions"
        where = "all of shuffle/" if start == keys.SHUFFLE else f"the partition from {start or '(the start)'}"
        print(f"    busiest partition for {kind}: {peak:,} requests in one second, {where} (limit {limit:,}: {verdict})")
    over = sum(1 for (_, kind), peak in r["peaks"].items() if peak > (PUT_LIMIT if kind == "PUT" else GET_LIMIT))
    print(f"    partitions over their limit: {over}; expected time from bandwidth: map phase {sim['t_map']:.1f} s, "
          f"whole sort {sim['t_end']:.1f} s; with the over-limit partitions throttled: {r['t_throttled']:.1f} s")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=parse_size, default=parse_size("1TB"))
    ap.add_argument("--functions", type=_fair.at_least(1, "a whole number of functions"), default=1000,
                    help="mappers, and as many reducers (default 1000)")
    ap.add_argument("--mbps", type=_fair.at_least_real(0, "a bandwidth in MB/s", above=True), default=90.0,
                    help="S3 bandwidth of one function, MB/s (default 90)")
    ap.add_argument("--latency-ms", type=_fair.at_least_real(0, "a latency in ms"), default=25.0,
                    help="time to first byte of a request (default 25 ms)")
    ap.add_argument("--ramp", type=_fair.at_least_real(0, "a number of seconds"), default=2.0,
                    help="seconds over which the functions start (default 2)")
    ap.add_argument("--data-prefixes", type=_fair.at_least(1, "a whole number of prefixes"), default=100,
                    help="prefixes the user's input and output objects spread over (the user's layout; default 100)")
    ap.add_argument("--map-cpu", type=_fair.at_least_real(0, "CPU seconds per GB"), default=2.0,
                    help="mapper CPU seconds per GB (default 2)")
    ap.add_argument("--reduce-cpu", type=_fair.at_least_real(0, "CPU seconds per GB"), default=8.0,
                    help="reducer CPU seconds per GB, the sort (default 8)")
    args = _fair.parse_args(ap)
    n = args.functions
    print(f"sort {args.size / 1e12:g} TB on {n} mappers and {n} reducers: {args.size / n / 1e9:.2f} GB per function, "
          f"{args.size / n / n / 1e6:.2f} MB per partition section; {args.mbps:g} MB/s and {args.latency_ms:g} ms per "
          "request per function (simulated schedule, not measured)")
    common = dict(mbps=args.mbps, latency=args.latency_ms / 1e3, ramp=args.ramp, map_cpu=args.map_cpu,
                  reduce_cpu=args.reduce_cpu, out_prefixes=args.data_prefixes)
    print(f"S3 serves each partition of a bucket's keyspace (a key range) {PUT_LIMIT:,} PUT and {GET_LIMIT:,} GET per "
          "second; it splits a range only after minutes of load and may merge idle ones again, when it does not say (the "
          f"model: no split or merge during the run; the user's data/ prefixes, {args.data_prefixes} of them, count as split already)")
    warm = "bucket split by an earlier shuffle's load at its shards"
    cold = "cold bucket, the first shuffle (shuffle/ one partition)"
    sim = simulate(args.size, n, n, layout="shard first", **common)
    print(f"wrenpack's layout, shuffle/<shard>/<id>/ ({keys.SHUFFLE_SHARDS} shards): {sim['objects_per_mapper']} "
          f"object(s) per mapper; {sim['puts']:,} PUT-class and {sim['gets']:,} GET requests")
    ok = report(warm, sim, load(sim, bucket("shard first", args.data_prefixes)))
    report(cold, sim, load(sim, bucket(None, args.data_prefixes)))
    before = simulate(args.size, n, n, layout="id first", **common)
    print("the previous layout, shuffle/<id>/<shard>/: the same requests; an earlier shuffle's splits lie in its id's "
          "range, none in this one's")
    report(warm, before, load(before, bucket("id first", args.data_prefixes)))
    print(f"  ({cold}: the same)")
    ideal = 2 * args.size / n / (args.mbps * 1e6) * 2 + (args.map_cpu + args.reduce_cpu) * args.size / n / 1e9
    print(f"lower bound from bandwidth alone (each function reads and writes its share twice, plus CPU): {ideal:.1f} s")
    # (the exit status: whether the layout stays under S3's limits once S3 has split shuffle/ at its shards)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
