"""A shuffle task whose worker dies runs again, and its run again reads what the first read."""
from __future__ import annotations

import os
import signal

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
