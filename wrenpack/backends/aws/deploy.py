"""Deploying the worker functions: one Lambda function per settings set.

Lambda fixes memory, timeout, /tmp, architecture and runtime per function,
while wrenpack lets every call choose them, so a family of functions is
deployed, ``<function_name>-<hash of the settings>`` (``FunctionSettings``):
the backend finds the function for a call's settings by name alone.

::

    deploy_functions: handler package (wrenpack's worker code + cloudpickle,
        zipped deterministically) + runtime (a layer, an S3 archive the handler
        extracts to /tmp, or a container image; its manifest checked against the
        function's Python and architecture) -> for each settings set named
        (memory x timeout x /tmp, or from saved profiles) create or update
        ``<function_name>-<hash>``, set its async retries to 0 and its events'
        maximum age to an hour (wrenpack retries by itself, and a client has
        given up on a call long before), and, on request, its reserved concurrency.
        A zip package's Python must be a runtime Lambda still takes
        (``runtimes``): a blocked one is refused before any AWS request.
    auto_deploy (``lambda_auto_deploy``): a missing member of the family is
        created on first use, copied from a deployed one with the same
        architecture, Python and runtime (found by the family and settings
        each function carries in its environment).
    missing_function_help: what to tell a client whose settings set has no
        function: the complete `wrenpack deploy` command (role, runtime, region,
        store, endpoints), or why that Python can no longer be deployed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import re
import shlex
import sys
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from itertools import product
from pathlib import Path
from typing import Any

import cloudpickle

import wrenpack
from runtime_builder import pack
from wrenpack import limits
import wrenpack.backends.aws.clients as clients
import wrenpack.backends.aws.runtimes as runtimes
from wrenpack.errors import ConfigError, WrenpackError
from wrenpack.profiler.model import Profile
from wrenpack.profiler.store import profiles_dir
from wrenpack.storage.s3 import _code
from wrenpack.wire import event as event_format
from wrenpack.worker import worker_files

log = logging.getLogger(__name__)

HANDLER = "wrenpack.worker.handler.handler"
ARCHIVE_HANDLER = "wrenpack.worker.runtime_archive.handler"
#: Zips up to this size go inline in the API call; larger ones through S3.
INLINE_ZIP_LIMIT = 50 * 1000 * 1000
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
LOCAL_PYTHON = "%d.%d" % sys.version_info[:2]

#: Lambda's limit on a function's code and all its layers, unzipped: "250 MB", which AWS
#: counts as 262,144,000 bytes (250 MiB). A layer over it publishes, but the function that
#: uses it is refused, so deploy checks it before uploading anything.
UNZIPPED_LIMIT = 250 * 1024 * 1024
MIB = 1024 * 1024

#: what Lambda takes as a function's Role (CreateFunction's pattern)
ROLE_ARN = re.compile(r"arn:(aws[a-zA-Z-]*)?:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+")

#: Environment variables deploy sets on every function it creates.
ENV_FAMILY = "WRENPACK_FUNCTION_FAMILY"
ENV_SETTINGS = "WRENPACK_FUNCTION_SETTINGS"
#: The store the function serves (the handler refuses events for another, see docs/aws.md).
ENV_STORE = "WRENPACK_STORE_URL"
#: The event protocol (``wrenpack.wire.event.VERSION``) and the wrenpack version of a zip
#: package's handler: a client that speaks another protocol is told before it sends a call,
#: which that handler would refuse without writing anything (an Event call then looks lost).
ENV_PROTOCOL = "WRENPACK_EVENT_PROTOCOL"
ENV_VERSION = "WRENPACK_VERSION"
#: The MB of /tmp a function's runtime archive needs on a cold start (its extracted tree):
#: lambda_auto_deploy refuses to copy the function to settings with less ephemeral storage.
ENV_RUNTIME_TMP = "WRENPACK_RUNTIME_TMP_MB"
#: The s3:// URL of a function's runtime archive (``--runtime-archive``).
ENV_RUNTIME_ARCHIVE = "WRENPACK_RUNTIME_ARCHIVE"
#: The S3 user metadata (``x-amz-meta-wrenpack-deploys``) naming who a runtime archive was
#: uploaded for: ``family@region`` pairs, comma-separated, one per deploy (each deploy adds its
#: own). The key names only the archive's content, so two families with the same runtime share
#: one archive, in any regions; without this `wrenpack undeploy` could not tell an earlier
#: deploy's archive, that no function uses any more, from one another family's functions (or the
#: family's in a region an undeploy does not see) still use. An undeploy takes its own pair out
#: once its functions are gone, and removes the archive when no pair is left.
ARCHIVE_DEPLOYS = "wrenpack-deploys"
#: For people reading the metadata, and archives tagged before ``ARCHIVE_DEPLOYS``: the
#: families (comma-separated) and the regions, without which family is where.
ARCHIVE_FAMILY = "wrenpack-family"
ARCHIVE_REGION = "wrenpack-region"


def archive_deploys(metadata: dict[str, str]) -> set[tuple[str, str]]:
    """The (family, region) pairs an archive's metadata names (``ARCHIVE_DEPLOYS``; an archive
    tagged before it: its ``ARCHIVE_FAMILY`` in each of its ``ARCHIVE_REGION``, or in "" (unknown)
    when none); empty for an archive no deploy tagged."""
    if ARCHIVE_DEPLOYS in metadata:
        pairs = (item.rpartition("@") for item in (metadata[ARCHIVE_DEPLOYS] or "").split(","))
        return {(family, region) for family, at, region in pairs if at and family}
    family = metadata.get(ARCHIVE_FAMILY) or ""
    if not family:
        return set()
    regions = {r for r in (metadata.get(ARCHIVE_REGION) or "").split(",") if r}
    return {(family, region) for region in regions or {""}}


def archive_metadata(deploys: set[tuple[str, str]]) -> dict[str, str]:
    """The S3 metadata that names ``deploys`` (``archive_deploys`` reads it back)."""
    return {ARCHIVE_DEPLOYS: ",".join(f"{family}@{region}" for family, region in sorted(deploys)),
            ARCHIVE_FAMILY: ",".join(sorted({family for family, _ in deploys})),
            ARCHIVE_REGION: ",".join(sorted({region for _, region in deploys} - {""}))}
#: MaximumEventAgeInSeconds of every function: an Event call still queued in
#: Lambda after an hour is dropped. The client reports a call that has neither
#: started nor ended by its deadline as lost (or sends it again) once Lambda's
#: queue stops moving, minutes after its timeout (at most 900 s); Lambda's
#: default, 6 hours, would let such a call run hours after it was given up on.
MAX_EVENT_AGE_S = 3600


# -- one function per settings set ----------------------------------------------
@dataclass(frozen=True)
class FunctionSettings:
    """What a Lambda function fixes for every call it runs."""

    memory: int
    timeout: int
    ephemeral_storage: int
    architecture: str = "x86_64"
    #: the runtime's identity (from its manifest), None for the handler package alone
    runtime: str | None = None
    python: str = LOCAL_PYTHON

    @classmethod
    def for_call(cls, memory_mb: int, timeout_s: float, ephemeral_mb: int, architecture: str = "x86_64",
                 runtime: str | None = None, python: str = LOCAL_PYTHON) -> "FunctionSettings":
        return cls(int(memory_mb), int(math.ceil(timeout_s)), int(ephemeral_mb), architecture,
                   runtime_id(runtime), python)

    def function_name(self, base: str) -> str:
        """``<base>-<10 hex digits>``: the same settings always name the same function."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        name = f"{base}-{hashlib.sha256(blob).hexdigest()[:10]}"
        if len(name) > 64:
            raise ConfigError(f"function_name {base!r} is too long: at most 53 characters (Lambda names are at most 64)")
        return name

    def describe(self) -> str:
        runtime = f", runtime {self.runtime}" if self.runtime else ""
        return (f"memory={self.memory} MB, timeout={self.timeout} s, ephemeral_storage={self.ephemeral_storage} MB, "
                f"{self.architecture}, python{self.python}{runtime}")

    def deploy_command(self, base: str, runtime_dir: str | None = None, *, archive: bool = False,
                       image_uri: str | None = None, role: str | None = None, region: str | None = None,
                       storage: str | None = None, profile: str | None = None, lambda_endpoint_url: str | None = None,
                       s3_endpoint_url: str | None = None) -> str:
        """The `wrenpack deploy` command that creates this function, complete enough to
        run as printed from any shell: every setting it names travels as an option."""
        args = ["wrenpack", "deploy", "--function-name", base, "--memory", str(self.memory), "--timeout", str(self.timeout),
                "--ephemeral-storage", str(self.ephemeral_storage), "--architecture", self.architecture,
                "--python", self.python]
        if image_uri:
            args += ["--image-uri", image_uri]
        elif runtime_dir:
            args += ["--runtime-archive" if archive else "--runtime-dir", runtime_dir]
        for flag, value in (("--role", role), ("--region", region), ("--storage", storage), ("--profile", profile),
                            ("--lambda-endpoint-url", lambda_endpoint_url), ("--s3-endpoint-url", s3_endpoint_url)):
            if value:
                args += [flag, value]
        return " ".join(shlex.quote(a) for a in args)


