"""Probes of the data workloads API from the outside: map_reduce, the shuffle, the
store's object ranges and lines(), and the sort and wordcount examples."""
from __future__ import annotations

import threading

import pytest

import wrenpack
from wrenpack.errors import SerializationError
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
