"""How the interpreters wrenpack starts with ``python -c`` begin (standard library only).

``python -c`` puts the working directory first on ``sys.path`` (as ``''``). A
user's project folder holding a ``json.py``, ``socket.py`` or ``signal.py``
then shadowed the standard library module in every local worker (each died at
start, reported as "crash in native code"), the profiler's runner, a spawned
job's supervisor and the Lambda sender: their boot lines import ``json`` and
wrenpack's modules before anything else. Every such boot line starts with
``NO_CWD``, which takes the working directory off the path; the user's own
path (the driver's ``sys.path``, given to the process) is put back after the
standard library modules are imported, so the user's modules are found as in
the driver."""
from __future__ import annotations

#: the start of every ``python -c`` boot line: ``sys`` is built in, and nothing else is imported before it
NO_CWD = "import sys;sys.path[:]=[p for p in sys.path if p];"