def runtime_id(runtime_dir: str | None) -> str | None:
    """A built runtime's identity: its manifest's content key (a path's hash if it has none)."""
    if not runtime_dir:
        return None
    try:
        with open(os.path.join(runtime_dir, "manifest.json")) as f:
            manifest = json.load(f)
        key = manifest.get("cache_key") or manifest.get("lock_sha256")
        if key:
            return str(key)[:12]
    except (OSError, ValueError):
        pass
    return hashlib.sha256(os.path.realpath(runtime_dir).encode()).hexdigest()[:12]


# -- the handler package ----------------------------------------------------------
def handler_package() -> bytes:
    """wrenpack's worker-side code and cloudpickle, as a reproducible zip."""
    pkg = Path(wrenpack.__file__).parent
    files: list[tuple[str, Path]] = [(f"wrenpack/{rel}", pkg / rel) for rel in worker_files(str(pkg))]
    # cloudpickle is pure Python and must match the client's version exactly.
    cp = Path(cloudpickle.__file__).parent
    files += [(f"cloudpickle/{p.relative_to(cp).as_posix()}", p) for p in cp.rglob("*.py")]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, path in sorted(files):
            info = zipfile.ZipInfo(name, _ZIP_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes())
    return buf.getvalue()


def unzipped_size(data: bytes, what: str) -> int:
    """The bytes ``data`` (a zip) holds once extracted, as Lambda counts them."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            return sum(info.file_size for info in zf.infolist())
    except zipfile.BadZipFile as exc:
        raise ConfigError(f"{what} is not a zip file ({exc}); rebuild it with `wrenpack build-runtime`") from None


def check_layer_fits(layer_zip: Path, data: bytes, handler: bytes) -> None:
    """A layer whose contents and the handler package pass Lambda's 250 MB unzipped
    limit is refused here, in one line, before it is uploaded (Lambda would refuse
    the function only after the layer was published)."""
    layer, code = unzipped_size(data, str(layer_zip)), unzipped_size(handler, "the handler package")
    total = layer + code
    if total > UNZIPPED_LIMIT:
        raise ConfigError(
            f"{layer_zip} unzips to {layer / MIB:.1f} MiB, with the handler package {total / MIB:.1f} MiB: over Lambda's "
            f"{UNZIPPED_LIMIT // MIB} MiB limit for a function's code and layers by {(total - UNZIPPED_LIMIT) / MIB:.1f} MiB; "
            "deploy it as an S3 archive extracted to /tmp (--runtime-archive, with --ephemeral-storage to fit), "
            "a container image (--image-uri), or rebuild it smaller (`wrenpack build-runtime`)")


def tree_size(root: Path) -> int:
    """The bytes of the files under ``root``, hard links counted once (as the archive stores and extracts them)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for folder, _dirs, names in os.walk(root):
        for name in names:
            st = os.lstat(os.path.join(folder, name))
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


