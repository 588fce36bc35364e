"""``wrenpack undeploy``: remove what ``wrenpack deploy`` and ``lambda_auto_deploy`` created.

A program leaves nothing behind: deploy creates, for a function family
(``function_name``), functions, layer versions and objects in the store that
nothing else removes, and a user who tried wrenpack on Lambda had to find them
by hand. Undeploy removes them, and only what is known to be the family's and
used by nothing that stays; what it is unsure of it keeps, and says why::

    functions       those whose environment names the family (``ENV_FAMILY``) and whose
                    name has deploy's form, ``<function_name>-<10 hex>``. Nothing else tells
                    a function deploy made: one made by hand (a console duplicate, a
                    Terraform copy) with that name and environment is removed too, one with
                    another name is kept and named. One serving another store (``ENV_STORE``)
                    is kept: that store's callers use it.
    layer versions  every version of ``<function_name>-runtime`` (``--runtime-dir``), but
                    one a function that stays uses.
    runtimes/       a runtime archive (``--runtime-archive``) a removed function uses, or
                    one no function uses whose S3 metadata (``deploy.ARCHIVE_DEPLOYS``: the
                    family and region of each deploy that uploaded it) names the family: an
                    earlier deploy's, or the one the family's copies for other stores used.
                    Either is kept while a function that stays uses it, or one whose
                    environment cannot be read might; one a copy serving another store uses
                    is named with that store's undeploy, to run first. One that names only
                    other families is theirs, and not listed; one that names another family
                    too (two families with the same runtime share its archive), or the
                    family in another region (whose functions this undeploy does not see),
                    is kept and named with the undeploys that remove it, and this
                    undeploy's name is taken off it. One that names none (uploaded before
                    deploy tagged them) is kept and named with the command that removes it,
                    unless another family's function uses it (that family's undeploy
                    removes it). An archive a removed function uses outside this store's
                    runtimes/ (a copy for another store uses its template's) is named with
                    the undeploy of the store that holds it.
    deploy/         a layer zip uploaded because it was too large to go inline, whose content
                    is one of the family's layer versions: Lambda copied it when the layer
                    was published, and nothing reads it again. Others are kept.

Functions go first; a layer version or an archive a function that could not be
removed uses is then kept. Only functions in the client's region are seen. Log groups
(``/aws/lambda/<function>``, the functions' logs) and job objects (``wrenpack
clean``) are left alone.
"""
from __future__ import annotations

import base64
import logging
import shlex
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import wrenpack.backends.aws.clients as clients
from wrenpack.backends.aws.deploy import (archive_deploys, archive_metadata, ENV_FAMILY, ENV_RUNTIME_ARCHIVE, ENV_STORE,
                                          code_upload_name, list_functions)
from wrenpack.errors import ConfigError, ObjectNotFound, WrenpackError

log = logging.getLogger(__name__)

#: what deploy names a function family: a Lambda name (letters, digits, - and _) of at most 53
#: characters, so that ``-<10 hex>`` fits Lambda's 64 (``FunctionSettings.function_name``)
_FAMILY = re.compile(r"[A-Za-z0-9_-]{1,53}")
#: AWS's answers for something already gone
_GONE = ("ResourceNotFoundException", "NoSuchKey", "404")
#: where deploy puts a runtime archive: s3://BUCKET[/PREFIX]/runtimes/runtime-<SHA-256>.tar.gz (group 1: its store)
_ARCHIVE_URL = re.compile(r"(s3://[^/]+(?:/.+?)?)/runtimes/runtime-[0-9a-f]{64}\.tar\.gz")


@dataclass(frozen=True)
class LayerVersion:
    layer: str
    version: int
    arn: str


