"""Dockerfile.custom-runtime: a Lambda container image on python:X.Y-slim with
awslambdaric, the way out for a Python whose Lambda runtime AWS blocks.

No Docker engine is needed for the checks of the recipe and of which recipe
`wrenpack build-runtime --docker` picks; the build itself runs only where an
engine answers and the base image is local, and is skipped with the reason
otherwise (nothing here fakes a build)."""
from __future__ import annotations

import argparse
import datetime
import re
import subprocess
import sys
from pathlib import Path

import pytest

import wrenpack.backends.aws.runtimes as runtimes
from runtime_builder import docker_build
from wrenpack.backends.aws.deploy import HANDLER
from wrenpack.cli import cmd_build_runtime

REPO = Path(__file__).resolve().parents[1]
CUSTOM = REPO / "Dockerfile.custom-runtime"


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_the_recipe_builds_on_python_slim_with_the_runtime_interface_client():
    steps = _instructions(CUSTOM)
    args = {rest.split("=")[0]: rest.partition("=")[2] for word, rest in steps if word == "ARG"}
    assert args["BASE_IMAGE"] == "python:${PYTHON_VERSION}-slim"
    froms = [rest for word, rest in steps if word == "FROM"]
    assert froms == ["${BASE_IMAGE} AS build", "${BASE_IMAGE}"]
    runs = " ".join(rest for word, rest in steps if word == "RUN")
    assert '"awslambdaric==${AWSLAMBDARIC_VERSION}"' in runs and "${BOTO3_REQUIREMENT}" in runs
    assert "--require-hashes" in runs and "runtime_builder.docker_stage" in runs
    # the handler deploy names, run by the runtime interface client from /var/task
    assert ("ENTRYPOINT", '["python", "-m", "awslambdaric"]') in steps
    assert ("CMD", f'["{HANDLER}"]') in steps
    assert ("WORKDIR", "/var/task") in steps and ("COPY", "--from=build /build/python/ /var/task/") in steps


def test_the_recipe_takes_the_build_context_and_arguments_dockerfile_runtime_takes():
    """docker_build prepares one context (requirements.lock, src/) and passes BASE_IMAGE,
    SOURCELESS, KEEP_BOTO3: the custom recipe must read exactly what the Lambda one reads."""
    lambda_steps, custom_steps = _instructions(Path(docker_build.DOCKERFILE)), _instructions(CUSTOM)

    def copies(steps):
        return sorted(rest for word, rest in steps if word == "COPY" and not rest.startswith("--from"))

    def arg_names(steps):
        return {rest.split("=")[0] for word, rest in steps if word == "ARG"}

    assert copies(custom_steps) == copies(lambda_steps) == ["requirements.lock /build/requirements.lock",
                                                             "src/ /build/src/"]
    assert arg_names(lambda_steps) <= arg_names(custom_steps)
    source = Path(docker_build.__file__).read_text()
    for name in ("BASE_IMAGE", "SOURCELESS", "KEEP_BOTO3"):
        assert f'"{name}"' in source and name in arg_names(custom_steps)


def _args(**kw):
    base = dict(python=None, custom_runtime=False, base_image=None)
    base.update(kw)
    return argparse.Namespace(**base)


def test_build_runtime_picks_the_custom_recipe_for_a_blocked_python(monkeypatch):
    lambda_file = docker_build.DOCKERFILE
    monkeypatch.setattr(runtimes, "today", lambda: datetime.date(2026, 12, 5))
    assert cmd_build_runtime._docker_recipe(_args(python="3.11"), lambda_file) == (str(CUSTOM), "python:3.11-slim")
    assert cmd_build_runtime._docker_recipe(_args(python="3.10", base_image="mine:1"), lambda_file) == (str(CUSTOM), "mine:1")
    assert cmd_build_runtime._docker_recipe(_args(python="3.12"), lambda_file) == (lambda_file, None)
    assert cmd_build_runtime._docker_recipe(_args(python="3.12", custom_runtime=True), lambda_file) == (
        str(CUSTOM), "python:3.12-slim")
    monkeypatch.setattr(runtimes, "today", lambda: datetime.date(2026, 5, 1))  # while Lambda still took 3.11
    assert cmd_build_runtime._docker_recipe(_args(python="3.11"), lambda_file) == (lambda_file, None)


def _engine_reason() -> str | None:
    try:
        docker_build.docker_client()
    except Exception as exc:  # noqa: BLE001 - the reason is the message
        return str(exc)
    return None


def test_the_build_without_an_engine_stops_in_one_line_naming_why(tmp_path):
    reason = _engine_reason()
    if reason is None:
        pytest.skip("a Docker engine answers here: the build test below runs instead")
    proc = subprocess.run([sys.executable, "-m", "wrenpack", "build-runtime", "--docker", "--python", "3.11", "six",
                           "--output", str(tmp_path / "never-written")],
                          capture_output=True, text=True, cwd=str(REPO), timeout=120)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert "needs a running Docker engine" in proc.stderr
    assert not (tmp_path / "never-written").exists()


@pytest.mark.slow
def test_custom_runtime_image_builds_and_holds_the_handler(tmp_path):
    reason = _engine_reason()
    if reason is not None:
        pytest.skip(f"no Docker engine: {reason}")
    py = "%d.%d" % sys.version_info[:2]
    base = f"python:{py}-slim"
    import docker

    client = docker_build.docker_client()
    try:
        client.images.get(base)
    except docker.errors.ImageNotFound:
        pytest.skip(f"{base} is not present locally (`docker pull {base}`); builds never pull")
    out = docker_build.build_image(["six"], output=str(tmp_path / "rt"), python=py, base_image=base,
                                   tag="wrenpack-custom-runtime-test:latest", network="host", dockerfile=str(CUSTOM))
    try:
        listing = client.containers.run(out["tag"], entrypoint=["python", "-c",
                                        "import awslambdaric, boto3, six, wrenpack.worker.handler; print('ok')"],
                                        remove=True)
        assert listing.strip() == b"ok"
    finally:
        client.images.remove(out["tag"], force=True)
