"""``wrenpack build-runtime --docker``: build Dockerfile.runtime through the docker SDK.

Resolution happens on the host (pip-compile for the target, sdists allowed);
installing, building sdists, trimming and verifying happen in the Lambda base
image, so packages without a suitable wheel still get a runtime.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from typing import Any, Iterable

from runtime_builder import inputs as inputs_mod, layout, resolve
from runtime_builder.targets import Target
from wrenpack.errors import BuildError

log = logging.getLogger(__name__)

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
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
                tag: str | None = None, sourceless: bool = False, keep_boto3: bool = False,
                network: str | None = None, dockerfile: str = DOCKERFILE) -> dict[str, Any]:
    """Build the image; ``network`` is the build containers' network mode (e.g. ``host``), which pip needs;
    ``dockerfile``: the recipe (``Dockerfile.runtime`` on Lambda's base image, or the custom-runtime one)."""
    tgt = Target.make(python, arch)
    from runtime_builder.pipeline import _check_output

    _check_output(os.path.abspath(output), lock)  # its requirements.lock is replaced too
    client = docker_client()
    if not os.path.exists(dockerfile):
        raise BuildError(f"{dockerfile} is missing; reinstall wrenpack from a source checkout")
    inp = inputs_mod.gather(packages, requirements_files, pyproject, profile)
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
            with open(os.path.join(ctx, "work", "requirements.lock"), encoding="utf-8") as f:
                text = f.read()
            with open(lock_path, "w", encoding="utf-8") as f:  # index options travel with the lock
                f.write("".join(o + "\n" for o in inp.options if o not in text) + text)
            shutil.rmtree(os.path.join(ctx, "work"))
        shutil.copyfile(lock_path, os.path.join(output, layout.LOCK))
        src = os.path.join(ctx, "src")
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        for pkg in ("wrenpack", "runtime_builder"):
            shutil.copytree(os.path.join(root, pkg), os.path.join(src, pkg),
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        shutil.copyfile(dockerfile, os.path.join(ctx, "Dockerfile.runtime"))
        base = base_image or f"public.ecr.aws/lambda/python:{tgt.python}"
        digest = _context_digest(ctx, [base, f"sourceless={sourceless}", f"keep_boto3={keep_boto3}"])
        tag = tag or f"wrenpack-runtime:{tgt.label}-{digest}"
        _require_local(client, base)
        log.info("building image %s from %s", tag, base)
        try:
            image, logs = client.images.build(
                path=ctx, dockerfile="Dockerfile.runtime", tag=tag, rm=True, forcerm=True, pull=False,
                network_mode=network,
                platform="linux/arm64" if tgt.arch == "arm64" else "linux/amd64",
                buildargs={"BASE_IMAGE": base, "SOURCELESS": "1" if sourceless else "0",
                           "KEEP_BOTO3": "1" if keep_boto3 else "0"})
        except Exception as exc:  # docker.errors.BuildError / APIError / ImageNotFound
            lines = _log_lines(getattr(exc, "build_log", ()))
            for line in lines[-40:]:
                log.error("docker build: %s", line)
            raise BuildError(f"docker build of {tag} failed: {_cause(exc, lines)}{_hint(lines, base)}") from None
        for line in _log_lines(logs):
            # The build stage's summary (docker_stage) at INFO, the rest at DEBUG.
            log.log(logging.INFO if line.startswith(("verified ", "trim savings")) else logging.DEBUG,
                    "docker build: %s", line)
    return {"tag": tag, "image_id": image.id, "base_image": base, "lock": os.path.join(output, layout.LOCK),
            "size_bytes": image.attrs.get("Size")}


def _require_local(client: Any, base: str) -> None:
    """The base image must already be local: a build never pulls (the engine would try to, even with pull=False)."""
    import docker

    try:
        client.images.get(base)
    except docker.errors.ImageNotFound:
        raise BuildError(f"base image {base} is not present locally; `docker pull {base}` first, "
                         f"or name a local one with --base-image") from None


def _context_digest(ctx: str, extra: list[str]) -> str:
    """Short hash of the build context (lock, wrenpack sources, Dockerfile) and options: the default tag."""
    h = hashlib.sha256("\0".join(extra).encode())
    for dirpath, dirnames, filenames in os.walk(ctx):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            h.update(os.path.relpath(path, ctx).encode() + b"\0")
            with open(path, "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
    return h.hexdigest()[:12]


def _log_lines(chunks: Iterable[Any]) -> list[str]:
    """The text lines of a docker build log (the SDK yields dicts with 'stream' or 'error')."""
    out: list[str] = []
    for chunk in chunks or ():
        text = (chunk.get("stream") or chunk.get("error") or "") if isinstance(chunk, dict) else str(chunk)
        out.extend(ln.rstrip() for ln in _ANSI.sub("", text).splitlines() if ln.strip())
    return out


def _cause(exc: Exception, lines: list[str]) -> str:
    """One line naming why the build failed: pip's/the stage's last error line, else the engine's message."""
    for line in reversed(lines):
        if line.lstrip().startswith(("ERROR", "wrenpack: error", "BuildError", "runtime_builder")):
            return line.strip()
    msg = str(getattr(exc, "msg", exc)).strip().splitlines()
    return msg[-1] if msg else type(exc).__name__


def _hint(lines: list[str], base: str) -> str:
    text = "\n".join(lines[-60:])
    if "name resolution" in text or "Network is unreachable" in text or "NewConnectionError" in text:
        return "; pip in the build container cannot reach the package index: try --network host"
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return f"; pip in {base} does not trust this network's TLS certificates"
    return "; the docker build output is logged above"
