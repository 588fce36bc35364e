"""AWS sessions and clients, and the S3 location, read from wrenpack's settings.

Deploy, doctor and the IAM policies all start from a settings object
(``wrenpack.config.Config``, or anything with the same attributes): reading
its profile, region, endpoints and ``storage`` here means each of them reads
them one way and fails with the same one-line error.
"""
from __future__ import annotations

import difflib
import functools
import os
import re
from functools import lru_cache
from typing import Any

from wrenpack.errors import ConfigError, WrenpackError


#: what to do when boto3 finds no region or no credentials (the same words everywhere)
NO_REGION = ("no AWS region is set; pass --region REGION, or set aws_region (WRENPACK_AWS_REGION, [tool.wrenpack]) "
             "or AWS_DEFAULT_REGION, or give the profile a region (aws configure)")
FIX_CREDENTIALS = "set AWS_PROFILE (or aws_profile, --profile) or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or run `aws configure`"
NO_CREDENTIALS = f"no AWS credentials found; {FIX_CREDENTIALS}"


#: TCP keepalive of a RequestResponse connection: the first probe after this many
#: idle seconds, then every KEEPALIVE_INTERVAL_S, given up after KEEPALIVE_PROBES
#: unanswered. Well under the idle timeouts of NAT gateways and load balancers
#: (350 s), so a connection that waits minutes for a call's reply is not dropped;
#: the kernel's default first probe comes after 2 hours.
KEEPALIVE_IDLE_S = 60
KEEPALIVE_INTERVAL_S = 15
KEEPALIVE_PROBES = 4


#: what to set when the region is not one AWS has (the same words everywhere)
FIX_REGION = ("set --region, aws_region (WRENPACK_AWS_REGION, [tool.wrenpack]) or AWS_DEFAULT_REGION to the region "
              "of your bucket and functions, e.g. us-east-1")


@lru_cache(maxsize=1)
def known_regions() -> tuple[str, tuple[str, ...]]:
    """(botocore's version, every region of every partition where botocore knows Lambda)."""
    import botocore
    import botocore.session

    made = botocore.session.Session()
    found: set[str] = set()
    for partition in made.get_available_partitions():
        found.update(made.get_available_regions("lambda", partition_name=partition))
    return botocore.__version__, tuple(sorted(found))


def configured_region(region: str | None, profile: str | None = None) -> str | None:
    """The region boto3 will use: ``region``, else AWS_REGION/AWS_DEFAULT_REGION, else the
    profile's in ~/.aws/config (None when none is set or the profile cannot be read: the
    client's own error says that later)."""
    found = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if found:
        return found
    try:
        import boto3

        return boto3.session.Session(profile_name=profile).region_name
    except Exception:  # noqa: BLE001 - a missing profile: reported by the session that needs it
        return None


def custom_endpoint(endpoint_url: str | None, service: str, profile: str | None = None) -> bool:
    """Whether ``service``'s requests go to an endpoint of the user's (an emulator, MinIO, ...), not AWS's."""
    return bool(endpoint_url or _configured_endpoint(service, profile)[1])


def _configured_endpoint(service: str, profile: str | None = None) -> tuple[str | None, str | None]:
    """(where it is set, its URL) of the endpoint boto3 takes for ``service`` when wrenpack
    gives it none: AWS_ENDPOINT_URL_<SERVICE>, else AWS_ENDPOINT_URL, else the shared config's
    (``profile``'s ``endpoint_url``, or its ``services`` section's); none at all when
    AWS_IGNORE_CONFIGURED_ENDPOINT_URLS is true (boto3 then skips them)."""
    if os.environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").strip().lower() == "true":
        return None, None
    for name in (f"AWS_ENDPOINT_URL_{service.upper()}", "AWS_ENDPOINT_URL"):
        if os.environ.get(name):
            return name, os.environ[name]
    url = _config_endpoint(service, profile or os.environ.get("AWS_PROFILE") or "default", _config_stamp())
    where = f"the endpoint_url for {service} of profile {profile or os.environ.get('AWS_PROFILE') or 'default'} in the AWS config"
    return (where, url) if url else (None, None)


