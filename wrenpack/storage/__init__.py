"""Object stores: one interface (``Store``), one module per implementation.

``open_store`` turns a spec (the dict a store's ``spec`` returns, sent inside
each event) or a URL (``file:///path``, a plain path, ``s3://bucket/prefix``)
into a store. A store type is one module with a ``Store`` subclass that has
``from_spec(spec)``, and one line in ``_STORES``; its module (boto3, for S3)
is imported only when a spec of its type is opened.
"""
from __future__ import annotations

import os
import re
from typing import Any

from wrenpack.errors import ConfigError, ConfigTypeError
from wrenpack.plugins import Registry
from wrenpack.storage.base import Store

__all__ = ["Store", "open_store", "register_store", "store_for_config", "store_location_problem"]

#: a spec's "type" -> "module:Class"
_STORES: Registry[Store] = Registry("store type", {
    "local": "wrenpack.storage.local:LocalStore",
    "s3": "wrenpack.storage.s3:S3Store",
}, hint="use a path, file:///path or s3://bucket/prefix")


def register_store(kind: str, target: str | type[Store]) -> None:
    """Open specs of ``{"type": kind}`` with ``target`` (or its "module:Class")."""
    _STORES.register(kind, target)


def open_store(spec: dict[str, Any] | str) -> Store:
    if isinstance(spec, str):
        spec = parse_store_url(spec)
    return _STORES.load(spec.get("type")).from_spec(spec)


def store_for_config(config: Any) -> Store:
    """The store ``config.storage`` names, with the AWS settings of ``config``
    (``aws_region``, ``aws_profile``, ``s3_endpoint_url``) applied to an S3 store.
    Client side: the worker gets the resulting ``spec`` (never the profile)."""
    storage = getattr(config, "storage", None)
    if isinstance(storage, Store):
        return storage
    if not storage:
        raise ConfigError("no storage configured; set storage= to a path or s3://BUCKET/PREFIX")
    if not isinstance(storage, (str, dict)):
        raise ConfigTypeError(f"storage={storage!r} must be a path, file:///path or s3://bucket/prefix, or a Store")
    spec = parse_store_url(storage) if isinstance(storage, str) else dict(storage)
    if spec.get("type") != "s3":
        return open_store(spec)
    from wrenpack.backends.aws import clients
    from wrenpack.storage.s3 import S3Store

    region, profile = getattr(config, "aws_region", None), getattr(config, "aws_profile", None)
    endpoint_url = getattr(config, "s3_endpoint_url", None)
    # A mistyped region names a host that does not exist: said now, in one line, before the
    # store's first request spends botocore's retries on it (~40 s, then "check the network").
    clients.check_region(clients.configured_region(region, profile), (endpoint_url, "s3"), profile=profile)
    return S3Store.from_spec(spec, region=region, endpoint_url=endpoint_url, profile=profile)


#: an S3 bucket name: 3 to 63 lowercase letters, digits, '.' and '-' today; buckets made
#: in us-east-1 before 2018 may have up to 255 with capitals and '_', so those pass too
_BUCKET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{1,253}[A-Za-z0-9]")


