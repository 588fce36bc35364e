"""S3Store against two S3 servers on 127.0.0.1, moto and ``rclone serve s3``
(real HTTP, real SigV4, real boto3). rclone checks signatures against its own
key and ignores ``If-None-Match``; where it differs from S3 a test says so."""
from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from wrenpack.errors import ObjectNotFound, StoreError
from wrenpack.storage import open_store, store_for_config
from wrenpack.storage.s3 import S3Store

#: under WRENPACK_TEST_IAM=enforce these drive the store with keys of their own, outside wrenpack's
#: layout, so IAM does not judge them (tests/aws/iam_proxy.py); the features' requests are judged elsewhere
pytestmark = pytest.mark.iam_identity("admin")


@pytest.fixture
def store(s3_server, request):
    s = S3Store(s3_server.bucket, f"t/{request.node.name.replace('[', '-').rstrip(']')}", endpoint_url=s3_server.endpoint)
    yield s
    s.delete_prefix("")


def test_roundtrip_and_prefix_isolation(store, s3_server):
    moto_endpoint, bucket = s3_server.endpoint, s3_server.bucket
    assert store.put("jobs/a/x.pkl", b"hello") is True
    assert store.get("jobs/a/x.pkl") == b"hello"
    assert store.exists("jobs/a/x.pkl") and not store.exists("jobs/a/nope")
    store.put("jobs/a/x.pkl", b"again")  # plain put overwrites
    assert store.get("jobs/a/x.pkl") == b"again"
    store.put("jobs/b/y.pkl", b"")
    assert store.list("jobs/") == ["jobs/a/x.pkl", "jobs/b/y.pkl"]
    assert store.list("jobs/a/") == ["jobs/a/x.pkl"]
    # keys are relative to the prefix; another prefix sees nothing
    other = S3Store(bucket, "elsewhere", endpoint_url=moto_endpoint)
    assert other.list("jobs/") == []
    store.delete("jobs/a/x.pkl")
    store.delete("jobs/a/x.pkl")  # absent: not an error
    with pytest.raises(ObjectNotFound):
        store.get("jobs/a/x.pkl")


def test_if_absent_first_write_wins_under_contention(store, s3_server):
    if not s3_server.if_none_match:
        pytest.skip(f"{s3_server.name} ignores If-None-Match (doctor warns; such stores need conditional_writes=false)")
    assert store.put("r.res", b"first", if_absent=True) is True
    assert store.put("r.res", b"second", if_absent=True) is False
    assert store.get("r.res") == b"first"
    barrier = threading.Barrier(8)

    def race(i):
        barrier.wait()
        return store.put("race.res", f"writer {i}".encode(), if_absent=True)

    with ThreadPoolExecutor(8) as pool:
        wins = list(pool.map(race, range(8)))
    assert wins.count(True) == 1
    assert store.get("race.res") == f"writer {wins.index(True)}".encode()


def test_best_effort_if_absent_without_conditional_writes(s3_server):
    s = S3Store(s3_server.bucket, "t/nocond", endpoint_url=s3_server.endpoint, conditional_writes=False)
    assert s.spec["conditional_writes"] is False
    assert s.put("k", b"1", if_absent=True) is True
    assert s.put("k", b"2", if_absent=True) is False
    assert s.get("k") == b"1"
    s.delete_prefix("")


def test_ranged_reads(store):
    store.put("blob", bytes(range(256)))
    assert store.get_range("blob", 10, 20) == bytes(range(10, 20))
    assert store.get_range("blob", 250, 300) == bytes(range(250, 256))
    assert store.get_range("blob", 300, 400) == b""
    assert store.get_range("blob", 5, 5) == b""
    with pytest.raises(ObjectNotFound):
        store.get_range("missing", 0, 10)


