"""A call from a client on another Python minor version is refused by the worker
before its function is unpickled, in one line naming both versions.

Python 3.11 to 3.13 unpickle each other's code objects (cloudpickle rebuilds
them with the same constructor), and running them then crashes the worker
(a segmentation fault) or misbehaves; the emulated Lambda under each Python
(tests/aws/test_aws_pythons.py) showed it. Here the worker is called directly
with an event as a client on another version sends it.
"""
from __future__ import annotations

import base64
import hashlib
import sys
import time

import cloudpickle
import pytest

from wrenpack import keys
from wrenpack.errors import SerializationError
from wrenpack.storage.local import LocalStore
from wrenpack.wire import result
from wrenpack.wire.event import Event, inline_args
from wrenpack.worker.context import LocalContext
from wrenpack.worker.handler import handler

THIS = "%d.%d" % sys.version_info[:2]
SECRET = b"m" * 32


def _call(store, tmp_path, call_id, python):
    """Run, through the handler, a function that leaves a file, as a client on ``python`` sends it;
    (the outcome, whether the function ran)."""
    marker = tmp_path / f"ran-{call_id}"

    def touch():
        marker.write_text("ran")
        return "done"

    fn = cloudpickle.dumps(touch)
    extra = {"func_hash": hashlib.sha256(fn).hexdigest(), "func_inline": base64.b64encode(fn).decode("ascii")}
    if python is not None:
        extra["python"] = python
    event = Event(job_id="j1", call_id=call_id, store=store.spec, secret=SECRET,
                  args=inline_args(cloudpickle.dumps(((), {}))), extra=extra).to_dict()
    status = handler(event, LocalContext(function_name="t", memory_mb=256, deadline=time.time() + 30))
    assert status["python"] == THIS
    blob = store.get(keys.result_key("j1", call_id))
    return result.open_result(SECRET, "j1", call_id, blob, "r")[1], marker.exists()


def test_a_client_on_another_python_is_refused_before_the_function_is_unpickled(tmp_path):
    store = LocalStore(tmp_path / "s")
    other = "3.10" if THIS != "3.10" else "3.11"
    outcome, ran = _call(store, tmp_path, "00000", other)
    assert not outcome.ok and not ran
    exc = outcome.rebuild("touch")
    assert isinstance(exc, SerializationError)
    message = str(exc)
    assert "\n" not in message
    assert f"client runs Python {other} but this worker runs Python {THIS}" in message
    assert f"wrenpack deploy --python {other}" in message


@pytest.mark.parametrize("python", [THIS, None], ids=["same", "unsaid"])
def test_the_same_python_or_an_event_that_does_not_say_runs(tmp_path, python):
    """(An event from an older client names no Python: it runs as before.)"""
    store = LocalStore(tmp_path / "s")
    outcome, ran = _call(store, tmp_path, "00001", python)
    assert outcome.ok and outcome.value == "done" and ran


def test_the_client_says_its_python_in_every_event(captured):
    calls = captured(abs, [-1, -2])
    assert [inv.event["python"] for inv in calls.invocations] == [THIS, THIS]
