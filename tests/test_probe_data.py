"""Probes of the data workloads API from the outside: map_reduce, the shuffle, the
store's object ranges and lines(), and the sort and wordcount examples."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import wrenpack
from wrenpack.errors import ConfigError, ConfigTypeError, SerializationError
from wrenpack.worker import shuffle


def _left(executor):
    return executor.store.list(shuffle.PREFIX)


def _pairs(x):
    return [(x, 1)]


def _same(x):
    return x


def _count(key, values):
    return sum(values)


@pytest.mark.parametrize("kw", [{"partitions": 2}, {"fan_in": 2}, {}], ids=["shuffle", "tree", "single"])
def test_a_map_reduce_refused_at_launch_leaves_nothing_while_its_executor_lives(ex, kw):
    """An item that does not pickle is raised by map_reduce(...) itself; the shuffle and
    tree forms had already written their owner record (shuffle/<id>/owner.json), which
    stayed in the store until the executor was shut down: one more per refused call in a
    long-lived notebook, and `wrenpack clean --stale` saw a job that never ran."""
    mapper, reducer, want = (_pairs, _count, {1: 1, 2: 1}) if "partitions" in kw else (_same, sum, 3)
    with pytest.raises(SerializationError, match="_thread.lock"):
        wrenpack.map_reduce(mapper, [1, threading.Lock()], reducer, executor=ex, **kw)
    assert _left(ex) == []
    # and the executor still runs the next one
    assert wrenpack.map_reduce(mapper, [1, 2], reducer, executor=ex, **kw).result(timeout=60) == want


# -- ObjectRange.lines ------------------------------------------------------------------------------
@pytest.mark.parametrize("errors", ["xmlcharrefreplace", "namereplace"])
def test_lines_refuses_an_error_handler_for_encoding_only_at_the_call(tmp_path, errors):
    """bytes.decode takes these names and fails only at the first byte that does not
    decode, in the worker, with "TypeError: don't know how to handle UnicodeDecodeError
    in error callback" (wordcount.py --errors xmlcharrefreplace ended in that traceback)."""
    (tmp_path / "t.txt").write_bytes(b"caf\xe9\nok\n")
    (r,) = wrenpack.objects(str(tmp_path / "t.txt"))
    with pytest.raises(ConfigError, match=f"'{errors}' is an error handler for encoding text, not for decoding it"):
        r.lines(errors=errors)  # at the call, before anything is read
    assert list(r.lines(errors="backslashreplace")) == ["caf\\xe9", "ok"]  # (one that decodes: as before)


def test_utf16_text_without_a_byte_order_mark_is_one_line_naming_the_object_and_the_byte_order(tmp_path):
    """The stream decoder refuses UTF-16 without a BOM with a bare UnicodeError (not a
    UnicodeDecodeError): it escaped lines() with no object named and no way on, and
    past `except UnicodeDecodeError` (wordcount.py printed a traceback)."""
    (tmp_path / "le.txt").write_bytes("héllo\nwörld\n".encode("utf-16-le"))
    (r,) = wrenpack.objects(str(tmp_path / "le.txt"))
    with pytest.raises(wrenpack.TextDecodeError) as info:
        list(r.lines(encoding="utf-16"))
    msg = str(info.value)
    assert "\n" not in msg and "le.txt: byte 0 " in msg and "does not start with BOM" in msg, msg
    assert 'lines(encoding="utf-16-le")' in msg and "raw=True" in msg
    assert isinstance(info.value, UnicodeDecodeError)
    assert list(r.lines(encoding="utf-16-le")) == ["héllo", "wörld"]  # the way it names
    (tmp_path / "bom.txt").write_bytes("héllo\r\nwörld".encode("utf-16"))  # with a BOM: as before
    assert list(wrenpack.objects(str(tmp_path / "bom.txt"))[0].lines(encoding="utf-16")) == ["héllo", "wörld"]
    (tmp_path / "be.txt").write_bytes("x\n".encode("utf-32-be"))
    with pytest.raises(wrenpack.TextDecodeError, match="be.txt: byte 0 "):  # (its decoder guesses, then stops)
        list(wrenpack.objects(str(tmp_path / "be.txt"))[0].lines(encoding="utf-32"))


