"""The shuffle's object format: sections written once and read mapped, every one authenticated.

Each case runs on the local store (a file in /dev/shm that the reader maps:
``get_range_buffer``), on a store with only the default ``put_chunks`` /
``get_range_buffer`` (joined on write, copied on read), the path an S3 store
takes, and (``-m slow``: moto's server is slow to start) on S3 through moto.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import pytest

from wrenpack import auth, keys
from wrenpack.errors import CorruptObject, ObjectNotFound
from wrenpack.storage import Store
from wrenpack.storage import data as user_data
from wrenpack.storage.local import LocalStore
from wrenpack.worker import callscope, shuffle


class DictStore(Store):
    """Objects in a dict, with nothing but the contract's defaults for bulk reads and writes."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    @property
    def spec(self) -> dict[str, Any]:
        return {"type": "dict"}

    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> bool:
        self.objects[key] = bytes(data)
        return True

    def get(self, key: str) -> bytes:
        try:
            return self.objects[key]
        except KeyError:
            raise ObjectNotFound(key) from None

    def exists(self, key: str) -> bool:
        return key in self.objects

    def list(self, prefix: str) -> list[str]:
        return sorted(k for k in self.objects if k.startswith(prefix))

    def delete(self, key: str) -> None:
        self.objects.pop(key, None)


def _flip(store: Store, key: str, offset: int) -> None:
    """Flip one bit of the stored object, the way a disk or a writer would."""
    data = bytearray(store.get(key))
    data[offset] ^= 0x10
    store.put(key, bytes(data))


@pytest.fixture(params=["local-mapped", "store-default", pytest.param("s3", marks=pytest.mark.slow)])
def store(request, tmp_path):
    if request.param == "local-mapped":
        return LocalStore(tmp_path / "store")
    if request.param == "s3":  # S3 itself, through moto: one ranged GET per section
        pytest.importorskip("moto", reason="moto[server] is not installed")
        from wrenpack.storage.s3 import S3Store

        bucket = request.getfixturevalue("bucket")
        return S3Store(bucket, f"shuffle-format-{tmp_path.name}", endpoint_url=request.getfixturevalue("moto_endpoint"))
    return DictStore()


@pytest.fixture(autouse=True)
def _sealing_on(monkeypatch):
    monkeypatch.setattr(auth, "_enabled", True)


PARTS = [[("a", 1), ("b", 2)], b"raw bytes " * 1000, [], bytearray(b"xyz" * 50), {"k": list(range(100))}]


def test_sections_round_trip_with_their_types(store):
    secret = shuffle.new_secret()
    where = shuffle.put_sections(store, "fmt1", 3, secret, PARTS)
    assert where[2] is None  # an empty part is not written
    assert sum(len(store.list(p)) for p in shuffle.prefixes("fmt1")) == 1  # small parts share one object
    for p, part in enumerate(PARTS):
        if where[p] is None:
            continue
        got = shuffle.get_section(store, "fmt1", 3, p, secret, where[p])
        assert got == part and type(got) is type(part)


def test_numpy_arrays_come_back_without_a_pickle_of_their_data(store):
    np = pytest.importorskip("numpy")
    secret = shuffle.new_secret()
    arr = np.arange(100_000, dtype=np.float64).reshape(-1, 10)
    where = shuffle.put_sections(store, "fmt2", 0, secret, [arr, arr[:3]])
    got = shuffle.get_section(store, "fmt2", 0, 0, secret, where[0])
    assert (got == arr).all() and got.dtype == arr.dtype
    assert got.flags.aligned  # buffers sit at multiples of 64 in the object
    n, start, end = where[0]
    assert end - start < arr.nbytes + 1024  # the data once, a small header


