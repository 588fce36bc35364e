"""The storage handle and maps over stored data (object ranges, chunk edges)."""
from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import pytest

import wrenpack
from wrenpack.errors import ConfigError, StoreError
from wrenpack.storage import open_store
from wrenpack.storage.data import DataStore, ObjectRange, objects


@pytest.fixture
def data(tmp_path):
    return DataStore(open_store(str(tmp_path / "store")))


def test_storage_handle_roundtrip_under_data_prefix(data):
    data.put("a/x.bin", b"hello world")
    data.put("a/y.bin", bytearray(b"12345"))
    assert data.get("a/x.bin") == b"hello world"
    assert data.get("a/x.bin", 6) == b"world"
    assert data.get("a/x.bin", 0, 5) == b"hello"
    assert data.open("a/x.bin", 6).read() == b"world"
    assert data.list("a/") == ["a/x.bin", "a/y.bin"]
    assert data.size("a/y.bin") == 5 and data.exists("a/y.bin")
    assert data.store.list("data/") == ["data/a/x.bin", "data/a/y.bin"]  # not among jobs/
    data.delete("a/y.bin")
    assert data.list() == ["a/x.bin"]
    assert data.delete_prefix("a/") == 1 and data.list() == []


@pytest.mark.parametrize("start, end", [(2, 5), (5, 2), (-3, None), (None, -3), (-3, -1), (8, 100), (100, 200),
                                        (-100, 3), (0, 0), (3, None), (None, 4),
                                        # offsets past any object (get(k, 0, 10**30) was a bare OverflowError)
                                        (0, 10**30), (0, 2**63), (3, 2**63 - 1), (10**30, None), (-10**30, 2),
                                        (10**30, 10**31), (-10**30, 10**30), (None, -10**30)])
def test_a_range_of_an_object_is_what_slicing_its_bytes_gives(data, start, end):
    whole = data.put("r/x", b"0123456789") or b"0123456789"
    assert data.get("r/x", start, end) == whole[start:end]  # (a negative start was an OSError)
    assert data.open("r/x", start or 0, end).read() == whole[start or 0 : end]


def test_a_range_that_is_not_byte_offsets_is_one_line(data):
    data.put("r/x", b"0123456789")
    for start, end in (("1", None), (True, None), (0, 2.5)):
        with pytest.raises(TypeError, match=r"get\(start=.*must be a byte offset") as info:
            data.get("r/x", start, end)
        assert isinstance(info.value, ConfigError) and "\n" not in str(info.value)
    with pytest.raises(TypeError, match=r"open\(start='1'"):
        data.open("r/x", "1")


def test_whole_number_arguments_take_any_integral_type_but_bool(data, tmp_path):
    """partitions=np.int64(2) and fan_in=np.int32(3) were taken, objects(chunk_size=np.int64(100))
    ("must be a whole number of bytes") and get("k", np.int64(1), 3) ("must be a byte offset
    (an int...)") refused: whole numbers are read alike (limits.integral) across the data API."""
    np = pytest.importorskip("numpy")
    data.put("n/x", b"abc\n" * 100)
    assert data.get("n/x", np.int64(1), np.int32(3)) == b"bc"
    assert data.get("n/x", np.int64(-2)) == b"c\n"
    assert data.open("n/x", np.uint8(4), np.int64(7)).read() == b"abc"
    as_ints = [(r.start, r.end) for r in data.objects("n/", chunk_size=100)]
    assert [(r.start, r.end) for r in data.objects("n/", chunk_size=np.int64(100))] == as_ints
    assert all(type(r.start) is int and type(r.end) is int for r in data.objects("n/", chunk_size=np.int64(100)))
    fixed = [(r.start, r.end) for r in data.objects("n/", chunk_size=np.int16(40), record_size=np.int64(8))]
    assert fixed == [(r.start, r.end) for r in data.objects("n/", chunk_size=40, record_size=8)]
    (tmp_path / "f.txt").write_bytes(b"abc\n" * 100)
    assert len(objects(str(tmp_path / "f.txt"), chunk_size=np.int64(100))) == 4
    for bad in (True, np.bool_(True), 100.0, "100"):
        with pytest.raises(ConfigError, match="chunk_size=.* must be a whole number of bytes"):
            data.objects("n/", chunk_size=bad)
        with pytest.raises(ConfigError, match="record_size=.* must be a whole number of bytes"):
            data.objects("n/", record_size=bad)
        with pytest.raises(TypeError, match=r"get\(start=.*must be a byte offset"):
            data.get("n/x", bad, 3)


