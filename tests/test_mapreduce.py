"""map_reduce: shuffle with R partitions, reducer per object, tree reduce, cleanup, sealing."""
from __future__ import annotations

import collections
import random
import time

import pytest

import wrenpack
from wrenpack.errors import ConfigError, CorruptObject
from wrenpack.worker import shuffle

TEXTS = [" ".join(random.Random(i).choice("ab bc cd de ef fg gh hi".split()) for _ in range(200)) for i in range(6)]


def words(text):
    return [(w, 1) for w in text.split()]


def count(word, ones):
    return sum(ones)


def _left(executor):
    return executor.store.list(shuffle.PREFIX)


@pytest.mark.parametrize("partitions", [1, 3])
def test_shuffle_wordcount_equals_a_local_count(executor, partitions):
    fut = wrenpack.map_reduce(words, TEXTS, count, partitions=partitions, executor=executor)
    expected = collections.Counter(w for t in TEXTS for w in t.split())
    assert fut.result(timeout=120) == dict(expected)
    assert _left(executor) == []  # partition objects removed after the job


def test_a_map_reduce_leaves_no_folder_in_a_local_store(executor):
    """Its objects are under one prefix per shard it used (``shuffle/<shard>/<id>/``) and its
    own (``shuffle/<id>/``): removing them leaves no folder behind, not even the shards'."""
    import os

    from wrenpack.storage.local import LocalStore

    if not isinstance(executor.store, LocalStore):
        pytest.skip("folders are the local store's")
    texts = TEXTS * 11  # 66 mappers: every shard, two of them twice
    assert wrenpack.map_reduce(words, texts, count, partitions=2, executor=executor).result(timeout=120)
    assert wrenpack.map_reduce(lambda x: x, range(66), sum, fan_in=4, executor=executor).result(timeout=120) == 2145
    root = os.path.join(executor.store.root, "shuffle")
    assert [d for d, _dirs, _files in os.walk(root) if d != root] == [] and _left(executor) == []


