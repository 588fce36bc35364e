"""``Event.from_dict``'s checks on a warm worker's every call: one pass over a
regular event, and for anything else the checks one by one, which name the
first problem as before (a missing field, then unknown ones, then types)."""
from __future__ import annotations

import base64
import os

import pytest

from wrenpack.errors import ProtocolError
from wrenpack.wire.event import VERSION, Event

_HASH = "cd8073f8e571a6e83a2e2b34785a966b1cead39baef155a49e30ad4379b18cf8"


def _event(**changes: object) -> dict:
    d = {"wrenpack": VERSION, "store": {"type": "local", "root": "/nonexistent"}, "job_id": "20261206-130551-0d608462",
         "call_id": "00000", "secret": base64.b64encode(os.urandom(32)).decode(), "args": {"inline": "gAU="},
         "attempt": 0, "segment": 0, "timeout_s": 300.0, "function_name": "trivial", "func_hash": _HASH,
         "domain": "63df9897f0ed9ca03c1c61f4eef46a1917e33973915126a42148fae3ddaef733", "reply_limit": 1 << 20}
    d.update(changes)
    return d


class _Str(str):
    pass


def test_a_regular_event_gives_its_fields_and_extra() -> None:
    ev = Event.from_dict(_event())
    assert ev.call_id == "00000" and ev.timeout_s == 300.0 and ev.function_name == "trivial"
    assert ev.extra == {"func_hash": _HASH, "domain": _event()["domain"], "reply_limit": 1 << 20}


def test_a_field_of_a_subclass_of_its_type_is_accepted() -> None:
    ev = Event.from_dict(_event(python=_Str("3.11")))
    assert ev.extra["python"] == "3.11"


def test_the_first_problem_is_named_in_the_old_order() -> None:
    bad = _event(nonsense=1, timeout_s="soon")
    with pytest.raises(ProtocolError, match="unknown field"):
        Event.from_dict(bad)
    missing = _event(timeout_s="soon")
    del missing["secret"]
    with pytest.raises(ProtocolError, match="lacks the field 'secret'"):
        Event.from_dict(missing)
    with pytest.raises(ProtocolError, match="'timeout_s' must be"):
        Event.from_dict(_event(timeout_s="soon"))
    with pytest.raises(ProtocolError, match="'attempt' must be int"):
        Event.from_dict(_event(attempt=True))


def test_a_domain_is_checked_on_every_call_though_good_ones_are_remembered() -> None:
    Event.from_dict(_event())
    Event.from_dict(_event())
    with pytest.raises(ProtocolError, match="domain"):
        Event.from_dict(_event(domain="63DF" + "0" * 60))
    with pytest.raises(ProtocolError, match="secret"):
        Event.from_dict(_event(secret="not base64!"))
