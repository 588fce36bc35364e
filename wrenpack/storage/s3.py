"""Object store on Amazon S3 (or any S3-compatible server), through boto3.

Keys live under ``s3://<bucket>/<prefix>/``. S3 makes every PUT atomic, so
readers never see half an object. ``put(if_absent=True)`` is a conditional
PUT (``If-None-Match: *``): S3 answers 412 when the key exists, which is how
the first complete result wins when Lambda delivers an event twice. For
servers that do not support conditional writes, set
``"conditional_writes": false`` in the spec; ``if_absent`` then degrades to a
best-effort HEAD-then-PUT (a race between two writers can let the second
overwrite the first; both write the same call's result, so only timing
metadata can differ). Objects from 64 MB go up as a multipart upload whose
completion carries the same condition, so first-write-wins holds for large
results too (``wrenpack doctor`` warns when a server ignores the condition).

Credentials come from boto3's normal chain (environment, profile, instance or
Lambda role) and are never part of ``spec``: the spec travels inside every
event. Worker side: standard library and boto3 only.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
import threading
import time
import weakref
from typing import Any, Iterable

from wrenpack.errors import ConfigError, ObjectNotFound, StoreError
from wrenpack.storage.base import MAX_KEY_BYTES, Reader, Store, changed, key_bytes, shown

log = logging.getLogger(__name__)

#: Objects larger than this go up as multipart uploads.
MULTIPART_THRESHOLD = 64 * 1024 * 1024
MULTIPART_CHUNK = 16 * 1024 * 1024
#: S3's largest single PUT.
SINGLE_PUT_LIMIT = 5 * 1024**3
#: S3's DeleteObjects takes at most 1,000 keys per request.
DELETE_BATCH = 1000

_CLIENT_LOCK = threading.Lock()


#: every S3 store of this process (``_forked``)
_stores: "weakref.WeakSet[S3Store]" = weakref.WeakSet()


def _forked() -> None:
    """A fork of the process makes its own clients: a boto3 client is not fork-safe (its
    connections, their sockets, were the parent's: both would read the same replies)."""
    global _CLIENT_LOCK
    _CLIENT_LOCK = threading.Lock()  # (a thread of the parent may have held it)
    for store in list(_stores):
        store._client = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
#: set while a PutObject of a too old botocore must carry If-None-Match by hand (``_add_if_none_match``)
_HEADER = threading.local()
#: where a job's objects live (``wrenpack.keys``; not imported: this module is the store's alone)
_JOBS = "jobs/"


class _KnownKeys:
    """The keys of each job that this process wrote or read, by store location
    and job: a job's cleanup deletes them directly, and its listing (which it
    still makes, for what others wrote: start marks, segment records, results
    nobody read) then returns only what is left, usually nothing. Listing a
    100,000-call job first cost its driver 100 LIST pages of 1,000 parsed
    entries. Only stores whose location a driver registers (``remember_job_keys``)
    record anything: a worker's store writes keys it never deletes."""

    #: the most keys held in all (~70 bytes each: a 100,000-call job's results are ~7 MB);
    #: beyond, keys are no longer recorded (a cleanup then lists more). Jobs kept with
    #: ``keep_objects`` are never deleted by their driver: their keys stay until this fills.
    LIMIT = 300_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._on: set[tuple[str | None, str, str]] = set()
        self._keys: dict[tuple[str | None, str, str, str], list[str]] = {}
        self._count = 0

    def enable(self, where: tuple[str | None, str, str]) -> None:
        with self._lock:
            self._on.add(where)

    def add(self, where: tuple[str | None, str, str], key: str) -> None:
        if where not in self._on or not key.startswith(_JOBS):
            return
        job, _, rest = key[len(_JOBS):].partition("/")
        with self._lock:
            if self._count >= self.LIMIT:
                return
            self._keys.setdefault((*where, job), []).append(rest)  # (below the job's prefix)
            self._count += 1

    def take(self, where: tuple[str | None, str, str], prefix: str) -> list[str]:
        """The recorded keys under ``prefix``, forgotten (a cleanup deletes them)."""
        if where not in self._on:
            return []
        out: list[str] = []
        with self._lock:
            for entry in [e for e in self._keys if e[:3] == where]:
                job_prefix = f"{_JOBS}{entry[3]}/"
                if job_prefix.startswith(prefix):
                    keys = [job_prefix + k for k in self._keys.pop(entry)]
                elif prefix.startswith(job_prefix):
                    below = prefix[len(job_prefix):]
                    keys = [job_prefix + k for k in self._keys[entry] if k.startswith(below)]
                    self._keys[entry] = [k for k in self._keys[entry] if not k.startswith(below)]
                else:
                    continue
                self._count -= len(keys)
                out.extend(keys)
        return sorted(set(out))


_KNOWN = _KnownKeys()


class S3Store(Store):
    """A ``Store`` on one bucket and key prefix."""

    #: Keys per LIST page and per DeleteObjects request (S3's maximum: 1,000).
    list_page_size = 1000
    #: Conditional writes up to this size are one PUT; larger ones a conditional multipart upload.
    single_put_limit = SINGLE_PUT_LIMIT
    delete_batch = DELETE_BATCH

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        profile: str | None = None,
        conditional_writes: bool = True,
        max_attempts: int = 10,
        multipart_threshold: int = MULTIPART_THRESHOLD,
    ) -> None:
        if not bucket:
            raise ConfigError("S3 store needs a bucket; use storage='s3://BUCKET/PREFIX'")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        # Endpoint and region may come from boto3's environment variables; pin
        # them here so the spec sent to workers names the same place.
        self.endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
        self.region = region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None
        self.profile = profile  # client side only: never in the spec
        self.conditional_writes = conditional_writes
        self.max_attempts = max_attempts
        self.multipart_threshold = multipart_threshold
        self._client: Any = None
        _stores.add(self)
        #: the client's botocore predates PutObject's IfNoneMatch (1.35.2): the header goes by hand
        self._legacy_if_none_match = False

    # -- construction -----------------------------------------------------
    @classmethod
    def from_spec(cls, spec: dict[str, Any], **overrides: Any) -> "S3Store":
        kwargs: dict[str, Any] = {
            "region": spec.get("region"),
            "endpoint_url": spec.get("endpoint_url"),
            "profile": spec.get("profile"),
            "conditional_writes": spec.get("conditional_writes", True),
        }
        kwargs.update({k: v for k, v in overrides.items() if v is not None})
        return cls(spec["bucket"], spec.get("prefix", ""), **kwargs)

    @property
    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"type": "s3", "bucket": self.bucket, "prefix": self.prefix}
        if self.region:
            spec["region"] = self.region
        if self.endpoint_url:
            spec["endpoint_url"] = self.endpoint_url
        if not self.conditional_writes:
            spec["conditional_writes"] = False
        return spec

    @property
    def url(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"s3://{self.bucket}/{self.prefix}{where}"

    @property
    def client(self) -> Any:
        """The boto3 S3 client, made on first use (boto3 clients are thread-safe; not
        fork-safe: a fork of the process makes its own, ``_forked``)."""
        if self._client is not None:
            return self._client
        with _CLIENT_LOCK:  # threads racing here would each build a client (~0.3 s)
            if self._client is None:
                self._client = self._make_client()
        return self._client

    def _make_client(self) -> Any:
        import boto3
        from botocore.config import Config

        from wrenpack import redact

        redact.install()  # botocore's debug logs would show the key id, token and request bodies

        try:
            session = _fast_timestamps(boto3.session.Session(profile_name=self.profile, region_name=self.region))
        except Exception as exc:  # botocore.exceptions.ProfileNotFound
            raise ConfigError(f"AWS profile {self.profile!r} not found ({exc}); fix aws_profile or ~/.aws/config") from None
        cfg = Config(
            retries={"mode": "adaptive", "max_attempts": self.max_attempts},
            max_pool_connections=64,
            connect_timeout=10,
            read_timeout=60,
            # Custom endpoints (MinIO, moto, rclone) rarely do virtual-host buckets.
            s3={"addressing_style": "path"} if self.endpoint_url else None,
            # Some S3-compatible servers (rclone) send the whole object's checksum on a
            # ranged read, which botocore (from 1.36) then rejects; AWS sends none there.
            # Checking only when asked changes nothing on AWS; what wrenpack unpickles is
            # sealed. An older botocore checks nothing unasked and has no such option.
            **({"response_checksum_validation": "when_required"}
               if self.endpoint_url and "response_checksum_validation" in Config.OPTION_DEFAULTS else {}),
        )
        client = session.client("s3", endpoint_url=self.endpoint_url, config=cfg)
        if "IfNoneMatch" not in client.meta.service_model.operation_model("PutObject").input_shape.members:
            # A botocore before 1.35.2 (a Lambda runtime's bundled one): the worker refuses
            # calls on it (wrenpack.worker.sdk), and that refusal, its one result, must still be
            # written first-write-wins and within the worker's IAM policy: the header goes by hand.
            client.meta.events.register("before-call.s3.PutObject", _add_if_none_match)
            self._legacy_if_none_match = True
        return client

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_client"] = None
        return state

    @property
    def _where(self) -> tuple[str | None, str, str]:
        return self.endpoint_url, self.bucket, self.prefix

    def remember_job_keys(self) -> None:
        """Record, in this process, the job keys that stores at this location write
        or read, so that deleting a job's objects need not list them first
        (a driver's backend calls this; a worker's store records nothing)."""
        _KNOWN.enable(self._where)

    def remember_key(self, key: str) -> None:
        """Record ``key`` as one this process read (``remember_job_keys``) when another
        client read it for it (the Lambda backend's sender processes)."""
        _KNOWN.add(self._where, key)

    # -- helpers ------------------------------------------------------------
    def _key(self, key: str) -> str:
        if not key or key.startswith("/"):
            raise StoreError(f"invalid store key {key!r}: keys are relative paths")
        full = f"{self.prefix}/{key}" if self.prefix else key
        if len(full) > MAX_KEY_BYTES // 4 and key_bytes(full) > MAX_KEY_BYTES:  # (said before S3 is asked)
            raise StoreError(f"invalid store key {shown(key)}: with the store's prefix it is {key_bytes(full)} bytes, "
                             f"and S3 keys hold at most {MAX_KEY_BYTES}; shorten it")
        return full

    def _rel(self, full: str) -> str:
        return full[len(self.prefix) + 1 :] if self.prefix else full

    def _error(self, exc: BaseException, action: str, key: str | None = None) -> StoreError:
        """Turn a botocore failure into a one-line StoreError that says what to do."""
        where = f"s3://{self.bucket}/{self._key(key) if key else self.prefix}"
        code = _code(exc)
        if code == "NoSuchBucket":
            return StoreError(f"bucket {self.bucket!r} does not exist; create it (aws s3 mb s3://{self.bucket}) or fix storage")
        if code in ("AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return StoreError(f"access denied to {action} {where} ({code}); check credentials and see `wrenpack iam-policy`")
        name = type(exc).__name__
        if name in ("NoCredentialsError", "PartialCredentialsError"):
            return StoreError("no AWS credentials found; set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or run `aws configure`")
        if name in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError", "ReadTimeoutError"):
            return StoreError(f"cannot reach S3 to {action} {where} ({exc}); check the network and s3_endpoint_url")
        return StoreError(f"S3 failed to {action} {where}: {code or name}: {exc}")

    # -- Store interface ------------------------------------------------------
    def put(self, key: str, data: bytes, *, if_absent: bool = False) -> bool:
        full = self._key(key)
        if if_absent and self.conditional_writes and len(data) <= self.single_put_limit:
            # One conditional PUT, whatever the size (S3 takes up to 5 GB): the
            # transfer manager cannot send If-None-Match, and the worker's IAM
            # policy allows result writes only with it (`wrenpack iam-policy`).
            return self._put_conditional(full, data)
        if len(data) >= self.multipart_threshold:
            if if_absent and not self.conditional_writes and self.exists(key):
                return False
            # Above a single PUT's limit: a multipart upload whose completion is
            # conditional (If-None-Match), so first-write-wins still holds.
            return self._put_multipart(full, data, if_absent=if_absent and self.conditional_writes)
        if if_absent and self.exists(key):
            return False
        try:
            self.client.put_object(Bucket=self.bucket, Key=full, Body=data)
        except Exception as exc:
            raise self._error(exc, "write", key) from None
        _KNOWN.add(self._where, key)
        return True

    def _put_conditional(self, full: str, data: bytes) -> bool:
        # 409 ConditionalRequestConflict: a concurrent conditional write is in
        # flight; S3 asks the client to retry, and the retry then sees 412.
        client = self.client
        condition = {} if self._legacy_if_none_match else {"IfNoneMatch": "*"}
        for attempt in range(6):
            try:
                _HEADER.on = not condition
                try:
                    client.put_object(Bucket=self.bucket, Key=full, Body=data, **condition)
                finally:
                    _HEADER.on = False
                _KNOWN.add(self._where, self._rel(full))
                return True
            except Exception as exc:
                code = _code(exc)
                if code in ("PreconditionFailed", "412"):
                    return False
                if code in ("ConditionalRequestConflict", "409"):
                    time.sleep(min(2.0, 0.05 * 2**attempt) * random.random())
                    continue
                if code in ("NotImplemented", "501"):
                    log.warning("%s does not support conditional writes; falling back to HEAD-then-PUT", self.url)
                    self.conditional_writes = False
                    return self.put(self._rel(full), data, if_absent=True)
                raise self._error(exc, "write", self._rel(full)) from None
        raise StoreError(f"conditional write of s3://{self.bucket}/{full} kept conflicting; retry the job")

    def _put_multipart(self, full: str, data: bytes, if_absent: bool = False) -> bool:
        """A multipart upload whose completion is conditional when ``if_absent``
        (S3 answers 412 if the key exists; the parts are then discarded)."""
        from concurrent.futures import ThreadPoolExecutor

        client = self.client
        try:
            upload_id = client.create_multipart_upload(Bucket=self.bucket, Key=full)["UploadId"]
        except Exception as exc:
            raise self._error(exc, "write", self._rel(full)) from None
        chunk = max(MULTIPART_CHUNK, -(-len(data) // 10000))  # S3 allows at most 10,000 parts

        def part(n: int) -> dict[str, Any]:
            body = data[n * chunk : (n + 1) * chunk]
            etag = client.upload_part(Bucket=self.bucket, Key=full, UploadId=upload_id, PartNumber=n + 1, Body=body)["ETag"]
            return {"ETag": etag, "PartNumber": n + 1}

        try:
            with ThreadPoolExecutor(max_workers=8) as pool:
                parts = list(pool.map(part, range(-(-len(data) // chunk))))
            extra = {"IfNoneMatch": "*"} if if_absent else {}
            client.complete_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id,
                                             MultipartUpload={"Parts": parts}, **extra)
            _KNOWN.add(self._where, self._rel(full))
            return True
        except Exception as exc:
            with contextlib.suppress(Exception):
                client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
            code = _code(exc)
            if if_absent and code in ("PreconditionFailed", "412"):
                return False
            if if_absent and code in ("NotImplemented", "501"):
                log.warning("%s does not support conditional multipart completion; falling back to HEAD-then-PUT", self.url)
                self.conditional_writes = False
                return self.put(self._rel(full), data, if_absent=True)
            raise self._error(exc, "write", self._rel(full)) from None

    def get(self, key: str) -> bytes:
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            data = resp["Body"].read()
        except Exception as exc:
            if _code(exc) in _NOT_FOUND:
                raise ObjectNotFound(f"object {key!r} not found in {self.url}") from None
            raise self._error(exc, "read", key) from None
        _KNOWN.add(self._where, key)
        return data

    def get_range(self, key: str, start: int, end: int) -> bytes:
        if end <= start:
            return b""
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(key), Range=f"bytes={start}-{end - 1}")
            return resp["Body"].read()
        except Exception as exc:
            code = _code(exc)
            if code in _NOT_FOUND:
                raise ObjectNotFound(f"object {key!r} not found in {self.url}") from None
            if code in ("InvalidRange", "416"):
                return b""
            raise self._error(exc, "read", key) from None

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except Exception as exc:
            if _code(exc) in _NOT_FOUND:
                return False
            raise self._error(exc, "check", key) from None

    def list(self, prefix: str) -> list[str]:
        return sorted(self.iter_list(prefix))

    def size(self, key: str) -> int:
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])
        except Exception as exc:
            if _code(exc) in _NOT_FOUND:
                raise ObjectNotFound(f"object {key!r} not found in {self.url}") from None
            raise self._error(exc, "check", key) from None

    def metadata(self, key: str) -> dict[str, str]:
        """An object's user metadata (``x-amz-meta-*``, without that prefix): one HEAD."""
        try:
            return dict(self.client.head_object(Bucket=self.bucket, Key=self._key(key)).get("Metadata") or {})
        except Exception as exc:
            if _code(exc) in _NOT_FOUND:
                raise ObjectNotFound(f"object {key!r} not found in {self.url}") from None
            raise self._error(exc, "read the metadata of", key) from None

    def set_metadata(self, key: str, metadata: dict[str, str]) -> None:
        """Replace an object's user metadata: a copy onto itself, as S3 does it."""
        full = self._key(key)
        try:
            self.client.copy_object(Bucket=self.bucket, Key=full, CopySource={"Bucket": self.bucket, "Key": full},
                                    Metadata=metadata, MetadataDirective="REPLACE")
        except Exception as exc:
            raise self._error(exc, "replace the metadata of", key) from None

    def list_sizes(self, prefix: str) -> list[tuple[str, int]]:
        return [(key, size) for key, size, _etag in self.list_versions(prefix)]

    def list_versions(self, prefix: str) -> list[tuple[str, int, str | None]]:
        # The listing carries each object's size and ETag: no HEAD per object.
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        out = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full, PaginationConfig={"PageSize": self.list_page_size}
            )
            for page in pages:
                out.extend((self._rel(obj["Key"]), int(obj["Size"]), obj.get("ETag") or None)
                           for obj in page.get("Contents", ()))
        except Exception as exc:
            raise self._error(exc, "list", prefix or None) from None
        return sorted(out)

    def unchanged_for(self, prefix: str) -> float | None:
        """Since the newest LastModified of the objects under ``prefix``, by S3's clock (the
        Date of the listing's response; this host's clock only where a server sends none):
        a clock here minutes ahead would make a fresh object look old. Unfinished multipart
        uploads are not looked at (``abort_unfinished_uploads`` has its own age)."""
        import email.utils

        full = f"{self.prefix}/{prefix}" if self.prefix else prefix  # (as ``iter_list`` lists it)
        newest: float | None = None
        now: float | None = None
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full, PaginationConfig={"PageSize": self.list_page_size})
            for page in pages:
                for obj in page.get("Contents", ()):
                    modified = obj["LastModified"].timestamp()
                    newest = modified if newest is None else max(newest, modified)
                with contextlib.suppress(KeyError, TypeError, ValueError, AttributeError):  # (the last page's)
                    now = email.utils.parsedate_to_datetime(page["ResponseMetadata"]["HTTPHeaders"]["date"]).timestamp()
        except Exception as exc:
            raise self._error(exc, "list", prefix or None) from None
        if newest is None:
            return None
        return max(0.0, (now if now is not None else time.time()) - newest)

    def reader(self, key: str, size: int | None = None, version: str | None = None) -> Reader:
        return S3Reader(self, key, size, version)

    def iter_list(self, prefix: str, start_after: str | None = None):  # type: ignore[override]
        """Keys under ``prefix``; ``start_after`` resumes a listing after a key
        already seen (S3 then returns only what sorts after it)."""
        full = f"{self.prefix}/{prefix}" if self.prefix else prefix
        extra = {"StartAfter": self._key(start_after)} if start_after else {}
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full, PaginationConfig={"PageSize": self.list_page_size}, **extra
            )
            for page in pages:
                for obj in page.get("Contents", ()):
                    yield self._rel(obj["Key"])
        except Exception as exc:
            raise self._error(exc, "list", prefix or None) from None

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            if _code(exc) in _NOT_FOUND:
                return
            raise self._error(exc, "delete", key) from None

    def delete_prefix(self, prefix: str) -> int:
        # The keys this process knows exist go first, unlisted; the listing then finds
        # the rest (what workers wrote and nobody read), so everything under it goes.
        known = _KNOWN.take(self._where, prefix)
        self._delete_keys(known, prefix)
        rest = self.list(prefix)
        self._delete_keys(rest, prefix)
        self.abort_unfinished_uploads(prefix)
        return len(set(known) | set(rest))

    def delete_prefixes(self, prefixes: Iterable[str]) -> int:
        # Each prefix costs a LIST of its objects and a LIST of its unfinished uploads
        # (and a DeleteObjects per 1,000 keys found): a map_reduce that used every shard
        # has 65 prefixes, 130 LISTs (~$0.0007), run 16 at a time: the time of ~9 rounds
        # of two requests, not of 130 one after another (~3 s at 25 ms each). Plain
        # threads, not a ThreadPoolExecutor: the executor's exit calls this from an atexit
        # hook, where concurrent.futures refuses new work (a map_reduce still running
        # when the program ended left all its objects in the bucket).
        prefixes = list(prefixes)
        if len(prefixes) < 2:
            return super().delete_prefixes(prefixes)
        todo = iter(prefixes)
        lock = threading.Lock()
        removed: list[int] = []
        failed: list[BaseException] = []

        def work() -> None:
            while True:
                with lock:
                    prefix = next(todo, None)
                if prefix is None:
                    return
                try:
                    n = self.delete_prefix(prefix)
                except Exception as exc:  # noqa: BLE001 - raised below, once the others are gone
                    with lock:
                        failed.append(exc)
                    continue
                with lock:
                    removed.append(n)

        started = []
        try:
            for _ in range(min(16, len(prefixes))):
                thread = threading.Thread(target=work, name="wrenpack-delete", daemon=True)
                thread.start()
                started.append(thread)
        except RuntimeError:  # (no new thread can start: the interpreter is ending) this one works too
            pass
        work()
        for thread in started:
            thread.join()
        if failed:
            raise failed[0]
        return sum(removed)

    def abort_unfinished_uploads(self, prefix: str, older_than_s: float | None = None) -> int:
        """Abort the multipart uploads left unfinished under ``prefix`` (those started
        more than ``older_than_s`` ago, if given): a writer stopped between its first
        part and its completion (a call killed while it saved a large checkpoint or
        wrote a shuffle section) leaves parts that no listing of objects shows and
        that S3 keeps, and bills, until the upload is aborted. ``delete_prefix`` aborts
        all of them: whatever is under a prefix being deleted is no longer wanted,
        and an upload still going on fails its writer, as its object would have been
        deleted anyway; ``wrenpack clean`` aborts old ones anywhere under wrenpack's
        prefixes. Best effort: a store that cannot list them (a policy without
        s3:ListBucketMultipartUploads, an S3-compatible server without the call)
        leaves them to a lifecycle rule. How many were aborted."""
        import datetime

        full = f"{self.prefix}/{prefix}" if self.prefix else prefix  # (as ``iter_list`` lists it)
        cutoff = None
        if older_than_s is not None:
            try:
                cutoff = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=older_than_s)
            except OverflowError:  # (older than any date: none is)
                return 0
        aborted = 0
        try:
            pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=full)
            for page in pages:
                for upload in page.get("Uploads") or ():
                    started = upload.get("Initiated")
                    if cutoff is not None and not (isinstance(started, datetime.datetime) and started < cutoff):
                        continue  # (recent, or of unknown age: maybe a writer still at work)
                    with contextlib.suppress(Exception):  # (gone meanwhile: completed or aborted by its writer)
                        self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                        aborted += 1
        except Exception as exc:  # noqa: BLE001 - cleanup is best effort; the objects themselves are gone
            log.debug("could not list unfinished uploads under %s: %s", full, exc)
        if aborted:
            log.info("aborted %d unfinished multipart upload(s) under %s", aborted, full)
        return aborted

    def _delete_keys(self, keys: list[str], prefix: str) -> None:
        """DeleteObjects, a batch at a time (a key already gone counts as deleted)."""
        for i in range(0, len(keys), self.delete_batch):
            batch = [{"Key": self._key(k)} for k in keys[i : i + self.delete_batch]]
            try:
                resp = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            except Exception as exc:
                raise self._error(exc, "delete under", prefix) from None
            errors = resp.get("Errors") or []
            if errors:
                first = errors[0]
                raise StoreError(
                    f"S3 refused to delete {len(errors)} object(s) under {self.url}, e.g. {first.get('Key')}: "
                    f"{first.get('Code')} {first.get('Message')}"
                )

    def list_folders(self, prefix: str) -> list[str]:
        # One LIST per 1,000 folders (S3's CommonPrefixes), not one per 1,000 objects.
        if not prefix.endswith("/"):
            return super().list_folders(prefix)
        full = self._key(prefix)
        out: list[str] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=full, Delimiter="/", PaginationConfig={"PageSize": self.list_page_size}
            )
            for page in pages:
                for common in page.get("CommonPrefixes", ()):
                    name = common["Prefix"][len(full):].rstrip("/")
                    if name:
                        out.append(name)
        except Exception as exc:
            raise self._error(exc, "list", prefix or None) from None
        return sorted(out)


