"""The worker's peak-memory meter keeps /proc/self/status and clear_refs open
(opening them cost more than reading them) and still measures this
process, after a fork and after user code reuses the descriptor's number."""
from __future__ import annotations

import os
import sys

import pytest

from wrenpack.worker import memory

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc only")


def test_reset_then_peak_follows_this_call():
    if not memory.reset_peak():
        pytest.skip("/proc/self/clear_refs is not writable here")
    base = memory.peak_rss_mb()
    block = bytearray(80 * 2**20)
    block[:: 4096] = b"x" * len(block[:: 4096])  # touch every page
    high = memory.peak_rss_mb()
    del block
    assert high - base > 60
    assert memory.reset_peak()
    assert memory.peak_rss_mb() < high - 60  # reset: the freed block no longer counts
    for _ in range(3):  # the kept descriptors answer again and again
        assert memory.reset_peak() and memory.peak_rss_mb() < high - 60


def test_a_forked_child_reads_its_own_status():
    memory.peak_rss_mb()  # the parent's descriptor is open now
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            text = os.pread(memory._own_fd("status", os.O_RDONLY), 8192, 0)
            os.write(w, b"ok" if f"\nPid:\t{os.getpid()}\n".encode() in text else b"wrong")
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    assert os.read(r, 16) == b"ok"
    os.close(r)


def test_a_reused_descriptor_number_is_never_written(tmp_path):
    if not memory.reset_peak():
        pytest.skip("/proc/self/clear_refs is not writable here")
    fd = memory._own_fd("clear_refs", os.O_WRONLY)
    victim = tmp_path / "user-file"
    opened = os.open(victim, os.O_WRONLY | os.O_CREAT)  # (before the close: never the same number)
    os.close(fd)  # user code closed it behind our back...
    reused = os.dup2(opened, fd)  # ...and one of its files took the number
    assert opened != reused
    os.close(opened)
    try:
        assert memory.reset_peak()
        assert victim.read_bytes() == b""
    finally:
        os.close(reused)


def test_status_read_through_a_reused_number_is_read_again(tmp_path):
    memory.peak_rss_mb()
    fd = memory._own_fd("status", os.O_RDONLY, checked=False)
    victim = tmp_path / "user-file"
    victim.write_bytes(b"VmHWM:\t999999999 kB\n")
    # (opened before the close: had it taken the closed number itself, dup2 did nothing and the close
    # below closed that number, the file was never read through it and the test failed by test order)
    opened = os.open(victim, os.O_RDONLY)
    os.close(fd)
    reused = os.dup2(opened, fd)
    assert opened != reused
    os.close(opened)
    try:
        peak = memory.peak_rss_mb()
        assert peak is not None and 1 < peak < 100_000  # this process's, not the file's figure
        assert memory._own_fd("status", os.O_RDONLY, checked=False) != reused
    finally:
        os.close(reused)


def _vmhwm_mb() -> float:
    with open("/proc/self/status", "rb") as f:
        line = next(ln for ln in f if ln.startswith(b"VmHWM:"))
    return int(line.split()[1]) / 1024.0


def test_peak_since_a_mark_is_what_vmhwm_says():
    # With no page fault since the mark the peak comes from the counters and
    # statm (/proc/self/status is the costly read); with one, from
    # status. Either way it is VmHWM's figure, and a block touched and freed
    # during the "call" counts.
    mark = memory.start_peak()
    if mark is None:
        pytest.skip("/proc/self/clear_refs or statm is not usable here")
    quiet = memory.peak_since(mark)
    assert quiet is not None and abs(quiet - _vmhwm_mb()) < 0.5
    mark = memory.start_peak()
    block = bytearray(64 * 2**20)
    block[:: 4096] = b"x" * len(block[:: 4096])
    del block
    busy = memory.peak_since(mark)
    assert busy is not None and busy > quiet + 50
    assert abs(busy - _vmhwm_mb()) < 0.5


def test_a_fault_in_another_thread_is_seen(monkeypatch):
    import threading

    mark = memory.start_peak()
    if mark is None:
        pytest.skip("/proc/self/clear_refs or statm is not usable here")
    read = []
    monkeypatch.setattr(memory, "peak_rss_mb", lambda pid="self": read.append(pid) or 1.0)

    def touch() -> None:
        block = bytearray(16 * 2**20)
        block[:: 4096] = b"x" * len(block[:: 4096])

    t = threading.Thread(target=touch)
    t.start()
    t.join()  # (the thread's faults stay counted after it ends)
    assert memory.peak_since(mark) == 1.0 and read == ["self"]
