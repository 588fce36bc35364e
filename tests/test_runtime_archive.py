"""The archived runtime's bootstrap (``wrenpack.worker.runtime_archive``): what a Lambda
container does on its first call, with the S3 download stood in by the archive's bytes
(the deploy and bootstrap against moto: tests/aws/test_aws_cli.py)."""
from __future__ import annotations

import hashlib
import io
import os
import sys
import tarfile
import types

import pytest

from wrenpack.worker import runtime_archive


def _archive(files: dict[str, bytes], evil: str | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if evil is not None:
            info = tarfile.TarInfo(evil)
            info.size = 4
            tar.addfile(info, io.BytesIO(b"evil"))
    return buf.getvalue()


class _Body:
    """The download: checks at every read that /tmp never holds the archive beside the tree."""

    def __init__(self, data: bytes, root: str) -> None:
        self.stream = io.BytesIO(data)
        self.root = root
        self.reads = 0

    def read(self, n: int = -1) -> bytes:
        self.reads += 1
        stored = [name for name in os.listdir(self.root) if name.endswith(".download")]
        assert not stored, f"the archive was stored in /tmp: {stored}"
        return self.stream.read(n)


@pytest.fixture
def container(tmp_path, monkeypatch):
    """A container's first call: ROOT under tmp_path, boto3's client serving ``served[0]``."""
    root = tmp_path / "tmp-runtime"
    # (as root, the worker writes no bytecode into its read-only tree: restored after the test)
    monkeypatch.setattr(sys, "dont_write_bytecode", sys.dont_write_bytecode)
    served: list[bytes] = []
    bodies: list[_Body] = []

    def client(name):
        def get_object(Bucket, Key):
            bodies.append(_Body(served[0], str(root)))
            return {"Body": bodies[-1]}
        return types.SimpleNamespace(get_object=get_object)

    monkeypatch.setitem(sys.modules, "boto3", types.SimpleNamespace(client=client))
    monkeypatch.setattr(runtime_archive, "ROOT", str(root))
    monkeypatch.setattr(runtime_archive, "_ready", None)
    monkeypatch.setattr(sys, "path", list(sys.path))

    def start(data: bytes, sha: str | None = None) -> str | None:
        served[:] = [data]
        monkeypatch.setenv("WRENPACK_RUNTIME_ARCHIVE", "s3://bucket/runtimes/runtime.tar.gz")
        monkeypatch.setenv("WRENPACK_RUNTIME_SHA256", sha or hashlib.sha256(data).hexdigest())
        return runtime_archive.ensure_runtime()

    start.root = root  # type: ignore[attr-defined]
    start.bodies = bodies  # type: ignore[attr-defined]
    return start


@pytest.mark.skipif(not hasattr(tarfile, "data_filter"), reason="this Python's tarfile has no data filter: the "
                    "archive is downloaded and checked before it is extracted (the fallback)")
def test_the_archive_is_extracted_as_it_downloads_never_stored_beside_its_tree(container):
    """/tmp is the function's ephemeral storage: the archive used to be downloaded whole
    into it and extracted beside itself, so a cold start needed archive + tree (a 480 MiB
    tree in a 150 MB archive passed a 512 MiB budget and filled /tmp)."""
    data = _archive({"wp_streamed_pkg/__init__.py": b"VALUE = 7\n", "wp_streamed_pkg/blob.bin": os.urandom(300_000)})
    where = container(data)
    assert where is not None and open(os.path.join(where, "wp_streamed_pkg", "__init__.py")).read() == "VALUE = 7\n"
    assert container.bodies[0].reads > 1  # (read in pieces, not in one go)
    assert sorted(os.listdir(container.root)) == sorted([os.path.basename(where), os.path.basename(where) + ".lock"])


def test_a_tampered_archive_leaves_nothing_and_says_so(container):
    good = _archive({"wp_tampered_pkg/__init__.py": b"VALUE = 1\n"})
    bad = _archive({"wp_tampered_pkg/__init__.py": b"import os; VALUE = 666\n"})
    with pytest.raises(RuntimeError, match="has sha256 .*expected"):
        container(bad, sha=hashlib.sha256(good).hexdigest())
    assert [n for n in os.listdir(container.root) if not n.endswith(".lock")] == []


def test_a_tampered_archive_with_a_member_outside_its_tree_writes_nothing_there(container, tmp_path):
    good = _archive({"ok/__init__.py": b""})
    bad = _archive({"ok/__init__.py": b""}, evil="../../escaped.txt")
    with pytest.raises(RuntimeError, match="has sha256 .*expected"):
        container(bad, sha=hashlib.sha256(good).hexdigest())
    assert not (tmp_path / "escaped.txt").exists() and not (container.root / "escaped.txt").exists()
    assert [n for n in os.listdir(container.root) if not n.endswith(".lock")] == []
