"""Golden bytes of every wire format (``wrenpack.wire``): what a worker or client
of another wrenpack version reads must not change without a new version.

For each format (one module of ``wrenpack.wire``, with its ``VERSION``), the
bytes are rebuilt from fixed inputs and a fixed secret (nothing here is
random) and compared with ``tests/golden/<format>-v<VERSION>.bin``, and that
file is decoded back to the inputs. So changing a format's bytes without
bumping its ``VERSION`` fails, and so does bumping it without a golden file.

After a deliberate change: bump the module's ``VERSION``, then write the new
golden file (existing ones are never rewritten; old versions stay as a record)::

    python -m tests.test_wire_golden --regen

A golden file is its cases in order, each as a 4-byte big-endian length and
the bytes. The two local headers are ``marshal``, whose bytes follow how the
objects were shared when written (Python's own choice, stable for one Python);
their inputs are built the same way each time.
"""
from __future__ import annotations

import importlib
import json
import os
import pickle
import pkgutil
import struct
import sys
from pathlib import Path
from typing import Any, Callable

import cloudpickle
import pytest

import wrenpack.wire
from wrenpack import auth, keys
from wrenpack.errors import RemoteTraceback
from wrenpack.wire import (
    checkpoint,
    driver_message,
    event,
    frames,
    handoff,
    job_record,
    outcome,
    owner,
    result,
    segment,
    start,
    status,
    worker_reply,
)
from wrenpack.worker import handoff as handoff_machinery

GOLDEN = Path(__file__).resolve().parent / "golden"
SECRET = bytes(range(32))
JOB, CALL = "j1", "00000"
_LEN = struct.Struct(">I")


# -- the fixed inputs, and the bytes each format makes of them ---------------------------
_EVENT_ARGS: dict[str, Any] = dict(
    job_id=JOB, call_id=CALL, store={"type": "local", "root": "/srv/store"}, secret=SECRET,
    args={"inline": "gASVAAAAAAAAAAAu"}, attempt=1, segment=2, timeout_s=30.0, function_name="simulate",
    checkpoint={"save_s": 0.5, "step_s": 0.25},
    extra={"reply_limit": 1048576, "func_hash": "ab" * 32, "chain": ["j0"], "env": {"A": "1"}},
)
_VALUE = {"a": [1, 2.5, "x", None, True], "b": b"bytes", "c": (1, 2)}
_TB = "Traceback (most recent call last):\n  fixed\nValueError: bad\n"
_STATUS = status.record(JOB, CALL, 1, 2, "ok", 1700000000.25, 1700000001.5, peak_rss_mb=42.5, children_peak_rss_mb=None,
                        host="host-1", pid=1234, python="3.11", request_id="1234-1")
_SEGMENT_STATUS = dict(_STATUS, exit="checkpointed", checkpoint={"saves": 1, "save_s": 0.5})
_SMALL_STATUS = {"exit": "ok", "attempt": 0, "run_s": 0.125}
_OWNER = {"host": "host-1", "pid": 1234, "start": "98765", "created": 1700000000.5, "label": "simulate"}
_JOB = {"job_id": JOB, "function": "simulate", "calls": 40, "created": 1700000000.5,
        "owner": {"user": "ada", "host": "host-1"}, "backend": "local", "spawned": True, "retention_s": 604800.0,
        "settings": {"memory": 512, "timeout": 30.0, "ephemeral_storage": 512, "retries": 1, "architecture": "x86_64"}}
_PROGRESS = {"state": "running", "done": 3, "failed": 1, "running": 2, "queued": 34, "cancelled": 0,
             "invocations": 4, "billed_ms": 1234, "updated": 1700000001.25, "ended": None, "outlive": True,
             "in_flight": ["00004", "00005"]}
_CANCEL = {"at": 1700000002.5, "host": "host-1", "pid": 1234}
_LAYOUT_INPUT = (b"pickle-stream", [b"\x01" * 100, b"\x02" * 10])
_FRAMES = [(b"header-1", b"blob-1"), (b"header-2", b"")]
_MSG_EVENTS = [
    ({"wrenpack": 2, "job_id": JOB, "call_id": "00000", "args": {"inline": "AA=="}, "attempt": 0, "timeout_s": 30.0}, 30.0, 0),
    ({"wrenpack": 2, "job_id": JOB, "call_id": "00001", "args": {"handoff": {"size": 64, "stream": 64, "buffers": []}},
      "attempt": 0, "timeout_s": 30.0}, 30.0, 1),
    ({"wrenpack": 2, "job_id": JOB, "call_id": "00002", "args": {"inline": "AA=="}, "timeout_s": 10.0}, 10.0, 0),
]