def _config_stamp() -> tuple[str, float]:
    """The AWS config file boto3 reads, and when it last changed (``_config_endpoint``'s cache key)."""
    path = os.path.expanduser(os.environ.get("AWS_CONFIG_FILE") or "~/.aws/config")
    try:
        return path, os.stat(path).st_mtime
    except OSError:
        return path, -1.0


@functools.lru_cache(maxsize=64)
def _config_endpoint(service: str, profile: str, stamp: tuple[str, float]) -> str | None:
    """The endpoint ``profile``'s shared config gives ``service`` (its ``endpoint_url``, or its
    ``services`` section's), as botocore reads it; read once per config file version (a
    botocore session reads the files: ~8 ms)."""
    if stamp[1] < 0:
        return None
    try:
        import botocore.session
        from botocore.configprovider import ConfiguredEndpointProvider

        config = botocore.session.Session(profile=profile)
        if config.get_config_variable("ignore_configured_endpoint_urls"):
            return None
        return ConfiguredEndpointProvider(full_config=config.full_config, scoped_config=config.get_scoped_config(),
                                          client_name=service, environ={}).provide() or None
    except Exception:  # noqa: BLE001 - no such profile, an unreadable config: its session says so
        return None


def check_region(region: str | None, *endpoints: tuple[str | None, str], profile: str | None = None) -> None:
    """Refuse a region AWS does not have, in one line naming the fix, before any request.

    boto3 builds the host name from the region, so a mistyped one (an
    availability zone ``us-east-1a``, ``US-EAST-1``, ``eu-wset-1``) is a host
    that does not exist: every request then fails after botocore's retries
    (about 40 s) with "Could not connect to the endpoint URL ... check the
    network", which names the wrong fix. ``endpoints``: (endpoint URL,
    service) of the clients the region serves; when every one is the user's
    own (an emulator, an S3-compatible store), any region name is theirs to
    choose, and only the form botocore takes is checked.

    Each endpoint URL is checked too: botocore refuses one it cannot use
    (``not a url``, ``localhost:4566``) and a region that is no host name
    (`` us-east-1``) only when a client is made, with a ``ValueError`` or
    ``InvalidRegionError`` traceback. ``profile``: the AWS profile whose shared config
    may set endpoints (``endpoint_url``, ``services``), as boto3 reads it."""
    for url, service in endpoints:
        check_endpoint(url, service, profile)
    if not region:
        return
    if endpoints and all(custom_endpoint(url, service, profile) for url, service in endpoints):
        _check_region_name(region)
        return
    version, known = known_regions()
    if region in known or not known:
        return
    zone = re.fullmatch(r"(.+-\d+)[a-z]", region)
    tidy = region.strip().lower().replace("_", "-")
    if zone and zone.group(1) in known:
        why = f"it names an availability zone of {zone.group(1)}: use {zone.group(1)}"
    elif tidy in known:
        why = f"regions are written {tidy}"
    else:
        close = difflib.get_close_matches(region.lower(), known, n=1)
        why = (f"did you mean {close[0]}? " if close else "") + \
              f"if AWS opened it after botocore {version}, upgrade boto3 (pip install -U boto3)"
    raise ConfigError(f"aws_region {region!r} is not an AWS region (botocore {version} knows {len(known)}; {why}); "
                      f"{FIX_REGION}")


def check_configured_region(cfg: Any) -> None:
    """``check_region`` for a command's settings, before any request: the region they name (else
    their profile's), with their Lambda and S3 endpoints (deploy, undeploy, iam-policy)."""
    profile = getattr(cfg, "aws_profile", None)
    check_region(configured_region(getattr(cfg, "aws_region", None), profile),
                 (getattr(cfg, "lambda_endpoint_url", None), "lambda"), (getattr(cfg, "s3_endpoint_url", None), "s3"),
                 profile=profile)


