"""What a user sees of ``wrenpack.get``'s progress bar on a real terminal: a
program run under a pseudo-terminal (``pty``), its output read as the terminal
gets it, and the screen it leaves worked out from that output (carriage
returns, line erasures, cursor moves). No backend: the futures are plain
``concurrent.futures`` ones, finished by a thread of the program when the test
says so (after it has seen the bar), so each test takes well under a second
or two."""
from __future__ import annotations

import os
import re
import select
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest

pty = pytest.importorskip("pty", reason="pseudo-terminals need a POSIX system")

REPO = Path(__file__).resolve().parents[1]

#: the start of a program: ``futs``, three futures a thread finishes once the
#: test writes to the ``GO`` pipe (after it saw the bar); ``BEFORE_FINISH`` runs
#: on that thread first.
PROGRAM = """
    import concurrent.futures as cf, logging, os, sys, threading
    {setup}
    import wrenpack
    futs = [cf.Future() for _ in range({count})]
    GO = int(sys.argv[1])

    def feeder():
        os.read(GO, 1)  # the test saw the bar
        {before_finish}
        for i, f in enumerate(futs):
            f.set_running_or_notify_cancel()
            f.set_result(1) if i % 100 != 7 else f.set_exception(ValueError(i))

    threading.Thread(target=feeder, daemon=True).start()
    out = wrenpack.get(futs, progress={progress!r}, return_exceptions=True)
    print("got", out if len(out) < 10 else len(out), flush=True)
"""


def program(progress="bar", setup="", before_finish="pass", count=3) -> str:
    return textwrap.dedent(PROGRAM).format(progress=progress, setup=setup, before_finish=before_finish, count=count)


def run_in_pty(code: str, trigger: str | None = "0/3", timeout: float = 60.0, columns: int = 80,
               env: dict[str, str] | None = None, times: int = 1) -> tuple[str, int]:
    """Run ``code`` with a pseudo-terminal as its stdin, stdout and stderr; once
    ``trigger`` has appeared ``times`` times in what it wrote (None: at once),
    write a byte to the pipe whose descriptor it gets as ``sys.argv[1]``. Its
    output (decoded) and exit code."""
    go_read, go_write = os.pipe()
    os.set_inheritable(go_read, True)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("WRENPACK_") and k not in ("NO_COLOR", "FORCE_COLOR")}
    environ.update(TERM="xterm-256color", COLUMNS=str(columns), LINES="24",
                   PYTHONPATH=str(REPO) + os.pathsep + environ.get("PYTHONPATH", ""))
    environ.update(env or {})
    pid, fd = pty.fork()
    if pid == 0:  # the child: only exec (or exit) here
        try:
            os.close(go_write)
            os.execve(sys.executable, [sys.executable, "-c", code, str(go_read)], environ)
        finally:
            os._exit(127)
    os.close(go_read)
    out = b""
    sent = trigger is None
    if sent:
        os.write(go_write, b"g")
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.05)
            if ready:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:  # (Linux: EIO once the child's side is closed)
                    break
                if not chunk:
                    break
                out += chunk
            if not sent and out.count(trigger.encode()) >= times:
                os.write(go_write, b"g")
                sent = True
        else:
            os.kill(pid, signal.SIGKILL)
    finally:
        os.close(go_write)
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    return out.decode("utf-8", "replace"), os.waitstatus_to_exitcode(status)


_CONTROL = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])|\x1b[()][0-9A-Za-z]|\x1b.")


