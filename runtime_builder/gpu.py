"""Lambda has no GPU: refuse a lock that pulls GPU-only libraries, and name a CPU-only build that can be had.

PyTorch's CPU-only builds (``torch==2.6.0+cpu``) are not on PyPI but on
PyTorch's own index; plain ``torch`` from PyPI is the CUDA build. Advice is
only worth printing if it works as printed, so before advising, that index
(and every index pip already uses) is asked which ``+cpu`` builds have a wheel
for the target (its Python, architecture and glibc). The message then gives
the exact requirement lines, or says plainly that no CPU-only build can be
reached (the index does not answer, or has none for this runtime) and what
would change that - never a version that leads back to this error.
"""
from __future__ import annotations

import logging
import os

from packaging.utils import canonicalize_name

from runtime_builder import resolve
from runtime_builder.inputs import index_args
from runtime_builder.targets import Target
from wrenpack.errors import BuildError

log = logging.getLogger(__name__)

#: Distributions that only serve GPUs (CUDA runtime libraries, triton's GPU compiler): Lambda has no GPU.
GPU_PREFIXES = ("nvidia-",)
GPU_NAMES = frozenset({"triton", "pytorch-triton", "cupy", "jax-cuda12-plugin", "jax-cuda12-pjrt"})
#: PyTorch's index of CPU-only wheels; the environment variable names a mirror of it instead.
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CPU_INDEX_ENV = "WRENPACK_TORCH_CPU_INDEX"
#: The local version label of its builds, and the packages it serves (in the order they are pinned).
CPU_LABEL = "cpu"
CPU_INDEX_PACKAGES = ("torch", "torchvision", "torchaudio")
#: What to install instead, for other packages that usually pull GPU libraries in.
CPU_ALTERNATIVES = {
    "jax": "`jax[cpu]` (plain `jax` + `jaxlib`) instead of `jax[cuda12]`",
    "tensorflow": "`tensorflow-cpu`",
    "cupy": "numpy (cupy needs a GPU)",
}


def cpu_index() -> str:
    return os.environ.get(CPU_INDEX_ENV) or TORCH_CPU_INDEX


def is_gpu_only(name: str) -> bool:
    n = canonicalize_name(name)
    return n.startswith(GPU_PREFIXES) or n in GPU_NAMES


def check_gpu(lock_text: str, requested: set[str], target: Target | None = None) -> None:
    """Fail before installing when the lock pulls GPU-only libraries, naming who pulls them and the CPU build."""
    locked = resolve.parse_lock(lock_text)
    gpu = sorted(n for n in locked if is_gpu_only(n) and n not in requested)
    if not gpu:
        return

    def roots(name: str, seen: set[str]) -> set[str]:
        via = [canonicalize_name(v) for v in locked[name].via if canonicalize_name(v) in locked] if name in locked else []
        if not via or name in requested:
            return {name}
        out: set[str] = set()
        for v in via:
            if v not in seen:
                out |= roots(v, seen | {v})
        return out or {name}

    pullers = sorted(set().union(*(roots(g, {g}) for g in gpu)) - set(gpu)) or sorted(
        {canonicalize_name(v) for g in gpu for v in locked[g].via})
    shown = ", ".join(gpu[:4]) + (f" and {len(gpu) - 4} more" if len(gpu) > 4 else "")
    who = ", ".join(pullers) if pullers else "the requirements"
    problem = f"{who} pull{'s' if len(pullers) == 1 else ''} GPU-only libraries ({shown}) that Lambda, which has no GPU, cannot use"
    fixes = [f"for {p} use {CPU_ALTERNATIVES[p]}" for p in pullers if p in CPU_ALTERNATIVES]
    torch_like = [n for n in CPU_INDEX_PACKAGES if n in locked]
    if torch_like:
        note, fix = cpu_index_advice(torch_like, {n: locked[n].version for n in torch_like},
                                     target or Target.make(), index_args(lock_text))
        problem += note
        fixes.insert(0, fix)
    raise BuildError(f"{problem}; fix: {'; '.join(fixes) or 'install the package' + chr(39) + 's CPU-only build'}")


def _public(version: str) -> str:
    return version.split("+", 1)[0]


def _describe(target: Target) -> str:
    return f"python{target.python} {target.arch} (glibc {target.glibc[0]}.{target.glibc[1]})"