def check_archive_fits(python_dir: Path, tree_bytes: int, all_settings: Sequence["FunctionSettings"]) -> int:
    """A runtime archive is extracted into /tmp on a call's cold start (as it
    downloads: the archive itself is not kept beside its tree): a function whose
    ephemeral storage cannot hold the tree is refused here, in one line naming
    the --ephemeral-storage that fits, rather than failing every call on Lambda
    with a full disk (the emulator's /tmp has no such limit). The MB of /tmp it
    needs (``ENV_RUNTIME_TMP``: auto-deploy checks the copies it makes)."""
    need_mb = math.ceil(tree_bytes / MIB)
    small = [st for st in all_settings if st.ephemeral_storage * MIB < tree_bytes]
    if not small:
        return need_mb
    if need_mb > limits.MAX_EPHEMERAL_MB:
        fix = (f"that is over Lambda's largest /tmp ({limits.MAX_EPHEMERAL_MB} MB): deploy a container image "
               "(--image-uri) or rebuild the runtime smaller")
    else:
        fix = (f"deploy with --ephemeral-storage {max(need_mb, limits.MIN_EPHEMERAL_MB)} or more (up to "
               f"{limits.MAX_EPHEMERAL_MB}; the calls' own files in /tmp come on top)")
    raise ConfigError(
        f"the runtime archive of {python_dir} needs {need_mb} MB of /tmp on a cold start (its extracted tree), more "
        f"than the {small[0].ephemeral_storage} MB of /tmp of {small[0].describe()}; {fix}")


def runtime_tar_gz(python_dir: Path) -> bytes:
    """The runtime's ``python/`` tree as a reproducible tar.gz (stdlib-extractable): the builder's one tar writer."""
    return pack.tar_gz_bytes(str(python_dir), prefix="")


# -- what to deploy -------------------------------------------------------------------
@dataclass(frozen=True)
class DeployRequest:
    """What ``wrenpack deploy`` was asked for; an empty or None field means the configured setting."""

    memory: Sequence[int] = ()
    timeout: Sequence[float] = ()
    ephemeral_storage: Sequence[int] = ()
    #: also the settings the saved profiles recommend
    from_profiles: bool = False
    architecture: str | None = None
    python: str | None = None
    #: the runtime, at most one of: a build-runtime output as a layer, the same as an S3 archive, an image
    runtime_dir: str | None = None
    runtime_archive: str | None = None
    image_uri: str | None = None
    #: the execution role (needed to create a function)
    role: str | None = None
    reserved_concurrency: int | None = None
    #: re-point functions that serve another store (``WRENPACK_STORE_URL``) at this one;
    #: without it deploy refuses, as their current callers would all be refused from then on
    replace_store: bool = False


def settings_to_deploy(request: DeployRequest, cfg: Any, python: str, runtime: str | None) -> list[FunctionSettings]:
    """Every settings set named in ``request`` (each option may repeat),
    plus those the saved profiles recommend (``from_profiles``)."""
    memories = request.memory or [cfg.memory]
    timeouts = request.timeout or [cfg.timeout]
    storages = request.ephemeral_storage or [cfg.ephemeral_storage]
    arch = request.architecture or getattr(cfg, "architecture", None) or "x86_64"
    named_any = bool(request.memory or request.timeout or request.ephemeral_storage)
    named = [] if (request.from_profiles and not named_any) else list(product(memories, timeouts, storages))
    if request.from_profiles:
        named += _profile_settings()
        if not named:
            raise ConfigError("--from-profiles: no saved profiles with recommendations under .wrenpack/profiles; "
                              "run `wrenpack profile MODULE:FUNCTION` first")
    out: list[FunctionSettings] = []
    for memory, timeout, storage in named:
        limits.check_memory(memory, "--memory")
        limits.check_timeout(timeout, "--timeout")
        limits.check_ephemeral(storage, "--ephemeral-storage")
        if float(timeout) < 1:
            raise ConfigError(f"--timeout {timeout} is under Lambda's smallest function timeout, 1 s")
        settings = FunctionSettings.for_call(int(memory), float(timeout), int(storage), arch, runtime, python)
        if settings not in out:
            out.append(settings)
    return out