@pytest.mark.parametrize("where_in", ["frame", "pickle header", "data", "trailer"])
def test_a_flipped_bit_in_a_partition_is_refused(store, where_in):
    secret = shuffle.new_secret()
    parts = [[("k", i) for i in range(200)], [("other", 1)], b"\x00" * 5000]
    where = shuffle.put_sections(store, "flip", 1, secret, parts)
    n, start, end = where[0]
    offset = {"frame": start + 5, "pickle header": start + 40, "data": start + (end - start) // 2,
              "trailer": end - 3}[where_in]
    _flip(store, shuffle.part_key("flip", 1, n), offset)
    with pytest.raises(CorruptObject, match="failed authentication.*nothing was unpickled"):
        shuffle.get_section(store, "flip", 1, 0, secret, where[0])
    # the other partitions' sections in the same object are still good
    assert shuffle.get_section(store, "flip", 1, 1, secret, where[1]) == [("other", 1)]


def test_a_flipped_bit_fails_the_reducer_task(store):
    """End to end inside the worker: the reduce task reads the altered partition and fails."""
    secret = shuffle.new_secret()
    task = shuffle.make_reducer(lambda p, parts: parts, "flip2", partitioned=True)
    where = shuffle.put_sections(store, "flip2", 0, secret, [b"x" * 4096, b"y" * 4096])
    user_data.bind(store)
    try:
        assert task(1, [(0, where[1])], secret)["value"] == [b"y" * 4096]
        _flip(store, shuffle.part_key("flip2", 0, where[1][0]), where[1][1] + 100)
        with pytest.raises(CorruptObject):
            task(1, [(0, where[1])], secret)
    finally:
        user_data.bind(None)


def test_a_section_cannot_pass_for_another_partition_or_mapper(store):
    secret = shuffle.new_secret()
    where = shuffle.put_sections(store, "swap", 0, secret, [[1], [2]])
    with pytest.raises(CorruptObject):
        shuffle.get_section(store, "swap", 0, 1, secret, where[0])  # partition 0's bytes asked for as 1's
    store.put(shuffle.part_key("swap", 1, 0), store.get(shuffle.part_key("swap", 0, 0)))
    with pytest.raises(CorruptObject):
        shuffle.get_section(store, "swap", 1, 0, secret, where[0])  # copied to another mapper's key
    with pytest.raises(CorruptObject):
        shuffle.get_section(store, "swap", 0, 0, shuffle.new_secret(), where[0])  # another job's secret


def test_the_previous_format_is_refused(store):
    """``WSF1`` objects (one per partition, sealed as a whole) never outlive their job: refused, not read."""
    secret = shuffle.new_secret()
    key = shuffle.part_key("old", 0)
    old = b"WSF1" + b"\x00" * 16 + pickle.dumps([1])
    store.put(key, auth.seal(secret, key, old))
    with pytest.raises(CorruptObject, match="not a wrenpack shuffle object of this version"):
        shuffle.get(store, key, secret)


def test_a_frame_that_lies_about_its_lengths_is_refused_before_anything_is_trusted(store):
    secret = shuffle.new_secret()
    key = shuffle.part_key("lie", 0)
    store.put(key, b"WSF2" + (10**12).to_bytes(8, "little") + b"\x00" * 64)
    with pytest.raises(CorruptObject, match="bad frame"):
        shuffle.get(store, key, secret)


