"""wrenpack quickstart: profile a function, build its runtime, run it remotely.

Runs entirely on this machine (the embedded local backend, held to Lambda's
limits); the same code runs on AWS Lambda with backend="lambda".

    python examples/quickstart.py            # all three steps
    python examples/quickstart.py --no-build # skip building the runtime (no downloads)
"""
from __future__ import annotations

import argparse
import random
import sys
import time

import wrenpack


def estimate_pi(seed: int, samples: int = 200_000) -> float:
    """Monte Carlo estimate of pi from one seed: a plain, CPU-bound function."""
    rng = random.Random(seed)
    inside = sum(1 for _ in range(samples) if rng.random() ** 2 + rng.random() ** 2 <= 1.0)
    return 4.0 * inside / samples


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=40, help="how many remote calls (default 40)")
    ap.add_argument("--no-build", action="store_true", help="skip building a runtime")
    ap.add_argument("--no-profile", action="store_true", help="skip profiling")
    args = ap.parse_args()

    memory, timeout = 512, 60
    if not args.no_profile and _has("wrenpack.profiler"):
        print("1. Profiling estimate_pi(0) in a clean child process ...")
        prof = wrenpack.profile(estimate_pi, 0)
        print(prof.summary() if hasattr(prof, "summary") else prof)
        memory = prof.recommended.memory_mb
        timeout = prof.recommended.timeout_s
        print(f"   -> recommended memory={memory} MB, timeout={timeout} s\n")

    runtime = None
    if not args.no_build and _has("runtime_builder"):
        import runtime_builder

        print("2. Building a slim runtime (only cloudpickle is needed) ...")
        built = runtime_builder.build(packages=[], output=".wrenpack/quickstart-runtime")
        runtime = str(built.output_dir)
        print(f"   -> {runtime}: {built.summary_line() if hasattr(built, 'summary_line') else 'built and import-checked'}\n")

    print(f"3. Running {args.tasks} remote calls on the local backend (memory={memory} MB, timeout={timeout} s) ...")
    remote_pi = wrenpack.remote(estimate_pi, memory=memory, timeout=timeout, runtime=runtime)
    t0 = time.perf_counter()
    futures = remote_pi.map(range(args.tasks))
    estimates = wrenpack.get(futures)
    elapsed = time.perf_counter() - t0
    peak = max(f.status["peak_rss_mb"] for f in futures)
    print(f"   pi ~ {sum(estimates) / len(estimates):.5f} from {len(estimates)} calls in {elapsed:.2f} s "
          f"(largest worker peak {peak:.0f} MB of {memory} MB)")
    return 0


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


if __name__ == "__main__":
    sys.exit(main())
