"""What local workers print reaches the driver's own streams, whole lines, in
order, before the call's future resolves: pytest's capsys sees it, and the
progress bar is cleared before each such line and drawn again after it.

Before, a worker wrote straight to the driver's descriptors 1 and 2: capsys saw
nothing, and on a terminal a call's lines broke into the bar's line
(``wrenpack ━━━ 0/3 0:00:00call 0 line 0``)."""
from __future__ import annotations

import re
import sys
import textwrap

import pytest

import wrenpack
from tests.test_probe_view_terminal import REPO, run_in_pty, screen

LINES = 40


def chatty(i, lines=LINES):
    for j in range(lines):
        print(f"call {i} line {j} " + "x" * (j % 7))
    print(f"call {i} to stderr", file=sys.stderr)
    print(f"call {i} ends without a newline", end="")
    return i


def flood(size):
    line = "y" * 199
    for _ in range(size // 200):
        print(line)
    return size


def test_what_calls_print_arrives_whole_and_in_order_at_the_drivers_streams(make_executor, capsys):
    ex = make_executor(concurrency=2)
    f = wrenpack.remote(chatty, executor=ex)
    capsys.readouterr()
    assert wrenpack.get(f.map(range(6)), progress="log") == list(range(6))
    out, err = capsys.readouterr()  # (at once: nothing may still be on its way once get returned)
    lines = out.splitlines()
    for i in range(6):
        own = [line for line in lines if line.startswith(f"call {i} ")]
        assert own == [f"call {i} line {j} " + "x" * (j % 7) for j in range(LINES)] + [f"call {i} ends without a newline"], own
    # every line is one of the calls' own, whole: none glued to another or cut
    pattern = re.compile(r"call \d line \d+ x*|call \d ends without a newline")
    assert all(pattern.fullmatch(line) for line in lines), [line for line in lines if not pattern.fullmatch(line)][:5]
    assert len(lines) == 6 * (LINES + 1)
    errs = err.splitlines()
    assert sorted(line for line in errs if line.startswith("call")) == [f"call {i} to stderr" for i in range(6)]
    assert any(line.startswith("wrenpack: 6/6 calls done") for line in errs)  # the log display's own line, whole


def test_a_call_that_prints_megabytes_does_not_block_and_loses_nothing(make_executor, capsys):
    ex = make_executor(concurrency=1)
    f = wrenpack.remote(flood, executor=ex, timeout=60)
    size = 4 << 20
    fut = f.remote(size)
    assert fut.result(timeout=60) == size
    out = capsys.readouterr().out
    assert out.count("y" * 199 + "\n") == size // 200


def test_the_output_of_calls_still_running_at_shutdown_is_written_before_it_returns(make_executor, capsys):
    ex = make_executor(concurrency=2)
    f = wrenpack.remote(chatty, executor=ex)
    futs = f.map(range(4), lines=5)
    ex.shutdown(wait=True)
    assert [fut.result() for fut in futs] == list(range(4))
    out = capsys.readouterr().out
    assert sum(1 for line in out.splitlines() if line.startswith("call ")) == 4 * 6


PROGRAM = """
    import sys, time, wrenpack
    ex = wrenpack.Executor(backend="local", concurrency=2, storage=sys.argv[2])

    def f(i):
        time.sleep(0.8)  # (the bar is up by then)
        for j in range(5):
            print(f"call {i} line {j}", flush=True)
            time.sleep(0.01)
        print(f"call {i} warns", file=sys.stderr, flush=True)
        return i

    got = wrenpack.get(wrenpack.remote(f, executor=ex).map(range(3)), progress="bar")
    ex.shutdown()
    print("got", got, flush=True)
"""


def test_on_a_terminal_the_calls_lines_go_above_the_bar_never_into_it(tmp_path):
    code = textwrap.dedent(PROGRAM).replace("sys.argv[2]", repr(str(tmp_path / "store")))
    out, rc = run_in_pty(code, trigger=None, timeout=120, env={"PYTHONPATH": str(REPO)})
    assert rc == 0, repr(out)
    assert "0/3" in out, repr(out)  # the bar was up while the calls printed
    shown = screen(out)
    assert shown[-1] == "got [0, 1, 2]", shown
    for i in range(3):
        own = [line for line in shown if line.startswith(f"call {i} ")]
        assert own == [f"call {i} line {j}" for j in range(5)] + [f"call {i} warns"], shown
    assert len(shown) == 3 * 6 + 1, shown  # nothing else left on the screen: no bar glued to a line



def test_a_line_a_queued_call_is_writing_is_not_cut_when_the_call_before_it_ends(capsys):
    """Short calls go to a worker several at a time; when the first one's reply is
    read, the next may be in the middle of a line. The driver writes the whole
    lines it has and keeps the rest for its end (the worker ends each call's open
    line itself, before its reply): the line comes whole."""
    import os

    from wrenpack.backends.local.output import Relay

    relay = Relay()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    output = relay.add(out_r, err_r)
    try:
        os.write(out_w, b"first call done\npart one, ")
        output.drain()  # (the first call's reply was read)
        assert capsys.readouterr().out == "first call done\n"
        os.write(out_w, b"part two\n")
        output.drain()
        assert capsys.readouterr().out == "part one, part two\n"
        os.write(out_w, b"left open at the end")
        os.close(out_w)
        os.close(err_w)
        out_w = err_w = -1
        output.finish()
        relay.stop()
        assert capsys.readouterr().out == "left open at the end\n"
    finally:
        for fd in (out_w, err_w):
            if fd >= 0:
                os.close(fd)
        relay.stop()


def test_relay_output_must_be_a_bool():
    import pytest

    from wrenpack.backends.local import LocalBackend

    with pytest.raises(wrenpack.ConfigError, match=r"^relay_output='no' must be True .* or False") as info:
        LocalBackend(relay_output="no")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kwargs, says", [
    ({"handoff": "no"}, r"^handoff='no' must be True .* False .* or None"),
    ({"handoff": 1}, r"^handoff=1 must be True"),
    ({"reply_limit": "1024"}, r"^reply_limit='1024' must be a whole number of bytes, 0 or more"),
    ({"reply_limit": -1}, r"^reply_limit=-1 must be"),
    ({"reply_limit": 1.5}, r"^reply_limit=1.5 must be"),
    ({"reply_limit": True}, r"^reply_limit=True must be"),
])
def test_handoff_and_reply_limit_are_checked_in_one_line(kwargs, says):
    """``handoff='no'`` was taken as True and ``reply_limit='1024'`` or ``-1`` went through ``int()``."""
    from wrenpack.backends.local import LocalBackend

    with pytest.raises(wrenpack.ConfigError, match=says) as info:
        LocalBackend(**kwargs)
    assert "\n" not in str(info.value)