def test_both_macs_verify_and_say_which_they_are(monkeypatch, store):
    """HMAC-SHA256 (``WPA1``) without blake3; keyed BLAKE3 (``WPB3``) with it; a reader
    without blake3 refuses a BLAKE3 object, saying what to install."""
    secret = shuffle.new_secret()
    monkeypatch.setattr(auth, "_blake3", None)
    where = shuffle.put_sections(store, "mac", 0, secret, [b"h" * 100])
    blob = store.get(shuffle.part_key("mac", 0, 0))
    assert blob[-auth.TRAILER_BYTES:-auth.TAG_BYTES] == auth.MAGIC
    assert shuffle.get_section(store, "mac", 0, 0, secret, where[0]) == b"h" * 100
    blake3 = auth._load_blake3()
    if blake3 is None:
        pytest.skip("blake3 is not installed (pip install blake3): its half of the test needs it")
    monkeypatch.setattr(auth, "_blake3", blake3)
    where = shuffle.put_sections(store, "mac", 1, secret, [b"b" * 100])
    blob = store.get(shuffle.part_key("mac", 1, 0))
    assert blob[-auth.TRAILER_BYTES:-auth.TAG_BYTES] == auth.MAGIC_B3
    assert shuffle.get_section(store, "mac", 1, 0, secret, where[0]) == b"b" * 100
    monkeypatch.setattr(auth, "_blake3", None)
    with pytest.raises(CorruptObject, match="pip install blake3"):
        shuffle.get_section(store, "mac", 1, 0, secret, where[0])


#: One section's bytes, frozen: a change to the format or the MAC fails here (bump the
#: format's magic, and keep reading or refusing the old one on purpose). The MAC covers the
#: object's key (``shuffle.identity``): the tags changed, and nothing else, when the shard
#: moved before the id in the key (``shuffle/<shard>/<id>/``).
_SECRET = bytes(range(32))
_GOLDEN = {
    "hmac-sha256": ("57534632000000000000000017000000000000008005950c000000000000005d948c016b944b018694612e575041319a"
        "56ebff4bd3571a16950c51d858b85effbdc06ee044cabaff89a5d9cda0c2df0000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000057535232010000000000000005000000"
        "000000000300000000000000627974657300000000000000000000000000000000000000000000000000000000000000"
        "7261775750413170d76dfd554a0df18b36ab27a252403aabe77eedf6ca11662f5f58385893c9f8"),
    "blake3": ("57534632000000000000000017000000000000008005950c000000000000005d948c016b944b018694612e5750423384"
        "e08d093b4755d60c96bd23c5172d51c4fc366b32a0685df2fd80c7dfb017250000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000057535232010000000000000005000000"
        "000000000300000000000000627974657300000000000000000000000000000000000000000000000000000000000000"
        "7261775750423344e026ad37997596fb9bde387c74d75f36bd59c43031b1481bdeb706ecef223f"),
}


def _golden_section(monkeypatch, mac: str) -> bytes:
    store = DictStore()
    monkeypatch.setattr(auth, "_blake3", None if mac == "hmac-sha256" else auth._load_blake3())
    shuffle.put_sections(store, "golden", 7, _SECRET, [[], [("k", 1)], b"raw"])
    return store.get(shuffle.part_key("golden", 7, 0))


@pytest.mark.parametrize("mac", sorted(_GOLDEN))
def test_section_bytes_are_the_golden_bytes(monkeypatch, mac):
    if mac == "blake3" and auth._load_blake3() is None:
        pytest.skip("blake3 is not installed (pip install blake3)")
    assert _golden_section(monkeypatch, mac).hex() == _GOLDEN[mac]


def test_plan_objects_combines_small_partitions_and_keeps_large_ones_alone():
    assert shuffle.plan_objects([5, 0, 5, 5, 20, 1], target=10) == [[0, 2], [3], [4], [5]]
    assert shuffle.plan_objects([0, 0]) == []


