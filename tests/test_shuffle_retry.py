"""A shuffle task run again (its worker died, or retry_on) reads what its first run read, and waits behind no reducer that waits for it."""
from __future__ import annotations

import functools
import os
import signal
import time

import pytest

import wrenpack
from wrenpack.worker import shuffle

N = 100_000


class DiesOncePickled:
    """A reducer's value whose pickling kills its process the first time (as an OOM
    kill while the result is pickled would): after the reducer's function returned."""

    def __init__(self, value, flag):
        self.value, self.flag = value, flag

    def __reduce__(self):
        if self.flag and not os.path.exists(self.flag):
            open(self.flag, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return (DiesOncePickled, (self.value, None))


def _mapper(x):
    return [bytes([x + 1]) * N, bytes([x + 2]) * N]


def test_a_reducer_whose_worker_dies_after_its_function_returned_runs_again_on_the_same_sections(executor, tmp_path):
    """The sections a reducer read are given back only once its result has gone: here its
    worker died while pickling the result, and the partition ran again and read them.
    (Before, they were released as the function returned: the run again failed with a
    CorruptObject that sent the user looking for who wrote to the store.)"""
    flag = str(tmp_path / "died")

    def reducer(partition, parts):
        return DiesOncePickled(sum(p[0] for p in parts), flag)

    fut = wrenpack.map_reduce(_mapper, range(3), reducer, partitions=2, partitioned=True, retries=1, executor=executor)
    got = [d.value for d in fut.result(timeout=120)]
    assert os.path.exists(flag)  # (it did die once)
    assert got == [1 + 2 + 3, 2 + 3 + 4]
    assert executor.store.list(shuffle.PREFIX) == []


def _mapper_fails_when_armed(x, arm, how):
    if x == 0 and os.path.exists(arm):
        os.remove(arm)
        time.sleep(0.3)  # (the reducers launched with it are waiting by now)
        if how == "dies":
            os.kill(os.getpid(), signal.SIGKILL)
        raise ValueError("once")
    return [(i, 1) for i in range(4)]


def _add(key, ones):
    return sum(ones)


@pytest.mark.parametrize("how, options", [("dies", {}), ("raises", {"retry_on": (ValueError,)})], ids=["worker-dies", "retry-on"])
def test_a_mapper_run_again_is_not_stuck_behind_the_reducers_waiting_for_it(executor, tmp_path, how, options):
    """Mappers and reducers go out in one launch on a warm pool, reducers last, and calls
    timed short go to busy workers in batches. A mapper run again waited behind
    reducers that waited for it, each its whole budget (a quarter of the timeout: 30 s
    here). Now a call run again goes only to a worker with nothing to run first (its
    worker died: the local backend runs it again), and when the executor runs it again
    (``retry_on``: launched anew, behind the reducers) the driver tells the waiting
    reducers to give up their slots (``shuffle.stop_waiting``); their partitions run
    after the map phase."""
    arm = str(tmp_path / "armed")
    mapper = functools.partial(_mapper_fails_when_armed, arm=arm, how=how)
    expected = {0: 2, 1: 2, 2: 2, 3: 2}
    for _ in range(2):  # (its calls timed: short ones are batched)
        assert wrenpack.map_reduce(mapper, range(2), _add, partitions=4, timeout=60, executor=executor).result(timeout=60) == expected
    open(arm, "w").close()
    t0 = time.monotonic()
    fut = wrenpack.map_reduce(mapper, range(2), _add, partitions=4, timeout=60, retries=1, executor=executor, **options)
    assert fut.result(timeout=120) == expected
    took = time.monotonic() - t0
    assert not os.path.exists(arm)  # (it did fail once)
    assert took < 10, f"the map_reduce took {took:.1f} s: its reducers waited out their budget (15 s)"
    assert executor.store.list(shuffle.PREFIX) == []
