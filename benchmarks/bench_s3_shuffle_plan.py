"""The request schedule of a large sort's shuffle on S3, simulated: requests per prefix and the expected time.

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
- a prefix is ``shuffle/<id>/<shard>/`` (or ``data/...``), and once S3 has
  partitioned the keyspace each sustains 3,500 PUT/COPY/POST/DELETE and 5,500
  GET/HEAD per second. A new bucket starts with one partition that S3 splits
  as the load grows (over minutes): the per-prefix figures are what the
  layout allows, not a promise for a cold bucket.

It prints the busiest second of every prefix against its limit, for
wrenpack's layout and for the layout before it (one object per mapper and
partition, all under one prefix), and the expected time: the bandwidth-bound
schedule, stretched where a prefix would be over its limit.
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


def simulate(size: int, mappers: int, reducers: int, mbps: float, latency: float, ramp: float,
             map_cpu: float, reduce_cpu: float, layout: str, out_prefixes: int, seed: int = 0) -> dict:
    rng = random.Random(seed)
    per_mapper = size / mappers
    part = per_mapper / reducers  # a range partition of uniform keys: equal parts
    section = part + SECTION_OVERHEAD
    reqs: Requests = defaultdict(list)
    ends = []
    # where every mapper's sections go
    if layout == "wrenpack":
        groups = shuffle.plan_objects([round(section)] * reducers)
        objects = [(shuffle.part_key("job", 0, n), len(g) * round(section)) for n, g in enumerate(groups)]
    else:  # before: one object per partition, shuffle/<id>/map/<mapper>/<partition>.pkl
        objects = [("shuffle/job/map/00000/x", round(section))] * reducers
    for m in range(mappers):
        f = Function(rng.uniform(0, ramp), mbps, latency)
        f.transfer(reqs, [(f"data/in/{m % out_prefixes:02x}/", int(per_mapper), "GET", 1)])
        f.compute(map_cpu * per_mapper / 1e9)
        if layout == "wrenpack":
            items = [(prefix_of(shuffle.part_key("job", m, n)), nbytes, "PUT", put_requests(nbytes))
                     for n, (_, nbytes) in enumerate(objects)]
            items.append((prefix_of(keys.shuffle_index_key("job", m)), 16 * reducers, "PUT", 1))  # its index, last
        else:
            items = [("shuffle/job/", nbytes, "PUT", 1) for _, nbytes in objects]
        f.transfer(reqs, items)
        ends.append(f.t)
    t_map = max(ends)
    ends = []
    for r in range(reducers):
        f = Function(t_map + rng.uniform(0, ramp), mbps, latency)
        if layout == "wrenpack":
            order = list(range(mappers))
            rng.shuffle(order)  # the reads of one reducer go out as its threads get to them
            items = [(prefix_of(shuffle.part_key("job", m, 0)), round(section), "GET", 1) for m in order]
        else:
            items = [("shuffle/job/", round(section), "GET", 1) for _ in range(mappers)]
        f.transfer(reqs, items)
        f.compute(reduce_cpu * per_mapper / 1e9)
        out = int(per_mapper)
        f.transfer(reqs, [(f"data/out/{r % out_prefixes:02x}/", out, "PUT", put_requests(out))])
        ends.append(f.t)
    t_end = max(ends)
    # the busiest one-second window of each prefix, per kind
    by = reqs
    peaks = {}
    for k, times in by.items():
        times.sort()
        peaks[k] = max(bisect.bisect_right(times, t + 1.0) - i for i, t in enumerate(times))
    # throttled, a phase lasts at least (its requests on the busiest prefix) / limit
    stretch = 0.0
    for (_prefix, kind), times in by.items():
        limit = PUT_LIMIT if kind == "PUT" else GET_LIMIT
        for lo, hi in ((0, t_map), (t_map, t_end)):
            n = sum(1 for t in times if lo <= t < hi)
            stretch = max(stretch, n / limit - (hi - lo))
    return {
        "t_map": t_map, "t_end": t_end, "t_throttled": t_end + max(0.0, stretch),
        "puts": sum(len(v) for (_, kind), v in by.items() if kind == "PUT"),
        "gets": sum(len(v) for (_, kind), v in by.items() if kind == "GET"),
        "prefixes": len({p for p, _ in by}), "peaks": peaks, "objects_per_mapper": len(objects),
    }


def report(name: str, r: dict) -> bool:
    worst = {"PUT": (0, ""), "GET": (0, "")}
    for (prefix, kind), peak in r["peaks"].items():
        worst[kind] = max(worst[kind], (peak, prefix))
    ok = worst["PUT"][0] <= PUT_LIMIT and worst["GET"][0] <= GET_LIMIT
    print(f"{name}:")
    print(f"  {r['objects_per_mapper']} object(s) per mapper; {r['puts']:,} PUT-class and {r['gets']:,} GET requests "
          f"over {r['prefixes']} prefixes")
    for kind, limit in (("PUT", PUT_LIMIT), ("GET", GET_LIMIT)):
        peak, prefix = worst[kind]
        print(f"  busiest prefix for {kind}: {peak:,} requests in one second at {prefix} "
              f"(limit {limit:,}: {'ok' if peak <= limit else f'{peak / limit:.1f}x OVER'})")
    over = sum(1 for (_, kind), peak in r["peaks"].items() if peak > (PUT_LIMIT if kind == "PUT" else GET_LIMIT))
    print(f"  prefixes over their limit: {over}")
    print(f"  expected time from bandwidth: map phase {r['t_map']:.1f} s, whole sort {r['t_end']:.1f} s; "
          f"with the over-limit prefixes throttled: {r['t_throttled']:.1f} s")
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
          f"request per function, {keys.SHUFFLE_SHARDS} shuffle prefixes; limits {PUT_LIMIT:,} PUT and {GET_LIMIT:,} GET "
          "per second per prefix (simulated schedule, not measured)")
    common = dict(mbps=args.mbps, latency=args.latency_ms / 1e3, ramp=args.ramp, map_cpu=args.map_cpu,
                  reduce_cpu=args.reduce_cpu, out_prefixes=args.data_prefixes)
    ok = report("wrenpack's layout (sharded keys, partitions combined into sections)",
                simulate(args.size, n, n, layout="wrenpack", **common))
    report("the previous layout (one object per mapper and partition, one prefix)",
           simulate(args.size, n, n, layout="before", **common))
    ideal = 2 * args.size / n / (args.mbps * 1e6) * 2 + (args.map_cpu + args.reduce_cpu) * args.size / n / 1e9
    print(f"lower bound from bandwidth alone (each function reads and writes its share twice, plus CPU): {ideal:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
