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
The extracted tree counts against ephemeral storage (/tmp, 512 MB by default);
the archive is extracted as it downloads, never stored beside it.

Why the tree is never trusted once a job's code may have run: /tmp is writable
by every job's code in the container (same user) and outlives invocations and
runtime re-inits, while every later job's process imports from the tree. So:

* each process extracts the archive afresh (``ensure_runtime``); a tree found
  in /tmp from an earlier process is removed, never used;
* right after extraction the tree's directories are made read-only (Python
  writes no bytecode into it, a package cannot add files to itself by
  accident) and its fingerprint is kept in this process's memory: for every
  file, directory and link its inode, mode, size and ``st_ctime_ns``. A
  change of content, mode or links, an entry added, removed or renamed, a
  chmod back to writable, all change some ctime, which no process of the
  user can set back (``utime`` sets mtime, not ctime); ``_seal`` waits until
  the clock has moved past the newest ctime, so that even a change in the
  same clock tick as the extraction shows;
* ``tampered`` compares the tree with the fingerprint. The worker's isolation
  calls it before a new isolation domain's process takes its first call (the
  previous domain's processes killed) and before a fresh zygote is started;
  on a difference ``renew`` extracts the archive again, downloaded and
  hash-checked by a fresh interpreter whose ``sys.path`` leaves the tree out
  (nothing of the changed tree is imported into the secret-holding parent),
  and the zygote and the spare process are replaced;
* once a job's code may have run, the parent imports nothing from the tree
  (``guard_parent``): the current domain's code can change it between checks;
* the runtime is extracted and the handler's module (whose import forks the
  zygote) loaded at Lambda's init (``_init_on_lambda``), never while an event,
  with its job's secret, is in the process's hands.

Standard library and boto3 only.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.machinery
import json
import logging
import os
import secrets
import shutil
import stat
import subprocess
import sys
import sysconfig
import tarfile
import time
from typing import Any

from wrenpack.boot import NO_CWD

log = logging.getLogger(__name__)

ROOT = os.environ.get("WRENPACK_RUNTIME_ROOT", "/tmp/wrenpack-runtime")
_ready: str | None = None
#: the archive this process extracted: (s3 url, sha256)
_source: tuple[str, str] | None = None
#: the extracted tree's fingerprint (``_fingerprint``), in this process's memory only
_recorded: list[tuple[Any, ...]] | None = None
#: a descriptor of the tree's folder, flocked for this process's life: another process
#: sharing ROOT (several emulated containers) sees it in use and leaves it alone
_hold: int | None = None
#: seconds the last ``tampered`` took, and its number of entries (for the logs and tests)
last_check: tuple[float, int] = (0.0, 0)


def ensure_runtime() -> str | None:
    """Make the archived runtime importable; return its directory (None if unset).

    The archive is downloaded and extracted afresh by every process (a Lambda
    runtime's init, and its re-init after a crash in the same container): a
    tree left in /tmp by an earlier process may have been changed by a job's
    code since, and is removed, never imported from."""
    global _ready, _source
    if _ready is not None:
        return _ready
    url = os.environ.get("WRENPACK_RUNTIME_ARCHIVE")
    if not url:
        return None
    sha = os.environ.get("WRENPACK_RUNTIME_SHA256", "")
    if not url.startswith("s3://") or len(sha) != 64:
        raise RuntimeError("WRENPACK_RUNTIME_ARCHIVE must be s3://bucket/key with WRENPACK_RUNTIME_SHA256 set; re-run `wrenpack deploy`")
    _release()  # (a fresh start in this interpreter: tests; a process starts with nothing held)
    os.makedirs(ROOT, exist_ok=True)
    with _root_lock(sha):
        _remove_stale(sha)
        dest = _free_name(sha)
        _fetch_and_extract(url, sha, dest)
        _seal(dest)
    if os.geteuid() == 0:
        # Root writes into a read-only folder: no bytecode is written into the tree (it would
        # read as a change) by this process and what it forks (a fresh zygote: ``-B``).
        sys.dont_write_bytecode = True
    _put_on_path(dest)
    _forget_bundled_sdk(dest)
    _source = (url, sha)
    _ready = dest
    return dest


def _put_on_path(dest: str) -> None:
    """The tree goes before every other folder on ``sys.path`` (it wins over a bundled
    boto3 and the handler package's folder, as before) but after the standard
    library's: a module in it never stands in for one of the standard library."""
    paths = sysconfig.get_paths()
    lib = {os.path.normpath(paths[k]) for k in ("stdlib", "platstdlib") if paths.get(k)}

    def stdlib(entry: str) -> bool:
        norm = os.path.normpath(entry) if entry else entry
        return norm in lib or os.path.dirname(norm) in lib and os.path.basename(norm) == "lib-dynload" or (
            norm.endswith(".zip") and os.path.dirname(norm) in {os.path.dirname(d) for d in lib})

    rest = [p for p in sys.path if p != dest]
    sys.path[:] = [p for p in rest if stdlib(p)] + [dest] + [p for p in rest if not stdlib(p)]