class S3Reader(Reader):
    """Ranged GETs of one version of an object: the ETag a listing gave, or the one
    the first response carries, goes with every later GET as ``If-Match``, so S3
    answers 412 rather than another version's bytes (no request more than before:
    one header). A server that ignores ``If-Match`` is caught by the ETag and total
    size each response carries. Either way: ``ObjectChanged``."""

    def __init__(self, store: "S3Store", key: str, size: int | None = None, version: str | None = None) -> None:
        super().__init__(store, key, size, version)
        self._s3 = store
        self._full = store._key(key)
        self._listed = size is not None or version is not None
        self._seen = False  # (a response came: a later mismatch is a change while reading, not since listing)

    def _changed(self, why: str = "") -> Exception:
        return changed(f"s3://{self._s3.bucket}/{self._full}", listed=self._listed and not self._seen, why=why)

    def _check(self, resp: dict[str, Any], total: int | None) -> None:
        etag = resp.get("ETag") or None
        if self.version is None:
            self.version = etag
        elif etag is not None and etag.strip('"') != self.version.strip('"'):
            raise self._changed(f"ETag {etag}, was {self.version}")
        if total is not None:
            if self._size is None:
                self._size = total
            elif total != self._size:
                raise self._changed(f"{self._size} bytes then, {total} now")
        self._seen = True

    def _call(self, op: str, **kw: Any) -> dict[str, Any]:
        if self.version is not None:  # (quoted, as HTTP has it: some servers list ETags without the quotes)
            kw["IfMatch"] = f'"{self.version.strip(chr(34))}"'
        try:
            return getattr(self._s3.client, op)(Bucket=self._s3.bucket, Key=self._full, **kw)
        except Exception as exc:
            code = _code(exc)
            if code in ("PreconditionFailed", "412"):
                raise self._changed() from None
            if code in _NOT_FOUND:
                raise ObjectNotFound(f"object {self.key!r} not found in {self._s3.url}") from None
            if code in ("InvalidRange", "416"):
                raise _PastEnd from None
            raise self._s3._error(exc, "read", self.key) from None

    def size(self) -> int:
        if self._size is None:
            resp = self._call("head_object")
            self._check(resp, int(resp["ContentLength"]))
        return self._size  # type: ignore[return-value]

    def read(self, start: int, end: int) -> bytes:
        if self._size is not None:
            end = min(end, self._size)
        if end <= start:
            return b""
        try:
            resp = self._call("get_object", Range=f"bytes={start}-{end - 1}")
        except _PastEnd:
            if self._size is not None:  # (within the size known: the object is shorter now)
                raise self._changed(f"{self._size} bytes then, fewer than {start + 1} now") from None
            return b""
        total = resp.get("ContentRange", "").rpartition("/")[2]
        self._check(resp, int(total) if total.isdigit() else None)
        try:
            return resp["Body"].read()
        except Exception as exc:
            raise self._s3._error(exc, "read", self.key) from None


