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
as ``/tmp`` and ``/dev/shm`` have).

Nor does the store follow links: a root that is a symbolic link is refused
(one swapped while a job runs would move the store elsewhere), the root
directory is opened once and kept open, and every object is reached from it
one component at a time without following links (``O_NOFOLLOW``, ``dir_fd=``),
so renaming or replacing the root path, or a directory below it, mid-run
cannot redirect a read or a write. Standard library only: the worker imports this.
"""
from __future__ import annotations

import contextlib
import errno
import itertools
import mmap
import os
import re
import stat
import threading
from typing import Any, Iterable, Iterator

from wrenpack import keys, process_state
from wrenpack.errors import CorruptObject, ObjectNotFound, StoreError
from wrenpack.storage.base import MAX_PART_BYTES, Reader, Store, changed, long_part, shown

#: how often ``_open_dir`` walks again to a folder a concurrent removal took away
_WALKS = 100
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: (``O_NONBLOCK``: opening a FIFO someone planted at a key would otherwise wait for a writer for ever;
#: it changes nothing for the regular files objects are, and ``_open`` refuses anything else)
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_RELEASE_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_NEW_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
#: a mapped object is read whole right away (its MAC), so its pages are mapped in one go, not one fault each
_MAP_FLAGS = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
#: a directory on the way is missing (or is not one): the object is not there
_ABSENT = (FileNotFoundError, NotADirectoryError)


class LocalStore(Store):
    #: a reducer waiting for a mapper's index looks at least this often (``shuffle._wait_for``): a
    #: look-up here is a failed open, microseconds, while each 0.1 s of a longer interval is latency
    max_poll_s = 0.02

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "LocalStore":
        return cls(spec["root"])

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.path.abspath(os.fspath(root))
        #: the root directory, open for the store's life: objects are reached from it, never by path
        self._fd = _open_private_root(self.root)
        self._counter = itertools.count()

    def __del__(self, _close: Any = os.close) -> None:
        # (os.close bound here: at interpreter exit the module's globals may already be None)
        fd = self.__dict__.pop("_fd", None)
        if fd is not None:
            try:
                _close(fd)
            except OSError:
                pass

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_fd", None)
        state.pop("_counter", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A copy in another process opens (and checks) the root again."""
        self.__dict__.update(state)
        self._fd = _open_private_root(self.root)
        self._counter = itertools.count()

    @property
    def spec(self) -> dict[str, Any]:
        return {"type": "local", "root": self.root}

    @property
    def url(self) -> str:
        return f"file://{self.root}"

    @staticmethod
    def _parts(key: str) -> list[str]:
        """The key's path components; ``StoreError`` for a key that is not a plain relative path."""
        parts = [p for p in key.split("/") if p not in ("", ".")] if key and not key.startswith("/") else []
        if not parts or ".." in parts or key.endswith("/"):
            raise StoreError(f"invalid store key {key!r}: keys are relative paths without '..'")
        long = long_part(key)
        if long is not None:  # (refused alike by every operation, before the file system says ENAMETOOLONG)
            raise StoreError(f"invalid store key {shown(key)}: its part {shown(long[0])} is {long[1]} bytes: a local "
                             f"store keeps each part between '/' as a file name, which holds at most {MAX_PART_BYTES} "
                             "bytes; shorten it")
        return parts

    @contextlib.contextmanager
    def _dir(self, parts: list[str], create: bool = False) -> Iterator[int]:
        """A descriptor of the directory ``parts`` below the root, each component
        opened from the one before without following links; made 0700 if missing
        and ``create``. A missing one raises ``FileNotFoundError``; a link, ``OSError`` (ELOOP)."""
        fd = self._open_dir(parts, create)
        try:
            yield fd
        finally:
            if fd != self._fd:
                os.close(fd)

    def _open_dir(self, parts: list[str], create: bool) -> int:
        """``_dir``'s descriptor. With ``create``, a folder removed between its opening and
        the making of one inside it (``delete_prefix`` of the last objects below it, such as
        another map_reduce's in a ``shuffle/<shard>/``) is made again: the walk starts over,
        as often as such removals come between (each is another writer's progress; a test
        that removes one in a tight loop beside the writer needed more than three in a row)."""
        for attempt in range(_WALKS):
            again = attempt < _WALKS - 1
            fd = self._fd
            try:
                for name in parts:
                    try:
                        nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
                    except FileNotFoundError:
                        if not create:
                            raise
                        with contextlib.suppress(FileExistsError):  # (another writer made it meanwhile)
                            os.mkdir(name, 0o700, dir_fd=fd)
                        nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
                    if fd != self._fd:
                        os.close(fd)
                    fd = nxt
                return fd
            except FileNotFoundError:
                if fd != self._fd:
                    os.close(fd)
                if not (create and again):
                    raise
            except BaseException:
                if fd != self._fd:
                    os.close(fd)
                raise
        raise AssertionError("unreachable")

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> bool:
        try:
            return self._put(key, (data,), if_absent)
        except OSError as exc:  # disk full, read-only, a file where a folder should be
            raise self._write_error(key, exc) from None

    def put_chunks(self, key: str, chunks: Iterable[Any]) -> int:
        """Each piece is written to the file as it comes (one copy, into the page cache)."""
        written = [0]

        def counted() -> Iterator[Any]:
            for chunk in chunks:
                written[0] += memoryview(chunk).nbytes
                yield chunk

        try:
            self._put(key, counted(), False)
        except OSError as exc:
            raise self._write_error(key, exc) from None
        return written[0]

    def _write_error(self, key: str, exc: OSError) -> StoreError:
        """One line for a write that failed: a key that is a folder of other objects
        here, or lies under an object (both fine on S3, not in folders), or the
        file system's own reason."""
        if exc.errno == errno.EISDIR:
            return StoreError(f"cannot write {key} to {self.url}: objects are stored under {key}/, and in a local store "
                              "an object cannot have the name of a folder of others (S3 allows it); use another key")
        if exc.errno == errno.ENOTDIR:
            return StoreError(f"cannot write {key} to {self.url}: a part of its path is a file (an object), and in a local "
                              "store nothing can go under one (S3 allows it); use another key, or if that file is not an "
                              "object of yours, fix the store directory or set storage= to another one")
        if exc.errno == errno.ENAMETOOLONG:  # (a file system whose names hold fewer than MAX_PART_BYTES)
            return StoreError(f"cannot write {shown(key)} to {self.url}: a part of the key between '/' is longer than "
                              "this file system's file names hold; shorten it, or set storage= to another file system")
        return StoreError(f"cannot write {key} to {self.url}: {_reason(exc)}; free space, or fix the store "
                          "directory, or set storage= to another one")

    def get_buffer(self, key: str) -> Any:
        """The object's file mapped read-only (nothing copied; the file is replaced,
        never rewritten, by this store's writers, so the mapping keeps the object
        it opened, even once it is deleted). The one thing that breaks a mapping:
        a process of this user (any code it runs can reach the private root) that
        truncates the file in place, which wrenpack never does: touching the pages
        past the new end then raises SIGBUS, which ends the reading process (a call
        fails as crashed, "signal SIGBUS"; run again, it maps the shorter file,
        whose MAC fails: ``CorruptObject``). ``release_range`` keeps the size: its
        pages read as zeros."""
        fd = self._open(key)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                return b""
            return mmap.mmap(fd, size, flags=_MAP_FLAGS, prot=mmap.PROT_READ)
        except OSError as exc:
            raise StoreError(f"cannot read {key} from {self.url}: {_reason(exc)}") from None
        finally:
            os.close(fd)

    def get_range_buffer(self, key: str, start: int, end: int) -> Any:
        """Bytes ``[start, end)`` of the object's file, mapped read-only (the mapping
        starts at the page below ``start``; nothing is copied; as ``get_buffer``)."""
        fd = self._open(key)
        try:
            return self._map(fd, key, start, min(end, os.fstat(fd).st_size))
        except OSError as exc:
            raise StoreError(f"cannot read {key} from {self.url}: {_reason(exc)}") from None
        finally:
            os.close(fd)

    @staticmethod
    def _map(fd: int, key: str, start: int, end: int) -> Any:
        """Bytes ``[start, end)`` of the file ``fd`` (``end`` within it), mapped read-only."""
        if end <= start:
            return b""
        base = start - start % mmap.ALLOCATIONGRANULARITY
        mapped = mmap.mmap(fd, end - base, flags=_MAP_FLAGS, prot=mmap.PROT_READ, offset=base)
        return memoryview(mapped)[start - base :]

    def release_range(self, key: str, start: int, end: int) -> int:
        """Give back the memory of bytes ``[start, end)`` of an object whose only reader
        is done with them; returns how many bytes were released.

        For ``map_reduce``'s shuffle objects: each partition's section is read by
        one reducer, and on ``/dev/shm`` the file's pages are memory until the job
        ends. Released as each reducer finishes, they are free pages the next
        task's writes reuse at once, rather than new pages the kernel (on a VM,
        the hypervisor) must supply. The exception to "replaced, never
        rewritten": the whole pages inside the range read as zeros afterwards
        (the pages at its edges, shared with the neighbouring sections, stay), so
        a later read of the section fails its MAC. A missing object or a file
        system that cannot free a range (no ``MADV_REMOVE``) releases nothing."""
        remove = getattr(mmap, "MADV_REMOVE", None)
        first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE
        if remove is None or end - first < mmap.PAGESIZE:
            return 0
        try:
            fd = self._open(key, _RELEASE_FLAGS)
        except (ObjectNotFound, StoreError):  # gone, or not writable here: its bytes stay
            return 0
        try:
            last = min(end, os.fstat(fd).st_size) // mmap.PAGESIZE * mmap.PAGESIZE
            if last <= first:
                return 0
            with mmap.mmap(fd, last - first, flags=mmap.MAP_SHARED, offset=first) as mapped:
                mapped.madvise(remove)
            return last - first
        except OSError:
            return 0
        finally:
            os.close(fd)

    def _put(self, key: str, data: Iterable[Any], if_absent: bool) -> bool:
        *dirs, name = self._parts(key)
        tmp = f".tmp-{os.getpid()}-{threading.get_ident()}-{next(self._counter)}"
        for last in (False, True):
            with self._dir(dirs, create=True) as dfd:
                if if_absent and _lexists(name, dfd):
                    if _is_folder(name, dfd):  # (no object is there, and none can be)
                        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), key)
                    return False
                try:
                    fd = os.open(tmp, _NEW_FLAGS, 0o600, dir_fd=dfd)
                except FileNotFoundError:
                    if last:
                        raise
                    continue  # another process removed the directory since it was opened (delete_prefix): again
                try:
                    with os.fdopen(fd, "wb") as f:
                        for chunk in data:
                            f.write(chunk)
                    if if_absent:
                        try:
                            os.link(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
                        except FileExistsError:
                            return False
                        finally:
                            os.unlink(tmp, dir_fd=dfd)
                    else:
                        os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
                except BaseException:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp, dir_fd=dfd)
                    raise
                return True
        raise AssertionError("not reached: the second try returns or raises")

    def _open(self, key: str, flags: int = _READ_FLAGS) -> int:
        """A descriptor of the object's file (not a link); ``ObjectNotFound`` if absent.

        Only a regular file is an object: a FIFO, socket, device, directory or link at a
        key was put there by something other than wrenpack (whoever can write to the
        store can make one at a pending call's key). Read, a FIFO would block the
        reader (the driver, a worker's parent) for ever, a directory fails as an
        I/O error and a device reads whatever it holds; each is ``CorruptObject``."""
        *dirs, name = self._parts(key)
        try:
            with self._dir(dirs) as dfd:
                fd = os.open(name, flags, dir_fd=dfd)
        except _ABSENT:
            raise ObjectNotFound(f"object {key!r} not found in {self.url}") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # (O_NOFOLLOW met a link, at the key or a folder on the way)
                raise CorruptObject(f"cannot read {key} from {self.url}: it is (or lies under) a symbolic link, so wrenpack did "
                                    "not write it; nothing was read: remove it, re-run the job and check who can write to the store") from None
            raise StoreError(f"cannot read {key} from {self.url}: {_reason(exc)}") from None
        try:
            mode = os.fstat(fd).st_mode
        except OSError as exc:
            os.close(fd)
            raise StoreError(f"cannot read {key} from {self.url}: {_reason(exc)}") from None
        if stat.S_ISDIR(mode):  # (a folder of other objects: as on S3, no object has its name)
            os.close(fd)
            raise ObjectNotFound(f"object {key!r} not found in {self.url} (objects are stored under {key}/)")
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise CorruptObject(f"cannot read {key} from {self.url}: it is not a regular file (a {_file_kind(mode)}), so wrenpack "
                                "did not write it; nothing was read: remove it, re-run the job and check who can write to the store")
        return fd  # (O_NONBLOCK stays: it changes nothing for a regular file)

    def get(self, key: str) -> bytes:
        fd = self._open(key)
        try:
            with open(fd, "rb", closefd=False) as f:
                return f.read()
        except OSError as exc:
            raise StoreError(f"cannot read {key} from {self.url}: {_reason(exc)}") from None
        finally:
            os.close(fd)

    def get_range(self, key: str, start: int, end: int) -> bytes:
        fd = self._open(key)
        try:
            with open(fd, "rb", closefd=False) as f:
                f.seek(start)
                return f.read(max(0, end - start))
        finally:
            os.close(fd)

    def _stat(self, key: str) -> os.stat_result | None:
        """The object's file's status (not following a link); None if absent."""
        *dirs, name = self._parts(key)
        try:
            with self._dir(dirs) as dfd:
                return os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except _ABSENT:
            return None
        except OSError as exc:
            raise StoreError(f"cannot look up {key} in {self.url}: {_reason(exc)}") from None

    def exists(self, key: str) -> bool:
        st = self._stat(key)
        return st is not None and stat.S_ISREG(st.st_mode)

    def size(self, key: str) -> int:
        st = self._stat(key)
        if st is None or stat.S_ISDIR(st.st_mode):  # (a folder of other objects: as on S3, no object has its name)
            raise ObjectNotFound(f"object {key!r} not found in {self.url}")
        if not stat.S_ISREG(st.st_mode):
            raise CorruptObject(f"{key} in {self.url} is not a regular file (a {_file_kind(st.st_mode)}), so wrenpack did not "
                                "write it: remove it, re-run the job and check who can write to the store")
        return st.st_size

    def list_sizes(self, prefix: str) -> list[tuple[str, int]]:
        return [(key, size) for key, size, _version in self.list_versions(prefix)]

    def list_versions(self, prefix: str) -> list[tuple[str, int, str | None]]:
        out = []
        for key in self.list(prefix):
            st = self._stat(key)
            if st is not None:  # (else removed since the listing)
                out.append((key, st.st_size, file_version(st)))
        return out

    def reader(self, key: str, size: int | None = None, version: str | None = None) -> Reader:
        return FileReader(self._open(key), f"{self.url}/{key}", size, version)

    def _walk(self, directory: str, topdown: bool = True) -> Iterator[tuple[str, list[str], list[str], int]]:
        """``os.fwalk`` of ``directory`` (a key prefix's folder, "" for the root),
        reached without following links; its paths relative to the root ("" for the root).
        Nothing if it is absent."""
        parts = [p for p in directory.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise StoreError(f"invalid store prefix {directory!r}: prefixes are relative paths without '..'")
        if long_part(directory) is not None:
            return  # (no folder has a name the file system cannot hold: nothing is under it)
        try:
            with self._dir(parts) as dfd:
                base = "/".join(parts)
                for dirpath, dirnames, filenames, fd in os.fwalk(".", topdown=topdown, dir_fd=dfd):
                    rel = os.path.normpath(dirpath)
                    rel = base if rel == "." else (f"{base}/{rel}" if base else rel)
                    yield rel.replace(os.sep, "/"), dirnames, filenames, fd
        except _ABSENT:
            return

    def list(self, prefix: str) -> list[str]:
        # Walk only the deepest directory the prefix names, not the whole store.
        base_dir = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        out: list[str] = []
        for rel_dir, _dirnames, filenames, _fd in self._walk(base_dir):
            head = f"{rel_dir}/" if rel_dir else ""
            for name in filenames:
                if name.startswith(".tmp-"):
                    continue
                key = head + name
                if key.startswith(prefix):
                    out.append(key)
        out.sort()
        return out

    def list_folders(self, prefix: str) -> list[str]:
        # One directory read (and one per folder, to leave out empty ones), not a
        # walk of every object below: ``wrenpack jobs`` on a store of large jobs.
        if not prefix.endswith("/"):
            return super().list_folders(prefix)
        return [name for name, kind in self.folder_entries(prefix).items() if kind == "folder"]

    def folder_entries(self, prefix: str) -> dict[str, str]:
        """The folders and links one level below ``prefix`` (a folder, ending in "/"), by
        name: "folder" (one holding an object or a folder), "temporary" (nothing but
        writers' temporary files), "empty" or "link" (a symbolic link, not followed).
        ``list_folders`` keeps the first kind, as an S3 listing would; ``wrenpack clean``
        must also know a folder wrenpack named however little is in it (a writer killed
        mid-write, or one whose temporary file was swept) and say that a link is not its
        own. Files are left out. One directory read, and one per folder in it."""
        parts = [p for p in prefix.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise StoreError(f"invalid store prefix {prefix!r}: prefixes are relative paths without '..'")
        if long_part(prefix) is not None:
            return {}  # (as _walk: nothing is under a folder name too long for the file system)
        out: dict[str, str] = {}
        try:
            with self._dir(parts) as dfd, os.scandir(dfd) as entries:
                for entry in entries:
                    if entry.is_symlink():
                        out[entry.name] = "link"
                        continue
                    if not entry.is_dir(follow_symlinks=False):
                        continue
                    try:
                        sub = os.open(entry.name, _DIR_FLAGS, dir_fd=dfd)
                    except OSError:
                        continue  # (removed meanwhile, or swapped for a link)
                    try:
                        with os.scandir(sub) as inner:
                            names = [e.name for e in inner]
                    finally:
                        os.close(sub)
                    out[entry.name] = ("folder" if any(not n.startswith(".tmp-") for n in names) else
                                       "temporary" if names else "empty")
        except _ABSENT:
            return {}
        return dict(sorted(out.items()))

    def remove_empty_folder(self, prefix: str, older_than_s: float) -> bool:
        """Remove the folder ``prefix`` if it is empty and has not changed for
        ``older_than_s``: one a writer killed between making it and writing into it
        left (nothing else removes it: no object is under it). A writer that makes
        something in it meanwhile wins (``rmdir`` refuses a folder that is not empty,
        and ``_open_dir`` makes a removed one again); a link is never followed or removed."""
        import time

        *parents, name = self._parts(prefix.rstrip("/"))
        try:
            with self._dir(parents) as dfd:
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode) or st.st_mtime > time.time() - older_than_s:
                    return False
                os.rmdir(name, dir_fd=dfd)
                return True
        except OSError:
            return False

    def unchanged_for(self, prefix: str) -> float | None:
        """Since the newest modification time of the folder ``prefix``, the folders below it
        and every file in them, writers' temporary files too (a writer that has made the
        folder and is writing its first object shows there only so); links not followed.
        None if there is no such folder."""
        import time

        newest: float | None = None
        for _rel, _dirnames, filenames, fd in self._walk(prefix.rstrip("/")):
            times = [os.fstat(fd).st_mtime]
            for name in filenames:
                with contextlib.suppress(OSError):  # (removed meanwhile)
                    times.append(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mtime)
            newest = max(times) if newest is None else max(newest, *times)
        return None if newest is None else max(0.0, time.time() - newest)

    def delete(self, key: str) -> None:
        *dirs, name = self._parts(key)
        try:
            with self._dir(dirs) as dfd:
                os.unlink(name, dir_fd=dfd)
        except _ABSENT:
            pass
        except IsADirectoryError:  # (a folder of other objects: as on S3, no object has its name, so none goes)
            pass
        except OSError as exc:
            raise StoreError(f"cannot delete {key} from {self.url}: {_reason(exc)}; fix the store directory, or set "
                             "storage= to another one") from None

    def delete_prefix(self, prefix: str) -> int:
        # One walk from the bottom of the prefix's directory: its keys go, then the
        # directories left empty below it, and it; with a whole folder ("jobs/<job>/"),
        # the temporary files of writers that died mid-write too.
        base_dir = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        whole = prefix.endswith("/")
        removed = 0
        for rel_dir, dirnames, filenames, fd in self._walk(base_dir, topdown=False):
            head = f"{rel_dir}/" if rel_dir else ""
            for name in filenames:
                tmp = name.startswith(".tmp-")
                if (tmp and not whole) or (not tmp and not (head + name).startswith(prefix)):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=fd)
                    removed += not tmp
            if base_dir:
                for name in dirnames:  # (emptied already: a walk from the bottom)
                    with contextlib.suppress(OSError):
                        os.rmdir(name, dir_fd=fd)
        # Then the prefix's folder; under ``shuffle/``, also the shard's folder it leaves
        # empty (a map_reduce's ``shuffle/<shard>/<id>/`` leaves no ``shuffle/<shard>/``; a
        # writer that opened it meanwhile walks again, ``_open_dir``). No other parent goes:
        # removing the user's emptied ``data/a/`` after ``delete_prefix("data/a/b/")`` made a
        # ``put("data/a/x")`` racing it fail (its temporary file's folder gone between two tries).
        parts = [p for p in base_dir.split("/") if p not in ("", ".")]
        for depth in range(len(parts), 0, -1):
            if depth < len(parts) and (depth < 2 or f"{parts[0]}/" != keys.SHUFFLE):
                break
            try:
                with self._dir(parts[: depth - 1]) as dfd:
                    os.rmdir(parts[depth - 1], dir_fd=dfd)
            except OSError:
                break
        return removed


    def remove_stopped_writes(self, grace_s: float = 1.0) -> int:
        """Remove the temporary files (``.tmp-<pid>-...``) of writers that are gone,
        and the directories that held only those. A writer still running is given
        ``grace_s`` to end (a call's process killed a moment ago may not have
        exited yet); one that runs on is left alone. One walk of the store."""
        import time

        found: list[tuple[str, str, int]] = []  # (directory, name, writer's pid)
        for rel_dir, _dirs, files, _fd in self._walk(""):
            for name in files:
                pid = _writer_pid(name)
                if pid is not None:
                    found.append((rel_dir, name, pid))
        deadline = time.monotonic() + grace_s
        while True:
            running = {pid for _d, _n, pid in found if process_state.runs(pid)}
            if not running or time.monotonic() >= deadline:
                break
            time.sleep(0.02)
        removed = 0
        emptied: set[str] = set()
        for rel_dir, name, pid in found:
            if pid in running:
                continue
            parts = [p for p in rel_dir.split("/") if p]
            with contextlib.suppress(OSError), self._dir(parts) as dfd:
                os.unlink(name, dir_fd=dfd)
                removed += 1
                emptied.add(rel_dir)
        for rel_dir in sorted(emptied, key=lambda d: -d.count("/")):  # the deepest first, then up while empty
            parts = [p for p in rel_dir.split("/") if p]
            while parts:
                try:
                    with self._dir(parts[:-1]) as dfd:
                        os.rmdir(parts[-1], dir_fd=dfd)
                except OSError:
                    break  # not empty (or gone): what is above it holds something too
                parts.pop()
        return removed