def test_shuffle_partitioned_output_range_partitions_sort(executor):
    rng = random.Random(7)
    chunks = [[rng.randrange(1000) for _ in range(300)] for _ in range(4)]

    def split(xs):  # already-partitioned output: part i holds values in [250 i, 250 (i + 1))
        parts = [[] for _ in range(4)]
        for x in xs:
            parts[x // 250].append(x)
        return parts

    def merge(i, parts):
        return i, sorted(x for p in parts for x in p)

    out = wrenpack.map_reduce(split, chunks, merge, partitions=4, partitioned=True, executor=executor).result(timeout=120)
    assert [i for i, _ in out] == [0, 1, 2, 3]
    assert [x for _, part in out for x in part] == sorted(x for c in chunks for x in c)
    assert _left(executor) == []


def test_shuffle_with_a_partition_function_and_empty_partitions(executor):
    out = wrenpack.map_reduce(lambda n: [(n % 2, n)], range(10), lambda k, vs: sorted(vs), partitions=5,
                              partition_fn=lambda k, r: k, executor=executor).result(timeout=120)
    assert out == {0: [0, 2, 4, 6, 8], 1: [1, 3, 5, 7, 9]}
    with pytest.raises(ValueError, match="returned 7, not 0..4"):
        wrenpack.map_reduce(lambda n: [(n, n)], [1], count, partitions=5, partition_fn=lambda k, r: 7,
                            executor=executor).result(timeout=60)
    assert _left(executor) == []


def test_reducer_per_object(executor):
    s = wrenpack.store(executor)
    s.put("po/a.txt", b"".join(b"%d\n" % i for i in range(100)))
    s.put("po/b.txt", b"".join(b"%d\n" % i for i in range(100, 130)))
    ranges = s.objects("po/", chunk_size=64)
    assert len(ranges) > 3

    def total(r):
        return sum(int(x) for x in r.records())

    out = wrenpack.map_reduce(total, ranges, sum, per_object=True, executor=executor).result(timeout=120)
    assert out == {"po/a.txt": sum(range(100)), "po/b.txt": sum(range(100, 130))}
    out = wrenpack.map_reduce(total, ranges, sum, per_object=True, fan_in=2, executor=executor).result(timeout=120)
    assert out == {"po/a.txt": sum(range(100)), "po/b.txt": sum(range(100, 130))}
    s.delete_prefix("po/")
    assert _left(executor) == []


def test_tree_reduce_keeps_order_and_cleans_up(executor):
    def concat(parts):  # associative, not commutative: order must be kept
        return "".join(parts)

    letters = [chr(ord("a") + i) for i in range(11)]
    fut = wrenpack.map_reduce(str.upper, letters, concat, fan_in=3, executor=executor)
    assert fut.result(timeout=120) == "ABCDEFGHIJK"
    assert wrenpack.map_reduce(str.upper, ["x"], concat, fan_in=2, executor=executor).result(timeout=60) == "X"
    assert _left(executor) == []


def test_no_items_give_each_forms_result_for_no_data(executor):
    """An empty input is no data, not an error: every form gives what it gives for no
    data, as the plain form (one ``reducer([])`` call) always did. The tree form
    used to loop for ever on its driver thread (no level ever had one value left),
    the per-object form raised a ThreadPoolExecutor error, and the shuffle forms were refused."""
    def pairs(x):
        return [(x, 1)]

    def parts(x):
        return [b"", b""]

    def seen(values):
        return ("reduced", values)

    def by_part(i, got):
        return (i, got)

    for items in ([], iter(())):
        assert wrenpack.map_reduce(pairs, items, seen, executor=executor).result(timeout=60) == ("reduced", [])
        assert wrenpack.map_reduce(pairs, items, seen, fan_in=2, executor=executor).result(timeout=60) == ("reduced", [])
        assert wrenpack.map_reduce(pairs, items, count, partitions=3, executor=executor).result(timeout=60) == {}
        assert wrenpack.map_reduce(parts, items, by_part, partitions=2, partitioned=True,
                                   executor=executor).result(timeout=60) == [(0, []), (1, [])]
        assert wrenpack.map_reduce(pairs, items, seen, per_object=True, executor=executor).result(timeout=60) == {}
        assert wrenpack.map_reduce(pairs, items, seen, per_object=True, fan_in=2, executor=executor).result(timeout=60) == {}
    assert _left(executor) == []


def test_a_failing_mapper_fails_the_job_and_leaves_nothing(executor):
    def sometimes(n):
        if n == 3:
            raise KeyError("three")
        return [(n, n)]

    fut = wrenpack.map_reduce(sometimes, range(6), count, partitions=2, executor=executor)
    with pytest.raises(KeyError, match="three"):
        fut.result(timeout=120)
    assert _left(executor) == []


def test_bad_forms_are_one_line_errors(executor):
    with pytest.raises(ConfigError, match="partitions=0"):
        wrenpack.map_reduce(words, TEXTS, count, partitions=0, executor=executor)
    with pytest.raises(ConfigError, match=r"partitions=10000000 is more reducers than one map_reduce runs \(at most 100,000\)"):
        wrenpack.map_reduce(words, TEXTS, count, partitions=10**7, executor=executor)  # (before: launched 10 million calls)
    with pytest.raises(ConfigError, match="need partitions=R"):
        wrenpack.map_reduce(words, TEXTS, count, partitioned=True, executor=executor)
    with pytest.raises(ConfigError, match="per_object=True needs"):
        wrenpack.map_reduce(words, TEXTS, sum, per_object=True, executor=executor)
    with pytest.raises(ConfigError, match="fan_in=1"):
        wrenpack.map_reduce(words, TEXTS, sum, fan_in=1, executor=executor)
    with pytest.raises(ValueError, match="must yield \\(key, value\\) pairs"):
        wrenpack.map_reduce(lambda t: [len(t)], TEXTS[:1], count, partitions=2, executor=executor).result(timeout=60)


def test_partition_objects_are_sealed(executor):
    store = executor.store
    secret = shuffle.new_secret()
    key = shuffle.part_key("t3st", 0, 0)
    shuffle.put(store, key, secret, [("k", 1)])
    assert shuffle.get(store, key, secret) == [("k", 1)]
    blob = bytearray(store.get(key))
    blob[-1] ^= 1
    store.put(key, bytes(blob))
    with pytest.raises(CorruptObject, match="failed authentication"):
        shuffle.get(store, key, secret)
    with pytest.raises(CorruptObject):
        shuffle.get(store, key, shuffle.new_secret())
    store.delete_prefixes(shuffle.prefixes("t3st", 1))


def test_old_signature(executor):
    assert wrenpack.map_reduce(lambda x: x * 2, range(5), sum, executor=executor).result(timeout=60) == 20


def _slow_last(n, fail=False, delay=1.5):
    """A mapper whose item ``n - 1`` is a straggler (and fails, with ``fail``)."""

    def mapper(x):
        import time

        if x == n - 1:
            time.sleep(delay)
            if fail:
                raise KeyError("straggler")
        return [(x % 3, x)]

    return mapper


def _stats(caplog):
    runs = [r.wrenpack_shuffle for r in caplog.records if hasattr(r, "wrenpack_shuffle")]
    assert runs, "map_reduce logged no shuffle statistics"
    return runs[-1]


def test_reducers_start_on_the_sections_written_while_a_straggler_runs(executor, caplog):
    caplog.set_level("DEBUG", logger="wrenpack.executor.mapreduce")
    out = wrenpack.map_reduce(_slow_last(4), range(4), lambda k, vs: sorted(vs), partitions=3,
                              executor=executor).result(timeout=120)
    assert out == {0: [0, 3], 1: [1], 2: [2]}
    assert _stats(caplog)["early_reducers"] >= 1  # a slot was idle while the straggler ran
    assert _left(executor) == []


def test_a_failing_straggler_stops_the_reducers_waiting_for_it(executor, caplog):
    caplog.set_level("DEBUG", logger="wrenpack.executor.mapreduce")
    t0 = time.monotonic()
    fut = wrenpack.map_reduce(_slow_last(4, fail=True, delay=1.0), range(4), lambda k, vs: vs, partitions=3,
                              executor=executor)
    with pytest.raises(KeyError, match="straggler"):
        fut.result(timeout=120)
    assert any("started early" in r.getMessage() or "launched together" in r.getMessage() for r in caplog.records)
    # the early reducer stopped at the abort, not at its waiting budget (a quarter of its timeout)
    assert time.monotonic() - t0 < 30
    assert _left(executor) == []


@pytest.mark.slow
def test_an_early_reducer_that_waits_too_long_runs_again_after_the_map_phase(executor, caplog):
    caplog.set_level("DEBUG", logger="wrenpack.executor.mapreduce")
    # timeout=4: an early reducer waits at most 1 s; the straggler takes 3
    out = wrenpack.map_reduce(_slow_last(4, delay=3.0), range(4), lambda k, vs: sorted(vs), partitions=3,
                              timeout=4, executor=executor).result(timeout=120)
    assert out == {0: [0, 3], 1: [1], 2: [2]}
    assert _stats(caplog)["early_reducers"] >= 1
    assert any("ran out of waiting time" in r.getMessage() for r in caplog.records)
    assert _left(executor) == []


def _pid_parts(x):
    import os

    return [[(os.getpid(), x)], [(os.getpid(), -x)]]


def _pid_reduce(i, parts):
    import os

    return os.getpid(), {pid for part in parts for pid, _ in part}, sorted(v for part in parts for _, v in part)


def test_on_a_warm_pool_the_reducers_run_in_the_processes_the_mappers_warmed(executor, caplog):
    # One launch, one job: a worker runs the reducers in the process it ran the mappers in
    # (a job's process is the job's own: a launch of its own would start cold ones).
    if not executor.backend.capabilities.warm_pool:
        pytest.skip("a backend without a warm pool launches the reducers after the map phase")
    caplog.set_level("DEBUG", logger="wrenpack.executor.mapreduce")
    out = wrenpack.map_reduce(_pid_parts, range(6), _pid_reduce, partitions=2, partitioned=True,
                              executor=executor).result(timeout=120)
    assert [values for _, _, values in out] == [list(range(6)), sorted(-x for x in range(6))]
    for reducer_pid, mapper_pids, _ in out:
        assert reducer_pid in mapper_pids
    assert _stats(caplog)["early_reducers"] == 2  # every reducer went out with the mappers
    assert _left(executor) == []


def test_reducers_with_other_options_than_the_mappers_launch_on_their_own(executor, caplog):
    caplog.set_level("DEBUG", logger="wrenpack.executor.mapreduce")
    other = 384 if executor.config.memory != 384 else 512  # not the mappers' memory
    reducer = wrenpack.remote(_pid_reduce, executor=executor, memory=other)
    out = wrenpack.map_reduce(_pid_parts, range(6), reducer, partitions=2, partitioned=True,
                              executor=executor).result(timeout=120)
    assert [values for _, _, values in out] == [list(range(6)), sorted(-x for x in range(6))]
    assert not any("launched together" in r.getMessage() for r in caplog.records)
    assert _left(executor) == []


def test_a_second_map_reduce_of_the_same_functions_runs_in_the_processes_the_first_warmed(executor):
    # The map_reduce's id travels with each call, not inside the task function, so the
    # next map_reduce of the same functions is the same isolation domain: its tasks run
    # in the job processes the first one started (imports loaded, freed memory kept).
    if not executor.backend.capabilities.warm_pool:
        pytest.skip("a backend without a warm pool has no job processes to reuse")
    runs = [wrenpack.map_reduce(_pid_parts, range(4), _pid_reduce, partitions=2, partitioned=True,
                                executor=executor).result(timeout=120) for _ in range(2)]
    first = {pid for reducer_pid, mapper_pids, _ in runs[0] for pid in (reducer_pid, *mapper_pids)}
    second = {pid for reducer_pid, mapper_pids, _ in runs[1] for pid in (reducer_pid, *mapper_pids)}
    assert second <= first, (first, second)
    assert [values for _, _, values in runs[1]] == [list(range(4)), sorted(-x for x in range(4))]
    assert _left(executor) == []


def _refaults(i, parts):
    import resource

    block = bytearray(64 << 20)  # allocated and zeroed: touched
    del block
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    again = bytearray(64 << 20)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    del again
    return after - before


def test_a_shuffle_task_reuses_the_memory_it_freed(executor):
    # In the worker, a shuffle task's process keeps big freed blocks (glibc would unmap
    # them, and the next allocation would touch new memory: a page fault per page).
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc's mallopt is what keeps freed blocks; this Python's C library is not glibc")
    out = wrenpack.map_reduce(_pid_parts, range(2), _refaults, partitions=2, partitioned=True,
                              executor=executor).result(timeout=120)
    assert all(faults < 8 for faults in out), out


def _resident_mb():
    import resource

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() >> 20


def _hold(limit_share=0.4):
    import os

    block = bytearray(int(int(os.environ["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"]) * limit_share) << 20)
    del block  # freed: a shuffle task's process keeps it for the next task


def _holding_parts(x):
    _hold()
    return [[x], [-x]]


def _report_then_hold(i, parts):
    resident = _resident_mb()
    _hold()
    return resident


def test_memory_kept_from_an_earlier_map_reduce_is_handed_back_under_a_smaller_limit(executor):
    # The next map_reduce of the same functions runs in the processes the first ran in,
    # here with half the memory limit: what the first kept must not count against it.
    import platform

    if platform.libc_ver()[0] != "glibc" or not executor.backend.capabilities.warm_pool:
        pytest.skip("needs glibc (mallopt, malloc_trim) and a warm pool")
    for memory in (512, 256):
        out = wrenpack.map_reduce(_holding_parts, range(4), _report_then_hold, partitions=2, partitioned=True,
                                  executor=executor, memory=memory).result(timeout=120)
    assert max(out) < 256 // 2 + 64, out  # without the hand-back, the first run's ~205 MB would be resident too


def test_a_partition_fn_may_return_numpy_integers_but_not_bools(executor):
    """A partition number is any integer (numpy's too, as a list index takes it); a bool
    is refused in one line as True is everywhere a number is asked for."""
    np = pytest.importorskip("numpy")
    out = wrenpack.map_reduce(lambda n: [(n, n)], range(6), count, partitions=3,
                              partition_fn=lambda k, r: np.int64(k % r), executor=executor).result(timeout=60)
    assert out == {0: 0, 3: 3, 1: 1, 4: 4, 2: 2, 5: 5}
    for returns, shown in ((lambda k, r: k > 2, "True"), (lambda k, r: np.bool_(k > 2), "True_?"),
                           (lambda k, r: 1.0, "1.0"), (lambda k, r: -1, "-1")):
        with pytest.raises(ValueError, match=rf"partition_fn\(3, 2\) returned .*{shown}, not 0..1; make it return a partition number") as info:
            wrenpack.map_reduce(lambda n: [(n, n)], [3], count, partitions=2, partition_fn=returns,
                                executor=executor).result(timeout=60)
        assert "\n" not in str(info.value)
    assert _left(executor) == []


def test_partitions_and_fan_in_may_be_numpy_integers(executor):
    """partitions=R computed with numpy (np.int64) is a whole number as range() takes it; True is not."""
    np = pytest.importorskip("numpy")
    out = wrenpack.map_reduce(lambda n: [(n % 3, 1)], range(6), count, partitions=np.int64(2),
                              executor=executor).result(timeout=60)
    assert out == {0: 2, 1: 2, 2: 2}
    assert wrenpack.map_reduce(str, range(5), "".join, fan_in=np.int32(2), executor=executor).result(timeout=60) == "01234"
    for bad in ({"partitions": True}, {"partitions": np.int64(0)}, {"fan_in": True}, {"fan_in": 2.0}):
        with pytest.raises(ConfigError, match=f"{list(bad)[0]}=.* must be a whole number"):
            wrenpack.map_reduce(lambda n: [(n, 1)], [1], count, executor=executor, **bad)
    assert _left(executor) == []


# -- map_reduce as a concurrent.futures user expects of its future and its executor -------------
FORMS = {"single": ({}, sum), "shuffle": ({"partitions": 2}, count), "tree": ({"fan_in": 2}, sum)}


def _pairs_or_value(form):
    return (lambda x: [(x % 2, x)]) if form == "shuffle" else (lambda x: x)


def _sleepy(form, seconds):
    def mapper(x):
        import time

        time.sleep(seconds)
        return [(x % 2, x)] if form == "shuffle" else x

    return mapper


@pytest.mark.parametrize("form", FORMS)
def test_what_cannot_be_launched_is_raised_by_map_reduce_itself(make_executor, form):
    """As submit() raises them: an item or a reducer that cannot be pickled, and an executor
    that was shut down, fail map_reduce(...) at once; nothing runs (the shuffle and tree
    forms raised them only from result(), after the mappers had run)."""
    import threading

    from wrenpack.errors import ExecutorShutdown, SerializationError

    ex = make_executor(concurrency=2)
    kw, reducer = FORMS[form]
    lock = threading.Lock()
    with pytest.raises(SerializationError, match="_thread.lock"):
        wrenpack.map_reduce(_pairs_or_value(form), [1, lock], reducer, executor=ex, **kw)
    with pytest.raises(SerializationError, match="lock"):
        wrenpack.map_reduce(_pairs_or_value(form), [1, 2], lambda *a: lock, executor=ex, **kw)
    ex.shutdown()
    with pytest.raises(ExecutorShutdown):
        wrenpack.map_reduce(_pairs_or_value(form), [1, 2], reducer, executor=ex, **kw)
    assert _left(ex) == []


@pytest.mark.parametrize("form", FORMS)
def test_an_item_that_cannot_be_pickled_is_named_by_its_place_in_items(executor, form):
    """It said "cannot send argument 2 of call 3 of pairs (map) and add (reduce)": argument 2
    of the internal task tuple (argument 0 in the plain form), not the user's items[3]."""
    import threading

    from wrenpack.errors import SerializationError

    kw, reducer = FORMS[form]
    lock = threading.Lock()
    for items, where in (([1, 2, 3, lock], r"items\[3\]"), ([(1, lock)], r"item 1 of items\[0\]")):
        with pytest.raises(SerializationError, match=rf"^cannot send {where} of map_reduce\(.*\) \(a _thread.lock\): "
                                                     r"cannot pickle '_thread.lock' object; pass plain data") as info:
            wrenpack.map_reduce(_pairs_or_value(form), items, reducer, executor=executor, **kw)
        assert "argument" not in str(info.value) and "call 3" not in str(info.value)
        assert "\n" not in str(info.value)
    assert _left(executor) == []


@pytest.mark.parametrize("form", FORMS)
def test_an_item_too_large_for_the_mappers_memory_is_named_by_its_place_in_items(executor, form):
    """It said "the arguments of call 2 of <lambda> pickle to 129 MB": the mapper's call, not
    the user's items[2]; checked before anything runs, and the next map_reduce still works."""
    from wrenpack.errors import PayloadTooLarge

    kw, reducer = FORMS[form]
    big = b"x" * (129 * 2**20)
    with pytest.raises(PayloadTooLarge, match=r"^items\[2\] of map_reduce\(.*\) pickles to 129 MB, more than the "
                                              r"mapper's memory=128 MB; raise memory=") as info:
        wrenpack.map_reduce(_pairs_or_value(form), [b"a", b"b", big], reducer, executor=executor, memory=128, **kw)
    assert "call 2" not in str(info.value) and "\n" not in str(info.value)
    assert info.value.call_index == 2
    del big
    assert _left(executor) == []
    expected = {0: 2, 1: 4} if form == "shuffle" else 6
    assert wrenpack.map_reduce(_pairs_or_value(form), [1, 2, 3], reducer, executor=executor, **kw).result() == expected


@pytest.mark.parametrize("form,role", [("single", "mapper"), ("single", "reducer"), ("shuffle", "mapper"),
                                       ("shuffle", "reducer"), ("shuffle", "partition_fn"), ("tree", "mapper"),
                                       ("tree", "reducer")])
def test_a_function_that_cannot_be_pickled_is_named_by_its_role(executor, form, role):
    """The shuffle and tree forms send the user's functions inside wrappers of their own, so
    it said "closure variable 'lock' of closure variable 'reducer' of function
    'make_task.<locals>.shuffle_task'": now the reducer, named as the user knows it."""
    import threading

    from wrenpack.errors import SerializationError

    kw, reducer = FORMS[form]
    lock = threading.Lock()
    mapper = _pairs_or_value(form)
    fns = {"mapper": mapper, "reducer": reducer, "partition_fn": lambda k, r: 0}
    held = {"mapper": lambda x: lock and mapper(x), "reducer": lambda *a: lock and reducer(*a),
            "partition_fn": lambda k, r: lock and 0}
    fns[role] = held[role]
    if form == "shuffle":
        kw = {**kw, "partition_fn": fns["partition_fn"]}
    with pytest.raises(SerializationError, match=rf"^cannot send closure variable 'lock' of the {role} .*<lambda> of "
                                                 r"map_reduce\(.*\) \(a _thread.lock\): cannot pickle") as info:
        wrenpack.map_reduce(fns["mapper"], [1, 2], fns["reducer"], executor=executor, **kw)
    assert "make_" not in str(info.value) and "\n" not in str(info.value)
    assert _left(executor) == []


@pytest.mark.parametrize("form", FORMS)
def test_shutdown_waits_for_a_running_map_reduce(make_executor, form):
    """shutdown(wait=True), a `with` block's end, waits for a map_reduce accepted before it,
    which completes (its later phases were refused with ExecutorShutdown and the future failed)."""
    ex = make_executor(concurrency=2)
    kw, reducer = FORMS[form]
    fut = wrenpack.map_reduce(_sleepy(form, 0.3), range(3), reducer, executor=ex, **kw)
    ex.shutdown(wait=True)
    assert fut.done()
    assert fut.result(timeout=0) == ({0: 2, 1: 1} if form == "shuffle" else 3)
    assert _left(ex) == []


@pytest.mark.parametrize("form", FORMS)
def test_shutdown_with_cancel_futures_cancels_a_running_map_reduce(make_executor, form):
    """shutdown(cancel_futures=True): the calls not started never run, the future fails with
    CallCancelled (a CancelledError) once the running ones end, and nothing is left."""
    import concurrent.futures as cf

    from wrenpack.errors import CallCancelled

    ex = make_executor(concurrency=2)
    kw, reducer = FORMS[form]
    fut = wrenpack.map_reduce(_sleepy(form, 0.5), range(6), reducer, executor=ex, **kw)  # (still running 0.2 s in)
    time.sleep(0.2)
    t0 = time.monotonic()
    ex.shutdown(wait=True, cancel_futures=True)
    assert fut.done() and time.monotonic() - t0 < 10
    with pytest.raises(CallCancelled, match="cancel_futures=True") as info:
        fut.result(timeout=0)
    assert isinstance(info.value, cf.CancelledError) and "\n" not in str(info.value)
    assert _left(ex) == []


@pytest.mark.parametrize("form", FORMS)
def test_wrenpack_cancel_stops_a_running_map_reduce(executor, form):
    """wrenpack.cancel(fut) stops a map_reduce as it stops a running call: its calls end
    now, its future fails with CallCancelled, its objects are removed; fut.cancel() keeps
    the standard library's contract (False: it runs). It returned [False] and ran on."""
    from wrenpack.errors import CallCancelled

    kw, reducer = FORMS[form]
    fut = wrenpack.map_reduce(_sleepy(form, 60), range(3), reducer, executor=executor, **kw)
    time.sleep(0.3)
    assert fut.cancel() is False
    t0 = time.monotonic()
    assert wrenpack.cancel(fut) == [True]
    with pytest.raises(CallCancelled, match=r"wrenpack.cancel\(\) stopped it"):
        fut.result(timeout=30)
    assert time.monotonic() - t0 < 10
    assert _left(executor) == []
    assert wrenpack.map_reduce(_pairs_or_value(form), [1], reducer, executor=executor, **kw).result(timeout=60) in (1, {1: 1})


@pytest.mark.parametrize("partition_fn", [None, lambda k, r: 0], ids=["default hash", "partition_fn"])
def test_an_unhashable_key_is_one_line_naming_it(executor, partition_fn):
    """A key that cannot be a dict key (a list) is a TypeError naming the key and the fix,
    not a bare "unhashable type: 'list'" from inside the reducer."""
    with pytest.raises(TypeError, match=r"key \[1, 2\] \(a list\) is not hashable.*a tuple") as info:
        wrenpack.map_reduce(lambda x: [([x, x + 1], 1)], [1], count, partitions=2, partition_fn=partition_fn,
                            executor=executor).result(timeout=60)
    assert isinstance(info.value, ConfigError) and "\n" not in str(info.value)
    assert _left(executor) == []


def test_equal_keys_of_other_types_meet_in_one_reducer(executor):
    """The default hash sends keys that are equal (so one dict key: 3, 3.0, np.int64(3);
    ('a', 1) and ('a', 1.0)) to one partition, as a dict groups them; they went to
    different reducers and the merged result silently kept one reducer's value. A str
    that does not encode as UTF-8 (a lone surrogate, from errors="surrogateescape")
    is a key like any other; it was a UnicodeEncodeError from inside the mapper."""
    np = pytest.importorskip("numpy")

    def mapper(x):
        return [(3, 1), (np.int64(3), 1), (3.0, 1), (np.float32(3), 1), (("a", 1), 1), (("a", 1.0), 1),
                (frozenset({1, 2}), 1), (frozenset({2.0, 1}), 1), ("\udcff", 1), (None, 1), (2.5, 1)]

    out = wrenpack.map_reduce(mapper, [0, 1], count, partitions=4, executor=executor).result(timeout=60)
    assert out == {3: 8, ("a", 1): 4, frozenset({1, 2}): 4, "\udcff": 2, None: 2, 2.5: 2}
    for a, b in ((3, np.int64(3)), (3, 3.0), (("a", (1, b"x")), ("a", (1.0, b"x"))), (True, 1), (-7, -7.0)):
        assert all(shuffle.default_partition(a, r) == shuffle.default_partition(b, r) for r in (2, 7, 64))
    assert shuffle.default_partition(10, 4) == 2 and shuffle.default_partition("ab", 1000) == __import__("zlib").crc32(b"ab") % 1000
    assert _left(executor) == []


def test_a_partition_fn_that_splits_a_key_is_refused_not_merged_over(executor):
    """A partition_fn that sends equal keys to two partitions gives two reducer values for
    one key: one line naming the key and the partitions, not a dict that silently keeps one."""
    with pytest.raises(ValueError, match=r"key 3(\.0)? was reduced in partitions 0 and 1.*partition_fn") as info:
        wrenpack.map_reduce(lambda x: [(3, 1), (3.0, 1)], [0], count, partitions=2,
                            partition_fn=lambda k, r: 0 if type(k) is int else 1, executor=executor).result(timeout=60)
    assert "\n" not in str(info.value)
    assert _left(executor) == []


def test_keys_of_types_that_do_not_compare_are_still_sorted_within_their_type(executor):
    """Keys sorted within each partition: where they cannot all be compared (str and int,
    None), numbers come first, then each type's keys sorted, the types by name; they came
    in the order they were first seen, which depended on the mappers' order."""
    keys = [2, "b", 1.5, None, "a", 1]
    for order in (keys, keys[::-1]):
        out = wrenpack.map_reduce(lambda k: [(k, 1)], order, count, partitions=1, executor=executor).result(timeout=60)
        assert list(out) == [1, 1.5, 2, None, "a", "b"]


def test_a_map_reduce_running_at_exit_leaves_nothing_in_the_store(tmp_path):
    """At exit running calls are stopped and their objects removed; a running map_reduce's
    intermediate objects (shuffle/...) were left behind, its thread never got to remove them."""
    import subprocess
    import sys

    script = (
        "import sys, time, wrenpack\n"
        "ex = wrenpack.Executor(storage=sys.argv[1], concurrency=2)\n"
        "def m(x):\n"
        "    import time\n"
        "    if x >= 2:\n"
        "        time.sleep(30)\n"
        "    return [(x, b'x' * 1000)]\n"
        "f = wrenpack.map_reduce(m, range(4), lambda k, vs: len(vs), partitions=2, executor=ex)\n"
        "deadline = time.monotonic() + 20\n"
        "while len(ex.store.list('shuffle/')) < 4 and time.monotonic() < deadline:\n"
        "    time.sleep(0.05)\n"
        "time.sleep(0.5)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    left = [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()]
    assert not [p for p in left if p.startswith("shuffle")], left


def _returns_a_lock(form):
    def mapper(x):
        import threading

        return [(x, threading.Lock())] if form == "shuffle" else threading.Lock()

    return mapper


@pytest.mark.parametrize("form", ["shuffle", "tree"])
def test_a_mapper_output_that_cannot_be_pickled_is_one_line_naming_it(executor, form):
    """As a call's result that cannot be pickled: a SerializationError naming what and the fix;
    it was a bare TypeError "cannot pickle '_thread.lock' object" from inside the shuffle."""
    from wrenpack.errors import SerializationError

    kw = {"partitions": 2} if form == "shuffle" else {"fan_in": 2}
    reducer = count if form == "shuffle" else len
    with pytest.raises(SerializationError, match=r"the mapper's .* could not be pickled: cannot pickle '_thread.lock' "
                                                 r"object; return plain data") as info:
        wrenpack.map_reduce(_returns_a_lock(form), [1, 2], reducer, executor=executor, **kw).result(timeout=60)
    assert "\n" not in str(info.value)
    assert _left(executor) == []


def test_a_shuffle_leaves_its_executor_idle(make_executor):
    """A shuffle whose reducers were all launched with the mappers launched an empty job for
    "the rest": a job of no calls never ends, so the executor never went idle again and
    shutdown(wait=False) never stopped its workers (one such job per map_reduce)."""
    ex = make_executor(concurrency=2)
    for _ in range(2):
        assert wrenpack.map_reduce(lambda x: [(x % 2, x)], range(4), count, partitions=2,
                                   executor=ex).result(timeout=60) == {0: 2, 1: 4}
    deadline = time.monotonic() + 5
    while ex._jobs and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not ex._jobs, ex._jobs
    ex.shutdown(wait=False)
    deadline = time.monotonic() + 5
    while not ex._released and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ex._released


def test_a_reducer_s_error_names_the_key_it_was_reducing(executor):
    """probe16's finding 4: with partitions=R a reducer runs once per key, in one call per
    partition, and its error named only that call ("raised by reducer (reduce)[1]"): which
    of the partition's keys failed was the user's to find."""
    def pairs(word):
        return [(word, 1)]

    def picky(key, values):
        if key == "bad":
            raise ValueError("no thanks")
        return sum(values)

    fut = wrenpack.map_reduce(pairs, ["good", "bad", "fine"], picky, partitions=2, executor=executor)
    with pytest.raises(ValueError, match="no thanks") as info:
        fut.result(timeout=120)
    assert "raised by the reducer for the key 'bad'" in getattr(info.value, "__notes__", []), info.value


def test_a_reducer_value_that_does_not_pickle_is_named_where_it_is(executor):
    """probe16's finding 4: a reducer that returned a lock for one key was reported as "the
    result (a dict) could not be pickled": the dict of every key's value the partition's call
    returns. The error now says where in it the value is, and what it is."""
    import threading

    def pairs(word):
        return [(word, 1)]

    def locks(key, values):
        return threading.Lock() if key == "bad" else sum(values)

    fut = wrenpack.map_reduce(pairs, ["good", "bad"], locks, partitions=1, executor=executor)
    with pytest.raises(wrenpack.WrenpackError, match=r"its \['value'\]\['bad'\] \(a lock\): "):
        fut.result(timeout=120)
