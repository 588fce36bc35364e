"""CPython's ``test_concurrent_futures`` (vendor/cpython, unchanged) run
against ``wrenpack.Executor``: the process-pool variants of its test classes,
built here on ``PeerExecutor`` instead of ``ProcessPoolExecutor`` (the way the
file itself builds one class per executor kind), and its ``FutureTests`` on
``WrenFuture``. What each test is expected to do: ``XFAIL``, ``SKIP``, ``FAST``
(see tests/peers/conftest.py)."""
from __future__ import annotations

import logging
import sys

from tests.peers._adapter import (
    FUTURES,
    PICKLING,
    POOL_SETTINGS,
    POOL_SIZE,
    SHARES_NOTHING,
    WORKER_DIES,
    PeerExecutor,
    because,
)
from tests.peers.vendor.cpython import test_concurrent_futures as cpy
from wrenpack.futures import WrenFuture


class WrenpackMixin(cpy.ExecutorMixin):
    executor_type = PeerExecutor
    # Tests ask get_context() for locks, semaphores and managers of their own;
    # the executor is handed it as mp_context, which PeerExecutor drops.
    ctx = "spawn"


def _build(mixin: type, name: str) -> type:
    return type(name, (mixin, WrenpackMixin, cpy.BaseTestCase), {"__module__": __name__})


WrenpackInitializerTest = _build(cpy.InitializerMixin, "WrenpackInitializerTest")
WrenpackFailingInitializerTest = _build(cpy.FailingInitializerMixin, "WrenpackFailingInitializerTest")
WrenpackProcessPoolShutdownTest = _build(cpy.ProcessPoolShutdownTest, "WrenpackProcessPoolShutdownTest")
WrenpackWaitTest = _build(cpy.WaitTests, "WrenpackWaitTest")
WrenpackAsCompletedTest = _build(cpy.AsCompletedTests, "WrenpackAsCompletedTest")
WrenpackProcessPoolExecutorTest = _build(cpy.ProcessPoolExecutorTest, "WrenpackProcessPoolExecutorTest")
WrenpackExecutorDeadlockTest = _build(cpy.ExecutorDeadlockTest, "WrenpackExecutorDeadlockTest")


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes, as logging's
    last resort does where no handler is configured, which is what the
    callback tests read (``support.captured_stderr``). Under pytest the root
    logger holds pytest's capture handlers, so the last resort never runs."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


class WrenpackFutureTests(cpy.FutureTests):
    """The Future tests on ``WrenFuture`` (the file makes its futures with its
    global ``Future``, so that is what changes while a test runs)."""

    def setUp(self):
        super().setUp()
        self._stdlib_future, cpy.Future = cpy.Future, WrenFuture
        self._stderr_handler = _CurrentStderr()
        logging.getLogger("concurrent.futures").addHandler(self._stderr_handler)

    def tearDown(self):
        logging.getLogger("concurrent.futures").removeHandler(self._stderr_handler)
        cpy.Future = self._stdlib_future
        super().tearDown()


SUBPROCESS = ("runs concurrent.futures' own executor in a child interpreter (`from concurrent.futures import "
              "<executor_type.__name__>`), not the executor under test")
BUILDS_ITS_OWN = "builds a concurrent.futures.ProcessPoolExecutor itself: nothing of wrenpack's runs"