@dataclass
class Plan:
    """What undeploy would remove and what it keeps (``plan_undeploy``), before anything changes."""

    family: str
    store: str
    functions: list[str] = field(default_factory=list)
    layer_versions: list[LayerVersion] = field(default_factory=list)
    #: keys under the store's prefix (``runtimes/...``, ``deploy/...``)
    objects: list[str] = field(default_factory=list)
    #: {"what", "why"} of each thing kept
    kept: list[dict[str, str]] = field(default_factory=list)
    #: a layer version's ARN or an object's key -> the removed functions that use it: it goes only once they are gone
    users: dict[str, set[str]] = field(default_factory=dict)
    #: an archive's key -> its metadata with this region taken out: written once the removed
    #: functions that use it are gone (another region's functions may still use it)
    retag: dict[str, dict[str, str]] = field(default_factory=dict)

    def url(self, key: str) -> str:
        return f"{self.store}/{key}"

    def count(self) -> int:
        return len(self.functions) + len(self.layer_versions) + len(self.objects)

    def lines(self) -> list[str]:
        """One line per thing to remove, as the command line lists them."""
        return ([f"function {name}" for name in self.functions]
                + [f"layer version {lv.arn}" for lv in self.layer_versions]
                + [f"object {self.url(key)}" for key in self.objects])

    def summary(self) -> dict[str, Any]:
        """The plan as JSON (``--dry-run --json``)."""
        return {"ok": True, "dry_run": True, "function_family": self.family, "store": self.store,
                "functions": list(self.functions), "layer_versions": [lv.arn for lv in self.layer_versions],
                "objects": [self.url(key) for key in self.objects], "kept": list(self.kept), "failed": []}


def check_undeploy(cfg: Any) -> None:
    """Bad settings, in one line naming the fix, before any request (the command line's exit 2)."""
    base = str(getattr(cfg, "function_name", "") or "")
    if not _FAMILY.fullmatch(base):
        raise ConfigError(f"--function-name {base!r} is no function family deploy could have made (letters, digits, "
                          "- and _, at most 53 characters); pass the --function-name deploy was given")
    if not clients.store_url(cfg):
        raise ConfigError(f"storage is {getattr(cfg, 'storage', None)!r}, not an S3 location; undeploy removes what "
                          "deploy put in the store: pass the --storage s3://BUCKET/PREFIX deploy was given")
    clients.check_configured_region(cfg)


def layer_versions(lam: Any, layer: str) -> list[LayerVersion]:
    """Every version of ``layer`` (all pages); none when the layer does not exist.
    Shared with the acceptance run's cleanup, which deletes its own layers' versions."""
    found: list[LayerVersion] = []
    marker = None
    while True:
        try:
            page = lam.list_layer_versions(LayerName=layer, **({"Marker": marker} if marker else {}))
        except Exception as exc:
            code = clients.error_code(exc)
            if code in _GONE:
                return found
            if code in ("AccessDeniedException", "AccessDenied"):
                raise ConfigError(f"listing the versions of layer {layer} is not allowed (lambda:ListLayerVersions); "
                                  "use an identity with `wrenpack iam-policy --for deploy`") from None
            raise clients.aws_error(exc, f"listing the versions of layer {layer}") from None
        found += [LayerVersion(layer, int(v["Version"]), v["LayerVersionArn"]) for v in page.get("LayerVersions", [])]
        marker = page.get("NextMarker")
        if not marker:
            return found


def _variables(conf: dict[str, Any]) -> dict[str, str] | None:
    """A function's environment variables; None when Lambda could not decrypt them for this caller."""
    environment = conf.get("Environment") or {}
    if environment.get("Error"):
        return None
    return environment.get("Variables") or {}


