"""Every error wrenpack raises on purpose, under one root.

Each message is one line that names the problem and the fix: the CLI prints
``str(exc)`` and nothing else for these, so the message must stand alone.
This module is imported by the worker side too: standard library only.
"""
from __future__ import annotations

import concurrent.futures
import signal


class WrenpackError(Exception):
    """Root of all wrenpack errors."""


class ConfigError(WrenpackError, ValueError):
    """Bad configuration (argument, WRENPACK_* variable or [tool.wrenpack]) or a bad
    argument value; a ``ValueError`` too, as ``concurrent.futures`` raises for
    ``max_workers=0`` or ``map(chunksize=0)``."""


class ConfigTypeError(ConfigError, TypeError):
    """A setting, argument or returned value of the wrong type (``executor="x"``,
    ``storage=123``, ``get([1, 2])``, a shuffle mapper's output); a ``TypeError``
    too, where the standard library raises one for a wrong type."""


class SdkTooOld(ConfigError):
    """The worker's AWS SDK (botocore) is too old for what wrenpack sends (``wrenpack.worker.sdk``)."""


class SerializationError(WrenpackError):
    """A function, argument or result could not be pickled or unpickled."""


class StoreError(WrenpackError):
    """The object store failed, or holds a missing or corrupt object."""


class ObjectNotFound(StoreError):
    """A key that should exist does not."""


class ObjectChanged(StoreError):
    """An object was replaced while it was read, or since it was listed (its size or
    version differs): what was read would mix two versions, so nothing more is given."""


class CorruptObject(StoreError):
    """An object exists but cannot be decoded."""


class TextDecodeError(WrenpackError, UnicodeDecodeError):
    """Stored text that does not decode in the encoding asked for (``ObjectRange.lines``).

    A ``UnicodeDecodeError`` too, so ``except UnicodeDecodeError`` (or ``ValueError``)
    still catches it; its ``object`` is a few bytes around the bad ones, not the record."""

    def __init__(self, message: str, encoding: str = "utf-8", obj: bytes = b"", start: int = 0, end: int = 0,
                 reason: str = "") -> None:
        UnicodeDecodeError.__init__(self, encoding, obj, start, end, reason)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"

    def __reduce__(self) -> tuple:
        # Rebuilt on the client from these (the default, args alone, lacks the message).
        return (type(self), (self.message, self.encoding, self.object, self.start, self.end, self.reason))


class ProtocolError(WrenpackError):
    """An invocation event a worker refuses: wrong version, malformed, or naming keys or a
    store outside its job (``wrenpack.wire.event``)."""


class PayloadTooLarge(WrenpackError):
    """An argument or result is larger than the configured maximum.

    Raised for a launch's arguments, it says which call (``call_index``, the
    index in the launch) and how large they pickle (``size``, bytes), so a
    caller that launched calls on the user's behalf (``map_reduce``'s mappers)
    can name the item in the user's terms; ``limit_mb`` is the memory setting it exceeds. (Attributes, not constructor
    arguments: an exception pickles its ``args`` and its ``__dict__``.)"""

    call_index: int | None = None
    size: int | None = None
    limit_mb: int | None = None


class TaskError(WrenpackError):
    """A call failed for a reason outside the user's own code."""


class MemoryLimitExceeded(TaskError):
    """The call used more memory than its ``memory`` setting allows."""


class TaskTimeout(TaskError):
    """The call ran longer than its ``timeout``."""


class EphemeralStorageExceeded(TaskError):
    """The call wrote more to its /tmp than ``ephemeral_storage`` allows."""


class WorkerCrashed(TaskError):
    """The worker process died (signal, segfault) and retries ran out."""

    @classmethod
    def after(cls, label: str, returncode: int | None, tries: int) -> "WorkerCrashed":
        """The error of a call whose process died so (``returncode`` as ``subprocess`` gives it)
        on its last of ``tries`` attempts: worded alike by the local backend and a Lambda worker."""
        return cls(f"{label}: the worker process died ({died_how(returncode)}) on {tries} attempt"
                   f"{'s' if tries > 1 else ''}; look for a crash in native code or an external kill, or raise retries=")


def died_how(returncode: int | None) -> str:
    """How a process ended, as wrenpack's messages name it: "exit code 3", "signal SIGSEGV"
    (``returncode`` as ``subprocess`` gives it: a signal's number negated)."""
    if returncode is not None and returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