def file_version(st: os.stat_result) -> str:
    """A file's identity, as a listing records it and a reader checks it: a ``put``
    writes a new file (another inode) and renames it in; a file rewritten in place
    (someone's own, ``objects("/path")``) gets a new modification time."""
    return f"{st.st_ino}-{st.st_mtime_ns}"


class FileReader(Reader):
    """Reads of one open file: the version it opened, whatever is renamed over its
    name meanwhile (an atomic ``put``), each read one ``pread`` (no open per block).
    A file that differs from what a listing saw, or that shrinks while it is read
    (rewritten in place: never by wrenpack), raises ``ObjectChanged``."""

    def __init__(self, fd: int, where: str, size: int | None = None, version: str | None = None) -> None:
        self._fd: int | None = fd
        self._where = where
        try:
            st = os.fstat(fd)
        except BaseException:
            self.close()
            raise
        now = file_version(st)
        if (version is not None and version != now) or (size is not None and size != st.st_size):
            self.close()
            why = f"{size} bytes then, {st.st_size} now" if size is not None and size != st.st_size else ""
            raise changed(where, listed=True, why=why)
        self._size, self.version = st.st_size, now

    def size(self) -> int:
        return self._size  # type: ignore[return-value]

    def _file(self) -> int:
        if self._fd is None:
            raise ValueError(f"read of {self._where} after it was closed")
        return self._fd

    def read(self, start: int, end: int) -> bytes:
        end = min(end, self._size)  # type: ignore[type-var]
        if end <= start:
            return b""
        data = os.pread(self._file(), end - start, start)
        if len(data) < end - start:  # (a regular file gives all of a pread within its size, unless it shrank)
            data += self._rest(start + len(data), end)
        return data

    def readinto(self, buf: Any, pos: int) -> int:
        view = memoryview(buf).cast("B")
        n = min(len(view), self._size - pos)  # type: ignore[operator]
        if n <= 0:
            return 0
        got = os.preadv(self._file(), [view[:n]], pos) if _PREADV else self._copy(view, pos, n)
        if got < n:
            more = self._rest(pos + got, pos + n)
            view[got:n] = more
        return n

    def _copy(self, view: memoryview, pos: int, n: int) -> int:
        data = os.pread(self._file(), n, pos)
        view[: len(data)] = data
        return len(data)

    def _rest(self, start: int, end: int) -> bytes:
        """The bytes a short read left, read again; ``ObjectChanged`` if the file ends early."""
        out = b""
        while start + len(out) < end:
            more = os.pread(self._file(), end - start - len(out), start + len(out))
            if not more:
                raise changed(self._where, listed=False, why=f"it was {self._size} bytes, now it ends at {start + len(out)}")
            out += more
        return out

    def buffer(self, start: int, end: int) -> Any:
        return LocalStore._map(self._file(), self._where, start, min(end, self._size))  # type: ignore[type-var]

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __del__(self) -> None:
        try:  # (a reader dropped unclosed: its descriptor goes with it)
            self.close()
        except Exception:  # noqa: BLE001 - at interpreter exit, os may be gone already
            pass