def test_storage_handle_refuses_text_and_bad_keys(data):
    with pytest.raises(StoreError, match="needs bytes"):
        data.put("k", "text")
    with pytest.raises(StoreError, match="invalid data key"):
        data.put("../escape", b"x")
    with pytest.raises(StoreError, match="invalid data key"):
        data.get("/abs")
    # Read as 'a/b' by a local store and as another key by S3: refused on both.
    for key, fix in (("a//b", "a/b"), ("a/./b", "a/b"), ("a/", "a"), ("./a", "a")):
        with pytest.raises(StoreError, match=rf"invalid data key .*: a key's parts .* use '{fix}'"):
            data.put(key, b"x")
    # The store's half-written files: never listed, and removed once their writer is gone.
    for key in (".tmp-1-2-3", "x/.tmp-999-1-0"):
        with pytest.raises(StoreError, match="names starting with '.tmp-' are the store's half-written files"):
            data.put(key, b"x")
    data.put(".hidden/.tmpfile", b"x")  # (other names starting with a dot are keys like any)
    assert data.list() == [".hidden/.tmpfile"]


def _ops(data, key):
    return {"put": lambda: data.put(key, b"1"), "get": lambda: data.get(key), "get range": lambda: data.get(key, 0, 1),
            "size": lambda: data.size(key), "exists": lambda: data.exists(key), "delete": lambda: data.delete(key),
            "open": lambda: data.open(key)}


