"""Trim, compile and verify inside the Docker build stage (see Dockerfile.runtime).

Runs in the Lambda base image with only the standard library: the same rules
and checks as a host build, minus resolution and packing. It also adds
wrenpack's worker-side code (and nothing else of wrenpack) to the runtime, so
the handler is compiled and import-checked with the packages it will run with.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile

#: The handler the image's CMD names; the import check imports its module.
HANDLER_MODULE = "wrenpack.worker.handler"


def copy_worker(wrenpack_dir: str, dest: str) -> list[str]:
    """Copy wrenpack's worker side (package root files, storage/, worker/) into ``dest``/wrenpack.

    The same file set as the handler package `wrenpack deploy` uploads: the
    worker imports only the standard library, cloudpickle and (for S3) boto3.
    """
    from wrenpack.worker import worker_files

    copied = worker_files(wrenpack_dir)
    for rel in copied:
        os.makedirs(os.path.dirname(os.path.join(dest, "wrenpack", rel)), exist_ok=True)
        shutil.copyfile(os.path.join(wrenpack_dir, rel), os.path.join(dest, "wrenpack", rel))
    return copied


def main(argv: list[str] | None = None) -> int:
    from runtime_builder import attribution, bytecode, trim
    from wrenpack.errors import WrenpackError

    ap = argparse.ArgumentParser()
    ap.add_argument("raw")
    ap.add_argument("dest")
    ap.add_argument("--wrenpack", required=True, help="wrenpack's package directory (its worker side is added)")
    ap.add_argument("--sourceless", default="0")
    ap.add_argument("--keep-boto3", default="0")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        plan = trim.plan(a.raw, keep_boto3=a.keep_boto3 == "1")
        trim.materialize(plan, a.dest)
        copy_worker(a.wrenpack, a.dest)
        options = {"sourceless": a.sourceless == "1", "skip_imports": [], "verify_modules": [HANDLER_MODULE]}
        bytecode.compile_tree(sys.executable, a.dest, sourceless=options["sourceless"])
        with tempfile.TemporaryDirectory() as work:
            modules, seconds = attribution.verify_tree(plan, a.dest, work, sys.executable, options)
    except WrenpackError as exc:
        print(f"wrenpack: error: {exc}", file=sys.stderr)
        return 1
    print(f"verified {len(modules)} modules in {seconds:.2f} s: {', '.join(modules)}")
    print(f"trim savings (bytes): {plan.savings()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
