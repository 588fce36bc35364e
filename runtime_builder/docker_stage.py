"""Trim, compile and verify inside the Docker build stage (see Dockerfile.runtime).

Runs in the Lambda base image with only the standard library: the same rules
and checks as a host build, minus resolution and packing.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile


def main(argv: list[str] | None = None) -> int:
    from runtime_builder import bytecode, pipeline, trim

    ap = argparse.ArgumentParser()
    ap.add_argument("raw")
    ap.add_argument("dest")
    ap.add_argument("--sourceless", default="0")
    ap.add_argument("--keep-boto3", default="0")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    plan = trim.plan(a.raw, keep_boto3=a.keep_boto3 == "1")
    trim.materialize(plan, a.dest)
    options = {"sourceless": a.sourceless == "1", "skip_imports": [], "verify_modules": []}
    bytecode.compile_tree(sys.executable, a.dest, sourceless=options["sourceless"])
    with tempfile.TemporaryDirectory() as work:
        modules, _ = pipeline._verify(plan, a.dest, work, sys.executable, options)
    print(f"verified {len(modules)} modules; savings: {plan.savings()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