# -- where the objects are ------------------------------------------------------------
def test_bulk_keys_of_two_shuffles_share_their_start_up_to_the_shard():
    """S3 splits a bucket's keyspace into partitions (each ~3,500 PUT and 5,500 GET/s) only
    after minutes of load: the shard comes before the random id (``shuffle/<shard>/<id>/``),
    so the splits one map_reduce's load made at ``shuffle/<shard>/`` serve the next one
    (before: ``shuffle/<id>/<shard>/``, a range no split had ever touched, every time)."""
    a, b = "0123456789ab", "ba9876543210"
    for index in (0, 1, 5, 63, 64, 1000):
        for make in (lambda s, i=index: keys.shuffle_part_key(s, i, 2), lambda s, i=index: keys.shuffle_index_key(s, i),
                     lambda s, i=index: keys.shuffle_tree_key(s, 3, i)):
            ka, kb = make(a).split("/"), make(b).split("/")
            assert ka[:2] == kb[:2] == ["shuffle", keys.shuffle_shard(index)], (ka, kb)
            assert (ka[2], kb[2]) == (a, b) and ka[3:] == kb[3:]
            assert make(a).startswith(keys.shuffle_shard_prefix(a, index))
            assert sum(make(a).startswith(p) for p in keys.shuffle_prefixes(a, index + 1)) == 1
    # The map_reduce's own objects: one folder, whose name is never a shard's.
    assert keys.shuffle_owner_key(a).startswith(keys.shuffle_prefix(a))
    assert keys.shuffle_abort_key(a).startswith(keys.shuffle_prefix(a))
    shards = {keys.shuffle_shard(n) for n in range(keys.SHUFFLE_SHARDS)}
    assert len(shards) == keys.SHUFFLE_SHARDS
    assert all(keys.is_shuffle_shard(s) and not keys.is_shuffle_id(s) for s in shards)
    assert keys.is_shuffle_id(a) and not keys.is_shuffle_shard(a) and not keys.is_shuffle_shard("ff")
    assert keys.shuffle_prefixes(a, 2) == [f"shuffle/00/{a}/", f"shuffle/01/{a}/", f"shuffle/{a}/"]
    assert len(keys.shuffle_prefixes(a, 10**6)) == keys.SHUFFLE_SHARDS + 1


def _folders(root) -> list[str]:
    return sorted(os.path.relpath(d, root) for d, _dirs, _files in os.walk(root) if d != str(root))


def test_removing_a_shuffle_leaves_no_folder_and_the_others_in_its_shards(tmp_path):
    store = LocalStore(str(tmp_path / "store"))
    a, b = "0123456789ab", "ba9876543210"
    for m in range(4):
        store.put(keys.shuffle_part_key(a, m), b"x")
        store.put(keys.shuffle_index_key(a, m), b"x")
    store.put(keys.shuffle_owner_key(a), b"x")
    store.put(keys.shuffle_part_key(b, 1), b"y")
    assert store.delete_prefixes(keys.shuffle_prefixes(a, 4)) == 9
    assert store.list("shuffle/") == [keys.shuffle_part_key(b, 1)]
    assert _folders(tmp_path / "store") == ["shuffle", "shuffle/01", f"shuffle/01/{b}"]
    assert store.delete_prefixes(keys.shuffle_prefixes(b, 2)) == 1
    assert _folders(tmp_path / "store") == ["shuffle"]  # (the store's own top folder stays)


def test_removing_a_users_prefix_keeps_the_folder_above_it_for_a_put_racing_it(tmp_path):
    """Only a shuffle's shard folder goes with the last prefix under it: removing the user's
    emptied ``data/a/`` after ``delete_prefix("data/a/b0/")`` made a ``put("data/a/x")``
    beside it fail with StoreError ("No such file or directory")."""
    store = LocalStore(str(tmp_path / "store"))
    store.put("data/a/b/y", b"v")
    store.delete_prefix("data/a/b/")
    assert _folders(tmp_path / "store") == ["data", "data/a"]
    failed: list[str] = []
    end = time.monotonic() + 1.5

    def writer() -> None:
        while time.monotonic() < end:
            try:
                store.put("data/a/x", b"v")
            except Exception as exc:  # noqa: BLE001 - collected
                failed.append(repr(exc))
            store.delete("data/a/x")

    def remover(i: int) -> None:
        while time.monotonic() < end:
            store.put(f"data/a/b{i}/y", b"v")
            store.delete_prefix(f"data/a/b{i}/")

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=remover, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failed == [], failed[:3]


