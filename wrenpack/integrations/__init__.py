"""Other libraries' ways of running work, backed by wrenpack calls.

- ``wrenpack.integrations.joblib``: a joblib backend named ``"wrenpack"``
  (``joblib.parallel_config(backend="wrenpack")``), registered when that
  module is imported or by ``wrenpack.register_joblib()``.

Each integration imports its library only when asked for: wrenpack does not
depend on them.
"""
from __future__ import annotations


def register_joblib() -> None:
    """Register the ``"wrenpack"`` joblib backend, so that
    ``joblib.parallel_config(backend="wrenpack")`` (and ``parallel_backend``)
    runs joblib's batches as wrenpack calls. Needs joblib (scikit-learn brings
    it): a one-line ``MissingDependency`` says so otherwise."""
    # Imported here, not above: it imports joblib, which wrenpack does not require.
    from wrenpack.integrations import joblib as joblib_backend

    joblib_backend.register()
