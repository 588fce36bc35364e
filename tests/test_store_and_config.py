"""The local object store, the result format, corrupt objects, configuration."""
from __future__ import annotations

import os
import threading

import pytest

import wrenpack
from wrenpack import keys
from wrenpack.config import Config
from wrenpack.errors import ConfigError, CorruptObject, ObjectNotFound
from wrenpack.storage import open_store
from wrenpack.storage.base import Store
from wrenpack.storage.local import LocalStore
from wrenpack.wire import result


def test_local_store_basics(tmp_path):
    s = LocalStore(tmp_path)
    assert s.put("a/b/c.bin", b"123")
    assert s.get("a/b/c.bin") == b"123"
    assert s.get_range("a/b/c.bin", 1, 3) == b"23"
    assert s.exists("a/b/c.bin") and not s.exists("a/b/x")
    s.put("a/b/d.bin", b"4")
    s.put("a/e.bin", b"5")
    assert s.list("a/b/") == ["a/b/c.bin", "a/b/d.bin"]
    assert s.list("a/") == ["a/b/c.bin", "a/b/d.bin", "a/e.bin"]
    with pytest.raises(ObjectNotFound):
        s.get("nope")
    assert s.delete_prefix("a/b/") == 2
    assert s.list("a/") == ["a/e.bin"]
    s.delete("a/e.bin")
    s.delete("a/e.bin")  # absent: no error


def test_list_folders_one_level_without_empty_or_linked_folders(tmp_path):
    """The jobs of a store come from one level (``wrenpack jobs``, ``clean``):
    empty folders and links are none of the store's jobs."""
    store = LocalStore(str(tmp_path / "s"))
    for key in ("jobs/a/x.pkl", "jobs/a/result/0/1.res", "jobs/b/c/d.pkl", "jobs/loose.txt", "other/z/y"):
        store.put(key, b"x")
    (tmp_path / "s" / "jobs" / "empty").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "f").write_bytes(b"x")
    os.symlink(tmp_path / "elsewhere", tmp_path / "s" / "jobs" / "linked")
    assert store.list_folders("jobs/") == ["a", "b"]
    assert store.list_folders("jobs/b/") == ["c"]
    assert store.list_folders("nothing/") == []
    # The default (a store without its own) agrees, from the full listing.
    assert Store.list_folders(store, "jobs/") == ["a", "b"]


def test_if_absent_first_write_wins_under_races(tmp_path):
    s = LocalStore(tmp_path)
    wins = []

    def writer(i):
        wins.append((i, s.put("k", str(i).encode(), if_absent=True)))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, won in wins if won]
    assert len(winners) == 1
    assert s.get("k") == str(winners[0]).encode()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp")]


def test_store_rejects_escaping_keys(tmp_path):
    s = LocalStore(tmp_path)
    with pytest.raises(wrenpack.StoreError):
        s.put("../evil", b"x")


def test_open_store_urls(tmp_path):
    assert isinstance(open_store(str(tmp_path)), LocalStore)
    assert open_store(f"file://{tmp_path}").root == str(tmp_path)
    assert open_store(open_store(str(tmp_path)).spec).root == str(tmp_path)
    with pytest.raises(ConfigError, match="unsupported store URL"):
        open_store("ftp://x/y")


def test_store_location_problems_name_the_fix_and_objects_stays_lenient():
    from wrenpack.storage import parse_store_url, store_location_problem

    # (probe12: prefixes an earlier wrenpack accepted, whose stores must stay reachable)
    for good in ("s3://bkt", "s3://bkt/", "s3://bkt/x", "s3://bkt/x/", "s3://bkt/x//", "s3://bkt/a-b_c.d/e=1/f+g,h@i/(j)'k'!",
                 "s3://bkt/donn\u00e9es", "s3://bkt/cafe\u0301", "s3://bkt/team:ml", "s3://bkt/a~b", "s3://bkt/a&b",
                 "s3://bkt/my data", "s3://bkt/a*", "s3://bkt/${aws:username}", "s3://bkt/a#b", "/tmp/x", "~/x", "rel/x",
                 "file:///tmp/x"):
        assert store_location_problem(good) is None, good
    for bad, said in (("s3://bkt/../x", "'..' segments"), ("s3://bkt/x/..", "'..' segments"),
                      ("s3://bkt/./x", "'.' segments"), ("s3://bkt//x", "begin with '/'"),
                      ("s3://bkt/x//y", "contain '//'"), ("s3://bkt/a\tb", "a tab"), ("s3://bkt/a\u200bb", "'\\u200b'"),
                      ("s3://bkt/a\nb", "a line break"), (" /tmp/x", "spaces around it"), ("s3://bkt/x ", "spaces around it")):
        problem = store_location_problem(bad)
        assert problem is not None and said in problem and "\n" not in problem, (bad, problem)
    assert store_location_problem("s3://bkt/../x").endswith("e.g. s3://bkt/x")
    # a file URL is absolute, localhost's too (probe12: it was refused from WRENPACK_STORAGE as relative)
    from wrenpack.config import _storage
    assert _storage("file://localhost/tmp/x", "environment variable WRENPACK_STORAGE") == "file://localhost/tmp/x"
    with pytest.raises(ConfigError, match="relative path"):
        _storage("rel/x", "environment variable WRENPACK_STORAGE")
    assert store_location_problem("s3://bkt/..").endswith("e.g. s3://bkt/wrenpack")
    # The parser stays as lenient as keys are: wrenpack.objects reads the user's own data through it.
    assert parse_store_url("s3://bkt/my data/2024 report/") == {"type": "s3", "bucket": "bkt", "prefix": "my data/2024 report"}


