"""Functions the profiler tests measure. Standard library only at import time."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

MB = 2**20


def tiny() -> int:
    return sum(range(1000))


def numpy_heavy(n: int = 3000) -> float:
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.random((n, n))  # 72 MB at n=3000
    b = a @ a.T  # BLAS, threads
    c = np.sort(b, axis=None)
    return float(c[-1])


def python_alloc(n: int = 600_000) -> int:
    rows = [{"i": i, "s": str(i), "t": (i, i + 1)} for i in range(n)]
    return len(rows)


def spike(mb: int = 300) -> int:
    """~mb MB for as long as it takes to write it, then back to nothing."""
    x = b"\1" * (mb * MB)
    size = len(x)
    del x
    time.sleep(0.2)
    return size


def child_held(mb: int = 250, hold: float = 0.5) -> int:
    code = f"import time; x = b'\\1' * ({mb} * {MB}); time.sleep({hold})"
    return subprocess.run([sys.executable, "-c", code], check=True).returncode


def tmp_writer(mb: int = 200) -> int:
    """Writes mb MB under the temp directory, then reads it back into memory."""
    path = os.path.join(tempfile.gettempdir(), "wrenpack-test-blob")
    chunk = b"\1" * MB
    with open(path, "wb") as f:
        for _ in range(mb):
            f.write(chunk)
    time.sleep(0.2)
    with open(path, "rb") as f:
        data = f.read()
    os.remove(path)
    return len(data) // MB


def raises() -> None:
    raise ValueError("bad input 42")


def returns_big(mb: int = 100) -> bytes:
    return b"\1" * (mb * MB)


def make_input(n: int) -> int:
    return n


def known_growth(n: int) -> int:
    """Memory ~ 2,000 bytes * n; time ~ 1e-8 s * n^2 (sleep, so it does not depend on the CPU)."""
    x = b"\1" * (2000 * n)
    time.sleep(1e-8 * n * n)
    return len(x)


def linear_cost(n: int) -> int:
    """Memory 4,000 bytes * n (touched); time 1e-4 s * n (a sleep: the same on a loaded machine)."""
    x = b"\1" * (4000 * n)
    time.sleep(1e-4 * n)
    return len(x)


def quadratic_cost(n: int) -> int:
    """Memory 1 byte * n^2 (touched); time 5e-8 s * n^2 (a sleep: 3.2 s at n=8,000).

    Writing the bytes is CPU work that a loaded machine slows; it is kept to ~1% of
    the sleep so that the measured time follows the sleep."""
    x = b"\1" * (n * n)
    time.sleep(5e-8 * n * n)
    return len(x)


def child_spike(mb: int = 300) -> int:
    """A child process that allocates ``mb`` MB and exits at once (shorter than any sampling period)."""
    code = f"x = b'\\1' * ({mb} * {MB})"
    return subprocess.run([sys.executable, "-c", code], check=True).returncode


def segfault() -> None:
    import ctypes

    ctypes.string_at(0)  # reads address 0: SIGSEGV


def mmap_reader(mb: int = 200) -> int:
    """Maps a file of ``mb`` MB and touches every page: resident, but file-backed (reclaimable)."""
    import mmap

    path = os.path.join(tempfile.gettempdir(), "wrenpack-test-mapped")
    with open(path, "wb") as f:
        f.truncate(mb * MB)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        total = sum(m[i] for i in range(0, len(m), 4096))
        time.sleep(0.3)
    os.remove(path)
    return total


def eight_bytes(n: int) -> int:
    """About 8 bytes per unit of input, touched (resident)."""
    x = b"\1" * (8 * n)
    return len(x)


def make_list(n: int) -> list:
    return [0] * n


def make_box(n: int) -> dict:
    """An input whose size no standard measure reads (its len() is 1)."""
    return {"n": n}


def eight_bytes_boxed(box: dict) -> int:
    return eight_bytes(box["n"])


def busy(seconds: float = 0.2) -> int:
    """CPU-bound for about ``seconds`` of CPU time."""
    end = time.process_time() + seconds
    n = 0
    while time.process_time() < end:
        n += 1
    return n


def sleepy(seconds: float = 0.2) -> None:
    time.sleep(seconds)


def make_zeros(n: int) -> list:
    return [0] * n


def consume(xs: list) -> int:
    """Changes its input: a repeat given the same list again would fail."""
    if xs[0] != 0:
        raise ValueError("input already used")
    xs[0] = 1
    return len(xs)
