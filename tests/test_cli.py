"""The command line's shape: help, version, exit codes."""
from __future__ import annotations

import subprocess
import sys


def run(*args):
    return subprocess.run([sys.executable, "-m", "wrenpack", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_every_available_command():
    from wrenpack.cli import _available

    out = run("--help")
    assert out.returncode == 0
    for name in _available():
        assert name in out.stdout


def test_version():
    out = run("--version")
    assert out.returncode == 0 and out.stdout.startswith("wrenpack ")


def test_no_command_is_usage_error():
    assert run().returncode == 2


def test_unknown_command_is_usage_error():
    out = run("frobnicate")
    assert out.returncode == 2 and "invalid choice" in out.stderr


def test_output_to_a_reader_gone_away_ends_quietly(tmp_path):
    """`wrenpack jobs ... | head` whose reader has gone: the command ends with 141 (as SIGPIPE
    ends other tools) and says nothing. It ended in a BrokenPipeError traceback (Python's
    "Exception ignored ... BrokenPipeError" at its exit flush, exit 120)."""
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written
    try:
        proc = subprocess.run([sys.executable, "-m", "wrenpack", "jobs", "--storage", str(tmp_path / "none")],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert proc.returncode == 141, proc.stderr
    assert proc.stderr == ""


def test_json_errors_are_a_document_on_stdout_too(tmp_path, capsys):
    """Under --json an error after parsing is {"ok": false, "error", "message"} on stdout, as build-runtime
    --json prints it, besides the one line on stderr: jobs, jobs show/cancel, clean and profile printed
    nothing on stdout. Usage errors stay argparse's (exit 2, nothing on stdout)."""
    import json

    import pytest

    from wrenpack.cli import main

    none = str(tmp_path / "none")
    for argv, error in ((["jobs", "--json", "--storage", "s3://"], "ConfigError"),
                        (["jobs", "show", "nosuch", "--json", "--storage", none], "JobNotFound"),
                        (["jobs", "cancel", "nosuch", "--json", "--storage", none], "JobNotFound"),
                        # (JobNotFound as for jobs show/cancel: it was "ConfigError" for the same condition)
                        (["clean", "nosuch", "--json", "--storage", none], "JobNotFound"),
                        (["clean", "20261207-134555-f368f2a2", "--json", "--storage", str(tmp_path)], "JobNotFound"),
                        (["profile", "nocolon", "--json"], "ProfileError")):
        assert main(argv) == 1, argv
        out = capsys.readouterr()
        doc = json.loads(out.out)
        assert doc["ok"] is False and doc["error"] == error, (argv, doc)
        assert out.err.count("\n") == 1 and out.err == f"wrenpack: error: {doc['message']}\n", (argv, out.err)
    # without --json: the line alone
    assert main(["jobs", "show", "nosuch", "--storage", none]) == 1
    assert capsys.readouterr().out == ""
    # usage errors: argparse's
    with pytest.raises(SystemExit) as info:
        main(["profile", "m:f", "--json", "--repeat", "x"])
    assert info.value.code == 2 and capsys.readouterr().out == ""


def test_build_runtime_json_errors_before_the_build_are_a_document_too(tmp_path, capsys, monkeypatch):
    """build-runtime --json printed no document for the errors it finds before the build: a Python
    that is no minor version, one Lambda has no runtime for, --docker without a Docker engine, --lock
    beside requirements (README: every error after parsing, in jobs, clean, profile and build-runtime).
    Each is one line on stderr and {"ok": false, "error", "message"} on stdout; nothing is built."""
    import json

    from wrenpack.cli import main

    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'no-docker.sock'}")  # no engine answers there
    lock = tmp_path / "requirements.lock"
    lock.write_text("six==1.17.0 --hash=sha256:" + "0" * 64 + "\n")
    out_dir = str(tmp_path / "rt")
    for extra, error, words in ((["--python", "abc"], "ConfigError", "is not a Python minor version"),
                                (["--python", "3.9"], "ConfigError", "Lambda has no python3.9 runtime"),
                                (["--docker"], "BuildError", "--docker needs a running Docker engine"),
                                (["--lock", str(lock)], "ConfigError", "installs exactly that lock")):
        argv = ["build-runtime", "six", "--output", out_dir, "--json", *extra]
        assert main(argv) == 1, argv
        out = capsys.readouterr()
        doc = json.loads(out.out)
        assert doc["ok"] is False and doc["error"] == error and words in doc["message"], (argv, doc)
        assert out.err == f"wrenpack: error: {doc['message']}\n", (argv, out.err)
    import os

    assert not os.path.exists(out_dir)


def test_an_option_given_empty_is_refused_before_the_command_runs(tmp_path, capsys, monkeypatch):
    """An option given as empty or blank text (``--storage "$STORE"`` with STORE unset) is refused in one
    line, exit 2, before the command runs: `clean --all --storage ""` cleaned the configured store (every
    job in it) and exited 0, as `jobs`, `--region ""`, `--lock ""`... fell back to the setting quietly.
    Under --json the error is a document on stdout too."""
    import json

    from wrenpack.cli import main

    store = tmp_path / "configured"
    (store / "jobs").mkdir(parents=True)
    (store / "jobs" / "keepme").write_text("x")  # (not wrenpack's: whatever happens, nothing of it goes)
    monkeypatch.setenv("WRENPACK_STORAGE", str(store))
    for argv, flag in ((["clean", "--all", "--storage", ""], "--storage"),
                       (["clean", "--all", "--force", "--storage=  "], "--storage"),
                       (["jobs", "--region", ""], "--region"),
                       (["jobs", "show", "20261207-134555-f368f2a2", "--profile", " "], "--profile"),
                       (["jobs", "--storage", str(store), "cancel", "20261207-134555-f368f2a2",
                         "--s3-endpoint-url", ""], "--s3-endpoint-url"),
                       (["iam-policy", "--region", ""], "--region"),
                       (["doctor", "--lambda-endpoint-url", ""], "--lambda-endpoint-url"),
                       (["build-runtime", "six", "--lock", "", "--output", str(tmp_path / "rt")], "--lock"),
                       (["profile", "m:f", "--kwargs", ""], "--kwargs")):
        for json_flag in ([], ["--json"]):
            code = main([*argv, *json_flag])
            out = capsys.readouterr()
            assert code == 2, (argv, json_flag, out)
            assert out.err.count("\n") == 1 and out.err.startswith(f"wrenpack: error: {flag} ") \
                and "is empty" in out.err, (argv, out.err)
            if json_flag:
                doc = json.loads(out.out)
                assert doc["ok"] is False and doc["error"] == "ConfigError" and flag in doc["message"], doc
            else:
                assert out.out == "", (argv, out.out)
    assert (store / "jobs" / "keepme").exists() and not (tmp_path / "rt").exists()


def test_aws_commands_exit_2_on_bad_settings_with_a_json_document(tmp_path, capsys, monkeypatch):
    """deploy, iam-policy and undeploy say bad settings or options alike, before any AWS request:
    exit 2, one line on stderr, and under --json {"ok": false, ...} on stdout. Undeploy did; deploy and
    iam-policy exited 1 with nothing on stdout (a script reading deploy --json got nothing to parse)."""
    import json

    from wrenpack.cli import main

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    # (no AWS request is made; endpoints that answer nothing, should one be)
    where = ["--storage", "s3://wrenpack-test/cli", "--region", "us-east-1",
             "--lambda-endpoint-url", "http://127.0.0.1:9", "--s3-endpoint-url", "http://127.0.0.1:9"]
    image = ["--image-uri", "123456789012.dkr.ecr.us-east-1.amazonaws.com/w:1"]  # (no runtime dates, no warning)
    for argv, words in ((["deploy", "--function-name", "bad/name", *image], "'bad/name'"),
                        (["iam-policy", "--function-name", "bad/name"], "'bad/name'"),
                        (["undeploy", "--function-name", "bad/name"], "'bad/name'"),
                        (["deploy", "--memory", "100", *image], "memory=100"),
                        (["deploy", "--role", "nope", *image], "--role 'nope'"),
                        (["iam-policy", "--account", "12"], "--account '12'")):
        for json_flag in ([], ["--json"]):
            code = main([*argv, *where, *json_flag])
            out = capsys.readouterr()
            assert code == 2, (argv, json_flag, out)
            assert out.err.count("\n") == 1 and out.err.startswith("wrenpack: error: ") and words in out.err, (argv, out.err)
            if json_flag:
                doc = json.loads(out.out)
                assert doc["ok"] is False and doc["error"] == "ConfigError" and words in doc["message"], doc
                assert out.err == f"wrenpack: error: {doc['message']}\n"
            else:
                assert out.out == "", (argv, out.out)


def test_the_jobs_table_counts_cancelled_calls(tmp_path, capsys, monkeypatch):
    """A cancelled 6-call job showed 0/0/0/0 under DONE/FAILED/RUNNING/QUEUED: its calls were in no column."""
    from wrenpack.cli import main
    from wrenpack.job import client

    row = {"id": "20261207-134555-f368f2a2", "spawned": True, "function": "m.slow", "state": "cancelled", "done": 1,
           "failed": 0, "running": 0, "queued": 0, "cancelled": 5, "owner": {}, "created": None, "cost": 0.0}
    monkeypatch.setattr(client, "job_ids", lambda store: [row["id"]])
    monkeypatch.setattr(client, "describe", lambda store, job_id, key: dict(row))
    assert main(["jobs", "--storage", str(tmp_path)]) == 0
    head, line = capsys.readouterr().out.splitlines()
    assert "DONE/FAILED/RUNNING/QUEUED/CANCELLED" in head.split() and "1/0/0/0/5" in line.split(), (head, line)
