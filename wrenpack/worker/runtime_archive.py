"""Lambda entry point for a runtime kept as an archive in S3 (PyWren's model).

``wrenpack deploy --runtime-archive DIR`` uploads the runtime's ``python/``
tree as ``runtime-<sha256>.tar.gz`` and sets this module's ``handler`` as the
function's handler, with ``WRENPACK_RUNTIME_ARCHIVE=s3://bucket/key`` and
``WRENPACK_RUNTIME_SHA256``. Once per warm container the first call downloads
the archive, checks its hash and extracts it under /tmp keyed by that hash;
a file lock keeps concurrent extractions in one container from colliding.

Why tar.gz: Lambda's Python image has no ``zstandard``, and the bootstrap must
run before any runtime is present, so it uses the standard library only
(``.tar.zst`` works too when ``zstandard`` is importable, e.g. from a layer).
The archive counts against ephemeral storage (/tmp, 512 MB by default).
Standard library and boto3 only.
"""
from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import shutil
import sys
import tarfile
from typing import Any

log = logging.getLogger(__name__)

ROOT = os.environ.get("WRENPACK_RUNTIME_ROOT", "/tmp/wrenpack-runtime")
_ready: str | None = None


def ensure_runtime() -> str | None:
    """Make the archived runtime importable; return its directory (None if unset)."""
    global _ready
    if _ready is not None:
        return _ready
    url = os.environ.get("WRENPACK_RUNTIME_ARCHIVE")
    if not url:
        return None
    sha = os.environ.get("WRENPACK_RUNTIME_SHA256", "")
    if not url.startswith("s3://") or len(sha) != 64:
        raise RuntimeError("WRENPACK_RUNTIME_ARCHIVE must be s3://bucket/key with WRENPACK_RUNTIME_SHA256 set; re-run `wrenpack deploy`")
    dest = os.path.join(ROOT, sha)
    os.makedirs(ROOT, exist_ok=True)
    with open(os.path.join(ROOT, f"{sha}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(os.path.join(dest, ".complete")):
            _fetch_and_extract(url, sha, dest)
    sys.path.insert(0, dest)
    _forget_bundled_sdk(dest)
    _ready = dest
    return dest


def _forget_bundled_sdk(dest: str) -> None:
    """A runtime built with ``--keep-boto3`` brings its own boto3: the runtime's
    bundled one, imported above to download the archive, is dropped so that the
    next import finds the archive's (wrenpack.worker.sdk checks its version)."""
    if not os.path.isdir(os.path.join(dest, "botocore")):
        return
    for name in [n for n in sys.modules if n.split(".")[0] in ("boto3", "botocore", "s3transfer")]:
        del sys.modules[name]


def _fetch_and_extract(url: str, sha: str, dest: str) -> None:
    import boto3

    bucket, _, key = url[5:].partition("/")
    archive = os.path.join(ROOT, f"{sha}.download")
    digest = hashlib.sha256()
    body = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"]
    with open(archive, "wb") as f:
        for chunk in iter(lambda: body.read(1 << 20), b""):
            digest.update(chunk)
            f.write(chunk)
    if digest.hexdigest() != sha:
        os.unlink(archive)
        raise RuntimeError(f"runtime archive {url} has sha256 {digest.hexdigest()}, expected {sha}; re-run `wrenpack deploy`")
    tmp = dest + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with _open_tar(archive, key) as tar:
            tar.extractall(tmp, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(tmp)
    finally:
        os.unlink(archive)  # /tmp is small: keep only the extracted tree
    open(os.path.join(tmp, ".complete"), "w").close()
    shutil.rmtree(dest, ignore_errors=True)
    os.rename(tmp, dest)


def _open_tar(path: str, key: str) -> tarfile.TarFile:
    if key.endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise RuntimeError("runtime archive is .tar.zst but zstandard is not importable here; deploy a .tar.gz archive") from None
        stream = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"))
        return tarfile.open(fileobj=stream, mode="r|")
    return tarfile.open(path, mode="r:*")


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    ensure_runtime()
    from wrenpack.worker.handler import handler as run

    return run(event, context)