def _profile_settings() -> list[tuple[int, float, int]]:
    found = []
    for path in sorted(profiles_dir().glob("*.json")):
        try:
            prof = Profile.from_dict(json.loads(path.read_text()))
        except Exception:  # noqa: BLE001 - an unreadable profile is skipped, as auto_settings does
            continue
        if prof.recommended and prof.memory_mb:
            found.append((prof.memory_mb, float(prof.timeout_s or 60), prof.ephemeral_storage_mb or 512))
    return found


def check_manifest(runtime_dir: str, python: str, architecture: str) -> None:
    """A runtime built for another Python or architecture fails here, not on the first call."""
    path = Path(runtime_dir) / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        return  # not a build-runtime output with a manifest: nothing to check
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}; rebuild the runtime with `wrenpack build-runtime`") from None
    target = manifest.get("target") or {}
    built_py, built_arch = target.get("python"), target.get("arch")
    if built_py and str(built_py) != python:
        raise ConfigError(f"the runtime in {runtime_dir} was built for Python {built_py}, but the function runs "
                          f"python{python}; rebuild it (wrenpack build-runtime --python {python}) or pass --python {built_py}")
    if built_arch and str(built_arch) != architecture:
        raise ConfigError(f"the runtime in {runtime_dir} was built for {built_arch}, but the function is {architecture}; "
                          f"rebuild it (--arch {architecture}) or deploy with --architecture {built_arch}")


# -- deploy ---------------------------------------------------------------------
def check_deploy_storage(cfg: Any) -> None:
    """Refuse a storage that is not ``s3://BUCKET/PREFIX``, in one line, before anything
    is checked, uploaded or created (the command line's exit 2, as undeploy's). A
    function knows the store it serves (``ENV_STORE``); one deployed without an S3
    location refuses every call, so deploy used to create functions that its own
    warning said could run nothing (undeploy, with the same settings, refused)."""
    from wrenpack.config import default_storage

    if clients.store_url(cfg) is None:  # (the setting as text: a Store object's location is its own)
        storage = getattr(cfg, "storage", None)
        shown = clients.non_s3_storage(storage, default_storage()) or f"{storage!r:.200}"
        raise ConfigError(f"storage is {shown}, not an S3 location: the functions serve one S3 store and would refuse "
                          f"every call; pass --storage s3://BUCKET/PREFIX (or set storage / WRENPACK_STORAGE)")


@dataclass
class DeployPlan:
    """What ``check_deploy`` derived from the settings and the request, before any AWS request."""

    python: str
    #: why a function may only be updated (its runtime takes no new functions), else None
    refuse_create: str | None
    arch: str
    settings: list[FunctionSettings]
    #: the functions' environment so far (the runtime archive's is added once it is uploaded)
    env: dict[str, str]
    #: the store the functions serve (``ENV_STORE``)
    served: str | None
    layer_zip: Path | None
    layer_bytes: bytes
    python_dir: Path | None
    #: the store's bucket and prefix, where the runtime is uploaded through it
    bucket: str | None
    prefix: str


def check_deploy(cfg: Any, request: DeployRequest, warn: Callable[[str], None] = log.warning,
                 on: date | None = None) -> DeployPlan:
    """Bad settings or options, in one line naming the fix, before any AWS request (the
    command line's exit 2, as undeploy's ``check_undeploy``): the runtime's choice and
    checks, a zip package's Python against Lambda's runtime dates (as of ``on``, default
    today), the role's form, the settings sets. ``warn`` hears what deploys but will not
    work as expected."""
    check_deploy_storage(cfg)
    base = cfg.function_name
    python = runtimes.minor(request.python) if request.python else LOCAL_PYTHON
    if sum(bool(x) for x in (request.runtime_dir, request.runtime_archive, request.image_uri)) > 1:
        raise ConfigError("choose one of --runtime-dir (layer), --runtime-archive (S3 archive) and --image-uri")
    refuse_create = None
    if not request.image_uri:
        # A container image carries its own Python: only managed runtimes are blocked.
        why = runtimes.refusal(python, on, creating=False)
        if why:
            raise ConfigError(why)
        refuse_create = runtimes.refusal(python, on, creating=True)
        note = runtimes.warning(python, on)
        if note:
            warn(note)
    if python != LOCAL_PYTHON:
        warn(f"the functions run python{python} but this client is python{LOCAL_PYTHON}: only a python{python} client "
             f"can call them (calls travel as bytecode)")
    arch = request.architecture or getattr(cfg, "architecture", None) or "x86_64"
    runtime_dir = request.runtime_dir or request.runtime_archive
    if runtime_dir:
        check_manifest(runtime_dir, python, arch)
    if request.role and not ROLE_ARN.fullmatch(request.role):
        # Lambda answers a ValidationException only after the runtime was uploaded.
        raise ConfigError(f"--role {request.role!r} is not an IAM role ARN (arn:aws:iam::123456789012:role/NAME); "
                          "pass the execution role's ARN (aws iam get-role --role-name NAME)")
    if request.reserved_concurrency is not None and request.reserved_concurrency < 0:
        raise ConfigError(f"--reserved-concurrency {request.reserved_concurrency} must be 0 or more")
    all_settings = settings_to_deploy(request, cfg, python, runtime_dir)
    clients.check_configured_region(cfg)
    bucket, prefix = clients.bucket_prefix(cfg) if (request.runtime_archive or request.runtime_dir) else (None, "")
    env = {"WRENPACK_DEPLOYED_PYTHON": python, ENV_FAMILY: base}
    served = clients.store_url(cfg)
    # The handler refuses events naming another bucket or a prefix outside this one (check_deploy_storage
    # refused a storage that names none).
    env[ENV_STORE] = served
    # What can be told here is said before any request: the runtime's own checks.
    layer_zip, layer_bytes, python_dir = None, b"", None
    if request.runtime_dir:
        layer_zip = Path(request.runtime_dir) / "layer.zip"
        if not layer_zip.is_file():
            raise ConfigError(f"{layer_zip} not found; point --runtime-dir at a `wrenpack build-runtime` output directory")
        layer_bytes = layer_zip.read_bytes()
        check_layer_fits(layer_zip, layer_bytes, handler_package())
    elif request.runtime_archive:
        python_dir = Path(request.runtime_archive) / "python"
        if not python_dir.is_dir():
            raise ConfigError(f"{python_dir} not found; point --runtime-archive at a `wrenpack build-runtime` output directory")
        env[ENV_RUNTIME_TMP] = str(check_archive_fits(python_dir, tree_size(python_dir), all_settings))
    return DeployPlan(python, refuse_create, arch, all_settings, env, served, layer_zip, layer_bytes, python_dir,
                      bucket, prefix)