def _command(target: Target) -> str:
    arch = f" --arch {target.arch}" if target.arch != "x86_64" else ""
    return f"`wrenpack build-runtime -r FILE --python {target.python}{arch}`"


def _cpu_builds(looked: resolve.Probe, name: str, key: str) -> list[str]:
    found = looked.versions.get(name, {}).get(key, [])
    return [v for v in found if resolve.local_label(v) == CPU_LABEL]


def cpu_index_advice(names: list[str], locked: dict[str, str], target: Target,
                     index: list[str]) -> tuple[str, str]:
    """(what to add to the problem, the fix) for PyTorch packages, from what the indexes really offer the target.

    ``locked``: the versions the lock has (their ``+cpu`` twins are preferred);
    ``index``: the requirements' own index flags, searched too.
    """
    idx = cpu_index()
    flags = list(index) + ([] if idx in index else ["--extra-index-url", idx])
    try:
        looked = resolve.probe(names, target, flags)
    except BuildError as exc:
        return (f", and whether a CPU-only build can be had could not be checked ({exc})",
                f"put `--extra-index-url {idx}` and `{names[0]}==VERSION+{CPU_LABEL}` in a requirements file and run "
                f"{_command(target)}, once the indexes can be listed")
    down = looked.index_down(idx)
    choice: dict[str, str] = {}
    for n in names:
        builds = _cpu_builds(looked, n, "target")
        twin = f"{_public(locked[n])}+{CPU_LABEL}"
        best = twin if twin in builds else resolve.newest(builds)
        if best:
            choice[n] = best
    missing = [n for n in names if n not in choice]
    if not missing:
        lines = ([] if down else [f"--extra-index-url {idx}"]) + [f"{n}=={choice[n]}" for n in names]
        where = f" (found on the indexes pip already uses; {idx} did not answer: {down})" if down else ""
        log.info("CPU-only builds for %s: %s%s", _describe(target), ", ".join(lines), where)
        return "", (f"use the CPU-only build{'s' if len(names) > 1 else ''}{where}: put "
                    f"{' and '.join(f'`{ln}`' for ln in lines)} in a requirements file (with your other "
                    f"requirements) and run {_command(target)}")
    n = missing[0]
    newest_any = resolve.newest(_cpu_builds(looked, n, "any"))
    seen = f"{n}=={newest_any}" if newest_any else ""
    if down:
        note = (f", and no CPU-only build of {n} can be reached from here: PyTorch's CPU index {idx} does not answer "
                f"({down})" + (f" and the {n}+{CPU_LABEL} builds other indexes have (newest {seen}) have no wheel "
                               f"for {_describe(target)}" if seen else ""))
        fix = (f"where {idx} answers (or with {CPU_INDEX_ENV} naming a mirror of it), build again and this check "
               f"names the exact {n}==VERSION+{CPU_LABEL} line it found for the target; or download a {n}+"
               f"{CPU_LABEL} wheel for {_describe(target)} into a directory DIR, put `--find-links DIR` and "
               f"`{n}==VERSION+{CPU_LABEL}` in a requirements file and run {_command(target)}")
        return note, fix
    has = f"has {n}+{CPU_LABEL} builds (newest {seen}) but none" if seen else f"has no {n}+{CPU_LABEL} build"
    note = f", and no CPU-only build of {n} can be had for this runtime: {idx} {has} with a wheel for {_describe(target)}"
    newer = target.newer_runtime()
    if newer:
        other = Target.make(newer[0], target.arch)
        try:
            builds = _cpu_builds(resolve.probe([n], other, flags), n, "target")
        except BuildError:
            builds = []
        if builds:
            best = resolve.newest(builds)
            return note, (f"build for --python {newer[0]} ({newer[1]}, glibc {newer[2][0]}.{newer[2][1]}), which "
                          f"has one: put `--extra-index-url {idx}` and `{n}=={best}` in a requirements file and run "
                          f"{_command(other)}")
    return note, (f"none of Lambda's Python runtimes has one there either; a CPU-only {n} for Lambda needs a wheel "
                  f"built for {_describe(target)} or an older glibc: put it in a directory DIR, `--find-links DIR` "
                  f"and `{n}==VERSION+{CPU_LABEL}` in a requirements file, and run {_command(target)}")
