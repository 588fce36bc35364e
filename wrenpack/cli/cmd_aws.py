"""``wrenpack deploy``, ``wrenpack iam-policy``, ``wrenpack doctor``: the AWS side.

deploy: handler package (wrenpack's worker code + cloudpickle, zipped
deterministically) + runtime (a layer, an S3 archive the handler extracts to
/tmp, or a container image; its manifest checked against the function's
Python and architecture) -> for each settings set named (memory x timeout x
/tmp, or from saved profiles) create or update ``<function_name>-<hash>``,
set its async retries to 0 (wrenpack retries by itself) and, on request, its
reserved concurrency.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import zipfile
from pathlib import Path
from typing import Any

from wrenpack import limits
from wrenpack.errors import ConfigError, WrenpackError

HANDLER = "wrenpack.worker.handler.handler"
ARCHIVE_HANDLER = "wrenpack.worker.runtime_archive.handler"
#: Zips up to this size go inline in the API call; larger ones through S3.
INLINE_ZIP_LIMIT = 50 * 1000 * 1000
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


# -- configuration ------------------------------------------------------------
def _add_aws_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("AWS settings (default: wrenpack configuration)")
    g.add_argument("--storage", help="s3://BUCKET/PREFIX for job objects")
    g.add_argument("--function-name", dest="function_name")
    g.add_argument("--region", dest="aws_region")
    g.add_argument("--profile", dest="aws_profile")
    g.add_argument("--s3-endpoint-url", dest="s3_endpoint_url")
    g.add_argument("--lambda-endpoint-url", dest="lambda_endpoint_url")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def _config(args: argparse.Namespace) -> Any:
    from wrenpack.config import current

    names = ("storage", "function_name", "aws_region", "aws_profile", "s3_endpoint_url", "lambda_endpoint_url")
    return current(**{n: getattr(args, n, None) for n in names if getattr(args, n, None) is not None})


def _session(cfg: Any) -> Any:
    import boto3

    try:
        return boto3.session.Session(profile_name=getattr(cfg, "aws_profile", None), region_name=getattr(cfg, "aws_region", None))
    except Exception as exc:
        raise ConfigError(f"cannot open AWS profile {getattr(cfg, 'aws_profile', None)!r}: {exc}; fix aws_profile") from None


def _lambda(cfg: Any) -> Any:
    return _session(cfg).client("lambda", endpoint_url=getattr(cfg, "lambda_endpoint_url", None))


def _bucket_prefix(cfg: Any) -> tuple[str, str]:
    storage = str(getattr(cfg, "storage", "") or "")
    if not storage.startswith("s3://"):
        raise ConfigError(f"storage is {storage!r}, not an S3 location; set storage='s3://BUCKET/PREFIX' (or --storage)")
    bucket, _, prefix = storage[5:].partition("/")
    return bucket, prefix.strip("/")


def _aws_error(exc: Exception, doing: str) -> WrenpackError:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code") if hasattr(exc, "response") else None
    return WrenpackError(f"{doing} failed: {code or type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


# -- the handler package ----------------------------------------------------------
def handler_package() -> bytes:
    """wrenpack's worker-side code and cloudpickle, as a reproducible zip."""
    import cloudpickle

    import wrenpack

    from wrenpack.worker import worker_files

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


def runtime_tar_gz(python_dir: Path) -> bytes:
    """The runtime's ``python/`` tree as a reproducible tar.gz (stdlib-extractable): the builder's one tar writer."""
    from runtime_builder import pack

    return pack.tar_gz_bytes(str(python_dir), prefix="")


# -- deploy ---------------------------------------------------------------------
#: Environment variables deploy sets on every function it creates.
ENV_FAMILY = "WRENPACK_FUNCTION_FAMILY"
ENV_SETTINGS = "WRENPACK_FUNCTION_SETTINGS"
#: The store the function serves (the handler refuses events for another, see docs/aws.md).
ENV_STORE = "WRENPACK_STORE_URL"