def test_multipart_upload_for_large_objects(s3_server):
    moto_endpoint, bucket = s3_server.endpoint, s3_server.bucket
    s = S3Store(bucket, "t/multipart", endpoint_url=moto_endpoint, multipart_threshold=5 * 1024 * 1024)
    s.single_put_limit = 6 * 1024 * 1024  # (5 GB in real use) above it, a conditional write is a multipart upload
    data = bytes(range(256)) * (12 * 4096)  # 12 MiB -> parts
    assert s.put("big.bin", data, if_absent=True) is True
    import boto3

    client = boto3.client("s3", endpoint_url=moto_endpoint)
    head = client.head_object(Bucket=bucket, Key="t/multipart/big.bin")
    if s3_server.name == "moto":
        assert "-" in head["ETag"]  # a multipart ETag is "<md5>-<parts>" (rclone gives the whole object's MD5)
    assert s.get("big.bin") == data
    assert s.get_range("big.bin", 5 * 2**20 - 3, 5 * 2**20 + 3) == data[5 * 2**20 - 3 : 5 * 2**20 + 3]
    if s3_server.if_none_match:
        # First-write-wins for large results too: the completion is conditional (If-None-Match).
        assert s.put("big.bin", bytes(len(data)), if_absent=True) is False
        assert s.get("big.bin") == data
        assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")  # the loser's parts are gone
    # Without conditional writes (what a store like rclone needs): best effort, HEAD first.
    best_effort = S3Store(bucket, "t/multipart", endpoint_url=moto_endpoint, multipart_threshold=5 * 1024 * 1024,
                          conditional_writes=False)
    best_effort.single_put_limit = s.single_put_limit
    assert best_effort.put("big.bin", bytes(len(data)), if_absent=True) is False
    assert s.get("big.bin") == data
    s.delete_prefix("")


def test_list_and_delete_prefix_paginate_and_batch(store):
    # Small pages and batches exercise S3's continuation tokens and batched
    # deletes without writing thousands of objects.
    store.list_page_size = 7
    store.delete_batch = 10
    keys = [f"jobs/j/result/{i:05d}.res" for i in range(45)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: store.put(k, b"x"), keys))
    store.put("jobs/other/keep", b"x")
    assert store.list("jobs/j/") == keys
    assert store.delete_prefix("jobs/j/") == 45
    assert store.list("jobs/") == ["jobs/other/keep"]


def test_delete_prefixes_removes_a_map_reduces_shard_prefixes_side_by_side(store):
    """A map_reduce's objects lie under one prefix per shard it used and its own
    (``keys.shuffle_prefixes``): ``delete_prefixes`` lists and deletes them in parallel,
    and leaves another map_reduce's objects in the same shards."""
    from wrenpack import keys

    mine, other = "0123456789ab", "ba9876543210"
    made = [keys.shuffle_part_key(mine, m) for m in range(20)] + [keys.shuffle_owner_key(mine)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: store.put(k, b"x"), made + [keys.shuffle_part_key(other, 3)]))
    assert store.delete_prefixes(keys.shuffle_prefixes(mine, 20)) == 21
    assert store.list("shuffle/") == [keys.shuffle_part_key(other, 3)]
    assert store.delete_prefixes([]) == 0


def test_delete_prefixes_works_at_interpreter_exit(store):
    """The executor removes a map_reduce still running when the program ends from an
    atexit hook, where concurrent.futures refuses new work: its ThreadPoolExecutor raised
    "cannot schedule new futures after interpreter shutdown", and every object stayed."""
    import json
    import subprocess
    import sys

    from wrenpack import keys

    sid = "0123456789ab"
    made = [keys.shuffle_part_key(sid, m) for m in range(5)] + [keys.shuffle_owner_key(sid)]
    for key in made:
        store.put(key, b"x")
    code = ("import atexit, json, sys\n"
            "from wrenpack.storage.s3 import S3Store\n"
            "from wrenpack import keys\n"
            "store = S3Store.from_spec(json.loads(sys.argv[1]))\n"
            "import concurrent.futures.thread  # (its exit hook runs before atexit's, as in a program that used it)\n"
            "atexit.register(lambda: print('removed', store.delete_prefixes(keys.shuffle_prefixes(sys.argv[2], 5))))\n")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(store.spec), sid], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "removed 6", proc.stderr
    assert store.list("shuffle/") == []


