"""The handler's side of an event's ``deadline`` and ``reply_within_s``
(``wrenpack.wire.event``): an event that comes after its deadline runs nothing
and writes nothing; a call that ran longer than ``reply_within_s`` stores its
result instead of replying with it, and so does one whose reply would pass
Lambda's 6 MB response limit."""
from __future__ import annotations

import time

import cloudpickle

from wrenpack import auth, keys
from wrenpack.storage.local import LocalStore
from wrenpack.wire import result
from wrenpack.wire.event import Event, inline_args
from wrenpack.worker.context import LocalContext
from wrenpack.worker.handler import _reply_fits, handler

SECRET = b"d" * 32


def _event(store, call_id, fn, *args, **fields):
    # (a worker caches a job's function: each test has a job of its own)
    job = f"jd-{fn.__name__}"
    store.put(keys.func_key(job), auth.seal(SECRET, keys.identity(job, "func"), cloudpickle.dumps(fn)))
    d = Event(job_id=job, call_id=call_id, store=store.spec, secret=SECRET,
              args=inline_args(cloudpickle.dumps((args, {})))).to_dict()
    d.update(fields)
    return d


def _ctx():
    return LocalContext(function_name="t", memory_mb=256, deadline=time.time() + 30)


def touches(path):
    open(path, "w").close()
    return "ran"


def test_an_event_past_its_deadline_runs_nothing_and_writes_nothing(tmp_path):
    store = LocalStore(tmp_path / "s")
    marker = tmp_path / "ran"
    now = time.time()
    reply = handler(_event(store, "00000", touches, str(marker), deadline=now - 5, attempt=2), _ctx())
    assert reply["exit"] == "expired" and reply["attempt"] == 2 and reply["deadline"] == now - 5
    assert reply["now"] >= now
    assert not marker.exists()
    assert not store.exists(keys.result_key("jd-touches", "00000")) and not store.exists(keys.start_key("jd-touches", "00000"))
    # before its deadline it runs
    reply = handler(_event(store, "00001", touches, str(marker), deadline=time.time() + 30), _ctx())
    assert reply["exit"] == "ok" and marker.exists()


def sleeps(s):
    time.sleep(s)
    return s


def test_a_call_longer_than_reply_within_s_stores_its_result(tmp_path, monkeypatch):
    monkeypatch.setenv("WRENPACK_LOCAL_WORKER", "")  # the reply as on Lambda: base64 text
    store = LocalStore(tmp_path / "s")
    quick = handler(_event(store, "00000", sleeps, 0.0, reply_limit=1 << 20, reply_within_s=0.2), _ctx())
    assert result.reply_result(quick) is not None and not store.exists(keys.result_key("jd-sleeps", "00000"))
    slow = handler(_event(store, "00001", sleeps, 0.3, reply_limit=1 << 20, reply_within_s=0.2), _ctx())
    assert "result" not in slow and slow["first"] is True
    stored = store.get(keys.result_key("jd-sleeps", "00001"))
    assert result.open_result(SECRET, "jd-sleeps", "00001", stored, "r")[1].value == 0.3


def test_a_reply_that_would_pass_lambdas_response_limit_is_not_sent():
    status = {"exit": "ok", "logs": "\x01" * 65536}  # JSON escapes each to six bytes
    assert _reply_fits(dict(status, result="a" * (6 * 1024 * 1024 - 400_000)))
    assert not _reply_fits(dict(status, result="a" * (6 * 1024 * 1024 - 300_000)))
    assert _reply_fits(dict(status, result=b"a" * (7 * 1024 * 1024)))  # a local worker's reply: no Lambda limit


def fills_tmp():
    try:
        raise OSError(28, "No space left on device")  # (what a write to a full /tmp raises)
    except OSError as exc:
        raise RuntimeError("could not save the intermediate file") from exc


def raises_plain_oserror():
    raise OSError(2, "No such file or directory")


def test_a_call_that_fills_lambdas_tmp_fails_as_past_its_ephemeral_storage(tmp_path, monkeypatch):
    """Locally a call past its /tmp fails with EphemeralStorageExceeded (the backend measures
    it); on Lambda, whose /tmp is size-limited, the user's write failed with ENOSPC and the
    call came back as that OSError (or whatever the user's code made of it): not the same
    failure for the same call. Other errors stay the user's own."""
    from wrenpack.errors import EphemeralStorageExceeded

    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "wrenpack-worker")
    monkeypatch.delenv("WRENPACK_LOCAL_WORKER", raising=False)
    store = LocalStore(tmp_path / "s")
    monkeypatch.setenv("WRENPACK_STORE_URL", str(tmp_path / "s"))  # (a deployed function knows its store)

    def raised(fn):
        reply = handler(_event(store, "00000", fn), _ctx())
        assert reply["exit"] == "error"
        _status, outcome = result.open_result(SECRET, f"jd-{fn.__name__}", "00000",
                                              store.get(keys.result_key(f"jd-{fn.__name__}", "00000")), "r")
        return outcome.rebuild("f(0)")

    got = raised(fills_tmp)
    assert isinstance(got, EphemeralStorageExceeded), repr(got)
    assert "filled its /tmp" in str(got) and "raise ephemeral_storage=" in str(got)
    assert "No space left on device" in str(got) and "fills_tmp" in str(got.__cause__)  # (the user's traceback)
    assert type(raised(raises_plain_oserror)) is FileNotFoundError
