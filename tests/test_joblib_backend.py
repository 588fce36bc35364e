"""The "wrenpack" joblib backend: joblib's batches run as wrenpack calls, with
joblib's contract (results in order, a task's exception with its type, n_jobs,
cancellation when joblib gives up), and scikit-learn's searches run on it."""
from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import wrenpack
from wrenpack.errors import ConfigError

joblib = pytest.importorskip("joblib")
from joblib import Parallel, delayed, parallel_config  # noqa: E402

import wrenpack.integrations.joblib  # noqa: E402,F401 - registers the backend

REPO = Path(__file__).resolve().parents[1]


def square_where(x):
    return x * x, os.getpid()


def env_var(name):
    return os.environ.get(name)


def fail_fast_or_nap(x):
    if x == 0:
        raise KeyError("task 0")
    time.sleep(1.0)
    return x


class Counted:
    """An executor whose launches are counted: the batches that really ran
    through wrenpack, their sizes, and the most unfinished at once."""

    def __init__(self, tmp: Path, concurrency: int) -> None:
        self.executor = wrenpack.Executor(storage=str(tmp / "store"), concurrency=concurrency, retries=0)
        self.sizes: list[int] = []
        self.labels: list[str] = []
        self.unfinished = 0
        self.most_unfinished = 0
        self._lock = threading.Lock()
        launch = self.executor.launch

        def counting(fn, calls, options, label=None, **kwargs):
            futures = launch(fn, calls, options, label=label, **kwargs)
            with self._lock:
                self.sizes.append(len(calls[0][0][0]))  # (the batch: run_batch's argument)
                self.labels.append(label)
                self.unfinished += 1
                self.most_unfinished = max(self.most_unfinished, self.unfinished)
            futures[0].add_done_callback(self._ended)
            return futures

        self.executor.launch = counting

    def _ended(self, _fut) -> None:
        with self._lock:
            self.unfinished -= 1

    def reset(self) -> None:
        """Forget what earlier tests launched, once their calls have ended."""
        deadline = time.monotonic() + 30
        while self.unfinished and time.monotonic() < deadline:
            time.sleep(0.05)
        self.sizes, self.labels, self.most_unfinished = [], [], self.unfinished


@pytest.fixture(scope="module")
def counted(tmp_path_factory):
    c = Counted(tmp_path_factory.mktemp("joblib"), concurrency=3)
    yield c
    c.executor.shutdown(wait=False, cancel_futures=True)


def test_grid_search_cv_gives_the_same_result_through_wrenpack(counted):
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_iris
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    x, y = load_iris(return_X_y=True)
    grid = {"C": [0.1, 1.0, 10.0], "gamma": [0.01, 0.1, 1.0]}
    default = GridSearchCV(SVC(), grid, cv=3).fit(x, y)
    counted.reset()
    with parallel_config(backend="wrenpack", executor=counted.executor):
        remote = GridSearchCV(SVC(), grid, cv=3).fit(x, y)
    assert remote.best_params_ == default.best_params_
    assert remote.best_score_ == default.best_score_
    assert list(remote.cv_results_["mean_test_score"]) == list(default.cv_results_["mean_test_score"])
    # every one of the 9 x 3 fits ran in a wrenpack call (the refit runs here, as with any backend)
    assert sum(counted.sizes) == 27 and len(counted.sizes) > 1
    assert all(label.startswith("joblib batch of ") and "_fit_and_score" in label for label in counted.labels)


def test_parallel_backend_results_in_order_from_workers(counted):
    counted.reset()
    with joblib.parallel_backend("wrenpack", executor=counted.executor):
        out = Parallel()(delayed(square_where)(i) for i in range(30))
    assert [v for v, _ in out] == [i * i for i in range(30)]
    assert os.getpid() not in {pid for _, pid in out}
    # every batch is a call of one function, so the batches share each worker's warm process
    # (a process per batch re-imported the tasks' packages: a grid search took 30-70 s, not a few)
    assert len({pid for _, pid in out}) <= 3 < len(counted.sizes), (out, counted.sizes)
    assert sum(counted.sizes) == 30
    assert list(Parallel(backend="wrenpack", n_jobs=2, return_as="generator_unordered")(
        delayed(square_where)(i) for i in range(4))) != []


