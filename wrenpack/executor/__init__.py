"""The executor: a ``concurrent.futures.Executor`` that runs calls on one
backend with one store.

- ``core``: the ``Executor`` itself (its ``concurrent.futures`` face, the
  launch of one invocation per call, the call table that alone resolves
  futures, retries, segments, job clean-up);
- ``options``: option names, checks and resolution; ``owner``: owner records;
  ``prepared``: a launch's pickled function and arguments; ``arguments``: do
  a launch's calls fit its function (checked before ``.remote``/``.map``/
  ``.starmap``/``.spawn`` launch); ``own_modules``: on workers without the
  driver's files (Lambda), a launch whose pickles name a module of the
  user's own code is refused before it starts;
- ``launch``: the one launch path every API goes through, which picks a
  strategy: ``batching`` (chunksize), ``feed`` (large arguments, streamed),
  ``grouping`` (short calls, grouped), or one invocation per call;
  ``mapreduce``: map_reduce's forms; ``profiled``: what a function's saved
  profile says before launch.

The strategies use only the executor's public methods (``launch``,
``prepare``, ``args_packer``, ``check_open``, ``hold``/``unhold``,
``capabilities``, ``call_seconds``).
"""
from wrenpack.executor.core import Executor, check_executor, default_executor, reset_default_executor
from wrenpack.executor.launch import LaunchState, launch_calls
from wrenpack.executor.options import OPTION_NAMES, CallOptions, check_options
from wrenpack.executor.owner import owner_alive, owner_record
from wrenpack.executor.prepared import Prepared

__all__ = ["OPTION_NAMES", "CallOptions", "Executor", "LaunchState", "Prepared", "check_executor", "check_options",
           "default_executor",
           "launch_calls", "owner_alive", "owner_record", "reset_default_executor"]
