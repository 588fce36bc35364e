"""What a job's report and ``wrenpack jobs show`` say of a map_reduce and of a spawned job.

- ``job_report([mr])`` of a ``map_reduce`` future showed its reducer alone: the
  map phase (most of the calls, time and cost) was missing.
- ``job_report(job.futures())`` of a spawned job priced its calls at the
  reporting executor's memory, not the memory the job ran with.
- ``wrenpack jobs show`` named a failed call's error by its type at most (or
  not at all), where ``job_report`` of an in-process map says ``Type: message``.
"""
from __future__ import annotations

import json
import time

import pytest

import wrenpack
from tests.test_jobs import _cli, _gone
from wrenpack.executor import Executor


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A store and an owner key of this test's own, in the environment (as in test_jobs)."""
    monkeypatch.setenv("WRENPACK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WRENPACK_STORAGE", str(tmp_path / "store"))
    return tmp_path


def _double(x):
    time.sleep(0.01)
    return 2 * x


def _total(values):
    return sum(values)


def _merge(values):
    return sum(values)


def test_the_report_of_a_map_reduce_covers_its_map_and_its_reduce(make_executor):
    ex = make_executor(concurrency=2, memory=256)
    mr = wrenpack.map_reduce(_double, range(5), _total, executor=ex)
    assert mr.result(timeout=60) == 20
    rep = ex.report([mr]).to_json()
    assert rep["job"]["calls"] == 6, [c["label"] for c in rep["calls"]]  # five mappers and the reducer
    assert rep["job"]["states"]["finished"] == 6
    labels = [c["label"] for c in rep["calls"]]
    assert sum("_double" in label for label in labels) == 5 and sum("_total" in label for label in labels) == 1, labels
    assert all(c["run_s"] > 0 and c["billed_ms"] >= 1 for c in rep["calls"])
    assert rep["cost"]["invocations"] == 6
    # the map phase is priced too: more than the reducer's own invocation
    reducer = next(c for c in rep["calls"] if "_total" in c["label"])
    assert rep["cost"]["duration_usd"] > reducer["cost_usd"] and rep["cost"]["billed_ms"] >= 5 * 10
    # (the same report again: once it ended, the calls' records are kept, not their futures)
    assert ex.report([mr]).to_json()["job"]["calls"] == 6


def test_the_report_of_a_tree_map_reduce_covers_every_level(make_executor):
    ex = make_executor(concurrency=2)
    mr = wrenpack.map_reduce(_double, range(6), _merge, fan_in=2, executor=ex)
    assert mr.result(timeout=60) == 30
    rep = wrenpack.job_report([mr], executor=ex).to_json()
    labels = [c["label"] for c in rep["calls"]]
    assert sum("(map)" in label for label in labels) == 6, labels
    assert sum("(reduce)" in label for label in labels) >= 3, labels  # 6 -> 3 -> 2 -> 1 values
    assert rep["job"]["states"]["finished"] == len(labels) and rep["cost"]["invocations"] == len(labels)


def _fails(x):
    if x == 2:
        # (the message's second line is not the report's; a key id in it is redacted)
        raise ValueError(f"bad input {x} for key AKIAABCDEFGHIJKLMNOP\nsecond line")
    return x


def _spawned(memory=None):
    """A spawned job of ``_fails`` over 1, 2, 3 (the second call fails), ended, its supervisor gone."""
    driver = Executor(backend="local", concurrency=1, timeout=10)  # (its default memory: not the job's)
    f = wrenpack.remote(_fails, executor=driver, **({"memory": memory} if memory else {}))
    job = f.spawn_map([1, 2, 3])
    try:
        assert job.wait(timeout=60)
    finally:
        _alive, owner = job.supervisor()
        if owner is not None:
            _gone([owner["pid"]])
    return driver, job


def test_a_spawned_jobs_report_is_priced_at_the_memory_it_ran_with(home):
    driver, job = _spawned(memory=256)
    assert driver.config.memory != 256
    rep = wrenpack.job_report(job.futures(), executor=driver).to_json()
    assert [c["memory_mb"] for c in rep["calls"]] == [256, 256, 256], rep["calls"]
    stored = job.report().to_json()
    assert rep["cost"]["billed_ms"] == stored["cost"]["billed_ms"]
    assert rep["cost"]["gb_s"] == pytest.approx(rep["cost"]["billed_ms"] / 1000 * 256 / 1024)
    assert rep["cost"]["duration_usd"] == pytest.approx(stored["cost"]["duration_usd"])
    assert rep["cost"]["architecture"] == "x86_64" and rep["cost"]["estimated"] is True
    assert rep["job"]["settings"]["memory_mb"] == 256 and rep["job"]["backend"] == "local"
    # a setting given to the report still wins over the job's
    assert wrenpack.job_report(job.futures(), executor=driver, architecture="arm64").to_json()["cost"]["architecture"] == "arm64"


def test_jobs_show_names_each_failed_calls_error_as_the_report_does(home):
    driver, job = _spawned()
    # the failed call's error: its type and the first line of its message, redacted, wherever it is shown
    error = "ValueError: bad input 2 for key <redacted-key-id>"
    assert wrenpack.job_report(job.futures(), executor=driver).to_json()["calls"][1]["error"] == error
    assert job.report().to_json()["calls"][1]["error"] == error
    assert [s.get("error") for s in job.statuses()] == [None, error, None]
    shown = _cli("jobs", "show", job.id, "--json")
    assert shown.returncode == 0, shown.stderr
    calls = json.loads(shown.stdout)["calls_status"]
    assert [c["error"] for c in calls] == [None, error, None]
    shown = _cli("jobs", "show", job.id)
    assert shown.returncode == 0, shown.stderr
    failed = [line for line in shown.stdout.splitlines() if " failed " in line and line.startswith("  ")]
    assert len(failed) == 1 and failed[0].endswith(f"({error})"), shown.stdout
    assert "AKIA" not in shown.stdout and "second line" not in shown.stdout
