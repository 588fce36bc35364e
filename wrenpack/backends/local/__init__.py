"""The local backend: Lambda's limits on one machine, in warm worker processes.

``scheduler`` (``LocalBackend``: the queue, and which worker runs what),
``process`` (the driver's handle on one worker process: its socket, meters
and limits) and ``linux`` (memory cgroups). The worker's side is
``wrenpack.worker.local_main``; what travels between them is ``wrenpack.wire``'s.
"""
from wrenpack.backends.local.scheduler import LocalBackend

__all__ = ["LocalBackend"]
