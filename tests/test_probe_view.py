"""What a user sees of a job, probed from outside: the figures of a job report
and of ``wrenpack jobs``, and the exit codes of the commands, as a demanding
user reads them. No backend is started: the reports are built from status
records, the commands read a store planted in a temporary directory."""
from __future__ import annotations

import json
import re
import sys

import pytest

from wrenpack.cli import main
from wrenpack.report import JobReport


def _one_call(ms: float, memory_mb: int = 128) -> JobReport:
    return JobReport([{"call_id": "00000", "start": 100.0, "end": 100.0 + ms / 1000, "exit": "ok",
                       "memory_mb": memory_mb}], {"now": 200.0})


def test_a_call_that_cost_a_fraction_of_a_nanodollar_shows_its_cost():
    """A 1 ms call at 128 MB costs $0.0000000021 of duration. The page's table
    of calls showed it as "$0." (eight decimals, zeros stripped, the dot left):
    neither zero nor the figure. Every figure under a cent keeps two
    significant digits, and none ends in a bare dot."""
    from wrenpack.report import _usd

    report = _one_call(1)
    cost = report.calls[0]["cost_usd"]
    assert 1e-9 < cost < 5e-9
    cells = re.findall(r'<td>(\$[^<]*)</td>', report.to_html())
    assert cells and not [c for c in cells if c.endswith(".")], cells
    assert _usd(cost) in cells and float(_usd(cost)[1:]) == pytest.approx(cost, rel=0.05), cells
    text = re.sub(r"<[^>]+>", " ", report.to_html())  # (what the page shows; its data-usd attributes are for programs)
    assert "e-0" not in text and "$0.0000166667 per GB-s" in text, "a price in scientific notation"  # (was $1.66667e-05)
    for value, shown in ((2.0833e-9, "$0.0000000021"), (1e-10, "$0.0000000001"), (1.54e-7, "$0.00000015"),
                         (3.16e-05, "$0.0000316"), (0.0123, "$0.0123"), (1234.5, "$1,234.5000"), (0, "$0")):
        assert _usd(value) == shown, (value, _usd(value))


def test_one_call_is_one_call():
    """The report's one-line summary (its repr, what a notebook's text view and
    a log show) said "1 calls"."""
    assert repr(_one_call(5)).startswith("<JobReport 00000: 1 call (1 finished), $")
    two = JobReport([{"call_id": c, "start": 1.0, "end": 2.0, "exit": "ok", "memory_mb": 128} for c in ("a", "b")],
                    {"now": 3.0})
    assert ": 2 calls (2 finished)" in repr(two)