XFAIL: dict[str, str] = {
    "WrenpackInitializerTest::test_initializer": because(POOL_SETTINGS, "initializer= is not a wrenpack setting"),
    "WrenpackFailingInitializerTest::test_initializer": because(POOL_SETTINGS, "initializer= is not a wrenpack setting"),
    "WrenpackProcessPoolShutdownTest::test_processes_terminate": because(
        SHARES_NOTHING, "hands the calls a multiprocessing Semaphore and counts executor._processes"),
    "WrenpackProcessPoolExecutorTest::test_killed_child": because(SHARES_NOTHING, "kills a process from executor._processes"),
    "WrenpackProcessPoolExecutorTest::test_max_workers_negative": because(
        POOL_SIZE, "expects the message 'max_workers must be greater than 0'; wrenpack's names concurrency"),
    "WrenpackProcessPoolExecutorTest::test_saturation": because(SHARES_NOTHING, "reads executor._max_workers, hands calls a Semaphore"),
    "WrenpackProcessPoolExecutorTest::test_idle_process_reuse_one": because(SHARES_NOTHING, "reads executor._max_workers/_processes"),
    "WrenpackProcessPoolExecutorTest::test_idle_process_reuse_multiple": because(SHARES_NOTHING, "reads executor._max_workers/_processes"),
    "WrenpackProcessPoolExecutorTest::test_traceback": because(
        FUTURES, "expects the cause to be concurrent.futures.process._RemoteTraceback itself"),
    "WrenpackExecutorDeadlockTest::test_error_at_task_pickle": because(PICKLING, "expects PicklingError from result(), not submit()"),
    "WrenpackExecutorDeadlockTest::test_exit_at_task_unpickle": because(WORKER_DIES, "expects BrokenProcessPool"),
    "WrenpackExecutorDeadlockTest::test_error_at_task_unpickle": because(WORKER_DIES, "expects BrokenProcessPool"),
    "WrenpackExecutorDeadlockTest::test_crash_at_task_unpickle": because(WORKER_DIES, "expects BrokenProcessPool"),
    "WrenpackExecutorDeadlockTest::test_crash_during_func_exec_on_worker": because(WORKER_DIES, "expects BrokenProcessPool"),
    "WrenpackExecutorDeadlockTest::test_exit_during_func_exec_on_worker": because(PICKLING, "expects SystemExit from sys.exit() in the function"),
    "WrenpackExecutorDeadlockTest::test_crash_during_result_pickle_on_worker": because(WORKER_DIES, "expects BrokenProcessPool"),
    "WrenpackExecutorDeadlockTest::test_exit_during_result_pickle_on_worker": because(PICKLING, "expects SystemExit from sys.exit() while the result is pickled"),
    "WrenpackExecutorDeadlockTest::test_error_during_result_pickle_on_worker": because(PICKLING, "expects PicklingError for a result that cannot be pickled"),
    "WrenpackExecutorDeadlockTest::test_error_during_result_unpickle_in_result_handler": because(WORKER_DIES, "expects BrokenProcessPool"),
    "WrenpackExecutorDeadlockTest::test_exit_during_result_unpickle_in_result_handler": because(WORKER_DIES, "expects BrokenProcessPool"),
    "WrenpackExecutorDeadlockTest::test_shutdown_deadlock": because(WORKER_DIES, "expects BrokenProcessPool"),
    "WrenpackExecutorDeadlockTest::test_shutdown_deadlock_pickle": because(
        PICKLING, "expects PicklingError from result(), not submit(), and reads executor._executor_manager_thread"),
    "WrenpackFutureTests::test_multiple_set_result": because(FUTURES, "expects '<Future at' in the InvalidStateError message"),
    "WrenpackFutureTests::test_multiple_set_exception": because(FUTURES, "expects '<Future at' in the InvalidStateError message"),
}
SKIP: dict[str, str] = {
    # It would fail by design (README: "Calls share nothing with the caller": a Manager's Event
    # proxy cannot be rebuilt in the worker), but failing it leaves its EventfulGCObj to a later
    # garbage collection, where __del__ raises (its manager is gone); on CPython before 3.11.8
    # that can land inside pytest's own ast.parse of a report and end the session with
    # "SystemError: AST constructor recursion depth mismatch" (CPython gh-106905).
    "WrenpackProcessPoolExecutorTest::test_ressources_gced_in_workers": (
        "hands the call a Manager's Event proxy, which cannot be rebuilt in a wrenpack worker; failing, it leaves an object "
        "whose __del__ raises at a later collection, which can end the session on CPython < 3.11.8 (gh-106905)"),
    "WrenpackProcessPoolShutdownTest::test_interpreter_shutdown": SUBPROCESS,
    "WrenpackProcessPoolShutdownTest::test_submit_after_interpreter_shutdown": SUBPROCESS,
    "WrenpackProcessPoolShutdownTest::test_hang_gh83386": SUBPROCESS,
    "WrenpackProcessPoolShutdownTest::test_context_manager_shutdown": BUILDS_ITS_OWN,
    "WrenpackProcessPoolShutdownTest::test_del_shutdown": BUILDS_ITS_OWN,
    "WrenpackProcessPoolShutdownTest::test_shutdown_no_wait": BUILDS_ITS_OWN,
}
FAST: set[str] = {
    "WrenpackProcessPoolExecutorTest::test_submit",
    "WrenpackProcessPoolExecutorTest::test_submit_keyword",
    "WrenpackProcessPoolExecutorTest::test_map_exception",
    "WrenpackProcessPoolExecutorTest::test_max_workers_negative",
    "WrenpackProcessPoolShutdownTest::test_run_after_shutdown",
    "WrenpackProcessPoolShutdownTest::test_cancel_futures",
    "WrenpackWaitTest::test_all_completed",
    "WrenpackInitializerTest::test_initializer",
    "WrenpackExecutorDeadlockTest::test_error_at_task_pickle",
    "WrenpackFutureTests::test_cancel",
    "WrenpackFutureTests::test_done_callback_raises",
    "WrenpackFutureTests::test_done_callback_with_cancel",
    "WrenpackFutureTests::test_multiple_set_result",
    "WrenpackFutureTests::test_repr",
    "WrenpackFutureTests::test_result_with_timeout",
}