def deploy_functions(cfg: Any, request: DeployRequest, warn: Callable[[str], None] = log.warning,
                     on: date | None = None, plan: DeployPlan | None = None) -> list[dict[str, Any]]:
    """Publish the runtime ``request`` names, then create or update one function
    per settings set: a summary of each (what was done, its settings, its runtime).
    ``warn`` hears, as it happens, what deploys but will not work as expected.
    ``check_deploy`` runs first, before any AWS request (``plan``: its answer, when
    the caller ran it)."""
    if plan is None:
        plan = check_deploy(cfg, request, warn, on)
    base = cfg.function_name
    python, refuse_create, arch, all_settings = plan.python, plan.refuse_create, plan.arch, plan.settings
    env, served, layer_zip, layer_bytes, python_dir = dict(plan.env), plan.served, plan.layer_zip, plan.layer_bytes, plan.python_dir
    bucket, prefix = plan.bucket, plan.prefix
    lam = clients.lambda_client(cfg)
    # Then what AWS must answer, before anything is uploaded or changed.
    if served:
        check_store_reachable(cfg, served)
    previous = stores_replaced(lam, [s.function_name(base) for s in all_settings], served, request.replace_store)
    layers: list[str] = []
    handler = HANDLER
    extra: dict[str, Any] = {"store": served}
    if layer_zip is not None:
        content = _code_location(cfg, layer_bytes, bucket, prefix, "layer")
        try:
            layer = lam.publish_layer_version(
                LayerName=f"{base}-runtime", Content=content, CompatibleRuntimes=[f"python{python}"],
                CompatibleArchitectures=[arch], Description="wrenpack runtime")
        except Exception as exc:
            raise clients.aws_error(exc, "publishing the runtime layer") from None
        layers = [layer["LayerVersionArn"]]
        extra["layer"] = layers[0]
    elif python_dir is not None:
        data = runtime_tar_gz(python_dir)
        sha = hashlib.sha256(data).hexdigest()
        key = f"{prefix}/runtimes/runtime-{sha}.tar.gz".lstrip("/")
        s3 = clients.s3_client(cfg)
        try:
            # (whose it is, for `wrenpack undeploy`: the key names only the content; the deploys
            # already named on it stay, another family's or region's functions may use it)
            region = str(getattr(getattr(lam, "meta", None), "region_name", None) or "")
            try:
                before = archive_deploys(dict(s3.head_object(Bucket=bucket, Key=key).get("Metadata") or {}))
            except Exception:  # noqa: BLE001 - none there yet (or unreadable: this deploy alone)
                before = set()
            s3.put_object(Bucket=bucket, Key=key, Body=data, Metadata=archive_metadata(before | {(base, region)}))
        except Exception as exc:
            raise clients.aws_error(exc, f"uploading the runtime archive to s3://{bucket}/{key}") from None
        env.update({ENV_RUNTIME_ARCHIVE: f"s3://{bucket}/{key}", "WRENPACK_RUNTIME_SHA256": sha})
        handler = ARCHIVE_HANDLER
        extra["runtime_archive"] = f"s3://{bucket}/{key}"
    if request.image_uri:
        code: dict[str, Any] = {"ImageUri": request.image_uri}
        package: dict[str, Any] = {"PackageType": "Image", "Architectures": [arch]}
    else:
        code = {"ZipFile": handler_package()}
        package = {"Runtime": f"python{python}", "Handler": handler, "Layers": layers, "Architectures": [arch]}
    done = []
    for settings in all_settings:
        name = settings.function_name(base)
        done.append(deploy_function(lam, name, settings, code, package, env,
                                    role=request.role, reserved=request.reserved_concurrency, refuse_create=refuse_create))
        done[-1].update(extra)
        if name in previous:
            done[-1]["previous_store"] = previous[name]
    return done


def check_store_reachable(cfg: Any, served: str) -> None:
    """The bucket of ``served`` exists and this identity reaches it: else one line
    naming the store, before anything is uploaded or a function changed. A mistyped
    bucket was deployed without a word before, and the functions it re-pointed then
    refused every call of their current callers. One LIST of the store's ``jobs/``
    (what the deploy policy allows: HeadBucket needs s3:ListBucket on the whole bucket)."""
    from wrenpack.storage import store_for_config

    try:
        store = store_for_config(cfg)
        next(iter(store.iter_list("jobs/")), None)
    except WrenpackError as exc:
        raise ConfigError(f"cannot deploy functions serving {served}: {exc}; nothing was deployed") from None


