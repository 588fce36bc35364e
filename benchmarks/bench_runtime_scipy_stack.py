"""Benchmark: a numpy + scipy + pandas + scikit-learn runtime for python3.11 x86_64.

Build time first (issue 13): on a warm download cache (a first, untimed
``pip install`` fills pip's cache), ``--rounds`` (default 5) rounds of one
wrenpack build (no runtime cache: resolve, install, trim, bytecode, verify,
pack) and one plain ``pip install --target --platform ...`` of the same lock,
which goes first flipping every round; medians and min..max, and the ratio of
the medians (target: at most 2x). Both run from this process (the build in it
and its pip in children, the plain pip in a child given the same nice value
and CPUs: ``_fair``); the output shows what each had.

Then sizes (raw, trimmed, zip, archive), the import check, and cold import
time (fresh ``python -I -S -B`` process; ``--repeat`` rounds, the four trees
in turn, the order flipped every round; median and min..max) for: the
baseline without .pyc, the baseline with pip's .pyc, and the built runtime
(and its sourceless variant).

Run: python benchmarks/bench_runtime_scipy_stack.py [--rounds 5] [--repeat 5] [--out benchmarks/out]
Targets: build <= 2x plain pip (issue 13); <= 200 MB unzipped with every import working; archive <= 45 MB (issue 4).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _fair  # noqa: E402
from runtime_builder import build  # noqa: E402
from runtime_builder.targets import Target  # noqa: E402

PACKAGES = ["numpy", "scipy", "pandas", "scikit-learn"]
IMPORTS = ["numpy", "scipy", "scipy.sparse", "scipy.linalg", "scipy.optimize", "scipy.stats", "scipy.signal",
           "scipy.interpolate", "pandas", "sklearn", "sklearn.linear_model", "sklearn.ensemble",
           "sklearn.model_selection", "sklearn.cluster", "sklearn.decomposition"]
MB, MIB = 1e6, 1024 * 1024


def tree_size(root: str) -> tuple[int, int]:
    total = files = 0
    for dirpath, _, filenames in os.walk(root):
        for fn in filenames:
            p = os.path.join(dirpath, fn)
            if not os.path.islink(p):
                total += os.path.getsize(p)
                files += 1
    return total, files


def import_once(site: str) -> tuple[float, str]:
    """One cold import of the stack from ``site`` in a fresh process: (seconds, "ok" or the error)."""
    code = ("import sys, time; sys.path.insert(0, %r); t = time.perf_counter(); "
            "import importlib; [importlib.import_module(m) for m in %r]; "
            "import numpy as np, pandas as pd, sklearn.linear_model as lm; "
            "X = np.random.default_rng(0).normal(size=(200, 3)); y = X @ [1.0, 2.0, 3.0]; "
            "assert abs(lm.LinearRegression().fit(X, y).coef_[2] - 3) < 1e-6; "
            "assert pd.DataFrame(X).shape == (200, 3); "
            "print(time.perf_counter() - t)") % (site, IMPORTS)
    proc = subprocess.run([sys.executable, "-I", "-S", "-B", "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        return float("nan"), proc.stderr.strip().splitlines()[-1]
    return float(proc.stdout.strip().splitlines()[-1]), "ok"


def import_times(sites: dict[str, str], rounds: int) -> dict[str, tuple[list[float], str]]:
    """Cold import times of each tree, the trees in turn within a round, the order flipped every round."""
    out: dict[str, tuple[list[float], str]] = {name: ([], "ok") for name in sites}
    for rnd in range(rounds):
        for name in _fair.order(list(sites), rnd):
            t, status = import_once(sites[name])
            times, prev = out[name]
            times.append(t)
            out[name] = (times, prev if prev != "ok" else status)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", "scipy-stack"))
    _fair.add_arguments(ap, hogs=False)
    ap.add_argument("--builds", type=int, dest="rounds", help=argparse.SUPPRESS)  # the old name of --rounds
    ap.add_argument("--zstd-level", type=int, default=None, help="default: the builder's (10, multi-threaded)")
    ap.add_argument("--max-compression", action="store_true", help="zstd 19 / zip 9, as before issue 13")
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    target = Target.make("3.11", "x86_64")
    load_before = os.getloadavg()

    pip_sched: list[_fair.Scheduling | None] = []

    def pip_install(lock: str, d: str, extra: list[str]) -> float:
        shutil.rmtree(d, ignore_errors=True)
        t = time.perf_counter()
        _, sched = _fair.run_like([os.getpid()], [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--require-hashes",
                                                  "--target", d, "-r", lock, *target.pip_args(), *extra])
        pip_sched.append(sched)
        return time.perf_counter() - t

    # Resolve once (untimed) to get the lock, and warm pip's download cache with one untimed install.
    res = build(PACKAGES, python="3.11", arch="x86_64", output=os.path.join(out, "runtime"),
                cache_dir=os.path.join(out, "cache"), use_cache=False, verify_modules=IMPORTS,
                zstd_level=args.zstd_level, max_compression=args.max_compression, artifacts="all")
    pip_install(res.lock, os.path.join(out, "warm"), [])
    builds, pips, stages = [], [], []
    lock = res.lock

    def timed_build() -> None:
        nonlocal res
        t0 = time.perf_counter()
        res = build(PACKAGES, python="3.11", arch="x86_64", output=os.path.join(out, "runtime"),
                    cache_dir=os.path.join(out, "cache"), use_cache=False, verify_modules=IMPORTS,
                    zstd_level=args.zstd_level, max_compression=args.max_compression, artifacts="all")
        builds.append(time.perf_counter() - t0)
        stages.append(res.stage_seconds)

    def timed_pip() -> None:
        pips.append(pip_install(lock, os.path.join(out, "raw-pyc"), []))

    systems = {"wrenpack build": timed_build, "plain pip": timed_pip}
    for rnd in range(args.rounds):
        for name in _fair.order(list(systems), rnd):
            systems[name]()
    scheduling = _fair.check({"wrenpack build (this process)": [_fair.Scheduling.of(os.getpid())], "plain pip": pip_sched})
    build_s, pip_s = statistics.median(builds), statistics.median(pips)
    m = res.manifest
    t0 = time.perf_counter()
    sl = build(lock=res.lock, python="3.11", arch="x86_64", output=os.path.join(out, "runtime-sourceless"),
               cache_dir=os.path.join(out, "cache"), use_cache=False, verify_modules=IMPORTS,
               zstd_level=args.zstd_level, max_compression=args.max_compression, sourceless=True, artifacts="all")
    build_sl_s = time.perf_counter() - t0

    # Baseline trees: the same lock, installed the way pip lays it out (with and without its .pyc).
    base = {"raw-pyc": os.path.join(out, "raw-pyc"), "raw-nopyc": os.path.join(out, "raw-nopyc")}
    pip_install(res.lock, base["raw-nopyc"], ["--no-compile"])
    raw_nopyc, raw_files = tree_size(base["raw-nopyc"])
    raw_pyc, _ = tree_size(base["raw-pyc"])

    imports = import_times({"raw, no .pyc": base["raw-nopyc"], "raw, pip's .pyc": base["raw-pyc"],
                            "built runtime": res.site_dir, "built, sourceless": sl.site_dir}, max(args.repeat, 1))

    s = m["sizes"]
    print(f"machine: {os.cpu_count()} cores, load average {load_before[0]:.1f} before, "
          f"{os.getloadavg()[0]:.1f} after (other work shares these cores)")
    print(f"build time, warm download cache, {args.rounds} rounds alternating: wrenpack {_fair.spread(builds, fmt='.1f')}, "
          f"plain pip install {_fair.spread(pips, fmt='.1f')}: ratio of medians {build_s / pip_s:.2f}x (target <= 2.0x)")
    print(scheduling)
    print(f"stages of the median build: {json.dumps(stages[builds.index(sorted(builds)[(len(builds) - 1) // 2])])}")
    print(f"packing: zstd level {m['packing']['zstd_level']}, zip level {m['packing']['zip_level']}")
    print(f"build --sourceless (from the lock): {build_sl_s:.1f} s")
    print("packages: " + ", ".join(f"{p['name']} {p['version']}" for p in m["packages"]))
    print()
    print(f"{'size':<34}{'MB':>9}{'MiB':>9}{'vs raw':>9}")
    rows = [("raw (pip --target, no .pyc)", raw_nopyc), ("raw + pip's .pyc", raw_pyc),
            ("trimmed runtime (with .pyc)", s["trimmed"]), ("layer.zip", s["layer_zip"]),
            ("runtime.tar.zst", s["archive"]),
            ("sourceless runtime (.pyc only)", sl.sizes["trimmed"]), ("sourceless layer.zip", sl.sizes["layer_zip"]),
            ("sourceless runtime.tar.zst", sl.sizes["archive"])]
    for label, n in rows:
        print(f"{label:<34}{n / MB:>9.1f}{n / MIB:>9.1f}{n / raw_nopyc:>9.3f}")
    print(f"raw files: {raw_files}, runtime files: {s['files']}")
    print()
    print("trim rules (bytes saved):")
    for name, r in sorted(m["rules"].items(), key=lambda kv: -kv[1]["bytes_saved"]):
        rb = f"  rolled back for {r['rolled_back_for']}" if r.get("rolled_back_for") else ""
        print(f"  {name:<16}{r['bytes_saved'] / MB:>8.1f} MB  {r['files']:>6} files{rb}")
    print(f"  bytecode added  {m['bytecode']['bytes_added'] / MB:>8.1f} MB")
    print(f"  kept test files imported by other code: {len(m['kept_test_files'])}")
    print()
    print(f"import check: {'ok' if m['verified']['ok'] else 'NOT RUN'} ({len(m['verified']['modules'])} modules "
          f"incl. {sum(1 for x in m['verified']['modules'] if x.count('.') >= 1)} submodules/extensions)")
    print(f"cold import of {len(IMPORTS)} modules + a small fit, {args.repeat} rounds of fresh processes, trees alternating:")
    t_ref = statistics.median(imports["raw, no .pyc"][0])
    for name, (times, status) in imports.items():
        print(f"  {name:<19} {_fair.spread(times, fmt='.2f')}  ({status})  {statistics.median(times) / t_ref:.2f}x")
    print()
    # The targets are in AWS's "MB", which are MiB (Lambda's 250 MB layer limit is 250 MiB);
    # both units are printed so nobody has to take that on trust.
    any_ok = False
    for label, r in (("default", res), ("sourceless", sl)):
        z = r.sizes
        ok_size, ok_arc = z["trimmed"] <= 200 * MIB, z["archive"] <= 45 * MIB
        ok = ok_size and ok_arc and r.manifest["verified"]["ok"]
        any_ok |= ok
        print(f"{label:<11} <= 200 MiB unzipped: {'PASS' if ok_size else 'FAIL'} ({z['trimmed'] / MIB:.1f} MiB = "
              f"{z['trimmed'] / MB:.1f} MB); archive <= 45 MiB: {'PASS' if ok_arc else 'FAIL'} "
              f"({z['archive'] / MIB:.1f} MiB = {z['archive'] / MB:.1f} MB); imports verified: {r.manifest['verified']['ok']}")
    ok_all = any_ok
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
