"""``wrenpack.get(futs, progress=...)`` shows progress wherever the user is: a
bar on a terminal, a widget or an updating HTML line in a notebook, and plain
periodic lines on stderr elsewhere (a pipe, a CI log)."""
from __future__ import annotations

import concurrent.futures as cf
import importlib.util
import os
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

import wrenpack
from wrenpack import progress
from wrenpack.config import Config
from tests.notebooks import KERNEL, local_kernel
from wrenpack.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
LINE = re.compile(r"^wrenpack: (\d+)/(\d+) calls done(?:, (\d+) failed)?, \d+ s$")


def nap(s):
    import time

    time.sleep(s)
    if s < 0:
        raise ValueError("negative nap")
    return s


def run_script(tmp_path: Path, code: str, **env: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter whose stderr is a pipe (as in CI or ``2>log``)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("WRENPACK_")}
    environ.update(WRENPACK_STORAGE=str(tmp_path / "store"), WRENPACK_CONCURRENCY="2",
                   PYTHONPATH=str(REPO) + os.pathsep + environ.get("PYTHONPATH", ""), **env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=environ, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)


PIPE_SCRIPT = """
    import time
    import wrenpack, wrenpack.progress
    wrenpack.progress.LOG_EVERY_S = 0.3

    def nap(s):
        time.sleep(abs(s))
        if s < 0:
            raise ValueError("negative nap")
        return s

    out = wrenpack.get(wrenpack.remote(nap).map([0.3] * 5 + [-0.3]), return_exceptions=True, progress={progress})
    print(len(out))
"""


def test_progress_true_in_a_pipe_prints_periodic_lines(tmp_path):
    proc = run_script(tmp_path, PIPE_SCRIPT.format(progress="True"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "6"
    lines = proc.stderr.splitlines()
    assert len(lines) >= 2 and all(LINE.match(line) for line in lines), proc.stderr  # no empty line, no escape codes
    assert re.match(r"^wrenpack: 6/6 calls done, 1 failed, \d+ s$", lines[-1])
    counts = [int(LINE.match(line).group(1)) for line in lines]
    assert counts == sorted(counts) and counts[0] < 6  # a line while it ran, then the final one


def test_progress_log_setting_and_auto_in_a_pipe(tmp_path):
    (tmp_path / "log").mkdir()
    (tmp_path / "auto").mkdir()
    with cf.ThreadPoolExecutor(2) as pool:  # two programs of their own (folder, store) at once
        logged = pool.submit(run_script, tmp_path / "log", PIPE_SCRIPT.format(progress="None"), WRENPACK_PROGRESS="log")
        auto = pool.submit(run_script, tmp_path / "auto", PIPE_SCRIPT.format(progress="None"))
    proc = logged.result()
    assert proc.returncode == 0, proc.stderr
    assert LINE.match(proc.stderr.splitlines()[-1]), proc.stderr
    proc = auto.result()  # automatic: nothing in a pipe
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_log_lines_in_process_and_on_timeout(remote, capsys, monkeypatch):
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.2)
    f = remote(nap)
    assert wrenpack.get(f.map([0.3, 0.3, 0.3]), progress="log") == [0.3, 0.3, 0.3]
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("wrenpack: 3/3 calls done, ") and all(LINE.match(line) for line in err)
    with pytest.raises(cf.TimeoutError, match="1 of 1 calls not finished after 0.2 s"):
        wrenpack.get(f.map([0.6]), timeout=0.2, progress="log")  # (three times the timeout: it cannot end within it)
    assert capsys.readouterr().err.splitlines()[-1].startswith("wrenpack: 0/1 calls done, ")


def test_which_display(monkeypatch):
    monkeypatch.setattr(progress, "in_jupyter_kernel", lambda: False)
    monkeypatch.setattr(progress, "_stderr_is_terminal", lambda: False)
    assert progress.choose(None, 10) is None  # a pipe: nothing unless asked (WRENPACK_PROGRESS is unset here)
    monkeypatch.delenv("WRENPACK_PROGRESS")
    assert progress.choose(None, 10) is None
    assert progress.choose(True, 10) == "log"
    assert progress.choose("bar", 10) == "bar" and progress.choose(False, 10) is None
    monkeypatch.setattr(progress, "_stderr_is_terminal", lambda: True)
    assert progress.choose(None, 10) == "bar" and progress.choose(True, 1) == "bar"
    assert progress.choose(None, 1) is None  # one call: no bar unless asked
    monkeypatch.setattr(progress, "in_jupyter_kernel", lambda: True)
    assert progress.choose(None, 10) == "notebook" and progress.choose(True, 10) == "notebook"
    with pytest.raises(ConfigError, match=r"progress='loud' \(from get\(progress=...\)\) must be"):
        progress.choose("loud", 10)


def test_the_progress_setting():
    assert Config.load(progress="log").progress == "log"
    assert Config.load(progress="NOTEBOOK").progress == "notebook"
    assert Config.load(progress="yes").progress is True and Config.load(progress="auto").progress is None
    with pytest.raises(ConfigError, match="progress='sometimes'"):
        Config.load(progress="sometimes")


def test_jupyter_kernel_detection(monkeypatch):
    fake = types.ModuleType("IPython")
    monkeypatch.setitem(sys.modules, "IPython", fake)
    fake.get_ipython = lambda: None  # IPython imported, no shell (a script that imported it)
    assert not progress.in_jupyter_kernel()
    fake.get_ipython = lambda: types.SimpleNamespace()  # a terminal IPython: no kernel
    assert not progress.in_jupyter_kernel()
    fake.get_ipython = lambda: types.SimpleNamespace(kernel=object())  # ipykernel's shell
    assert progress.in_jupyter_kernel()
    monkeypatch.delitem(sys.modules, "IPython")
    assert not progress.in_jupyter_kernel()


# -- in a real notebook ------------------------------------------------------------------

NOTEBOOK_SETUP = """
import sys, time
{block}
import wrenpack
from wrenpack import progress
print(progress.in_jupyter_kernel())

def nap(s):
    time.sleep(s)
    return s
"""
NOTEBOOK_RUN = "print(wrenpack.get(wrenpack.remote(nap).map([0.2] * 4)))"


def run_notebook(tmp_path: Path, monkeypatch, block_widgets: bool):
    """Run the two cells above in a real kernel (this interpreter's, through
    ipykernel); the notebook with its outputs and widget state."""
    nbformat, nbclient = local_kernel(tmp_path, monkeypatch)
    monkeypatch.delenv("WRENPACK_PROGRESS")  # automatic, as a user's notebook has it
    block = "sys.modules['ipywidgets'] = None  # as if it were not installed" if block_widgets else ""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(NOTEBOOK_SETUP.format(block=block)), nbformat.v4.new_code_cell(NOTEBOOK_RUN)]
    nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=60, resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert nb.cells[0].outputs[0]["text"].strip() == "True", "the kernel was not detected"
    return nb