def check_endpoint(endpoint_url: str | None, service: str, profile: str | None = None) -> None:
    """Refuse, in one line naming the setting, an endpoint URL of ``service``
    (``endpoint_url``, else boto3's AWS_ENDPOINT_URL_<SERVICE>, AWS_ENDPOINT_URL or
    ``profile``'s in the shared config) that botocore cannot use: it says so only when a
    client is made, in a traceback."""
    import botocore.utils

    name, url = (f"{service}_endpoint_url", endpoint_url) if endpoint_url else _configured_endpoint(service, profile)
    valid = getattr(botocore.utils, "is_valid_endpoint_url", None), getattr(botocore.utils, "is_valid_ipv6_endpoint_url", None)
    if not url or None in valid or any(check(url) for check in valid):  # (a botocore without them: not checked)
        return
    raise ConfigError(f"{name} {url!r} is not an endpoint URL botocore can use (a scheme and a host, e.g. "
                      f"http://localhost:4566); fix it, or leave it unset for AWS's own endpoint")


def _check_region_name(region: str) -> None:
    """Refuse a region that cannot be part of a host name (botocore's InvalidRegionError, a traceback
    when a client is made), whatever the endpoints: `` us-east-1``, ``us_east_1``."""
    import botocore.utils

    validate = getattr(botocore.utils, "validate_region_name", None)
    try:
        if validate is not None:
            validate(region)
    except Exception:  # noqa: BLE001 - botocore.exceptions.InvalidRegionError
        tidy = region.strip().lower().replace("_", "-")
        hint = f"; did you mean {tidy}?" if tidy != region and re.fullmatch(r"[a-z0-9-]+", tidy) else ""
        raise ConfigError(f"aws_region {region!r} is not a region name (botocore takes letters, digits and '-' "
                          f"only{hint}); {FIX_REGION}") from None


def session(cfg: Any, checked: bool = True) -> Any:
    """A boto3 session for the configured profile and region; ``checked``: one
    with a region and credentials, else the one-line error naming the fix
    (boto3 would raise NoRegionError or NoCredentialsError deep inside a request)."""
    import boto3  # heavy: loaded only when AWS is actually used

    profile = getattr(cfg, "aws_profile", None)
    try:
        made = boto3.session.Session(profile_name=profile, region_name=getattr(cfg, "aws_region", None))
    except Exception as exc:
        raise ConfigError(f"cannot open AWS profile {profile!r}: {exc}; fix aws_profile") from None
    if not checked:
        return made
    check_region(made.region_name, (getattr(cfg, "lambda_endpoint_url", None), "lambda"),
                 (getattr(cfg, "s3_endpoint_url", None), "s3"), profile=profile)
    return checked_session(made, profile)