class _NoRequests:
    """An S3 client for keys refused before any request: any use fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"S3 was asked ({name}) for a key refused before any request")


def test_a_key_too_long_for_either_store_is_refused_alike_in_one_line(data):
    """delete('x' * 300) raised a bare OSError (File name too long), get/size/exists/open a
    StoreError, and put said to free space. A key part longer than a file name (255 bytes)
    or a key longer than S3 takes (1024 bytes with what precedes it) is refused by every
    operation in one line naming the limit, before the store is touched, on a local store and
    on S3 alike: a key that works in a local run works on Lambda, and the other way round."""
    from wrenpack.storage.s3 import S3Store

    s3 = S3Store("bucket", "pre/fix")
    s3._client = _NoRequests()
    for store in (data, DataStore(s3)):
        for key, what in (("x" * 300, r"its part 'xxxx.*' is 300 bytes: a key's parts between '/' hold at most 255"),
                          ("d/" + "é" * 128, r"its part 'éééé.*' is 256 bytes: a key's parts between '/' hold at most 255"),
                          ("/".join(["y" * 200] * 6), r"it is 1205 bytes: S3 keys hold at most 1024 bytes")):
            for op, call in _ops(store, key).items():
                with pytest.raises(StoreError, match=rf"invalid data key .*: {what}.*; shorten it") as info:
                    call()
                assert "\n" not in str(info.value) and len(str(info.value)) < 400, (op, str(info.value))
    assert data.store.list("") == []  # (nothing written, no folder made)
    for key in ("x" * 255, "d/" + "é" * 127, "/".join(["y" * 200] * 5)):
        data.put(key, b"1")
        assert data.get(key) == b"1" and data.exists(key) and data.size(key) == 1 and key in data.list()
        data.delete(key)
        assert not data.exists(key)
    # (a prefix is no key: nothing can be under one too long, and it is said with no error)
    assert data.list("x" * 300 + "/") == [] and data.delete_prefix("x" * 300 + "/") == 0


def test_the_key_limit_counts_an_s3_stores_prefix_and_a_local_refusal_says_so(data):
    """README: a key holds 1024 bytes with what precedes it in the bucket, which under
    s3://BUCKET/PREFIX is PREFIX/ too and in a local store data/ only. It promised that a key that
    works in a local run works on S3, and the local refusal said it held keys to S3's limit "so a
    key works on both": a 1015-byte key works locally and is refused under s3://bucket/p14-15903-1.
    A local refusal says the prefix counts on S3; an S3 refusal names what precedes the key."""
    from wrenpack.storage.s3 import S3Store

    key = "/".join(["k" * 200] * 5) + "/" + "k" * 10  # 1015 bytes
    data.put(key, b"1")
    assert data.get(key) == b"1"
    data.delete(key)
    for prefix, room in (("p14-15903-1", 1007), ("project-1", 1009)):  # (README's example: 1,009 bytes)
        s3 = S3Store("bucket", prefix)
        s3._client = _NoRequests()
        with pytest.raises(StoreError, match=rf"it is 1015 bytes: S3 keys hold at most 1024 bytes, {room} of them "
                                             rf"after '{prefix}/data/' here; shorten it$"):
            DataStore(s3).put(key, b"1")
    with pytest.raises(StoreError, match=r"it is 1020 bytes: .* 1019 of them after 'data/' here \(fewer on S3 under a "
                                         r"store prefix: s3://BUCKET/PREFIX counts PREFIX/ too\); shorten it$") as info:
        data.put(key + "k" * 5, b"1")
    assert "works on both" not in str(info.value)
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert "1,009 in `s3://BUCKET/project-1`" in " ".join(readme.split())


def test_a_key_s3_cannot_hold_is_refused_alike_on_every_store_in_one_line(data):
    """'logs/a\\udcffb.txt' (what os.listdir gives for a file name that is not UTF-8: a lone
    surrogate) was a key to a local store and a UnicodeEncodeError wrapped in "S3 failed to write"
    on S3: a key that works in a local run must work on S3. Refused by every operation, on either
    store, before the store is touched, in one line naming the character and a way on."""
    from wrenpack.storage.s3 import S3Store

    s3 = S3Store("bucket", "pre/fix")
    s3._client = _NoRequests()
    for store in (data, DataStore(s3)):
        for key in ("logs/a\udcffb.txt", "\ud800", "x/\udc80/y"):
            calls = dict(_ops(store, key), list=lambda s=store, k=key: s.list(k),
                         objects=lambda s=store, k=key: s.objects(k), delete_prefix=lambda s=store, k=key: s.delete_prefix(k))
            for op, call in calls.items():
                what = "prefix" if op in ("list", "objects", "delete_prefix") else "key"
                with pytest.raises(StoreError, match=rf"invalid data {what} .*: character \d+ \('\\ud[89a-f][0-9a-f]{{2}}'\) "
                                   r"is a lone surrogate .*urllib.parse.quote\(os.fsencode\(name\)\)") as info:
                    call()
                assert "\n" not in str(info.value), (op, str(info.value))
    assert data.store.list("") == []  # (nothing written, no folder made)
    data.put("logs/a%FFb.txt", b"1")  # (the way on: the name's bytes, quoted)
    assert data.list("logs/") == ["logs/a%FFb.txt"]


def test_storage_handle_inside_a_call_is_the_executors_store(remote, executor):
    client = wrenpack.store(executor)
    client.put("handle/in.txt", b"from the client")

    def work(suffix):
        s = wrenpack.store()  # the store this call was invoked with
        s.put(f"handle/out-{suffix}.txt", s.get("handle/in.txt").upper())
        return s.list("handle/")

    listed = remote(work).remote("1").result(timeout=60)
    assert "handle/out-1.txt" in listed
    assert client.get("handle/out-1.txt") == b"FROM THE CLIENT"
    # A handle made in the client pickles as its spec and works in a call too.
    assert remote(lambda s: s.get("handle/in.txt")).remote(client).result(timeout=60) == b"from the client"
    client.delete_prefix("handle/")


def _write(data, key, payload):
    data.put(key, payload)
    return payload


def _records_of(ranges):
    out = []
    for r in pickle.loads(pickle.dumps(ranges)):  # as a worker gets them
        out.extend(r.records())
    return out


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 10, 64, 1000])
def test_newline_chunks_split_no_record_and_lose_none(data, chunk):
    rng = random.Random(chunk)
    lines = [b"x" * rng.randrange(0, 25) + str(i).encode() for i in range(60)]
    _write(data, "t/a.txt", b"\n".join(lines) + b"\n")  # ends with a newline
    _write(data, "t/b.txt", b"\n".join(lines))  # last record without newline
    _write(data, "t/c.txt", b"")  # empty object
    _write(data, "t/d.txt", b"one-long-record-" * 20)  # longer than many chunks, no newline at all
    ranges = data.objects("t/", chunk_size=chunk)
    by_key: dict[str, list[bytes]] = {}
    for r in pickle.loads(pickle.dumps(ranges)):
        by_key.setdefault(r.key, []).extend(r.records())
    assert by_key["t/a.txt"] == lines
    assert by_key["t/b.txt"] == lines
    assert by_key["t/c.txt"] == []
    assert by_key["t/d.txt"] == [b"one-long-record-" * 20]
    # The aligned ranges tile each object exactly.
    for key in ("t/a.txt", "t/b.txt"):
        spans = [r.bounds() for r in ranges if r.key == key]
        assert spans[0][0] == 0 and spans[-1][1] == data.size(key)
        assert all(spans[i][1] == spans[i + 1][0] for i in range(len(spans) - 1))


def test_chunk_edge_on_a_newline_and_other_delimiters(data):
    _write(data, "e/x", b"aaaa\nbbbb\ncccc")  # chunk_size 5: edges right after each newline
    assert _records_of(data.objects("e/", chunk_size=5)) == [b"aaaa", b"bbbb", b"cccc"]
    assert _records_of(data.objects("e/", chunk_size=4)) == [b"aaaa", b"bbbb", b"cccc"]
    _write(data, "z/x", b"r1\0r2\0\0r4\0")
    for size in (1, 2, 3, 5):
        assert _records_of(data.objects("z/", chunk_size=size, delimiter=b"\0")) == [b"r1", b"r2", b"", b"r4"], size
    with pytest.raises(ConfigError, match="one byte"):
        data.objects("z/", chunk_size=2, delimiter=b"||")


def test_fixed_size_records_chunk_on_record_edges(data):
    recs = [bytes([i]) * 10 for i in range(37)]
    _write(data, "f/r.bin", b"".join(recs) + b"tail")  # a trailing partial record
    ranges = data.objects("f/", chunk_size=25, record_size=10)
    assert all(r.start % 10 == 0 for r in ranges)
    assert all((r.end - r.start) % 10 == 0 for r in ranges[:-1])
    assert _records_of(ranges) == recs + [b"tail"]
    # Chunks that never need a read to find their edges:
    assert [r.bounds() for r in ranges] == [(r.start, r.end) for r in ranges]


def test_buffers_map_the_same_bytes_as_read_returns_and_put_takes_buffers(data):
    """``ObjectRange.buffer()`` is ``read()`` without the copy (a mapping on the local
    store), at every chunk edge; ``put`` writes a buffer (an array's memoryview) as is."""
    text = b"".join(b"line %d %s\n" % (i, b"x" * (i % 37)) for i in range(3000))
    data.put("buf/t.txt", memoryview(bytearray(text)))
    data.put("buf/r.bin", memoryview(text[:9000]).cast("B", (90, 100)))  # 2-d, C-contiguous
    assert data.get("buf/t.txt") == text and data.get("buf/r.bin") == text[:9000]
    for ranges in (data.objects("buf/t.txt", chunk_size=4096), data.objects("buf/r.bin", chunk_size=1000, record_size=100)):
        assert len(ranges) > 1
        for r in ranges:
            assert bytes(r.buffer()) == r.read()
    with pytest.raises(StoreError, match="not contiguous"):
        data.put("buf/bad", memoryview(text)[::2])


def test_an_empty_buffer_of_any_shape_is_an_empty_object(data):
    np = pytest.importorskip("numpy", reason="numpy makes the empty 2-D buffer (pip install -e '.[test]')")
    data.put("e/k", memoryview(np.zeros((0, 100), dtype=np.uint8)))  # (a shuffle's empty partition of records)
    assert data.get("e/k") == b"" and data.size("e/k") == 0
    with pytest.raises(StoreError, match="not contiguous"):
        data.put("e/k", memoryview(np.zeros((10, 10), dtype=np.uint8)[:, ::2]))


def test_one_range_per_object_without_chunk_size(data):
    _write(data, "o/1", b"a\nb")
    _write(data, "o/2", b"")
    ranges = data.objects("o/")
    # A range's key is the one put() was given and get() takes (before: "data/o/1", which get() did not find).
    assert [(r.key, r.size, r.parts) for r in ranges] == [("o/1", 3, 1), ("o/2", 0, 1)]
    assert [data.get(r.key) for r in ranges] == [b"a\nb", b""] and ranges[0].name == "1"
    assert ranges[0].stored_key == "data/o/1" and ranges[0].url.endswith("/data/o/1")
    assert ranges[0].read() == b"a\nb" and ranges[1].read() == b""
    assert len(pickle.dumps(ranges[0])) < 400  # a handle, not the data


def test_objects_from_local_paths(tmp_path):
    d = tmp_path / "files"
    d.mkdir(mode=0o775)  # the user's own directory: need not be private like wrenpack's store
    d.chmod(0o775)
    (d / "one.txt").write_bytes(b"1\n2\n3\n")
    (d / "sub").mkdir()
    (d / "sub" / "two.txt").write_bytes(b"4\n5")
    ranges = objects(str(d), chunk_size=2)
    assert sorted(rec for r in ranges for rec in r.records()) == [b"1", b"2", b"3", b"4", b"5"]
    single = objects("file://" + str(d / "one.txt"))
    assert [r.key for r in single] == ["one.txt"] and single[0].read() == b"1\n2\n3\n"
    with pytest.raises(StoreError, match="does not exist"):
        objects(str(tmp_path / "nope"))
    with pytest.raises(StoreError, match="no objects under"):
        DataStore(open_store(str(tmp_path / "empty"))).objects("x/")
    with pytest.raises(ConfigError, match="chunk_size"):
        objects(str(d), chunk_size=0)
    for kwargs in (dict(chunk_size=True), dict(record_size=True), dict(chunk_size="1MB")):  # (True was taken as 1 byte)
        with pytest.raises(ConfigError, match=f"{next(iter(kwargs))}=.* must be a whole number of bytes"):
            objects(str(d), **kwargs)


def test_map_over_stored_chunks_reads_in_the_worker(remote, executor):
    s = wrenpack.store(executor)
    lines = [f"line {i}".encode() for i in range(500)]
    s.put("m/a.txt", b"\n".join(lines[:300]) + b"\n")
    s.put("m/b.txt", b"\n".join(lines[300:]))

    def count(r: ObjectRange):
        return r.key, sum(1 for _ in r.records()), r.part

    ranges = s.objects("m/", chunk_size=512)
    assert len(ranges) > 4
    got = wrenpack.get(remote(count).map(ranges))
    assert sum(n for _, n, _ in got) == 500
    assert {k for k, _, _ in got} == {"m/a.txt", "m/b.txt"}
    s.delete_prefix("m/")


def test_local_store_writes_again_after_another_process_removed_the_directory(tmp_path):
    # A warm worker caches the directories it made; a prefix deleted by the client
    # (another process) must not make its next write there fail.
    from wrenpack.storage.local import LocalStore

    worker, client = LocalStore(tmp_path), LocalStore(tmp_path)
    worker.put("data/out/0", b"a")
    client.delete_prefix("data/out/")
    assert not (tmp_path / "data" / "out").exists()
    worker.put("data/out/0", b"b")
    assert worker.get("data/out/0") == b"b"


# --------------------------------------------------------------------------- one version per read

def _is_changed(info, what=""):
    assert type(info.value).__name__ == "ObjectChanged" and "\n" not in str(info.value), (what, str(info.value))


def test_a_stream_read_while_its_object_is_replaced_gives_one_version(data, monkeypatch):
    """open() and an ObjectRange asked the store for each block by key again: an object replaced
    (an atomic put) while it was read gave the old version's first blocks and the new one's rest,
    with no error. A local read keeps the file it opened: all of the old version."""
    monkeypatch.setattr("wrenpack.storage.data._BLOCK", 1024)
    old = b"A" * 10_000
    data.put("t/x", old)
    for start, end in ((0, None), (100, -100), (-9000, None)):
        with data.open("t/x", start, end) as f:
            first = f.read(1000)
            data.put("t/x", b"B" * 12_000)
            assert first + f.read() == old[start:end]
        data.put("t/x", old)
    for how, want in (("records", b"old line"), ("lines", "old line"), ("open", b"old line\n")):
        for chunk, i in ((None, 0), (9000, 0), (9000, 1)):
            data.put("t/y", b"old line\n" * 2000)
            r = data.objects("t/y", chunk_size=chunk)[i]
            it = iter(getattr(r, how)())
            got = [next(it)]
            data.put("t/y", b"NEW\n" * 5000)
            got += list(it)
            assert set(got) == {want} and len(got) == (r.end - r.start) // 9, (how, r)


@pytest.mark.parametrize("replacement", [b"ABCDEFGHIJ\n" * 3, b"abcdefghij\n" * 20, b"9876543210\n" * 10],
                         ids=["shorter", "longer", "same size"])
def test_a_range_listed_before_its_object_was_replaced_refuses_to_read_it(data, tmp_path, replacement):
    """Ranges are listed with their object's size: one replaced before it was read gave the new
    object's bytes cut at the old size (or nothing), silently. Each read of a range listed before
    says the object changed since, in one line, whatever the new one's size."""
    data.put("sr/x", b"0123456789\n" * 10)
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "x").write_bytes(b"0123456789\n" * 10)
    listed = [data.objects("sr/", chunk_size=40), data.objects("sr/"),
              objects(str(tmp_path / "files"), chunk_size=40), objects(str(tmp_path / "files" / "x"))]
    data.put("sr/x", replacement)
    (tmp_path / "new").write_bytes(replacement)
    os.replace(tmp_path / "new", tmp_path / "files" / "x")  # (as a tool that writes a file anew does)
    for r in pickle.loads(pickle.dumps([r for ranges in listed for r in ranges])):  # (as a worker gets them)
        reads = {"read": r.read, "buffer": r.buffer, "records": lambda r=r: list(r.records()),
                 "lines": lambda r=r: list(r.lines()), "open": lambda r=r: r.open().read()}
        if r.parts > 1:
            reads["bounds"] = r.bounds  # (a chunk's edges: read too)
        for how, read in reads.items():
            with pytest.raises(StoreError, match=r"/x changed since it was listed.*; list it again .* and read it again") as info:
                read()
            _is_changed(info, how)
    # listed again, the new object reads whole
    assert b"".join(r.read() for r in data.objects("sr/", chunk_size=40)) == replacement
    assert b"".join(r.read() for r in objects(str(tmp_path / "files"), chunk_size=40)) == replacement