def settings_to_deploy(args: argparse.Namespace, cfg: Any, python: str, runtime: str | None) -> list[Any]:
    """Every settings set named on the command line (each option may repeat),
    plus those the saved profiles recommend (``--from-profiles``)."""
    from itertools import product

    from wrenpack.backends.aws_lambda import FunctionSettings

    memories = args.memory or [cfg.memory]
    timeouts = args.timeout or [cfg.timeout]
    storages = args.ephemeral_storage or [cfg.ephemeral_storage]
    arch = args.architecture or getattr(cfg, "architecture", None) or "x86_64"
    named = [] if (args.from_profiles and not (args.memory or args.timeout or args.ephemeral_storage)) else list(product(memories, timeouts, storages))
    if args.from_profiles:
        named += _profile_settings()
        if not named:
            raise ConfigError("--from-profiles: no saved profiles with recommendations under .wrenpack/profiles; "
                              "run `wrenpack profile MODULE:FUNCTION` first")
    out: list[Any] = []
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
    from wrenpack.profiler.model import Profile
    from wrenpack.profiler.store import profiles_dir

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


def cmd_deploy(args: argparse.Namespace) -> int:
    cfg = _config(args)
    base = cfg.function_name
    python = args.python or "%d.%d" % sys.version_info[:2]
    if sum(bool(x) for x in (args.runtime_dir, args.runtime_archive, args.image_uri)) > 1:
        raise ConfigError("choose one of --runtime-dir (layer), --runtime-archive (S3 archive) and --image-uri")
    arch = args.architecture or getattr(cfg, "architecture", None) or "x86_64"
    runtime_dir = args.runtime_dir or args.runtime_archive
    if runtime_dir:
        check_manifest(runtime_dir, python, arch)
    if args.reserved_concurrency is not None and args.reserved_concurrency < 0:
        raise ConfigError(f"--reserved-concurrency {args.reserved_concurrency} must be 0 or more")
    all_settings = settings_to_deploy(args, cfg, python, runtime_dir)
    lam = _lambda(cfg)
    bucket, prefix = _bucket_prefix(cfg) if (args.runtime_archive or args.runtime_dir) else (None, "")
    env = {"WRENPACK_DEPLOYED_PYTHON": python, ENV_FAMILY: base}
    store_url = _store_url(cfg)
    if store_url:
        # The handler refuses events naming another bucket or a prefix outside this one.
        env[ENV_STORE] = store_url
    else:
        print("warning: storage is not s3://BUCKET/PREFIX, so the functions know no store and refuse every call; "
              "redeploy with --storage s3://BUCKET/PREFIX", file=sys.stderr)
    layers: list[str] = []
    handler = HANDLER
    extra: dict[str, Any] = {}
    if args.runtime_dir:
        layer_zip = Path(args.runtime_dir) / "layer.zip"
        if not layer_zip.is_file():
            raise ConfigError(f"{layer_zip} not found; point --runtime-dir at a `wrenpack build-runtime` output directory")
        content = _code_location(cfg, layer_zip.read_bytes(), bucket, prefix, "layer")
        try:
            layer = lam.publish_layer_version(
                LayerName=f"{base}-runtime", Content=content, CompatibleRuntimes=[f"python{python}"],
                CompatibleArchitectures=[arch], Description="wrenpack runtime")
        except Exception as exc:
            raise _aws_error(exc, "publishing the runtime layer") from None
        layers = [layer["LayerVersionArn"]]
        extra["layer"] = layers[0]
    elif args.runtime_archive:
        python_dir = Path(args.runtime_archive) / "python"
        if not python_dir.is_dir():
            raise ConfigError(f"{python_dir} not found; point --runtime-archive at a `wrenpack build-runtime` output directory")
        data = runtime_tar_gz(python_dir)
        sha = hashlib.sha256(data).hexdigest()
        key = f"{prefix}/runtimes/runtime-{sha}.tar.gz".lstrip("/")
        s3 = _session(cfg).client("s3", endpoint_url=cfg.s3_endpoint_url)
        try:
            s3.put_object(Bucket=bucket, Key=key, Body=data)
        except Exception as exc:
            raise _aws_error(exc, f"uploading the runtime archive to s3://{bucket}/{key}") from None
        env.update(WRENPACK_RUNTIME_ARCHIVE=f"s3://{bucket}/{key}", WRENPACK_RUNTIME_SHA256=sha)
        handler = ARCHIVE_HANDLER
        extra["runtime_archive"] = f"s3://{bucket}/{key}"
    if args.image_uri:
        code: dict[str, Any] = {"ImageUri": args.image_uri}
        package: dict[str, Any] = {"PackageType": "Image", "Architectures": [arch]}
    else:
        code = {"ZipFile": handler_package()}
        package = {"Runtime": f"python{python}", "Handler": handler, "Layers": layers, "Architectures": [arch]}
    done = []
    for settings in all_settings:
        done.append(deploy_function(lam, settings.function_name(base), settings, code, package, env,
                                    role=args.role, reserved=args.reserved_concurrency))
        done[-1].update(extra)
    if args.json:
        print(json.dumps({"functions": done}, indent=2))
    else:
        for d in done:
            print(f"{d['action']} Lambda function {d['function']} (python{python}, {d['memory']} MB, {d['timeout']} s, "
                  f"/tmp {d['ephemeral_storage']} MB, {d['architecture']})")
    return 0


