"""Matplotlib for the two PNGs wrenpack draws (a job report's timeline, a
profile's memory curve): imported only when one is asked for (an optional
extra), drawn off-screen, and written so that a bad path is the caller's
one-line error, never a traceback from inside matplotlib."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable


def pyplot(missing: Exception) -> Any:
    """``matplotlib.pyplot`` on the off-screen Agg backend; ``missing`` is raised without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise missing from None
    return plt


def save(fig: Any, path: str | Path, unwritable: Callable[[str], Exception]) -> Path:
    """Write ``fig`` to ``path`` and close it; ``unwritable(reason)`` is raised if the file cannot be written."""
    import matplotlib.pyplot as plt

    out = Path(path)
    try:
        fig.savefig(out)
    except OSError as exc:
        raise unwritable(f"could not write {out}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return out