def test_spec_is_jsonable_secret_free_and_reopens(s3_server):
    moto_endpoint, bucket = s3_server.endpoint, s3_server.bucket
    s = S3Store(bucket, "/p/q/", endpoint_url=moto_endpoint, region="us-east-1", profile="someone")
    spec = s.spec
    assert json.loads(json.dumps(spec)) == spec
    assert spec == {"type": "s3", "bucket": bucket, "prefix": "p/q", "region": "us-east-1", "endpoint_url": moto_endpoint}
    again = open_store(spec)
    assert isinstance(again, S3Store) and again.spec == spec and again.profile is None


def test_store_for_config_applies_aws_settings(s3_server):
    moto_endpoint, bucket = s3_server.endpoint, s3_server.bucket
    class Cfg:
        storage = f"s3://{bucket}/cfg"
        s3_endpoint_url = moto_endpoint
        aws_region = "us-east-1"
        aws_profile = None

    s = store_for_config(Cfg())
    assert s.spec["endpoint_url"] == moto_endpoint and s.prefix == "cfg"
    s.put("k", b"v")
    assert s.get("k") == b"v"
    s.delete_prefix("")


def test_clear_errors_for_missing_bucket_and_profile(s3_server):
    moto_endpoint = s3_server.endpoint
    s = S3Store("no-such-bucket-here", "p", endpoint_url=moto_endpoint)
    with pytest.raises(StoreError, match="bucket 'no-such-bucket-here' does not exist"):
        s.put("k", b"v")
    with pytest.raises(StoreError, match="does not exist"):
        s.list("")
    bad = S3Store("b", "p", endpoint_url=moto_endpoint, profile="no-such-profile-xyz")
    with pytest.raises(Exception, match="profile 'no-such-profile-xyz' not found"):
        bad.get("k")


def test_unreachable_endpoint_is_one_line_store_error(closed_port):
    s = S3Store("b", "p", endpoint_url=f"http://127.0.0.1:{closed_port}", max_attempts=1)
    with pytest.raises(StoreError, match="cannot reach S3") as info:
        s.get("k")
    assert "\n" not in str(info.value)


def test_list_folders_reads_one_level(store):
    """``wrenpack jobs`` finds the jobs from one level of the listing (S3's
    CommonPrefixes), not from every object under them."""
    for key in ("jobs/a/x.pkl", "jobs/a/result/0/1.res", "jobs/b/c/d.pkl", "jobs/loose.txt", "other/z/y"):
        store.put(key, b"x")
    assert store.list_folders("jobs/") == ["a", "b"]
    assert store.list_folders("jobs/b/") == ["c"]
    assert store.list_folders("nothing/") == []
    calls = []
    store.client.meta.events.register("provide-client-params.s3.ListObjectsV2", lambda params, **kw: calls.append(dict(params)))
    store.list_folders("jobs/")
    assert len(calls) == 1 and calls[0].get("Delimiter") == "/"


