"""A Profile as readable tables (rich), for people; ``--json`` is for machines.

Every text that comes from the user (target, arguments, source lines, package names, notes that quote
them, paths) is escaped: rich reads ``[...]`` as markup, so ``b[i] = 1`` showed as ``b = 1`` and an
argument holding ``[/x]`` crashed the report."""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from wrenpack.profiler import sizing
from wrenpack.profiler.model import Profile


def _usd(x: float) -> str:
    return f"${x:,.2f}" if x >= 0.01 else f"${x:.3g}"


def _mb(x: float) -> str:
    return f"{x:,.1f} MB"


def _secs(x: float) -> str:
    return f"{x:,.3f} s" if x < 100 else f"{x:,.0f} s"


def render(prof: Profile, plot: str | None = None, console: Console | None = None, saved: str | None = None) -> None:
    """Print the tables; ``saved`` is where the profile was written (nothing is said when it was not)."""
    console = console or Console(emoji=False)  # (no ":name:" here is an emoji; rich's emoji table is 5 ms to import)
    rep = prof.repeat or {}
    n = rep.get("n", 1)

    measured = Table(title=escape(f"wrenpack profile: {prof.target}({prof.args})"), show_header=True, title_justify="left")
    measured.add_column("measured")
    measured.add_column("value", justify="right")
    measured.add_column("", style="dim")
    peak_note = "OS high-water mark, process tree"
    dur_note = "the call only"
    if n > 1:
        p, d = rep["peak_memory_mb"], rep["duration_s"]
        peak_note = f"max of {n}; min {p['min']:,.1f} / median {p['median']:,.1f}"
        dur_note = f"median of {n}; min {d['min']:.3f} / max {d['max']:.3f}"
    measured.add_row("peak memory", _mb(prof.peak_memory_mb), peak_note)
    measured.add_row("  baseline", _mb(prof.baseline_mb), f"interpreter + cloudpickle {prof.interpreter_mb:,.1f} MB, + imports and arguments")
    measured.add_row("  growth in the call", _mb(prof.growth_mb), "peak - baseline")
    measured.add_row("duration", _secs(prof.duration_s), dur_note)
    busy = (f"{prof.cores_busy:.2f} cores busy on average" if prof.cores_busy else
            "too short to say how many cores it kept busy")
    measured.add_row("CPU user / sys", f"{prof.cpu_user_s:.3f} / {prof.cpu_sys_s:.3f} s", busy)
    measured.add_row("/tmp peak", _mb(prof.tmp_peak_mb), f"{prof.tmp_final_mb:,.1f} MB left at the end")
    measured.add_row("processes", str(prof.processes), "the call's process tree, at most")
    measured.add_row("threads", str(prof.threads), "of those processes, at most (Lambda allows 1,024 in all)")
    measured.add_row("network", "not measurable", "no per-process counters on Linux")
    if prof.result_bytes:
        measured.add_row("result", f"{prof.result_bytes:,} bytes", f"pickled in {prof.serialize_s:.3f} s")
    console.print(measured)

    title = "recommended Lambda settings"
    if prof.scaling:
        title += f" at n={prof.scaling['sizes'][-1]:,} (the largest measured size; the target's are below)"
    _recommended(console, title, prof.recommended)

    if prof.packages or prof.local_modules:
        pk = Table(title="packages the call imported", title_justify="left")
        pk.add_column("distribution")
        pk.add_column("version")
        for item in prof.packages:
            pk.add_row(escape(item["name"]), escape(str(item.get("version") or "?")))
        for name in prof.local_modules:
            pk.add_row(escape(f"{name} (project module)"), "-", style="dim")
        console.print(pk)

    if prof.scaling:
        _scaling(console, prof.scaling)

    if prof.lines:
        lt = Table(title="memory by line (memory_profiler, separate run)", title_justify="left")
        for col, just in (("line", "right"), ("mem MB", "right"), ("increment MB", "right"), ("hits", "right"), ("source", "left")):
            lt.add_column(col, justify=just)
        for row in prof.lines:
            lt.add_row(
                str(row["line"]),
                f"{row['mem_mb']:,.1f}" if "mem_mb" in row else "",
                f"{row['increment_mb']:,.1f}" if "increment_mb" in row else "",
                str(row.get("occurrences", "")),
                escape(row["source"]),
            )
        console.print(lt)
    if plot:
        console.print(f"memory curve written to {escape(str(plot))}")
    if saved:
        console.print(f"[dim]saved as {escape(saved)} (used by memory=\"auto\")[/dim]")