def plan_undeploy(cfg: Any, lam: Any | None = None, store: Any | None = None) -> Plan:
    """What to remove for ``cfg``'s function family and store (see the module's docstring):
    only read requests. ``lam`` and ``store``: the clients to use (default: ``cfg``'s)."""
    from wrenpack.storage import store_for_config

    check_undeploy(cfg)
    base, served = str(cfg.function_name), str(clients.store_url(cfg))
    lam = lam if lam is not None else clients.lambda_client(cfg)
    store = store if store is not None else store_for_config(cfg)
    plan = Plan(base, served)
    deploys_name = re.compile(re.escape(base) + r"-[0-9a-f]{10}")

    def keep(what: str, why: str) -> None:
        plan.kept.append({"what": what, "why": why})

    # -- functions: the family's go, every other one stays (and keeps what it uses)
    staying: list[tuple[str, dict[str, Any], dict[str, str] | None]] = []
    removed: list[tuple[str, dict[str, Any], dict[str, str]]] = []
    for conf in list_functions(lam, "undeploy", "to find the family's"):
        name, env = conf.get("FunctionName", ""), _variables(conf)
        ours = env is not None and env.get(ENV_FAMILY) == base
        if env is not None and ours and deploys_name.fullmatch(name):
            pinned = env.get(ENV_STORE)
            if pinned and pinned.rstrip("/") != served:
                keep(f"function {name}", f"it serves the store {pinned}, not {served}; its callers there use it "
                                         f"(undeploy it with --storage {pinned})")
                staying.append((name, conf, env))
            else:
                removed.append((name, conf, env))
            continue
        if ours:
            keep(f"function {name}", f"its environment names the family {base} but its name is not deploy's "
                                     f"({base}-<hash>)")
        elif env is None and deploys_name.fullmatch(name):
            keep(f"function {name}", "its environment could not be read (a KMS key this identity may not use), "
                                     f"so it is not known to be {base}'s")
        staying.append((name, conf, env))
    plan.functions = [name for name, _, _ in removed]

    def layers_of(conf: dict[str, Any]) -> set[str]:
        return {layer.get("Arn", "") for layer in conf.get("Layers") or []}

    # -- the family's layer versions, but those a function that stays uses
    versions = layer_versions(lam, f"{base}-runtime")
    for lv in versions:
        users = [name for name, conf, _ in staying if lv.arn in layers_of(conf)]
        if users:
            keep(f"layer version {lv.arn}", f"function {users[0]} uses it and stays")
            continue
        plan.layer_versions.append(lv)
        plan.users[lv.arn] = {name for name, conf, _ in removed if lv.arn in layers_of(conf)}

    # -- runtime archives: those a removed function uses, and those deploy tagged with the family
    # (ARCHIVE_DEPLOYS: an earlier deploy's, one a copy for another store used), unless a function
    # that stays uses it (or may). The store lists only its own runtimes/: an archive a removed
    # function uses elsewhere (a copy serving another store uses its template's) is named with
    # the undeploy of the store that holds it.
    try:
        archives = store.list("runtimes/")
        uploads = store.list("deploy/")
    except WrenpackError as exc:
        raise WrenpackError(f"undeploy lists the store's runtimes/ and deploy/ to find the family's objects: {exc}") from None
    unreadable = [name for name, _, env in staying if env is None]
    staying_env = {name: env for name, _, env in staying if env is not None}

    def using(url: str, among: dict[str, dict[str, str]]) -> list[str]:
        """The functions of ``among`` that use the archive at ``url``, the family's first."""
        return sorted((name for name, env in among.items() if env.get(ENV_RUNTIME_ARCHIVE) == url),
                      key=lambda name: (among[name].get(ENV_FAMILY) != base, name))

    def staying_user(url: str) -> str | None:
        """Why the archive at ``url`` stays: a function that stays uses it, or may (None: none does)."""
        users = using(url, staying_env)
        theirs = [name for name in users if staying_env[name].get(ENV_FAMILY) != base]
        if theirs:
            return f"function {theirs[0]} uses it and stays"
        if users:
            # the family's copies serving other stores: their undeploys come first
            stores = sorted({(staying_env[name].get(ENV_STORE) or "").rstrip("/") for name in users} - {"", served})
            more = f" (and {len(users) - 1} more)" if len(users) > 1 else ""
            if not stores:
                return f"function {users[0]}{more} uses it and stays"
            then = " and ".join(f"`{_command(base, where)}`" for where in stores)
            return (f"function {users[0]}{more} uses it and stays (serving {', '.join(stores)}): once {then} "
                    f"removed {'them' if users[1:] else 'it'}, run this again")
        if unreadable:
            return f"function {unreadable[0]}'s environment could not be read, so it may use it"
        return None

    removed_env = {name: env for name, _, env in removed}
    region = str(getattr(getattr(lam, "meta", None), "region_name", None) or "")
    tags = _archive_tags(store, list(archives))
    for key in archives:
        url = plan.url(key)
        users = set(using(url, removed_env))
        found, unknown = tags.get(key, ({}, None))
        deploys = archive_deploys(found)
        # the deploys whose functions this undeploy does not see: another region's (an old tag's
        # unknown region is this one for the family, elsewhere for another family)
        unseen = {(family, where) for family, where in deploys
                  if region and where != region and (where or family != base)}
        if not users:
            if key not in tags:
                continue  # gone since it was listed
            if deploys and not any(family == base for family, _ in deploys):
                continue  # another family's: its undeploy removes it
            if not deploys:
                # No family on it: a deploy's from before archives were tagged, or not deploy's at all.
                users_here = using(url, staying_env)
                if users_here and staying_env[users_here[0]].get(ENV_FAMILY) != base:
                    continue  # another family's function uses it: that family's undeploy removes it
                if users_here:
                    keep(f"object {url}", str(staying_user(url)))
                else:
                    what = (f"its metadata could not be read ({unknown})" if unknown else
                            "it names no function family (a deploy's from before deploy tagged its archives, "
                            "or not deploy's)")
                    keep(f"object {url}", f"{what} and no function of this region is known to use it: if it is {base}'s, "
                                          f"remove it with `aws s3 rm {url}`")
                continue
        why = staying_user(url)
        if why is None and unseen:
            # deploy uploaded it for functions this undeploy does not see, in other regions, of
            # this family or another (two families with the same runtime share its archive): they may use it
            why = _elsewhere(base, served, unseen)
        if why is None:
            plan.objects.append(key)
            plan.users[key] = users
            continue
        keep(f"object {url}", why)
        # what stays named on it: the unseen deploys, and this region's families a function that
        # stays uses it of (the deploys here whose functions are gone are taken off, so the last
        # undeploy that ends its users removes it)
        families_here = {staying_env[name].get(ENV_FAMILY) for name in using(url, staying_env)}
        left = unseen | {(family, where) for family, where in deploys - unseen if family in families_here}
        if deploys and left != deploys and not unreadable:
            plan.retag[key] = dict(found, **archive_metadata(left))
            plan.users[key] = users
    outside: dict[str, list[str]] = {}
    for name, env in removed_env.items():
        url = env.get(ENV_RUNTIME_ARCHIVE)
        # (what the store lists: a URL under it but not under its runtimes/, the bucket root's, is outside)
        if url and not url.startswith(plan.url("runtimes/")):
            outside.setdefault(url, []).append(name)
    for url, names in outside.items():  # (one line per archive, however many functions use it)
        home = _ARCHIVE_URL.fullmatch(url)
        then = (f"`{_command(base, home.group(1))}` removes it once no function uses it" if home else
                f"remove it with `aws s3 rm {url}` once no function uses it")
        more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
        keep(f"object {url}", f"function {names[0]}{more} uses it, and it is not under {plan.url('runtimes/')}, "
                              f"where this store's archives are: {then}")

    # -- deploy/ uploads of the family's layer zips (only read when there are any)
    if uploads:
        sums = _layer_upload_names(lam, versions)
        for key in uploads:
            if key in sums:
                plan.objects.append(key)
            else:
                keep(f"object {plan.url(key)}", f"its content is no layer version of {base}-runtime")
    return plan


