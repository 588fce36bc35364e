"""Jobs as objects that outlive the program that launched them.

``f.spawn_map(items)`` / ``f.spawn(...)`` (``spawn``) start a job whose calls
go on after that program ends or dies; ``wrenpack.attach(job_id)``
(``client``) gives its ``Job`` in any process of the same user; its
supervisor (``supervisor``) runs the calls. ``wrenpack jobs`` lists them.
"""
from wrenpack.job.client import Job, JobNotFound, NotSpawned, attach

__all__ = ["Job", "JobNotFound", "NotSpawned", "attach"]