def test_a_write_into_a_shard_whose_folder_a_removal_empties_meanwhile_succeeds(tmp_path):
    """Two map_reduces share ``shuffle/<shard>/``: the removal of one's objects removes the
    folder when it is left empty, maybe just after the other's writer opened it; that writer
    makes it again (before the fix: an error, "No such file or directory")."""
    store = LocalStore(str(tmp_path / "store"))
    a = "0123456789ab"
    stop = threading.Event()
    failed: list[BaseException] = []

    def churn() -> None:  # one map_reduce's objects in shard 05, written and removed over and over
        try:
            while not stop.is_set():
                store.put(keys.shuffle_part_key(a, 5), b"x")
                store.delete_prefix(keys.shuffle_shard_prefix(a, 5))
        except BaseException as exc:  # noqa: BLE001 - the test's failure, below
            failed.append(exc)

    thread = threading.Thread(target=churn)
    thread.start()
    try:
        for n in range(3000):
            other = f"{n + 1:012x}"
            store.put(keys.shuffle_part_key(other, 5), b"y")
            store.delete_prefix(keys.shuffle_shard_prefix(other, 5))
    finally:
        stop.set()
        thread.join()
    assert not failed, failed
    assert store.list("shuffle/") == [] and _folders(tmp_path / "store") == ["shuffle"]


# -- what a reducer gives back, and what it must keep -------------------------------
def _blocks(store: LocalStore, key: str) -> int:
    return os.stat(os.path.join(store.root, key)).st_blocks


def _skip_unless_ranges_free(store: LocalStore, where: object) -> None:
    store.put("probe", bytes(3 * 4096))
    if store.release_range("probe", 0, 3 * 4096) == 0:
        pytest.skip(f"the file system of {where} cannot free a range of a file (no MADV_REMOVE)")
    store.delete("probe")


def test_release_range_frees_whole_pages_inside_the_range_only(tmp_path):
    store = LocalStore(tmp_path / "store")
    _skip_unless_ranges_free(store, tmp_path)
    store.put("obj", b"a" * 5000 + b"b" * 20000 + b"c" * 5000)
    before = _blocks(store, "obj")
    freed = store.release_range("obj", 5000, 25000)
    assert freed == 16384  # pages 2..5: the pages at the edges hold the neighbours' bytes too
    assert _blocks(store, "obj") < before
    data = store.get("obj")
    assert data[:5000] == b"a" * 5000 and data[25000:] == b"c" * 5000  # the neighbours are intact
    assert data[8192:24576] == bytes(16384) and data[5000:8192] == b"b" * 3192
    assert store.release_range("missing", 0, 10_000) == 0 and store.release_range("obj", 100, 4000) == 0


def test_a_mappers_index_gives_each_reducer_its_own_entry(tmp_path):
    """A mapper's index is a flat table a reducer reads its own entry from (an empty
    partition has none): not a list of R tuples each reducer unpickled, which made a
    shuffle's early reducers quadratic in the partitions."""
    store = LocalStore(tmp_path / "store")
    secret = shuffle.new_secret()
    sections = [(0, 0, 10), None, (1, 4096, 5000), (1, 5000, 5001)]
    shuffle.put_index(store, "idx", 3, secret, sections)
    for p, where in enumerate(sections):
        assert shuffle._wait_for(store, "idx", p, secret, [3], budget=1.0) == ([(3, where)] if where else [])
    shuffle.put(store, shuffle.keys.shuffle_index_key("idx", 4), secret, sections)  # sealed, but not an index
    with pytest.raises(CorruptObject, match="not a mapper's index"):
        shuffle._wait_for(store, "idx", 0, secret, [4], budget=1.0)


