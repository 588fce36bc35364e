"""Spawned jobs nobody was given: a driver killed inside ``spawn_map`` leaves nothing behind,
and what such a job left (an older wrenpack's, or a supervisor that died) neither blocks
``wrenpack clean`` nor shows as "starting" / "lost" for its whole retention."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.processes import alive
from tests.test_jobs import _cli, _finish, _plant, _store
from wrenpack import keys
from wrenpack.executor.owner import user_key
from wrenpack.job.client import log_path, removal_state
from wrenpack.wire import owner as owner_wire

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A store and an owner key of this test's own, in the environment (so subprocesses share them)."""
    monkeypatch.setenv("WRENPACK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WRENPACK_STORAGE", str(tmp_path / "store"))
    return tmp_path

# A driver that dies (SIGKILL) half-way through handing its job to the supervisor, as one killed
# inside spawn_map while it writes large arguments does; it prints the supervisor's pid and the job's id.
KILLED_MID_WRITE = """
import os, signal, subprocess, sys
import wrenpack
from wrenpack.job import spawn

class Half(subprocess.Popen):
    def __init__(self, args, **kw):
        super().__init__(args, **kw)
        pipe = self.stdin

        class Writer:
            def write(self, data):
                pipe.write(data[: len(data) // 2])
                pipe.flush()
                print(self_pid, args[3], flush=True)
                os.kill(os.getpid(), signal.SIGKILL)

            def close(self):
                pipe.close()

        self_pid = self.pid
        self.stdin = Writer()

spawn.subprocess.Popen = Half

@wrenpack.remote(memory=128, timeout=30)
def f(b):
    return len(b)

f.spawn_map([b"x" * 100000 for _ in range(3)], retention="1h")
"""


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < end:
        time.sleep(0.05)
    assert not alive(pid), f"the supervisor (pid {pid}) still runs"


def test_a_driver_killed_while_handing_over_its_job_leaves_nothing(home, tmp_path):
    """Before, spawn_map stored the job record before the supervisor had the job: the supervisor died
    on "pickle data was truncated" and the record stayed ("starting" for 5 minutes, then "lost")."""
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(KILLED_MID_WRITE))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=60,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert out.returncode == -9, out.stderr
    pid, job_id = out.stdout.split()
    _wait_gone(int(pid))
    store = _store()
    assert not store.list(keys.job_prefix(job_id))  # neither record nor owner record
    assert not os.path.exists(log_path(job_id))  # nobody was told of the job: its log goes too
    listed = json.loads(_cli("jobs", "--json").stdout)
    assert [r["id"] for r in listed["jobs"]] == []


def test_a_job_whose_supervisor_never_started_is_not_starting_and_blocks_no_clean(home):
    """A job record without an owner record (an older wrenpack's driver killed inside spawn_map left it;
    a supervisor writes its owner record first): before, "starting 0/0/0/N" for START_GRACE_S (wait()
    never True, `jobs cancel` said "cancelled" and it stayed "cancelling", `clean --all [--force]` and
    `clean --force ID` refused for the whole store), then "lost" for its whole retention."""
    store = _store()
    key = user_key()
    orphan = _plant(store, "20260101-000000-0000eeee", key, calls=6)
    done = _plant(store, "20260101-000000-0000dddd", key)
    _finish(done)
    status = orphan.status()
    assert status["state"] == "lost" and status["queued"] == 0 and status["running"] == 0
    t0 = time.monotonic()
    assert orphan.wait(timeout=5) and time.monotonic() - t0 < 4
    cancelled = _cli("jobs", "cancel", orphan.id)
    assert cancelled.returncode == 1 and "cancelled job" not in cancelled.stdout, cancelled
    assert not store.exists(keys.cancel_key(orphan.id)) and orphan.status()["state"] == "lost"
    assert removal_state(store, orphan.id, key)[0] == "expired"  # nothing ran, nobody has its id
    stale = _cli("clean", "--stale", "--json")
    assert stale.returncode == 0, stale.stderr
    assert not store.list(keys.job_prefix(orphan.id)) and store.exists(keys.job_record_key(done.id))
    # (planted again:) it blocks neither --all nor --force ID
    for args in (("clean", "--all"), ("clean", "--all", "--force"), ("clean", "--force", orphan.id)):
        _plant(store, orphan.id, key, calls=6)
        out = _cli(*args)
        assert out.returncode == 0, (args, out.stderr)
        assert not store.list(keys.job_prefix(orphan.id)), args


def test_an_owner_record_not_sealed_with_the_key_does_not_block_clean(home):
    """Before, a young job whose owner record did not verify counted as "starting", so live: it
    blocked `clean --all` (and --force) for the whole store; it is in doubt (kept by --stale) instead."""
    store = _store()
    key = user_key()
    job = _plant(store, "20260101-000000-0000aaaa", key)
    record = {"host": "h", "pid": 1, "start": None, "created": time.time(), "label": "f"}
    store.put(keys.owner_key(job.id), owner_wire.dumps(owner_wire.seal(os.urandom(32), job.id, record)))
    assert removal_state(store, job.id, key)[0] == "unknown"
    stale = json.loads(_cli("clean", "--stale", "--json").stdout)
    assert job.id in stale["skipped"] and store.exists(keys.job_record_key(job.id))
    out = _cli("clean", "--all")
    assert out.returncode == 0, out.stderr
    assert not store.list(keys.job_prefix(job.id))