def _recommended(console: Console, title: str, rec: dict[str, Any]) -> None:
    t = Table(title=title, title_justify="left")
    t.add_column("setting")
    t.add_column("value", justify="right")
    t.add_column("rule", style="dim")
    rules = rec.get("rules", {})
    t.add_row("memory", f"{rec['memory_mb']:,} MB", rules.get("memory", ""))
    t.add_row("timeout", f"{rec['timeout_s']:,} s", rules.get("timeout", ""))
    t.add_row("ephemeral storage", f"{rec['ephemeral_storage_mb']:,} MB", rules.get("ephemeral_storage", ""))
    t.add_row("estimated duration", _secs(rec["estimated_duration_s"]), f"{rec['vcpus']:.2f} vCPU; " + rules.get("duration", ""))
    cost = rec.get("cost", {})
    prices = cost.get("prices", {})
    for arch in ("x86_64", "arm64"):
        if arch in cost:
            c = cost[arch]
            t.add_row(f"cost {arch}", f"{_usd(c['per_call_usd'])} / call", f"{_usd(c['per_million_usd'])} per million calls")
    if prices:
        t.caption = f"prices: {prices.get('region')}, {prices.get('date')} (wrenpack/data/lambda_prices.json)"
    console.print(t)
    for note in rec.get("notes", []):
        console.print(f"[yellow]note:[/yellow] {escape(note)}")


def _scaling(console: Console, sc: dict[str, Any]) -> None:
    split = sc.get("wait_s") is not None  # profiles saved before CPU and wait were fitted apart have neither
    t = Table(title=escape(f"scaling with {sc['input']}(n)"), title_justify="left")
    t.add_column("n", justify="right")
    t.add_column("memory above baseline", justify="right")
    t.add_column("wall time", justify="right")
    if split:
        t.add_column("CPU", justify="right")
        t.add_column("wait (I/O, sleep)", justify="right")
        t.add_column("calls timed", justify="right")
        rows = zip(sc["sizes"], sc["memory_growth_mb"], sc["duration_s"], sc["cpu_s"], sc["wait_s"], sc.get("reps") or [1] * len(sc["sizes"]))
        for n, g, d, c, w, k in rows:
            t.add_row(f"{n:,}", _mb(g), _secs(d), _secs(c), _secs(w), str(k))
    else:
        for n, g, d in zip(sc["sizes"], sc["memory_growth_mb"], sc["duration_s"]):
            t.add_row(f"{n:,}", _mb(g), _secs(d))
    pred = sc["predicted"]
    up = sc.get("upper") or pred
    mf = sc["memory_fit"]

    def formula(f: dict[str, Any], unit: str) -> str:
        if f.get("method", "").startswith("negligible"):
            return f"in proportion to n ({f['method']})"
        growth = "n ln n" if f.get("log") else f"n^{f['b']:.3g}"
        cv = f" , CV error {f['cv_error']:.1%}" if f.get("cv_error") is not None else ""
        return f"{f['c']:.4g} + {f['a']:.4g}*{growth} {unit} ({f['method']}{cv}, R^2 {f['r2']:.4f})"

    if split:
        extra = lambda d: [_secs(d["cpu_s"]), _secs(d["wait_s"]), ""]  # noqa: E731
        t.add_row(f"[bold]{sc['target']:,}[/bold] (predicted)", f"[bold]{_mb(pred['growth_mb'])}[/bold]",
                  f"[bold]{_secs(pred['duration_s'])}[/bold]", *extra(pred))
        t.add_row("  upper bound (used below)", _mb(up["growth_mb"]), _secs(up["duration_s"]), *extra(up))
        t.caption = (f"memory = {formula(mf, 'MB')}; CPU = {formula(sc['cpu_fit'], 's')}; "
                     f"wait = {formula(sc['wait_fit'], 's')}; predicted wall = CPU / cores + wait, on a core of its own "
                     f"(the measured wait for a core, {sum(sc.get('runq_s') or [0]):.3f} s in all, is the machine's load)")
    else:
        t.add_row(f"[bold]{sc['target']:,}[/bold] (predicted)", f"[bold]{_mb(pred['growth_mb'])}[/bold]", f"[bold]{_secs(pred['duration_s'])}[/bold]")
        t.add_row("  upper bound (used below)", _mb(up["growth_mb"]), _secs(up["duration_s"]))
        t.caption = f"memory = {formula(mf, 'MB')}; time = {formula(sc['time_fit'], 's')}"
    console.print(t)
    console.print(f"predicted peak at n={sc['target']:,}: {_mb(pred['peak_memory_mb'])}, up to {_mb(up['peak_memory_mb'])} "
                  f"(baseline {_mb(sc['baseline_mb'])} + growth)")
    rule = sc.get("size_rule")
    if split:
        console.print("memory=\"auto\" sizes each call at its own n, read as "
                      + (sizing.describe_rule(rule) if rule else "nothing (no measure is in proportion to n: pass auto_size=)"))
    for w in sc.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {escape(w)}")
    _recommended(console, f"recommended Lambda settings at n={sc['target']:,}", sc["recommended"])
