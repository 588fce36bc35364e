"""Benchmark: build time of a numpy + scipy + pandas + scikit-learn runtime (python3.11 x86_64) against
plain installers, on a cold cache; then the size of a pandas + pyarrow runtime.

The lock is resolved once, untimed. Each round then runs, in an order that
rotates from round to round (so neither side always goes first or meets the
same load), on cold caches (a fresh uv cache directory, pip with
``--no-cache-dir``, and for wrenpack both, plus no runtime cache):

- wrenpack ``build(lock=...)``: size check, install, trim, glibc check, bytecode,
  import check, layer zip (each stage's seconds are printed too);
- plain pip: ``pip install --target --platform <the target's manylinux tags>
  --only-binary=:all: --python-version 3.11 -r lock`` (pip compiles .pyc by default);
- uv, when installed: ``uv pip install --target --python-platform <the target's>
  --python-version 3.11 --only-binary :all: -r lock``.

Every side runs as this process or its children (same session, nice value and
CPUs: the scheduling is alike). The medians and min-max are printed, with the ratio to pip (target: wrenpack
<= 1.3x pip), the machine's core count and load average. ``--rounds`` (default
5) drops to 3 when the first round shows 5 would not fit ``--max-minutes``,
and the output says so.

Then a pandas + pyarrow runtime (with sources and sourceless), its size
against AWS's SDK-for-pandas layer (about 154 MiB), proven by the import check
of ``pandas``, ``pyarrow``, ``pyarrow.parquet`` and a parquet round trip.

Run: python benchmarks/bench_runtime_scipy_stack.py [--rounds 5] [--max-minutes 40] [--out benchmarks/out]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _fair  # noqa: E402
from runtime_builder import build, installer  # noqa: E402
from runtime_builder.targets import Target  # noqa: E402

PACKAGES = ["numpy", "scipy", "pandas", "scikit-learn"]
IMPORTS = ["numpy", "scipy", "scipy.sparse", "scipy.linalg", "scipy.optimize", "scipy.stats", "scipy.signal",
           "scipy.interpolate", "pandas", "sklearn", "sklearn.linear_model", "sklearn.ensemble",
           "sklearn.model_selection", "sklearn.cluster", "sklearn.decomposition"]
STAGES = ["size-check", "install", "trim", "glibc", "bytecode", "budget", "verify", "pack", "publish"]
ROUND_TRIP = ("import io, os, tempfile, pandas as pd, pyarrow as pa, pyarrow.parquet as pq; "
              "df = pd.read_csv(io.StringIO('a,b\\n1,x\\n2,y\\n3,z\\n')); "
              "assert pd.read_csv(io.BytesIO(b'a,b\\n1,x\\n'), engine='pyarrow')['a'].tolist() == [1]; "
              "path = os.path.join(tempfile.mkdtemp(), 't.parquet'); df.to_parquet(path); "
              "assert pd.read_parquet(path).equals(df); buf = io.BytesIO(); df.to_parquet(buf); "
              "buf.seek(0); assert pd.read_parquet(buf).equals(df); print('ok')")
MIB = 1024 * 1024
AWS_SDK_PANDAS_MIB = 154


def _cold_env(tmp: str) -> dict[str, str]:
    env = dict(os.environ, PIP_NO_CACHE_DIR="1", UV_CACHE_DIR=os.path.join(tmp, "uv-cache"))
    return env


def run_pip(lock: str, target: Target, tmp: str) -> float:
    dest = os.path.join(tmp, "pip")
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-cache-dir", "--target", dest,
                    *target.pip_args(), "-r", lock], check=True, env=_cold_env(tmp))
    return time.perf_counter() - t


def run_uv(uv: str, lock: str, target: Target, tmp: str) -> float:
    dest = os.path.join(tmp, "uv")
    t = time.perf_counter()
    subprocess.run([uv, "pip", "install", "-q", "--target", dest, "--python", sys.executable,
                    "--python-platform", installer.uv_platform(target), "--python-version", target.python,
                    "--only-binary", ":all:", "--cache-dir", os.path.join(tmp, "uv-cache"), "-r", lock],
                   check=True, env=_cold_env(tmp))
    return time.perf_counter() - t


def run_wrenpack(lock: str, tmp: str, how: str | None = None) -> tuple[float, dict[str, float]]:
    saved = dict(os.environ)
    os.environ.update(_cold_env(tmp))
    if how:
        os.environ["WRENPACK_INSTALLER"] = how
    try:
        t = time.perf_counter()
        res = build(lock=lock, python="3.11", arch="x86_64", output=os.path.join(tmp, "wrenpack"),
                    cache_dir=os.path.join(tmp, "rt-cache"), use_cache=False, verify_modules=IMPORTS)
        return time.perf_counter() - t, res.stage_seconds
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _stat(xs: list[float]) -> str:
    return f"{statistics.median(xs):6.1f} s (min {min(xs):.1f}, max {max(xs):.1f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=_fair.at_least(1, "a whole number of rounds"), default=5,
                    help="rounds, systems alternating (default 5; fewer is a quick look)")
    ap.add_argument("--max-minutes", type=_fair.at_least_real(0, "a number of minutes", above=True), default=40.0,
                    help="drop to 3 rounds when 5 would take longer")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", "scipy-stack"))
    ap.add_argument("--skip-pandas-pyarrow", action="store_true")
    ap.add_argument("--only-pandas-pyarrow", action="store_true", help="only the pandas + pyarrow size (no timing)")
    ap.add_argument("--pip-fallback", action="store_true",
                    help="also time wrenpack installing with pip (WRENPACK_INSTALLER=pip), as without uv")
    args = _fair.parse_args(ap)
    out = os.path.abspath(args.out)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    if args.only_pandas_pyarrow:
        return pandas_pyarrow(out)
    target = Target.make("3.11", "x86_64")
    uv = installer.find_uv()
    load_before = os.getloadavg()

    # The lock, resolved once (untimed).
    first = build(PACKAGES, python="3.11", arch="x86_64", output=os.path.join(out, "runtime"),
                  cache_dir=os.path.join(out, "cache"), use_cache=False, verify_modules=IMPORTS)
    lock = first.lock
    sides = ["wrenpack", "pip"] + (["uv"] if uv else []) + (["wrenpack-pip"] if args.pip_fallback else [])
    times: dict[str, list[float]] = {s: [] for s in sides}
    stages: list[dict[str, float]] = []
    pip_stages: list[dict[str, float]] = []
    rounds, note = args.rounds, ""
    t_start = time.perf_counter()
    i = 0
    while i < rounds:
        order = sides[i % len(sides):] + sides[:i % len(sides)]
        for side in order:
            with tempfile.TemporaryDirectory(prefix="bench-rt-", dir=out) as tmp:
                if side == "pip":
                    times["pip"].append(run_pip(lock, target, tmp))
                elif side == "uv":
                    times["uv"].append(run_uv(uv, lock, target, tmp))  # type: ignore[arg-type]
                elif side == "wrenpack-pip":
                    s, st = run_wrenpack(lock, tmp, "pip")
                    times[side].append(s)
                    pip_stages.append(st)
                else:
                    s, st = run_wrenpack(lock, tmp)
                    times["wrenpack"].append(s)
                    stages.append(st)
        i += 1
        if i == 1 and rounds >= 5:
            per_round = time.perf_counter() - t_start
            if per_round * rounds > args.max_minutes * 60:
                rounds, note = 3, (f" (3 rounds, not {args.rounds}: one round took {per_round:.0f} s, and "
                                   f"{args.rounds} would pass --max-minutes {args.max_minutes:.0f})")
    load_after = os.getloadavg()

    print(f"machine: {os.cpu_count()} cores, load average {load_before[0]:.1f} before, {load_after[0]:.1f} after "
          f"(other work shares these cores)")
    print("lock: " + ", ".join(f"{p['name']} {p['version']}" for p in first.manifest["packages"]))
    print(f"cold-cache build of the same lock, {rounds} rounds alternated{note}; median (min, max):")
    for side in sides:
        ratio = statistics.median(times[side]) / statistics.median(times["pip"])
        label = {"wrenpack": f"wrenpack build (installs with {installer_name()})",
                 "pip": "plain pip install --target", "uv": "uv pip install --target",
                 "wrenpack-pip": "wrenpack build (installs with pip)"}[side]
        print(f"  {label:<46}{_stat(times[side])}  {ratio:.2f}x pip")
    target_ok = statistics.median(times["wrenpack"]) <= 1.3 * statistics.median(times["pip"])
    print(f"  wrenpack <= 1.3x plain pip: {'PASS' if target_ok else 'FAIL'}")
    for label, runs in (("wrenpack", stages), ("wrenpack installing with pip", pip_stages)):
        if not runs:
            continue
        print(f"  {label} stages, median (min, max):")
        for name in STAGES:
            xs = [st.get(name, 0.0) for st in runs]
            print(f"    {name:<12}{_stat(xs)}")
    m = first.manifest
    print(f"scipy-stack runtime: {m['sizes']['trimmed'] / MIB:.1f} MiB, layer.zip {m['sizes']['layer_zip'] / MIB:.1f} MiB, "
          f"{len(m['verified']['modules'])} modules verified")

    if not args.skip_pandas_pyarrow and pandas_pyarrow(out):
        return 1
    return 0 if target_ok else 1


def pandas_pyarrow(out: str) -> int:
    """Build pandas + pyarrow with sources (the default) and sourceless; print each size against AWS's
    SDK-for-pandas layer, the import check and a csv/parquet round trip in the runtime alone."""
    failed = False
    kw = dict(python="3.11", arch="x86_64", cache_dir=os.path.join(out, "cache"), use_cache=False,
              verify_modules=["pandas", "pyarrow", "pyarrow.parquet"])
    pa = build(["pandas", "pyarrow"], output=os.path.join(out, "pandas-pyarrow"), **kw)
    sl = build(lock=pa.lock, output=os.path.join(out, "pandas-pyarrow-sourceless"), sourceless=True, **kw)
    saved = {k: v["bytes_saved"] for k, v in pa.manifest["rules"].items()
             if k.startswith("optional:") or k == "duplicate-libs"}
    for label, r in (("with sources", pa), ("sourceless", sl)):
        proc = subprocess.run([sys.executable, "-I", "-S", "-c",
                               f"import sys; sys.path.insert(0, {r.site_dir!r}); {ROUND_TRIP}"],
                              capture_output=True, text=True)
        size = r.sizes["trimmed"] / MIB
        print(f"pandas + pyarrow ({label}): {size:.1f} MiB unzipped (AWS SDK for pandas layer ~"
              f"{AWS_SDK_PANDAS_MIB} MiB: {'PASS' if size <= AWS_SDK_PANDAS_MIB else 'FAIL'}); import check "
              f"{'ok' if r.manifest['verified']['ok'] else 'NOT RUN'}; round trip "
              f"{proc.stdout.strip() or proc.stderr.strip().splitlines()[-1:]}")
        failed |= proc.stdout.strip() != "ok" or not r.manifest["verified"]["ok"]
        failed |= label == "with sources" and size > AWS_SDK_PANDAS_MIB
    libs = pa.manifest["components"].get("unlinked", {})
    if libs:
        print(f"  dropped from DT_NEEDED (nothing binds to them): {sorted({n for v in libs.values() for n in v})} "
              f"in {len(libs)} kept files; kept: {pa.manifest['components'].get('kept_libraries') or 'none'}")
    print("  optional components and duplicate libraries trimmed (MiB): " + ", ".join(
        f"{k} {v / MIB:.1f}" for k, v in sorted(saved.items(), key=lambda kv: -kv[1]) if v))
    if pa.manifest.get("rollbacks"):
        print("  rolled back: " + "; ".join(f"{r['rule']} ({r['module']})" for r in pa.manifest["rollbacks"]))
    return 1 if failed else 0


def installer_name() -> str:
    choice = installer.choice()
    if choice == "pip" or installer.find_uv() is None:
        return "pip"
    return installer.uv_version(installer.find_uv())  # type: ignore[arg-type]


if __name__ == "__main__":
    sys.exit(main())