class _PastEnd(Exception):
    """A ranged GET that begins at or past the object's end (416): no bytes."""


def _fast_timestamps(made: Any) -> Any:
    """``made`` (a boto3 session), its clients parsing S3's timestamps with the
    standard library: botocore's default hands every one to dateutil's generic
    parser (~85 us; this takes ~4), which made a GET's Last-Modified header a
    tenth of the request's client CPU and a job's cleanup (a LIST of all its
    objects, a LastModified each) a fifth of a 100,000-call driver's. The same
    datetimes (timezone-aware) for S3's two formats; anything else goes to
    botocore's own parser."""
    import email.utils
    from datetime import datetime

    from botocore.utils import parse_timestamp

    def parse(value: Any) -> Any:
        if isinstance(value, str) and value:
            try:
                parsed = (datetime.fromisoformat(value[:-1] + "+00:00") if value[-1] == "Z"
                          else email.utils.parsedate_to_datetime(value) if value[-1] == "T" else None)
            except (TypeError, ValueError):
                parsed = None
            if parsed is not None and parsed.tzinfo is not None:
                return parsed
        return parse_timestamp(value)

    try:
        made._session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=parse)
    except Exception:  # noqa: BLE001 - another botocore: its own parser, as before
        pass
    return made


def _add_if_none_match(params: dict[str, Any], **_: Any) -> None:
    """botocore's before-call hook for a PutObject of a botocore too old to send If-None-Match itself."""
    if getattr(_HEADER, "on", False):
        params["headers"]["If-None-Match"] = "*"


def _code(exc: BaseException) -> str | None:
    """The S3 error code of a botocore ClientError (None for other errors)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        if code:
            return str(code)
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return str(status) if status else None
    return None