def test_a_range_of_a_file_that_grew_since_it_was_listed_refuses_to_read_it(tmp_path):
    """A file of the user's own, appended to after it was listed: its chunks' edges were found in
    the longer file and the last chunk stopped at the old size. Said, as for a replaced one."""
    (tmp_path / "log.txt").write_bytes(b"line\n" * 100)
    ranges = objects(str(tmp_path / "log.txt"), chunk_size=100)
    with open(tmp_path / "log.txt", "ab") as f:
        f.write(b"more\n")
    with pytest.raises(StoreError, match=r"log.txt changed since it was listed \(500 bytes then, 505 now\)") as info:
        list(ranges[-1].records())
    _is_changed(info)


# --------------------------------------------------------------------------- text that is not UTF-8

_LATIN1 = "hello\nworld\n".encode() + "café au lait\n".encode("latin-1") + "naïve\nend".encode("latin-1")


def test_lines_are_strict_utf8_by_default_and_name_the_object_byte_and_fix(data):
    _write(data, "l/t.txt", _LATIN1)
    ranges = data.objects("l/", chunk_size=8)
    assert list(ranges[0].lines()) == ["hello", "world"]  # valid text: as before
    bad = next(r for r in pickle.loads(pickle.dumps(ranges)) if r.bounds()[0] <= 15 < r.bounds()[1])
    assert bad.bounds()[0] > 0  # a chunk past the object's start: the offset is the object's
    with pytest.raises(wrenpack.TextDecodeError) as info:
        list(bad.lines())
    err = info.value
    msg = str(err)
    assert "\n" not in msg
    assert bad.url in msg and "byte 15 " in msg  # "café": the é at 12 + 3
    assert "lines(encoding=" in msg and "errors=" in msg and "raw=True" in msg
    # Still what a strict decode raises, so code catching UnicodeDecodeError keeps working.
    assert isinstance(err, UnicodeDecodeError) and isinstance(err, wrenpack.WrenpackError)
    assert err.encoding == "utf-8" and err.object[err.start : err.end] == b"\xe9"
    assert len(err.object) <= 48  # a few bytes around it, not the record
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == msg and back.start == err.start


