"""``flaky`` (a pytest plugin that reruns failing tests), for PyWren's test file's
import: here it reruns nothing. Its one user, ``RuntimeCaching``, is an
expected failure (tests/peers/test_pywren_simple.py)."""


def flaky(max_runs=None, min_passes=None, rerun_filter=None):
    return lambda test: test