def test_a_reducer_gives_back_its_sections_and_they_are_not_read_again(tmp_path):
    """A reducer whose result has gone frees the section's memory in the store; what
    is read there afterwards fails authentication instead of passing as data."""
    store = LocalStore(tmp_path / "store")
    _skip_unless_ranges_free(store, tmp_path)
    secret = shuffle.new_secret()
    parts = [b"x" * 100_000, b"y" * 100_000]
    where = shuffle.put_sections(store, "rel1", 0, secret, parts)
    key = shuffle.part_key("rel1", 0, where[0][0])
    before = _blocks(store, key)
    task = shuffle.make_reducer(lambda p, got: sum(len(g) for g in got), "rel1", partitioned=True)
    user_data.bind(store)
    try:
        assert task(0, [(0, where[0])], secret)["value"] == 100_000
        assert _blocks(store, key) == before  # (kept until the result has gone: a run again reads them)
        callscope.run_after_reply()  # (as the handler does once the reply has gone)
    finally:
        user_data.bind(None)
    assert _blocks(store, key) < before
    with pytest.raises(CorruptObject, match="failed authentication"):
        shuffle.get_section(store, "rel1", 0, 0, secret, where[0])
    assert shuffle.get_section(store, "rel1", 0, 1, secret, where[1]) == parts[1]  # the other partition's is kept


def test_a_section_the_reducers_value_points_into_is_kept(tmp_path):
    """A value that is a view of the mapped section (numpy arrays are not copied on
    read) keeps the section's bytes: they are still the value's."""
    np = pytest.importorskip("numpy")
    store = LocalStore(tmp_path / "store")
    secret = shuffle.new_secret()
    arr = np.arange(200_000, dtype=np.int64)
    where = shuffle.put_sections(store, "rel2", 0, secret, [arr, arr[:10]])
    task = shuffle.make_reducer(lambda p, got: got[0][::2], "rel2", partitioned=True)
    user_data.bind(store)
    try:
        value = task(0, [(0, where[0])], secret)["value"]
        callscope.run_after_reply()
    finally:
        user_data.bind(None)
    assert (value == arr[::2]).all()
    assert (shuffle.get_section(store, "rel2", 0, 0, secret, where[0]) == arr).all()


def test_a_shuffle_task_keeps_freed_memory_for_the_next_one():
    """After ``reuse_freed_memory`` a large block freed and allocated again costs no new
    page faults (glibc would otherwise unmap it and map fresh memory: first touch)."""
    probe = textwrap.dedent("""
        import resource, sys
        from wrenpack.worker import shuffle
        if sys.argv[1] == "reuse" and not shuffle.reuse_freed_memory():
            sys.exit("no glibc mallopt")
        block = bytearray(64 << 20)  # allocated and zeroed: touched
        del block
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = bytearray(64 << 20)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """)
    runs = {how: subprocess.run([sys.executable, "-c", probe, how], capture_output=True, text=True)
            for how in ("reuse", "default")}
    if "no glibc mallopt" in runs["reuse"].stderr:
        pytest.skip("glibc's mallopt is not available here")
    faults = {how: int(run.stdout) for how, run in runs.items()}
    assert faults["reuse"] < 8 < faults["default"], faults


def test_a_reducer_waiting_on_the_local_store_looks_often(tmp_path, monkeypatch):
    """A look-up in the local store costs microseconds: a waiting reducer's interval stays
    at most ``LocalStore.max_poll_s`` (it grows toward half a second on S3, where each is a GET)."""
    store = LocalStore(tmp_path / "store")
    secret = shuffle.new_secret()
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 30:  # the mapper writes its index at last
            shuffle.put_index(store, "poll", 0, secret, [(0, 0, 10)])

    monkeypatch.setattr(shuffle.time, "sleep", sleep)
    assert shuffle._wait_for(store, "poll", 0, secret, [0], budget=60.0) == [(0, (0, 0, 10))]
    assert len(slept) == 30 and max(slept) <= LocalStore.max_poll_s
    assert slept[0] == shuffle._POLL[0]