def _command(base: str, store: str) -> str:
    """The undeploy of ``base`` for ``store``, as a user types it (quoted for a shell)."""
    return f"wrenpack undeploy --function-name {shlex.quote(base)} --storage {shlex.quote(store)}"


def _elsewhere(base: str, served: str, deploys: set[tuple[str, str]]) -> str:
    """Why an archive stays: deploy uploaded it for ``deploys`` too, (family, region) pairs this
    undeploy of ``base`` does not end; with the undeploys that do."""
    regions: dict[str, list[str]] = {}
    for family, region in sorted(deploys):
        regions.setdefault(family, []).append(region)
    whose, then = [], []
    for family, where in regions.items():
        named = [r for r in where if r]
        whose.append(f"{base}'s functions" if family == base else f"function family {family}'s functions")
        if named:
            whose[-1] += f" in {', '.join(named)}"
        then += [f"`{_command(family, served)}" + (f" --region {shlex.quote(r)}`" if r else "`") for r in where]
    seen = "which this undeploy does not see" if set(regions) == {base} else "which this undeploy does not remove"
    return f"deploy uploaded it for {' and '.join(whose)} too, {seen}: {' and '.join(then)} removes it once no function uses it"


def _archive_tags(store: Any, keys: list[str]) -> dict[str, tuple[dict[str, str], str | None]]:
    """What deploy put in each runtime archive's metadata (``deploy.ARCHIVE_DEPLOYS``;
    a HEAD each, a few at a time): key -> (its metadata, why it could not be read or None);
    a key gone since it was listed is left out. HEAD is s3:GetObject, which deploy's policy grants there."""
    if not keys:
        return {}

    def head(key: str) -> tuple[str, tuple[dict[str, str], str | None] | None]:
        try:
            return key, (store.metadata(key), None)
        except ObjectNotFound:
            return key, None
        except WrenpackError as exc:  # unknown: the archive is kept, and named with why
            return key, ({}, str(exc))

    with ThreadPoolExecutor(max_workers=min(8, len(keys))) as pool:
        return {key: found for key, found in pool.map(head, keys) if found is not None}


