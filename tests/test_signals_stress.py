"""A program stopped by Ctrl-C, or by SIGTERM through a handler of its own that
raises SystemExit, at any moment of a loop of calls, ends: the exception is raised
where it lands (never lost in wrenpack's bookkeeping) and ``shutdown(wait=True)`` in
its ``except`` returns. Each regression this found is pinned down by a deterministic
test in ``test_warm_call_path.py``; this is the statistical check, slow (``-m slow``)."""
from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

_VICTIM = r"""
import os, signal, sys, tempfile, shutil
import wrenpack
from wrenpack.backends.local import LocalBackend

def f(x):
    return x * 2

def on_term(signum, frame):
    raise SystemExit(143)

if __name__ == "__main__":
    where = tempfile.mkdtemp(prefix="store-", dir=sys.argv[3])  # (in the test's folder: a killed run's stays there)
    ex = wrenpack.Executor(storage=where, backend=LocalBackend(concurrency=2))
    if sys.argv[2] == "TERM":
        signal.signal(signal.SIGTERM, on_term)
    rf = wrenpack.remote(f, executor=ex)
    print("ready", flush=True)
    try:
        while True:
            if sys.argv[1] == "remote":
                for i in range(1000):
                    rf.remote(i).result()
            else:
                [x.result() for x in rf.map(range(5000))]
    except (SystemExit, KeyboardInterrupt):
        ex.shutdown(wait=True)
        print("ended", flush=True)
    finally:
        shutil.rmtree(where, ignore_errors=True)
"""


@pytest.mark.parametrize("how", ["remote", "map"])
@pytest.mark.parametrize("sig", ["TERM", "INT"])
def test_a_stopped_loop_of_calls_ends(tmp_path, how, sig):
    script = tmp_path / "victim.py"
    script.write_text(_VICTIM)
    rng = random.Random(7)
    for _ in range(15):
        proc = subprocess.Popen([sys.executable, str(script), how, sig, str(tmp_path)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=dict(os.environ, WRENPACK_PROGRESS="false"))
        assert proc.stdout.readline().strip() == "ready"
        try:
            proc.wait(rng.uniform(0.2, 1.5))
        except subprocess.TimeoutExpired:
            pass
        proc.send_signal(signal.SIGTERM if sig == "TERM" else signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            dump = subprocess.run(["py-spy", "dump", "--locals", "--pid", str(proc.pid)], capture_output=True, text=True) \
                if shutil.which("py-spy") else None
            if dump is not None:
                print(dump.stdout, dump.stderr)
            proc.kill()
            proc.communicate()
            pytest.fail(f"the program did not end within 30 s of SIG{sig} (pid {proc.pid})")
        assert proc.returncode == 0 and out.strip() == "ended", (proc.returncode, out, err[-2000:])
        assert "Exception ignored" not in err, err[-2000:]
