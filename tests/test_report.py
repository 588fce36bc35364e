"""Job reports: a map's timeline, settings and cost, as JSON, HTML (opened in a
real headless browser), PNG, and through the ``--plot`` command-line flag."""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

import wrenpack
from tests.notebooks import KERNEL, local_kernel
from tests.test_checkpoint import expected, stepper
from wrenpack.errors import ConfigError
from wrenpack.report import COLORS, JobReport, add_plot_arguments, billed_ms, prices, write_plot
from wrenpack.wire import status as status_record

CALLS = 200
MEMORY = 256


def flaky(x, marks):
    """Fails for good on some inputs, and on its first attempt only on others
    (a mark file says the first attempt happened)."""
    if x % 50 == 7:
        raise ValueError(f"bad input {x}")
    if x % 10 == 3:
        mark = os.path.join(marks, str(x))
        if not os.path.exists(mark):
            open(mark, "w").close()
            raise ConnectionError(f"first attempt of {x}")
    return 2 * x


RETRIED = [x for x in range(CALLS) if x % 10 == 3]
FAILED = [x for x in range(CALLS) if x % 50 == 7]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A 200-call local map with retries and failures, and one checkpointed call
    (about 1.2 s of work under a 1 s timeout: two segments), run at once on two workers."""
    tmp = tmp_path_factory.mktemp("report")
    (tmp / "marks").mkdir()
    ex = wrenpack.Executor(storage=str(tmp / "store"), concurrency=2)
    try:
        ck = wrenpack.remote(stepper, executor=ex, timeout=1, memory=MEMORY).remote(120, 0.01)
        f = wrenpack.remote(flaky, executor=ex, retries=1, retry_on=(ConnectionError,), memory=MEMORY)
        futs = f.map(range(CALLS), marks=str(tmp / "marks"))
        results = wrenpack.get(futs + [ck], timeout=120, return_exceptions=True)
        assert results[-1] == expected(120)
        futs.append(ck)
        report = ex.report(futs)
    finally:
        ex.shutdown()
    return futs, report, tmp


def _invocations(fut):
    return list(fut.segment_statuses) + list(fut.retried_statuses) + ([fut.status] if fut.status and "start" in fut.status else [])


def test_every_call_its_state_settings_and_timeline(job):
    futs, report, _ = job
    data = report.to_json()
    assert data["schema"] == 1 and len(data["calls"]) == CALLS + 1
    states = [c["state"] for c in data["calls"]]
    assert [i for i, s in enumerate(states) if s == "failed"] == FAILED
    assert states.count("finished") == CALLS + 1 - len(FAILED)
    assert data["job"]["states"]["failed"] == len(FAILED) and data["job"]["retried_calls"] == len(RETRIED)
    for i, c in enumerate(data["calls"][:CALLS]):
        kinds = [seg["kind"] for seg in c["timeline"]]
        assert c["memory_mb"] == MEMORY and c["memory_source"] == "call" and c["timeout_s"] == 300
        assert kinds[0] == "queued", (i, kinds)
        if i in RETRIED:
            assert c["attempts"] == 2 and c["retried"] == [f"ConnectionError: first attempt of {i}"], c
            assert kinds.count("retried") == 1 and kinds[-1] == "finished" and c["error"] is None
        elif i in FAILED:
            assert kinds[-1] == "failed" and c["error"] == f"ValueError: bad input {i}"
        else:
            assert c["attempts"] == 1 and "retried" not in kinds and kinds[-1] == "finished"
        # bars are in time order and inside the job
        ends = [(seg["start"], seg["end"]) for seg in c["timeline"]]
        assert all(a <= b for a, b in ends) and all(e1 <= s2 + 1e-6 for (_, e1), (s2, _) in zip(ends, ends[1:]))
        assert 0 <= ends[0][0] and ends[-1][1] <= data["job"]["wall_s"] + 1e-6
    ck = data["calls"][-1]
    ck_fut = futs[-1]
    assert ck["segments"] == ck_fut.segments >= 2 and ck["timeout_s"] == 1
    assert [seg["kind"] for seg in ck["timeline"] if seg["kind"] != "queued"] == ["checkpointed"] * (ck["segments"] - 1) + ["finished"]
    assert data["job"]["checkpointed_calls"] == 1


def test_cost_is_the_sum_of_billed_milliseconds_times_memory_plus_requests(job):
    futs, report, _ = job
    cost = report.to_json()["cost"]
    table = prices()["architectures"]["x86_64"]
    # Worked out here from the futures' own records, independently of the report.
    invocations = [s for fut in futs for s in _invocations(fut)]
    ms = [math.ceil(round((s["end"] - s["start"]) * 1000, 6)) or 1 for s in invocations]
    assert len(invocations) == CALLS + len(RETRIED) + futs[-1].segments
    assert cost["estimated"] is True and "estimated" in cost["basis"]
    assert cost["invocations"] == cost["requests"] == len(invocations)
    assert cost["billed_ms"] == sum(ms)
    assert cost["gb_s"] == pytest.approx(sum(ms) / 1000 * MEMORY / 1024)
    assert cost["duration_usd"] == pytest.approx(cost["gb_s"] * table["per_gb_second"])
    assert cost["requests_usd"] == pytest.approx(len(invocations) * table["per_million_requests"] / 1e6)
    s3 = cost["s3"]
    assert s3["put"] >= len(invocations) and s3["get"] >= len(invocations)
    assert cost["total_usd"] == pytest.approx(cost["duration_usd"] + cost["requests_usd"] + s3["usd"])
    assert sum(c["cost_usd"] for c in report.to_json()["calls"]) == pytest.approx(cost["duration_usd"])


class _Dom(HTMLParser):
    """What the browser's DOM holds: the call rows, the timeline rows, the job's cost."""

    def __init__(self):
        super().__init__()
        self.rows, self.bars, self.cost, self.svg = [], [], None, 0
        self._in_cost = self._in_state = False
        self.cost_text = ""
        self.state_texts = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "svg":
            self.svg += 1
        if tag == "tr" and a.get("class") == "call":
            self.rows.append(a)
        if tag == "g" and a.get("class") == "row":
            self.bars.append(a)
        if a.get("id") == "job-cost":
            self.cost, self._in_cost = a, True
        if tag == "td" and a.get("data-field") == "state" and self.rows:
            self._in_state = True

    def handle_endtag(self, tag):
        if tag == "span":
            self._in_cost = False
        if tag == "td":
            self._in_state = False

    def handle_data(self, data):
        if self._in_cost:
            self.cost_text += data
        if self._in_state:
            self.state_texts.append(data)


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no headless browser: install Debian's chromium (apt-get install -y chromium) to open the report")


def test_the_html_opens_in_a_headless_browser_with_every_call_and_the_cost(job, tmp_path):
    _, report, _ = job
    page = report.save(tmp_path / "job.html")
    text = page.read_text()
    assert "<script" not in text and "http://" not in text.replace("http://www.w3.org/2000/svg", "")  # self-contained
    browser = _chromium()
    out = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
                          "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    dom = _Dom()
    dom.feed(out.stdout)
    data = report.to_json()
    assert dom.svg == 1
    assert len(dom.rows) == len(dom.bars) == len(data["calls"]) == CALLS + 1
    for row, bar, state_text, call in zip(dom.rows, dom.bars, dom.state_texts, data["calls"]):
        assert int(row["data-index"]) == int(bar["data-index"]) == call["index"]
        assert row["data-state"] == bar["data-state"] == state_text == call["state"]
        assert int(row["data-billed-ms"]) == call["billed_ms"]
        assert float(row["data-usd"]) == call["cost_usd"]
    assert float(dom.cost["data-usd"]) == data["cost"]["total_usd"]
    assert dom.cost["data-estimated"] == "true"
    assert dom.cost_text == report.total_usd_text() and dom.cost_text.endswith("(estimated)")


@pytest.mark.slow
def test_the_browser_draws_every_calls_bars_in_its_row(job, tmp_path):
    """A screenshot of the timeline: in each call's row, the colour of every kind
    of bar it has (its final state's among them) is on screen."""
    image = pytest.importorskip("matplotlib.image", reason="reading the screenshot needs matplotlib")
    _, report, _ = job
    svg = report._svg()
    width, height = (int(v) for v in re.search(r'width="(\d+)" height="(\d+)"', svg).groups())
    page = tmp_path / "timeline.html"
    page.write_text(f'<!DOCTYPE html><html><body style="margin:0">{svg}</body></html>')
    shot = tmp_path / "timeline.png"
    out = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                          "--force-device-scale-factor=1", f"--user-data-dir={tmp_path / 'profile'}",
                          f"--window-size={width},{height}", f"--screenshot={shot}", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and shot.exists(), out.stderr[-2000:]
    pixels = (image.imread(str(shot))[:, :, :3] * 255).round().astype(int)
    rgb = {kind: tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5)) for kind, colour in COLORS.items()}
    bands = _row_bands(svg)
    calls = report.to_json()["calls"]
    assert len(bands) == len(calls)
    for c in calls:
        top, bottom = bands[c["index"]]
        row = pixels[top:bottom]
        kinds = {seg["kind"] for seg in c["timeline"]}
        assert c["state"] in kinds
        for kind in kinds:
            assert (row == rgb[kind]).all(axis=2).any(), (c["label"], kind)