#: ``os.preadv`` reads straight into a stream's buffer (Linux, the BSDs); elsewhere ``pread`` and a copy
_PREADV = hasattr(os, "preadv")


def _writer_pid(name: str) -> int | None:
    """The process that writes a temporary file named ``.tmp-<pid>-...``; None for other names."""
    if not name.startswith(".tmp-"):
        return None
    head = name[5:].split("-", 1)[0]
    return int(head) if head.isdigit() else None


def _is_folder(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _lexists(name: str, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False


#: the name of a writer's temporary file (``LocalStore.put``: ``.tmp-<pid>-<thread>-<n>``)
_TMP_NAME = re.compile(r"\.tmp-\d+-\d+-\d+")


def sweep_tmp(store: LocalStore, older_than_s: float = 300.0) -> int:
    """Remove temporary files that writers killed mid-write left, older than
    ``older_than_s``; return how many. Only wrenpack's own (its writers' names, in
    the folders it writes): a ``.tmp-*`` file of the user's in a folder beside them
    is not one (the whole root was swept, whatever was in it)."""
    import time

    cutoff = time.time() - older_than_s
    removed = 0
    for prefix in keys.STORE_FOLDERS:
        for _rel, _dirs, files, fd in store._walk(prefix):
            for name in files:
                if _TMP_NAME.fullmatch(name):
                    with contextlib.suppress(OSError):
                        if os.stat(name, dir_fd=fd, follow_symlinks=False).st_mtime < cutoff:
                            os.unlink(name, dir_fd=fd)
                            removed += 1
    return removed


def _file_kind(mode: int) -> str:
    """What a non-regular file is, in a word."""
    for test, word in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISDIR, "directory"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device")):
        if test(mode):
            return word
    return "special file"


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _open_private_root(root: str) -> int:
    """Create ``root`` 0700 (parents too), or check that an existing one is private
    and not a link; a descriptor of it, opened without following a link."""
    me = os.geteuid()
    if os.path.islink(root):
        real = os.path.realpath(root)
        raise StoreError(f"the store path {root} is a symbolic link (to {real}), which could be swapped to move the "
                         f"store elsewhere; set storage={real} (the directory itself)")
    missing = []
    path = root
    while not os.path.lexists(path):
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
        fd = os.open(root, _DIR_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ENOTDIR:
            raise StoreError(f"the store path {root} exists but is not a directory; remove it or set storage= to another path") from None
        if exc.errno == errno.ELOOP:  # made a link since it was looked at
            raise StoreError(f"the store path {root} is a symbolic link, which could be swapped to move the store "
                             "elsewhere; set storage= to the directory itself") from None
        raise StoreError(f"cannot use the store directory {root} ({exc.strerror}); set storage= to a writable path") from None
    try:
        _check_private(root, os.fstat(fd), me)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_private(root: str, st: os.stat_result, me: int) -> None:
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
