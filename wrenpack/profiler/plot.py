"""Draw a profile's memory-over-time curve to a PNG (matplotlib, optional extra)."""
from __future__ import annotations

from pathlib import Path

from wrenpack import figure
from wrenpack.errors import ProfileError
from wrenpack.profiler.model import Profile


def plot_memory(prof: Profile, path: str | Path) -> Path:
    plt = figure.pyplot(ProfileError("--plot needs matplotlib: pip install 'wrenpack[plot]'"))
    t = prof.samples.get("t") or []
    rss = prof.samples.get("rss_mb") or []
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.plot(t, rss, lw=1.2, label="resident memory, process tree (sampled)")
    ax.axhline(prof.peak_memory_mb, color="tab:red", ls="--", lw=1, label=f"peak {prof.peak_memory_mb:,.1f} MB (OS high-water mark)")
    ax.axhline(prof.baseline_mb, color="tab:gray", ls=":", lw=1, label=f"baseline {prof.baseline_mb:,.1f} MB (interpreter + imports)")
    if prof.memory_mb:
        ax.axhline(prof.memory_mb, color="tab:green", ls="-.", lw=1, label=f"recommended Lambda memory {prof.memory_mb:,} MB")
    start, end = prof.samples.get("call_start_s"), prof.samples.get("call_end_s")
    if start is not None and end is not None and end > start:
        ax.axvspan(start, end, color="tab:blue", alpha=0.07, label="the call")
    ax.set_xlabel("time since launch (s)")
    ax.set_ylabel("MB (MiB)")
    ax.set_title(f"wrenpack profile: {prof.target}")
    ax.set_ylim(bottom=0)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return figure.save(fig, path, lambda why: ProfileError(f"{why}; choose a writable path for --plot"))
