"""A job report as a user checks it: its PNG (a valid image, drawn quickly for a
big map, whatever the job's label says), its HTML page in a real headless
browser (no console error, untrusted text shown as text), its JSON against the
documented layout. Built from plain status records: no backend."""
from __future__ import annotations

import json
import shutil
import subprocess
import time
from html.parser import HTMLParser

import pytest

from wrenpack.report import COLORS, JobReport
from wrenpack.wire import status as status_record

EVIL = "<script>alert(\"x\")</script> & 'q' \"dq\" </title></svg><img src=x onerror=alert(1)>"


def _rec(call, exit="ok", start=100.0, seconds=0.5, **extra):
    r = status_record.record("job1", call, 0, 0, exit, start, start + seconds, 50.0, None, "h", 1, "3.12", None)
    r.update(extra)
    return r


def _rgb(kind):
    return tuple(int(COLORS[kind][i : i + 2], 16) for i in (1, 3, 5))


def _pixels(path):
    image = pytest.importorskip("matplotlib.image", reason="reading the PNG needs matplotlib")
    return (image.imread(str(path))[:, :, :3] * 255).round().astype(int)


@pytest.mark.parametrize("label", ["x$\\undefinedcmd", "budget in $ \\frac{", "a_b^c $"])
def test_a_png_whose_label_has_dollars_is_drawn_with_the_label_as_text(tmp_path, label):
    """The PNG's title is the label and the cost ("$0.0000123"). Before, a
    label with a "$" made matplotlib read the text between it and the cost's
    "$" as math: "x$\\undefinedcmd" failed with a many-line ValueError from its
    parser (and a label it could parse was drawn as math italics)."""
    pytest.importorskip("matplotlib", reason="the PNG needs matplotlib (pip install 'wrenpack[plot]')")
    report = JobReport([_rec("00000"), _rec("00001", exit="error", error="boom")], {"memory_mb": 128, "label": label})
    png = report.save(tmp_path / "job.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = _pixels(png)
    assert (pixels == _rgb("failed")).all(axis=2).any() and (pixels == _rgb("finished")).all(axis=2).any()


@pytest.mark.slow  # (2-3 s: matplotlib's import and a 10,000-row figure)
def test_the_png_of_ten_thousand_calls_is_drawn_in_seconds(tmp_path):
    """Before: one matplotlib artist per bar, 12-23 s for 10,000 calls (while
    the report itself builds in a fraction of a second)."""
    pytest.importorskip("matplotlib", reason="the PNG needs matplotlib (pip install 'wrenpack[plot]')")
    records = [_rec(f"{i:05d}", exit="ok" if i % 7 else "error", start=100.0 + i * 0.001, seconds=0.05, created_at=99.0 + i * 0.0005)
               for i in range(10_000)]
    start = time.monotonic()
    report = JobReport(records, {"memory_mb": 128})
    built = time.monotonic() - start
    png = report.save(tmp_path / "big.png")
    took = time.monotonic() - start
    assert built < 2 and took < 8, (built, took)  # (about 0.3 s and 1 s on an idle machine)
    pixels = _pixels(png)
    for kind in ("queued", "finished", "failed"):
        assert (pixels == _rgb(kind)).all(axis=2).sum() > 100, kind


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no headless browser: install Debian's chromium (apt-get install -y --no-install-recommends chromium)")


class _Texts(HTMLParser):
    """The elements and the text of the page as the browser's DOM holds them."""

    def __init__(self):
        super().__init__()
        self.tags: set[str] = set()
        self.handlers: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)
        self.handlers += [name for name, _ in attrs if name.startswith("on")]

    def handle_data(self, data):
        self.text.append(data)


def test_untrusted_text_is_text_in_a_real_browser_with_no_console_error(tmp_path):
    """A label, a call id, an error and a setting that hold markup: the browser
    shows them as text (no script, no image, no handler in its DOM), logs no
    console message, and the page's figures are those of the JSON."""
    browser = _chromium()
    records = [_rec("00000", label=EVIL), _rec("00001", exit="error", error=EVIL, label="f[1]"),
               {"call_id": EVIL, "state": "queued", "created_at": 100.0}]
    report = JobReport(records, {"memory_mb": 128, "label": EVIL, "job_id": EVIL, "backend": EVIL, "now": 101.0})
    page = report.save(tmp_path / "job.html")
    out = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
                          "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "CONSOLE" not in out.stderr, [line for line in out.stderr.splitlines() if "CONSOLE" in line]
    dom = _Texts()
    dom.feed(out.stdout)
    assert not dom.tags & {"script", "img", "iframe", "object"} and dom.handlers == [], (dom.tags, dom.handlers)
    text = "".join(dom.text)
    assert text.count(EVIL) >= 3  # the title, the call's label, the error (at least), each whole
    data = json.loads(report.save(tmp_path / "job.json").read_text())
    assert data["job"]["label"] == EVIL and data["calls"][1]["error"] == EVIL and data["calls"][2]["call_id"] == EVIL