def test_tasks_from_a_module_the_workers_lack_travel_by_value(tmp_path, monkeypatch):
    mod_dir = tmp_path / "userpkg"
    mod_dir.mkdir()
    (mod_dir / "wp_joblib_user_mod.py").write_text("def triple(x):\n    return 3 * x\n")
    monkeypatch.syspath_prepend(str(mod_dir))
    import wp_joblib_user_mod

    # The workers cannot import it: only by-value pickling gets it there.
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(mod_dir)])
    ex = wrenpack.Executor(storage=str(tmp_path / "store"), concurrency=2, retries=0)
    try:
        with parallel_config(backend="wrenpack", executor=ex):
            assert Parallel()(delayed(wp_joblib_user_mod.triple)(i) for i in range(6)) == [0, 3, 6, 9, 12, 15]
    finally:
        ex.shutdown()


def test_n_jobs_is_the_executors_concurrency(counted):
    ex = counted.executor
    with parallel_config(backend="wrenpack", executor=ex):
        assert joblib.effective_n_jobs() == 3
        assert joblib.effective_n_jobs(-1) == 3 and joblib.effective_n_jobs(-2) == 2
        assert joblib.effective_n_jobs(10) == 3 and joblib.effective_n_jobs(2) == 2
    counted.reset()
    # joblib dispatches every batch at once (pre_dispatch="all"); at most n_jobs run
    with parallel_config(backend="wrenpack", executor=ex, n_jobs=2):
        out = Parallel(batch_size=1, pre_dispatch="all")(delayed(time.sleep)(0.2) for _ in range(6))
    assert out == [None] * 6 and len(counted.sizes) == 6
    assert counted.most_unfinished == 2


def test_a_tasks_exception_is_raised_with_its_type_and_the_rest_is_dropped(counted):
    counted.reset()
    start = time.monotonic()
    with pytest.raises(KeyError, match="task 0") as info:
        with parallel_config(backend="wrenpack", executor=counted.executor, n_jobs=2):
            Parallel(batch_size=1)(delayed(fail_fast_or_nap)(i) for i in range(20))
    assert type(info.value.__cause__).__name__ == "RemoteTraceback"
    assert time.monotonic() - start < 8  # not the 19 s the naps would take two at a time
    assert len(counted.sizes) < 20  # batches not launched when joblib gave up never were
    counted.reset()


def test_parallel_timeout_is_joblibs(counted):
    counted.reset()
    with pytest.raises(multiprocessing.TimeoutError):
        with parallel_config(backend="wrenpack", executor=counted.executor, n_jobs=2):
            Parallel(batch_size=1, timeout=0.5)(delayed(time.sleep)(s) for s in [1.0] * 4)  # (twice the timeout)
    assert len(counted.sizes) == 2  # the two waiting for a slot were dropped
    counted.reset()


def test_options_are_checked_where_given(counted):
    with pytest.raises(ConfigError, match="unknown option"):
        parallel_config(backend="wrenpack", colour="blue")
    with pytest.raises(ConfigError, match="memory='auto'.*joblib batch"):
        parallel_config(backend="wrenpack", memory="auto")
    with pytest.raises(ConfigError, match="must be a wrenpack.Executor"):
        parallel_config(backend="wrenpack", executor="local")
    with parallel_config(backend="wrenpack", executor=counted.executor, memory=256, env={"JOBLIB_T": "1"}):
        assert Parallel(n_jobs=2)(delayed(env_var)("JOBLIB_T") for _ in range(2)) == ["1", "1"]


def test_without_joblib_one_line_says_what_to_install(tmp_path):
    code = (
        "import sys\n"
        "sys.modules['joblib'] = None  # as if it were not installed\n"
        "import wrenpack\n"
        "for attempt in (wrenpack.register_joblib, lambda: __import__('wrenpack.integrations.joblib')):\n"
        "    try:\n"
        "        attempt()\n"
        "    except ImportError as exc:\n"
        "        print(type(exc).__name__, exc)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("WRENPACK_")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    lines = out.stdout.splitlines()
    assert out.returncode == 0, out.stderr
    assert lines == ["MissingDependency wrenpack's joblib backend needs joblib: pip install joblib (scikit-learn brings it)"] * 2