class _Handed:
    """Stands in for the hand-off a handler returns (only its layout travels in the header)."""

    layout = {"size": 128, "stream": 64, "buffers": [[64, 64]]}


def _reply_headers() -> list[dict[str, Any]]:
    small, blob, _ = worker_reply.of_call(dict(_STATUS, result=b"sealed-result"))
    private, _, _ = worker_reply.of_call(dict(_STATUS, outcome=b"outcome-pickle"))
    handed, _, _ = worker_reply.of_call(dict(_STATUS, handoff=_Handed()))
    return [
        worker_reply.ready(4321),
        worker_reply.measured(small, 0.5, children=False, tmp_bytes=0),
        worker_reply.measured(private, 0.25, children=True, tmp_bytes=4096),
        worker_reply.measured(handed, 0.125, children=False, tmp_bytes=0),
        worker_reply.measured(worker_reply.failed("RuntimeError: broken", 12.5), 0.0625, children=False, tmp_bytes=0),
        worker_reply.withdrawn(),
    ]


def _message() -> dict[str, Any]:
    return driver_message.message(driver_message.calls(_MSG_EVENTS), [512, 30.0, 512], 1048576, 65536)


#: the next message to the same worker: its first call is what differs from the first one's (``"last"``)
#: (its new values made when the module loads: marshal marks an object referred to more than
#: once, and a literal is referred to by the module's code too, for as long as that is kept)
_NEXT_EVENTS = [(dict(_MSG_EVENTS[0][0], job_id=JOB[:-1] + "z", args={"inline": "".join(("AQ", "=="))}), 30.0, 0)]


def _message_bytes() -> bytes:
    msg = _message()  # held by a name while it is written, as the driver holds it (marshal marks shared objects)
    return driver_message.dumps(msg)


def _next_message_bytes() -> bytes:
    msg = driver_message.message(driver_message.calls(_NEXT_EVENTS, _MSG_EVENTS[0][0]), None, 1048576, 65536)
    return driver_message.dumps(msg)


def _ahead_message_bytes() -> bytes:
    """A call sent ahead of the running one's end (the worker claims it first)."""
    msg = driver_message.message(driver_message.calls(_NEXT_EVENTS, _MSG_EVENTS[0][0], ahead=True), None, 1048576, 65536)
    return driver_message.dumps(msg)


CASES: dict[str, Callable[[], list[bytes]]] = {
    "event": lambda: [event.dumps(event.event_dict(**_EVENT_ARGS))],
    "outcome": lambda: [
        outcome.Outcome.success(_VALUE).dumps(),
        cloudpickle.dumps(outcome.error_tuple(ValueError("bad"), "user", _TB)),
    ],
    "status": lambda: [status.dumps(_STATUS)],
    "result": lambda: [result.seal_result(SECRET, JOB, CALL, _SMALL_STATUS, outcome.Outcome.success(7).dumps())],
    "segment": lambda: [segment.seal_segment(SECRET, JOB, CALL, 2, _SEGMENT_STATUS)],
    "checkpoint": lambda: [checkpoint.seal_checkpoint(SECRET, JOB, CALL, (3, 1, 2), b"state-pickle")],
    "start": lambda: [start.seal_start(SECRET, JOB, CALL, 1700000000.25, 1)],
    "owner": lambda: [owner.dumps(owner.seal(SECRET, JOB, _OWNER))],
    "job_record": lambda: [job_record.seal_job(SECRET, JOB, _JOB), job_record.derive_secret(SECRET, JOB),
                           job_record.seal_progress(SECRET, JOB, _PROGRESS), job_record.seal_cancel(SECRET, JOB, _CANCEL)],
    "handoff": lambda: [json.dumps(handoff.image(*_LAYOUT_INPUT)[1]).encode(), handoff.image(*_LAYOUT_INPUT)[0]],
    "frames": lambda: [b"".join(frames.encode(h, b) for h, b in _FRAMES)],
    "driver_message": lambda: [_message_bytes(), _next_message_bytes(), _ahead_message_bytes()],
    "worker_reply": lambda: [worker_reply.dumps(head) for head in _reply_headers()],
}


# -- reading the golden bytes back --------------------------------------------------------
def _decode_event(parts: list[bytes]) -> None:
    d = json.loads(parts[0])
    ev = event.Event.from_dict(d)
    assert (ev.job_id, ev.call_id, ev.secret, ev.attempt, ev.segment, ev.timeout_s) == (JOB, CALL, SECRET, 1, 2, 30.0)
    assert ev.checkpoint == _EVENT_ARGS["checkpoint"] and ev.extra["chain"] == ["j0"]
    assert d == event.event_dict(**_EVENT_ARGS)


