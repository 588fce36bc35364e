"""A simulated AWS Lambda + S3 service that real boto3 clients talk to, in process.

For tests and benchmarks at a scale no local emulator reaches (100,000
invocations at concurrency 1,000 on a 2-core machine) and for request-cost
figures of calls that would take minutes for real (a scaled clock). Nothing
here imports wrenpack: what a simulated function *does* is supplied by the
caller (``tests/aws/sim_worker.py`` writes the result objects a wrenpack
worker would write).

::

    sim = SimService(clock=ScaledClock(20), invoke_latency=0.025, concurrency=1000)
    sim.s3.create_bucket("b")
    sim.add_function(MyFunction())          # any name: .start(event, ctx), .finish(event, ctx) -> reply
    boto3.client("s3", endpoint_url=sim.s3_url)          # real clients: signing, serialising,
    boto3.client("lambda", endpoint_url=sim.lambda_url)  # parsing, retries all run as against AWS
    ...
    sim.s3.counts, sim.lambda_.counts                  # requests by (side, kind)
    sim.close()

How requests reach it: ``install()`` wraps botocore's ``Endpoint._send`` (the
one call between a prepared, signed request and the HTTP session) once per
process; a request whose host is a registered simulator's goes to it and gets
an ``AWSResponse`` back, every other request goes out as before. So the whole
client path runs except the socket, and 1,000s of requests per second cost
only the client's own CPU plus a few microseconds of the simulator's (which it
measures: ``SimService.cpu_s``). ``tests/aws/sim_server.py`` serves the same
service over real HTTP from a process of its own (what the benchmarks use).

What it models (every figure configurable):

* S3 (``SimS3``): PutObject (``If-None-Match: *`` -> 412), GetObject (ranges),
  HeadObject, CopyObject, ListObjectsV2 (prefix, start-after, continuation,
  max-keys, delimiter), DeleteObject, DeleteObjects, multipart uploads,
  CreateBucket/HeadBucket. Request rates per partitioned prefix: 3,500/s
  PUT/COPY/POST/DELETE and 5,500/s GET/HEAD/LIST (token buckets, 1 s burst);
  beyond them 503 SlowDown, which botocore retries as it does against S3. The
  partition of a key is its prefix up to the last "/" (``partition=`` changes
  it: S3 partitions adaptively; a fixed rule makes runs repeatable). A
  per-request latency (``s3_latency``) is slept in the calling thread.
* Lambda (``SimLambda``): Invoke (Event and RequestResponse),
  GetFunctionConfiguration, GetFunctionConcurrency, GetAccountSettings. An
  invoke sleeps ``invoke_latency`` in the caller's thread (the round trip).
  At most ``concurrency`` calls run at once: a RequestResponse call beyond it
  gets 429 TooManyRequestsException; an Event waits in the function's queue
  (as Lambda's asynchronous queue does) and starts when a slot frees, after
  ``queue_delay``. ``invoke_rate`` (invokes/s) throttles the Invoke API itself
  with 429. A call runs ``duration(event)`` seconds of the clock, then its
  function's ``finish`` writes what it writes (through ``SimS3``'s direct
  API, counted on the "worker" side, rate-limited the same way) and replies.

Clocks: ``Clock`` is real time; ``ScaledClock(speed)`` runs ``speed`` times
faster than real time, for the simulator *and* for a client that is handed
the same clock, so a 60 s call takes 60/speed s of wall time and
time-dependent decisions (polling, deadlines) keep their proportions.
"""
from __future__ import annotations

import base64
import bisect
import hashlib
import heapq
import itertools
import json
import re
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any, Callable, Iterable
from urllib.parse import parse_qsl, unquote, urlsplit
from xml.sax.saxutils import escape

# -- clocks -------------------------------------------------------------------------


class Clock:
    """Real time: ``time()`` is ``time.time()``, ``sleep`` sleeps."""

    speed = 1.0

    def time(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)

    def wait(self, event: threading.Event | threading.Condition, seconds: float | None) -> Any:
        """``event.wait`` for ``seconds`` of this clock."""
        return event.wait(None if seconds is None else max(0.0, seconds))


