"""Running on AWS Lambda: the backend, and what sets up the functions it calls.

``backend`` (``LambdaBackend``) sends calls and reads their outcomes;
``deploy`` names, packages and creates the functions (one per settings set);
``undeploy`` removes what deploy created;
``doctor`` checks a set-up; ``iam`` writes the least-privilege policies;
``runtimes`` knows which Python runtimes Lambda still takes, and until when;
``clients`` reads the AWS settings they share; ``sender`` runs the backend's
requests in child processes when asked (``send_processes``). The command line
(``wrenpack deploy``, ``undeploy``, ``doctor``, ``iam-policy``) only parses arguments and
prints what these return: nothing here imports it.
"""
from __future__ import annotations

from wrenpack.backends.aws.backend import LambdaBackend
from wrenpack.backends.aws.deploy import FunctionSettings

__all__ = ["FunctionSettings", "LambdaBackend"]