@contextlib.contextmanager
def _root_lock(sha: str) -> Any:
    """One extraction at a time under ROOT (also what keeps /tmp from holding two trees)."""
    path = os.path.join(ROOT, f"{sha}.lock")
    try:  # (not through a link a job's code left there: opening for writing would truncate its target)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _in_use(path: str) -> bool:
    """Whether a live process holds the tree at ``path`` (``_hold``)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _remove_stale(sha: str) -> None:
    """Remove what earlier processes left of this archive under ROOT: trees no live
    process holds, unfinished extractions, a download (under ``_root_lock``)."""
    for name in os.listdir(ROOT):
        if name != sha and not name.startswith(sha + ".") or name == f"{sha}.lock":
            continue
        path = os.path.join(ROOT, name)
        if os.path.isdir(path) and not os.path.islink(path):
            if name.endswith(".partial") or not _in_use(path):
                _rmtree(path)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)


def _free_name(sha: str) -> str:
    """Where this process extracts: ``ROOT/<sha>``, or a name of its own when another live
    process holds that one."""
    dest = os.path.join(ROOT, sha)
    return dest if not os.path.lexists(dest) else os.path.join(ROOT, f"{sha}.{secrets.token_hex(8)}")


def _rmtree(path: str) -> None:
    """Remove a tree, its read-only folders made writable first (links not followed)."""
    if os.path.islink(path) or os.path.lexists(path) and not os.path.isdir(path):
        with contextlib.suppress(OSError):
            os.unlink(path)
        return
    for dirpath, _dirs, _files in os.walk(path):  # (top-down: each folder writable before its entries go)
        with contextlib.suppress(OSError):
            os.chmod(dirpath, 0o700)
    shutil.rmtree(path, ignore_errors=True)


def _release() -> None:
    global _hold
    if _hold is not None:
        with contextlib.suppress(OSError):
            os.close(_hold)
        _hold = None


def _seal(dest: str) -> None:
    """Make the freshly extracted tree's folders read-only, hold it, and record its
    fingerprint; return once the clock has moved past its newest ctime (a change made
    in the same clock tick as the extraction would keep that ctime)."""
    global _recorded, _hold
    for dirpath, _dirs, _files in os.walk(dest):  # (every real folder once; links are not followed)
        os.chmod(dirpath, 0o555)
    _release()
    _hold = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    fcntl.flock(_hold, fcntl.LOCK_EX | fcntl.LOCK_NB)
    _recorded = _fingerprint(dest)
    newest = max(entry[-1] for entry in _recorded if len(entry) > 1)
    probe = os.path.join(ROOT, f".tick-{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        # (a kernel clock tick is at most 10 ms; a file system keeping whole seconds takes up to one)
        deadline = time.monotonic() + 3.0
        while True:
            os.write(fd, b"x")
            if os.fstat(fd).st_ctime_ns > newest:
                break
            if time.monotonic() > deadline:
                log.warning("the clock did not move past the runtime tree's change times: a change made as it "
                            "was extracted may not be seen")
                break
            time.sleep(0.0005)
    finally:
        os.close(fd)
        os.unlink(probe)


def _fingerprint(root: str) -> list[tuple[Any, ...]]:
    """Every entry of the tree, in the order the walk meets them: (name, inode, mode,
    size, ctime in ns), the root's first with its device, each folder's path before its
    entries. An unchanged folder lists in the same order; a changed one has a new ctime
    anyway. One ``fstatat`` per entry, relative to its folder's descriptor (no path
    looked up again): links are recorded, never followed."""
    st = os.lstat(root)
    out: list[tuple[Any, ...]] = [("", st.st_dev, st.st_ino, st.st_mode, st.st_size, st.st_ctime_ns)]
    append = out.append
    stack = [root]
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    while stack:
        path = stack.pop()
        append((path,))  # (which folder the entries below are in: a moved subtree shows)
        fd = os.open(path, flags)
        try:
            with os.scandir(fd) as entries:
                for entry in entries:
                    name = entry.name
                    st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    append((name, st.st_ino, st.st_mode, st.st_size, st.st_ctime_ns))
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(os.path.join(path, name))
        finally:
            os.close(fd)
    return out


def tampered() -> str | None:
    """None when the extracted tree is as this process extracted it (or there is none);
    else what changed, in a few words (e.g. ``numpy/__init__.py changed``)."""
    global last_check
    if _ready is None or _recorded is None:
        return None
    t0 = time.perf_counter()
    try:
        now = _fingerprint(_ready)
    except OSError as exc:
        return f"it cannot be read ({exc.strerror or exc})"
    finally:
        last_check = (time.perf_counter() - t0, len(_recorded))
    if now == _recorded:
        return None
    return _difference(_recorded, now)


def _difference(before: list[tuple[Any, ...]], now: list[tuple[Any, ...]]) -> str:
    """What differs, named by its path in the tree: a file or link added, removed,
    replaced or changed if there is one (its folder changed with it), else a folder."""
    def entries(fp: list[tuple[Any, ...]]) -> dict[str, tuple[Any, ...]]:
        out, folder = {}, ""
        for entry in fp[1:]:
            if len(entry) == 1:
                folder = os.path.relpath(entry[0], _ready) if _ready else entry[0]
                continue
            out[os.path.normpath(os.path.join(folder, entry[0]))] = entry[1:]
        return out

    old, new = entries(before), entries(now)
    found: list[tuple[bool, str]] = []
    for path in sorted(set(old) | set(new)):
        was, now_is = old.get(path), new.get(path)
        if was == now_is:
            continue
        folder = stat.S_ISDIR((now_is or was)[1])  # type: ignore[index]
        if now_is is None:
            found.append((folder, f"{path} was removed"))
        elif was is None:
            found.append((folder, f"{path} was added"))
        else:
            found.append((folder, f"{path} was {'replaced' if was[0] != now_is[0] else 'changed'}"))
    if before[0][1:3] != now[0][1:3]:
        return "its folder was replaced"
    if not found:
        return "its folder was changed" if before[0] != now[0] else "its entries were reordered"
    return min(found, key=lambda f: f[0])[1]  # (the first file's, else the first folder's)


class _NoImportsFromTheTree:
    """The first finder on ``sys.meta_path`` of the worker's secret-holding process once a
    job's code may have run (``guard_parent``): an import there that would load a module
    from the tree is refused. The current domain's code can change the tree at any
    moment, and a module it planted, imported into this process, would run with every
    later job's secret in reach. The process imports what it needs at init; one that
    imports from the tree later fails loudly instead of running what the tree holds."""

    def __init__(self, tree: str) -> None:
        self.tree = os.path.join(os.path.normpath(tree), "")
        self.pid = os.getpid()

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if os.getpid() != self.pid:
            return None  # (a fork: not the process holding the secrets)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None:
            return None
        where = [spec.origin or "", *(spec.submodule_search_locations or [])]
        if any(os.path.join(os.path.normpath(w), "").startswith(self.tree) for w in where if w):
            raise ImportError(f"{name} is not imported into the worker's process that holds the jobs' secrets: it is "
                              f"in the runtime tree in /tmp, which a job's code can change; import it at the worker's init")
        return None  # (the usual finders load it)


def guard_parent() -> None:
    """From now on this process imports nothing from the tree (``_NoImportsFromTheTree``):
    called by the isolation before the first call of a job's code."""
    if _ready is None or any(isinstance(f, _NoImportsFromTheTree) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _NoImportsFromTheTree(_ready))