def test_delete_prefix_aborts_the_uploads_left_unfinished_under_it(store, s3_server):
    """A writer stopped between its first part and its completion (a call killed at its
    timeout while it wrote a large result) leaves an upload that no object listing shows
    and S3 keeps, and bills, until it is aborted: deleting the prefix (a job's cleanup)
    used to leave it. Uploads under other prefixes are not touched."""
    client, bucket = store.client, store.bucket
    mine = client.create_multipart_upload(Bucket=bucket, Key=store._key("jobs/j1/result/00001"))["UploadId"]
    client.upload_part(Bucket=bucket, Key=store._key("jobs/j1/result/00001"), UploadId=mine, PartNumber=1, Body=b"x" * 1024)
    other_key = store._key("jobs/j2/result/00001")
    other = client.create_multipart_upload(Bucket=bucket, Key=other_key)["UploadId"]
    store.put("jobs/j1/func.pkl", b"f")

    def unfinished() -> set[str]:
        got = client.list_multipart_uploads(Bucket=bucket, Prefix=store.prefix + "/")
        return {u["UploadId"] for u in got.get("Uploads") or ()}

    if mine not in unfinished():
        pytest.skip(f"{s3_server.name} does not list unfinished multipart uploads")
    assert store.delete_prefix("jobs/j1/") == 1
    assert unfinished() == {other}
    client.abort_multipart_upload(Bucket=bucket, Key=other_key, UploadId=other)


def test_a_read_sees_one_version_of_an_object_replaced_meanwhile(store, monkeypatch):
    """A stream (``store().open()``, an ``ObjectRange``) asked S3 for each block by key again: an
    object replaced while it was read gave the old version's first blocks and the new one's rest,
    with no error, and a range listed before a replacement read the new object cut at the old size.
    The first response's ETag (or the listing's) now goes with every later GET as If-Match: a
    replaced object is one line, and an unchanged one costs no request more than before."""
    from wrenpack.storage.data import DataStore

    monkeypatch.setattr("wrenpack.storage.data._BLOCK", 1024)
    data = DataStore(store)
    data.put("t/x", b"A" * 10_000)
    sent: list[tuple[str, dict]] = []
    for op in ("GetObject", "HeadObject"):
        store.client.meta.events.register(f"provide-client-params.s3.{op}",
                                          lambda params, _op=op, **kw: sent.append((_op, dict(params))))
    with data.open("t/x") as f:
        first = f.read(1000)
        data.put("t/x", b"B" * 12_000)
        with pytest.raises(StoreError, match=r"s3://.*/data/t/x changed while it was read.*: it was replaced; read it again") as info:
            f.read()
    assert type(info.value).__name__ == "ObjectChanged" and "\n" not in str(info.value)
    assert first == b"A" * 1000
    # unchanged: one HEAD (the size open() needs, as before) and one GET a block, each pinned to the version
    sent.clear()
    with data.open("t/x") as f:
        assert b"".join(iter(lambda: f.read(1000), b"")) == b"B" * 12_000
    asked = list(sent)
    etag = store.client.head_object(Bucket=store.bucket, Key=store._key("data/t/x"))["ETag"]
    assert [op for op, _ in asked] == ["HeadObject"] + ["GetObject"] * 12
    assert all(params.get("IfMatch") == etag for _, params in asked[1:])  # (the HEAD found the version)
    # a range listed before a replacement (of another size, or the same) is refused, not cut at the old size
    for replacement in (b"C" * 5_000, b"D" * 12_000):
        ranges = data.objects("t/", chunk_size=4000)
        data.put("t/x", replacement)
        for r in ranges:
            for read in (r.read, lambda r=r: list(r.records())):
                with pytest.raises(StoreError, match=r"/data/t/x changed since it was listed.*list it again") as info:
                    read()
                assert type(info.value).__name__ == "ObjectChanged"
    assert b"".join(r.read() for r in data.objects("t/", chunk_size=4000)) == b"D" * 12_000


def test_a_key_s3_cannot_hold_is_refused_before_s3_is_asked(store):
    """A key with a lone surrogate (os.listdir's name for a file whose name is not UTF-8) failed on
    S3 with a UnicodeEncodeError wrapped in "S3 failed to write", where a local store took it."""
    from wrenpack.storage.data import DataStore

    with pytest.raises(StoreError, match=r"invalid data key 'logs/a\\udcffb.txt': character 6 .* is a lone surrogate"):
        DataStore(store).put("logs/a\udcffb.txt", b"1")
