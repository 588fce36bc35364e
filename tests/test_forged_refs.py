"""A reference in a call's outcome is the job's code's to make (probe15's findings 1-3).

It named any job (a job's id is no secret: a call can list the store), and the program
that unpickled it gave it that job's secret (from its own keys, or its live future of
the job): passed on to another call, the secret went with it, in that call's event, and
that call's code could forge the job's results; and at shutdown the program removed the
named job's objects, a spawned job's kept for its retention, another program's running
job's. Now a reference from a call's outcome names a job the call was given (a future
among its arguments) or one launched inside the call's job (its secret derived), or it
is not trusted: no secret, nothing removed for it."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from wrenpack.storage.local import LocalStore

_PROGRAM = textwrap.dedent("""
    import base64, json, pickle, sys, time, wrenpack
    from wrenpack import auth
    from wrenpack.worker import refs

    class Forged:  # what a call can return: a reference it made up
        def __init__(self, ref):
            self.ref = ref
        def __reduce__(self):
            return refs.rebuild, (self.ref,)

    def victim(x):
        time.sleep(2)
        return x

    def forger(job, call, spec, chain):
        return Forged({"job_id": job, "call_id": call, "label": "x", "chain": chain, "store": spec,
                       "result_job": job, "result_call": call, "item": None})

    def pickled(thing):  # user code may pickle what it got: a reference then carries its secret
        return pickle.dumps(thing)

    def echo(fut):
        return fut

    other_job = sys.argv[1]
    out = {}
    with wrenpack.Executor(concurrency=2) as ex:
        spec = ex.store.spec
        victims = wrenpack.remote(victim, executor=ex).map(range(2))
        v_job = victims[0].job_id
        secret = refs.secret_for(v_job)
        forge = wrenpack.remote(forger, executor=ex)
        for name, chain in (("no chain", []), ("the call's chain", None)):
            if chain is None:  # a chain starting with the forging call's own job: its secret is derived, not V's
                chain = [forge.remote(v_job, "00000", spec, []).job_id]
            got = forge.remote(v_job, "00000", spec, chain).result(timeout=60)
            out[name + ": live future"] = got is victims[0]
            try:
                out[name + ": read"] = repr(got.result(timeout=30))
            except Exception as exc:
                out[name + ": read"] = type(exc).__name__
            blob = wrenpack.remote(pickled, executor=ex).remote(got).result(timeout=60)
            out[name + ": secret passed on"] = any(form in blob for form in (
                secret, auth.encode_secret(secret).encode(), base64.b64encode(secret)))
        forge.remote(other_job, "00000", spec, []).result(timeout=60)  # another job in this store
        running = wrenpack.remote(victim, executor=ex).remote(7)  # (pickled while it runs: a reference)
        given = wrenpack.remote(echo, executor=ex).remote(running).result(timeout=60)
        out["given: live future"] = given is running and given.result(timeout=60) == 7
        out["victims"] = wrenpack.get(victims, timeout=60)
    print(json.dumps(out))
""")


def test_a_reference_a_call_made_up_gets_no_secret_and_removes_nothing(tmp_path):
    store = tmp_path / "store"
    other = LocalStore(str(store))
    other_job = "20260101-000000-0000beef"  # another program's job, in the same store
    other.put(f"jobs/{other_job}/result/0/00000.res", b"another program's result")
    script = tmp_path / "forges.py"
    script.write_text(_PROGRAM)
    out = subprocess.run([sys.executable, str(script), other_job], capture_output=True, text=True, timeout=180,
                         env=dict(os.environ, WRENPACK_STORAGE=str(store)), cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    import json
    got = json.loads(out.stdout.strip().splitlines()[-1])
    for name in ("no chain", "the call's chain"):
        assert got[name + ": live future"] is False, got
        assert got[name + ": read"] in ("WrenpackError", "CorruptObject"), got
        assert got[name + ": secret passed on"] is False, got
    assert got["given: live future"] is True, got  # (a future the call was given comes back as itself)
    assert got["victims"] == [0, 1]
    assert other.get(f"jobs/{other_job}/result/0/00000.res") == b"another program's result"


class _Forged:
    """What a call can return: a reference it made up."""

    def __init__(self, ref: dict) -> None:
        self.ref = ref

    def __reduce__(self):
        from wrenpack.worker import refs

        return refs.rebuild, (self.ref,)


def _claims_a_job_launched_here(spec: dict) -> _Forged:
    """A reference to a job the call says it launched (its chain ends with the call's own job:
    its secret is derived, as a nested job's is), in a store the call chose."""
    from wrenpack.worker import refs

    job, _secret, chain = refs._current
    return _Forged({"job_id": "20260101-000000-0000f00d", "call_id": "00000", "label": "forged",
                    "chain": [*chain, job], "store": spec, "result_job": "20260101-000000-0000f00d",
                    "result_call": "00000", "item": None})


def test_a_reference_from_a_call_opens_no_store_the_call_chose(tmp_path):
    """probe15's finding 9: such a reference (derived secret: "launched inside the call") named
    any store, and the program opened it: it made folders where the call said, and sent requests
    signed with its own AWS credentials to any endpoint the call named. Now it must name the
    store of the call's own job (where jobs launched inside a call keep their objects) and is
    refused, unopened, otherwise; a future of a job really launched inside the call still reads."""
    import http.server
    import threading

    import pytest

    import wrenpack

    seen: list[str] = []

    class Recorder(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            seen.append(self.path)
            self.send_response(404)
            self.end_headers()

        do_HEAD = do_PUT = do_DELETE = do_GET  # noqa: N815

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    chosen = tmp_path / "chosen-by-the-call"
    chosen.mkdir()
    try:
        with wrenpack.Executor(storage=str(tmp_path / "store"), concurrency=1) as ex:
            forge = wrenpack.remote(_claims_a_job_launched_here, executor=ex)
            s3 = {"type": "s3", "bucket": "the-calls", "prefix": "", "region": "us-east-1", "profile": "theirs",
                  "endpoint_url": f"http://127.0.0.1:{server.server_address[1]}"}
            with pytest.raises(wrenpack.WrenpackError, match="names the store s3://the-calls/ at http://127.0.0.1:.*not opened"):
                forge.remote(s3).result(timeout=60).result(timeout=30)
            # A folder of this machine (the call's code reaches it itself, running here) is read, never made.
            for root in (chosen, chosen / "not" / "there"):
                with pytest.raises(wrenpack.WrenpackError, match="gone from|not on this machine"):
                    forge.remote({"type": "local", "root": str(root)}).result(timeout=60).result(timeout=30)
            assert wrenpack.remote(_returns_a_nested_future, executor=ex).remote(4).result(timeout=60).result(timeout=60) == 5
    finally:
        server.shutdown()
        server.server_close()
    assert seen == []
    assert list(chosen.iterdir()) == []


def _add_one(x: int) -> int:
    return x + 1


def _returns_a_nested_future(x: int):
    import wrenpack

    return wrenpack.remote(_add_one).remote(x)
