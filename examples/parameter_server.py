"""Asynchronous SGD with a parameter server in Redis, as the PyWren lecture proposes.

    python examples/parameter_server.py                          # starts redis-server on 127.0.0.1
    python examples/parameter_server.py --redis-url redis://host:6379/0
    python examples/parameter_server.py --small                  # what the test suite runs

The model is a linear regression with ``--dim`` weights; each weight is one
Redis key. Every remote call is an SGD worker: it makes its own shard of
training data (seeded, so nothing travels through the driver), then for each
step pulls the model (one MGET), computes a minibatch gradient and pushes its
update (INCRBYFLOAT per weight in one pipeline: atomic per weight, lock-free
across workers, "Hogwild!"). The driver only initialises the model, starts the
workers and reads the final model. On Lambda give a ``--redis-url`` the
functions can reach (e.g. ElastiCache in the same VPC) and a runtime with numpy
and redis.
"""
from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
import uuid

try:
    import numpy as np
    import redis  # noqa: F401 - the workers import it; checked here so that its absence is one line, at once
except ImportError as exc:
    sys.exit(f"examples/parameter_server.py needs {exc.name}, which the examples extra installs: pip install -e '.[examples]'")

import wrenpack


def true_model(dim: int) -> np.ndarray:
    return np.random.default_rng(1234).normal(size=dim)


def make_data(seed: int, rows: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, dim))
    return x, x @ true_model(dim) + 0.01 * rng.normal(size=rows)


def sgd_worker(worker: int, url: str, prefix: str, dim: int, steps: int, rows: int = 2000,
               batch: int = 32, lr: float = 0.05) -> dict:
    """One SGD worker: pull the model, compute a gradient, push the update, ``steps`` times."""
    import redis

    r = redis.Redis.from_url(url)
    keys = [f"{prefix}:w:{j}" for j in range(dim)]
    x, y = make_data(1000 + worker, rows, dim)
    rng = np.random.default_rng(worker)
    for _ in range(steps):
        w = np.array([float(v) for v in r.mget(keys)])
        idx = rng.integers(0, rows, size=batch)
        grad = x[idx].T @ (x[idx] @ w - y[idx]) / batch
        pipe = r.pipeline(transaction=False)
        for key, g in zip(keys, grad):
            pipe.incrbyfloat(key, -lr * float(g))
        pipe.incr(f"{prefix}:updates")
        pipe.execute()
    w = np.array([float(v) for v in r.mget(keys)])
    return {"worker": worker, "loss": float(np.mean((x @ w - y) ** 2))}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis() -> tuple[subprocess.Popen, str]:
    """redis-server on 127.0.0.1, no persistence; stopped by the caller."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found: install it (apt-get install redis-server) or pass --redis-url")
    port = _free_port()
    proc = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"redis-server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("redis-server did not start listening within 10 s")


def connect(url: str):
    """A client of the Redis at ``url``, checked with a PING before any call is launched: a URL
    nobody answers at (or one redis-py cannot parse) is one line naming it, not redis's traceback."""
    import redis

    try:
        r = redis.Redis.from_url(url)
        r.ping()
    except (redis.exceptions.RedisError, ValueError, OSError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise SystemExit(f"examples/parameter_server.py: cannot reach Redis at {url} ({reason}); start one there, "
                         "give a reachable --redis-url (redis://HOST:PORT/DB), or leave it out to start "
                         "redis-server on 127.0.0.1") from None
    return r


def train(url: str, workers: int, steps: int, dim: int) -> dict:
    r = connect(url)
    prefix = f"wrenpack-ps-{uuid.uuid4().hex[:8]}"
    keys = [f"{prefix}:w:{j}" for j in range(dim)]
    try:
        r.mset({k: 0.0 for k in keys})
        t0 = time.perf_counter()
        stats = wrenpack.get(wrenpack.remote(sgd_worker).map(range(workers), url=url, prefix=prefix, dim=dim, steps=steps))
        elapsed = time.perf_counter() - t0
        w = np.array([float(v) for v in r.mget(keys)])
        updates = int(r.get(f"{prefix}:updates") or 0)
    finally:
        r.delete(*keys, f"{prefix}:updates")
    x, y = make_data(7, 2000, dim)  # held out
    return {"elapsed_s": elapsed, "updates": updates, "test_loss": float(np.mean((x @ w - y) ** 2)),
            "error": float(np.linalg.norm(w - true_model(dim))), "worker_losses": [s["loss"] for s in stats]}


def positive_int(text: str) -> int:
    """An argparse type for a count: a whole number >= 1 (0 calls would have nothing to show)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--redis-url", help="use this Redis instead of starting redis-server on 127.0.0.1")
    ap.add_argument("--workers", type=positive_int, default=8)
    ap.add_argument("--steps", type=positive_int, default=400, help="SGD steps per worker")
    ap.add_argument("--dim", type=positive_int, default=20)
    ap.add_argument("--small", action="store_true", help="3 workers x 150 steps, checked (the tests run this)")
    args = ap.parse_args(argv)
    if args.small:
        args.workers, args.steps, args.dim = 3, 150, 10
    proc = None
    url = args.redis_url
    if url is None:
        proc, url = start_redis()
    try:
        out = train(url, args.workers, args.steps, args.dim)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
    base = float(np.mean(make_data(7, 2000, args.dim)[1] ** 2))  # the loss of the all-zero start
    print(f"{args.workers} workers x {args.steps} steps: {out['updates']} updates in {out['elapsed_s']:.2f} s; "
          f"held-out loss {out['test_loss']:.4f} (start {base:.2f}), |w - w_true| = {out['error']:.4f}")
    ok = out["updates"] == args.workers * args.steps and out["test_loss"] < 0.01 * base
    print("converged" if ok else "DID NOT CONVERGE")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