# -- the examples -------------------------------------------------------------------------------------
REPO = Path(__file__).resolve().parents[1]


def _example(name: str, tmp_path: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WRENPACK_")}
    env.update(WRENPACK_STORAGE=str(tmp_path / "store"), WRENPACK_PROGRESS="false", WRENPACK_CONCURRENCY="2",
               PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, str(REPO / "examples" / name), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _stored(tmp_path: Path) -> list[Path]:
    store = tmp_path / "store"
    return [p for p in store.rglob("*") if p.is_file()] if store.exists() else []


@pytest.mark.parametrize("errors", ["xmlcharrefreplace", "namereplace"])
def test_wordcount_refuses_an_encode_only_errors_handler_before_launch(tmp_path, errors):
    """It was accepted (codecs.lookup_error knows it), the map calls ran, and the first
    byte that did not decode ended the program in a worker's TypeError traceback."""
    proc = _example("wordcount.py", tmp_path, "--small", "--errors", errors)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and f"--errors {errors} is an error handler for encoding" in proc.stderr
    assert not (tmp_path / "store" / "data").exists() or _stored(tmp_path) == []  # nothing was written: refused first


def test_wordcount_small_with_a_whole_file_encoding_counts_text_in_it(tmp_path):
    """--small --encoding utf-16 said "one map call per file", then read its 2000-byte
    chunks anyway and stopped at lines()' refusal of a chunk of UTF-16 text."""
    proc = _example("wordcount.py", tmp_path, "--small", "--encoding", "utf-16")
    assert proc.returncode == 0, proc.stderr
    assert "matches the local count" in proc.stdout and "utf-16 text, a file per map call" in proc.stdout
    assert _stored(tmp_path) == []


@pytest.mark.parametrize("args, match", [
    (["--memory", "0"], "argument --memory: memory=0 MB is outside Lambda's range"),
    (["--memory", "64"], "argument --memory: memory=64 MB is outside Lambda's range"),
    (["--memory", "lots"], "argument --memory: memory='lots' must be a whole number of MB in 128..10240"),
    (["--partitions", "70000"], "argument --partitions: '70000' is more than 65,536 reducers"),
])
def test_sort_refuses_a_bad_memory_or_too_many_partitions_before_launch(tmp_path, args, match):
    """--memory 0 (or 64) ended in a ConfigError traceback from the first launch; --partitions
    over 65,536 ran (minutes of empty reducers) with partition_of's uint32/uint16 arithmetic
    wrapping, so records went to the wrong key range."""
    proc = _example("sort.py", tmp_path, "--small", *args, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert match in proc.stderr.splitlines()[-1], proc.stderr
    assert _stored(tmp_path) == []


def test_sort_partition_of_keeps_key_order_up_to_its_most_partitions():
    """The bound the CLI now enforces is the one partition_of is right up to: partition
    numbers never decrease as keys grow, and all of 0..R-1 are reached."""
    sys.path.insert(0, str(REPO / "examples"))
    try:
        import sort
    finally:
        sys.path.remove(str(REPO / "examples"))
    import numpy as np

    records = np.zeros((1 << 16, sort.RECORD), np.uint8)
    records[:, :2] = np.arange(1 << 16, dtype=">u2").view(np.uint8).reshape(-1, 2)  # every two-byte prefix, in order
    for r in (1, 3, 256, 257, sort.MAX_PARTITIONS):
        where = sort.partition_of(records, r).astype(np.int64)
        assert (np.diff(where) >= 0).all() and where[0] == 0 and where[-1] == r - 1, r


def test_chunks_of_one_long_line_find_their_edges_in_few_reads(tmp_path, monkeypatch):
    """Every chunk that began inside a long line read on to the line's end 64 KB per
    request to find where its records start: for a 1 MB line in 16 KB chunks, over a
    thousand requests (on S3 each a GET of some 20 ms, per map call). Doubling reads
    make it a few per chunk; the records and the ranges' tiling are unchanged."""
    from wrenpack.storage import data as data_mod

    line = b"x" * (1 << 20)
    (tmp_path / "one.txt").write_bytes(b"head\n" + line + b"\nmid\n" + line + b"\ntail")
    reads = [0]
    get_range = data_mod.FileReader.read  # (each read of a range's file: one pread, as one GET on S3)

    def counted(self, start, end):
        reads[0] += 1
        return get_range(self, start, end)

    monkeypatch.setattr(data_mod.FileReader, "read", counted)
    ranges = wrenpack.objects(str(tmp_path / "one.txt"), chunk_size=16 << 10)
    assert len(ranges) > 100
    spans = [r.bounds() for r in ranges]
    assert reads[0] <= 6 * len(ranges), reads  # (before: 1,121 reads for these 129 ranges)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert [rec for r in ranges for rec in r.records()] == [b"head", line, b"mid", line, b"tail"]


def test_store_put_takes_bytes_like_objects_and_refuses_a_nul_in_a_key_in_one_line(executor):
    """put(key, numpy_array) was refused as "needs bytes, got ndarray; encode text or
    pickle it" although the same array's memoryview was taken; a key with a NUL ended in
    the local store's bare "ValueError: embedded null byte"."""
    import array

    import numpy as np

    s = wrenpack.store(executor)
    a = np.arange(12, dtype="<i4").reshape(3, 4)
    try:
        s.put("probe/np", a)
        s.put("probe/arr", array.array("B", b"abc"))
        assert np.frombuffer(s.get("probe/np"), "<i4").tolist() == list(range(12))
        assert s.get("probe/arr") == b"abc"
        with pytest.raises(wrenpack.StoreError, match="not contiguous"):
            s.put("probe/t", a.T)
        with pytest.raises(wrenpack.StoreError, match="needs bytes, got str"):
            s.put("probe/s", "text")
        for call in (lambda: s.put("probe/a\0b", b"x"), lambda: s.get("a\0b"), lambda: s.exists("a\0b")):
            with pytest.raises(wrenpack.StoreError, match="cannot hold a NUL character"):
                call()
    finally:
        s.delete_prefix("probe/")


class _Word:
    """A key of the user's own: equal by value, hashed by value, with object's repr (its address)."""

    def __init__(self, text):
        self.text = text

    def __eq__(self, other):
        return isinstance(other, _Word) and self.text == other.text

    def __hash__(self):
        return hash(self.text)


def test_a_key_equal_by_value_but_with_an_address_repr_is_one_line_not_a_blame_of_partition_fn(executor):
    """Keys of such a class were partitioned by a hash of their repr, which names each
    object's address: equal keys went to partitions by chance, and the job failed (or
    not, by luck of the addresses) with "make partition_fn send equal keys to one
    partition", a partition_fn the user never gave."""
    def words(n):
        return [(_Word(w), 1) for w in ("a", "b", "a", "c")]

    def total(key, ones):
        return sum(ones)

    with pytest.raises(ConfigTypeError, match=r"key <.*_Word object at 0x.*> \(a _Word\) has no hash that is the same in "
                                              r"every process.*give it a __repr__ that shows its value"):
        wrenpack.map_reduce(words, range(4), total, partitions=3, executor=executor).result(timeout=60)
    # one partition needs no hash; a partition_fn of the user's own is the user's hash
    out = wrenpack.map_reduce(words, range(4), total, partitions=1, executor=executor).result(timeout=60)
    assert {k.text: v for k, v in out.items()} == {"a": 8, "b": 4, "c": 4}
    out = wrenpack.map_reduce(words, range(4), total, partitions=3, partition_fn=lambda k, r: ord(k.text) % r,
                              executor=executor).result(timeout=60)
    assert {k.text: v for k, v in out.items()} == {"a": 8, "b": 4, "c": 4}
    assert _left(executor) == []


def test_utf8_sig_lines_do_not_depend_on_where_the_chunks_are_cut(tmp_path):
    """Only an object's first bytes are its byte order mark: a chunk (or a record) that
    began with U+FEFF had it dropped, as if it were one, so `cat a.txt b.txt` of two files
    saved with BOMs gave other lines in chunks than whole."""
    import codecs

    raw = codecs.BOM_UTF8 + b"one\ntwo\n" + codecs.BOM_UTF8 + b"three\nfour"
    (tmp_path / "cat.txt").write_bytes(raw)
    want = ["one", "two", "\ufeffthree", "four"]  # what bytes.decode("utf-8-sig") of the whole gives
    assert raw.decode("utf-8-sig").split("\n") == want
    for chunk in (None, 4, 8, 11):
        ranges = wrenpack.objects(str(tmp_path / "cat.txt"), chunk_size=chunk)
        assert [line for r in ranges for line in r.lines(encoding="utf-8-sig")] == want, chunk
    (tmp_path / "semi.txt").write_bytes(codecs.BOM_UTF8 + b"a;" + codecs.BOM_UTF8 + b"b")  # records at another byte
    (r,) = wrenpack.objects(str(tmp_path / "semi.txt"), delimiter=b";")
    assert list(r.lines(encoding="utf-8-sig")) == ["a", "\ufeffb"]


def test_a_bit_flipped_in_a_partition_object_during_a_map_reduce_fails_it_with_corrupt_object(executor):
    """End to end, as an attacker with write access to the store would: mapper 1 flips a
    bit in mapper 0's partition object before its own index is written, so every reducer
    reads it after the flip; the job fails with CorruptObject and leaves nothing."""
    from wrenpack.errors import CorruptObject

    def mapper(i):
        if i == 1:
            import time

            store = wrenpack.store().store  # the store under wrenpack's own objects
            for _ in range(1000):
                written = [k for k in store.list(shuffle.PREFIX) if "/m00000-" in k]
                if written:
                    break
                time.sleep(0.01)
            blob = bytearray(store.get(written[0]))
            blob[len(blob) // 2] ^= 1
            store.put(written[0], bytes(blob))
        return [(i, b"x" * 1000)]

    fut = wrenpack.map_reduce(mapper, [0, 1], lambda k, vs: len(vs), partitions=1, executor=executor)
    with pytest.raises(CorruptObject, match="m00000-000 failed authentication.*nothing was unpickled"):
        fut.result(timeout=60)
    assert _left(executor) == []


def test_lines_of_a_raw_byte_chunk_are_refused_not_cut_through_characters(tmp_path):
    """A chunk made with delimiter=None ends at any byte: lines() decoded it as one
    record, so errors="replace" gave U+FFFD for characters its edges cut ('h\\ufffd',
    '\\ufffdl' for 'hé'), and strict named valid UTF-8 as invalid. It is refused in one
    line; a whole object stays one record, and raw=True gives the bytes as before."""
    (tmp_path / "t.txt").write_bytes("héllo\nwörld\n".encode())
    chunks = wrenpack.objects(str(tmp_path / "t.txt"), delimiter=None, chunk_size=2)
    for errors in ("strict", "replace"):
        with pytest.raises(ConfigError, match=r"t.txt: this range is part 1 of 7 .*delimiter=None.*delimiter=b'\\n'"):
            chunks[0].lines(errors=errors)
    assert b"".join(rec for r in chunks for rec in r.lines(raw=True)) == "héllo\nwörld\n".encode()
    (whole,) = wrenpack.objects(str(tmp_path / "t.txt"), delimiter=None)
    assert list(whole.lines()) == ["héllo\nwörld\n"]


def test_objects_takes_a_pathlib_path(tmp_path):
    """wrenpack.objects(Path(...)) was refused ("needs an s3:// URL, a path or
    wrenpack.store(), got PosixPath"): a path, as open() takes one."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_bytes(b"x\ny\n")
    assert [r.read() for r in wrenpack.objects(tmp_path / "d")] == [b"x\ny\n"]
    assert [line for r in wrenpack.objects(tmp_path / "d" / "a.txt", chunk_size=2) for line in r.lines()] == ["x", "y"]


def test_a_partition_fn_with_partitioned_true_is_refused_not_ignored(ex):
    """With partitioned=True the mapper returns its parts and partition_fn was never
    called: the job ran, the user's partitioning silently not applied."""
    with pytest.raises(ConfigError, match="with partitioned=True the mapper returns its R parts itself and "
                                          "partition_fn would never be called"):
        wrenpack.map_reduce(lambda x: [[x], []], [1, 2], lambda i, parts: parts, partitions=2, partitioned=True,
                            partition_fn=lambda k, r: 1, executor=ex)
    assert _left(ex) == []


@pytest.mark.parametrize("mapper, reducer, kw, match", [
    (_pairs, lambda values: 0, {"partitions": 2}, r"the reducer <lambda>\(values\) is called reducer\(key, values\) once "
                                                   r"per key with partitions=R: too many positional arguments"),
    (_pairs, lambda parts: 0, {"partitions": 2, "partitioned": True}, r"reducer\(i, parts\) with partitioned=True"),
    (_same, _count, {"fan_in": 2}, r"the reducer _count\(key, values\) is called reducer\(values\).*missing a required"),
    (_same, _count, {}, r"the reducer _count\(key, values\) is called reducer\(values\)"),
    (lambda a, b: 0, sum, {}, r"the mapper <lambda>\(a, b\) is called mapper\(item\)"),
])
def test_a_function_that_cannot_take_its_arguments_is_refused_before_launch(ex, mapper, reducer, kw, match):
    """A one-argument reducer given partitions=R (the plain form's reducer(results)) ran
    every mapper first, then failed each reducer with a TypeError; now one line, before
    anything runs (nothing is launched: the executor's store stays empty)."""
    with pytest.raises(ConfigTypeError, match=match):
        wrenpack.map_reduce(mapper, [1, 2], reducer, executor=ex, **kw)
    assert ex.store.list("") == []


def test_a_directory_with_a_dangling_symlink_or_a_fifo_lists_its_regular_files(tmp_path):
    """objects(dir) failed with a bare FileNotFoundError for a dangling symlink in it, and
    listed a FIFO as an empty object whose read() blocked for ever (open() of a FIFO
    waits for a writer). Only regular files (and symlinks to them) are objects."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_bytes(b"a\n")
    (tmp_path / "d" / "link.txt").symlink_to(tmp_path / "d" / "a.txt")
    (tmp_path / "d" / "broken").symlink_to(tmp_path / "nowhere")
    os.mkfifo(tmp_path / "d" / "fifo")
    ranges = wrenpack.objects(tmp_path / "d")
    assert [(r.key, r.read()) for r in ranges] == [("a.txt", b"a\n"), ("link.txt", b"a\n")]


def test_the_default_partition_of_one_names_an_unhashable_key_in_the_mapper():
    """With one partition no stable hash is computed (a key of any hashable type goes to
    partition 0), but a key that is not hashable is still refused there, in the mapper,
    not after every mapper ran."""
    assert shuffle.default_partition(_Word("a"), 1) == 0
    with pytest.raises(ConfigTypeError, match=r"key \[1, 2\] \(a list\) is not hashable"):
        shuffle.default_partition([1, 2], 1)


def test_a_delimiter_with_record_size_is_refused_not_ignored(tmp_path):
    """objects(..., delimiter=b";", record_size=4) cut fixed 4-byte records and ignored the
    delimiter without a word; the default newline (not asked for) still goes with record_size."""
    (tmp_path / "r.bin").write_bytes(b"ab;cd;efgh")
    with pytest.raises(ConfigError, match=r"delimiter=b';' and record_size=4 both say where records end"):
        wrenpack.objects(tmp_path / "r.bin", delimiter=b";", record_size=4)
    (r,) = wrenpack.objects(tmp_path / "r.bin", record_size=4)
    assert list(r.records()) == [b"ab;c", b"d;ef", b"gh"]


@dataclasses.dataclass(frozen=True)
class _Point:
    x: float


def test_equal_keys_the_default_partition_split_are_named_with_the_reason_not_a_partition_fn(executor):
    """A dataclass's P(x=0) == P(x=0.0), but the default partition hashes such keys by
    repr: they were reduced in two partitions and the job failed saying "make partition_fn
    send equal keys to one partition", a partition_fn the user never gave."""
    r = 2
    for n in range(50):  # two equal keys whose reprs the default hash sends apart (found, not assumed)
        if shuffle.default_partition(_Point(n), r) != shuffle.default_partition(_Point(float(n)), r):
            break
    else:
        pytest.fail("no pair of equal keys split by the default partition in 50 tries")
    fut = wrenpack.map_reduce(lambda i: [(_Point(n), 1), (_Point(float(n)), 1)], range(2), _count, partitions=r,
                              executor=executor)
    with pytest.raises(ConfigError, match=r"the equal keys _Point\(x=\d+(\.0)?\) and _Point\(x=\d+(\.0)?\) were reduced in "
                                          r"partitions 0 and 1: the default partition_fn hashes .* by their repr"):
        fut.result(timeout=60)
    assert _left(executor) == []


@pytest.mark.parametrize("name, args, match", [
    ("sort.py", ["--small", "--size", "1GB"], "--small sorts 2 MB: give --small or --size, not both"),
    ("wordcount.py", ["--small", "some/dir"], "--small counts generated text: give a source or --small, not both"),
])
def test_small_with_a_size_or_a_source_is_refused_not_ignored(tmp_path, name, args, match):
    """--small ran its own 2 MB (or generated text) and ignored the --size or source given
    with it, printing results for data the user had not asked about."""
    proc = _example(name, tmp_path, *args, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert match in proc.stderr.splitlines()[-1]
    assert _stored(tmp_path) == []


def test_per_object_refuses_two_sources_with_one_key_instead_of_merging_them(ex, tmp_path):
    """objects("d1") + objects("d2") of two directories that both hold a.txt: per_object
    gave {'a.txt': 33}, the two files reduced as one object."""
    for name, text in (("d1", b"1\n2\n"), ("d2", b"10\n20\n")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "a.txt").write_bytes(text)

    def total(r):
        return sum(int(x) for x in r.records())

    items = wrenpack.objects(tmp_path / "d1") + wrenpack.objects(tmp_path / "d2", chunk_size=3)
    with pytest.raises(ConfigError, match=r"per_object=True: .*d1/a.txt and .*d2/a.txt have the same key 'a.txt'"):
        wrenpack.map_reduce(total, items, sum, per_object=True, executor=ex)
    assert _left(ex) == []
    # one source, chunked: its chunks share the key, as before
    assert wrenpack.map_reduce(total, wrenpack.objects(tmp_path / "d2", chunk_size=3), sum, per_object=True,
                               executor=ex).result(timeout=60) == {"a.txt": 30}


def test_per_object_refuses_one_object_s_bytes_in_two_items(ex, tmp_path):
    """probe16's finding 3: one object's ranges twice (a listing concatenated with itself, or
    a chunked listing beside a whole one) gave {'a.txt': 6} for 3 lines, counted twice without
    a word. Refused before launch, naming the two items; an object's own chunks are fine."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_bytes(b"1\n2\n3\n")

    def count(r):
        return sum(1 for _ in r.lines())

    whole = wrenpack.objects(tmp_path / "d")
    for items, first, second in ((whole + whole, 0, 1), (wrenpack.objects(tmp_path / "d", chunk_size=2) + whole, 0, 3)):
        with pytest.raises(ConfigError, match=rf"items\[{first}\] and items\[{second}\] both hold bytes from 0 of 'a.txt'"):
            wrenpack.map_reduce(count, items, sum, per_object=True, executor=ex)
    assert _left(ex) == []
    assert wrenpack.map_reduce(count, wrenpack.objects(tmp_path / "d", chunk_size=2), sum, per_object=True,
                               executor=ex).result(timeout=60) == {"a.txt": 3}


@pytest.mark.parametrize("name, args", [("sort.py", ["--size", "100MB", "--memory", "1024"]), ("wordcount.py", ["--small"])])
def test_an_example_stopped_by_sigterm_leaves_nothing_in_the_store(tmp_path, name, args):
    """kill/timeout/a cancelled CI job (SIGTERM) ended sort.py at once: its input and output
    objects stayed in the store (426 MB for --size 200MB, in memory on /dev/shm). Their data
    is in scratch areas now: wrenpack's handler stops the calls and removes them, then
    SIGTERM ends the program (the examples' own handler, which ended it as Ctrl-C does with
    status 143, is gone)."""
    import signal
    import time

    env = {k: v for k, v in os.environ.items() if not k.startswith("WRENPACK_")}
    env.update(WRENPACK_STORAGE=str(tmp_path / "store"), WRENPACK_PROGRESS="false", WRENPACK_CONCURRENCY="2",
               PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, str(REPO / "examples" / name), *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not [p for p in _stored(tmp_path) if "/data/" in str(p)]:  # its data is in the store: stop it now
            assert proc.poll() is None and time.monotonic() < deadline, "it ended before it wrote anything"
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _stored(tmp_path) == [], err
    assert proc.returncode == -signal.SIGTERM, err
