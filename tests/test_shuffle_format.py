"""The shuffle's object format: sections written once and read mapped, every one authenticated.

Each case runs on the local store (a file in /dev/shm that the reader maps:
``get_range_buffer``), on a store with only the default ``put_chunks`` /
``get_range_buffer`` (joined on write, copied on read), the path an S3 store
takes, and (``-m slow``: moto's server is slow to start) on S3 through moto.
"""
from __future__ import annotations

import pickle
from typing import Any

import pytest

from wrenpack import auth
from wrenpack.errors import CorruptObject, ObjectNotFound
from wrenpack.storage import Store
from wrenpack.storage import data as user_data
from wrenpack.storage.local import LocalStore
from wrenpack.worker import shuffle


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
    assert len(store.list(shuffle.prefix("fmt1"))) == 1  # small parts share one object
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
#: format's magic, and keep reading or refusing the old one on purpose).
_SECRET = bytes(range(32))
_GOLDEN = {
    "hmac-sha256": ("57534632000000000000000017000000000000008005950c000000000000005d948c016b944b018694612e575041311a"
        "a8ae5d4286afae6ae5857e426ccbde30568a4863ff93929e8549f3e10fd1260000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000057535232010000000000000005000000"
        "000000000300000000000000627974657300000000000000000000000000000000000000000000000000000000000000"
        "726177575041317def91921d86e07cb23c384e8d7c814379a7985606ab2658ebf18bfb2fb1a340"),
    "blake3": ("57534632000000000000000017000000000000008005950c000000000000005d948c016b944b018694612e5750423308"
        "fd22daeb5f20c85b8fcb6a658899ec881cd4d2ec8a9553c5f52c10b471ce000000000000000000000000000000000000"
        "000000000000000000000000000000000000000000000000000000000000000057535232010000000000000005000000"
        "000000000300000000000000627974657300000000000000000000000000000000000000000000000000000000000000"
        "72617757504233a504c07220ff07a248b7a574101cbba744902e06694d4911fe2e88faff226fdd"),
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
