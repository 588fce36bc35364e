"""One map through the real Lambda backend against the simulated Lambda + S3
(``tests/aws/sim_service.py``): requests per call by kind, wall and driver
CPU, how late results were delivered. Shared by bench_lambda_cost.py (--sim)
and bench_lambda_scale.py. Benchmarks only."""
from __future__ import annotations

import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: us-east-1, first tier ($ per million requests)
#: WATCH: the GETs with which the handler looks for a running call's cancel marker (``handler.cancel_looks``)
PRICE = {"INVOKE": 0.20, "PUT": 5.00, "COPY": 5.00, "POST": 5.00, "LIST": 5.00, "GET": 0.40, "HEAD": 0.40, "DELETE": 0.0,
         "WATCH": 0.40}
KINDS = ["INVOKE", "PUT", "GET", "HEAD", "LIST", "POST", "DELETE", "WATCH"]


def fake_aws_env() -> None:
    """Credentials and region for boto3 that reach nothing but the simulator."""
    for key in [k for k in os.environ if k.startswith("AWS_ENDPOINT_URL") or k in ("AWS_PROFILE", "AWS_SESSION_TOKEN")]:
        del os.environ[key]
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                      AWS_REGION="us-east-1", AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWS_CONFIG_FILE=os.devnull)


def identity(x: Any) -> Any:
    return x


@dataclass
class SimRun:
    calls: int
    wall_s: float
    #: requests per call by kind: S3 of both sides (client and worker) and Lambda invokes
    per_call: dict[str, float]
    client_per_call: dict[str, float]
    #: the driver process's CPU (the simulator runs in a process of its own)
    driver_cpu_s: float
    #: the simulator process's CPU over the same run (HTTP and all)
    sim_cpu_s: float
    peak_rss_mb: float
    #: seconds (on the simulation's clock) from a call's end to its future's result
    delays: list[float] = field(default_factory=list)
    throttled: int = 0
    slowdowns: int = 0
    #: the most bytes the simulated S3 held at once (in the simulator's process)
    sim_peak_mb: float = 0.0
    #: the backend's sender processes' CPU over the run (``send_processes``)
    senders_cpu_s: float = 0.0

    @property
    def dollars(self) -> float:
        """Requests' price per million calls."""
        return sum(self.per_call.get(k, 0.0) * PRICE.get(k, 0.0) for k in self.per_call)

    @property
    def dollars_without_watch(self) -> float:
        """``dollars`` less the handler's cancel-marker GETs."""
        return self.dollars - self.per_call.get("WATCH", 0.0) * PRICE["WATCH"]

    @property
    def invokes_per_s(self) -> float:
        return self.calls / self.wall_s

    def delay(self, q: float) -> float:
        d = sorted(self.delays)
        return d[min(len(d) - 1, int(q * len(d)))] if d else float("nan")


