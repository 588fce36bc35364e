"""Size limits of the two ways a runtime reaches Lambda.

A layer counts against 250 MB (MiB) unzipped for the function plus all its
layers; an archive extracted at cold start must fit in /tmp (512 MiB by
default, up to 10,240) next to whatever the function writes there.
"""
from __future__ import annotations

from wrenpack.errors import BudgetExceeded

MIB = 1024 * 1024
LAYER_LIMIT = 250 * MIB
#: Lambda's 250 MiB also counts the function's own package, deployed beside the layer: wrenpack's handler
#: package (worker code and cloudpickle: 0.46 MiB unzipped in December 2026) with room to grow. Without it a
#: runtime just under 250 MiB passed the check and then could not be deployed.
FUNCTION_PACKAGE_RESERVE = 1 * MIB
DEFAULT_TMP_MB = 512


def limit_for(target: str, tmp_mb: int = DEFAULT_TMP_MB) -> int:
    return max(0, LAYER_LIMIT - FUNCTION_PACKAGE_RESERVE) if target == "layer" else tmp_mb * MIB


def where(target: str, tmp_mb: int = DEFAULT_TMP_MB) -> str:
    if target == "layer":
        return (f"the {LAYER_LIMIT / MIB:.0f} MiB layer limit (less {FUNCTION_PACKAGE_RESERVE / MIB:.0f} MiB kept "
                f"for the function's own package)")
    return f"/tmp ({tmp_mb} MiB)"


def check(size: int, packages: dict[str, int], *, target: str = "layer", tmp_mb: int = DEFAULT_TMP_MB) -> None:
    """Raise :class:`BudgetExceeded` (one-line message, ``rows`` = largest packages) when over."""
    limit = limit_for(target, tmp_mb)
    if size <= limit:
        return
    rows = sorted(packages.items(), key=lambda kv: -kv[1])[:10]
    top = ", ".join(f"{n} {s / MIB:.1f}" for n, s in rows[:5])
    fix = ("drop or split packages (a second layer shares the same 250 MiB), use --target archive with "
           "--tmp-size up to 10240, or build a container image with --docker") if target == "layer" else (
        "raise --tmp-size (up to 10240 MiB), drop packages, or build a container image with --docker")
    raise BudgetExceeded(
        f"runtime is {size / MIB:.1f} MiB unzipped, over {where(target, tmp_mb)} by {(size - limit) / MIB:.1f} MiB "
        f"(largest MiB: {top}); fix: {fix}", rows)
