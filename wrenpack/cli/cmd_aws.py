"""``wrenpack deploy``, ``wrenpack undeploy``, ``wrenpack iam-policy``, ``wrenpack doctor``: the AWS side.

Only the command line lives here: options -> settings, and printing (text or
``--json``). What the commands do is in ``wrenpack.backends.aws`` (``deploy``,
``undeploy``, ``doctor``, ``iam``), so the library and tests use it without argparse.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from wrenpack.backends.aws.deploy import DeployRequest, check_deploy, deploy_functions
from wrenpack.backends.aws.doctor import doctor_checks
from wrenpack.backends.aws.iam import ROLES, iam_policy
from wrenpack.cli import cmd_acceptance, json_errors, usage_error
from wrenpack.config import current
from wrenpack.errors import ConfigError


# -- configuration ------------------------------------------------------------
def _add_aws_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("AWS settings (default: wrenpack configuration)")
    g.add_argument("--storage", help="s3://BUCKET/PREFIX for job objects")
    g.add_argument("--function-name", dest="function_name")
    g.add_argument("--region", dest="aws_region")
    g.add_argument("--profile", dest="aws_profile")
    g.add_argument("--s3-endpoint-url", dest="s3_endpoint_url")
    g.add_argument("--lambda-endpoint-url", dest="lambda_endpoint_url")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def _config(args: argparse.Namespace) -> Any:
    names = ("storage", "function_name", "aws_region", "aws_profile", "s3_endpoint_url", "lambda_endpoint_url")
    return current(**{n: getattr(args, n, None) for n in names if getattr(args, n, None) is not None})


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _usage_error(args: argparse.Namespace, exc: ConfigError) -> int:
    """Bad settings or options, before any AWS request (deploy, undeploy and iam-policy alike;
    1 is for what AWS refused or what failed there): ``usage_error``, exit 2."""
    return usage_error(args, type(exc).__name__, str(exc), indent=2)


# -- commands -------------------------------------------------------------------
@json_errors(indent=2)
def cmd_deploy(args: argparse.Namespace) -> int:
    """Exit 0 when every function was deployed, 1 when AWS refused something or it failed
    there (nothing deployed after that), 2 for bad settings or options (``check_deploy``)."""
    request = DeployRequest(
        memory=args.memory or (), timeout=args.timeout or (), ephemeral_storage=args.ephemeral_storage or (),
        from_profiles=args.from_profiles, architecture=args.architecture, python=args.python,
        runtime_dir=args.runtime_dir, runtime_archive=args.runtime_archive, image_uri=args.image_uri,
        role=args.role, reserved_concurrency=args.reserved_concurrency, replace_store=args.replace_store,
    )
    try:
        cfg = _config(args)
        plan = check_deploy(cfg, request, warn=_warn)
    except ConfigError as exc:
        return _usage_error(args, exc)
    done = deploy_functions(cfg, request, warn=_warn, plan=plan)
    if args.json:
        print(json.dumps({"functions": done}, indent=2))
    else:
        for d in done:
            # (the store it serves: a caller whose storage lies outside it is refused)
            serving = f" serving {d['store']}" if d.get("store") else " serving no store"
            was = f" (it served {d['previous_store']} before)" if d.get("previous_store") else ""
            print(f"{d['action']} Lambda function {d['function']} (python{d['python']}, {d['memory']} MB, {d['timeout']} s, "
                  f"/tmp {d['ephemeral_storage']} MB, {d['architecture']}){serving}{was}")
    return 0


@json_errors(indent=2)
def cmd_undeploy(args: argparse.Namespace) -> int:
    """Exit 0 when everything listed was removed (or there was nothing), 1 when something
    could not be (or the removal was not confirmed), 2 for bad settings or options."""
    from wrenpack.backends.aws.undeploy import check_undeploy, plan_undeploy, undeploy

    try:
        cfg = _config(args)
        check_undeploy(cfg)
        if not (args.yes or args.dry_run) and (args.json or not sys.stdin.isatty()):
            why = "--json prints no question" if args.json else "stdin is no terminal to answer on"
            raise ConfigError(f"undeploy asks before it removes anything and {why}: pass --yes to remove "
                              "without asking, or --dry-run to list what it would remove")
    except ConfigError as exc:
        return _usage_error(args, exc)
    plan = plan_undeploy(cfg)
    if args.dry_run or not plan.count():
        if args.json:
            print(json.dumps(dict(plan.summary(), dry_run=args.dry_run), indent=2))
            return 0
        _print_kept(plan.kept)
        if not plan.count():
            print(f"nothing to remove for function family {plan.family} and store {plan.store}")
        else:
            print(f"would remove ({plan.count()}):")
            print("\n".join(f"  {line}" for line in plan.lines()))
        return 0
    if not args.yes:
        _print_kept(plan.kept)
        print(f"to remove for function family {plan.family} and store {plan.store}:")
        print("\n".join(f"  {line}" for line in plan.lines()))
        try:
            answer = input(f"remove these {plan.count()}? [y/N] ")
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing removed")
            return 1

    def said(what: str, error: str | None) -> None:
        if args.json:
            return
        if error is None:
            print(f"removed {what}")
        else:
            print(f"could not remove {what}: {error}", file=sys.stderr)

    done = undeploy(cfg, plan, on_done=said)
    if args.json:
        print(json.dumps(done, indent=2))
    else:
        if args.yes:
            _print_kept(plan.kept)
        _print_kept(done["kept"][len(plan.kept):])
        failed = f"; {len(done['failed'])} could not be removed" if done["failed"] else ""
        print(f"removed {len(done['functions'])} function(s), {len(done['layer_versions'])} layer version(s) and "
              f"{len(done['objects'])} object(s){failed}")
    return 0 if done["ok"] else 1


def _print_kept(kept: list[dict[str, str]]) -> None:
    for item in kept:
        print(f"keeping {item['what']}: {item['why']}")


@json_errors(indent=2)
def cmd_iam_policy(args: argparse.Namespace) -> int:
    """Exit 0 with the policy, 2 for bad settings or options (it makes no AWS request)."""
    from wrenpack.backends.aws.clients import check_configured_region

    try:
        cfg = _config(args)
        # The policy makes no request, so nothing else would say that the region its ARNs name does not
        # exist (an availability zone, us-east-1a): such a policy grants nothing once attached.
        check_configured_region(cfg)
        policy = iam_policy(cfg, args.role_for, args.account, args.worker_role)
    except ConfigError as exc:
        return _usage_error(args, exc)
    print(json.dumps(policy, indent=2))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    if args.acceptance:
        return cmd_acceptance.run(args, _config(args))
    checks = doctor_checks(_config(args))
    bad = [c for c in checks if not c["ok"]]
    if args.json:
        print(json.dumps({"ok": not bad, "checks": checks}, indent=2))
    else:
        from rich.console import Console  # only for the table: --json needs none of it
        from rich.markup import escape
        from rich.table import Table

        table = Table(title="wrenpack doctor")
        for col in ("check", "status", "detail"):
            table.add_column(col)
        for c in checks:
            mark = "[yellow]WARN[/yellow]" if c.get("warning") else "[green]ok[/green]" if c["ok"] else "[red]FAIL[/red]"
            table.add_row(c["check"], mark, escape(c["detail"]))  # details hold [tool.wrenpack] and the like
        Console().print(table)
    return 1 if bad else 0


# -- registration --------------------------------------------------------------------
def register(subparsers: Any, name: str) -> None:
    if name == "deploy":
        p = subparsers.add_parser(name, help="create or update the Lambda worker functions, one per settings set")
        p.add_argument("--role", help="execution role ARN (needed to create the function)")
        src = p.add_argument_group("runtime (at most one)")
        src.add_argument("--runtime-dir", help="`wrenpack build-runtime` output: publish its layer.zip as a layer")
        src.add_argument("--runtime-archive", help="`wrenpack build-runtime` output: upload python/ as a tar.gz to S3, extracted to /tmp")
        src.add_argument("--image-uri", help="a container image (ECR URI) that holds the runtime and wrenpack")
        p.add_argument("--memory", type=int, action="append",
                       help="MB (repeat for several functions; default: the memory setting)")
        p.add_argument("--timeout", type=float, action="append", help="seconds (repeatable; default: the timeout setting)")
        p.add_argument("--ephemeral-storage", type=int, action="append",
                       help="/tmp size in MB (repeatable; default: the ephemeral_storage setting)")
        p.add_argument("--from-profiles", action="store_true",
                       help="also deploy the settings the saved profiles (.wrenpack/profiles) recommend")
        p.add_argument("--reserved-concurrency", type=int,
                       help="reserve this much of the account's concurrency for each function (also caps it)")
        p.add_argument("--python", help="Python minor version of the functions, e.g. 3.12 (default: this interpreter's; "
                                        "refused when Lambda no longer takes that runtime, unless --image-uri)")
        p.add_argument("--architecture", choices=["x86_64", "arm64"], help="default: the architecture setting")
        p.add_argument("--replace-store", action="store_true",
                       help="re-point functions that serve another store at --storage (without it deploy refuses: "
                            "their current callers would all be refused)")
        _add_aws_options(p)
        p.set_defaults(func=cmd_deploy)
    elif name == "undeploy":
        p = subparsers.add_parser(
            name, help="remove the Lambda functions, layers and runtime objects deploy created",
            description="Remove what `wrenpack deploy` and lambda_auto_deploy created for a function family: its "
                        "functions (those whose environment names the family and whose name has deploy's form, "
                        "<function_name>-<10 hex>), the versions of its <function_name>-runtime layer, and the "
                        "runtime archives and layer uploads under the store's runtimes/ and deploy/ that no function "
                        "staying uses and that a removed function used or deploy tagged with the family. What is "
                        "kept is named, with the command that removes it. Lists what it will remove and asks first. "
                        "Exit 0: done or nothing to do; 1: something could not be removed (each named; the rest is "
                        "removed) or not confirmed; 2: bad settings (under --json also as a JSON error) or an unknown option "
                        "(argparse's usage line).")
        p.add_argument("--yes", "-y", action="store_true", help="remove without asking")
        p.add_argument("--dry-run", action="store_true", help="only list what would be removed and what kept")
        _add_aws_options(p)
        p.set_defaults(func=cmd_undeploy)
    elif name == "iam-policy":
        p = subparsers.add_parser(name, help="print a least-privilege IAM policy for the bucket and function")
        p.add_argument("--for", dest="role_for", choices=list(ROLES), default="client",
                       help="client: run jobs; worker: the function's execution role; deploy: client + deploy; "
                            "acceptance: deploy + what `wrenpack doctor --acceptance` deletes")
        p.add_argument("--account", default="*", help="AWS account id to put in ARNs (default *)")
        p.add_argument("--worker-role", help="deploy: the execution role's ARN or name, the only role deploy may pass "
                                             "(default: a role named like the function)")
        _add_aws_options(p)
        p.set_defaults(func=cmd_iam_policy)
    else:
        p = subparsers.add_parser(name, help="check credentials, bucket, function, runtime and Python versions")
        _add_aws_options(p)
        cmd_acceptance.add_options(p)
        p.set_defaults(func=cmd_doctor)