def test_notebook_html_line_updates_in_place(tmp_path, monkeypatch):
    nb = run_notebook(tmp_path, monkeypatch, block_widgets=True)
    outputs = nb.cells[1].outputs
    shown = [o for o in outputs if o["output_type"] == "display_data"]
    assert len(shown) == 1, outputs  # one display, updated in place (not one per update)
    assert re.match(r"^wrenpack: 4/4 calls done, \d+ s$", shown[0]["data"]["text/plain"])
    assert '<progress value="4" max="4"' in shown[0]["data"]["text/html"]
    assert any("[0.2, 0.2, 0.2, 0.2]" in o.get("text", "") for o in outputs)


def test_notebook_widget(tmp_path, monkeypatch):
    if importlib.util.find_spec("ipywidgets") is None:
        pytest.skip("ipywidgets is not installed: the notebook shows the HTML line instead (tested above)")
    nb = run_notebook(tmp_path, monkeypatch, block_widgets=False)
    shown = [o for o in nb.cells[1].outputs if o["output_type"] == "display_data"]
    assert len(shown) == 1 and "application/vnd.jupyter.widget-view+json" in shown[0]["data"]
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    bars = [m["state"] for m in state.values() if m["model_name"] == "IntProgressModel"]
    labels = [m["state"]["value"] for m in state.values() if m["model_name"] == "LabelModel"]
    assert bars == [{**bars[0], "value": 4, "max": 4, "bar_style": "success"}]
    assert len(labels) == 1 and re.match(r"^wrenpack: 4/4 calls done, \d+ s$", labels[0])


# -- probes of what the user sees (no backend: plain futures a thread finishes) -----------

def _finish(futs, exc=None):
    for f in futs:
        f.set_running_or_notify_cancel()
        if exc is None:
            f.set_result(1)
        else:
            f.set_exception(exc)


def test_log_lines_are_log_records_where_logging_takes_them(caplog, capsys, monkeypatch):
    """A program that logs at INFO gets the progress lines as records of
    ``wrenpack.progress`` (its format, its files), not as prints beside its log;
    and at a bounded rate, however fast calls end. Before, they were always
    written to stderr."""
    import logging
    import threading
    import time

    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.2)
    caplog.set_level(logging.INFO, logger="wrenpack.progress")
    futs = [cf.Future() for _ in range(300)]
    go = threading.Event()

    def feeder():
        go.wait()
        for f in futs[:-1]:
            _finish([f])
        _finish([futs[-1]], ValueError("last"))

    threading.Thread(target=feeder, daemon=True).start()
    go.set()
    start = time.monotonic()
    assert len(wrenpack.get(futs, progress="log", return_exceptions=True)) == 300
    took = time.monotonic() - start
    lines = [r.getMessage() for r in caplog.records if r.name == "wrenpack.progress"]
    assert lines and lines[-1].startswith("wrenpack: 300/300 calls done, 1 failed, ") and all(LINE.match(m) for m in lines)
    assert all(r.levelname == "INFO" for r in caplog.records if r.name == "wrenpack.progress")
    assert len(lines) <= 2 + took / 0.2 and capsys.readouterr().err == ""  # (not a line per call; nothing printed)


class _FakeHandle:
    """What ``IPython.display.display(..., display_id=True)`` returns: each update redraws it."""

    def __init__(self, shown):
        self.shown = shown

    def update(self, bundle, raw=False):
        self.shown.append(bundle["text/plain"])