def _decode_outcome(parts: list[bytes]) -> None:
    ok = outcome.loads_outcome(parts[0], "golden")
    assert ok.ok and ok.value == _VALUE
    failed = outcome.loads_outcome(parts[1], "golden")
    exc = failed.rebuild("f")
    assert not failed.ok and type(exc) is ValueError and str(exc) == "bad"
    assert isinstance(exc.__cause__, RemoteTraceback) and exc.__cause__.tb == _TB
    assert failed.error[2:] == ("builtins.ValueError", "bad", _TB, "user")


def _decode_status(parts: list[bytes]) -> None:
    assert status.loads(parts[0]) == _STATUS


def _decode_result(parts: list[bytes]) -> None:
    got_status, got = result.open_result(SECRET, JOB, CALL, parts[0], "golden")
    assert got_status == _SMALL_STATUS and got.value == 7
    assert result.reply_result({"result": result.to_reply(parts[0], text=True)}) == parts[0]


def _decode_segment(parts: list[bytes]) -> None:
    assert segment.open_segment(SECRET, JOB, CALL, 2, parts[0]) == _SEGMENT_STATUS


def _decode_checkpoint(parts: list[bytes]) -> None:
    place, data = checkpoint.open_checkpoint(SECRET, JOB, CALL, parts[0])
    assert place == (3, 1, 2) and bytes(data) == b"state-pickle"
    assert bytes(checkpoint.Saves(SECRET, JOB, CALL, 4, 0, (3, 1, 2)).open(parts[0])) == b"state-pickle"  # (the next segment)


def _decode_start(parts: list[bytes]) -> None:
    assert start.open_start(SECRET, JOB, CALL, parts[0], now=1700000000.25) == 1700000000.25
    assert json.loads(auth.unseal(SECRET, keys.identity(JOB, "start", CALL), parts[0], "golden"))["attempt"] == 1


def _decode_owner(parts: list[bytes]) -> None:
    record = owner.loads(parts[0])
    assert owner.verify(SECRET, JOB, record) and {k: v for k, v in record.items() if k != "mac"} == _OWNER


def _decode_job_record(parts: list[bytes]) -> None:
    assert job_record.open_job(SECRET, JOB, parts[0]) == _JOB
    assert parts[1] == job_record.derive_secret(SECRET, JOB) and len(parts[1]) == 32
    assert job_record.open_progress(SECRET, JOB, parts[2]) == _PROGRESS
    assert job_record.open_cancel(SECRET, JOB, parts[3]) == _CANCEL


def _decode_handoff(parts: list[bytes]) -> None:
    layout = handoff.check_layout(json.loads(parts[0]))
    data = parts[1]
    assert len(data) == layout["size"] and data[: layout["stream"]] == _LAYOUT_INPUT[0]
    assert [data[o : o + n] for o, n in layout["buffers"]] == _LAYOUT_INPUT[1]
    assert all(o % handoff.ALIGN == 0 for o, _n in layout["buffers"])


def _decode_frames(parts: list[bytes]) -> None:
    data, pos, got = parts[0], 0, []
    while (spans := frames.next_frame(data, pos)) is not None:
        head, blob, pos = spans
        got.append((data[head:blob], data[blob:pos]))
    assert got == _FRAMES and pos == len(data)


def _decode_driver_message(parts: list[bytes]) -> None:
    msg = driver_message.loads(parts[0])
    assert msg["limits"] == [512, 30.0, 512]
    decoder = driver_message.Decoder()
    got = list(decoder.events(msg))
    assert [e for _c, e in got] == [dict(e, reply_limit=1048576, handoff=65536) for e, _t, _n in _MSG_EVENTS]
    assert [(c["timeout_s"], c.get("fd", 0)) for c, _e in got] == [(t, n) for _e, t, n in _MSG_EVENTS]
    following = driver_message.loads(parts[1])
    assert following["calls"][0]["last"] and set(following["calls"][0]["changed"]) == {"job_id", "args"}
    assert [e for _c, e in decoder.events(following)] == [dict(e, reply_limit=1048576, handoff=65536) for e, _t, _n in _NEXT_EVENTS]
    ahead = driver_message.loads(parts[2])
    assert [c.get("ahead") for c in ahead["calls"]] == [True] and "ahead" not in following["calls"][0]


def _decode_worker_reply(parts: list[bytes]) -> None:
    heads = [worker_reply.loads(p) for p in parts]
    assert heads == _reply_headers()
    ready, small, private, handed, failed, withdrawn = heads
    assert ready == {"ready": 4321}
    assert small["status"] == {"exit": "ok"} and worker_reply.payload(small, b"r") == (b"r", None)
    assert private["status"] == _STATUS and worker_reply.payload(private, b"o") == (None, b"o")
    assert handed["handoff"] == _Handed.layout and "error" in failed
    assert withdrawn == {"withdrawn": True}