def renew() -> str:
    """Extract the archive again over a tree that ``tampered`` found changed; return its
    directory (the same path: the modules this process loaded from it keep their paths).

    Call it only when no job's code runs (the previous domain's processes killed) and no
    process uses the tree any more (zygote and spare killed): a change made while the
    tree is extracted would be fingerprinted as its content. The download and its hash
    check run in a fresh interpreter whose ``sys.path`` leaves the tree out: an import
    in this process could find a module of the changed tree (this process's boto3 may
    be the archive's, whose lazily imported parts come from there)."""
    if _ready is None or _source is None:
        raise RuntimeError("no runtime archive was extracted in this process")
    url, sha = _source
    dest = _ready
    with _root_lock(sha):
        _release()
        _rmtree(dest)
        _rmtree(dest + ".partial")
        paths = [p for p in sys.path if os.path.normpath(p) != os.path.normpath(dest)]
        code = (NO_CWD + "import json;c=json.loads(sys.argv[1]);sys.path[:]=c['paths'];"
                "from wrenpack.worker import runtime_archive as r;r._fetch_and_extract(c['url'],c['sha'],c['dest'])")
        config = {"paths": paths, "url": url, "sha": sha, "dest": dest}
        # (without Lambda's function name: importing this module there must not start a worker, ``_init_on_lambda``)
        env = {k: v for k, v in os.environ.items() if k != "AWS_LAMBDA_FUNCTION_NAME"}
        proc = subprocess.run([sys.executable, "-c", code, json.dumps(config)], stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=900, env=env)
        if proc.returncode != 0 or not os.path.isdir(dest):
            lines = (proc.stderr or "").strip().splitlines()
            raise RuntimeError(lines[-1] if lines else f"the extraction exited with status {proc.returncode}")
        _seal(dest)
    log.warning("the runtime tree %s was extracted again from %s", dest, url)
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
    """Download the archive and extract it as it comes: /tmp then holds the extracted
    tree only, never the archive beside it (the archive's bytes would count against the
    same ephemeral storage). Nothing of it is used before its hash checks out: the tree
    is extracted into ``<dest>.partial`` with tarfile's ``data`` filter (no member
    may land outside it, nor be a device or a link out of it) and becomes ``dest`` only
    once every byte has been hashed; a mismatch removes it. Where tarfile has no such
    filter (Python before 3.10.12/3.11.4), the archive is downloaded and checked first."""
    import boto3

    bucket, _, key = url[5:].partition("/")
    body = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"]
    stream = _Hashing(body)
    tmp = dest + ".partial"
    _rmtree(tmp)  # (whatever is there: a link would have the archive extracted where it points)
    if not hasattr(tarfile, "data_filter"):
        _download_then_extract(stream, url, sha, key, tmp)
    else:
        try:
            with _open_tar(stream, key) as tar:
                tar.extractall(tmp, filter="data")
            stream.drain()  # (the end-of-archive padding the reader stopped before)
        except Exception:
            shutil.rmtree(tmp, ignore_errors=True)
            tampered = False
            with contextlib.suppress(Exception):  # (the download itself failing: its error stands)
                stream.drain()
                tampered = stream.digest.hexdigest() != sha
            if tampered:
                _check(stream, url, sha)  # a tampered archive that does not extract: the mismatch is the cause
            raise
        if stream.digest.hexdigest() != sha:
            shutil.rmtree(tmp, ignore_errors=True)
            _check(stream, url, sha)
    _rmtree(dest)
    os.rename(tmp, dest)