def _row_bands(svg):
    """Each timeline row's pixel band (top, bottom), from its bars."""
    bands = {}
    for index, body in re.findall(r'<g class="row" data-index="(\d+)"[^>]*>(.*?)</g>', svg):
        ys = [(float(y), float(h)) for y, h in re.findall(r'<rect [^>]*?y="([\d.]+)" [^>]*?height="([\d.]+)"', body)]
        bands[int(index)] = (int(min(y for y, _ in ys)), int(math.ceil(max(y + h for y, h in ys))))
    return bands


def test_save_writes_json_and_refuses_other_names(job, tmp_path):
    _, report, _ = job
    saved = json.loads(report.save(tmp_path / "job.json").read_text())
    assert saved == report.to_json()
    with pytest.raises(ConfigError, match=r"end.*\.html, \.json, \.png"):
        report.save(tmp_path / "job.pdf")
    assert "<svg" in report._repr_html_() and "<html" not in report._repr_html_()


@pytest.mark.slow  # (1-3 s: importing matplotlib and drawing 201 rows)
def test_save_writes_a_png_with_matplotlib(job, tmp_path):
    image = pytest.importorskip("matplotlib.image", reason="the PNG needs matplotlib (pip install 'wrenpack[plot]')")
    png = job[1].save(tmp_path / "job.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = (image.imread(str(png))[:, :, :3] * 255).round().astype(int)
    checkpointed = tuple(int(COLORS["checkpointed"][i : i + 2], 16) for i in (1, 3, 5))
    assert (pixels == checkpointed).all(axis=2).sum() > 500  # the checkpointed call's long bars are drawn


def test_png_to_an_unwritable_path_is_one_line(job, tmp_path):
    pytest.importorskip("matplotlib", reason="the PNG needs matplotlib (pip install 'wrenpack[plot]')")
    with pytest.raises(ConfigError) as err:
        job[1].save(tmp_path / "missing-dir" / "job.png")
    assert "could not write" in str(err.value) and "choose a writable path" in str(err.value)
    assert "\n" not in str(err.value)


def test_png_without_matplotlib_names_the_fix(job, tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_matplotlib(name, *a, **k):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(ConfigError, match=r"pip install 'wrenpack\[plot\]'"):
        job[1].save(tmp_path / "job.png")


def test_plot_flag_checks_the_name_when_parsed_and_writes_the_report(job, tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="wrenpack jobs show")
    add_plot_arguments(parser)
    assert parser.parse_args([]).plot is None and write_plot(job[1], None) is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--plot", str(tmp_path / "out.svg")])
    assert "name a file ending in .html, .json, .png" in capsys.readouterr().err
    args = parser.parse_args(["--plot", str(tmp_path / "out.html")])
    assert write_plot(job[1], args.plot).read_text().startswith("<!DOCTYPE html>")


# -- reports from plain store records (no futures) ----------------------------------------

def _rec(call, segment=0, attempt=0, exit="ok", start=100.0, seconds=0.5, **extra):
    r = status_record.record("job1", call, attempt, segment, exit, start, start + seconds, 50.0, None, "h", 1, "3.12", None)
    r.update(extra)
    return r


def test_billed_milliseconds_round_up_to_one_ms():
    assert [billed_ms(s) for s in (0.0, 0.0001, 0.001, 0.003, 0.0031, 1.0005, 2.0)] == [1, 1, 1, 3, 4, 1001, 2000]


def test_store_records_on_lambda_are_priced_as_billed_at_each_calls_memory():
    records = [
        _rec("00000", seconds=1.0001),                                    # 1001 ms at the job's 1024 MB
        _rec("00001", seconds=0.25, memory_mb=2048),                      # 250 ms at its own 2048 MB
        _rec("00002", segment=0, exit="checkpointed", seconds=0.8, checkpoint={"saves": 3, "restored": False}),
        _rec("00002", segment=1, start=101.0, seconds=0.1, checkpoint={"saves": 0, "restored": True}),
        _rec("00003", attempt=1, exit="error", start=102.0, seconds=0.0004, error="boom"),  # attempt 0 left no record
        {"call_id": "00004", "state": "queued"},
    ]
    report = JobReport(records, {"billed": True, "architecture": "arm64", "memory_mb": 1024, "job_id": "job1", "now": 110.0})
    data = report.to_json()
    cost = data["cost"]
    price = prices()["architectures"]["arm64"]
    gb_s = 1001 / 1000 + 250 / 1000 * 2 + 800 / 1000 + 100 / 1000 + 1 / 1000
    assert cost["estimated"] is False and cost["architecture"] == "arm64" and "billed" in cost["basis"]
    assert cost["billed_ms"] == 1001 + 250 + 800 + 100 + 1
    assert cost["gb_s"] == pytest.approx(gb_s) and cost["duration_usd"] == pytest.approx(gb_s * price["per_gb_second"])
    # requests: 5 timed invocations, the crashed attempt 0 of call 3, the queued call's first
    assert cost["invocations"] == 5 and cost["requests"] == 7
    assert any("left no record" in n for n in cost["notes"])
    s3 = cost["s3"]
    assert (s3["put"], s3["get"], s3["list"]) == (1 + 6 + 3, 6 + 1, 1)
    states = {c["call_id"] or c["label"]: c["state"] for c in data["calls"]}
    assert states == {"00000": "finished", "00001": "finished", "00002": "finished", "00003": "failed", "00004": "queued"}
    by_id = {c["label"]: c for c in data["calls"]}
    assert by_id["00002"]["segments"] == 2 and [s["kind"] for s in by_id["00002"]["timeline"]] == ["checkpointed", "queued", "finished"]
    assert by_id["00003"]["attempts"] == 2 and by_id["00003"]["error"] == "boom"
    assert by_id["00001"]["memory_mb"] == 2048 and by_id["00000"]["memory_source"] == "job"
    counted = JobReport(records, {"billed": True, "memory_mb": 1024, "s3_requests": {"put": 10, "get": 20, "list": 2}}).cost["s3"]
    s3p = prices()["s3_requests"]
    assert counted["usd"] == pytest.approx((10 + 2) * s3p["per_thousand_put"] / 1000 + 20 * s3p["per_thousand_get"] / 1000)


def test_a_running_call_and_auto_settings_are_shown_with_the_reason():
    auto = {"memory": 384, "timeout": 42, "why": "profile: peak 300 MB x 1.10 + 32 MB", "profile": "abc"}
    records = [{"call_id": "00000", "job_id": "j", "state": "running", "start": 100.0, "auto": auto, "created_at": 99.5},
               _rec("00001", seconds=0.2, memory_mb=384, timeout_s=42, auto=auto)]
    report = JobReport(records, {"now": 103.0, "memory_mb": 1024})
    calls = report.to_json()["calls"]
    assert calls[0]["state"] == "running" and calls[0]["timeline"][-1]["kind"] == "running"
    assert calls[0]["timeline"][-1]["end"] - calls[0]["timeline"][-1]["start"] == pytest.approx(3.0)
    assert calls[0]["memory_mb"] == calls[1]["memory_mb"] == 384 and calls[0]["memory_source"] == calls[1]["memory_source"] == "auto"
    assert calls[0]["timeout_s"] == 42
    assert report.cost["requests"] == 2 and report.cost["invocations"] == 1 and report.cost["notes"] == []  # running: not lost
    page = report.to_html()
    assert "What \"auto\" chose" in page and "peak 300 MB x 1.10 + 32 MB" in page


def test_futures_still_queued_running_or_cancelled_have_their_rows():
    from wrenpack.futures import WrenFuture

    queued, running, cancelled = (WrenFuture("j", f"0000{i}", f"f[{i}]") for i in range(3))
    running._mark_running()
    assert cancelled.cancel()
    data = JobReport.from_futures([queued, running, cancelled], {"memory_mb": 128}).to_json()
    assert [c["state"] for c in data["calls"]] == ["queued", "running", "cancelled"]
    assert [[s["kind"] for s in c["timeline"]] for c in data["calls"]] == [["queued"], ["queued", "running"], []]
    assert data["cost"]["requests"] == 2 and data["cost"]["billed_ms"] == 0 and data["job"]["id"] == "j"


def test_bad_records_and_settings_fail_in_one_line():
    with pytest.raises(ConfigError, match="without call_id"):
        JobReport([{"exit": "ok"}])
    with pytest.raises(ConfigError, match="dicts or dataclasses"):
        JobReport([42])
    with pytest.raises(ConfigError, match="architecture='sparc'.*x86_64"):
        JobReport([_rec("0")], {"architecture": "sparc"})


def double(x):
    return 2 * x


def test_job_report_of_the_default_executor(tmp_path, monkeypatch):
    from wrenpack import config as wconfig
    from wrenpack.executor import reset_default_executor

    assert wrenpack.JobReport is JobReport
    with pytest.raises(wrenpack.ConfigError, match="executor="):
        wrenpack.job_report([], executor="local")
    monkeypatch.setattr(wconfig, "_global_overrides", {})
    wrenpack.configure(storage=str(tmp_path), concurrency=1, memory=300)
    try:
        futs = wrenpack.remote(double).map(range(3))
        assert wrenpack.get(futs, timeout=60) == [0, 2, 4]
        report = wrenpack.job_report(futs)
    finally:
        reset_default_executor()
    data = report.to_json()
    assert [c["state"] for c in data["calls"]] == ["finished"] * 3 and data["job"]["backend"] == "local"
    assert all(c["memory_mb"] == 300 for c in data["calls"]) and data["cost"]["estimated"] is True
    assert data["job"]["label"] == "double" and "3 finished" in repr(report)


def test_calls_that_shared_an_invocation_are_priced_once(tmp_path):
    """A map whose calls run ten per invocation (``chunksize``; automatic grouping
    does the same): one row per call, each invocation billed and requested once."""
    ex = wrenpack.Executor(storage=str(tmp_path), concurrency=2)
    try:
        futs = wrenpack.remote(double, executor=ex).map(range(60), chunksize=10)
        assert wrenpack.get(futs, timeout=60) == [2 * x for x in range(60)]
        report = ex.report(futs)
    finally:
        ex.shutdown()
    data = report.to_json()
    shared = {(f.status["job_id"], f.status["call_id"], f.status["segment"], f.status["attempt"]): f.status for f in futs}
    assert len(data["calls"]) == 60 and all(c["state"] == "finished" for c in data["calls"])
    assert len(shared) == 6
    assert data["cost"]["invocations"] == data["cost"]["requests"] == len(shared)
    assert data["cost"]["billed_ms"] == sum(billed_ms(s["end"] - s["start"]) for s in shared.values())


@pytest.mark.slow
@pytest.mark.backends("lambda")
def test_a_lambda_job_is_priced_as_billed(make_executor):
    """On the (emulated) Lambda backend the report says billed, not estimated."""
    ex = make_executor(memory=512)
    futs = [ex.submit(double, x) for x in range(3)]
    assert [f.result(timeout=300) for f in futs] == [0, 2, 4]
    data = ex.report(futs).to_json()
    assert data["cost"]["estimated"] is False and data["job"]["backend"] == "lambda"
    assert data["cost"]["invocations"] == 3 and all(c["memory_mb"] == 512 for c in data["calls"])
    assert data["cost"]["duration_usd"] == pytest.approx(data["cost"]["gb_s"] * prices()["architectures"]["x86_64"]["per_gb_second"])


@pytest.mark.slow
def test_a_report_shows_inline_in_a_notebook(tmp_path, monkeypatch):
    """The last expression of a cell, in a real kernel (this interpreter's,
    through ipykernel): Jupyter shows the report's HTML, timeline and all."""
    nbformat, nbclient = local_kernel(tmp_path, monkeypatch)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import wrenpack\nfrom tests.test_report import double\n"
                                          "futs = wrenpack.remote(double).map(range(5))\nwrenpack.get(futs)\n"
                                          "wrenpack.job_report(futs)")]
    nbclient.NotebookClient(nb, kernel_name=KERNEL, timeout=60, resources={"metadata": {"path": str(tmp_path)}}).execute()
    shown = [o for o in nb.cells[0].outputs if o["output_type"] == "execute_result"]
    assert len(shown) == 1, nb.cells[0].outputs
    page = shown[0]["data"]["text/html"]
    assert page.count('<tr class="call"') == 5 and "<svg" in page and "(estimated)" in page
    assert shown[0]["data"]["text/plain"].startswith("<JobReport double: 5 calls (5 finished)")


def test_what_is_not_a_future_is_named_in_one_line():
    from wrenpack.errors import ConfigTypeError

    with pytest.raises(ConfigTypeError, match=r"report\(\) takes futures, but item 0 is int"):
        wrenpack.job_report([1])
    with pytest.raises(ConfigTypeError, match=r"report\(\) takes a future or an iterable of futures, not int"):
        wrenpack.job_report(3)


def test_a_report_of_an_executor_whose_backend_has_not_started_knows_how_it_bills(tmp_path):
    """It showed "billed None" in its settings (the backend is made on the first launch)."""
    ex = wrenpack.Executor(storage=str(tmp_path / "s"))
    try:
        assert ex.report([]).to_json()["job"]["settings"]["billed"] is False
    finally:
        ex.shutdown()