def checked_session(made: Any, profile: str | None = None) -> Any:
    """``made`` if it has a region and credentials, else the one-line error naming the fix."""
    if not made.region_name:
        raise ConfigError(NO_REGION)
    try:
        creds = made.get_credentials()
    except Exception as exc:  # a broken profile or credential process
        raise ConfigError(f"cannot read AWS credentials{f' of profile {profile!r}' if profile else ''}: "
                          f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; {FIX_CREDENTIALS}") from None
    if creds is None:
        raise ConfigError(NO_CREDENTIALS)
    return made


def lambda_client(cfg: Any) -> Any:
    return session(cfg).client("lambda", endpoint_url=getattr(cfg, "lambda_endpoint_url", None))


def s3_client(cfg: Any) -> Any:
    return session(cfg).client("s3", endpoint_url=cfg.s3_endpoint_url)


def bucket_prefix(cfg: Any) -> tuple[str, str]:
    """``storage`` as (bucket, prefix without slashes); anything but s3:// is refused."""
    storage = str(getattr(cfg, "storage", "") or "")
    if not storage.startswith("s3://"):
        raise ConfigError(f"storage is {storage!r}, not an S3 location; set storage='s3://BUCKET/PREFIX' (or --storage)")
    bucket, _, prefix = storage[5:].partition("/")
    return bucket, prefix.strip("/")


def store_url(cfg: Any) -> str | None:
    """``s3://BUCKET/PREFIX`` of the configured store, None when it is not on S3."""
    storage = str(getattr(cfg, "storage", "") or "")
    if not storage.startswith("s3://"):
        return None
    bucket, prefix = bucket_prefix(cfg)
    return f"s3://{bucket}/{prefix}".rstrip("/")


#: what every refusal of a storage that is not on S3 ends with
SET_S3_STORAGE = "set storage='s3://BUCKET/PREFIX' (or WRENPACK_STORAGE, --storage)"


def non_s3_storage(storage: Any, default: str | None = None) -> str | None:
    """``storage`` (the setting: a URL or path, a spec, a ``Store``) as a message names it,
    when it is not on S3; None when it is. Lambda's workers, and the functions deploy
    makes, reach no other store: the worker opens the event's store from its spec and
    a deployed function serves one S3 location (``WRENPACK_STORE_URL``). The setting's
    default is a folder on this machine whatever the backend, so it is said when it is
    the default (``WRENPACK_BACKEND=lambda`` alone names it): ``default``, the
    caller's ``wrenpack.config.default_storage()`` (not imported here: the config
    module's store opener imports this module)."""
    if isinstance(storage, str):
        if storage.startswith("s3://"):
            return None
        return f"{storage!r}" + (" (the default, a folder on this machine)" if storage == default else "")
    if isinstance(storage, dict):
        kind, shown = storage.get("type"), f"{storage!r:.200}"
    else:
        try:
            kind = storage.spec.get("type")
        except Exception:  # noqa: BLE001 - no spec: not a store the workers could open
            kind = None
        shown = str(getattr(storage, "url", None) or type(storage).__name__)
    return None if kind == "s3" else shown


def error_code(exc: BaseException) -> str | None:
    """The AWS error code of a botocore ClientError (None for other errors)."""
    return getattr(exc, "response", {}).get("Error", {}).get("Code") if hasattr(exc, "response") else None


def aws_error(exc: Exception, doing: str) -> WrenpackError:
    """One line for a failed AWS request: what was being done, the error code, its first line."""
    return WrenpackError(f"{doing} failed: {error_code(exc) or type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")


def keepalive_probes(client: Any) -> bool:
    """Make the connections ``client`` opens from now on send TCP keepalive
    probes after KEEPALIVE_IDLE_S idle seconds (botocore's ``tcp_keepalive``
    turns keepalive on, but leaves the kernel's 2-hour first probe). botocore
    has no setting for the timing, so its session's socket options are
    extended; True when they took (its pools then open sockets with them)."""
    import socket

    tuning = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (("TCP_KEEPIDLE", KEEPALIVE_IDLE_S), ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_S),
                        ("TCP_KEEPCNT", KEEPALIVE_PROBES)):
        if hasattr(socket, name):
            tuning.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    if len(tuning) < 2:
        return False  # no way to shorten the first probe here
    session = getattr(getattr(client, "_endpoint", None), "http_session", None)
    manager = getattr(session, "_manager", None)
    pool_kw = getattr(manager, "connection_pool_kw", None)
    options = getattr(session, "_socket_options", None)
    if not isinstance(pool_kw, dict) or not isinstance(options, list):
        return False
    merged = [o for o in options if (o[0], o[1]) not in {(t[0], t[1]) for t in tuning}] + tuning
    session._socket_options = merged  # proxies' pools, made later
    pool_kw["socket_options"] = merged
    return True
