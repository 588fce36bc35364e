"""A wrenpack client for tests/aws/test_aws_pythons.py, run as a script under the Python being tested.

Run as ``__main__``, its functions, its exception class and the lambda in the
checkpoint's state travel by value (bytecode), as a user's script's do. It
runs a small map, a call that raises and a checkpointed call on the emulated
Lambda named by the JSON in ``argv[1]``, all at once, and prints one JSON line
of what came back. Nothing here imports pytest: the venv has no test tools.
"""
from __future__ import annotations

import json
import sys
import time

import wrenpack


class Boom(ValueError):
    """A user's own exception class, defined here so it travels by value (with its attributes)."""


def shape(x):
    """A little of each kind of bytecode that changed between 3.10 and 3.13."""
    match x % 3:
        case 0:
            kind = "zero"
        case 1:
            kind = "one"
        case _:
            kind = "two"
    squares = [i * i for i in range(x)]  # a comprehension (inlined since 3.12)
    try:
        total = sum(squares) // (x - 5)
    except ZeroDivisionError:
        total = None
    return {"x": x, "kind": kind, "total": total, "text": f"{x:>3}|{kind!r}"}


def explode(x):
    err = Boom(f"no good: {x}")
    err.code = x
    raise err


def resumable(n):
    """Steps of 0.3 s until the first segment's time is nearly up (its offer then saves
    and ends the invocation); the next segment restores the state, lambda included,
    and finishes at once."""
    cp = wrenpack.checkpoint()
    state = cp.restore(default={"i": 0, "acc": 0, "step": lambda i: i * i + 1, "segments": 0})
    state["segments"] += 1
    while state["i"] < n:
        if state["segments"] == 1:
            time.sleep(0.3)
        state["acc"] += state["step"](state["i"])
        state["i"] += 1
        cp.offer(state)
    return {"acc": state["acc"], "segments_seen": state["segments"]}


def main() -> None:
    conf = json.loads(sys.argv[1])
    offset = 10
    with wrenpack.Executor(backend="lambda", retries=0, concurrency=4, **conf) as ex:
        if ex.config.invocation_type == "Event":
            ex.backend.poll_interval = 0.2  # as in tests/aws: the store's poll sets these short calls' pace
        mapped = wrenpack.remote(shape, executor=ex).map(range(8))
        shifted = wrenpack.remote(lambda x: x + offset, executor=ex).map([1, 2])  # a closure
        failing = wrenpack.remote(explode, executor=ex).remote(3)
        split = wrenpack.remote(resumable, executor=ex).remote(50)
        out = {
            "python": "%d.%d" % sys.version_info[:2],
            "map": wrenpack.get(mapped, timeout=120),
            "closure": wrenpack.get(shifted, timeout=120),
            "checkpoint": split.result(timeout=120),
            "segments": split.segments,
            "worker_pythons": sorted({f.status["python"] for f in mapped + shifted + [split]}),
        }
        try:
            failing.result(timeout=120)
        except Boom as exc:
            cause = exc.__cause__
            out["raised"] = {"type": type(exc).__name__, "message": str(exc), "code": exc.code,
                             "remote_traceback": str(cause) if cause is not None else None,
                             "notes": getattr(exc, "__notes__", None)}  # (3.10: the list add_note would keep)
        except Exception as exc:  # noqa: BLE001 - the test says what came instead
            out["raised"] = {"type": type(exc).__name__, "message": str(exc)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