DECODE: dict[str, Callable[[list[bytes]], None]] = {
    "event": _decode_event, "outcome": _decode_outcome, "status": _decode_status, "result": _decode_result,
    "segment": _decode_segment, "checkpoint": _decode_checkpoint, "start": _decode_start, "owner": _decode_owner,
    "job_record": _decode_job_record,
    "handoff": _decode_handoff, "frames": _decode_frames, "driver_message": _decode_driver_message,
    "worker_reply": _decode_worker_reply,
}


# -- the golden files ---------------------------------------------------------------------
def version(name: str) -> int:
    return importlib.import_module(f"wrenpack.wire.{name}").VERSION


def golden_path(name: str) -> Path:
    return GOLDEN / f"{name}-v{version(name)}.bin"


def join(parts: list[bytes]) -> bytes:
    return b"".join(_LEN.pack(len(p)) + p for p in parts)


def split(data: bytes) -> list[bytes]:
    parts, pos = [], 0
    while pos < len(data):
        (n,) = _LEN.unpack_from(data, pos)
        parts.append(data[pos + 4 : pos + 4 + n])
        pos += 4 + n
    return parts


def _golden(name: str) -> list[bytes]:
    path = golden_path(name)
    if not path.exists():
        pytest.fail(f"no golden file {path.name} for wrenpack.wire.{name} VERSION {version(name)}: "
                    "write it with `python -m tests.test_wire_golden --regen`")
    return split(path.read_bytes())


@pytest.fixture(autouse=True)
def _sealing_on(monkeypatch):
    monkeypatch.setattr(auth, "_enabled", True)  # (a benchmark's switch must not change what is compared)


def test_every_wire_module_has_a_version_and_a_golden_case():
    modules = {m.name for m in pkgutil.iter_modules(wrenpack.wire.__path__)}
    assert modules == set(CASES) == set(DECODE)
    for name in modules:
        assert isinstance(version(name), int) and version(name) >= 1, name


@pytest.mark.parametrize("name", sorted(CASES))
def test_bytes_are_the_golden_bytes_of_the_current_version(name):
    golden, built = _golden(name), CASES[name]()
    assert len(built) == len(golden), f"wrenpack.wire.{name} makes {len(built)} cases, its golden file holds {len(golden)}"
    for i, (want, got) in enumerate(zip(golden, built)):
        assert got == want, (f"wrenpack.wire.{name} case {i} no longer makes the bytes of its VERSION {version(name)}: "
                             "bump VERSION and run `python -m tests.test_wire_golden --regen`, or undo the change")


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_bytes_decode_to_the_inputs(name):
    DECODE[name](_golden(name))


@pytest.mark.skipif(not handoff_machinery.available(), reason="needs memfds (Linux)")
def test_a_handed_off_memfd_holds_the_wire_layout():
    """The machinery (``worker.handoff``) writes what ``wire.handoff`` defines."""
    machinery = handoff_machinery
    value = [pickle.PickleBuffer(bytearray(b"\x07" * (machinery.OOB_MIN + 3))), pickle.PickleBuffer(bytearray(b"\x09" * machinery.OOB_MIN))]
    sealed = machinery.dump(value, 0, oob=True)
    assert isinstance(sealed, machinery.Sealed)
    try:
        data = os.pread(sealed.fd, sealed.size + 1, 0)
    finally:
        sealed.close()
    layout = sealed.layout
    stream = data[: layout["stream"]]
    want, want_layout = handoff.image(stream, [bytes(b.raw()) for b in value])
    assert (data, layout) == (want, want_layout)


def regen() -> list[str]:
    """Write the golden file of each format's current VERSION that is missing;
    refuse to change one that exists (bump VERSION instead)."""
    GOLDEN.mkdir(exist_ok=True)
    written, refused = [], []
    for name in sorted(CASES):
        path = golden_path(name)
        data = join(CASES[name]())
        if path.exists():
            if path.read_bytes() != data:
                refused.append(f"{path.name}: wrenpack.wire.{name} changed its bytes; bump its VERSION first")
            continue
        DECODE[name](split(data))
        path.write_bytes(data)
        written.append(path.name)
    if refused:
        raise SystemExit("\n".join(refused))
    return written


if __name__ == "__main__":
    if sys.argv[1:] != ["--regen"]:
        raise SystemExit("usage: python -m tests.test_wire_golden --regen")
    auth._enabled = True
    print("\n".join(regen()) or "every golden file is there already")