def test_lines_take_an_encoding_an_error_handler_or_give_bytes(data):
    _write(data, "l/t.txt", _LATIN1)
    (r,) = data.objects("l/")
    assert list(r.lines(encoding="latin-1")) == ["hello", "world", "café au lait", "naïve", "end"]
    assert list(r.lines(errors="replace")) == ["hello", "world", "caf\ufffd au lait", "na\ufffdve", "end"]
    assert list(r.lines(errors="surrogateescape"))[2].encode("utf-8", "surrogateescape") == "café au lait".encode("latin-1")
    assert list(r.lines(raw=True)) == list(r.records()) == _LATIN1.split(b"\n")
    # the byte's offset counts whole records before it, whatever the chunking or delimiter
    _write(data, "z/t.bin", b"ok\0fine\0bad \xff here")
    (z,) = data.objects("z/", delimiter=b"\0")
    with pytest.raises(wrenpack.TextDecodeError, match=r"byte 12 \(b'\\xff'\)"):
        list(z.lines())
    _write(data, "f/t.bin", b"abcd" * 5 + b"ab\x80d")
    (f,) = data.objects("f/", record_size=4)
    with pytest.raises(wrenpack.TextDecodeError, match="byte 22 "):
        list(f.lines(encoding="ascii"))


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
def test_lines_end_without_their_crlf_as_in_a_text_file(data, encoding):
    text = "a,b\r\nc\rd,e\r\n\r\nlast\r"
    _write(data, "c/t.csv", text.encode(encoding))
    ranges = data.objects("c/", chunk_size=7 if encoding == "utf-8" else None)
    assert [line for r in ranges for line in r.lines(encoding=encoding)] == ["a,b", "c\rd,e", "", "last"]
    if encoding == "utf-8":  # (the bytes are the records, as they are)
        assert [rec for r in ranges for rec in r.lines(raw=True)] == [b"a,b\r", b"c\rd,e\r", b"\r", b"last\r"]