def run(kind: str, calls: int, concurrency: int, duration: float, *, jitter: float = 0.1, speed: float = 1.0,
        invoke_latency: float = 0.025, s3_latency: float = 0.0, seed: int = 0, warm: int = 4,
        measure_delays: bool = True, in_process: bool = False, send_processes: int = 0) -> SimRun:
    """``calls`` calls of ``duration`` s (uniform +-``jitter`` of it) at ``concurrency``,
    ``kind`` "Event" or "RequestResponse", on a clock ``speed`` times real time.
    The simulated service runs in a process of its own (``tests/aws/sim_server.py``),
    reached over HTTP on 127.0.0.1, as AWS is not in the driver's process: the
    driver's CPU is its own. ``in_process``: the simulator in this process instead,
    its requests handed over inside botocore (no socket; the simulator's measured
    CPU is subtracted from the driver's), as these benchmarks ran before.
    ``send_processes``: the backend's sender processes (``LambdaBackend(send_processes=)``),
    whose CPU is measured apart (``senders_cpu_s``)."""
    import wrenpack
    from tests.aws.sim_server import RemoteSim
    from tests.aws.sim_service import Clock, ScaledClock
    from wrenpack.backends.aws.backend import LambdaBackend
    from wrenpack.executor import Executor
    from wrenpack.storage.s3 import S3Store

    clock = Clock() if speed == 1.0 else ScaledClock(speed)
    opts = dict(duration=duration, jitter=jitter, seed=seed, clock=clock, concurrency=max(concurrency, 1000),
                invoke_latency=invoke_latency, s3_latency=s3_latency, buckets=("simbench",))
    sim: Any = _InProcessSim(**opts) if in_process else RemoteSim(**opts)
    try:
        store = S3Store("simbench", "bench", endpoint_url=sim.s3_url, region="us-east-1")
        kwargs: dict[str, Any] = {}
        if speed != 1.0:
            kwargs["clock"] = clock
        backend = LambdaBackend(store, function_name="sim", endpoint_url=sim.lambda_url, region="us-east-1",
                                concurrency=concurrency, invocation_type=kind, send_processes=send_processes,
                                **kwargs)
        with Executor(backend=backend, storage="s3://simbench/bench", s3_endpoint_url=sim.s3_url,
                      lambda_endpoint_url=sim.lambda_url, function_name="sim", aws_region="us-east-1", memory=1024,
                      timeout=900, retries=0, invocation_type=kind, concurrency=concurrency) as ex:
            f = wrenpack.remote(identity, executor=ex)
            if warm:
                wrenpack.get(f.map(range(warm)))  # clients made, function looked up: not counted
            time.sleep(0.2)  # the warm job's cleanup
            sim.reset_counts()
            done_at: dict[int, float] = {}
            sim0 = sim.stats()["process_cpu_s"]
            cpu0 = time.process_time()
            senders0 = _children_cpu(os.getpid(), sim)
            t0 = time.perf_counter()
            futures = f.map(range(calls))
            if measure_delays:
                for i, fut in enumerate(futures):
                    fut.add_done_callback(lambda _f, i=i: done_at.__setitem__(i, clock.time()))
            out = wrenpack.get(futures)
            wall = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
            senders_cpu = _children_cpu(os.getpid(), sim) - senders0
            if in_process:
                cpu -= sim.stats()["process_cpu_s"] - sim0
            if out != list(range(calls)):
                raise AssertionError("wrong results from the simulated run")
            delays = [done_at[i] - float(fut.status["end"]) for i, fut in enumerate(futures)
                      if i in done_at and fut.status and "end" in fut.status]
            del futures, out
        stats = sim.stats()
        if stats["errors"]:
            raise AssertionError(f"the simulator failed: {stats['errors'][:3]}")
        counts = sim.requests(None)
        client = sim.requests("client")
        return SimRun(calls, wall, {k: v / calls for k, v in counts.items() if k in PRICE},
                      {k: v / calls for k, v in client.items()}, cpu, stats["process_cpu_s"] - sim0,
                      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, delays,
                      throttled=counts.get("THROTTLED", 0), slowdowns=stats["slowdowns"],
                      sim_peak_mb=stats["peak_bytes"] / 2**20, senders_cpu_s=senders_cpu)
    finally:
        sim.close()


def _children_cpu(pid: int, sim: Any) -> float:
    """CPU seconds (user + system) of ``pid``'s running child processes but the
    simulator's: the Lambda backend's sender processes (Linux /proc; 0 elsewhere)."""
    total = 0.0
    skip = getattr(sim, "pid", None)
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    children: list[str] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):  # (a child is listed under the thread that started it)
        try:
            children += (task / "children").read_text().split()
        except OSError:
            continue
    for child in children:
        if int(child) == skip:
            continue
        try:
            fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


class _InProcessSim:
    """``RemoteSim``'s interface to a ``SimService`` in this process."""

    def __init__(self, *, duration: float, jitter: float, seed: int, clock: Any, concurrency: int,
                 invoke_latency: float, s3_latency: float, buckets: tuple[str, ...]) -> None:
        import random
        import threading

        from tests.aws.sim_service import SimService
        from tests.aws.sim_worker import WrenpackFunction

        rng = random.Random(seed)
        lock = threading.Lock()

        def length(event: dict[str, Any]) -> float:
            with lock:
                return duration * (1.0 + jitter * (2 * rng.random() - 1))

        self._sim = SimService(clock, function=WrenpackFunction(identity, duration=length), concurrency=concurrency,
                               invoke_latency=invoke_latency, s3_latency=s3_latency)
        for bucket in buckets:
            self._sim.s3.create_bucket(bucket)
        self.s3_url, self.lambda_url = self._sim.s3_url, self._sim.lambda_url

    def requests(self, side: str | None = "client") -> dict[str, int]:
        return self._sim.requests(side)

    def reset_counts(self) -> None:
        self._sim.reset_counts()

    def stats(self) -> dict[str, Any]:
        sim = self._sim
        # (the simulator's own CPU, as it measures it: here "process" is the driver's too)
        return {"process_cpu_s": sim.cpu_s, "peak_bytes": sim.s3.peak_bytes,
                "slowdowns": sum(sim.s3.slowdowns.values()), "errors": list(sim.lambda_.errors[:20])}

    def close(self) -> None:
        self._sim.close()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
