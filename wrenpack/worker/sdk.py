"""The worker's AWS SDK: which botocore it runs, and whether wrenpack can work with it.

On Lambda the worker uses the boto3/botocore that Lambda's Python runtime
bundles (``wrenpack build-runtime`` trims them out of runtimes), so its version
is whatever the runtime image had when the function last got a runtime
update, not what the client has. Results are written with
``put_object(IfNoneMatch="*")`` (``wrenpack.storage.s3``): botocore knows that
parameter from 1.35.2 (2024-08-20, "Add support for conditional writes for
PutObject and CompleteMultipartUpload APIs"); an older one refuses it before
sending anything. So a call whose store is S3 checks the version once per
worker process and, on an older SDK, fails at once with one line naming the
version found, the one needed and the fix, instead of running the user's code
and then failing to store its result.

``probe`` answers a probe invocation (``{"wrenpack_probe": 1}``: ``wrenpack doctor``
and the acceptance run send one) with the worker's versions, touching no store.
Standard library and botocore only.
"""
from __future__ import annotations

import os
import re
import sys
import time
from typing import Any

from wrenpack.errors import SdkTooOld

#: The oldest botocore whose S3 PutObject and CompleteMultipartUpload take IfNoneMatch.
MIN_BOTOCORE = (1, 35, 2)
MIN_BOTOCORE_TEXT = ".".join(map(str, MIN_BOTOCORE))
#: The key of a probe invocation's event.
PROBE_KEY = "wrenpack_probe"

_checked: tuple[str | None, str | None] | None = None  # (version, problem), once per process


def botocore_version() -> str | None:
    """The version of the botocore this process imports (None if there is none)."""
    try:
        import botocore
    except ImportError:
        return None
    return str(getattr(botocore, "__version__", "") or "") or None


def parse_version(text: str) -> tuple[int, ...]:
    """``"1.35.2"`` -> (1, 35, 2); a part that is not a number ends the tuple."""
    out = []
    for part in text.split("."):
        match = re.match(r"\d+", part)
        if match is None:
            break
        out.append(int(match.group()))
        if match.end() < len(part):  # "2rc1": a pre-release of 2 ends the version
            break
    return tuple(out)


def problem_with(version: str | None) -> str | None:
    """One line saying why ``version`` of botocore cannot write wrenpack's results (None: it can)."""
    fix = ("bundle a newer boto3 in the runtime (`wrenpack build-runtime --keep-boto3 boto3`, then "
           "`wrenpack deploy --runtime-dir .wrenpack/runtime`; or a container image with it) or move the "
           "function to a newer Python runtime")
    if version is None:
        return f"this Lambda worker has no botocore, and wrenpack's S3 store needs botocore >= {MIN_BOTOCORE_TEXT}; {fix}"
    if parse_version(version) < MIN_BOTOCORE:
        return (f"this Lambda worker's botocore is {version}, older than the {MIN_BOTOCORE_TEXT} wrenpack needs "
                f"(conditional writes: put_object(IfNoneMatch)); {fix}")
    return None


def checked() -> tuple[str | None, str | None]:
    """(botocore version, problem or None), found once per worker process."""
    global _checked
    if _checked is None:
        version = botocore_version()
        _checked = (version, problem_with(version))
    return _checked


def check(store_spec: dict[str, Any]) -> str | None:
    """Raise ``SdkTooOld`` when the call's store is S3 and this worker's botocore
    cannot write to it; return the botocore version (None for other stores)."""
    if store_spec.get("type") != "s3":
        return None
    version, problem = checked()
    if problem is not None:
        raise SdkTooOld(problem)
    return version


def is_probe(event: Any) -> bool:
    return isinstance(event, dict) and event.get(PROBE_KEY) is not None


#: the longest a probe sleeps when asked to (s): enough to hold an execution environment busy
PROBE_SLEEP_MAX = 30.0


def probe(event: dict[str, Any]) -> dict[str, Any]:
    """What a probe invocation answers: the worker's Python, SDK and whether it is new enough.
    ``"sleep": s`` holds the execution environment that long first (at most
    ``PROBE_SLEEP_MAX``): the acceptance run's throttling check needs one busy."""
    try:
        pause = min(max(float(event.get("sleep") or 0), 0.0), PROBE_SLEEP_MAX)
    except (TypeError, ValueError):
        pause = 0.0
    if pause:
        time.sleep(pause)
    version, problem = checked()
    try:
        import boto3

        boto3_version: str | None = str(boto3.__version__)
    except ImportError:
        boto3_version = None
    botocore_mod = sys.modules.get("botocore")
    return {
        PROBE_KEY: 1,
        "python": "%d.%d.%d" % sys.version_info[:3],
        "botocore": version,
        "botocore_path": os.path.dirname(getattr(botocore_mod, "__file__", "") or "") or None,
        "boto3": boto3_version,
        "botocore_needed": MIN_BOTOCORE_TEXT,
        "problem": problem,
        "function": os.environ.get("AWS_LAMBDA_FUNCTION_NAME"),
        "memory_mb": os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE"),
        "runtime": os.environ.get("AWS_EXECUTION_ENV"),
    }
