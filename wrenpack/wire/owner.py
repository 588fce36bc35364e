"""The owner record: who launched a job, next to its objects (``keys.owner_key``),
so ``wrenpack clean --stale`` can tell a live job's objects from a dead one's.

JSON ``{"host": name, "pid": n, "start": process start (clock ticks, text) or null,
"created": seconds, "label": text, "mac": hex}``. ``mac`` is HMAC-SHA256 under
the launching user's own key (``wrenpack.executor.owner.user_key``, a file only
that user can read; never the job's secret, never sent to a worker) of the
record's identity (``keys.identity(job, "owner")``) and its other fields as
canonical JSON (sorted keys, no spaces). Anyone who can write to the store
could otherwise name a dead pid for a running job and have ``clean --stale``
remove its objects: a record that does not verify, or that is bound to
another job, decides nothing. It never holds anything that is unpickled. The
client writes it at launch, or sends it (sealed) in the event (``owner``) for
the worker to write as it is before the job's first object. Standard library
only: the worker imports this.
"""
from __future__ import annotations

import hmac
import json
import struct
from typing import Any

from wrenpack import keys

#: The owner record's layout; a change of it is a new version (tests/test_wire_golden.py).
VERSION = 2


def dumps(record: dict[str, Any]) -> bytes:
    """The record's bytes."""
    return json.dumps(record).encode()


def loads(data: bytes) -> dict[str, Any]:
    """A record ``dumps`` wrote; ValueError if it is not a JSON object (arrays nested
    too deep for the parser too: it is read from the store before its MAC is checked)."""
    try:
        record = json.loads(data)
    except RecursionError:
        raise ValueError("an owner record nests too deep") from None
    if not isinstance(record, dict):
        raise ValueError(f"an owner record is a JSON {type(record).__name__}, not an object")
    return record


#: the fields of a record as the client makes it, in their canonical (sorted) order
_CLIENT_FIELDS = ("created", "host", "label", "pid", "start")
#: (host, label, start) -> their canonical JSON texts: a loop of ``.remote()`` seals one record per call
_texts: tuple[tuple[Any, ...], tuple[str, str, str]] | None = None


def _canonical(record: dict[str, Any]) -> str:
    """The record's fields but ``mac`` as canonical JSON (sorted keys, no spaces).

    A record as the client makes it (float ``created``, int ``pid``, text
    ``host`` and ``label``, text or null ``start``) is written from its parts,
    the texts kept from the last one: the same bytes ``json.dumps`` gives
    (a float's JSON is its ``repr``), without the encoder's pass over a
    sorted copy, on every launch. Any other record goes through ``json.dumps``."""
    global _texts
    if len(record) - ("mac" in record) == 5 and type(record.get("created")) is float \
            and type(record.get("pid")) is int and type(record.get("host")) is str \
            and type(record.get("label")) is str and (record.get("start") is None or type(record["start"]) is str):
        created = record["created"]
        if created == created and created not in (float("inf"), float("-inf")):  # (json writes NaN and Infinity)
            parts = (record["host"], record["label"], record["start"])
            kept = _texts
            if kept is None or kept[0] != parts:
                kept = _texts = (parts, tuple(json.dumps(p) for p in parts))  # type: ignore[assignment]
            host, label, start = kept[1]
            return f'{{"created":{created!r},"host":{host},"label":{label},"pid":{int(record["pid"])},"start":{start}}}'
    return json.dumps({k: v for k, v in record.items() if k != "mac"}, sort_keys=True, separators=(",", ":"))


#: (key, an HMAC-SHA256 object keyed with it and given nothing yet): the last key's, copied for each record
_keyed: tuple[bytes, Any] | None = None


def _mac(key: bytes, job_id: str, record: dict[str, Any]) -> str:
    global _keyed
    ident = keys.identity(job_id, "owner").encode("utf-8")
    # A copy of an HMAC already keyed with the user's key: the same bytes as hmac.digest, whose
    # one-shot OpenSSL HMAC looks its digest up and sets the key up again on every call (a
    # loop of .remote() seals a record per call, and that look-up dominates the seal's time there).
    kept = _keyed
    if kept is None or kept[0] != key:
        kept = _keyed = (bytes(key), hmac.new(key, digestmod="sha256"))
    mac = kept[1].copy()
    mac.update(struct.pack(">I", len(ident)) + ident + _canonical(record).encode())
    return mac.hexdigest()


def seal(key: bytes, job_id: str, record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with the ``mac`` that binds it to ``job_id`` under the user's ``key``."""
    return dict(record, mac=_mac(key, job_id, record))


def verify(key: bytes, job_id: str, record: dict[str, Any]) -> bool:
    """True only for a record ``seal`` made with ``key`` for ``job_id``, unchanged since."""
    mac = record.get("mac")
    return isinstance(mac, str) and hmac.compare_digest(mac, _mac(key, job_id, record))