@pytest.mark.parametrize("encoding", ["utf-8", "cp1252", "shift_jis", "utf-8-sig"])
def test_lines_are_what_a_text_file_python_opens_gives_whatever_the_bytes(data, monkeypatch, encoding):
    """Random bytes (newlines, CRs, broken sequences) read in blocks of 1, 3 and 1 MB give
    the lines of ``bytes.decode`` of the whole, split at newlines without their \\r."""
    rng = random.Random(encoding)
    alphabet = [b"a", b"\n", b"\r", b"\r\n", b"\xe2\x82", b"\xac", b"\xff", b"\x83", b"\x81\n", "é".encode("utf-8"),
                "日本".encode(encoding, "ignore")]
    for _ in range(40):
        raw = b"".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 50)))
        _write(data, "z/x", raw)
        (r,) = data.objects("z/")
        for errors in ("replace", "ignore", "surrogateescape"):
            want = raw.decode(encoding, errors).split("\n")
            want = [w[:-1] if w.endswith("\r") else w for w in (want[:-1] if want[-1] == "" else want)]
            for block in (1, 3, 1 << 20):  # (a \r\n, a character, cut by a read's edge)
                monkeypatch.setattr("wrenpack.storage.data._LINES_BLOCK", block)
                assert list(r.lines(encoding=encoding, errors=errors)) == want, (raw, errors, block)


