"""``wrenpack doctor``'s checks of an AWS set-up, as data.

Each check runs even when an earlier one failed (unless it needs what that
one found), and none raises: the answer is a list of
``{"check", "ok", "detail"[, "warning"]}`` that the command line prints as a
table or JSON, so one run reports everything that is wrong at once.
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import wrenpack.backends.aws.clients as clients
import wrenpack.backends.aws.probe as probe
import wrenpack.backends.aws.runtimes as runtimes
from wrenpack.backends.aws.deploy import (LOCAL_PYTHON, MAX_EVENT_AGE_S, FunctionSettings, missing_function_help,
                                          protocol_refusal, store_refusal)
from wrenpack.config import default_storage
from wrenpack.errors import WrenpackError
from wrenpack.storage import store_for_config

#: a check's answer: ok (None: a warning, reported, does not fail the run), detail, a value for later checks
Outcome = tuple[bool | None, str, Any]


def doctor_checks(cfg: Any, on: date | None = None) -> list[dict[str, Any]]:
    """Every check's result, in order; a check that needs a failed one's value is left out.
    ``on``: the day Lambda's runtime dates are compared with (default today)."""
    checks: list[dict[str, Any]] = []

    def check(name: str, fn: Callable[[], Outcome]) -> Any:
        try:
            ok, detail, value = fn()
        except WrenpackError as exc:
            ok, detail, value = False, str(exc), None
        except Exception as exc:  # noqa: BLE001 - every failure is reported, none raised
            code = clients.error_code(exc)
            ok, detail, value = False, f"{code or type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", None
        checks.append({"check": name, "ok": ok is not False, "detail": detail, **({"warning": True} if ok is None else {})})
        return value

    session = check("credentials", lambda: _check_credentials(cfg))
    check("storage", lambda: _check_storage(cfg))
    if clients.non_s3_storage(getattr(cfg, "storage", None)) is None:  # (else the storage row failed: nothing to write to)
        check("conditional writes", lambda: _check_conditional_writes(cfg))
    conf = None
    if session is not None:
        conf = check("function", lambda: _check_function(cfg))
    if conf is not None:
        check("python version", lambda: _check_python(conf, on))
        check("runtime", lambda: _check_runtime(conf, cfg))
        check("async retries", lambda: _check_async_retries(cfg))
    return checks


def default_function_name(cfg: Any) -> str:
    """The function that calls with the configured default settings run on."""
    return _default_settings(cfg)[0].function_name(cfg.function_name)


def _default_settings(cfg: Any) -> tuple[FunctionSettings, str | None]:
    """The configured default settings set, and the runtime directory it names (if any)."""
    runtime = getattr(cfg, "runtime", None)
    runtime = str(runtime) if runtime and Path(str(runtime)).is_dir() else None
    settings = FunctionSettings.for_call(cfg.memory, cfg.timeout, cfg.ephemeral_storage,
                                         getattr(cfg, "architecture", None) or "x86_64", runtime)
    return settings, runtime


#: what the credentials row says when STS cannot be asked beside endpoints of the user's own
FIX_STS = ("set AWS_ENDPOINT_URL_STS to the STS of your endpoints (the rows below use the credentials on "
           "s3_endpoint_url and lambda_endpoint_url)")


def _check_credentials(cfg: Any) -> Outcome:
    """Who the credentials are (STS GetCallerIdentity). With s3_endpoint_url or
    lambda_endpoint_url set (MinIO, an emulator) and no STS endpoint of the user's,
    STS is AWS's, which such credentials may not reach or know: then a failure is a
    warning naming AWS_ENDPOINT_URL_STS, asked once, and the other checks still run
    (the row failed, after botocore's retries, and the function rows were left out)."""
    session = clients.session(cfg)  # no region or no credentials: the one-line error naming the fix
    clients.check_endpoint(None, "sts", getattr(cfg, "aws_profile", None))  # (a bad one: named, not botocore's ValueError)
    own = [name for name in ("s3_endpoint_url", "lambda_endpoint_url") if getattr(cfg, name, None)]
    if not own or clients.custom_endpoint(None, "sts", getattr(cfg, "aws_profile", None)):
        ident = session.client("sts").get_caller_identity()
        return True, f"{ident['Arn']} in {session.region_name}", session
    from botocore.config import Config

    try:
        once = Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 1})
        ident = session.client("sts", config=once).get_caller_identity()
    except Exception as exc:  # noqa: BLE001 - reported in the row
        why = clients.error_code(exc) or type(exc).__name__
        return None, (f"not checked: AWS's STS did not answer GetCallerIdentity ({why}) and {' and '.join(own)} "
                      f"{'is' if len(own) == 1 else 'are'} set; {FIX_STS}"), session
    return True, f"{ident['Arn']} in {session.region_name}", session


def _check_storage(cfg: Any) -> Outcome:
    """The store is on S3 (the only one Lambda's workers reach) and takes a write, a read
    and a delete. A storage elsewhere fails here before it is opened: opening a local one made its
    folder (and the probe left a doctor/ folder in it), while the other rows said all was well."""
    shown = clients.non_s3_storage(getattr(cfg, "storage", None), default_storage())
    if shown is not None:
        return False, (f"storage is {shown}, not on S3: Lambda's workers cannot reach it, so every call would fail; "
                       f"{clients.SET_S3_STORAGE}"), None
    store = store_for_config(cfg)  # (on S3, a region AWS does not have: refused there, in one line)
    key = "doctor/probe"
    store.put(key, b"ok")
    ok = store.get(key) == b"ok"
    store.delete(key)
    return ok, f"{store.url}: write, read, delete work", None


