"""Object store on the local filesystem: the embedded default.

Keys become relative paths under a root directory. Atomicity comes from
writing a temporary file in the same directory and ``os.replace`` (or
``os.link`` for ``if_absent``, which fails if the target exists).

The store is private: anyone who can write to it could plant objects (they
fail authentication, ``wrenpack.auth``) or delete them. So the root is created
0700, objects are written 0600, and a root that already exists but is owned
by another user or writable by group or others is refused, as is one inside a
directory that another user could rename it out of (an ancestor owned by
someone other than you or root, or writable by others without the sticky bit,
as ``/tmp`` and ``/dev/shm`` have). Standard library only: the worker imports this.
"""
from __future__ import annotations

import contextlib
import itertools
import os
import stat
import threading
from typing import Any

from wrenpack.errors import ObjectNotFound, StoreError
from wrenpack.storage.base import Store


class LocalStore(Store):
    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "LocalStore":
        return cls(spec["root"])

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.path.abspath(os.fspath(root))
        _make_private_root(self.root)
        self._made: set[str] = set()
        self._counter = itertools.count()

    @property
    def spec(self) -> dict[str, Any]:
        return {"type": "local", "root": self.root}

    @property
    def url(self) -> str:
        return f"file://{self.root}"

    def _path(self, key: str) -> str:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise StoreError(f"invalid store key {key!r}: keys are relative paths without '..'")
        return os.path.join(self.root, key)

    def _ensure_dir(self, directory: str) -> None:
        if directory not in self._made:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            self._made.add(directory)

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> bool:
        try:
            return self._put(key, data, if_absent)
        except OSError as exc:  # disk full, read-only, a file where a folder should be
            raise StoreError(f"cannot write {key} to {self.url}: {_reason(exc)}; free space, or fix the store "
                             "directory, or set storage= to another one") from None

    def _put(self, key: str, data: bytes, if_absent: bool) -> bool:
        path = self._path(key)
        directory = os.path.dirname(path)
        self._ensure_dir(directory)
        if if_absent and os.path.exists(path):
            return False
        tmp = os.path.join(directory, f".tmp-{os.getpid()}-{threading.get_ident()}-{next(self._counter)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileNotFoundError:
            # Another process removed the directory since this one made it (delete_prefix).
            self._made.discard(directory)
            self._ensure_dir(directory)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            if if_absent:
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    return False
                finally:
                    os.unlink(tmp)
            else:
                os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return True

    def get(self, key: str) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise ObjectNotFound(f"object {key!r} not found in {self.url}") from None
        except OSError as exc:
            raise StoreError(f"cannot read {key} from {self.url}: {_reason(exc)}") from None

    def get_range(self, key: str, start: int, end: int) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                f.seek(start)
                return f.read(max(0, end - start))
        except FileNotFoundError:
            raise ObjectNotFound(f"object {key!r} not found in {self.url}") from None

    def exists(self, key: str) -> bool:
        return os.path.exists(self._path(key))

    def size(self, key: str) -> int:
        try:
            return os.path.getsize(self._path(key))
        except FileNotFoundError:
            raise ObjectNotFound(f"object {key!r} not found in {self.url}") from None

    def list_sizes(self, prefix: str) -> list[tuple[str, int]]:
        out = []
        for key in self.list(prefix):
            try:
                out.append((key, os.path.getsize(self._path(key))))
            except FileNotFoundError:  # removed since the listing
                pass
        return out

    def list(self, prefix: str) -> list[str]:
        # Walk only the deepest directory the prefix names, not the whole store.
        base_dir = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = os.path.join(self.root, base_dir) if base_dir else self.root
        out: list[str] = []
        for dirpath, _dirnames, filenames in os.walk(start):
            rel_dir = os.path.relpath(dirpath, self.root)
            rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
            for name in filenames:
                if name.startswith(".tmp-"):
                    continue
                key = rel_dir + name
                if key.startswith(prefix):
                    out.append(key)
        out.sort()
        return out

    def delete(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        for key in keys:
            self.delete(key)
        # Remove directories left empty below the prefix's directory.
        base_dir = prefix.rstrip("/") if prefix.endswith("/") else prefix.rsplit("/", 1)[0]
        if base_dir:
            top = os.path.join(self.root, base_dir)
            for dirpath, _dirs, files in sorted(os.walk(top, topdown=False), key=lambda t: -len(t[0])):
                if prefix.endswith("/"):
                    # Temporary files of writers that died mid-write go with their job.
                    for name in files:
                        if name.startswith(".tmp-"):
                            with contextlib.suppress(OSError):
                                os.unlink(os.path.join(dirpath, name))
                try:
                    os.rmdir(dirpath)
                except OSError:
                    pass
            self._made = {d for d in self._made if not d.startswith(top)}
        return len(keys)


def sweep_tmp(store: LocalStore, older_than_s: float = 300.0) -> int:
    """Remove temporary files (``.tmp-*``) that writers killed mid-write left,
    older than ``older_than_s``; return how many."""
    import time

    cutoff = time.time() - older_than_s
    removed = 0
    for dirpath, _dirs, files in os.walk(store.root):
        for name in files:
            if name.startswith(".tmp-"):
                path = os.path.join(dirpath, name)
                with contextlib.suppress(OSError):
                    if os.lstat(path).st_mtime < cutoff:
                        os.unlink(path)
                        removed += 1
    return removed


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _make_private_root(root: str) -> None:
    """Create ``root`` 0700 (parents too), or check that an existing one is private."""
    me = os.geteuid()
    missing = []
    path = root
    while not os.path.exists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    _check_ancestors(os.path.dirname(root) if path == root else path, me, root)
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass  # another process made it at the same moment: checked below
        except OSError as exc:
            raise StoreError(f"cannot create the store directory {directory} ({exc.strerror}); set storage= to a writable path") from None
    try:
        st = os.stat(root)
    except OSError as exc:
        raise StoreError(f"cannot use the store directory {root} ({exc.strerror}); set storage= to a writable path") from None
    if not stat.S_ISDIR(st.st_mode):
        raise StoreError(f"the store path {root} exists but is not a directory; remove it or set storage= to another path")
    if st.st_uid != me:
        raise StoreError(
            f"the store directory {root} is owned by uid {st.st_uid}, not by you (uid {me}): whoever owns it can plant or "
            "remove job objects; remove it, or set storage= to a directory of your own"
        )
    if st.st_mode & 0o022:
        raise StoreError(
            f"the store directory {root} is writable by {'others' if st.st_mode & 0o002 else 'its group'} "
            f"(mode {stat.S_IMODE(st.st_mode):o}): anyone who can write there can plant or remove job objects; "
            f"chmod 700 {root}, or set storage= to a private directory"
        )


def _check_ancestors(path: str, me: int, root: str) -> None:
    """Refuse a store inside a directory someone else could swap it out of."""
    while True:
        try:
            st = os.stat(path)
        except OSError:
            return
        sticky = bool(st.st_mode & stat.S_ISVTX)
        if st.st_uid not in (me, 0) or (st.st_mode & 0o022 and not sticky):
            raise StoreError(
                f"the store directory {root} is inside {path}, which "
                + (f"is owned by uid {st.st_uid}" if st.st_uid not in (me, 0) else "others can write to (no sticky bit)")
                + ": they could replace the store; set storage= to a directory only you control"
            )
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent
