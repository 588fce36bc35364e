"""``wrenpack build-runtime``: a thin layer over :func:`runtime_builder.build`."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import wrenpack.backends.aws.runtimes as runtimes
from wrenpack import limits
from wrenpack.cli import JSON_SHOWN, json_errors
from wrenpack.config import env_directory

#: the container recipe for a Python without a Lambda base image to build on (next to Dockerfile.runtime)
CUSTOM_DOCKERFILE = "Dockerfile.custom-runtime"

MIB = 1024 * 1024


def register(subparsers: Any, name: str) -> None:
    p = subparsers.add_parser(
        name, help="build a slim, verified runtime that fits Lambda's limits",
        description="Resolve, pin (requirements.lock), install Lambda-platform wheels, trim, compile .pyc, "
                    "verify every import, check the size budget and pack a layer zip and a tar.zst archive.")
    p.add_argument("packages", nargs="*", metavar="PACKAGE", help="requirement specifiers, e.g. 'numpy>=2'")
    p.add_argument("-r", "--requirement", dest="requirements", action="append", default=[], metavar="FILE",
                   help="requirements file (repeatable)")
    p.add_argument("--pyproject", metavar="PATH", help="take [project] dependencies from this pyproject.toml")
    p.add_argument("--from-profile", dest="profile", metavar="FILE.json",
                   help="the packages a `wrenpack profile --json` run saw imported, at their local versions")
    p.add_argument("--lock", metavar="FILE", help="install exactly this hashed lock file (skip resolution)")
    p.add_argument("--python", metavar="X.Y", help="target Python version (default: this interpreter's)")
    p.add_argument("--arch", choices=list(limits.ARCHITECTURES), default="x86_64", help="target architecture (default x86_64)")
    p.add_argument("--target", choices=["layer", "archive"], default="layer",
                   help="size budget to enforce: layer (250 MiB unzipped, less 1 MiB for the function's own package) "
                        "or archive (extracted into /tmp); default layer")
    p.add_argument("--tmp-size", type=int, default=512, metavar="MiB",
                   help="the function's /tmp size for --target archive (512-10240; default 512)")
    p.add_argument("--sourceless", action="store_true", help="ship .pyc only (smaller; no source in tracebacks)")
    p.add_argument("--keep-boto3", action="store_true",
                   help="ship boto3/botocore/s3transfer in the runtime (trimmed by default: Lambda's runtime "
                        "already has them; keep them to pin your own version)")
    p.add_argument("--no-strip", dest="strip", action="store_false", help="do not strip .so files")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip the import check (needed when this machine cannot run the target)")
    p.add_argument("--verify-import", dest="verify_modules", action="append", default=[], metavar="MODULE",
                   help="also import this module in the check (repeatable), e.g. scipy.sparse")
    p.add_argument("--skip-import", dest="skip_imports", action="append", default=[], metavar="MODULE",
                   help="do not import this module in the check (repeatable)")
    p.add_argument("--disable-rule", dest="disabled_rules", action="append", default=[], metavar="RULE",
                   help="turn off a trim rule (repeatable): build-tools, lambda-provided, pycache, tests, "
                        "sources, stubs, docs, scripts-data, dist-info, duplicate-libs, static-libs, strip-so (= --no-strip), "
                        "optional (every optional "
                        "component) or one component's rule, e.g. optional:pyarrow.flight")
    p.add_argument("--installer", choices=["auto", "uv", "pip"], default=None,
                   help="who downloads and unpacks the wheels: auto (uv when installed, else pip; the default, "
                        "or $WRENPACK_INSTALLER), uv or pip; pip picks the files either way")
    p.add_argument("--upgrade", action="store_true", help="re-resolve to the newest allowed versions")
    p.add_argument("--no-cache", dest="use_cache", action="store_false", help="rebuild even if cached")
    p.add_argument("--cache-dir", metavar="DIR", help="cache location (default ~/.cache/wrenpack/runtimes)")
    p.add_argument("--fit", action="store_true",
                   help="when the runtime is over budget, build the first mode that fits: layer with sources, then "
                        "sourceless layer, then archive in /tmp (--tmp-size); prints what it chose and why")
    p.add_argument("--zstd-level", type=int, default=None, metavar="N",
                   help="archive compression level (1-22; default 10 on every core, fast)")
    p.add_argument("--max-compression", action="store_true",
                   help="smallest artifacts, slowly: zstd level 19 and zip level 9")
    p.add_argument("--artifacts", choices=["auto", "all"], default="auto",
                   help="auto: only what the target needs (layer.zip for layer, runtime.tar.zst for archive); "
                        "all: both")
    p.add_argument("--output", "-o", default=".wrenpack/runtime", metavar="DIR",
                   help="where python/, manifest.json, layer.zip, runtime.tar.zst, requirements.lock go "
                        "(default .wrenpack/runtime)")
    p.add_argument("--docker", action="store_true",
                   help="build inside a Lambda base image with Dockerfile.runtime (needs a Docker engine)")
    p.add_argument("--base-image", default=None, metavar="IMAGE",
                   help="base image for --docker (default public.ecr.aws/lambda/python:X.Y, or python:X.Y-slim "
                        "with --custom-runtime)")
    p.add_argument("--custom-runtime", action="store_true",
                   help="--docker: build Dockerfile.custom-runtime (python:X.Y-slim + awslambdaric) instead of the "
                        "Lambda base image; the default for a Python whose Lambda runtime AWS blocks (3.10, 3.11)")
    p.add_argument("--tag", default=None, help="image tag for --docker (default wrenpack-runtime:<hash>)")
    p.add_argument("--network", default=None, metavar="MODE",
                   help="network mode of the --docker build containers (e.g. host), as `docker build --network`")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary")
    p.set_defaults(func=run)


@json_errors(indent=2)  # (the build's own report, when it has one, is the document: ``JSON_SHOWN``)
def run(args: argparse.Namespace) -> int:
    from wrenpack.errors import BudgetExceeded, BuildError

    _check_lock_alone(args)
    if args.docker:
        from runtime_builder import docker_build

        _refuse_options_docker_ignores(args)

        dockerfile, base_image = _docker_recipe(args, docker_build.DOCKERFILE)
        out = docker_build.build_image(
            args.packages, requirements_files=args.requirements, pyproject=args.pyproject, profile=args.profile,
            lock=args.lock, python=args.python, arch=args.arch, output=args.output, base_image=base_image,
            tag=args.tag, sourceless=args.sourceless, keep_boto3=args.keep_boto3, network=args.network,
            dockerfile=dockerfile)
        print(json.dumps(out, indent=2) if args.json else f"built image {out['tag']} ({out['image_id']})")
        return 0

    import runtime_builder

    if args.python is not None:
        _check_lambda_python(args.python)
    _check_installer(args.installer)
    if args.cache_dir is None:
        env_directory("WRENPACK_CACHE_DIR")  # the builder's default cache: a ConfigError naming it if unusable
    try:
        res = runtime_builder.build(
            args.packages, requirements_files=args.requirements, pyproject=args.pyproject, profile=args.profile,
            lock=args.lock, python=args.python, arch=args.arch, output=args.output, sourceless=args.sourceless,
            keep_boto3=args.keep_boto3, target=args.target, tmp_size_mb=args.tmp_size, strip=args.strip,
            verify_imports=args.verify, verify_modules=args.verify_modules, skip_imports=args.skip_imports,
            cache_dir=args.cache_dir, use_cache=args.use_cache, upgrade=args.upgrade, zstd_level=args.zstd_level,
            max_compression=args.max_compression, artifacts=args.artifacts, fit=args.fit,
            disabled_rules=args.disabled_rules, installer_choice=args.installer)
    except BuildError as exc:
        report = getattr(exc, "report", None)
        if args.json:
            print(json.dumps(report or {"ok": False, "stage": "inputs", "error": type(exc).__name__,
                                        "message": str(exc)}, indent=2))
            setattr(exc, JSON_SHOWN, True)
        elif isinstance(exc, BudgetExceeded) and exc.rows:
            _print_budget_table(exc.rows)
        raise
    if args.json:
        m = res.manifest
        print(json.dumps({
            "ok": True, "output": res.output, "site_dir": res.site_dir,
            "layer_zip": _written(res.layer_zip, m, "layer_zip"), "archive": _written(res.archive, m, "archive"),
            "lock": res.lock, "manifest": res.manifest_path, "cache_hit": res.cache_hit,
            "seconds": round(res.seconds, 3), "target": m["target"], "sizes": m["sizes"],
            "packages": m["packages"], "rules": m["rules"], "verified": m["verified"],
            "mode": m.get("mode"), "rollbacks": m.get("rollbacks", []), "fallbacks": m.get("fallbacks", []),
            "glibc": m.get("glibc"), "content_hash": m["content_hash"], "installer": m.get("installer"),
            "components": m.get("components"), "identical_files": m.get("identical_files"),
            "stage_seconds": res.stage_seconds, "built_stage_seconds": m.get("stage_seconds"),
        }, indent=2))
        return 0
    _print_human(res)
    return 0


def _check_lock_alone(args: argparse.Namespace) -> None:
    """``--lock`` installs the lock exactly, with no resolution: requirements given beside it would be
    ignored without a word (a package named but not locked would be missing from the runtime), so they
    are refused. ``--from-profile`` may stay: its imported modules choose what the import check proves."""
    if not args.lock:
        return
    given = [flag for flag, value in (("PACKAGE", args.packages), ("-r", args.requirements),
                                      ("--pyproject", args.pyproject)) if value]
    if given:
        from wrenpack.errors import ConfigError

        raise ConfigError(f"--lock {args.lock} installs exactly that lock, so {', '.join(given)} beside it would be "
                          "ignored; drop them, or build from them without --lock (the build writes a new hashed "
                          "requirements.lock)")


def _check_installer(installer: str | None) -> None:
    """``--installer uv`` forces uv and never falls back to pip: without a uv, refuse it now, naming the
    option, rather than after resolving with the builder's message about ``WRENPACK_INSTALLER``."""
    if installer != "uv":
        return
    from runtime_builder.installer import find_uv

    if find_uv() is None:
        from wrenpack.errors import ConfigError

        raise ConfigError("--installer uv but no uv was found; fix: pip install uv (or 'wrenpack[fast]'), "
                          "set WRENPACK_UV to its path, or pass --installer auto (uv when installed, else pip)")