def test_lines_refuse_an_unknown_encoding_or_handler_before_reading(data):
    _write(data, "l/t.txt", b"x")
    (r,) = data.objects("l/")
    with pytest.raises(ConfigError, match="unknown encoding: utf-9"):
        r.lines(encoding="utf-9")  # at the call, not at the first line
    with pytest.raises(ConfigError, match="unknown error handler"):
        r.lines(errors="lenient")
    with pytest.raises(ConfigError, match="'hex' is not a text encoding"):
        r.lines(encoding="hex")  # a codec, but from bytes to bytes
    # with raw=True too (they were taken and ignored): a misspelt name is said alike, whatever else is asked
    for kwargs, match in ((dict(encoding="no-such-codec"), "unknown encoding: no-such-codec"),
                          (dict(errors="nonsense"), "unknown error handler"), (dict(encoding="hex"), "not a text")):
        with pytest.raises(ConfigError, match=match) as info:
            r.lines(raw=True, **kwargs)
        assert "\n" not in str(info.value)
    assert list(r.lines(encoding="latin-1", errors="replace", raw=True)) == [b"x"]  # (valid names: bytes, as asked)
    for kwargs, match in ((dict(encoding=None), r"lines\(encoding=None\): must be a str"),
                          (dict(encoding=b"utf-8"), "encoding=b'utf-8'"), (dict(errors=None), "errors=None"),
                          (dict(raw="yes"), r"lines\(raw='yes'\): must be True")):
        with pytest.raises(TypeError, match=match) as info:  # (a ConfigError too)
            r.lines(**kwargs)
        assert isinstance(info.value, ConfigError) and "\n" not in str(info.value)


_WIDE = "héllo\nĊ\u0a00 wörld\n\nend"  # Ċ and \u0a00: a 0x0a byte inside a character in UTF-16 and UTF-32


@pytest.mark.parametrize("encoding, text", [("utf-16", _WIDE), ("utf-16-be", _WIDE), ("utf-32", _WIDE),
                                            ("cp500", "héllo\nwörld\n\nend")],  # (EBCDIC: a newline is b'%')
                         ids=["utf-16", "utf-16-be", "utf-32", "cp500"])
def test_lines_of_text_whose_newline_is_not_the_byte_read_whole_objects_as_a_stream(data, monkeypatch, encoding, text):
    _write(data, "w/t.txt", (text + "\n").encode(encoding))
    (r,) = data.objects("w/")
    want = text.split("\n")
    assert list(r.lines(encoding=encoding)) == want
    monkeypatch.setattr("wrenpack.storage.data._BLOCK", 3)  # characters cut by the reads' edges
    assert list(r.lines(encoding=encoding)) == want
    _write(data, "w/t.txt", text.encode(encoding))  # no newline at the end: the same lines
    (r,) = data.objects("w/")  # (listed again: a range listed before refuses the object replaced since)
    assert list(r.lines(encoding=encoding)) == want


@pytest.mark.parametrize("chunk", [None, 1, 5, 6, 100])
def test_a_decode_error_after_a_byte_order_mark_names_the_byte_in_the_object(data, monkeypatch, chunk):
    """utf-8-sig text with a BOM named the bad byte 3 bytes early (the BOM's length): its decoder
    drops the BOM and counts from what follows. Read as one stream, in chunks, or as records."""
    bom = b"\xef\xbb\xbf"
    _write(data, "s/t.txt", bom + b"ab\xffcd\nok\n")
    for ranges in (data.objects("s/", chunk_size=chunk), data.objects("s/", chunk_size=chunk, delimiter=b"|")):
        with pytest.raises(wrenpack.TextDecodeError, match=r"t.txt: byte 5 \(b'\\xff'\) is not valid utf-8"):
            for r in ranges:
                list(r.lines(encoding="utf-8-sig"))
    _write(data, "s/t.txt", bom + b"ab\n\xff\n")  # in the second record
    with pytest.raises(wrenpack.TextDecodeError, match=r"byte 6 "):
        list(data.objects("s/", delimiter=b"\n", record_size=None)[0].lines(encoding="utf-8-sig"))
    monkeypatch.setattr("wrenpack.storage.data._LINES_BLOCK", 4)  # past the first block: right before too
    with pytest.raises(wrenpack.TextDecodeError, match=r"byte 6 "):
        list(data.objects("s/")[0].lines(encoding="utf-8-sig"))
    _write(data, "s/t.txt", bom + b"a" * 10 + b"\xff\n")
    with pytest.raises(wrenpack.TextDecodeError, match=r"byte 13 "):
        list(data.objects("s/")[0].lines(encoding="utf-8-sig"))