def test_result_format_roundtrip_and_corruption():
    blob = result.pack({"exit": "ok"}, b"payload")
    assert result.unpack(blob) == ({"exit": "ok"}, b"payload")
    for bad in (b"", b"garbage!", blob[:10]):
        with pytest.raises(CorruptObject):
            result.unpack(bad)


def test_corrupt_result_object_fails_that_call_only(tmp_path, monkeypatch):
    from wrenpack.backends.local import LocalBackend

    # Result objects (sealed, through the store): small results on the local backend
    # otherwise come back over the worker's private socket (tests/test_private_reply.py).
    ex = wrenpack.Executor(storage=str(tmp_path / "store"), backend=LocalBackend(concurrency=2, reply_limit=0))
    try:
        original = ex._read_outcome

        def corrupting(job, cid, label, data=None):
            if cid == keys.call_id(1):
                data = b"WRP1\x00\x00\x00\x02{}" + b"not a pickle"
            return original(job, cid, label, data)

        monkeypatch.setattr(ex, "_read_outcome", corrupting)
        futs = wrenpack.remote(abs, executor=ex).map([-1, -2, -3])
        assert futs[0].result() == 1 and futs[2].result() == 3
        with pytest.raises(CorruptObject, match=r"result/1/00001.res failed authentication.*nothing was unpickled"):
            futs[1].result()
    finally:
        ex.shutdown()