def _store_url(cfg: Any) -> str | None:
    storage = str(getattr(cfg, "storage", "") or "")
    if not storage.startswith("s3://"):
        return None
    bucket, prefix = _bucket_prefix(cfg)
    return f"s3://{bucket}/{prefix}".rstrip("/")


def deploy_function(lam: Any, name: str, settings: Any, code: dict[str, Any], package: dict[str, Any],
                    env: dict[str, str], role: str | None = None, reserved: int | None = None) -> dict[str, Any]:
    """Create or update the one function for ``settings``; its async retries 0
    (wrenpack retries by itself), its reserved concurrency when asked."""
    import dataclasses

    env = dict(env)
    env[ENV_SETTINGS] = json.dumps(dataclasses.asdict(settings), sort_keys=True, separators=(",", ":"))
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
            if not role:
                raise ConfigError(f"function {name!r} ({settings.describe()}) does not exist yet; pass --role ARN of its "
                                  "execution role (policy: `wrenpack iam-policy --for worker`)")
            lam.create_function(FunctionName=name, Role=role, Code=code, Publish=False, **package, **common)
            summary["action"] = "created"
        _wait(lam, name)
        lam.put_function_event_invoke_config(FunctionName=name, MaximumRetryAttempts=0, MaximumEventAgeInSeconds=21600)
        if reserved is not None:
            lam.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=reserved)
            summary["reserved_concurrency"] = reserved
    except WrenpackError:
        raise
    except Exception as exc:
        raise _aws_error(exc, f"deploying function {name!r}") from None
    return summary


def find_template(lam: Any, base: str, settings: Any) -> dict[str, Any] | None:
    """A deployed function of family ``base`` with the same architecture,
    Python and runtime as ``settings`` (its role and runtime are reused)."""
    marker = None
    while True:
        page = lam.list_functions(**({"Marker": marker} if marker else {}))
        for conf in page.get("Functions", []):
            env = (conf.get("Environment") or {}).get("Variables") or {}
            if env.get(ENV_FAMILY) != base:
                continue
            try:
                theirs = json.loads(env.get(ENV_SETTINGS) or "{}")
            except ValueError:
                continue
            if all(theirs.get(k) == getattr(settings, k) for k in ("architecture", "python", "runtime")):
                return conf
        marker = page.get("NextMarker")
        if not marker:
            return None


def create_from_template(lam: Any, name: str, settings: Any, template: dict[str, Any], base: str,
                         store_url: str | None = None) -> dict[str, Any]:
    """``lambda_auto_deploy``: the function for ``settings``, a copy of ``template``
    with its own memory, timeout and /tmp (the handler package of this client)."""
    env = dict((template.get("Environment") or {}).get("Variables") or {})
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


def _code_location(cfg: Any, data: bytes, bucket: str | None, prefix: str, what: str) -> dict[str, Any]:
    if len(data) <= INLINE_ZIP_LIMIT or bucket is None:
        return {"ZipFile": data}
    key = f"{prefix}/deploy/{what}-{hashlib.sha256(data).hexdigest()[:16]}.zip".lstrip("/")
    _session(cfg).client("s3", endpoint_url=cfg.s3_endpoint_url).put_object(Bucket=bucket, Key=key, Body=data)
    return {"S3Bucket": bucket, "S3Key": key}


def _function_exists(lam: Any, name: str) -> bool:
    try:
        lam.get_function_configuration(FunctionName=name)
        return True
    except Exception as exc:
        if getattr(exc, "response", {}).get("Error", {}).get("Code") == "ResourceNotFoundException":
            return False
        raise


def _wait(lam: Any, name: str) -> None:
    """Wait until an update has finished (Lambda refuses overlapping updates)."""
    try:
        lam.get_waiter("function_updated_v2").wait(FunctionName=name, WaiterConfig={"Delay": 2, "MaxAttempts": 150})
    except Exception as exc:  # noqa: BLE001 - a server without the field: carry on
        if "ResourceNotFound" in str(exc):
            raise