@pytest.mark.parametrize("args", [(), ("--json",), ("--all", "--stale"), ("JOB-1", "--all")])
def test_clean_with_nothing_or_too_much_to_remove_is_a_usage_error(tmp_path, capsys, args):
    """`wrenpack clean --help` says "Exit codes: 0 ok, 1 no such job or refused,
    2 usage", but `wrenpack clean` naming nothing to remove (or both --all and
    --stale) exited 1, as a refusal would: a script could not tell the two apart."""
    with pytest.raises(SystemExit) as exit_:
        main(["clean", "--storage", str(tmp_path / "store"), *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: wrenpack clean") and "--all or --stale" in err.splitlines()[-1], err


def test_clean_help_says_what_json_does(capsys):
    """`clean --help` listed a bare `--json` with no word of what it does (`jobs` says "one JSON document")."""
    with pytest.raises(SystemExit):
        main(["clean", "--help"])
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith("--json"))
    assert "JSON" in line, line


def _plant(store, job_id: str, name: str, data: bytes) -> None:
    folder = store / "jobs" / job_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


def test_jobs_json_rows_have_the_same_fields_in_every_state(tmp_path, capsys, monkeypatch):
    """`wrenpack jobs --json`: a spawned job's row has its counts and cost; the
    row of a job launched with .map() (its owner record only), or one whose
    record does not verify, had only a few of those keys, so a script reading
    row["done"] or row["cost"] failed with KeyError on the first such row. Every
    row now has every field (None where there is no figure)."""
    monkeypatch.setenv("WRENPACK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    store = tmp_path / "store"
    _plant(store, "20261206-000000-aaaaaaaa", "owner.json", b'{"host": "h", "pid": 1}')  # a .map() job's
    _plant(store, "20261206-000000-bbbbbbbb", "job.json", b"not a record")  # forged, or another user's
    assert main(["jobs", "--json", "--storage", str(store)]) == 0
    rows = json.loads(capsys.readouterr().out)["jobs"]
    assert len(rows) == 2
    fields = {"id", "spawned", "function", "state", "calls", "done", "failed", "running", "queued", "cancelled",
              "created", "ended", "cost", "owner", "settings"}
    for row in rows:
        assert fields <= set(row), (fields - set(row), row)
    assert {json.dumps(sorted(row)) for row in rows} == {json.dumps(sorted(rows[0]))}  # the same keys


def test_jobs_table_shows_a_tiny_cost_as_a_figure(tmp_path, capsys, monkeypatch):
    """`wrenpack jobs` printed each job's cost at six decimals: a spawned job of
    a few short calls (a few tenths of a micro-dollar) showed "$0.000000",
    as if it had cost nothing."""
    from wrenpack.cli import cmd_jobs

    row = {"id": "20261206-000000-cccccccc", "spawned": True, "function": "f", "state": "done", "calls": 1,
           "done": 1, "failed": 0, "running": 0, "queued": 0, "cancelled": 0, "created": 1.0, "cost": 2.0208e-7,
           "owner": {"user": "u", "host": "h"}}
    monkeypatch.setattr("wrenpack.job.client.job_ids", lambda store: [row["id"]])
    monkeypatch.setattr("wrenpack.job.client.describe", lambda store, job_id, key: dict(row))
    monkeypatch.setattr(cmd_jobs, "_store", lambda args: type("S", (), {"url": "file:///x"})())
    monkeypatch.setattr("wrenpack.cli.cmd_clean.map_reduce_ids", lambda store: [])  # (the fake store holds no map_reduce)
    assert main(["jobs"]) == 0
    line = capsys.readouterr().out.splitlines()[1]
    assert line.rstrip().endswith("$0.0000002"), line


def test_the_notebook_widget_of_cancelled_calls_is_not_green(monkeypatch):
    """In a notebook, a wait whose calls were cancelled (``wrenpack.cancel``,
    ``shutdown(cancel_futures=True)``) ended with the widget's bar green
    ("success"), as if every call had run and succeeded; its label said
    "3/3 calls done, 2 cancelled". It is yellow ("warning") now; red as before
    for failures, green only when every call ran and succeeded."""
    import concurrent.futures as cf
    import types

    import wrenpack
    from wrenpack import progress

    class Widget:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    bars = []
    widgets = types.ModuleType("ipywidgets")
    widgets.IntProgress = lambda **kw: bars.append(Widget(**kw)) or bars[-1]
    widgets.Label = Widget
    widgets.HBox = lambda children: children
    display = types.ModuleType("IPython.display")
    display.display = lambda *a, **kw: None
    monkeypatch.setitem(sys.modules, "ipywidgets", widgets)
    monkeypatch.setitem(sys.modules, "IPython.display", display)
    monkeypatch.setattr(progress, "in_jupyter_kernel", lambda: True)

    def ended(outcomes):
        futs = [cf.Future() for _ in outcomes]
        for fut, outcome in zip(futs, outcomes):
            if outcome == "cancelled":
                fut.cancel()
                continue
            fut.set_running_or_notify_cancel()
            fut.set_result(1) if outcome == "ok" else fut.set_exception(ValueError(outcome))
        wrenpack.get(futs, progress="notebook", return_exceptions=True)
        return bars[-1].bar_style

    assert ended(["ok", "cancelled", "cancelled"]) == "warning"
    assert ended(["ok", "failed", "cancelled"]) == "danger"
    assert ended(["ok", "ok"]) == "success"


def test_the_png_legend_does_not_cover_the_timeline(tmp_path, monkeypatch):
    """The PNG's legend was drawn inside the plot's upper right corner, over
    the first calls' rows: a first call that ran to the job's end had the end
    of its bar hidden under it. The legend is beside the plot now."""
    pytest.importorskip("matplotlib")
    from wrenpack import figure

    drawn = {}
    save = figure.save

    def keep(fig, path, unwritable):
        fig.canvas.draw()
        ax = fig.axes[0]
        drawn["axes"], drawn["legend"] = ax.get_window_extent(), ax.get_legend().get_window_extent()
        drawn["width"] = fig.bbox.width
        low, high = sorted(ax.get_ylim())
        drawn["rows"] = [t for t in ax.get_yticks() if low <= t <= high]
        return save(fig, path, unwritable)

    monkeypatch.setattr(figure, "save", keep)
    records = [{"call_id": "long", "start": 0.0, "end": 10.0, "exit": "ok", "memory_mb": 128},
               {"call_id": "short", "start": 1.0, "end": 2.0, "exit": "error", "memory_mb": 128}]
    JobReport(records, {"now": 20.0}).save(tmp_path / "job.png")
    axes, legend = drawn["axes"], drawn["legend"]
    assert not axes.overlaps(legend), (axes, legend)
    assert legend.x1 <= drawn["width"], (legend, drawn["width"])  # and it is on the page
    assert drawn["rows"] == [0, 1], drawn["rows"]


def test_the_job_settings_are_those_the_calls_ran_with():
    """``wrenpack.job_report(futs)`` of ``@wrenpack.remote(memory=128, timeout=1)``
    calls said, under "Job settings", memory_mb 1024 and timeout_s 300: the
    default executor's, which no call ran with (each call's row said 128 MB,
    1 s). Where every call's record says what it ran with, the job's settings
    say that; calls that ran with different ones are listed (the page says
    "per call"); a record that does not say leaves the setting given."""
    executor_defaults = {"memory_mb": 1024, "timeout_s": 300.0, "retries": 1}
    same = [{"call_id": str(i), "start": 1.0, "end": 2.0, "exit": "ok", "memory_mb": 128, "timeout_s": 1.0} for i in range(3)]
    report = JobReport(same, dict(executor_defaults, now=3.0))
    settings = report.to_json()["job"]["settings"]
    assert (settings["memory_mb"], settings["timeout_s"], settings["retries"]) == (128, 1.0, 1), settings
    page = report.to_html()
    assert "<th>memory_mb</th><td>128</td>" in page and "<th>timeout_s</th><td>1</td>" in page, page
    assert "1024" not in page.split('id="settings"')[1].split("</table>")[0]

    mixed = same[:2] + [dict(same[2], memory_mb=2048)]
    report = JobReport(mixed, dict(executor_defaults, now=3.0))
    assert report.to_json()["job"]["settings"]["memory_mb"] == [128, 2048]
    assert "128, 2048 (per call)" in report.to_html()

    unsaid = [{k: v for k, v in r.items() if k not in ("memory_mb", "timeout_s")} for r in same]
    settings = JobReport(unsaid, dict(executor_defaults, now=3.0)).to_json()["job"]["settings"]
    assert (settings["memory_mb"], settings["timeout_s"]) == (1024, 300.0), settings


def test_jobs_show_json_calls_have_the_same_fields_in_every_state(capsys, monkeypatch):
    """`wrenpack jobs show ID --json` while the job runs: an ended call's entry
    has its exit, start, end, duration and peak; a running one had only
    call_id, state and start, a queued one call_id and state, so a script
    reading call["duration_s"] failed on the first call not ended yet."""
    from wrenpack.cli import cmd_jobs

    statuses = [{"call_id": "00000", "attempt": 0, "segment": 0, "exit": "ok", "start": 1.0, "end": 2.0,
                 "duration_s": 1.0, "peak_rss_mb": 20.0, "state": "done", "attempts": 1},
                {"call_id": "00001", "state": "running", "start": 1.5},
                {"call_id": "00002", "state": "queued"}]
    job = type("J", (), {"store": None, "id": "20261206-000000-dddddddd", "statuses": lambda self: [dict(s) for s in statuses],
                         "segment_statuses": lambda self: []})()
    monkeypatch.setattr(cmd_jobs, "_open", lambda args: job)
    monkeypatch.setattr("wrenpack.job.client.describe", lambda store, job_id, key: {"id": job_id, "state": "running"})
    monkeypatch.setattr("wrenpack.executor.owner.user_key", lambda create=False: None)
    assert main(["jobs", "show", job.id, "--json"]) == 0
    calls = json.loads(capsys.readouterr().out)["calls_status"]
    assert [c["state"] for c in calls] == ["done", "running", "queued"]
    assert all(set(cmd_jobs.CALL_FIELDS) <= set(c) for c in calls), calls  # every call has every field
    assert calls[2]["duration_s"] is None and calls[1]["start"] == 1.5 and calls[0]["duration_s"] == 1.0


def test_a_call_that_failed_with_no_run_timed_is_marked_failed_on_the_timeline(tmp_path):
    """A call stopped at its memory limit (its worker killed: no record of its
    run) has a queued bar, from its making to a worker taking it, and nothing
    else: its timeline row, on the page and in the PNG, was a grey bar alone, as
    if it were still waiting, beside a row the table calls failed. Its end is
    marked in the failed colour now (as a call with no bar at all already was)."""
    records = [{"call_id": "a", "created_at": 100.0, "started_at": 100.4, "state": "failed",
                "error": "MemoryLimitExceeded: a exceeded its memory limit of 128 MB"},
               {"call_id": "b", "created_at": 100.0, "start": 100.5, "end": 101.0, "exit": "ok", "memory_mb": 128}]
    report = JobReport(records, {"now": 102.0})
    svg = report._svg()
    row = re.search(r'<g class="row" data-index="0"[^>]*>(.*?)</g>', svg).group(1)
    marks = re.findall(r'<rect class="seg failed mark" x="([\d.]+)"[^>]*fill="([^"]+)"', row)
    queued_end = re.search(r'<rect class="seg queued" x="([\d.]+)" y="[\d.]+" width="([\d.]+)"', row).groups()
    assert len(marks) == 1 and marks[0][1] == "#d64545", row
    assert float(marks[0][0]) == pytest.approx(float(queued_end[0]) + float(queued_end[1]), abs=0.05), (marks, queued_end)
    other = re.search(r'<g class="row" data-index="1"[^>]*>(.*?)</g>', svg).group(1)
    assert "mark" not in other  # (a call with a bar of its run needs none)
    if __import__("importlib").util.find_spec("matplotlib"):
        report.save(tmp_path / "job.png")  # (drawn there too)


def test_jobs_lists_the_jobs_when_the_map_reduces_cannot_be_listed(tmp_path, capsys, monkeypatch):
    """The map_reduces' intermediates are listed too (``shuffle/``); a store that refuses that
    listing (a role allowed jobs/ only, say) still gets its jobs, and one line saying what was not listed."""
    from wrenpack.cli import cmd_jobs
    from wrenpack.errors import StoreError

    row = {"id": "20261206-000000-dddddddd", "spawned": False, "kind": "job", "function": "f", "state": "running"}
    monkeypatch.setattr("wrenpack.job.client.job_ids", lambda store: [row["id"]])
    monkeypatch.setattr("wrenpack.job.client.describe", lambda store, job_id, key: dict(row))
    monkeypatch.setattr(cmd_jobs, "_store", lambda args: type("S", (), {"url": "s3://b/p"})())

    def refused(store):
        raise StoreError("listing s3://b/p/shuffle/ failed: AccessDenied")

    monkeypatch.setattr("wrenpack.cli.cmd_clean.map_reduce_ids", refused)
    assert main(["jobs"]) == 0
    out, err = capsys.readouterr()
    assert row["id"] in out
    assert err.strip().splitlines() == ["wrenpack jobs: the map_reduces' intermediates in s3://b/p could not be listed: "
                                        "listing s3://b/p/shuffle/ failed: AccessDenied"], err