class ScaledClock(Clock):
    """A clock ``speed`` times faster than real time (it starts at the real time
    of its creation, so its readings look like epoch seconds)."""

    def __init__(self, speed: float, origin: tuple[float, float] | None = None) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be positive, got {speed}")
        self.speed = float(speed)
        # (epoch, monotonic) of its start: another process on this machine given the
        # same origin reads the same time (CLOCK_MONOTONIC is the machine's).
        self._t0, self._m0 = origin if origin is not None else (time.time(), time.monotonic())

    @property
    def origin(self) -> tuple[float, float]:
        return self._t0, self._m0

    def time(self) -> float:
        return self._t0 + (time.monotonic() - self._m0) * self.speed

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds / self.speed)

    def wait(self, event: threading.Event | threading.Condition, seconds: float | None) -> Any:
        return event.wait(None if seconds is None else max(0.0, seconds) / self.speed)


# -- transport: botocore's Endpoint._send, routed by host ---------------------------

_ROUTES: dict[str, Callable[[Any], Any]] = {}
_INSTALL_LOCK = threading.Lock()
_installed = False
_ids = itertools.count(1)


def install() -> None:
    """Route requests for registered simulator hosts to them (idempotent; other
    requests are untouched)."""
    global _installed
    with _INSTALL_LOCK:
        if _installed:
            return
        from botocore.endpoint import Endpoint

        original = Endpoint._send

        def _send(self: Any, request: Any) -> Any:
            host = urlsplit(request.url).hostname or ""
            handler = _ROUTES.get(host)
            if handler is None:
                return original(self, request)
            return handler(request)

        Endpoint._send = _send
        _installed = True


class _Body:
    """A response body as botocore reads one (``read`` and ``stream``)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def read(self, amt: int | None = None, decode_content: bool = True) -> bytes:
        end = len(self._data) if amt is None else min(len(self._data), self._pos + amt)
        out = self._data[self._pos:end]
        self._pos = end
        return out

    def stream(self, amt: int = 65536, decode_content: bool = True) -> Iterable[bytes]:
        while True:
            chunk = self.read(amt)
            if not chunk:
                return
            yield chunk

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


def _response(url: str, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> Any:
    from botocore.awsrequest import AWSResponse
    from botocore.compat import HTTPHeaders

    h = HTTPHeaders()
    for k, v in (headers or {}).items():
        h[k] = v
    h["content-length"] = str(len(body))
    h["x-amz-request-id"] = "sim"
    return AWSResponse(url, status, h, _Body(body))


def _request_body(request: Any) -> bytes:
    body = request.body
    if body is None:
        return b""
    if hasattr(body, "read"):
        if hasattr(body, "seek"):
            body.seek(0)
        data = body.read()
    else:
        data = body
    data = data.encode() if isinstance(data, str) else bytes(data)
    if "aws-chunked" in (request.headers.get("Content-Encoding") or ""):
        data = _unchunk(data)
    return data


def _unchunk(data: bytes) -> bytes:
    """The payload of an ``aws-chunked`` body (chunk sizes in hex, trailers after the last)."""
    out, pos = [], 0
    while True:
        end = data.index(b"\r\n", pos)
        size = int(data[pos:end].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(data[end + 2:end + 2 + size])
        pos = end + 2 + size + 2


# -- rates --------------------------------------------------------------------------


class RateLimiter:
    """Token buckets by key: ``rate`` per second of the clock, a burst of one second."""

    def __init__(self, clock: Clock, rate: float | None) -> None:
        self.clock = clock
        self.rate = rate
        self._buckets: dict[Any, list[float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: Any) -> bool:
        if not self.rate:
            return True
        now = self.clock.time()
        with self._lock:
            b = self._buckets.get(key)
            if b is None:
                b = self._buckets[key] = [self.rate, now]
            b[0] = min(self.rate, b[0] + (now - b[1]) * self.rate)
            b[1] = now
            if b[0] < 1.0:
                return False
            b[0] -= 1.0
            return True


def default_partition(key: str) -> str:
    """The partitioned prefix of a key: everything up to its last "/"."""
    return key.rsplit("/", 1)[0] + "/" if "/" in key else ""


#: request kind -> rate class (S3's per-prefix limits are per class)
_WRITE_KINDS = {"PUT", "COPY", "POST", "DELETE"}


class SlowDown(Exception):
    """Over a prefix's request rate (S3 answers 503 SlowDown)."""