# -- iam-policy -------------------------------------------------------------------
def iam_policy(cfg: Any, role: str, account: str = "*", worker_role: str | None = None) -> dict[str, Any]:
    """A least-privilege policy for ``role``: "client" (runs jobs), "worker" (the
    function's execution role) or "deploy" (client + deploy). docs/aws.md
    explains each statement and what it does not stop."""
    bucket, prefix = _bucket_prefix(cfg)
    base = f"arn:aws:s3:::{bucket}/{prefix + '/' if prefix else ''}"
    region = getattr(cfg, "aws_region", None) or "*"
    # deploy makes one function per settings set, all named <function_name>-<hash>
    fn_arn = f"arn:aws:lambda:{region}:{account}:function:{cfg.function_name}-*"
    jobs = f"{base}jobs/*"
    user = [f"{base}data/*", f"{base}shuffle/*"]

    def allow(sid: str, actions: list[str], resources: list[str] | str, **extra: Any) -> dict[str, Any]:
        return {"Sid": sid, "Effect": "Allow", "Action": actions, "Resource": resources, **extra}

    def listing(sid: str, prefixes: list[str]) -> dict[str, Any]:
        full = [f"{prefix}/{p}" if prefix else p for p in prefixes]
        return allow(sid, ["s3:ListBucket"], f"arn:aws:s3:::{bucket}",
                     Condition={"StringLike": {"s3:prefix": full}})

    if role == "worker":
        statements = [
            allow("ReadCallInputs", ["s3:GetObject"], [f"{base}jobs/*/func.pkl", f"{base}jobs/*/input/*", f"{base}runtimes/*"]),
            # Create only (If-None-Match: *): no result or segment record, of any job, can be overwritten.
            allow("CreateResults", ["s3:PutObject"], [f"{base}jobs/*/result/*"],
                  Condition={"Null": {"s3:if-none-match": "false"}}),
            allow("MarkLateStart", ["s3:PutObject"], [f"{base}jobs/*/start/*"]),
            allow("ReadBackResults", ["s3:GetObject"], [f"{base}jobs/*/result/*"]),
            allow("Checkpoints", ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"],
                  [f"{base}jobs/*/checkpoint/*"]),
            allow("UserDataInCalls", ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"], user),
            listing("ListUserData", ["data/*", "shuffle/*"]),
            allow("Logs", ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
                  f"arn:aws:logs:{region}:{account}:log-group:/aws/lambda/{cfg.function_name}-*:*"),
        ]
        return {"Version": "2012-10-17", "Statement": statements}
    statements = [
        allow("JobObjects", ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"],
              [jobs, *user, f"{base}doctor/*"]),
        listing("ListJobObjects", ["jobs/*", "data/*", "shuffle/*"]),
        allow("Invoke", ["lambda:InvokeFunction"], fn_arn),
        allow("Doctor", ["lambda:GetFunctionConfiguration", "lambda:GetFunctionEventInvokeConfig",
                         "lambda:GetFunctionConcurrency"], fn_arn),
    ]
    if role == "deploy":
        if worker_role and not worker_role.startswith("arn:"):
            worker_role = f"arn:aws:iam::{account}:role/{worker_role}"
        statements += [
            allow("Deploy", ["lambda:CreateFunction", "lambda:UpdateFunctionCode", "lambda:UpdateFunctionConfiguration",
                             "lambda:PutFunctionEventInvokeConfig", "lambda:GetFunction",
                             "lambda:PutFunctionConcurrency"], fn_arn),
            allow("Layer", ["lambda:PublishLayerVersion", "lambda:GetLayerVersion"], [
                f"arn:aws:lambda:{region}:{account}:layer:{cfg.function_name}-runtime",
                f"arn:aws:lambda:{region}:{account}:layer:{cfg.function_name}-runtime:*"]),
            allow("UploadRuntimes", ["s3:PutObject", "s3:GetObject", "s3:AbortMultipartUpload"],
                  [f"{base}runtimes/*", f"{base}deploy/*"]),
            allow("PassWorkerRole", ["iam:PassRole"], worker_role or f"arn:aws:iam::{account}:role/{cfg.function_name}",
                  Condition={"StringEquals": {"iam:PassedToService": "lambda.amazonaws.com"}}),
        ]
    return {"Version": "2012-10-17", "Statement": statements}


def cmd_iam_policy(args: argparse.Namespace) -> int:
    print(json.dumps(iam_policy(_config(args), args.role_for, args.account, args.worker_role), indent=2))
    return 0


# -- doctor ----------------------------------------------------------------------
def doctor_checks(cfg: Any) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []

    def check(name: str, fn: Any) -> Any:
        try:
            ok, detail, value = fn()
        except WrenpackError as exc:
            ok, detail, value = False, str(exc), None
        except Exception as exc:  # noqa: BLE001 - every failure is reported, none raised
            code = getattr(exc, "response", {}).get("Error", {}).get("Code") if hasattr(exc, "response") else None
            ok, detail, value = False, f"{code or type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", None
        # ok None: a warning (reported, does not fail the run)
        checks.append({"check": name, "ok": ok is not False, "detail": detail, **({"warning": True} if ok is None else {})})
        return value

    session = check("credentials", lambda: _credentials(cfg))
    check("storage", lambda: _storage_check(cfg))
    check("conditional writes", lambda: _conditional_check(cfg))
    conf = None
    if session is not None:
        conf = check("function", lambda: _function_check(cfg))
    if conf is not None:
        check("python version", lambda: _python_check(conf))
        check("runtime", lambda: _runtime_check(conf))
        check("async retries", lambda: _retries_check(cfg))
    return checks


def _credentials(cfg: Any) -> tuple[bool, str, Any]:
    session = _session(cfg)
    if session.get_credentials() is None:
        return False, "no AWS credentials found; set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (aws configure)", None
    ident = session.client("sts").get_caller_identity()
    return True, f"{ident['Arn']} in {session.region_name or '(no region: set aws_region)'}", session


def _storage_check(cfg: Any) -> tuple[bool, str, Any]:
    from wrenpack.storage import store_for_config

    store = store_for_config(cfg)
    key = "doctor/probe"
    store.put(key, b"ok")
    ok = store.get(key) == b"ok"
    store.delete(key)
    return ok, f"{store.url}: write, read, delete work", None


def _conditional_check(cfg: Any) -> tuple[bool | None, str, Any]:
    """Two conditional writes of one key: the second must be refused (412), or
    a call Lambda delivers twice could overwrite its first result."""
    from wrenpack.storage import store_for_config

    store = store_for_config(cfg)
    if getattr(store, "conditional_writes", True) is False:
        return None, f"{store.url}: conditional_writes is off: first-write-wins is best effort (HEAD then PUT)", None
    key = "doctor/probe-if-none-match"
    store.delete(key)
    try:
        first = store.put(key, b"1", if_absent=True)
        second = store.put(key, b"2", if_absent=True)
        kept = store.get(key)
    finally:
        store.delete(key)
    if first and not second and kept == b"1":
        return True, "If-None-Match honoured: the first result of a call delivered twice wins", None
    return None, (f"{store.url} ignores If-None-Match (a second conditional write succeeded): a duplicate delivery can "
                  "overwrite a result; use a store that supports it, or set conditional_writes false for best effort"), None


def default_function_name(cfg: Any) -> str:
    """The function that calls with the configured default settings run on."""
    from wrenpack.backends.aws_lambda import FunctionSettings

    runtime = getattr(cfg, "runtime", None)
    runtime = runtime if runtime and Path(str(runtime)).is_dir() else None
    settings = FunctionSettings.for_call(cfg.memory, cfg.timeout, cfg.ephemeral_storage,
                                         getattr(cfg, "architecture", None) or "x86_64", runtime)
    return settings.function_name(cfg.function_name)


def _function_check(cfg: Any) -> tuple[bool, str, Any]:
    name = default_function_name(cfg)
    try:
        conf = _lambda(cfg).get_function_configuration(FunctionName=name)
    except Exception as exc:
        if getattr(exc, "response", {}).get("Error", {}).get("Code") == "ResourceNotFoundException":
            raise WrenpackError(f"function {name!r} for the default settings (memory={cfg.memory}, timeout={cfg.timeout:g}, "
                                f"ephemeral_storage={cfg.ephemeral_storage}) not found; run `wrenpack deploy --role ARN`") from None
        raise
    return True, f"{conf['FunctionName']}: {conf.get('MemorySize')} MB, {conf.get('Timeout')} s, state {conf.get('State', '?')}", conf


def _python_check(conf: dict[str, Any]) -> tuple[bool, str, Any]:
    local = "python%d.%d" % sys.version_info[:2]
    remote = conf.get("Runtime") or (conf.get("Environment", {}).get("Variables", {}).get("WRENPACK_DEPLOYED_PYTHON"))
    if remote and not remote.startswith("python"):
        remote = f"python{remote}"
    if remote != local:
        return False, f"function runs {remote or 'an unknown runtime'} but this client is {local}; cloudpickle needs the same minor version: redeploy with --python", None
    return True, f"{remote} on both sides", None


def _runtime_check(conf: dict[str, Any]) -> tuple[bool, str, Any]:
    layers = [layer["Arn"] for layer in conf.get("Layers") or []]
    env = conf.get("Environment", {}).get("Variables", {})
    if conf.get("PackageType") == "Image":
        return True, "container image", None
    if env.get("WRENPACK_RUNTIME_ARCHIVE"):
        return True, f"archive {env['WRENPACK_RUNTIME_ARCHIVE']}", None
    if layers:
        return True, f"layer {layers[0]}", None
    return True, "handler package only (no runtime layer: only the standard library, boto3 and cloudpickle import)", None


def _retries_check(cfg: Any) -> tuple[bool, str, Any]:
    try:
        conf = _lambda(cfg).get_function_event_invoke_config(FunctionName=default_function_name(cfg))
    except Exception as exc:
        if getattr(exc, "response", {}).get("Error", {}).get("Code") == "ResourceNotFoundException":
            return False, "async MaximumRetryAttempts is Lambda's default 2: duplicates cost money; re-run `wrenpack deploy`", None
        raise
    n = conf.get("MaximumRetryAttempts")
    return n == 0, f"MaximumRetryAttempts={n}" + ("" if n == 0 else "; re-run `wrenpack deploy` to set 0"), None


def cmd_doctor(args: argparse.Namespace) -> int:
    checks = doctor_checks(_config(args))
    bad = [c for c in checks if not c["ok"]]
    if args.json:
        print(json.dumps({"ok": not bad, "checks": checks}, indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="wrenpack doctor")
        for col in ("check", "status", "detail"):
            table.add_column(col)
        for c in checks:
            mark = "[yellow]WARN[/yellow]" if c.get("warning") else "[green]ok[/green]" if c["ok"] else "[red]FAIL[/red]"
            table.add_row(c["check"], mark, c["detail"])
        Console().print(table)
    return 1 if bad else 0


# -- registration --------------------------------------------------------------------
def register(subparsers: Any, name: str) -> None:
    if name == "deploy":
        p = subparsers.add_parser(name, help="create or update the Lambda worker functions, one per settings set")
        p.add_argument("--role", help="execution role ARN (needed to create the function)")
        src = p.add_argument_group("runtime (at most one)")
        src.add_argument("--runtime-dir", help="`wrenpack build-runtime` output: publish its layer.zip as a layer")
        src.add_argument("--runtime-archive", help="`wrenpack build-runtime` output: upload python/ as a tar.gz to S3, extracted to /tmp")
        src.add_argument("--image-uri", help="a container image (ECR URI) that holds the runtime and wrenpack")
        p.add_argument("--memory", type=int, action="append",
                       help="MB (repeat for several functions; default: the memory setting)")
        p.add_argument("--timeout", type=float, action="append", help="seconds (repeatable; default: the timeout setting)")
        p.add_argument("--ephemeral-storage", type=int, action="append",
                       help="/tmp size in MB (repeatable; default: the ephemeral_storage setting)")
        p.add_argument("--from-profiles", action="store_true",
                       help="also deploy the settings the saved profiles (.wrenpack/profiles) recommend")
        p.add_argument("--reserved-concurrency", type=int,
                       help="reserve this much of the account's concurrency for each function (also caps it)")
        p.add_argument("--python", help="Python minor version, e.g. 3.11 (default: this interpreter's)")
        p.add_argument("--architecture", choices=["x86_64", "arm64"], help="default: the architecture setting")
        _add_aws_options(p)
        p.set_defaults(func=cmd_deploy)
    elif name == "iam-policy":
        p = subparsers.add_parser(name, help="print a least-privilege IAM policy for the bucket and function")
        p.add_argument("--for", dest="role_for", choices=["client", "worker", "deploy"], default="client",
                       help="client: run jobs; worker: the function's execution role; deploy: client + deploy")
        p.add_argument("--account", default="*", help="AWS account id to put in ARNs (default *)")
        p.add_argument("--worker-role", help="deploy: the execution role's ARN or name, the only role deploy may pass "
                                             "(default: a role named like the function)")
        _add_aws_options(p)
        p.set_defaults(func=cmd_iam_policy)
    else:
        p = subparsers.add_parser(name, help="check credentials, bucket, function, runtime and Python versions")
        _add_aws_options(p)
        p.set_defaults(func=cmd_doctor)