def parse_store_url(url: str) -> dict[str, Any]:
    """The spec of a store URL or path. What would name another place than the
    user meant (an empty path: the working directory; ``~user`` for no such
    user: a folder named so; a bucket name S3 refuses) is a ``ConfigError``."""
    if not isinstance(url, str):
        raise ConfigTypeError(f"a store URL must be text (a path, file:///path or s3://bucket/prefix), got {type(url).__name__}")
    if url.startswith("s3://"):
        bucket, _, prefix = url[5:].partition("/")
        if not bucket:
            raise ConfigError(f"store URL {url!r} names no bucket; use s3://BUCKET/PREFIX")
        if not _BUCKET.fullmatch(bucket) or ".." in bucket:
            raise ConfigError(f"store URL {url!r}: {bucket!r} is not an S3 bucket name (3 to 63 lowercase letters, "
                              "digits, '.' and '-', beginning and ending with a letter or digit); fix the bucket name")
        return {"type": "s3", "bucket": bucket, "prefix": prefix.strip("/")}
    path = url
    if url.startswith("file://"):
        path = url[7:]
        if path.startswith("localhost/"):
            path = path[len("localhost"):]
        if not path.startswith("/"):
            raise ConfigError(f"store URL {url!r} names no absolute path (a file URL has three slashes: "
                              "file:///tmp/store); use file:///ABSOLUTE/PATH or a plain path")
    if "://" in path:
        raise ConfigError(f"unsupported store URL {url!r}; use a path, file:///path or s3://bucket/prefix")
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]+):/", path)
    if scheme:  # ("s3:/bkt/x" was a local folder named "s3:", in the working directory)
        raise ConfigError(f"store {url!r} looks like a URL with one slash after '{scheme.group(1)}:'; write "
                          f"{scheme.group(1)}://... (s3://bucket/prefix, file:///path), or ./{path} for a folder of that name")
    if not path.strip():
        raise ConfigError("the store path is empty; use a path (e.g. /tmp/wrenpack-store), file:///path or s3://bucket/prefix")
    expanded = os.path.expanduser(path)
    if expanded.startswith("~"):
        user = expanded.split("/", 1)[0]
        raise ConfigError(f"store path {url!r}: {user} cannot be expanded (no such user, or no home directory); "
                          "use an absolute path")
    return {"type": "local", "root": os.path.abspath(expanded)}


def store_location_problem(url: str) -> str | None:
    """What is wrong with ``url`` as the store's location (the ``storage`` setting), on
    top of what ``parse_store_url`` refuses; None if nothing. One clause that names
    the fix. ``parse_store_url`` itself stays lenient: ``wrenpack.objects`` reads the
    user's own data through it, whose keys may be anything.

    Refused: spaces around the URL or path (a quoting slip), and an S3 prefix that is
    not folder names: '..' or '.' segments (S3 has no parent folder: "s3://b/../x"
    was the prefix "../x"), an empty one ("s3://b//x", a leading or a doubled '/'), or a
    character that cannot be typed or seen (a control character, a line break, a
    zero-width one). Any other character S3 keys hold is the user's choice, as it was
    (a store made under "s3://b/team:ml" or "s3://b/my data" stays reachable);
    ``wrenpack iam-policy`` writes '*', '?' and '$' as IAM's literal forms. Trailing
    '/' mean the same folder ("s3://b/x/" is "s3://b/x"), as before."""
    if url != url.strip() and url.strip():
        return f"it has spaces around it (a quoting slip?); remove them: {url.strip()!r}"
    if not url.startswith("s3://"):
        return None
    bucket, _, prefix = url[5:].partition("/")
    prefix = prefix.rstrip("/")
    if not prefix:
        return None
    parts = prefix.split("/")
    names = [p for p in parts if p not in ("", ".", "..")]
    fix = f"name the folder inside the bucket, e.g. s3://{bucket}/{'/'.join(names) if names else 'wrenpack'}"
    if ".." in parts:
        return f"the prefix may not contain '..' segments (S3 has no parent folder: '..' would be part of every key); {fix}"
    if "." in parts:
        return f"the prefix may not contain '.' segments ('.' would be part of every key); {fix}"
    if "" in parts:
        where = "begin with '/'" if parts[0] == "" else "contain '//'"
        return f"the prefix may not {where} (an empty folder name: S3 keeps it as part of every key); {fix}"
    for ch in prefix:
        if not ch.isprintable() and ch != " ":
            shown = {"\t": "a tab", "\n": "a line break", "\r": "a carriage return"}.get(ch, f"the character {ascii(ch)}")
            return f"the prefix holds {shown}, which cannot be seen or typed in a key; remove it"
    return None
