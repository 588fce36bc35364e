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
