"""``wrenpack jobs`` / ``wrenpack clean`` / ``attach`` with the input a user (or someone
careless) gives them: job ids that are not ids, options before the action, messages
that name the fix. Records are planted as ``spawn_map`` writes them (no processes),
so each test takes a fraction of a second.
"""
from __future__ import annotations

import json
import time

import pytest

from tests.test_jobs import _cli, _finish, _plant, _store
from wrenpack import keys
from wrenpack.errors import ConfigError
from wrenpack.executor.owner import owner_record, user_key
from wrenpack.job import attach

@pytest.fixture
def home(tmp_path, monkeypatch):
    """A store and an owner key of this test's own, in the environment (as in test_jobs)."""
    monkeypatch.setenv("WRENPACK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WRENPACK_STORAGE", str(tmp_path / "store"))
    return tmp_path


JOB = "20260101-000000-0000abcd"

#: what users paste by mistake, and what an attacker names on purpose
NOT_IDS = ("..", "../x", f"{JOB}/result", f"{JOB}/..", ".", " ", "-x", "x" * 300, f"{JOB}\n")


def test_a_job_id_that_is_not_one_is_named_as_such_in_one_line_before_the_store_is_read(home):
    store = _store()
    _plant(store, JOB, user_key())
    for bad in NOT_IDS:
        with pytest.raises(ConfigError, match="is not a job id") as err:
            attach(bad)
        assert "\n" not in str(err.value)
        for args in (("jobs", "show", "--", bad), ("jobs", "cancel", "--", bad)):
            out = _cli(*args)
            assert out.returncode == 1 and "is not a job id" in out.stderr and out.stderr.count("\n") == 1, (args, out)
    # a trailing slash (a folder name completed by the shell) is the job
    out = _cli("jobs", "show", f"{JOB}/", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["id"] == JOB, out.stderr


def test_clean_never_removes_part_of_a_job_named_by_a_path(home):
    """``wrenpack clean JOB/result`` removed the results of a job, while its supervisor ran."""
    store = _store()
    job = _plant(store, JOB, user_key())
    store.put(keys.owner_key(job.id), json.dumps(owner_record("f", job.id)).encode())  # its supervisor: live
    store.put(keys.result_key(job.id, "00000"), b"a result")
    for bad in (f"{JOB}/result", f"{JOB}/result/0", "..", f"{JOB}/start/.."):
        out = _cli("clean", "--", bad)
        assert out.returncode == 1 and "is not a job id" in out.stderr and out.stderr.count("\n") == 1, (bad, out)
        assert store.exists(keys.result_key(job.id, "00000")), bad
    # named with a trailing slash, as before, it is the job (refused while its supervisor runs)
    out = _cli("clean", f"{JOB}/")
    assert out.returncode == 1 and "still running" in out.stderr


def test_options_given_before_the_action_are_not_dropped(home, tmp_path):
    """``wrenpack jobs --json show ID`` printed text, and ``wrenpack jobs --storage S cancel ID``
    used the default store: the action's parser reset the options given before it."""
    store = _store()
    job = _plant(store, JOB, user_key())
    _finish(job)
    out = _cli("jobs", "--json", "show", JOB)
    assert out.returncode == 0 and json.loads(out.stdout)["id"] == JOB, out
    elsewhere = tmp_path / "elsewhere"
    out = _cli("jobs", "--storage", str(elsewhere), "show", JOB)
    assert out.returncode == 1 and str(elsewhere) in out.stderr, out
    running = _plant(store, "20260101-000000-0000beef", user_key(), created=time.time())
    out = _cli("jobs", "--storage", str(elsewhere), "cancel", running.id)
    assert out.returncode == 1 and not running.cancelled(), out
    # given after the action, as before
    out = _cli("jobs", "show", JOB, "--json")
    assert out.returncode == 0 and json.loads(out.stdout)["id"] == JOB
