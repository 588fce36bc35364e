"""What a new user hits running README.md and docs/*.md as written (the probe-docs pass).

Each test here failed before its fix; they run without the network and without AWS.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from wrenpack.cli import main


def _fake_build_result(output: Path, files: dict[str, str | None]):
    """A BuildResult as runtime_builder returns it, for an output holding only ``files``."""
    from runtime_builder.pipeline import BuildResult

    (output / "python").mkdir(parents=True)
    for key in ("layer_zip", "archive", "lock"):
        if files.get(key):
            (output / files[key]).write_bytes(b"x")
    manifest = {"target": {"python": "3.11", "arch": "x86_64", "kind": "layer"}, "sizes": {}, "packages": {},
                "rules": {}, "verified": {"ok": True}, "content_hash": "0" * 64, "files": files}
    (output / "manifest.json").write_text(json.dumps(manifest))
    return BuildResult(output=str(output), site_dir=str(output / "python"),
                       manifest_path=str(output / "manifest.json"), layer_zip=str(output / "layer.zip"),
                       archive=str(output / "runtime.tar.zst"), lock=str(output / "requirements.lock"),
                       manifest=manifest, cache_hit=True, seconds=0.0)


@pytest.mark.parametrize("files, present, absent", [
    ({"site": "python", "layer_zip": "layer.zip", "archive": None, "lock": "requirements.lock"}, "layer_zip", "archive"),
    ({"site": "python", "layer_zip": None, "archive": "runtime.tar.zst", "lock": "requirements.lock"}, "archive", "layer_zip"),
])
def test_build_runtime_json_names_only_artifacts_it_wrote(tmp_path, monkeypatch, capsys, files, present, absent):
    """`wrenpack build-runtime six --json` (target layer, --artifacts auto) printed
    "archive": ".../runtime.tar.zst", a file the build never wrote: a script that read the path
    and opened it failed. An artifact the target did not need is null in the summary."""
    import runtime_builder

    out = tmp_path / "rt"
    res = _fake_build_result(out, files)
    monkeypatch.setattr(runtime_builder, "build", lambda *a, **k: res)
    assert main(["build-runtime", "six", "--output", str(out), "--cache-dir", str(tmp_path / "cache"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary[absent] is None
    assert summary[present] is not None and os.path.exists(summary[present])


def test_clean_help_says_what_it_removes_and_its_exit_codes(capsys):
    """`wrenpack clean --help` had no description at all (`jobs` and `jobs cancel` state theirs): a user
    could not learn there that a running spawned job must be cancelled first, or what exit 1 means."""
    with pytest.raises(SystemExit) as ex:
        main(["clean", "--help"])
    assert ex.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Exit codes: 0 ok, 1 no such job or refused, 2 usage." in text
    assert "wrenpack jobs cancel ID" in text


def _example(name: str):
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"probe_docs_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("url", ["redis://127.0.0.1:{closed}/0", "127.0.0.1:6379"], ids=["closed-port", "no-scheme"])
def test_parameter_server_unreachable_redis_url_is_one_line(url, closed_port):
    """README: parameter_server.py "uses --redis-url". A URL nobody listens on (or one without a
    scheme) ended in two chained 60-line redis tracebacks (the second from the clean-up in
    `finally`); it is one line naming the URL and what to do, before any call is launched."""
    pytest.importorskip("numpy")
    pytest.importorskip("redis")
    url = url.format(closed=closed_port)  # (found at the test's run: the same test ids in every collection)
    ps = _example("parameter_server")
    with pytest.raises(SystemExit) as ex:
        ps.main(["--small", "--redis-url", url])
    msg = str(ex.value.code)
    assert "\n" not in msg and url in msg and "--redis-url" in msg


@pytest.mark.parametrize("script, args", [
    ("quickstart.py", ["--no-build", "--no-profile", "--tasks", "0"]),
    ("quickstart.py", ["--no-build", "--no-profile", "--tasks", "-3"]),
    ("parameter_server.py", ["--workers", "0", "--redis-url", "redis://127.0.0.1:1/0"]),
    ("parameter_server.py", ["--steps", "0", "--redis-url", "redis://127.0.0.1:1/0"]),
    ("parameter_server.py", ["--dim", "-1", "--redis-url", "redis://127.0.0.1:1/0"]),
])
def test_example_counts_must_be_positive(tmp_path, script, args):
    """`python examples/quickstart.py --tasks 0` ended in `ValueError: max() arg is an empty sequence`
    after starting the backend; `parameter_server.py --workers 0` ran nothing and printed DID NOT
    CONVERGE. A count below 1 is a usage error from the argument parser (exit 2), before anything runs."""
    import subprocess
    import sys

    if script == "parameter_server.py":
        pytest.importorskip("numpy")
        pytest.importorskip("redis")
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root), "WRENPACK_STORAGE": str(tmp_path / "store")}
    proc = subprocess.run([sys.executable, str(root / "examples" / script), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "a whole number >= 1" in proc.stderr.strip().splitlines()[-1]


def test_build_runtime_installer_uv_without_uv_names_the_option(tmp_path, monkeypatch, capsys):
    """docs/build-runtime.md: `--installer uv` "fails rather than falling back", and options are
    checked before anything is resolved. Without uv, `wrenpack build-runtime six --installer uv`
    resolved first, then failed with "WRENPACK_INSTALLER=uv but no uv was found ... or unset
    WRENPACK_INSTALLER": a variable the user never set. It now fails at once, naming --installer."""
    import runtime_builder
    from runtime_builder import installer

    monkeypatch.delenv("WRENPACK_INSTALLER", raising=False)
    monkeypatch.setattr(installer, "find_uv", lambda: None)
    called = []
    monkeypatch.setattr(runtime_builder, "build", lambda *a, **k: called.append(1))
    rc = main(["build-runtime", "six", "--installer", "uv", "--output", str(tmp_path / "rt"),
               "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and not called
    assert "--installer uv" in err and "WRENPACK_INSTALLER" not in err and len(err.splitlines()) == 1


def test_profile_without_target_names_only_the_target_as_required(capsys):
    """`wrenpack profile` with nothing said "the following arguments are required: target, ARG",
    but ARG is optional (`wrenpack profile mod:fn` with no arguments is the common case)."""
    with pytest.raises(SystemExit) as ex:
        main(["profile"])
    assert ex.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.endswith("the following arguments are required: target"), last


def test_iam_policy_refuses_a_region_aws_does_not_have(capsys):
    """README: the Lambda backend, deploy, doctor and the S3 stores refuse a region AWS does not
    have (`us-east-1a`) in one line. `wrenpack iam-policy --region us-east-1a` printed a policy whose
    Lambda ARNs name `us-east-1a`, exit 0: attached to a role, it grants nothing and says nothing."""
    pytest.importorskip("botocore")
    rc = main(["iam-policy", "--storage", "s3://mybucket/prefix", "--region", "us-east-1a"])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""  # (bad settings: exit 2, as deploy and undeploy)
    assert "us-east-1a" in err and "use us-east-1" in err and len(err.strip().splitlines()) == 1
    assert main(["iam-policy", "--storage", "s3://mybucket/prefix", "--region", "us-east-1"]) == 0
    assert ":lambda:us-east-1:" in capsys.readouterr().out


@pytest.mark.parametrize("extra", [["idna"], ["-r", "requirements.txt"], ["--pyproject", "pyproject.toml"]])
def test_build_runtime_lock_with_requirements_is_refused(tmp_path, monkeypatch, capsys, extra):
    """`wrenpack build-runtime idna --lock requirements.lock` built the lock alone, exit 0: the runtime
    had no idna and nothing said so (--lock installs the lock exactly; the builder ignores other
    requirements). Requirements beside --lock are refused in one line before anything runs.
    (--from-profile stays allowed: its imported modules still choose what the import check proves.)"""
    import runtime_builder

    monkeypatch.chdir(tmp_path)
    called = []
    monkeypatch.setattr(runtime_builder, "build", lambda *a, **k: called.append(1))
    rc = main(["build-runtime", *extra, "--lock", "requirements.lock", "--output", str(tmp_path / "rt"),
               "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and not called
    assert "--lock" in err and len(err.splitlines()) == 1


def test_build_runtime_help_states_the_defaults_the_docs_give(capsys):
    """docs/build-runtime.md gives `--output DIR (default .wrenpack/runtime)`; `--help` named none of the
    defaults of --output, --arch, --target, --tmp-size, so a user could not tell there where the runtime goes."""
    with pytest.raises(SystemExit):
        main(["build-runtime", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for said in ("(default .wrenpack/runtime)", "(default x86_64)", "default layer", "default 512"):
        assert said in text, said
