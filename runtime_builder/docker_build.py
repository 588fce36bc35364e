"""``wrenpack build-runtime --docker``: build Dockerfile.runtime through the docker SDK.

Resolution happens on the host (pip-compile for the target, sdists allowed);
installing, building sdists, trimming and verifying happen in the Lambda base
image, so packages without a suitable wheel still get a runtime.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from typing import Any, Iterable

from runtime_builder import inputs as inputs_mod, layout, resolve
from runtime_builder.targets import Target
from wrenpack.errors import BuildError

log = logging.getLogger(__name__)

DOCKERFILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "Dockerfile.runtime")


def docker_client() -> Any:
    """A docker SDK client whose engine answers, or a one-line BuildError."""
    try:
        import docker

        client = docker.from_env(timeout=10)
        client.ping()
        return client
    except Exception as exc:  # noqa: BLE001 - any failure means "no usable engine"
        raise BuildError(f"--docker needs a running Docker engine and none answers ({type(exc).__name__}); "
                         f"start Docker, or build without --docker") from None


def build_image(packages: Iterable[str] = (), *, requirements_files: Iterable[str] = (), pyproject: str | None = None,
                profile: str | None = None, lock: str | None = None, python: str | None = None,
                arch: str | None = None, output: str = layout.DEFAULT_OUTPUT, base_image: str | None = None,
                tag: str | None = None, sourceless: bool = False, keep_boto3: bool = False) -> dict[str, Any]:
    tgt = Target.make(python, arch)
    client = docker_client()
    if not os.path.exists(DOCKERFILE):
        raise BuildError(f"{DOCKERFILE} is missing; reinstall wrenpack from a source checkout")
    inp = inputs_mod.Inputs()
    for p in packages:
        inp.add(p)
    for rf in requirements_files:
        inputs_mod.read_requirements_file(rf, inp)
    if pyproject:
        inputs_mod.read_pyproject(pyproject, inp)
    if profile:
        inputs_mod.read_profile(profile, inp)
    os.makedirs(output, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="wrenpack-docker-") as ctx:
        lock_path = os.path.join(ctx, "requirements.lock")
        if lock:
            shutil.copyfile(lock, lock_path)
        else:
            if not inp.requirements:
                raise BuildError("nothing to build: give package names, -r, --pyproject, --from-profile or --lock")
            inputs_mod.add_cloudpickle(inp)
            resolve.compile_lock(inp.text(), os.path.join(ctx, "work", "requirements.lock"), tgt,
                                 seed=os.path.join(output, layout.LOCK), binary_only=False)
            shutil.copyfile(os.path.join(ctx, "work", "requirements.lock"), lock_path)
            shutil.rmtree(os.path.join(ctx, "work"))
        shutil.copyfile(lock_path, os.path.join(output, layout.LOCK))
        src = os.path.join(ctx, "src")
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        for pkg in ("wrenpack", "runtime_builder"):
            shutil.copytree(os.path.join(root, pkg), os.path.join(src, pkg),
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        shutil.copyfile(DOCKERFILE, os.path.join(ctx, "Dockerfile.runtime"))
        with open(lock_path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()[:12]
        tag = tag or f"wrenpack-runtime:{tgt.label}-{digest}"
        base = base_image or f"public.ecr.aws/lambda/python:{tgt.python}"
        log.info("building image %s from %s", tag, base)
        try:
            image, _logs = client.images.build(
                path=ctx, dockerfile="Dockerfile.runtime", tag=tag, rm=True, pull=False,
                platform="linux/arm64" if tgt.arch == "arm64" else "linux/amd64",
                buildargs={"BASE_IMAGE": base, "SOURCELESS": "1" if sourceless else "0",
                           "KEEP_BOTO3": "1" if keep_boto3 else "0"})
        except Exception as exc:  # docker.errors.BuildError / APIError
            msg = str(getattr(exc, "msg", exc)).strip().splitlines()[-1:]
            raise BuildError(f"docker build of {tag} failed: {msg[0] if msg else exc}; see `docker build` output") from None
    return {"tag": tag, "image_id": image.id, "base_image": base, "lock": os.path.join(output, layout.LOCK)}