def _layer_upload_names(lam: Any, versions: list[LayerVersion]) -> set[str]:
    """The ``deploy/`` names the zips of ``versions`` were uploaded under (by their content's
    SHA-256, which GetLayerVersion tells; ListLayerVersions does not). A version that cannot be
    read names none, so its upload is kept."""
    names = set()
    for lv in versions:
        try:
            digest = lam.get_layer_version(LayerName=lv.layer, VersionNumber=lv.version)["Content"]["CodeSha256"]
            names.add(code_upload_name("layer", base64.b64decode(digest).hex()))
        except Exception as exc:  # noqa: BLE001 - unknown content: its upload is kept, as unmatched
            log.debug("cannot read layer version %s: %s", lv.arn, exc)
    return names


def undeploy(cfg: Any, plan: Plan, lam: Any | None = None, store: Any | None = None,
             on_done: Callable[[str, str | None], None] | None = None) -> dict[str, Any]:
    """Remove what ``plan`` lists: functions, then layer versions and objects, each tried
    (one failure stops nothing else), but a layer version or archive a function that could
    not be removed uses. The summary as JSON: what was removed, kept and failed (with why).
    ``on_done`` hears each thing as it is done: (its line, None) or (its line, the error)."""
    from wrenpack.storage import store_for_config

    lam = lam if lam is not None else clients.lambda_client(cfg)
    store = store if store is not None else store_for_config(cfg)
    out: dict[str, Any] = {"ok": True, "dry_run": False, "function_family": plan.family, "store": plan.store,
                           "functions": [], "layer_versions": [], "objects": [], "kept": list(plan.kept), "failed": []}

    def attempt(what: str, action: Callable[[], Any]) -> bool:
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - each removal is tried; failures are listed
            if clients.error_code(exc) not in _GONE:
                why = str(exc) if isinstance(exc, WrenpackError) else \
                    f"{clients.error_code(exc) or type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
                out["failed"].append({"what": what, "error": why})
                log.warning("could not remove %s: %s", what, why)
                if on_done is not None:
                    on_done(what, why)
                return False
        log.info("removed %s", what)
        if on_done is not None:
            on_done(what, None)
        return True

    for name in plan.functions:
        if attempt(f"function {name}", lambda n=name: lam.delete_function(FunctionName=n)):
            out["functions"].append(name)
    stuck = set(plan.functions) - set(out["functions"])

    def blocked(what: str, used_by: str) -> bool:
        left = sorted(plan.users.get(used_by, set()) & stuck)
        if left:
            out["kept"].append({"what": what, "why": f"function {left[0]} uses it and could not be removed"})
        return bool(left)

    for lv in plan.layer_versions:
        what = f"layer version {lv.arn}"
        if not blocked(what, lv.arn) and attempt(
                what, lambda v=lv: lam.delete_layer_version(LayerName=v.layer, VersionNumber=v.version)):
            out["layer_versions"].append(lv.arn)
    for key in plan.objects:
        what = f"object {plan.url(key)}"
        if not blocked(what, key) and attempt(what, lambda k=key: store.delete(k)):
            out["objects"].append(plan.url(key))
    for key, metadata in plan.retag.items():
        # (this region's functions are gone: the last region's undeploy then removes the archive)
        if not (plan.users.get(key, set()) & stuck):
            attempt(f"this region from the metadata of object {plan.url(key)}",
                    lambda k=key, m=metadata: store.set_metadata(k, m))
    out["ok"] = not out["failed"]
    return out


__all__ = ["LayerVersion", "Plan", "check_undeploy", "layer_versions", "plan_undeploy", "undeploy"]