def test_a_decode_error_in_a_stream_names_the_byte_in_the_object(data, monkeypatch):
    _write(data, "w/bad.txt", "ab\ncd".encode("utf-16-le") + b"\x00\xd8" + "x\n".encode("utf-16-le"))
    (r,) = data.objects("w/")
    monkeypatch.setattr("wrenpack.storage.data._BLOCK", 3)
    with pytest.raises(wrenpack.TextDecodeError, match=r"bad.txt: byte 10 \(b'\\x00\\xd8'\) is not valid utf-16-le"):
        list(r.lines(encoding="utf-16-le"))
    assert list(r.lines(encoding="utf-16-le", errors="replace")) == ["ab", "cd\ufffdx"]


def test_lines_refuse_chunks_or_delimiters_that_would_cut_a_wide_character(data):
    _write(data, "w/t.txt", ("x" * 40 + "\n").encode("utf-16") * 50)
    chunks = data.objects("w/", chunk_size=1000)
    assert len(chunks) > 1
    with pytest.raises(ConfigError) as info:
        chunks[1].lines(encoding="utf-16")  # at the call, not at the first line
    msg = str(info.value)
    assert "\n" not in msg and "part 2 of" in msg and "b'\\n\\x00'" in msg and "chunk_size=None" in msg
    _write(data, "z/t.bin", "a\0b".encode("utf-16"))
    (z,) = data.objects("z/", delimiter=b"\0")
    with pytest.raises(ConfigError, match=r"split at the byte b'\\x00'.*raw=True"):
        z.lines(encoding="utf-16")
    assert list(z.lines(raw=True)) == list(z.records())
    assert list(data.objects("w/", chunk_size=1000)[0].lines(encoding="latin-1"))  # one-byte text: chunks as before


@pytest.mark.parametrize("encoding", ["iso2022_jp", "iso-2022-kr", "hz"])
def test_lines_of_shift_state_text_read_whole_objects_and_refuse_pieces(data, encoding):
    """ISO-2022 keeps a shift state across newlines: a shifted run that goes on past one
    (which its decoders take) read from a chunk's start decoded to other characters,
    silently (an outside probe: '日本' read as 'F|K\\' from the second chunk); in HZ a
    "~" before a newline joins two lines, which a chunk cut there split."""
    shifted = {"iso2022_jp": b"\x1b$BF|K\\\nF|K\\\x1b(B\nabc\n", "iso-2022-kr": "한국\n".encode("iso-2022-kr") * 3,
               "hz": b"ab~\ncd\n~{VPND~}\nabc\n"}[encoding]  # (HZ's "~\\n" joins two lines)
    _write(data, "s/t.txt", shifted)
    (whole,) = data.objects("s/")
    assert list(whole.lines(encoding=encoding)) == shifted.decode(encoding).splitlines()
    chunks = data.objects("s/", chunk_size=8)
    assert len(chunks) > 1
    for piece in (chunks[0], chunks[-1], data.objects("s/", delimiter=b"a")[0]):
        with pytest.raises(ConfigError, match="keeps a shift state") as info:
            piece.lines(encoding=encoding)
        assert "\n" not in str(info.value) and "chunk_size=None" in str(info.value)
    assert b"".join(b for c in chunks for b in c.lines(raw=True))  # (bytes: as before)


def test_a_decode_error_in_a_call_reaches_the_client_whole(remote, executor):
    s = wrenpack.store(executor)
    s.put("dec/t.txt", _LATIN1)
    (r,) = s.objects("dec/")
    with pytest.raises(wrenpack.TextDecodeError, match=r"dec/t.txt: byte 15 .*raw=True\) for bytes") as info:
        remote(lambda r: list(r.lines())).remote(r).result(timeout=60)
    assert isinstance(info.value, UnicodeDecodeError)
    assert remote(lambda r: list(r.lines(errors="replace"))).remote(r).result(timeout=60)[2] == "caf\ufffd au lait"
    s.delete_prefix("dec/")