def test_a_misspelt_report_setting_is_named_in_one_line(tmp_path):
    """``ex.report(futs, lable="nightly")`` used to be accepted and ignored (the
    report had no label, and the typo sat in its settings table)."""
    import wrenpack
    from wrenpack.errors import ConfigError

    with pytest.raises(ConfigError, match=r"^a job report has no setting 'lable'; the settings are job_id, label, .*now$"):
        JobReport([_rec("00000")], {"lable": "nightly"})
    ex = wrenpack.Executor(storage=str(tmp_path / "store"))
    try:
        with pytest.raises(ConfigError, match=r"no setting 'memory'.*memory_mb"):
            ex.report([], memory=512)
    finally:
        ex.shutdown()
    assert JobReport([_rec("00000")], {"label": "nightly", "memory_mb": 128}).to_json()["job"]["label"] == "nightly"


def test_a_future_wrenpack_did_not_make_is_named_in_one_line():
    """A plain ``concurrent.futures.Future`` among the futures (a thread pool's):
    before, ``AttributeError: 'Future' object has no attribute 'status'``."""
    import concurrent.futures as cf

    from wrenpack.errors import ConfigError
    from wrenpack.futures import WrenFuture

    mine = WrenFuture("j", "00000", "f[0]")
    foreign = cf.Future()
    foreign.set_result(1)
    with pytest.raises(ConfigError, match=r"^a job report takes the futures wrenpack returned, but item 1 is a Future it did not make; leave it out$"):
        JobReport.from_futures([mine, foreign])
    assert [c["state"] for c in JobReport.from_futures([mine]).calls] == ["queued"]


class _Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no text")


def test_a_failure_whose_message_cannot_be_shown_still_has_its_row():
    """A call that raised an exception whose ``str()`` itself fails made the
    report fail (RuntimeError from inside it); one whose message begins with a
    newline showed only its type. Now: the type alone, and the first line
    that says something."""
    from wrenpack.futures import WrenFuture

    odd, blank_first = WrenFuture("j", "00000", "f[0]"), WrenFuture("j", "00001", "f[1]")
    odd.set_exception(_Unprintable())
    blank_first.set_exception(ValueError("\n  the second line says why\nthird"))
    report = JobReport.from_futures([odd, blank_first])
    assert [c["error"] for c in report.calls] == ["_Unprintable", "ValueError: the second line says why"]
    assert [c["state"] for c in report.calls] == ["failed", "failed"]


def test_s3_requests_are_counted_per_job_as_the_model_says():
    """The S3 model counts an owner record PUT and a clean-up LIST per job; a
    report of futures from two jobs (a map launched as several jobs, or two
    maps) counted them once. Three calls of two jobs, one invocation each."""
    a, b = _rec("00000"), _rec("00001")
    c = dict(_rec("00000"), job_id="job2")
    s3 = JobReport([a, b, c], {"memory_mb": 128}).cost["s3"]
    assert (s3["put"], s3["get"], s3["list"]) == (2 + 3, 3, 2)
    assert "per job: 1 PUT" in s3["basis"]
    s3 = JobReport([a, b], {"memory_mb": 128}).cost["s3"]
    assert (s3["put"], s3["get"], s3["list"]) == (1 + 2, 2, 1)
    assert JobReport([], {}).cost["s3"]["list"] == 0


def test_the_saved_json_has_the_documented_layout(tmp_path):
    """``save("job.json")`` parses, and holds exactly the fields
    ``JobReport.to_json``'s docstring lists (schema 1), for finished, failed,
    checkpointed, running and queued calls alike."""
    records = [_rec("00000"), _rec("00001", exit="error", error="boom"),
               _rec("00002", exit="checkpointed", checkpoint={"saves": 1, "restored": False}),
               dict(_rec("00002", start=101.0), segment=1, checkpoint={"saves": 0, "restored": True}),
               {"call_id": "00003", "job_id": "job1", "state": "running", "start": 100.5, "created_at": 99.0},
               {"call_id": "00004", "job_id": "job1", "state": "queued", "created_at": 99.5}]
    data = json.loads(JobReport(records, {"memory_mb": 128, "now": 102.0}).save(tmp_path / "job.json").read_text())
    assert set(data) == {"schema", "job", "cost", "calls"} and data["schema"] == 1
    assert set(data["job"]) == {"id", "label", "backend", "calls", "states", "retried_calls", "checkpointed_calls", "start",
                                "end", "wall_s", "settings"}
    assert set(data["cost"]) == {"estimated", "basis", "currency", "architecture", "invocations", "requests", "billed_ms",
                                 "gb_s", "duration_usd", "requests_usd", "s3", "total_usd", "prices", "notes"}
    assert set(data["cost"]["s3"]) == {"put", "get", "list", "usd", "basis"}
    for call in data["calls"]:
        assert set(call) == {"index", "label", "job_id", "call_id", "state", "error", "attempts", "retried", "segments", "exit",
                             "memory_mb", "memory_source", "timeout_s", "auto", "peak_rss_mb", "run_s", "queued_s",
                             "invocations", "billed_ms", "gb_s", "cost_usd", "timeline"}
        assert call["memory_source"] in ("call", "auto", "job", "unknown")
        for seg in call["timeline"]:
            extra = {"segment", "attempt", "exit"} if seg["kind"] != "queued" or "segment" in seg else set()
            assert set(seg) == {"kind", "start", "end"} | extra and 0 <= seg["start"] <= seg["end"] <= data["job"]["wall_s"]
    assert [c["state"] for c in data["calls"]] == ["finished", "failed", "finished", "running", "queued"]
    assert sum(data["job"]["states"].values()) == data["job"]["calls"] == 5
