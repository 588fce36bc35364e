"""A stand-in for the Lambda context object, for calls the local backend runs."""
from __future__ import annotations

import time
import uuid


class LocalContext:
    """Has the attributes and the one method of Lambda's Python context that
    user code and wrenpack's handler read."""

    def __init__(self, *, function_name: str, memory_mb: int, deadline: float, request_id: str | None = None) -> None:
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = str(memory_mb)
        self.invoked_function_arn = f"arn:aws:lambda:local:000000000000:function:{function_name}"
        self.aws_request_id = request_id or str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "local"
        self._deadline = deadline
        #: local backend: the call's arguments as sealed memfds (``wrenpack.worker.handoff``)
        self.handoff_fds: list[int] = []
        #: local backend: a memfd of the driver's to write a large result into
        self.result_slab: int | None = None

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.time()) * 1000))