def stores_replaced(lam: Any, names: Sequence[str], served: str | None, replace: bool) -> dict[str, str]:
    """The functions among ``names`` that exist and serve another store than ``served``
    (``ENV_STORE``), with the store each serves now. Unless ``replace`` (--replace-store),
    such a function is refused in one line: re-pointed, it refuses every call of its
    current callers whose store lies outside the new one (function names do not hold
    the store, so two projects or stores sharing a ``function_name`` would overwrite
    each other on each deploy). Any change counts, a wider store too: what a function
    serves changes only when asked."""
    found: dict[str, str] = {}
    for name in names:
        try:
            conf = _configuration(lam, name)
        except Exception as exc:
            raise clients.aws_error(exc, f"reading Lambda function {name!r}") from None
        if conf is None:
            continue
        variables = (conf.get("Environment") or {}).get("Variables") or {}
        pinned = variables.get(ENV_STORE)
        if pinned and pinned.rstrip("/") != (served or "").rstrip("/"):
            found[name] = pinned
    if found and not replace:
        name, pinned = next(iter(found.items()))
        more = f" (and {len(found) - 1} more of its family)" if len(found) > 1 else ""
        raise ConfigError(
            f"Lambda function {name!r}{more} serves the store {pinned}, and deploying it for "
            + (f"{served} would refuse every call of its current callers whose store lies outside that"
               if served else "no store would refuse every call of its current callers")
            + "; deploy this store's functions under another --function-name, or pass --replace-store to re-point it; "
            "nothing was deployed")
    return found


def deploy_function(lam: Any, name: str, settings: FunctionSettings, code: dict[str, Any], package: dict[str, Any],
                    env: dict[str, str], role: str | None = None, reserved: int | None = None,
                    refuse_create: str | None = None) -> dict[str, Any]:
    """Create or update the one function for ``settings``; its async retries 0
    and events' maximum age ``MAX_EVENT_AGE_S`` (wrenpack retries by itself),
    its reserved concurrency when asked. ``refuse_create``: why it may only be
    updated (its runtime takes no new functions), the error if it does not exist."""
    env = dict(env)
    env[ENV_SETTINGS] = json.dumps(dataclasses.asdict(settings), sort_keys=True, separators=(",", ":"))
    if package.get("PackageType") == "Image":
        # (an image carries whatever wrenpack it was built with: nothing known here)
        env.pop(ENV_PROTOCOL, None)
        env.pop(ENV_VERSION, None)
    else:  # the handler package is this wrenpack's
        env[ENV_PROTOCOL], env[ENV_VERSION] = str(event_format.VERSION), wrenpack.__version__
    common = dict(MemorySize=settings.memory, Timeout=settings.timeout, EphemeralStorage={"Size": settings.ephemeral_storage},
                  Environment={"Variables": env})
    summary: dict[str, Any] = {"function": name, "python": settings.python, "memory": settings.memory,
                               "timeout": settings.timeout, "ephemeral_storage": settings.ephemeral_storage,
                               "architecture": settings.architecture}
    try:
        if _function_exists(lam, name):
            lam.update_function_code(FunctionName=name, **code, Architectures=package["Architectures"])
            _wait(lam, name)
            conf = dict(common)
            if package.get("PackageType") != "Image":
                conf.update(Runtime=package["Runtime"], Handler=package["Handler"], Layers=package["Layers"])
            if role:
                conf["Role"] = role
            lam.update_function_configuration(FunctionName=name, **conf)
            summary["action"] = "updated"
        else:
            if refuse_create:
                raise ConfigError(f"function {name!r} ({settings.describe()}) does not exist yet and {refuse_create}")
            if not role:
                raise ConfigError(f"function {name!r} ({settings.describe()}) does not exist yet; pass --role ARN of its "
                                  "execution role (policy: `wrenpack iam-policy --for worker`)")
            lam.create_function(FunctionName=name, Role=role, Code=code, Publish=False, **package, **common)
            summary["action"] = "created"
        _wait(lam, name)
        lam.put_function_event_invoke_config(FunctionName=name, MaximumRetryAttempts=0, MaximumEventAgeInSeconds=MAX_EVENT_AGE_S)
        if reserved is not None:
            lam.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=reserved)
            summary["reserved_concurrency"] = reserved
    except WrenpackError:
        raise
    except Exception as exc:
        raise clients.aws_error(exc, f"deploying function {name!r}") from None
    return summary


def code_upload_name(what: str, sha256_hex: str) -> str:
    """Where under the store's prefix a zip too large to go inline is uploaded (``what``: "layer"),
    by its content: `wrenpack undeploy` tells the family's uploads by the same name."""
    return f"deploy/{what}-{sha256_hex[:16]}.zip"


def _code_location(cfg: Any, data: bytes, bucket: str | None, prefix: str, what: str) -> dict[str, Any]:
    if len(data) <= INLINE_ZIP_LIMIT or bucket is None:
        return {"ZipFile": data}
    key = f"{prefix}/{code_upload_name(what, hashlib.sha256(data).hexdigest())}".lstrip("/")
    clients.s3_client(cfg).put_object(Bucket=bucket, Key=key, Body=data)
    return {"S3Bucket": bucket, "S3Key": key}


def _configuration(lam: Any, name: str) -> dict[str, Any] | None:
    """The function's configuration, as Lambda reports it; None if it does not exist (other errors raise)."""
    try:
        return lam.get_function_configuration(FunctionName=name)
    except Exception as exc:
        if clients.error_code(exc) == "ResourceNotFoundException":
            return None
        raise