class _Hashing:
    """A read-only stream over the download that hashes every byte read."""

    def __init__(self, body: Any) -> None:
        self.body = body
        self.digest = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        chunk = self.body.read(n) if n is not None and n >= 0 else self.body.read()
        self.digest.update(chunk)
        return chunk

    def drain(self) -> None:
        for _ in iter(lambda: self.read(1 << 20), b""):
            pass


def _check(stream: _Hashing, url: str, sha: str) -> None:
    got = stream.digest.hexdigest()
    if got != sha:
        raise RuntimeError(f"runtime archive {url} has sha256 {got}, expected {sha}; re-run `wrenpack deploy`")


def _download_then_extract(stream: _Hashing, url: str, sha: str, key: str, tmp: str) -> None:
    """Without tarfile's data filter: the archive to /tmp, checked, then extracted (both on disk a moment)."""
    archive = os.path.join(ROOT, f"{sha}.download")
    try:
        with open(archive, "wb") as f:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                f.write(chunk)
        _check(stream, url, sha)
        with open(archive, "rb") as f, _open_tar(f, key) as tar:
            tar.extractall(tmp)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(archive)  # /tmp is small: keep only the extracted tree


def _open_tar(fileobj: Any, key: str) -> tarfile.TarFile:
    """The archive read as a stream (``r|``: no seeking back), gzip or, when importable, zstd."""
    if key.endswith(".zst"):
        try:
            import zstandard
        except ImportError:
            raise RuntimeError("runtime archive is .tar.zst but zstandard is not importable here; deploy a .tar.gz archive") from None
        return tarfile.open(fileobj=zstandard.ZstdDecompressor().stream_reader(fileobj), mode="r|")
    return tarfile.open(fileobj=fileobj, mode="r|*")


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    ensure_runtime()
    from wrenpack.worker.handler import handler as run

    return run(event, context)


def _init_on_lambda() -> None:
    """At the runtime's init (Lambda loads this module then, before any event): extract
    the runtime and load the handler's module, whose import forks the zygote
    (``wrenpack.worker.isolation``). Loaded at the first event instead, the zygote, and
    every job's process it forks, had that event on its stack, its job's secret and all.
    A failure here is the runtime's init error (Lambda starts it again for the next
    event), never a fork with an event in hand."""
    if not os.environ.get("AWS_LAMBDA_FUNCTION_NAME") or os.environ.get("WRENPACK_LOCAL_WORKER") == "1":
        return
    if not os.environ.get("WRENPACK_RUNTIME_ARCHIVE"):
        return
    ensure_runtime()
    import wrenpack.worker.handler  # noqa: F401 - forks the zygote now


_init_on_lambda()