def _check_conditional_writes(cfg: Any) -> Outcome:
    """Two conditional writes of one key: the second must be refused (412), or
    a call Lambda delivers twice could overwrite its first result."""
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


def _check_function(cfg: Any) -> Outcome:
    name = default_function_name(cfg)
    lam = clients.lambda_client(cfg)
    try:
        conf = lam.get_function_configuration(FunctionName=name)
    except Exception as exc:
        if clients.error_code(exc) == "ResourceNotFoundException":
            settings, runtime = _default_settings(cfg)
            hint, _ = missing_function_help(lam, settings, cfg.function_name, runtime, _where(cfg, lam))
            raise WrenpackError(f"function {name!r} for the default settings (memory={cfg.memory}, timeout={cfg.timeout:g}, "
                                f"ephemeral_storage={cfg.ephemeral_storage}) not found; {hint}") from None
        raise
    described = f"{conf['FunctionName']}: {conf.get('MemorySize')} MB, {conf.get('Timeout')} s, state {conf.get('State', '?')}"
    stale = protocol_refusal(conf)
    if stale:
        return False, f"{described}; {stale}: redeploy it with this wrenpack (`wrenpack deploy`)", conf
    why = store_refusal(conf, clients.store_url(cfg))
    if why:
        # (returned: the checks that read the function's configuration still run)
        return False, (f"{described}; {why}: set storage inside it, or deploy functions for this store under "
                       f"another function_name (`wrenpack deploy --function-name NAME --storage {clients.store_url(cfg)}`)"), conf
    return True, described, conf


def _where(cfg: Any, lam: Any) -> dict[str, str | None]:
    """The settings a printed `wrenpack deploy` command must carry to run as printed."""
    return {"region": lam.meta.region_name, "storage": clients.store_url(cfg), "profile": getattr(cfg, "aws_profile", None),
            "lambda_endpoint_url": getattr(cfg, "lambda_endpoint_url", None),
            "s3_endpoint_url": getattr(cfg, "s3_endpoint_url", None)}


def _check_python(conf: dict[str, Any], on: date | None = None) -> Outcome:
    """The function's Python is the client's, and (a zip package) its runtime's state in Lambda's life cycle."""
    local = f"python{LOCAL_PYTHON}"
    remote = conf.get("Runtime") or (conf.get("Environment", {}).get("Variables", {}).get("WRENPACK_DEPLOYED_PYTHON"))
    if remote and not remote.startswith("python"):
        remote = f"python{remote}"
    if remote != local:
        return False, f"function runs {remote or 'an unknown runtime'} but this client is {local}; cloudpickle needs the same minor version: redeploy with --python", None
    if conf.get("PackageType") == "Image":
        return True, f"{remote} on both sides (container image: no Lambda runtime dates apply)", None
    row = runtimes.find(remote)
    if row is None:
        return None, f"{remote} on both sides; Lambda's runtime table (as of {runtimes.table_date()}) has no {remote}", None
    state = row.state(on)
    if state == runtimes.SUPPORTED:
        return True, f"{remote} on both sides; {row.describe(on)}", None
    return None, f"{remote} on both sides; {row.describe(on)}: {runtimes.ways_out(row.python, on)}", None


def _check_runtime(conf: dict[str, Any], cfg: Any = None) -> Outcome:
    """The runtime the function has, and the AWS SDK its worker runs (one probe invocation)."""
    layers = [layer["Arn"] for layer in conf.get("Layers") or []]
    env = conf.get("Environment", {}).get("Variables", {})
    if conf.get("PackageType") == "Image":
        kind = "container image"
    elif env.get("WRENPACK_RUNTIME_ARCHIVE"):
        kind = f"archive {env['WRENPACK_RUNTIME_ARCHIVE']}"
    elif layers:
        kind = f"layer {layers[0]}"
    else:
        kind = "handler package only (no runtime layer: only the standard library, boto3 and cloudpickle import)"
    if cfg is None:
        return True, kind, None
    try:
        doc = probe.probe(clients.lambda_client(cfg), conf["FunctionName"]).doc
    except WrenpackError as exc:
        # The function exists (checked above); a failing invoke shows on the first call too.
        return True, f"{kind}; the worker's SDK is unknown: {exc}", None
    if doc.get("problem"):
        return False, str(doc["problem"]), None
    return True, f"{kind}; worker: {probe.describe(doc)}", None


def _check_async_retries(cfg: Any) -> Outcome:
    """Lambda neither retries an Event call (wrenpack does) nor runs one later than ``MAX_EVENT_AGE_S`` after its send."""
    try:
        conf = clients.lambda_client(cfg).get_function_event_invoke_config(FunctionName=default_function_name(cfg))
    except Exception as exc:
        if clients.error_code(exc) == "ResourceNotFoundException":
            return False, ("async MaximumRetryAttempts is Lambda's default 2 and MaximumEventAgeInSeconds its default "
                           "21600: duplicates cost money and a call given up on can run hours later; re-run `wrenpack deploy`"), None
        raise
    n, age = conf.get("MaximumRetryAttempts"), conf.get("MaximumEventAgeInSeconds")
    ok = n == 0 and age is not None and age <= MAX_EVENT_AGE_S
    fix = "" if ok else f"; re-run `wrenpack deploy` to set 0 and at most {MAX_EVENT_AGE_S}"
    return ok, f"MaximumRetryAttempts={n}, MaximumEventAgeInSeconds={age}{fix}", None