class CallCancelled(TaskError, concurrent.futures.CancelledError):
    """The call was cancelled while it ran (``wrenpack.cancel``); a
    ``concurrent.futures.CancelledError``, as a cancelled future raises."""


class WorkerLost(TaskError):
    """No status arrived for a call long after its deadline."""


class MissingDependency(TaskError, ModuleNotFoundError):
    """The function imports a module the worker's runtime does not have
    (an ``ImportError`` too, so ``except ImportError`` still catches it)."""

    @staticmethod
    def distribution(module: str | None) -> str:
        """What to install for ``module``: ``build-runtime`` and pip take
        distributions, and several import names differ from theirs (``sklearn``
        is scikit-learn). The worker lacks the module, so its metadata cannot
        say: a table of the common ones, then this process's metadata."""
        top = (module or "").split(".")[0]
        if top in _DISTRIBUTIONS:
            return _DISTRIBUTIONS[top]
        try:
            import importlib.metadata

            found = importlib.metadata.packages_distributions().get(top)
        except Exception:  # noqa: BLE001 - a hint only
            found = None
        return found[0] if found else top


#: import name -> distribution, where they differ (and the module is common)
_DISTRIBUTIONS = {
    "sklearn": "scikit-learn", "skimage": "scikit-image", "PIL": "Pillow", "cv2": "opencv-python-headless",
    "yaml": "PyYAML", "bs4": "beautifulsoup4", "dateutil": "python-dateutil", "attr": "attrs",
    "Crypto": "pycryptodome", "jwt": "PyJWT", "dotenv": "python-dotenv", "docx": "python-docx",
    "pptx": "python-pptx", "fitz": "PyMuPDF", "OpenSSL": "pyOpenSSL", "serial": "pyserial", "zmq": "pyzmq",
    "MySQLdb": "mysqlclient", "psycopg2": "psycopg2-binary", "magic": "python-magic", "gi": "PyGObject",
    "Bio": "biopython", "osgeo": "GDAL", "jose": "python-jose", "multipart": "python-multipart",
}


class ExecutorShutdown(WrenpackError, RuntimeError):
    """The executor was shut down; a ``RuntimeError`` too, as
    ``concurrent.futures`` executors raise after ``shutdown``."""


class RemoteTraceback(Exception):
    """Carries the worker's traceback text (and the call's output tail); shown
    as the cause of a remote error, the way ``ProcessPoolExecutor`` does it."""

    def __init__(self, tb: str, logs: str | None = None) -> None:
        super().__init__(tb, logs)
        self.tb = tb
        self.logs = logs

    def __str__(self) -> str:
        text = f'\n"""\nRemote traceback (in the worker):\n{self.tb.rstrip()}\n"""' if self.tb.strip() else ""
        if self.logs:
            tail = self.logs[-4000:]
            cut = "(last 4000 characters; fut.logs has more)\n" if len(self.logs) > len(tail) else ""
            text += f'\nOutput of the call:\n"""\n{cut}{tail.rstrip()}\n"""'
        return text


class RemoteError(WrenpackError):
    """A user exception whose type could not be rebuilt on the client."""


class ProfileError(WrenpackError):
    """Profiling failed: bad target, or the profiled function raised."""


class BuildError(WrenpackError):
    """Building a runtime failed."""


class NoSuitableWheel(BuildError):
    """A requirement has no wheel for the Lambda target (build it with ``--docker``)."""


class BudgetExceeded(BuildError):
    """The built runtime is larger than the target allows; ``rows`` lists the largest packages."""

    def __init__(self, message: str, rows: list[tuple[str, int]] | None = None) -> None:
        super().__init__(message)
        self.rows = rows or []


def exc_text(exc: BaseException) -> str:
    """``str(exc)``, never raising: a user's exception whose ``__str__`` raises (or
    returns no ``str``) gives a note naming that instead. Every message built from
    an exception the user's code may have made goes through this: an f-string of
    such an exception raised again in the worker's error path, the call's process
    died without a reply and the call was retried and reported as a crash."""
    try:
        return str(exc)
    except (Exception, SystemExit) as inner:  # noqa: BLE001 - whatever their __str__ raises (not a ^C)
        return f"<{type(exc).__name__}.__str__ raised {type(inner).__name__}>"