def _written(path: str, manifest: dict[str, Any], key: str) -> str | None:
    """The artifact's path if this build wrote it, else None: ``--artifacts auto`` writes only what
    the target needs, and a summary naming a file that is not there sends a script to open nothing.
    The manifest's ``files`` says what was written; a manifest without it, whether the file is there."""
    files = manifest.get("files")
    if isinstance(files, dict) and key in files:
        return path if files[key] else None
    return path if os.path.exists(path) else None


#: options of a layer or archive build that a --docker build (an image) has no use for: (dest, default, flag)
_NOT_FOR_DOCKER = (("target", "layer", "--target"), ("tmp_size", 512, "--tmp-size"), ("strip", True, "--no-strip"),
                   ("verify", True, "--no-verify"), ("verify_modules", [], "--verify-import"),
                   ("skip_imports", [], "--skip-import"), ("disabled_rules", [], "--disable-rule"),
                   ("installer", None, "--installer"), ("upgrade", False, "--upgrade"), ("use_cache", True, "--no-cache"),
                   ("cache_dir", None, "--cache-dir"), ("fit", False, "--fit"), ("zstd_level", None, "--zstd-level"),
                   ("max_compression", False, "--max-compression"), ("artifacts", "auto", "--artifacts"))


def _refuse_options_docker_ignores(args: argparse.Namespace) -> None:
    """A --docker build makes an image with Dockerfile.runtime: the layer and archive
    options would be ignored without a word, so one given is refused in one line."""
    from wrenpack.errors import ConfigError

    given = [flag for dest, default, flag in _NOT_FOR_DOCKER if getattr(args, dest, default) != default]
    if given:
        raise ConfigError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to a layer or archive build, "
                          "not to --docker (an image built with Dockerfile.runtime); drop "
                          f"{'it' if len(given) == 1 else 'them'} or drop --docker")