def screen(text: str) -> list[str]:
    """The lines a terminal shows after ``text``: what a user reads and copies."""
    lines, row, col, pos = [""], 0, 0, 0
    while pos < len(text):
        match = _CONTROL.match(text, pos)
        if match:
            args, command = match.group(1), match.group(2)
            if command == "K":
                lines[row] = "" if args == "2" else lines[row][:col] if args in ("", "0") else lines[row]
            elif command == "A":
                row = max(0, row - int(args or 1))
            elif command == "B":
                row += int(args or 1)
                lines.extend("" for _ in range(row + 1 - len(lines)))
            elif command == "G":
                col = max(0, int(args or 1) - 1)
            pos = match.end()
            continue
        ch = text[pos]
        pos += 1
        if ch == "\r":
            col = 0
        elif ch == "\n":
            row, col = row + 1, 0
            if row == len(lines):
                lines.append("")
        elif ch == "\b":
            col = max(0, col - 1)
        elif ch >= " ":
            line = lines[row].ljust(col)
            lines[row] = line[:col] + ch + line[col + 1:]
            col += 1
    while lines and lines[-1] == "":
        lines.pop()
    return lines


def test_screen_model():
    assert screen("a\r\nbar 1/3\r\x1b[2Kbar 2/3\r\n\x1b[?25h\r\x1b[1A\x1b[2Kdone\r\n") == ["a", "done"]


def test_the_bar_draws_in_place_and_leaves_only_the_programs_output():
    out, code = run_in_pty(program())
    assert code == 0, repr(out)
    assert "\x1b[2K" in out and out.count("0/3") >= 1  # drawn, and redrawn over itself
    assert screen(out) == ["got [1, 1, 1]"], repr(out)


def test_log_records_printed_while_the_bar_is_up_are_not_written_into_it():
    """A program's own logging (a StreamHandler on the terminal, made before the
    wait) goes above the bar, whole, as a print does: before, its lines were
    written after the bar on the bar's line (``wrenpack ━━━ 0/3 0:00:00INFO
    ...``), and that line stayed on screen."""
    code = program(setup="logging.basicConfig(level=logging.INFO, format='LOG %(message)s')",
                   before_finish="logging.getLogger('app').info('from the logging'); print('from a print')")
    out, rc = run_in_pty(code)
    assert rc == 0, repr(out)
    assert screen(out) == ["LOG from the logging", "from a print", "got [1, 1, 1]"], repr(out)


def test_output_redirected_to_a_file_stays_in_the_file(tmp_path):
    """``python prog.py > out.txt`` on a terminal: stderr is the terminal (the
    bar shows), stdout a file. What the program prints while the bar is up goes
    to the file; before, the bar's redirection sent it to the terminal."""
    target = tmp_path / "out.txt"
    setup = f"fd = os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT | os.O_TRUNC); os.dup2(fd, 1)"
    out, rc = run_in_pty(program(setup=setup, before_finish="print('printed meanwhile', flush=True)"))
    assert rc == 0, repr(out)
    assert target.read_text().splitlines() == ["printed meanwhile", "got [1, 1, 1]"], repr(out)
    assert screen(out) == [], out  # the bar came and went; nothing else was written to the terminal


@pytest.mark.parametrize("progress", [None, True, "bar"])
def test_a_dumb_terminal_gets_no_stray_line(progress):
    """TERM=dumb (an Emacs shell, some CI consoles) cannot redraw a line: no bar.
    ``progress=None`` shows nothing; ``True`` and ``"bar"`` show the plain lines
    a pipe gets. Before, each left an empty line and showed nothing at all."""
    out, rc = run_in_pty(program(progress=progress), trigger=None, env={"TERM": "dumb"})
    assert rc == 0, repr(out)
    lines = screen(out)
    assert "\x1b[" not in out, repr(out)
    if progress is None:
        assert lines == ["got [1, 1, 1]"], repr(out)
    else:
        assert lines[-1] == "got [1, 1, 1]" and all(re.match(r"^wrenpack: \d/3 calls done, \d+ s$", line) for line in lines[:-1]), repr(out)
        assert lines[-2].startswith("wrenpack: 3/3 calls done"), repr(out)