def test_config_precedence(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").write_text('[tool.wrenpack]\nmemory = 2048\ntimeout = 30\nstorage = "objs"\n')
    monkeypatch.chdir(tmp_path)
    c = Config.load()
    assert c.memory == 2048 and c.timeout == 30.0
    assert c.storage == str(tmp_path / "objs")
    monkeypatch.setenv("WRENPACK_MEMORY", "3000")
    assert Config.load().memory == 3000
    assert Config.load(memory=512).memory == 512
    assert Config.load().backend == "local"


def test_config_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text("[tool.wrenpack]\nmemroy = 1\n")
    with pytest.raises(ConfigError, match="unknown wrenpack setting 'memroy'"):
        Config.load()
    (tmp_path / "pyproject.toml").write_text("[tool.wrenpack]\n")
    monkeypatch.setenv("WRENPACK_CONCURRENCY", "lots")
    with pytest.raises(ConfigError, match=r"concurrency='lots' \(from environment variable WRENPACK_CONCURRENCY\) must be a whole number >= 1"):
        Config.load()
    monkeypatch.setenv("WRENPACK_CONCURRENCY", "2")
    monkeypatch.setenv("WRENPACK_BACKEND", "mainframe")
    with pytest.raises(ConfigError, match=r"backend='mainframe' \(from environment variable WRENPACK_BACKEND\) must be one of"):
        wrenpack.Executor()


def test_worker_handler_imports_only_stdlib_and_cloudpickle():
    import subprocess
    import sys

    code = (
        "import sys; before = set(sys.modules); import wrenpack.worker.handler, wrenpack.worker.local_main; "
        "new = {m.split('.')[0] for m in set(sys.modules) - before}; "
        "bad = sorted(m for m in new if m not in sys.stdlib_module_names and m not in ('wrenpack', 'cloudpickle', '__mp_main__')); "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_public_names_are_not_shadowed_by_submodules():
    import importlib
    import importlib.util
    import pkgutil

    import wrenpack as wp

    submodules = {m.name for m in pkgutil.iter_modules(wp.__path__)}
    assert not submodules & set(wp.__all__), "an imported submodule would replace the public attribute"
    for name in wp.__all__:
        if name != "__version__" and importlib.util.find_spec(wp._LAZY[name]) is not None:
            assert getattr(wp, name) is not None
    importlib.import_module("wrenpack.remote_function")
    assert callable(wp.remote) and callable(wp.checkpoint)


def test_a_key_that_is_a_folder_of_other_objects_is_no_object_and_cannot_be_written(tmp_path):
    """In a local store ``dir/a`` makes ``dir`` a folder. As on S3, no object is
    named ``dir``: its size and read are ObjectNotFound (size gave the folder's
    4096 bytes, get a CorruptObject blaming whoever wrote it). Writing ``dir`` (or
    under the object ``dir/a``) cannot work in folders where it does on S3: one
    line saying so (it said "free space"), and ``if_absent`` no longer answers
    "already there" for a key no object holds."""
    from wrenpack.errors import StoreError
    from wrenpack.storage.local import LocalStore

    s = LocalStore(str(tmp_path / "s"))
    s.put("dir/a", b"x")
    assert not s.exists("dir")
    for read in (lambda: s.size("dir"), lambda: s.get("dir"), lambda: s.get_range("dir", 0, 1)):
        with pytest.raises(ObjectNotFound, match="not found"):
            read()
    for write in (lambda: s.put("dir", b"y"), lambda: s.put("dir", b"y", if_absent=True),
                  lambda: s.put_chunks("dir", [b"y"])):
        with pytest.raises(StoreError, match="an object cannot have the name of a folder of others .*use another key"):
            write()
    with pytest.raises(StoreError, match="nothing can go under one .*use another key"):
        s.put("dir/a/b", b"y")
    assert s.get("dir/a") == b"x" and s.list("dir") == ["dir/a"]


def _every_key_operation(s, key):
    return {"put": lambda: s.put(key, b"1"), "put if_absent": lambda: s.put(key, b"1", if_absent=True),
            "put_chunks": lambda: s.put_chunks(key, [b"1"]), "get": lambda: s.get(key),
            "get_range": lambda: s.get_range(key, 0, 1), "get_buffer": lambda: s.get_buffer(key),
            "size": lambda: s.size(key), "exists": lambda: s.exists(key), "delete": lambda: s.delete(key)}


def test_a_key_part_longer_than_a_file_name_is_one_line_for_every_operation(tmp_path):
    """A local store keeps each '/'-separated part of a key as a file name (at most 255 bytes):
    delete() of a longer one raised a bare OSError (File name too long), the reads a
    StoreError, put one saying to free space. Every operation now refuses it alike, naming the
    limit, before touching the file system; a listing under such a prefix is empty."""
    from wrenpack.errors import StoreError

    s = LocalStore(str(tmp_path / "s"))
    for key in ("x" * 300, "d/" + "y" * 256, "z" * 256 + "/a"):
        for op, call in _every_key_operation(s, key).items():
            with pytest.raises(StoreError, match=r"invalid store key .*: its part .* is (256|300) bytes") as info:
                call()
            msg = str(info.value)
            assert "at most 255 bytes" in msg and "free space" not in msg and "\n" not in msg, (op, msg)
        assert s.release_range(key, 0, 1 << 20) == 0
    for prefix in ("x" * 300, "x" * 300 + "/", "a/" + "x" * 300 + "/b"):
        assert s.list(prefix) == [] and s.list_sizes(prefix) == [] and s.delete_prefix(prefix) == 0
        assert s.list_folders(prefix) == []
    s.put("d/" + "y" * 255, b"1")  # (the longest a part can be)
    assert s.list("d/") == ["d/" + "y" * 255] and s.delete_prefix("d/") == 1


def test_delete_of_a_folder_of_other_objects_is_no_error_and_other_failures_one_line(tmp_path, monkeypatch):
    """As on S3, no object is named 'dir' when 'dir/a' exists: its delete is that of a key not
    there (no error, 'dir/a' stays); it raised a bare IsADirectoryError. Any other failure of the
    file system is a StoreError in one line (it was a bare OSError)."""
    from wrenpack.errors import StoreError

    s = LocalStore(str(tmp_path / "s"))
    s.put("dir/a", b"x")
    s.delete("dir")
    assert s.get("dir/a") == b"x"

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "unlink", refused)
    with pytest.raises(StoreError, match=r"cannot delete dir/a from file://.*: Permission denied") as info:
        s.delete("dir/a")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("value", ["~/wp-cache", "  "])
def test_every_cache_folder_follows_the_one_cache_dir_rule(value, tmp_path, monkeypatch):
    # the owner key and the runtime cache had copies of the rule: WRENPACK_CACHE_DIR="~/x" (a unit
    # file or .env, no shell to expand it) put them under a folder named "~" in the working directory,
    # a blank value made a folder of spaces, while the rest went to the expanded or default folder
    from runtime_builder.pipeline import default_cache_dir
    from wrenpack.config import cache_dir
    from wrenpack.executor.owner import key_path

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("WRENPACK_CACHE_DIR", value)
    base = cache_dir()
    assert base == (str(tmp_path / "wp-cache") if value.strip() else str(tmp_path / ".cache" / "wrenpack"))
    assert key_path() == os.path.join(base, "owner.key")
    assert default_cache_dir() == os.path.join(base, "runtimes")