class NoSuchKey(KeyError):
    pass


# -- S3 -----------------------------------------------------------------------------


@dataclass
class _Bucket:
    data: dict[str, bytes] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)  # sorted


class SimS3:
    """An in-memory S3 with per-prefix request rates. The direct methods
    (``put``, ``get``, ``list``, ...) are what simulated functions (and other
    simulations) use; ``handle`` serves the REST API to boto3."""

    def __init__(self, clock: Clock | None = None, *, put_rate: float | None = 3500.0, get_rate: float | None = 5500.0,
                 partition: Callable[[str], str] = default_partition, latency: float = 0.0) -> None:
        self.clock = clock or Clock()
        self.partition = partition
        self.latency = latency
        self._writes = RateLimiter(self.clock, put_rate)
        self._reads = RateLimiter(self.clock, get_rate)
        self._buckets: dict[str, _Bucket] = {}
        self._uploads: dict[str, dict[int, bytes]] = {}
        self._lock = threading.Lock()
        #: requests by (side, kind): side "client" (through boto3) or "worker" (direct calls)
        self.counts: Counter[tuple[str, str]] = Counter()
        #: 503 SlowDown answers by partition
        self.slowdowns: Counter[str] = Counter()
        self.bytes_stored = 0
        #: the most bytes stored at once (what the simulation adds to its process's memory)
        self.peak_bytes = 0

    # -- direct API ----------------------------------------------------------------
    def create_bucket(self, bucket: str) -> None:
        with self._lock:
            self._buckets.setdefault(bucket, _Bucket())

    def _bucket(self, bucket: str) -> _Bucket:
        b = self._buckets.get(bucket)
        if b is None:
            raise NoSuchKey(f"no bucket {bucket!r}")
        return b

    def admit(self, kind: str, bucket: str, key: str, side: str = "worker") -> None:
        """Count one request of ``kind`` on ``key``'s partition; ``SlowDown`` if over its rate."""
        part = (bucket, self.partition(key))
        limiter = self._writes if kind in _WRITE_KINDS else self._reads
        with self._lock:
            self.counts[(side, kind)] += 1
        if not limiter.allow(part):
            with self._lock:
                self.slowdowns[part[1]] += 1
            raise SlowDown(f"over the request rate of s3://{bucket}/{part[1]}")

    def count(self, kind: str, n: int = 1, side: str = "worker") -> None:
        """Count ``n`` requests of ``kind`` that are not simulated one by one (no rate limit, no effect)."""
        with self._lock:
            self.counts[(side, kind)] += n

    def put(self, bucket: str, key: str, data: bytes, *, if_absent: bool = False, side: str = "worker",
            kind: str = "PUT") -> bool:
        """Store ``data``; with ``if_absent`` False (nothing written) if the key exists."""
        self.admit(kind, bucket, key, side)
        return self._store(bucket, key, data, if_absent)

    def _store(self, bucket: str, key: str, data: bytes, if_absent: bool) -> bool:
        with self._lock:
            b = self._bucket(bucket)
            old = b.data.get(key)
            if old is not None and if_absent:
                return False
            if old is None:
                bisect.insort(b.names, key)
            else:
                self.bytes_stored -= len(old)
            b.data[key] = bytes(data)
            self.bytes_stored += len(data)
            self.peak_bytes = max(self.peak_bytes, self.bytes_stored)
            return True

    def get(self, bucket: str, key: str, side: str = "worker", kind: str = "GET") -> bytes:
        """The object's bytes; ``NoSuchKey`` if absent."""
        self.admit(kind, bucket, key, side)
        with self._lock:
            data = self._bucket(bucket).data.get(key)
        if data is None:
            raise NoSuchKey(key)
        return data

    def list(self, bucket: str, prefix: str = "", start_after: str = "", max_keys: int = 1000,
             side: str = "worker") -> list[tuple[str, int]]:
        """(key, size) of up to ``max_keys`` keys under ``prefix`` after ``start_after``: one LIST request."""
        self.admit("LIST", bucket, prefix or "", side)
        return self._list(bucket, prefix, start_after, max_keys)

    def _list(self, bucket: str, prefix: str, start_after: str, max_keys: int) -> list[tuple[str, int]]:
        with self._lock:
            b = self._bucket(bucket)
            i = bisect.bisect_right(b.names, max(prefix, start_after)) if start_after >= prefix else \
                bisect.bisect_left(b.names, prefix)
            out = []
            while i < len(b.names) and len(out) < max_keys:
                k = b.names[i]
                if not k.startswith(prefix):
                    break
                out.append((k, len(b.data[k])))
                i += 1
            return out

    def delete(self, bucket: str, key: str, side: str = "worker") -> None:
        self.admit("DELETE", bucket, key, side)
        self._remove(bucket, key)

    def _remove(self, bucket: str, key: str) -> None:
        with self._lock:
            b = self._bucket(bucket)
            old = b.data.pop(key, None)
            if old is not None:
                self.bytes_stored -= len(old)
                i = bisect.bisect_left(b.names, key)
                del b.names[i]

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key under ``prefix`` (inspection: not a request)."""
        with self._lock:
            return [k for k in self._bucket(bucket).names if k.startswith(prefix)]

    def requests(self, side: str | None = None) -> dict[str, int]:
        """Requests by kind (of one side, or both)."""
        out: Counter[str] = Counter()
        with self._lock:
            for (s, kind), n in self.counts.items():
                if side is None or s == side:
                    out[kind] += n
        return dict(out)

    def reset_counts(self) -> None:
        with self._lock:
            self.counts.clear()
            self.slowdowns.clear()

    # -- REST -------------------------------------------------------------------------
    def handle(self, request: Any) -> Any:
        """One REST request from boto3 (path-style addressing) -> its response."""
        if self.latency:
            self.clock.sleep(self.latency)
        url = request.url
        parts = urlsplit(url)
        path = parts.path.lstrip("/")
        bucket, _, raw_key = path.partition("/")
        bucket, key = unquote(bucket), unquote(raw_key)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        method = request.method.upper()
        headers = request.headers
        try:
            if not key:
                return self._bucket_request(url, method, bucket, query, request)
            if bucket not in self._buckets:
                return _s3_error(url, 404, "NoSuchBucket", f"no bucket {bucket}")
            if method == "PUT" and "partNumber" in query:
                data = _request_body(request)
                self.admit("PUT", bucket, key, "client")
                with self._lock:
                    self._uploads.setdefault(query["uploadId"], {})[int(query["partNumber"])] = data
                return _response(url, 200, headers={"ETag": _etag(data)})
            if method == "PUT":
                source = headers.get("x-amz-copy-source")
                if source:
                    src = unquote(source.split("?", 1)[0].lstrip("/"))
                    sbucket, _, skey = src.partition("/")
                    self.admit("COPY", bucket, key, "client")
                    with self._lock:
                        data = self._bucket(sbucket).data.get(skey)
                    if data is None:
                        return _s3_error(url, 404, "NoSuchKey", "The specified key does not exist.")
                    self._store(bucket, key, data, False)
                    body = (f"<CopyObjectResult><ETag>{escape(_etag(data))}</ETag>"
                            f"<LastModified>{_iso()}</LastModified></CopyObjectResult>").encode()
                    return _response(url, 200, _xml(body))
                data = _request_body(request)
                if_absent = headers.get("If-None-Match") == "*"
                if not self.put(bucket, key, data, if_absent=if_absent, side="client"):
                    return _s3_error(url, 412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold")
                return _response(url, 200, headers={"ETag": _etag(data)})
            if method in ("GET", "HEAD"):
                kind = "GET" if method == "GET" else "HEAD"
                self.admit(kind, bucket, key, "client")
                with self._lock:
                    data = self._buckets[bucket].data.get(key)
                if data is None:
                    if method == "HEAD":
                        return _response(url, 404)
                    return _s3_error(url, 404, "NoSuchKey", "The specified key does not exist.")
                h = {"ETag": _etag(data), "Last-Modified": formatdate(usegmt=True), "Content-Type": "binary/octet-stream",
                     "Accept-Ranges": "bytes"}
                if method == "HEAD":
                    r = _response(url, 200, headers=h)
                    r.headers["content-length"] = str(len(data))
                    return r
                rng = headers.get("Range")
                if rng:
                    m = re.match(r"bytes=(\d+)-(\d*)", rng)
                    if m:
                        start = int(m.group(1))
                        end = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
                        if start >= len(data):
                            return _s3_error(url, 416, "InvalidRange", "The requested range is not satisfiable")
                        h["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                        return _response(url, 206, data[start:end + 1], h)
                return _response(url, 200, data, h)
            if method == "DELETE":
                if "uploadId" in query:
                    with self._lock:
                        self._uploads.pop(query["uploadId"], None)
                    return _response(url, 204)
                self.delete(bucket, key, side="client")
                return _response(url, 204)
            if method == "POST" and "uploads" in query:
                self.admit("POST", bucket, key, "client")
                upload = hashlib.sha1(f"{key}{next(_ids)}".encode()).hexdigest()
                with self._lock:
                    self._uploads[upload] = {}
                body = (f"<InitiateMultipartUploadResult><Bucket>{escape(bucket)}</Bucket><Key>{escape(key)}</Key>"
                        f"<UploadId>{upload}</UploadId></InitiateMultipartUploadResult>").encode()
                return _response(url, 200, _xml(body))
            if method == "POST" and "uploadId" in query:
                self.admit("POST", bucket, key, "client")
                with self._lock:
                    parts_ = self._uploads.pop(query["uploadId"], None)
                if parts_ is None:
                    return _s3_error(url, 404, "NoSuchUpload", "The specified upload does not exist.")
                data = b"".join(parts_[n] for n in sorted(parts_))
                if not self._store(bucket, key, data, headers.get("If-None-Match") == "*"):
                    return _s3_error(url, 412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold")
                body = (f"<CompleteMultipartUploadResult><Bucket>{escape(bucket)}</Bucket><Key>{escape(key)}</Key>"
                        f"<ETag>{escape(_etag(data))}</ETag></CompleteMultipartUploadResult>").encode()
                return _response(url, 200, _xml(body))
            return _s3_error(url, 501, "NotImplemented", f"{method} {path}?{parts.query} is not simulated")
        except SlowDown:
            return _s3_error(url, 503, "SlowDown", "Please reduce your request rate.")
        except NoSuchKey as exc:
            return _s3_error(url, 404, "NoSuchBucket", str(exc))

    def _bucket_request(self, url: str, method: str, bucket: str, query: dict[str, str], request: Any) -> Any:
        if method == "PUT":
            self.create_bucket(bucket)
            return _response(url, 200)
        if bucket not in self._buckets:
            return _s3_error(url, 404, "NoSuchBucket", f"no bucket {bucket}")
        if method == "HEAD":
            return _response(url, 200)
        if method == "POST" and "delete" in query:
            body = _request_body(request).decode()
            names = [unquote_xml(k) for k in re.findall(r"<Key>(.*?)</Key>", body, re.S)]
            self.admit("POST", bucket, names[0] if names else "", "client")
            for name in names:
                self._remove(bucket, name)
            quiet = "<Quiet>true</Quiet>" in body
            deleted = "" if quiet else "".join(f"<Deleted><Key>{escape(n)}</Key></Deleted>" for n in names)
            return _response(url, 200, _xml(f"<DeleteResult>{deleted}</DeleteResult>".encode()))
        if method == "GET" and query.get("list-type") == "2":
            prefix = query.get("prefix", "")
            max_keys = int(query.get("max-keys", "1000") or 1000)
            token = query.get("continuation-token")
            after = base64.urlsafe_b64decode(token.encode()).decode() if token else query.get("start-after", "")
            delimiter = query.get("delimiter", "")
            self.admit("LIST", bucket, prefix, "client")
            found = self._list(bucket, prefix, after, max_keys + 1)
            truncated = len(found) > max_keys
            found = found[:max_keys]
            contents, common = [], []
            seen: set[str] = set()
            for k, size in found:
                if delimiter:
                    rest = k[len(prefix):]
                    if delimiter in rest:
                        cp = prefix + rest.split(delimiter, 1)[0] + delimiter
                        if cp not in seen:
                            seen.add(cp)
                            common.append(f"<CommonPrefixes><Prefix>{escape(cp)}</Prefix></CommonPrefixes>")
                        continue
                with self._lock:  # (the object's own ETag, as S3 lists it: a reader checks ranges against it)
                    data = self._bucket(bucket).data.get(k)
                etag = _etag(data) if data is not None else '"0"'
                contents.append(f"<Contents><Key>{escape(k)}</Key><LastModified>{_iso()}</LastModified>"
                                f"<ETag>{escape(etag)}</ETag><Size>{size}</Size><StorageClass>STANDARD</StorageClass></Contents>")
            nxt = ""
            if truncated:
                nxt = f"<NextContinuationToken>{base64.urlsafe_b64encode(found[-1][0].encode()).decode()}</NextContinuationToken>"
            body = (f"<ListBucketResult><Name>{escape(bucket)}</Name><Prefix>{escape(prefix)}</Prefix>"
                    f"<KeyCount>{len(found)}</KeyCount><MaxKeys>{max_keys}</MaxKeys>"
                    f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>{''.join(contents)}{''.join(common)}{nxt}"
                    "</ListBucketResult>").encode()
            return _response(url, 200, _xml(body))
        return _s3_error(url, 501, "NotImplemented", f"{method} on a bucket is not simulated")


def unquote_xml(text: str) -> str:
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&apos;", "'").replace("&amp;", "&")


def _xml(body: bytes) -> bytes:
    return b'<?xml version="1.0" encoding="UTF-8"?>' + body


def _etag(data: bytes) -> str:
    return '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'


def _iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


def _s3_error(url: str, status: int, code: str, message: str) -> Any:
    body = _xml(f"<Error><Code>{code}</Code><Message>{escape(message)}</Message></Error>".encode())
    return _response(url, status, body, {"Content-Type": "application/xml"})


# -- Lambda -------------------------------------------------------------------------


@dataclass
class CallContext:
    """What a simulated function sees of its invocation."""

    s3: SimS3
    clock: Clock
    function_name: str
    request_id: str
    invoked: float
    start: float = 0.0
    end: float = 0.0
    invocation_type: str = "Event"


class SimFunction:
    """What a simulated function does (subclass it): ``start`` when it begins,
    ``finish`` at its end (its writes, its reply)."""

    def duration(self, event: dict[str, Any]) -> float:
        return 0.0

    def start(self, event: dict[str, Any], ctx: CallContext) -> None:
        pass

    def finish(self, event: dict[str, Any], ctx: CallContext) -> Any:
        return None


class SimLambda:
    """Lambda's Invoke and the calls' lives: concurrency, queue, throttling."""

    def __init__(self, s3: SimS3, clock: Clock, *, concurrency: int = 1000, invoke_latency: float = 0.025,
                 queue_delay: float = 0.0, invoke_rate: float | None = None, memory: int = 1024) -> None:
        self.s3 = s3
        self.clock = clock
        self.concurrency = concurrency
        self.invoke_latency = invoke_latency
        self.queue_delay = queue_delay
        self.memory = memory
        self._rate = RateLimiter(clock, invoke_rate)
        self.function: SimFunction = SimFunction()
        self._lock = threading.Condition()
        self.running = 0
        self.peak_running = 0
        self._queue: deque[tuple[dict[str, Any], CallContext]] = deque()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._closed = False
        self._thread = threading.Thread(target=self._timer_loop, name="sim-lambda-timers", daemon=True)
        self._thread.start()
        #: requests by (side, kind): INVOKE, THROTTLED, CONTROL
        self.counts: Counter[tuple[str, str]] = Counter()
        #: calls started, finished, and their (invoke, start, end) times
        self.started = 0
        self.finished = 0
        self.errors: list[str] = []
        self.cpu_s = 0.0

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._thread.join(timeout=5)

    # -- the call's life ----------------------------------------------------------
    def _at(self, when: float, action: Callable[[], None]) -> None:
        with self._lock:
            heapq.heappush(self._timers, (when, next(self._seq), action))
            self._lock.notify()

    def _timer_loop(self) -> None:
        while True:
            with self._lock:
                while not self._closed:
                    now = self.clock.time()
                    if self._timers and self._timers[0][0] <= now:
                        break
                    self.clock.wait(self._lock, (self._timers[0][0] - now) if self._timers else None)
                if self._closed:
                    return
                _, _, action = heapq.heappop(self._timers)
            t = time.thread_time()
            try:
                action()
            except Exception as exc:  # noqa: BLE001 - a simulated call's failure is recorded, the clock goes on
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self.cpu_s += time.thread_time() - t

    def _take_slot(self) -> bool:
        with self._lock:
            if self.running >= self.concurrency:
                return False
            self.running += 1
            self.peak_running = max(self.peak_running, self.running)
            return True

    def _free_slot(self) -> None:
        with self._lock:
            self.running -= 1
            self.finished += 1
            nxt = self._queue.popleft() if self._queue else None
            if nxt is not None:
                self.running += 1
        if nxt is not None:
            self._begin(*nxt)

    def _begin(self, event: dict[str, Any], ctx: CallContext) -> None:
        """An Event call starts (its slot taken): after ``queue_delay``, run it."""
        def start() -> None:
            ctx.start = self.clock.time()
            self.started += 1
            self.function.start(event, ctx)
            ctx.end = ctx.start + self.function.duration(event)
            self._at(ctx.end, end)

        def end() -> None:
            try:
                self.function.finish(event, ctx)
            finally:
                self._free_slot()

        self._at(self.clock.time() + self.queue_delay, start)

    # -- REST ---------------------------------------------------------------------
    def handle(self, request: Any) -> Any:
        url = request.url
        path = urlsplit(url).path
        m = re.match(r"^/(\d{4}-\d\d-\d\d)/functions/([^/]+)/(invocations|configuration|concurrency)$", path)
        if m and m.group(3) == "invocations":
            return self._invoke(request, unquote(m.group(2)))
        with self._lock:
            self.counts[("client", "CONTROL")] += 1
        if m and m.group(3) == "configuration":
            doc = {"FunctionName": unquote(m.group(2)), "MemorySize": self.memory, "Timeout": 900,
                   "Runtime": "python3.12", "Architectures": ["x86_64"], "State": "Active"}
            return _response(url, 200, json.dumps(doc).encode(), {"Content-Type": "application/json"})
        if m and m.group(3) == "concurrency":
            return _response(url, 200, b"{}", {"Content-Type": "application/json"})
        if path.endswith("/account-settings") or path.endswith("/account-settings/"):
            doc = {"AccountLimit": {"ConcurrentExecutions": self.concurrency,
                                    "UnreservedConcurrentExecutions": self.concurrency}, "AccountUsage": {}}
            return _response(url, 200, json.dumps(doc).encode(), {"Content-Type": "application/json"})
        return _lambda_error(url, 404, "ResourceNotFoundException", f"{request.method} {path} is not simulated")

    def _invoke(self, request: Any, name: str) -> Any:
        url = request.url
        self.clock.sleep(self.invoke_latency)
        t = time.thread_time()
        try:
            kind = request.headers.get("X-Amz-Invocation-Type") or "RequestResponse"
            kind = kind.decode() if isinstance(kind, bytes) else kind
            if not self._rate.allow(name):
                with self._lock:
                    self.counts[("client", "THROTTLED")] += 1
                return _lambda_error(url, 429, "TooManyRequestsException", "Rate Exceeded.")
            event = json.loads(_request_body(request) or b"null")
            ctx = CallContext(self.s3, self.clock, name, f"sim-{next(_ids)}", self.clock.time(), invocation_type=kind)
            if kind == "Event":
                with self._lock:
                    self.counts[("client", "INVOKE")] += 1
                if self._take_slot():
                    self._begin(event, ctx)
                else:
                    with self._lock:
                        self._queue.append((event, ctx))
                return _response(url, 202)
            if not self._take_slot():
                with self._lock:
                    self.counts[("client", "THROTTLED")] += 1
                return _lambda_error(url, 429, "TooManyRequestsException", "Rate Exceeded.")
            with self._lock:
                self.counts[("client", "INVOKE")] += 1
        finally:
            self.cpu_s += time.thread_time() - t
        try:
            ctx.start = self.clock.time()
            self.started += 1
            self.function.start(event, ctx)
            ctx.end = ctx.start + self.function.duration(event)
            self.clock.sleep(ctx.end - self.clock.time())
            t = time.thread_time()
            try:
                reply = self.function.finish(event, ctx)
            except Exception as exc:  # noqa: BLE001 - the runtime's unhandled-error reply
                doc = {"errorMessage": str(exc), "errorType": type(exc).__name__}
                return _response(url, 200, json.dumps(doc).encode(), {"X-Amz-Function-Error": "Unhandled"})
            finally:
                self.cpu_s += time.thread_time() - t
            return _response(url, 200, json.dumps(reply).encode(), {"X-Amz-Executed-Version": "$LATEST"})
        finally:
            self._free_slot()

    def requests(self) -> dict[str, int]:
        with self._lock:
            return {kind: n for (_, kind), n in self.counts.items()}

    def reset_counts(self) -> None:
        with self._lock:
            self.counts.clear()


def _lambda_error(url: str, status: int, code: str, message: str) -> Any:
    body = json.dumps({"Type": "User", "message": message}).encode()
    return _response(url, status, body, {"x-amzn-ErrorType": code, "Content-Type": "application/json"})


# -- both ---------------------------------------------------------------------------


class SimService:
    """A simulated S3 and Lambda, reachable by boto3 at ``s3_url`` and ``lambda_url``
    (in this process: ``install``). Keyword arguments: ``SimS3``'s
    (``put_rate``, ``get_rate``, ``partition``, ``s3_latency``) and
    ``SimLambda``'s (``concurrency``, ``invoke_latency``, ``queue_delay``,
    ``invoke_rate``, ``memory``)."""

    def __init__(self, clock: Clock | None = None, *, function: SimFunction | None = None,
                 put_rate: float | None = 3500.0, get_rate: float | None = 5500.0,
                 partition: Callable[[str], str] = default_partition, s3_latency: float = 0.0,
                 concurrency: int = 1000, invoke_latency: float = 0.025, queue_delay: float = 0.0,
                 invoke_rate: float | None = None, memory: int = 1024) -> None:
        install()
        self.clock = clock or Clock()
        self.s3 = SimS3(self.clock, put_rate=put_rate, get_rate=get_rate, partition=partition, latency=s3_latency)
        self.lambda_ = SimLambda(self.s3, self.clock, concurrency=concurrency, invoke_latency=invoke_latency,
                                 queue_delay=queue_delay, invoke_rate=invoke_rate, memory=memory)
        if function is not None:
            self.lambda_.function = function
        n = next(_ids)
        self._hosts = (f"s3.sim{n}.invalid", f"lambda.sim{n}.invalid")
        self.s3_url = f"http://{self._hosts[0]}"
        self.lambda_url = f"http://{self._hosts[1]}"
        self._s3_cpu = 0.0
        _ROUTES[self._hosts[0]] = self._timed_s3
        _ROUTES[self._hosts[1]] = self.lambda_.handle

    def _timed_s3(self, request: Any) -> Any:
        t = time.thread_time()
        try:
            return self.s3.handle(request)
        finally:
            self._s3_cpu += time.thread_time() - t

    @property
    def cpu_s(self) -> float:
        """CPU seconds spent inside the simulator (to subtract from a driver's)."""
        return self._s3_cpu + self.lambda_.cpu_s

    def requests(self, side: str | None = "client") -> dict[str, int]:
        """S3 requests by kind (``side``: "client", "worker" or None for both) plus Lambda's."""
        out = dict(self.s3.requests(side))
        if side in (None, "client"):
            for kind, n in self.lambda_.requests().items():
                out[kind] = out.get(kind, 0) + n
        return out

    def reset_counts(self) -> None:
        self.s3.reset_counts()
        self.lambda_.reset_counts()

    def close(self) -> None:
        for host in self._hosts:
            _ROUTES.pop(host, None)
        self.lambda_.close()

    def __enter__(self) -> "SimService":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
