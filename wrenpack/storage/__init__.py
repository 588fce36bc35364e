"""Object stores: one interface (``Store``), one module per implementation.

``open_store`` turns a spec (the dict a store's ``spec`` returns, sent inside
each event) or a URL (``file:///path``, a plain path, ``s3://bucket/prefix``)
into a store. A store type is one module with a ``Store`` subclass that has
``from_spec(spec)``, and one line in ``_STORES``; its module (boto3, for S3)
is imported only when a spec of its type is opened.
"""
from __future__ import annotations

from typing import Any

from wrenpack.errors import ConfigError
from wrenpack.plugins import Registry
from wrenpack.storage.base import Store

__all__ = ["Store", "open_store", "register_store", "store_for_config"]

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
    spec = parse_store_url(storage) if isinstance(storage, str) else dict(storage)
    if spec.get("type") != "s3":
        return open_store(spec)
    from wrenpack.storage.s3 import S3Store

    return S3Store.from_spec(
        spec,
        region=getattr(config, "aws_region", None),
        endpoint_url=getattr(config, "s3_endpoint_url", None),
        profile=getattr(config, "aws_profile", None),
    )


def parse_store_url(url: str) -> dict[str, Any]:
    if url.startswith("s3://"):
        bucket, _, prefix = url[5:].partition("/")
        if not bucket:
            raise ConfigError(f"store URL {url!r} names no bucket; use s3://BUCKET/PREFIX")
        return {"type": "s3", "bucket": bucket, "prefix": prefix.strip("/")}
    if url.startswith("file://"):
        url = url[7:]
    if "://" in url:
        raise ConfigError(f"unsupported store URL {url!r}; use a path, file:///path or s3://bucket/prefix")
    import os

    return {"type": "local", "root": os.path.abspath(os.path.expanduser(url))}