def _function_exists(lam: Any, name: str) -> bool:
    return _configuration(lam, name) is not None


def _wait(lam: Any, name: str) -> None:
    """Wait until an update has finished (Lambda refuses overlapping updates)."""
    try:
        lam.get_waiter("function_updated_v2").wait(FunctionName=name, WaiterConfig={"Delay": 2, "MaxAttempts": 150})
    except Exception as exc:  # noqa: BLE001 - a server without the field: carry on
        if "ResourceNotFound" in str(exc):
            raise


# -- lambda_auto_deploy ------------------------------------------------------------
def auto_deploy(lam: Any, name: str, settings: FunctionSettings, base: str, store_url: str | None = None,
                runtime_dir: str | None = None, where: dict[str, str | None] | None = None,
                on: date | None = None) -> dict[str, Any]:
    """Create the missing function ``name`` of family ``base`` for ``settings``,
    cloned from a deployed one with the same architecture, Python and runtime
    (its role, layers, handler), serving ``store_url`` (the client's store,
    ``s3://BUCKET/PREFIX``; the template's, when that holds it): its configuration, as Lambda reports it.
    ``runtime_dir`` and ``where`` (region, storage, ...) complete the
    `wrenpack deploy` command printed when there is nothing to copy."""
    family = _family(lam, base, "lambda_auto_deploy")
    template = _same_kind(family, settings)
    if template is None:
        hint, _ = missing_function_help(lam, settings, base, runtime_dir, where, on, family=family)
        raise ConfigError(
            f"lambda_auto_deploy: no deployed function of {base!r} with {settings.architecture}, "
            f"python{settings.python} and the same runtime to copy its role and runtime from; {hint}"
        )
    if template.get("PackageType") != "Image":
        why = runtimes.refusal(settings.python, on, creating=True)
        if why:
            raise ConfigError(f"lambda_auto_deploy cannot create {name!r}: {why}")
    needs = ((template.get("Environment") or {}).get("Variables") or {}).get(ENV_RUNTIME_TMP)
    if needs and str(needs).isdigit() and settings.ephemeral_storage < int(needs):
        # The copy would fail every cold start on Lambda, extracting the archive into a /tmp too small.
        raise ConfigError(
            f"lambda_auto_deploy cannot create {name!r} ({settings.describe()}): its runtime archive "
            f"({template.get('FunctionName')}'s) needs {needs} MB of /tmp on a cold start; run the call with "
            f"ephemeral_storage={max(int(needs), limits.MIN_EPHEMERAL_MB)} or more")
    log.warning("creating Lambda function %s for %s (lambda_auto_deploy)", name, settings.describe())
    try:
        return create_from_template(lam, name, settings, template, base, store_url=store_url)
    except WrenpackError:
        raise
    except Exception as exc:
        raise ConfigError(f"creating Lambda function {name!r} failed: {_code(exc) or type(exc).__name__}: {exc}") from None


