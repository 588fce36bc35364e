"""``@wrenpack.remote(runtime=PATH)``: local workers see only the built runtime."""
from __future__ import annotations

import pytest

import wrenpack


@pytest.fixture(scope="module")
def tiny_runtime(small_runtime):
    """A runtime of cloudpickle (always added) and a few small packages, six among them but not
    rich: the session's small runtime (tests/conftest.py), which tests/test_runtime_builder.py
    builds and checks (a build of its own here resolved with pip again: ~3 s)."""
    names = {p["name"] for p in small_runtime.manifest["packages"]}
    assert "six" in names and "rich" not in names, names
    return small_runtime.output


def uses_six(x):
    import six

    return six.text_type(x)


def uses_rich(x):
    import rich  # installed here, but not in the runtime

    return str(rich)


def uses_boto3(x):
    import boto3  # Lambda provides it

    return boto3.__name__


def test_runtime_packages_import(tiny_runtime, executor):
    f = wrenpack.remote(uses_six, executor=executor, runtime=tiny_runtime)
    assert wrenpack.get(f.map([1, 2])) == ["1", "2"]


def test_missing_dependency_fails_as_on_lambda(tiny_runtime, executor):
    f = wrenpack.remote(uses_rich, executor=executor, runtime=tiny_runtime)
    with pytest.raises(wrenpack.MissingDependency, match=r"module 'rich'.*wrenpack build-runtime rich") as info:
        f.remote(1).result()
    assert isinstance(info.value, ImportError)
    # the same function works in the client's own environment
    assert wrenpack.remote(uses_rich, executor=executor).remote(1).result()


def test_lambda_provided_packages_are_visible(tiny_runtime, executor):
    f = wrenpack.remote(uses_boto3, executor=executor, runtime=tiny_runtime)
    assert f.remote(0).result() == "boto3"


def test_not_a_runtime_is_a_clear_error(tmp_path, executor):
    f = wrenpack.remote(uses_six, executor=executor, runtime=str(tmp_path))
    with pytest.raises(wrenpack.BuildError, match="is not a built runtime"):
        f.remote(1).result()


def test_worker_shims_go_to_wrenpacks_cache_dir_and_dangling_ones_are_removed(tmp_path, monkeypatch):
    """The shim folders a local worker with a runtime imports wrenpack (and what Lambda provides)
    through went to ~/.cache/wrenpack whatever WRENPACK_CACHE_DIR said, one per checkout or venv
    path, never removed: those pointing at removed trees piled up."""
    import os

    from wrenpack.backends import runtime_paths

    cache = tmp_path / "cache"
    monkeypatch.setenv("WRENPACK_CACHE_DIR", str(cache))
    gone = cache / "worker-shim" / "0123456789ab"
    gone.mkdir(parents=True)
    os.symlink(tmp_path / "removed-checkout" / "wrenpack", gone / "wrenpack")
    kept = cache / "worker-shim" / "ba9876543210"
    kept.mkdir()
    os.symlink(tmp_path, kept / "wrenpack")  # (a tree still there: another checkout's)
    shim = runtime_paths._shim_dir()
    assert shim.startswith(str(cache)) and os.path.samefile(os.path.join(shim, "wrenpack"), os.path.dirname(wrenpack.__file__))
    assert not gone.exists() and kept.exists()
    provided = runtime_paths._lambda_provided_dir()
    assert provided is None or provided.startswith(str(cache))