def test_the_notebook_line_catches_up_with_calls_that_ended_in_a_burst(monkeypatch):
    """Redraws are at most one per ``NOTEBOOK_EVERY_S``; a change that came
    within that time of the last redraw is drawn once the time has passed, not
    left undrawn until some later call ends (before: the line said 1/3 while two
    were done, for as long as the third ran)."""
    import threading
    import time

    shown: list[str] = []
    fake_display = types.ModuleType("IPython.display")
    fake_display.display = lambda bundle, raw=False, display_id=None: (shown.append(bundle["text/plain"]), _FakeHandle(shown))[1]
    monkeypatch.setitem(sys.modules, "IPython.display", fake_display)
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # the HTML line (no widgets)
    monkeypatch.setattr(progress, "in_jupyter_kernel", lambda: True)
    monkeypatch.setattr(progress, "NOTEBOOK_EVERY_S", 0.3)
    futs = [cf.Future() for _ in range(3)]
    seen_two = threading.Event()

    def shows(prefix):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(s.startswith(prefix) for s in shown):
            time.sleep(0.01)

    def feeder():
        shows("wrenpack: 0/3")  # the line is up
        _finish(futs[:1])
        shows("wrenpack: 1/3")  # ... and redrawn
        _finish(futs[1:2])  # at once: within the time between two redraws
        shows("wrenpack: 2/3")
        seen_two.set()
        _finish(futs[2:])

    threading.Thread(target=feeder, daemon=True).start()
    assert wrenpack.get(futs, progress="notebook") == [1, 1, 1]
    assert seen_two.is_set() and any(s.startswith("wrenpack: 2/3") for s in shown[:-1]), shown
    assert shown[-1].startswith("wrenpack: 3/3 calls done")


def test_cancelled_calls_are_named_not_passed_off_as_run(capsys):
    """Cancelled calls count as done (they will not run), and the line says
    how many were cancelled; before, "3/3 calls done, 1 failed" for a call
    that ran, one that failed and one that never ran."""
    futs = [cf.Future() for _ in range(3)]
    assert futs[2].cancel()
    _finish(futs[:1])
    _finish(futs[1:2], ValueError("bad"))
    out = wrenpack.get(futs, progress="log", return_exceptions=True)
    assert out[0] == 1 and isinstance(out[1], ValueError) and isinstance(out[2], cf.CancelledError)
    assert re.match(r"^wrenpack: 3/3 calls done, 1 failed, 1 cancelled, \d+ s$", capsys.readouterr().err.splitlines()[-1])
    assert progress.status_line(40, 100, 2, 12.0) == "wrenpack: 40/100 calls done, 2 failed, 12 s"  # (the README's line)


@pytest.mark.parametrize("ipython", ["installed", "missing"])
def test_the_notebook_display_outside_a_notebook_is_what_fits_there(capsys, monkeypatch, ipython):
    """``progress="notebook"`` (or the setting, shared by a project's notebooks
    and scripts) in a plain program: the display that fits there (here, stderr
    is not a terminal: the log lines). Before, with IPython installed the widget's
    text ("HBox(children=...") was printed to stdout; without it, get failed
    with ModuleNotFoundError."""
    if ipython == "missing":
        monkeypatch.setitem(sys.modules, "IPython", None)
        monkeypatch.setitem(sys.modules, "IPython.display", None)
    futs = [cf.Future() for _ in range(2)]
    _finish(futs[:1])
    import threading

    threading.Timer(0.05, _finish, (futs[1:],)).start()
    assert wrenpack.get(futs, progress="notebook") == [1, 1]
    captured = capsys.readouterr()
    assert captured.out == "" and re.match(r"^wrenpack: 2/2 calls done, \d+ s$", captured.err.splitlines()[-1]), captured


def test_calls_the_programs_end_stopped_are_counted_stopped_not_failed():
    """At exit (or Ctrl-C, SIGTERM) the calls still running are stopped with ``ExecutorShutdown``:
    the last progress line called them failed ("4/4 calls done, 2 failed, 2 cancelled")."""
    import concurrent.futures as cf

    from wrenpack import progress
    from wrenpack.errors import ExecutorShutdown

    from wrenpack.errors import RemoteTraceback

    futs = [cf.Future() for _ in range(5)]
    futs[0].set_result(1)
    futs[1].set_exception(KeyError("x"))
    futs[2].set_exception(ExecutorShutdown("the program exited before the call finished; wrenpack stopped it"))
    futs[3].cancel()
    raised = ExecutorShutdown("the call's own code raised it")  # (a failure: it comes with the remote traceback)
    raised.__cause__ = RemoteTraceback("Traceback (most recent call last): ...")
    futs[4].set_exception(raised)
    tally = progress._Tally()
    for fut in futs:
        tally.finished(fut)
    counts = tally.counts()
    assert counts == progress.Counts(5, 2, 1, 1)
    assert progress._line(counts, 5, 3.0) == "wrenpack: 5/5 calls done, 2 failed, 1 cancelled, 1 stopped, 3 s"
