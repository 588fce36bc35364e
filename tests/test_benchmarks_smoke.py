"""The benchmarks run to their end on small inputs: a figure quoted from one must
come from a script that still works. Each runs as users run it (a fresh
interpreter, its own command line), with inputs small enough for seconds."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def _temporary() -> set[str]:
    """What the benchmarks could leave in the temporary directory (their folders, tempfile's)."""
    import tempfile

    root = tempfile.gettempdir()
    return {n for n in os.listdir(root) if n.startswith(("tmp", "wrenpack-bench-", "wrenpack-cost-", "bench-spawn-"))}


def _run(script: str, *args: str, timeout: float = 240) -> str:
    before = _temporary()
    proc = subprocess.run([sys.executable, os.path.join(BENCH, script), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=os.path.dirname(BENCH))
    assert proc.returncode == 0, f"{script} {' '.join(args)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    # (a benchmark leaves nothing behind either: latency_path left an empty store folder per driver run)
    assert _temporary() - before == set(), f"{script} left {sorted(_temporary() - before)} in the temporary directory"
    return proc.stdout


def test_checkpoint_overhead_with_calls_too_short_to_save_says_so():
    """Calls that end before their first checkpoint save nothing: the benchmark used to
    end in a StatisticsError (the median of no save times) after its timings."""
    out = _run("bench_checkpoint_overhead.py", "--steps", "10", "--step-ms", "5", "--timeout", "1.0", "--rounds", "5")
    assert "no checkpoint was saved" in out
    assert "overhead ratio checkpointed/uninterrupted" in out


def test_s3_shuffle_plan_prints_its_plan():
    out = _run("bench_s3_shuffle_plan.py", "--size", "10GB", "--functions", "20")
    assert "prefix" in out.lower()


@pytest.mark.slow
@pytest.mark.parametrize("script,args", [
    ("bench_map_vs_processpool.py", ["--rounds", "1", "--calls", "50", "--many-calls", "200", "--latency-calls", "50",
                                     "--data-calls", "5", "--data-mib", "1", "--cpu-calls", "4", "--cpu-s", "0.02",
                                     "--scale", "0.1"]),
    ("bench_sort.py", ["--size", "20MB", "--rounds", "1"]),
    ("bench_wordcount.py", ["--size", "5MB", "--rounds", "1"]),
    ("latency_path.py", ["--rounds", "1", "--calls", "100"]),
    ("bench_spawn.py", ["--calls", "4", "--rounds", "1"]),
    ("bench_auth_overhead.py", ["--calls", "50", "--big-calls", "2", "--mib", "1", "--rounds", "1"]),
    ("bench_lambda_cost.py", ["--sim", "--calls", "50", "--rounds", "1"]),
    ("bench_lambda_scale.py", ["--calls", "500", "--concurrency", "50", "--rounds", "1"]),
    ("bench_shuffle_path.py", ["--size", "20MB", "--rounds", "1"]),
    ("sort_stages.py", ["--size", "20MB"]),
], ids=lambda v: v if isinstance(v, str) else None)
def test_benchmark_runs_on_small_inputs(script, args):
    _run(script, *args, timeout=600)
