"""A benchmark's bad argument is one line naming it and the fix (exit status 2), before
anything runs; a run of fewer rounds than the targets are measured over says so."""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def _env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WRENPACK_")}
    env.update(WRENPACK_STORAGE=str(tmp_path / "store"), WRENPACK_PROGRESS="false",
               PYTHONPATH=os.path.dirname(BENCH) + os.pathsep + env.get("PYTHONPATH", ""))
    return env


@pytest.mark.parametrize("script, args, match", [
    # (each ended in a traceback after running: StatisticsError, the median of no rounds)
    ("bench_checkpoint_overhead.py", ["--rounds", "0"], "--rounds: '0' is not a whole number of rounds, at least 1"),
    ("bench_auth_overhead.py", ["--rounds", "-3", "--inproc-only"], "--rounds: '-3' is not a whole number of rounds"),
    # (ran with "-1 CPU hog")
    ("bench_map_vs_processpool.py", ["--hogs", "-1"], "--hogs: '-1' is not a whole number of CPU hogs, at least 0"),
    # (ZeroDivisionError; ConfigError after generating the input)
    ("bench_sort.py", ["--mappers", "0"], "--mappers: '0' is not a whole number of calls, at least 1"),
    ("bench_sort.py", ["--partitions", "0"], "--partitions: '0' is not a whole number of calls, at least 1"),
    ("bench_wordcount.py", ["--partitions", "0"], "--partitions: '0' is not a whole number of reducers, at least 1"),
    # ("invalid <lambda> value")
    ("bench_wordcount.py", ["--size", "1TB"], "--size: bad size '1TB'; give a number with B, KB, MB or GB"),
    ("bench_shuffle_path.py", ["--size", "lots"], "--size: bad size 'lots'"),
    # (sort_stages: ZeroDivisionError after generating the input; the S3 plan: a ZeroDivisionError or a
    # nonsense schedule; the scipy stack: the median of no rounds after building a runtime)
    ("sort_stages.py", ["--mappers", "0"], "--mappers: '0' is not a whole number of calls, at least 1"),
    ("sort_stages.py", ["--passes", "0"], "--passes: '0' is not a whole number of passes, at least 1"),
    ("bench_s3_shuffle_plan.py", ["--functions", "0"], "--functions: '0' is not a whole number of functions, at least 1"),
    ("bench_s3_shuffle_plan.py", ["--mbps", "nan"], "--mbps: 'nan' is not a bandwidth in MB/s, more than 0"),
    ("bench_s3_shuffle_plan.py", ["--size", "1XB"], "--size: bad size '1XB'; give at least 1MB"),
    ("bench_runtime_scipy_stack.py", ["--rounds", "0"], "--rounds: '0' is not a whole number of rounds, at least 1"),
    # probe 7: an unknown --only ran nothing and ended with status 0
    ("bench_map_vs_processpool.py", ["--only", "nonsense"],
     "--only: unknown workload 'nonsense'; give one or more of trivial,many,latency,data,cpu,mixed"),
    ("bench_map_vs_processpool.py", ["--only", ""], "--only: '' names no workload; give one or more of trivial,"),
    ("bench_map_vs_processpool.py", ["--only", "cpu,latncy"], "--only: unknown workload 'latncy' in 'cpu,latncy'"),
    # probe 7: tracebacks (ValueError; ConfigError; a CalledProcessError that left the driver's store behind)
    ("bench_map_vs_processpool.py", ["--cpu-s", "nan", "--only", "cpu"], "--cpu-s: 'nan' is not a number of seconds, more than 0"),
    ("bench_spawn.py", ["--calls", "0"], "--calls: '0' is not a whole number of calls, at least 1"),
    ("latency_path.py", ["--calls", "0"], "--calls: '0' is not a whole number of calls, at least 1"),
    # probe 7: accepted and run (auth "median 0.000 s"; a flattering checkpoint ratio with no save)
    ("cpu_busy_share.py", ["--call-s", "-1"], "--call-s: '-1' is not a number of seconds, more than 0"),
    ("bench_auth_overhead.py", ["--big-calls", "0"], "--big-calls: '0' is not a whole number of calls, at least 1"),
    ("bench_map_vs_processpool.py", ["--cpu-s", "0"], "--cpu-s: '0' is not a number of seconds, more than 0"),
    ("bench_checkpoint_overhead.py", ["--step-ms", "0"], "--step-ms: '0' is not a number of milliseconds, more than 0"),
    # the other plain int/float options of the same kind
    ("bench_map_vs_processpool.py", ["--scale", "inf"], "--scale: 'inf' is not a scale factor, more than 0"),
    ("bench_auth_overhead.py", ["--calls", "0"], "--calls: '0' is not a whole number of calls, at least 1"),
    ("bench_auth_overhead.py", ["--mib", "0"], "--mib: '0' is not a whole number of MiB, at least 1"),
    ("bench_auth_overhead.py", ["--workers", "0"], "--workers: '0' is not a whole number of workers, at least 1"),
    ("bench_checkpoint_overhead.py", ["--steps", "0"], "--steps: '0' is not a whole number of steps, at least 1"),
    ("bench_checkpoint_overhead.py", ["--timeout", "-1"], "--timeout: '-1' is not a number of seconds, more than 0"),
    ("bench_checkpoint_overhead.py", ["--state-kb", "-1"], "--state-kb: '-1' is not a whole number of KB, at least 0"),
    ("cpu_busy_share.py", ["--maps", "0"], "--maps: '0' is not a whole number of maps, at least 1"),
    ("cpu_busy_share.py", ["--calls", "x"], "--calls: 'x' is not a whole number of calls, at least 1"),
    ("bench_profile_overhead.py", ["--phases", "-1"], "--phases: '-1' is not a whole number of runs, at least 0"),
    ("bench_profile_overhead.py", ["--fn", "work", "--n", "0"], "--n: '0' is not a whole number of rows, at least 1"),
    ("bench_sort.py", ["--repeats", "0"], "--repeats: '0' is not a whole number of rounds, at least 1"),
    ("bench_lambda_cost.py", ["--calls", "0"], "--calls: '0' is not a whole number of calls, at least 1"),
    ("bench_lambda_cost.py", ["--duration-s", "0"], "--duration-s: '0' is not a number of seconds, more than 0"),
    ("bench_lambda_cost.py", ["--memory", "64"], "--memory: memory=64 MB is outside Lambda's range"),
    ("bench_lambda_cost.py", ["--environments", "0"], "--environments: '0' is not a whole number of environments"),
    ("bench_lambda_cost.py", ["--sim", "--sim-concurrency", "0"], "--sim-concurrency: '0' is not a whole number of calls at once"),
    ("bench_lambda_cost.py", ["--sim", "--jitter", "1"], "--jitter: '1' is not a fraction, at least 0 and less than 1"),
    ("bench_lambda_cost.py", ["--sim", "--speed", "0"], "--speed: '0' is not a speed-up, more than 0"),
    ("bench_lambda_scale.py", ["--calls", "0"], "--calls: '0' is not a whole number of calls, at least 1"),
    ("bench_lambda_scale.py", ["--concurrency", "0"], "--concurrency: '0' is not a whole number of calls at once"),
    ("bench_lambda_scale.py", ["--duration", "nan"], "--duration: 'nan' is not a number of seconds, more than 0"),
    ("bench_lambda_scale.py", ["--invoke-latency", "-0.1"], "--invoke-latency: '-0.1' is not a number of seconds, at least 0"),
    ("bench_lambda_scale.py", ["--kinds", "Event,Sync"],
     "--kinds: unknown invocation type 'Sync' in 'Event,Sync'; give one or more of Event,RequestResponse"),
    ("bench_lambda_scale.py", ["--send-processes", "0,-2"], "--send-processes: '-2' is not a whole number of sender processes"),
], ids=lambda v: v if isinstance(v, str) and v.endswith(".py") else None)
def test_a_bad_argument_is_one_line_before_anything_runs(tmp_path, script, args, match):
    proc = subprocess.run([sys.executable, os.path.join(BENCH, script), *args], capture_output=True, text=True,
                          timeout=60, env=_env(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert match in proc.stderr.splitlines()[-1], proc.stderr
    assert proc.stdout == "" and not (tmp_path / "store").exists()  # (nothing ran)


def _fair():
    spec = importlib.util.spec_from_file_location("_fair", os.path.join(BENCH, "_fair.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["_fair"] = module  # (its dataclasses look their module up there)
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules["_fair"]
    return module


def test_every_numeric_option_has_a_checked_type():
    """A plain ``type=int`` or ``type=float`` lets 0, a negative number, nan or inf through to a
    traceback or, worse, a run that measures nothing (probe 7): every benchmark option has a
    checked type (``_fair.at_least``, ``_fair.positive``, ``_fair.size``, ...)."""
    plain = []
    for name in sorted(os.listdir(BENCH)):
        if name.endswith(".py"):
            with open(os.path.join(BENCH, name), encoding="utf-8") as f:
                plain += [f"{name}: {line.strip()}" for line in f if re.search(r"\btype=(int|float)\b", line)]
    assert plain == []


def test_list_options_keep_their_order_and_drop_repeats():
    fair = _fair()
    only = fair.names(("trivial", "many", "cpu"), "workload")
    assert only("cpu, trivial,cpu") == ["cpu", "trivial"]
    assert fair.whole_numbers(0, "a whole number of sender processes")("2,0,2") == [2, 0]
    positive = fair.positive()
    assert positive("0.25") == 0.25
    for bad in ("0", "-1", "nan", "inf", "-inf", "x", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            positive(bad)


def test_sizes_take_the_units_the_examples_take():
    # bench_wordcount's --size took only MB ("1GB" and "500KB": "invalid <lambda> value")
    size = _fair().size
    assert [size(s) for s in ("1GB", "500KB", "100MB", "20mb", "1.5M", "4096", "7B")] == \
        [10**9, 500_000, 10**8, 2 * 10**7, 1_500_000, 4096, 7]


def test_fewer_rounds_than_the_targets_say_so_in_a_line_and_in_the_table(tmp_path):
    """--rounds 1..4 printed ratios beside the targets with no word that the targets are
    measured over at least 5 rounds."""
    proc = subprocess.run([sys.executable, os.path.join(BENCH, "bench_checkpoint_overhead.py"), "--rounds", "2",
                           "--steps", "4", "--step-ms", "1"], capture_output=True, text=True, timeout=120,
                          env=_env(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    notes = [line for line in lines if "do not count against the targets" in line]
    assert len(notes) == 1 and notes[0].startswith("NOTE: 2 rounds, fewer than 5") and lines[0] == notes[0], lines
    assert any(line.startswith("2 rounds [QUICK LOOK, fewer than 5: not counted against the targets]")
               for line in lines), lines


def test_five_rounds_have_no_such_note():
    assert _fair().rounds_label(5) == "5 rounds" and _fair().rounds_label(7) == "7 rounds"