@pytest.mark.parametrize("columns", [24, 40, 60])
def test_a_narrow_terminal_shows_the_whole_count(columns):
    """The count and the elapsed time are what the bar is for: on a narrow
    terminal the bar itself gives way (shorter, then none). Before, rich cut the
    count first: "41234/1000…" at 50 columns, "4…" at 30."""
    out, rc = run_in_pty(program(count=12_000), trigger="wrenpack", columns=columns)
    assert rc == 0, repr(out)
    frames = [re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", frame).rstrip() for frame in re.split(r"\r|\n", out)]
    frames = [f for f in frames if f.startswith("wrenpack")]
    assert frames and all(len(f) <= columns for f in frames), frames
    assert all(re.match(r"wrenpack( [━╸╺ -]+)?\s+\d+/12000( |$)", f) for f in frames), frames  # the count, whole
    whole = r"wrenpack( [━╸╺ -]+)?\s+\d+/12000(\s+\d+ failed)?\s+\d:\d\d:\d\d"
    if columns >= len("wrenpack 12000/12000 120 failed 0:00:00"):  # (room for all but the bar)
        assert not [f for f in frames if not re.fullmatch(whole, f)], frames
        assert any("12000/12000 120 failed" in f for f in frames), frames[-3:]
    assert screen(out) == ["got 12000"], repr(out)


def test_futures_already_done_draw_no_bar():
    """``get`` on futures that are all done (after ``wait``, or a second
    ``get``) has nothing to wait for: no bar flashes up and away (before: a
    frame at 0/3 and its erasure)."""
    code = program(setup="", before_finish="pass").replace(
        "threading.Thread(target=feeder, daemon=True).start()",
        "[(f.set_running_or_notify_cancel(), f.set_result(1)) for f in futs]")
    out, rc = run_in_pty(code, trigger=None)
    assert rc == 0, repr(out)
    assert out == "got [1, 1, 1]\r\n", repr(out)


def test_what_the_program_prints_meanwhile_is_written_as_it_was_printed():
    """Lines printed while the bar is up are the program's own: a long one is
    not cut into several (the terminal wraps it; a copy is one line), brackets
    are not read as markup, and a partial line flushed without its newline is
    not given one. Before, rich's redirection did all three."""
    long_line = "result " + "[bold]x[/bold] " * 20 + "http://example.com/" + "a" * 80
    before_finish = (f"print({long_line!r}); print('partial [red]', end='', flush=True); "
                     "print(' and the rest'); logging.getLogger('app').warning('%s', 'w' * 120)")
    out, rc = run_in_pty(program(setup="logging.basicConfig(format='%(message)s')", before_finish=before_finish), columns=80)
    assert rc == 0, repr(out)
    assert screen(out) == [long_line, "partial [red] and the rest", "w" * 120, "got [1, 1, 1]"], repr(out)


def test_two_threads_waiting_at_once_share_the_bar():
    """Two threads each in ``get`` with a bar, whose calls all end at once: one
    bar with a row for each wait, gone when both end. (A bar per wait, each
    redirecting the terminal's streams through the other's, hung.)"""
    code = textwrap.dedent("""
        import concurrent.futures as cf, os, sys, threading
        import wrenpack
        lists = {"a": [cf.Future() for _ in range(3)], "b": [cf.Future() for _ in range(5)]}
        got = {}
        waits = [threading.Thread(target=lambda n=n: got.setdefault(n, wrenpack.get(lists[n], progress="bar"))) for n in lists]
        for t in waits:
            t.start()
        os.read(int(sys.argv[1]), 1)  # the test saw both rows
        for f in lists["a"] + lists["b"]:
            f.set_running_or_notify_cancel()
            f.set_result(1)
        for t in waits:
            t.join()
        print("got", got["a"], got["b"], flush=True)
    """)
    out, rc = run_in_pty(code, trigger="0/5", times=5, timeout=30)
    assert rc == 0, repr(out)
    assert "0/3" in out and screen(out) == ["got [1, 1, 1] [1, 1, 1, 1, 1]"], repr(out)
