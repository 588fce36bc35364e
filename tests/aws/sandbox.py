"""One emulated execution environment's confinement, as Lambda confines a sandbox.

The Runtime Interface Emulator starts its runtime with this file as the
command (``python sandbox.py OPTIONS -- python -m awslambdaric HANDLER``); it
confines itself, then ``exec``s the runtime, so the runtime and everything it
starts are held to:

* 1,024 processes/threads: a cgroup v1 ``pids`` group with ``pids.max`` 1024
  (``RLIMIT_NPROC`` is set too, but the kernel does not apply it to root);
* the function's memory: a cgroup v1 ``memory`` group whose
  ``memory.limit_in_bytes`` is the function's ``MemorySize``; the kernel's OOM
  killer ends the runtime there, and the dispatcher reads ``oom_kill`` to report
  it as Lambda does;
* 1,024 file descriptors (``RLIMIT_NOFILE``);
* a read-only filesystem outside /tmp: a private mount namespace in which
  every mount but /proc is bind-remounted read-only, and /tmp is the sandbox's
  own directory (private, as Lambda's /tmp is; its size is not limited).
  ``--share DIR`` keeps DIR writable at its own path: the test session's
  temporary directory, through which some tests hand a file to their calls.

``Sandbox`` (host side) makes the cgroups and the /tmp directory before the
emulator starts and removes them after it stopped. Each confinement that this
machine does not allow (not root, no cgroup v1 controller) is left out, and
``Sandbox.confined`` says which are in force. Standard library only: this file
also runs as a script, before anything else is imported.
"""
from __future__ import annotations

import ctypes
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

#: Lambda's per-sandbox limits (lambda-facts.md: 1,024 processes/threads, 1,024 file descriptors).
PIDS_MAX = 1024
NOFILE_MAX = 1024

_CLONE_NEWNS = 0x00020000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_NOATIME, _MS_NODIRATIME, _MS_BIND = 32, 1024, 2048, 4096
_MS_REC, _MS_PRIVATE, _MS_RELATIME = 16384, 1 << 18, 1 << 21
_FLAGS = {"nosuid": _MS_NOSUID, "nodev": _MS_NODEV, "noexec": _MS_NOEXEC, "noatime": _MS_NOATIME,
          "nodiratime": _MS_NODIRATIME, "relatime": _MS_RELATIME}
#: mounts left writable: the kernel's views (Lambda's /proc is there too)
_KEEP = ("/proc",)


# -- inside: run by the emulator as its runtime's command ------------------------------------
#: the checkout (the deployment package the emulated functions run)
_REPO = Path(__file__).resolve().parent.parent.parent

def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)  # this process's symbols: libc's among them


def _mount(libc: ctypes.CDLL, source: str | None, target: str, flags: int, fstype: str | None = None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    if libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target}: {os.strerror(err)}")


def _mounts() -> list[tuple[str, int]]:
    """(mount point, its per-mount flags) of this namespace, from /proc/self/mountinfo."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = fields[4].encode().decode("unicode_escape")  # \040 and friends
            flags = sum(_FLAGS.get(opt, 0) for opt in fields[5].split(","))
            out.append((point, flags))
    return out


def _under(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip("/") + "/")


def confine_filesystem(tmp: str, shared: list[str], visible: list[str] = ()) -> None:
    """This process alone, from now on: / read-only, /tmp = ``tmp``, each of ``shared``
    writable, and each of ``visible`` (read-only, as everything outside /tmp) still
    there when it lies under the host's /tmp: the code, its venv or its interpreter
    (a checkout under /tmp stands for a deployment package, which is outside /tmp on Lambda)."""
    libc = _libc()
    if libc.unshare(_CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"unshare(CLONE_NEWNS): {os.strerror(err)}")
    # Nothing done here may reach the host's mounts.
    _mount(libc, None, "/", _MS_REC | _MS_PRIVATE)
    writable = []
    for path in shared:
        if _under(path, "/tmp"):
            inside = os.path.join(tmp, os.path.relpath(path, "/tmp"))
            os.makedirs(inside, exist_ok=True)
            _mount(libc, path, inside, _MS_BIND)
        else:
            _mount(libc, path, path, _MS_BIND)
            writable.append(path)
    shown = []
    for path in visible:
        if _under(path, "/tmp") and not any(_under(path, s) for s in shared):
            inside = os.path.join(tmp, os.path.relpath(path, "/tmp"))
            os.makedirs(inside, exist_ok=True)
            _mount(libc, path, inside, _MS_BIND | _MS_REC)
            shown.append(path)
    _mount(libc, tmp, "/tmp", _MS_BIND | _MS_REC)
    for path in shown:
        _mount(libc, None, path, _MS_REMOUNT | _MS_BIND | _MS_RDONLY)
    for point, flags in _mounts():
        if _under(point, "/tmp") or point in writable or any(_under(point, keep) for keep in _KEEP):
            continue
        try:
            # A bind remount changes this namespace's mount only, never the filesystem itself.
            _mount(libc, None, point, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | flags)
        except OSError as exc:
            if point == "/":
                raise
            print(f"sandbox: {exc}", file=sys.stderr)


def main(argv: list[str]) -> None:
    """``sandbox.py [--cgroup DIR]... [--tmp DIR [--share DIR]... [--show DIR]...] [--check] -- COMMAND...``"""
    split = argv.index("--")
    opts, command = argv[:split], argv[split + 1:]
    cgroups, shared, visible, tmp, check = [], [], [], None, False
    i = 0
    while i < len(opts):
        if opts[i] == "--check":
            check, i = True, i + 1
            continue
        name, value = opts[i], opts[i + 1]
        i += 2
        if name == "--cgroup":
            cgroups.append(value)
        elif name == "--share":
            shared.append(value)
        elif name == "--show":
            visible.append(value)
        elif name == "--tmp":
            tmp = value
        else:
            raise SystemExit(f"sandbox: unknown option {name}")
    for group in cgroups:
        with open(os.path.join(group, "cgroup.procs"), "w") as f:
            f.write(str(os.getpid()))
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE_MAX, NOFILE_MAX))
    resource.setrlimit(resource.RLIMIT_NPROC, (PIDS_MAX, PIDS_MAX))
    if tmp is not None:
        confine_filesystem(tmp, shared, visible)
    if check:
        return
    os.execv(command[0], command)


# -- outside: the host's side -------------------------------------------------------------------
def _own_cgroup(controller: str) -> str | None:
    """This process's cgroup v1 directory for ``controller``, if that hierarchy is mounted."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _id, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            base = os.path.join("/sys/fs/cgroup", controller, path.lstrip("/"))
            return base if os.path.isdir(base) else None
    return None


