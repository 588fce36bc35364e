"""One concurrency budget per executor, across every function it uses.

Lambda fixes memory per function, so a map at two memory sizes runs on two
functions; the account's unreserved concurrency is one pool for both. The
emulated account here has an unreserved concurrency of 3 and each function
three execution environments, so a per-function cap would let 6 calls run at
once. Counted from the calls' own start and end times (their status records).
"""
from __future__ import annotations

import os
import time

import pytest

import wrenpack
from tests.aws.servers import REGION
from wrenpack.executor import Executor

TIMEOUT = 10  # the two functions test_aws_lambda deploys for two memory sizes (six runtimes starting need it)


def memory_seen(x):
    """``x`` seconds, then the memory and the name of the function the call ran on."""
    time.sleep(x)
    return int(os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", 0)), os.environ.get("AWS_LAMBDA_FUNCTION_NAME")


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant (an end at the same instant as a start closes first)."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals],
                   key=lambda e: (e[0], e[1]))
    most = running = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


def test_most_at_once_counts_overlaps():
    assert most_at_once([(0, 2), (1, 3), (2, 4)]) == 2
    assert most_at_once([(0, 5), (1, 2), (1, 3), (4, 6)]) == 3


@pytest.mark.parametrize("kind", ["Event", pytest.param("RequestResponse", marks=pytest.mark.slow)])
def test_two_memory_sizes_share_the_accounts_unreserved_concurrency(kind, moto_endpoint, bucket, lambda_endpoint):
    lambda_endpoint.deploy(memory=1024, timeout=TIMEOUT)
    lambda_endpoint.deploy(memory=2048, timeout=TIMEOUT)
    lambda_endpoint.account_concurrency = 3
    try:
        ex = Executor(backend="lambda", storage=f"s3://{bucket}/budget-{kind}", s3_endpoint_url=moto_endpoint,
                      lambda_endpoint_url=lambda_endpoint.url, function_name=lambda_endpoint.function_name,
                      aws_region=REGION, concurrency=8, timeout=TIMEOUT, retries=0, invocation_type=kind)
        ex.backend.poll_interval = 0.1
        try:
            small = wrenpack.remote(memory_seen, executor=ex, memory=1024).map([0.4] * 6)
            big = wrenpack.remote(memory_seen, executor=ex, memory=2048).map([0.4] * 6)
            small_seen, big_seen = wrenpack.get(small), wrenpack.get(big)
        finally:
            ex.shutdown()
    finally:
        lambda_endpoint.account_concurrency = 1000
    # each call ran on the function deployed for its memory, and saw it (test_aws_lambda's
    # test_two_maps_with_different_memory_at_once checks this alone, with -m slow)
    assert {m for m, _ in small_seen} == {1024} and {m for m, _ in big_seen} == {2048}
    assert len({n for _, n in small_seen} | {n for _, n in big_seen}) == 2
    seen = most_at_once([(f.status["start"], f.status["end"]) for f in small + big])
    assert 2 <= seen <= 3, seen
