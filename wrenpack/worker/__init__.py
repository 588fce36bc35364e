"""Code that runs inside the worker (a Lambda container or a local worker process).

Everything under this package (and ``wrenpack.wire``, the formats it reads and
writes) imports only the standard library, cloudpickle
and, for the S3 store only, boto3. Nothing here may import the client, the
profiler, the runtime builder or the CLI.
"""

import os as _os

#: Files of the package root that the worker side needs (besides the subpackages below).
_ROOT_FILES = ("__init__.py", "boot.py", "errors.py", "keys.py", "auth.py", "limits.py", "redact.py", "plugins.py", "process_state.py",
               "py.typed")
_SUBPACKAGES = ("storage", "wire", "worker")


def worker_files(package_dir: str | None = None) -> list[str]:
    """Paths, relative to wrenpack's package directory, of everything a worker
    needs of wrenpack: what ``wrenpack deploy`` zips and the Docker image copies."""
    pkg = package_dir or _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    files = [rel for rel in _ROOT_FILES if _os.path.exists(_os.path.join(pkg, rel))]
    for sub in _SUBPACKAGES:
        files += sorted(f"{sub}/{n}" for n in _os.listdir(_os.path.join(pkg, sub)) if n.endswith(".py"))
    return files