def _check_lambda_python(python: str) -> None:
    """A layer or archive runs on one of Lambda's managed Python runtimes: a version
    Lambda has none of (3.15 before AWS adds it, 4.0, 3.9) is refused in one line
    before anything is resolved, naming the runtimes there are and the container
    image that carries any Python."""
    from wrenpack.errors import ConfigError

    wanted = runtimes.minor(python)
    if runtimes.find(wanted) is None:
        known = ", ".join(r.python for r in runtimes.table())
        raise ConfigError(f"--python {python}: Lambda has no python{wanted} runtime for a layer or archive to run on "
                          f"(it has {known}, as AWS listed them in {runtimes.table_date()}); give one of those, or "
                          f"build a container image that carries Python {wanted}: --docker --python {wanted}")


def _docker_recipe(args: argparse.Namespace, lambda_dockerfile: str) -> tuple[str, str | None]:
    """(Dockerfile, base image) of a --docker build: ``Dockerfile.custom-runtime`` on
    ``python:X.Y-slim`` when asked, or when Lambda takes no new functions on the
    target's runtime (the table in wrenpack/data/lambda_runtimes.json), else the
    Lambda base image's ``Dockerfile.runtime`` (``lambda_dockerfile``)."""
    python = runtimes.minor(args.python or "%d.%d" % sys.version_info[:2])
    custom = args.custom_runtime or runtimes.refusal(python, creating=True) is not None
    if not custom:
        return lambda_dockerfile, args.base_image
    return os.path.join(os.path.dirname(lambda_dockerfile), CUSTOM_DOCKERFILE), args.base_image or f"python:{python}-slim"