def _family(lam: Any, base: str, who: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Every deployed function of family ``base``: (its configuration, the settings it was deployed for)."""
    found = []
    for conf in list_functions(lam, who, "to find one to copy"):
        env = (conf.get("Environment") or {}).get("Variables") or {}
        if env.get(ENV_FAMILY) != base:
            continue
        try:
            theirs = json.loads(env.get(ENV_SETTINGS) or "{}")
        except ValueError:
            continue
        found.append((conf, theirs))
    return found


def list_functions(lam: Any, who: str, why: str) -> list[dict[str, Any]]:
    """The configuration of every function of the account in the client's region (all pages):
    a family is told by its functions' environment (``ENV_FAMILY``), which no name filter reads.
    A refusal is one line naming ``who`` lists them, ``why``, and the policy that allows it."""
    found: list[dict[str, Any]] = []
    marker = None
    while True:
        try:
            page = lam.list_functions(**({"Marker": marker} if marker else {}))
        except Exception as exc:
            if clients.error_code(exc) in ("AccessDeniedException", "AccessDenied", "403"):
                raise ConfigError(f"{who} lists the deployed functions {why} and is not allowed to "
                                  "(lambda:ListFunctions); use an identity with `wrenpack iam-policy --for deploy`") from None
            raise clients.aws_error(exc, f"{who}: listing the deployed functions") from None
        found += page.get("Functions", [])
        marker = page.get("NextMarker")
        if not marker:
            return found


def _same_kind(family: list[tuple[dict[str, Any], dict[str, Any]]], settings: FunctionSettings) -> dict[str, Any] | None:
    return next((conf for conf, theirs in family
                 if all(theirs.get(k) == getattr(settings, k) for k in ("architecture", "python", "runtime"))), None)


def find_template(lam: Any, base: str, settings: FunctionSettings) -> dict[str, Any] | None:
    """A deployed function of family ``base`` with the same architecture,
    Python and runtime as ``settings`` (its role and runtime are reused)."""
    return _same_kind(_family(lam, base, "lambda_auto_deploy"), settings)


def missing_function_help(lam: Any, settings: FunctionSettings, base: str, runtime_dir: str | None = None,
                          where: dict[str, str | None] | None = None, on: date | None = None,
                          family: list[tuple[dict[str, Any], dict[str, Any]]] | None = None) -> tuple[str, bool]:
    """What to tell a client whose ``settings`` have no function: (text, whether it can be deployed).

    The text is the `wrenpack deploy` command that creates it, with the role,
    image or runtime mode of a deployed function of the family when one can
    be read (``ROLE_ARN`` when none), and ``where`` (region, storage, profile,
    endpoints) so it runs as printed; or, for a zip package whose Python
    Lambda no longer takes, why not and the ways out."""
    if family is None:
        try:
            family = _family(lam, base, "finding the functions' role")
        except WrenpackError as exc:  # not allowed to list: the command says ROLE_ARN
            log.debug("%s", exc)
            family = []
    same = _same_kind(family, settings)
    role = (same or (family[0][0] if family else {})).get("Role")
    image = archive = None
    if same is not None and same.get("PackageType") == "Image":
        try:
            image = lam.get_function(FunctionName=same["FunctionName"])["Code"]["ImageUri"]
        except Exception as exc:  # noqa: BLE001 - not allowed to read it: the command says IMAGE_URI
            log.debug("cannot read the image of %s: %s", same.get("FunctionName"), exc)
            image = "IMAGE_URI"
    elif same is not None:
        archive = bool(((same.get("Environment") or {}).get("Variables") or {}).get(ENV_RUNTIME_ARCHIVE))
    if image is None:
        why = runtimes.refusal(settings.python, on, creating=True)
        if why:
            return why, False
    cmd = settings.deploy_command(base, runtime_dir, archive=bool(archive), image_uri=image, role=role or "ROLE_ARN",
                                  **(where or {}))
    unknown = [f"{word}: {what}" for word, what, missing in (
        ("ROLE_ARN", "the functions' execution role, see `wrenpack iam-policy --for worker`", not role),
        ("IMAGE_URI", "the image's ECR URI", image == "IMAGE_URI")) if missing]
    return f"create it with `{cmd}`" + (f" ({'; '.join(unknown)})" if unknown else ""), True


def protocol_refusal(conf: dict[str, Any]) -> str | None:
    """Why the function whose configuration is ``conf`` refuses every event this
    client sends (one clause): its handler speaks another event protocol. None when
    it speaks this one, or that is not known (deployed before deploy recorded it, an image)."""
    variables = (conf.get("Environment") or {}).get("Variables") or {}
    theirs = variables.get(ENV_PROTOCOL)
    if theirs is None or str(theirs) == str(event_format.VERSION):
        return None
    return (f"its handler (wrenpack {variables.get(ENV_VERSION, '?')}) speaks event protocol {theirs} and this client "
            f"(wrenpack {wrenpack.__version__}) speaks {event_format.VERSION}, so it refuses every call")


def store_refusal(conf: dict[str, Any], store_url: str | None) -> str | None:
    """Why the function whose configuration is ``conf`` refuses every call of a
    client whose store is ``store_url`` (one clause), None when it serves that
    store or that cannot be told (the configuration could not be read).

    The handler refuses an event naming another bucket, or a prefix outside the
    one it was deployed for (``ENV_STORE``), without writing anything: an Event
    call then showed only as lost after its timeout plus the margin, blamed on
    memory or timeout. The client knows both stores before it sends anything."""
    from wrenpack.storage import parse_store_url

    if not conf.get("FunctionName") or not store_url or not store_url.startswith("s3://"):
        return None
    variables = (conf.get("Environment") or {}).get("Variables") or {}
    if ENV_FAMILY not in variables:
        # Not readable (a KMS key this caller may not use), or not deployed by wrenpack: nothing is known.
        return None
    pinned = variables.get(ENV_STORE)
    if not pinned:
        return f"it was deployed without a store ({ENV_STORE}), so it refuses every call"
    try:
        want, have = parse_store_url(pinned), parse_store_url(store_url)
    except ConfigError:
        return f"it serves the store {pinned!r}, which is no store URL, so it refuses every call"
    base, prefix = str(want.get("prefix", "")).strip("/"), str(have.get("prefix", "")).strip("/")
    if want.get("type") == "s3" and have.get("bucket") == want.get("bucket") and (
            not base or prefix == base or prefix.startswith(base + "/")):
        return None
    return f"it serves the store {pinned} and refuses every call whose store lies outside it"


def create_from_template(lam: Any, name: str, settings: FunctionSettings, template: dict[str, Any], base: str,
                         store_url: str | None = None) -> dict[str, Any]:
    """The function for ``settings``, a copy of ``template`` with its own
    memory, timeout and /tmp (the handler package of this client). It serves
    the template's store when that holds ``store_url`` (the client's,
    ``s3://BUCKET/PREFIX``: the other clients of the family keep being served),
    else ``store_url``: a copy of the template's could never serve the client
    that is creating it."""
    env = dict((template.get("Environment") or {}).get("Variables") or {})
    if store_url and store_url.startswith("s3://") and store_refusal(template, store_url) is not None:
        env[ENV_STORE] = store_url
    if template.get("PackageType") == "Image":
        uri = lam.get_function(FunctionName=template["FunctionName"])["Code"]["ImageUri"]
        code: dict[str, Any] = {"ImageUri": uri}
        package: dict[str, Any] = {"PackageType": "Image", "Architectures": [settings.architecture]}
    else:
        code = {"ZipFile": handler_package()}
        package = {"Runtime": template["Runtime"], "Handler": template["Handler"],
                   "Layers": [layer["Arn"] for layer in template.get("Layers") or []],
                   "Architectures": [settings.architecture]}
    deploy_function(lam, name, settings, code, package, env, role=template["Role"])
    return lam.get_function_configuration(FunctionName=name)
