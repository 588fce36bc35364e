"""The toy backend (tests/toy_backend): a backend is one folder plus one registry
line, and what its ``capabilities`` claim holds. The contract suites
(test_futures_contract.py, test_lifecycle.py) run on it besides."""
from __future__ import annotations

import glob
import os
import signal
import tempfile
import time
from pathlib import Path

import pytest

import wrenpack
from wrenpack import Executor
from wrenpack.backends import backend_names

from tests import toy_backend
from tests.toy_backend import ToyBackend

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def square(x):
    return x * x


def whoami(x):
    return os.getpid(), x


def test_registered_by_one_line():
    mentions = []
    for path in sorted(REPO.glob("wrenpack/**/*.py")) + sorted(TESTS.glob("**/*.py")):
        if path.is_relative_to(TESTS / "toy_backend") or path == Path(__file__).resolve():
            continue
        mentions += [(path.relative_to(REPO).as_posix(), line.strip())
                     for line in path.read_text().splitlines() if "toy_backend" in line and not line.lstrip().startswith("#")]
    assert mentions == [("tests/conftest.py", 'register_backend("toy", "tests.toy_backend:ToyBackend")'
                                              "  # the toy backend: one folder, this one line")]
    assert "toy" in backend_names()


def test_remote_runs_end_to_end_on_the_toy_backend(tmp_path, monkeypatch):
    # A temporary directory of this test's own: the suite runs in two processes (-n 2), and the
    # other's toy calls make their wrenpack-toy-* folders in the shared /tmp meanwhile.
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    ex = Executor(backend="toy", storage=str(tmp_path / "store"))
    try:
        f = wrenpack.remote(square, executor=ex)
        assert f.remote(7).result(timeout=60) == 49
        assert wrenpack.get(f.map(range(5)), timeout=60) == [0, 1, 4, 9, 16]
        assert isinstance(ex.backend, ToyBackend) and ex.backend.calls_run == 6
        # each call in a process of its own, none of them this one
        pids = [pid for pid, _ in wrenpack.get(wrenpack.remote(whoami, executor=ex).map(range(3)), timeout=60)]
        assert len(set(pids)) == 3 and os.getpid() not in pids
    finally:
        ex.shutdown()
    assert glob.glob(str(tmp_path / "tmp" / "wrenpack-toy-*")) == [], "a call's directory was left behind"
    assert os.listdir(tmp_path / "store" / "jobs") == []


def test_capabilities_claim_the_timeout_and_no_more():
    caps = ToyBackend(concurrency=3).capabilities
    assert caps.enforces == frozenset({"timeout"}) and caps.concurrency == 3
    assert not (caps.warm_pool or caps.reply_results or caps.handoff or caps.calls_end_with_driver)


def stuck():
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGALRM])  # the handler's own deadline cannot fire
    time.sleep(60)


def test_a_call_that_ignores_its_deadline_is_killed(tmp_path, monkeypatch):
    # A 1 s grace, not the backend's 3 s: the call ignores its deadline, so it is killed
    # whether or not its process had started by then (the grace is for calls that end).
    monkeypatch.setattr(toy_backend, "HARD_GRACE_S", 1.0)
    ex = Executor(backend="toy", storage=str(tmp_path / "store"))
    try:
        t0 = time.monotonic()
        with pytest.raises(wrenpack.TaskTimeout, match="was stopped"):
            wrenpack.remote(stuck, executor=ex, timeout=1).remote().result(timeout=60)
        assert time.monotonic() - t0 < 1 + toy_backend.HARD_GRACE_S + 5
    finally:
        ex.shutdown()


def dies():
    os._exit(3)


def test_a_crashed_call_is_tried_again_then_reported(tmp_path):
    ex = Executor(backend="toy", storage=str(tmp_path / "store"), retries=1)
    try:
        with pytest.raises(wrenpack.WorkerCrashed, match="died on 2 attempts"):
            wrenpack.remote(dies, executor=ex).remote().result(timeout=60)
        assert ex.backend.calls_run == 2
    finally:
        ex.shutdown()