def _print_human(res: Any) -> None:
    from rich.console import Console
    from rich.markup import escape as e  # package names, paths and import errors are shown as written, not as markup
    from rich.table import Table

    m = res.manifest
    console = Console()
    pk = Table(title="largest packages", title_justify="left")
    pk.add_column("package")
    pk.add_column("version")
    pk.add_column("before MiB", justify="right")
    pk.add_column("after MiB", justify="right")
    for p in sorted(m["packages"], key=lambda p: -p["bytes_after"])[:12]:
        after = "provided by Lambda" if p["name"] in m.get("provided_by_lambda", []) else f"{p['bytes_after'] / MIB:.1f}"
        pk.add_row(e(p["name"]), e(p["version"]), f"{p['bytes_before'] / MIB:.1f}", after)
    console.print(pk)
    rules = Table(title="trim rules", title_justify="left")
    rules.add_column("rule")
    rules.add_column("saved MiB", justify="right")
    rules.add_column("files", justify="right")
    rules.add_column("rolled back for")
    for name, r in sorted(m["rules"].items(), key=lambda kv: -kv[1]["bytes_saved"]):
        rules.add_row(e(name), f"{r['bytes_saved'] / MIB:.1f}", str(r["files"]), e(", ".join(r.get("rolled_back_for", []))))
    rules.add_row("(bytecode added)", f"{-m['bytecode']['bytes_added'] / MIB:.1f}", "", "")
    console.print(rules)
    mode = m.get("mode") or {}
    if mode.get("why"):
        console.print(f"--fit chose a [bold]{mode['name']}[/bold]: {e(mode['why'])}")
    for fb in m.get("fallbacks", []):
        console.print("[yellow]note:[/yellow] " + e(f"the profile pinned {fb['profile']} (no wheel for the target); "
                                                     f"built {fb['name']}=={fb['using']}"))
    comp = m.get("components") or {}
    for name, mods in sorted((comp.get("kept") or {}).items()):
        console.print(e(f"kept optional component {name}: the function imports {', '.join(mods[:3])}"))
    for rb in m.get("rollbacks", []):
        console.print("[yellow]rolled back[/yellow] " + e(f"rule {rb['rule']} for {', '.join(rb['dists'])} "
                      f"({len(rb['files'])} files): `import {rb.get('module')}` raised {rb.get('error')}"))
    s = m["sizes"]
    limit = m["target"]["limit_bytes"]
    verified = (f"{len(m['verified']['modules'])} modules import" if m["verified"]["ok"]
                else "[yellow]NOT verified[/yellow]")
    g = m.get("glibc") or {}
    if g:
        verified += (f"; libraries need glibc {g['newest_needed']} at most (Lambda has {g['target']})"
                     if g.get("newest_needed") else "; no library needs glibc")
    installed = f" (installed with {m['installer']})" if m.get("installer") else ""
    console.print(
        f"{'cache hit' if res.cache_hit else 'built'} in {res.seconds:.1f} s{installed}: {s['raw'] / MIB:.1f} MiB raw -> "
        f"[bold]{s['trimmed'] / MIB:.1f} MiB[/bold] ({mode.get('name', m['target']['kind'])}, budget "
        f"{limit / MIB:.0f} MiB), {_artifacts(s)}; {verified}")
    stages = _stages(m.get("stage_seconds") or {})
    if res.cache_hit:
        if stages:
            console.print(f"stages when it was built (s): {stages}")
    else:
        console.print(f"stages (s): {_stages(res.stage_seconds)}")
    console.print(e(f"output: {res.output}  (python/ is the runtime; commit {res.lock})"))


def _stages(seconds: dict[str, float]) -> str:
    """``resolve 8.1, install 2.0, ...`` in the order the stages ran."""
    return ", ".join(f"{name} {s:.1f}" for name, s in seconds.items())


def _artifacts(sizes: dict[str, Any]) -> str:
    parts = [f"{label} {sizes[key] / MIB:.1f} MiB" for key, label in (("layer_zip", "layer.zip"),
                                                                       ("archive", "runtime.tar.zst"))
             if sizes.get(key) is not None]
    return ", ".join(parts) or "no artifacts"


def _print_budget_table(rows: list[tuple[str, int]]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    t = Table(title="largest packages (over budget)", title_justify="left")
    t.add_column("package")
    t.add_column("MiB", justify="right")
    for name, size in rows:
        t.add_row(escape(name), f"{size / MIB:.1f}")
    Console(file=sys.stderr).print(t)