def _make_cgroup(controller: str, name: str, settings: dict[str, str]) -> str | None:
    base = _own_cgroup(controller)
    if base is None or os.geteuid() != 0:
        return None
    path = os.path.join(base, name)
    try:
        os.mkdir(path)
    except OSError:
        return None
    try:
        for key, value in settings.items():
            with open(os.path.join(path, key), "w") as f:
                f.write(value)
    except OSError:
        _remove_cgroup(path)
        return None
    return path


def _remove_cgroup(path: str) -> None:
    """Kill what is left in the group, then remove it (a few tries: killed tasks leave it asynchronously)."""
    for _ in range(200):
        try:
            pids = [int(p) for p in Path(path, "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            pids = []
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.01)


_fs_allowed: list[bool] = []


def filesystem_confinable() -> bool:
    """Whether this machine lets the runtime have a mount namespace of its own (tried once)."""
    if not _fs_allowed:
        ok = False
        if os.geteuid() == 0 and sys.platform.startswith("linux"):
            probe = Path(f"/tmp/wrenpack-sandbox-probe-{os.getpid()}")
            probe.mkdir(exist_ok=True)
            try:
                ok = subprocess.run([sys.executable, __file__, "--tmp", str(probe), "--check", "--", "true"],
                                    capture_output=True, timeout=30).returncode == 0
            finally:
                shutil.rmtree(probe, ignore_errors=True)
        _fs_allowed.append(ok)
    return _fs_allowed[0]


def capabilities() -> dict[str, bool]:
    """Which confinements this machine allows (each ``Sandbox`` has them all, or fewer)."""
    root = os.geteuid() == 0
    return {"pids": root and _own_cgroup("pids") is not None, "memory": root and _own_cgroup("memory") is not None,
            "read_only": filesystem_confinable(), "nofile": True}


class Sandbox:
    """The confinement of one execution environment, made before its emulator starts."""

    def __init__(self, name: str, memory_mb: int, tmp: Path, shared: list[str], read_only: bool = True) -> None:
        self.pids = _make_cgroup("pids", name, {"pids.max": str(PIDS_MAX)})
        self.memory = _make_cgroup("memory", name, {"memory.limit_in_bytes": str(memory_mb * 1024 * 1024)})
        self.tmp = tmp
        self.read_only = read_only and filesystem_confinable()
        if self.read_only:
            tmp.mkdir(parents=True, exist_ok=True)
        self.shared = [s for s in shared if os.path.isdir(s)]
        #: which of Lambda's confinements are in force here
        self.confined = {"pids": self.pids is not None, "memory": self.memory is not None,
                         "read_only": self.read_only, "nofile": True}

    def command(self, runtime: list[str]) -> list[str]:
        """The emulator's bootstrap command: this file, confining ``runtime`` before it runs."""
        cmd = [sys.executable, "-I", "-S", os.path.abspath(__file__)]  # (the standard library is all it needs)
        for group in (self.pids, self.memory):
            if group is not None:
                cmd += ["--cgroup", group]
        if self.read_only:
            cmd += ["--tmp", str(self.tmp)]
            for path in self.shared:
                cmd += ["--share", path]
            # the code and the interpreters the runtime runs, should they lie under /tmp
            for path in dict.fromkeys((str(_REPO), sys.prefix, os.path.dirname(os.path.dirname(runtime[0])))):
                cmd += ["--show", path]
        return cmd + ["--", *runtime]

    def oom_kills(self) -> int:
        """How many times the kernel's OOM killer struck in this environment."""
        if self.memory is None:
            return 0
        try:
            for line in Path(self.memory, "memory.oom_control").read_text().splitlines():
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
        except (OSError, ValueError):
            pass
        return 0

    def remove(self) -> None:
        for group in (self.pids, self.memory):
            if group is not None:
                _remove_cgroup(group)
        if self.read_only:
            shutil.rmtree(self.tmp, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
