"""wrenpack quickstart: profile a function, build its runtime, run it remotely.

Runs entirely on this machine (the embedded local backend, held to Lambda's
limits); the same code runs on AWS Lambda with backend="lambda".

    python examples/quickstart.py            # all three steps
    python examples/quickstart.py --no-build # skip building the runtime (no downloads)
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

import wrenpack


def estimate_pi(seed: int, samples: int = 200_000) -> float:
    """Monte Carlo estimate of pi from one seed: a plain, CPU-bound function."""
    rng = random.Random(seed)
    inside = sum(1 for _ in range(samples) if rng.random() ** 2 + rng.random() ** 2 <= 1.0)
    return 4.0 * inside / samples


def positive_int(text: str) -> int:
    """An argparse type for a count: a whole number >= 1 (0 calls would have nothing to show)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=positive_int, default=40, help="how many remote calls (default 40)")
    ap.add_argument("--no-build", action="store_true", help="skip building a runtime")
    ap.add_argument("--no-profile", action="store_true", help="skip profiling")
    args = ap.parse_args()
    os.makedirs(".wrenpack", exist_ok=True)

    memory, timeout, profile_json = 512, 60, None
    if not args.no_profile:
        from wrenpack.profiler.report import render

        print("1. Profiling estimate_pi(0) in a clean child process ...")
        prof = wrenpack.profile(estimate_pi, 0)
        render(prof)
        memory, timeout = prof.memory_mb, prof.timeout_s
        profile_json = ".wrenpack/quickstart-profile.json"
        with open(profile_json, "w") as fh:
            json.dump(prof.to_dict(samples=False), fh)
        print(f"   -> recommended memory={memory} MB, timeout={timeout} s\n")

    runtime = None
    if not args.no_build:
        import runtime_builder

        print("2. Building the runtime the profile asks for (estimate_pi imports only the standard library,")
        print("   so it holds just cloudpickle), trimmed and import-checked ...")
        built = runtime_builder.build(profile=profile_json, packages=[] if profile_json else ["cloudpickle"],
                                      output=".wrenpack/quickstart-runtime")
        runtime = built.output
        sizes = built.sizes
        print(f"   -> {runtime}: {len(built.manifest.get('packages', []))} package(s), "
              f"{sizes.get('trimmed', sizes.get('runtime', 0)) / 1e6:.1f} MB, import-checked"
              f"{' (cache hit)' if built.cache_hit else ''}\n")

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


if __name__ == "__main__":
    sys.exit(main())
